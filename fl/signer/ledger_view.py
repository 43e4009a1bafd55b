"""The signer's read-only view of the ledger, with the institution's own credentials.

The current round is the one after the last ``CommitModel``; its base model is that
commit's model, or for round 1 the initial model the federation was created with
(``policy.model``). The ledger is opened for each question and closed again: a signer
runs for weeks, a round asks it a handful of times.
"""

from __future__ import annotations

from collections.abc import Callable

from ledger.artifacts import ArtifactStore
from ledger.audit_rejections import entry_check
from ledger.errors import LedgerUnavailable, RecordNotFound
from ledger.factory import LedgerConfig, open_ledger
from ledger.identity import Credentials
from ledger.protocol import Ledger
from ledger.records import RoundEntry, RoundView

from fl.signer.policy import LedgerRound

__all__ = ["LedgerView", "current_round"]


def current_round(initial_model: str, rounds: list[RoundView]) -> LedgerRound:
    """The round after the last committed one, and the model it trains from."""
    committed = [view for view in rounds if view.commit is not None]
    if not committed:
        if not initial_model:
            raise LedgerUnavailable("the federation declares no initial model: round 1 cannot be checked")
        return LedgerRound(1, initial_model)
    last = committed[-1]
    assert last.commit is not None
    return LedgerRound(last.round + 1, last.commit.model)


class LedgerView:
    """:class:`~fl.signer.policy.LedgerState` over a real ledger (read-only calls only)."""

    def __init__(self, config: LedgerConfig, credentials: Callable[[], Credentials]) -> None:
        self.config = config
        self._credentials = credentials

    def _open(self) -> Ledger:
        try:
            return open_ledger(self.config, self._credentials())
        except (ValueError, OSError) as exc:  # missing or unusable credential files
            raise LedgerUnavailable(f"cannot open the ledger as this institution: {exc}") from exc

    def current(self, federation: str) -> LedgerRound:
        """The ledger's current round of ``federation``."""
        ledger = self._open()
        try:
            initial = ledger.get_federation(federation).policy.model
            return current_round(initial, ledger.list_rounds(federation))
        finally:
            ledger.close()

    def committed_model(self, federation: str, round: int) -> str | None:
        """The model committed in ``round`` of ``federation``; None if it is not committed."""
        ledger = self._open()
        try:
            view = ledger.get_round(federation, round)
        except RecordNotFound:
            return None
        finally:
            ledger.close()
        return view.commit.model if view.commit is not None else None

    def rounds(self, federation: str) -> list[RoundView]:
        """Every recorded round (for comparing the journal with the ledger)."""
        ledger = self._open()
        try:
            return ledger.list_rounds(federation)
        finally:
            ledger.close()

    def rejection_check(self, federation: str, participant: str,
                        artifacts: ArtifactStore) -> Callable[[RoundView, RoundEntry], str | None]:
        """A recomputation of this participant's rejections from their evidence (the
        federation's policy, its own history, the artifact store): ``audit mine``'s check
        that a reason is one the evidence supports."""
        ledger = self._open()
        try:
            policy = ledger.get_federation(federation).policy
            try:
                history = ledger.history(federation, participant)
            except RecordNotFound:
                history = []
            views = ledger.list_rounds(federation)
        finally:
            ledger.close()
        bases = {view.round: view.record.base_model for view in views}
        return entry_check(policy, artifacts, {participant: history}, bases, views)
