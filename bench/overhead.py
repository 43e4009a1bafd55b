"""Audit overhead: round time with the audit layer ÷ plain Flower FedAvg (goal ≤ 1.05).

Both federations run in this process, one after the other, on the same workload: the same credit partitions, model, seeds and local training, in Flower's
simulation engine. Plain = Flower's own FedAvg with the ClientApp's train function and no
mods. Audited = signing mod + AuditedFedAvg + embedded ledger + artifact store. A round
is timed from ``configure_train`` (for the audited strategy: before the global model is
hashed and stored) to the end of ``aggregate_train`` (for the audited strategy: the
ledger commit of the new model). Round 1 is a warm-up and not counted.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from fl.client_app import make_client_app
from fl.demo import SimulationResolver, demo_config, prepare_federation
from fl.records import to_record
from fl.server_app import coordinator_identity, initial_model, make_server_app

__all__ = ["measure"]

_BACKEND = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"logging_level": "ERROR", "log_to_driver": False}}


class _TimedFedAvg(FedAvg):
    def __init__(self, nodes: int) -> None:
        super().__init__(fraction_evaluate=0.0, min_train_nodes=nodes, min_available_nodes=nodes)
        self.times: list[float] = []
        self.aggregate_times: list[float] = []
        self._t0 = 0.0

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._t0 = time.perf_counter()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        t1 = time.perf_counter()
        out = super().aggregate_train(server_round, replies)
        done = time.perf_counter()
        self.times.append(done - self._t0)
        self.aggregate_times.append(done - t1)
        return out


def _plain(cfg: Any, rounds: int) -> tuple[list[float], list[float]]:
    strategy = _TimedFedAvg(len(cfg.participants))
    server = ServerApp()
    settings = {"federation": cfg.id, "round": 0, "local-epochs": cfg.training.local_epochs,
                "learning-rate": cfg.training.learning_rate, "batch-size": cfg.training.batch_size,
                "seed": cfg.training.seed}

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy.start(grid, to_record(initial_model(cfg)), num_rounds=rounds,
                       train_config=ConfigRecord(settings))

    client = make_client_app(SimulationResolver(cfg, {}), audited=False)
    run_simulation(server_app=server, client_app=client, num_supernodes=len(cfg.participants),
                   backend_config=_BACKEND)
    return strategy.times[1:], strategy.aggregate_times[1:]


def _audited(cfg: Any) -> tuple[list[float], list[float], list[float]]:
    runs: list[Any] = []
    server = make_server_app(cfg, coordinator_identity(cfg), on_done=runs.append)
    client = make_client_app(SimulationResolver(cfg, {}))
    run_simulation(server_app=server, client_app=client, num_supernodes=len(cfg.participants),
                   backend_config=_BACKEND)
    rounds = runs[0].summaries[1:]
    return ([s.seconds for s in rounds], [s.aggregate_seconds for s in rounds],
            [s.ledger_seconds for s in rounds])


def measure(rounds: int = 6, participants: int = 3, local_epochs: int = 2) -> dict[str, Any]:
    """Median round times (rounds 2..N) of both stacks, their ratio and the audit's parts."""
    logging.getLogger("flwr").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = demo_config(Path(tmp) / "fed", rounds=rounds, participants=participants)
        cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"local_epochs": local_epochs})})
        cfg.workdir.mkdir(parents=True)
        prepare_federation(cfg)
        plain, plain_agg = _plain(cfg, rounds)
        audited, audited_agg, ledger = _audited(cfg)
    med = statistics.median
    return {"participants": participants, "local_epochs": local_epochs, "rounds_counted": len(plain),
            "plain_round_s": med(plain), "audited_round_s": med(audited),
            "ratio": med(audited) / med(plain),
            "plain_aggregate_s": med(plain_agg), "audited_aggregate_s": med(audited_agg),
            "audited_ledger_s": med(ledger)}
