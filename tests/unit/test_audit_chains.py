"""The audit re-checks every participant's chain to its org CA and its signed dataset size,
without trusting the contract that accepted them."""

from __future__ import annotations

import re

import pytest

from ledger.audit_chains import chain_problems, check_chains
from ledger.records import OrgCA
from tests.fixtures.ledgers import FED, World, ledger_factory, pki, world  # noqa: F401
from tests.fixtures.rounds import declared


def test_an_honest_federations_chains_and_declarations_check_out(world: World) -> None:
    participants = {p.id: p for p in world.auditor.participants(FED)}

    assert check_chains(world.auditor, FED, participants) == []


def test_a_participant_whose_certificate_its_org_ca_did_not_sign_is_reported(world: World) -> None:
    # Issuer name and authority key id are the CA's; the signature is another key's.
    forged = world.pki.forged("BankAMSP", "bank-a")
    stored = world.auditor.participant(FED, "bank-a")
    signed = declared(forged, "bank-a", FED)
    slipped_in = stored.model_copy(update={"cert_pem": forged.pem, "declaration": signed.statement,
                                           "declaration_signature": signed.signature})

    problems = chain_problems(slipped_in, world.auditor.org_ca(FED, "BankAMSP"))

    assert problems == ["participant bank-a (BankAMSP): its certificate was not signed by the CA of BankAMSP"]


def test_a_participant_of_an_org_without_a_registered_ca_is_reported(world: World) -> None:
    stored = world.auditor.participant(FED, "bank-a")

    assert chain_problems(stored, None) == ["participant bank-a (BankAMSP): its organisation registered no CA certificate"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"declared_examples": 10**6}, "the signed declaration .* does not match the recorded declared_examples 1000000"),
        ({"declaration": None}, "declared no dataset size at registration"),
        ({"declaration_signature": "MEUCIQ=="}, "the declaration of its dataset size is not signed by its key"),
    ],
)
def test_a_recorded_dataset_size_the_participant_did_not_sign_is_reported(
    world: World, change: dict, message: str
) -> None:
    stored = world.auditor.participant(FED, "bank-b").model_copy(update=change)

    [problem] = chain_problems(stored, world.auditor.org_ca(FED, "BankBMSP"))

    assert problem.startswith("participant bank-b (BankBMSP): ")
    assert re.search(message, problem), problem


def test_a_participant_registered_before_its_org_ca_is_reported(world: World) -> None:
    stored = world.auditor.participant(FED, "bank-c")
    late = OrgCA.parse({**world.auditor.org_ca(FED, "BankCMSP").model_dump(), "registered_ms": stored.registered_ms + 1})

    assert chain_problems(stored, late) == [
        "participant bank-c (BankCMSP): registered before its organisation registered its CA"
    ]
