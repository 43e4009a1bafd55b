"""``FabricLedger``: the :class:`~ledger.protocol.Ledger` on a real Fabric channel.

Every call is signed by the caller's own identity (its :class:`~ledger.identity.Credentials`)
and sent through a peer's Gateway: queries are evaluated on one peer, writes are endorsed
by a majority of the peer organisations, ordered and committed, and return only once the
transaction is committed VALID, and committed by every peer organisation of the profile
that answers within a short wait, so that the next call, whoever makes it and whichever
peers serve it, sees the write (:meth:`FabricLedger._await_peers`). Errors are mapped at
one boundary (:func:`_ledger_error`): the contract's stable codes become
:mod:`ledger.errors` types, a transaction that was ordered but not VALID is
:class:`~ledger.errors.CommitFailed`, and a peer that cannot be reached (after the
client's retries inside its deadline) is :class:`~ledger.errors.LedgerUnavailable`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import grpc

from ledger.errors import (
    AccessDenied,
    CommitFailed,
    LedgerError,
    LedgerUnavailable,
    TransactionRejected,
    contract_refusal,
)
from ledger.fabric.blocks import decode_chain_info
from ledger.fabric.gateway import (
    CommitError,
    Contract,
    Deadlines,
    GatewayError,
    Network,
    choose_peer,
    connect_as,
)
from ledger.fabric.proposals import Identity as FabricIdentity
from ledger.fabric.profile import ConnectionProfile, ProfileError
from ledger.contract_calls import ContractCalls
from ledger.identity import Credentials
from ledger.protocol import IntegrityReport
from ledger.records import (
    Identity,
    RoundView,
    TxReceipt,
)

__all__ = ["FabricLedger"]

# The chaincode server's code for a state call the peer itself refused (e.g. while it
# shuts down): the caller's input was not at fault, so the call may be retried.
_PEER_ERROR = "PEER_ERROR"
# How long a committed write waits for the other peer organisations to commit its block,
# how long one of them has to answer, and how often they are asked.
_PEERS_WITHIN_S = 5.0
_PEER_ANSWER_S = 1.0
_PEERS_POLL_S = 0.01
# How a peer refuses a proposal whose creator it does not accept, before any chaincode
# runs: "unknown" when no MSP of the channel turns the certificate into an identity (an
# MSP id not in the channel, a certificate not issued by that MSP's CAs, or one without
# a client or admin role); "[MSP]" when the identity is not valid (expired, revoked) or
# the signature does not verify with the certificate's key. Both arrive as a bare
# gRPC error with the peer's terse text.
_CREATOR_REFUSED = re.compile(
    r"access denied: channel \[[^\]]*\] creator org (unknown(?:, creator is malformed)?|\[[^\]]*\])"
)
# What a peer answers a proposal signed by an identity whose certificate has expired.
_IDENTITY_EXPIRED = "proposal client identity expired"
# How the Gateway says it knows too few peers to satisfy the endorsement policy (peers
# down, or not yet found by gossip after a start): no peer was asked, nothing refused the
# transaction, and the same call may succeed once the peers are back.
_NO_ENDORSERS = re.compile(r"no combination of peers can be derived|no peer combination can satisfy")
_UNAVAILABLE = {
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
}


def _creator_refusal(exc: GatewayError, msp_id: str) -> AccessDenied | None:
    """:class:`AccessDenied`, in one readable line, if the peer refused the caller's identity."""
    for text in (exc.message, *(d.message for d in exc.details)):
        if _IDENTITY_EXPIRED in text:
            return AccessDenied(
                f"ACCESS_DENIED: the caller's certificate of {msp_id} has expired; the peers refuse every "
                f"call signed with it (peer: {_IDENTITY_EXPIRED})",
                tx_id=exc.tx_id,
            )
        found = _CREATOR_REFUSED.search(text)
        if found is None:
            continue
        if found.group(1).startswith("unknown"):
            reason = (
                f"the channel does not accept the caller's certificate as an identity of {msp_id}: it "
                f"was not issued by a CA of {msp_id}, it carries no client or admin role, or {msp_id} is "
                "not a member of the channel"
            )
        else:
            reason = (
                f"the channel refused the caller's identity of {msp_id}: the call was not signed with "
                "its certificate's key, or the certificate is no longer valid (expired or revoked)"
            )
        return AccessDenied(f"ACCESS_DENIED: {reason} (peer: {found.group(0)})", tx_id=exc.tx_id)
    return None


def _ledger_error(exc: GatewayError, msp_id: str) -> LedgerError:
    """The :mod:`ledger.errors` type for a Gateway failure of a call made as ``msp_id``
    (the one mapping boundary)."""
    message = exc.chaincode_message
    if message is not None:
        refused = contract_refusal(message, exc.tx_id)
        if refused is not None:
            return refused
        if message.startswith(f"{_PEER_ERROR}:"):
            return LedgerUnavailable(message, tx_id=exc.tx_id)
    if isinstance(exc, CommitError):
        return CommitFailed(
            f"transaction {exc.tx_id} was not committed: {exc.validation_code} (block {exc.block_number})",
            tx_id=exc.tx_id,
        )
    refused = _creator_refusal(exc, msp_id)
    if refused is not None:
        return refused
    if _NO_ENDORSERS.search(exc.message):
        return LedgerUnavailable(
            f"the Fabric network cannot endorse now: too few peer organisations are reachable to satisfy "
            f"the endorsement policy ({exc.message})",
            tx_id=exc.tx_id,
        )
    if exc.code in _UNAVAILABLE:
        return LedgerUnavailable(f"the Fabric network is unavailable: {exc}", tx_id=exc.tx_id)
    if exc.code == grpc.StatusCode.PERMISSION_DENIED:
        return AccessDenied(f"ACCESS_DENIED: {exc}", tx_id=exc.tx_id)
    return TransactionRejected(str(exc), tx_id=exc.tx_id)


@contextmanager
def _mapped(msp_id: str) -> Iterator[None]:
    try:
        yield
    except GatewayError as exc:
        raise _ledger_error(exc, msp_id) from exc


class FabricLedger(ContractCalls):
    """The ``fedaudit`` chaincode on a Fabric channel, called as one signing identity."""

    def __init__(
        self,
        profile: ConnectionProfile,
        credentials: Credentials,
        *,
        channel: str | None = None,
        chaincode: str | None = None,
        peer: str | None = None,
        deadlines: Deadlines | None = None,
    ) -> None:
        if credentials.signer is None:
            raise AccessDenied(
                f"ACCESS_DENIED: {credentials.msp_id} has no signing key: every Fabric call is signed "
                "by its caller"
            )
        self._profile = profile
        self._credentials = credentials
        self._channel_name = channel or profile.channel
        self._chaincode = chaincode or profile.chaincode
        self._peer = peer
        self._deadlines = deadlines
        fabric_identity = FabricIdentity(credentials.msp_id, credentials.identity.cert_pem.encode("ascii"))
        try:
            self._gateway = connect_as(profile, fabric_identity, credentials.signer, peer, deadlines=deadlines)
        except ProfileError as exc:
            raise LedgerUnavailable(f"cannot connect to Fabric: {exc}") from exc
        self._network: Network = self._gateway.get_network(self._channel_name)
        self._contract: Contract = self._network.get_contract(self._chaincode)
        self._qscc: Contract = self._network.get_contract("qscc")
        # The connection's own peer reported the commit; the other peer organisations'
        # peers are asked (in parallel) whether they have the block too.
        own = choose_peer(profile, credentials.msp_id, peer)
        self._peer_orgs = [msp for msp, org in profile.orgs.items() if org.peers and own not in org.peers]
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self._peer_orgs)), thread_name_prefix="fabric-peers")
        self._blocks_of: dict[str, int] = {}
        self._lock = threading.Lock()

    # --- Ledger protocol: identity -----------------------------------------------------

    @property
    def identity(self) -> Identity:
        """The caller identity every call is made as."""
        return self._credentials.identity

    @property
    def backend(self) -> str:
        """``fabric:<channel>/<chaincode>``."""
        return f"fabric:{self._channel_name}/{self._chaincode}"

    @property
    def network(self) -> Network:
        """The channel, for block and transaction look-ups (the auditor's proof)."""
        return self._network

    def with_identity(self, credentials: Credentials) -> FabricLedger:
        """The same channel, called (and signed) as another identity."""
        return FabricLedger(self._profile, credentials, channel=self._channel_name,
                            chaincode=self._chaincode, deadlines=self._deadlines)

    def close(self) -> None:
        """Close the Gateway connection."""
        self._pool.shutdown(wait=False)
        self._gateway.close()

    def __enter__(self) -> FabricLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- Ledger protocol: queries ------------------------------------------------------

    def get_round(self, federation: str, round: int) -> RoundView:
        """One round's record, commit and rewards, each with its tx id and block number."""
        return self._round_views(self._query("GetRound", [federation, str(round)]))[0]

    def list_rounds(self, federation: str) -> list[RoundView]:
        """Every recorded round, in round order."""
        return self._round_views(self._query("ListRounds", [federation]))

    # --- integrity ---------------------------------------------------------------------

    def integrity(self, pins: Sequence[str] = (), tx_ids: Sequence[str] = ()) -> IntegrityReport:
        """Fetch every block of the channel and check it independently of the peer that
        served it: hash chain from the genesis block, data hashes, orderer signatures
        against the channel configuration, and each of ``tx_ids`` in a block, VALID —
        its creator's signature, its chaincode and its endorsements checked too, against
        the channel's own ``/Channel/Application/Endorsement`` policy."""
        from ledger.fabric.proof import prove_records

        # The channel's policy: the genesis block is the audit's trust anchor, and this
        # project's channels set it to the rule the chaincode is committed with.
        proof = prove_records(self._network, tx_ids, pins, endorsement_policy=None, chaincode=self._chaincode)
        missing = [t for t in dict.fromkeys(tx_ids) if t not in proof.transactions]
        return IntegrityReport(
            blocks_checked=proof.blocks_checked,
            transactions_proven=len(proof.transactions),
            head=proof.head,
            problems=[*proof.problems, *(f"transaction {t} is in no block of the channel" for t in missing
                                         if not any(t in p for p in proof.problems))],
        )

    def block_of(self, tx_id: str) -> int:
        """The number of the block that holds transaction ``tx_id`` (cached: blocks never change)."""
        with self._lock:
            known = self._blocks_of.get(tx_id)
        if known is not None:
            return known
        with _mapped(self._credentials.msp_id):
            number = int(self._network.get_block_by_tx_id(tx_id).header.number)
        with self._lock:
            self._blocks_of[tx_id] = number
        return number

    # --- internals ---------------------------------------------------------------------

    def _submit(self, function: str, args: list[str]) -> TxReceipt:
        with _mapped(self._credentials.msp_id):
            result = self._contract.submit(function, *args)
        with self._lock:
            self._blocks_of[result.tx_id] = result.block_number
        self._await_peers(result.block_number)
        return TxReceipt(tx_id=result.tx_id, block_number=result.block_number, timestamp_ms=result.timestamp_ms)

    def _await_peers(self, block_number: int) -> None:
        """Wait until every peer organisation of the profile has committed ``block_number``.

        Each peer commits a block on its own, and the commit status came from this
        connection's peer alone. Without the wait, a call that follows at once through
        another organisation's peer, or endorsed by one, may still read the state before
        the write: a registration sent right after InitFederation committed was refused
        as ``NOT_FOUND: federation … does not exist`` by a bank's peer a few ms behind.
        A peer that does not answer, or is still behind when the wait ends, is not waited
        for: the write is committed and that peer serves it once it catches up.
        """
        deadline = time.monotonic() + _PEERS_WITHIN_S

        def behind(msp: str) -> bool:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                info = self._qscc.evaluate("GetChainInfo", self._channel_name, target_orgs=[msp],
                                           timeout=min(left, _PEER_ANSWER_S))
            except GatewayError:
                return False  # unreachable now: not waited for
            return decode_chain_info(info).height <= block_number

        waiting = list(self._peer_orgs)
        while waiting and time.monotonic() < deadline:
            still = list(self._pool.map(behind, waiting))
            waiting = [msp for msp, late in zip(waiting, still) if late]
            if waiting:
                time.sleep(_PEERS_POLL_S)

    def _query(self, function: str, args: list[str]) -> bytes:
        with _mapped(self._credentials.msp_id):
            return self._contract.evaluate(function, *args)

    def _round_views(self, payload: bytes) -> list[RoundView]:
        raw = json.loads(payload)
        views = raw if isinstance(raw, list) else [raw]
        for view in views:
            for field in ("record_tx", "commit_tx", "rewards_tx", "evaluation_tx"):
                stamp = view.get(field)
                if stamp is not None:
                    view[field] = {**stamp, "block_number": self.block_of(stamp["tx_id"])}
        return [RoundView.parse(v) for v in views]

