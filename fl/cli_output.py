"""The command-line convention every ``fedledger`` command follows, in one place.

* **Which federation**: ``--config PATH``, else ``$FEDLEDGER_CONFIG``, else
  ``./federation.toml`` (like kubectl's ``--kubeconfig`` / ``KUBECONFIG``). The workspace,
  ledger and identities all come from that file.
* **Which participant**: always ``-p/--participant``.
* **Output**: a line or table for people; ``--json`` prints one JSON document
  (:func:`json_text`: sorted keys, indent 2, UTF-8, dates ISO 8601, paths as strings).
* **Failure**: ``error: <one line>`` on stderr; with ``--json`` also
  ``{"error": …, "exit_code": …}`` on stdout; the exit code is an :class:`ExitCode`.

Exceptions are mapped to exit codes here and nowhere else (:func:`exit_code_for`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer

from fl.config import FederationConfig, load_config
from ledger.errors import LedgerError

__all__ = [
    "ExitCode",
    "CommandError",
    "exit_code_for",
    "json_text",
    "emit",
    "fail",
    "failures",
    "load",
    "ConfigOpt",
    "JsonOpt",
    "ParticipantOpt",
    "CONVENTION",
]


class ExitCode(enum.IntEnum):
    """What a ``fedledger`` command's exit status means."""

    OK = 0
    FAILED = 1  # a check failed, or the request was refused (audit problem, ledger refusal)
    USAGE = 2  # bad flag or argument, malformed federation / key / certificate file
    UNAVAILABLE = 3  # the ledger, network, cluster or service is not reachable or not running
    NOT_FOUND = 4  # what was asked for does not exist (a round, a participant, a record)


CONVENTION = (
    "Exit codes: 0 ok; 1 a check failed or the request was refused; 2 usage or configuration "
    "error (bad flag, malformed federation, key or certificate file); 3 unavailable (ledger, "
    "network, cluster or service not reachable or not running); 4 not found (the round, "
    "participant or record asked for does not exist)."
)


class CommandError(Exception):
    """A failure whose exit code the command chose itself."""

    def __init__(self, message: str, code: ExitCode = ExitCode.FAILED) -> None:
        super().__init__(message)
        self.code = code


# Exception classes by "module.QualName", most specific first along each class's MRO:
# named, not imported, so that a command never imports a heavy module only to map errors.
_CODES: dict[str, ExitCode] = {
    "fl.config.ConfigError": ExitCode.USAGE,
    "fl.identities.CredentialsError": ExitCode.USAGE,
    "ledger.pki.KeyFileError": ExitCode.USAGE,
    "ledger.pki.CertificateError": ExitCode.USAGE,
    "ledger.formats.FormatError": ExitCode.USAGE,
    "fl.data.DataMismatchError": ExitCode.FAILED,
    "fl.kube.errors.RenderError": ExitCode.USAGE,
    "pydantic_core._pydantic_core.ValidationError": ExitCode.USAGE,
    "builtins.FileNotFoundError": ExitCode.USAGE,
    "builtins.IsADirectoryError": ExitCode.USAGE,
    "builtins.PermissionError": ExitCode.USAGE,
    "ledger.errors.LedgerUnavailable": ExitCode.UNAVAILABLE,
    "ledger.errors.RecordNotFound": ExitCode.NOT_FOUND,
    "ledger.errors.LedgerError": ExitCode.FAILED,
    "fl.deploy.flower.ControlError": ExitCode.UNAVAILABLE,
    "fl.signer.client.SignerUnavailable": ExitCode.UNAVAILABLE,
    "fl.kube.errors.ClusterUnreachable": ExitCode.UNAVAILABLE,
    "ledger.fabric.network.NetworkError": ExitCode.UNAVAILABLE,
    "ledger.fabric.install.InstallError": ExitCode.UNAVAILABLE,
    "builtins.ConnectionError": ExitCode.UNAVAILABLE,
    "builtins.TimeoutError": ExitCode.UNAVAILABLE,
}

# What a command catches and turns into one line; anything else is a bug (traceback).
EXPECTED = (CommandError, LedgerError, ValueError, OSError, RuntimeError)


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code of an expected failure (the one mapping of the CLI)."""
    if isinstance(exc, CommandError):
        return exc.code
    for cls in type(exc).__mro__:
        code = _CODES.get(f"{cls.__module__}.{cls.__qualname__}")
        if code is not None:
            return code
    return ExitCode.FAILED


def _encode(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, enum.Enum):
        return value.value
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def json_text(payload: Any) -> str:
    """The one JSON encoding of command output (no trailing newline)."""
    return json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False, default=_encode)


def emit(as_json: bool, payload: Any, human: Callable[[], str | None] | str | None = None) -> None:
    """Print ``payload`` as JSON, or ``human`` (a string, or a function that returns one
    or prints a table itself) for people."""
    if as_json or human is None:
        typer.echo(json_text(payload))
        return
    text = human() if callable(human) else human
    if text is not None:
        typer.echo(text)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def fail(message: str, code: ExitCode = ExitCode.FAILED, as_json: bool = False) -> NoReturn:
    """Print ``error: <message>`` on stderr (and the JSON error document with ``--json``)
    and exit with ``code``."""
    line = message.strip().splitlines()[0] if message.strip() else "failed"
    typer.echo(f"error: {line}", err=True)
    if as_json:
        typer.echo(json_text({"error": line, "exit_code": int(code)}))
    raise typer.Exit(int(code))


@contextmanager
def failures(as_json: bool = False) -> Iterator[None]:
    """Turn every expected failure inside the block into :func:`fail` with its code."""
    try:
        yield
    except EXPECTED as exc:
        fail(_one_line(exc), exit_code_for(exc), as_json)


def load(config: Path) -> FederationConfig:
    """The federation file the command points at (``ConfigError`` names what is wrong)."""
    return load_config(Path(config).expanduser())


ConfigOpt: Any = typer.Option(
    Path("federation.toml"), "--config", envvar="FEDLEDGER_CONFIG", show_envvar=True,
    help="The federation file (\\[federation] and optional \\[deployment]); the workspace, "
         "ledger and identities come from it.")
JsonOpt: Any = typer.Option(False, "--json", help="Print one JSON document (on failure: {error, exit_code}).")
ParticipantOpt: Any = typer.Option(..., "--participant", "-p", help="Participant id, e.g. bank-a.")
