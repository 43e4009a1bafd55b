"""Runs one institution's signer in the foreground until SIGTERM/SIGINT.

Start-up fails closed: a key that does not match the institution's certificate, a key
file others may read, a journal whose hash chain is broken, or an unsafe socket
directory stops the signer before it serves anything.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import structlog

from fl.signer.journal import Journal
from fl.signer.keys import SigningKey, pem_key, pkcs11_key
from fl.signer.ledger_view import LedgerView
from fl.signer.policy import SignerPolicy
from fl.signer.server import SignerServer
from fl.signer.service import SigningService
from fl.signer.settings import KeySource, SignerSettings
from ledger import processes
from ledger.keys_pkcs11 import read_pin
from ledger.pki import CertificateError, load_certificate, spki_pem

__all__ = ["open_key", "build_service", "SignerProcess"]

log = structlog.get_logger("fedledger.signer")


def open_key(source: KeySource) -> SigningKey:
    """The signer's key from a file or a token."""
    if source.pem is not None:
        return pem_key(source.pem)
    assert source.pkcs11_module and source.token_label and source.key_label and source.pin_file
    return pkcs11_key(source.pkcs11_module, source.token_label, source.key_label, read_pin(source.pin_file))


def build_service(settings: SignerSettings, key: SigningKey) -> SigningService:
    """The signing service: key checked against the certificate, journal verified."""
    if settings.cert is not None and spki_pem(load_certificate(settings.cert)) != spki_pem(key.public_key):
        raise CertificateError(f"{settings.cert}: the signer's key ({key.describe}) is not this certificate's key")
    policy = SignerPolicy(settings.participant, settings.federation, settings.max_num_examples)
    return SigningService(policy, key, Journal(settings.paths.journal),
                          LedgerView(settings.ledger, settings.credentials))


class SignerProcess:
    """The signer as a service: pid file, state file, socket, until asked to stop."""

    def __init__(self, settings: SignerSettings) -> None:
        self.settings = settings
        self.paths = settings.paths
        self._stop = threading.Event()
        self._state: dict[str, Any] = {}

    def _update(self, **fields: Any) -> None:
        self._state.update(fields)
        processes.write_json_atomic(self.paths.state_file, self._state)

    def request_stop(self, *_: Any) -> None:
        """Ask the signer to stop (signal handler)."""
        self._stop.set()

    def serve(self) -> int:
        """Serve until SIGTERM/SIGINT; the process exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.request_stop)
        self.paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        processes.claim_pid(self.paths.pid_file)
        self._update(service="signer", participant=self.settings.participant, federation=self.settings.federation,
                     status="starting", pid=os.getpid(), started_at=time.time(), socket=str(self.paths.socket),
                     journal=str(self.paths.journal), key=self.settings.key.describe())
        key: SigningKey | None = None
        server: SignerServer | None = None
        code = 0
        try:
            key = open_key(self.settings.key)
            service = build_service(self.settings, key)
            server = SignerServer(self.paths.socket, service, self.settings.allowed_uids)
            server.start()
            log.info("signer_started", participant=self.settings.participant, socket=str(self.paths.socket),
                     key=key.describe)
            self._update(status="running", last_signed_round=service.last_signed_round)
            self._stop.wait()
        except (ValueError, OSError) as exc:  # KeyFileError, CertificateError, JournalError, SocketError…
            log.error("signer_failed", participant=self.settings.participant, error=str(exc))
            self._update(status="failed", error=str(exc))
            code = 1
        finally:
            if server is not None:
                server.stop()
            if key is not None:
                key.close()
            if self._state.get("status") in ("starting", "running"):
                self._update(status="stopped")
            self._update(stopped_at=time.time())
            processes.release_pid(self.paths.pid_file)
        return code
