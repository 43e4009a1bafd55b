"""An institution's signer as the federation file describes it (``fedledger signer …``).

The file gives the federation id, the ledger, the participant's organisation, and the
default key and certificate in the workspace; the command's options fill in or replace
the rest. Nothing here reads the environment.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fl.config import ConfigError, FederationConfig
from fl.identities import member_credentials
from fl.signer.settings import KeySource, SignerSettings, count_rows, ledger_credentials
from ledger.identity import Credentials

__all__ = ["signer_settings", "signer_ledger_credentials", "signer_status", "reconcile_with_ledger", "parse_pin"]


def parse_pin(value: str | None) -> tuple[int, str] | None:
    """``SEQ:HASH`` of an earlier journal verification, or ``None``."""
    if value is None:
        return None
    seq, sep, digest = value.partition(":")
    if not sep or not seq.isdigit() or len(digest) != 64:
        raise ConfigError(f"--pin {value!r} must be SEQ:HASH (as verify-journal printed it)")
    return int(seq), digest


def signer_ledger_credentials(cfg: FederationConfig, participant: str, msp_id: str | None,
                              cert: Path | None) -> Callable[[], Credentials]:
    """How the signer reads the ledger as its institution (see ``ledger_credentials``)."""
    network = (lambda: member_credentials(cfg, msp_id, participant)) if msp_id else None
    return ledger_credentials(cfg.ledger_config, msp_id, cert, network)


def signer_settings(cfg: FederationConfig, participant: str, *, key: Path | None = None,
                    cert: Path | None = None, pkcs11_module: Path | None = None,
                    token_label: str | None = None, key_label: str | None = None,
                    pin_file: Path | None = None, max_examples: int | None = None,
                    data: Path | None = None, allowed_uids: frozenset[int] = frozenset()) -> SignerSettings:
    """The signer's settings: key (file or token), certificate, example limit, ledger."""
    entry = next((p for p in cfg.participants if p.id == participant), None)
    msp = entry.msp_id if entry else None
    workspace = cfg.workspace
    if pkcs11_module is None:
        key = key or (workspace.key(msp, participant) if msp else None)
        if key is None:
            raise ConfigError(f"--key or --pkcs11-module is required ({participant} is not in federation {cfg.id})")
    if cert is None and msp is not None and workspace.cert(msp, participant).exists():
        cert = workspace.cert(msp, participant)
    source = KeySource(pem=key if pkcs11_module is None else None, pkcs11_module=pkcs11_module,
                       token_label=token_label, key_label=key_label or participant, pin_file=pin_file)
    if max_examples is None:
        data = data or (entry.data if entry else None)
        if data is None or not Path(data).exists():
            raise ConfigError("--max-examples is required (no data file to count the examples of)")
        max_examples = count_rows(Path(data))
    if max_examples < 1:
        raise ConfigError("the institution must declare at least one example (--max-examples)")
    return SignerSettings(
        participant=participant, federation=cfg.id, key=source, max_num_examples=max_examples,
        ledger=cfg.ledger_config, credentials=signer_ledger_credentials(cfg, participant, msp, cert),
        paths=workspace.signer(participant), cert=cert, allowed_uids=allowed_uids)


def reconcile_with_ledger(cfg: FederationConfig, participant: str, journal: Path | None = None,
                          pin: tuple[int, str] | None = None) -> Any:
    """Compare the signer's journal with the rounds on the ledger (``audit mine``)."""
    from fl.signer.ledger_view import LedgerView
    from fl.signer.reconcile import reconcile
    from ledger.artifacts import ArtifactStore

    entry = cfg.participant(participant)
    cert = cfg.workspace.cert(entry.msp_id, participant)
    view = LedgerView(cfg.ledger_config, signer_ledger_credentials(
        cfg, participant, entry.msp_id, cert if cert.exists() else None))
    path = journal or cfg.workspace.signer(participant).journal
    # Rejections are recomputed where the federation's artifact store is reachable.
    check = (view.rejection_check(cfg.id, participant, ArtifactStore(cfg.artifacts_path))
             if cfg.artifacts_path.exists() else None)
    return reconcile(path, view.rounds(cfg.id), participant, cfg.id, pin, check)


def signer_status(cfg: FederationConfig, participant: str) -> dict[str, Any]:
    """The signer's state file, whether it is alive, and its own live answer."""
    from fl.deploy.services import service_status
    from fl.signer.client import SignerClient, SignerError

    files = cfg.workspace.signer(participant)
    state = service_status(files)
    if state["alive"]:
        try:
            state["live"] = SignerClient(files.socket, timeout=5).status()
        except SignerError as exc:
            state["live_error"] = str(exc)
    return state
