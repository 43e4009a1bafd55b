"""A real Kubernetes control plane for tests: etcd + kube-apiserver on 127.0.0.1.

The two binaries come from a pinned archive (``../shared/k8s`` beside the clone, or
``FEDLEDGER_K8S_ARCHIVE``). As with Fabric (:mod:`ledger.fabric.install`), the archive's
SHA-256 is checked against ``SHA256SUMS`` *before* anything is unpacked, it is unpacked
into a staging folder of the cache (``$FEDLEDGER_CACHE/k8s``, default
``~/.cache/fedledger/k8s``, outside the clone) and renamed into place only when complete.

:func:`start` runs both processes in a temporary folder with certificates made for the
occasion: a CA that signs the API server's serving certificate and an admin client
certificate (``O=system:masters``), and an RSA key pair for service-account tokens. RBAC
is the only authoriser, PodSecurity and the other default admission plugins are on; there
is no kubelet, scheduler or controller manager, so pods are stored, never run, and
nothing garbage-collects owned objects. :meth:`ControlPlane.stop` stops both by pid.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ledger import processes

__all__ = [
    "ARCHIVE_NAME",
    "ARCHIVE_ENV",
    "KubeInstall",
    "ControlPlane",
    "TestEnvError",
    "default_archive",
    "default_cache",
    "install",
    "start",
    "user_kubeconfig",
]

KUBE_VERSION = "1.37.2"
ETCD_VERSION = "3.6.16"
ARCHIVE_NAME = f"kube-apiserver-{KUBE_VERSION}-etcd-{ETCD_VERSION}-linux-amd64.tar.xz"
ARCHIVE_ENV = "FEDLEDGER_K8S_ARCHIVE"
_REPO = Path(__file__).resolve().parents[2]


class TestEnvError(RuntimeError):
    """The control plane could not be installed or started; the message says why."""

    __test__ = False  # not a pytest test class despite the name


@dataclass(frozen=True)
class KubeInstall:
    """An unpacked, checked archive: ``bin/etcd`` and ``bin/kube-apiserver``."""

    root: Path

    @property
    def etcd(self) -> Path:
        """The etcd binary."""
        return self.root / "bin" / "etcd"

    @property
    def apiserver(self) -> Path:
        """The kube-apiserver binary."""
        return self.root / "bin" / "kube-apiserver"


def default_archive(env: Mapping[str, str]) -> Path:
    """``FEDLEDGER_K8S_ARCHIVE``, else ``../shared/k8s/<archive>`` beside the clone."""
    named = env.get(ARCHIVE_ENV)
    return Path(named).expanduser() if named else _REPO.parent / "shared" / "k8s" / ARCHIVE_NAME


def default_cache(env: Mapping[str, str]) -> Path:
    """``$FEDLEDGER_CACHE/k8s`` (default ``~/.cache/fedledger/k8s``)."""
    root = env.get("FEDLEDGER_CACHE") or str(Path.home() / ".cache" / "fedledger")
    return Path(root).expanduser() / "k8s"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pinned_sha256(archive: Path) -> str:
    """The archive's checksum as listed in the ``SHA256SUMS`` file beside it."""
    sums = archive.parent / "SHA256SUMS"
    try:
        lines = sums.read_text(encoding="ascii").splitlines()
    except OSError as exc:
        raise TestEnvError(f"{sums}: cannot be read ({exc}); the archive's checksum is pinned there") from exc
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == archive.name:
            return parts[0].lower()
    raise TestEnvError(f"{sums}: lists no checksum for {archive.name}")


def install(archive: Path, cache: Path) -> KubeInstall:
    """Unpack ``archive`` into ``cache`` once, after checking its SHA-256; idempotent."""
    if not archive.is_file():
        raise TestEnvError(f"no control-plane archive at {archive}: put {ARCHIVE_NAME} and its SHA256SUMS "
                           f"there or set {ARCHIVE_ENV}")
    expected = _pinned_sha256(archive)
    target = cache / f"kube-{KUBE_VERSION}-etcd-{ETCD_VERSION}-{expected[:12]}"
    if (target / ".complete").is_file():
        return KubeInstall(target)
    actual = _sha256(archive)
    if actual != expected:
        raise TestEnvError(f"{archive}: SHA-256 is {actual}, SHA256SUMS says {expected}; refusing to unpack")
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".kube-unpack-", dir=cache))
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                name = Path(member.name)
                if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
                    raise TestEnvError(f"{archive}: refusing member {member.name!r}: not a plain file under the root")
            tar.extractall(staging, members=members, filter="tar")
        found = KubeInstall(staging)
        if not (os.access(found.etcd, os.X_OK) and os.access(found.apiserver, os.X_OK)):
            raise TestEnvError(f"{archive}: has no executable bin/etcd and bin/kube-apiserver")
        (staging / ".complete").write_text(f"{expected}\n", encoding="ascii")
        if target.exists():  # a leftover without .complete
            shutil.rmtree(target)
        os.replace(staging, target)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise TestEnvError(f"{archive}: cannot be unpacked: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return KubeInstall(target)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _name(common_name: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _issue(subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
           issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool, server: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class ControlPlane:
    """A running etcd + kube-apiserver and the admin credentials to reach it."""

    root: Path
    url: str
    ca_cert: Path
    admin_cert: Path
    admin_key: Path
    kubeconfig: Path
    etcd: subprocess.Popen[bytes]
    apiserver: subprocess.Popen[bytes]

    def stop(self) -> list[int]:
        """Stop the API server, then etcd, by pid; the pids still alive afterwards."""
        survivors: list[int] = []
        for proc in (self.apiserver, self.etcd):
            result = processes.stop(proc.pid, proc=proc, timeout=15)
            survivors += [pid for pid in result.tree if processes.pid_alive(pid)]
        return survivors


def _write_kubeconfig(path: Path, url: str, ca: Path, cert: Path, key: Path) -> Path:
    """A kubeconfig with one context, ``fedledger-test``, as the admin."""
    text = (
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: fedledger-test\n  cluster:\n    server: {url}\n"
        f"    certificate-authority: {ca}\n"
        f"users:\n- name: admin\n  user:\n    client-certificate: {cert}\n    client-key: {key}\n"
        "contexts:\n- name: fedledger-test\n  context:\n    cluster: fedledger-test\n    user: admin\n"
        "current-context: fedledger-test\n"
    )
    return _write(path, text.encode(), 0o600)


def _wait_ready(url: str, ca: Path, cert: Path, key: Path, procs: list[subprocess.Popen[bytes]],
                logs: list[Path], timeout: float) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    host, port = url.removeprefix("https://").rsplit(":", 1)
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        for proc, log in zip(procs, logs):
            if proc.poll() is not None:
                raise TestEnvError(f"{Path(proc.args[0]).name} exited with status {proc.returncode} "
                                   f"during start:\n{processes.tail(log, 15)}")
        conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=2)
        try:
            conn.request("GET", "/readyz")
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                return
            last = f"HTTP {response.status}"
        except (OSError, http.client.HTTPException) as exc:
            last = str(exc)
        finally:
            conn.close()
        time.sleep(0.2)
    raise TestEnvError(f"kube-apiserver at {url} not ready within {timeout:.0f} s ({last})")


def start(kube: KubeInstall, root: Path, *, timeout: float = 60.0) -> ControlPlane:
    """Start etcd and kube-apiserver under ``root`` on free loopback ports; wait for ``/readyz``."""
    root.mkdir(parents=True, exist_ok=True)
    pki = root / "pki"
    pki.mkdir(exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("fedledger-test-ca")
    ca = _issue(ca_name, ca_key, ca_name, ca_key, ca=True)
    serving_key = ec.generate_private_key(ec.SECP256R1())
    serving = _issue(_name("kube-apiserver"), serving_key, ca_name, ca_key, ca=False, server=True)
    admin_key = ec.generate_private_key(ec.SECP256R1())
    admin = _issue(_name("admin", "system:masters"), admin_key, ca_name, ca_key, ca=False)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = serialization.Encoding.PEM
    ca_path = _write(pki / "ca.crt", ca.public_bytes(pem), 0o644)
    _write(pki / "ca.key", _pem_key(ca_key))  # signs test users' certificates (user_kubeconfig)
    serving_cert = _write(pki / "apiserver.crt", serving.public_bytes(pem), 0o644)
    serving_key_path = _write(pki / "apiserver.key", _pem_key(serving_key))
    admin_cert = _write(pki / "admin.crt", admin.public_bytes(pem), 0o644)
    admin_key_path = _write(pki / "admin.key", _pem_key(admin_key))
    sa_private = _write(pki / "sa.key", _pem_key(sa_key))
    sa_public = _write(pki / "sa.pub", sa_key.public_key().public_bytes(
        pem, serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)

    client_port, peer_port, api_port = _free_port(), _free_port(), _free_port()
    etcd_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(root)}
    etcd_log, api_log = root / "etcd.log", root / "kube-apiserver.log"
    etcd = processes.spawn([
        str(kube.etcd), "--data-dir", str(root / "etcd"), "--name", "default",
        "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
        "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"default={peer_url}", "--unsafe-no-fsync", "--log-level", "warn",
    ], env=env, log_path=etcd_log, cwd=root)
    apiserver: subprocess.Popen[bytes] | None = None
    try:
        apiserver = processes.spawn([
            str(kube.apiserver), "--etcd-servers", etcd_url,
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
            f"--secure-port={api_port}", f"--cert-dir={root / 'certs'}",
            f"--tls-cert-file={serving_cert}", f"--tls-private-key-file={serving_key_path}",
            f"--client-ca-file={ca_path}", "--authorization-mode=RBAC",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={sa_public}", f"--service-account-signing-key-file={sa_private}",
            "--api-audiences=https://kubernetes.default.svc",
        ], env=env, log_path=api_log, cwd=root)
        url = f"https://127.0.0.1:{api_port}"
        _wait_ready(url, ca_path, admin_cert, admin_key_path, [etcd, apiserver], [etcd_log, api_log], timeout)
    except BaseException:
        for proc in (apiserver, etcd):
            if proc is not None:
                processes.stop(proc.pid, proc=proc, timeout=10)
        raise
    kubeconfig = _write_kubeconfig(root / "kubeconfig", url, ca_path, admin_cert, admin_key_path)
    return ControlPlane(root=root, url=url, ca_cert=ca_path, admin_cert=admin_cert, admin_key=admin_key_path,
                        kubeconfig=kubeconfig, etcd=etcd, apiserver=apiserver)


def user_kubeconfig(plane: ControlPlane, path: Path, *, token: str | None = None, user: str | None = None,
                    groups: tuple[str, ...] = ()) -> Path:
    """A kubeconfig for someone other than the admin: a bearer ``token`` (a service
    account's) or a client certificate for ``user`` in ``groups``, signed by the test CA
    and kept in the control plane's temporary folder)."""
    if token is None and user is None:
        raise ValueError("give a token or a user")
    cluster = (f"clusters:\n- name: t\n  cluster:\n    server: {plane.url}\n"
               f"    certificate-authority: {plane.ca_cert}\n")
    if token is not None:
        who = f"users:\n- name: u\n  user:\n    token: {token}\n"
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        ca_key = serialization.load_pem_private_key((plane.root / "pki" / "ca.key").read_bytes(), None)
        ca = x509.load_pem_x509_certificate(plane.ca_cert.read_bytes())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(user)),
                             *(x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups)])
        cert = _issue(subject, key, ca.subject, ca_key, ca=False)  # type: ignore[arg-type]
        cert_path = _write(path.with_suffix(".crt"), cert.public_bytes(serialization.Encoding.PEM), 0o644)
        key_path = _write(path.with_suffix(".key"), _pem_key(key))
        who = f"users:\n- name: u\n  user:\n    client-certificate: {cert_path}\n    client-key: {key_path}\n"
    text = ("apiVersion: v1\nkind: Config\n" + cluster + who +
            "contexts:\n- name: t\n  context:\n    cluster: t\n    user: u\ncurrent-context: t\n")
    return _write(path, text.encode(), 0o600)
