"""Fabric's channel policies, compiled and evaluated over valid signers as Fabric does.

A policy comes from the channel configuration (:func:`compile_policy`: signature
policies, and implicit-meta rules ``ANY|ALL|MAJORITY <sub-policy>`` resolved over a
config group's subgroups) or from Fabric's signature-policy language
(:func:`parse_signature_policy`: ``OutOf(2, 'A.peer', 'B.peer')``, ``AND(…)``, ``OR(…)``,
nested — what ``peer lifecycle chaincode commit --signature-policy`` takes). It is
evaluated over signers already validated by their MSP (:mod:`ledger.fabric.channel_msp`):
each signer counts for at most one principal.

Not implemented, and so never satisfied here: ``MSP``-type policies, combined and
anonymity principals. None appears in a channel this project creates.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fabric_protos.common import configtx_pb2, policies_pb2
from fabric_protos.msp import identities_pb2, msp_principal_pb2
from google.protobuf.message import DecodeError

from ledger.fabric.channel_msp import Msp, MspIdentity, cert_name

__all__ = [
    "Policy",
    "RejectPolicy",
    "compile_policy",
    "parse_signature_policy",
    "signature_policy",
]

class Policy(Protocol):
    """A compiled policy: whether valid signers satisfy it, and how it reads."""

    def satisfied_by(self, signers: Sequence[MspIdentity]) -> bool: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class RejectPolicy:
    """A policy Fabric would not satisfy (missing, or of a kind it cannot evaluate here)."""

    why: str

    def satisfied_by(self, signers: Sequence[MspIdentity]) -> bool:
        """Never."""
        return False

    def describe(self) -> str:
        """``<why>``."""
        return f"<{self.why}>"


@dataclass(frozen=True)
class _ImplicitMeta:
    """``ANY|ALL|MAJORITY <sub_policy>`` over the subgroups of a config group."""

    rule: str
    sub_policy: str
    subs: tuple[tuple[str, Policy], ...]

    def satisfied_by(self, signers: Sequence[MspIdentity]) -> bool:
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
    msps: Mapping[str, Msp]

    def satisfied_by(self, signers: Sequence[MspIdentity]) -> bool:
        return self._evaluate(self.rule, signers, [False] * len(signers))

    def _evaluate(self, rule: policies_pb2.SignaturePolicy, signers: Sequence[MspIdentity], used: list[bool]) -> bool:
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

    def _satisfies(self, signer: MspIdentity, principal: msp_principal_pb2.MSPPrincipal) -> bool:
        kind = principal.principal_classification
        try:
            if kind == msp_principal_pb2.MSPPrincipal.ROLE:
                role = msp_principal_pb2.MSPRole.FromString(principal.principal)
                msp = self.msps.get(signer.msp_id)
                return role.msp_identifier == signer.msp_id and msp is not None and msp.has_role(signer, role.role)
            if kind == msp_principal_pb2.MSPPrincipal.IDENTITY:
                named = identities_pb2.SerializedIdentity.FromString(principal.principal)
                cert = x509.load_pem_x509_certificate(named.id_bytes)
                return named.mspid == signer.msp_id and cert.public_bytes(serialization.Encoding.DER) == signer.der
            if kind == msp_principal_pb2.MSPPrincipal.ORGANIZATION_UNIT:
                unit = msp_principal_pb2.OrganizationUnit.FromString(principal.principal)
                wanted = (unit.organizational_unit_identifier, bytes(unit.certifiers_identifier))
                return unit.msp_identifier == signer.msp_id and wanted in signer.ous
        except (DecodeError, ValueError):
            return False
        return False  # anonymity and combined principals are not implemented (module notes)

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
                return f"'{named.mspid}:{cert_name(x509.load_pem_x509_certificate(named.id_bytes))}'"
        except (DecodeError, ValueError):
            return "'<undecodable principal>'"
        return f"'<{msp_principal_pb2.MSPPrincipal.Classification.Name(principal.principal_classification)}>'"


def signature_policy(envelope: policies_pb2.SignaturePolicyEnvelope, msps: Mapping[str, Msp]) -> Policy:
    """A signature policy (e.g. from :func:`parse_signature_policy`) over ``msps``."""
    _check_indices(envelope.rule, len(envelope.identities))
    return _SignaturePolicy(envelope.rule, tuple(envelope.identities), msps)


def compile_policy(policy: policies_pb2.Policy, group: configtx_pb2.ConfigGroup, msps: Mapping[str, Msp]) -> Policy:
    """The policy a config group defines, with implicit-meta rules resolved over its subgroups.

    ``DecodeError`` or ``ValueError`` when the policy is malformed.
    """
    if policy.type == policies_pb2.Policy.SIGNATURE:
        return signature_policy(policies_pb2.SignaturePolicyEnvelope.FromString(policy.value), msps)
    if policy.type == policies_pb2.Policy.IMPLICIT_META:
        meta = policies_pb2.ImplicitMetaPolicy.FromString(policy.value)
        subs: list[tuple[str, Policy]] = []
        for name in sorted(group.groups):
            subgroup = group.groups[name]
            if meta.sub_policy in subgroup.policies:
                subs.append((name, compile_policy(subgroup.policies[meta.sub_policy].policy, subgroup, msps)))
            else:
                subs.append((name, RejectPolicy(f"{name} has no {meta.sub_policy} policy")))
        return _ImplicitMeta(policies_pb2.ImplicitMetaPolicy.Rule.Name(meta.rule), meta.sub_policy, tuple(subs))
    return RejectPolicy(f"policy type {policy.type} is not supported")


def _check_indices(rule: policies_pb2.SignaturePolicy, n: int) -> None:
    if rule.WhichOneof("Type") == "signed_by" and not 0 <= rule.signed_by < n:
        raise ValueError(f"a signature policy names identity {rule.signed_by} of {n}")
    for sub in rule.n_out_of.rules:
        _check_indices(sub, n)


# --- Fabric's signature-policy language ---------------------------------------------------

_TOKEN_RE = re.compile(r"\s*(?:(?P<word>[A-Za-z]+)|(?P<number>\d+)|(?P<string>'[^']*'|\"[^\"]*\")|(?P<punct>[(),]))")
_PRINCIPAL_RE = re.compile(r"([A-Za-z0-9.-]+)\.(admin|member|client|peer|orderer)")
# Fabric accepts each gate in three spellings.
_GATES = {
    **dict.fromkeys(("And", "and", "AND"), "AND"),
    **dict.fromkeys(("Or", "or", "OR"), "OR"),
    **dict.fromkeys(("OutOf", "outof", "OUTOF"), "OUTOF"),
}
_KINDS = {"word": "a gate", "number": "a number", "string": "a quoted principal", "punct": "'(', ',' or ')'"}
_ROLES = {
    "admin": msp_principal_pb2.MSPRole.ADMIN,
    "member": msp_principal_pb2.MSPRole.MEMBER,
    "client": msp_principal_pb2.MSPRole.CLIENT,
    "peer": msp_principal_pb2.MSPRole.PEER,
    "orderer": msp_principal_pb2.MSPRole.ORDERER,
}


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while text[position:].strip():
        match = _TOKEN_RE.match(text, position)
        if match is None or match.lastgroup is None:
            raise ValueError(f"unexpected {text[position:].strip()[:12]!r}")
        tokens.append((match.lastgroup, match.group(match.lastgroup)))
        position = match.end()
    return tokens


class _PolicyParser:
    """Recursive descent over ``GATE(args)``, producing Fabric's signature policy."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.at = 0
        self.principals: list[msp_principal_pb2.MSPPrincipal] = []

    def _next(self, kind: str, value: str | None = None) -> str:
        wanted = repr(value) if value is not None else _KINDS[kind]
        if self.at >= len(self.tokens):
            raise ValueError(f"the policy ends where {wanted} was expected")
        got_kind, got = self.tokens[self.at]
        if got_kind != kind or (value is not None and got != value):
            raise ValueError(f"{got!r} where {wanted} was expected")
        self.at += 1
        return got

    def _peek(self) -> str | None:
        return self.tokens[self.at][1] if self.at < len(self.tokens) else None

    def gate(self) -> policies_pb2.SignaturePolicy:
        word = self._next("word")
        gate = _GATES.get(word)
        if gate is None:
            raise ValueError(f"{word!r} is not a gate (AND, OR, OutOf)")
        self._next("punct", "(")
        n: int | None = int(self._next("number")) if gate == "OUTOF" else None
        if n is not None:
            self._next("punct", ",")
        rules = [self.item()]
        while self._peek() == ",":
            self._next("punct", ",")
            rules.append(self.item())
        self._next("punct", ")")
        threshold = {"AND": len(rules), "OR": 1}.get(gate, n or 0)
        if threshold > len(rules) + 1:  # Fabric's own bound, which allows one unsatisfiable n
            raise ValueError(f"OutOf({threshold}, …) over {len(rules)} principals or rules")
        return policies_pb2.SignaturePolicy(
            n_out_of=policies_pb2.SignaturePolicy.NOutOf(n=threshold, rules=rules)
        )

    def item(self) -> policies_pb2.SignaturePolicy:
        if self._peek() is not None and self.tokens[self.at][0] == "word":
            return self.gate()
        text = self._next("string")[1:-1]
        match = _PRINCIPAL_RE.fullmatch(text)
        if match is None:
            raise ValueError(f"principal {text!r} is not 'MSP.role' (admin, member, client, peer, orderer)")
        role = msp_principal_pb2.MSPRole(msp_identifier=match.group(1), role=_ROLES[match.group(2)])
        self.principals.append(
            msp_principal_pb2.MSPPrincipal(
                principal_classification=msp_principal_pb2.MSPPrincipal.ROLE, principal=role.SerializeToString()
            )
        )
        return policies_pb2.SignaturePolicy(signed_by=len(self.principals) - 1)


def parse_signature_policy(text: str) -> policies_pb2.SignaturePolicyEnvelope:
    """Fabric's signature-policy string (``OutOf(2, 'A.peer', 'B.peer')``, ``AND``, ``OR``,
    nested) as the envelope Fabric compiles it to; ``ValueError`` when it does not parse."""
    try:
        parser = _PolicyParser(text)
        rule = parser.gate()
        if parser.at != len(parser.tokens):
            raise ValueError(f"{parser.tokens[parser.at][1]!r} after the end of the policy")
    except ValueError as exc:
        raise ValueError(f"policy {text!r} does not parse: {exc}") from None
    return policies_pb2.SignaturePolicyEnvelope(rule=rule, identities=parser.principals)
