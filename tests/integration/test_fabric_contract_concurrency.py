"""The ``fedaudit`` contract under concurrency on a real Fabric network.

Transactions ordered into the same block were all endorsed against the same committed
state, so a shared key between them shows up as ``MVCC_READ_CONFLICT``. These tests submit
several transactions back to back, keep only attempts in which at least two of them
share a block (otherwise nothing concurrent happened), and check the validation codes:

* registrations by one organisation write disjoint keys: all are VALID;
* two registrations of one participant id must conflict: the network really does catch
  a shared key, so the VALID results above mean something;
* a Transfer that range-reads its sender and then writes commits, and its writes are
  really applied (a put after a *paginated* query would be dropped without an error).

Runs on the session's real network (``fabric_profile``): a coordinator organisation and
participant organisations whose CA keys are in the profile (to issue participant
certificates).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator, Sequence

import pytest

from chaincode.fedaudit import CONTRACT_NAME
from ledger.fabric.gateway import Contract, Gateway, SubmitResult, connect_from_profile
from ledger.fabric.gateway_errors import CommitError, EndorseError
from ledger.fabric.profile import ConnectionProfile, OrgProfile
from ledger.pki import (
    CertificateAuthority,
    certificate_pem,
    generate_key,
    load_certificate,
    load_private_key,
    make_csr,
    sign_csr,
)
from ledger.declarations import declare_examples
from ledger.records import FederationPolicy
from tests.fixtures.pki import Leaf
from tests.fixtures.rounds import accepted, commit_for, digest, record

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

COORDINATOR = "CoordinatorMSP"
ATTEMPTS = 3
Outcome = SubmitResult | CommitError


@pytest.fixture
def profile(fabric_profile: ConnectionProfile) -> ConnectionProfile:
    """The session network's connection profile."""
    return fabric_profile


def _coordinator(profile: ConnectionProfile) -> str:
    return COORDINATOR if COORDINATOR in profile.orgs else next(iter(profile.orgs))


def _participant_orgs(profile: ConnectionProfile) -> list[OrgProfile]:
    """Organisations that can register participants here: not the coordinator, CA key at hand."""
    coordinator = _coordinator(profile)
    return [
        org
        for msp, org in profile.orgs.items()
        if msp != coordinator and org.ca.key is not None and "user" in org.identities
    ]


@pytest.fixture
def gateways(profile: ConnectionProfile) -> Iterator[dict[str, Contract]]:
    """One ``fedaudit`` contract per organisation, each called as that org's user."""
    opened: list[Gateway] = []
    contracts = {}
    for msp in profile.orgs:
        if "user" not in profile.orgs[msp].identities:
            continue
        gateway = connect_from_profile(profile, msp)
        opened.append(gateway)
        contracts[msp] = gateway.get_network(profile.channel).get_contract(profile.chaincode, CONTRACT_NAME)
    yield contracts
    for gateway in opened:
        gateway.close()


@pytest.fixture
def fed(profile: ConnectionProfile, gateways: dict[str, Contract]) -> str:
    """A fresh federation run by the coordinator organisation."""
    fed_id = f"cc-{secrets.token_hex(4)}"
    policy = FederationPolicy(auditor_msps=[], reward_budget=100, model=digest("genesis"))
    gateways[_coordinator(profile)].submit("InitFederation", fed_id, policy.canonical().decode())
    for org in _participant_orgs(profile):
        gateways[org.msp_id].submit(*_register_ca_call(fed_id, org))
    return fed_id


def _leaf(org: OrgProfile, pid: str) -> Leaf:
    """A participant key and its certificate, issued by ``org``'s CA."""
    assert org.ca.key is not None
    ca = CertificateAuthority(key=load_private_key(org.ca.key), cert=load_certificate(org.ca.cert))
    key = generate_key()
    return Leaf(key=key, cert=sign_csr(ca, make_csr(key, pid, ca.org)))


def _register_call(fed: str, pid: str, leaf: Leaf) -> tuple[str, ...]:
    signed = declare_examples(fed, pid, 1000, leaf.key)
    return ("RegisterParticipant", fed, pid, certificate_pem(leaf.cert), "{}", signed.statement, signed.signature)


def _register_ca_call(fed: str, org: OrgProfile) -> tuple[str, ...]:
    return ("RegisterOrgCA", fed, org.ca.cert.read_text())


def _submit_together(contract: Contract, calls: Sequence[tuple[str, ...]]) -> list[Outcome]:
    """Submit every call before waiting for any commit; each one's result or CommitError."""
    submitted = [contract.submit_async(function, *args) for function, *args in calls]
    outcomes: list[Outcome] = []
    for transaction in submitted:
        try:
            outcomes.append(transaction.wait())
        except CommitError as exc:
            outcomes.append(exc)
    return outcomes


def _concurrent(outcomes: Sequence[Outcome]) -> bool:
    blocks = [o.block_number for o in outcomes]
    return len(set(blocks)) < len(blocks)


def test_concurrent_registrations_by_one_org_all_commit_valid(
    profile: ConnectionProfile, gateways: dict[str, Contract], fed: str
) -> None:
    orgs = _participant_orgs(profile)
    if not orgs:
        pytest.skip("the profile has no participant organisation with its CA key")
    org = orgs[0]
    contract = gateways[org.msp_id]
    registered: list[str] = []

    for attempt in range(ATTEMPTS):
        pids = [f"p{attempt}-{i}" for i in range(4)]
        outcomes = _submit_together(contract, [_register_call(fed, pid, _leaf(org, pid)) for pid in pids])
        assert [getattr(o, "validation_code", "VALID") for o in outcomes] == ["VALID"] * len(pids)
        registered += pids
        if _concurrent(outcomes):
            break
    else:
        pytest.fail(f"no two registrations were ordered into one block in {ATTEMPTS} attempts")

    listed = json.loads(contract.evaluate("ListParticipants", fed))
    assert sorted(p["id"] for p in listed) == sorted(registered)
    with pytest.raises(EndorseError) as refused:
        contract.submit("Transfer", fed, registered[0], "1")
    assert refused.value.chaincode_message == (
        f"ACCESS_DENIED: Transfer needs exactly one participant registered by {org.msp_id} "
        f"in federation {fed}; found {len(registered)}"
    )


def test_concurrent_registrations_of_one_id_conflict(
    profile: ConnectionProfile, gateways: dict[str, Contract], fed: str
) -> None:
    orgs = _participant_orgs(profile)
    if not orgs:
        pytest.skip("the profile has no participant organisation with its CA key")
    org = orgs[0]

    for attempt in range(ATTEMPTS):
        pid = f"twice-{attempt}"
        calls = [_register_call(fed, pid, _leaf(org, pid)) for _ in range(2)]
        try:
            outcomes = _submit_together(gateways[org.msp_id], calls)
        except EndorseError as exc:  # the second was endorsed after the first committed
            assert (exc.chaincode_message or "").startswith("DUPLICATE: ")
            continue
        if _concurrent(outcomes):
            break
    else:
        pytest.fail(f"no two registrations of one id were ordered into one block in {ATTEMPTS} attempts")

    assert isinstance(outcomes[0], SubmitResult)
    assert isinstance(outcomes[1], CommitError) and outcomes[1].validation_code == "MVCC_READ_CONFLICT"


def test_a_transfer_that_range_reads_its_sender_commits_its_writes(
    profile: ConnectionProfile, gateways: dict[str, Contract], fed: str
) -> None:
    orgs = _participant_orgs(profile)
    if len(orgs) < 2:
        pytest.skip("a transfer needs two participant organisations with their CA keys")
    sender_org, recipient_org = orgs[:2]
    coordinator = gateways[_coordinator(profile)]
    leaf = _leaf(sender_org, "sender")
    gateways[sender_org.msp_id].submit(*_register_call(fed, "sender", leaf))
    gateways[recipient_org.msp_id].submit(*_register_call(fed, "recipient", _leaf(recipient_org, "recipient")))
    for pid in ("sender", "recipient"):
        coordinator.submit("AdmitParticipant", fed, pid)
    rec = record(1, digest("genesis"), [accepted(leaf, "sender", fed, 1, digest("genesis"))])
    coordinator.submit("RecordRound", fed, "1", rec.canonical().decode())
    coordinator.submit("CommitModel", fed, "1", commit_for(rec, digest("model-1")).canonical().decode())
    coordinator.submit("IssueRewards", fed, "1", '{"sender":5}')

    result = gateways[sender_org.msp_id].submit("Transfer", fed, "recipient", "2")

    assert json.loads(result.result)["from"] == "sender"
    balances = {
        pid: json.loads(coordinator.evaluate("BalanceOf", fed, pid))["balance"] for pid in ("sender", "recipient")
    }
    assert balances == {"sender": 3, "recipient": 2}
