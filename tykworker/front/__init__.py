"""The front process: terminates gRPC (and the raw socket) and routes each call to a worker.

``core`` submits calls, owns timers and drain; ``router`` is the pure routing and deadline
logic; ``native``, ``grpcio`` and ``raw`` are the public servers; ``h2`` is the sans-IO
HTTP/2 of the native server; ``health`` and ``metrics`` are the operator endpoints.
Invariant: nothing here imports ``worker`` or runs plugin code, and call payloads pass
through as bytes (the Object is never parsed here).
"""
