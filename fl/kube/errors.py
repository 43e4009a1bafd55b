"""The errors of ``fl.kube``, mapped from the API server's answers at one boundary.

::

    KubeError                     anything below; one line, fit for the CLI
    ├── ClusterUnreachable        no answer from the API server (address, TLS, kubeconfig)
    ├── Forbidden                 RBAC refused: names the verb, the resource and the namespace
    ├── InvalidObject             schema/admission refused an object: the API server's message
    └── RenderError               the manifests could not be rendered (bad file, bad overlay)
"""

from __future__ import annotations

__all__ = ["KubeError", "ClusterUnreachable", "Forbidden", "InvalidObject", "RenderError"]


class KubeError(RuntimeError):
    """A Kubernetes operation failed; ``str()`` is one line naming what and why."""


class ClusterUnreachable(KubeError):
    """The API server could not be reached or its kubeconfig could not be used."""


class Forbidden(KubeError):
    """RBAC refused a request."""

    def __init__(self, verb: str, resource: str, namespace: str | None, detail: str) -> None:
        self.verb, self.resource, self.namespace = verb, resource, namespace
        where = f" in namespace {namespace}" if namespace else " (cluster-wide)"
        super().__init__(f"forbidden: no right to {verb} {resource}{where}: {detail}")


class InvalidObject(KubeError):
    """The API server refused an object as invalid (CRD schema, validation, admission)."""

    def __init__(self, what: str, detail: str, code: int) -> None:
        self.what, self.detail, self.code = what, detail, code
        super().__init__(f"{what} rejected by the API server: {detail}")


class RenderError(KubeError):
    """The manifests could not be rendered."""
