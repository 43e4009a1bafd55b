"""Prometheus metrics of the coordinator: round time, ledger latency, rejections by reason.

Served on 127.0.0.1 (by default) from the process that runs the ServerApp, when the
federation file sets ``metrics_port``.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from fl.strategy import RoundSummary

__all__ = ["CoordinatorMetrics"]

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class CoordinatorMetrics:
    """The coordinator's metrics in their own registry (tests create as many as they like)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.round_seconds = Histogram("fedledger_round_seconds", "Round time, global model sent to commit.",
                                       buckets=_BUCKETS, registry=self.registry)
        self.ledger_seconds = Histogram("fedledger_ledger_seconds",
                                        "Time waiting for RecordRound and CommitModel per round.",
                                        buckets=_BUCKETS, registry=self.registry)
        self.rounds = Counter("fedledger_rounds", "Rounds committed to the ledger.", registry=self.registry)
        self.accepted = Counter("fedledger_updates_accepted", "Updates accepted and aggregated.",
                                registry=self.registry)
        self.rejected = Counter("fedledger_updates_rejected", "Updates rejected, by reason.", ["reason"],
                                registry=self.registry)
        self.last_round = Gauge("fedledger_last_committed_round", "Last round committed to the ledger.",
                                registry=self.registry)
        self.accuracy = Gauge("fedledger_model_accuracy", "Held-out accuracy of the committed model.",
                              registry=self.registry)

    def observe(self, summary: RoundSummary) -> None:
        """Record one committed round (an ``on_round`` callback of the strategy)."""
        self.round_seconds.observe(summary.seconds)
        self.ledger_seconds.observe(summary.ledger_seconds)
        self.rounds.inc()
        self.accepted.inc(len(summary.accepted))
        for rejection in summary.rejected:
            self.rejected.labels(reason=str(rejection["reason"])).inc()
        self.last_round.set(summary.round)
        if "accuracy" in summary.metrics:
            self.accuracy.set(summary.metrics["accuracy"])

    def serve(self, port: int, host: str = "127.0.0.1") -> Callable[[], None]:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread; return its stop function."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

        return stop


def chain(*callbacks: Callable[[RoundSummary], None]) -> Callable[[RoundSummary], None]:
    """One ``on_round`` callback calling each of ``callbacks`` in turn."""

    def call(summary: RoundSummary) -> None:
        for callback in callbacks:
            callback(summary)

    return call
