"""The chaincode server: configuration, mutual TLS, shutdown, logs, and the peer stream over gRPC.

Servers run as real subprocesses (``python -m chaincode.server``) on 127.0.0.1 with a
throw-away PKI; a test plays the peer with a gRPC client speaking the chaincode protocol
(a fake peer: no Fabric here — ``tests/integration/test_fabric_shim_defects.py`` uses a
real one). Every process a test starts is stopped by its pid.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from fabric_protos.common import common_pb2
from fabric_protos.peer import (
    chaincode_pb2,
    chaincode_shim_pb2,
    chaincode_shim_pb2_grpc,
    proposal_pb2,
    proposal_response_pb2,
)

from chaincode.server import DEFAULT_GRACE_PERIOD_S, ConfigError, ServerConfig, load_tls, main, parse_config
from ledger import pki
from ledger.embedded.runtime import serialize_identity, timestamp_of
from tests.fixtures.pki import default_pki

REPO = Path(__file__).resolve().parents[2]
Msg = chaincode_shim_pb2.ChaincodeMessage
CHANNEL = "fedledger"
# Never in any log line: an argument of every transaction the fake peer sends.
SECRET_ARG = "payload-that-must-not-be-logged"


# --- TLS material ------------------------------------------------------------------------


@dataclass(frozen=True)
class Tls:
    """A chaincode CA, the server's key pair, a peer's client pair, and a stranger's."""

    dir: Path

    def path(self, name: str) -> Path:
        return self.dir / name

    def read(self, name: str) -> bytes:
        return self.path(name).read_bytes()

    def server_flags(self) -> list[str]:
        return [
            "--tls-cert", str(self.path("server.crt")),
            "--tls-key", str(self.path("server.key")),
            "--client-ca", str(self.path("ca.crt")),
        ]

    def client_credentials(self, client: str | None = "client") -> grpc.ChannelCredentials:
        if client is None:
            return grpc.ssl_channel_credentials(self.read("ca.crt"))
        return grpc.ssl_channel_credentials(self.read("ca.crt"), self.read(f"{client}.key"), self.read(f"{client}.crt"))


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    out = tmp_path_factory.mktemp("tls")
    ca = pki.init_ca("chaincode", common_name="chaincode-ca")
    server_key, server_cert = pki.make_tls_server_cert(ca, ("127.0.0.1", "localhost"))
    client_key, client_cert = pki.make_tls_client_cert(ca, "peer0")
    stranger_ca = pki.init_ca("stranger")
    stranger_key, stranger_cert = pki.make_tls_client_cert(stranger_ca, "peer0")
    pki.write_public_file(out / "ca.crt", pki.certificate_pem(ca.cert))
    for name, key, cert in (
        ("server", server_key, server_cert),
        ("client", client_key, client_cert),
        ("stranger", stranger_key, stranger_cert),
    ):
        pki.write_private_key(out / f"{name}.key", key)
        pki.write_public_file(out / f"{name}.crt", pki.certificate_pem(cert))
    return Tls(out)


# --- the server as a subprocess ----------------------------------------------------------


@dataclass
class Server:
    """A running server process and what it has logged so far (one stderr line each)."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]

    def event(self, name: str) -> dict[str, Any]:
        return next(e for e in self.events() if e["event"] == name)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            if '"server_started"' in line:
                self.port = json.loads(line)["port"]
                self.started.set()

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> tuple[int, float]:
        """Send ``sig`` and wait: (exit status, seconds it took)."""
        began = time.monotonic()
        self.process.send_signal(sig)
        code = self.process.wait(timeout)
        return code, time.monotonic() - began


@contextmanager
def running_server(*args: str, env: dict[str, str] | None = None, script: str | None = None) -> Iterator[Server]:
    """Start the server (``python -m chaincode.server ARGS``) on a free port; stop it after by pid."""
    argv = [sys.executable, "-c", script] if script else [sys.executable, "-m", "chaincode.server"]
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [*argv, "--id", "fedaudit:test", "--address", "127.0.0.1:0", *args],
        cwd=REPO, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    server = Server(process)
    reader = threading.Thread(target=server._read, daemon=True)
    reader.start()
    try:
        if not server.started.wait(30):
            raise AssertionError(f"the server did not start: {server.lines}")
        yield server
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        reader.join(5)


@pytest.fixture(scope="module")
def shared_server(tls: Tls) -> Iterator[Server]:
    """One server (mutual TLS, fixes on) for the tests that only talk to it."""
    with running_server(*tls.server_flags()) as server:
        yield server


# --- a fake peer over gRPC ---------------------------------------------------------------


def transaction(tx_id: str, function: str, *args: str) -> chaincode_shim_pb2.ChaincodeMessage:
    """A TRANSACTION for ``fedaudit:function(*args)`` from the coordinator, as a peer sends it."""
    cc_input = chaincode_pb2.ChaincodeInput(args=[f"fedaudit:{function}".encode(), *(a.encode() for a in args)])
    chaincode_id = chaincode_pb2.ChaincodeID(name="fedaudit")
    channel_header = common_pb2.ChannelHeader(
        type=common_pb2.ENDORSER_TRANSACTION, timestamp=timestamp_of(int(time.time() * 1000)),
        channel_id=CHANNEL, tx_id=tx_id,
        extension=proposal_pb2.ChaincodeHeaderExtension(chaincode_id=chaincode_id).SerializeToString(),
    )
    creator = serialize_identity("CoordinatorMSP", default_pki().identity("CoordinatorMSP").cert_pem)
    header = common_pb2.Header(
        channel_header=channel_header.SerializeToString(),
        signature_header=common_pb2.SignatureHeader(creator=creator, nonce=os.urandom(24)).SerializeToString(),
    )
    spec = chaincode_pb2.ChaincodeInvocationSpec(
        chaincode_spec=chaincode_pb2.ChaincodeSpec(chaincode_id=chaincode_id, input=cc_input)
    )
    proposal = proposal_pb2.Proposal(
        header=header.SerializeToString(),
        payload=proposal_pb2.ChaincodeProposalPayload(input=spec.SerializeToString()).SerializeToString(),
    )
    return Msg(
        type=Msg.TRANSACTION, txid=tx_id, channel_id=CHANNEL, payload=cc_input.SerializeToString(),
        proposal=proposal_pb2.SignedProposal(proposal_bytes=proposal.SerializeToString()),
    )


class FakePeer:
    """The peer's side of one ``Chaincode/Connect`` stream: registers, sends, answers."""

    def __init__(self, call: Any) -> None:
        self.call = call

    @classmethod
    async def connect(cls, channel: grpc.aio.Channel) -> FakePeer:
        call = chaincode_shim_pb2_grpc.ChaincodeStub(channel).Connect()
        register = await asyncio.wait_for(call.read(), 10)
        assert register.type == Msg.REGISTER
        await call.write(Msg(type=Msg.REGISTERED))
        await call.write(Msg(type=Msg.READY))
        return cls(call)

    async def read(self, timeout: float = 5.0) -> chaincode_shim_pb2.ChaincodeMessage:
        return await asyncio.wait_for(self.call.read(), timeout)

    async def reply(self, request: chaincode_shim_pb2.ChaincodeMessage, *, error: bytes | None = None) -> None:
        kind, payload = (Msg.ERROR, error) if error is not None else (Msg.RESPONSE, b"")
        await self.call.write(Msg(type=kind, payload=payload, txid=request.txid, channel_id=request.channel_id))

    async def run(
        self, count: int, *, error: bytes | None = None, quiet_for: float = 3.0
    ) -> dict[str, proposal_response_pb2.Response]:
        """Send ``count`` transactions at once, answer every request (with ``error`` if
        given), and return each COMPLETED response — until all came, or none for ``quiet_for`` s."""
        for i in range(count):
            await self.call.write(transaction(f"tx{i}", "GetFederation", f"{SECRET_ARG}-{i}"))
        completed: dict[str, proposal_response_pb2.Response] = {}
        while len(completed) < count:
            try:
                message = await self.read(quiet_for)
            except TimeoutError:
                break  # the rest were lost
            if message.type == Msg.COMPLETED:
                completed[message.txid] = proposal_response_pb2.Response.FromString(message.payload)
            else:
                await self.reply(message, error=error)
        return completed


def with_peer(server: Server, tls: Tls, scenario: Any, *, client: str | None = "client") -> Any:
    """Run ``scenario(peer)`` on a mutual-TLS stream to ``server``."""

    async def go() -> Any:
        async with grpc.aio.secure_channel(server.address, tls.client_credentials(client)) as channel:
            return await scenario(await FakePeer.connect(channel))

    return asyncio.run(go())


def first_message(address: str, credentials: grpc.ChannelCredentials | None) -> str:
    """What a client gets first on a new stream: the message type, or the gRPC status code."""

    async def go() -> str:
        channel = (
            grpc.aio.insecure_channel(address) if credentials is None else grpc.aio.secure_channel(address, credentials)
        )
        async with channel:
            call = chaincode_shim_pb2_grpc.ChaincodeStub(channel).Connect()
            try:
                message = await asyncio.wait_for(call.read(), 10)
            except grpc.aio.AioRpcError as exc:
                return exc.code().name
            finally:
                call.cancel()
            return Msg.Type.Name(message.type)

    return asyncio.run(go())


# --- mutual TLS (defect 5) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "client", [None, "stranger", "plaintext"], ids=["no-client-cert", "cert-of-another-ca", "plaintext"]
)
def test_a_client_without_a_certificate_of_the_client_ca_is_refused(
    tls: Tls, shared_server: Server, client: str | None
) -> None:
    credentials = None if client == "plaintext" else tls.client_credentials(client)

    assert first_message(shared_server.address, credentials) == "UNAVAILABLE"
    assert shared_server.event("server_started")["tls"] == "mutual"


def test_a_client_with_a_certificate_of_the_client_ca_is_served(tls: Tls, shared_server: Server) -> None:
    assert first_message(shared_server.address, tls.client_credentials()) == "REGISTER"


def test_the_library_server_configured_by_its_environment_serves_plaintext(tls: Tls, unused_port: int) -> None:
    # The defect as shipped: the CORE_TLS_CLIENT_* variables it names are never read.
    script = (
        "from chaincode.shim_fixes import check_context_annotations\n"
        "from chaincode.fedaudit import FedAudit\n"
        "check_context_annotations(FedAudit()).start()\n"
    )
    env = {
        **os.environ,
        "CHAINCODE_ID": "fedaudit:test",
        "CHAINCODE_SERVER_ADDRESS": f"127.0.0.1:{unused_port}",
        "CORE_TLS_CLIENT_KEY_PATH": str(tls.path("server.key")),
        "CORE_TLS_CLIENT_CERT_PATH": str(tls.path("server.crt")),
        "CORE_PEER_TLS_ROOTCERT_FILE": str(tls.path("ca.crt")),
    }
    process = subprocess.Popen(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", script], cwd=REPO, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        address = f"127.0.0.1:{unused_port}"
        seen = "UNAVAILABLE"
        deadline = time.monotonic() + 30
        while seen == "UNAVAILABLE" and time.monotonic() < deadline and process.poll() is None:
            seen = first_message(address, None)

        assert seen == "REGISTER"  # served to a plaintext client
        assert first_message(address, tls.client_credentials()) == "UNAVAILABLE"  # and never over TLS
    finally:
        process.kill()  # it does not stop on SIGTERM while a stream was open
        process.wait(10)


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- shutdown ----------------------------------------------------------------------------


def test_sigterm_stops_a_server_with_an_idle_peer_at_once_and_exits_0(tls: Tls) -> None:
    with running_server(*tls.server_flags()) as server:

        async def connected_then_stopped(peer: FakePeer) -> tuple[int, float]:
            return await asyncio.to_thread(server.stop, signal.SIGTERM)

        code, took = with_peer(server, tls, connected_then_stopped)

    assert code == 0 and took < 5.0
    assert server.event("server_stopped")["reason"] == "drained"  # it did not wait out the grace period
    assert server.event("peer_disconnected")["closed_by"] == "server"


def test_sigterm_lets_a_transaction_in_flight_finish_within_the_grace_period(tls: Tls) -> None:
    with running_server(*tls.server_flags(), "--grace-period", "20") as server:

        async def stopped_mid_transaction(peer: FakePeer) -> tuple[int, float, int]:
            await peer.call.write(transaction("tx1", "GetFederation", "fed1"))
            request = await peer.read()
            assert request.type == Msg.GET_STATE
            server.process.send_signal(signal.SIGTERM)
            began = time.monotonic()
            await asyncio.sleep(0.3)  # the server is draining: the peer still answers
            await peer.reply(request)
            completed = await peer.read()
            assert completed.type == Msg.COMPLETED
            code = await asyncio.to_thread(server.process.wait, 10)
            return code, time.monotonic() - began, proposal_response_pb2.Response.FromString(completed.payload).status

        code, took, status = with_peer(server, tls, stopped_mid_transaction)

    assert code == 0 and took < 5.0
    assert status == 500  # NOT_FOUND from the contract: it ran to the end
    assert server.event("server_stopped")["reason"] == "drained"


def test_sigterm_stops_a_server_stuck_on_an_unanswered_request_when_the_grace_period_ends(tls: Tls) -> None:
    with running_server(*tls.server_flags(), "--grace-period", "1") as server:

        async def stopped_while_stuck(peer: FakePeer) -> tuple[int, float]:
            await peer.call.write(transaction("tx1", "GetFederation", "fed1"))
            assert (await peer.read()).type == Msg.GET_STATE  # and never answered
            return await asyncio.to_thread(server.stop, signal.SIGTERM)

        code, took = with_peer(server, tls, stopped_while_stuck)

    assert code == 0
    assert 0.9 < took < 5.0
    assert server.event("server_stopped")["reason"] == "grace_period_over"


def test_a_second_signal_stops_the_server_at_once(tls: Tls) -> None:
    with running_server(*tls.server_flags(), "--grace-period", "30") as server:

        async def signalled_twice(peer: FakePeer) -> tuple[int, float]:
            await peer.call.write(transaction("tx1", "GetFederation", "fed1"))
            assert (await peer.read()).type == Msg.GET_STATE
            server.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            return await asyncio.to_thread(server.stop, signal.SIGINT)

        code, took = with_peer(server, tls, signalled_twice)

    assert code == 0 and took < 5.0
    assert server.event("server_stopped")["reason"] == "hurried"


# --- the peer stream over gRPC (defects 1 and 3) ------------------------------------------


def test_concurrent_transactions_over_grpc_all_complete(tls: Tls, shared_server: Server) -> None:
    completed = with_peer(shared_server, tls, lambda peer: peer.run(200))

    assert len(completed) == 200
    assert {r.message.split(":")[0] for r in completed.values()} == {"NOT_FOUND"}


def test_the_library_handler_loses_transactions_over_grpc_when_they_run_concurrently(tls: Tls) -> None:
    # The defect as shipped (--without-fixes): writes in flight together fail with
    # GRPC_CALL_ERROR_TOO_MANY_OPERATIONS and their COMPLETED never reaches the peer.
    with running_server(*tls.server_flags(), "--without-fixes") as server:
        completed = with_peer(server, tls, lambda peer: peer.run(400, quiet_for=1.0))
        logged = server.lines[:]

    assert len(completed) < 400
    assert any("GRPC_CALL_ERROR_TOO_MANY_OPERATIONS" in line for line in logged)
    assert server.event("shim_fixes_disabled")["level"] == "warning"


def test_a_peer_error_reply_over_grpc_fails_the_transaction(tls: Tls, shared_server: Server) -> None:
    completed = with_peer(shared_server, tls, lambda peer: peer.run(3, error=b"ledger unavailable"))

    assert {(r.status, r.message) for r in completed.values()} == {
        (500, "PEER_ERROR: the peer refused GetState: ledger unavailable")
    }


# --- logs --------------------------------------------------------------------------------


def test_logs_are_json_lines_of_past_tense_events_without_payloads_keys_or_certificates(tls: Tls) -> None:
    with running_server(*tls.server_flags()) as server:
        with_peer(server, tls, lambda peer: peer.run(5, error=b"refused"))
        first_message(server.address, None)  # a refused plaintext client
        server.stop()

    events = server.events()  # every line parses as JSON
    assert [e["event"] for e in events] == [
        "server_started", "peer_connected", "peer_disconnected", "shutdown_requested", "server_stopped"
    ]
    assert all({"event", "level", "timestamp"} <= set(e) for e in events)
    text = "\n".join(server.lines)
    secrets = [SECRET_ARG, "ledger unavailable", "refused"]
    for name in ("server.key", "server.crt", "ca.crt"):
        body = tls.read(name).decode().splitlines()[1]  # the first line of base64
        secrets.append(body)
    assert [s for s in secrets if s in text] == []


# --- configuration -----------------------------------------------------------------------


def config(*args: str, **env: str) -> ServerConfig:
    return parse_config(list(args), env)


def test_flags_configure_the_server(tls: Tls) -> None:
    cfg = config(
        "--id", "fedaudit_1.0:abc", "--address", "127.0.0.1:9999", *tls.server_flags(), "--log-format", "console"
    )

    assert (cfg.chaincode_id, cfg.address, cfg.log_format, cfg.fixes) == (
        "fedaudit_1.0:abc", "127.0.0.1:9999", "console", True
    )
    assert cfg.tls is not None and cfg.tls.cert_pem == tls.read("server.crt")
    assert cfg.grace_period_s == DEFAULT_GRACE_PERIOD_S


def test_id_and_address_fall_back_to_the_environment_and_flags_win(tls: Tls) -> None:
    env = {"CHAINCODE_ID": "from-env", "CHAINCODE_SERVER_ADDRESS": "127.0.0.1:7000"}

    from_env = config(*tls.server_flags(), **env)

    assert (from_env.chaincode_id, from_env.port) == ("from-env", 7000)
    assert config("--id", "flag", "--address", "127.0.0.1:7001", *tls.server_flags(), **env).address == "127.0.0.1:7001"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "no chaincode package id: give --id or set CHAINCODE_ID"),
        (("--id", "x"), "no listen address: give --address or set CHAINCODE_SERVER_ADDRESS"),
        (("--id", "x", "--address", "9999"), "--address '9999': expected host:port, e.g. 127.0.0.1:9999"),
        (("--id", "x", "--address", "127.0.0.1:99999"), "--address '127.0.0.1:99999': expected host:port"),
        (("--id", "x", "--address", "127.0.0.1:1"),
         "no TLS: give --tls-cert, --tls-key and --client-ca (or --insecure, explicitly)"),
        (("--id", "x", "--address", "127.0.0.1:1", "--tls-cert", "a", "--tls-key", "b"),
         "TLS half configured: --client-ca missing (mutual TLS needs all three)"),
        (("--id", "x", "--address", "127.0.0.1:1", "--client-ca", "c"),
         "TLS half configured: --tls-cert, --tls-key missing"),
        (("--id", "x", "--address", "127.0.0.1:1", "--insecure", "--client-ca", "c"),
         "--insecure together with --client-ca: choose mutual TLS or --insecure"),
        (("--id", "x", "--address", "127.0.0.1:1", "--insecure", "--grace-period", "-1"),
         "--grace-period -1.0: must be 0 or more seconds"),
    ],
)
def test_an_unusable_configuration_is_refused_with_one_line(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        config(*args)

    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)


def test_insecure_serves_without_tls_only_when_asked() -> None:
    assert config("--id", "x", "--address", "127.0.0.1:1", "--insecure").tls is None


def _encrypted_key(tls: Tls) -> bytes:
    key = serialization.load_pem_private_key(tls.read("server.key"), None)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("server.key", None, "--tls-key {}: no such file"),
        ("server.crt", None, "--tls-cert {}: no such file"),
        ("ca.crt", None, "--client-ca {}: no such file"),
        ("server.crt", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
         "--tls-cert {}: not a PEM certificate"),
        ("server.key", b"not a key", "--tls-key {}: not a PEM private key"),
        ("ca.crt", b"", "--client-ca {}: the file is empty"),
        ("ca.crt", b"junk", "--client-ca {}: not a PEM certificate"),
        ("server.key", "another key", "--tls-key {}: does not match the certificate"),
        ("server.key", "encrypted", "--tls-key {}: the key is encrypted"),
    ],
    ids=[
        "missing-key", "missing-cert", "missing-ca", "bad-cert", "bad-key", "empty-ca", "bad-ca", "wrong-key",
        "encrypted-key",
    ],
)
def test_a_missing_or_malformed_tls_file_is_named_in_one_line_and_exits_2(
    tls: Tls, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: bytes | str | None, problem: str
) -> None:
    target = tmp_path / name
    if content == "another key":
        target.write_bytes(tls.read("client.key"))
    elif content == "encrypted":
        target.write_bytes(_encrypted_key(tls))
    elif isinstance(content, bytes):
        target.write_bytes(content)
    flags = [str(target) if flag == str(tls.path(name)) else flag for flag in tls.server_flags()]

    code = main(["--id", "x", "--address", "127.0.0.1:1", *flags])

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: {problem.format(target)}") and err.count("\n") == 1


def test_the_key_is_never_shown_in_the_configuration(tls: Tls) -> None:
    cfg = config("--id", "x", "--address", "127.0.0.1:1", *tls.server_flags())
    key_line = tls.read("server.key").decode().splitlines()[1]

    assert key_line not in repr(cfg) and key_line not in str(cfg.model_dump())


def test_load_tls_accepts_a_client_ca_file_with_several_cas(tls: Tls, tmp_path: Path) -> None:
    bundle = tmp_path / "cas.crt"
    bundle.write_bytes(tls.read("ca.crt") + pki.certificate_pem(pki.init_ca("other").cert).encode())

    material = load_tls(tls.path("server.crt"), tls.path("server.key"), bundle)

    assert material.client_ca_pem.count(b"BEGIN CERTIFICATE") == 2


def test_a_busy_address_exits_1_with_a_logged_reason(tls: Tls, shared_server: Server) -> None:
    address = shared_server.address

    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "chaincode.server", "--id", "x", "--address", address, *tls.server_flags()],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )

    assert done.returncode == 1
    failed = [json.loads(line) for line in done.stderr.splitlines() if '"server_failed"' in line]
    assert failed and failed[0]["reason"].startswith(f"cannot listen on {address}")
