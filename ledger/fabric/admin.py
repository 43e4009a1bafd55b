"""Fabric's admin tools (cryptogen, configtxgen, osnadmin, the peer CLI), run as subprocesses.

One function per tool invocation the driver needs, each with the environment and TLS
flags of the identity it acts as. A failed call raises :class:`AdminError` with the
tool's last output lines, never a bare ``CalledProcessError``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from ledger.fabric.config import tls_ca
from ledger.fabric.install import FabricInstall
from ledger.fabric.topology import Orderer, Peer, Topology

__all__ = [
    "AdminError",
    "run_tool",
    "cryptogen",
    "genesis_block",
    "osnadmin_join",
    "osnadmin_channels",
    "PeerAdmin",
]


class AdminError(RuntimeError):
    """A Fabric admin tool failed; the message carries what it printed last."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SEVERE = re.compile(r"\b(PANI|FATA|ERRO)\b|Error:|error:")


def _last_lines(text: str, n: int = 6) -> str:
    """What a tool said last, preferring its error lines over a Go stack trace."""
    lines = [_ANSI.sub("", line).strip() for line in text.strip().splitlines() if line.strip()]
    severe = [line for line in lines if _SEVERE.search(line)]
    return " | ".join((severe or lines)[-n:])


def run_tool(
    argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 60.0,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run one tool; raise :class:`AdminError` naming it when it fails or hangs."""
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv, never a shell
            list(argv), capture_output=True, text=True, timeout=timeout,
            env={**base, **(env or {})}, check=False,
        )
    except subprocess.TimeoutExpired:
        raise AdminError(f"{Path(argv[0]).name} {argv[1] if len(argv) > 1 else ''}: no answer in {timeout:.0f} s") from None
    except OSError as exc:
        raise AdminError(f"{argv[0]}: cannot run: {exc}") from None
    if check and done.returncode != 0:
        raise AdminError(
            f"{Path(argv[0]).name} {' '.join(argv[1:3])} failed (exit {done.returncode}): "
            f"{_last_lines(done.stderr + done.stdout)}"
        )
    return done


def cryptogen(install: FabricInstall, config: Path, output: Path) -> None:
    """Generate every organisation's MSP, node and user material."""
    run_tool([install.tool("cryptogen"), "generate", f"--config={config}", f"--output={output}"])


def genesis_block(install: FabricInstall, config_dir: Path, channel: str, out: Path) -> None:
    """The channel's genesis block from ``config_dir/configtx.yaml``."""
    run_tool(
        [install.tool("configtxgen"), "-profile", "FedLedgerChannel", "-outputBlock", str(out),
         "-channelID", channel, "-configPath", str(config_dir)],
        env={"FABRIC_CFG_PATH": str(config_dir)},
    )


def _osnadmin_tls(top: Topology, orderer: Orderer) -> list[str]:
    admin = top.orderer_org_crypto(orderer) / "users" / f"Admin@{orderer.domain}" / "tls"
    return [
        "-o", f"{orderer.host}:{orderer.admin_port}",
        "--ca-file", str(top.orderer_crypto(orderer) / "tls" / "ca.crt"),
        "--client-cert", str(admin / "client.crt"),
        "--client-key", str(admin / "client.key"),
    ]


def osnadmin_join(install: FabricInstall, top: Topology, orderer: Orderer, block: Path) -> None:
    """Join ``orderer`` to the channel. osnadmin exits 0 even on HTTP errors: check 201."""
    done = run_tool(
        [install.tool("osnadmin"), "channel", "join", "--channelID", top.channel,
         "--config-block", str(block), *_osnadmin_tls(top, orderer)],
        check=False,
    )
    if "Status: 201" not in done.stdout:
        raise AdminError(
            f"{orderer.name} did not join channel {top.channel}: {_last_lines(done.stdout + done.stderr)}"
        )


def osnadmin_channels(install: FabricInstall, top: Topology, orderer: Orderer) -> list[str]:
    """Channels ``orderer`` has joined (empty when its admin endpoint does not answer)."""
    done = run_tool(
        [install.tool("osnadmin"), "channel", "list", *_osnadmin_tls(top, orderer)],
        check=False, timeout=15,
    )
    text = done.stdout
    start = text.find("{")
    if "Status: 200" not in text or start < 0:
        return []
    try:
        body = json.loads(text[start:])
    except json.JSONDecodeError:
        return []
    return [c["name"] for c in body.get("channels") or []]


class PeerAdmin:
    """The peer CLI acting as one peer organisation's admin against its own peer."""

    def __init__(self, install: FabricInstall, top: Topology, peer: Peer) -> None:
        self.install, self.top, self.peer = install, top, peer
        admin = top.user_crypto(peer.org, "Admin")
        self.env = {
            "FABRIC_CFG_PATH": str(top.node_dir(peer.name)),
            "CORE_PEER_LOCALMSPID": peer.org.msp_id,
            "CORE_PEER_MSPCONFIGPATH": str(admin / "msp"),
            "CORE_PEER_ADDRESS": peer.endpoint,
            "CORE_PEER_TLS_ENABLED": "true",
            "CORE_PEER_TLS_SERVERHOSTOVERRIDE": peer.host_name,
            "CORE_PEER_TLS_ROOTCERT_FILE": str(tls_ca(top, peer.org)),
            "CORE_PEER_TLS_CLIENTAUTHREQUIRED": "true",
            "CORE_PEER_TLS_CLIENTCERT_FILE": str(admin / "tls" / "client.crt"),
            "CORE_PEER_TLS_CLIENTKEY_FILE": str(admin / "tls" / "client.key"),
            # The CLI logs to stderr at INFO by default; only warnings matter here.
            "FABRIC_LOGGING_SPEC": "warning",
        }
        self.admin_tls = admin / "tls"

    def _orderer_flags(self) -> list[str]:
        orderer = self.top.orderers[0]
        return [
            "-o", orderer.endpoint, "--ordererTLSHostnameOverride", orderer.host_name,
            "--tls", "--cafile", str(self.top.orderer_crypto(orderer) / "tls" / "ca.crt"),
            "--clientauth", "--certfile", str(self.admin_tls / "client.crt"),
            "--keyfile", str(self.admin_tls / "client.key"),
        ]

    def run(self, *args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``peer ARGS…`` as this organisation's admin."""
        return run_tool([self.install.tool("peer"), *args], env=self.env, timeout=timeout, check=check)

    def submit(self, *args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
        """Run a command that orders a transaction, retrying while the ordering service has
        no leader yet (``SERVICE_UNAVAILABLE`` for a few seconds after a (re)start)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.run(*args, timeout=max(1.0, deadline - time.monotonic()))
            except AdminError as exc:
                if "SERVICE_UNAVAILABLE" not in str(exc) or time.monotonic() > deadline - 1:
                    raise
            time.sleep(0.5)

    def channels(self) -> list[str]:
        """Channels this peer has joined."""
        done = self.run("channel", "list", check=False, timeout=15)
        lines = done.stdout.splitlines()
        if "Channels peers has joined:" in lines:
            return [line.strip() for line in lines[lines.index("Channels peers has joined:") + 1:] if line.strip()]
        return []

    def join(self, block: Path) -> None:
        """Join the channel from its genesis block."""
        self.run("channel", "join", "-b", str(block))

    def install_package(self, package: Path) -> None:
        """Install a chaincode package (a second install of the same package is harmless)."""
        done = self.run("lifecycle", "chaincode", "install", str(package), check=False, timeout=120)
        if done.returncode != 0 and "chaincode already successfully installed" not in done.stderr:
            raise AdminError(f"install on {self.peer.name} failed: {_last_lines(done.stderr + done.stdout)}")

    def approve(self, name: str, version: str, sequence: int, package_id: str, policy: str) -> None:
        """Approve a chaincode definition for this organisation (waits for its commit)."""
        self.submit(
            "lifecycle", "chaincode", "approveformyorg", *self._orderer_flags(),
            "--channelID", self.top.channel, "--name", name, "--version", version,
            "--sequence", str(sequence), "--package-id", package_id,
            "--signature-policy", policy, "--waitForEventTimeout", "60s",
        )

    def commit(self, name: str, version: str, sequence: int, policy: str, peers: Sequence[Peer]) -> None:
        """Commit a chaincode definition, endorsed by every peer in ``peers``."""
        flags: list[str] = []
        for p in peers:
            flags += ["--peerAddresses", p.endpoint, "--tlsRootCertFiles", str(tls_ca(self.top, p.org))]
        # The CLI dials other organisations' peers by address; their TLS certificates
        # carry 127.0.0.1 as a SAN, so no host-name override is needed.
        env_backup = self.env.pop("CORE_PEER_TLS_SERVERHOSTOVERRIDE")
        try:
            self.submit(
                "lifecycle", "chaincode", "commit", *self._orderer_flags(),
                "--channelID", self.top.channel, "--name", name, "--version", version,
                "--sequence", str(sequence), "--signature-policy", policy, *flags,
                "--waitForEventTimeout", "60s",
            )
        finally:
            self.env["CORE_PEER_TLS_SERVERHOSTOVERRIDE"] = env_backup

    def committed(self, name: str) -> dict[str, object] | None:
        """The committed definition of chaincode ``name`` (version, sequence, …) or ``None``."""
        done = self.run(
            "lifecycle", "chaincode", "querycommitted", "--channelID", self.top.channel,
            "--name", name, "--output", "json", check=False, timeout=20,
        )
        if done.returncode != 0:
            return None
        try:
            value = json.loads(done.stdout)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, dict) else None

    def query(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Evaluate ``args`` on this peer's chaincode (used to warm up its connection)."""
        return self.run(
            "chaincode", "query", "-C", self.top.channel, "-n", name,
            "-c", json.dumps({"Args": list(args)}), check=False, timeout=60,
        )
