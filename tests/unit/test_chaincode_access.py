"""Access control of every ``fedaudit`` write: who may not call it, who may, and no identity at all.

Runs through the Ledger protocol on every backend, so the exact messages (stable code
prefix + reason) are what an operator would see.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from chaincode.fedaudit import QUERIES, TRANSACTIONS
from cryptography import x509

from ledger.declarations import SignedDeclaration
from ledger.errors import AccessDenied, DuplicateRecord, RecordNotFound, TransactionRejected
from ledger.formats import sign
from ledger.protocol import Ledger
from ledger.records import FederationPolicy, Identity
from tests.fixtures.ledgers import FED, World, ledger_factory, pki, receipt_ok, world  # noqa: F401
from tests.fixtures.pki import OrgCA
from tests.fixtures.rounds import commit_for, declared, evaluated, evaluation

COORDINATOR_ONLY = ["AdmitParticipant", "RevokeParticipant", "RecordRound", "CommitModel", "IssueRewards",
                    "RecordEvaluation"]
NOT_COORDINATOR = ["BankAMSP", "BankBMSP", "AuditorMSP"]


def _coordinator_call(world: World, function: str) -> Callable[[Ledger], object]:
    """The call ``function`` makes, valid in every respect except (perhaps) the caller."""
    rec = world.record(1)
    calls: dict[str, Callable[[Ledger], object]] = {
        "AdmitParticipant": lambda led: led.admit_participant(FED, "bank-d"),
        "RevokeParticipant": lambda led: led.revoke_participant(FED, "bank-a", "audit finding"),
        "RecordRound": lambda led: led.record_round(FED, 1, rec),
        "CommitModel": lambda led: led.commit_model(FED, 1, commit_for(rec, world.model(1))),
        "IssueRewards": lambda led: led.issue_rewards(FED, 1, {"bank-a": 1}),
        "RecordEvaluation": lambda led: led.record_evaluation(FED, 1, _evaluation(world)),
    }
    if function in ("CommitModel", "IssueRewards", "RecordEvaluation"):
        world.coordinator.record_round(FED, 1, rec)
    if function in ("IssueRewards", "RecordEvaluation"):
        world.coordinator.commit_model(FED, 1, commit_for(rec, world.model(1)))
    if function == "AdmitParticipant":
        bank_d = world.pki.leaf("BankCMSP", "bank-d")
        world.banks["bank-c"].register_participant(FED, "bank-d", bank_d.pem, {}, declared(bank_d, "bank-d", FED))
    return calls[function]


def _evaluation(world: World):
    return evaluation(1, world.model(1), [evaluated(world.signers["bank-a"], "bank-a", FED, 1, world.model(1))])


@pytest.mark.parametrize("function", COORDINATOR_ONLY)
@pytest.mark.parametrize("caller", NOT_COORDINATOR)
def test_coordinator_functions_are_denied_to_every_other_msp(
    world: World, ledger_factory, function: str, caller: str  # noqa: F811
) -> None:
    call = _coordinator_call(world, function)

    with pytest.raises(AccessDenied) as denied:
        call(ledger_factory(world.pki.identity(caller)))

    assert str(denied.value) == (
        f"ACCESS_DENIED: {function} may only be called by the coordinator MSP CoordinatorMSP, not {caller}"
    )


@pytest.mark.parametrize("function", COORDINATOR_ONLY)
def test_coordinator_functions_succeed_for_the_coordinator(world: World, function: str) -> None:
    call = _coordinator_call(world, function)

    assert receipt_ok(call(world.coordinator))


def test_coordinator_issuing_rewards_twice_is_a_duplicate(world: World) -> None:
    world.run_round(1)
    world.coordinator.issue_rewards(FED, 1, {"bank-a": 1})

    with pytest.raises(DuplicateRecord, match=r"^DUPLICATE: "):
        world.coordinator.issue_rewards(FED, 1, {"bank-b": 1})


# --- InitFederation -------------------------------------------------------------------


def test_an_auditor_msp_cannot_create_the_federation_it_audits(ledger_factory, pki) -> None:  # noqa: F811
    auditor = ledger_factory(pki.identity("AuditorMSP"))

    with pytest.raises(AccessDenied) as denied:
        auditor.init_federation(FED, FederationPolicy(auditor_msps=["AuditorMSP"]))

    assert str(denied.value) == "ACCESS_DENIED: InitFederation may not be called by the auditor MSP AuditorMSP"


def test_any_other_msp_may_create_a_federation_and_becomes_its_coordinator(ledger_factory, pki) -> None:  # noqa: F811
    bank = ledger_factory(pki.identity("BankBMSP"))

    assert receipt_ok(bank.init_federation("bank-b-fed", FederationPolicy(auditor_msps=["AuditorMSP"])))
    assert bank.get_federation("bank-b-fed").coordinator_msp == "BankBMSP"


# --- RegisterParticipant --------------------------------------------------------------


def test_an_institution_registers_its_own_participant(world: World) -> None:
    leaf = world.pki.leaf("BankBMSP", "bank-b2")

    receipt = world.banks["bank-b"].register_participant(FED, "bank-b2", leaf.pem, {}, declared(leaf, "bank-b2", FED))

    assert receipt_ok(receipt)
    assert world.auditor.participant(FED, "bank-b2").msp_id == "BankBMSP"


@pytest.mark.parametrize(
    ("caller", "message"),
    [
        ("CoordinatorMSP", "RegisterParticipant may not be called by the coordinator MSP CoordinatorMSP"),
        ("AuditorMSP", "RegisterParticipant may not be called by the auditor MSP AuditorMSP"),
    ],
)
def test_coordinator_and_auditor_cannot_register_participants(
    world: World, ledger_factory, caller: str, message: str  # noqa: F811
) -> None:
    leaf = world.pki.leaf(caller, "someone")

    with pytest.raises(AccessDenied, match=rf"^ACCESS_DENIED: {message}"):
        ledger_factory(world.pki.identity(caller)).register_participant(
            FED, "someone", leaf.pem, {}, declared(leaf, "someone", FED)
        )


def test_a_public_key_already_registered_cannot_be_registered_again_by_any_org(world: World) -> None:
    # BankB's CA certifies bank-a's key (public on the ledger) under a new participant id:
    # that would let bank-b's "bank-z" own bank-a's node at the transport.
    stolen = world.pki.cas["BankBMSP"].issue("bank-z", key=world.signers["bank-a"].key)

    with pytest.raises(TransactionRejected, match=r"^INVALID: the public key of this certificate is already "
                                                  r"registered for participant bank-a in federation fed-1"):
        world.banks["bank-b"].register_participant(FED, "bank-z", stolen.pem, {}, declared(stolen, "bank-z", FED))
    world.coordinator.revoke_participant(FED, "bank-a", "left")
    with pytest.raises(TransactionRejected, match="already registered for participant bank-a"):
        world.banks["bank-b"].register_participant(FED, "bank-z", stolen.pem, {}, declared(stolen, "bank-z", FED))


def test_an_institution_cannot_register_a_certificate_of_another_org(world: World) -> None:
    bank_b_cert = world.pki.leaf("BankBMSP", "bank-x")

    with pytest.raises(AccessDenied) as denied:
        world.banks["bank-a"].register_participant(
            FED, "bank-x", bank_b_cert.pem, {}, declared(bank_b_cert, "bank-x", FED)
        )

    assert str(denied.value) == (
        "ACCESS_DENIED: participant certificate was not issued by the CA of the caller's organisation BankAMSP"
    )


def test_a_certificate_from_a_foreign_ca_with_the_same_name_is_denied(world: World) -> None:
    foreign = world.pki.foreign("BankAMSP")
    assert foreign.cert.issuer == world.pki.cas["BankAMSP"].cert.subject

    with pytest.raises(AccessDenied, match=r"^ACCESS_DENIED: participant certificate was not issued by the CA"):
        world.banks["bank-a"].register_participant(FED, "bank-x", foreign.pem, {}, declared(foreign, "bank-x", FED))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("p384", "participant certificate key must be ECDSA P-256"),
        ("expired", "participant certificate is not valid at the transaction time"),
        ("not_yet_valid", "participant certificate is not valid at the transaction time"),
        ("ca_cert", "participant certificate is a CA certificate"),
    ],
)
def test_an_unusable_certificate_is_rejected(world: World, make: str, message: str) -> None:
    leaf = getattr(world.pki, make)("BankAMSP")

    with pytest.raises(TransactionRejected, match=rf"^INVALID: {message}"):
        # Signed by another key: the certificate is refused before the declaration is read.
        world.banks["bank-a"].register_participant(
            FED, "bank-x", leaf.pem, {}, declared(world.signers["bank-a"], "bank-x", FED)
        )


@pytest.mark.parametrize(
    "pem", ["not a certificate", "", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]
)
def test_garbage_in_place_of_a_certificate_is_rejected(world: World, pem: str) -> None:
    with pytest.raises(TransactionRejected, match=r"^INVALID: participant certificate"):
        world.banks["bank-a"].register_participant(FED, "bank-x", pem, {}, declared(world.signers["bank-a"], "bank-x", FED))


def test_two_certificates_in_one_pem_are_rejected(world: World) -> None:
    two = world.pki.leaf("BankAMSP", "one").pem + world.pki.leaf("BankAMSP", "two").pem

    with pytest.raises(TransactionRejected, match=r"^INVALID: participant certificate must hold exactly one"):
        world.banks["bank-a"].register_participant(FED, "bank-x", two, {}, declared(world.signers["bank-a"], "bank-x", FED))


# --- org CAs: the CA check is a signature check ----------------------------------------


def test_a_certificate_with_the_org_cas_name_and_key_id_but_another_signature_is_denied(world: World) -> None:
    # The forged certificate copies the issuer name and authority key id of BankA's CA
    # exactly; only its signature (by another key) gives it away.
    forged = world.pki.forged("BankAMSP")
    ca = world.pki.cas["BankAMSP"]
    assert forged.cert.issuer == ca.cert.subject
    assert forged.cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == ca.key_id

    with pytest.raises(AccessDenied) as denied:
        world.banks["bank-a"].register_participant(FED, "bank-x", forged.pem, {}, declared(forged, "bank-x", FED))

    assert str(denied.value) == (
        "ACCESS_DENIED: participant certificate was not issued by the CA of the caller's organisation BankAMSP"
    )
    with pytest.raises(RecordNotFound):
        world.auditor.participant(FED, "bank-x")


def test_an_org_cannot_register_participants_before_it_registers_its_ca(ledger_factory, pki) -> None:  # noqa: F811
    ledger_factory(pki.identity("CoordinatorMSP")).init_federation(FED, FederationPolicy())
    bank_a = ledger_factory(pki.identity("BankAMSP"))
    leaf = pki.leaf("BankAMSP", "bank-a")

    with pytest.raises(AccessDenied, match=r"^ACCESS_DENIED: BankAMSP has registered no CA certificate in "
                                           r"federation fed-1: RegisterOrgCA first$"):
        bank_a.register_participant(FED, "bank-a", leaf.pem, {}, declared(leaf, "bank-a", FED))
    bank_a.register_org_ca(FED, pki.cas["BankAMSP"].pem)
    assert receipt_ok(bank_a.register_participant(FED, "bank-a", leaf.pem, {}, declared(leaf, "bank-a", FED)))


@pytest.mark.parametrize("which", ["another org's CA", "a CA that copies the org CA's name"])
def test_an_org_can_register_only_the_ca_that_signed_its_own_certificate(
    ledger_factory, pki, which: str  # noqa: F811
) -> None:
    ledger_factory(pki.identity("CoordinatorMSP")).init_federation(FED, FederationPolicy())
    ca = pki.cas["BankBMSP"] if which == "another org's CA" else OrgCA("BankAMSP", subject=pki.cas["BankAMSP"].name)

    with pytest.raises(AccessDenied, match=r"^ACCESS_DENIED: the caller's certificate of BankAMSP was not issued "
                                           r"\(signed\) by this org CA certificate$"):
        ledger_factory(pki.identity("BankAMSP")).register_org_ca(FED, ca.pem)
    with pytest.raises(RecordNotFound):
        ledger_factory(pki.identity("AuditorMSP")).org_ca(FED, "BankAMSP")


def test_an_org_registers_its_ca_once_and_anyone_reads_it(world: World) -> None:
    stored = world.auditor.org_ca(FED, "BankAMSP")

    assert (stored.msp_id, stored.ca_cert_pem, stored.federation) == ("BankAMSP", world.pki.cas["BankAMSP"].pem, FED)
    assert [c.msp_id for c in world.auditor.org_cas(FED)] == ["BankAMSP", "BankBMSP", "BankCMSP"]
    with pytest.raises(DuplicateRecord, match=r"^DUPLICATE: the CA of BankAMSP is already registered in federation"):
        world.banks["bank-a"].register_org_ca(FED, world.pki.cas["BankAMSP"].pem)


@pytest.mark.parametrize(
    ("caller", "message"),
    [
        ("CoordinatorMSP", "RegisterOrgCA may not be called by the coordinator MSP CoordinatorMSP"),
        ("AuditorMSP", "RegisterOrgCA may not be called by the auditor MSP AuditorMSP"),
    ],
)
def test_coordinator_and_auditor_cannot_register_an_org_ca(world: World, ledger_factory, caller: str,  # noqa: F811
                                                            message: str) -> None:
    with pytest.raises(AccessDenied, match=rf"^ACCESS_DENIED: {message}"):
        ledger_factory(world.pki.identity(caller)).register_org_ca(FED, world.pki.cas[caller].pem)


def test_a_leaf_certificate_cannot_be_registered_as_an_org_ca(ledger_factory, pki) -> None:  # noqa: F811
    ledger_factory(pki.identity("CoordinatorMSP")).init_federation(FED, FederationPolicy())

    with pytest.raises(TransactionRejected, match=r"^INVALID: org CA certificate is not a CA certificate"):
        ledger_factory(pki.identity("BankAMSP")).register_org_ca(FED, pki.caller("BankAMSP").pem)


def test_a_caller_whose_certificate_the_registered_ca_did_not_sign_cannot_register(world: World,
                                                                                   ledger_factory) -> None:  # noqa: F811
    # An identity claiming BankAMSP, from a CA with the same name: the embedded ledger takes any
    # identity, so the contract itself must tie the caller to the org's registered CA.
    other = OrgCA("BankAMSP", subject=world.pki.cas["BankAMSP"].name).issue("admin@bankamsp")
    impostor = ledger_factory(Identity(msp_id="BankAMSP", cert_pem=other.pem))
    leaf = world.pki.leaf("BankAMSP", "bank-x")

    with pytest.raises(AccessDenied, match=r"^ACCESS_DENIED: the caller's certificate was not issued by the "
                                           r"registered CA of its organisation BankAMSP$"):
        impostor.register_participant(FED, "bank-x", leaf.pem, {}, declared(leaf, "bank-x", FED))


# --- declared dataset size --------------------------------------------------------------


def test_a_registration_records_the_dataset_size_the_participant_signed(world: World) -> None:
    leaf = world.pki.leaf("BankAMSP", "bank-a2")

    world.banks["bank-a"].register_participant(FED, "bank-a2", leaf.pem, {}, declared(leaf, "bank-a2", FED, 35))

    stored = world.auditor.participant(FED, "bank-a2")
    assert stored.declared_examples == 35
    declaration = SignedDeclaration(statement=stored.declaration, signature=stored.declaration_signature)
    declaration.verify(stored.cert_pem)
    assert json.loads(stored.declaration) == {"declared_examples": 35, "federation": FED, "kind": "declaration",
                                              "participant": "bank-a2", "v": 1}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("other key", "declaration: signature does not verify with the participant certificate"),
        ("other participant", "declaration participant 'bank-a' does not match 'bank-a2'"),
        ("other federation", "declaration federation 'fed-9' does not match 'fed-1'"),
        ("over the policy", "declaration declared_examples 1000001 must be an integer from 1 to 1000000"),
        ("not canonical", "declaration is not in canonical form"),
    ],
)
def test_a_declaration_not_signed_for_this_registration_is_refused(world: World, make: str, message: str) -> None:
    leaf = world.pki.leaf("BankAMSP", "bank-a2")
    signed = {
        "other key": lambda: declared(world.signers["bank-a"], "bank-a2", FED),
        "other participant": lambda: declared(leaf, "bank-a", FED),
        "other federation": lambda: declared(leaf, "bank-a2", "fed-9"),
        "over the policy": lambda: declared(leaf, "bank-a2", FED, 1_000_001),
        "not canonical": lambda: _spaced(declared(leaf, "bank-a2", FED), leaf),
    }[make]()

    with pytest.raises(TransactionRejected) as refused:
        world.banks["bank-a"].register_participant(FED, "bank-a2", leaf.pem, {}, signed)

    assert str(refused.value) == f"INVALID: {message}"
    with pytest.raises(RecordNotFound):
        world.auditor.participant(FED, "bank-a2")


def _spaced(signed: SignedDeclaration, leaf) -> SignedDeclaration:
    """The same statement with a space after each comma, properly signed (but not canonical)."""
    text = signed.statement.replace(",", ", ")
    return SignedDeclaration(statement=text, signature=sign(text.encode(), leaf.key))


# --- Transfer -------------------------------------------------------------------------


def test_a_transfer_always_debits_the_callers_own_participant(world: World) -> None:
    world.run_round(1)
    world.coordinator.issue_rewards(FED, 1, {"bank-a": 50})

    # BankBMSP cannot reach bank-a's tokens: its transfer debits bank-b, which has none.
    with pytest.raises(TransactionRejected, match=r"^INVALID: insufficient balance: bank-b has 0"):
        world.banks["bank-b"].transfer(FED, "bank-c", 1)
    assert world.auditor.balance(FED, "bank-a") == 50


@pytest.mark.parametrize(
    ("caller", "message"),
    [
        (
            "CoordinatorMSP",
            "Transfer needs exactly one participant registered by CoordinatorMSP in federation fed-1; found 0",
        ),
        ("AuditorMSP", "Transfer may not be called by the auditor MSP AuditorMSP"),
    ],
)
def test_coordinator_and_auditor_have_no_tokens_to_transfer(
    world: World, ledger_factory, caller: str, message: str  # noqa: F811
) -> None:
    with pytest.raises(AccessDenied) as denied:
        ledger_factory(world.pki.identity(caller)).transfer(FED, "bank-a", 1)

    assert str(denied.value) == f"ACCESS_DENIED: {message}"


def test_an_org_with_two_participants_cannot_tell_which_account_to_debit(world: World) -> None:
    bank_c2 = world.pki.leaf("BankCMSP", "bank-c2")
    world.banks["bank-c"].register_participant(FED, "bank-c2", bank_c2.pem, {}, declared(bank_c2, "bank-c2", FED))

    with pytest.raises(AccessDenied, match=r"^ACCESS_DENIED: Transfer needs exactly one participant .*; found 2$"):
        world.banks["bank-c"].transfer(FED, "bank-a", 1)


def test_a_participant_cannot_transfer_to_itself(world: World) -> None:
    with pytest.raises(TransactionRejected, match=r"^INVALID: participant bank-a cannot transfer to itself"):
        world.banks["bank-a"].transfer(FED, "bank-a", 1)


# --- no identity ----------------------------------------------------------------------


def _every_call(world: World) -> dict[str, Callable[[Ledger], object]]:
    """One well-formed call of every contract function, by function name."""
    rec = world.record(1)
    com = commit_for(rec, world.model(1))
    return {
        "InitFederation": lambda led: led.init_federation("fed-2", FederationPolicy()),
        "RegisterOrgCA": lambda led: led.register_org_ca(FED, world.pki.cas["BankAMSP"].pem),
        "RegisterParticipant": lambda led: led.register_participant(
            FED, "x", world.signers["bank-a"].pem, {}, declared(world.signers["bank-a"], "x", FED)
        ),
        "AdmitParticipant": lambda led: led.admit_participant(FED, "bank-a"),
        "RevokeParticipant": lambda led: led.revoke_participant(FED, "bank-a", "r"),
        "RecordRound": lambda led: led.record_round(FED, 1, rec),
        "CommitModel": lambda led: led.commit_model(FED, 1, com),
        "IssueRewards": lambda led: led.issue_rewards(FED, 1, {}),
        "RecordEvaluation": lambda led: led.record_evaluation(FED, 1, _evaluation(world)),
        "Transfer": lambda led: led.transfer(FED, "bank-a", 1),
        "GetFederation": lambda led: led.get_federation(FED),
        "GetOrgCA": lambda led: led.org_ca(FED, "BankAMSP"),
        "ListOrgCAs": lambda led: led.org_cas(FED),
        "GetParticipant": lambda led: led.participant(FED, "bank-a"),
        "ListParticipants": lambda led: led.participants(FED),
        "ParticipantHistory": lambda led: led.history(FED, "bank-a"),
        "GetRound": lambda led: led.get_round(FED, 1),
        "ListRounds": lambda led: led.list_rounds(FED),
        "BalanceOf": lambda led: led.balance(FED, "bank-a"),
    }


@pytest.mark.parametrize("function", [*TRANSACTIONS, *QUERIES])
def test_every_function_fails_closed_without_an_identity(world: World, ledger_factory, function: str) -> None:  # noqa: F811
    calls = _every_call(world)
    assert set(calls) == {*TRANSACTIONS, *QUERIES}
    nobody = ledger_factory(Identity.model_construct(msp_id="", cert_pem=""))

    with pytest.raises(AccessDenied) as denied:
        calls[function](nobody)

    assert str(denied.value) == "ACCESS_DENIED: the caller has no MSP id"
