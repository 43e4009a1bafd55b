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
from ledger.formats import sign

__all__ = ["KINDS", "EXPECTED_REASON", "parse_adversaries", "make_adversary_mods"]

EXPECTED_REASON = {
    "tamper": "digest_mismatch",
    "replay": "wrong_round",
    "foreign-key": "bad_signature",
    "wrong-base": "wrong_base_model",
    "nan": "non_finite",
    "shape": "wrong_shape",
}
KINDS = tuple(EXPECTED_REASON)
CallNext = Callable[[Message, Context], Message]
Mod = Callable[[Message, Context, CallNext], Message]
_REPLAY_KEY = "fedledger-replay"
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
            first = sorted(arrays)[0]
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
        reply = call_next(msg, context)
        if kind not in ("nan", "shape") or reply.has_error():
            return reply
        arrays = to_arrays(reply.content["arrays"])
        first = sorted(arrays)[0]
        if kind == "nan":
            bad = arrays[first].copy()
            bad.flat[0] = np.nan
        else:
            bad = np.concatenate([arrays[first], arrays[first][:1]], axis=0)
        arrays[first] = bad
        reply.content["arrays"] = to_record(arrays)
        return reply

    return outer_mod, inner_mod
