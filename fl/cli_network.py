"""``fedledger network …``: install Fabric and drive a local Fabric network (thin commands).

Where things live, each overridable at the edge (flags, then environment):

* the release archive: ``FEDLEDGER_FABRIC_ARCHIVE`` (default ``../shared/fabric/…`` beside
  the clone), pinned by SHA-256 (``FEDLEDGER_FABRIC_SHA256`` for another copy);
* the unpacked release: ``$FEDLEDGER_CACHE/fabric`` (default ``~/.cache/fedledger/fabric``);
* the network's data (crypto, ledgers, logs, pids, connection profile): ``--data-dir``,
  ``FEDLEDGER_NETWORK_DIR``, default ``~/.local/share/fedledger/network``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer
from rich.console import Console
from rich.table import Table

from ledger.fabric.install import FabricInstall, InstallError, default_archive, install
from ledger.fabric.network import Network, NetworkError, load_topology
from ledger.fabric.topology import Topology

__all__ = ["network_app", "open_network", "default_profile"]

network_app = typer.Typer(help="Install Fabric and drive a local Hyperledger Fabric network.",
                          no_args_is_help=True)
console = Console(stderr=True)

DataDir = typer.Option(None, "--data-dir", help="The network's folder (env FEDLEDGER_NETWORK_DIR).")
AsJson = typer.Option(False, "--json", help="Print one JSON document.")


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _print_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2, sort_keys=True))


def _cache() -> Path:
    return Path(os.environ.get("FEDLEDGER_CACHE", Path.home() / ".cache" / "fedledger")) / "fabric"


def _data_dir(given: Optional[Path]) -> Path:
    if given is not None:
        return given.expanduser().resolve()
    env = os.environ.get("FEDLEDGER_NETWORK_DIR")
    return Path(env).expanduser().resolve() if env else Path.home() / ".local" / "share" / "fedledger" / "network"


def default_profile() -> Path:
    """The connection profile of the local network (``--data-dir`` default)."""
    return _data_dir(None) / "connection.json"


def _install() -> FabricInstall:
    try:
        return install(default_archive(os.environ), _cache(), sha256=os.environ.get("FEDLEDGER_FABRIC_SHA256"))
    except InstallError as exc:
        _fail(str(exc))


def open_network(data_dir: Optional[Path]) -> Network:
    """The existing network in ``data_dir`` (a clear error when there is none)."""
    try:
        top = load_topology(_data_dir(data_dir))
    except NetworkError as exc:
        _fail(str(exc))
    return Network(top, _install())


@network_app.command("install")
def network_install(as_json: bool = AsJson) -> None:
    """Install Fabric from the release archive (checksum first) into the cache."""
    fabric = _install()
    if as_json:
        _print_json({"root": str(fabric.root), "version": fabric.version})
    else:
        typer.echo(f"Fabric {fabric.version} in {fabric.root}")


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
    try:
        if (folder / "network.json").is_file():
            top = load_topology(folder)
        else:
            top = Topology(data_dir=folder, channel=channel, consensus=consensus,  # type: ignore[arg-type]
                           base_port=base_port, batch_timeout_ms=batch_timeout_ms)
    except (ValueError, NetworkError) as exc:
        _fail(str(exc))
    network = Network(top, _install())
    already = network.is_running()
    try:
        if as_json:
            network.up()
        else:
            with console.status("bringing the network up") as spinner:
                network.up(lambda step: (spinner.update(step), console.log(step)))
    except NetworkError as exc:
        _fail(str(exc))
    status = network.status()
    if as_json:
        _print_json({"already_running": already, "profile": str(top.profile_path), **status.to_json()})
    else:
        _print_status(status.to_json())
        typer.echo(f"connection profile: {top.profile_path}")


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
        payload = {"stopped": [], "purged": purge, "data_dir": str(folder)}
        _print_json(payload) if as_json else typer.echo(f"no network in {folder}")
        return
    network = open_network(folder)
    results = network.down(purge=purge)
    payload = {"stopped": [r.to_json() for r in results if r.was_running], "purged": purge,
               "data_dir": str(folder)}
    if as_json:
        _print_json(payload)
    else:
        typer.echo(f"stopped {len(payload['stopped'])} process(es)" + ("; data deleted" if purge else ""))


@network_app.command("status")
def network_status(data_dir: Optional[Path] = DataDir, as_json: bool = AsJson) -> None:
    """Each node's health and block height, and the committed chaincode; exit 1 unless healthy."""
    status = open_network(data_dir).status().to_json()
    if as_json:
        _print_json(status)
    else:
        _print_status(status)
    if not status["healthy"]:
        raise typer.Exit(1)


@network_app.command("logs")
def network_logs(
    name: Optional[str] = typer.Argument(None, help="Process name (see `status`); none lists them."),
    data_dir: Optional[Path] = DataDir,
    lines: int = typer.Option(40, "--lines", "-n", min=1, help="How many of the last lines."),
) -> None:
    """Show the last lines of one process's log, or list the log files."""
    from ledger.processes import tail

    network = open_network(data_dir)
    if name is None:
        for process in network.process_names():
            typer.echo(f"{process:24} {network.top.log_path(process)}")
        return
    try:
        path = network.log_path(name)
    except NetworkError as exc:
        _fail(str(exc))
    typer.echo(tail(path, lines))


@network_app.command("upgrade")
def network_upgrade(
    version: str = typer.Option(..., help="The new chaincode version label, e.g. 1.1."),
    data_dir: Optional[Path] = DataDir,
    as_json: bool = AsJson,
) -> None:
    """Deploy the next sequence of the fedaudit chaincode (install, approve, commit)."""
    network = open_network(data_dir)
    try:
        definition = network.upgrade_chaincode(version, None if as_json else (lambda s: console.log(s)))
    except NetworkError as exc:
        _fail(str(exc))
    payload = {"name": definition.name, "version": definition.version, "sequence": definition.sequence,
               "policy": definition.policy}
    _print_json(payload) if as_json else typer.echo(
        f"{definition.name} {definition.version} committed at sequence {definition.sequence}")


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
