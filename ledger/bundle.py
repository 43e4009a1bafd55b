"""Evidence bundles: one file an auditor hands over, that anyone re-checks offline.

``fedledger audit export`` writes a gzipped tar (members in a fixed order, fixed owners,
modes and times, so the same ledger and time give the same bytes)::

    manifest.json                format, federation, backend, time, auditor identity, the
                                 ledger head and the transactions the export-time audit
                                 proved, its result, rounds exported and included, and
                                 the SHA-256 and size of every other member
    README.txt                   what is in it and the one command that checks it
    ledger/federation.json       the federation and its policy
    ledger/participants.json     every registration, with its certificate
    ledger/org_cas.json          every organisation's registered CA certificate
    ledger/history/<pid>.json    every change of each participant's record
    ledger/balances.json         every participant's token balance
    ledger/rounds/<NNNN>.json    every round's view (record, commit, evaluation, rewards)
    artifacts/<digest>.npz       the artifact store's files, byte for byte

Every round's view is included, whatever rounds are exported: the chain of models, the
scorer's previous step, the ε a participant spent and the token supply need them all,
and they are small. Artifacts are included for the *exported* rounds (and the base the
round before trained from, and the scorer's validation set). ``fedledger audit verify
--bundle`` (:func:`verify_bundle`) unpacks it, checks every member against the manifest,
and runs the same :func:`~ledger.audit.audit_federation` over a read-only
:class:`BundleLedger` and an :class:`~ledger.artifacts.ArtifactStore` over the unpacked
artifacts. What it cannot redo offline is the ledger's own proof of inclusion: it reports
the head the bundle was exported at, and that every transaction the rounds name is one
the export-time proof covered.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from ledger.artifacts import ArtifactStore
from ledger.audit import AuditReport, audit_federation
from ledger.audit_rejections import received_digest
from ledger.errors import AccessDenied, LedgerCorrupted, RecordNotFound
from ledger.identity import Credentials
from ledger.protocol import IntegrityReport, Ledger
from ledger.records import Federation, HistoryEntry, Identity, OrgCA, Participant, RoundView

__all__ = [
    "FORMAT",
    "VERSION",
    "MAX_MEMBER_BYTES",
    "BundleError",
    "ExportResult",
    "BundleVerification",
    "BundleLedger",
    "parse_rounds",
    "round_artifacts",
    "write_bundle",
    "unpack",
    "verify_bundle",
]

FORMAT = "fedledger-evidence-bundle"
VERSION = 1
MAX_MEMBER_BYTES = 2**30  # one artifact of a large model; anything bigger is refused unread
MAX_MEMBERS = 200_000
MAX_TOTAL_BYTES = 64 * 2**30
MAX_MANIFEST_BYTES = 64 * 2**20
MANIFEST = "manifest.json"
README = "README.txt"

# Every path a bundle may hold; anything else is refused before a byte is written.
_MEMBER = re.compile(
    r"(manifest\.json|README\.txt|ledger/(federation|participants|org_cas|balances)\.json"
    r"|ledger/history/[a-z0-9][a-z0-9-]{0,63}\.json|ledger/rounds/[0-9]{4,9}\.json|artifacts/[0-9a-f]{64}\.npz)"
)


class BundleError(ValueError):
    """The file is not a bundle that can be opened safely (its structure, not its content)."""


def parse_rounds(spec: str) -> list[int]:
    """``"1,3-5"`` → ``[1, 3, 4, 5]`` (sorted, without repeats); ValueError names the bad part."""
    chosen: set[int] = set()
    for part in (p.strip() for p in spec.split(",")):
        match = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", part)
        if match is None:
            raise ValueError(f"--rounds: {part!r} is not a round number or a range like 3-5")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if low < 1 or high < low or high - low > 1_000_000:
            raise ValueError(f"--rounds: {part!r} is not a range of rounds from 1 up")
        chosen.update(range(low, high + 1))
    return sorted(chosen)


def round_artifacts(view: RoundView, previous_base: str | None, *, rejected: bool = True) -> dict[str, str]:
    """Digest → what it is, for every artifact re-checking ``view`` reads: its base, every
    accepted update, the tensors a ``digest_mismatch`` received, the committed model, the
    base of the round before (the scorer's previous step and the outlier reference) and
    the scorer's validation set; with ``rejected``, also the updates rejected entries
    name (stored when the coordinator received them: a reply rejected before its tensors
    were kept names an update that never existed)."""
    record = view.record
    found: dict[str, str] = {record.base_model: f"round {view.round} base model"}
    if previous_base is not None:
        found.setdefault(previous_base, f"round {view.round - 1} base model")
    for entry in record.entries:
        # A digest_mismatch entry's signed update is what the sender claimed, never received.
        claimed_only = entry.status == "rejected" and (not rejected or entry.reason == "digest_mismatch")
        if entry.update is not None and not claimed_only:
            found.setdefault(entry.update, f"round {view.round} update of {entry.participant}")
        received = received_digest(entry.detail) if entry.reason == "digest_mismatch" else None
        if received is not None:
            found.setdefault(received, f"round {view.round} tensors received from {entry.participant}")
    if view.commit is not None:
        found.setdefault(view.commit.model, f"round {view.round} committed model")
    if record.scorer.validation_digest is not None:
        found.setdefault(record.scorer.validation_digest, "the scorer's validation set")
    return found


def _dumps(value: Any) -> bytes:
    return (json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _records(values: Iterable[Any]) -> list[Any]:
    return [v.model_dump(mode="json") for v in values]


@dataclass(frozen=True)
class ExportResult:
    """What :func:`write_bundle` wrote."""

    path: Path
    bytes: int
    members: int
    artifacts: int
    artifact_bytes: int
    rounds_exported: list[int]
    rounds_included: list[int]
    missing_artifacts: dict[str, str]
    audit_ok: bool

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {"path": str(self.path), "bytes": self.bytes, "members": self.members, "artifacts": self.artifacts,
                "artifact_bytes": self.artifact_bytes, "rounds_exported": self.rounds_exported,
                "rounds_included": self.rounds_included, "missing_artifacts": self.missing_artifacts,
                "audit_ok": self.audit_ok}


def _readme(federation: str, name: str) -> bytes:
    return (
        f"fedledger evidence bundle of federation {federation}\n\n"
        "manifest.json             who exported it, when, from which ledger head; the audit's result\n"
        "                          at export time; the SHA-256 of every other member\n"
        "ledger/federation.json    the federation and its policy (scorer, aggregation, budget)\n"
        "ledger/participants.json  every registration with its signing certificate\n"
        "ledger/org_cas.json       every organisation's CA certificate\n"
        "ledger/history/*.json     every change of each participant's record\n"
        "ledger/balances.json      every participant's token balance\n"
        "ledger/rounds/NNNN.json   every round: signed replies, rejections, commit, evaluation, rewards\n"
        "artifacts/<digest>.npz    the tensors the exported rounds name (base, updates, models)\n\n"
        "Check it, offline, with no federation file and no ledger:\n\n"
        f"    fedledger audit verify --bundle {name}\n\n"
        "It re-checks every signature, digest, aggregate, score, reward, rejection, evaluation\n"
        "and certificate chain. It cannot re-prove that the records are in the ledger's blocks:\n"
        "that was proven when the bundle was exported, at the head written in manifest.json.\n"
    ).encode("utf-8")


def write_bundle(
    ledger: Ledger,
    federation: str,
    artifacts: ArtifactStore,
    out: Path,
    report: AuditReport,
    *,
    rounds: Sequence[int] | None = None,
    created: dt.datetime | None = None,
) -> ExportResult:
    """Write the evidence bundle of ``federation`` to ``out`` (atomically).

    ``report`` is the full audit just run on ``ledger`` (its head and proven transactions
    go into the manifest); ``rounds`` the rounds whose artifacts to include (default:
    all). Only the rounds that audit saw are included, so a round recorded meanwhile
    cannot enter unproven. RecordNotFound when a round asked for is not on the ledger.
    """
    created = created or dt.datetime.now(dt.UTC)
    fed = ledger.get_federation(federation)
    views = ledger.list_rounds(federation)[: report.rounds]
    available = [v.round for v in views]
    chosen = available if rounds is None else sorted(set(rounds))
    absent = [r for r in chosen if r not in available]
    if absent:
        raise RecordNotFound(f"round(s) {', '.join(map(str, absent))} not on the ledger of federation {federation} "
                             f"(it has {len(available)})")
    participants = ledger.participants(federation)
    members: dict[str, bytes] = {
        "ledger/federation.json": _dumps(fed.model_dump(mode="json")),
        "ledger/participants.json": _dumps(_records(participants)),
        "ledger/org_cas.json": _dumps(_records(ledger.org_cas(federation))),
        "ledger/balances.json": _dumps({p.id: ledger.balance(federation, p.id) for p in participants}),
    }
    for p in participants:
        members[f"ledger/history/{p.id}.json"] = _dumps(_records(ledger.history(federation, p.id)))
    for view in views:
        members[f"ledger/rounds/{view.round:04d}.json"] = _dumps(view.model_dump(mode="json"))
    wanted: dict[str, str] = {}
    required: set[str] = set()
    by_round = {v.round: v for v in views}
    for number in chosen:
        previous = by_round[number - 1].record.base_model if number - 1 in by_round else None
        for digest, what in round_artifacts(by_round[number], previous).items():
            wanted.setdefault(digest, what)
        required.update(round_artifacts(by_round[number], previous, rejected=False))
    files = {d: artifacts.path(d) for d in sorted(wanted) if artifacts.path(d).is_file()}
    missing = {d: wanted[d] for d in sorted(required) if d not in files}
    listed = {name: (hashlib.sha256(data).hexdigest(), len(data)) for name, data in members.items()}
    listed[README] = (hashlib.sha256(_readme(federation, out.name)).hexdigest(), len(_readme(federation, out.name)))
    for digest, path in files.items():
        listed[f"artifacts/{digest}.npz"] = (_file_sha256(path), path.stat().st_size)
    identity = ledger.identity
    manifest = {
        "format": FORMAT, "version": VERSION, "federation": federation, "backend": ledger.backend,
        "created": created.isoformat(), "auditor": {"msp_id": identity.msp_id, "cert_pem": identity.cert_pem},
        "head": report.head, "tx_ids_proven": sorted(set(report.tx_ids)),
        "blocks_checked": report.blocks_checked, "transactions_proven": report.transactions_proven,
        "audit": report.to_json(), "rounds_exported": chosen, "rounds_included": available,
        "missing_artifacts": missing,
        "note": "every round's view is included (the chain of models, the scorer's previous step, "
                "privacy budgets and the token supply need them); artifacts only for rounds_exported",
        "members": {name: {"sha256": sha, "bytes": size} for name, (sha, size) in sorted(listed.items())},
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    mtime = int(created.timestamp())
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            _add(tar, MANIFEST, _dumps(manifest), mtime)
            _add(tar, README, _readme(federation, out.name), mtime)
            for name in sorted(members):
                _add(tar, name, members[name], mtime)
            for digest, path in files.items():
                with path.open("rb") as fh:
                    _add(tar, f"artifacts/{digest}.npz", fh, mtime, path.stat().st_size)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return ExportResult(out, out.stat().st_size, len(listed) + 1, len(files),
                        sum(p.stat().st_size for p in files.values()), chosen, available, missing, report.ok)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _add(tar: tarfile.TarFile, name: str, data: bytes | io.BufferedIOBase, mtime: int, size: int | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = 0o644, mtime, 0, 0, "", ""
    if isinstance(data, bytes):
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        info.size = size or 0
        tar.addfile(info, data)


# --- reading ---------------------------------------------------------------------------


def _safe_name(name: str) -> str | None:
    """Why ``name`` may not be written under the unpack directory, or None."""
    path = PurePosixPath(name)
    if name.startswith("/") or "\\" in name or ".." in path.parts or re.match(r"^[A-Za-z]:", name):
        return "escapes the bundle (absolute path or '..')"
    return None


def unpack(bundle: Path, into: Path, *, max_member_bytes: int = MAX_MEMBER_BYTES) -> tuple[dict[str, Any], list[str]]:
    """Check ``bundle``'s structure, write its members under ``into``, and return the
    manifest and the members that do not match it (hash, size, or missing).

    Refused with :class:`BundleError`, before anything is written: a file that is not a
    gzipped tar, a member that is a link or not a regular file, a path that escapes the
    directory, a member over ``max_member_bytes``, a member the manifest does not list,
    a repeated member, and a manifest that is not this format.
    """
    try:
        tar = tarfile.open(bundle, mode="r:*")
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise
        raise BundleError(f"{bundle}: not an evidence bundle (a gzipped tar): {exc}") from None
    with tar:
        try:
            infos = tar.getmembers()
        except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
            raise BundleError(f"{bundle}: the archive is damaged: {exc}") from None
        if len(infos) > MAX_MEMBERS:
            raise BundleError(f"{bundle}: {len(infos)} members, more than a bundle may hold ({MAX_MEMBERS})")
        seen: set[str] = set()
        for info in infos:
            where = f"{bundle}: member {info.name!r}"
            if info.issym() or info.islnk():
                kind = "symbolic" if info.issym() else "hard"
                raise BundleError(f"{where} is a {kind} link; bundles hold files only")
            if not info.isfile():
                raise BundleError(f"{where} is not a regular file")
            why = _safe_name(info.name)
            if why is not None:
                raise BundleError(f"{where} {why}")
            if info.size > max_member_bytes:
                raise BundleError(f"{where} is {info.size} bytes, over the limit of {max_member_bytes}")
            if info.name in seen:
                raise BundleError(f"{where} appears twice")
            seen.add(info.name)
        total = sum(i.size for i in infos)
        if total > MAX_TOTAL_BYTES:
            raise BundleError(f"{bundle}: members add up to {total} bytes, over the limit of {MAX_TOTAL_BYTES}")
        manifest = _read_manifest(tar, bundle, {i.name: i for i in infos})
        listed: Mapping[str, Any] = manifest["members"]
        for info in infos:
            if info.name != MANIFEST and info.name not in listed:
                raise BundleError(f"{bundle}: member {info.name!r} is not listed in manifest.json")
        for name in listed:
            if _MEMBER.fullmatch(name) is None or name == MANIFEST:
                raise BundleError(f"{bundle}: manifest.json lists {name!r}, which is not a bundle member's path")
        problems: list[str] = []
        for info in infos:
            if info.name == MANIFEST:
                continue
            expected = listed[info.name]
            target = into / info.name
            target.parent.mkdir(parents=True, exist_ok=True)
            digest, size = hashlib.sha256(), 0
            source = tar.extractfile(info)
            assert source is not None  # a regular file, checked above
            with source, target.open("xb") as sink:
                for chunk in iter(lambda: source.read(1 << 20), b""):
                    digest.update(chunk)
                    size += len(chunk)
                    sink.write(chunk)
            if not isinstance(expected, Mapping) or digest.hexdigest() != expected.get("sha256") \
                    or size != expected.get("bytes"):
                problems.append(f"bundle: member {info.name} does not match its SHA-256 in manifest.json")
        problems += [f"bundle: member {name} listed in manifest.json is missing" for name in sorted(listed)
                     if name not in seen]
    return manifest, problems


def _read_manifest(tar: tarfile.TarFile, bundle: Path, infos: Mapping[str, tarfile.TarInfo]) -> dict[str, Any]:
    info = infos.get(MANIFEST)
    if info is None:
        raise BundleError(f"{bundle}: no manifest.json; not an evidence bundle")
    if info.size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{bundle}: manifest.json is {info.size} bytes, over the limit of {MAX_MANIFEST_BYTES}")
    source = tar.extractfile(info)
    assert source is not None
    try:
        manifest = json.loads(source.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{bundle}: manifest.json is not JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{bundle}: manifest.json is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise BundleError(f"{bundle}: manifest.json: version {manifest.get('version')!r}; this fedledger reads "
                          f"version {VERSION}")
    for key, kind in (("federation", str), ("members", dict), ("rounds_exported", list), ("tx_ids_proven", list),
                      ("head", dict), ("auditor", dict)):
        if not isinstance(manifest.get(key), kind):
            raise BundleError(f"{bundle}: manifest.json: {key} is missing or not a {kind.__name__}")
    return manifest


class BundleLedger:
    """The read side of :class:`~ledger.protocol.Ledger` over an unpacked bundle's JSON
    files; every write is refused (:class:`~ledger.errors.AccessDenied`). A member that
    does not parse is :class:`~ledger.errors.LedgerCorrupted` naming it, so the audit
    reports it like an unreadable ledger."""

    def __init__(self, root: Path, manifest: Mapping[str, Any], identity: Identity | None = None) -> None:
        self.root = Path(root)
        self.manifest = manifest
        self.federation = str(manifest["federation"])
        auditor = manifest.get("auditor") or {}
        self._identity = identity or Identity(msp_id=str(auditor.get("msp_id") or "bundle"),
                                              cert_pem=str(auditor.get("cert_pem") or "none"))
        self._cache: dict[str, Any] = {}

    # --- the protocol's read side ---------------------------------------------------
    @property
    def identity(self) -> Identity:
        """The auditor identity the bundle was exported as."""
        return self._identity

    @property
    def backend(self) -> str:
        """``bundle:<dir>`` and the backend it was exported from."""
        return f"bundle:{self.root} (exported from {self.manifest.get('backend')})"

    def with_identity(self, who: Credentials | Identity) -> BundleLedger:
        """The same bundle (reads do not depend on the caller)."""
        identity = who.identity if isinstance(who, Credentials) else who
        return BundleLedger(self.root, self.manifest, identity)

    def integrity(self, pins: Sequence[str] = (), tx_ids: Sequence[str] = ()) -> IntegrityReport:
        """What the bundle can say offline: the head it was exported at, and which of
        ``tx_ids`` the export-time proof did not cover. Blocks are not re-checked."""
        head = self.manifest.get("head") or {}
        proven = set(self.manifest.get("tx_ids_proven") or [])
        unproven = [t for t in dict.fromkeys(tx_ids) if t not in proven]
        report = IntegrityReport(transactions_proven=0)
        if "block" in head and "hash" in head:
            report.head = (int(head["block"]), str(head["hash"]))
        if unproven:
            report.problems.append(f"{len(unproven)} transaction(s) of the bundle's rounds were not proven in the "
                                   f"ledger when it was exported: {', '.join(t[:16] + '…' for t in unproven[:5])}")
        if pins:
            report.problems.append("pins cannot be checked against a bundle (no blocks in it)")
        return report

    def get_federation(self, federation: str) -> Federation:
        """The exported federation (RecordNotFound for any other id)."""
        self._only(federation)
        return self._load("ledger/federation.json", Federation.parse)

    def get_round(self, federation: str, round: int) -> RoundView:
        """One exported round's view."""
        self._only(federation)
        name = f"ledger/rounds/{round:04d}.json"
        if not (self.root / name).is_file():
            raise RecordNotFound(f"round {round} of federation {federation} is not in the bundle")
        return self._load(name, RoundView.parse)

    def list_rounds(self, federation: str) -> list[RoundView]:
        """Every round view in the bundle, in round order."""
        self._only(federation)
        folder = self.root / "ledger" / "rounds"
        names = sorted(p.name for p in folder.glob("*.json")) if folder.is_dir() else []
        views = [self._load(f"ledger/rounds/{n}", RoundView.parse) for n in names]
        return sorted(views, key=lambda v: v.round)

    def org_ca(self, federation: str, msp_id: str) -> OrgCA:
        """One organisation's registered CA."""
        for ca in self.org_cas(federation):
            if ca.msp_id == msp_id:
                return ca
        raise RecordNotFound(f"no CA of {msp_id} in federation {federation}")

    def org_cas(self, federation: str) -> list[OrgCA]:
        """Every registered org CA, sorted by MSP id."""
        self._only(federation)
        return sorted(self._load_list("ledger/org_cas.json", OrgCA.parse), key=lambda c: c.msp_id)

    def participant(self, federation: str, participant: str) -> Participant:
        """One registration."""
        for p in self.participants(federation):
            if p.id == participant:
                return p
        raise RecordNotFound(f"participant {participant} is not registered in federation {federation}")

    def participants(self, federation: str) -> list[Participant]:
        """Every registration, sorted by id."""
        self._only(federation)
        return sorted(self._load_list("ledger/participants.json", Participant.parse), key=lambda p: p.id)

    def history(self, federation: str, participant: str) -> list[HistoryEntry]:
        """Every change of a registered participant's record, oldest first."""
        self._only(federation)
        name = f"ledger/history/{participant}.json"
        if _MEMBER.fullmatch(name) is None or not (self.root / name).is_file():
            raise RecordNotFound(f"participant {participant[:64]} has no history in the bundle")
        return self._load_list(name, HistoryEntry.parse)

    def balance(self, federation: str, participant: str) -> int:
        """A participant's balance when the bundle was exported (0 when it has none)."""
        self._only(federation)
        balances = self._load("ledger/balances.json", lambda d: d)
        value = balances.get(participant, 0) if isinstance(balances, dict) else None
        if isinstance(value, bool) or not isinstance(value, int):
            raise LedgerCorrupted(
                f"bundle member ledger/balances.json: balance of {participant[:64]} is not an integer")
        return value

    def close(self) -> None:
        """Nothing to release."""

    # --- writes are refused ---------------------------------------------------------
    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise AccessDenied("an evidence bundle is read-only: it records nothing")

    init_federation = register_org_ca = register_participant = admit_participant = _read_only
    revoke_participant = record_round = commit_model = record_evaluation = issue_rewards = transfer = _read_only

    # --- helpers --------------------------------------------------------------------
    def _only(self, federation: str) -> None:
        if federation != self.federation:
            raise RecordNotFound(f"federation {federation} is not in this bundle (it holds {self.federation})")

    def _load(self, name: str, parse: Callable[[Any], Any]) -> Any:
        if name not in self._cache:
            path = self.root / name
            try:
                self._cache[name] = parse(json.loads(path.read_text(encoding="utf-8")))
            except FileNotFoundError:
                raise LedgerCorrupted(f"bundle member {name} is missing") from None
            except (ValueError, ValidationError, TypeError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise LedgerCorrupted(f"bundle member {name} cannot be read: {first}") from None
        return self._cache[name]

    def _load_list(self, name: str, parse: Callable[[Any], Any]) -> list[Any]:
        def each(data: Any) -> list[Any]:
            if not isinstance(data, list):
                raise ValueError("not a JSON list")
            return [parse(item) for item in data]

        return self._load(name, each)


@dataclass
class BundleVerification:
    """The offline audit of a bundle: the manifest's claims, the members that do not match
    it, and the same :class:`~ledger.audit.AuditReport` ``audit verify`` gives.

    ``not_rechecked``: problems of included-only rounds whose artifacts were not
    exported (their recomputation is not part of this bundle's verdict)."""

    path: Path
    manifest: dict[str, Any]
    report: AuditReport
    views: list[RoundView] = field(default_factory=list)
    bundle_problems: list[str] = field(default_factory=list)
    not_rechecked: dict[int, list[str]] = field(default_factory=dict)

    @property
    def problems(self) -> list[str]:
        """Every problem that fails the verification."""
        return self.bundle_problems + self.report.problems

    @property
    def ok(self) -> bool:
        """True when the bundle matches its manifest and the audit found nothing."""
        return not self.problems

    def integrity_note(self) -> str:
        """What the offline check says about the ledger's own proof."""
        head = self.manifest.get("head") or {}
        at = f"{head['block']}:{head['hash']}" if "block" in head and "hash" in head else "(no head recorded)"
        return f"ledger integrity: as exported at head {at} — not re-proven offline"

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form: ``audit verify``'s, plus what the bundle says about itself."""
        m = self.manifest
        return {
            **self.report.to_json(),
            "ok": self.ok,
            "problems": self.problems,
            "bundle": {"path": str(self.path), "federation": m.get("federation"), "backend": m.get("backend"),
                       "created": m.get("created"), "auditor_msp": (m.get("auditor") or {}).get("msp_id"),
                       "rounds_exported": m.get("rounds_exported"), "rounds_included": m.get("rounds_included"),
                       "members": len(m.get("members") or {}), "export_audit_ok": (m.get("audit") or {}).get("ok"),
                       "problems": self.bundle_problems, "not_rechecked": self.not_rechecked},
            "integrity": self.integrity_note(),
        }


# How the audit words a problem that only says an artifact is absent (and what it could
# therefore not recompute); any other problem of a round stands, exported or not.
_ABSENT = ("unavailable", "not in the artifact store", "cannot be recomputed", "cannot all be loaded",
           "cannot be loaded", "is not in ")


def _excused(views: list[RoundView], exported: set[int], report: AuditReport,
             present: set[str]) -> dict[int, list[str]]:
    """The problems of rounds included only for the chain that say their evidence is
    absent from the bundle (it was not exported); a round's other problems — a signature
    that does not verify, rewards off the policy, an unsupported rejection — are kept."""
    excused: dict[int, list[str]] = {}
    bases = {v.round: v.record.base_model for v in views}
    for view in views:
        if view.round in exported:
            continue
        needed = set(round_artifacts(view, bases.get(view.round - 1), rejected=False))
        absent = [p for p in report.round_problems.get(view.round, []) if any(m in p for m in _ABSENT)]
        if needed - present and absent:
            excused[view.round] = absent
    return excused


def verify_bundle(bundle: Path, *, max_member_bytes: int = MAX_MEMBER_BYTES) -> BundleVerification:
    """Check ``bundle`` offline: its members against its manifest, then the full audit over
    its records and artifacts (see the module docstring for what cannot be re-proven).
    BundleError when its structure is refused."""
    bundle = Path(bundle)
    with tempfile.TemporaryDirectory(prefix="fedledger-bundle-") as tmp:
        root = Path(tmp)
        manifest, problems = unpack(bundle, root, max_member_bytes=max_member_bytes)
        ledger = BundleLedger(root, manifest)
        store = ArtifactStore(root / "artifacts")

        def integrity(report: AuditReport) -> None:
            proof = ledger.integrity((), report.tx_ids)
            report.problems.extend(f"ledger: {p}" for p in proof.problems)
            if proof.head is not None:
                report.head = {"block": proof.head[0], "hash": proof.head[1]}

        report = audit_federation(ledger, ledger.federation, store, integrity)
        try:
            views = ledger.list_rounds(ledger.federation)
        except LedgerCorrupted:
            views = []
        present = {p.stem for p in (root / "artifacts").glob("*.npz")} if (root / "artifacts").is_dir() else set()
        exported = set(manifest.get("rounds_exported") or [])
        excused = _excused(views, exported, report, present)
        if views and not exported & {v.round for v in views}:
            problems.append("bundle: manifest.json exports none of the bundle's rounds: nothing would be re-checked")
        if (manifest.get("audit") or {}).get("ok") is False:
            problems.append("bundle: the exporting auditor's own audit found problems (manifest.json audit)")
    for round_problems in excused.values():
        for problem in round_problems:
            if problem in report.problems:
                report.problems.remove(problem)

    def named(text: str) -> str:  # the temporary directory is gone: name the bundle instead
        return text.replace(f"{root}/artifacts", f"{bundle.name}:artifacts/").replace(f"{root}/", f"{bundle.name}:")

    report.problems = [named(p) for p in report.problems]
    excused = {n: [named(p) for p in ps] for n, ps in excused.items()}
    return BundleVerification(bundle, manifest, report, views, problems, excused)
