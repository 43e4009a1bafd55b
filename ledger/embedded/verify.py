"""Tamper evidence: re-hash the block log, rebuild state, history, txs and events from it,
and re-execute every transaction through the contract.

Every table besides ``blocks`` is derived data: replaying the blocks' write sets in order
must give exactly the stored world state (values and versions), the per-key history, the
transaction index and the events. A row edited anywhere shows up as a problem naming the
block or key. A block appended or rewritten with recomputed hashes agrees with itself, so
the blocks are also judged by the contract (:mod:`ledger.embedded.replay`): each
transaction must be one the contract accepts from its recorded caller and must write
exactly what the contract writes, callers must be MSPs allowed to call their function,
and tokens must be conserved.
(Transactions are not signed here: a block holding a call the contract accepts from the
identity it names — say, the coordinator revoking someone — cannot be told from a real
one from inside the file; anchor the head hash elsewhere and compare it to catch that.)
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from typing import Any

from ledger.embedded.storage import GENESIS_PREV, Reader, display_key
from ledger.formats import canonical_json
from ledger.embedded.replay import replay_blocks

__all__ = ["verify_chain"]

_StateRow = tuple[bytes, int, str]
_HistoryRow = tuple[int, str, int, bytes | None, bool]


class _Replay:
    def __init__(self) -> None:
        self.state: dict[str, _StateRow] = {}
        self.history: dict[str, list[_HistoryRow]] = defaultdict(list)
        self.txs: set[tuple[str, int, int]] = set()
        self.events: list[tuple[int, str, str, bytes]] = []

    def apply(self, number: int, timestamp_ms: int, idx: int, tx: dict[str, Any]) -> None:
        tx_id = tx["tx_id"]
        self.txs.add((tx_id, number, idx))
        for write in tx["writes"]:
            key, is_delete = write["key"], bool(write["is_delete"])
            value = None if is_delete else write["value"].encode("utf-8")
            if value is None:
                self.state.pop(key, None)
            else:
                self.state[key] = (value, number, tx_id)
            self.history[key].append((number, tx_id, timestamp_ms, value, is_delete))
        if tx["event"] is not None:
            event = tx["event"]
            self.events.append((number, tx_id, event["name"], event["payload"].encode("utf-8")))


def _check_blocks(reader: Reader, replay: _Replay, problems: list[str]) -> list[dict[str, Any]]:
    """Check the hash chain; return the block bodies that parse, for the contract replay."""
    bodies: list[dict[str, Any]] = []
    expected, prev_hash, prev_ts = 0, GENESIS_PREV, None
    for number, stored_hash, text in reader.block_rows():
        if number != expected:
            problems.append(f"block {expected}: missing (the next stored block is {number})")
        expected = number + 1
        actual_hash = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if actual_hash != stored_hash:
            problems.append(f"block {number}: stored hash does not match the block's contents")
        try:
            body = json.loads(text)
        except ValueError:
            problems.append(f"block {number}: body is not valid JSON")
            prev_hash = actual_hash
            continue
        if not isinstance(body, dict):
            problems.append(f"block {number}: body is not a JSON object")
            prev_hash = actual_hash
            continue
        bodies.append(body)
        if canonical_json(body).decode("utf-8") != text:
            problems.append(f"block {number}: body is not in canonical form")
        if body.get("number") != number:
            problems.append(f"block {number}: body says it is block {body.get('number')!r}")
        if body.get("prev_hash") != prev_hash:
            problems.append(f"block {number}: prev_hash does not link to the hash of block {number - 1}")
        timestamp = body.get("timestamp_ms")
        if not isinstance(timestamp, int) or (prev_ts is not None and timestamp <= prev_ts):
            problems.append(f"block {number}: timestamp_ms is not after the previous block's")
        prev_hash, prev_ts = actual_hash, timestamp if isinstance(timestamp, int) else prev_ts
        for idx, tx in enumerate(body.get("transactions") or []):
            try:
                replay.apply(number, timestamp, idx, tx)
            except (KeyError, TypeError, AttributeError):
                problems.append(f"block {number}: transaction {idx} is malformed")
    return bodies


def _check_state(reader: Reader, replay: _Replay, problems: list[str]) -> None:
    stored = {key: (value, block, tx) for key, value, block, tx in reader.all_state()}
    for key in sorted(set(stored) | set(replay.state)):
        shown = display_key(key)
        if key not in replay.state:
            problems.append(f"state key {shown}: present, but no block leaves it with a value")
        elif key not in stored:
            problems.append(f"state key {shown}: missing, but block {replay.state[key][1]} wrote it")
        elif stored[key] != replay.state[key]:
            _, block, tx = replay.state[key]
            problems.append(f"state key {shown}: differs from the value written by block {block} (tx {tx})")


def _check_history(reader: Reader, replay: _Replay, problems: list[str]) -> None:
    stored: dict[str, list[_HistoryRow]] = defaultdict(list)
    for key, block, tx, ms, value, is_delete in reader.all_history():
        stored[key].append((block, tx, ms, value, is_delete))
    for key in sorted(set(stored) | set(replay.history)):
        have, want = stored.get(key, []), replay.history.get(key, [])
        shown = display_key(key)
        for i, (got, expected) in enumerate(zip(have, want, strict=False)):
            if got != expected:
                problems.append(
                    f"history of key {shown}: entry {i} differs from the write in block {expected[0]} "
                    f"(tx {expected[1]})"
                )
        if len(have) != len(want):
            problems.append(f"history of key {shown}: {len(have)} entries stored, blocks hold {len(want)}")


def _check_index(reader: Reader, replay: _Replay, problems: list[str]) -> None:
    stored_txs = set(reader.all_txs())
    for tx_id, block, idx in sorted(stored_txs ^ replay.txs, key=lambda t: (t[1], t[2])):
        where = "stored but not in" if (tx_id, block, idx) in stored_txs else "missing for"
        problems.append(f"tx index: {tx_id} {where} block {block} (position {idx})")
    stored_events = reader.all_events()
    if stored_events != replay.events:
        blocks = sorted({e[0] for e in set(stored_events) ^ set(replay.events)})
        where = f"in block(s) {blocks}" if blocks else "in their order"
        problems.append(f"events: stored events differ from the blocks' events {where}")


def verify_chain(reader: Reader) -> list[str]:
    """Every problem found in the block log, the tables derived from it and the contract's
    re-execution of its transactions (empty = verified)."""
    problems: list[str] = []
    replay = _Replay()
    bodies = _check_blocks(reader, replay, problems)
    _check_state(reader, replay, problems)
    _check_history(reader, replay, problems)
    _check_index(reader, replay, problems)
    problems.extend(replay_blocks(bodies).problems)
    return problems
