"""Audit overhead on a round's *work*, without Flower's transport (goal ≤ 1.05).

The same three institutions train on the same partitions with the same seeds; each
round runs the real ClientApps one after the other (plain: no mods; audited: the signing
mod) and then the coordinator's aggregation (plain: Flower's FedAvg; audited:
verification, scoring, artifact store, RecordRound, FedAvg, CommitModel on the embedded
ledger or on a real Fabric channel). No polling ticks blur the figures, so the ratio is
the audit's real price for this workload; rounds 2..N are counted. ``ledger_s`` is the
time the coordinator waits for RecordRound and CommitModel to commit.
"""

from __future__ import annotations

import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from fl.client_app import make_client_app
from fl.demo import SimulationResolver, demo_config, prepare_federation
from fl.records import to_arrays, to_record
from fl.server_app import coordinator_identity, initial_model
from fl.strategy import AuditedFedAvg
from ledger.artifacts import ArtifactStore
from ledger.factory import open_ledger

__all__ = ["measure"]


def _replies(app: Any, arrays: dict[str, Any], config: dict[str, Any], nodes: int,
             states: dict[int, RecordDict]) -> list[Message]:
    out = []
    for index in range(nodes):
        msg = Message(RecordDict({"arrays": to_record(arrays), "config": ConfigRecord(dict(config))}),
                      dst_node_id=100 + index, message_type="train")
        ctx = Context(run_id=1, node_id=100 + index, node_config={"partition-id": index, "num-partitions": nodes},
                      state=states.setdefault(index, RecordDict()), run_config={})
        out.append(app(msg, ctx))
    return out


def measure(
    rounds: int = 11, participants: int = 3, local_epochs: int = 2,
    *, ledger: str = "embedded", fabric_profile: Path | None = None,
) -> dict[str, Any]:
    """Median per-round work (rounds 2..N), plain and audited, and their ratio, on ``ledger``."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    with tempfile.TemporaryDirectory() as tmp:
        cfg = demo_config(Path(tmp) / "fed", rounds=rounds, participants=participants,
                          federation=f"bench-{secrets.token_hex(4)}", ledger=ledger, fabric_profile=fabric_profile)
        cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"local_epochs": local_epochs})})
        cfg.workdir.mkdir(parents=True)
        prepare_federation(cfg)
        settings = {"local-epochs": local_epochs, "learning-rate": cfg.training.learning_rate,
                    "batch-size": cfg.training.batch_size, "seed": cfg.training.seed}
        resolver = SimulationResolver(cfg, {})

        plain_app, plain = make_client_app(resolver, audited=False), FedAvg(fraction_evaluate=0.0)
        plain_times, arrays, states = [], initial_model(cfg), {}
        for r in range(1, rounds + 1):
            t0 = time.perf_counter()
            replies = _replies(plain_app, arrays, {"federation": cfg.id, "round": r, **settings}, participants, states)
            record, _ = plain.aggregate_train(r, replies)
            plain_times.append(time.perf_counter() - t0)
            arrays = to_arrays(record)

        opened = open_ledger(cfg.ledger_config, coordinator_identity(cfg))
        try:
            strategy = AuditedFedAvg(ledger=opened, artifacts=ArtifactStore(cfg.artifacts_path), federation=cfg.id,
                                     train_settings=settings, expected_nodes=participants)
            audited_app, audited_times, arrays, states = make_client_app(resolver), [], initial_model(cfg), {}
            for r in range(1, rounds + 1):
                t0 = time.perf_counter()
                config = strategy.begin_round(r, arrays)
                replies = _replies(audited_app, arrays, config, participants, states)
                record, _ = strategy.aggregate_train(r, replies)
                audited_times.append(time.perf_counter() - t0)
                arrays = to_arrays(record)
            ledger_times = [s.ledger_seconds for s in strategy.summaries]
        finally:
            opened.close()
    p, a = statistics.median(plain_times[1:]), statistics.median(audited_times[1:])
    counted = ledger_times[1:]
    return {"ledger": ledger, "participants": participants, "local_epochs": local_epochs,
            "rounds_counted": rounds - 1, "plain_round_s": p, "audited_round_s": a, "ratio": a / p,
            "ledger_s": statistics.median(counted), "ledger_s_min": min(counted), "ledger_s_max": max(counted)}
