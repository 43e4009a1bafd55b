"""Access control of every ``fedaudit`` write on the real Fabric network.

Each write is called, through ``FabricLedger``, by every identity that must not make it:
the contract refuses it with its exact ``ACCESS_DENIED`` message, mapped to
:class:`~ledger.errors.AccessDenied`, and nothing reaches the orderer. The same calls made
by the identities allowed to make them commit. Beyond the contract, the channel itself:
the coordinator's peer alone cannot endorse a valid transaction, and identities the
channel's MSPs do not accept (a certificate from a CA outside the channel, a signer that
does not hold the certificate's key, a certificate without a Fabric role) are refused by
the peer before any chaincode runs.

One federation serves the refusals of the module: none of them writes anything. It is
prepared so that each refused call would be valid but for its caller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ledger.errors import AccessDenied, DuplicateRecord, RecordNotFound, TransactionRejected
from ledger.fabric.backend import FabricLedger
from ledger.fabric.blocks import validation_code_name
from ledger.fabric.gateway import CommitError, connect_from_profile
from ledger.fabric.profile import ConnectionProfile
from ledger.identity import Credentials, signer_from_key
from ledger.protocol import Ledger
from ledger.records import FederationPolicy, Identity, TxReceipt
from tests.fixtures.ledgers import FabricLedgers, World, fabric_pki, fresh_federation_id, make_world, receipt_ok
from tests.fixtures.pki import OrgCA, TestPKI
from tests.fixtures.rounds import commit_for, declared

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

COORDINATOR = "CoordinatorMSP"
COORDINATOR_ONLY = ["AdmitParticipant", "RevokeParticipant", "RecordRound", "CommitModel", "IssueRewards"]
NOT_COORDINATOR = ["BankAMSP", "BankBMSP", "BankCMSP", "AuditorMSP"]


@pytest.fixture(scope="module")
def pki(fabric_profile: ConnectionProfile) -> TestPKI:
    """The network's org CAs and its organisations' user identities."""
    return fabric_pki(fabric_profile)


@pytest.fixture(scope="module")
def ledgers(fabric_profile: ConnectionProfile, pki: TestPKI) -> Iterator[FabricLedgers]:
    """One FabricLedger per organisation, once the channel can endorse."""
    opened = FabricLedgers(fabric_profile, pki)
    opened.wait_until_writable()
    yield opened
    opened.close()


def _prepared(ledgers: FabricLedgers, pki: TestPKI) -> World:
    """A federation in which every coordinator write is valid, whoever calls it.

    bank-a, bank-b and bank-c are active; round 1 is committed and not yet rewarded;
    round 2 is recorded and not committed; bank-d (BankCMSP) is pending and bank-r
    (BankCMSP) revoked.
    """
    world = make_world(ledgers, pki, federation=fresh_federation_id("access"), concurrent=True)
    fed = world.federation
    world.run_round(1)
    world.coordinator.record_round(fed, 2, world.record(2, ["bank-a", "bank-b"]))
    for pid in ("bank-d", "bank-r"):
        world.signers[pid] = pki.leaf("BankCMSP", pid)
        world.banks["bank-c"].register_participant(fed, pid, world.signers[pid].pem, {}, declared(world.signers[pid], pid, fed))
    world.coordinator.revoke_participant(fed, "bank-r", "left the federation")
    return world


@pytest.fixture(scope="module")
def world(ledgers: FabricLedgers, pki: TestPKI) -> World:
    """The module's federation (see :func:`_prepared`); the tests that use it write nothing."""
    return _prepared(ledgers, pki)


def _coordinator_calls(world: World) -> dict[str, Callable[[Ledger], TxReceipt]]:
    """Each coordinator write on a :func:`_prepared` federation, valid but for the caller."""
    fed = world.federation
    return {
        "AdmitParticipant": lambda led: led.admit_participant(fed, "bank-d"),
        "RevokeParticipant": lambda led: led.revoke_participant(fed, "bank-c", "audit finding"),
        "RecordRound": lambda led: led.record_round(fed, 3, world.record(3, base=world.model(1))),
        "CommitModel": lambda led: led.commit_model(fed, 2, commit_for(world.record(2, ["bank-a", "bank-b"]),
                                                                      world.model(2))),
        "IssueRewards": lambda led: led.issue_rewards(fed, 1, {"bank-a": 10}),
    }


def _height(world: World) -> int:
    """The channel's height on the coordinator's peer."""
    assert isinstance(world.coordinator, FabricLedger)
    return world.coordinator.network.get_chain_info().height


def _denied(world: World, call: Callable[[], object]) -> AccessDenied:
    """Make ``call``; it must be refused as AccessDenied with nothing ordered."""
    before = _height(world)
    with pytest.raises(AccessDenied) as denied:
        call()
    assert _height(world) == before, "a refused call reached the orderer"
    return denied.value


# --- refused by the contract ------------------------------------------------------------


@pytest.mark.parametrize("function", COORDINATOR_ONLY)
@pytest.mark.parametrize("caller", NOT_COORDINATOR)
def test_coordinator_writes_are_denied_to_every_institution_and_the_auditor(
    world: World, ledgers: FabricLedgers, function: str, caller: str
) -> None:
    call = _coordinator_calls(world)[function]

    denied = _denied(world, lambda: call(ledgers(world.pki.identity(caller))))

    assert str(denied) == (
        f"ACCESS_DENIED: {function} may only be called by the coordinator MSP CoordinatorMSP, not {caller}"
    )


def test_the_auditor_cannot_create_a_federation_it_audits(world: World, ledgers: FabricLedgers) -> None:
    auditor = ledgers(world.pki.identity("AuditorMSP"))

    denied = _denied(world, lambda: auditor.init_federation(
        fresh_federation_id("audited"), FederationPolicy(auditor_msps=["AuditorMSP"])))

    assert str(denied) == "ACCESS_DENIED: InitFederation may not be called by the auditor MSP AuditorMSP"


@pytest.mark.parametrize(
    ("caller", "message"),
    [
        (
            "CoordinatorMSP",
            (
                "RegisterParticipant may not be called by the coordinator MSP CoordinatorMSP: "
                "participants register through their own organisation"
            ),
        ),
        ("AuditorMSP", "RegisterParticipant may not be called by the auditor MSP AuditorMSP"),
    ],
    ids=["coordinator", "auditor"],
)
def test_the_coordinator_and_the_auditor_cannot_register_participants(
    world: World, ledgers: FabricLedgers, caller: str, message: str
) -> None:
    own = world.pki.leaf(caller, "someone")  # from the caller's own CA: only the role is wrong

    denied = _denied(world, lambda: ledgers(world.pki.identity(caller)).register_participant(
        world.federation, "someone", own.pem, {}, declared(own, "someone", world.federation)))

    assert str(denied) == f"ACCESS_DENIED: {message}"


@pytest.mark.parametrize("issued_by", ["another org's CA", "a foreign CA with the org CA's name"])
def test_an_institution_cannot_register_a_certificate_its_own_ca_did_not_issue(
    world: World, issued_by: str
) -> None:
    cert = world.pki.leaf("BankBMSP", "bank-x") if issued_by == "another org's CA" else world.pki.foreign("BankAMSP")

    denied = _denied(world, lambda: world.banks["bank-a"].register_participant(
        world.federation, "bank-x", cert.pem, {}, declared(cert, "bank-x", world.federation)))

    assert str(denied) == (
        "ACCESS_DENIED: participant certificate was not issued by the CA of the caller's organisation BankAMSP"
    )


@pytest.mark.parametrize(
    ("caller", "reason"),
    [
        (
            "CoordinatorMSP",
            "Transfer needs exactly one participant registered by CoordinatorMSP in federation {fed}; found 0",
        ),
        ("AuditorMSP", "Transfer may not be called by the auditor MSP AuditorMSP"),
        (
            "BankCMSP",  # bank-c, bank-d and bank-r: which one would pay is not the caller's to guess
            "Transfer needs exactly one participant registered by BankCMSP in federation {fed}; found 3",
        ),
    ],
    ids=["coordinator", "auditor", "an org with three participants"],
)
def test_only_an_org_with_exactly_one_participant_may_transfer_its_tokens(
    world: World, ledgers: FabricLedgers, caller: str, reason: str
) -> None:
    denied = _denied(world, lambda: ledgers(world.pki.identity(caller)).transfer(world.federation, "bank-a", 1))

    assert str(denied) == "ACCESS_DENIED: " + reason.format(fed=world.federation)


@pytest.mark.parametrize(("pid", "status"), [("bank-d", "pending"), ("bank-r", "revoked"), ("ghost", None)])
def test_a_record_accepting_a_participant_that_is_not_active_is_rejected(
    world: World, pid: str, status: str | None
) -> None:
    if pid not in world.signers:
        world.signers[pid] = world.pki.leaf("BankCMSP", pid)  # a key the ledger has never seen
    before = _height(world)

    with pytest.raises(TransactionRejected) as rejected:
        world.coordinator.record_round(world.federation, 3, world.record(3, ["bank-a", pid], base=world.model(1)))

    what = f"{status}, not active" if status else "not registered"
    assert str(rejected.value) == f"INVALID: accepted entry names participant {pid}, which is {what}"
    assert type(rejected.value) is TransactionRejected and _height(world) == before
    with pytest.raises(RecordNotFound):
        world.auditor.get_round(world.federation, 3)


# --- allowed ------------------------------------------------------------------------------


def test_every_write_commits_for_the_identity_allowed_to_make_it(ledgers: FabricLedgers, pki: TestPKI) -> None:
    world = _prepared(ledgers, pki)  # its own: these calls change it
    fed, calls = world.federation, _coordinator_calls(world)
    bank_b2 = pki.leaf("BankBMSP", "bank-b2")
    own_fed = fresh_federation_id("bank-b")

    # Any order in which each call is valid when it is made: rewards for the committed
    # round 1, then round 2's commit, which round 3's record (from model 1) would abandon.
    receipts = {
        "IssueRewards": calls["IssueRewards"](world.coordinator),
        "CommitModel": calls["CommitModel"](world.coordinator),
        "AdmitParticipant": calls["AdmitParticipant"](world.coordinator),
        "RevokeParticipant": calls["RevokeParticipant"](world.coordinator),
        "RecordRound": world.coordinator.record_round(fed, 3, world.record(3, ["bank-a", "bank-d"])),
        "Transfer": world.banks["bank-a"].transfer(fed, "bank-b", 4),
        "RegisterParticipant": world.banks["bank-b"].register_participant(fed, "bank-b2", bank_b2.pem, {}, declared(bank_b2, "bank-b2", fed)),
        "InitFederation": world.banks["bank-b"].init_federation(own_fed, FederationPolicy()),
    }

    assert all(receipt_ok(r) for r in receipts.values()), receipts
    assert len({r.tx_id for r in receipts.values()}) == len(receipts)
    reader = world.auditor
    assert reader.get_round(fed, 1).rewards == {"bank-a": 10}
    assert reader.get_round(fed, 2).commit_tx == receipts["CommitModel"]
    assert reader.get_round(fed, 3).record_tx == receipts["RecordRound"]
    assert [reader.participant(fed, p).status for p in ("bank-d", "bank-c")] == ["active", "revoked"]
    assert (reader.balance(fed, "bank-a"), reader.balance(fed, "bank-b")) == (6, 4)
    assert reader.participant(fed, "bank-b2").msp_id == "BankBMSP"
    assert reader.get_federation(own_fed).coordinator_msp == "BankBMSP"


def test_rewards_for_a_round_are_issued_once_only(ledgers: FabricLedgers, pki: TestPKI) -> None:
    world = _prepared(ledgers, pki)
    world.coordinator.issue_rewards(world.federation, 1, {"bank-a": 10})

    with pytest.raises(DuplicateRecord) as twice:
        world.coordinator.issue_rewards(world.federation, 1, {"bank-b": 10})

    assert str(twice.value) == f"DUPLICATE: rewards for round 1 of federation {world.federation} are already issued"
    assert [world.auditor.balance(world.federation, p) for p in ("bank-a", "bank-b")] == [10, 0]


# --- refused by the channel ---------------------------------------------------------------


def test_a_transaction_endorsed_by_the_coordinators_peer_alone_is_not_committed(
    world: World, fabric_profile: ConnectionProfile
) -> None:
    with connect_from_profile(fabric_profile, COORDINATOR) as gateway:
        network = gateway.get_network(fabric_profile.channel)
        contract = network.get_contract(fabric_profile.chaincode)
        with pytest.raises(CommitError) as failed:
            contract.submit("AdmitParticipant", world.federation, "bank-d", endorsing_orgs=[COORDINATOR])
        # Ordered into a block, flagged invalid there, and its write not applied: read
        # through the coordinator's peer, which reported the commit.
        flagged = network.get_transaction_by_id(failed.value.tx_id).validationCode

    assert failed.value.validation_code == "ENDORSEMENT_POLICY_FAILURE" and failed.value.block_number > 0
    assert validation_code_name(flagged) == "ENDORSEMENT_POLICY_FAILURE"
    assert world.coordinator.participant(world.federation, "bank-d").status == "pending"


def _forged(pki: TestPKI, kind: str) -> Credentials:
    """BankAMSP credentials the channel must not accept, of the given ``kind``."""
    real = pki.caller("BankAMSP")
    if kind == "a CA outside the channel":
        leaf = OrgCA("BankAMSP").issue("User1@banka.fedledger.local")
    elif kind == "a foreign CA with the org CA's name":
        leaf = pki.foreign("BankAMSP")
    elif kind == "the org's CA but no Fabric role":
        leaf = pki.cas["BankAMSP"].issue("norole@banka.fedledger.local", role=None)
    elif kind == "a signer without the certificate's key":
        stranger = ec.generate_private_key(ec.SECP256R1())
        return Credentials(Identity(msp_id="BankAMSP", cert_pem=pki.identity("BankAMSP").cert_pem),
                           signer_from_key(stranger))
    else:
        raise ValueError(kind)
    assert leaf.cert != real.cert
    return Credentials(Identity(msp_id="BankAMSP", cert_pem=leaf.pem), signer_from_key(leaf.key))


UNKNOWN = (
    "ACCESS_DENIED: the channel does not accept the caller's certificate as an identity of BankAMSP: it was not "
    "issued by a CA of BankAMSP, it carries no client or admin role, or BankAMSP is not a member of the channel "
    "(peer: access denied: channel [{channel}] creator org unknown, creator is malformed)"
)
REFUSED = (
    "ACCESS_DENIED: the channel refused the caller's identity of BankAMSP: the call was not signed with its "
    "certificate's key, or the certificate is no longer valid (expired or revoked) "
    "(peer: access denied: channel [{channel}] creator org [BankAMSP])"
)
FORGED = {
    "a CA outside the channel": UNKNOWN,
    "a foreign CA with the org CA's name": UNKNOWN,
    "the org's CA but no Fabric role": UNKNOWN,
    "a signer without the certificate's key": REFUSED,
}


@pytest.mark.parametrize("kind", FORGED)
def test_an_identity_the_channel_does_not_accept_is_refused_before_any_chaincode_runs(
    world: World, fabric_profile: ConnectionProfile, kind: str
) -> None:
    expected = FORGED[kind].format(channel=fabric_profile.channel)
    leaf = world.pki.leaf("BankAMSP", "forged")
    with FabricLedger(fabric_profile, _forged(world.pki, kind)) as forged:
        with pytest.raises(AccessDenied) as read:
            forged.get_federation(world.federation)
        written = _denied(world, lambda: forged.register_participant(world.federation, "forged", leaf.pem, {}, declared(leaf, "forged", world.federation)))

    assert str(read.value) == expected and str(written) == expected
    assert "\n" not in expected
    with pytest.raises(RecordNotFound):
        world.coordinator.participant(world.federation, "forged")


def test_credentials_without_a_signer_are_refused_before_anything_is_sent(
    world: World, fabric_profile: ConnectionProfile
) -> None:
    with pytest.raises(AccessDenied) as refused:
        FabricLedger(fabric_profile, Credentials(world.pki.identity("BankAMSP")))

    assert str(refused.value) == (
        "ACCESS_DENIED: BankAMSP has no signing key: every Fabric call is signed by its caller"
    )
