"""Generated protobuf modules for Tyk's coprocess protocol (do not edit)."""
