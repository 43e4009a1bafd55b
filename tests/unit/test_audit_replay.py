"""The audit re-executes every stored transaction through the contract, checks that tokens
are conserved and that each function was called by an MSP allowed to call it.

The attacks are made as someone with write access to the ledger file would make them:
through the storage layer, which recomputes every block hash and keeps state, history,
index and events consistent with the forged block.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fl.auditing import run_audit
from fl.config import FederationConfig
from fl.demo import demo_config, prepare_federation
from ledger.embedded import EmbeddedLedger
from ledger.embedded.runtime import ContractRuntime, new_tx_id, serialize_identity
from ledger.embedded.storage import Store
from ledger.records import Identity
from ledger.embedded.replay import msp_rule, replay_blocks
from ledger.tokens import check_token_supply
from tests.fixtures.ledgers import FED, World, make_world
from tests.fixtures.pki import TestPKI, default_pki

MINT = 10**15


# --- an attacker with the file ------------------------------------------------------------


def _forge(
    path: Path,
    identity: Identity,
    function: str,
    args: list[str],
    *,
    run_as: Identity | None = None,
    tamper: Callable[[dict[str, Any]], None] = lambda tx: None,
    writes: dict[str, bytes | None] | None = None,
    event: tuple[str, bytes] | None = None,
) -> int:
    """Append one hash-consistent block holding ``function(*args)`` recorded as ``identity``.

    Its writes and event are what the contract produces when run as ``run_as`` (default:
    ``identity``), or ``writes``/``event`` when given; ``tamper`` edits the transaction
    before the block is sealed. Returns the block number.
    """
    store = Store(path, genesis_ms=0)
    try:
        with store.write() as writer:
            now = writer.head().timestamp_ms + 1
            nonce = os.urandom(24)
            actor = run_as or identity
            creator = serialize_identity(actor.msp_id, actor.cert_pem)
            tx_id = new_tx_id(nonce, creator)
            if writes is None:
                outcome = ContractRuntime.shared().execute(
                    writer, function, args, creator=creator, nonce=nonce, tx_id=tx_id, timestamp_ms=now,
                    read_only=False,
                )
                assert outcome.ok, outcome.message
                writes, event = outcome.writes, outcome.event
            tx = {
                "args": args,
                "creator_cert": identity.cert_pem,
                "creator_cert_sha256": hashlib.sha256(identity.cert_pem.encode()).hexdigest(),
                "creator_msp": identity.msp_id,
                "event": None if event is None else {"name": event[0], "payload": event[1].decode()},
                "function": function,
                "tx_id": tx_id,
                "writes": [
                    {"is_delete": v is None, "key": k, "value": None if v is None else v.decode()}
                    for k, v in sorted(writes.items(), key=lambda kv: kv[0].encode())
                ],
            }
            tamper(tx)
            number, _ = writer.append_block(now, [tx])
    finally:
        store.release()
    return number


def _balance_key(federation: str, participant: str) -> str:
    return f"\x00balance\x00{federation}\x00{participant}\x00"


def _mint(path: Path, coordinator: Identity, federation: str, participant: str) -> int:
    """A block that says the coordinator issued ``MINT`` tokens to ``participant``."""
    rewards = {participant: MINT}
    payload = {"federation": federation, "rewards": rewards, "round": 1, "total": MINT}
    return _forge(
        path, coordinator, "IssueRewards", [federation, "1", json.dumps(rewards)],
        writes={_balance_key(federation, participant): f'{{"balance":{MINT}}}'.encode()},
        event=("RewardsIssued", json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()),
    )


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def pki() -> TestPKI:
    return default_pki()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def ledger(path: Path, pki: TestPKI):  # type: ignore[no-untyped-def]
    led = EmbeddedLedger(path, pki.identity("CoordinatorMSP"))
    yield led
    led.close()


@pytest.fixture
def world(ledger: EmbeddedLedger, pki: TestPKI) -> World:
    """Three banks, one committed and rewarded round, one transfer."""
    w = make_world(ledger.with_identity, pki)
    w.run_round(1)
    w.coordinator.issue_rewards(FED, 1, {"bank-a": 7, "bank-b": 3})
    w.banks["bank-a"].transfer(FED, "bank-b", 2)
    return w


@pytest.fixture()
def federation(tmp_path: Path) -> FederationConfig:
    """A demo federation on disk: two admitted banks, no round yet."""
    cfg = demo_config(tmp_path / "w", rounds=1, participants=2)
    cfg.workdir.mkdir(parents=True)
    prepare_federation(cfg)
    return cfg


def _identity_of(ledger_path: Path, msp: str) -> Identity:
    """The certificate ``msp`` signed its first transaction with, as an attacker copies it."""
    store = Store(ledger_path, genesis_ms=0)
    try:
        with store.read() as reader:
            for _, _, text in reader.block_rows():
                for tx in json.loads(text)["transactions"]:
                    if tx["creator_msp"] == msp and tx.get("creator_cert"):
                        return Identity(msp_id=msp, cert_pem=tx["creator_cert"])
    finally:
        store.release()
    raise AssertionError(f"no transaction of {msp} carries its certificate")


# --- the attack of the issue: an appended block mints tokens ----------------------------------


def test_an_appended_block_minting_tokens_is_reported_even_with_a_pin_of_the_previous_head(
    federation: FederationConfig,
) -> None:
    clean = run_audit(federation)
    assert clean.report.ok, clean.report.problems
    pin = f"{clean.report.head['block']}:{clean.report.head['hash']}"
    coordinator = _identity_of(federation.ledger_path, federation.coordinator_msp)

    number = _mint(federation.ledger_path, coordinator, federation.id, "bank-a")
    audit = run_audit(federation, [pin])

    problems = audit.report.problems
    assert not audit.report.ok
    assert any(p.startswith(f"ledger: block {number} tx ") and "IssueRewards" in p and "refuses" in p
               for p in problems), problems
    assert any(f"balance of bank-a is {MINT}" in p for p in problems), problems
    assert any(f"total supply {MINT}" in p for p in problems), problems


def test_a_block_whose_write_differs_from_the_contracts_names_block_tx_and_key(
    world: World, path: Path, ledger: EmbeddedLedger, pki: TestPKI
) -> None:
    assert ledger.verify_chain() == []

    def richer(tx: dict[str, Any]) -> None:
        for write in tx["writes"]:
            if write["key"].startswith("\x00participant\x00"):
                record = json.loads(write["value"])
                record["meta"] = {"org": "BankBMSP", "note": "not what was signed"}
                write["value"] = json.dumps(record, separators=(",", ":"), sort_keys=True)

    number = _forge(path, pki.identity("CoordinatorMSP"), "RevokeParticipant", [FED, "bank-c", "left"],
                    tamper=richer)
    problems = ledger.verify_chain()

    assert len(problems) == 1, problems
    assert problems[0].startswith(f"block {number} tx ")
    assert "key participant~fed-1~bank-c: the recorded value is not the one the contract writes" in problems[0]


def test_a_coordinator_only_function_recorded_with_a_banks_identity_is_reported(
    world: World, path: Path, ledger: EmbeddedLedger, pki: TestPKI
) -> None:
    number = _forge(path, pki.identity("BankAMSP"), "RevokeParticipant", [FED, "bank-c", "left"],
                    run_as=pki.identity("CoordinatorMSP"))
    problems = ledger.verify_chain()

    mine = [p for p in problems if p.startswith(f"block {number} tx ")]
    assert any("RevokeParticipant may only be called by the coordinator MSP CoordinatorMSP, not BankAMSP" in p
               and "recorded as called by" in p for p in mine), problems
    assert any("the contract refuses it: ACCESS_DENIED" in p for p in mine), problems


def test_an_honest_ledger_with_rewards_transfers_and_revocations_replays_clean(
    world: World, ledger: EmbeddedLedger
) -> None:
    world.coordinator.revoke_participant(FED, "bank-c", "left")

    report = replay_blocks(ledger.blocks())

    assert report.problems == []
    assert report.transactions == ledger.height() - 1
    assert ledger.verify_chain() == []
    assert report.supply == {FED: 10}


def test_a_balance_written_outside_rewards_and_transfers_breaks_conservation(
    world: World, path: Path, ledger: EmbeddedLedger, pki: TestPKI
) -> None:
    # A real revocation whose block also carries a credit: the contract would not write it.
    def credit(tx: dict[str, Any]) -> None:
        tx["writes"].append({"is_delete": False, "key": _balance_key(FED, "bank-c"), "value": '{"balance":50}'})
        tx["writes"].sort(key=lambda w: w["key"].encode())

    number = _forge(path, pki.identity("CoordinatorMSP"), "RevokeParticipant", [FED, "bank-c", "gone"],
                    tamper=credit)
    problems = ledger.verify_chain()

    assert any(p.startswith(f"block {number} tx ") and "key balance~fed-1~bank-c" in p
               and "the contract does not write it" in p for p in problems), problems
    assert any(p == "tokens of federation fed-1: balance of bank-c is 50, its rewards and transfers give 0"
               for p in problems), problems
    assert any(p == "tokens of federation fed-1: total supply 60 differs from the rewards issued, 10"
               for p in problems), problems


def test_a_query_or_unknown_function_in_a_block_is_reported(world: World, ledger: EmbeddedLedger) -> None:
    blocks = list(ledger.blocks())
    query = {**blocks[-1]["transactions"][0], "function": "BalanceOf", "tx_id": "f" * 64, "writes": []}
    number = len(blocks)
    blocks.append({"number": number, "timestamp_ms": blocks[-1]["timestamp_ms"] + 1, "transactions": [query]})

    problems = replay_blocks(blocks).problems

    assert problems == [f"block {number} tx {'f' * 64}: 'BalanceOf' is not a transaction function of the contract"]


FEDERATION = {"coordinator_msp": "CoordinatorMSP", "policy": {"auditor_msps": ["AuditorMSP"]}}


@pytest.mark.parametrize(
    ("function", "msp", "allowed"),
    [
        ("IssueRewards", "CoordinatorMSP", True),
        ("IssueRewards", "BankAMSP", False),
        ("CommitModel", "AuditorMSP", False),
        ("AdmitParticipant", "BankAMSP", False),
        ("RegisterParticipant", "BankAMSP", True),
        ("RegisterParticipant", "CoordinatorMSP", False),
        ("RegisterOrgCA", "CoordinatorMSP", False),
        ("Transfer", "BankAMSP", True),
        ("Transfer", "AuditorMSP", False),
    ],
)
def test_each_function_is_allowed_only_to_the_msps_that_may_call_it(
    function: str, msp: str, allowed: bool
) -> None:
    assert (msp_rule(function, msp, FEDERATION, [FED]) is None) is allowed


def test_a_federation_may_not_be_created_by_an_msp_its_own_policy_names_as_auditor() -> None:
    policy = json.dumps({"auditor_msps": ["AuditorMSP"]})

    assert msp_rule("InitFederation", "AuditorMSP", None, [FED, policy]) is not None
    assert msp_rule("InitFederation", "CoordinatorMSP", None, [FED, policy]) is None


def test_a_transaction_stored_twice_is_reported_as_a_duplicate(world: World, ledger: EmbeddedLedger) -> None:
    blocks = list(ledger.blocks())
    last = blocks[-1]
    blocks.append({**last, "number": last["number"] + 1, "timestamp_ms": last["timestamp_ms"] + 1})

    problems = replay_blocks(blocks).problems

    tx_id = last["transactions"][0]["tx_id"]
    copy, original = last["number"] + 1, last["number"]
    assert f"block {copy} tx {tx_id}: the transaction id is already in block {original}" in problems


def test_an_older_block_without_its_certificate_is_replayed_with_the_certificate_found_elsewhere(
    world: World, ledger: EmbeddedLedger
) -> None:
    blocks = list(ledger.blocks())
    for block in blocks[:4]:
        for tx in block["transactions"]:
            del tx["creator_cert"]

    assert replay_blocks(blocks).problems == []

    blocks[2]["transactions"][0]["creator_cert_sha256"] = "0" * 64
    problems = replay_blocks(blocks).problems
    tx_id = blocks[2]["transactions"][0]["tx_id"]
    assert len(problems) == 1 and problems[0].startswith(f"block 2 tx {tx_id}: ")
    assert "certificate" in problems[0] and "cannot be re-executed" in problems[0]


def test_token_supply_from_queries_matches_the_rewards_on_an_honest_ledger(world: World) -> None:
    participants = [p.id for p in world.auditor.participants(FED)]

    assert check_token_supply(world.auditor, FED, world.auditor.list_rounds(FED), participants) == []


def test_token_supply_from_queries_reports_a_minted_balance(
    world: World, path: Path, ledger: EmbeddedLedger, pki: TestPKI
) -> None:
    _mint(path, pki.identity("CoordinatorMSP"), FED, "bank-c")
    participants = [p.id for p in world.auditor.participants(FED)]

    problems = check_token_supply(world.auditor, FED, world.auditor.list_rounds(FED), participants)

    assert problems == [f"tokens of federation {FED}: balances add up to {MINT + 10}, the rewards issued to 10"]


def test_replaying_a_small_federations_ledger_takes_well_under_five_seconds(
    world: World, ledger: EmbeddedLedger
) -> None:
    started = time.perf_counter()
    report = replay_blocks(ledger.blocks())

    assert report.problems == [] and time.perf_counter() - started < 5.0
