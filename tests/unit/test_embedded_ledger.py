"""What only the embedded backend promises: one durable, tamper-evident, hash-chained file."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ledger.embedded import EmbeddedLedger
from ledger.embedded.storage import display_key
from ledger.errors import AccessDenied, LedgerCorrupted, LedgerError, LedgerUnavailable, TransactionRejected
from ledger.factory import LedgerConfig, open_ledger
from ledger.formats import canonical_json
from ledger.records import Federation, FederationPolicy, ModelCommit, OrgCA, Participant, RoundRecord
from tests.fixtures.ledgers import FED, World, make_world
from tests.fixtures.pki import TestPKI, default_pki
from tests.fixtures.rounds import declared

REPO = Path(__file__).resolve().parents[2]
PARTICIPANT_KEY = b"\x00participant\x00fed-1\x00bank-a\x00"


@pytest.fixture
def pki() -> TestPKI:
    return default_pki()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def ledger(path: Path, pki: TestPKI):
    led = EmbeddedLedger(path, pki.identity("CoordinatorMSP"))
    yield led
    led.close()


@pytest.fixture
def world(ledger: EmbeddedLedger, pki: TestPKI) -> World:
    w = make_world(ledger.with_identity, pki)
    w.run_round(1)
    w.coordinator.issue_rewards(FED, 1, {"bank-a": 7, "bank-b": 3})
    w.banks["bank-a"].transfer(FED, "bank-b", 2)
    return w


def _sql(path: Path, statement: str, *params: object) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        with conn:
            return conn.execute(statement, params).fetchall()
    finally:
        conn.close()


def _table(path: Path, table: str) -> list[tuple]:
    return _sql(path, f"SELECT * FROM {table} ORDER BY 1")


# --- the block log ----------------------------------------------------------------------


def test_a_new_ledger_holds_only_a_genesis_block_and_verifies(ledger: EmbeddedLedger) -> None:
    blocks = list(ledger.blocks())

    assert [(b["number"], b["prev_hash"], b["transactions"]) for b in blocks] == [(0, "0" * 64, [])]
    assert ledger.verify_chain() == []


def test_each_write_is_one_block_whose_hash_covers_its_body_and_the_previous_hash(
    ledger: EmbeddedLedger, world: World
) -> None:
    blocks = list(ledger.blocks())

    for prev, block in zip(blocks, blocks[1:], strict=False):
        body = {k: v for k, v in block.items() if k != "hash"}
        assert block["hash"] == hashlib.sha256(canonical_json(body)).hexdigest()
        assert block["prev_hash"] == prev["hash"]
        assert block["number"] == prev["number"] + 1
        assert block["timestamp_ms"] > prev["timestamp_ms"]
        assert len(block["transactions"]) == 1
    assert ledger.head() == (blocks[-1]["number"], blocks[-1]["hash"])
    assert ledger.height() == len(blocks)


def test_a_receipt_names_the_block_that_holds_the_transaction(ledger: EmbeddedLedger, pki: TestPKI) -> None:
    receipt = ledger.init_federation(FED, FederationPolicy())

    number, tx = ledger.tx(receipt.tx_id)

    assert number == receipt.block_number == 1
    assert ledger.block(number)["transactions"] == [tx]
    assert (tx["function"], tx["args"], tx["creator_msp"]) == (
        "InitFederation", [FED, FederationPolicy().canonical().decode()], "CoordinatorMSP"
    )
    cert = pki.identity("CoordinatorMSP").cert_pem.encode()
    assert tx["creator_cert_sha256"] == hashlib.sha256(cert).hexdigest()
    assert [w["key"] for w in tx["writes"]] == ["\x00fed\x00fed-1\x00"]


def test_block_timestamps_increase_even_when_the_wall_clock_steps_back(path: Path, pki: TestPKI) -> None:
    ticks = iter([5_000, 9_000, 4_000, 4_000, 1_000])
    led = EmbeddedLedger(path, pki.identity("CoordinatorMSP"), clock=lambda: next(ticks))

    stamps = [led.init_federation(f"f{i}", FederationPolicy()).timestamp_ms for i in range(4)]

    assert stamps == [9_000, 9_001, 9_002, 9_003]
    led.close()


def test_unknown_block_and_transaction_are_record_not_found(ledger: EmbeddedLedger) -> None:
    with pytest.raises(LedgerError, match=r"^NOT_FOUND: block 9 does not exist"):
        ledger.block(9)
    with pytest.raises(LedgerError, match=r"^NOT_FOUND: transaction abc is not in the ledger"):
        ledger.tx("abc")


# --- durability ---------------------------------------------------------------------------


def test_closing_and_reopening_gives_the_same_state_and_a_chain_that_verifies(
    ledger: EmbeddedLedger, world: World, path: Path, pki: TestPKI
) -> None:
    def snapshot(led: EmbeddedLedger) -> tuple:
        return led.head(), led.participants(FED), led.list_rounds(FED), led.history(FED, "bank-a")

    before = snapshot(ledger)
    for view in (world.coordinator, world.auditor, *world.banks.values()):
        view.close()
    ledger.close()

    with EmbeddedLedger(path, pki.identity("AuditorMSP")) as reopened:
        assert snapshot(reopened) == before
        assert (reopened.balance(FED, "bank-a"), reopened.balance(FED, "bank-b")) == (5, 5)
        assert reopened.verify_chain() == []


def test_closing_one_view_leaves_the_others_working_and_a_closed_view_is_unavailable(
    ledger: EmbeddedLedger, pki: TestPKI
) -> None:
    auditor = ledger.with_identity(pki.identity("AuditorMSP"))
    auditor.close()

    ledger.init_federation(FED, FederationPolicy())

    with pytest.raises(LedgerUnavailable, match="is closed"):
        auditor.get_federation(FED)


def test_threads_sharing_one_ledger_commit_every_write_exactly_once(ledger: EmbeddedLedger) -> None:
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(5):
                ledger.init_federation(f"t{t}-f{i}", FederationPolicy())
        except BaseException as exc:  # collected and re-raised by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert [b["number"] for b in ledger.blocks()] == list(range(31))
    assert ledger.verify_chain() == []


def test_two_processes_can_write_to_the_same_file(ledger: EmbeddedLedger, path: Path, pki: TestPKI) -> None:
    identity = pki.identity("BankCMSP").model_dump_json()
    script = (
        "import sys\n"
        "from ledger.embedded import EmbeddedLedger\n"
        "from ledger.records import FederationPolicy, Identity\n"
        f"led = EmbeddedLedger(sys.argv[1], Identity.model_validate_json({identity!r}))\n"
        "for i in range(20):\n"
        "    led.init_federation(f'child-{i}', FederationPolicy())\n"
        "led.close()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(path)], cwd=REPO)
    for i in range(20):
        ledger.init_federation(f"parent-{i}", FederationPolicy())
    assert child.wait(timeout=120) == 0

    creators = [b["transactions"][0]["creator_msp"] for b in ledger.blocks() if b["transactions"]]
    assert sorted(creators) == ["BankCMSP"] * 20 + ["CoordinatorMSP"] * 20
    assert ledger.verify_chain() == []


# --- atomicity --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_call",
    [
        lambda w: w.auditor.admit_participant(FED, "bank-a"),  # access denied
        lambda w: w.coordinator.record_round(FED, 1, w.record(1)),  # duplicate
        lambda w: w.banks["bank-a"].transfer(FED, "bank-b", 10**6),  # invalid
        lambda w: w.coordinator.commit_model(FED, 2, ModelCommit(  # wrong state
            round=2, base_model=w.model(1), model=w.model(2), accepted=[], weights={})),
    ],
    ids=["denied", "duplicate", "insufficient", "out-of-order"],
)
def test_a_rejected_call_leaves_blocks_state_history_and_events_unchanged(
    world: World, path: Path, ledger: EmbeddedLedger, bad_call
) -> None:
    tables = ("blocks", "state", "history", "events", "txs")
    before = {t: _table(path, t) for t in tables}

    with pytest.raises(TransactionRejected):
        bad_call(world)

    assert {t: _table(path, t) for t in tables} == before
    assert ledger.verify_chain() == []


# --- range reads inside a write -----------------------------------------------------------


def test_a_range_read_inside_a_write_sees_every_committed_registration_and_the_chain_verifies(
    ledger: EmbeddedLedger, pki: TestPKI, path: Path
) -> None:
    w = make_world(ledger.with_identity, pki)
    w.run_round(1)
    w.coordinator.issue_rewards(FED, 1, {"bank-c": 5})

    # Transfer finds its sender by a partial-key range read, then writes, in one transaction.
    sent = w.banks["bank-c"].transfer(FED, "bank-a", 2)
    bank_c2 = pki.leaf("BankCMSP", "bank-c2")
    second = w.banks["bank-c"].register_participant(FED, "bank-c2", bank_c2.pem, {}, declared(bank_c2, "bank-c2", FED))
    with pytest.raises(AccessDenied, match=r"registered by BankCMSP in federation fed-1; found 2$"):
        w.banks["bank-c"].transfer(FED, "bank-a", 1)

    assert [display_key(x["key"]) for x in ledger.tx(sent.tx_id)[1]["writes"]] == [
        "balance~fed-1~bank-a", "balance~fed-1~bank-c"
    ]
    written = [display_key(x["key"]) for x in ledger.tx(second.tx_id)[1]["writes"]]
    assert written[:2] == ["orgmember~fed-1~BankCMSP~bank-c2", "participant~fed-1~bank-c2"]
    assert (w.auditor.balance(FED, "bank-a"), w.auditor.balance(FED, "bank-c")) == (2, 3)
    assert ledger.verify_chain() == []
    _sql(path, "DELETE FROM state WHERE key = ?", b"\x00orgmember\x00fed-1\x00BankCMSP\x00bank-c2\x00")
    assert ledger.verify_chain() == [
        f"state key orgmember~fed-1~BankCMSP~bank-c2: missing, but block {second.block_number} wrote it"
    ]


# --- tamper evidence --------------------------------------------------------------------


def test_an_edited_state_value_is_reported_with_its_key(world: World, path: Path, ledger: EmbeddedLedger) -> None:
    forged = json.loads(_sql(path, "SELECT value FROM state WHERE key = ?", PARTICIPANT_KEY)[0][0])
    forged["status"] = "revoked"
    _sql(path, "UPDATE state SET value = ? WHERE key = ?", canonical_json(forged), PARTICIPANT_KEY)

    problems = ledger.verify_chain()

    assert len(problems) == 1
    assert problems[0].startswith("state key participant~fed-1~bank-a: differs from the value written by block")


def test_an_edited_balance_is_reported(world: World, path: Path, ledger: EmbeddedLedger) -> None:
    balance_key = b"\x00balance\x00fed-1\x00bank-a\x00"
    _sql(path, "UPDATE state SET value = ? WHERE key = ?", b'{"balance":1000000}', balance_key)

    assert [p.split(":")[0] for p in ledger.verify_chain()] == ["state key balance~fed-1~bank-a"]


def test_an_edited_history_row_is_reported_with_its_key(world: World, path: Path, ledger: EmbeddedLedger) -> None:
    _sql(path, "UPDATE history SET timestamp_ms = timestamp_ms - 1 WHERE seq = "
               "(SELECT MIN(seq) FROM history WHERE key = ?)", PARTICIPANT_KEY)

    problems = ledger.verify_chain()

    assert len(problems) == 1
    assert problems[0].startswith("history of key participant~fed-1~bank-a: entry 0 differs from the write in block")


def test_an_edited_block_is_reported_by_number(world: World, path: Path, ledger: EmbeddedLedger) -> None:
    body = _sql(path, "SELECT body FROM blocks WHERE number = 3")[0][0]
    _sql(path, "UPDATE blocks SET body = ? WHERE number = 3", body.replace("BankAMSP", "BankBMSP"))

    problems = ledger.verify_chain()

    assert "block 3: stored hash does not match the block's contents" in problems
    assert "block 4: prev_hash does not link to the hash of block 3" in problems


def test_an_edited_block_with_a_recomputed_hash_breaks_the_next_link(
    world: World, path: Path, ledger: EmbeddedLedger
) -> None:
    body = json.loads(_sql(path, "SELECT body FROM blocks WHERE number = 2")[0][0])
    body["transactions"][0]["creator_msp"] = "CoordinatorMSP"
    text = canonical_json(body)
    _sql(path, "UPDATE blocks SET body = ?, hash = ? WHERE number = 2", text.decode(), hashlib.sha256(text).hexdigest())

    problems = ledger.verify_chain()

    assert problems[0] == "block 3: prev_hash does not link to the hash of block 2"
    # Re-executed as the caller it now names, block 2 is refused by the contract too.
    assert problems[1:] and all(p.startswith("block 2 tx ") for p in problems[1:])


def test_a_deleted_block_and_a_deleted_event_are_reported(world: World, path: Path, ledger: EmbeddedLedger) -> None:
    _sql(path, "DELETE FROM events WHERE block = 5")
    _sql(path, "DELETE FROM blocks WHERE number = 6")

    problems = ledger.verify_chain()

    assert "block 6: missing (the next stored block is 7)" in problems
    assert any(p.startswith("events: stored events differ from the blocks' events in block(s) [5") for p in problems)


def test_a_file_that_is_not_a_ledger_is_refused(tmp_path: Path, pki: TestPKI) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)

    with pytest.raises(LedgerCorrupted, match="damaged"):
        EmbeddedLedger(garbage, pki.identity("CoordinatorMSP"))


# --- events and stored bytes --------------------------------------------------------------


def test_every_write_emits_exactly_one_event_with_a_canonical_payload_and_no_certificate(
    ledger: EmbeddedLedger, world: World
) -> None:
    world.coordinator.revoke_participant(FED, "bank-c", "left")

    events = ledger.events()

    assert [e["name"] for e in events] == [
        "FederationCreated",
        *["OrgCARegistered", "ParticipantRegistered", "ParticipantAdmitted"] * 3,
        "RoundRecorded",
        "ModelCommitted",
        "RewardsIssued",
        "TokensTransferred",
        "ParticipantRevoked",
    ]
    assert [e["block"] for e in events] == list(range(1, len(events) + 1))
    for event in events:
        assert canonical_json(json.loads(event["payload"])).decode() == event["payload"]
        assert "CERTIFICATE" not in event["payload"]
    assert json.loads(events[-1]["payload"]) == {
        "federation": FED, "participant": "bank-c", "reason": "left", "status": "revoked"
    }
    assert ledger.events(since_block=events[-2]["block"]) == events[-2:]


_RECORDS = {"fed": Federation, "orgca": OrgCA, "participant": Participant, "round": RoundRecord, "commit": ModelCommit}


def test_stored_values_are_canonical_json_that_ledger_records_reparse_to_the_same_bytes(
    world: World, path: Path
) -> None:
    rows = _sql(path, "SELECT key, value FROM state")
    kinds = set()

    for key, value in rows:
        kind = bytes(key).decode().split("\x00")[1]
        kinds.add(kind)
        assert canonical_json(json.loads(value)) == bytes(value)
        if kind in _RECORDS:
            assert _RECORDS[kind].parse(bytes(value)).canonical() == bytes(value)

    assert kinds == {
        "fed", "orgca", "participant", "orgmember", "pubkey", "chain", "round", "commit", "rewards", "roundtx", "balance"
    }


# --- factory ------------------------------------------------------------------------------


def test_open_ledger_opens_the_embedded_backend(path: Path, pki: TestPKI) -> None:
    led = open_ledger(LedgerConfig(path=path), pki.identity("AuditorMSP"))

    assert isinstance(led, EmbeddedLedger) and led.backend == f"embedded:{path}"
    led.close()


def test_a_ledger_config_names_what_each_backend_needs(tmp_path: Path, pki: TestPKI) -> None:
    with pytest.raises(ValueError, match="the fabric ledger needs a connection profile"):
        LedgerConfig(backend="fabric")
    with pytest.raises(ValueError, match="the embedded ledger needs the path of its file"):
        LedgerConfig(backend="embedded")
    with pytest.raises(ValueError, match="backend"):
        LedgerConfig(backend="paper", path=tmp_path)  # type: ignore[arg-type]


def test_the_fabric_backend_says_which_profile_it_cannot_read(tmp_path: Path, pki: TestPKI) -> None:
    missing = tmp_path / "nowhere" / "connection.json"
    with pytest.raises(LedgerUnavailable, match=f"{missing}: no such connection profile"):
        open_ledger(LedgerConfig(backend="fabric", profile=missing), pki.identity("AuditorMSP"))


def test_access_errors_carry_the_transaction_id(world: World) -> None:
    with pytest.raises(AccessDenied) as denied:
        world.auditor.admit_participant(FED, "bank-a")

    assert denied.value.tx_id is not None and len(denied.value.tx_id) == 64


def test_a_storage_failure_during_a_call_is_raised_as_unavailable_not_as_a_refusal(
    ledger: EmbeddedLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ledger.embedded import storage

    def broken(self, key):  # type: ignore[no-untyped-def]
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(storage.Reader, "get", broken)

    with pytest.raises(LedgerUnavailable, match="disk I/O error"):
        ledger.init_federation(FED, FederationPolicy())
    monkeypatch.undo()
    assert [b["number"] for b in ledger.blocks()] == [0]
