"""The ``fedaudit`` contract on its own: registration, strict inputs, determinism, stored shapes.

The contract runs through the real fabric-chaincode-python dispatcher over an in-memory
state (no SQLite), with raw string arguments exactly as Fabric would pass them.
"""

from __future__ import annotations

import base64
import json
import time
from collections import defaultdict

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from chaincode import canonical, schema
from chaincode.fedaudit import CONTRACT_NAME, QUERIES, TRANSACTIONS, FedAudit
from chaincode.shim_fixes import Contract, ContractChaincode, TransactionContext, check_context_annotations
from ledger.embedded.runtime import ContractRuntime, Outcome, new_tx_id, serialize_identity
from ledger.formats import P256_ORDER, canonical_json
from ledger.records import REASONS, Federation, Participant, RoundRecord
from tests.fixtures.pki import Leaf, TestPKI, default_pki
from tests.fixtures.rounds import accepted, digest, record

T0 = (time.time_ns() // 10**9) * 1000  # certificates are valid around "now"


class MemoryState:
    """World state + history in memory: the contract's StateReader without SQLite."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.changes: dict[str, list[tuple[str, int, bytes, bool]]] = defaultdict(list)
        self.clock = T0
        self.nonce = 0

    def get(self, key: str) -> bytes | None:
        return self.values.get(key)

    def range(self, start: str, end: str) -> list[tuple[str, bytes]]:
        lo, hi = start.encode(), end.encode()
        keys = sorted(self.values, key=str.encode)
        return [(k, self.values[k]) for k in keys if lo <= k.encode() and (not end or k.encode() < hi)]

    def history(self, key: str) -> list[tuple[str, int, bytes, bool]]:
        return list(reversed(self.changes[key]))

    def call(self, msp: str, cert: str, function: str, *args: str, read_only: bool = False) -> Outcome:
        self.clock += 1000
        self.nonce += 1
        creator = serialize_identity(msp, cert)
        nonce = self.nonce.to_bytes(24, "big")
        tx_id = new_tx_id(nonce, creator)
        outcome = ContractRuntime.shared().execute(
            self, function, list(args), creator=creator, nonce=nonce, tx_id=tx_id,
            timestamp_ms=self.clock, read_only=read_only,
        )
        if outcome.ok and not read_only:
            for key, value in outcome.writes.items():
                if value is None:
                    self.values.pop(key, None)
                else:
                    self.values[key] = value
                self.changes[key].append((tx_id, self.clock, value or b"", value is None))
        return outcome


@pytest.fixture
def pki() -> TestPKI:
    return default_pki()


def _as(pki: TestPKI, msp: str) -> tuple[str, str]:
    identity = pki.identity(msp)
    return identity.msp_id, identity.cert_pem


def _policy(**overrides: object) -> str:
    return canonical_json({"auditor_msps": ["AuditorMSP"], **overrides}).decode()


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


# --- determinism ------------------------------------------------------------------------


def _scripted_run(pki: TestPKI, leaf: Leaf) -> list[tuple[dict[str, bytes | None], tuple[str, bytes] | None, bytes]]:
    state = MemoryState()
    steps = [
        (_as(pki, "CoordinatorMSP"), "InitFederation", ("fed-1", _policy())),
        (_as(pki, "BankAMSP"), "RegisterParticipant", ("fed-1", "bank-a", leaf.pem, '{"b":2,"a":1}')),
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

    first, second = _scripted_run(pki, leaf), _scripted_run(pki, leaf)

    assert first == second
    writes, event, payload = first[1]
    participant = writes["\x00participant\x00fed-1\x00bank-a\x00"]
    assert Participant.parse(participant).canonical() == participant == payload
    assert json.loads(participant)["registered_ms"] == T0 + 2000  # the tx timestamp, not the clock
    assert event[0] == "ParticipantRegistered" and b"BEGIN CERTIFICATE" not in event[1]


# --- queries and identities -------------------------------------------------------------


def test_a_write_function_evaluated_as_a_query_is_refused(pki: TestPKI) -> None:
    outcome = MemoryState().call(*_as(pki, "CoordinatorMSP"), "InitFederation", "fed-1", "{}", read_only=True)

    assert not outcome.ok
    assert outcome.message == "INVALID: put_state is not allowed in a query (evaluate) transaction"


def test_a_caller_with_an_msp_but_no_certificate_cannot_register(pki: TestPKI) -> None:
    state = MemoryState()
    state.call(*_as(pki, "CoordinatorMSP"), "InitFederation", "fed-1", _policy())

    outcome = state.call("BankAMSP", "", "RegisterParticipant", "fed-1", "bank-a", pki.leaf("BankAMSP", "a").pem, "{}")

    assert outcome.message == "ACCESS_DENIED: the caller of BankAMSP has no X.509 certificate"


# --- evidence on accepted entries -------------------------------------------------------


def _federation_with_active_bank(pki: TestPKI) -> tuple[MemoryState, object]:
    state = MemoryState()
    leaf = pki.leaf("BankAMSP", "bank-a")
    state.call(*_as(pki, "CoordinatorMSP"), "InitFederation", "fed-1", _policy())
    state.call(*_as(pki, "BankAMSP"), "RegisterParticipant", "fed-1", "bank-a", leaf.pem, "{}")
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
