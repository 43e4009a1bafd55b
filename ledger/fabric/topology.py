"""What a local fedledger Fabric network consists of: organisations, nodes, ports, paths.

Pure data, no I/O: the driver (:mod:`ledger.fabric.network`) and the tests both read the
same :class:`Topology`. Everything binds to one host (127.0.0.1 by default); ports are
derived from one base port so that two networks on one machine need only two bases:

==================  =====================================================
orderer *i*         ``base + 10·i`` (gRPC), ``+1`` (admin), ``+2`` (operations)
peer *j*            ``base + 100 + 10·j`` (gRPC), ``+1`` (chaincode), ``+2`` (operations)
chaincode server j  ``base + 200 + j`` (one per peer organisation, mutual TLS)
==================  =====================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "Consensus",
    "Org",
    "Orderer",
    "Peer",
    "ChaincodeServer",
    "Topology",
    "DEFAULT_ORGS",
    "majority",
    "endorsement_rule",
]

Consensus = Literal["etcdraft", "bft"]
DOMAIN = "fedledger.local"
CHANNEL_RE = re.compile(r"^[a-z][a-z0-9.-]{0,248}$")


@dataclass(frozen=True)
class Org:
    """An organisation of the channel; ``has_peer`` False for a member with identities only."""

    msp_id: str
    name: str  # short lower-case name used in host names and folders
    has_peer: bool

    @property
    def domain(self) -> str:
        """The organisation's DNS-style domain (``<name>.fedledger.local``)."""
        return f"{self.name}.{DOMAIN}"


# DESIGN §8: peers for the coordinator and two banks; BankC and the auditor are channel
# members with identities but no peer (an institution need not run one).
DEFAULT_ORGS: tuple[Org, ...] = (
    Org("CoordinatorMSP", "coordinator", True),
    Org("BankAMSP", "banka", True),
    Org("BankBMSP", "bankb", True),
    Org("BankCMSP", "bankc", False),
    Org("AuditorMSP", "auditor", False),
)


@dataclass(frozen=True)
class Orderer:
    """One ordering node and the organisation that runs it."""

    index: int
    msp_id: str
    org_name: str
    host: str
    port: int
    admin_port: int
    operations_port: int

    @property
    def name(self) -> str:
        """``orderer<i>``, the node's folder, log and pid name."""
        return f"orderer{self.index}"

    @property
    def domain(self) -> str:
        """The orderer organisation's domain."""
        return f"{self.org_name}.{DOMAIN}"

    @property
    def host_name(self) -> str:
        """TLS server name of the node (a SAN of its TLS certificate)."""
        return f"{self.name}.{self.domain}"

    @property
    def endpoint(self) -> str:
        """``host:port`` of the node's client and cluster listener."""
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Peer:
    """One peer, of an organisation with ``has_peer``."""

    index: int
    org: Org
    host: str
    port: int
    chaincode_port: int
    operations_port: int

    @property
    def name(self) -> str:
        """``peer0.<org>``, the node's folder, log and pid name."""
        return f"peer0.{self.org.name}"

    @property
    def host_name(self) -> str:
        """TLS server name of the node."""
        return f"peer0.{self.org.domain}"

    @property
    def endpoint(self) -> str:
        """``host:port`` of the peer's gRPC listener (Gateway, deliver, gossip)."""
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ChaincodeServer:
    """The ``fedaudit`` chaincode server that one peer organisation runs for its peer."""

    org: Org
    host: str
    port: int

    @property
    def name(self) -> str:
        """``chaincode.<org>``, the process's log and pid name."""
        return f"chaincode.{self.org.name}"

    @property
    def address(self) -> str:
        """``host:port`` the server listens on and its peer dials."""
        return f"{self.host}:{self.port}"


def majority(n: int) -> int:
    """The smallest strict majority of ``n``."""
    return n // 2 + 1


def endorsement_rule(msp_ids: list[str]) -> str:
    """``OutOf(k, 'A.peer', …)``: a strict majority of the organisations running a peer."""
    members = ", ".join(f"'{msp}.peer'" for msp in msp_ids)
    return f"OutOf({majority(len(msp_ids))}, {members})"


@dataclass(frozen=True)
class Topology:
    """One network: organisations, consensus, channel, host and port plan, data folder."""

    data_dir: Path
    channel: str = "fedledger"
    consensus: Consensus = "etcdraft"
    host: str = "127.0.0.1"
    base_port: int = 7050
    orgs: tuple[Org, ...] = DEFAULT_ORGS
    chaincode: str = "fedaudit"
    batch_timeout_ms: int = 100
    orderers: tuple[Orderer, ...] = field(init=False)
    peers: tuple[Peer, ...] = field(init=False)
    chaincode_servers: tuple[ChaincodeServer, ...] = field(init=False)

    def __post_init__(self) -> None:
        if CHANNEL_RE.fullmatch(self.channel) is None:
            raise ValueError(
                f"channel name {self.channel!r} must be lower-case letters, digits, '.' and '-', "
                "starting with a letter"
            )
        if self.consensus not in ("etcdraft", "bft"):
            raise ValueError(f"consensus must be 'etcdraft' or 'bft', not {self.consensus!r}")
        if not 1024 <= self.base_port <= 65535 - 300:
            raise ValueError(f"base port {self.base_port} must be between 1024 and {65535 - 300}")
        if self.consensus == "etcdraft":
            runners = [("OrdererMSP", "orderer")]
        else:
            # SmartBFT needs at least four nodes; one per institution, so no single one
            # (the coordinator included) can censor or reorder the audit records.
            runners = [(f"{o.msp_id[:-3]}OrdererMSP", f"{o.name}-orderer") for o in self.orgs
                       if o.msp_id != "AuditorMSP"][:4]
            if len(runners) < 4:
                raise ValueError("BFT ordering needs four organisations to run orderers")
        b = self.base_port
        orderers = tuple(
            Orderer(i, msp, name, self.host, b + 10 * i, b + 10 * i + 1, b + 10 * i + 2)
            for i, (msp, name) in enumerate(runners)
        )
        peer_orgs = [o for o in self.orgs if o.has_peer]
        peers = tuple(
            Peer(j, org, self.host, b + 100 + 10 * j, b + 101 + 10 * j, b + 102 + 10 * j)
            for j, org in enumerate(peer_orgs)
        )
        servers = tuple(ChaincodeServer(org, self.host, b + 200 + j) for j, org in enumerate(peer_orgs))
        object.__setattr__(self, "orderers", orderers)
        object.__setattr__(self, "peers", peers)
        object.__setattr__(self, "chaincode_servers", servers)

    @property
    def peer_orgs(self) -> list[Org]:
        """Organisations that run a peer (and so endorse)."""
        return [o for o in self.orgs if o.has_peer]

    @property
    def endorsement_policy(self) -> str:
        """The chaincode's endorsement policy: a majority of the peer organisations."""
        return endorsement_rule([o.msp_id for o in self.peer_orgs])

    def ports(self) -> list[tuple[str, int]]:
        """Every port the network listens on, with what listens there."""
        out: list[tuple[str, int]] = []
        for o in self.orderers:
            out += [(o.name, o.port), (f"{o.name} admin", o.admin_port), (f"{o.name} operations", o.operations_port)]
        for p in self.peers:
            out += [(p.name, p.port), (f"{p.name} chaincode", p.chaincode_port),
                    (f"{p.name} operations", p.operations_port)]
        out += [(s.name, s.port) for s in self.chaincode_servers]
        return out

    # --- paths under the data folder ------------------------------------------------

    @property
    def crypto_dir(self) -> Path:
        """cryptogen's output: every organisation's MSP, node and user material."""
        return self.data_dir / "crypto"

    @property
    def profile_path(self) -> Path:
        """The connection profile ``network up`` writes."""
        return self.data_dir / "connection.json"

    @property
    def state_path(self) -> Path:
        """What ``network up`` started (topology, pids, chaincode), for status and down."""
        return self.data_dir / "network.json"

    def log_path(self, name: str) -> Path:
        """Log file of one process."""
        return self.data_dir / "logs" / f"{name}.log"

    def pid_path(self, name: str) -> Path:
        """Pid file of one process."""
        return self.data_dir / "pids" / f"{name}.pid"

    def node_dir(self, name: str) -> Path:
        """Ledger and configuration folder of one node."""
        return self.data_dir / "nodes" / name

    def org_crypto(self, org: Org) -> Path:
        """cryptogen's folder of a peer or member organisation."""
        return self.crypto_dir / "peerOrganizations" / org.domain

    def org_ca_dir(self, org: Org) -> Path:
        """The organisation's CA certificate and key, as ``participant ca`` keeps a CA."""
        return self.data_dir / "orgs" / org.msp_id / "ca"

    def orderer_org_crypto(self, orderer: Orderer) -> Path:
        """cryptogen's folder of an orderer's organisation."""
        return self.crypto_dir / "ordererOrganizations" / orderer.domain

    def orderer_crypto(self, orderer: Orderer) -> Path:
        """The orderer node's own MSP and TLS material."""
        return self.orderer_org_crypto(orderer) / "orderers" / orderer.host_name

    def peer_crypto(self, peer: Peer) -> Path:
        """The peer node's own MSP and TLS material."""
        return self.org_crypto(peer.org) / "peers" / peer.host_name

    def user_crypto(self, org: Org, user: str = "User1") -> Path:
        """A client identity's MSP and TLS material (``Admin`` or ``User1``)."""
        return self.org_crypto(org) / "users" / f"{user}@{org.domain}"
