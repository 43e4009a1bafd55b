"""What the operator makes of a Federation or an Institution: pure functions, no I/O.

A Federation's children are the coordinator component rendered for its spec (the same
:func:`fl.kube.render.coordinator_objects` as ``fedledger k8s render``); an
Institution's are its node's ServiceAccount, Deployment and NetworkPolicies. Every child
carries a controller owner reference to its parent, so deleting the parent lets
Kubernetes' garbage collector remove them, and the ``managed-by`` label says who owns it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import ValidationError

from fl.config import FederationConfig
from fl.kube.errors import RenderError
from fl.kube.render import coordinator_objects, institution_objects

__all__ = ["GROUP", "VERSION", "MANAGER", "federation_config", "federation_children", "institution_children",
           "conditions", "workload_readiness"]

GROUP = "fedledger.io"
VERSION = "v1alpha1"
MANAGER = "fedledger-operator"
Obj = dict[str, Any]


def federation_config(spec: Obj) -> FederationConfig:
    """The federation a Federation spec describes (the CRD schema has checked the shape;
    this checks what it cannot, e.g. ``minParticipants`` against the participants)."""
    training = spec.get("training") or {}
    data = {
        "id": spec["federationId"],
        "rounds": spec.get("rounds", 3),
        "ledger": spec.get("ledger", "embedded"),
        "coordinator_msp": spec.get("coordinatorMsp", "CoordinatorMSP"),
        "auditor_msps": spec.get("auditorMsps", ["AuditorMSP"]),
        "reward_budget": spec.get("rewardBudget", 1000),
        "min_participants": spec.get("minParticipants"),
        "training": {k: v for k, v in {
            "local_epochs": training.get("localEpochs"), "learning_rate": training.get("learningRate"),
            "batch_size": training.get("batchSize"), "seed": training.get("seed")}.items() if v is not None},
        "participants": [{"id": p["id"], "msp_id": p["mspId"]} for p in spec.get("participants", [])],
    }
    try:
        return FederationConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise RenderError(f"spec.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from exc


def _owned(objects: list[Obj], owner: Obj) -> list[Obj]:
    reference = {"apiVersion": f"{GROUP}/{VERSION}", "kind": owner["kind"], "name": owner["metadata"]["name"],
                 "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    for obj in objects:
        obj["metadata"]["ownerReferences"] = [reference]
        obj["metadata"].setdefault("labels", {})["app.kubernetes.io/managed-by"] = MANAGER
    return objects


def federation_children(federation: Obj) -> list[Obj]:
    """The coordinator's objects for a Federation, in its namespace, owned by it."""
    spec = federation["spec"]
    storage = spec.get("storage") or {}
    objects = coordinator_objects(federation_config(spec), namespace=federation["metadata"]["namespace"],
                                  image=spec.get("image"), storage_size=storage.get("size"),
                                  storage_class=storage.get("storageClassName"))
    return _owned(objects, federation)


def institution_children(institution: Obj) -> list[Obj]:
    """The node's objects for an Institution, in its namespace, owned by it."""
    spec = institution["spec"]
    objects = institution_objects(
        spec["participantId"], namespace=institution["metadata"]["namespace"], superlink=spec["superlink"],
        image=spec.get("image"), key_secret=spec.get("keySecret"), ca_secret=spec.get("superlinkCaSecret"),
        data_claim=spec.get("dataClaim"), data_file=spec.get("dataFile"), with_namespace=False)
    return _owned(objects, institution)


def workload_readiness(workload: Obj | None) -> tuple[bool, str, str, int]:
    """``(ready, reason, message, ready replicas)`` of a StatefulSet or Deployment."""
    if workload is None:
        return False, "WorkloadMissing", "the workload has not been created", 0
    desired = int((workload.get("spec") or {}).get("replicas", 1))
    ready = int((workload.get("status") or {}).get("readyReplicas") or 0)
    if ready >= desired:
        return True, "ReplicasReady", f"{ready} of {desired} replicas ready", ready
    return False, "ReplicasUnavailable", f"{ready} of {desired} replicas ready", ready


def _condition(previous: list[Obj], kind: str, status: bool, reason: str, message: str, generation: int,
               now: str) -> Obj:
    text = "True" if status else "False"
    old = next((c for c in previous if c.get("type") == kind), None)
    since = old["lastTransitionTime"] if old and old.get("status") == text and old.get("lastTransitionTime") else now
    return {"type": kind, "status": text, "reason": reason, "message": message,
            "observedGeneration": generation, "lastTransitionTime": since}


def conditions(previous: list[Obj], *, ready: tuple[bool, str, str], degraded: tuple[bool, str, str],
               generation: int, now: dt.datetime | None = None) -> list[Obj]:
    """Ready and Degraded conditions; a condition keeps its lastTransitionTime while its
    status stays the same, so re-reconciling changes nothing."""
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return [_condition(previous, "Ready", *ready, generation, stamp),
            _condition(previous, "Degraded", *degraded, generation, stamp)]
