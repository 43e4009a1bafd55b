"""The ``fedaudit`` chaincode-as-a-service server: ``python -m chaincode.server``.

A peer's ccaas builder dials this server (the address in the package's
``connection.json``) and opens one ``Chaincode/Connect`` stream per peer; every
transaction of the chaincode runs over that stream. The server::

    python -m chaincode.server --id PACKAGE_ID --address 127.0.0.1:9999 \\
        --tls-cert server.crt --tls-key server.key --client-ca client-ca.crt \\
        [--log-format json|console] [--grace-period 3]

* serves mutual TLS only: the peer must present a client certificate issued by
  ``--client-ca`` (a file that may hold several CA certificates). All three TLS flags or
  none; none is refused unless ``--insecure`` is given explicitly. A TLS file that is
  missing or malformed is a one-line error naming it, exit status 2;
* ``--id`` and ``--address`` fall back to ``CHAINCODE_ID`` and ``CHAINCODE_SERVER_ADDRESS``
  (the names Fabric's ccaas tooling uses); port 0 picks a free port, logged in
  ``server_started``;
* handles each peer stream with the library's defects fixed (:mod:`chaincode.shim_fixes`);
  ``--without-fixes`` serves the library's own handler instead — for tests that reproduce
  its defects against a real peer, never for a network that keeps data;
* stops on SIGTERM or SIGINT (the library's own server does not): new streams are refused
  at once, transactions in flight may finish for up to ``--grace-period`` seconds (3 by
  default; gRPC's own deadline, one second later, is only a backstop), the streams are
  closed as soon as none is busy, and the process exits 0; a second signal closes them at
  once;
* logs JSON lines (or console lines) to stderr, with past-tense event names; never a
  payload, a key or a certificate.

Exit status: 0 after a signal, 1 when it cannot listen, 2 for a configuration error. The
command line is argparse, not the project's Typer CLI: a service entry point with plain
one-line errors, importing nothing from ``fl``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

# gRPC's C core writes plain-text lines to stderr (one per refused TLS handshake, at INFO)
# between our JSON lines; it reads this once, when gRPC is first imported. An operator who
# wants them sets GRPC_VERBOSITY themselves.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc
import structlog
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from fabric_protos.peer import chaincode_shim_pb2_grpc
from pydantic import BaseModel, ConfigDict, SecretBytes

from chaincode.fedaudit import FedAudit
from chaincode.shim_fixes import (
    Chaincode,
    Contract,
    Handler,
    check_context_annotations,
    end_stream,
    handler_busy,
    mutual_tls_credentials,
    new_handler,
)

__all__ = [
    "DEFAULT_GRACE_PERIOD_S",
    "ConfigError",
    "TlsMaterial",
    "ServerConfig",
    "parse_config",
    "load_tls",
    "configure_logging",
    "ChaincodeService",
    "serve",
    "main",
]

DEFAULT_GRACE_PERIOD_S = 3.0
LogFormat = Literal["json", "console"]
log = structlog.get_logger("fedledger.chaincode.server")


class ConfigError(ValueError):
    """A configuration the server refuses to start with; the message is one line."""


class TlsMaterial(BaseModel):
    """The server's TLS key and certificate and the CA its clients' certificates must chain to.

    PEM bytes, checked when loaded; the key is a secret (never shown by ``repr``).
    """

    model_config = ConfigDict(frozen=True)

    key_pem: SecretBytes
    cert_pem: bytes
    client_ca_pem: bytes

    def credentials(self) -> grpc.ServerCredentials:
        """gRPC server credentials requiring a client certificate (shim defect 5)."""
        return mutual_tls_credentials(
            key_pem=self.key_pem.get_secret_value(), cert_pem=self.cert_pem, client_ca_pem=self.client_ca_pem
        )


class ServerConfig(BaseModel):
    """Everything the server needs, built once from flags and environment."""

    model_config = ConfigDict(frozen=True)

    chaincode_id: str
    host: str
    port: int
    tls: TlsMaterial | None
    log_format: LogFormat = "json"
    grace_period_s: float = DEFAULT_GRACE_PERIOD_S
    fixes: bool = True

    @property
    def address(self) -> str:
        """``host:port`` to listen on (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


# --- configuration ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m chaincode.server",
        description="Serve the fedaudit chaincode as a service to Fabric peers (mutual TLS).",
    )
    parser.add_argument("--id", help="the chaincode package id (default: $CHAINCODE_ID)")
    parser.add_argument("--address", help="host:port to listen on (default: $CHAINCODE_SERVER_ADDRESS)")
    parser.add_argument("--tls-cert", type=Path, help="the server's TLS certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="the server's TLS private key (PEM, unencrypted)")
    parser.add_argument("--client-ca", type=Path, help="CA certificate(s) the peer's client certificate must chain to")
    parser.add_argument("--insecure", action="store_true", help="serve without TLS (only when asked for)")
    parser.add_argument("--log-format", choices=("json", "console"), default="json")
    parser.add_argument(
        "--grace-period", type=float, default=DEFAULT_GRACE_PERIOD_S, metavar="SECONDS",
        help=f"how long open streams may run on after SIGTERM (default {DEFAULT_GRACE_PERIOD_S:g})",
    )
    parser.add_argument(
        "--without-fixes", action="store_true",
        help="TESTS ONLY: serve the library's own handler, defects included, to reproduce them",
    )
    return parser


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port_text = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"--address {address!r}: expected host:port, e.g. 127.0.0.1:9999")
    return host, int(port_text)


def _read(path: Path, flag: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{flag} {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot read: {exc.strerror or exc}") from None
    if not data.strip():
        raise ConfigError(f"{flag} {path}: the file is empty")
    return data


def _certificates(data: bytes, path: Path, flag: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"{flag} {path}: not a PEM certificate") from None


def load_tls(cert: Path, key: Path, client_ca: Path) -> TlsMaterial:
    """Read and check the TLS files: PEM certificate(s), an unencrypted key matching the certificate."""
    cert_pem = _read(cert, "--tls-cert")
    leaf = _certificates(cert_pem, cert, "--tls-cert")[0]
    key_pem = _read(key, "--tls-key")
    try:
        private_key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ConfigError(f"--tls-key {key}: the key is encrypted; give an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"--tls-key {key}: not a PEM private key") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if private_key.public_key().public_bytes(der, public) != leaf.public_key().public_bytes(der, public):
        raise ConfigError(f"--tls-key {key}: does not match the certificate {cert}")
    ca_pem = _read(client_ca, "--client-ca")
    _certificates(ca_pem, client_ca, "--client-ca")
    return TlsMaterial(key_pem=SecretBytes(key_pem), cert_pem=cert_pem, client_ca_pem=ca_pem)


def parse_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> ServerConfig:
    """The server's configuration from ``argv`` and ``environ``; :class:`ConfigError` if unusable.

    argparse itself exits 2 for an unknown flag or a missing value.
    """
    env = os.environ if environ is None else environ
    args = _parser().parse_args(argv)
    chaincode_id = args.id or env.get("CHAINCODE_ID", "")
    if not chaincode_id:
        raise ConfigError("no chaincode package id: give --id or set CHAINCODE_ID")
    address = args.address or env.get("CHAINCODE_SERVER_ADDRESS", "")
    if not address:
        raise ConfigError("no listen address: give --address or set CHAINCODE_SERVER_ADDRESS")
    host, port = _split_address(address)
    if not args.grace_period >= 0:
        raise ConfigError(f"--grace-period {args.grace_period}: must be 0 or more seconds")
    given = {
        flag: value
        for flag, value in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key), ("--client-ca", args.client_ca))
        if value is not None
    }
    if args.insecure and given:
        raise ConfigError(f"--insecure together with {', '.join(given)}: choose mutual TLS or --insecure")
    if not args.insecure and len(given) < 3:
        missing = sorted({"--tls-cert", "--tls-key", "--client-ca"} - set(given))
        if given:
            raise ConfigError(f"TLS half configured: {', '.join(missing)} missing (mutual TLS needs all three)")
        raise ConfigError("no TLS: give --tls-cert, --tls-key and --client-ca (or --insecure, explicitly)")
    tls = None if args.insecure else load_tls(args.tls_cert, args.tls_key, args.client_ca)
    return ServerConfig(
        chaincode_id=chaincode_id,
        host=host,
        port=port,
        tls=tls,
        log_format=args.log_format,
        grace_period_s=args.grace_period,
        fixes=not args.without_fixes,
    )


# --- logging ----------------------------------------------------------------------------


def configure_logging(log_format: LogFormat) -> None:
    """structlog to stderr, JSON lines or console; the standard library's records alike.

    The library's own logger (warnings and errors only, see :mod:`chaincode.shim_fixes`),
    gRPC's and asyncio's go through the same renderer, so stderr stays one format.
    """
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if log_format == "json" else structlog.dev.ConsoleRenderer()
    )
    shared: list[structlog.types.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)


# --- serving ----------------------------------------------------------------------------


class ChaincodeService(chaincode_shim_pb2_grpc.ChaincodeServicer):
    """The ``protos.Chaincode`` gRPC service: one handler per peer stream.

    It ends its streams itself when the server stops (:meth:`close_streams`): a stream
    that gRPC has to abort at the end of its grace period is logged by gRPC as an error,
    with a traceback printed outside the log format.
    """

    def __init__(self, chaincode_id: str, chaincode: Chaincode, *, fixes: bool = True) -> None:
        self._chaincode_id = chaincode_id
        self._chaincode = chaincode
        self._fixes = fixes
        self._handlers: set[Handler] = set()
        self._closing = asyncio.Event()

    async def Connect(  # noqa: N802 - the gRPC method's name
        self, request_iterator: AsyncIterable[Any], context: grpc.aio.ServicerContext
    ) -> None:
        """Serve one peer's stream until the peer closes it or the server closes it."""
        peer = context.peer()
        log.info("peer_connected", peer=peer)
        handler = new_handler(self._chaincode_id, self._chaincode, fixes=self._fixes)
        self._handlers.add(handler)
        chat = asyncio.ensure_future(handler.chat_with_peer(request_iterator, context))
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({chat, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            if not chat.done():
                await end_stream(handler)
                chat.cancel()
                await asyncio.wait({chat})
            self._handlers.discard(handler)
            log.info("peer_disconnected", peer=peer, closed_by="peer" if self._stream_ended(chat) else "server")
        if not chat.cancelled():
            chat.result()  # an error of the stream itself goes to gRPC, as the call's status

    @staticmethod
    def _stream_ended(chat: asyncio.Future[None]) -> bool:
        return chat.done() and not chat.cancelled()

    def busy(self) -> bool:
        """Whether any peer stream has a transaction (or a reply) being handled."""
        return any(handler_busy(handler) for handler in self._handlers)

    async def wait_idle(self, poll_s: float = 0.05) -> None:
        """Return once no stream has anything in flight."""
        while self.busy():
            await asyncio.sleep(poll_s)

    def close_streams(self) -> None:
        """End every open stream now (transactions still in flight are cancelled)."""
        self._closing.set()


async def serve(config: ServerConfig, chaincode: Chaincode) -> None:
    """Serve ``chaincode`` until SIGTERM or SIGINT, then stop within the grace period.

    On the first signal the server refuses new streams and lets transactions in flight
    finish — for at most the grace period, and no longer than they need: it closes the
    streams as soon as none is busy. A second signal closes them at once. Raises
    :class:`OSError` when the address cannot be bound.
    """
    # Without SO_REUSEPORT (gRPC's default on Linux), a second server on the same address
    # fails to start instead of silently sharing the peers' connections with the first.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    service = ChaincodeService(config.chaincode_id, chaincode, fixes=config.fixes)
    chaincode_shim_pb2_grpc.add_ChaincodeServicer_to_server(service, server)
    try:
        if config.tls is None:
            port = server.add_insecure_port(config.address)
        else:
            port = server.add_secure_port(config.address, config.tls.credentials())
    except RuntimeError as exc:
        # gRPC reports a failed bind as a RuntimeError ("Failed to bind to address …").
        raise OSError(f"cannot listen on {config.address}: {exc}") from None

    signalled = asyncio.Event()
    signals: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        signals.append(sig.name)
        signalled.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await server.start()
        if not config.fixes:
            log.warning("shim_fixes_disabled", reason="--without-fixes: the library's defects 1-3 are live")
        if config.tls is None:
            log.warning("tls_disabled", reason="--insecure: any client may connect, in plaintext")
        log.info(
            "server_started",
            address=f"{config.address.rpartition(':')[0]}:{port}",
            port=port,
            chaincode_id=config.chaincode_id,
            tls="none" if config.tls is None else "mutual",
            fixes=config.fixes,
            pid=os.getpid(),
        )
        await signalled.wait()
        log.info("shutdown_requested", signal=signals[0], grace_period_s=config.grace_period_s)
        signalled.clear()
        # gRPC refuses new streams from now on; its own deadline is only a backstop, as
        # this server closes its streams itself within the grace period.
        stopped = asyncio.ensure_future(server.stop(config.grace_period_s + 1.0))
        waits = {
            "drained": asyncio.ensure_future(service.wait_idle()),
            "grace_period_over": asyncio.ensure_future(asyncio.sleep(config.grace_period_s)),
            "hurried": asyncio.ensure_future(signalled.wait()),
        }
        await asyncio.wait(waits.values(), return_when=asyncio.FIRST_COMPLETED)
        reason = next(name for name, waited in waits.items() if waited.done())
        for waited in waits.values():
            waited.cancel()
        service.close_streams()
        await stopped
        # gRPC sends the final status of the calls just closed in tasks of its own; let them
        # finish, as the end of asyncio.run would cancel them (and gRPC log that as an error).
        others = asyncio.all_tasks() - {asyncio.current_task()}
        if others:
            await asyncio.wait(others, timeout=1.0)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("server_stopped", reason=reason)


def main(argv: Sequence[str] | None = None, *, contract: Contract | None = None) -> int:
    """Run the server; the exit status. ``contract`` (default ``FedAudit``) lets tests serve a probe."""
    try:
        config = parse_config(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_format)
    try:
        chaincode = check_context_annotations(FedAudit() if contract is None else contract)
    except TypeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(config, chaincode))
    except OSError as exc:
        log.error("server_failed", reason=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
