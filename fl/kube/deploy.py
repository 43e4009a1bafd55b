"""Apply rendered objects server-side and report the workloads' readiness."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fl.kube.client import FIELD_MANAGER, Kube

__all__ = ["Applied", "WorkloadStatus", "apply_all", "status_of"]

Obj = dict[str, Any]


@dataclass(frozen=True)
class Applied:
    """One object applied: what, and whether the API server changed it."""

    kind: str
    namespace: str | None
    name: str
    changed: bool

    def to_json(self) -> dict[str, Any]:
        """Plain dict for ``--json``."""
        return {"kind": self.kind, "namespace": self.namespace, "name": self.name, "changed": self.changed}


def apply_all(kube: Kube, objects: list[Obj], *, dry_run: bool = False,
              field_manager: str = FIELD_MANAGER) -> list[Applied]:
    """Server-side apply ``objects`` in order; stops at the first refusal (raised).

    With ``dry_run`` the namespaces and CRDs the rest depend on are only dry-run too,
    so on a cluster without them the API server reports the missing namespace."""
    done: list[Applied] = []
    for obj in objects:
        meta = obj["metadata"]
        before = kube.get(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
        stored = kube.apply(obj, dry_run=dry_run, field_manager=field_manager)
        version = (before or {}).get("metadata", {}).get("resourceVersion")
        changed = before is None or stored.get("metadata", {}).get("resourceVersion") != version
        done.append(Applied(obj["kind"], meta.get("namespace"), meta["name"], changed))
    return done


@dataclass(frozen=True)
class WorkloadStatus:
    """Readiness of one StatefulSet or Deployment."""

    kind: str
    namespace: str
    name: str
    desired: int
    ready: int
    exists: bool

    @property
    def is_ready(self) -> bool:
        """All desired replicas ready."""
        return self.exists and self.ready >= self.desired

    def to_json(self) -> dict[str, Any]:
        """Plain dict for ``--json``."""
        return {"kind": self.kind, "namespace": self.namespace, "name": self.name, "desired": self.desired,
                "ready": self.ready, "exists": self.exists, "is_ready": self.is_ready}


def status_of(kube: Kube, objects: list[Obj]) -> list[WorkloadStatus]:
    """The readiness of every workload among ``objects``, as the API server reports it."""
    out = []
    for obj in objects:
        if obj["kind"] not in ("StatefulSet", "Deployment"):
            continue
        meta = obj["metadata"]
        live = kube.get(obj["apiVersion"], obj["kind"], meta["name"], meta["namespace"])
        desired = int(((live or obj).get("spec") or {}).get("replicas", 1))
        ready = int(((live or {}).get("status") or {}).get("readyReplicas") or 0)
        out.append(WorkloadStatus(obj["kind"], meta["namespace"], meta["name"], desired, ready, live is not None))
    return out
