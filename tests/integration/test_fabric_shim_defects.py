"""fabric-chaincode-python 2.5.4's peer-facing defects, reproduced against a real peer and shown gone.

For each of defects 1, 2, 3 and 5 a test shows the defect with the library as shipped and
its absence with the project's fixes, on the session's real network (3 peer
organisations, majority endorsement). The fixes live in :mod:`chaincode.shim_fixes` and
:mod:`chaincode.server`; the servers here run a probe contract (:class:`ShimProbe`) that
makes one stub call per function, so each test sees exactly the library behaviour it is
about. This module is also the probe's server (``python -m
tests.integration.test_fabric_shim_defects``, see the end of the file).

Three extra chaincode definitions are deployed on the channel, each served by one server
process this module starts (one package and one TLS CA for all three peers):

==================== ===================================================================
``shimprobe_lib``    the project's server with ``--without-fixes``: the library's own
                     handler, over mutual TLS (defects 1, 2, 3 live; TLS as fixed)
``shimprobe_fixed``  the project's server as deployed: every fix
``shimprobe_envtls`` the library's own ``start()``, configured as its documentation says,
                     through ``CORE_TLS_CLIENT_*`` (defect 5); its package asks for mTLS
==================== ===================================================================

The definitions are deployed with the network driver's own steps (package, install on
every peer, approve for every peer organisation, commit); the peers dial a server only
when a transaction first needs it. The library's lost COMPLETED messages (defect 1) hold
the peers for their chaincode timeout, so that test runs last and waits until the channel
commits again.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc
import pytest
from fabric_protos.peer import chaincode_shim_pb2, chaincode_shim_pb2_grpc

from chaincode import server as chaincode_server
from chaincode.shim_fixes import Contract, TransactionContext, check_context_annotations
from ledger.fabric import admin, packaging
from ledger.fabric.blocks import find_transaction
from ledger.fabric.gateway import Contract as GatewayContract
from ledger.fabric.gateway import EndorseError, GatewayError, SubmitResult, connect_from_profile
from ledger.fabric.gateway import Network as GatewayNetwork
from ledger.fabric.network import Network
from ledger.fabric.profile import ConnectionProfile

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
MODULE = "tests.integration.test_fabric_shim_defects"
VERSION = "1.0"
# How the peer refuses a write after a paginated query (its reply to PUT_STATE).
PAGINATED_REFUSAL = "Transaction has already performed a paginated query. Writes are not allowed"


# --- the probe contract and its server ----------------------------------------------------


class ShimProbe(Contract):
    """One stub call per function, so that a test sees exactly what the shim did with it."""

    Name = "probe"

    async def Put(self, ctx: TransactionContext, key: str, value: str) -> str:
        """Write ``key`` and set an event naming it."""
        await ctx.get_stub().put_state(key, value.encode())
        ctx.get_stub().set_event("Put", f"{key}={value}".encode())
        return value

    async def Get(self, ctx: TransactionContext, key: str) -> str:
        """The stored value of ``key`` ("" when there is none)."""
        return bytes(await ctx.get_stub().get_state(key) or b"").decode()

    async def PutAfterPagedQuery(self, ctx: TransactionContext, key: str, value: str) -> str:
        """A paginated range query, then a write: the peer refuses the write (read-only after paging)."""
        rows = await ctx.get_stub().get_state_by_range_with_pagination("", "", 1)
        async for _ in rows:
            pass
        await ctx.get_stub().put_state(key, value.encode())
        return value


# --- deploying the probe's chaincode definitions ------------------------------------------


@dataclass(frozen=True)
class ProbeChaincode:
    """A committed chaincode definition served at ``address`` (one package for every peer)."""

    name: str
    address: str
    package_id: str
    tls: packaging.ChaincodeTls


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def deploy_probe(network: Network, name: str, workdir: Path) -> ProbeChaincode:
    """Package, install, approve (every peer organisation) and commit chaincode ``name``.

    Needs the server running only from the first invocation on: the peers dial it then.
    """
    top = network.top
    address = f"127.0.0.1:{_free_port()}"
    tls = packaging.make_tls(workdir / name / "tls", name, ("127.0.0.1", "localhost"))
    package = packaging.build_package(workdir / name / f"{name}.tgz", f"{name}_{VERSION}", address, tls)
    admins = [admin.PeerAdmin(network.install, top, peer) for peer in top.peers]
    with ThreadPoolExecutor(max_workers=len(admins)) as pool:
        list(pool.map(lambda a: a.install_package(package.path), admins))
        list(pool.map(lambda a: a.approve(name, VERSION, 1, package.package_id, top.endorsement_policy), admins))
    admins[0].commit(name, VERSION, 1, top.endorsement_policy, top.peers)
    return ProbeChaincode(name, address, package.package_id, tls)


ServerKind = Literal["fixed", "library-handler", "library-start"]


@contextmanager
def serving(probe: ProbeChaincode, log: Path, *, how: ServerKind) -> Iterator[subprocess.Popen[bytes]]:
    """Run the probe's server, logging to ``log``; stop it by pid.

    ``fixed``: the project's server; ``library-handler``: the same with ``--without-fixes``;
    ``library-start``: the library's own server, configured by its environment.
    """
    env = dict(os.environ)
    if how == "library-start":
        argv = [sys.executable, "-m", MODULE, "--library-start"]
        env.update(
            CHAINCODE_ID=probe.package_id,
            CHAINCODE_SERVER_ADDRESS=probe.address,
            CORE_TLS_CLIENT_KEY_PATH=str(probe.tls.server_key),
            CORE_TLS_CLIENT_CERT_PATH=str(probe.tls.server_cert),
            CORE_PEER_TLS_ROOTCERT_FILE=str(probe.tls.ca_cert),
        )
    else:
        argv = [
            sys.executable, "-m", MODULE, "--id", probe.package_id, "--address", probe.address,
            "--tls-cert", str(probe.tls.server_cert), "--tls-key", str(probe.tls.server_key),
            "--client-ca", str(probe.tls.ca_cert), "--log-format", "json",
            *(["--without-fixes"] if how == "library-handler" else []),
        ]
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        host, port = probe.address.rsplit(":", 1)
        deadline = time.monotonic() + 30
        while not _listening(host, int(port)):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the {how} server for {probe.name} did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()  # the library's own server may not stop on SIGTERM
                process.wait(10)


def _listening(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


@dataclass(frozen=True)
class Probes:
    """The three probe chaincodes, served, and a coordinator's Gateway to call them."""

    library: GatewayContract
    fixed: GatewayContract
    env_tls: GatewayContract
    channel: GatewayNetwork
    deployments: dict[str, ProbeChaincode]
    logs: dict[str, Path]


@pytest.fixture(scope="module")
def probes(
    fabric_network: Network, fabric_profile: ConnectionProfile, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Probes]:
    workdir = tmp_path_factory.mktemp("shim-probes")
    kinds: dict[str, ServerKind] = {
        "shimprobe_lib": "library-handler", "shimprobe_fixed": "fixed", "shimprobe_envtls": "library-start"
    }
    with ThreadPoolExecutor(max_workers=len(kinds)) as pool:
        deployed = dict(zip(kinds, pool.map(lambda n: deploy_probe(fabric_network, n, workdir), kinds), strict=True))
    logs = {name: workdir / f"{name}.log" for name in kinds}
    with (
        serving(deployed["shimprobe_lib"], logs["shimprobe_lib"], how="library-handler"),
        serving(deployed["shimprobe_fixed"], logs["shimprobe_fixed"], how="fixed"),
        serving(deployed["shimprobe_envtls"], logs["shimprobe_envtls"], how="library-start"),
        connect_from_profile(fabric_profile, "CoordinatorMSP") as gateway,
    ):
        channel = gateway.get_network(fabric_profile.channel)
        yield Probes(
            library=channel.get_contract("shimprobe_lib"),
            fixed=channel.get_contract("shimprobe_fixed"),
            env_tls=channel.get_contract("shimprobe_envtls"),
            channel=channel,
            deployments=deployed,
            logs=logs,
        )


def fresh_key() -> str:
    return "k-" + secrets.token_hex(6)


def first_message(address: str, credentials: grpc.ChannelCredentials | None) -> str:
    """What a client gets first from a chaincode server: a message type, or the gRPC status."""
    channel = grpc.insecure_channel(address) if credentials is None else grpc.secure_channel(address, credentials)
    with channel:
        responses = chaincode_shim_pb2_grpc.ChaincodeStub(channel).Connect(iter(()), timeout=10)
        try:
            return chaincode_shim_pb2.ChaincodeMessage.Type.Name(next(responses).type)
        except grpc.RpcError as exc:
            return exc.code().name
        finally:
            responses.cancel()


# --- defect 2: chaincode events -----------------------------------------------------------


def _event_in_block(channel: GatewayNetwork, result: SubmitResult) -> tuple[str | None, bytes | None]:
    committed = find_transaction(channel.get_block_by_number(result.block_number), result.tx_id)
    assert committed is not None and committed.valid
    return committed.event_name, committed.event_payload


def test_defect_2_the_library_commits_transactions_without_their_events(probes: Probes) -> None:
    key = fresh_key()

    result = probes.library.submit("Put", key, "v")

    assert _event_in_block(probes.channel, result) == (None, None)


def test_defect_2_fixed_the_event_set_by_the_contract_is_in_the_block_and_the_event_stream(probes: Probes) -> None:
    key = fresh_key()

    result = probes.fixed.submit("Put", key, "v")

    assert _event_in_block(probes.channel, result) == ("Put", f"{key}=v".encode())
    stream = probes.channel.chaincode_events("shimprobe_fixed", start_block=result.block_number)
    try:
        event = next(stream)
    finally:
        stream.close()
    assert (event.tx_id, event.chaincode_id, event.event_name) == (result.tx_id, "shimprobe_fixed", "Put")


# --- defect 3: peer ERROR replies ---------------------------------------------------------


def test_defect_3_the_library_commits_valid_a_transaction_whose_write_the_peer_refused(probes: Probes) -> None:
    key = fresh_key()

    result = probes.library.submit("PutAfterPagedQuery", key, "v")  # VALID, says the ledger

    assert result.status == "VALID"
    assert probes.library.evaluate("Get", key) == b""  # and the write is not there


def test_defect_3_fixed_a_refused_write_fails_the_transaction_with_the_peers_reason(probes: Probes) -> None:
    key = fresh_key()

    with pytest.raises(EndorseError) as refused:
        probes.fixed.submit("PutAfterPagedQuery", key, "v")

    message = refused.value.chaincode_message or ""
    assert message.startswith("PEER_ERROR: the peer refused PutState: "), str(refused.value)
    assert message.endswith(PAGINATED_REFUSAL), str(refused.value)
    assert probes.fixed.evaluate("Get", key) == b""


# --- defect 5: TLS of the chaincode server ------------------------------------------------


def test_defect_5_the_library_configured_by_its_environment_serves_plaintext_so_the_peer_cannot_connect(
    probes: Probes,
) -> None:
    served = probes.deployments["shimprobe_envtls"]

    assert first_message(served.address, None) == "REGISTER"  # any plaintext client is served
    with pytest.raises(GatewayError):
        probes.env_tls.evaluate("Get", fresh_key())  # the peer, dialling mutual TLS, is not


def test_defect_5_fixed_the_server_serves_the_peer_over_mutual_tls_and_refuses_other_clients(probes: Probes) -> None:
    served = probes.deployments["shimprobe_fixed"]
    ca = served.tls.ca_cert.read_bytes()

    assert probes.fixed.evaluate("Get", fresh_key()) == b""  # the peer is served
    assert first_message(served.address, None) == "UNAVAILABLE"
    assert first_message(served.address, grpc.ssl_channel_credentials(ca)) == "UNAVAILABLE"


# --- defect 1: concurrent transactions ----------------------------------------------------

IN_FLIGHT = 40
# A transaction whose COMPLETED the library lost holds its peer for the chaincode timeout
# (30 s), and the commits behind it wait: past this, it counts as failed.
COMMIT_TIMEOUT_S = 20.0


def _submit_all(contract: GatewayContract, keys: list[str]) -> tuple[list[SubmitResult], list[GatewayError]]:
    """Submit ``Put(key, key)`` for every key, ``IN_FLIGHT`` at a time."""

    def one(key: str) -> SubmitResult | GatewayError:
        try:
            return contract.submit("Put", key, key, commit_timeout=COMMIT_TIMEOUT_S)
        except GatewayError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
        outcomes = list(pool.map(one, keys))
    return (
        [o for o in outcomes if isinstance(o, SubmitResult)],
        [o for o in outcomes if isinstance(o, GatewayError)],
    )


def test_defect_1_fixed_concurrent_transactions_all_commit_valid(probes: Probes) -> None:
    keys = [fresh_key() for _ in range(3 * IN_FLIGHT)]

    committed, failed = _submit_all(probes.fixed, keys)

    assert failed == [] and len(committed) == len(keys)
    assert {r.status for r in committed} == {"VALID"}
    assert "GRPC_CALL_ERROR_TOO_MANY_OPERATIONS" not in probes.logs["shimprobe_fixed"].read_text()


def test_defect_1_the_library_loses_concurrent_transactions(probes: Probes) -> None:
    # Last in the module: the library's lost COMPLETED messages leave the peers waiting
    # their chaincode timeout, holding the channel's commit lock, until the test waits
    # that out below.
    keys = [fresh_key() for _ in range(IN_FLIGHT)]

    committed, failed = _submit_all(probes.library, keys)

    assert failed, f"all {len(committed)} transactions committed: the library's concurrent writes did not collide"
    assert "GRPC_CALL_ERROR_TOO_MANY_OPERATIONS" in probes.logs["shimprobe_lib"].read_text()
    _wait_until_the_channel_commits(probes.fixed)


def _wait_until_the_channel_commits(contract: GatewayContract, timeout: float = 120.0) -> None:
    """Leave the shared network as found: committing again."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            contract.submit("Put", fresh_key(), "after")
            return
        except GatewayError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


# --- the probe's server -------------------------------------------------------------------

if __name__ == "__main__":
    # `python -m tests.integration.test_fabric_shim_defects FLAGS` serves ShimProbe through
    # the project's server (FLAGS as for `python -m chaincode.server`); with
    # `--library-start` through the library's own server, configured by its environment.
    if sys.argv[1:] == ["--library-start"]:
        check_context_annotations(ShimProbe()).start()
    else:
        sys.exit(chaincode_server.main(sys.argv[1:], contract=ShimProbe()))
