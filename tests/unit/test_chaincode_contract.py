"""The ``fedaudit`` contract on its own: registration, strict inputs, determinism, stored shapes.

The contract runs through the real fabric-chaincode-python dispatcher over an in-memory
state (no SQLite), with raw string arguments exactly as Fabric would pass them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections import defaultdict
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from chaincode import canonical, schema, weights
from chaincode.fedaudit import CONTRACT_NAME, QUERIES, TRANSACTIONS, FedAudit
from chaincode.shim_fixes import Contract, ContractChaincode, TransactionContext, check_context_annotations
from ledger.embedded import runtime as runtime_module
from ledger.embedded.runtime import ContractRuntime, EmbeddedPeer, Outcome, new_tx_id, serialize_identity
from ledger.formats import P256_ORDER, canonical_json
from ledger.records import EVALUATION_REASONS, REASONS, Federation, Participant, RoundRecord
from tests.fixtures.pki import Leaf, TestPKI, default_pki
from tests.fixtures.rounds import DECLARED, accepted, commit_for, declared, digest, evaluated, evaluation, record

T0 = (time.time_ns() // 10**9) * 1000  # certificates are valid around "now"


class MemoryState:
    """World state + history in memory: the contract's StateReader without SQLite.

    :meth:`endorse` and :meth:`commit` split a call the way Fabric does, so that two
    transactions can be simulated against the same state and then validated in order
    (see :meth:`validate`).
    """

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.versions: dict[str, int] = {}
        self.changes: dict[str, list[tuple[str, int, bytes, bool]]] = defaultdict(list)
        self.clock = T0
        self.nonce = 0
        self.height = 0

    def get(self, key: str) -> bytes | None:
        return self.values.get(key)

    def range(self, start: str, end: str) -> list[tuple[str, bytes]]:
        lo, hi = start.encode(), end.encode()
        keys = sorted(self.values, key=str.encode)
        return [(k, self.values[k]) for k in keys if lo <= k.encode() and (not end or k.encode() < hi)]

    def history(self, key: str) -> list[tuple[str, int, bytes, bool]]:
        return list(reversed(self.changes[key]))

    def endorse(self, msp: str, cert: str, function: str, *args: str, read_only: bool = False) -> Endorsement:
        """Simulate one call against the current state, recording what it read; change nothing."""
        self.clock += 1000
        self.nonce += 1
        creator = serialize_identity(msp, cert)
        nonce = self.nonce.to_bytes(24, "big")
        tx_id = new_tx_id(nonce, creator)
        reader = RecordingReader(self)
        outcome = ContractRuntime.shared().execute(
            reader, function, list(args), creator=creator, nonce=nonce, tx_id=tx_id,
            timestamp_ms=self.clock, read_only=read_only,
        )
        return Endorsement(outcome, tx_id, self.clock, reader.reads, reader.ranges)

    def validate(self, endorsement: Endorsement) -> str:
        """Fabric's commit-time check: every key and every range read must be unchanged."""
        for key, version in endorsement.reads.items():
            if self.versions.get(key) != version:
                return "MVCC_READ_CONFLICT"
        for (start, end), seen in endorsement.ranges.items():
            if [(k, self.versions[k]) for k, _ in self.range(start, end)] != seen:
                return "PHANTOM_READ_CONFLICT"
        return "VALID"

    def commit(self, endorsement: Endorsement) -> str:
        """Apply an endorsed write set if it still validates; the validation code."""
        assert endorsement.outcome.ok, endorsement.outcome.message
        status = self.validate(endorsement)
        if status == "VALID":
            self._apply(endorsement)
        return status

    def call(self, msp: str, cert: str, function: str, *args: str, read_only: bool = False) -> Outcome:
        endorsement = self.endorse(msp, cert, function, *args, read_only=read_only)
        if endorsement.outcome.ok and not read_only:
            self._apply(endorsement)
        return endorsement.outcome

    def _apply(self, endorsement: Endorsement) -> None:
        self.height += 1
        for key, value in endorsement.outcome.writes.items():
            if value is None:
                self.values.pop(key, None)
                self.versions.pop(key, None)
            else:
                self.values[key] = value
                self.versions[key] = self.height
            self.changes[key].append((endorsement.tx_id, endorsement.timestamp_ms, value or b"", value is None))


@dataclass(frozen=True)
class Endorsement:
    """A simulated call with its read set: key → version read (``None``: absent), range → rows seen."""

    outcome: Outcome
    tx_id: str
    timestamp_ms: int
    reads: dict[str, int | None]
    ranges: dict[tuple[str, str], list[tuple[str, int]]]

    def touches(self, key: str) -> bool:
        """Whether a write of ``key`` would change what this call read."""
        raw = key.encode()
        return key in self.reads or any(
            start.encode() <= raw and (not end or raw < end.encode()) for start, end in self.ranges
        )


class RecordingReader:
    """A :class:`MemoryState` as the contract's StateReader, keeping the read set as a peer does."""

    def __init__(self, state: MemoryState) -> None:
        self.state = state
        self.reads: dict[str, int | None] = {}
        self.ranges: dict[tuple[str, str], list[tuple[str, int]]] = {}

    def get(self, key: str) -> bytes | None:
        self.reads.setdefault(key, self.state.versions.get(key))
        return self.state.get(key)

    def range(self, start: str, end: str) -> list[tuple[str, bytes]]:
        rows = self.state.range(start, end)
        self.ranges[(start, end)] = [(k, self.state.versions[k]) for k, _ in rows]
        return rows

    def history(self, key: str) -> list[tuple[str, int, bytes, bool]]:
        return self.state.history(key)


@pytest.fixture
def pki() -> TestPKI:
    return default_pki()


def _as(pki: TestPKI, msp: str) -> tuple[str, str]:
    identity = pki.identity(msp)
    return identity.msp_id, identity.cert_pem


def _policy(**overrides: object) -> str:
    return canonical_json({"auditor_msps": ["AuditorMSP"], **overrides}).decode()


def _registration(leaf: Leaf, pid: str, fed: str = "fed-1", meta: str = "{}", examples: int = DECLARED) -> tuple[str, ...]:
    """RegisterParticipant's arguments: the certificate, meta and a declaration signed with the leaf's key."""
    signed = declared(leaf, pid, fed, examples)
    return (fed, pid, leaf.pem, meta, signed.statement, signed.signature)


def _register_cas(state: MemoryState, pki: TestPKI, fed: str = "fed-1",
                  msps: tuple[str, ...] = ("BankAMSP", "BankBMSP", "BankCMSP")) -> None:
    for msp in msps:
        outcome = state.call(*_as(pki, msp), "RegisterOrgCA", fed, pki.cas[msp].pem)
        assert outcome.ok, outcome.message


# --- registration (defect 6) -----------------------------------------------------------


def test_contract_registers_exactly_the_design_functions_each_receiving_the_context() -> None:
    chaincode = check_context_annotations(FedAudit())
    functions = chaincode._contracts[CONTRACT_NAME].functions

    assert set(functions) == {*TRANSACTIONS, *QUERIES}
    assert all(fn.params.context is TransactionContext for fn in functions.values())
    assert all(fn.params.fields == [str] * len(fn.params.fields) for fn in functions.values())
    assert {name for name, fn in functions.items() if fn.call_type == 2} == set(QUERIES)


def test_a_function_whose_ctx_is_not_annotated_takes_it_as_an_argument_and_is_refused() -> None:
    class Careless(Contract):
        Name = "careless"

        async def Ping(self, ctx, value: str) -> str:  # type: ignore[no-untyped-def]
            return value

    registered = ContractChaincode.new_chaincode(Careless())._contracts["careless"].functions["Ping"]
    assert registered.params.context is None  # the defect: ctx became a parameter

    with pytest.raises(TypeError, match=r"\['Ping'\] of contract careless do not receive the TransactionContext"):
        check_context_annotations(Careless())


# --- formats shared with ledger/ --------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [{"b": 1, "a": [1.5, None, True]}, {"ü": "naïve ✓", "x": {"z": -0.0, "y": 10**30}}, [], "tab\tnew\nline"],
)
def test_contract_canonical_json_is_byte_identical_to_ledger_formats(value: object) -> None:
    assert canonical.canonical_bytes(value) == canonical_json(value)


def test_contract_rejection_reasons_are_the_ledgers() -> None:
    assert schema.REASONS == REASONS
    assert schema.EVALUATION_REASONS == EVALUATION_REASONS


# --- strict arguments -------------------------------------------------------------------


@pytest.mark.parametrize("text", ["0", "01", "+1", "-1", "1.0", " 1", "1 ", "1e3", "true", "", "100000000", "١"])
def test_round_arguments_are_parsed_strictly(text: str) -> None:
    with pytest.raises(schema.Invalid, match=r"^INVALID: round"):
        schema.parse_round(text)


@pytest.mark.parametrize("text", ["0", "-1", "01", "1.5", "9223372036854775808", "0x10", ""])
def test_amount_arguments_are_parsed_strictly(text: str) -> None:
    with pytest.raises(schema.Invalid, match=r"^INVALID: amount"):
        schema.parse_amount(text)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ('{"auditor_msps":[],"surprise":1}', "policy has unknown fields ['surprise']"),
        ('{"reward_budget":true}', "policy.reward_budget must be an integer"),
        ('{"reward_budget":10.0}', "policy.reward_budget must be an integer"),
        ('{"reward_budget":-1}', "policy.reward_budget must be between 0"),
        ('{"scorer":{"name":"cosine","params":{"x":NaN}}}', "policy is not valid JSON"),
        ('{"model":"a","model":"b"}', "policy is not valid JSON: duplicate key 'model'"),
        ('{"auditor_msps":["A","A"]}', "policy.auditor_msps has duplicate items"),
        ("[1]", "policy must be a JSON object"),
        ("{", "policy is not valid JSON"),
    ],
)
def test_a_malformed_policy_is_refused_with_a_reason(pki: TestPKI, policy: str, message: str) -> None:
    outcome = MemoryState().call(*_as(pki, "CoordinatorMSP"), "InitFederation", "fed-1", policy)

    assert not outcome.ok
    assert outcome.message.startswith(f"INVALID: {message}")


def test_policy_defaults_are_filled_in_so_stored_bytes_equal_the_records_canonical_form(pki: TestPKI) -> None:
    state = MemoryState()
    state.call(*_as(pki, "CoordinatorMSP"), "InitFederation", "fed-1", "{}")

    stored = state.values["\x00fed\x00fed-1\x00"]

    assert Federation.parse(stored).canonical() == stored
    scorer = json.loads(stored)["policy"]["scorer"]
    assert scorer == {"name": "cosine", "params": {}, "seed": 0, "validation_digest": None}
    policy = json.loads(stored)["policy"]
    assert (policy["eval_fraction_ppm"], policy["validation_digest"]) == (200_000, None)


# --- determinism ------------------------------------------------------------------------


def _scripted_run(pki: TestPKI, registration: tuple[str, ...]) -> list[tuple[dict[str, bytes | None], tuple[str, bytes] | None, bytes]]:
    state = MemoryState()
    steps = [
        (_as(pki, "CoordinatorMSP"), "InitFederation", ("fed-1", _policy())),
        (_as(pki, "BankAMSP"), "RegisterOrgCA", ("fed-1", pki.cas["BankAMSP"].pem)),
        (_as(pki, "BankAMSP"), "RegisterParticipant", registration),
        (_as(pki, "CoordinatorMSP"), "AdmitParticipant", ("fed-1", "bank-a")),
    ]
    results = []
    for (msp, cert), function, args in steps:
        outcome = state.call(msp, cert, function, *args)
        assert outcome.ok, outcome.message
        results.append((outcome.writes, outcome.event, outcome.payload))
    return results


def test_the_same_transactions_produce_the_same_bytes_every_time(pki: TestPKI) -> None:
    leaf = pki.leaf("BankAMSP", "bank-a")

    registration = _registration(leaf, "bank-a", meta='{"b":2,"a":1}')  # ECDSA signing is randomised

    first, second = _scripted_run(pki, registration), _scripted_run(pki, registration)

    assert first == second
    writes, event, payload = first[2]
    participant = writes["\x00participant\x00fed-1\x00bank-a\x00"]
    assert Participant.parse(participant).canonical() == participant == payload
    assert json.loads(participant)["registered_ms"] == T0 + 3000  # the tx timestamp, not the clock
    assert event[0] == "ParticipantRegistered" and b"BEGIN CERTIFICATE" not in event[1]


# --- queries and identities -------------------------------------------------------------


def test_a_write_function_evaluated_as_a_query_is_refused(pki: TestPKI) -> None:
    outcome = MemoryState().call(*_as(pki, "CoordinatorMSP"), "InitFederation", "fed-1", "{}", read_only=True)

    assert not outcome.ok
    assert outcome.message == "INVALID: put_state is not allowed in a query (evaluate) transaction"


def test_a_caller_with_an_msp_but_no_certificate_cannot_register(pki: TestPKI) -> None:
    state = MemoryState()
    state.call(*_as(pki, "CoordinatorMSP"), "InitFederation", "fed-1", _policy())

    outcome = state.call("BankAMSP", "", "RegisterParticipant", *_registration(pki.leaf("BankAMSP", "a"), "bank-a"))

    assert outcome.message == "ACCESS_DENIED: the caller of BankAMSP has no X.509 certificate"


# --- evidence on accepted entries -------------------------------------------------------


def _federation_with_active_bank(pki: TestPKI) -> tuple[MemoryState, object]:
    state = MemoryState()
    leaf = pki.leaf("BankAMSP", "bank-a")
    state.call(*_as(pki, "CoordinatorMSP"), "InitFederation", "fed-1", _policy())
    _register_cas(state, pki, msps=("BankAMSP",))
    state.call(*_as(pki, "BankAMSP"), "RegisterParticipant", *_registration(leaf, "bank-a"))
    state.call(*_as(pki, "CoordinatorMSP"), "AdmitParticipant", "fed-1", "bank-a")
    return state, leaf


def _record_round(state: MemoryState, pki: TestPKI, rec: RoundRecord | dict) -> Outcome:
    raw = rec.canonical().decode() if isinstance(rec, RoundRecord) else canonical_json(rec).decode()
    return state.call(*_as(pki, "CoordinatorMSP"), "RecordRound", "fed-1", "1", raw)


def test_an_accepted_entry_with_a_high_s_signature_is_refused(pki: TestPKI) -> None:
    state, leaf = _federation_with_active_bank(pki)
    entry = accepted(leaf, "bank-a", "fed-1", 1, digest("g"))
    r, s = decode_dss_signature(base64.b64decode(entry.signature))
    high = base64.b64encode(encode_dss_signature(r, P256_ORDER - s)).decode()

    outcome = _record_round(state, pki, record(1, digest("g"), [entry.model_copy(update={"signature": high})]))

    assert outcome.message == "INVALID: accepted entry of bank-a: signature is not in low-S form"


@pytest.mark.parametrize("field", ["manifest", "signature", "update", "num_examples", "manifest_hash"])
def test_an_accepted_entry_without_its_evidence_is_refused(pki: TestPKI, field: str) -> None:
    state, leaf = _federation_with_active_bank(pki)
    entry = accepted(leaf, "bank-a", "fed-1", 1, digest("g")).model_copy(update={field: None})

    outcome = _record_round(state, pki, record(1, digest("g"), [entry]))

    assert outcome.message == f"INVALID: accepted entry of bank-a lacks its {field}"


def test_an_accepted_entry_whose_manifest_hash_is_wrong_is_refused(pki: TestPKI) -> None:
    state, leaf = _federation_with_active_bank(pki)
    entry = accepted(leaf, "bank-a", "fed-1", 1, digest("g")).model_copy(update={"manifest_hash": digest("x")})

    outcome = _record_round(state, pki, record(1, digest("g"), [entry]))

    assert outcome.message == "INVALID: accepted entry of bank-a: manifest_hash is not the SHA-256 of the manifest"


def test_a_record_with_an_integer_as_a_boolean_or_an_unknown_entry_field_is_refused(pki: TestPKI) -> None:
    state, leaf = _federation_with_active_bank(pki)
    good = json.loads(record(1, digest("g"), [accepted(leaf, "bank-a", "fed-1", 1, digest("g"))]).canonical())
    bad_round = {**good, "round": True}
    extra = {**good, "entries": [{**good["entries"][0], "weight": 3}]}

    assert _record_round(state, pki, bad_round).message == "INVALID: record.round must be an integer"
    assert _record_round(state, pki, extra).message == "INVALID: record.entries[0] has unknown fields ['weight']"
    assert _record_round(state, pki, good).ok


def test_a_rejected_entry_must_say_why(pki: TestPKI) -> None:
    state, _ = _federation_with_active_bank(pki)
    rec = {"round": 1, "base_model": digest("g"), "scorer": {}, "entries": [{"participant": "x", "status": "rejected"}]}

    assert _record_round(state, pki, rec).message == "INVALID: rejected entry of 'x' must carry a reason"


# --- evaluations ------------------------------------------------------------------------


def _committed_round_one(pki: TestPKI) -> tuple[MemoryState, Leaf]:
    state, leaf = _federation_with_active_bank(pki)
    rec = record(1, digest("g"), [accepted(leaf, "bank-a", "fed-1", 1, digest("g"))])
    assert _record_round(state, pki, rec).ok
    commit = commit_for(rec, digest("m1")).canonical().decode()
    assert state.call(*_as(pki, "CoordinatorMSP"), "CommitModel", "fed-1", "1", commit).ok
    return state, leaf


def _record_evaluation(state: MemoryState, pki: TestPKI, value: dict, msp: str = "CoordinatorMSP") -> Outcome:
    return state.call(*_as(pki, msp), "RecordEvaluation", "fed-1", "1", canonical_json(value).decode())


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("accuracy_ppm", 1_000_001, "evaluation.entries[0].accuracy_ppm must be between 0 and 1000000"),
        ("auc_ppm", -1, "evaluation.entries[0].auc_ppm must be between 0 and 1000000"),
        ("log_loss_ppm", 100_000_001, "evaluation.entries[0].log_loss_ppm must be between 0 and 100000000"),
        ("accuracy_ppm", 0.5, "evaluation.entries[0].accuracy_ppm must be an integer"),
        ("accuracy_ppm", True, "evaluation.entries[0].accuracy_ppm must be an integer"),
        ("reason", "outlier", "evaluation.entries[0].reason must be one of"),
    ],
)
def test_an_evaluation_with_metrics_out_of_bounds_or_not_integer_ppm_is_refused(
    pki: TestPKI, field: str, value: object, message: str
) -> None:
    state, leaf = _committed_round_one(pki)
    good = json.loads(evaluation(1, digest("m1"), [evaluated(leaf, "bank-a", "fed-1", 1, digest("m1"))]).canonical())
    bad = {**good, "entries": [{**good["entries"][0], field: value}]}

    outcome = _record_evaluation(state, pki, bad)

    assert outcome.message.startswith(f"INVALID: {message}")
    assert _record_evaluation(state, pki, good).ok


def test_an_evaluation_by_a_participant_org_is_refused_and_stores_nothing(pki: TestPKI) -> None:
    state, leaf = _committed_round_one(pki)
    value = json.loads(evaluation(1, digest("m1"), [evaluated(leaf, "bank-a", "fed-1", 1, digest("m1"))]).canonical())

    outcome = _record_evaluation(state, pki, value, msp="BankAMSP")

    assert outcome.message == ("ACCESS_DENIED: RecordEvaluation may only be called by the coordinator MSP "
                               "CoordinatorMSP, not BankAMSP")
    assert not any(k.startswith("\x00evaluation\x00") for k in state.values)


def test_an_update_manifest_cannot_back_an_evaluation_nor_an_evaluation_manifest_an_update(pki: TestPKI) -> None:
    state, leaf = _committed_round_one(pki)
    update = accepted(leaf, "bank-a", "fed-1", 1, digest("g"))
    ev = evaluated(leaf, "bank-a", "fed-1", 1, digest("m1"))
    # The signed update manifest, with its valid signature, put where an evaluation goes.
    as_evaluation = ev.model_copy(update={"manifest": update.manifest, "manifest_hash": update.manifest_hash,
                                          "signature": update.signature})

    outcome = _record_evaluation(state, pki, json.loads(evaluation(1, digest("m1"), [as_evaluation]).canonical()))
    assert outcome.message.startswith("INVALID: accepted evaluation of bank-a: manifest must have exactly the fields")

    fresh, leaf2 = _federation_with_active_bank(pki)
    ev2 = evaluated(leaf2, "bank-a", "fed-1", 1, digest("g"))
    entry = accepted(leaf2, "bank-a", "fed-1", 1, digest("g"))
    as_update = entry.model_copy(update={"manifest": ev2.manifest, "manifest_hash": ev2.manifest_hash,
                                         "signature": ev2.signature})
    outcome = _record_round(fresh, pki, record(1, digest("g"), [as_update]))
    assert outcome.message.startswith("INVALID: accepted entry of bank-a: manifest must have exactly the fields")


# --- concurrency: read and write sets as Fabric validates them ----------------------------


def _ck(kind: str, *attrs: str) -> str:
    """A composite key, spelled out (as the library builds it)."""
    return "\x00" + kind + "\x00" + "".join(f"{a}\x00" for a in attrs)


def _federation(pki: TestPKI) -> MemoryState:
    state = MemoryState()
    assert state.call(*_as(pki, "CoordinatorMSP"), "InitFederation", "fed-1", _policy()).ok
    _register_cas(state, pki)
    return state


def _register(
    state: MemoryState, pki: TestPKI, msp: str, pid: str, fed: str = "fed-1", leaf: Leaf | None = None
) -> Endorsement:
    return state.endorse(*_as(pki, msp), "RegisterParticipant", *_registration(leaf or pki.leaf(msp, pid), pid, fed))


def _pubkey_key(leaf: Leaf) -> str:
    spki = leaf.cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return _ck("pubkey", "fed-1", hashlib.sha256(spki).hexdigest())


def test_two_registrations_by_one_org_write_disjoint_keys_and_read_nothing_the_other_writes(pki: TestPKI) -> None:
    state = _federation(pki)

    leaves = {pid: pki.leaf("BankAMSP", pid) for pid in ("bank-a1", "bank-a2")}

    # Both simulated against the same committed state, as two concurrent submissions are.
    first, second = (_register(state, pki, "BankAMSP", pid, leaf=leaf) for pid, leaf in leaves.items())

    assert first.outcome.ok and second.outcome.ok
    for endorsement, (pid, leaf) in zip((first, second), leaves.items(), strict=True):
        assert set(endorsement.outcome.writes) == {
            _ck("participant", "fed-1", pid), _ck("orgmember", "fed-1", "BankAMSP", pid), _pubkey_key(leaf)
        }
        assert set(endorsement.reads) == {
            _ck("fed", "fed-1"), _ck("orgca", "fed-1", "BankAMSP"), _ck("participant", "fed-1", pid), _pubkey_key(leaf)
        }
    assert not set(first.outcome.writes) & set(second.outcome.writes)
    assert first.ranges == second.ranges == {}
    assert not [k for k in second.outcome.writes if first.touches(k)]
    assert not [k for k in first.outcome.writes if second.touches(k)]
    assert (state.commit(first), state.commit(second)) == ("VALID", "VALID")
    listed = json.loads(state.call(*_as(pki, "AuditorMSP"), "ListParticipants", "fed-1", read_only=True).payload)
    assert [(p["id"], p["msp_id"]) for p in listed] == [("bank-a1", "BankAMSP"), ("bank-a2", "BankAMSP")]


def test_registrations_that_must_exclude_each_other_still_conflict(pki: TestPKI) -> None:
    state = _federation(pki)
    leaf = pki.leaf("BankAMSP", "bank-a1")

    same_id = [_register(state, pki, msp, "bank-x") for msp in ("BankAMSP", "BankBMSP")]
    same_key = [
        state.endorse(*_as(pki, "BankAMSP"), "RegisterParticipant", *_registration(leaf, pid))
        for pid in ("bank-a1", "bank-a9")
    ]

    assert [state.commit(e) for e in same_id] == ["VALID", "MVCC_READ_CONFLICT"]
    assert [state.commit(e) for e in same_key] == ["VALID", "MVCC_READ_CONFLICT"]


def _bank_with_tokens(pki: TestPKI) -> tuple[MemoryState, dict[str, Leaf]]:
    """fed-1 with bank-a (50 tokens), bank-b and bank-c admitted; round 1 committed."""
    state = _federation(pki)
    coordinator = _as(pki, "CoordinatorMSP")
    leaves = {pid: pki.leaf(msp, pid) for pid, msp in (("bank-a", "BankAMSP"), ("bank-b", "BankBMSP"),
                                                        ("bank-c", "BankCMSP"))}
    for pid, leaf in leaves.items():
        msp = f"Bank{pid[-1].upper()}MSP"
        assert state.call(*_as(pki, msp), "RegisterParticipant", *_registration(leaf, pid)).ok
        assert state.call(*coordinator, "AdmitParticipant", "fed-1", pid).ok
    rec = record(1, digest("g"), [accepted(leaves["bank-a"], "bank-a", "fed-1", 1, digest("g"))])
    assert state.call(*coordinator, "RecordRound", "fed-1", "1", rec.canonical().decode()).ok
    assert state.call(*coordinator, "CommitModel", "fed-1", "1", commit_for(rec, digest("m1")).canonical().decode()).ok
    assert state.call(*coordinator, "IssueRewards", "fed-1", "1", '{"bank-a":50}').ok
    return state, leaves


def test_transfer_finds_its_sender_with_one_unpaginated_range_read_before_its_puts(
    pki: TestPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, _ = _bank_with_tokens(pki)
    seen: list[tuple[str, ...]] = []

    class RecordingPeer(EmbeddedPeer):
        async def handle_get_state_by_range(  # type: ignore[override]
            self, collection: str, start_key: str, end_key: str, channel_id: str, tx_id: str, metadata: object = None
        ) -> object:
            seen.append(("range", start_key, end_key, repr(metadata)))
            return await super().handle_get_state_by_range(collection, start_key, end_key, channel_id, tx_id, metadata)

        async def handle_put_state(  # type: ignore[override]
            self, collection: str, key: str, value: bytes, channel_id: str, tx_id: str
        ) -> None:
            seen.append(("put", key))
            await super().handle_put_state(collection, key, value, channel_id, tx_id)

    monkeypatch.setattr(runtime_module, "EmbeddedPeer", RecordingPeer)
    outcome = state.call(*_as(pki, "BankAMSP"), "Transfer", "fed-1", "bank-b", "20")

    assert json.loads(outcome.payload) == {"amount": 20, "federation": "fed-1", "from": "bank-a", "to": "bank-b"}
    prefix = _ck("orgmember", "fed-1", "BankAMSP")
    # No query metadata, so no page size: the peer runs a plain range scan and allows writes after it.
    assert seen == [
        ("range", prefix, prefix + "\U0010ffff", "None"),
        ("put", _ck("balance", "fed-1", "bank-a")),
        ("put", _ck("balance", "fed-1", "bank-b")),
    ]


def test_transfer_counts_only_the_callers_org_in_this_federation(pki: TestPKI) -> None:
    state, leaves = _bank_with_tokens(pki)
    coordinator = _as(pki, "CoordinatorMSP")
    # Same MSP in a federation whose id extends "fed-1": the key's separator keeps them apart.
    assert state.call(*coordinator, "InitFederation", "fed-10", _policy()).ok
    _register_cas(state, pki, "fed-10", ("BankAMSP",))
    assert state.commit(_register(state, pki, "BankAMSP", "bank-a2", fed="fed-10")) == "VALID"

    outcome = state.call(*_as(pki, "BankAMSP"), "Transfer", "fed-1", "bank-c", "5")

    assert outcome.ok, outcome.message
    assert json.loads(outcome.payload)["from"] == "bank-a"


@pytest.mark.parametrize(("registered", "found"), [(0, 0), (2, 2), (3, 3)])
def test_transfer_is_refused_unless_the_callers_org_registered_exactly_one_participant(
    pki: TestPKI, registered: int, found: int
) -> None:
    state, _ = _bank_with_tokens(pki)
    coordinator = _as(pki, "CoordinatorMSP")
    state.call(*coordinator, "RevokeParticipant", "fed-1", "bank-c", "left")  # revoked still counts
    for i in range(registered - 1):
        assert state.commit(_register(state, pki, "BankCMSP", f"bank-c{i + 2}")) == "VALID"
    caller = "BankCMSP" if registered else "CoordinatorMSP"

    outcome = state.call(*_as(pki, caller), "Transfer", "fed-1", "bank-a", "1")

    assert outcome.message == (
        f"ACCESS_DENIED: Transfer needs exactly one participant registered by {caller} in federation fed-1; "
        f"found {found}"
    )


def test_a_transfer_conflicts_with_a_registration_by_its_own_org_committed_first(pki: TestPKI) -> None:
    state, _ = _bank_with_tokens(pki)
    transfer = state.endorse(*_as(pki, "BankAMSP"), "Transfer", "fed-1", "bank-b", "1")
    other_org = _register(state, pki, "BankBMSP", "bank-b2")
    own_org = _register(state, pki, "BankAMSP", "bank-a2")

    assert state.commit(other_org) == "VALID"
    assert state.validate(transfer) == "VALID"
    assert state.commit(own_org) == "VALID"
    # The sender found by the range is no longer the only one: the peer's re-run range differs.
    assert state.commit(transfer) == "PHANTOM_READ_CONFLICT"


def test_balances_conflict_only_when_two_calls_move_the_same_participants_tokens(pki: TestPKI) -> None:
    state, _ = _bank_with_tokens(pki)
    assert state.call(*_as(pki, "BankAMSP"), "Transfer", "fed-1", "bank-b", "10").ok

    a_to_c = state.endorse(*_as(pki, "BankAMSP"), "Transfer", "fed-1", "bank-c", "1")
    b_to_c = state.endorse(*_as(pki, "BankBMSP"), "Transfer", "fed-1", "bank-c", "1")
    registration = _register(state, pki, "BankCMSP", "bank-c2")
    revocation = state.endorse(*_as(pki, "CoordinatorMSP"), "RevokeParticipant", "fed-1", "bank-b", "left")

    assert all(e.outcome.ok for e in (a_to_c, b_to_c, registration, revocation))
    # Independent of the transfer from bank-a: both commit first and it is still valid.
    assert (state.commit(registration), state.commit(revocation), state.commit(a_to_c)) == ("VALID",) * 3
    # A second credit to bank-c read bank-c's balance before the first one changed it.
    assert [k for k in a_to_c.outcome.writes if b_to_c.touches(k)] == [_ck("balance", "fed-1", "bank-c")]
    assert state.commit(b_to_c) == "MVCC_READ_CONFLICT"


# --- aggregation weights ------------------------------------------------------------------


def test_weights_are_the_signed_counts_when_the_policy_sets_no_cap() -> None:
    assert weights.capped_weights({"a": 35, "b": 35, "c": 1_000_000}, None) == {"a": 35, "b": 35, "c": 1_000_000}


@pytest.mark.parametrize("cap_ppm", [500_000, 400_000, 360_000])
def test_a_capped_weight_keeps_every_share_within_the_cap_and_lowers_only_the_largest(cap_ppm: int) -> None:
    counts = {"a": 35, "b": 30, "c": 1_000_000}

    capped = weights.capped_weights(counts, cap_ppm)

    total = sum(capped.values())
    assert all(w * 1_000_000 <= cap_ppm * total for w in capped.values())
    assert (capped["a"], capped["b"]) == (35, 30) and capped["c"] < 1_000_000


def test_a_cap_no_split_can_meet_gives_every_participant_the_same_weight() -> None:
    assert weights.capped_weights({"a": 35, "b": 700}, 400_000) == {"a": 1, "b": 1}


def test_a_policy_stored_before_training_claims_reads_as_plain_fedavg(pki: TestPKI) -> None:
    from chaincode.errors import Invalid
    from chaincode.evidence import check_accepted_entry

    leaf = pki.leaf("BankAMSP", "bank-a")
    entry = schema.ENTRY(accepted(leaf, "bank-a", "fed", 1, digest("base")).model_dump(mode="json"), "entry")
    stored = {"max_num_examples": 1_000_000}  # no "training": written by an older contract
    check_accepted_entry(entry, "fed", 1, digest("base"), leaf.pem, stored)  # a v1 manifest: plain FedAvg
    with pytest.raises(Invalid, match="signed training algorithm 'fedavg' is not the policy's 'fedprox'"):
        check_accepted_entry(entry, "fed", 1, digest("base"), leaf.pem,
                             {**stored, "training": {"algorithm": "fedprox", "mu_ppm": 10_000}})
