"""``fedledger network …``: install Fabric and drive a local Fabric network (thin commands).

Where things live:

* the release archive: ``FEDLEDGER_FABRIC_ARCHIVE`` (default ``../shared/fabric/…`` beside
  the clone), pinned by SHA-256 (``FEDLEDGER_FABRIC_SHA256`` for another copy) — where the
  software is installed from, shared with ``./run``, not a setting of a federation;
* the unpacked release: ``$FEDLEDGER_CACHE/fabric`` (default ``~/.cache/fedledger/fabric``);
* the network's data (crypto, ledgers, logs, pids, connection profile): ``--data-dir``,
  default ``~/.local/share/fedledger/network``.

Output and exit codes follow :mod:`fl.cli_output` (3: no network there, or Fabric is
not installed; 1: a node is unhealthy).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from fl.cli_output import ExitCode, JsonOpt, emit, failures
from ledger.fabric.install import FabricInstall, default_archive, install
from ledger.fabric.network import Network, load_topology
from ledger.fabric.topology import Topology

__all__ = ["network_app", "open_network", "default_profile"]

network_app = typer.Typer(help="Install Fabric and drive a local Hyperledger Fabric network.",
                          no_args_is_help=True)
console = Console(stderr=True)

DEFAULT_DATA_DIR = Path.home() / ".local" / "share" / "fedledger" / "network"
DataDir: Any = typer.Option(DEFAULT_DATA_DIR, "--data-dir", help="The network's folder (crypto, ledgers, logs, "
                                                                "pids, connection profile).")
AsJson: Any = JsonOpt


def _cache() -> Path:
    return Path(os.environ.get("FEDLEDGER_CACHE", Path.home() / ".cache" / "fedledger")) / "fabric"


def _data_dir(given: Optional[Path]) -> Path:
    return (given or DEFAULT_DATA_DIR).expanduser().resolve()


def default_profile(data_dir: Optional[Path] = None) -> Path:
    """The connection profile of the local network in ``data_dir`` (default folder)."""
    return _data_dir(data_dir) / "connection.json"


def _install() -> FabricInstall:
    return install(default_archive(os.environ), _cache(), sha256=os.environ.get("FEDLEDGER_FABRIC_SHA256"))


def open_network(data_dir: Optional[Path]) -> Network:
    """The existing network in ``data_dir`` (NetworkError naming the folder when there is none)."""
    return Network(load_topology(_data_dir(data_dir)), _install())


@network_app.command("install")
def network_install(as_json: bool = AsJson) -> None:
    """Install Fabric from the release archive (checksum first) into the cache."""
    with failures(as_json):
        fabric = _install()
    emit(as_json, {"root": str(fabric.root), "version": fabric.version},
         f"Fabric {fabric.version} in {fabric.root}")


@network_app.command("up")
def network_up(
    data_dir: Optional[Path] = DataDir,
    channel: str = typer.Option("fedledger", help="Channel name (one channel per federation)."),
    consensus: str = typer.Option("etcdraft", help="etcdraft (one orderer) or bft (four, SmartBFT)."),
    base_port: int = typer.Option(7050, help="First port; the network uses base … base+202."),
    batch_timeout_ms: int = typer.Option(100, min=10, max=10_000, help="Orderer batch timeout."),
    as_json: bool = AsJson,
) -> None:
    """Start the network (idempotent: a running network is left as it is)."""
    folder = _data_dir(data_dir)
    with failures(as_json):
        if (folder / "network.json").is_file():
            top = load_topology(folder)
        else:
            top = Topology(data_dir=folder, channel=channel, consensus=consensus,  # type: ignore[arg-type]
                           base_port=base_port, batch_timeout_ms=batch_timeout_ms)
        network = Network(top, _install())
        already = network.is_running()
        if as_json:
            network.up()
        else:
            with console.status("bringing the network up") as spinner:
                network.up(lambda step: (spinner.update(step), console.log(step)))
        status = network.status()

    def human() -> str:
        _print_status(status.to_json())
        return f"connection profile: {top.profile_path}"

    emit(as_json, {"already_running": already, "profile": str(top.profile_path), **status.to_json()}, human)


@network_app.command("down")
def network_down(
    data_dir: Optional[Path] = DataDir,
    purge: bool = typer.Option(False, "--purge", help="Also delete the network's data folder."),
    as_json: bool = AsJson,
) -> None:
    """Stop every process the network started, by pid; ``--purge`` deletes its data."""
    folder = _data_dir(data_dir)
    if not (folder / "network.json").is_file():
        if purge and folder.exists():
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
        emit(as_json, {"stopped": [], "purged": purge, "data_dir": str(folder)}, f"no network in {folder}")
        return
    with failures(as_json):
        results = open_network(folder).down(purge=purge)
    payload = {"stopped": [r.to_json() for r in results if r.was_running], "purged": purge,
               "data_dir": str(folder)}
    emit(as_json, payload, f"stopped {len(payload['stopped'])} process(es)" + ("; data deleted" if purge else ""))


@network_app.command("status")
def network_status(data_dir: Optional[Path] = DataDir, as_json: bool = AsJson) -> None:
    """Each node's health and block height, and the committed chaincode; exit 1 unless healthy."""
    with failures(as_json):
        status = open_network(data_dir).status().to_json()
    emit(as_json, status, lambda: _print_status(status))
    if not status["healthy"]:
        raise typer.Exit(ExitCode.FAILED)


@network_app.command("logs")
def network_logs(
    name: Optional[str] = typer.Argument(None, help="Process name (see `status`); none lists them."),
    data_dir: Optional[Path] = DataDir,
    lines: int = typer.Option(40, "--lines", "-n", min=1, help="How many of the last lines."),
    as_json: bool = AsJson,
) -> None:
    """Show the last lines of one process's log, or list the log files."""
    from ledger.processes import tail

    with failures(as_json):
        network = open_network(data_dir)
        if name is None:
            logs = {process: str(network.top.log_path(process)) for process in network.process_names()}
            emit(as_json, logs, lambda: "\n".join(f"{p:24} {path}" for p, path in logs.items()))
            return
        path = network.log_path(name)
    text = tail(path, lines)
    emit(as_json, {"process": name, "log": str(path), "lines": text.splitlines()}, text)


@network_app.command("upgrade")
def network_upgrade(
    version: str = typer.Option(..., help="The new chaincode version label, e.g. 1.1."),
    data_dir: Optional[Path] = DataDir,
    as_json: bool = AsJson,
) -> None:
    """Deploy the next sequence of the fedaudit chaincode (install, approve, commit)."""
    with failures(as_json):
        definition = open_network(data_dir).upgrade_chaincode(version, None if as_json else (lambda s: console.log(s)))
    payload = {"name": definition.name, "version": definition.version, "sequence": definition.sequence,
               "policy": definition.policy}
    emit(as_json, payload, f"{definition.name} {definition.version} committed at sequence {definition.sequence}")


def _print_status(status: dict[str, Any]) -> None:
    out = Console()
    table = Table(title=f"Fabric network — channel {status['channel']} ({status['consensus']})")
    for column in ("node", "kind", "pid", "health", "endpoint", "height"):
        table.add_column(column)
    for n in status["nodes"]:
        health = "[green]ok[/]" if n["running"] and n["healthy"] else f"[red]{n['detail'] or 'down'}[/]"
        table.add_row(n["name"], n["kind"], str(n["pid"] or "-"), health, n["endpoint"] or "-",
                      "-" if n["height"] is None else str(n["height"]))
    out.print(table)
    cc = status["chaincode"]
    if cc:
        out.print(f"chaincode {cc['name']} version {cc['version']} sequence {cc['sequence']}")
    else:
        out.print("[red]chaincode not committed (or no peer answers)[/]")
