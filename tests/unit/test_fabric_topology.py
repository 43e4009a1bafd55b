"""The network plan: organisations, ports, endorsement policy and the channel configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.fabric.config import configtx, crypto_config, orderer_config, peer_core
from ledger.fabric.install import FabricInstall
from ledger.fabric.packaging import build_package, make_tls
from ledger.fabric.topology import Topology, endorsement_rule, majority

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def sample_install(tmp_path: Path) -> FabricInstall:
    """A stand-in install holding only Fabric's sample configuration files (no binaries)."""
    import shutil
    import tarfile

    archive = REPO.parent / "shared" / "fabric" / "hyperledger-fabric-linux-amd64-3.1.5.tar.xz"
    root = tmp_path / "fabric"
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("config/")]
        tar.extractall(root, members=members, filter="data")
    (root / "builders" / "ccaas").mkdir(parents=True)
    assert shutil.which("true")
    return FabricInstall(root=root, version="3.1.5")


def test_a_majority_is_strict() -> None:
    assert [majority(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    assert endorsement_rule(["A", "B", "C"]) == "OutOf(2, 'A.peer', 'B.peer', 'C.peer')"


def test_three_orgs_run_peers_and_two_are_members_only() -> None:
    top = Topology(data_dir=Path("/data"))

    assert [p.org.msp_id for p in top.peers] == ["CoordinatorMSP", "BankAMSP", "BankBMSP"]
    assert [o.msp_id for o in top.orgs if not o.has_peer] == ["BankCMSP", "AuditorMSP"]
    assert top.endorsement_policy == "OutOf(2, 'CoordinatorMSP.peer', 'BankAMSP.peer', 'BankBMSP.peer')"
    assert len(top.orderers) == 1 and top.orderers[0].msp_id == "OrdererMSP"


def test_every_port_is_distinct_and_derived_from_the_base() -> None:
    for consensus in ("etcdraft", "bft"):
        top = Topology(data_dir=Path("/data"), base_port=30050, consensus=consensus)
        ports = [port for _, port in top.ports()]
        assert len(ports) == len(set(ports))
        assert min(ports) == 30050 and max(ports) <= 30050 + 202


def test_bft_runs_one_orderer_per_institution_and_none_for_the_auditor() -> None:
    top = Topology(data_dir=Path("/data"), consensus="bft")

    assert [o.msp_id for o in top.orderers] == [
        "CoordinatorOrdererMSP", "BankAOrdererMSP", "BankBOrdererMSP", "BankCOrdererMSP"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channel": "Bad_Channel"}, "channel name"),
        ({"consensus": "solo"}, "consensus must be"),
        ({"base_port": 80}, "base port 80"),
    ],
)
def test_a_bad_topology_is_refused_with_the_reason(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Topology(data_dir=Path("/data"), **kwargs)  # type: ignore[arg-type]


def test_the_channel_config_pins_the_majority_policy_and_the_batch_timeout(sample_install: FabricInstall) -> None:
    top = Topology(data_dir=Path("/data"), batch_timeout_ms=100)
    profile = configtx(top, sample_install)["Profiles"]["FedLedgerChannel"]

    app = profile["Application"]
    assert app["Policies"]["Endorsement"] == {"Type": "Signature", "Rule": top.endorsement_policy}
    assert app["Policies"]["LifecycleEndorsement"] == {"Type": "Signature", "Rule": top.endorsement_policy}
    assert [o["Name"] for o in app["Organizations"]] == [o.msp_id for o in top.orgs]
    anchors = {o["Name"]: o.get("AnchorPeers") for o in app["Organizations"]}
    assert anchors["BankAMSP"] == [{"Host": "127.0.0.1", "Port": top.peers[1].port}]
    assert anchors["BankCMSP"] is None
    assert "peer/Propose" in app["ACLs"]
    assert profile["Orderer"]["BatchTimeout"] == "100ms"
    assert profile["Orderer"]["OrdererType"] == "etcdraft"
    assert profile["Capabilities"] == {"V3_0": True}


def test_the_bft_channel_config_maps_four_consenters(sample_install: FabricInstall) -> None:
    top = Topology(data_dir=Path("/data"), consensus="bft")
    orderer = configtx(top, sample_install)["Profiles"]["FedLedgerChannel"]["Orderer"]

    assert orderer["OrdererType"] == "BFT"
    # The BFT synchroniser cannot deliver from a client-authenticating listener.
    assert orderer_config(top, sample_install, top.orderers[0])["General"]["TLS"]["ClientAuthRequired"] is False
    assert [c["ID"] for c in orderer["ConsenterMapping"]] == [1, 2, 3, 4]
    assert orderer["SmartBFT"]["RequestBatchMaxInterval"] == "100ms"
    assert "EtcdRaft" not in orderer


def test_nodes_require_client_certificates_and_bind_the_topology_host(sample_install: FabricInstall) -> None:
    top = Topology(data_dir=Path("/data"))
    core = peer_core(top, sample_install, top.peers[0])
    orderer = orderer_config(top, sample_install, top.orderers[0])

    assert core["peer"]["tls"]["enabled"] and core["peer"]["tls"]["clientAuthRequired"]
    assert core["peer"]["listenAddress"] == "127.0.0.1:7150"
    assert core["peer"]["gossip"]["externalEndpoint"] == "127.0.0.1:7150"
    assert core["vm"]["endpoint"] == ""
    assert core["chaincode"]["externalBuilders"][0]["name"] == "ccaas"
    assert orderer["General"]["TLS"]["ClientAuthRequired"] and orderer["Admin"]["TLS"]["ClientAuthRequired"]
    assert orderer["General"]["BootstrapMethod"] == "none"
    assert orderer["General"]["ListenAddress"] == "127.0.0.1"
    crypto = crypto_config(top)
    assert all(org["EnableNodeOUs"] for org in crypto["PeerOrgs"] + crypto["OrdererOrgs"])


def test_a_chaincode_package_requires_mutual_tls_and_is_reproducible(tmp_path: Path) -> None:
    import json
    import tarfile

    tls = make_tls(tmp_path / "tls", "banka", ("127.0.0.1", "localhost"))
    first = build_package(tmp_path / "a.tgz", "fedaudit_1.0", "127.0.0.1:7251", tls)
    second = build_package(tmp_path / "b.tgz", "fedaudit_1.0", "127.0.0.1:7251", tls)

    assert first.package_id == second.package_id and first.package_id.startswith("fedaudit_1.0:")
    assert (tmp_path / "a.tgz").stat().st_mode & 0o077 == 0  # it holds the peer's client key
    with tarfile.open(tmp_path / "a.tgz") as outer:
        meta = json.loads(outer.extractfile("metadata.json").read())  # type: ignore[union-attr]
        inner = tarfile.open(fileobj=outer.extractfile("code.tar.gz"))  # type: ignore[arg-type]
        connection = json.loads(inner.extractfile("connection.json").read())  # type: ignore[union-attr]
    assert meta == {"type": "ccaas", "label": "fedaudit_1.0"}
    assert connection["tls_required"] and connection["client_auth_required"]
    assert connection["address"] == "127.0.0.1:7251"
    assert "PRIVATE KEY" in connection["client_key"]
