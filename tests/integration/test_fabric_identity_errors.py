"""What a caller sees when its identity or its TLS trust is wrong, on the real network:
the matching error type and one readable line, quickly — never a hang or a raw gRPC dump."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest

from ledger import pki
from ledger.errors import AccessDenied, LedgerUnavailable, RecordNotFound
from ledger.fabric.backend import FabricLedger
from ledger.fabric.profile import ConnectionProfile
from ledger.identity import Credentials, signer_from_key
from ledger.records import Identity
from tests.fixtures.pki import OrgCA

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _client(profile: ConnectionProfile, msp: str, *, not_after: dt.datetime) -> Credentials:
    """A client identity issued by the org's own CA (Node OU ``client``), valid until ``not_after``.

    It becomes valid just after its CA did: Fabric checks the chain as of the leaf's own
    not-before time, and the test network's CAs are minutes old.
    """
    org = profile.org(msp)
    ca = OrgCA.from_files(msp, org.ca.cert, org.ca.key)  # type: ignore[arg-type]
    start = ca.cert.not_valid_before_utc + dt.timedelta(seconds=1)
    leaf = ca.issue("a-user", not_before=start, not_after=not_after)
    return Credentials(Identity(msp_id=msp, cert_pem=leaf.pem), signer_from_key(leaf.key))


def test_an_expired_identity_of_a_channel_org_is_access_denied_in_one_line(fabric_profile: ConnectionProfile) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    ledger = FabricLedger(fabric_profile, _client(fabric_profile, "BankAMSP", not_after=now - dt.timedelta(seconds=5)))
    try:
        with pytest.raises(AccessDenied) as denied:
            ledger.get_federation("any-federation")
    finally:
        ledger.close()
    message = str(denied.value)
    assert "\n" not in message and message.startswith("ACCESS_DENIED")
    # The same CA's valid identity is accepted (the refusal is the expiry, not the CA).
    valid = FabricLedger(fabric_profile, _client(fabric_profile, "BankAMSP", not_after=now + dt.timedelta(days=1)))
    try:
        with pytest.raises(RecordNotFound, match="does not exist"):  # the contract answered
            valid.get_federation("any-federation")
    finally:
        valid.close()


def test_a_wrong_tls_ca_is_ledger_unavailable_naming_tls_within_seconds(
    fabric_profile: ConnectionProfile, tmp_path: Path
) -> None:
    # Trust a CA that did not issue the peers' TLS certificates.
    stranger = pki.init_ca("StrangerMSP")
    wrong = tmp_path / "stranger-ca.crt"
    wrong.write_text(pki.certificate_pem(stranger.cert))
    orgs = {
        msp: org.model_copy(update={"peers": [p.model_copy(update={"tls_ca": wrong}) for p in org.peers]})
        for msp, org in fabric_profile.orgs.items()
    }
    profile = fabric_profile.model_copy(update={"orgs": orgs})
    user = fabric_profile.org("CoordinatorMSP").identities["user"]
    credentials = Credentials.from_files("CoordinatorMSP", user.cert, user.key)
    started = time.monotonic()
    ledger = FabricLedger(profile, credentials)
    try:
        with pytest.raises(LedgerUnavailable) as unavailable:
            ledger.get_federation("any-federation")
    finally:
        ledger.close()
    assert time.monotonic() - started < 15
    message = str(unavailable.value)
    assert "TLS" in message or "tls" in message.lower() or "handshake" in message.lower(), message
    assert "\n" not in message
