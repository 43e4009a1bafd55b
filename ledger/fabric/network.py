"""Bring a local Fabric network up, report on it, and take it down — native processes only.

``up`` is idempotent and restartable: the first run creates the crypto material, the
channel's genesis block, every node's configuration and the chaincode packages under
the data folder; it starts the orderers, joins them to the channel (channel
participation, no system channel), starts the peers and joins them, starts one
``fedaudit`` chaincode server per peer organisation (mutual TLS), installs, approves
and commits the chaincode under a majority-of-peer-organisations endorsement policy,
and writes the connection profile. A later ``up`` on a running network changes
nothing; on a stopped one it restarts the processes from the existing data.

Every process is detached with a pid file (pid + start time) and a log file; ``down``
stops them by pid, never by name. A failure part-way stops what was started and
raises :class:`NetworkError` naming the cause.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ledger import processes
from ledger.fabric import admin, config, packaging
from ledger.fabric.install import FabricInstall
from ledger.fabric.profile import ConnectionProfile, KeyPair, OrdererEndpoint, OrgProfile, PeerEndpoint
from ledger.fabric.topology import ChaincodeServer, Org, Topology

__all__ = [
    "NetworkError",
    "ChaincodeDefinition",
    "NodeStatus",
    "NetworkStatus",
    "Network",
    "port_free",
]

Progress = Callable[[str], None]
CHAINCODE_VERSION = "1.0"
_REPO = Path(__file__).resolve().parents[2]


class NetworkError(RuntimeError):
    """The network could not be brought up, or is not in the state asked for."""


@dataclass(frozen=True)
class ChaincodeDefinition:
    """The chaincode definition committed on the channel, and each organisation's package."""

    name: str
    version: str
    sequence: int
    policy: str
    package_ids: dict[str, str]


@dataclass
class NodeStatus:
    """One process of the network as ``status`` sees it."""

    name: str
    kind: str
    pid: int | None
    running: bool
    healthy: bool | None = None
    endpoint: str | None = None
    height: int | None = None
    detail: str | None = None


@dataclass
class NetworkStatus:
    """What ``status`` reports: every node, and the committed chaincode."""

    data_dir: str
    channel: str
    consensus: str
    nodes: list[NodeStatus] = field(default_factory=list)
    chaincode: dict[str, Any] | None = None

    @property
    def running(self) -> list[NodeStatus]:
        """Nodes whose process is alive."""
        return [n for n in self.nodes if n.running]

    @property
    def healthy(self) -> bool:
        """Every node runs and answers healthy, and the chaincode is committed."""
        return bool(self.nodes) and all(n.running and n.healthy is not False for n in self.nodes) \
            and self.chaincode is not None

    def to_json(self) -> dict[str, Any]:
        """Plain dict for ``--json``."""
        return {
            "data_dir": self.data_dir, "channel": self.channel, "consensus": self.consensus,
            "healthy": self.healthy, "nodes": [asdict(n) for n in self.nodes],
            "chaincode": self.chaincode,
        }


def _health(address: str, timeout: float = 2.0) -> tuple[bool, str | None]:
    """GET /healthz of an operations endpoint: (healthy, detail)."""
    try:
        with urllib.request.urlopen(f"http://{address}/healthz", timeout=timeout) as reply:  # noqa: S310
            return reply.status == 200, None
    except urllib.error.HTTPError as exc:
        return False, exc.read().decode("utf-8", "replace")[:200]
    except (urllib.error.URLError, OSError) as exc:
        return False, str(getattr(exc, "reason", exc))


def _height(address: str, channel: str) -> int | None:
    """The channel's block height from a node's Prometheus metrics."""
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=2.0) as reply:  # noqa: S310
            text = reply.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError):
        return None
    for line in text.splitlines():
        if line.startswith("ledger_blockchain_height{") and f'channel="{channel}"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return None


def port_free(host: str, port: int) -> bool:
    """Whether ``port`` on ``host`` can be bound now (a port in TIME_WAIT counts as free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the servers themselves do: a port in TIME_WAIT after a stop is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class Network:
    """One local network: its topology, the Fabric install it runs, and its processes."""

    def __init__(
        self, top: Topology, install: FabricInstall, *, python: str | None = None,
        chaincode_module: str = "chaincode.server", python_path: tuple[Path, ...] = (),
    ) -> None:
        self.top = top
        self.install = install
        self.python = python or sys.executable
        # Tests may serve the contract with another server module (e.g. one without the
        # library fixes, to reproduce its defects against a real peer).
        self.chaincode_module = chaincode_module
        self.python_path = (_REPO, *python_path)
        self._started: list[str] = []

    # --- public operations ----------------------------------------------------------

    def up(self, progress: Progress | None = None, *, timeout: float = 120.0) -> ConnectionProfile:
        """Bring the network up (idempotent); returns the connection profile."""
        say = progress or (lambda _msg: None)
        if self.is_running():
            say("already running")
            return self.profile()
        leftovers = [n for n in self._process_names() if self._pid(n)]
        if leftovers:
            raise NetworkError(
                f"the network in {self.top.data_dir} is half running ({', '.join(leftovers)}); "
                "run `fedledger network down` first"
            )
        self._check_ports()
        self._started = []
        fresh = not self.top.state_path.is_file()
        try:
            if fresh:
                say("creating crypto material, channel genesis block and node configuration")
                self._prepare()
            deadline = time.monotonic() + timeout
            say(f"starting {len(self.top.orderers)} orderer(s)")
            for o in self.top.orderers:
                self._spawn(o.name, [self.install.tool("orderer")], {"FABRIC_CFG_PATH": str(self.top.node_dir(o.name))})
            self._wait_healthy([(o.name, f"{o.host}:{o.operations_port}") for o in self.top.orderers], deadline)
            # /healthz can answer before the admin listener accepts connections.
            for o in self.top.orderers:
                self._wait_port(o.name, o.host, o.admin_port, deadline)
                self._wait_port(o.name, o.host, o.port, deadline)
            if fresh:
                say(f"joining the orderers to channel {self.top.channel}")
                with ThreadPoolExecutor(max_workers=len(self.top.orderers)) as pool:
                    joins = [pool.submit(admin.osnadmin_join, self.install, self.top, o, self._genesis)
                             for o in self.top.orderers]
                    for join in joins:
                        join.result()
            say(f"starting {len(self.top.peers)} peers")
            for p in self.top.peers:
                self._spawn(p.name, [self.install.tool("peer"), "node", "start"],
                            {"FABRIC_CFG_PATH": str(self.top.node_dir(p.name))})
            self._wait_healthy([(p.name, f"{p.host}:{p.operations_port}") for p in self.top.peers], deadline)
            for p in self.top.peers:
                self._wait_port(p.name, p.host, p.port, deadline)
            if fresh:
                say("joining the peers to the channel")
                self._each_peer(lambda a: a.join(self._genesis))
                definition = self._deploy_chaincode(say, CHAINCODE_VERSION, 1)
            else:
                definition = self.definition()
                self._start_chaincode_servers(definition)
            say("waiting for every peer's chaincode")
            self._warm_up(deadline)
            say("waiting until every peer's Gateway can gather a majority's endorsements")
            self._wait_endorsable(deadline)
        except BaseException as exc:
            stopped = self._stop_started()
            if fresh:
                self._forget_partial()
            if isinstance(exc, (NetworkError, admin.AdminError)):
                raise NetworkError(f"{exc} (stopped {len(stopped)} process(es) it had started)") from exc
            raise
        profile = self.profile()
        say("up")
        return profile

    def upgrade_chaincode(self, version: str, progress: Progress | None = None) -> ChaincodeDefinition:
        """Deploy the next sequence of ``fedaudit`` (new packages, servers restarted, approve, commit)."""
        say = progress or (lambda _msg: None)
        current = self.definition()
        for server in self.top.chaincode_servers:
            processes.stop(self._pid(server.name) or 0, timeout=10)
        definition = self._deploy_chaincode(say, version, current.sequence + 1)
        deadline = time.monotonic() + 60
        self._warm_up(deadline)
        self._wait_endorsable(deadline)
        return definition

    def down(self, *, purge: bool = False) -> list[processes.StopResult]:
        """Stop every process of the network by pid; ``purge`` also deletes its data."""
        results = []
        for name in reversed(self._process_names()):
            pid = processes.read_pid(self.top.pid_path(name))
            if pid is not None:
                results.append(processes.stop(pid, timeout=15))
            self.top.pid_path(name).unlink(missing_ok=True)
        if purge:

            shutil.rmtree(self.top.data_dir, ignore_errors=True)
        return results

    def is_running(self) -> bool:
        """Every process of an already created network is alive."""
        if not self.top.state_path.is_file():
            return False
        return all(self._pid(n) for n in self._process_names())

    def status(self) -> NetworkStatus:
        """Each node's process, health and block height, and the committed chaincode."""
        report = NetworkStatus(str(self.top.data_dir), self.top.channel, self.top.consensus)
        nodes = [(o.name, "orderer", o.endpoint, f"{o.host}:{o.operations_port}") for o in self.top.orderers]
        nodes += [(p.name, "peer", p.endpoint, f"{p.host}:{p.operations_port}") for p in self.top.peers]
        for name, kind, endpoint, operations in nodes:
            node = self._node_status(name, kind, endpoint, operations)
            if node.healthy:
                node.height = _height(operations, self.top.channel)
            report.nodes.append(node)
        for s in self.top.chaincode_servers:
            pid = self._pid(s.name)
            up = pid is not None and not port_free(s.host, s.port)
            report.nodes.append(NodeStatus(s.name, "chaincode", pid, pid is not None, up, s.address,
                                           detail=None if up or pid is None else "not listening"))
        if report.nodes and report.nodes[len(self.top.orderers)].healthy:
            committed = admin.PeerAdmin(self.install, self.top, self.top.peers[0]).committed(self.top.chaincode)
            if committed is not None:
                report.chaincode = {
                    "name": self.top.chaincode,
                    "version": committed.get("version"),
                    "sequence": committed.get("sequence"),
                    "approvals": committed.get("approvals"),
                }
        return report

    def log_path(self, name: str) -> Path:
        """The log file of process ``name``; a clear error for an unknown name."""
        names = self._process_names()
        if name not in names:
            raise NetworkError(f"no process {name!r} in this network; processes: {', '.join(names)}")
        return self.top.log_path(name)

    def process_names(self) -> list[str]:
        """Names of every process of the network (orderers, peers, chaincode servers)."""
        return self._process_names()

    def pid(self, name: str) -> int | None:
        """The live pid of process ``name`` or ``None``."""
        return self._pid(name)

    def stop_process(self, name: str) -> processes.StopResult | None:
        """Stop one process (e.g. a peer, in a fault test); ``restart`` brings it back."""
        pid = self._pid(name)
        if pid is None:
            return None
        result = processes.stop(pid, timeout=15)
        self.top.pid_path(name).unlink(missing_ok=True)
        return result

    def restart_process(self, name: str, *, timeout: float = 60.0) -> None:
        """Start one stopped process again from its existing data."""
        if self._pid(name) is not None:
            return
        for o in self.top.orderers:
            if o.name == name:
                self._spawn(name, [self.install.tool("orderer")], {"FABRIC_CFG_PATH": str(self.top.node_dir(name))})
                self._wait_healthy([(name, f"{o.host}:{o.operations_port}")], time.monotonic() + timeout)
                return
        for p in self.top.peers:
            if p.name == name:
                deadline = time.monotonic() + timeout
                self._spawn(name, [self.install.tool("peer"), "node", "start"],
                            {"FABRIC_CFG_PATH": str(self.top.node_dir(name))})
                self._wait_healthy([(name, f"{p.host}:{p.operations_port}")], deadline)
                self._wait_endorsable(deadline)
                return
        for s in self.top.chaincode_servers:
            if s.name == name:
                self._start_chaincode_server(s, self.definition().package_ids[s.org.msp_id])
                self._wait_listening(s, time.monotonic() + timeout)
                return
        raise NetworkError(f"no process {name!r} in this network")

    def definition(self) -> ChaincodeDefinition:
        """The chaincode definition recorded when it was last deployed."""
        state = processes.read_json(self.top.state_path)
        if state is None or "chaincode" not in state:
            raise NetworkError(f"{self.top.state_path}: no network state; run `fedledger network up`")
        return ChaincodeDefinition(**state["chaincode"])

    def profile(self) -> ConnectionProfile:
        """The connection profile of this network (written to the data folder by ``up``)."""
        top = self.top

        def org_profile(org: Org) -> OrgProfile:
            ca_dir = top.org_ca_dir(org)
            identities = {}
            for role, user in (("admin", "Admin"), ("user", "User1")):
                signcerts = top.user_crypto(org, user) / "msp" / "signcerts"
                keystore = top.user_crypto(org, user) / "msp" / "keystore"
                identities[role] = KeyPair(cert=next(signcerts.glob("*.pem")), key=next(keystore.glob("*_sk")))
            user_tls = top.user_crypto(org, "User1") / "tls"
            return OrgProfile(
                msp_id=org.msp_id,
                ca=KeyPair(cert=ca_dir / "ca.crt", key=ca_dir / "ca.key"),
                tls_ca=config.tls_ca(top, org),
                peers=[
                    PeerEndpoint(name=p.host_name, endpoint=p.endpoint, server_name=p.host_name,
                                 tls_ca=config.tls_ca(top, org), operations=f"{p.host}:{p.operations_port}")
                    for p in top.peers if p.org == org
                ],
                identities=identities,
                tls_client=KeyPair(cert=user_tls / "client.crt", key=user_tls / "client.key"),
            )

        return ConnectionProfile(
            name="fedledger",
            channel=top.channel,
            chaincode=top.chaincode,
            orderers=[
                OrdererEndpoint(
                    name=o.host_name, endpoint=o.endpoint, server_name=o.host_name,
                    tls_ca=top.orderer_crypto(o) / "tls" / "ca.crt",
                    admin_endpoint=f"{o.host}:{o.admin_port}", operations=f"{o.host}:{o.operations_port}",
                )
                for o in top.orderers
            ],
            orgs={org.msp_id: org_profile(org) for org in top.orgs},
        )

    # --- steps --------------------------------------------------------------------------

    @property
    def _genesis(self) -> Path:
        return self.top.data_dir / "channel" / f"{self.top.channel}.block"

    def _prepare(self) -> None:
        top = self.top
        top.data_dir.mkdir(parents=True, exist_ok=True)
        crypto_yaml = config.write_yaml(top.data_dir / "channel" / "crypto-config.yaml", config.crypto_config(top))
        admin.cryptogen(self.install, crypto_yaml, top.crypto_dir)
        for org in top.orgs:
            self._write_org_ca(org)
        config.write_yaml(top.data_dir / "channel" / "configtx.yaml", config.configtx(top, self.install))
        admin.genesis_block(self.install, top.data_dir / "channel", top.channel, self._genesis)
        for o in top.orderers:
            config.write_yaml(top.node_dir(o.name) / "orderer.yaml", config.orderer_config(top, self.install, o))
        for p in top.peers:
            config.write_yaml(top.node_dir(p.name) / "core.yaml", config.peer_core(top, self.install, p))

    def _write_org_ca(self, org: Org) -> None:
        """The org CA as ``orgs/<MSP>/ca/{ca.crt,ca.key}``: the layout ``participant ca sign
        --ca-dir`` reads, so an institution issues its participant certificate from the
        same CA its Fabric identities come from."""
        source = self.top.org_crypto(org) / "ca"
        target = self.top.org_ca_dir(org)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(next(source.glob("*-cert.pem")), target / "ca.crt")
        (target / "ca.key").touch(mode=0o600)
        (target / "ca.key").chmod(0o600)
        shutil.copyfile(source / "priv_sk", target / "ca.key")

    def _forget_partial(self) -> None:
        """Remove what a failed first ``up`` created (logs stay, for the diagnosis)."""

        for part in ("crypto", "channel", "nodes", "chaincode", "orgs", "pids"):
            shutil.rmtree(self.top.data_dir / part, ignore_errors=True)
        self.top.profile_path.unlink(missing_ok=True)

    def _check_ports(self) -> None:
        busy = [f"{port} ({what})" for what, port in self.top.ports() if not port_free(self.top.host, port)]
        if busy:
            raise NetworkError(
                f"port(s) in use on {self.top.host}: {', '.join(busy)}; stop what uses them or pick "
                "another --base-port"
            )

    def _process_names(self) -> list[str]:
        top = self.top
        return [o.name for o in top.orderers] + [p.name for p in top.peers] + [s.name for s in top.chaincode_servers]

    def _pid(self, name: str) -> int | None:
        pid = processes.read_pid(self.top.pid_path(name))
        # A child of ours that exited stays a zombie until reaped: that is not running.
        return pid if pid is not None and processes.pid_alive(pid) else None

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        full_env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), **env}
        processes.spawn(argv, env=full_env, log_path=self.top.log_path(name), pid_path=self.top.pid_path(name),
                        cwd=self.top.data_dir)
        self._started.append(name)

    def _stop_started(self) -> list[str]:
        stopped = []
        for name in reversed(self._started):
            pid = self._pid(name)
            if pid is not None:
                processes.stop(pid, timeout=10)
                stopped.append(name)
            self.top.pid_path(name).unlink(missing_ok=True)
        self._started = []
        return stopped

    def _wait_healthy(self, nodes: list[tuple[str, str]], deadline: float) -> None:
        pending = dict(nodes)
        while pending:
            for name, address in list(pending.items()):
                if self._pid(name) is None:
                    raise NetworkError(
                        f"{name} exited during start-up: {processes.tail(self.top.log_path(name), 3)}"
                    )
                if _health(address)[0]:
                    del pending[name]
            if pending and time.monotonic() > deadline:
                raise NetworkError(f"{', '.join(pending)} not healthy in time (see {self.top.data_dir / 'logs'})")
            if pending:
                time.sleep(0.1)

    def _wait_port(self, name: str, host: str, port: int, deadline: float) -> None:
        while port_free(host, port):
            if self._pid(name) is None:
                raise NetworkError(f"{name} exited during start-up: {processes.tail(self.top.log_path(name), 3)}")
            if time.monotonic() > deadline:
                raise NetworkError(f"{name} does not listen on {host}:{port}")
            time.sleep(0.05)

    def _wait_listening(self, server: ChaincodeServer, deadline: float) -> None:
        while port_free(server.host, server.port):
            if self._pid(server.name) is None:
                raise NetworkError(
                    f"{server.name} exited during start-up: {processes.tail(self.top.log_path(server.name), 3)}"
                )
            if time.monotonic() > deadline:
                raise NetworkError(f"{server.name} does not listen on {server.address}")
            time.sleep(0.05)

    def _each_peer(self, action: Callable[[admin.PeerAdmin], object]) -> None:
        admins = [admin.PeerAdmin(self.install, self.top, p) for p in self.top.peers]
        with ThreadPoolExecutor(max_workers=len(admins)) as pool:
            for future in [pool.submit(action, a) for a in admins]:
                future.result()

    def _chaincode_tls(self, server: ChaincodeServer) -> packaging.ChaincodeTls:
        return packaging.make_tls(
            self.top.data_dir / "chaincode" / server.org.name, server.org.name, (server.host, "localhost")
        )

    def _deploy_chaincode(self, say: Progress, version: str, sequence: int) -> ChaincodeDefinition:
        top = self.top
        label = f"{top.chaincode}_{version}"
        packages = {}
        for server in top.chaincode_servers:
            tls = self._chaincode_tls(server)
            path = top.data_dir / "chaincode" / server.org.name / f"{label}.tgz"
            packages[server.org.msp_id] = packaging.build_package(path, label, server.address, tls)
        say(f"installing chaincode {top.chaincode} {version} on every peer")
        self._each_peer(lambda a: a.install_package(packages[a.peer.org.msp_id].path))
        definition = ChaincodeDefinition(
            top.chaincode, version, sequence, top.endorsement_policy,
            {msp: pkg.package_id for msp, pkg in packages.items()},
        )
        say("starting one chaincode server per peer organisation (mutual TLS)")
        self._start_chaincode_servers(definition)
        say(f"approving {top.chaincode} (sequence {sequence}) for every peer organisation")
        self._each_peer(lambda a: a.approve(top.chaincode, version, sequence,
                                            definition.package_ids[a.peer.org.msp_id], definition.policy))
        say(f"committing {top.chaincode} with endorsement policy {definition.policy}")
        admin.PeerAdmin(self.install, top, top.peers[0]).commit(
            top.chaincode, version, sequence, definition.policy, top.peers
        )
        state = processes.read_json(top.state_path) or {}
        state.update({"topology": self._topology_json(), "chaincode": asdict(definition)})
        processes.write_json_atomic(top.state_path, state)
        self.profile().save(top.profile_path)
        return definition

    def _topology_json(self) -> dict[str, Any]:
        top = self.top
        return {"channel": top.channel, "consensus": top.consensus, "host": top.host,
                "base_port": top.base_port, "chaincode": top.chaincode,
                "batch_timeout_ms": top.batch_timeout_ms, "fabric": str(self.install.root)}

    def _start_chaincode_server(self, server: ChaincodeServer, package_id: str) -> None:
        tls = self._chaincode_tls(server)
        self._spawn(server.name, [
            self.python, "-m", self.chaincode_module, "--id", package_id, "--address", server.address,
            "--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key),
            "--client-ca", str(tls.ca_cert), "--log-format", "json",
        ], {"PYTHONPATH": ":".join(map(str, self.python_path)), "PYTHONDONTWRITEBYTECODE": "1"})

    def _start_chaincode_servers(self, definition: ChaincodeDefinition) -> None:
        for server in self.top.chaincode_servers:
            if self._pid(server.name) is None:
                self._start_chaincode_server(server, definition.package_ids[server.org.msp_id])
        deadline = time.monotonic() + 30
        for server in self.top.chaincode_servers:
            self._wait_listening(server, deadline)

    def _wait_endorsable(self, deadline: float) -> None:
        """Until every peer's Gateway can have a write endorsed by a majority of the peer
        organisations: gossip must have told it the other peers and their chaincode.

        A federation is created in an endorsement that is never submitted (nothing is
        ordered or written); only a successful endorsement counts — a Gateway runs the
        contract on its own peer before it plans the others, so a refusal proves nothing.
        """
        from ledger.fabric.gateway import GatewayError, connect_from_profile

        profile = self.profile()
        pending = [p.org.msp_id for p in self.top.peers]
        last: dict[str, str] = {}
        policy = '{"auditor_msps":["AuditorMSP"]}'
        while pending:
            for msp in list(pending):
                with connect_from_profile(profile, msp) as gateway:
                    contract = gateway.get_network(self.top.channel).get_contract(self.top.chaincode)
                    try:
                        contract.endorse("InitFederation", f"warm-up-{os.urandom(4).hex()}", policy)
                    except GatewayError as exc:
                        last[msp] = str(exc)
                    else:
                        pending.remove(msp)
            if pending and time.monotonic() > deadline:
                raise NetworkError(f"peers cannot plan endorsements yet: {', '.join(last.get(m, m) for m in pending)}")
            if pending:
                time.sleep(0.3)

    def _warm_up(self, deadline: float) -> None:
        """Evaluate on every peer until each has connected to its chaincode server."""
        lock = threading.Lock()
        failures: dict[str, str] = {}

        def ping(a: admin.PeerAdmin) -> None:
            while True:
                done = a.query(self.top.chaincode, "GetFederation", "warm-up")
                # NOT_FOUND is the contract answering: the peer reached its server.
                if "NOT_FOUND" in done.stderr + done.stdout:
                    return
                if time.monotonic() > deadline:
                    with lock:
                        failures[a.peer.name] = admin._last_lines(done.stderr + done.stdout, 2)
                    return
                time.sleep(0.3)

        self._each_peer(ping)
        if failures:
            raise NetworkError(f"chaincode not reachable from {failures}")

    def _node_status(self, name: str, kind: str, endpoint: str, operations: str) -> NodeStatus:
        pid = self._pid(name)
        node = NodeStatus(name, kind, pid, pid is not None, endpoint=endpoint)
        if pid is None:
            node.healthy = False
            node.detail = "not running" if not self.top.log_path(name).exists() else \
                f"not running; last log: {processes.tail(self.top.log_path(name), 1)[:200]}"
            return node
        node.healthy, node.detail = _health(operations)
        return node


def load_topology(data_dir: Path) -> Topology:
    """The topology of an existing network from its state file."""
    state = processes.read_json(data_dir / "network.json")
    if state is None or "topology" not in state:
        raise NetworkError(f"{data_dir}: no network here (no network.json); run `fedledger network up`")
    t = state["topology"]
    return Topology(data_dir=data_dir, channel=t["channel"], consensus=t["consensus"], host=t["host"],
                    base_port=t["base_port"], chaincode=t["chaincode"], batch_timeout_ms=t["batch_timeout_ms"])


__all__ += ["load_topology"]
