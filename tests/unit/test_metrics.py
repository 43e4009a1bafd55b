"""The coordinator's Prometheus metrics count what the rounds did, and are served."""

from __future__ import annotations

import socket
import urllib.request

from fl.metrics import CoordinatorMetrics
from fl.strategy import RoundSummary


def summary(round_no: int, rejected: list[str]) -> RoundSummary:
    return RoundSummary(round=round_no, base_model="0" * 64, model="1" * 64, accepted=["bank-a", "bank-b"],
                        rejected=[{"participant": "bank-c", "reason": r, "detail": None} for r in rejected],
                        scores={}, record_tx="t", record_block=1, commit_tx="u", commit_block=2,
                        seconds=0.3, ledger_seconds=0.01, metrics={"accuracy": 0.75})


def test_rounds_rejections_by_reason_and_latencies_are_counted():
    m = CoordinatorMetrics()
    m.observe(summary(1, ["digest_mismatch"]))
    m.observe(summary(2, ["digest_mismatch", "wrong_round"]))
    value = m.registry.get_sample_value
    assert value("fedledger_rounds_total") == 2
    assert value("fedledger_updates_accepted_total") == 4
    assert value("fedledger_updates_rejected_total", {"reason": "digest_mismatch"}) == 2
    assert value("fedledger_updates_rejected_total", {"reason": "wrong_round"}) == 1
    assert value("fedledger_last_committed_round") == 2
    assert value("fedledger_round_seconds_count") == 2 and value("fedledger_ledger_seconds_sum") == 0.02
    assert value("fedledger_model_accuracy") == 0.75


def test_metrics_are_served_on_loopback():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    m = CoordinatorMetrics()
    m.observe(summary(1, ["non_finite"]))
    stop = m.serve(port)
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        stop()
    assert 'fedledger_updates_rejected_total{reason="non_finite"} 1.0' in body
