"""Errors the ``fedaudit`` contract raises, each with a stable code prefix.

The dispatcher turns an exception into the transaction's error message (``str(exc)``),
so the code travels as text: ``"ACCESS_DENIED: …"``. A ledger backend maps the prefix to
its own error tree (``ACCESS_DENIED`` → ``AccessDenied``, ``NOT_FOUND`` →
``RecordNotFound``, ``DUPLICATE`` → ``DuplicateRecord``, ``INVALID`` →
``TransactionRejected``).
"""

from __future__ import annotations

__all__ = ["CODES", "ContractError", "AccessDenied", "NotFound", "Duplicate", "Invalid"]


class ContractError(Exception):
    """A refused transaction; ``str(exc)`` is ``"<CODE>: <message>"``."""

    code = "INVALID"

    def __init__(self, message: str) -> None:
        super().__init__(f"{self.code}: {message}")
        self.message = message


class AccessDenied(ContractError):
    """The caller's identity may not make this call (or has no identity at all)."""

    code = "ACCESS_DENIED"


class NotFound(ContractError):
    """The federation or participant named does not exist."""

    code = "NOT_FOUND"


class Duplicate(ContractError):
    """A once-only record exists already."""

    code = "DUPLICATE"


class Invalid(ContractError):
    """A bad argument, or a call made in the wrong state."""

    code = "INVALID"


CODES: tuple[str, ...] = tuple(c.code for c in (AccessDenied, NotFound, Duplicate, Invalid))
