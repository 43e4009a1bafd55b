"""Installing Fabric from a release archive: checksum first, clear errors, a cached result."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from ledger.fabric.install import ARCHIVE_ENV, SHA256_ENV, InstallError, default_archive, install


def _archive(path: Path, members: dict[str, bytes]) -> str:
    with tarfile.open(path, "w:xz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_missing_archive_names_the_path_and_the_variable_to_set(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "fabric.tar.xz"

    with pytest.raises(InstallError) as err:
        install(missing, tmp_path / "cache")

    assert str(missing) in str(err.value) and ARCHIVE_ENV in str(err.value)
    assert not (tmp_path / "cache").exists()


def test_a_wrong_checksum_is_refused_before_anything_is_unpacked(tmp_path: Path) -> None:
    archive = tmp_path / "fabric.tar.xz"
    _archive(archive, {"bin/peer": b"#!/bin/sh\necho evil\n"})

    with pytest.raises(InstallError) as err:
        install(archive, tmp_path / "cache")

    message = str(err.value)
    assert str(archive) in message and "SHA-256 is" in message and SHA256_ENV in message
    assert not (tmp_path / "cache").exists()


def test_an_archive_that_escapes_its_root_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "fabric.tar.xz"
    digest = _archive(archive, {"../../escaped": b"x"})

    with pytest.raises(InstallError, match="refusing archive member '../../escaped'"):
        install(archive, tmp_path / "cache", sha256=digest)

    assert not (tmp_path / "escaped").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []  # the staging folder is gone


def test_an_archive_without_fabric_binaries_is_not_installed(tmp_path: Path) -> None:
    archive = tmp_path / "fabric.tar.xz"
    digest = _archive(archive, {"bin/peer": b"#!/bin/sh\n"})

    with pytest.raises(InstallError, match="not a Fabric release archive"):
        install(archive, tmp_path / "cache", sha256=digest)


def test_a_peer_reporting_another_version_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "fabric.tar.xz"
    fake = b"#!/bin/sh\necho 'peer:'\necho ' Version: 2.4.9'\n"
    members = {f"bin/{name}": fake for name in ("peer", "orderer", "configtxgen", "osnadmin", "cryptogen")}
    members["builders/ccaas/bin/build"] = b"#!/bin/sh\n"
    digest = _archive(archive, members)

    with pytest.raises(InstallError, match="peer version says 2.4.9, expected 3.1.5"):
        install(archive, tmp_path / "cache", sha256=digest)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []


def test_the_default_archive_is_shared_fabric_beside_the_clone_unless_named() -> None:
    repo = Path(__file__).resolve().parents[2]

    assert default_archive({}) == repo.parent / "shared" / "fabric" / "hyperledger-fabric-linux-amd64-3.1.5.tar.xz"
    assert default_archive({ARCHIVE_ENV: "/mnt/airgap/fabric.tar.xz"}) == Path("/mnt/airgap/fabric.tar.xz")
