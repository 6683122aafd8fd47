"""tykworker: a supervised, pre-forked worker pool serving Tyk's coprocess gRPC protocol."""

__version__ = "0.1.0"
