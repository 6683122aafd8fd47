"""Sans-IO HTTP/2 for unary gRPC calls: bytes in, bytes and call events out.

Invariant: no asyncio, no sockets, no clock; the asyncio driver is ``front.native``.
"""
