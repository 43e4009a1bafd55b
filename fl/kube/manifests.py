"""Read the Kustomize tree under ``k8s/`` and apply an overlay's images and patches.

The YAML files are the source of truth; this module reads them the way ``kustomize``
does for the subset fedledger's tree uses: ``resources`` (files and folders),
``namespace``, ``images`` (name → newName/newTag) and ``patches`` (strategic-merge patch
files, with or without a ``target`` of kind / name / namespace / labelSelector).
Strategic merge here merges maps, merges the lists Kubernetes merges by key
(containers, initContainers, volumes, env, ports by ``name``; volumeMounts by
``mountPath``) and replaces every other list — the same outcome as kustomize for
patches of that shape, which a test checks against ``kubectl kustomize``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from fl.kube.errors import RenderError

__all__ = ["LOADER", "DUMPER", "k8s_root", "load_yaml", "load_kustomization", "apply_overlay", "strategic_merge", "overlay_dir"]

Obj = dict[str, Any]
# libyaml's loader when PyYAML was built with it (10× faster; same results).
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_BASE_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class DUMPER(_BASE_DUMPER):  # type: ignore[misc, valid-type]
    """The safe dumper, writing multi-line strings (embedded files) as literal blocks."""


def _str(dumper: Any, value: str) -> Any:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


DUMPER.add_representer(str, _str)
_MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "volumes": "name", "env": "name",
    "ports": "name", "volumeMounts": "mountPath", "volumeClaimTemplates": None,
}


def k8s_root() -> Path:
    """The ``k8s/`` folder: ``$FEDLEDGER_K8S_DIR``, else the one beside this package."""
    named = os.environ.get("FEDLEDGER_K8S_DIR")
    return Path(named) if named else Path(__file__).resolve().parents[2] / "k8s"


def overlay_dir(name: str) -> Path:
    """``k8s/overlays/<name>``; a name that is no overlay is a :class:`RenderError`."""
    folder = k8s_root() / "overlays" / name
    if not (folder / "kustomization.yaml").is_file():
        known = sorted(p.name for p in (k8s_root() / "overlays").iterdir() if p.is_dir())
        raise RenderError(f"no overlay {name!r} (known: {', '.join(known)})")
    return folder


def load_yaml(path: Path) -> list[Obj]:
    """The documents of a YAML file (empty ones skipped)."""
    try:
        return [doc for doc in yaml.load_all(path.read_text(encoding="utf-8"), Loader=LOADER) if doc]
    except (OSError, yaml.YAMLError) as exc:
        raise RenderError(f"{path}: cannot be read as YAML: {exc}") from exc


def _kustomization(folder: Path) -> Obj:
    docs = load_yaml(folder / "kustomization.yaml")
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise RenderError(f"{folder / 'kustomization.yaml'}: expected one mapping")
    return docs[0]


def load_kustomization(folder: Path, *, skip: Iterable[str] = ()) -> list[Obj]:
    """Every object a kustomization's ``resources`` lists, recursively, with its
    ``namespace`` set; folders named in ``skip`` (relative to ``folder``) are left out."""
    spec = _kustomization(folder)
    skipped = {(folder / s).resolve() for s in skip}
    out: list[Obj] = []
    for entry in spec.get("resources", []):
        path = (folder / entry).resolve()
        if path in skipped:
            continue
        out += load_kustomization(path) if path.is_dir() else load_yaml(path)
    if spec.get("namespace"):
        for obj in out:
            set_namespace(obj, spec["namespace"])
    return out


def set_namespace(obj: Obj, namespace: str) -> None:
    """Move ``obj`` into ``namespace`` as kustomize's namespace transformer does (a
    Namespace object is renamed; cluster-scoped kinds are left alone; a RoleBinding's
    service-account subjects of the old namespace move with it)."""
    if obj.get("kind") == "Namespace":
        obj["metadata"]["name"] = namespace
    elif obj.get("kind") not in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
        old = obj["metadata"].get("namespace")
        obj["metadata"]["namespace"] = namespace
        for subject in obj.get("subjects", []) if obj.get("kind") == "RoleBinding" else []:
            if subject.get("kind") == "ServiceAccount" and subject.get("namespace") in (old, None):
                subject["namespace"] = namespace


def strategic_merge(base: Any, patch: Any, key: str | None = None) -> Any:
    """``patch`` merged into ``base`` (a new value; neither argument is changed)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(base)
        for name, value in patch.items():
            if value is None:
                merged.pop(name, None)
            elif name in merged:
                merged[name] = strategic_merge(merged[name], value, name)
            else:
                merged[name] = copy.deepcopy(value)
        return merged
    merge_key = _MERGE_KEYS.get(key or "")
    if isinstance(base, list) and isinstance(patch, list) and merge_key:
        merged_list = copy.deepcopy(base)
        for item in patch:
            match = next((i for i, b in enumerate(merged_list)
                          if isinstance(b, dict) and isinstance(item, dict) and b.get(merge_key) == item.get(merge_key)),
                         None)
            if match is None:
                merged_list.append(copy.deepcopy(item))
            else:
                merged_list[match] = strategic_merge(merged_list[match], item)
        return merged_list
    return copy.deepcopy(patch)


def _selected(obj: Obj, target: Obj) -> bool:
    meta = obj.get("metadata", {})
    if "kind" in target and obj.get("kind") != target["kind"]:
        return False
    if "name" in target and meta.get("name") != target["name"]:
        return False
    if "namespace" in target and meta.get("namespace") != target["namespace"]:
        return False
    if "labelSelector" in target:
        labels = meta.get("labels", {})
        for term in str(target["labelSelector"]).split(","):
            name, _, value = term.partition("=")
            if labels.get(name.strip()) != value.strip():
                return False
    return True


def _set_images(obj: Obj, images: list[Obj]) -> None:
    spec = obj.get("spec", {})
    pod = spec.get("template", {}).get("spec", {}) if "template" in spec else spec
    for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
        name, _, _tag = str(container.get("image", "")).partition(":")
        for image in images:
            if image.get("name") == name:
                container["image"] = f"{image.get('newName', name)}:{image['newTag']}" if "newTag" in image \
                    else str(image.get("newName", name))


def apply_overlay(objects: list[Obj], overlay: Path) -> list[Obj]:
    """``objects`` with the overlay's ``images`` and ``patches`` applied (new objects)."""
    spec = _kustomization(overlay)
    out = copy.deepcopy(objects)
    for entry in spec.get("patches", []):
        patch_docs = load_yaml(overlay / entry["path"])
        if len(patch_docs) != 1:
            raise RenderError(f"{overlay / entry['path']}: a patch file holds one object")
        patch = patch_docs[0]
        target = entry.get("target") or {"kind": patch.get("kind"), "name": patch.get("metadata", {}).get("name")}
        body = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind", "metadata")}
        if "labels" in patch.get("metadata", {}) or "annotations" in patch.get("metadata", {}):
            body["metadata"] = {k: v for k, v in patch["metadata"].items() if k in ("labels", "annotations")}
        out = [strategic_merge(obj, body) if _selected(obj, target) else obj for obj in out]
    for obj in out:
        _set_images(obj, spec.get("images", []))
    return out
