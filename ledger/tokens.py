"""Token conservation: every balance is the rewards issued to it plus transfers in minus out.

Tokens come into being only through IssueRewards and move only through Transfer, so for
each federation the sum of the balances is the sum of the rewards ever issued, and each
participant's balance is its own rewards ± its transfers. Two ways to check this:

* :class:`TokenBook`, fed transaction by transaction from a block log (the embedded
  ledger's replay): every balance key written, and the amounts of every IssueRewards and
  Transfer the contract accepted. Checks each participant and the total.
* :func:`check_token_supply`, from the contract's queries alone, on any backend: balances
  (``BalanceOf``) against the rewards of every round (``ListRounds``). The contract keeps
  no queryable transfer history, so on Fabric only the total is checked (a participant's
  own balance can be moved by transfers the queries do not show).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from ledger.errors import LedgerError
from ledger.protocol import Ledger
from ledger.records import RoundView

__all__ = ["TokenBook", "check_token_supply"]

_BALANCE = "\x00balance\x00"


def _units(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not a whole number of tokens")
    return value


class TokenBook:
    """Balances written and tokens issued and moved, per federation, from a block log."""

    def __init__(self) -> None:
        self._written: dict[str, dict[str, int]] = defaultdict(dict)
        self._expected: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._issued: dict[str, int] = defaultdict(int)
        self._problems: list[str] = []

    def balances_written(self, where: str, writes: Mapping[str, bytes | None]) -> None:
        """Note every ``balance~F~P`` a stored transaction leaves (whatever wrote it)."""
        for key, value in writes.items():
            if not key.startswith(_BALANCE):
                continue
            fed, pid = key[len(_BALANCE):].split("\x00")[:2]
            try:
                self._written[fed][pid] = 0 if value is None else _units(json.loads(value)["balance"])
            except (ValueError, KeyError, TypeError) as exc:
                self._problems.append(f"{where}: balance of {pid} in federation {fed} is not readable: {exc}")

    def accepted(self, where: str, function: str, event: Mapping[str, Any] | None) -> None:
        """Count the tokens an IssueRewards or Transfer the contract accepted issued or moved,
        from its recorded event (which the replay has compared with the contract's)."""
        if function not in ("IssueRewards", "Transfer"):
            return
        try:
            payload = json.loads(event["payload"]) if event is not None else None
            fed = payload["federation"]
            if function == "IssueRewards":
                for pid, units in payload["rewards"].items():
                    if _units(units) > 0:
                        self._expected[fed][pid] += units
                        self._issued[fed] += units
            else:
                amount = _units(payload["amount"])
                self._expected[fed][payload["from"]] -= amount
                self._expected[fed][payload["to"]] += amount
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self._problems.append(f"{where}: {function} event does not say which tokens moved: {exc!r}")

    def supply(self) -> dict[str, int]:
        """Federation → the rewards ever issued in it."""
        return dict(self._issued)

    def problems(self) -> list[str]:
        """Every balance that is not its rewards ± transfers, and every total that is not the supply."""
        problems = list(self._problems)
        for fed in sorted(set(self._written) | set(self._expected)):
            written, expected = self._written.get(fed, {}), self._expected.get(fed, {})
            for pid in sorted(set(written) | set(expected)):
                have, want = written.get(pid, 0), expected.get(pid, 0)
                if have != want:
                    problems.append(f"tokens of federation {fed}: balance of {pid} is {have}, "
                                    f"its rewards and transfers give {want}")
            total, issued = sum(written.values()), self._issued.get(fed, 0)
            if total != issued:
                problems.append(f"tokens of federation {fed}: total supply {total} differs from the rewards "
                                f"issued, {issued}")
        return problems


def check_token_supply(
    ledger: Ledger, federation: str, rounds: Iterable[RoundView], participants: Iterable[str]
) -> list[str]:
    """The federation's balances, read through the contract, must add up to the rewards its
    rounds issued (any backend; see the module docstring for what this cannot see)."""
    issued = sum(units for view in rounds for units in (view.rewards or {}).values() if units > 0)
    total = 0
    problems: list[str] = []
    for pid in participants:
        try:
            balance = ledger.balance(federation, pid)
        except LedgerError as exc:
            problems.append(f"tokens of federation {federation}: balance of {pid} cannot be read: {exc}")
            continue
        if balance < 0:
            problems.append(f"tokens of federation {federation}: balance of {pid} is negative ({balance})")
        total += balance
    if not problems and total != issued:
        problems.append(
            f"tokens of federation {federation}: balances add up to {total}, the rewards issued to {issued}")
    return problems
