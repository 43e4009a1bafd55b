"""The coordinator service: SuperLink (TLS + node auth) + ledger-driven node keys + the run.

One supervising process owns, under ``<workdir>/coordinator/``:

* ``flower-superlink`` with TLS (a TLS CA + server cert made on first start, SANs from
  ``[deployment] tls_hosts``) and ``--enable-supernode-auth``; its database keeps the
  registered node keys, so node ids are stable across restarts.
* the node keys: every ``sync_interval`` seconds the active participants on the ledger are
  compared with the SuperLink's nodes; admitted keys are registered (named by participant
  id), all other live keys — revoked, pending, unknown — are unregistered (see
  :mod:`fl.deploy.nodes`). A revoked institution's node is thereby refused at the
  transport within one interval plus its next heartbeat.
* one ``flwr run <app> --stream`` of the project's ServerApp (which resumes from the
  ledger's last ``CommitModel``).

Files: ``superlink.log``, ``run.log`` (Flower's own output), ``service.log`` (this service's
JSON log when detached), ``coordinator.pid``, ``state.json``, ``tls/``, ``flwr-home/``.
SIGTERM or SIGINT stops the run client and the SuperLink tree by pid, then exits 0.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import structlog

from fl.config import FederationConfig
from ledger import processes
from fl.deploy.flower import (
    ControlError,
    SuperLinkControl,
    app_config_keys,
    run_command,
    service_env,
    superlink_command,
    write_flwr_config,
    write_toml_config,
)
from fl.deploy.nodes import RoundBoundaryHold, apply_sync, plan_sync
from ledger.errors import LedgerError
from ledger.factory import open_ledger
from ledger.pki import write_tls_files
from ledger.records import Identity

__all__ = ["CoordinatorService", "CoordinatorError", "wait_superlink_ready"]

log = structlog.get_logger("fedledger.coordinator.service")
_RUN_ID = re.compile(r"Successfully started run (\d+)")


class CoordinatorError(RuntimeError):
    """The coordinator service could not start or lost its SuperLink."""


def wait_superlink_ready(address: str, ca_cert: Path, proc: subprocess.Popen[bytes] | None,
                         timeout: float = 60.0) -> float:
    """Wait until the SuperLink answers HTTPS (any status) with a certificate ``ca_cert``
    vouches for; seconds waited. Fails fast when ``proc`` exits."""
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context(cafile=str(ca_cert))
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc is not None and proc.poll() is not None:
            raise CoordinatorError(f"flower-superlink exited with status {proc.returncode} during start")
        conn = http.client.HTTPSConnection(host.strip("[]"), int(port), context=context, timeout=2)
        try:
            conn.request("GET", "/")
            conn.getresponse().read()
            return time.monotonic() - started
        except ssl.SSLCertVerificationError as exc:
            # An answer with the wrong certificate will not get better by waiting.
            raise CoordinatorError(
                f"the SuperLink at {address} presents a certificate {ca_cert} does not vouch for "
                f"({exc.verify_message}): remove the coordinator's tls/ directory to issue a new one"
            ) from exc
        except (OSError, http.client.HTTPException):
            time.sleep(0.25)
        finally:
            conn.close()
    raise CoordinatorError(f"the SuperLink at {address} did not answer within {timeout:.0f} s")


class CoordinatorService:
    """Runs in the foreground until SIGTERM/SIGINT (or the run ends, with ``exit_after_run``)."""

    def __init__(
        self,
        cfg: FederationConfig,
        config_path: Path,
        identity: Identity,
        *,
        start_run: bool = True,
        exit_after_run: bool = False,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path.resolve()
        self.deploy = cfg.deployment
        self.identity = identity
        self.start_run = start_run
        self.exit_after_run = exit_after_run
        self.paths = cfg.workspace.coordinator
        self._stop = threading.Event()
        self._state: dict[str, Any] = {}
        self._run_log_offset = 0
        self._hold = RoundBoundaryHold()

    # --- state -----------------------------------------------------------------------
    def _update(self, **fields: Any) -> None:
        self._state.update(fields)
        processes.write_json_atomic(self.paths.state_file, self._state)

    def request_stop(self, *_: Any) -> None:
        """Ask the service loop to stop (signal handler)."""
        self._stop.set()

    # --- pieces ----------------------------------------------------------------------
    def _run_config(self) -> Path | None:
        keys = app_config_keys(self.deploy.app_dir)
        values: dict[str, Any] = {}
        if "config" in keys:
            values["config"] = str(self.config_path)
        else:
            log.warning("app_lacks_config_key", app=str(self.deploy.app_dir),
                        detail="[tool.flwr.app.config] has no 'config' key; the ServerApp cannot be told the federation file")
        if "workdir" in keys:
            values["workdir"] = str(self.cfg.workdir)
        if "num-server-rounds" in keys:
            values["num-server-rounds"] = self.cfg.rounds
        return write_toml_config(self.paths.run_config, values) if values else None

    def sync_nodes(self, control: SuperLinkControl, ledger: Any, run_active: bool = False) -> dict[str, Any]:
        """Make the SuperLink's node keys match the ledger's active participants once
        (a revoked node of a live run waits for the next round boundary)."""
        plan = plan_sync(ledger.participants(self.cfg.id), control.nodes())
        committed = None
        if run_active and any(r.reason == "revoked" for r in plan.unregister):
            committed = sum(1 for view in ledger.list_rounds(self.cfg.id) if view.commit is not None)
        due = self._hold.due(plan.unregister, committed)
        if due or plan.register:
            apply_sync(plan, control, due)
        summary = plan.to_json()
        summary["held"] = [str(n) for n in self._hold.held]
        return summary

    # --- main ------------------------------------------------------------------------
    def serve(self) -> int:
        """Start everything, supervise, stop everything; the process exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.request_stop)
        self.paths.root.mkdir(parents=True, exist_ok=True)
        processes.claim_pid(self.paths.pid_file)
        self._update(service="coordinator", status="starting", pid=os.getpid(),
                     federation=self.cfg.id, address=self.deploy.superlink_address,
                     rounds=self.cfg.rounds, started_at=time.time())
        superlink: subprocess.Popen[bytes] | None = None
        run: subprocess.Popen[bytes] | None = None
        control: SuperLinkControl | None = None
        ledger = None
        code = 0
        try:
            tls = write_tls_files(self.paths.tls_dir, tuple(self.deploy.tls_hosts))
            write_flwr_config(self.paths.flwr_home, self.deploy.superlink_address, tls.ca_cert)
            env = service_env(self.paths.flwr_home)
            superlink = processes.spawn(
                superlink_command(host=self.deploy.host, port=self.deploy.port,
                                  database=self.paths.superlink_db, ca_cert=tls.ca_cert,
                                  server_cert=tls.server_cert, server_key=tls.server_key),
                env=env, log_path=self.paths.superlink_log, cwd=self.paths.root,
            )
            self._update(superlink_pid=superlink.pid, tls_ca=str(tls.ca_cert.resolve()),
                         children={**self._state.get("children", {}), "superlink": processes.tag(superlink.pid)})
            waited = wait_superlink_ready(self.deploy.superlink_address, tls.ca_cert, superlink)
            log.info("superlink_started", pid=superlink.pid, address=self.deploy.superlink_address,
                     seconds=round(waited, 2))
            control = SuperLinkControl(self.deploy.superlink_address, tls.ca_cert)
            ledger = open_ledger(self.cfg.ledger_config, self.identity)
            sync = self.sync_nodes(control, ledger)
            self._update(nodes=sync["active_nodes"], last_sync=sync, last_sync_at=time.time())
            if self.start_run:
                self._run_log_offset = self.paths.run_log.stat().st_size if self.paths.run_log.exists() else 0
                run = processes.spawn(run_command(self.deploy.app_dir, self._run_config()), env=env,
                                      log_path=self.paths.run_log, cwd=self.paths.root)
                log.info("run_submitted", pid=run.pid, app=str(self.deploy.app_dir))
                self._update(run_pid=run.pid, run_status="submitted",
                             children={**self._state.get("children", {}), "run": processes.tag(run.pid)})
            self._update(status="running")
            code = self._supervise(superlink, run, control, ledger)
        except (CoordinatorError, ControlError, LedgerError, OSError, ValueError) as exc:
            log.error("coordinator_failed", error=str(exc))
            self._update(status="failed", error=str(exc))
            code = 1
        finally:
            self._shutdown(superlink, run, control, ledger)
            final = "failed" if code else "stopped"
            self._update(status=final, stopped_at=time.time())
            processes.release_pid(self.paths.pid_file)
        return code

    def _supervise(self, superlink: subprocess.Popen[bytes], run: subprocess.Popen[bytes] | None,
                   control: SuperLinkControl, ledger: Any) -> int:
        while not self._stop.wait(self.deploy.sync_interval):
            if superlink.poll() is not None:
                raise CoordinatorError(f"flower-superlink exited with status {superlink.returncode}")
            try:
                sync = self.sync_nodes(control, ledger, run_active=run is not None and run.poll() is None)
                self._update(nodes=sync["active_nodes"], last_sync=sync, last_sync_at=time.time(),
                             last_sync_error=None)
            except (ControlError, LedgerError) as exc:
                log.warning("node_sync_failed", error=str(exc))
                self._update(last_sync_error=str(exc))
            if run is not None and run.poll() is not None:
                self._finish_run(run, control)
                run = None
                if self.exit_after_run:
                    return 0 if self._state.get("run_status") == "finished:completed" else 1
        return 0

    def _finish_run(self, run: subprocess.Popen[bytes], control: SuperLinkControl) -> None:
        with open(self.paths.run_log, "rb") as handle:  # only this run's part of the log
            handle.seek(self._run_log_offset)
            found = _RUN_ID.findall(handle.read().decode("utf-8", errors="replace"))
        run_id = int(found[-1]) if found else None
        status = f"flwr-run-exit:{run.returncode}"
        if run_id is not None:
            try:
                view = next((r for r in control.runs() if r.run_id == run_id), None)
                if view is not None:
                    status = f"{view.status}:{view.sub_status}" if view.sub_status else view.status
            except ControlError as exc:
                log.warning("run_status_unknown", error=str(exc))
        report = log.info if status == "finished:completed" else log.error
        report("run_finished", run_id=str(run_id), status=status, exit_code=run.returncode)
        self._update(run_id=str(run_id) if run_id else None, run_status=status, run_pid=None)

    def _shutdown(self, superlink: subprocess.Popen[bytes] | None, run: subprocess.Popen[bytes] | None,
                  control: SuperLinkControl | None, ledger: Any) -> None:
        if run is not None:
            result = processes.stop(run.pid, proc=run, timeout=10)
            log.info("run_client_stopped", **result.to_json())
        if control is not None:
            control.close()
        if superlink is not None:
            result = processes.stop(superlink.pid, proc=superlink, timeout=20)
            log.info("superlink_stopped", **result.to_json())
        if ledger is not None:
            ledger.close()
