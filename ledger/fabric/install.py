"""Install Hyperledger Fabric from a release archive, checksum first, into a cache.

Fabric's binaries are not a Python dependency: they come from a release archive with the
official layout (``bin/``, ``builders/ccaas/bin/``, ``config/``). The archive is checked
against a pinned SHA-256 *before* anything is unpacked, unpacked into a temporary folder
beside the cache entry, checked (``peer version`` must report the pinned version) and
only then renamed into place, so a half-unpacked tree is never used. The cache entry is
keyed by version and checksum: a second install is a directory look-up.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FABRIC_VERSION",
    "PINNED_SHA256",
    "ARCHIVE_ENV",
    "SHA256_ENV",
    "InstallError",
    "FabricInstall",
    "default_archive",
    "install",
]

FABRIC_VERSION = "3.1.5"
ARCHIVE_NAME = f"hyperledger-fabric-linux-amd64-{FABRIC_VERSION}.tar.xz"
# The archive this project is tested with (shared/fabric beside the clone). Another copy
# of the same release (the official download, an institution's mirror) is pinned by
# its own published checksum through SHA256_ENV.
PINNED_SHA256 = "8e78e95cd5d2cc8bdc600385383b632400ce7f83c1750a187738e20a5f3e19d5"
ARCHIVE_ENV = "FEDLEDGER_FABRIC_ARCHIVE"
SHA256_ENV = "FEDLEDGER_FABRIC_SHA256"
BINARIES = ("peer", "orderer", "configtxgen", "osnadmin", "cryptogen")
_REPO = Path(__file__).resolve().parents[2]


class InstallError(RuntimeError):
    """Fabric could not be installed; the message names the file and what to do."""


@dataclass(frozen=True)
class FabricInstall:
    """An unpacked, checked Fabric release."""

    root: Path
    version: str

    @property
    def bin(self) -> Path:
        """Folder of peer, orderer, configtxgen, osnadmin, cryptogen."""
        return self.root / "bin"

    @property
    def ccaas_builder(self) -> Path:
        """The chaincode-as-a-service external builder (``bin/{detect,build,release}`` below it)."""
        return self.root / "builders" / "ccaas"

    @property
    def config(self) -> Path:
        """Fabric's sample core.yaml / orderer.yaml / configtx.yaml."""
        return self.root / "config"

    def tool(self, name: str) -> str:
        """Absolute path of one binary."""
        return str(self.bin / name)


def default_archive(env: Mapping[str, str]) -> Path:
    """The archive named by ``FEDLEDGER_FABRIC_ARCHIVE``, else ``../shared/fabric/…`` beside the clone."""
    named = env.get(ARCHIVE_ENV)
    if named:
        return Path(named).expanduser()
    return _REPO.parent / "shared" / "fabric" / ARCHIVE_NAME


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _peer_version(root: Path) -> str:
    try:
        out = subprocess.run(  # noqa: S603 - a fixed argv
            [str(root / "bin" / "peer"), "version"],
            capture_output=True, text=True, timeout=30, check=True,
            env={"PATH": "/usr/bin:/bin", "FABRIC_CFG_PATH": str(root / "config")},
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise InstallError(f"{root / 'bin' / 'peer'}: does not run: {exc}") from None
    match = re.search(r"^\s*Version:\s*(\S+)", out, re.MULTILINE)
    return match.group(1) if match else "unknown"


def _safe_members(archive: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = archive.getmembers()
    for member in members:
        name = Path(member.name)
        if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
            raise InstallError(f"refusing archive member {member.name!r}: not a plain file under the root")
    return members


def install(archive: Path, cache: Path, *, sha256: str | None = None) -> FabricInstall:
    """Install the Fabric release ``archive`` under ``cache`` (idempotent) and return it.

    ``sha256`` is the expected checksum (default: the pinned one). Raises
    :class:`InstallError` naming the archive path and the variables to set when the
    archive is missing, its checksum differs, or the unpacked ``peer`` is not
    :data:`FABRIC_VERSION`.
    """
    expected = (sha256 or PINNED_SHA256).lower()
    target = cache / f"fabric-{FABRIC_VERSION}-{expected[:12]}"
    if (target / ".complete").is_file():
        return FabricInstall(root=target, version=FABRIC_VERSION)
    if not archive.is_file():
        raise InstallError(
            f"no Fabric release archive at {archive}: put {ARCHIVE_NAME} there or set "
            f"{ARCHIVE_ENV} to its path (and {SHA256_ENV} to its published SHA-256 if it is "
            "not the archive this project pins)"
        )
    actual = _sha256(archive)
    if actual != expected:
        raise InstallError(
            f"{archive}: SHA-256 is {actual}, expected {expected}; the archive is corrupt or "
            f"not the pinned Fabric {FABRIC_VERSION} release (set {SHA256_ENV} to pin another "
            "copy's published checksum)"
        )
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fabric-unpack-", dir=cache))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                tar.extractall(staging, members=_safe_members(tar), filter="tar")
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            raise InstallError(f"{archive}: cannot be unpacked: {exc}") from None
        missing = [b for b in BINARIES if not os.access(staging / "bin" / b, os.X_OK)]
        if missing or not (staging / "builders" / "ccaas" / "bin" / "build").is_file():
            raise InstallError(
                f"{archive}: not a Fabric release archive (missing {missing or ['builders/ccaas']})"
            )
        version = _peer_version(staging)
        if version != FABRIC_VERSION:
            raise InstallError(f"{archive}: peer version says {version}, expected {FABRIC_VERSION}")
        (staging / ".complete").write_text(f"{FABRIC_VERSION} {expected}\n", encoding="ascii")
        if target.exists():  # a leftover without .complete
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return FabricInstall(root=target, version=FABRIC_VERSION)
