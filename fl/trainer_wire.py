"""The relay ClientApp ↔ institution trainer protocol: length-prefixed frames on a Unix socket.

One connection per message. The relay sends two frames — Flower's ``Message`` and
``Context`` as protobuf — and reads one reply: a status byte (``0`` the reply's
``RecordDict`` as protobuf follows, ``1`` a UTF-8 error text follows) and one frame.
Standard library only: the relay imports neither torch nor anything that holds a key.
"""

from __future__ import annotations

import socket
import struct

__all__ = ["MAX_FRAME", "TrainerError", "TrainerUnavailable", "call", "read_frame", "write_frame",
           "STATUS_OK", "STATUS_ERROR"]

MAX_FRAME = 512 * 1024 * 1024  # bytes of one frame: a model update, with room
STATUS_OK, STATUS_ERROR = 0, 1
_LENGTH = struct.Struct(">Q")


class TrainerError(RuntimeError):
    """The trainer answered with an error (its text: what failed, e.g. a schema mismatch)."""


class TrainerUnavailable(TrainerError):
    """The trainer's socket cannot be reached or answered out of protocol."""


def _read_exact(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise TrainerUnavailable(f"connection closed with {left} of {size} bytes unread")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def write_frame(sock: socket.socket, payload: bytes) -> None:
    """Send one length-prefixed frame."""
    if len(payload) > MAX_FRAME:
        raise TrainerError(f"a frame is at most {MAX_FRAME} bytes, not {len(payload)}")
    sock.sendall(_LENGTH.pack(len(payload)) + payload)


def read_frame(sock: socket.socket) -> bytes:
    """Read one length-prefixed frame (at most :data:`MAX_FRAME` bytes)."""
    (size,) = _LENGTH.unpack(_read_exact(sock, _LENGTH.size))
    if size > MAX_FRAME:
        raise TrainerUnavailable(f"frame of {size} bytes exceeds {MAX_FRAME}")
    return _read_exact(sock, size)


def call(socket_path: str, message: bytes, context: bytes, timeout: float = 600.0) -> bytes:
    """Send one message and its context to the trainer; the reply's content (protobuf).

    Raises :class:`TrainerError` with the trainer's reason, or :class:`TrainerUnavailable`.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            write_frame(sock, message)
            write_frame(sock, context)
            status = _read_exact(sock, 1)[0]
            payload = read_frame(sock)
    except OSError as exc:
        raise TrainerUnavailable(f"trainer at {socket_path} cannot be reached: {exc}") from None
    if status == STATUS_OK:
        return payload
    if status == STATUS_ERROR:
        raise TrainerError(payload.decode("utf-8", errors="replace"))
    raise TrainerUnavailable(f"trainer at {socket_path} answered with unknown status {status}")
