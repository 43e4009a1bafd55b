"""``fedledger demo``: a whole audited federation on one machine.

Creates K institutions with their own org CA, key and certificate, a coordinator and an
auditor identity; creates the federation on the ledger; each institution registers its
own certificate with its own identity; the coordinator admits them; then N rounds run in
Flower's simulation engine with the audited strategy. Everything lands in ``workdir``:
the federation file, the PKI, the ledger, the artifact store and the round log.
"""

from __future__ import annotations

import functools
import logging
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from fl import data as fl_data
from fl import demo_data
from fl.data import DataSchema
from fl.config import FederationConfig, ParticipantConfig, default_participants, msp_for, override, write_config
from fl.identities import CredentialsError, adopt_network_cas, member_credentials
from fl.server_app import CoordinatorRun, federation_policy, store_validation_set
from ledger.artifacts import ArtifactStore
from fl.onboarding import count_rows
from ledger.declarations import declare_examples
from ledger.factory import open_ledger
from ledger.incentives import issue_pending_rewards
from ledger.pki import certificate_pem, demo_identity

__all__ = ["DemoResult", "prepare_federation", "run_demo", "MARKER"]

log = structlog.get_logger("fedledger.demo")
MARKER = ".fedledger-demo"


class DemoError(RuntimeError):
    """The demo cannot run as asked (the message says why)."""


@dataclass
class DemoResult:
    """What the demo did, for the table and for ``--json``."""

    config: FederationConfig
    run: CoordinatorRun
    participants: list[str]
    adversaries: dict[str, str]
    onboarding: list[dict[str, Any]] = field(default_factory=list)
    rewards: dict[int, dict[str, Any]] = field(default_factory=dict)
    balances: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Machine-readable summary: federation, ledger, onboarding, rounds, accuracy, balances."""
        rounds = [
            {
                "round": s.round,
                "accepted": s.accepted,
                "rejected": [{"participant": r["participant"], "reason": r["reason"]} for r in s.rejected],
                "scores": s.scores,
                "model": s.model,
                "base_model": s.base_model,
                "record_tx": s.record_tx,
                "record_block": s.record_block,
                "commit_tx": s.commit_tx,
                "commit_block": s.commit_block,
                "rewards": self.rewards.get(s.round, {}).get("rewards"),
                "rewards_tx": self.rewards.get(s.round, {}).get("tx_id"),
                "accuracy": s.metrics.get("accuracy"),
                "auc": s.metrics.get("auc"),
                "evaluation": s.evaluation,
                "evaluation_mean": s.evaluation_mean,
                "evaluation_rejected": [{"participant": r["participant"], "reason": r["reason"]}
                                        for r in s.evaluation_rejected],
                "evaluation_tx": s.evaluation_tx,
                "evaluation_block": s.evaluation_block,
                "seconds": round(s.seconds, 4),
                "ledger_seconds": round(s.ledger_seconds, 4),
            }
            for s in self.run.summaries
        ]
        final = self.run.summaries[-1].metrics.get("accuracy") if self.run.summaries else None
        return {
            "federation": self.config.id,
            "ledger": (
                {"backend": "embedded", "path": str(self.config.ledger_path)} if self.config.ledger == "embedded"
                else {"backend": "fabric", "profile": str(self.config.fabric_profile)}
            ),
            "workdir": str(self.config.workdir),
            "config": str(self.config.workspace.config_file),
            "participants": self.participants,
            "adversaries": self.adversaries,
            "onboarding": self.onboarding,
            "initial_accuracy": self.run.initial_metrics.get("accuracy"),
            "rounds": rounds,
            "balances": self.balances,
            "final_accuracy": final,
        }


def _fresh_workdir(workdir: Path) -> None:
    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / MARKER).exists():
            raise DemoError(f"{workdir} is not empty and is not a fedledger demo directory")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("created by fedledger demo; removed by the next demo run\n")


def prepare_federation(cfg: FederationConfig) -> list[dict[str, Any]]:
    """The banks' data files, identities, federation, registration by each institution
    (its org CA once, then its certificate and its data file's row count, declared in a
    statement signed with its key), admission.

    On the embedded ledger every organisation gets a demo CA and its members demo
    certificates; on Fabric the ledger identities are the network's and participant
    signing certificates are issued by the network's org CAs. Returns one onboarding
    line per participant (register and admit tx ids).
    """
    write_demo_data(cfg)
    pki = cfg.workspace.pki_root
    try:
        network_identities = adopt_network_cas(cfg, {p.msp_id for p in cfg.participants})
    except CredentialsError as exc:
        raise DemoError(str(exc)) from None
    if not network_identities:
        demo_identity(pki, "coordinator", cfg.coordinator_msp)
        for msp in cfg.auditor_msps:
            demo_identity(pki, "auditor", msp)
    coordinator = member_credentials(cfg, cfg.coordinator_msp, "coordinator")
    ledger = open_ledger(cfg.ledger_config, coordinator)
    lines: list[dict[str, Any]] = []
    try:
        policy = federation_policy(cfg)
        store_validation_set(cfg, policy, ArtifactStore(cfg.artifacts_path))
        ledger.init_federation(cfg.id, policy)
        orgs_with_ca: set[str] = set()
        for participant in cfg.participants:
            key, cert, ca_cert = demo_identity(pki, participant.id, participant.msp_id)
            member = ledger.with_identity(member_credentials(cfg, participant.msp_id, participant.id))
            if participant.msp_id not in orgs_with_ca:
                member.register_org_ca(cfg.id, certificate_pem(ca_cert))
                orgs_with_ca.add(participant.msp_id)
            if participant.data is None:
                raise DemoError(f"participant {participant.id} has no data file to declare the size of")
            examples = count_rows(participant.data)
            reg = member.register_participant(
                cfg.id, participant.id, certificate_pem(cert), {"org": participant.msp_id},
                declare_examples(cfg.id, participant.id, examples, key),
            )
            adm = ledger.admit_participant(cfg.id, participant.id)
            lines.append({"participant": participant.id, "msp_id": participant.msp_id,
                          "register_tx": reg.tx_id, "admit_tx": adm.tx_id})
            log.info("participant_admitted", participant=participant.id, tx_id=adm.tx_id)
    finally:
        ledger.close()
    return lines


def demo_config(
    workdir: Path, rounds: int, participants: int, federation: str = "demo-fed",
    *, ledger: str = "embedded", fabric_profile: Path | None = None,
) -> FederationConfig:
    """The demo's federation: ``participants`` banks on credit data, on the chosen ledger.

    It is declared like any federation: the credit schema in ``[federation.data]``, one
    CSV per bank under ``WORKDIR/data`` and the coordinator's validation file
    ``data/test.csv`` (written by :func:`write_demo_data`), on which GTG-Shapley scores
    each bank's contribution.
    """
    ids = default_participants(participants)
    data = workdir.resolve() / "data"
    return FederationConfig(
        id=federation,
        rounds=rounds,
        workdir=workdir.resolve(),
        ledger=ledger,  # type: ignore[arg-type]
        fabric_profile=fabric_profile.resolve() if fabric_profile else None,
        data=demo_data.credit_schema(),
        validation=data / "test.csv",
        # Tokens follow contributions measured on the validation file: a bank with more
        # useful data earns more (the cosine scorer, needing no data, rewards direction only).
        scorer="shapley",
        participants=[ParticipantConfig(id=p, msp_id=msp_for(p), data=data / f"{p}.csv") for p in ids],
    )


def with_policy(cfg: FederationConfig, policy: Mapping[str, Any]) -> FederationConfig:
    """``cfg`` with federation keys (and ``training`` keys) changed, validated again."""
    changes = {k: v for k, v in policy.items() if k != "training"}
    training = {k: v for k, v in (policy.get("training") or {}).items() if v is not None}
    if training:
        changes["training"] = {**cfg.training.model_dump(), **training}
    return override(cfg, "demo options", **changes)


def write_demo_data(cfg: FederationConfig) -> None:
    """Each bank's CSV (a non-IID split of the bundled credit data) and the validation file."""
    split = demo_data.partition_credit(len(cfg.participants), cfg.data_seed, cfg.dirichlet_alpha)
    demo_data.write_partitions_csv(split, cfg.workdir / "data", cfg.participant_ids())


def run_demo(
    workdir: Path,
    *,
    rounds: int = 3,
    participants: int = 3,
    adversaries: Mapping[str, str] | None = None,
    verbose: bool = False,
    ledger: str = "embedded",
    fabric_profile: Path | None = None,
    federation: str | None = None,
    policy: Mapping[str, Any] | None = None,
) -> DemoResult:
    """Run the whole demo federation and return its summary.

    On Fabric a channel outlives a demo, so each run creates a new federation id
    (``demo-<hex>``) unless one is given. ``policy`` sets federation keys of the file
    (``scorer``, ``aggregation``, …) and, under ``training``, keys of
    ``[federation.training]`` (``fedprox_mu``, ``compression``, ``dp_epsilon``, …).
    """
    adversaries = dict(adversaries or {})
    if federation is None:
        federation = "demo-fed" if ledger == "embedded" else f"demo-{secrets.token_hex(4)}"
    try:
        cfg = demo_config(workdir, rounds, participants, federation, ledger=ledger, fabric_profile=fabric_profile)
        cfg = with_policy(cfg, policy or {})
    except ValueError as exc:
        raise DemoError(str(exc)) from None
    unknown = sorted(set(adversaries) - set(cfg.participant_ids()))
    if unknown:
        raise DemoError(f"adversary names unknown participant(s): {', '.join(unknown)}")
    _fresh_workdir(cfg.workdir)
    write_config(cfg, cfg.workspace.config_file)
    onboarding = prepare_federation(cfg)
    run = _simulate(cfg, adversaries, verbose)
    result = DemoResult(cfg, run, cfg.participant_ids(), adversaries, onboarding)
    _reward(cfg, result)
    return result


def _reward(cfg: FederationConfig, result: DemoResult) -> None:
    """The incentive module's pass after the rounds: rewards on the ledger, balances."""
    from fl.server_app import coordinator_identity

    ledger = open_ledger(cfg.ledger_config, coordinator_identity(cfg))
    try:
        for issued in issue_pending_rewards(ledger, cfg.id):
            result.rewards[issued.round] = {"rewards": issued.rewards, "tx_id": issued.receipt.tx_id}
        result.balances = {p: ledger.balance(cfg.id, p) for p in cfg.participant_ids()}
    finally:
        ledger.close()


def _simulate(cfg: FederationConfig, adversaries: dict[str, str], verbose: bool) -> CoordinatorRun:
    # Imported here: Flower's simulation pulls in Ray, which the rest of the CLI never needs.
    from flwr.simulation import run_simulation

    from fl.client_app import make_client_app
    from fl.server_app import coordinator_identity, make_server_app

    results: list[CoordinatorRun] = []
    server_app = make_server_app(cfg, coordinator_identity(cfg), on_done=results.append)
    client_app = make_client_app(SimulationResolver(cfg, adversaries), adversarial=bool(adversaries))
    if not verbose:
        # Flower warns that run_simulation is deprecated in favour of `flwr run`; the demo
        # keeps it because it runs the apps in-process with no app directory to install.
        logging.getLogger("flwr").setLevel(logging.ERROR)
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=len(cfg.participants),
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                        "init_args": {"logging_level": "ERROR", "log_to_driver": verbose}},
    )
    if not results:
        raise DemoError("the coordinator did not finish (see the log above)")
    return results[0]


class SimulationResolver:
    """Simulation: partition *i* is participant *i*; keys from the demo PKI (picklable)."""

    def __init__(self, cfg: FederationConfig, adversaries: dict[str, str]) -> None:
        self.cfg = cfg
        self.adversaries = adversaries

    def __call__(self, context: Any) -> Any:
        from fl.client_app import ClientRuntime, _key

        index = int(context.node_config["partition-id"])
        participant = self.cfg.participants[index]
        key_path = self.cfg.workspace.key(participant.msp_id, participant.id)
        assert participant.data is not None  # demo_config names every bank's file
        return ClientRuntime(
            participant=participant.id,
            key=_key(str(key_path)),
            load_data=functools.partial(_load_csv, str(participant.data), self.cfg.schema),
            adversary=self.adversaries.get(participant.id),
            model=self.cfg.model,
            schema_digest=self.cfg.schema.digest(),
        )


@functools.lru_cache(maxsize=64)
def _load_csv(path: str, schema: DataSchema) -> tuple[Any, Any]:
    # Cached: simulated institutions share one process, and each message would re-read it.
    return fl_data.load_csv(Path(path), schema)
