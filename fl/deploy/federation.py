"""Create the federation on the ledger for deployment mode (``fedledger coordinator init``)."""

from __future__ import annotations

from fl.config import FederationConfig
from ledger.factory import open_ledger
from ledger.identity import Credentials
from ledger.records import FederationPolicy, Identity, TxReceipt

__all__ = ["init_federation"]


def init_federation(cfg: FederationConfig, identity: Credentials | Identity) -> tuple[TxReceipt, FederationPolicy]:
    """``InitFederation`` as the coordinator; the receipt and the policy written."""
    # Imported here: the initial model pulls in torch, which the rest of the CLI never needs.
    from fl.server_app import federation_policy, store_validation_set
    from ledger.artifacts import ArtifactStore

    policy = federation_policy(cfg)
    # The scorer's validation set goes where institutions' auditors read artifacts from.
    store_validation_set(cfg, policy, ArtifactStore(cfg.artifacts_path))
    ledger = open_ledger(cfg.ledger_config, identity)
    try:
        return ledger.init_federation(cfg.id, policy), policy
    finally:
        ledger.close()
