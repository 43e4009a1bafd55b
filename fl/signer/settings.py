"""Everything one institution's signer needs, built once at the edge (the CLI).

Files: :meth:`fl.workspace.Workspace.signer` (directory 0700): ``run/signer.sock``
(0600, in its own 0700 directory), ``journal.jsonl`` (0600, the hash-chained journal),
``signer.pid``, ``state.json``, ``service.log`` (when detached).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fl.workspace import SignerFiles
from ledger.errors import LedgerUnavailable
from ledger.factory import LedgerConfig
from ledger.identity import Credentials
from ledger.pki import certificate_pem, load_certificate
from ledger.records import Identity

__all__ = ["SignerPaths", "KeySource", "SignerSettings", "ledger_credentials", "count_rows"]


# The signer's files are part of the workspace layout (one owner: fl.workspace).
SignerPaths = SignerFiles


@dataclass(frozen=True)
class KeySource:
    """A 0600 key file, or a key in a PKCS#11 token (module, token, key label, PIN file)."""

    pem: Path | None = None
    pkcs11_module: Path | None = None
    token_label: str | None = None
    key_label: str | None = None
    pin_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.pem is None) == (self.pkcs11_module is None):
            raise ValueError("the signer needs exactly one key: a key file, or a PKCS#11 module")
        if self.pkcs11_module is not None and not (self.token_label and self.key_label and self.pin_file):
            raise ValueError("a PKCS#11 key needs --token-label, --key-label and --pin-file")

    def describe(self) -> str:
        """For messages (no secrets)."""
        if self.pem is not None:
            return f"file:{self.pem}"
        return f"pkcs11:{self.pkcs11_module}/token={self.token_label}/key={self.key_label}"


@dataclass(frozen=True)
class SignerSettings:
    """One institution's signer: who, for which federation, with which key and limits."""

    participant: str
    federation: str
    key: KeySource
    max_num_examples: int
    ledger: LedgerConfig
    credentials: Callable[[], Credentials]
    paths: SignerPaths
    cert: Path | None = None  # when given, the key must be this certificate's
    allowed_uids: frozenset[int] = field(default_factory=frozenset)


def ledger_credentials(ledger: LedgerConfig, msp_id: str | None, cert: Path | None,
                       network: Callable[[], Credentials] | None = None) -> Callable[[], Credentials]:
    """How the signer reads the ledger as its own institution (resolved per call).

    Embedded: the institution's certificate alone (reads need no signature there, so
    the signing key is not loaded again). Fabric: ``network`` — the organisation's
    client identity in the network, which Fabric requires to sign every query.
    """

    def resolve() -> Credentials:
        if msp_id is None:
            raise LedgerUnavailable("this participant's organisation is unknown (not in the federation file)")
        if ledger.backend == "fabric":
            if network is None:
                raise LedgerUnavailable("no Fabric client identity for this organisation")
            return network()
        if cert is None:
            raise LedgerUnavailable("no certificate to read the ledger with")
        return Credentials(Identity(msp_id=msp_id, cert_pem=certificate_pem(load_certificate(cert))))

    return resolve


def count_rows(path: Path) -> int:
    """Data rows of a CSV file (lines after the header): the examples it can train on."""
    with Path(path).open("rb") as handle:
        lines = sum(1 for line in handle if line.strip())
    return max(lines - 1, 0)
