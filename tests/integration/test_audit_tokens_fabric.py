"""Token conservation checked through the contract's queries on a real Fabric network."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ledger.fabric.profile import ConnectionProfile
from ledger.tokens import check_token_supply
from tests.fixtures.ledgers import FabricLedgers, LedgerFactory, World, fabric_pki, fresh_federation_id, make_world
from tests.fixtures.pki import TestPKI

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def pki(fabric_profile: ConnectionProfile) -> TestPKI:
    """The network's org CAs and its organisations' user identities."""
    return fabric_pki(fabric_profile)


@pytest.fixture(scope="module")
def fabric_ledgers(fabric_profile: ConnectionProfile, pki: TestPKI) -> Iterator[FabricLedgers]:
    """One FabricLedger per organisation, once the channel can endorse."""
    ledgers = FabricLedgers(fabric_profile, pki)
    ledgers.wait_until_writable()
    yield ledgers
    ledgers.close()


@pytest.fixture
def ledger_factory(fabric_ledgers: FabricLedgers) -> LedgerFactory:
    """The session's channel as any organisation, and a federation of this test's own."""
    return LedgerFactory(fabric_ledgers, federation=fresh_federation_id("tokens"), concurrent=True)


@pytest.fixture
def banks(ledger_factory: LedgerFactory, pki: TestPKI) -> World:
    """A federation of this test's own with bank-a, bank-b and bank-c admitted."""
    return make_world(ledger_factory, pki, federation=ledger_factory.federation, concurrent=True)


def test_balances_read_from_fabric_add_up_to_the_rewards_issued_after_a_transfer(banks: World) -> None:
    world, fed = banks, banks.federation
    world.run_round(1)
    world.coordinator.issue_rewards(fed, 1, {"bank-a": 7, "bank-b": 3})
    world.banks["bank-a"].transfer(fed, "bank-b", 2)
    participants = [p.id for p in world.auditor.participants(fed)]

    assert check_token_supply(world.auditor, fed, world.auditor.list_rounds(fed), participants) == []
    assert {p: world.auditor.balance(fed, p) for p in participants} == {"bank-a": 5, "bank-b": 5, "bank-c": 0}
