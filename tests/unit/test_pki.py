"""The institutions' PKI: key files, the demo org CA, participant certificate checks."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ledger import formats, pki

UTC = dt.timezone.utc


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def ca() -> pki.CertificateAuthority:
    return pki.init_ca("BankAMSP")


@pytest.fixture()
def participant(tmp_path: Path, ca: pki.CertificateAuthority):
    files = pki.keygen(tmp_path, "bank-a", "BankAMSP")
    cert = pki.sign_csr(ca, pki.load_csr(files.csr))
    return files, pki.load_private_key(files.key), cert


def _cert_for(
    ca: pki.CertificateAuthority,
    public: object,
    *,
    start: dt.datetime | None = None,
    days: int = 30,
    aki: bool = True,
    issuer: x509.Name | None = None,
    signer: object | None = None,
) -> x509.Certificate:
    """A leaf built by hand, to produce the certificates the CA tool would never make."""
    start = start or dt.datetime.now(UTC) - dt.timedelta(minutes=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bank-a")]))
        .issuer_name(issuer or ca.cert.subject)
        .public_key(public)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
    )
    if aki:
        ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    return builder.sign(signer or ca.key, hashes.SHA256())  # type: ignore[arg-type]


# --- key files ----------------------------------------------------------------------


def test_keygen_writes_private_keys_owner_only_and_public_files_readable(tmp_path: Path) -> None:
    files = pki.keygen(tmp_path, "bank-a", "BankAMSP")

    assert _mode(files.key) == 0o600
    assert _mode(files.openssh_key) == 0o600
    assert _mode(files.csr) == 0o644
    assert _mode(files.openssh_public) == 0o644


def test_key_file_is_0600_even_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = pki.write_private_key(tmp_path / "k.key", pki.generate_key())
    finally:
        os.umask(old)

    assert _mode(path) == 0o600


def test_rewriting_a_key_leaves_no_temporary_file_behind(tmp_path: Path) -> None:
    pki.write_private_key(tmp_path / "k.key", pki.generate_key())
    pki.write_private_key(tmp_path / "k.key", pki.generate_key())

    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.key"]


def test_pem_and_openssh_files_hold_the_same_key(tmp_path: Path) -> None:
    files = pki.keygen(tmp_path, "bank-a")

    pem_key = pki.load_private_key(files.key)
    ssh_key = pki.load_private_key(files.openssh_key)

    assert pem_key.private_numbers() == ssh_key.private_numbers()
    assert files.openssh_key.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")


def test_openssh_key_file_loads_the_way_flower_supernode_loads_it(tmp_path: Path) -> None:
    files = pki.keygen(tmp_path, "bank-a")

    key = serialization.load_ssh_private_key(files.openssh_key.read_bytes(), None)

    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)


def test_keygen_csr_names_the_participant_and_org(tmp_path: Path) -> None:
    files = pki.keygen(tmp_path, "bank-a", "BankAMSP")

    csr = pki.load_csr(files.csr)

    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "bank-a"
    assert csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "BankAMSP"


def test_keygen_refuses_to_overwrite_an_existing_key(tmp_path: Path) -> None:
    first = pki.keygen(tmp_path, "bank-a")
    before = first.key.read_bytes()

    with pytest.raises(pki.KeyFileError, match="exists already"):
        pki.keygen(tmp_path, "bank-a")
    assert first.key.read_bytes() == before


def test_keygen_refuses_an_invalid_participant_id(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="participant id"):
        pki.keygen(tmp_path, "Bank_A")


def test_loading_a_missing_key_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(pki.KeyFileError, match=r"nope\.key: private key file does not exist"):
        pki.load_private_key(tmp_path / "nope.key")


def test_loading_a_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = pki.write_private_key(tmp_path / "k.key", pki.generate_key())
    path.chmod(0o644)

    with pytest.raises(pki.KeyFileError, match="permissions 0644 are too open"):
        pki.load_private_key(path)


def test_loading_a_key_readable_by_the_group_is_refused(tmp_path: Path) -> None:
    path = pki.write_private_key(tmp_path / "k.key", pki.generate_key())
    path.chmod(0o640)

    with pytest.raises(pki.KeyFileError, match="too open"):
        pki.load_private_key(path)


def _write_0600(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def test_loading_a_file_that_is_not_pem_is_refused(tmp_path: Path) -> None:
    path = _write_0600(tmp_path / "k.key", b"hello, not a key\n")

    with pytest.raises(pki.KeyFileError, match=r"k\.key: not a PEM or OpenSSH private key"):
        pki.load_private_key(path)


def test_loading_garbage_inside_pem_armour_is_refused(tmp_path: Path) -> None:
    data = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    path = _write_0600(tmp_path / "k.key", data)

    with pytest.raises(pki.KeyFileError, match="not a readable private key"):
        pki.load_private_key(path)


def test_loading_a_p384_key_is_refused_naming_the_curve(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = _write_0600(tmp_path / "k.key", data)

    with pytest.raises(pki.KeyFileError, match="EC secp384r1, an ECDSA P-256 key is required"):
        pki.load_private_key(path)


def test_loading_an_rsa_key_is_refused(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = _write_0600(tmp_path / "k.key", data)

    with pytest.raises(pki.KeyFileError, match="RSA 2048"):
        pki.load_private_key(path)


def test_loading_an_encrypted_pem_key_without_password_is_refused(tmp_path: Path) -> None:
    data = pki.generate_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    path = _write_0600(tmp_path / "k.key", data)

    with pytest.raises(pki.KeyFileError, match="encrypted"):
        pki.load_private_key(path)
    assert isinstance(pki.load_private_key(path, password=b"secret"), ec.EllipticCurvePrivateKey)


# `ssh-keygen -t ecdsa -b 256 -N secret`: writing one needs bcrypt, which is not installed.
_ENCRYPTED_OPENSSH_P256 = b"""-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHIAAAAGYmNyeXB0AAAAGAAAABDTIsHuKj
7IkAOMOzKVycfQAAAAEAAAAAEAAABoAAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlz
dHAyNTYAAABBBLDtdwB3e+ozR2u1MjYMh5nOd3r6pBokTXk01CHWBZzgZQ4umt7pi4EgMk
+Ups59kHKdgvk4yJk6873C9kPcdPsAAACgewpZJ8g6Qf4X/t5uEbmlSOCWhG/Gsoii+CRN
5YXsAiC30RPriRtDwOWf2qlcRWg99+O5TAga0qCVuOfFu+fEtS1KTkUvdpdNR1/SuOTEHg
637oBX5HQf7c3rnynUh+w1zAqzHJXASTG4Q7IH9aXuQE80ecxjA+nZ9xqSESUGb5ASUX70
cNjuszkTNfkfqyq/P7+s9EBDjR/MZnbSzvUOGg==
-----END OPENSSH PRIVATE KEY-----
"""


def test_loading_an_encrypted_openssh_key_without_password_is_refused(tmp_path: Path) -> None:
    path = _write_0600(tmp_path / "k.ssh", _ENCRYPTED_OPENSSH_P256)

    with pytest.raises(pki.KeyFileError, match="encrypted"):
        pki.load_private_key(path)


def test_loading_a_certificate_that_is_not_pem_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.crt"
    path.write_text("not a cert")

    with pytest.raises(pki.KeyFileError, match=r"c\.crt: not a PEM certificate"):
        pki.load_certificate(path)


def test_loading_a_missing_certificate_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(pki.KeyFileError, match=r"c\.crt: certificate file does not exist"):
        pki.load_certificate(tmp_path / "c.crt")


def test_loading_a_csr_with_a_broken_signature_is_refused(tmp_path: Path) -> None:
    files = pki.keygen(tmp_path, "bank-a")
    csr = pki.load_csr(files.csr)
    # Flip one bit inside the signature value (the DER's last bytes).
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01
    broken = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    (tmp_path / "bad.csr").write_bytes(broken)

    with pytest.raises(pki.KeyFileError, match="CSR signature does not verify"):
        pki.load_csr(tmp_path / "bad.csr")


# --- CA -----------------------------------------------------------------------------


def test_ca_certificate_is_a_self_signed_p256_ca_with_ski_and_key_usage(
    ca: pki.CertificateAuthority,
) -> None:
    ext = ca.cert.extensions

    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is True
    usage = ext.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert ext.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert isinstance(ca.cert.public_key().curve, ec.SECP256R1)  # type: ignore[union-attr]
    ca.cert.verify_directly_issued_by(ca.cert)


def test_ca_save_and_load_round_trip_with_a_0600_key(tmp_path: Path, ca) -> None:
    key_path, _ = ca.save(tmp_path / "ca")

    loaded = pki.CertificateAuthority.load(tmp_path / "ca")

    assert _mode(key_path) == 0o600
    assert loaded.cert == ca.cert
    assert loaded.key.private_numbers() == ca.key.private_numbers()


def test_ca_load_refuses_a_key_that_is_not_the_certificates(tmp_path: Path, ca) -> None:
    ca.save(tmp_path / "ca")
    pki.write_private_key(tmp_path / "ca" / "ca.key", pki.generate_key())

    with pytest.raises(pki.KeyFileError, match="key does not match"):
        pki.CertificateAuthority.load(tmp_path / "ca")


def test_signed_leaf_carries_participant_org_aki_and_client_auth(participant, ca) -> None:
    _, _, cert = participant
    ext = cert.extensions

    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "bank-a"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "BankAMSP"
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert ext.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert ExtendedKeyUsageOID.CLIENT_AUTH in ext.get_extension_for_class(x509.ExtendedKeyUsage).value


def test_signed_leaf_validity_window_follows_the_requested_days(tmp_path: Path, ca) -> None:
    files = pki.keygen(tmp_path, "bank-a")
    start = dt.datetime(2030, 1, 1, tzinfo=UTC)

    cert = pki.sign_csr(ca, pki.load_csr(files.csr), days=10, not_before=start)

    assert cert.not_valid_before_utc == start
    assert cert.not_valid_after_utc == start + dt.timedelta(days=10)


def test_ca_refuses_to_sign_a_p384_csr(ca) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bank-a")]))
        .sign(key, hashes.SHA256())
    )

    with pytest.raises(pki.CertificateError, match="secp384r1"):
        pki.sign_csr(ca, csr)


def test_ca_refuses_to_sign_a_csr_whose_cn_is_not_a_participant_id(ca) -> None:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bank A")]))
        .sign(pki.generate_key(), hashes.SHA256())
    )

    with pytest.raises(pki.CertificateError, match="participant id"):
        pki.sign_csr(ca, csr)


# --- validate_participant_cert ------------------------------------------------------


def test_a_certificate_signed_by_the_ca_with_its_key_is_accepted(participant, ca) -> None:
    _, key, cert = participant

    pki.validate_participant_cert(cert, ca.cert, key)  # no exception


def test_an_expired_certificate_is_refused(participant, ca) -> None:
    _, _, cert = participant
    later = cert.not_valid_after_utc + dt.timedelta(seconds=1)

    with pytest.raises(pki.CertificateError, match="certificate expired on"):
        pki.validate_participant_cert(cert, ca.cert, at=later)


def test_a_certificate_not_yet_valid_is_refused(tmp_path: Path, ca) -> None:
    files = pki.keygen(tmp_path, "bank-a")
    future = dt.datetime.now(UTC) + dt.timedelta(days=2)
    cert = pki.sign_csr(ca, pki.load_csr(files.csr), not_before=future)

    with pytest.raises(pki.CertificateError, match="not valid before"):
        pki.validate_participant_cert(cert, ca.cert)


def test_a_certificate_from_another_ca_is_refused_by_issuer(participant) -> None:
    _, _, cert = participant
    other = pki.init_ca("BankBMSP")

    with pytest.raises(pki.CertificateError, match="is not the CA"):
        pki.validate_participant_cert(cert, other.cert)


def test_a_certificate_from_a_ca_with_the_same_name_but_another_key_is_refused(
    participant,
) -> None:
    _, _, cert = participant
    impostor = pki.init_ca("BankAMSP")  # same subject DN, different key and SKI

    with pytest.raises(pki.CertificateError, match="authority key identifier does not match"):
        pki.validate_participant_cert(cert, impostor.cert)


def test_a_certificate_with_forged_aki_but_wrong_signature_is_refused(ca) -> None:
    # Right issuer name and AKI, but signed by a key that is not the CA's.
    cert = _cert_for(ca, pki.generate_key().public_key(), signer=pki.generate_key())

    with pytest.raises(pki.CertificateError, match="signature does not verify"):
        pki.validate_participant_cert(cert, ca.cert)


def test_a_certificate_without_aki_is_refused(ca) -> None:
    cert = _cert_for(ca, pki.generate_key().public_key(), aki=False)

    with pytest.raises(pki.CertificateError, match="no authority key identifier"):
        pki.validate_participant_cert(cert, ca.cert)


def test_a_p384_certificate_is_refused(ca) -> None:
    cert = _cert_for(ca, ec.generate_private_key(ec.SECP384R1()).public_key())

    with pytest.raises(pki.CertificateError, match="EC secp384r1, ECDSA P-256 is required"):
        pki.validate_participant_cert(cert, ca.cert)


def test_an_rsa_certificate_is_refused(ca) -> None:
    public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    cert = _cert_for(ca, public)

    with pytest.raises(pki.CertificateError, match="RSA 2048"):
        pki.validate_participant_cert(cert, ca.cert)


def test_a_key_that_does_not_match_the_certificate_is_refused(participant, ca) -> None:
    _, _, cert = participant

    with pytest.raises(pki.CertificateError, match="private key does not match"):
        pki.validate_participant_cert(cert, ca.cert, pki.generate_key())


def test_a_leaf_used_as_ca_is_refused(participant, ca) -> None:
    _, _, cert = participant

    with pytest.raises(pki.CertificateError, match="is not a CA"):
        pki.validate_participant_cert(cert, cert)


def test_a_certificate_from_pem_rejects_garbage() -> None:
    with pytest.raises(pki.CertificateError, match="not a PEM certificate"):
        pki.certificate_from_pem("-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n")


# --- OpenSSH, TLS, demo identities --------------------------------------------------


def test_openssh_public_key_of_cert_and_key_agree_and_parse_back(participant) -> None:
    _, key, cert = participant

    line = pki.openssh_public_key(cert)

    assert line == pki.openssh_public_key(key)
    assert line.startswith("ecdsa-sha2-nistp256 ")
    parsed = serialization.load_ssh_public_key(line.encode())
    assert parsed.public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]


def test_openssh_public_key_file_carries_the_participant_as_comment(participant) -> None:
    files, key, _ = participant

    assert files.openssh_public.read_text().strip() == pki.openssh_public_key(key) + " bank-a"


def test_openssh_public_key_refuses_a_p384_key() -> None:
    with pytest.raises(pki.CertificateError, match="secp384r1"):
        pki.openssh_public_key(ec.generate_private_key(ec.SECP384R1()))


def test_tls_server_cert_has_loopback_sans_server_auth_and_chains_to_its_ca(tmp_path: Path) -> None:
    files = pki.write_tls_files(tmp_path / "tls")

    cert = pki.load_certificate(files.server_cert)
    ca_cert = pki.load_certificate(files.ca_cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value

    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    cert.verify_directly_issued_by(ca_cert)
    assert _mode(files.server_key) == 0o600


def test_tls_files_are_reused_when_they_exist(tmp_path: Path) -> None:
    first = pki.write_tls_files(tmp_path / "tls")
    before = first.server_cert.read_bytes()

    pki.write_tls_files(tmp_path / "tls")

    assert first.server_cert.read_bytes() == before


def test_demo_identity_makes_a_valid_signing_identity_per_org(tmp_path: Path) -> None:
    key, cert, ca_cert = pki.demo_identity(tmp_path, "bank-a", "BankAMSP")

    pki.validate_participant_cert(cert, ca_cert, key)
    signature = formats.sign(b"manifest", key)
    formats.verify(b"manifest", signature, cert)
    assert _mode(tmp_path / "BankAMSP" / "ca" / "ca.key") == 0o600
    assert _mode(tmp_path / "BankAMSP" / "bank-a.key") == 0o600


def test_demo_identity_is_stable_across_calls_and_distinct_across_orgs(tmp_path: Path) -> None:
    _, cert_1, ca_1 = pki.demo_identity(tmp_path, "bank-a", "BankAMSP")
    _, cert_2, ca_2 = pki.demo_identity(tmp_path, "bank-a", "BankAMSP")
    _, cert_b, ca_b = pki.demo_identity(tmp_path, "bank-b", "BankBMSP")

    assert cert_1 == cert_2 and ca_1 == ca_2
    assert ca_b != ca_1
    with pytest.raises(pki.CertificateError):
        pki.validate_participant_cert(cert_b, ca_1)



def test_reused_tls_files_must_still_cover_the_hosts_and_match_their_key(tmp_path):
    from ledger.pki import CertificateError, write_tls_files

    files = write_tls_files(tmp_path / "tls", ("127.0.0.1", "localhost"))
    assert write_tls_files(tmp_path / "tls", ("127.0.0.1",)) == files  # reused as is
    with pytest.raises(CertificateError, match="does not cover coordinator.example"):
        write_tls_files(tmp_path / "tls", ("127.0.0.1", "coordinator.example"))
    other = write_tls_files(tmp_path / "other")
    files.server_key.write_bytes(other.server_key.read_bytes())
    with pytest.raises(CertificateError, match="does not match"):
        write_tls_files(tmp_path / "tls")
