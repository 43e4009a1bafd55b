"""The ``fedaudit`` chaincode as a chaincode-as-a-service package, with its mutual TLS.

A ccaas package holds no code: ``metadata.json`` (``{"type": "ccaas", "label": …}``) and
``code.tar.gz`` with ``connection.json``, which tells the peer's ccaas builder where the
chaincode server listens and how to dial it. Each peer organisation runs its own
chaincode server, so each has its own package (and so its own package id) and its own
TLS material: a small CA that issues the server's certificate and the one client
certificate its peer presents. The server accepts only clients of that CA.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ledger import pki

__all__ = ["ChaincodeTls", "ChaincodePackage", "make_tls", "build_package"]


@dataclass(frozen=True)
class ChaincodeTls:
    """File paths of one chaincode server's mutual-TLS material."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@dataclass(frozen=True)
class ChaincodePackage:
    """A written package and the id the peer will give it (``label:sha256(package)``)."""

    path: Path
    label: str
    package_id: str


def make_tls(directory: Path, org_name: str, hosts: tuple[str, ...]) -> ChaincodeTls:
    """Create (or reuse) the chaincode server's CA, server and peer-client certificates."""
    files = ChaincodeTls(
        directory / "ca.crt", directory / "server.crt", directory / "server.key",
        directory / "client.crt", directory / "client.key",
    )
    if all(p.is_file() for p in vars(files).values()):
        return files
    ca = pki.init_ca(f"{org_name}-chaincode", common_name=f"chaincode-ca.{org_name}")
    server_key, server_cert = pki.make_tls_server_cert(ca, hosts)
    client_key, client_cert = pki.make_tls_client_cert(ca, f"peer.{org_name}")
    pki.write_public_file(files.ca_cert, pki.certificate_pem(ca.cert))
    pki.write_private_key(files.server_key, server_key)
    pki.write_public_file(files.server_cert, pki.certificate_pem(server_cert))
    pki.write_private_key(files.client_key, client_key)
    pki.write_public_file(files.client_cert, pki.certificate_pem(client_cert))
    return files


def _tar_gz(members: dict[str, bytes]) -> bytes:
    """A deterministic gzip'd tar (fixed mtimes and owners): same input, same package id."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(members.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def build_package(path: Path, label: str, address: str, tls: ChaincodeTls) -> ChaincodePackage:
    """Write the ccaas package for a server at ``address`` that requires mutual TLS."""
    connection = {
        "address": address,
        "dial_timeout": "10s",
        "tls_required": True,
        "client_auth_required": True,
        "root_cert": tls.ca_cert.read_text(encoding="ascii"),
        "client_cert": tls.client_cert.read_text(encoding="ascii"),
        "client_key": tls.client_key.read_text(encoding="ascii"),
    }
    code = _tar_gz({"connection.json": json.dumps(connection, indent=2).encode()})
    metadata = json.dumps({"type": "ccaas", "label": label}).encode()
    package = _tar_gz({"code.tar.gz": code, "metadata.json": metadata})
    path.parent.mkdir(parents=True, exist_ok=True)
    # It holds the peer's client key: readable by this user only.
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(package)
    return ChaincodePackage(path, label, f"{label}:{hashlib.sha256(package).hexdigest()}")
