"""The fedledger operator (kopf): ``python -m fl.kube.operator [--namespace NS]``.

Federation and Institution objects of one namespace (``--namespace``, default
``$WATCH_NAMESPACE``) are reconciled into their children (:mod:`fl.kube.children`) by
server-side apply with field manager ``fedledger-operator``: applying the same objects
again changes nothing, so a restarted operator, which resumes every object, leaves the
cluster as it was. Status: ``Ready`` (the workload's replicas are ready) and ``Degraded``
(the API server refused a child, with its message), refreshed every ``--status-interval``
seconds; events on the parent for every apply and refusal. kopf keeps its own progress in
annotations (the status schema is structural and holds only what is documented there).
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

import kopf

from fl.kube.children import (
    GROUP,
    MANAGER,
    VERSION,
    conditions,
    federation_children,
    institution_children,
    workload_readiness,
)
from fl.kube.client import Kube, connect
from fl.kube.errors import KubeError

__all__ = ["main"]

Obj = dict[str, Any]
STATUS_INTERVAL = float(os.environ.get("FEDLEDGER_OPERATOR_STATUS_INTERVAL", "15"))
_kube: Kube | None = None


def _client() -> Kube:
    global _kube
    if _kube is None:
        _kube = connect()
    return _kube


@kopf.on.startup()
def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 60
    # kopf otherwise lists Namespaces and CRDs cluster-wide to discover what to watch;
    # the operator's Role (one namespace, no CRD rights) forbids both, and it needs
    # neither: its namespace and its two resources are fixed.
    settings.scanning.disabled = True


def _workload(children: list[Obj]) -> Obj:
    return next(c for c in children if c["kind"] in ("StatefulSet", "Deployment"))


def _reconcile(body: kopf.Body, patch: kopf.Patch, build: Any) -> None:
    """Apply the children of ``body`` and report what happened in its status."""
    parent: Obj = {"kind": body["kind"], "metadata": dict(body["metadata"]), "spec": dict(body["spec"])}
    kube = _client()
    degraded = (False, "AsExpected", "every child was accepted by the API server")
    children: list[Obj] = []
    try:
        children = build(parent)
        for child in children:
            kube.apply(child, field_manager=MANAGER)
        kopf.info(body, reason="Applied", message=f"applied {len(children)} children server-side")
    except KubeError as exc:
        degraded = (True, type(exc).__name__ if type(exc).__name__ != "InvalidObject" else "ChildRejected",
                    str(exc)[:1000])
        kopf.warn(body, reason="ApplyFailed", message=str(exc)[:1000])
    _write_status(body, patch, children, degraded)


def _write_status(body: kopf.Body, patch: kopf.Patch, children: list[Obj],
                  degraded: tuple[bool, str, str] | None = None) -> None:
    previous = list((body.get("status") or {}).get("conditions") or [])
    if degraded is None:  # a status refresh keeps the last apply's verdict
        old = next((c for c in previous if c.get("type") == "Degraded"), None)
        degraded = (old is not None and old.get("status") == "True",
                    str((old or {}).get("reason", "AsExpected")), str((old or {}).get("message", "")))
    ready_replicas = 0
    if children:
        workload = _workload(children)
        meta = workload["metadata"]
        live = _client().get(workload["apiVersion"], workload["kind"], meta["name"], meta["namespace"])
        ready, reason, message, ready_replicas = workload_readiness(live)
        ready_state = (ready, reason, message)
    else:
        ready_state = (False, "NotReconciled", "no children could be rendered or applied")
    if degraded[0]:
        ready_state = (False, degraded[1], ready_state[2])
    patch.status["observedGeneration"] = body["metadata"].get("generation", 0)
    patch.status["readyReplicas"] = ready_replicas
    patch.status["children"] = [f"{c['kind']}/{c['metadata']['name']}" for c in children]
    patch.status["conditions"] = conditions(previous, ready=ready_state, degraded=degraded,
                                            generation=body["metadata"].get("generation", 0))


def _children_or_empty(body: kopf.Body, build: Any) -> list[Obj]:
    try:
        return build({"kind": body["kind"], "metadata": dict(body["metadata"]), "spec": dict(body["spec"])})
    except KubeError:
        return []


@kopf.on.resume(GROUP, VERSION, "federations")
@kopf.on.create(GROUP, VERSION, "federations")
@kopf.on.update(GROUP, VERSION, "federations")
def reconcile_federation(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Federation → coordinator ConfigMap, Services, StatefulSet, NetworkPolicy."""
    _reconcile(body, patch, federation_children)


@kopf.on.resume(GROUP, VERSION, "institutions")
@kopf.on.create(GROUP, VERSION, "institutions")
@kopf.on.update(GROUP, VERSION, "institutions")
def reconcile_institution(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Institution → node ServiceAccount, Deployment, NetworkPolicies."""
    _reconcile(body, patch, institution_children)


def _refresh(body: kopf.Body, patch: kopf.Patch, build: Any) -> None:
    """A status refresh from the object as the API server has it now.

    A timer's ``body`` may be older than an update handled meanwhile; writing conditions
    computed from it would put back the verdict that update replaced.
    """
    meta = body["metadata"]
    live = _client().get(f"{GROUP}/{VERSION}", body["kind"], meta["name"], meta.get("namespace"))
    if live is None:
        return
    fresh = kopf.Body(live)
    if (live.get("status") or {}).get("observedGeneration") != live["metadata"].get("generation"):
        return  # an update is being reconciled: its handler writes the status
    _write_status(fresh, patch, _children_or_empty(fresh, build))


@kopf.timer(GROUP, VERSION, "federations", interval=STATUS_INTERVAL, initial_delay=STATUS_INTERVAL)
def refresh_federation(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Re-read the coordinator's readiness into the Federation's status."""
    _refresh(body, patch, federation_children)


@kopf.timer(GROUP, VERSION, "institutions", interval=STATUS_INTERVAL, initial_delay=STATUS_INTERVAL)
def refresh_institution(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Re-read the node's readiness into the Institution's status."""
    _refresh(body, patch, institution_children)


def main(argv: list[str] | None = None) -> int:
    """Run the operator until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m fl.kube.operator", description=__doc__)
    parser.add_argument("--namespace", default=os.environ.get("WATCH_NAMESPACE"),
                        help="the namespace to watch and write (default $WATCH_NAMESPACE)")
    parser.add_argument("--health", default=None, help="host:port of the /healthz endpoint (off when unset)")
    args = parser.parse_args(argv)
    if not args.namespace:
        parser.error("--namespace (or WATCH_NAMESPACE) is required: the operator works in one namespace")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    kopf.run(standalone=True, namespaces=[args.namespace],
             liveness_endpoint=f"http://{args.health}/healthz" if args.health else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
