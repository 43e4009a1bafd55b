"""The one seam to the Kubernetes API: server-side apply, get, create, delete by REST path.

Objects are plain dicts (what the manifests are). Paths come from a fixed table of the
kinds fedledger renders rather than discovery, so a call costs one request; an unknown
kind is a :class:`~fl.kube.errors.RenderError`. Every failure of the ``kubernetes``
client is translated here into :mod:`fl.kube.errors`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from fl.kube.errors import ClusterUnreachable, Forbidden, InvalidObject, KubeError, RenderError

__all__ = ["FIELD_MANAGER", "Kind", "KINDS", "Kube", "connect", "kind_of"]

FIELD_MANAGER = "fedledger"


@dataclass(frozen=True)
class Kind:
    """Where a kind lives in the REST API."""

    api_version: str
    plural: str
    namespaced: bool

    @property
    def resource(self) -> str:
        """``plural.group`` as RBAC and error messages name it (``deployments.apps``)."""
        group = self.api_version.rpartition("/")[0]
        return f"{self.plural}.{group}" if group else self.plural

    def path(self, namespace: str | None, name: str | None = None) -> str:
        """The collection (or, with ``name``, the object) path."""
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        ns = f"/namespaces/{namespace}" if self.namespaced and namespace else ""
        return f"{base}{ns}/{self.plural}" + (f"/{name}" if name else "")


KINDS: dict[tuple[str, str], Kind] = {
    (kind.api_version, name): kind
    for name, kind in {
        "Namespace": Kind("v1", "namespaces", False),
        "ServiceAccount": Kind("v1", "serviceaccounts", True),
        "ConfigMap": Kind("v1", "configmaps", True),
        "Secret": Kind("v1", "secrets", True),
        "Service": Kind("v1", "services", True),
        "PersistentVolumeClaim": Kind("v1", "persistentvolumeclaims", True),
        "Pod": Kind("v1", "pods", True),
        "Deployment": Kind("apps/v1", "deployments", True),
        "StatefulSet": Kind("apps/v1", "statefulsets", True),
        "NetworkPolicy": Kind("networking.k8s.io/v1", "networkpolicies", True),
        "PodDisruptionBudget": Kind("policy/v1", "poddisruptionbudgets", True),
        "HorizontalPodAutoscaler": Kind("autoscaling/v2", "horizontalpodautoscalers", True),
        "Role": Kind("rbac.authorization.k8s.io/v1", "roles", True),
        "RoleBinding": Kind("rbac.authorization.k8s.io/v1", "rolebindings", True),
        "ClusterRole": Kind("rbac.authorization.k8s.io/v1", "clusterroles", False),
        "CustomResourceDefinition": Kind("apiextensions.k8s.io/v1", "customresourcedefinitions", False),
        "SubjectAccessReview": Kind("authorization.k8s.io/v1", "subjectaccessreviews", False),
        "Federation": Kind("fedledger.io/v1alpha1", "federations", True),
        "Institution": Kind("fedledger.io/v1alpha1", "institutions", True),
    }.items()
}
_BY_NAME = {(kind.api_version, name): kind for (_, name), kind in KINDS.items()}


def kind_of(obj: dict[str, Any]) -> Kind:
    """The REST location of ``obj``'s apiVersion and kind."""
    key = (str(obj.get("apiVersion")), str(obj.get("kind")))
    if key not in _BY_NAME:
        raise RenderError(f"unsupported kind {key[1]} ({key[0]})")
    return _BY_NAME[key]


def _describe(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata", {})
    ns = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind')} {ns}{meta.get('name')}"


class Kube:
    """A connection to one API server (the caller owns it; :meth:`close` when done)."""

    def __init__(self, api_client: k8s.ApiClient) -> None:
        self.api = api_client

    def close(self) -> None:
        """Release the connection pool."""
        self.api.close()

    def request(self, method: str, path: str, *, body: Any = None, query: list[tuple[str, str]] | None = None,
                content_type: str = "application/json", verb: str = "get", what: str = "",
                namespace: str | None = None, resource: str = "") -> dict[str, Any]:
        """One REST call; the decoded JSON answer, or a :mod:`fl.kube.errors` exception."""
        method_, url, headers, payload, _ = self.api.param_serialize(
            method=method, resource_path=path, query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=None, auth_settings=["BearerToken"])
        try:
            response = self.api.call_api(method_, url, header_params=headers, body=body, _request_timeout=30)
            response.read()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterUnreachable(f"cannot reach the API server at {self.api.configuration.host}: "
                                     f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from exc
        if response.status >= 400:
            raise _translate(ApiException(http_resp=response), verb, resource, namespace, what)
        return json.loads(response.data) if response.data else {}

    def apply(self, obj: dict[str, Any], *, dry_run: bool = False, field_manager: str = FIELD_MANAGER,
              force: bool = True) -> dict[str, Any]:
        """Server-side apply of ``obj`` (``fieldManager=field_manager``); the stored object."""
        kind = kind_of(obj)
        meta = obj["metadata"]
        query = [("fieldManager", field_manager), ("force", "true" if force else "false")]
        if dry_run:
            query.append(("dryRun", "All"))
        return self.request("PATCH", kind.path(meta.get("namespace"), meta["name"]), body=obj, query=query,
                            content_type="application/apply-patch+yaml", verb="apply (patch)",
                            what=_describe(obj), namespace=meta.get("namespace"), resource=kind.resource)

    def get(self, api_version: str, kind_name: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        kind = kind_of({"apiVersion": api_version, "kind": kind_name})
        try:
            return self.request("GET", kind.path(namespace, name), what=f"{kind_name} {name}",
                                namespace=namespace, resource=kind.resource)
        except InvalidObject as exc:
            if exc.code == 404:
                return None
            raise

    def create(self, obj: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        """POST ``obj`` (for Pods and reviews, which are not applied)."""
        kind = kind_of(obj)
        ns = obj.get("metadata", {}).get("namespace")
        return self.request("POST", kind.path(ns), body=obj, query=[("dryRun", "All")] if dry_run else [],
                            verb="create", what=_describe(obj), namespace=ns, resource=kind.resource)

    def patch_status(self, obj: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the status subresource of ``obj``."""
        kind = kind_of(obj)
        meta = obj["metadata"]
        return self.request("PATCH", kind.path(meta.get("namespace"), meta["name"]) + "/status",
                            body={"status": status}, content_type="application/merge-patch+json",
                            verb="patch", what=_describe(obj), namespace=meta.get("namespace"),
                            resource=kind.resource + "/status")

    def delete(self, api_version: str, kind_name: str, name: str, namespace: str | None = None) -> None:
        """Delete an object; absent is fine."""
        kind = kind_of({"apiVersion": api_version, "kind": kind_name})
        try:
            self.request("DELETE", kind.path(namespace, name), verb="delete", what=f"{kind_name} {name}",
                         namespace=namespace, resource=kind.resource)
        except InvalidObject as exc:
            if exc.code != 404:
                raise


def _translate(exc: ApiException, verb: str, resource: str, namespace: str | None, what: str) -> KubeError:
    try:
        status = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        status = {}
    message = str(status.get("message") or exc.reason or exc.status)
    if exc.status == 401:
        return ClusterUnreachable(f"the API server refused our credentials (401): {message}")
    if exc.status == 403 and "cannot " in message and 'User "' in message:
        return Forbidden(verb, resource or what, namespace, message)
    # Other 403s come from admission plugins (PodSecurity, ResourceQuota…): the object
    # is refused, not the caller's rights.
    return InvalidObject(what or resource, message, int(exc.status or 0))


def connect(kubeconfig: Path | None = None, context: str | None = None) -> Kube:
    """A :class:`Kube` from a kubeconfig (``$KUBECONFIG`` / ``~/.kube/config``) or, inside a
    pod, the service account's in-cluster credentials."""
    configuration = k8s.Configuration()
    try:
        if kubeconfig is None and context is None and _in_cluster():
            k8s_config.load_incluster_config(client_configuration=configuration)
        else:
            k8s_config.load_kube_config(config_file=str(kubeconfig) if kubeconfig else None, context=context,
                                        client_configuration=configuration)
    except (ConfigException, OSError, ValueError) as exc:
        where = kubeconfig or "$KUBECONFIG / ~/.kube/config"
        raise ClusterUnreachable(f"cannot use the kubeconfig {where}: {exc}") from exc
    configuration.retries = 1
    return Kube(k8s.ApiClient(configuration))


def _in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and not os.environ.get("KUBECONFIG")
