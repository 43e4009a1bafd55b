"""Evidence bundles: exported from a real embedded-ledger federation (three audited rounds
played through the real ClientApp and strategy), checked offline, and tampered with."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fl.auditing import export_bundle, verify_bundle_file
from fl.cli import app
from fl.cli_output import ExitCode
from fl.config import FederationConfig, write_config
from fl.demo import SimulationResolver, demo_config, prepare_federation
from fl.records import to_arrays
from fl.server_app import coordinator_identity, initial_model
from fl.strategy import AuditedFedAvg
from ledger.artifacts import ArtifactStore
from ledger.bundle import BundleError, BundleLedger, parse_rounds, round_artifacts, unpack, verify_bundle
from ledger.errors import AccessDenied, RecordNotFound
from ledger.factory import open_ledger
from ledger.incentives import issue_pending_rewards
from tests.fixtures.flower import client_replies

SETTINGS = {"local-epochs": 1, "learning-rate": 0.05, "batch-size": 64, "seed": 3}
runner = CliRunner()
Played = tuple[FederationConfig, Path, dict[str, Any]]


def play_federation(root: Path, adversaries: dict[int, dict[str, str]]) -> FederationConfig:
    """Three audited rounds on a fresh embedded ledger, rewards issued; returns the config."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    cfg = demo_config(root / "fed", rounds=3, participants=3)
    cfg.workdir.mkdir(parents=True)
    prepare_federation(cfg)
    ledger = open_ledger(cfg.ledger_config, coordinator_identity(cfg))
    try:
        strat = AuditedFedAvg(ledger=ledger, artifacts=ArtifactStore(cfg.artifacts_path), federation=cfg.id,
                              train_settings=SETTINGS, expected_nodes=3)
        base = initial_model(cfg)
        for number in (1, 2, 3):
            config = strat.begin_round(number, base)
            replies = client_replies(SimulationResolver(cfg, adversaries.get(number, {})), base, config, 3)
            arrays, _ = strat.aggregate_train(number, replies)
            base = to_arrays(arrays)
        issue_pending_rewards(ledger, cfg.id)
    finally:
        ledger.close()
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
    return cfg


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> Played:
    """A finished federation (bank-c sends NaNs in round 2) and its full bundle."""
    root = tmp_path_factory.mktemp("bundle")
    cfg = play_federation(root, {2: {"bank-c": "nan"}})
    result = export_bundle(cfg, root / "evidence.tar.gz")
    return cfg, Path(result["path"]), result


def members(bundle: Path) -> dict[str, bytes]:
    with tarfile.open(bundle, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def repack(bundle: Path, out: Path, change: Callable[[dict[str, bytes]], dict[str, bytes]],
           extra: Callable[[tarfile.TarFile], None] | None = None) -> Path:
    """``bundle`` with its members changed by ``change`` (order kept, new ones appended)."""
    files = change(members(bundle))
    with gzip.open(out, "wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            extra(tar)
    return out


def rehash(files: dict[str, bytes], *names: str) -> dict[str, bytes]:
    """Write the new SHA-256 of ``names`` into the manifest, as a forger would."""
    manifest = json.loads(files["manifest.json"])
    for name in names:
        manifest["members"][name] = {"sha256": hashlib.sha256(files[name]).hexdigest(), "bytes": len(files[name])}
    files["manifest.json"] = json.dumps(manifest).encode()
    return files


def edit_round(number: int, edit: Callable[[dict], None]) -> Callable[[dict[str, bytes]], dict[str, bytes]]:
    def change(files: dict[str, bytes]) -> dict[str, bytes]:
        name = f"ledger/rounds/{number:04d}.json"
        view = json.loads(files[name])
        edit(view)
        files[name] = json.dumps(view, indent=1, sort_keys=True).encode()
        return files

    return change


def test_an_exported_bundle_verifies_offline_with_every_round_recomputed(played: Played) -> None:
    cfg, bundle, result = played

    audit, check = verify_bundle_file(bundle)

    assert check.ok, check.problems
    assert result["audit_ok"] and result["rounds_exported"] == [1, 2, 3] and result["missing_artifacts"] == {}
    assert check.report.rounds == 3 and check.report.aggregates_recomputed == 3 and check.report.scores_recomputed == 3
    assert check.report.signatures_checked == 8  # 3 + 2 + 3 accepted updates
    assert check.report.rewards_recomputed == 3
    assert check.report.head == result["audit"]["head"] and check.report.blocks_checked == 0
    assert check.integrity_note().endswith("not re-proven offline")
    assert audit.federation == cfg.id and [v.round for v in audit.views] == [1, 2, 3]


def test_the_bundle_layout_is_what_the_manifest_lists_in_a_fixed_order(played: Played) -> None:
    cfg, bundle, _ = played
    files = members(bundle)
    names = list(files)
    manifest = json.loads(files["manifest.json"])

    ledger_part = [n for n in names if n.startswith("ledger/")]
    assert names == ["manifest.json", "README.txt", *sorted(ledger_part),
                     *sorted(n for n in names if n.startswith("artifacts/"))]
    assert set(manifest["members"]) == set(names) - {"manifest.json"}
    assert {"ledger/federation.json", "ledger/participants.json", "ledger/org_cas.json", "ledger/balances.json",
            "ledger/history/bank-a.json", "ledger/rounds/0001.json", "ledger/rounds/0003.json"} <= set(names)
    store = ArtifactStore(cfg.artifacts_path)
    for name in (n for n in names if n.startswith("artifacts/")):
        digest = name.removeprefix("artifacts/").removesuffix(".npz")
        assert files[name] == store.path(digest).read_bytes()  # byte for byte
    assert manifest["auditor"]["msp_id"] == cfg.auditor_msp and "BEGIN CERTIFICATE" in manifest["auditor"]["cert_pem"]
    # Record, commit and rewards of three rounds: proven in the ledger's blocks at export.
    assert len(manifest["tx_ids_proven"]) == manifest["transactions_proven"] == 9
    assert "fedledger audit verify --bundle evidence.tar.gz" in files["README.txt"].decode()


def test_the_same_ledger_and_time_give_the_same_bytes(played: Played, tmp_path: Path) -> None:
    import datetime as dt

    from fl.auditing import auditor_credentials, open_as
    from ledger.audit import audit_federation, backend_integrity
    from ledger.bundle import write_bundle

    cfg, _, _ = played
    at = dt.datetime(2025, 5, 1, tzinfo=dt.UTC)
    outputs = []
    for name in ("a", "b"):
        with open_as(cfg, auditor_credentials) as ledger:
            store = ArtifactStore(cfg.artifacts_path)
            report = audit_federation(ledger, cfg.id, store, backend_integrity(ledger))
            (tmp_path / name).mkdir()
            outputs.append(write_bundle(ledger, cfg.id, store, tmp_path / name / "e.tar.gz", report, created=at))
    assert outputs[0].path.read_bytes() == outputs[1].path.read_bytes()


def test_one_changed_byte_of_a_round_fails_naming_the_member(played: Played, tmp_path: Path) -> None:
    _, bundle, _ = played

    def flip(files: dict[str, bytes]) -> dict[str, bytes]:
        data = bytearray(files["ledger/rounds/0002.json"])
        data[data.index(b'"non_finite"') + 1] ^= 0x20  # "Non_finite"
        files["ledger/rounds/0002.json"] = bytes(data)
        return files

    check = verify_bundle(repack(bundle, tmp_path / "t.tar.gz", flip))

    assert not check.ok
    assert "bundle: member ledger/rounds/0002.json does not match its SHA-256 in manifest.json" in check.problems


def test_a_changed_score_with_its_hash_rewritten_is_caught_by_the_recomputation(played: Played, tmp_path: Path) -> None:
    _, bundle, _ = played

    def inflate(view: dict) -> None:
        entry = next(e for e in view["record"]["entries"] if e["participant"] == "bank-b")
        entry["score_ppm"] = 999_999

    check = verify_bundle(repack(bundle, tmp_path / "t.tar.gz",
                                 lambda f: rehash(edit_round(1, inflate)(f), "ledger/rounds/0001.json")))

    assert check.bundle_problems == []  # the forger kept the manifest consistent
    assert any("round 1 bank-b: recorded score 999999" in p for p in check.problems), check.problems
    assert any("round 1: issued rewards" in p for p in check.problems)


def test_an_honest_participant_dropped_from_a_round_is_caught(played: Played, tmp_path: Path) -> None:
    _, bundle, _ = played

    def drop_a(view: dict) -> None:
        view["commit"]["accepted"] = [p for p in view["commit"]["accepted"] if p != "bank-a"]

    check = verify_bundle(repack(bundle, tmp_path / "t.tar.gz",
                                 lambda f: rehash(edit_round(3, drop_a)(f), "ledger/rounds/0003.json")))

    assert any("round 3: committed participants" in p for p in check.problems), check.problems


def test_a_dropped_artifact_is_a_named_problem(played: Played, tmp_path: Path) -> None:
    _, bundle, _ = played
    view = json.loads(members(bundle)["ledger/rounds/0002.json"])
    update = next(e["update"] for e in view["record"]["entries"] if e["participant"] == "bank-a")

    def drop(files: dict[str, bytes]) -> dict[str, bytes]:
        del files[f"artifacts/{update}.npz"]
        return files

    check = verify_bundle(repack(bundle, tmp_path / "t.tar.gz", drop))

    assert f"bundle: member artifacts/{update}.npz listed in manifest.json is missing" in check.problems
    assert any(p.startswith("round 2 bank-a: update unavailable") and update in p for p in check.problems)


@pytest.mark.parametrize(("add", "message"), [
    (lambda tar: tar.addfile(tarfile.TarInfo("../evil.json"), io.BytesIO()), "escapes the bundle"),
    (lambda tar: tar.addfile(_link("ledger/extra.json")), "is a symbolic link"),
    (lambda tar: tar.addfile(tarfile.TarInfo("ledger/extra.json"), io.BytesIO()), "is not listed in manifest.json"),
])
def test_links_escapes_and_unlisted_members_are_refused_before_anything_is_written(
        played: Played, tmp_path: Path, add: Callable[[tarfile.TarFile], None], message: str) -> None:
    _, bundle, _ = played
    forged = repack(bundle, tmp_path / "t.tar.gz", lambda f: f, add)
    into = tmp_path / "out"
    into.mkdir()

    with pytest.raises(BundleError, match=message):
        unpack(forged, into)
    assert list(into.iterdir()) == [] and not (tmp_path / "evil.json").exists()


def _link(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return info


def test_an_oversize_member_is_refused(played: Played) -> None:
    _, bundle, _ = played
    with pytest.raises(BundleError, match=r"is \d+ bytes, over the limit of 1000"):
        verify_bundle(bundle, max_member_bytes=1000)


def test_a_partial_export_carries_every_record_but_only_the_chosen_rounds_artifacts(
        played: Played, tmp_path: Path) -> None:
    cfg, _, _ = played
    result = export_bundle(cfg, tmp_path / "r3.tar.gz", [3])
    files = members(Path(result["path"]))
    round1 = json.loads(files["ledger/rounds/0001.json"])

    check = verify_bundle(Path(result["path"]))

    assert result["rounds_exported"] == [3] and result["rounds_included"] == [1, 2, 3]
    assert f"artifacts/{round1['record']['base_model']}.npz" not in files  # round 1's base: not needed by round 3
    assert check.ok, check.problems
    assert set(check.not_rechecked) == {1, 2}  # included for the chain; their recomputation is not claimed
    assert check.report.aggregates_recomputed >= 1


def test_a_round_left_out_of_a_partial_export_still_answers_for_what_its_records_show(
        played: Played, tmp_path: Path) -> None:
    cfg, _, _ = played
    partial = Path(export_bundle(cfg, tmp_path / "r3.tar.gz", [3])["path"])

    def inflate(view: dict) -> None:  # round 1's rewards no longer follow its recorded scores
        entry = next(e for e in view["record"]["entries"] if e["participant"] == "bank-b")
        entry["score_ppm"] = 999_999

    check = verify_bundle(repack(partial, tmp_path / "t.tar.gz",
                                 lambda f: rehash(edit_round(1, inflate)(f), "ledger/rounds/0001.json")))

    assert not check.ok
    assert any("round 1: issued rewards" in p for p in check.problems), check.problems


def test_the_bundle_ledger_reads_like_a_ledger_and_refuses_writes(played: Played, tmp_path: Path) -> None:
    cfg, bundle, _ = played
    manifest, problems = unpack(bundle, tmp_path)
    ledger = BundleLedger(tmp_path, manifest)

    assert problems == []
    assert [p.id for p in ledger.participants(cfg.id)] == ["bank-a", "bank-b", "bank-c"]
    assert ledger.get_round(cfg.id, 2).record.round == 2
    with pytest.raises(RecordNotFound):
        ledger.get_round(cfg.id, 4)
    with pytest.raises(RecordNotFound):
        ledger.get_federation("other-fed")
    with pytest.raises(AccessDenied, match="read-only"):
        ledger.transfer(cfg.id, "bank-b", 1)
    views = ledger.list_rounds(cfg.id)
    assert views[1].record.base_model in round_artifacts(views[1], views[0].record.base_model)


def test_a_statement_read_from_the_bundle_is_the_one_read_from_the_ledger(played: Played, tmp_path: Path) -> None:
    from fl.auditing import audit_history, balance_sheet, participant_statement

    cfg, bundle, _ = played
    manifest, _ = unpack(bundle, tmp_path)
    offline = BundleLedger(tmp_path, manifest)

    assert participant_statement(offline, cfg.id, "bank-c") == audit_history(cfg, "bank-c")
    assert balance_sheet(offline, cfg.id)["ok"]


def test_rounds_are_chosen_like_1_3_to_5() -> None:
    assert parse_rounds("1,3-5,4") == [1, 3, 4, 5]
    with pytest.raises(ValueError, match="'x'"):
        parse_rounds("1,x")


def test_verify_bundle_needs_no_federation_file_and_fails_with_exit_1_when_tampered(
        played: Played, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, bundle, _ = played
    monkeypatch.chdir(tmp_path)  # no federation.toml here
    monkeypatch.delenv("FEDLEDGER_CONFIG", raising=False)

    good = runner.invoke(app, ["audit", "verify", "--bundle", str(bundle), "--json"])
    bad = runner.invoke(app, ["audit", "verify", "--bundle", str(repack(
        bundle, tmp_path / "t.tar.gz", lambda f: rehash(edit_round(1, lambda v: v["commit"].update(
            weights={k: w + 1 for k, w in v["commit"]["weights"].items()}))(f), "ledger/rounds/0001.json")))])
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"not a bundle")
    refused = runner.invoke(app, ["audit", "verify", "--bundle", str(garbage), "--json"])

    assert good.exit_code == ExitCode.OK, good.output
    assert json.loads(good.stdout)["ok"] is True
    assert "not re-proven offline" in json.loads(good.stdout)["integrity"]
    assert bad.exit_code == ExitCode.FAILED and "committed weights differ" in bad.stdout
    assert refused.exit_code == ExitCode.FAILED and "not an evidence bundle" in refused.stderr


@pytest.fixture
def no_rounds(tmp_path: Path) -> Iterator[Path]:
    """A federation file of two admitted banks and no round yet."""
    cfg = demo_config(tmp_path / "w", rounds=1, participants=2)
    cfg.workdir.mkdir(parents=True)
    prepare_federation(cfg)
    write_config(cfg, cfg.workspace.config_file)
    yield cfg.workspace.config_file


def test_exporting_a_round_that_is_not_on_the_ledger_is_not_found_and_writes_nothing(
        no_rounds: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.tar.gz"
    result = runner.invoke(app, ["audit", "export", "--config", str(no_rounds), "--out", str(out), "--rounds", "2"])
    bad_flag = runner.invoke(app, ["audit", "export", "--config", str(no_rounds), "--out", str(out),
                                   "--rounds", "2-1"])

    assert result.exit_code == ExitCode.NOT_FOUND and "round(s) 2 not on the ledger" in result.stderr
    assert bad_flag.exit_code == ExitCode.USAGE
    assert not out.exists()
