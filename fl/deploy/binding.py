"""Bind a reply's authenticated node to the participant that owns its key (ServerApp side).

With ``--enable-supernode-auth`` every Fleet request is signed by the node's key, and
``grid.get_nodes()`` returns, per *online* node, ``NodeInfo(node_id, name, status,
public_key)`` with the key as SubjectPublicKeyInfo PEM. A reply's
``metadata.src_node_id`` is the authenticated sender. So a reply may be accepted only if
the manifest's participant is the participant whose ledger certificate holds that node's
key: a node cannot sign for another institution even with a stolen signing key, and a
stolen node key cannot submit for the institution without its certificate on the ledger.

Use in the strategy's ``configure_train``: call the sampling first (FedAvg's sampling *waits*
for nodes to come online), then ``directory.update(grid.get_nodes(), participants)`` — built
before sampling, a node that connects during the wait is missing — and send only
:func:`active_only` messages; pass ``directory.owner`` as ``node_owner``. Keep one
directory for the run: ``get_nodes`` lists online nodes only, and a node that drops
before aggregation must still be recognised.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, TypeVar

from ledger.pki import CertificateError, certificate_from_pem, spki_pem
from ledger.records import Participant

__all__ = ["NodeDirectory", "active_only"]


class _NodeInfo(Protocol):
    node_id: int
    public_key: bytes


class _Addressed(Protocol):
    @property
    def metadata(self) -> Any: ...


M = TypeVar("M", bound=_Addressed)


class NodeDirectory:
    """Maps Flower node ids (as strings) to the participant owning the node's key."""

    def __init__(self) -> None:
        self._owner: dict[str, str] = {}

    @classmethod
    def build(cls, nodes: Iterable[_NodeInfo], participants: Iterable[Participant]) -> NodeDirectory:
        """From ``grid.get_nodes()`` and the ledger's participants (any status: the
        strategy rejects revoked / pending participants with their own reasons)."""
        directory = cls()
        directory.update(nodes, participants)
        return directory

    def update(self, nodes: Iterable[_NodeInfo], participants: Iterable[Participant]) -> None:
        """Add the nodes seen now; earlier entries stay (a node id never changes owner,
        since a key is unique on a SuperLink and cannot be re-registered)."""
        by_key: dict[bytes, str] = {}
        for participant in participants:
            try:
                by_key[spki_pem(certificate_from_pem(participant.cert_pem))] = participant.id
            except CertificateError:
                continue
        for node in nodes:
            owner = by_key.get(bytes(node.public_key))
            if owner is not None:
                self._owner[str(node.node_id)] = owner

    def owner(self, node_id: str) -> str | None:
        """The participant owning ``node_id``'s key, or ``None`` (unknown / no key)."""
        return self._owner.get(str(node_id))

    def as_dict(self) -> Mapping[str, Any]:
        """node id → participant (for logs)."""
        return dict(self._owner)


def active_only(messages: Iterable[M], directory: NodeDirectory, participants: Iterable[Participant]) -> list[M]:
    """The messages addressed to a node whose key belongs to a participant active now.

    A revoked institution's node stays connected until the coordinator unregisters its
    key at the next round boundary; this keeps the next round from reaching it.
    """
    active = {p.id for p in participants if p.status == "active"}
    return [m for m in messages if directory.owner(str(m.metadata.dst_node_id)) in active]
