"""Keys in a PKCS#11 token (SoftHSM2 in a temporary directory): generated inside, never
extractable, a CSR the org CA signs, low-S signatures that verify with the certificate."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ledger import pki
from ledger.formats import P256_ORDER, verify

SOFTHSM_MODULES = [Path("/usr/lib/softhsm/libsofthsm2.so"), Path("/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")]
MODULE = next((m for m in SOFTHSM_MODULES if m.exists()), None)
pytestmark = pytest.mark.skipif(MODULE is None or shutil.which("softhsm2-util") is None
                                or __import__("importlib").util.find_spec("pkcs11") is None,
                                reason="needs softhsm2 (apt) and python-pkcs11 (pip)")
PIN = "246810"


TOKENS = 8  # one per test; SoftHSM2 sees only tokens that exist when a process loads it


@pytest.fixture(scope="module")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """A SoftHSM2 configuration with fresh tokens, made before the module is loaded."""
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    labels = [f"tok-{n}" for n in range(TOKENS)]
    for label in labels:
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", PIN, "--so-pin",
                        "13579"], check=True, capture_output=True, env={**os.environ, "SOFTHSM2_CONF": str(conf)})
    saved = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    yield labels
    if saved is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = saved


@pytest.fixture
def token(softhsm: list[str], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A token of its own for each test, whose user PIN is in a 0600 file."""
    pin = tmp_path / "pin"
    pin.write_text(PIN + "\n")
    pin.chmod(0o600)
    yield softhsm.pop(), pin


def config(token: tuple[str, Path], label: str = "bank-a", pin: str = PIN):  # type: ignore[no-untyped-def]
    from ledger.keys_pkcs11 import Pkcs11Config

    assert MODULE is not None
    return Pkcs11Config(MODULE, token[0], label, pin)


def test_a_token_key_gets_a_csr_a_certificate_and_signatures_that_verify_low_s(token: tuple[str, Path], tmp_path: Path) -> None:
    from ledger.keys_pkcs11 import Pkcs11Key, generate_key, make_csr

    public = generate_key(config(token))
    key = Pkcs11Key(config(token))
    ca = pki.init_ca("BankAMSP")
    cert = pki.sign_csr(ca, make_csr(key, "bank-a", "BankAMSP"))

    data = b'{"manifest":"example"}'
    signatures = [key.sign_digest(hashlib.sha256(data).digest()) for _ in range(40)]

    assert pki.spki_pem(cert) == pki.spki_pem(public)
    assert cert.subject.rfc4514_string() == "CN=bank-a,O=BankAMSP"
    for der in signatures:
        assert decode_dss_signature(der)[1] <= P256_ORDER // 2
        verify(data, base64.b64encode(der).decode(), cert)
    key.close()


def test_the_token_key_cannot_be_extracted(token: tuple[str, Path]) -> None:
    import pkcs11

    from ledger.keys_pkcs11 import Pkcs11Key, generate_key

    generate_key(config(token))
    key = Pkcs11Key(config(token))
    private = key._private

    assert private[pkcs11.Attribute.SENSITIVE] is True and private[pkcs11.Attribute.EXTRACTABLE] is False
    with pytest.raises(pkcs11.PKCS11Error):
        private[pkcs11.Attribute.VALUE]  # the token will not reveal the private value
    key.close()


def test_an_existing_label_is_not_overwritten_and_a_wrong_pin_is_refused(token: tuple[str, Path]) -> None:
    from ledger.keys_pkcs11 import Pkcs11Error, Pkcs11Key, generate_key

    generate_key(config(token))
    with pytest.raises(Pkcs11Error, match="exists already"):
        generate_key(config(token))
    with pytest.raises(Pkcs11Error, match="PIN is not correct"):
        Pkcs11Key(config(token, pin="999999"))


def test_a_pin_file_others_can_read_is_refused(token: tuple[str, Path]) -> None:
    from ledger.keys_pkcs11 import Pkcs11Error, read_pin

    token[1].chmod(0o644)

    with pytest.raises(Pkcs11Error, match="too open"):
        read_pin(token[1])


def test_the_signer_signs_manifests_with_the_token_key(token: tuple[str, Path], tmp_path: Path) -> None:
    from fl.signer.journal import Journal
    from fl.signer.keys import pkcs11_key
    from fl.signer.policy import LedgerRound, SignerPolicy
    from fl.signer.service import SigningService
    from ledger.formats import Manifest
    from ledger.keys_pkcs11 import generate_key

    public = generate_key(config(token))
    assert MODULE is not None
    key = pkcs11_key(MODULE, token[0], "bank-a", PIN)

    class Ledger:
        def current(self, federation: str) -> LedgerRound:
            return LedgerRound(1, "0" * 64)

    service = SigningService(SignerPolicy("bank-a", "fed", 10), key, Journal(tmp_path / "j.jsonl"), Ledger())
    m = Manifest(federation="fed", participant="bank-a", round=1, base_model="0" * 64, update="1" * 64,
                 num_examples=5)

    reply = service.sign_manifest(m.to_bytes().decode(), m.update)

    verify(m.to_bytes(), reply["signature"], public)
    assert key.describe.startswith("pkcs11:")
    key.close()


def test_participant_keygen_with_pkcs11_writes_a_csr_of_the_token_key(token: tuple[str, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fl.cli_participant import participant_app
    from ledger.keys_pkcs11 import Pkcs11Key

    assert MODULE is not None
    result = CliRunner().invoke(participant_app, [
        "keygen", "-p", "bank-a", "--org", "BankAMSP", "--out", str(tmp_path / "out"), "--pkcs11", str(MODULE),
        "--token-label", token[0], "--pin-file", str(token[1]), "--json"])

    assert result.exit_code == 0, result.output
    csr = pki.load_csr(tmp_path / "out" / "bank-a.csr")
    assert not (tmp_path / "out" / "bank-a.key").exists()
    assert pki.spki_pem(csr.public_key()) == pki.spki_pem(Pkcs11Key(config(token)).public_key())  # type: ignore[arg-type]
