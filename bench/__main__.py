"""``./run bench``: every benchmark in one run, figures and ratios side by side."""

from __future__ import annotations

import json
import sys

from bench import overhead, signatures


def main() -> int:
    """Run the benchmarks, print a table and one JSON line."""
    results: dict[str, object] = {}
    sig = signatures.measure()
    results["signatures"] = sig
    print(f"signature verifications/s at the coordinator: {sig['per_second_1_thread']:,.0f} on 1 thread, "
          f"{sig['per_second_all_cores']:,.0f} on {sig['threads']} threads (goal ≥ 10,000/s)", flush=True)
    for epochs in (2, 20):
        ov = overhead.measure(local_epochs=epochs)
        results[f"overhead_epochs_{epochs}"] = ov
        print(f"round time with {epochs} local epochs: plain Flower FedAvg {ov['plain_round_s']:.3f} s, "
              f"audited {ov['audited_round_s']:.3f} s, ratio {ov['ratio']:.3f} (goal ≤ 1.05); "
              f"coordinator aggregation {ov['plain_aggregate_s'] * 1e3:.1f} ms plain vs "
              f"{ov['audited_aggregate_s'] * 1e3:.1f} ms audited, of which ledger {ov['audited_ledger_s'] * 1e3:.1f} ms",
              flush=True)
    print(json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
