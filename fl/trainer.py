"""The institution's trainer: the ClientApp's train and evaluate, in one warm process.

What the relay ClientApp (:mod:`fl.relay_app`) forwards to. It runs the default
ClientApp's own train and evaluate functions (:func:`fl.client_app.make_client_app`
without the signing mod — the relay signs what leaves), with torch imported and the
institution's data read once instead of once per message. It holds no key and signs
nothing. It trains on the data its own node config names (the file ``ClientService``
writes), whatever the node config in a request says.

The socket lives in a 0700 directory and is 0600 (:func:`fl.signer.server.prepare_socket_dir`);
only the trainer's own user is served. One message at a time.

Usage (what :mod:`fl.deploy.client` runs with ``ClientSpec.trainer``)::

    python -m fl.trainer --socket SOCKET --node-config NODE_CONFIG_TOML
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import socketserver
import struct
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from fl import trainer_wire
from fl.runtime import configure_logging
from fl.signer.server import prepare_socket_dir

__all__ = ["TrainerServer", "handle", "main"]

log = structlog.get_logger("fedledger.trainer")


def handle(app: Callable[..., Any], node_config: dict[str, Any], message: bytes, context: bytes) -> bytes:
    """Run ``app`` on one relayed message (protobuf in), the reply's content (protobuf out).

    The request's node config is replaced by the trainer's own. Raises what the app raises.
    """
    from flwr.common.serde import context_from_proto, message_from_proto, recorddict_to_proto
    from flwr.proto.message_pb2 import Context as ProtoContext
    from flwr.proto.message_pb2 import Message as ProtoMessage

    proto_msg, proto_ctx = ProtoMessage(), ProtoContext()
    proto_msg.ParseFromString(message)
    proto_ctx.ParseFromString(context)
    msg = message_from_proto(proto_msg)
    ctx = context_from_proto(proto_ctx)
    ctx.node_config = dict(node_config)
    reply = app(msg, ctx)
    if reply.has_error():
        raise RuntimeError(f"error {reply.error.code}: {reply.error.reason}")
    return recorddict_to_proto(reply.content).SerializeToString()


class _Handler(socketserver.BaseRequestHandler):
    server: TrainerServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                           struct.calcsize("3i")))
        if uid != os.getuid():
            log.warning("peer_refused", uid=uid, pid=pid)
            return
        if not sock.recv(1, socket.MSG_PEEK):
            return  # a readiness probe: connected and closed
        try:
            message = trainer_wire.read_frame(sock)
            context = trainer_wire.read_frame(sock)
        except (OSError, trainer_wire.TrainerError) as exc:
            log.warning("request_malformed", error=str(exc))
            return
        started = time.perf_counter()
        with self.server.lock:
            try:
                content = handle(self.server.app, self.server.node_config, message, context)
            except Exception as exc:  # noqa: BLE001 — whatever the app raised goes back as the reply's error
                log.warning("message_failed", error=str(exc)[:500])
                sock.sendall(bytes([trainer_wire.STATUS_ERROR]))
                trainer_wire.write_frame(sock, str(exc).encode("utf-8")[:65536])
                return
        log.info("message_done", seconds=round(time.perf_counter() - started, 4))
        sock.sendall(bytes([trainer_wire.STATUS_OK]))
        trainer_wire.write_frame(sock, content)


class TrainerServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Serves ``app`` on a 0600 socket in a 0700 directory, one message at a time."""

    daemon_threads = True

    def __init__(self, path: Path, app: Callable[..., Any], node_config: dict[str, Any]) -> None:
        self.path = prepare_socket_dir(path)
        self.app = app
        self.node_config = node_config
        self.lock = threading.Lock()
        old = os.umask(0o177)
        try:
            super().__init__(str(self.path), _Handler)
        finally:
            os.umask(old)


def _warm_up(node_config: dict[str, Any]) -> Callable[..., Any]:
    """The unsigned ClientApp, with torch imported and the data read now, not per message."""
    from flwr.app import Context, RecordDict

    from fl.client_app import make_client_app, node_config_resolver

    runtime = node_config_resolver(Context(0, 0, dict(node_config), RecordDict(), {}))
    runtime.load_data()
    return make_client_app(node_config_resolver, audited=False)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; the exit code."""
    parser = argparse.ArgumentParser(prog="python -m fl.trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--node-config", required=True, type=Path)
    args = parser.parse_args(argv)
    configure_logging(json_logs=True)
    try:
        node_config = tomllib.loads(args.node_config.read_text(encoding="utf-8"))
        app = _warm_up(node_config)
        server = TrainerServer(args.socket, app, node_config)
    except (OSError, ValueError, KeyError) as exc:
        log.error("trainer_failed", error=str(exc))
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, name="trainer", daemon=True)
    thread.start()
    log.info("trainer_started", socket=str(server.path), participant=node_config.get("participant"))
    stop.wait()
    server.shutdown()
    server.server_close()
    server.path.unlink(missing_ok=True)
    log.info("trainer_stopped")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
