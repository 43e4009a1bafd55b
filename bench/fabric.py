"""A real local Fabric network: bring-up, submit-to-commit latency, throughput, query latency, memory.

For one consensus (etcdraft: one orderer; BFT: four SmartBFT orderers), always with three
peer organisations, one ``fedaudit`` chaincode server each (mutual TLS) and BatchTimeout
100 ms, every network fresh in its own temporary folder on a free port range:

* **bring-up from an empty cache**: :func:`ledger.fabric.install.install` of the pinned
  release archive into a new temporary cache (checksum, unpack, ``peer version``), then
  :meth:`Network.up` with that install; both timed, reported apart and together.
* **warm bring-up**, :data:`WARM_RUNS` times: ``Network.up`` with the release already in the
  user's cache. Timed from the call to its return, which is when the chaincode is
  committed and every peer has reached its chaincode server. Every progress step of
  ``up`` is timed too, to show where the time goes.
  The last of these networks stays up for the load below.
* **first transaction**: seconds from ``up``'s return to the first ``InitFederation``
  committed through a new Gateway client (connection and every refused try included).
* **submit-to-commit latency**: one Gateway client as ``CoordinatorMSP``, one transaction at
  a time, each ``InitFederation`` of a new federation id (independent writes: no MVCC
  conflicts); timed from the call to ``Contract.submit`` (proposal, endorsement by a
  majority of peer organisations, ordering) to its return with the commit status VALID.
* **throughput** at :data:`IN_FLIGHT` transactions in flight: that many threads share one
  Gateway connection, each submitting its next ``InitFederation`` as soon as its last one
  committed. Timed from the first submit to the last commit status. Every transaction ends
  VALID, *failed* (refused at endorsement or submit, or committed other than VALID) or
  *lost* (the commit status never came within :data:`COMMIT_TIMEOUT_S`). A failed Submit
  is looked up once more after the run: the transaction may have been ordered anyway
  (with BFT, the Gateway reports a Submit as failed unless a quorum of orderers accepted
  it, and orderers that already hold it through a peer orderer refuse it), so the client
  saw a failure while the ledger holds the transaction; both are reported.
* **evaluate latency**: ``GetFederation`` of an existing federation, one at a time.
* **memory and CPU**: every orderer, peer and chaincode server is sampled through
  ``/proc/<pid>/status`` during the load (VmRSS; VmHWM, the kernel's own peak, at the end)
  and its CPU time (``/proc/<pid>/stat``) is read around the throughput runs, as is this
  process's (the client); the rest of the machine's busy CPU time (``/proc/stat``) over
  the same runs is what other processes took from the cores.

A bring-up that fails is reported, its logs are kept, and it is tried once more on new
ports. Every network is taken down by pid (``Network.down(purge=True)``) and every temporary
folder removed, also when a step fails.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import grpc

from ledger.fabric.gateway import Contract, Deadlines, connect_from_profile
from ledger.fabric.gateway_errors import (
    CommitError,
    CommitStatusError,
    EndorseError,
    GatewayError,
    SubmitError,
)
from ledger.fabric.install import SHA256_ENV, FabricInstall, default_archive, install
from ledger.fabric.network import Network, port_free
from ledger.fabric.topology import Consensus, Topology

__all__ = ["CONSENSUS", "IN_FLIGHT", "LATENCY_SAMPLES", "WARM_RUNS", "fabric_cache", "measure", "local_network"]

CONSENSUS: tuple[Consensus, ...] = ("etcdraft", "bft")
WARM_RUNS = 3
LATENCY_SAMPLES = 100
EVALUATE_SAMPLES = 200
IN_FLIGHT = (50, 200)
THROUGHPUT_MIN_TX = 400  # per run; at least 4 per thread, so that ramp-up and drain stay small
THROUGHPUT_RUNS = 3
COMMIT_TIMEOUT_S = 60.0
_SETTLE_S = 5.0
BATCH_TIMEOUT_MS = 100
_BRING_UP_ATTEMPTS = 2
_WARM_UP_TX = 5  # first transactions of a client (connection, first blocks): not counted
_SAMPLE_S = 0.25
_POLICY = json.dumps({"auditor_msps": ["AuditorMSP"]})
_ORG = "CoordinatorMSP"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# ``Network.up`` reports its steps as sentences; a short name for each, matched in order.
_STEPS = (
    ("crypto", "crypto+config"),
    ("joining the orderers", "orderer join"),
    ("orderer", "orderer start"),
    ("joining the peers", "peer join"),
    ("peers", "peer start"),
    ("installing chaincode", "chaincode install"),
    ("chaincode server", "chaincode servers"),
    ("approving", "approve"),
    ("committing", "commit"),
    ("waiting", "chaincode ready"),
)


def fabric_cache(env: Mapping[str, str]) -> Path:
    """Where ``./run``, the CLI and the tests keep the unpacked Fabric release."""
    return Path(env.get("FEDLEDGER_CACHE", Path.home() / ".cache" / "fedledger")) / "fabric"


# --- ports and networks ----------------------------------------------------------------

_taken: set[int] = set()
# Below Linux's ephemeral range (32768–60999 by default): there, the outgoing connections of
# every process on the machine take local ports, and one may hold a node's port the moment
# the node binds it. Ranges are BFT-sized (base … base+202) and never reused within a run.
_PORT_RANGES = range(24050, 32768 - 300, 500)


def _free_base_port() -> int:
    """A base port whose whole range is free now and not yet used by this run.

    Others run networks on this machine too (the tests scan from 20050, a developer's
    network uses 7050): starting elsewhere makes a race for one range unlikely, and
    ``up`` refuses a busy port anyway.
    """
    for base in _PORT_RANGES:
        top = Topology(data_dir=Path("/nonexistent"), base_port=base, consensus="bft")
        if base not in _taken and all(port_free("127.0.0.1", port) for _, port in top.ports()):
            _taken.add(base)
            return base
    raise RuntimeError(f"no free port range for a Fabric network between {_PORT_RANGES.start} and "
                       f"{_PORT_RANGES.stop}")


def _step_name(message: str) -> str:
    return next((name for key, name in _STEPS if key in message), message)


@dataclass
class _BringUp:
    """One timed ``Network.up``: total seconds and seconds per step."""

    seconds: float
    steps: dict[str, float]
    ended_at: float  # time.perf_counter() when ``up`` returned


def _up(network: Network) -> _BringUp:
    """``network.up()``, timed in total and per step; on failure its logs are kept, it is taken down."""
    marks: list[tuple[str, float]] = []
    started = time.perf_counter()
    try:
        network.up(lambda message: marks.append((message, time.perf_counter())))
    except (RuntimeError, OSError) as exc:
        # The data folder is purged below: keep the logs somewhere that stays, for the diagnosis.
        kept = Path(tempfile.mkdtemp(prefix=f"fedledger-bench-fabric-failed-{network.top.consensus}-"))
        if (network.top.data_dir / "logs").is_dir():
            shutil.copytree(network.top.data_dir / "logs", kept / "logs", dirs_exist_ok=True)
        network.down(purge=True)
        raise RuntimeError(f"{str(exc).strip()} (logs kept in {kept})") from exc
    ended = time.perf_counter()
    steps: dict[str, float] = {}
    for (message, at), (_, until) in zip(marks, [*marks[1:], ("", ended)]):
        if message != "up":
            steps[_step_name(message)] = steps.get(_step_name(message), 0.0) + until - at
    return _BringUp(ended - started, steps, ended)


@contextlib.contextmanager
def _network(
    install_: FabricInstall, consensus: Consensus, parent: Path, failures: list[str]
) -> Iterator[tuple[Network, _BringUp]]:
    """A fresh network, brought up and timed; taken down by pid (data purged) on the way out.

    A failed bring-up is recorded in ``failures`` and tried once more from scratch on new
    ports: the failure is reported with the figures, never hidden, but one flaky start
    does not cost every other figure of the run.
    """
    for attempt in range(_BRING_UP_ATTEMPTS):
        top = Topology(data_dir=Path(tempfile.mkdtemp(prefix=f"{consensus}-", dir=parent)), consensus=consensus,
                       base_port=_free_base_port(), batch_timeout_ms=BATCH_TIMEOUT_MS)
        network = Network(top, install_)
        try:
            timed = _up(network)
        except RuntimeError as exc:
            failures.append(str(exc))
            if attempt + 1 == _BRING_UP_ATTEMPTS:
                raise
            continue
        try:
            yield network, timed
        finally:
            network.down(purge=True)
        return


# --- /proc sampling ------------------------------------------------------------------------

def _status_kib(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError, IndexError):
        return None
    return None


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` (``/proc/<pid>/stat`` fields 14 and 15)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used since boot, all cores (``/proc/stat``)."""
    fields = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()[1:]
    # user nice system idle iowait irq softirq steal …: everything but idle and iowait is busy.
    ticks = [int(v) for v in fields[:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / _CLOCK_TICKS


class _Sampler:
    """Samples VmRSS of the network's processes until stopped; VmHWM read at the end."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.max_rss_kib: dict[str, int] = {}
        self.rss_before_kib = {name: _status_kib(pid, "VmRSS") or 0 for name, pid in pids.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fabric-bench-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(_SAMPLE_S):
            self._sample()

    def _sample(self) -> None:
        for name, pid in self.pids.items():
            rss = _status_kib(pid, "VmRSS")
            if rss is not None:
                self.max_rss_kib[name] = max(rss, self.max_rss_kib.get(name, 0))

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each process."""
        return {name: _cpu_seconds(pid) or 0.0 for name, pid in self.pids.items()}

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def report(self) -> dict[str, dict[str, float]]:
        """Per process, MiB: RSS before the load, highest sampled RSS, and the kernel's peak (VmHWM)."""
        mib = 1024.0
        return {name: {"rss_before_mib": self.rss_before_kib[name] / mib,
                       "rss_max_sampled_mib": self.max_rss_kib.get(name, 0) / mib,
                       "peak_mib": (_status_kib(pid, "VmHWM") or 0) / mib}
                for name, pid in self.pids.items()}


# --- load --------------------------------------------------------------------------------

def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0–100) of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _summary(latencies: list[float]) -> dict[str, float]:
    return {"p50_s": _percentile(latencies, 50), "p95_s": _percentile(latencies, 95),
            "min_s": min(latencies), "max_s": max(latencies), "samples": len(latencies)}


class _Ids:
    """Fresh federation ids (``[a-z0-9-]``, unique across runs and networks)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = f"{prefix}-{os.getpid()}-{int(time.time())}"
        self.count = 0
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            self.count += 1
            return f"{self.prefix}-{self.count}"


def _first_commit(contract: Contract, ids: _Ids, deadline_s: float = 60.0) -> tuple[str, list[str]]:
    """Submit until one transaction commits; its federation id, and the refusals before it.

    ``Network.up`` returns once every peer reaches its chaincode, but a peer's Gateway
    can only choose endorsers after gossip has shown it the other organisations' peers;
    until then endorsement is refused with FAILED_PRECONDITION.
    """
    deadline = time.monotonic() + deadline_s
    refusals: list[str] = []
    while True:
        fed = ids.next()
        try:
            contract.submit("InitFederation", fed, _POLICY, commit_timeout=COMMIT_TIMEOUT_S)
            return fed, refusals
        except EndorseError as exc:
            if exc.code not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE) \
                    or time.monotonic() > deadline:
                raise
            refusals.append(str(exc))
            time.sleep(0.1)


def _one_at_a_time(contract: Contract, ids: _Ids, n: int) -> list[float]:
    """Seconds from calling ``submit`` to its return with the commit VALID, ``n`` times in turn."""
    latencies = []
    for _ in range(n):
        fed = ids.next()
        started = time.perf_counter()
        contract.submit("InitFederation", fed, _POLICY, commit_timeout=COMMIT_TIMEOUT_S)
        latencies.append(time.perf_counter() - started)
    return latencies


@dataclass
class _Outcomes:
    """What became of the transactions of one throughput run."""

    valid: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # by error type, or by validation code
    lost: int = 0
    examples: dict[str, str] = field(default_factory=dict)  # the first message of each kind of failure
    unsettled: list[str] = field(default_factory=list)  # tx ids whose Submit failed: ordered or not?
    latencies: list[float] = field(default_factory=list)
    first_submit: float = float("inf")
    last_commit: float = 0.0

    @property
    def seconds(self) -> float:
        """Wall time from the first submit to the last commit status."""
        return self.last_commit - self.first_submit


def _in_flight(contract: Contract, ids: _Ids, total: int, in_flight: int) -> _Outcomes:
    """``total`` transactions by ``in_flight`` threads, each submitting its next after its last committed."""
    out = _Outcomes()
    lock = threading.Lock()
    remaining = [total]
    go = threading.Barrier(in_flight + 1)

    def worker() -> None:
        go.wait()
        while True:
            with lock:
                if remaining[0] == 0:
                    return
                remaining[0] -= 1
            fed = ids.next()
            started = time.perf_counter()
            failure: tuple[str, GatewayError] | None = None
            try:
                contract.submit_async("InitFederation", fed, _POLICY).wait(COMMIT_TIMEOUT_S)
            except CommitError as exc:
                failure = f"committed {exc.validation_code}", exc
            except CommitStatusError as exc:
                failure = "lost", exc
            except GatewayError as exc:
                failure = type(exc).__name__, exc
            ended = time.perf_counter()
            with lock:
                out.first_submit = min(out.first_submit, started)
                out.last_commit = max(out.last_commit, ended)
                if failure is None:
                    out.valid += 1
                    out.latencies.append(ended - started)
                    continue
                kind, error = failure
                out.examples.setdefault(kind, str(error)[:400])
                if kind == "lost":
                    out.lost += 1
                elif isinstance(error, SubmitError) and error.tx_id:
                    out.unsettled.append(error.tx_id)
                else:
                    out.failed[kind] += 1

    # Daemon threads: an interrupted run must not wait for its clients' deadlines to exit.
    threads = [threading.Thread(target=worker, name=f"fabric-bench-{i}", daemon=True) for i in range(in_flight)]
    for thread in threads:
        thread.start()
    go.wait()
    for thread in threads:
        thread.join()
    _settle(contract, out)
    return out


def _settle(contract: Contract, out: _Outcomes) -> None:
    """Find out whether transactions whose Submit failed were ordered after all (after the timing).

    A Submit that failed UNAVAILABLE may still have reached the ordering service; its
    commit status says whether it committed, and how.
    """
    def status(tx_id: str) -> str:
        try:
            return f"SubmitError, then committed {contract.network.commit_status(tx_id, _SETTLE_S).name}"
        except GatewayError:
            return f"SubmitError, not committed within {_SETTLE_S:.0f} s"

    if out.unsettled:
        with ThreadPoolExecutor(max_workers=min(32, len(out.unsettled))) as pool:
            out.failed.update(pool.map(status, out.unsettled))


def _evaluate(contract: Contract, fed: str, n: int) -> list[float]:
    """Seconds per ``GetFederation`` query, ``n`` in turn."""
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        contract.evaluate("GetFederation", fed)
        latencies.append(time.perf_counter() - started)
    return latencies


def _kind(name: str) -> str:
    """``orderer``, ``peer`` or ``chaincode`` for a process name (``orderer2``, ``peer0.banka``, …)."""
    return name.split(".", 1)[0].rstrip("0123456789")


def _throughput(contract: Contract, ids: _Ids, in_flight: int, say: Callable[[str], None]) -> dict[str, Any]:
    """:data:`THROUGHPUT_RUNS` runs at ``in_flight`` transactions in flight: rates, outcomes, latencies."""
    total = max(THROUGHPUT_MIN_TX, 4 * in_flight)
    runs = []
    for run in range(THROUGHPUT_RUNS):
        say(f"{total} transactions, {in_flight} in flight (run {run + 1} of {THROUGHPUT_RUNS})")
        runs.append(_in_flight(contract, ids, total, in_flight))
    failed: Counter[str] = Counter()
    for r in runs:
        failed.update(r.failed)
    latencies = [s for r in runs for s in r.latencies]
    return {
        "transactions_per_run": total, "runs": THROUGHPUT_RUNS,
        "tx_per_s": _spread([r.valid / r.seconds for r in runs]),
        "seconds": [r.seconds for r in runs],
        "valid": sum(r.valid for r in runs), "failed": sum(failed.values()), "failed_by": dict(failed),
        "errors": {kind: text for r in reversed(runs) for kind, text in r.examples.items()},
        "lost": sum(r.lost for r in runs),
        "latency": _summary(latencies) if latencies else None,
    }


def _load(network: Network, up_returned_at: float, say: Callable[[str], None]) -> dict[str, Any]:
    """First commit, latency, throughput, evaluate latency, memory and CPU on a running network."""
    profile = network.profile()
    ids = _Ids(f"bench-{network.top.consensus}")
    pids = {name: pid for name in network.process_names() if (pid := network.pid(name)) is not None}
    result: dict[str, Any] = {}
    deadlines = Deadlines(commit_status=COMMIT_TIMEOUT_S)
    with connect_from_profile(profile, _ORG, deadlines=deadlines) as gateway, _Sampler(pids) as sampler:
        contract = gateway.get_network(profile.channel).get_contract(profile.chaincode)
        first_fed, refusals = _first_commit(contract, ids)
        result["first_commit"] = {"after_up_s": time.perf_counter() - up_returned_at, "refused_first": len(refusals),
                                  "first_refusal": refusals[0][:400] if refusals else None}
        _one_at_a_time(contract, ids, _WARM_UP_TX)
        say(f"{LATENCY_SAMPLES} transactions one at a time")
        result["latency"] = _summary(_one_at_a_time(contract, ids, LATENCY_SAMPLES))
        cpu_before, client_before = sampler.cpu(), time.process_time()
        machine_before, wall_before = _machine_busy_seconds(), time.perf_counter()
        committed = 0
        for in_flight in IN_FLIGHT:
            result[f"in_flight_{in_flight}"] = _throughput(contract, ids, in_flight, say)
            committed += result[f"in_flight_{in_flight}"]["valid"]
        cpu_after, client_after = sampler.cpu(), time.process_time()
        machine_after, wall_after = _machine_busy_seconds(), time.perf_counter()
        say(f"{EVALUATE_SAMPLES} queries one at a time")
        result["evaluate"] = _summary(_evaluate(contract, first_fed, EVALUATE_SAMPLES))
    result["memory"] = sampler.report()
    per_kind: dict[str, float] = {}
    for name in pids:
        per_kind[_kind(name)] = per_kind.get(_kind(name), 0.0) + cpu_after[name] - cpu_before[name]
    per_kind["client"] = client_after - client_before
    result["cpu_ms_per_tx"] = {kind: seconds * 1e3 / max(committed, 1) for kind, seconds in per_kind.items()}
    # Whatever else ran on the machine meanwhile took cores from the network: say how many.
    others = machine_after - machine_before - sum(per_kind.values())
    result["other_processes_cores"] = max(0.0, others) / (wall_after - wall_before)
    return result


# --- the whole measurement ---------------------------------------------------------------

@contextlib.contextmanager
def local_network(consensus: Consensus = "etcdraft", env: Mapping[str, str] | None = None) -> Iterator[Network]:
    """A fresh network for another benchmark to run on (Fabric from the cache), taken down
    by pid and purged afterwards."""
    env = os.environ if env is None else env
    cached = install(default_archive(env), fabric_cache(env), sha256=env.get(SHA256_ENV))
    with tempfile.TemporaryDirectory(prefix=f"fedledger-bench-net-{consensus}-") as tmp:
        with _network(cached, consensus, Path(tmp), []) as (network, _):
            yield network


def measure(
    consensus: Consensus, *, env: Mapping[str, str] | None = None, progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Bring-up (empty cache and warm), latency, throughput, queries and memory for one consensus.

    ``env`` (default: this process's environment) names the cache (``FEDLEDGER_CACHE``)
    and the release archive and its checksum, as for ``./run`` and the CLI.
    """
    env = os.environ if env is None else env
    say = progress or (lambda _msg: None)
    wall = time.perf_counter()
    started = time.perf_counter()
    cached = install(default_archive(env), fabric_cache(env), sha256=env.get(SHA256_ENV))
    cache_lookup_s = time.perf_counter() - started
    result: dict[str, Any] = {"consensus": consensus, "batch_timeout_ms": BATCH_TIMEOUT_MS,
                              "fabric": cached.version, "cache_lookup_s": cache_lookup_s}
    failures: list[str] = []
    result["bring_up_failures"] = failures
    with tempfile.TemporaryDirectory(prefix=f"fedledger-bench-fabric-{consensus}-") as tmp:
        parent = Path(tmp)
        say("installing Fabric into an empty cache, then up")
        empty_cache = parent / "empty-cache"
        started = time.perf_counter()
        fresh = install(default_archive(env), empty_cache / "fabric", sha256=env.get(SHA256_ENV))
        install_s = time.perf_counter() - started
        with _network(fresh, consensus, parent, failures) as (network, cold):
            top = network.top
            result["topology"] = {"orderers": len(top.orderers), "peers": len(top.peers),
                                  "chaincode_servers": len(top.chaincode_servers)}
        shutil.rmtree(empty_cache, ignore_errors=True)
        result["empty_cache"] = {"install_s": install_s, "up_s": cold.seconds, "total_s": install_s + cold.seconds,
                                 "steps_s": cold.steps}
        warm: list[_BringUp] = []
        with contextlib.ExitStack() as last:
            for run in range(WARM_RUNS):
                say(f"warm bring-up {run + 1} of {WARM_RUNS}")
                if run < WARM_RUNS - 1:
                    with _network(cached, consensus, parent, failures) as (_, timed):
                        warm.append(timed)
                else:
                    # The last network stays up for the load, and is taken down after it.
                    network, timed = last.enter_context(_network(cached, consensus, parent, failures))
                    warm.append(timed)
            median = sorted(warm, key=lambda b: b.seconds)[len(warm) // 2]
            result["warm"] = {"up_s": _spread([b.seconds for b in warm]), "runs_s": [b.seconds for b in warm],
                              "median_run_steps_s": median.steps}
            result.update(_load(network, timed.ended_at, say))
            started = time.perf_counter()
        result["down_s"] = time.perf_counter() - started
    result["bench_wall_s"] = time.perf_counter() - wall
    return result
