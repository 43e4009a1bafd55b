"""``./run bench``: every benchmark in one run, figures and ratios side by side."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from bench import deployment, overhead, signatures, work


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _deployment_line(dep: dict[str, Any]) -> str:
    """One line: both per-round medians, the ratio, and where a round's time goes."""
    pb, ab = dep["plain_breakdown"], dep["audited_breakdown"]
    hops = ("to_node_s", "to_clientapp_s", "clientapp_s", "to_server_s")

    def parts(b: dict[str, Any]) -> str:
        return "/".join(_seconds(b[k]) for k in hops)

    return (f"deployment mode, {dep['participants']} institutions, rounds 2..{dep['rounds']} (real processes; audited: "
            f"TLS + node auth + ledger): plain Flower FedAvg {dep['plain_round_s']:.2f} s/round, audited "
            f"{dep['audited_round_s']:.2f} s/round, ratio {dep['ratio']:.3f}; to node/to ClientApp/ClientApp/to server "
            f"{parts(pb)} s plain, {parts(ab)} s audited; ClientApp process CPU {_seconds(pb['clientapp_cpu_s'])}/"
            f"{_seconds(ab['clientapp_cpu_s'])} s, of which training {dep['local_training_s'] * 1e3:.0f} ms; "
            f"aggregate_train {pb['aggregate_s'] * 1e3:.0f} ms plain vs {ab['aggregate_s'] * 1e3:.0f} ms audited; "
            f"{dep['bench_wall_s']:.0f} s")


def main() -> int:
    """Run the benchmarks, print a table and one JSON line."""
    results: dict[str, object] = {}
    sig = signatures.measure()
    results["signatures"] = sig
    print(f"signature verifications/s at the coordinator: {sig['per_second_1_thread']:,.0f} on 1 thread, "
          f"{sig['per_second_all_cores']:,.0f} on {sig['threads']} threads (goal ≥ 10,000/s)", flush=True)
    for epochs in (2, 20):
        wk = work.measure(local_epochs=epochs)
        results[f"work_epochs_{epochs}"] = wk
        print(f"round work with {epochs} local epochs, 3 institutions, no transport: plain "
              f"{wk['plain_round_s'] * 1e3:.1f} ms, audited {wk['audited_round_s'] * 1e3:.1f} ms, ratio "
              f"{wk['ratio']:.3f} (goal ≤ 1.05)", flush=True)
    for epochs in (2, 20):
        ov = overhead.measure(local_epochs=epochs)
        results[f"overhead_epochs_{epochs}"] = ov
        print(f"round time in Flower's simulation (100 ms polling ticks) with {epochs} local epochs: plain Flower FedAvg {ov['plain_round_s']:.3f} s, "
              f"audited {ov['audited_round_s']:.3f} s, ratio {ov['ratio']:.3f} (goal ≤ 1.05); "
              f"coordinator aggregation {ov['plain_aggregate_s'] * 1e3:.1f} ms plain vs "
              f"{ov['audited_aggregate_s'] * 1e3:.1f} ms audited, of which ledger {ov['audited_ledger_s'] * 1e3:.1f} ms",
              flush=True)
    code = 0
    try:
        dep = deployment.measure()
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
        # Real processes, ports and polling: report the failure with the figures above.
        results["deployment"] = {"error": str(exc)}
        print(f"deployment mode: failed: {str(exc).strip()[:2000]}", flush=True)
        code = 1
    else:
        results["deployment"] = dep
        print(_deployment_line(dep), flush=True)
    print(json.dumps(results, sort_keys=True))
    return code


if __name__ == "__main__":
    sys.exit(main())
