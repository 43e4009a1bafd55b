"""What a ``fedaudit`` transaction reads from its context: caller, time, keys, JSON state.

Plain functions over the :class:`TransactionContext` (a public method on the contract
would be registered as a transaction). Access checks fail closed: no identity, no MSP id
or no certificate is ``ACCESS_DENIED``. Time is the transaction timestamp, never the
local clock.
"""

from __future__ import annotations

from typing import Any

from chaincode.canonical import canonical_bytes, parse_json
from chaincode.errors import AccessDenied, Invalid, NotFound
from chaincode.shim_fixes import TransactionContext

__all__ = [
    "caller_msp",
    "caller_cert",
    "require_coordinator",
    "refuse_auditor",
    "tx_ms",
    "stamp",
    "key",
    "round_attr",
    "get_json",
    "put_json",
    "emit",
    "load_federation",
    "load_participant",
    "org_members",
    "balance_of",
]


# --- identity and access ----------------------------------------------------------------


def caller_msp(ctx: TransactionContext) -> str:
    """The caller's MSP id; ``ACCESS_DENIED`` when there is none."""
    try:
        msp = ctx.get_client_identity().get_mspid()
    except Exception as exc:  # the shim raises bare Exception for a missing identity
        raise AccessDenied("the caller has no client identity") from exc
    if not isinstance(msp, str) or not msp:
        raise AccessDenied("the caller has no MSP id")
    return msp


def caller_cert(ctx: TransactionContext, msp: str) -> bytes:
    """The caller's X.509 certificate (PEM bytes); ``ACCESS_DENIED`` when there is none."""
    try:
        cert = ctx.get_client_identity().get_x509()
    except Exception as exc:  # the shim raises bare Exception when the creator has no cert
        raise AccessDenied(f"the caller of {msp} has no X.509 certificate") from exc
    if not cert:
        raise AccessDenied(f"the caller of {msp} has no X.509 certificate")
    return bytes(cert)


def require_coordinator(federation: dict[str, Any], msp: str, function: str) -> None:
    """Only the federation's coordinator MSP may call ``function``."""
    coordinator = federation["coordinator_msp"]
    if msp != coordinator:
        raise AccessDenied(f"{function} may only be called by the coordinator MSP {coordinator}, not {msp}")


def refuse_auditor(federation: dict[str, Any], msp: str, function: str) -> None:
    """Auditor MSPs of the federation read; they never write."""
    if msp in federation["policy"]["auditor_msps"]:
        raise AccessDenied(f"{function} may not be called by the auditor MSP {msp}")


# --- time -------------------------------------------------------------------------------


def tx_ms(ctx: TransactionContext) -> int:
    """The transaction timestamp in ms: the only clock the contract may read."""
    ts = ctx.get_stub().get_tx_timestamp()
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        raise Invalid("the transaction has no timestamp")
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def stamp(ctx: TransactionContext) -> dict[str, Any]:
    """``{"timestamp_ms", "tx_id"}`` of this transaction."""
    return {"timestamp_ms": tx_ms(ctx), "tx_id": ctx.get_stub().get_txid()}


# --- keys and values --------------------------------------------------------------------


def key(ctx: TransactionContext, kind: str, *attrs: str) -> str:
    """The composite key ``kind~attr~…``."""
    return ctx.get_stub().create_composite_key(kind, list(attrs))


def round_attr(round_no: int) -> str:
    """A round as a key attribute, zero-padded so that keys sort in round order."""
    return f"{round_no:08d}"


async def get_json(ctx: TransactionContext, state_key: str) -> Any:
    """The stored JSON value of ``state_key``, or ``None``."""
    raw = await ctx.get_stub().get_state(state_key)
    if not raw:
        return None
    return parse_json(bytes(raw), "stored value")


async def put_json(ctx: TransactionContext, state_key: str, value: Any) -> None:
    """Store ``value`` as canonical JSON."""
    await ctx.get_stub().put_state(state_key, canonical_bytes(value))


def emit(ctx: TransactionContext, name: str, payload: dict[str, Any]) -> None:
    """Set the transaction's (single) chaincode event, payload as canonical JSON."""
    ctx.get_stub().set_event(name, canonical_bytes(payload))


async def load_federation(ctx: TransactionContext, fed: str) -> dict[str, Any]:
    """The federation, or ``NOT_FOUND``."""
    federation = await get_json(ctx, key(ctx, "fed", fed))
    if federation is None:
        raise NotFound(f"federation {fed} does not exist")
    return federation


async def load_participant(ctx: TransactionContext, fed: str, pid: str) -> dict[str, Any]:
    """The participant, or ``NOT_FOUND``."""
    participant = await get_json(ctx, key(ctx, "participant", fed, pid))
    if participant is None:
        raise NotFound(f"participant {pid} is not registered in federation {fed}")
    return participant


async def org_members(ctx: TransactionContext, fed: str, msp: str) -> list[str]:
    """Ids of the participants ``msp`` registered in ``fed``, in key (id) order.

    A partial-composite-key range read over ``orgmember~fed~msp~…``. The library sends it
    without query metadata, so it is *not* paginated and a write may follow it in the
    same transaction; the peer re-runs the range at validation, so a registration by
    ``msp`` committed meanwhile invalidates the reader (a phantom read) instead of being
    missed.
    """
    stub = ctx.get_stub()
    iterator = await stub.get_state_by_partial_composite_key("orgmember", [fed, msp])
    members: list[str] = []
    async for kv in iterator:
        _, attrs = stub.split_composite_key(kv.key)
        members.append(attrs[-1])
    return members


async def balance_of(ctx: TransactionContext, fed: str, pid: str) -> int:
    """A participant's token balance (0 before its first reward)."""
    stored = await get_json(ctx, key(ctx, "balance", fed, pid))
    return 0 if stored is None else int(stored["balance"])
