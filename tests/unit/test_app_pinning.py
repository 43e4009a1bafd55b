"""Pinning the ClientApp an institution runs, without a network: hashes, the hook, the argv."""

from __future__ import annotations

import hashlib
import shutil
import types
from pathlib import Path
from typing import Any

import pytest
from flwr.app import RecordDict
from flwr.app.message.message import make_message
from flwr.common import Metadata
from flwr.common.constant import ErrorCode

from fl.config import project_root
from fl.deploy.client import signer_supernode_command
from fl.signer.pinning import AppNotApproved, AppPin, PinError, app_hash, install, load_approved, refusals
from fl.signer.supernode import parse_args

GOOD = hashlib.sha256(b"reviewed app").hexdigest()
OTHER = hashlib.sha256(b"another app").hexdigest()


def _copy_app(dest: Path) -> Path:
    """The project's Flower app: its pyproject and the code its FAB ships."""
    root = project_root()
    dest.mkdir(parents=True)
    shutil.copy2(root / "pyproject.toml", dest / "pyproject.toml")
    for package in ("fl", "ledger", "chaincode"):
        shutil.copytree(root / package, dest / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def test_an_app_copied_unchanged_has_the_same_hash_and_one_changed_line_another(tmp_path: Path) -> None:
    reviewed = _copy_app(tmp_path / "reviewed")
    copy = _copy_app(tmp_path / "copy")
    assert app_hash(reviewed) == app_hash(copy)
    client = copy / "fl" / "client_app.py"
    client.write_text(client.read_text().replace("from __future__ import annotations",
                                                 "from __future__ import annotations  # changed", 1))
    assert app_hash(copy) != app_hash(reviewed)
    # Files the FAB does not ship do not change what the node receives.
    before = app_hash(reviewed)
    (reviewed / "notes.txt").write_text("not shipped")
    assert app_hash(reviewed) == before


def test_app_hash_of_a_directory_without_pyproject_names_the_directory(tmp_path: Path) -> None:
    with pytest.raises(PinError, match=str(tmp_path)):
        app_hash(tmp_path)


def test_approved_file_takes_comments_and_blank_lines_and_names_a_bad_line(tmp_path: Path) -> None:
    good = tmp_path / "approved"
    good.write_text(f"# reviewed 2026-12-01\n{GOOD.upper()}  # v1\n\n{OTHER}\n")
    assert load_approved(file=good) == {GOOD, OTHER}
    bad = tmp_path / "bad"
    bad.write_text(f"{GOOD}\n{GOOD[:-1]}\n")
    with pytest.raises(PinError, match=rf"{bad} line 2"):
        load_approved(file=bad)
    with pytest.raises(PinError, match="--approve-app"):
        load_approved(["sha256:" + GOOD])
    with pytest.raises(PinError, match="cannot read"):
        load_approved(file=tmp_path / "missing")


def test_pin_hashes_the_bytes_received_and_refuses_a_swapped_or_unapproved_fab() -> None:
    pin = AppPin(frozenset({GOOD}))
    assert pin.check(1, GOOD, b"reviewed app") == GOOD
    with pytest.raises(AppNotApproved) as refused:
        pin.check(2, OTHER, b"another app")
    assert refused.value.fab_hash == OTHER and refused.value.run_id == 2
    # The run names the approved hash but the SuperLink serves other bytes.
    with pytest.raises(AppNotApproved) as swapped:
        pin.check(3, GOOD, b"another app")
    assert swapped.value.fab_hash == OTHER
    with pytest.raises(AppNotApproved):
        AppPin(frozenset()).check(4, GOOD, b"reviewed app")


def _message(run_id: int) -> Any:
    return make_message(Metadata(run_id=run_id, message_id="m1", src_node_id=0, dst_node_id=7,
                                 reply_to_message_id="", group_id="1", created_at=0.0, ttl=100.0,
                                 message_type="train"), content=RecordDict())


def _fake_flower(content: bytes) -> tuple[types.ModuleType, list[str], list[Any]]:
    """A module shaped like Flower's start_client_internal: what ran, what was inserted."""
    ran: list[str] = []
    inserted: list[Any] = []
    module = types.ModuleType("fake_start_client_internal")

    def _pull_and_store_message(state: Any, object_store: Any, node_config: Any, receive: Any, get_run: Any,
                                get_fab: Any, pull_object: Any, confirm_message_received: Any,
                                trusted_entities: Any) -> int | None:
        message, _ = receive()
        run_id = message.metadata.run_id
        get_fab(get_run(run_id), run_id)
        ran.append(f"installed and ran run {run_id}")
        return run_id

    def _insert_message(msg: Any, state: Any, store: Any) -> None:
        inserted.append(msg)

    module._pull_and_store_message = _pull_and_store_message  # type: ignore[attr-defined]
    module._insert_message = _insert_message  # type: ignore[attr-defined]
    module.fab = types.SimpleNamespace(hash_str=hashlib.sha256(content).hexdigest(), content=content)  # type: ignore[attr-defined]
    return module, ran, inserted


def _poll(module: types.ModuleType, run_id: int) -> Any:
    fab = module.fab  # type: ignore[attr-defined]
    return module._pull_and_store_message(  # type: ignore[attr-defined]
        state="state", object_store="store", node_config={}, receive=lambda: (_message(run_id), None),
        get_run=lambda _run: fab.hash_str, get_fab=lambda _hash, _run: fab, pull_object=None,
        confirm_message_received=None, trusted_entities=None)


def test_an_unapproved_fab_is_answered_with_an_error_reply_and_never_run() -> None:
    module, ran, inserted = _fake_flower(b"another app")
    install(AppPin(frozenset({GOOD})), module)
    assert _poll(module, 9) == 9  # the reply is pushed like any other
    assert ran == []
    [reply] = inserted
    assert reply.has_error() and reply.error.code == ErrorCode.INVALID_FAB
    assert OTHER in reply.error.reason and reply.metadata.reply_to_message_id == "m1"


def test_an_approved_fab_runs_as_flower_would() -> None:
    module, ran, inserted = _fake_flower(b"reviewed app")
    install(AppPin(frozenset({GOOD})), module)
    assert _poll(module, 3) == 3
    assert ran == ["installed and ran run 3"] and inserted == []


def test_pinning_a_flower_without_the_hooked_function_fails_at_start_up() -> None:
    with pytest.raises(RuntimeError, match="_pull_and_store_message"):
        install(AppPin(frozenset({GOOD})), types.ModuleType("renamed"))


def test_the_real_flower_supernode_has_the_function_pinning_hooks() -> None:
    import importlib

    module = importlib.import_module("flwr.supernode.start_client_internal")
    original = module._pull_and_store_message
    try:
        install(AppPin(frozenset({GOOD})), module)
        assert module._pull_and_store_message is not original
    finally:
        module._pull_and_store_message = original


def test_wrapper_options_come_before_flower_arguments_and_the_key_file_stays_refused(tmp_path: Path) -> None:
    flower = ["flower-supernode", "--superlink", "127.0.0.1:1", "--auth-supernode-private-key", "k"]
    argv = signer_supernode_command(flower, tmp_path / "s.sock", (GOOD, OTHER), tmp_path / "approved")
    assert "k" not in argv
    args = parse_args(argv[3:])
    assert args.approved == (GOOD, OTHER) and args.approved_file == (tmp_path / "approved").absolute()
    assert args.flower == ("--superlink", "127.0.0.1:1") and args.pinned
    assert not parse_args(signer_supernode_command(flower, tmp_path / "s.sock")[3:]).pinned
    with pytest.raises(SystemExit, match="auth-supernode-private-key"):
        parse_args(["--signer-socket", "s", "--approve-app", GOOD, "--auth-supernode-private-key", "k"])
    with pytest.raises(SystemExit, match="needs a value"):
        parse_args(["--signer-socket", "s", "--approve-app"])


def test_refusal_events_are_read_from_the_node_log_once_per_run_and_hash() -> None:
    text = "\n".join([
        "INFO :      Receiving: train message",
        f'{{"run_id": 4, "fab_hash": "{OTHER}", "event": "app_refused", "level": "error", "timestamp": "t1"}}',
        f'{{"run_id": 4, "fab_hash": "{OTHER}", "event": "app_refused", "level": "error", "timestamp": "t2"}}',
        '{"event": "app_pinning_enabled", "level": "info"}',
    ])
    assert refusals(text) == [{"run_id": 4, "fab_hash": OTHER, "timestamp": "t1"}]
