"""Attacks on training, and what the audited rounds' rules make of them (``python -m bench attacks``).

An in-process simulation of the rounds the coordinator runs and the auditor recomputes —
no Flower, no ledger, real local training (:func:`fl.model.train`, the demo's 2 epochs,
lr 0.05, batch 64) on the demo credit data split non-IID (Dirichlet α 0.5). Each round
every institution trains from the global model and sends what its role makes of it:

============  =====================================================
role          what it sends
============  =====================================================
honest        its trained model
sign-flip     ``base − (trained − base)``
scale10       ``base + 10 × (trained − base)``
label-flip    the model trained on ``1 − y``
free-rider    the base model it received
copier        ``base + (base − previous)``: last round's global step
              again (the base itself in round 1)
============  =====================================================

The coordinator's round rules then run as they do in an audited round:
:func:`ledger.admission.round_rejections` (no training, copies, outliers, multi-Krum's
discards) with the signed example counts as weights, the accepted updates' weights capped
(:func:`ledger.aggregate.capped`), and the policy's rule aggregates them
(:data:`ledger.aggregate.AGGREGATORS`; ``fedprox`` is FedAvg over updates trained with
FedProx's μ = 0.01). Four parts, each repeated over several seeds (data split, initial
model, training):

* **robust** — final test AUC/accuracy per attack scenario × rule, and who was rejected;
* **compression** — bytes sent per round and final AUC with and without int8, no attack;
* **dp** — final AUC against the per-round ε of DP-SGD (δ 1e-5, clipping 1.0), no attack,
  and the ε each institution's accountant claimed;
* **rewards** — an uneven honest split (one institution 6× the rows of another), a free
  rider and a copier; each round's tokens (budget 1000, :func:`ledger.incentives.compute_rewards`)
  from the scores of ``cosine``, ``loo`` and ``shapley``, summed over the rounds.
"""

from __future__ import annotations

import functools
import multiprocessing
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fl import demo_data
from fl import model as fl_model
from fl.config import FederationConfig
from fl.model_spec import ModelSpec
from ledger.admission import round_rejections
from ledger.aggregate import AGGREGATORS, WeightedUpdate, capped
from ledger.compression import compress, decompress, wire_bytes
from ledger.formats import PPM, update_digest
from ledger.incentives import compute_rewards
from ledger.records import FederationPolicy, RoundEntry, RoundRecord, ScorerSpec
from ledger.scoring import score_round
from ledger.utility import ValidationSet

__all__ = ["ATTACKS", "RULES", "SCENARIOS", "EPSILONS", "SCORERS", "Settings", "measure", "tables", "plot", "summary"]

ATTACKS = ("sign-flip", "scale10", "label-flip", "free-rider", "copier")
RULES = ("fedavg", "fedprox", "median", "trimmed-mean", "multi-krum")
# (attack, number of attackers); "none" has none.
SCENARIOS: tuple[tuple[str, int], ...] = (
    ("none", 0), ("sign-flip", 1), ("scale10", 1), ("label-flip", 1), ("free-rider", 1), ("copier", 1),
    ("sign-flip", 2), ("scale10", 2),
)
EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0)
SCORERS = ("cosine", "loo", "shapley")
_TRAINING = ("honest", "sign-flip", "scale10", "label-flip")  # roles that train locally
# The rewards part's split of the pooled training rows: three honest institutions of very
# different sizes (big has 6× small's rows), a free rider and a copier.
_REWARD_ROLES = (("big", "honest", 0.48), ("mid", "honest", 0.24), ("small", "honest", 0.08),
                 ("free-rider", "free-rider", 0.10), ("copier", "copier", 0.10))
_BUDGET = 1000


@dataclass(frozen=True)
class Settings:
    """What one benchmark run simulates (defaults: the demo's training, 5 × 5 rounds × 3 seeds)."""

    rounds: int = 5
    participants: int = 5
    repeats: int = 3
    epochs: int = 2
    lr: float = 0.05
    batch_size: int = 64
    alpha: float = 0.5
    fedprox_mu: float = 0.01
    trim_ppm: int = 200_000
    dp_delta: float = 1e-5
    dp_max_grad_norm: float = 1.0
    scenarios: tuple[tuple[str, int], ...] = SCENARIOS
    rules: tuple[str, ...] = RULES
    epsilons: tuple[float, ...] = EPSILONS
    scorers: tuple[str, ...] = SCORERS

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.repeats < 1:
            raise ValueError(f"rounds and repeats must be at least 1, got {self.rounds} and {self.repeats}")
        most = max((k for _, k in self.scenarios), default=0)
        if self.participants < max(3, 2 * most + 1):
            raise ValueError(f"participants must be at least 3 and leave honest institutions in the majority "
                             f"({most} attacker(s)), got {self.participants}")
        unknown = [a for a, _ in self.scenarios if a != "none" and a not in ATTACKS]
        unknown += [r for r in self.rules if r not in RULES] + [s for s in self.scorers if s not in SCORERS]
        if unknown:
            raise ValueError(f"unknown scenario, rule or scorer {unknown[0]!r}")


@dataclass(frozen=True, eq=False)
class _Institution:
    pid: str
    role: str
    x: np.ndarray
    y: np.ndarray


@dataclass
class _Run:
    """One simulated federation's outcome."""

    auc: float = 0.0
    accuracy: float = 0.0
    auc_by_round: list[float] = field(default_factory=list)
    rejected: list[dict[str, list[str]]] = field(default_factory=list)  # per round: pid → [reason, detail]
    bytes_by_round: list[int] = field(default_factory=list)
    epsilon_ppm: dict[str, list[int]] = field(default_factory=dict)  # pid → ε claimed per round
    tokens: dict[str, dict[str, int]] = field(default_factory=dict)  # scorer → pid → tokens over the rounds

    def as_dict(self) -> dict[str, Any]:
        return {"auc": self.auc, "accuracy": self.accuracy, "auc_by_round": self.auc_by_round,
                "rejected": self.rejected, "bytes_by_round": self.bytes_by_round,
                "epsilon_ppm": self.epsilon_ppm, "tokens": self.tokens}


def _policy(rule: str, attackers: int, trim_ppm: int) -> tuple[FederationPolicy, str, dict[str, int]]:
    """The on-ledger policy of ``rule``: the aggregator's name and its parameters."""
    aggregation = "fedavg" if rule == "fedprox" else rule
    params = {"trimmed-mean": {"trim_ppm": trim_ppm}, "multi-krum": {"byzantine": max(attackers, 1)}}.get(rule, {})
    # What a federation file gets by default (fl.config): the same thresholds the demo runs with.
    defaults = FederationConfig.model_fields
    policy = FederationPolicy(
        aggregation=aggregation, aggregation_params=params,
        no_training_ppm=round(defaults["no_training"].default * PPM),
        copy_cosine_ppm=round(defaults["copy_cosine"].default * PPM),
        max_weight_share_ppm=round(defaults["max_weight_share"].default * PPM),
        outlier_norm_ratio_ppm=round(defaults["max_norm_ratio"].default * PPM),
        outlier_weight_ratio_ppm=round(defaults["max_weight_ratio"].default * PPM))
    return policy, aggregation, params


def _moved(base: Mapping[str, np.ndarray], towards: Mapping[str, np.ndarray], factor: float) -> dict[str, np.ndarray]:
    """``base + factor × (towards − base)`` in float64, cast back to each tensor's dtype."""
    return {n: (b.astype(np.float64) + factor * (towards[n].astype(np.float64) - b.astype(np.float64))).astype(b.dtype)
            for n, b in base.items()}


def _sent(inst: _Institution, base: dict[str, np.ndarray], previous: dict[str, np.ndarray] | None,
          spec: ModelSpec, settings: Settings, seed: int, mu: float,
          dp: fl_model.DPSettings | None) -> tuple[dict[str, np.ndarray], int | None]:
    """What ``inst`` sends this round (dense, before compression) and the ε it claimed."""
    if inst.role == "free-rider":
        return {n: a.copy() for n, a in base.items()}, None
    if inst.role == "copier":
        return (_moved(base, previous, -1.0) if previous is not None else {n: a.copy() for n, a in base.items()}), None
    model = fl_model.build_model(spec, inst.x.shape[1])
    fl_model.set_arrays(model, base)
    y = 1.0 - inst.y if inst.role == "label-flip" else inst.y
    honest = inst.role == "honest"
    result = fl_model.train(model, inst.x, y, epochs=settings.epochs, lr=settings.lr,
                            batch_size=settings.batch_size, seed=seed, mu=mu if honest else 0.0,
                            global_arrays=base if honest and mu > 0 else None, dp=dp if honest else None)
    trained = fl_model.get_arrays(model)
    claim = result["training"].dp
    epsilon = None if claim is None else claim.epsilon_ppm
    if inst.role == "sign-flip":
        return _moved(base, trained, -1.0), epsilon
    if inst.role == "scale10":
        return _moved(base, trained, 10.0), epsilon
    return trained, epsilon


def _simulate(institutions: Sequence[_Institution], test: tuple[np.ndarray, np.ndarray], *, seed: int,
              settings: Settings, rule: str = "fedavg", attackers: int = 0, compression: str = "none",
              epsilon: float | None = None, validation: ValidationSet | None = None,
              scorers: Sequence[str] = ()) -> _Run:
    """Run ``settings.rounds`` rounds of the coordinator's rules on real local training."""
    spec = ModelSpec(seed=seed)
    n_features = institutions[0].x.shape[1]
    policy, aggregation, params = _policy(rule, attackers, settings.trim_ppm)
    mu = settings.fedprox_mu if rule == "fedprox" else 0.0
    dp = None if epsilon is None else fl_model.DPSettings(epsilon, settings.dp_delta, settings.dp_max_grad_norm)
    specs = {name: ScorerSpec(name=name, seed=seed,
                              validation_digest=None if name == "cosine" or validation is None
                              else validation.digest())
             for name in scorers}
    run = _Run(tokens={name: {i.pid: 0 for i in institutions} for name in scorers})
    evaluator = fl_model.build_model(spec, n_features)
    base, previous = fl_model.initial_arrays(spec, n_features), None
    for round_no in range(1, settings.rounds + 1):
        updates, sent_bytes = [], 0
        for index, inst in enumerate(institutions):
            arrays, eps = _sent(inst, base, previous, spec, settings, seed * 100_000 + round_no * 100 + index, mu, dp)
            if eps is not None:
                run.epsilon_ppm.setdefault(inst.pid, []).append(eps)
            wire = compress(arrays, base, compression)
            sent_bytes += wire_bytes(wire)
            updates.append(WeightedUpdate(inst.pid, len(inst.x), decompress(wire, base, compression)))
        rejected = round_rejections(base, updates, policy, previous)
        accepted = capped([u for u in updates if u.participant not in rejected], policy.max_weight_share_ppm)
        for name, scorer in specs.items():
            scores = score_round(scorer, base, accepted, previous, validation) if accepted else {}
            entries = [RoundEntry(participant=u.participant, status="accepted", score_ppm=scores[u.participant])
                       for u in accepted]
            entries += [RoundEntry(participant=pid, status="rejected", reason=reason, detail=detail[:512])
                        for pid, (reason, detail) in sorted(rejected.items())]
            record = RoundRecord(round=round_no, base_model=update_digest(base), scorer=scorer, entries=entries)
            for pid, amount in compute_rewards(record, _BUDGET).items():
                run.tokens[name][pid] += amount
        new = AGGREGATORS[aggregation](accepted, params) if accepted else base
        run.rejected.append({pid: [reason, detail] for pid, (reason, detail) in sorted(rejected.items())})
        run.bytes_by_round.append(sent_bytes)
        previous, base = base, new
        fl_model.set_arrays(evaluator, base)
        run.auc_by_round.append(float(fl_model.evaluate(evaluator, *test)["auc"]))
    metrics = fl_model.evaluate(evaluator, *test)
    run.auc, run.accuracy = float(metrics["auc"]), float(metrics["accuracy"])
    return run


def _pid(index: int) -> str:
    return f"inst-{index + 1}"


def _federation(settings: Settings, seed: int, attack: str, attackers: int) -> list[_Institution]:
    """The non-IID demo split; the last ``attackers`` institutions play ``attack``."""
    n = settings.participants
    out = []
    for i in range(n):
        x, y = demo_data.load_partition(i, n, seed, alpha=settings.alpha)
        out.append(_Institution(_pid(i), attack if i >= n - attackers else "honest", x, y))
    return out


def _reward_federation(settings: Settings, seed: int) -> tuple[list[_Institution], tuple[np.ndarray, np.ndarray]]:
    """The rewards part's split: the demo's training rows pooled, shuffled and cut unevenly."""
    split = demo_data.partition_credit(settings.participants, seed, settings.alpha)
    schema = demo_data.credit_schema()
    x, y = schema.transform(pd.concat(split.partitions, ignore_index=True))
    order = np.random.default_rng(seed).permutation(len(x))
    cuts = np.cumsum([round(share * len(x)) for _, _, share in _REWARD_ROLES])[:-1]
    institutions = [_Institution(pid, role, x[rows], y[rows])
                    for (pid, role, _), rows in zip(_REWARD_ROLES, np.split(order, cuts))]
    return institutions, schema.transform(split.test)


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _scenario_name(attack: str, attackers: int) -> str:
    return "none" if attack == "none" else f"{attack}×{attackers}"


@dataclass(frozen=True)
class _Job:
    """One simulated federation: a part of the benchmark, its configuration and seed."""

    part: str  # "plain", "robust", "compression", "dp" or "rewards"
    seed: int
    attack: str = "none"
    attackers: int = 0
    rule: str = "fedavg"
    compression: str = "none"
    epsilon: float | None = None


def _run_job(settings: Settings, job: _Job) -> tuple[_Job, _Run, float]:
    """Run ``job``; also how long it took (for the time by part)."""
    started = time.perf_counter()
    if job.part == "rewards":
        institutions, test = _reward_federation(settings, job.seed)
        validation = ValidationSet.from_arrays({"x": test[0][::2], "y": test[1][::2]})
        run = _simulate(institutions, test, seed=job.seed, settings=settings, validation=validation,
                        scorers=settings.scorers)
    else:
        run = _simulate(_federation(settings, job.seed, job.attack, job.attackers),
                        demo_data.load_test(settings.participants, job.seed, alpha=settings.alpha),
                        seed=job.seed, settings=settings, rule=job.rule, attackers=job.attackers,
                        compression=job.compression, epsilon=job.epsilon)
    return job, run, time.perf_counter() - started


def _jobs(settings: Settings, seeds: Sequence[int]) -> list[_Job]:
    """Every simulation of a run, the slowest first (DP-SGD's accountant), so workers finish together.

    "plain" (no attack, FedAvg, no compression, no DP) is run once per seed and stands for
    the robust part's ``none × fedavg``, compression ``none`` and DP's "no DP".
    """
    jobs = [_Job("dp", s, epsilon=e) for e in sorted(settings.epsilons, reverse=True) for s in seeds]
    jobs += [_Job("rewards", s) for s in seeds]
    jobs += [_Job("plain", s) for s in seeds]
    jobs += [_Job("compression", s, compression="int8") for s in seeds]
    jobs += [_Job("robust", s, attack, attackers, rule)
             for attack, attackers in settings.scenarios for rule in settings.rules for s in seeds
             if (attack, rule) != ("none", "fedavg")]
    return jobs


def _execute(settings: Settings, jobs: Sequence[_Job], workers: int) -> tuple[dict[_Job, _Run], dict[str, float]]:
    """Run the jobs, in ``workers`` processes when more than one; runs by job, seconds by part."""
    runs: dict[_Job, _Run] = {}
    seconds: dict[str, float] = {}

    def keep(job: _Job, run: _Run, took: float) -> None:
        runs[job] = run
        seconds[job.part] = seconds.get(job.part, 0.0) + took

    if workers <= 1:
        for job in jobs:
            keep(*_run_job(settings, job))
        return runs, seconds
    # Each job is independent and single-threaded (fl.model.train sets 1 torch thread);
    # "spawn" rather than fork: torch's thread pools do not survive a fork reliably. A
    # Pool, not a ProcessPoolExecutor: leaving the block on Ctrl-C or SIGTERM terminates
    # the workers instead of waiting for every queued simulation.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for result in pool.imap(functools.partial(_run_job, settings), jobs):
            keep(*result)
    return runs, seconds


def measure(settings: Settings | None = None, *, workers: int = 1) -> dict[str, Any]:
    """Run the four parts over ``settings.repeats`` seeds; every figure, per seed and summarised.

    ``workers`` > 1 runs the independent simulations in that many processes; the figures do
    not depend on it (every simulation is seeded).
    """
    settings = settings or Settings()
    started = time.perf_counter()
    seeds = list(range(1, settings.repeats + 1))
    runs, cpu_s = _execute(settings, _jobs(settings, seeds), workers)

    def of(part: str, **fields: Any) -> list[_Run]:
        return [runs[_Job(part, s, **fields)] for s in seeds]

    plain = of("plain")
    robust: dict[str, dict[str, Any]] = {}
    for attack, attackers in settings.scenarios:
        robust[_scenario_name(attack, attackers)] = {
            rule: _cell(plain if (attack, rule) == ("none", "fedavg")
                        else of("robust", attack=attack, attackers=attackers, rule=rule),
                        attackers=[_pid(i) for i in range(settings.participants - attackers, settings.participants)])
            for rule in settings.rules}

    compression: dict[str, Any] = {}
    for scheme, scheme_runs in (("none", plain), ("int8", of("compression", compression="int8"))):
        compression[scheme] = _cell(scheme_runs)
        compression[scheme]["bytes_per_round"] = statistics.median(b for r in scheme_runs for b in r.bytes_by_round)
    compression["ratio"] = compression["int8"]["bytes_per_round"] / compression["none"]["bytes_per_round"]

    dp: dict[str, Any] = {"none": _cell(plain)}
    for epsilon in settings.epsilons:
        dp_runs = of("dp", epsilon=epsilon)
        cell = _cell(dp_runs)
        cell["epsilon_claimed"] = _spread([e / PPM for r in dp_runs for values in r.epsilon_ppm.values()
                                           for e in values])
        cell["epsilon_claimed_by_institution"] = {
            pid: _spread([e / PPM for r in dp_runs for e in r.epsilon_ppm.get(pid, [])])
            for pid in sorted({p for r in dp_runs for p in r.epsilon_ppm})}
        dp[f"{epsilon:g}"] = cell

    rewards: dict[str, Any] = {"rows": {}, "by_seed": []}
    for s, run in zip(seeds, of("rewards")):
        rewards["rows"][str(s)] = {pid: rows for pid, rows in _reward_rows(settings, s).items()}
        rewards["by_seed"].append(run.as_dict())
    pids = [pid for pid, _, _ in _REWARD_ROLES]
    for name in settings.scorers:
        per_seed = [r["tokens"][name] for r in rewards["by_seed"]]
        holds = [t["free-rider"] == 0 and t["copier"] == 0 and t["big"] > t["small"] for t in per_seed]
        rewards[name] = {"tokens": {pid: _spread([t[pid] for t in per_seed]) for pid in pids}, "holds": holds}

    return {"settings": dict(settings.__dict__), "seeds": seeds, "workers": workers, "robust": robust,
            "compression": compression, "dp": dp, "rewards": rewards, "cpu_s": cpu_s,
            "bench_wall_s": time.perf_counter() - started}


def _reward_rows(settings: Settings, seed: int) -> dict[str, int]:
    institutions, _ = _reward_federation(settings, seed)
    return {i.pid: len(i.x) for i in institutions}


def _cell(runs: Sequence[_Run], attackers: Sequence[str] = ()) -> dict[str, Any]:
    """One table cell: the spread of the final AUC/accuracy, the rejections, each run's detail."""
    reasons: dict[str, int] = {}
    honest_rejected: dict[str, int] = {}
    for run in runs:
        for by_pid in run.rejected:
            for pid, (reason, _) in by_pid.items():
                target = reasons if pid in attackers else honest_rejected
                target[reason] = target.get(reason, 0) + 1
    attacker_rounds = sum(len(run.rejected) for run in runs) * len(attackers)
    return {"auc": _spread([r.auc for r in runs]), "accuracy": _spread([r.accuracy for r in runs]),
            "attackers": list(attackers), "attacker_rounds": attacker_rounds,
            "attacker_rejections": reasons, "honest_rejections": honest_rejected,
            "runs": [r.as_dict() for r in runs]}


def _short(reasons: Mapping[str, int]) -> str:
    abbrev = {"no_training": "notrain", "copied_update": "copy", "outlier": "outlier",
              "robust_discarded": "krum"}
    return " ".join(f"{abbrev.get(k, k)} {v}" for k, v in sorted(reasons.items())) or "-"


def _auc_cell(cell: Mapping[str, Any]) -> str:
    a = cell["auc"]
    return f"{a['median']:.3f} [{a['min']:.3f}–{a['max']:.3f}]"


def _grid(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A plain-text table: the first column left-aligned, the others right-aligned, 2 spaces apart."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
            for row in [header, *rows]]


def tables(result: Mapping[str, Any]) -> list[str]:
    """The plain-text tables of a :func:`measure` result, one block per part."""
    st, seeds = result["settings"], result["seeds"]
    rules = list(st["rules"])
    robust = result["robust"]
    out = [f"attack benchmark: {st['participants']} institutions, {st['rounds']} rounds, {len(seeds)} seed(s) "
           f"{seeds}, non-IID credit data (Dirichlet α {st['alpha']}), local training {st['epochs']} epochs, lr "
           f"{st['lr']}, batch {st['batch_size']}; cells: median [min–max] over the seeds; the last institution(s) "
           "attack", ""]
    out.append("final test AUC by scenario × rule")
    out += _grid(["scenario", *rules], [[s, *(_auc_cell(by[r]) for r in rules)] for s, by in robust.items()])
    out += ["", "final test accuracy by scenario × rule (median)"]
    out += _grid(["scenario", *rules],
                 [[s, *(f"{by[r]['accuracy']['median']:.3f}" for r in rules)] for s, by in robust.items()])
    out += ["", "rejections, counted over rounds × seeds: the attackers' (/ attacker-rounds) ; the honest "
                "institutions'"]
    rows = []
    for scenario, by_rule in robust.items():
        row = [scenario]
        for r in rules:
            c = by_rule[r]
            left = f"{_short(c['attacker_rejections'])} /{c['attacker_rounds']}" if c["attackers"] else "-"
            row.append(f"{left} ; {_short(c['honest_rejections'])}")
        rows.append(row)
    out += _grid(["scenario", *rules], rows)
    comp = result["compression"]
    out += ["", "compression (no attack, FedAvg)"]
    out += _grid(["updates", "bytes sent per round", "final AUC", "accuracy"],
                 [[scheme, f"{comp[scheme]['bytes_per_round']:,.0f}", _auc_cell(comp[scheme]),
                   f"{comp[scheme]['accuracy']['median']:.3f}"] for scheme in ("none", "int8")])
    out.append(f"int8 ÷ none bytes: {comp['ratio']:.3f}")
    out += ["", f"differential privacy (no attack, FedAvg, DP-SGD δ {st['dp_delta']:g}, clipping norm "
                f"{st['dp_max_grad_norm']:g})"]
    rows = []
    for key, c in result["dp"].items():
        claimed = c.get("epsilon_claimed")
        rows.append(["no DP" if key == "none" else key, _auc_cell(c), f"{c['accuracy']['median']:.3f}",
                     "-" if claimed is None else
                     f"{claimed['min']:.3f} / {claimed['median']:.3f} / {claimed['max']:.3f}"])
    out += _grid(["ε per round", "final AUC", "accuracy", "ε claimed min / median / max"], rows)
    rw = result["rewards"]
    sizes = rw["rows"][str(seeds[0])]
    out += ["", f"rewards ({_BUDGET} tokens per round, {st['rounds']} rounds, FedAvg, validation = every other "
                f"test row; training rows of seed {seeds[0]}: " + ", ".join(f"{p} {n}" for p, n in sizes.items())
            + "): tokens over the rounds, median [min–max] over the seeds"]
    pids = list(sizes)
    rows = []
    for name in st["scorers"]:
        t, holds = rw[name]["tokens"], rw[name]["holds"]
        verdict = "holds" if all(holds) else f"FAILS in {holds.count(False)} of {len(holds)} seeds"
        rows.append([name, *(f"{t[p]['median']:.0f} [{t[p]['min']:.0f}–{t[p]['max']:.0f}]" for p in pids), verdict])
    out += _grid(["scorer", *pids, "free rider & copier 0, big > small"], rows)
    out += ["", "time: " + ", ".join(f"{k} {v:.0f} s" for k, v in result["cpu_s"].items())
            + f" (simulation time by part, summed over {result['workers']} worker(s)); wall "
              f"{result['bench_wall_s']:.0f} s"]
    return out


def plot(result: Mapping[str, Any], directory: Path) -> list[Path]:
    """Save ``bench-robust.png``, ``bench-dp.png`` and ``bench-compression.png`` in ``directory``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    robust, rules = result["robust"], list(result["settings"]["rules"])
    scenarios = list(robust)
    fig, ax = plt.subplots(figsize=(13, 5.5))
    width = 0.8 / len(rules)
    colors = plt.get_cmap("tab10").colors
    for k, rule in enumerate(rules):
        xs = np.arange(len(scenarios)) + (k - (len(rules) - 1) / 2) * width
        med = [robust[s][rule]["auc"]["median"] for s in scenarios]
        lo = [m - robust[s][rule]["auc"]["min"] for s, m in zip(scenarios, med)]
        hi = [robust[s][rule]["auc"]["max"] - m for s, m in zip(scenarios, med)]
        ax.bar(xs, med, width, yerr=[lo, hi], capsize=2, label=rule, color=colors[k % len(colors)])
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(np.arange(len(scenarios)), scenarios)
    ax.set_xlim(-0.5, len(scenarios) - 0.5)
    ax.set_ylim(0, 1)
    ax.set_ylabel("final test AUC (median; bars: min–max over seeds)")
    st = result["settings"]
    ax.set_title(f"Robust aggregation under attack: {st['participants']} institutions, {st['rounds']} rounds, "
                 f"{len(result['seeds'])} seeds (×k = k attackers)")
    ax.legend(ncol=len(rules) + 1, loc="upper center", bbox_to_anchor=(0.5, -0.07), fontsize=10, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    paths.append(directory / "bench-robust.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    dp = result["dp"]
    eps = [k for k in dp if k != "none"]
    fig, ax = plt.subplots(figsize=(7, 5))
    if eps:
        xs = [float(e) for e in eps]
        for metric, label, color in (("auc", "AUC", colors[0]), ("accuracy", "accuracy", colors[1])):
            med = [dp[e][metric]["median"] for e in eps]
            ax.plot(xs, med, marker="o", color=color, label=f"{label} with DP-SGD")
            ax.fill_between(xs, [dp[e][metric]["min"] for e in eps], [dp[e][metric]["max"] for e in eps],
                            color=color, alpha=0.15)
            ax.axhline(dp["none"][metric]["median"], color=color, linestyle="--", label=f"{label} without DP")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.legend(ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=9, frameon=False)
    ax.set_xlabel("target ε per round (δ 1e-5, clipping norm 1.0)")
    ax.set_ylabel("final test metric (median; band: min–max)")
    ax.set_title("Accuracy and AUC against the privacy budget (no attack, FedAvg)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(directory / "bench-dp.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    comp = result["compression"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.8))
    schemes = ["none", "int8"]
    left.bar(schemes, [comp[s]["bytes_per_round"] / 1024 for s in schemes], color=colors[:2])
    for i, s in enumerate(schemes):
        left.text(i, comp[s]["bytes_per_round"] / 1024, f"{comp[s]['bytes_per_round'] / 1024:.1f} KiB",
                  ha="center", va="bottom")
    left.set_ylim(0, 1.15 * comp["none"]["bytes_per_round"] / 1024)
    left.set_ylabel("KiB sent per round (all institutions)")
    left.set_title(f"bytes: int8 ÷ none = {comp['ratio']:.2f}")
    med = [comp[s]["auc"]["median"] for s in schemes]
    right.bar(schemes, med, yerr=[[m - comp[s]["auc"]["min"] for s, m in zip(schemes, med)],
                                  [comp[s]["auc"]["max"] - m for s, m in zip(schemes, med)]],
              capsize=4, color=colors[:2])
    for i, m in enumerate(med):
        right.text(i, 0.02, f"{m:.3f}", ha="center", va="bottom", color="white", fontweight="bold")
    right.set_ylim(0, 1)
    right.set_ylabel("final test AUC")
    right.set_title("AUC (median, min–max)")
    fig.suptitle("int8-compressed updates (no attack, FedAvg)")
    fig.tight_layout()
    paths.append(directory / "bench-compression.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """The figures of the tables without the per-run detail (for the one-line JSON of ``bench``)."""
    def strip(cell: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in cell.items() if k != "runs"}

    return {
        "settings": result["settings"], "seeds": result["seeds"],
        "robust": {s: {r: strip(c) for r, c in by.items()} for s, by in result["robust"].items()},
        "compression": {k: strip(v) if isinstance(v, dict) else v for k, v in result["compression"].items()},
        "dp": {k: strip(v) for k, v in result["dp"].items()},
        "rewards": {k: v for k, v in result["rewards"].items() if k != "by_seed"},
        "workers": result["workers"], "cpu_s": result["cpu_s"], "bench_wall_s": result["bench_wall_s"],
    }
