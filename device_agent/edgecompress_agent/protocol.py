"""Framing shared by the agent and the host: the only implementation of it.

A frame is a 4-byte big-endian length, then that many bytes of UTF-8 JSON (the header). A header with a
``payload`` key announces that many raw bytes following it. Sizes are bounded; nothing is ever unpickled or
evaluated.
"""

import json
import struct

MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
_LENGTH = struct.Struct(">I")


class ProtocolError(Exception):
    """A frame that cannot be read: the stream is no longer in sync and must be closed."""


class FrameError(Exception):
    """A well-framed request with bad content: answer with an error frame of type ``kind`` and keep serving."""

    kind = "bad_request"


def _read_exact(stream, n):
    chunks = []
    remaining = n
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            if remaining == n and not chunks:
                return None
            raise ProtocolError("stream closed in the middle of a frame ({} of {} bytes)".format(n - remaining, n))
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def encode_frame(header, payload=None):
    """Return the bytes of one frame; ``payload`` (bytes) sets ``header['payload']``."""
    header = dict(header)
    if payload is not None:
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise FrameError("payload of {} bytes exceeds {}".format(len(payload), MAX_PAYLOAD_BYTES))
        header["payload"] = len(payload)
    else:
        header.pop("payload", None)
    body = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(body) > MAX_HEADER_BYTES:
        raise FrameError("header of {} bytes exceeds {}".format(len(body), MAX_HEADER_BYTES))
    parts = [_LENGTH.pack(len(body)), body]
    if payload:
        parts.append(bytes(payload))
    return b"".join(parts)


def write_frame(stream, header, payload=None):
    """Write one frame to a binary stream and flush it."""
    stream.write(encode_frame(header, payload))
    stream.flush()


def read_frame(stream, max_payload=MAX_PAYLOAD_BYTES):
    """Read one frame: ``(header, payload)``, or ``None`` at a clean end of stream.

    Raises ProtocolError when the stream cannot be trusted any more (truncated, oversized, not JSON) and
    FrameError when only the header's content is wrong (the payload has been consumed, the stream is in sync).
    """
    raw = _read_exact(stream, _LENGTH.size)
    if raw is None:
        return None
    (length,) = _LENGTH.unpack(raw)
    if length > MAX_HEADER_BYTES:
        raise ProtocolError("header length {} exceeds {}".format(length, MAX_HEADER_BYTES))
    body = _read_exact(stream, length) if length else b""
    if body is None:
        raise ProtocolError("stream closed after a frame length")
    try:
        header = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        # The length was honoured, so the stream is still in sync: a bad request, not a broken stream.
        raise FrameError("header is not UTF-8 JSON: {}".format(exc))
    except RecursionError:
        # A few kilobytes of brackets exhaust the parser's stack; the length was honoured, so the stream is in sync.
        raise FrameError("header nests too deeply to be parsed")
    if not isinstance(header, dict):
        raise FrameError("header is a JSON {}, not an object".format(type(header).__name__))
    size = header.get("payload", 0)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ProtocolError("payload size {!r} is not a non-negative integer".format(size))
    if size > max_payload:
        raise ProtocolError("payload of {} bytes exceeds {}".format(size, max_payload))
    payload = b""
    if size:
        payload = _read_exact(stream, size)
        if payload is None:
            raise ProtocolError("stream closed before a payload of {} bytes".format(size))
    return header, payload
