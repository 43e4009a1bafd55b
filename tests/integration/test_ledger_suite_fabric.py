"""The shared Ledger suite (``tests/unit/test_ledger_suite.py``) on the real Fabric network.

The same test functions run here against ``FabricLedger``: every caller signs with its
organisation's own Fabric identity, participant certificates come from the org CAs of the
network (so the contract's same-CA check is the real one), and every test works on a
federation of its own, since the channel is shared by the whole session.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ledger.fabric.profile import ConnectionProfile
from tests.fixtures.ledgers import (  # noqa: F401
    FabricLedgers,
    LedgerFactory,
    fabric_pki,
    federation,
    fresh_federation_id,
    world,
)
from tests.fixtures.pki import TestPKI
from tests.unit import test_ledger_suite as suite

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

EMBEDDED_ONLY = {
    # A pydantic bound on RoundEntry, checked before any ledger is called: a second run
    # would test the same code again, not Fabric.
    "test_oversized_evidence_cannot_be_put_into_an_entry",
}

# Every other test of the suite, collected here under the same name with this module's
# fixtures: the Fabric ledger, the network's PKI and a fresh federation id per test.
globals().update(
    {name: test for name, test in vars(suite).items() if name.startswith("test_") and name not in EMBEDDED_ONLY}
)


@pytest.fixture(scope="module")
def pki(fabric_profile: ConnectionProfile) -> TestPKI:
    """The network's org CAs and its organisations' user identities."""
    return fabric_pki(fabric_profile)


@pytest.fixture(scope="module")
def fabric_ledgers(fabric_profile: ConnectionProfile, pki: TestPKI) -> Iterator[FabricLedgers]:
    """One FabricLedger per organisation, shared by the module's tests, once the channel can endorse."""
    ledgers = FabricLedgers(fabric_profile, pki)
    ledgers.wait_until_writable()
    yield ledgers
    ledgers.close()


@pytest.fixture
def ledger_factory(fabric_ledgers: FabricLedgers) -> LedgerFactory:
    """The session's channel as any organisation, and a federation id no other test uses."""
    return LedgerFactory(fabric_ledgers, federation=fresh_federation_id("suite"), concurrent=True)

