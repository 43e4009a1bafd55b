"""The rendered manifests against a real kube-apiserver: server-side apply, CRD schema,
PodSecurity admission, RBAC — what the API server itself accepts and refuses."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fl.cli_k8s import k8s_app
from fl.config import write_config
from fl.kube.client import Kube
from fl.kube.deploy import apply_all
from fl.kube.errors import InvalidObject
from fl.kube.render import pod_templates, render, sample_config
from fl.kube.testenv import ControlPlane, user_kubeconfig

pytestmark = pytest.mark.integration
OVERLAYS = ("local", "production")


@pytest.fixture(scope="module")
def foundations(kube_admin: Kube) -> None:
    """The namespaces and CRDs, applied for real: a dry run of the rest needs them."""
    apply_all(kube_admin, [o for o in render(sample_config(), "local")
                           if o["kind"] in ("Namespace", "CustomResourceDefinition")])


@pytest.fixture(scope="module")
def applied(kube_admin: Kube, foundations: None) -> list[dict[str, Any]]:
    """The local overlay, applied for real (used after the dry runs of both overlays:
    a StatefulSet's volume claim templates are immutable, so production's larger volumes
    cannot be applied over local's)."""
    objects = render(sample_config(), "local")
    apply_all(kube_admin, objects)
    return objects


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_is_accepted_by_server_side_apply(kube_admin: Kube, foundations: None,
                                                                overlay: str) -> None:
    objects = render(sample_config(), overlay)
    result = apply_all(kube_admin, objects, dry_run=True)
    assert len(result) == len(objects) > 60
    kinds = {a.kind for a in result}
    assert {"StatefulSet", "Deployment", "NetworkPolicy", "PodDisruptionBudget", "HorizontalPodAutoscaler",
            "CustomResourceDefinition", "Role", "RoleBinding", "PersistentVolumeClaim"} <= kinds


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubectl_server_side_dry_run_accepts_fedledger_k8s_render(kube_cluster: ControlPlane, foundations: None,
                                                                  tmp_path: Path, overlay: str) -> None:
    cache = kube_cluster.root / "kubectl-cache"  # discovery and OpenAPI fetched once for both overlays
    config = tmp_path / "federation.toml"
    write_config(sample_config(), config)
    out = tmp_path / f"{overlay}.yaml"
    result = CliRunner().invoke(k8s_app, ["render", "--config", str(config), "--overlay", overlay, "--out", str(out)])
    assert result.exit_code == 0, result.output
    kubectl = subprocess.run(
        ["kubectl", "--kubeconfig", str(kube_cluster.kubeconfig), "apply", "--server-side", "--dry-run=server",
         "--field-manager=fedledger", f"--cache-dir={cache}", "-f", str(out)], capture_output=True, text=True, timeout=120)
    assert kubectl.returncode == 0, kubectl.stderr
    assert kubectl.stdout.count("serverside-applied (server dry run)") == len(render(sample_config(), overlay))


def test_applying_the_same_manifests_again_changes_nothing(kube_admin: Kube, applied: list[dict[str, Any]]) -> None:
    # Measured on this API server: the first no-op update of a PVC still bumps its
    # resourceVersion (nothing else differs); from then on it is stable like the rest.
    second = apply_all(kube_admin, applied)
    assert {a.kind for a in second if a.changed} <= {"PersistentVolumeClaim"}
    third = apply_all(kube_admin, applied)
    assert [f"{a.kind} {a.namespace}/{a.name}" for a in third if a.changed] == []


def test_a_statefulsets_volume_size_cannot_change_once_applied(kube_admin: Kube, applied: Any) -> None:
    production = next(o for o in render(sample_config(), "production")
                      if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "coordinator")
    with pytest.raises(InvalidObject) as caught:
        kube_admin.apply(production, dry_run=True)
    assert "spec.volumeClaimTemplates" in caught.value.detail and "field is immutable" in caught.value.detail


def _federation(name: str, **spec: Any) -> dict[str, Any]:
    body = {"federationId": "credit-eu", "participants": [{"id": "bank-a", "mspId": "BankAMSP"}], **spec}
    return {"apiVersion": "fedledger.io/v1alpha1", "kind": "Federation",
            "metadata": {"name": name, "namespace": "fedledger"}, "spec": body}


@pytest.mark.parametrize(("spec", "code", "message"), [
    ({"participants": []}, 422,
     "spec.participants: Invalid value: 0: spec.participants in body should have at least 1 items"),
    ({"federationId": "Credit EU"}, 422,
     "spec.federationId: Invalid value: \"Credit EU\": spec.federationId in body should match"),
    ({"rewardBudget": -5}, 422,
     "spec.rewardBudget: Invalid value: -5: spec.rewardBudget in body should be greater than or equal to 0"),
    ({"participants": [{"id": "bank-a", "mspId": "Bank A"}]}, 422, "spec.participants[0].mspId: Invalid value"),
    ({"rounds": 0}, 422, "spec.rounds: Invalid value: 0: spec.rounds in body should be greater than or equal to 1"),
    # Server-side apply refuses a list-map with a repeated key before validation (HTTP 500, measured).
    ({"participants": [{"id": "bank-a", "mspId": "BankAMSP"}, {"id": "bank-a", "mspId": "BankBMSP"}]}, 500,
     '.spec.participants: duplicate entries for key [id="bank-a"]'),
])
def test_bad_federation_specs_are_rejected_by_the_crd_schema(kube_admin: Kube, foundations: None,
                                                             spec: dict[str, Any], code: int, message: str) -> None:
    with pytest.raises(InvalidObject) as caught:
        kube_admin.apply(_federation("bad", **spec), dry_run=True)
    assert caught.value.code == code
    assert message in caught.value.detail


def test_a_valid_federation_is_defaulted_by_the_crd_schema(kube_admin: Kube, foundations: None) -> None:
    stored = kube_admin.apply(_federation("good"), dry_run=True)
    assert stored["spec"]["rounds"] == 3
    assert stored["spec"]["ledger"] == "embedded"
    assert stored["spec"]["image"] == "fedledger:0.1.0"


def _pod(workload: dict[str, Any], template: dict[str, Any]) -> dict[str, Any]:
    meta = workload["metadata"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{meta['name']}-admission", "namespace": meta["namespace"],
                         "labels": template["metadata"].get("labels", {})},
            "spec": template["spec"]}


def test_restricted_pod_security_admits_a_pod_from_every_pod_template(kube_admin: Kube, applied: list[Any]) -> None:
    templates = pod_templates(applied)
    assert len(templates) >= 12
    for workload, template in templates:
        namespace = kube_admin.get("v1", "Namespace", workload["metadata"]["namespace"])
        assert namespace is not None
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        created = kube_admin.create(_pod(workload, template))
        assert created["metadata"]["uid"]


def test_restricted_pod_security_refuses_a_pod_that_may_escalate(kube_admin: Kube, applied: list[Any]) -> None:
    workload, template = pod_templates(applied)[0]
    loose = copy.deepcopy(template)
    loose["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    pod = _pod(workload, loose)
    pod["metadata"]["name"] = "escalating"
    with pytest.raises(InvalidObject) as caught:
        kube_admin.create(pod)
    assert 'violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false' in caught.value.detail


def _can(kube: Kube, account: str, verb: str, resource: str, namespace: str | None, group: str = "") -> bool:
    ns, _, name = account.partition(":")
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
              "spec": {"user": f"system:serviceaccount:{ns}:{name}",
                       "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
                       "resourceAttributes": {"verb": verb, "resource": resource, "group": group,
                                              **({"namespace": namespace} if namespace else {})}}}
    return bool(kube.create(review)["status"].get("allowed"))


OPERATOR = "fedledger:fedledger-operator"
NODES = [f"fedledger-{p}:institution-node" for p in ("bank-a", "bank-b", "bank-c")]
NO_API = [*NODES, "fedledger:coordinator", "fedledger-fabric:orderer", "fedledger-fabric:peer",
          "fedledger-fabric:chaincode"]


@pytest.mark.parametrize(("verb", "resource", "group"), [
    ("watch", "federations", "fedledger.io"), ("patch", "institutions/status", "fedledger.io"),
    ("create", "statefulsets", "apps"), ("patch", "deployments", "apps"), ("create", "configmaps", ""),
    ("patch", "networkpolicies", "networking.k8s.io"), ("create", "events", ""),
])
def test_the_operator_may_do_what_it_reconciles_in_its_namespace(kube_admin: Kube, applied: Any, verb: str,
                                                                 resource: str, group: str) -> None:
    assert _can(kube_admin, OPERATOR, verb, resource, "fedledger", group)


@pytest.mark.parametrize(("account", "verb", "resource", "namespace", "group"), [
    *[(node, verb, "secrets", node.split(":")[0], "") for node in NODES for verb in ("get", "list", "watch")],
    *[(account, "list", "pods", account.split(":")[0], "") for account in NO_API],
    *[(account, "create", "configmaps", account.split(":")[0], "") for account in NO_API],
    (OPERATOR, "get", "secrets", "fedledger", ""),
    (OPERATOR, "list", "secrets", "fedledger", ""),
    (OPERATOR, "create", "clusterroles", None, "rbac.authorization.k8s.io"),
    (OPERATOR, "create", "roles", "fedledger", "rbac.authorization.k8s.io"),
    (OPERATOR, "create", "rolebindings", "fedledger", "rbac.authorization.k8s.io"),
    (OPERATOR, "create", "statefulsets", "fedledger-fabric", "apps"),
    (OPERATOR, "patch", "configmaps", "kube-system", ""),
    (OPERATOR, "create", "deployments", "fedledger-bank-a", "apps"),
    (OPERATOR, "delete", "namespaces", None, ""),
    (OPERATOR, "create", "customresourcedefinitions", None, "apiextensions.k8s.io"),
    ("monitoring:prometheus", "get", "secrets", "fedledger", ""),
    ("monitoring:prometheus", "create", "pods", "fedledger", ""),
])
def test_rbac_denies_what_no_component_needs(kube_admin: Kube, applied: Any, account: str, verb: str, resource: str,
                                             namespace: str | None, group: str) -> None:
    assert not _can(kube_admin, account, verb, resource, namespace, group)


def test_prometheus_may_discover_endpoints_in_fedledger_namespaces_only(kube_admin: Kube, applied: Any) -> None:
    for namespace in ("fedledger", "fedledger-fabric"):
        assert _can(kube_admin, "monitoring:prometheus", "list", "endpointslices", namespace, "discovery.k8s.io")
    assert not _can(kube_admin, "monitoring:prometheus", "list", "endpoints", "kube-system")


def test_apply_names_the_missing_right_of_a_user_without_one(kube_cluster: ControlPlane, applied: Any,
                                                              tmp_path: Path) -> None:
    config = tmp_path / "federation.toml"
    write_config(sample_config(), config)
    kubeconfig = user_kubeconfig(kube_cluster, tmp_path / "nobody.kubeconfig", user="nobody")
    result = CliRunner().invoke(k8s_app, ["apply", "--config", str(config), "--kubeconfig", str(kubeconfig)])
    assert result.exit_code == 1
    assert "forbidden: no right to" in result.output
    assert "namespaces" in result.output and 'User "nobody" cannot get resource "namespaces"' in result.output


def test_apply_says_when_the_cluster_cannot_be_reached(kube_cluster: ControlPlane, tmp_path: Path) -> None:
    config = tmp_path / "federation.toml"
    write_config(sample_config(), config)
    text = kube_cluster.kubeconfig.read_text().replace(kube_cluster.url, "https://127.0.0.1:1")
    kubeconfig = tmp_path / "closed.kubeconfig"
    kubeconfig.write_text(text)
    result = CliRunner().invoke(k8s_app, ["apply", "--config", str(config), "--kubeconfig", str(kubeconfig)])
    assert result.exit_code == 3  # unavailable
    assert "error: cannot reach the API server at https://127.0.0.1:1" in result.output


def test_apply_refuses_an_invalid_federation_file_before_contacting_the_cluster(tmp_path: Path) -> None:
    config = tmp_path / "federation.toml"
    config.write_text('[federation]\nid = "Bad Id"\n[[federation.participants]]\nid = "bank-a"\nmsp_id = "BankAMSP"\n')
    result = CliRunner().invoke(k8s_app, ["apply", "--config", str(config), "--kubeconfig", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert "federation id 'Bad Id' must match" in result.output


def test_status_reports_workloads_that_exist_but_have_no_ready_replicas(kube_cluster: ControlPlane, applied: Any,
                                                                        tmp_path: Path) -> None:
    config = tmp_path / "federation.toml"
    write_config(sample_config(), config)
    result = CliRunner().invoke(k8s_app, ["status", "--config", str(config), "--kubeconfig",
                                          str(kube_cluster.kubeconfig), "--json"])
    assert result.exit_code == 1  # no kubelet here: nothing ever becomes ready
    report = json.loads(result.output)
    assert report["ready"] is False
    names = {(w["namespace"], w["name"]) for w in report["workloads"]}
    assert ("fedledger", "coordinator") in names and ("fedledger-bank-c", "institution-node") in names
    assert all(w["exists"] and w["ready"] == 0 for w in report["workloads"])


def test_the_api_server_keeps_the_rendered_template_and_records_fedledger_as_manager(kube_admin: Kube,
                                                                                      applied: Any) -> None:
    live = kube_admin.get("apps/v1", "StatefulSet", "coordinator", "fedledger")
    assert live is not None
    rendered = next(o for o in applied if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "coordinator")
    assert live["spec"]["template"]["metadata"]["annotations"] == rendered["spec"]["template"]["metadata"]["annotations"]
    managers = {m["manager"] for m in live["metadata"]["managedFields"]}
    assert "fedledger" in managers
