"""The signer's Unix socket: reachable only by the institution's own user.

* The socket lives in a directory of its own with mode 0700, owned by the signer's
  user; an existing directory that is not is refused (someone else could swap the
  socket). The socket itself is 0600.
* Every connection's peer credentials (``SO_PEERCRED``) are checked: only the signer's
  own uid, and uids the institution lists explicitly, are served.
* One JSON request line (at most :data:`~fl.signer.client.MAX_LINE` bytes) and one JSON
  reply line per connection.

File permissions separate *users*: a process running as the signer's user can read
whatever that user can. Running the signer as its own user, or keeping the key in a
token, is what keeps it from code running as the node's user (see the package doc).
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import stat
import struct
import threading
from pathlib import Path
from typing import Any

import structlog

from fl.signer.client import MAX_LINE
from fl.signer.service import SigningService

__all__ = ["SocketError", "prepare_socket_dir", "SignerServer"]

log = structlog.get_logger("fedledger.signer.server")
_MAX_SUN_PATH = 107  # sockaddr_un.sun_path holds 108 bytes with the NUL


class SocketError(ValueError):
    """The socket's directory or path cannot be used safely."""


def prepare_socket_dir(path: Path) -> Path:
    """Create (0700) or check the socket's directory; the socket path, stale socket removed."""
    path = Path(path).absolute()
    if len(os.fsencode(path)) > _MAX_SUN_PATH:
        raise SocketError(f"{path}: a Unix socket path must be at most {_MAX_SUN_PATH} bytes")
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.stat()
    if info.st_uid != os.getuid():
        raise SocketError(f"{directory}: owned by uid {info.st_uid}, not by this user ({os.getuid()})")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise SocketError(f"{directory}: permissions {stat.S_IMODE(info.st_mode):04o} let others in "
                          f"(chmod 700 {directory})")
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise SocketError(f"{path}: exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # nobody listens: a stale socket from a signer that died
        else:
            raise SocketError(f"{path}: another signer is listening here")
        finally:
            probe.close()
    return path


def _peer(sock: socket.socket) -> dict[str, int]:
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                         struct.calcsize("3i")))
    return {"pid": pid, "uid": uid, "gid": gid}


class _Handler(socketserver.StreamRequestHandler):
    server: SignerServer

    def handle(self) -> None:
        peer = _peer(self.request)
        if peer["uid"] not in self.server.allowed_uids:
            log.warning("peer_refused", uid=peer["uid"], pid=peer["pid"])
            self._reply({"ok": False, "reason": "peer_not_allowed", "detail": f"uid {peer['uid']} is not served"})
            return
        line = self.rfile.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE or not line.endswith(b"\n"):
            self._reply({"ok": False, "reason": "malformed", "detail": "one JSON line of at most 8192 bytes"})
            return
        try:
            request: Any = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            request = None
        self._reply(self.server.service.handle(request, peer))

    def _reply(self, reply: dict[str, Any]) -> None:
        self.wfile.write(json.dumps(reply, separators=(",", ":")).encode("utf-8") + b"\n")


class SignerServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Serves a :class:`SigningService` on a 0600 socket in a 0700 directory."""

    daemon_threads = True

    def __init__(self, path: Path, service: SigningService, allowed_uids: frozenset[int] = frozenset()) -> None:
        self.path = prepare_socket_dir(path)
        self.service = service
        self.allowed_uids = frozenset({os.getuid(), *allowed_uids})
        old = os.umask(0o177)  # the socket is created 0600, never wider even briefly
        try:
            super().__init__(str(self.path), _Handler)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="signer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and remove the socket."""
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.path.unlink(missing_ok=True)
