"""Which node keys the SuperLink must accept: exactly the keys of active participants.

The ledger is the source of truth. :func:`plan_sync` compares the participants on the
ledger with the nodes the SuperLink knows and returns what to change; the coordinator
applies the plan through :class:`~fl.deploy.flower.SuperLinkControl`. Nodes are matched to
participants by **public key** (the key of the participant's certificate on the ledger),
never by name: a node's name is only a label the coordinator gave it.

While a run is in flight, a *revoked* node is unregistered only once the next
``CommitModel`` is on the ledger (:class:`RoundBoundaryHold`): unregistering it mid-round
would make its pending reply vanish and the round wait for its timeout, whereas at the
round boundary its reply (if any) is already recorded — rejected as ``revoked`` by the
audit layer — and the next round no longer reaches it.

Revocation is one-way at the transport: Flower keeps an unregistered key and refuses to
register it again, so a re-admitted institution must register a new certificate (new
key). Such a participant is reported as ``burned``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog

from fl.deploy.flower import ControlError, NodeView, SuperLinkControl
from ledger.pki import CertificateError, certificate_from_pem, spki_pem
from ledger.records import Participant

__all__ = ["Registration", "Removal", "SyncPlan", "RoundBoundaryHold", "plan_sync", "apply_sync"]

log = structlog.get_logger("fedledger.deploy.nodes")
UNREGISTERED = "unregistered"


@dataclass(frozen=True)
class Registration:
    """An active participant whose key the SuperLink must learn."""

    participant: str
    public_key: bytes


@dataclass(frozen=True)
class Removal:
    """A node whose key no active participant holds, with the participant's status."""

    node_id: int
    name: str
    reason: str  # revoked | pending | unknown


@dataclass
class SyncPlan:
    """The changes that make the SuperLink's node keys match the ledger."""

    register: list[Registration] = field(default_factory=list)
    unregister: list[Removal] = field(default_factory=list)
    burned: list[str] = field(default_factory=list)
    unusable: dict[str, str] = field(default_factory=dict)
    active_nodes: dict[str, int] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """Nothing to change."""
        return not self.register and not self.unregister

    def to_json(self) -> dict[str, Any]:
        """Plain dict for logs and ``--json``."""
        return {
            "register": [r.participant for r in self.register],
            "unregister": [{"node_id": str(r.node_id), "name": r.name, "reason": r.reason}
                           for r in self.unregister],
            "burned": self.burned,
            "unusable": self.unusable,
            "active_nodes": {p: str(n) for p, n in self.active_nodes.items()},
        }


def plan_sync(participants: Iterable[Participant], nodes: Iterable[NodeView]) -> SyncPlan:
    """The plan that registers every active participant's key and unregisters every
    other live node key (pending, revoked, or unknown to the ledger)."""
    plan = SyncPlan()
    nodes = list(nodes)
    by_key: dict[bytes, list[NodeView]] = {}
    for node in nodes:
        by_key.setdefault(node.public_key, []).append(node)
    wanted: dict[bytes, str] = {}
    status_of_key: dict[bytes, str] = {}
    for participant in sorted(participants, key=lambda p: p.id):
        try:
            key = spki_pem(certificate_from_pem(participant.cert_pem))
        except CertificateError as exc:
            plan.unusable[participant.id] = str(exc)
            continue
        status_of_key[key] = participant.status
        if participant.status != "active":
            continue
        wanted[key] = participant.id
        known = by_key.get(key, [])
        live = [n for n in known if n.status != UNREGISTERED]
        if live:
            plan.active_nodes[participant.id] = live[0].node_id
        elif known:
            plan.burned.append(participant.id)
        else:
            plan.register.append(Registration(participant.id, key))
    for node in nodes:
        if node.status == UNREGISTERED or node.public_key in wanted:
            continue
        plan.unregister.append(
            Removal(node.node_id, node.name, status_of_key.get(node.public_key, "unknown"))
        )
    return plan


class RoundBoundaryHold:
    """Holds a revoked node's unregistration back until a round boundary of a live run."""

    def __init__(self) -> None:
        self._first_seen: dict[int, int] = {}

    @property
    def held(self) -> list[int]:
        """Node ids currently held back."""
        return sorted(self._first_seen)

    def due(self, removals: Iterable[Removal], committed: int | None) -> list[Removal]:
        """The removals to apply now. ``committed`` is the number of committed rounds
        while a run is in flight, ``None`` when no run is (then everything is due)."""
        due: list[Removal] = []
        current = set()
        for removal in removals:
            current.add(removal.node_id)
            if removal.reason != "revoked" or committed is None:
                due.append(removal)
                self._first_seen.pop(removal.node_id, None)
                continue
            if removal.node_id not in self._first_seen:
                self._first_seen[removal.node_id] = committed
                log.info("node_unregister_held", node_id=str(removal.node_id), name=removal.name,
                         committed_rounds=committed, detail="until the next CommitModel")
            if committed > self._first_seen[removal.node_id]:
                due.append(removal)
                del self._first_seen[removal.node_id]
        for stale in set(self._first_seen) - current:
            del self._first_seen[stale]
        return due


def apply_sync(plan: SyncPlan, control: SuperLinkControl, removals: Iterable[Removal] | None = None) -> SyncPlan:
    """Apply ``plan`` (``removals``: the unregistrations due now, default all):
    unregister first, then register. Returns the plan with new node ids filled in."""
    for removal in plan.unregister if removals is None else removals:
        control.unregister(removal.node_id)
        log.info("node_unregistered", node_id=str(removal.node_id), name=removal.name,
                 reason=removal.reason)
    for registration in plan.register:
        try:
            node_id = control.register(registration.public_key, registration.participant)
        except ControlError as exc:
            log.error("node_register_failed", participant=registration.participant, error=str(exc))
            continue
        plan.active_nodes[registration.participant] = node_id
        log.info("node_registered", participant=registration.participant, node_id=str(node_id))
    for participant in plan.burned:
        log.warning("node_key_burned", participant=participant,
                    detail="key was unregistered before; register a new certificate to rejoin")
    return plan
