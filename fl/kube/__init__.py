"""fedledger on Kubernetes: render, apply and watch the manifests; the operator.

Modules: :mod:`~fl.kube.manifests` (the Kustomize tree), :mod:`~fl.kube.render` (objects
of a federation), :mod:`~fl.kube.client` (the one seam to the API server),
:mod:`~fl.kube.deploy` (apply and status), :mod:`~fl.kube.operator` (kopf handlers),
:mod:`~fl.kube.testenv` (a real control plane for tests), and two small in-pod helpers,
:mod:`~fl.kube.relay` and :mod:`~fl.kube.probe`.
"""
