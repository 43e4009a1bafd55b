"""Pin the ClientApp an institution runs: only FABs whose hash it approved.

The coordinator ships the ClientApp (Flower installs the run's FAB, a zip of the app's
code, and runs it). Flower 1.42's own check, ``--trusted-entities``, accepts only FABs
signed by Flower's platform, so it cannot pin an app served by a private SuperLink.
This module pins by content instead: the institution lists the SHA-256 of each FAB it
accepts (:func:`app_hash` computes it from the app source it reviewed, exactly as
``flwr build`` / ``flwr run`` build the FAB), and :func:`install` hooks Flower's
SuperNode where it fetches a new run's FAB — before anything is installed or run. A
FAB whose bytes do not hash to an approved value is refused: nothing of it is
installed or executed, an ``app_refused`` event names its hash, and each message of
that run is answered with an error reply (``ErrorCode.INVALID_FAB``), which is how the
coordinator sees it.

What it protects:

* the institution runs only code it reviewed — the ClientApp, its mods, and every
  module the FAB ships (the hash covers every file in it);
* the coordinator cannot swap the app during a federation: a new run with other code
  has another hash and is refused; a run keeps the FAB it started with.

What it does not:

* code that is *not* in the FAB: the Python packages installed on the node (Flower,
  torch, and — when the app's ``fab-include`` leaves them out — this project's own
  modules) are whatever the institution installed — with the relay ClientApp
  (:mod:`fl.relay_app`) training runs in the institution's trainer from its installed
  package, so that code is the institution's own, outside the FAB and its hash;
* a reviewed app that is itself unsafe, or run-config values (``--run-config``) and
  messages the coordinator sends to an approved app: those are the app's to check;
* the ServerApp, which runs at the coordinator;
* a different build of the same source: the hash is of the FAB bytes (a deflated zip
  with fixed timestamps), so compute it with the Flower release the nodes run.

The hook replaces ``_pull_and_store_message`` of the pinned Flower release's
``flwr.supernode.start_client_internal`` (a private function); an upgrade that renames
it makes :func:`install` fail at start-up, not silently.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import structlog

__all__ = ["AppNotApproved", "AppPin", "PinError", "REFUSED_EVENT", "app_hash", "install", "load_approved",
           "refusals"]

log = structlog.get_logger("fedledger.supernode")
REFUSED_EVENT = "app_refused"
_HASH = re.compile(r"[0-9a-f]{64}")


class PinError(ValueError):
    """An approved-app hash, or the file listing them, cannot be used."""


class AppNotApproved(RuntimeError):
    """A run's FAB hashes to a value the institution did not approve."""

    def __init__(self, run_id: int, fab_hash: str, declared: str) -> None:
        super().__init__(f"run {run_id}: app {fab_hash} is not approved by this institution; it was not run")
        self.run_id = run_id
        self.fab_hash = fab_hash
        self.declared = declared


def app_hash(app_dir: Path) -> str:
    """The SHA-256 (hex) of the FAB Flower builds from ``app_dir`` — the hash a run of it carries.

    Built with Flower's own ``build_fab_from_disk`` (what ``flwr run`` and ``flwr build``
    call), so the value is the one the SuperLink stores and the node receives.
    """
    from flwr.cli.build import build_fab_from_disk

    app_dir = Path(app_dir)
    if not (app_dir / "pyproject.toml").is_file():
        raise PinError(f"{app_dir}: not a Flower app directory (no pyproject.toml)")
    try:
        fab = build_fab_from_disk(app_dir)
    except ValueError as exc:
        raise PinError(f"{app_dir}: Flower cannot build a FAB from it: {exc}") from None
    return hashlib.sha256(fab).hexdigest()


def _checked(value: str, where: str) -> str:
    text = value.strip().lower()
    if not _HASH.fullmatch(text):
        raise PinError(f"{where}: {value.strip()[:80]!r} is not a SHA-256 hex digest (64 hex digits)")
    return text


def load_approved(hashes: Iterable[str] = (), file: Path | None = None) -> frozenset[str]:
    """Approved FAB hashes from ``hashes`` and from ``file`` (one per line; ``#`` starts a comment).

    Raises :class:`PinError` naming the file and line of a value that is not a SHA-256.
    """
    approved = {_checked(h, "--approve-app") for h in hashes}
    if file is not None:
        try:
            lines = Path(file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise PinError(f"{file}: cannot read the approved apps: {exc}") from None
        for number, line in enumerate(lines, start=1):
            text = line.split("#", 1)[0].strip()
            if text:
                approved.add(_checked(text, f"{file} line {number}"))
    return frozenset(approved)


@dataclass(frozen=True)
class AppPin:
    """The FAB hashes one institution accepts; empty refuses every app."""

    approved: frozenset[str]

    def check(self, run_id: int, declared: str, content: bytes) -> str:
        """The FAB's hash if approved, else :class:`AppNotApproved`.

        The hash is computed from the bytes received, never taken from the run's
        declared ``fab_hash``: a SuperLink could name one FAB and serve another.
        """
        actual = hashlib.sha256(content).hexdigest()
        if actual not in self.approved or declared != actual:
            raise AppNotApproved(run_id, actual, declared)
        return actual


def install(pin: AppPin, module: ModuleType | None = None) -> None:
    """Make Flower's SuperNode refuse runs whose FAB ``pin`` does not approve.

    Wraps ``_pull_and_store_message`` (called by name on each poll): its ``get_fab`` is
    checked before the run, its context or its FAB is stored, and a refusal becomes an
    error reply to the message received, as Flower does for a FAB that fails its own
    verification.
    """
    if module is None:
        import importlib

        module = importlib.import_module("flwr.supernode.start_client_internal")
    original = getattr(module, "_pull_and_store_message", None)
    insert = getattr(module, "_insert_message", None)
    if original is None or insert is None:
        raise RuntimeError("this Flower release has no _pull_and_store_message/_insert_message: "
                           "update fl.signer.pinning")
    signature = inspect.signature(original)
    for name in ("state", "object_store", "receive", "get_fab"):
        if name not in signature.parameters:
            raise RuntimeError(f"Flower's _pull_and_store_message takes no {name!r}: update fl.signer.pinning")
    module._pull_and_store_message = _pinned(original, insert, signature, pin)  # type: ignore[attr-defined]


def _pinned(original: Callable[..., Any], insert: Callable[..., None], signature: inspect.Signature,
            pin: AppPin) -> Callable[..., Any]:
    from flwr.app import Error, Message
    from flwr.common.constant import ErrorCode

    def pull_and_store(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        receive, get_fab = bound.arguments["receive"], bound.arguments["get_fab"]
        received: list[Any] = []

        def receive_noted() -> Any:
            got = receive()
            received[:] = [got[0]] if got is not None else []
            return got

        def get_fab_pinned(fab_hash: str, run_id: int) -> Any:
            fab = get_fab(fab_hash, run_id)
            pin.check(run_id, fab_hash, fab.content)
            return fab

        bound.arguments["receive"] = receive_noted
        bound.arguments["get_fab"] = get_fab_pinned
        try:
            return original(*bound.args, **bound.kwargs)
        except AppNotApproved as exc:
            log.error(REFUSED_EVENT, run_id=exc.run_id, fab_hash=exc.fab_hash, declared_fab_hash=exc.declared,
                      detail="the run's ClientApp is not approved by this institution; nothing was installed or run")
            if received:
                reply = Message(Error(ErrorCode.INVALID_FAB, str(exc)), reply_to=received[0])
                insert(reply, bound.arguments["state"], bound.arguments["object_store"])
            return exc.run_id

    return pull_and_store


_EVENT_LINE = re.compile(r'\{[^\n]*"event": ?"' + REFUSED_EVENT + r'"[^\n]*\}')


def refusals(log_text: str) -> list[dict[str, Any]]:
    """The ``app_refused`` events in a SuperNode log (JSON lines), oldest first, one per run and hash."""
    import json

    found: dict[tuple[Any, Any], dict[str, Any]] = {}
    for match in _EVENT_LINE.finditer(log_text):
        try:
            event = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        key = (event.get("run_id"), event.get("fab_hash"))
        found.setdefault(key, {"run_id": event.get("run_id"), "fab_hash": event.get("fab_hash"),
                               "timestamp": event.get("timestamp")})
    return list(found.values())
