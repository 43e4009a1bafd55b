"""Render the Kubernetes objects of a federation from ``k8s/base`` and an overlay.

The base is the sample federation (``demo-fed``: bank-a, bank-b, bank-c). For another
``federation.toml`` the renderer keeps every component as it is and changes only what
the federation decides: the coordinator's ``federation.toml`` ConfigMap (with the
``[deployment]`` table a pod needs), its ``app.kubernetes.io/instance`` label, a
checksum annotation that rolls the pod when the file changes, and one institution
component per participant — the ``base/institution`` folder with ``bank-a`` replaced by
the participant's id (ids are checked against the ledger's id pattern, so the
replacement can only hit the id), and its ``institution-federation`` ConfigMap: the
federation file the institution's node reads (the declared data schema and model, the
institution's own entry, the SuperLink address). The operator renders its children with
the same functions, so a Federation object and ``fedledger k8s render`` yield the same
coordinator; for an Institution object the institution provides that ConfigMap itself,
as it provides its key Secret and data volume.
"""

from __future__ import annotations

import copy
import hashlib
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import yaml

from fl.config import DeploymentConfig, FederationConfig, write_config
from fl.kube.errors import RenderError
from fl.kube.manifests import DUMPER, LOADER, apply_overlay, k8s_root, load_kustomization, load_yaml, overlay_dir, set_namespace
from ledger.formats import ID_PATTERN

__all__ = [
    "SAMPLE_PARTICIPANT",
    "COORDINATOR_NAMESPACE",
    "FLEET_PORT",
    "METRICS_PORT",
    "render",
    "coordinator_objects",
    "institution_objects",
    "federation_toml",
    "institution_toml",
    "sample_config",
    "to_yaml",
    "pod_templates",
]

Obj = dict[str, Any]
SAMPLE_FEDERATION = "demo-fed"
SAMPLE_PARTICIPANT = "bank-a"
COORDINATOR_NAMESPACE = "fedledger"
FLEET_PORT = 9092
METRICS_PORT = 9464  # the ServerApp's /metrics on the pod's loopback; the relay exposes it
WORKDIR = "/var/lib/fedledger"
INSTITUTION_CONFIGMAP = "institution-federation"
_CONFIG_ANNOTATION = "fedledger.io/config-sha256"
_ORDER = ["Namespace", "CustomResourceDefinition", "ServiceAccount", "Role", "RoleBinding", "ConfigMap",
          "Service", "PersistentVolumeClaim", "NetworkPolicy", "StatefulSet", "Deployment",
          "HorizontalPodAutoscaler", "PodDisruptionBudget"]


def fleet_address(namespace: str) -> str:
    """What institution nodes dial: the coordinator's fleet Service."""
    return f"coordinator-fleet.{namespace}.svc.cluster.local:{FLEET_PORT}"


def federation_toml(cfg: FederationConfig, namespace: str = COORDINATOR_NAMESPACE) -> str:
    """The coordinator pod's federation file: ``cfg`` with the pod's workdir and metrics
    port, participants without their (institution-local) data paths, and a
    ``[deployment]`` table that listens on all interfaces behind the fleet Service."""
    pod_cfg = cfg.model_copy(update={
        "workdir": Path(WORKDIR),
        "metrics_port": METRICS_PORT,
        "participants": [p.model_copy(update={"data": None}) for p in cfg.participants],
        "deployment": DeploymentConfig(),  # the pod's own table is appended below
    })
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "federation.toml"
        write_config(pod_cfg, path)
        text = path.read_text(encoding="utf-8")
    service = f"coordinator-fleet.{namespace}.svc"
    hosts = [f"{service}.cluster.local", service, "localhost", "127.0.0.1"]
    return text + (
        "\n[deployment]\n"
        'host = "0.0.0.0"\n'
        f"port = {FLEET_PORT}\n"
        f'address = "{fleet_address(namespace)}"\n'
        "tls_hosts = [" + ", ".join(f'"{h}"' for h in hosts) + "]\n"
        "sync_interval = 2.0\n"
    )


def institution_toml(cfg: FederationConfig, participant: str, superlink: str) -> str:
    """An institution pod's federation file: the federation as agreed (schema, model,
    training) with the pod's workdir, only this institution's entry (its data path is
    the node's ``--data``), and the SuperLink it dials."""
    pod_cfg = cfg.model_copy(update={
        "workdir": Path(WORKDIR),
        "metrics_port": None,
        "validation": None,
        "participants": [p.model_copy(update={"data": None}) for p in cfg.participants if p.id == participant],
        "deployment": DeploymentConfig(address=superlink),
    })
    if not pod_cfg.participants:
        raise RenderError(f"participant {participant!r} is not in federation {cfg.id}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "federation.toml"
        write_config(pod_cfg, path)
        return path.read_text(encoding="utf-8")


def sample_config() -> FederationConfig:
    """The federation of the base's ConfigMap (what ``kubectl kustomize`` deploys)."""
    for obj in load_yaml(k8s_root() / "base" / "coordinator" / "configmap.yaml"):
        if obj.get("kind") == "ConfigMap":
            text = obj["data"]["federation.toml"]
            return FederationConfig.model_validate(tomllib.loads(text)["federation"])
    raise RenderError("k8s/base/coordinator/configmap.yaml holds no ConfigMap")


def _relabel(node: Any, old: str, new: str) -> Any:
    """Every ``app.kubernetes.io/instance: old`` label (and selector) becomes ``new``."""
    if isinstance(node, dict):
        return {k: (new if k == "app.kubernetes.io/instance" and v == old else _relabel(v, old, new))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_relabel(v, old, new) for v in node]
    return node


def coordinator_objects(cfg: FederationConfig, *, namespace: str = COORDINATOR_NAMESPACE, image: str | None = None,
                        storage_size: str | None = None, storage_class: str | None = None) -> list[Obj]:
    """The coordinator component for ``cfg`` in ``namespace``."""
    objects = _relabel(load_kustomization(k8s_root() / "base" / "coordinator"), SAMPLE_FEDERATION, cfg.id)
    toml = federation_toml(cfg, namespace)
    digest = hashlib.sha256(toml.encode()).hexdigest()
    for obj in objects:
        set_namespace(obj, namespace)
        if obj["kind"] == "ConfigMap":
            obj["data"]["federation.toml"] = toml
        if obj["kind"] == "StatefulSet":
            obj["spec"]["template"]["metadata"].setdefault("annotations", {})[_CONFIG_ANNOTATION] = digest
            _set_image(obj, image)
            claim = obj["spec"]["volumeClaimTemplates"][0]["spec"]
            if storage_size:
                claim["resources"]["requests"]["storage"] = storage_size
            if storage_class:
                claim["storageClassName"] = storage_class
    return objects


def _set_image(obj: Obj, image: str | None) -> None:
    if not image:
        return
    pod = obj["spec"]["template"]["spec"]
    for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
        if str(container.get("image", "")).startswith("fedledger:"):
            container["image"] = image


def institution_objects(participant: str, *, cfg: FederationConfig | None = None, namespace: str | None = None,
                        superlink: str | None = None, image: str | None = None, key_secret: str | None = None,
                        ca_secret: str | None = None, data_claim: str | None = None, data_file: str | None = None,
                        with_namespace: bool = True) -> list[Obj]:
    """One institution's component: ``base/institution`` for ``participant``, by default
    in namespace ``fedledger-<participant>``, with ``cfg``'s federation file (default:
    the sample federation's). Without ``with_namespace`` (the operator) the namespace,
    the data claim and the federation ConfigMap are the institution's own, not rendered."""
    if ID_PATTERN.fullmatch(participant) is None:
        raise RenderError(f"participant id {participant!r} must match [a-z0-9][a-z0-9-]{{0,63}}")
    folder = k8s_root() / "base" / "institution"
    text = yaml.dump_all(load_kustomization(folder), Dumper=DUMPER, sort_keys=False)
    objects = [o for o in yaml.load_all(text.replace(SAMPLE_PARTICIPANT, participant), Loader=LOADER) if o]
    if not with_namespace:
        objects = [o for o in objects if o["kind"] not in ("Namespace", "PersistentVolumeClaim", "ConfigMap")]
    for obj in objects:
        if namespace:
            set_namespace(obj, namespace)
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == INSTITUTION_CONFIGMAP:
            obj["data"]["federation.toml"] = institution_toml(
                cfg or sample_config(), participant, superlink or fleet_address(COORDINATOR_NAMESPACE))
        if obj["kind"] != "Deployment":
            continue
        _set_image(obj, image)
        pod = obj["spec"]["template"]["spec"]
        args = pod["containers"][0]["args"]
        for i, arg in enumerate(args):
            if superlink and arg.startswith("--superlink="):
                args[i] = f"--superlink={superlink}"
            if data_file and arg.startswith("--data="):
                args[i] = f"--data=/data/{data_file}"
        for volume in pod["volumes"]:
            if key_secret and volume["name"] == "key":
                volume["secret"]["secretName"] = key_secret
            if ca_secret and volume["name"] == "superlink-ca":
                volume["secret"]["secretName"] = ca_secret
            if data_claim and volume["name"] == "data":
                volume["persistentVolumeClaim"]["claimName"] = data_claim
    return objects


def _sort_key(obj: Obj) -> tuple[int, str, str]:
    kind = obj.get("kind", "")
    rank = _ORDER.index(kind) if kind in _ORDER else len(_ORDER)
    meta = obj.get("metadata", {})
    return rank, meta.get("namespace", ""), meta.get("name", "")


def render(cfg: FederationConfig, overlay: str | None = None) -> list[Obj]:
    """Every object of the federation, in apply order (namespaces and CRDs first)."""
    base = k8s_root() / "base"
    objects = load_kustomization(base, skip=("coordinator", "institution", "institutions"))
    objects += coordinator_objects(cfg)
    for participant in cfg.participants:
        objects += institution_objects(participant.id, cfg=cfg)
    if overlay:
        objects = apply_overlay(objects, overlay_dir(overlay))
    return sorted(objects, key=_sort_key)


def to_yaml(objects: list[Obj]) -> str:
    """One multi-document YAML stream."""
    return yaml.dump_all(objects, Dumper=DUMPER, sort_keys=False, default_flow_style=False)


def pod_templates(objects: list[Obj]) -> list[tuple[Obj, Obj]]:
    """``(workload, pod template)`` for every StatefulSet and Deployment; a StatefulSet's
    template gets the claim volumes its controller adds (``<template>-<name>-0``)."""
    out = []
    for obj in objects:
        if obj.get("kind") not in ("StatefulSet", "Deployment"):
            continue
        template = copy.deepcopy(obj["spec"]["template"])
        for claim in obj["spec"].get("volumeClaimTemplates", []):
            claim_name = f"{claim['metadata']['name']}-{obj['metadata']['name']}-0"
            template["spec"].setdefault("volumes", []).append(
                {"name": claim["metadata"]["name"], "persistentVolumeClaim": {"claimName": claim_name}})
        out.append((obj, template))
    return out
