"""An auditor's proof of records on a Fabric channel, checked independently of the peer.

The auditor asks one peer — which may lie — for the channel's blocks (qscc) and takes
none of its answers on trust. Block by block from the genesis block
(:class:`ChainVerifier`, :func:`verify_chain`) it checks:

1. **the chain**: block ``n`` is the ``n``-th block and its ``previous_hash`` is block
   ``n-1``'s header hash (SHA-256 of the header's ASN.1 DER form);
2. **the data**: every transaction is exactly one well-formed envelope in its canonical
   encoding (so no bytes can move between transactions, which a hash of their
   concatenation would not notice) and the header's ``data_hash`` is the SHA-256 of the
   concatenated transactions;
3. **the orderer signatures** (block metadata SIGNATURES), against the channel
   configuration in force at that block — the genesis block's, then each later
   configuration block's once that block has itself verified (:class:`ChannelTrust`).
   Each signature is verified over ``metadata.value || signature_header || header DER``
   (``identifier_header`` in place of the signature header for a BFT consenter named by
   its id); ECDSA signatures must be low-S, as Fabric's BCCSP requires. The signer's
   certificate must be a valid identity of an *orderer organisation's* MSP — chain to its
   root CAs (through its intermediates), not be revoked by its CRLs, satisfy its OU rules
   — and carry the ``orderer`` NodeOU (stricter than Fabric, whose etcdraft ``Writers``
   also accept an orderer organisation's admins and clients; an MSP without NodeOUs
   therefore signs nothing here). The valid signers must then satisfy the channel's
   ``/Channel/Orderer/BlockValidation`` policy read from that configuration and
   evaluated as Fabric evaluates policies:
   etcdraft channels use ImplicitMeta ``ANY Writers`` of the orderer organisations (one
   valid orderer signature); Fabric 3 BFT channels a signature policy ``OutOf(q, …)`` over
   the consenters' identities with q = ⌈(n + f + 1) / 2⌉, f = ⌊(n - 1) / 3⌋ (3 of 4);
4. **the records** (:func:`verify_inclusion`): each transaction asked about is in a block
   of that chain and its code in the block's TRANSACTIONS_FILTER is VALID;
5. **pins**: ``BLOCK:HASH`` (header hash, hex) from an earlier audit still match.

What the blocks alone cannot prove:

* TRANSACTIONS_FILTER is written by each committing peer after ordering and no orderer
  signs it: a lying peer can mark an invalid transaction VALID (or the reverse) without
  breaking a hash or a signature. Telling them apart needs the endorsement policy and a
  replay of read/write sets, or a second peer's answer.
* The genesis block is the trust anchor and is not signed (in Fabric neither). A peer that
  invents a whole channel — its own genesis block, orderer CA and blocks — passes every
  other check: pin block 0 (``0:HASH``) or compare :attr:`ProofReport.genesis_hash` with a
  hash obtained out of band.
* Orderer signatures prove that a block was ordered, not that it is the newest: a peer can
  withhold the latest blocks. A pin from an earlier audit catches a chain that shrank.
* Certificate expiry is ignored, as Fabric ignores it when validating identities (a
  signature made while a certificate was valid stays valid).
* Not implemented, and so never counted as a valid orderer signature: Idemix MSPs,
  X.509 name and path-length constraints, ``MSP``-type policies, combined and anonymity
  principals. None appears in a channel this project creates.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from fabric_protos.common import (
    common_pb2,
    configtx_pb2,
    configuration_pb2,
    policies_pb2,
)
from fabric_protos.msp import identities_pb2, msp_config_pb2, msp_principal_pb2
from fabric_protos.orderer import configuration_pb2 as orderer_configuration_pb2
from google.protobuf.message import DecodeError

from ledger.errors import LedgerError
from ledger.fabric.blocks import (
    ChainInfo,
    block_data_hash,
    block_header_bytes,
    block_header_hash,
    find_transaction,
)

__all__ = [
    "BlockSource",
    "ChainVerifier",
    "ChannelTrust",
    "ProofReport",
    "parse_pin",
    "prove_records",
    "verify_block_signatures",
    "verify_chain",
    "verify_inclusion",
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
_PIN_RE = re.compile(r"^(\d+):([0-9a-fA-F]{64})$")

log = structlog.get_logger("fedledger.fabric.proof")


class _Invalid(Exception):
    """A signature or identity that does not verify; the message says why."""


# --- identities: Fabric's X.509 MSP, as far as block signatures need it -----------------


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _name(cert: x509.Certificate) -> str:
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


def _verify_signature(cert: x509.Certificate, data: bytes, signature: bytes, digest: hashes.HashAlgorithm) -> None:
    """Check ``signature`` over ``data`` by ``cert``'s key the way Fabric's BCCSP does."""
    key = cert.public_key()
    if isinstance(key, ed25519.Ed25519PublicKey):
        try:
            key.verify(signature, data)
        except InvalidSignature:
            raise _Invalid("the signature does not verify") from None
        return
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _CURVE_ORDERS:
        raise _Invalid("the signer's key type is not supported")
    try:
        _, s = decode_dss_signature(signature)
    except ValueError:
        raise _Invalid("the signature is not a DER ECDSA signature") from None
    if s > _CURVE_ORDERS[key.curve.name] // 2:
        raise _Invalid("the signature is high-S (Fabric accepts only low-S)")
    try:
        key.verify(signature, data, ec.ECDSA(digest))
    except InvalidSignature:
        raise _Invalid("the signature does not verify") from None


@dataclass(frozen=True)
class _Identity:
    """A signer whose identity is valid under its MSP."""

    msp_id: str
    cert: x509.Certificate
    der: bytes
    ous: tuple[tuple[str, bytes], ...]  # (OU, certifiers identifier) as Fabric's MSP sees them


@dataclass
class _Msp:
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
    _checked: dict[bytes, _Identity | str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: msp_config_pb2.MSPConfig) -> _Msp:
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
        except _Invalid as exc:
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
                raise _Invalid(f"'{_name(current)}' is not certified by a CA of {self.msp_id}")
            chain.append(issuer)
            if _der(issuer) in roots:
                return chain
            current = issuer
        raise _Invalid(f"the certificate chain of '{_name(cert)}' is too long")

    def validate(self, cert: x509.Certificate) -> _Identity:
        """``cert`` as a valid identity of this MSP; :class:`_Invalid` says why it is not."""
        key = _der(cert)
        if key not in self._checked:
            try:
                self._checked[key] = self._validate(cert, key)
            except _Invalid as exc:
                self._checked[key] = str(exc)
        checked = self._checked[key]
        if isinstance(checked, str):
            raise _Invalid(checked)
        return checked

    def _validate(self, cert: x509.Certificate, der: bytes) -> _Identity:
        if _is_ca(cert):
            raise _Invalid(f"'{_name(cert)}' is a CA certificate, which cannot be an identity")
        chain = self._chain(cert)
        self._check_revocation(cert, chain[0])
        certifier = self._hash_chain(chain)
        ous = tuple(
            (str(a.value), certifier) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        )
        if self.ou_identifiers and not any(ou in self.ou_identifiers for ou in ous):
            raise _Invalid(f"'{_name(cert)}' has none of the OUs {self.msp_id} accepts")
        if self.node_ous is not None:
            certifiers = dict(self.node_ous.values())  # node OU → its CA's certifiers id (b"": any)
            count = 0
            for name, certified in ous:
                if name not in certifiers:
                    continue
                if certifiers[name] and certifiers[name] != certified:
                    raise _Invalid(f"'{_name(cert)}' has node OU {name!r} from a CA {self.msp_id} does not name for it")
                count += 1
            if count != 1:
                raise _Invalid(
                    f"'{_name(cert)}' must carry exactly one of the node OUs of {self.msp_id} "
                    f"(client, peer, admin, orderer), it carries {count}"
                )
        return _Identity(self.msp_id, cert, der, ous)

    def _check_revocation(self, cert: x509.Certificate, issuer: x509.Certificate) -> None:
        try:
            ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        except x509.ExtensionNotFound:
            raise _Invalid(f"the CA of '{_name(cert)}' has no subject key identifier") from None
        for crl in self.crls:
            try:
                aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
            except x509.ExtensionNotFound:
                raise _Invalid(f"a CRL of {self.msp_id} has no authority key identifier") from None
            if (
                aki == ski
                and crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
                and crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
            ):
                raise _Invalid(f"'{_name(cert)}' is revoked by its CA")

    def has_role(self, identity: _Identity, role: int) -> bool:
        """Whether a valid identity of this MSP has an MSP role (member, admin, client…)."""
        if role == msp_principal_pb2.MSPRole.MEMBER:
            return True
        if role == msp_principal_pb2.MSPRole.ADMIN and identity.der in self.admins:
            return True
        wanted = self.node_ous.get(_ROLE_NAMES.get(role, "")) if self.node_ous is not None else None
        return wanted is not None and any(name == wanted[0] for name, _ in identity.ous)


# --- policies: Fabric's signature and implicit-meta policies --------------------------


class _Policy(Protocol):
    def satisfied_by(self, signers: Sequence[_Identity]) -> bool: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class _Reject:
    """A policy Fabric would not satisfy (missing, or of a kind it cannot evaluate here)."""

    why: str

    def satisfied_by(self, signers: Sequence[_Identity]) -> bool:
        return False

    def describe(self) -> str:
        return f"<{self.why}>"


@dataclass(frozen=True)
class _ImplicitMeta:
    """``ANY|ALL|MAJORITY <sub_policy>`` over the subgroups of a config group."""

    rule: str
    sub_policy: str
    subs: tuple[tuple[str, _Policy], ...]

    def satisfied_by(self, signers: Sequence[_Identity]) -> bool:
        n = len(self.subs)
        # As in Fabric, a group with no subgroups satisfies any rule.
        threshold = 0 if n == 0 else {"ANY": 1, "ALL": n, "MAJORITY": n // 2 + 1}[self.rule]
        return sum(policy.satisfied_by(signers) for _, policy in self.subs) >= threshold

    def describe(self) -> str:
        return f"{self.rule} {self.sub_policy} of [{', '.join(name for name, _ in self.subs)}]"


@dataclass(frozen=True)
class _SignaturePolicy:
    """A ``SignaturePolicyEnvelope``: ``OutOf(n, …)`` over principals, evaluated greedily."""

    rule: policies_pb2.SignaturePolicy
    principals: tuple[msp_principal_pb2.MSPPrincipal, ...]
    msps: Mapping[str, _Msp]

    def satisfied_by(self, signers: Sequence[_Identity]) -> bool:
        return self._evaluate(self.rule, signers, [False] * len(signers))

    def _evaluate(self, rule: policies_pb2.SignaturePolicy, signers: Sequence[_Identity], used: list[bool]) -> bool:
        # Fabric's evaluation: each signer counts for at most one principal, and a sub-rule
        # consumes signers only when it is satisfied.
        if rule.WhichOneof("Type") == "n_out_of":
            verified = 0
            for sub in rule.n_out_of.rules:
                trial = list(used)
                if self._evaluate(sub, signers, trial):
                    verified += 1
                    used[:] = trial
            return verified >= rule.n_out_of.n
        if rule.WhichOneof("Type") == "signed_by":
            principal = self.principals[rule.signed_by]
            for i, signer in enumerate(signers):
                if not used[i] and self._satisfies(signer, principal):
                    used[i] = True
                    return True
        return False

    def _satisfies(self, signer: _Identity, principal: msp_principal_pb2.MSPPrincipal) -> bool:
        kind = principal.principal_classification
        try:
            if kind == msp_principal_pb2.MSPPrincipal.ROLE:
                role = msp_principal_pb2.MSPRole.FromString(principal.principal)
                msp = self.msps.get(signer.msp_id)
                return role.msp_identifier == signer.msp_id and msp is not None and msp.has_role(signer, role.role)
            if kind == msp_principal_pb2.MSPPrincipal.IDENTITY:
                named = identities_pb2.SerializedIdentity.FromString(principal.principal)
                cert = x509.load_pem_x509_certificate(named.id_bytes)
                return named.mspid == signer.msp_id and _der(cert) == signer.der
            if kind == msp_principal_pb2.MSPPrincipal.ORGANIZATION_UNIT:
                unit = msp_principal_pb2.OrganizationUnit.FromString(principal.principal)
                wanted = (unit.organizational_unit_identifier, bytes(unit.certifiers_identifier))
                return unit.msp_identifier == signer.msp_id and wanted in signer.ous
        except (DecodeError, ValueError):
            return False
        return False  # anonymity and combined principals never name an orderer

    def describe(self) -> str:
        return self._describe(self.rule)

    def _describe(self, rule: policies_pb2.SignaturePolicy) -> str:
        if rule.WhichOneof("Type") == "n_out_of":
            subs = ", ".join(self._describe(sub) for sub in rule.n_out_of.rules)
            return f"OutOf({rule.n_out_of.n}, {subs})"
        principal = self.principals[rule.signed_by]
        try:
            if principal.principal_classification == msp_principal_pb2.MSPPrincipal.ROLE:
                role = msp_principal_pb2.MSPRole.FromString(principal.principal)
                return f"'{role.msp_identifier}.{msp_principal_pb2.MSPRole.MSPRoleType.Name(role.role).lower()}'"
            if principal.principal_classification == msp_principal_pb2.MSPPrincipal.IDENTITY:
                named = identities_pb2.SerializedIdentity.FromString(principal.principal)
                return f"'{named.mspid}:{_name(x509.load_pem_x509_certificate(named.id_bytes))}'"
        except (DecodeError, ValueError):
            return "'<undecodable principal>'"
        return f"'<{msp_principal_pb2.MSPPrincipal.Classification.Name(principal.principal_classification)}>'"


def _compile(policy: policies_pb2.Policy, group: configtx_pb2.ConfigGroup, msps: Mapping[str, _Msp]) -> _Policy:
    """The policy a config group defines, with implicit-meta rules resolved over its subgroups."""
    if policy.type == policies_pb2.Policy.SIGNATURE:
        envelope = policies_pb2.SignaturePolicyEnvelope.FromString(policy.value)
        _check_indices(envelope.rule, len(envelope.identities))
        return _SignaturePolicy(envelope.rule, tuple(envelope.identities), msps)
    if policy.type == policies_pb2.Policy.IMPLICIT_META:
        meta = policies_pb2.ImplicitMetaPolicy.FromString(policy.value)
        subs: list[tuple[str, _Policy]] = []
        for name in sorted(group.groups):
            subgroup = group.groups[name]
            if meta.sub_policy in subgroup.policies:
                subs.append((name, _compile(subgroup.policies[meta.sub_policy].policy, subgroup, msps)))
            else:
                subs.append((name, _Reject(f"{name} has no {meta.sub_policy} policy")))
        return _ImplicitMeta(policies_pb2.ImplicitMetaPolicy.Rule.Name(meta.rule), meta.sub_policy, tuple(subs))
    return _Reject(f"policy type {policy.type} is not supported")


def _check_indices(rule: policies_pb2.SignaturePolicy, n: int) -> None:
    if rule.WhichOneof("Type") == "signed_by" and not 0 <= rule.signed_by < n:
        raise ValueError(f"a signature policy names identity {rule.signed_by} of {n}")
    for sub in rule.n_out_of.rules:
        _check_indices(sub, n)


# --- the channel configuration: who may sign blocks ------------------------------------


def _config_envelope(block: common_pb2.Block) -> tuple[str, configtx_pb2.Config] | None:
    """``(channel, config)`` when ``block`` is a configuration block, else None."""
    if len(block.data.data) != 1:
        return None
    try:
        payload = common_pb2.Payload.FromString(common_pb2.Envelope.FromString(block.data.data[0]).payload)
        header = common_pb2.ChannelHeader.FromString(payload.header.channel_header)
        if header.type != common_pb2.CONFIG:
            return None
        return header.channel_id, configtx_pb2.ConfigEnvelope.FromString(payload.data).config
    except DecodeError:
        return None


@dataclass(frozen=True)
class ChannelTrust:
    """Who may sign the channel's blocks, from one configuration block.

    ``orderer_msps`` are the orderer organisations (``/Channel/Orderer/<org>``) whose MSPs
    — root and intermediate CAs, CRLs, NodeOUs — decide whether a signer is one of their
    orderers; ``consenters`` maps a BFT consenter id to its MSP id and certificate (PEM);
    ``policy`` describes ``/Channel/Orderer/BlockValidation``.
    """

    channel: str
    config_block: int
    consensus: str
    orderer_msps: tuple[str, ...]
    consenters: Mapping[int, tuple[str, bytes]] = field(repr=False)
    identifier_headers: bool
    policy: str
    _msps: Mapping[str, _Msp] = field(repr=False)
    _block_validation: _Policy = field(repr=False)

    @classmethod
    def from_config_block(cls, block: common_pb2.Block) -> ChannelTrust:
        """The trust a configuration block (the genesis block, or a later one) establishes.

        Raises ``ValueError`` when the block holds no usable channel configuration.
        """
        found = _config_envelope(block)
        if found is None:
            raise ValueError(f"block {block.header.number} is not a channel configuration block")
        channel, config = found
        return cls.from_config(config, channel=channel, config_block=block.header.number)

    @classmethod
    def from_config(cls, config: configtx_pb2.Config, *, channel: str, config_block: int) -> ChannelTrust:
        """The trust a channel ``Config`` establishes; ``ValueError`` when it is unusable."""
        root = config.channel_group
        if "Orderer" not in root.groups:
            raise ValueError("the configuration has no Orderer group")
        orderer = root.groups["Orderer"]
        try:
            msps: dict[str, _Msp] = {}
            orderer_msps: list[str] = []
            for section in ("Application", "Orderer"):
                for org in root.groups[section].groups.values() if section in root.groups else ():
                    if "MSP" in org.values:
                        msp = _Msp.from_config(msp_config_pb2.MSPConfig.FromString(org.values["MSP"].value))
                        msps[msp.msp_id] = msp
                        if section == "Orderer":
                            orderer_msps.append(msp.msp_id)
            if "HashingAlgorithm" in root.values:
                algorithm = configuration_pb2.HashingAlgorithm.FromString(root.values["HashingAlgorithm"].value)
                if algorithm.name != "SHA256":
                    raise ValueError(f"hashing algorithm {algorithm.name} is not SHA256")
            consensus = ""
            if "ConsensusType" in orderer.values:
                value = orderer.values["ConsensusType"].value
                consensus = orderer_configuration_pb2.ConsensusType.FromString(value).type
            consenters: dict[int, tuple[str, bytes]] = {}
            if "Orderers" in orderer.values:
                for c in configuration_pb2.Orderers.FromString(orderer.values["Orderers"].value).consenter_mapping:
                    consenters[c.id] = (c.msp_id, bytes(c.identity))
            capabilities: set[str] = set()
            if "Capabilities" in root.values:
                value = root.values["Capabilities"].value
                capabilities = set(configuration_pb2.Capabilities.FromString(value).capabilities)
            if "BlockValidation" not in orderer.policies:
                raise ValueError("the configuration has no /Channel/Orderer/BlockValidation policy")
            policy = _compile(orderer.policies["BlockValidation"].policy, orderer, msps)
        except DecodeError as exc:
            raise ValueError(f"the configuration does not decode: {exc}") from None
        return cls(
            channel=channel,
            config_block=config_block,
            consensus=consensus,
            orderer_msps=tuple(sorted(orderer_msps)),
            consenters=consenters,
            # Fabric 3 (channel capability V3_0) lets a BFT consenter name itself by id.
            identifier_headers="V3_0" in capabilities,
            policy=policy.describe(),
            _msps=msps,
            _block_validation=policy,
        )

    def root_certs(self, msp_id: str) -> tuple[bytes, ...]:
        """The root CA certificates (PEM) of one organisation's MSP."""
        return tuple(c.public_bytes(serialization.Encoding.PEM) for c in self._msps[msp_id].roots)

    def _signer(self, value: bytes, signature: common_pb2.MetadataSignature, header: bytes) -> _Identity:
        """The orderer that made one block signature; :class:`_Invalid` says why none did.

        ``DecodeError`` for a signature or identifier header that does not decode, which
        Fabric treats as a bad block rather than as one bad signature.
        """
        if self.identifier_headers and not signature.signature_header and signature.identifier_header:
            identifier = common_pb2.IdentifierHeader.FromString(signature.identifier_header).identifier
            if identifier not in self.consenters:
                raise _Invalid(f"consenter {identifier} is not in the channel's consenter set")
            msp_id, id_bytes = self.consenters[identifier]
            signed = value + signature.identifier_header + header
        else:
            creator = common_pb2.SignatureHeader.FromString(signature.signature_header).creator
            try:
                identity = identities_pb2.SerializedIdentity.FromString(creator)
            except DecodeError:
                raise _Invalid("the signer's identity does not decode") from None
            msp_id, id_bytes = identity.mspid, identity.id_bytes
            signed = value + signature.signature_header + header
        if msp_id not in self.orderer_msps:
            raise _Invalid(f"{msp_id or 'an unnamed MSP'} is not an orderer organisation of the channel")
        try:
            cert = x509.load_pem_x509_certificate(id_bytes)
        except ValueError:
            raise _Invalid(f"the {msp_id} signer's certificate does not decode") from None
        msp = self._msps[msp_id]
        signer = msp.validate(cert)
        if not msp.has_role(signer, msp_principal_pb2.MSPRole.ORDERER):
            raise _Invalid(f"{msp_id} '{_name(cert)}' is not an orderer (no orderer NodeOU)")
        try:
            _verify_signature(cert, signed, signature.signature, msp.digest)
        except _Invalid as exc:
            raise _Invalid(f"{msp_id} '{_name(cert)}': {exc}") from None
        return signer


# --- the checks --------------------------------------------------------------------------


def verify_block_signatures(block: common_pb2.Block, trust: ChannelTrust) -> list[str]:
    """Problems with ``block``'s orderer signatures under ``trust`` (empty: they satisfy it)."""
    where = f"block {block.header.number}"
    if len(block.metadata.metadata) <= common_pb2.SIGNATURES:
        return [f"{where}: no SIGNATURES metadata"]
    try:
        metadata = common_pb2.Metadata.FromString(block.metadata.metadata[common_pb2.SIGNATURES])
    except DecodeError as exc:
        return [f"{where}: SIGNATURES metadata does not decode: {exc}"]
    if not metadata.signatures:
        return [f"{where}: no orderer signature"]
    header = block_header_bytes(block.header)
    signers: list[_Identity] = []
    reasons: list[str] = []
    for i, signature in enumerate(metadata.signatures):
        try:
            signer = trust._signer(metadata.value, signature, header)
        except _Invalid as exc:
            reasons.append(f"signature {i}: {exc}")
            continue
        except DecodeError:
            return [f"{where}: signature {i}: its header does not decode"]
        if any(s.msp_id == signer.msp_id and s.der == signer.der for s in signers):
            reasons.append(f"signature {i}: a second signature by {signer.msp_id} '{_name(signer.cert)}'")
            continue
        signers.append(signer)
    if trust._block_validation.satisfied_by(signers):
        return []
    detail = f" ({'; '.join(reasons)})" if reasons else ""
    if not signers:
        return [f"{where}: no valid orderer signature{detail}"]
    return [f"{where}: the valid orderer signatures ({len(signers)}) do not satisfy BlockValidation {trust.policy}{detail}"]


def _data_problems(block: common_pb2.Block, where: str) -> list[str]:
    """The block's transactions are well formed and hash to its header's ``data_hash``."""
    data = block.data.data
    if not data:
        return [f"{where}: has no transactions"]
    problems: list[str] = []
    # As in Fabric, a configuration block's single envelope is exempt from the form check.
    if _config_envelope(block) is None:
        for i, raw in enumerate(data):
            try:
                envelope = common_pb2.Envelope.FromString(raw)
            except DecodeError:
                problems.append(f"{where}: transaction {i} is not an envelope")
                continue
            if not envelope.payload or not envelope.signature:
                problems.append(f"{where}: transaction {i} has no payload or no signature")
            elif envelope.SerializeToString() != raw:
                problems.append(f"{where}: transaction {i} is not in its canonical encoding")
    computed = block_data_hash(block)
    if computed != block.header.data_hash:
        problems.append(
            f"{where}: data hash {block.header.data_hash.hex()} does not match its data (which hashes to {computed.hex()})"
        )
    return problems


class ChainVerifier:
    """Checks a channel's blocks 0, 1, 2… one at a time, holding only what the next needs.

    :meth:`add` returns the problems of each block; :attr:`trust` is the channel
    configuration in force after the blocks added so far (None until block 0 verified).
    """

    def __init__(self) -> None:
        self.trust: ChannelTrust | None = None
        self.hashes: list[bytes] = []  # header hash of every block added, by number

    @property
    def height(self) -> int:
        """How many blocks have been added."""
        return len(self.hashes)

    def add(self, block: common_pb2.Block) -> list[str]:
        """Check the next block of the chain; its problems (empty: it verifies)."""
        number = len(self.hashes)
        where = f"block {number}"
        problems: list[str] = []
        if block.header.number != number:
            problems.append(f"{where}: the block in its place says it is block {block.header.number}")
        if number > 0 and block.header.previous_hash != self.hashes[-1]:
            problems.append(
                f"{where}: previous hash {block.header.previous_hash.hex()} does not match "
                f"block {number - 1}'s header hash {self.hashes[-1].hex()}"
            )
        problems += _data_problems(block, where)
        if number == 0:
            # The genesis block is not signed: it is the trust anchor (see the module notes).
            try:
                self.trust = ChannelTrust.from_config_block(block)
            except ValueError as exc:
                problems.append(f"{where}: no usable channel configuration: {exc}")
        elif self.trust is None:
            problems.append(f"{where}: orderer signatures cannot be checked without a channel configuration")
        else:
            problems += verify_block_signatures(block, self.trust)
            # A new configuration is adopted only from a block that verified completely
            # under the old one, as peers do; a forged block cannot install its own CAs.
            if not problems and _config_envelope(block) is not None:
                try:
                    trust = ChannelTrust.from_config_block(block)
                except ValueError as exc:
                    problems.append(f"{where}: no usable channel configuration: {exc}")
                else:
                    if trust.channel != self.trust.channel:
                        problems.append(f"{where}: configuration of channel {trust.channel!r}, not {self.trust.channel!r}")
                    else:
                        self.trust = trust
        self.hashes.append(block_header_hash(block.header))
        return problems


def verify_chain(blocks: Iterable[common_pb2.Block]) -> list[str]:
    """Problems with a channel's blocks 0..n (empty: every block links, hashes and is signed)."""
    verifier = ChainVerifier()
    problems: list[str] = []
    for block in blocks:
        problems += verifier.add(block)
    return problems if verifier.height else ["no blocks to verify"]


def verify_inclusion(block: common_pb2.Block, tx_id: str) -> list[str]:
    """Problems with transaction ``tx_id`` in ``block``: absent, or not flagged VALID.

    The flag comes from the block's TRANSACTIONS_FILTER, which the committing peer
    writes and no orderer signs (see the module notes).
    """
    number = block.header.number
    try:
        transaction = find_transaction(block, tx_id)
    except ValueError as exc:
        return [f"tx {tx_id}: {exc}"]
    if transaction is None:
        return [f"tx {tx_id}: not in block {number}"]
    if not transaction.valid:
        return [f"tx {tx_id}: in block {number} but TRANSACTIONS_FILTER says {transaction.validation_code}"]
    return []


def parse_pin(spec: str) -> tuple[int, str]:
    """``BLOCK:HASH`` → (block number, lower-case hex header hash); ``ValueError`` if malformed."""
    match = _PIN_RE.fullmatch(spec.strip())
    if match is None:
        raise ValueError(f"pin {spec!r} is not BLOCK:HASH (a block number and a 64-digit hex header hash)")
    return int(match.group(1)), match.group(2).lower()


class BlockSource(Protocol):
    """Where blocks come from: a :class:`ledger.fabric.gateway.Network`, or a test's fake."""

    def get_chain_info(self) -> ChainInfo: ...

    def get_block_by_number(self, number: int) -> common_pb2.Block: ...


@dataclass(frozen=True)
class ProofReport:
    """The outcome of :func:`prove_records`.

    ``head`` is ``(number, header hash hex)`` of the last block checked — what a later
    audit pins; ``transactions`` maps each tx id found to the block that holds it.
    """

    blocks_checked: int
    head: tuple[int, str] | None
    genesis_hash: str | None
    transactions: Mapping[str, int]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return not self.problems


def _tx_ids(block: common_pb2.Block) -> list[str]:
    ids: list[str] = []
    for raw in block.data.data:
        try:
            payload = common_pb2.Payload.FromString(common_pb2.Envelope.FromString(raw).payload)
            ids.append(common_pb2.ChannelHeader.FromString(payload.header.channel_header).tx_id)
        except DecodeError:
            continue  # reported by the block's own checks
    return ids


def prove_records(network: BlockSource, tx_ids: Iterable[str], pins: Iterable[str] = ()) -> ProofReport:
    """Prove that transactions are VALID records of the channel, trusting no peer's word.

    Reads blocks 0..height-1 through ``network`` (any peer), verifies the whole chain —
    links, data hashes, orderer signatures against the channel configuration — finds each
    transaction in it and checks its validation flag, and checks ``pins`` (``BLOCK:HASH``).
    A block that cannot be read ends the walk with a problem.
    """
    wanted = list(dict.fromkeys(tx_ids))
    wanted_set = set(wanted)
    problems: list[str] = []
    pinned: list[tuple[int, str]] = []
    for spec in pins:
        try:
            pinned.append(parse_pin(spec))
        except ValueError as exc:
            problems.append(str(exc))
    verifier = ChainVerifier()
    found: dict[str, int] = {}
    try:
        info = network.get_chain_info()
    except LedgerError as exc:
        problems.append(f"the channel height cannot be read: {exc}")
        return ProofReport(0, None, None, {}, tuple(problems))
    for number in range(info.height):
        try:
            block = network.get_block_by_number(number)
        except LedgerError as exc:
            problems.append(f"block {number} cannot be read: {exc}")
            break
        problems += verifier.add(block)
        for tx_id in _tx_ids(block):
            # The first copy of a tx id is the one that counts; Fabric flags later copies.
            if tx_id in wanted_set and tx_id not in found:
                found[tx_id] = number
                problems += verify_inclusion(block, tx_id)
    hashes = verifier.hashes
    head = (len(hashes) - 1, hashes[-1].hex()) if hashes else None
    if head is not None and len(hashes) == info.height and info.current_block_hash != head[1]:
        problems.append(
            f"chain info: the peer says block {head[0]} hashes to {info.current_block_hash}, it hashes to {head[1]}"
        )
    last = f"blocks 0..{len(hashes) - 1}" if hashes else "the channel"
    problems += [f"tx {tx_id}: not in {last}" for tx_id in wanted if tx_id not in found]
    for number, expected in pinned:
        if number >= len(hashes):
            problems.append(f"pinned block {number} is beyond the {len(hashes)} blocks checked")
        elif hashes[number].hex() != expected:
            problems.append(f"block {number} hashes to {hashes[number].hex()}, pinned as {expected}")
    log.info("records_proved", blocks=len(hashes), head=head, records=len(found), problems=len(problems))
    return ProofReport(
        blocks_checked=len(hashes),
        head=head,
        genesis_hash=hashes[0].hex() if hashes else None,
        transactions=found,
        problems=tuple(problems),
    )
