"""The error hierarchy: which side broke the protocol is in the exception's type."""

from __future__ import annotations

import hpack
import pytest

from tykworker.errors import (
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from tykworker.front.h2.conn import _HPACK_ERRORS, _hpack_error
from tykworker.front.h2.frames import ErrorCode
from tykworker.wire.frames import FrameDecoder, FrameKind, encode_frame


def test_unencodable_frame_is_a_local_protocol_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(FrameKind.REPLY, 2**64, b"")


def test_bad_bytes_from_the_peer_are_a_remote_protocol_error() -> None:
    decoder = FrameDecoder(16)
    decoder.feed(b"PRI * HTTP/2.0\r\n")
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


@pytest.mark.parametrize(
    ("raised", "code"),
    [
        (ValueError("bad"), ErrorCode.COMPRESSION_ERROR),
        (IndexError(7), ErrorCode.COMPRESSION_ERROR),
        (hpack.HPACKDecodingError("bad"), ErrorCode.COMPRESSION_ERROR),
        (hpack.OversizedHeaderListError("big"), ErrorCode.ENHANCE_YOUR_CALM),
    ],
)
def test_hpack_failures_become_connection_errors_with_their_code(
    raised: Exception, code: ErrorCode
) -> None:
    assert isinstance(raised, _HPACK_ERRORS)  # what the decoding sites catch
    error = _hpack_error(raised)
    assert error.code == code and isinstance(error, ProtocolError)
