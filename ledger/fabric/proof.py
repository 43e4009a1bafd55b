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
   (:mod:`ledger.fabric.channel_msp`) — and carry the ``orderer`` NodeOU (stricter than
   Fabric, whose etcdraft ``Writers`` also accept an orderer organisation's admins and
   clients; an MSP without NodeOUs therefore signs nothing here). The valid signers must
   then satisfy the channel's ``/Channel/Orderer/BlockValidation`` policy read from that
   configuration and evaluated as Fabric evaluates policies:
   etcdraft channels use ImplicitMeta ``ANY Writers`` of the orderer organisations (one
   valid orderer signature); Fabric 3 BFT channels a signature policy ``OutOf(q, …)`` over
   the consenters' identities with q = ⌈(n + f + 1) / 2⌉, f = ⌊(n - 1) / 3⌋ (3 of 4);
4. **the records** (:func:`verify_inclusion`): each transaction asked about is in a block
   of that chain and its code in the block's TRANSACTIONS_FILTER is VALID;
5. **what VALID stands for** (:func:`verify_endorsements`, :mod:`ledger.fabric.endorsement`):
   for each such transaction, independently of the flag — the creator's signature and
   identity (an application organisation's client, admin or peer), the tx id, that the
   endorsed proposal response is this transaction's and for the expected chaincode, and
   that its endorsements are valid signatures by peers of application organisations
   which satisfy the endorsement policy: the one the caller states (the consortium's
   agreement, e.g. ``OutOf(2, 'CoordinatorMSP.peer', 'BankAMSP.peer', 'BankBMSP.peer')``),
   else the channel's ``/Channel/Application/Endorsement`` policy;
6. **pins**: ``BLOCK:HASH`` (header hash, hex) from an earlier audit still match.

What the blocks alone cannot prove:

* TRANSACTIONS_FILTER is written by each committing peer after ordering and no orderer
  signs it. Step 5 catches a transaction flagged VALID whose creator or endorsements do
  not hold up — one that Fabric would have flagged ``BAD_CREATOR_SIGNATURE``,
  ``ENDORSEMENT_POLICY_FAILURE`` and the like. It cannot catch one that was properly
  endorsed but lost a race — ``MVCC_READ_CONFLICT``, ``PHANTOM_READ_CONFLICT``,
  ``DUPLICATE_TXID`` against an earlier block — which a lying peer can flag VALID
  unnoticed: that needs a replay of every earlier write set, or a second peer's answer.
  Nor the reverse: a peer flagging a good transaction invalid is reported as invalid.
* The chaincode's committed definition (its real endorsement policy) lives in the world
  state, not in the blocks: the policy checked is the caller's, or the channel's default.
* The genesis block is the trust anchor and is not signed (in Fabric neither). A peer that
  invents a whole channel — its own genesis block, orderer CA and blocks — passes every
  other check: pin block 0 (``0:HASH``) or compare :attr:`ProofReport.genesis_hash` with a
  hash obtained out of band.
* Orderer signatures prove that a block was ordered, not that it is the newest: a peer can
  withhold the latest blocks. A pin from an earlier audit catches a chain that shrank.
* Certificate expiry and the MSP and policy features not implemented are as in
  :mod:`ledger.fabric.channel_msp` and :mod:`ledger.fabric.channel_policy`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from cryptography.hazmat.primitives import serialization
from fabric_protos.common import (
    common_pb2,
    configtx_pb2,
    configuration_pb2,
    policies_pb2,
)
from fabric_protos.msp import identities_pb2, msp_principal_pb2
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
from ledger.fabric.channel_msp import (
    ChannelMsps,
    InvalidIdentity,
    MspIdentity,
    verify_signature,
)
from ledger.fabric.channel_policy import (
    Policy,
    RejectPolicy,
    compile_policy,
    parse_signature_policy,
    signature_policy,
)
from ledger.fabric.endorsement import verify_endorsed_transaction

__all__ = [
    "BlockSource",
    "ChainVerifier",
    "ChannelTrust",
    "ProofReport",
    "parse_pin",
    "parse_signature_policy",
    "prove_records",
    "verify_block_signatures",
    "verify_chain",
    "verify_endorsements",
    "verify_inclusion",
]

_PIN_RE = re.compile(r"^(\d+):([0-9a-fA-F]{64})$")

log = structlog.get_logger("fedledger.fabric.proof")


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
    """Who may sign the channel's blocks and endorse its transactions, from one
    configuration block.

    ``orderer_msps`` are the orderer organisations (``/Channel/Orderer/<org>``) whose MSPs
    — root and intermediate CAs, CRLs, NodeOUs — decide whether a signer is one of their
    orderers; ``application_msps`` the application organisations
    (``/Channel/Application/<org>``), whose clients create transactions and whose peers
    endorse them; ``consenters`` maps a BFT consenter id to its MSP id and certificate
    (PEM); ``policy`` describes ``/Channel/Orderer/BlockValidation`` and
    ``endorsement_policy`` ``/Channel/Application/Endorsement``.
    """

    channel: str
    config_block: int
    consensus: str
    orderer_msps: tuple[str, ...]
    application_msps: tuple[str, ...]
    consenters: Mapping[int, tuple[str, bytes]] = field(repr=False)
    identifier_headers: bool
    policy: str
    endorsement_policy: str
    msps: ChannelMsps = field(repr=False)
    _block_validation: Policy = field(repr=False)
    _endorsement: Policy = field(repr=False)

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
            msps = ChannelMsps.from_config(root)
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
            policy = compile_policy(orderer.policies["BlockValidation"].policy, orderer, msps.by_id)
            endorsement = _endorsement_policy(root, msps)
        except DecodeError as exc:
            raise ValueError(f"the configuration does not decode: {exc}") from None
        return cls(
            channel=channel,
            config_block=config_block,
            consensus=consensus,
            orderer_msps=msps.orderer,
            application_msps=msps.application,
            consenters=consenters,
            # Fabric 3 (channel capability V3_0) lets a BFT consenter name itself by id.
            identifier_headers="V3_0" in capabilities,
            policy=policy.describe(),
            endorsement_policy=endorsement.describe(),
            msps=msps,
            _block_validation=policy,
            _endorsement=endorsement,
        )

    def root_certs(self, msp_id: str) -> tuple[bytes, ...]:
        """The root CA certificates (PEM) of one organisation's MSP."""
        return tuple(c.public_bytes(serialization.Encoding.PEM) for c in self.msps.by_id[msp_id].roots)

    def endorsement(self, envelope: policies_pb2.SignaturePolicyEnvelope | None = None) -> Policy:
        """The endorsement policy to check: ``envelope`` over this configuration's MSPs, or
        the channel's ``/Channel/Application/Endorsement`` when None."""
        return self._endorsement if envelope is None else signature_policy(envelope, self.msps.by_id)

    def _signer(self, value: bytes, signature: common_pb2.MetadataSignature, header: bytes) -> MspIdentity:
        """The orderer that made one block signature; :class:`InvalidIdentity` says why none did.

        ``DecodeError`` for a signature or identifier header that does not decode, which
        Fabric treats as a bad block rather than as one bad signature.
        """
        if self.identifier_headers and not signature.signature_header and signature.identifier_header:
            identifier = common_pb2.IdentifierHeader.FromString(signature.identifier_header).identifier
            if identifier not in self.consenters:
                raise InvalidIdentity(f"consenter {identifier} is not in the channel's consenter set")
            msp_id, id_bytes = self.consenters[identifier]
            creator = identities_pb2.SerializedIdentity(mspid=msp_id, id_bytes=id_bytes).SerializeToString()
            signed = value + signature.identifier_header + header
        else:
            creator = common_pb2.SignatureHeader.FromString(signature.signature_header).creator
            signed = value + signature.signature_header + header
        msp, signer = self.msps.identity(creator, self.orderer_msps, "signer", "an orderer organisation")
        if not msp.has_role(signer, msp_principal_pb2.MSPRole.ORDERER):
            raise InvalidIdentity(f"{signer.describe()} is not an orderer (no orderer NodeOU)")
        try:
            verify_signature(signer.cert, signed, signature.signature, msp.digest)
        except InvalidIdentity as exc:
            raise InvalidIdentity(f"{signer.describe()}: {exc}") from None
        return signer


def _endorsement_policy(root: configtx_pb2.ConfigGroup, msps: ChannelMsps) -> Policy:
    """``/Channel/Application/Endorsement``, or a policy nothing satisfies when it is absent."""
    if "Application" not in root.groups or "Endorsement" not in root.groups["Application"].policies:
        return RejectPolicy("the channel has no /Channel/Application/Endorsement policy")
    application = root.groups["Application"]
    return compile_policy(application.policies["Endorsement"].policy, application, msps.by_id)


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
    signers: list[MspIdentity] = []
    reasons: list[str] = []
    for i, signature in enumerate(metadata.signatures):
        try:
            signer = trust._signer(metadata.value, signature, header)
        except InvalidIdentity as exc:
            reasons.append(f"signature {i}: {exc}")
            continue
        except DecodeError:
            return [f"{where}: signature {i}: its header does not decode"]
        if any(s.msp_id == signer.msp_id and s.der == signer.der for s in signers):
            reasons.append(f"signature {i}: a second signature by {signer.describe()}")
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
    writes and no orderer signs: :func:`verify_endorsements` checks what it claims.
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


def _endorsement_problems(
    raw: bytes, tx_id: str, number: int, trust: ChannelTrust, policy: Policy, chaincode: str
) -> list[str]:
    reasons = verify_endorsed_transaction(
        raw, channel=trust.channel, msps=trust.msps, policy=policy, chaincode=chaincode
    )
    return [f"tx {tx_id}: in block {number} flagged VALID but {reason}" for reason in reasons]


def verify_endorsements(
    block: common_pb2.Block,
    tx_id: str,
    trust: ChannelTrust,
    *,
    endorsement_policy: str | None = None,
    chaincode: str = "fedaudit",
) -> list[str]:
    """Problems with what a VALID flag claims for ``tx_id`` in ``block``, checked without it.

    The transaction's creator signature and identity, its tx id, its endorsed chaincode
    action (``chaincode``) and its endorsements are checked against ``trust`` (the
    configuration in force at ``block``); the endorsers must satisfy
    ``endorsement_policy`` (Fabric's signature-policy syntax; None: the channel's
    ``/Channel/Application/Endorsement``). A transaction that lost an MVCC race is not
    detected: that needs a replay of earlier write sets (see the module notes).
    ``ValueError`` when ``endorsement_policy`` does not parse.
    """
    envelope = None if endorsement_policy is None else parse_signature_policy(endorsement_policy)
    raw = next((r for t, r in _transactions(block) if t == tx_id), None)
    if raw is None:
        return [f"tx {tx_id}: not in block {block.header.number}"]
    return _endorsement_problems(raw, tx_id, block.header.number, trust, trust.endorsement(envelope), chaincode)


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
    audit pins; ``transactions`` maps each tx id found to the block that holds it;
    ``endorsements_checked`` counts the transactions flagged VALID whose creator and
    endorsements were checked (step 5 of the module notes), under ``endorsement_policy``.
    """

    blocks_checked: int
    head: tuple[int, str] | None
    genesis_hash: str | None
    transactions: Mapping[str, int]
    problems: tuple[str, ...]
    endorsements_checked: int = 0
    endorsement_policy: str | None = None

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return not self.problems


def _transactions(block: common_pb2.Block) -> Iterator[tuple[str, bytes]]:
    """(tx id, envelope bytes) of each transaction of ``block`` that decodes."""
    for raw in block.data.data:
        try:
            payload = common_pb2.Payload.FromString(common_pb2.Envelope.FromString(raw).payload)
            yield common_pb2.ChannelHeader.FromString(payload.header.channel_header).tx_id, raw
        except DecodeError:
            continue  # reported by the block's own checks


def prove_records(
    network: BlockSource,
    tx_ids: Iterable[str],
    pins: Iterable[str] = (),
    endorsement_policy: str | None = None,
    *,
    chaincode: str = "fedaudit",
) -> ProofReport:
    """Prove that transactions are VALID records of the channel, trusting no peer's word.

    Reads blocks 0..height-1 through ``network`` (any peer), verifies the whole chain —
    links, data hashes, orderer signatures against the channel configuration — finds each
    transaction in it, checks its validation flag and then what the flag claims: its
    creator's signature, that it invokes ``chaincode``, and that its endorsements are by
    peers of the channel's application organisations and satisfy ``endorsement_policy``
    (Fabric's ``OutOf(k, 'MSP.peer', …)`` / ``AND`` / ``OR`` syntax: the policy the
    auditor expects; None: the channel's ``/Channel/Application/Endorsement``). Checks
    ``pins`` (``BLOCK:HASH``). A block that cannot be read ends the walk with a problem.
    A VALID flag on a transaction that in truth lost an MVCC race is not caught: its
    endorsements are genuine, and only a replay of the earlier writes shows the conflict.
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
    expected: policies_pb2.SignaturePolicyEnvelope | None = None
    policy_ok = True
    if endorsement_policy is not None:
        try:
            expected = parse_signature_policy(endorsement_policy)
        except ValueError as exc:
            # Fails closed: the report is not ok, and no endorsement is counted as checked.
            problems.append(f"the endorsement policy cannot be checked: {exc}")
            policy_ok = False
    verifier = ChainVerifier()
    found: dict[str, int] = {}
    endorsed = 0
    described: str | None = None
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
        block_problems = verifier.add(block)
        problems += block_problems
        for tx_id, raw in _transactions(block):
            # The first copy of a tx id is the one that counts; Fabric flags later copies.
            if tx_id not in wanted_set or tx_id in found:
                continue
            found[tx_id] = number
            included = verify_inclusion(block, tx_id)
            problems += included
            # A block that failed its own checks proves nothing about its transactions.
            if included or block_problems or not policy_ok:
                continue
            if verifier.trust is None:
                problems.append(f"tx {tx_id}: its endorsements cannot be checked without a channel configuration")
                continue
            policy = verifier.trust.endorsement(expected)
            described = policy.describe()
            problems += _endorsement_problems(raw, tx_id, number, verifier.trust, policy, chaincode)
            endorsed += 1
    hashes = verifier.hashes
    head = (len(hashes) - 1, hashes[-1].hex()) if hashes else None
    if head is not None and len(hashes) == info.height and info.current_block_hash != head[1]:
        problems.append(
            f"chain info: the peer says block {head[0]} hashes to {info.current_block_hash}, it hashes to {head[1]}"
        )
    last = f"blocks 0..{len(hashes) - 1}" if hashes else "the channel"
    problems += [f"tx {tx_id}: not in {last}" for tx_id in wanted if tx_id not in found]
    for number, hash_hex in pinned:
        if number >= len(hashes):
            problems.append(f"pinned block {number} is beyond the {len(hashes)} blocks checked")
        elif hashes[number].hex() != hash_hex:
            problems.append(f"block {number} hashes to {hashes[number].hex()}, pinned as {hash_hex}")
    log.info("records_proved", blocks=len(hashes), head=head, records=len(found), endorsements=endorsed,
             problems=len(problems))
    return ProofReport(
        blocks_checked=len(hashes),
        head=head,
        genesis_hash=hashes[0].hex() if hashes else None,
        transactions=found,
        problems=tuple(problems),
        endorsements_checked=endorsed,
        endorsement_policy=described,
    )
