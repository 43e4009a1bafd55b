"""``./run bench``: every benchmark in one run, figures and ratios side by side."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import attacks, deployment, fabric, overhead, relay, signatures, work
from fl.runtime import configure_logging
from ledger.errors import LedgerError

USAGE = ("usage: python -m bench [fabric|work|relay|attacks [--rounds N] [--participants N] [--repeats N] "
         "[--workers N] [--json [PATH]]]   (no argument: every benchmark; fabric: only the Fabric "
         "network; work: only the round work on the embedded and the Fabric ledger; relay: deployment round time "
         "of the per-message and the relay ClientApp; attacks: robust rules, FedProx, int8 and DP under attack "
         "and the scorers' rewards, in-process, plots in docs/bench-*.png, every figure to PATH "
         "(default bench-attacks.json) with --json)")
_DOCS = Path(__file__).resolve().parent.parent / "docs"


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


def _fabric_lines(fb: dict[str, Any]) -> list[str]:
    """A few lines for one consensus: bring-up, latency and queries, throughput, memory and CPU."""
    name, top = fb["consensus"], fb["topology"]
    head = f"fabric {name}"
    warm, cold = fb["warm"], fb["empty_cache"]
    steps = ", ".join(f"{step} {seconds:.1f}" for step, seconds in warm["median_run_steps_s"].items())
    lines = [(
        f"{head} ({top['orderers']} orderer(s), {top['peers']} peers, {top['chaincode_servers']} chaincode servers, "
        f"BatchTimeout {fb['batch_timeout_ms']} ms): bring-up warm {warm['up_s']['min']:.1f}/"
        f"{warm['up_s']['median']:.1f}/{warm['up_s']['max']:.1f} s min/median/max of {len(warm['runs_s'])} "
        f"(goal ≤ 20 s); from an empty cache {cold['total_s']:.1f} s = install {cold['install_s']:.1f} s + up "
        f"{cold['up_s']:.1f} s; median warm run by step (s): {steps}; down {fb['down_s']:.1f} s"),
    ]
    if fb["bring_up_failures"]:
        lines.append(f"{head}: {len(fb['bring_up_failures'])} bring-up(s) failed and were started again on new "
                     f"ports; the first: {fb['bring_up_failures'][0][:600]}")
    lat, ev, first = fb["latency"], fb["evaluate"], fb["first_commit"]
    lines.append(
        f"{head} first transaction through the Gateway committed {first['after_up_s']:.1f} s after up returned "
        f"({first['refused_first']} endorsement(s) refused before"
        + (f", the first: {first['first_refusal'][:160]}" if first["first_refusal"] else "")
        + "); submit-to-commit, one at a time, "
        f"{lat['samples']} tx: p50 {lat['p50_s']:.3f} s, p95 "
        f"{lat['p95_s']:.3f} s, min {lat['min_s']:.3f} s, max {lat['max_s']:.3f} s (goal p50 ≤ 0.15 s); "
        f"evaluate p50 {ev['p50_s'] * 1e3:.1f} ms, p95 {ev['p95_s'] * 1e3:.1f} ms ({ev['samples']} queries)")
    for in_flight in fabric.IN_FLIGHT:
        tp = fb[f"in_flight_{in_flight}"]
        rate, tl = tp["tx_per_s"], tp["latency"]
        failed = "" if not tp["failed_by"] else f" ({', '.join(f'{k}: {v}' for k, v in tp['failed_by'].items())})"
        lines.append(
            f"{head} throughput, {in_flight} in flight, {tp['runs']} × {tp['transactions_per_run']} tx: "
            f"{rate['min']:.0f}/{rate['median']:.0f}/{rate['max']:.0f} tx/s min/median/max; {tp['valid']} VALID, "
            f"{tp['failed']} failed{failed}, {tp['lost']} lost; submit-to-commit p50 "
            + ("-" if tl is None else f"{tl['p50_s']:.2f} s, p95 {tl['p95_s']:.2f} s"))
    memory = ", ".join(f"{proc} {m['peak_mib']:.0f}" for proc, m in fb["memory"].items())
    cpu = ", ".join(f"{kind} {ms:.1f}" for kind, ms in fb["cpu_ms_per_tx"].items())
    lines.append(f"{head} peak RSS (VmHWM, MiB): {memory}; CPU per committed tx during the throughput runs (ms, "
                 f"all processes of a kind): {cpu}, while other processes used {fb['other_processes_cores']:.1f} of "
                 f"{os.cpu_count()} cores; {fb['bench_wall_s']:.0f} s")
    return lines


def _fabric(results: dict[str, object]) -> int:
    """The Fabric section, one consensus after the other; 1 when one failed."""
    code = 0
    for consensus in fabric.CONSENSUS:
        try:
            fb = fabric.measure(consensus)
        except (RuntimeError, OSError, ValueError, subprocess.SubprocessError, LedgerError) as exc:
            # A real network of real processes: report the failure with the other figures.
            results[f"fabric_{consensus}"] = {"error": str(exc)}
            print(f"fabric {consensus}: failed: {str(exc).strip()[:2000]}", flush=True)
            code = 1
            continue
        results[f"fabric_{consensus}"] = fb
        for line in _fabric_lines(fb):
            print(line, flush=True)
    return code


def _work(results: dict[str, object]) -> int:
    """Round work, audited ÷ plain, on the embedded ledger and on a real Fabric channel, side by side."""
    try:
        with fabric.local_network("etcdraft") as network:
            for epochs in (2, 20):
                for ledger in ("embedded", "fabric"):
                    profile = network.top.profile_path if ledger == "fabric" else None
                    wk = work.measure(local_epochs=epochs, ledger=ledger, fabric_profile=profile)
                    results[f"work_epochs_{epochs}_{ledger}"] = wk
                    print(f"round work with {epochs} local epochs, 3 institutions, no transport, {ledger} ledger: "
                          f"plain {wk['plain_round_s'] * 1e3:.1f} ms, audited {wk['audited_round_s'] * 1e3:.1f} ms, "
                          f"ratio {wk['ratio']:.3f} (goal ≤ 1.05); ledger per round (RecordRound + CommitModel "
                          f"committed) {wk['ledger_s'] * 1e3:.0f} ms median, {wk['ledger_s_min'] * 1e3:.0f}–"
                          f"{wk['ledger_s_max'] * 1e3:.0f} ms over {wk['rounds_counted']} rounds"
                          + (" (goal ≤ 300 ms)" if ledger == "fabric" else ""), flush=True)
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError, LedgerError) as exc:
        results["work"] = {"error": str(exc)}
        print(f"round work: failed: {str(exc).strip()[:2000]}", flush=True)
        return 1
    return 0


def _relay(results: dict[str, object]) -> int:
    """Deployment round time, per-message ClientApp vs relay ClientApp + warm trainer, side by side."""
    try:
        rl = relay.measure()
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
        results["relay"] = {"error": str(exc)}
        print(f"relay ClientApp: failed: {str(exc).strip()[:2000]}", flush=True)
        return 1
    results["relay"] = rl
    for name, label in (("default", "per-message"), ("relay", "relay (the default)")):
        r = rl[name]
        print(f"deployment round, {rl['participants']} institutions, rounds 2..{rl['rounds']}, {label} ClientApp: "
              f"{r['min_s']:.2f}/{r['median_s']:.2f}/{r['max_s']:.2f} s min/median/max (1-min load average "
              f"{r['load_avg_1m']:.1f} at its start)", flush=True)
    print(f"relay ÷ per-message median round time: {rl['median_ratio']:.3f}; {rl['bench_wall_s']:.0f} s", flush=True)
    return 0


def _attack_options(args: list[str]) -> tuple[attacks.Settings, int, Path | None]:
    """``attacks``' options: the simulation's settings, the worker processes and the JSON file."""
    parser = argparse.ArgumentParser(prog="python -m bench attacks", description="the attack benchmark")
    defaults = attacks.Settings()
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--participants", type=int, default=defaults.participants)
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="seeds per cell")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--json", type=Path, nargs="?", const=Path("bench-attacks.json"), default=None,
                        metavar="PATH", help="write every figure, per seed and round, to PATH")
    ns = parser.parse_args(args)
    try:
        settings = attacks.Settings(rounds=ns.rounds, participants=ns.participants, repeats=ns.repeats)
    except ValueError as exc:
        parser.error(str(exc))
    return settings, max(ns.workers, 1), ns.json


def _attacks(results: dict[str, object], args: list[str] | None = None) -> int:
    """Robust aggregation, FedProx, int8 and DP under attack, and the scorers' rewards: tables, plots, JSON."""
    settings, workers, json_path = _attack_options(args or [])
    result = attacks.measure(settings, workers=workers)
    for line in attacks.tables(result):
        print(line, flush=True)
    plots = attacks.plot(result, _DOCS)
    print("plots: " + ", ".join(str(p) for p in plots), flush=True)
    if json_path is not None:
        # Not sorted: the parts keep the order of the tables, for replotting.
        json_path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"every figure: {json_path}", flush=True)
    results["attacks"] = attacks.summary(result)
    return 0


def _everything(results: dict[str, object]) -> int:
    """Signatures, Fabric, round work, Flower simulation, deployment mode and attacks; 1 when a section failed."""
    sig = signatures.measure()
    results["signatures"] = sig
    print(f"signature verifications/s at the coordinator: {sig['per_second_1_thread']:,.0f} on 1 thread, "
          f"{sig['per_second_all_cores']:,.0f} on {sig['threads']} threads (goal ≥ 10,000/s)", flush=True)
    code = _fabric(results)
    code = max(code, _work(results))
    for epochs in (2, 20):
        ov = overhead.measure(local_epochs=epochs)
        results[f"overhead_epochs_{epochs}"] = ov
        print(f"round time in Flower's simulation (100 ms polling ticks) with {epochs} local epochs: plain Flower FedAvg {ov['plain_round_s']:.3f} s, "
              f"audited {ov['audited_round_s']:.3f} s, ratio {ov['ratio']:.3f} (goal ≤ 1.05); "
              f"coordinator aggregation {ov['plain_aggregate_s'] * 1e3:.1f} ms plain vs "
              f"{ov['audited_aggregate_s'] * 1e3:.1f} ms audited, of which ledger {ov['audited_ledger_s'] * 1e3:.1f} ms",
              flush=True)
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
    return max(code, _attacks(results))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks (all, or one section), print a table and one JSON line."""
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["fabric"], ["work"], ["relay"]) and args[:1] != ["attacks"]:
        print(USAGE, file=sys.stderr)
        return 2
    # A SIGTERM (a closed terminal, a timeout) unwinds like Ctrl-C, so the networks and
    # processes the benchmarks started are still stopped by their own cleanup.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    # stdout is the figures and the JSON line; warnings go to stderr, the clients' retries
    # (info) are not printed — failed and lost transactions are counted in the figures.
    configure_logging(level=logging.WARNING)
    results: dict[str, object] = {}
    sections = {"fabric": _fabric, "work": _work, "relay": _relay}
    if args[:1] == ["attacks"]:
        code = _attacks(results, args[1:])
    else:
        code = sections[args[0]](results) if args else _everything(results)
    print(json.dumps(results, sort_keys=True))
    return code


if __name__ == "__main__":
    sys.exit(main())
