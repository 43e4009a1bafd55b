"""Fabric's X.509 MSPs, as an auditor needs them to check signatures itself.

A channel configuration names organisations, each with an MSP: root and intermediate
CAs, CRLs, admins, OU rules and NodeOUs. :class:`ChannelMsps` reads them from a
configuration; :meth:`Msp.validate` decides, as Fabric's MSP does, whether a certificate
is a valid identity of one of them (:meth:`Msp.has_role`: with which role);
:func:`verify_signature` checks a signature the way Fabric's BCCSP does (ECDSA low-S).
Policies over these identities are in :mod:`ledger.fabric.channel_policy`.

Certificate expiry is ignored, as Fabric ignores it when validating identities (a
signature made while a certificate was valid stays valid). Not implemented, and so never
a valid identity here: Idemix MSPs, X.509 name and path-length constraints. None appears
in a channel this project creates.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from fabric_protos.common import configtx_pb2
from fabric_protos.msp import identities_pb2, msp_config_pb2, msp_principal_pb2
from google.protobuf.message import DecodeError

__all__ = [
    "ChannelMsps",
    "InvalidIdentity",
    "Msp",
    "MspIdentity",
    "cert_name",
    "verify_signature",
]

# Curve orders, for Fabric's low-S rule (s ≤ n/2) on ECDSA signatures.
_CURVE_ORDERS = {
    "secp256r1": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "secp384r1": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973", 16
    ),
}
_MAX_CHAIN = 8
_ROLE_NAMES = {
    msp_principal_pb2.MSPRole.CLIENT: "client",
    msp_principal_pb2.MSPRole.PEER: "peer",
    msp_principal_pb2.MSPRole.ADMIN: "admin",
    msp_principal_pb2.MSPRole.ORDERER: "orderer",
}


class InvalidIdentity(Exception):
    """A signature or identity that does not verify; the message says why."""


# --- identities: Fabric's X.509 MSP ------------------------------------------------------


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def cert_name(cert: x509.Certificate) -> str:
    """The certificate's common name (its whole subject when it has none), for messages."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def _load_certs(pems: Iterable[bytes], what: str) -> list[x509.Certificate]:
    certs: list[x509.Certificate] = []
    for pem in pems:
        try:
            certs.extend(x509.load_pem_x509_certificates(pem))
        except ValueError as exc:
            raise ValueError(f"{what} does not decode: {exc}") from None
    return certs


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _issued_by(child: x509.Certificate, ca: x509.Certificate, at: dt.datetime) -> bool:
    """True when ``ca`` is a CA valid at ``at`` whose key signed ``child``."""
    if ca.subject != child.issuer or not _is_ca(ca):
        return False
    if not ca.not_valid_before_utc <= at <= ca.not_valid_after_utc:
        return False
    try:
        child.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def verify_signature(cert: x509.Certificate, data: bytes, signature: bytes, digest: hashes.HashAlgorithm) -> None:
    """Check ``signature`` over ``data`` by ``cert``'s key the way Fabric's BCCSP does.

    Raises :class:`InvalidIdentity` when it does not verify or is high-S.
    """
    key = cert.public_key()
    if isinstance(key, ed25519.Ed25519PublicKey):
        try:
            key.verify(signature, data)
        except InvalidSignature:
            raise InvalidIdentity("the signature does not verify") from None
        return
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _CURVE_ORDERS:
        raise InvalidIdentity("the signer's key type is not supported")
    try:
        _, s = decode_dss_signature(signature)
    except ValueError:
        raise InvalidIdentity("the signature is not a DER ECDSA signature") from None
    if s > _CURVE_ORDERS[key.curve.name] // 2:
        raise InvalidIdentity("the signature is high-S (Fabric accepts only low-S)")
    try:
        key.verify(signature, data, ec.ECDSA(digest))
    except InvalidSignature:
        raise InvalidIdentity("the signature does not verify") from None


@dataclass(frozen=True)
class MspIdentity:
    """A signer whose identity is valid under its MSP."""

    msp_id: str
    cert: x509.Certificate
    der: bytes
    ous: tuple[tuple[str, bytes], ...]  # (OU, certifiers identifier) as Fabric's MSP sees them

    def describe(self) -> str:
        """``MSP 'common name'``, for messages."""
        return f"{self.msp_id} '{cert_name(self.cert)}'"


@dataclass
class Msp:
    """One organisation's X.509 MSP from the channel configuration."""

    msp_id: str
    roots: list[x509.Certificate]
    intermediates: list[x509.Certificate]
    admins: set[bytes]
    crls: list[x509.CertificateRevocationList]
    digest: hashes.HashAlgorithm
    chain_hash: str
    ou_identifiers: list[tuple[str, bytes]] = field(default_factory=list)
    node_ous: dict[str, tuple[str, bytes]] | None = None  # role → (OU, certifiers id); None: off
    _checked: dict[bytes, MspIdentity | str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: msp_config_pb2.MSPConfig) -> Msp:
        """The MSP of a ``MSPConfig`` config value; ``ValueError`` when it is unusable."""
        if config.type != 0:
            raise ValueError(f"MSP type {config.type} is not an X.509 (FABRIC) MSP")
        fabric = msp_config_pb2.FabricMSPConfig.FromString(config.config)
        name = fabric.name
        roots = _load_certs(fabric.root_certs, f"{name} root certificate")
        if not roots:
            raise ValueError(f"MSP {name} has no root certificate")
        crls: list[x509.CertificateRevocationList] = []
        for pem in fabric.revocation_list:
            try:
                crls.append(x509.load_pem_x509_crl(pem))
            except ValueError as exc:
                raise ValueError(f"{name} CRL does not decode: {exc}") from None
        family = fabric.crypto_config.signature_hash_family or "SHA2"
        digests: dict[str, hashes.HashAlgorithm] = {"SHA2": hashes.SHA256(), "SHA3": hashes.SHA3_256()}
        chain_hash = fabric.crypto_config.identity_identifier_hash_function or "SHA256"
        if family not in digests or chain_hash not in ("SHA256", "SHA3_256"):
            raise ValueError(f"MSP {name}: unsupported hash functions {family}/{chain_hash}")
        msp = cls(
            msp_id=name,
            roots=roots,
            intermediates=_load_certs(fabric.intermediate_certs, f"{name} intermediate certificate"),
            admins={_der(c) for c in _load_certs(fabric.admins, f"{name} admin certificate")},
            crls=crls,
            digest=digests[family],
            chain_hash=chain_hash,
        )
        msp.ou_identifiers = [
            (ou.organizational_unit_identifier, msp._certifiers_id(ou.certificate, required=True))
            for ou in fabric.organizational_unit_identifiers
        ]
        node_ous = fabric.fabric_node_ous
        if node_ous.enable:
            configured = {
                "client": node_ous.client_ou_identifier,
                "peer": node_ous.peer_ou_identifier,
                "admin": node_ous.admin_ou_identifier,
                "orderer": node_ous.orderer_ou_identifier,
            }
            msp.node_ous = {
                role: (ou.organizational_unit_identifier, msp._certifiers_id(ou.certificate, required=False))
                for role, ou in configured.items()
                if ou.organizational_unit_identifier
            }
        return msp

    def _hash_chain(self, chain: Sequence[x509.Certificate]) -> bytes:
        digest = hashlib.sha256() if self.chain_hash == "SHA256" else hashlib.sha3_256()
        for cert in chain:
            digest.update(_der(cert))
        return digest.digest()

    def _certifiers_id(self, pem: bytes, *, required: bool) -> bytes:
        """Fabric's certifiers identifier of a configured CA: the hash of its chain to a root."""
        if not pem:
            if required:
                raise ValueError(f"MSP {self.msp_id}: an OU identifier has no certificate")
            return b""
        cert = _load_certs([pem], f"{self.msp_id} OU certificate")[0]
        if _der(cert) in {_der(r) for r in self.roots}:
            return self._hash_chain([cert])
        if _der(cert) not in {_der(i) for i in self.intermediates}:
            raise ValueError(f"MSP {self.msp_id}: an OU certificate is not one of its CAs")
        try:
            return self._hash_chain([cert, *self._chain(cert)])
        except InvalidIdentity as exc:
            raise ValueError(f"MSP {self.msp_id}: an OU certificate: {exc}") from None

    def _chain(self, cert: x509.Certificate) -> list[x509.Certificate]:
        """The CAs above ``cert`` up to a root, checked at ``not_before + 1 s`` as Fabric does."""
        # Fabric validates identities at their own start of validity: an expired certificate
        # still identifies who signed while it was valid.
        at = cert.not_valid_before_utc + dt.timedelta(seconds=1)
        roots = {_der(r) for r in self.roots}
        chain: list[x509.Certificate] = []
        current = cert
        for _ in range(_MAX_CHAIN):
            issuer = next((ca for ca in (*self.intermediates, *self.roots) if _issued_by(current, ca, at)), None)
            if issuer is None:
                raise InvalidIdentity(f"'{cert_name(current)}' is not certified by a CA of {self.msp_id}")
            chain.append(issuer)
            if _der(issuer) in roots:
                return chain
            current = issuer
        raise InvalidIdentity(f"the certificate chain of '{cert_name(cert)}' is too long")

    def validate(self, cert: x509.Certificate) -> MspIdentity:
        """``cert`` as a valid identity of this MSP; :class:`InvalidIdentity` says why it is not."""
        key = _der(cert)
        if key not in self._checked:
            try:
                self._checked[key] = self._validate(cert, key)
            except InvalidIdentity as exc:
                self._checked[key] = str(exc)
        checked = self._checked[key]
        if isinstance(checked, str):
            raise InvalidIdentity(checked)
        return checked

    def _validate(self, cert: x509.Certificate, der: bytes) -> MspIdentity:
        name = cert_name(cert)
        if _is_ca(cert):
            raise InvalidIdentity(f"'{name}' is a CA certificate, which cannot be an identity")
        chain = self._chain(cert)
        self._check_revocation(cert, chain[0])
        certifier = self._hash_chain(chain)
        ous = tuple(
            (str(a.value), certifier) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        )
        if self.ou_identifiers and not any(ou in self.ou_identifiers for ou in ous):
            raise InvalidIdentity(f"'{name}' has none of the OUs {self.msp_id} accepts")
        if self.node_ous is not None:
            certifiers = dict(self.node_ous.values())  # node OU → its CA's certifiers id (b"": any)
            count = 0
            for ou, certified in ous:
                if ou not in certifiers:
                    continue
                if certifiers[ou] and certifiers[ou] != certified:
                    raise InvalidIdentity(f"'{name}' has node OU {ou!r} from a CA {self.msp_id} does not name for it")
                count += 1
            if count != 1:
                raise InvalidIdentity(
                    f"'{name}' must carry exactly one of the node OUs of {self.msp_id} "
                    f"(client, peer, admin, orderer), it carries {count}"
                )
        return MspIdentity(self.msp_id, cert, der, ous)

    def _check_revocation(self, cert: x509.Certificate, issuer: x509.Certificate) -> None:
        try:
            ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        except x509.ExtensionNotFound:
            raise InvalidIdentity(f"the CA of '{cert_name(cert)}' has no subject key identifier") from None
        for crl in self.crls:
            try:
                aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
            except x509.ExtensionNotFound:
                raise InvalidIdentity(f"a CRL of {self.msp_id} has no authority key identifier") from None
            if (
                aki == ski
                and crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
                and crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
            ):
                raise InvalidIdentity(f"'{cert_name(cert)}' is revoked by its CA")

    def has_role(self, identity: MspIdentity, role: int) -> bool:
        """Whether a valid identity of this MSP has an MSP role (member, admin, client…)."""
        if role == msp_principal_pb2.MSPRole.MEMBER:
            return True
        if role == msp_principal_pb2.MSPRole.ADMIN and identity.der in self.admins:
            return True
        wanted = self.node_ous.get(_ROLE_NAMES.get(role, "")) if self.node_ous is not None else None
        return wanted is not None and any(name == wanted[0] for name, _ in identity.ous)


# --- a channel's organisations ---------------------------------------------------------


@dataclass(frozen=True)
class ChannelMsps:
    """The organisations of one channel configuration and their MSPs.

    ``application`` are the organisations of ``/Channel/Application`` (who transact and
    endorse), ``orderer`` those of ``/Channel/Orderer`` (who order and sign blocks).
    """

    application: tuple[str, ...]
    orderer: tuple[str, ...]
    by_id: Mapping[str, Msp] = field(repr=False)

    @classmethod
    def from_config(cls, root: configtx_pb2.ConfigGroup) -> ChannelMsps:
        """The MSPs of a channel group; ``ValueError`` or ``DecodeError`` when one is unusable."""
        by_id: dict[str, Msp] = {}
        sections: dict[str, list[str]] = {"Application": [], "Orderer": []}
        for section, names in sections.items():
            for org in root.groups[section].groups.values() if section in root.groups else ():
                if "MSP" in org.values:
                    msp = Msp.from_config(msp_config_pb2.MSPConfig.FromString(org.values["MSP"].value))
                    by_id[msp.msp_id] = msp
                    names.append(msp.msp_id)
        return cls(tuple(sorted(sections["Application"])), tuple(sorted(sections["Orderer"])), by_id)

    def identity(self, serialized: bytes, among: Collection[str], what: str, section: str) -> tuple[Msp, MspIdentity]:
        """A ``SerializedIdentity`` as a valid identity of one of the MSPs ``among``.

        ``what`` names the signer in messages ("creator", "endorser"), ``section`` the
        organisations ``among`` stands for ("an application organisation").
        Raises :class:`InvalidIdentity` saying why it is not one.
        """
        try:
            named = identities_pb2.SerializedIdentity.FromString(serialized)
        except DecodeError:
            raise InvalidIdentity(f"the {what}'s identity does not decode") from None
        if named.mspid not in among:
            raise InvalidIdentity(f"{named.mspid or 'an unnamed MSP'} is not {section} of the channel")
        try:
            cert = x509.load_pem_x509_certificate(named.id_bytes)
        except ValueError:
            raise InvalidIdentity(f"the {named.mspid} {what}'s certificate does not decode") from None
        msp = self.by_id[named.mspid]
        return msp, msp.validate(cert)
