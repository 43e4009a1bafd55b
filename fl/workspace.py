"""The one owner of a federation's workspace layout: every file's place, written once.

A workspace is the federation's ``workdir`` (``[federation] workdir``)::

    <root>/
      federation.toml            the demo's federation file
      ledger.db                  the embedded ledger (SQLite)
      artifacts/                 the content-addressed model store
      pki/<msp>/<name>.key|.crt  identities; pki/<msp>/ca/ca.key|ca.crt the org CA
      coordinator/               the coordinator service (see CoordinatorFiles)
      clients/<participant>/     an institution's node (see ClientFiles)
      signers/<participant>/     an institution's signer (see SignerFiles)
      reports/                   compliance reports
      logs/                      the demo's logs

Participant ids are checked before they become a directory name: no path tricks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ledger.formats import validate_id

__all__ = ["Workspace", "CoordinatorFiles", "ClientFiles", "SignerFiles", "ServiceFiles"]


@dataclass(frozen=True)
class ServiceFiles:
    """What every detached service keeps in its directory: pid, state and its own log."""

    root: Path
    pid_name: str

    @property
    def pid_file(self) -> Path:
        """The pid file (pid + start time) of the running service."""
        return self.root / self.pid_name

    @property
    def state_file(self) -> Path:
        """``state.json``: what the service reports about itself."""
        return self.root / "state.json"

    @property
    def service_log(self) -> Path:
        """The service's JSON log when detached."""
        return self.root / "service.log"


@dataclass(frozen=True)
class CoordinatorFiles(ServiceFiles):
    """``<root>/coordinator``: SuperLink, run and the coordinator service."""

    pid_name: str = "coordinator.pid"

    @property
    def tls_dir(self) -> Path:
        """The SuperLink's TLS CA and server certificate."""
        return self.root / "tls"

    @property
    def tls_ca(self) -> Path:
        """The SuperLink's TLS CA certificate (what nodes trust)."""
        return self.tls_dir / "ca.crt"

    @property
    def flwr_home(self) -> Path:
        """``FLWR_HOME`` of the coordinator's Flower processes."""
        return self.root / "flwr-home"

    @property
    def superlink_db(self) -> Path:
        """The SuperLink's database (registered node keys)."""
        return self.root / "superlink.db"

    @property
    def superlink_log(self) -> Path:
        """Flower's SuperLink output."""
        return self.root / "superlink.log"

    @property
    def run_log(self) -> Path:
        """``flwr run`` output."""
        return self.root / "run.log"

    @property
    def run_config(self) -> Path:
        """The run config handed to ``flwr run``."""
        return self.root / "run-config.toml"

    @property
    def rounds_log(self) -> Path:
        """One JSON line per completed round."""
        return self.root / "rounds.jsonl"


@dataclass(frozen=True)
class ClientFiles(ServiceFiles):
    """``<root>/clients/<participant>``: an institution's SuperNode service."""

    pid_name: str = "client.pid"

    @property
    def flwr_home(self) -> Path:
        """``FLWR_HOME`` of the SuperNode."""
        return self.root / "flwr-home"

    @property
    def node_config(self) -> Path:
        """The SuperNode's ``--node-config`` file."""
        return self.root / "node-config.toml"

    @property
    def node_key(self) -> Path:
        """An OpenSSH node key (only with a key file, never with a signer)."""
        return self.root / "node-key.ssh"

    @property
    def supernode_log(self) -> Path:
        """Flower's SuperNode output."""
        return self.root / "supernode.log"


@dataclass(frozen=True)
class SignerFiles(ServiceFiles):
    """``<root>/signers/<participant>`` (0700): socket, journal and process files."""

    pid_name: str = "signer.pid"

    @property
    def socket(self) -> Path:
        """The 0600 socket, in its own 0700 directory."""
        return self.root / "run" / "signer.sock"

    @property
    def journal(self) -> Path:
        """The hash-chained journal of everything signed or refused."""
        return self.root / "journal.jsonl"


@dataclass(frozen=True)
class Workspace:
    """A federation's work directory and where each of its files lives."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser().absolute())

    # --- identities -------------------------------------------------------------------
    def pki(self, msp_id: str) -> Path:
        """The directory of organisation ``msp_id``'s identities."""
        return self.root / "pki" / msp_id

    @property
    def pki_root(self) -> Path:
        """The directory holding one folder per organisation."""
        return self.root / "pki"

    def key(self, msp_id: str, name: str) -> Path:
        """The private key of member ``name`` of ``msp_id``."""
        return self.pki(msp_id) / f"{name}.key"

    def cert(self, msp_id: str, name: str) -> Path:
        """The certificate of member ``name`` of ``msp_id``."""
        return self.pki(msp_id) / f"{name}.crt"

    def ca_dir(self, msp_id: str) -> Path:
        """The org CA of ``msp_id`` (``ca.key``, ``ca.crt``)."""
        return self.pki(msp_id) / "ca"

    def ca_cert(self, msp_id: str) -> Path:
        """The org CA certificate of ``msp_id``."""
        return self.ca_dir(msp_id) / "ca.crt"

    # --- ledger and stores ------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        """The federation file the demo writes into its workspace."""
        return self.root / "federation.toml"

    @property
    def ledger_db(self) -> Path:
        """The embedded ledger's SQLite file."""
        return self.root / "ledger.db"

    @property
    def artifacts(self) -> Path:
        """The content-addressed artifact store."""
        return self.root / "artifacts"

    @property
    def reports(self) -> Path:
        """Compliance reports (``round-NNNN.md/.json``)."""
        return self.root / "reports"

    @property
    def logs(self) -> Path:
        """Logs of in-process runs (the demo's Flower log)."""
        return self.root / "logs"

    # --- services ---------------------------------------------------------------------
    @property
    def coordinator(self) -> CoordinatorFiles:
        """The coordinator service's files."""
        return CoordinatorFiles(self.root / "coordinator")

    @property
    def rounds_log(self) -> Path:
        """One JSON line per completed round, written by the coordinator."""
        return self.coordinator.rounds_log

    def client(self, participant: str) -> ClientFiles:
        """An institution node's files."""
        return ClientFiles(self.root / "clients" / validate_id(participant, "participant"))

    def signer(self, participant: str) -> SignerFiles:
        """An institution signer's files."""
        return SignerFiles(self.root / "signers" / validate_id(participant, "participant"))
