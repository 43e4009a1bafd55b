"""Misbehaving participants for demos and tests (``--adversary PARTICIPANT:KIND``).

Each kind breaks one rule the coordinator checks (DESIGN §4) and must end as a recorded
rejection with a stable reason:

============  ======================================  ==================
kind          what the participant does               expected reason
============  ======================================  ==================
tamper        changes its arrays after signing        digest_mismatch
replay        resends round 1's signed reply later    wrong_round
foreign-key   signs with a key nobody registered      bad_signature
wrong-base    trains from another model               wrong_base_model
nan           sends NaN weights (signed)              non_finite
shape         sends a wrongly shaped tensor (signed)  wrong_shape
free-rider    returns the model it received (signed)  no_training
copier        returns the received model plus last    copied_update (in round 1,
              round's global step (signed)            with no step yet: no_training)
============  ======================================  ==================

``outer_mod`` sits outside the signing mod (it acts on what was signed), ``inner_mod``
inside it (the participant signs its own bad tensors).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fl.records import to_arrays, to_record
from ledger.compression import SCALE_SUFFIX, compress
from ledger.formats import sign

__all__ = ["KINDS", "EXPECTED_REASON", "parse_adversaries", "make_adversary_mods"]

EXPECTED_REASON = {
    "tamper": "digest_mismatch",
    "replay": "wrong_round",
    "foreign-key": "bad_signature",
    "wrong-base": "wrong_base_model",
    "nan": "non_finite",
    "shape": "wrong_shape",
    "free-rider": "no_training",
    "copier": "copied_update",
}
KINDS = tuple(EXPECTED_REASON)
CallNext = Callable[[Message, Context], Message]
Mod = Callable[[Message, Context, CallNext], Message]
_REPLAY_KEY = "fedledger-replay"
_PREVIOUS_KEY = "fedledger-previous-global"
_REPLAYED = ("arrays", "metrics", "audit")


def parse_adversaries(specs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Parse ``["bank-c:tamper", …]`` into ``{participant: kind}`` (clear error if bad)."""
    out: dict[str, str] = {}
    for spec in specs:
        participant, sep, kind = spec.partition(":")
        if not sep or not participant or kind not in EXPECTED_REASON:
            raise ValueError(
                f"adversary {spec!r} must be PARTICIPANT:KIND with KIND one of {', '.join(KINDS)}"
            )
        if participant in out:
            raise ValueError(f"participant {participant!r} is given two adversary kinds")
        out[participant] = kind
    return out


def _is_train(msg: Message) -> bool:
    return msg.metadata.message_type.split(".")[0] == "train"


def make_adversary_mods(kind_of: Callable[[Context], str | None]) -> tuple[Mod, Mod]:
    """The (outer, inner) mods that make the participant ``kind_of(context)`` misbehave."""

    def outer_mod(msg: Message, context: Context, call_next: CallNext) -> Message:
        kind = kind_of(context) if _is_train(msg) else None
        if kind == "wrong-base":
            arrays = to_arrays(msg.content["arrays"])
            rng = np.random.default_rng(1234)
            msg.content["arrays"] = to_record(
                {k: (v + rng.normal(0, 0.5, v.shape)).astype(v.dtype) for k, v in arrays.items()}
            )
        if kind == "replay" and f"{_REPLAY_KEY}-audit" in context.state:
            stored = {k: context.state[f"{_REPLAY_KEY}-{k}"] for k in _REPLAYED}
            return Message(RecordDict(stored), reply_to=msg)
        reply = call_next(msg, context)
        if kind is None or reply.has_error():
            return reply
        if kind == "tamper":
            arrays = to_arrays(reply.content["arrays"])
            first = _first_float(arrays)
            arrays[first] = (arrays[first] + np.float32(0.01)).astype(arrays[first].dtype)
            reply.content["arrays"] = to_record(arrays)
        elif kind == "foreign-key":
            manifest = str(reply.content["audit"]["manifest"]).encode("utf-8")
            stranger = ec.generate_private_key(ec.SECP256R1())
            reply.content["audit"] = ConfigRecord(
                {"manifest": manifest.decode("utf-8"), "signature": sign(manifest, stranger)}
            )
        elif kind == "replay":
            for key in _REPLAYED:
                context.state[f"{_REPLAY_KEY}-{key}"] = reply.content[key]
        return reply

    def inner_mod(msg: Message, context: Context, call_next: CallNext) -> Message:
        kind = kind_of(context) if _is_train(msg) else None
        received = to_arrays(msg.content["arrays"]) if kind in ("free-rider", "copier") else None
        reply = call_next(msg, context)
        if received is not None and not reply.has_error():
            reply.content["arrays"] = to_record(_free_ride(kind, received, to_arrays(reply.content["arrays"]), context))
            return reply
        if kind not in ("nan", "shape") or reply.has_error():
            return reply
        arrays = to_arrays(reply.content["arrays"])
        first = _first_float(arrays) if kind == "nan" else sorted(arrays)[0]
        if kind == "nan":
            bad = arrays[first].copy()
            bad.flat[0] = np.nan
        else:
            bad = np.concatenate([arrays[first], arrays[first][:1]], axis=0)
        arrays[first] = bad
        reply.content["arrays"] = to_record(arrays)
        return reply

    return outer_mod, inner_mod


def _first_float(arrays: dict[str, np.ndarray]) -> str:
    """The first tensor holding floats (under int8 compression: a scale, not an int8 tensor)."""
    return next(name for name in sorted(arrays) if arrays[name].dtype.kind == "f")


def _free_ride(kind: str | None, received: dict[str, np.ndarray], trained: dict[str, np.ndarray],
               context: Context) -> dict[str, np.ndarray]:
    """What a free rider sends instead of its trained update, in the form the honest reply
    had (int8-compressed when it was): the received model itself, or (``copier``) the
    received model moved once more by the last global step it saw (nothing in round 1)."""
    target = received
    previous = context.state.get(_PREVIOUS_KEY) if kind == "copier" else None
    if previous is not None:
        before = to_arrays(previous)
        target = {n: (a.astype(np.float64) + (a.astype(np.float64) - before[n].astype(np.float64))).astype(a.dtype)
                  for n, a in received.items()}
    if kind == "copier":
        context.state[_PREVIOUS_KEY] = to_record(received)
    compressed = any(name.endswith(SCALE_SUFFIX) for name in trained)
    return compress(target, received, "int8") if compressed else target
