"""The renderer and the manifests, without a cluster: what every object must carry."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from fl.config import load_config
from fl.kube.children import conditions, federation_children, federation_config, workload_readiness
from fl.kube.errors import RenderError
from fl.kube.manifests import k8s_root, load_yaml, strategic_merge
from fl.kube.render import federation_toml, institution_objects, pod_templates, render, sample_config, to_yaml

OVERLAYS = ("local", "production")


def _key(obj: dict[str, Any]) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_render_of_the_sample_federation_equals_kubectl_kustomize(overlay: str) -> None:
    out = subprocess.run(["kubectl", "kustomize", str(k8s_root() / "overlays" / overlay)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    kustomized = {_key(o): o for o in yaml.safe_load_all(out) if o}
    rendered = {_key(o): o for o in render(sample_config(), overlay)}
    assert kustomized.keys() == rendered.keys()
    assert [k for k in kustomized if kustomized[k] != rendered[k]] == []


@pytest.mark.parametrize("participant", ["bank-b", "bank-c"])
def test_the_committed_sample_institutions_are_what_the_renderer_makes(participant: str) -> None:
    committed = load_yaml(k8s_root() / "base" / "institutions" / f"{participant}.yaml")
    assert committed == institution_objects(participant)


def test_the_dashboard_configmap_holds_the_dashboard_json() -> None:
    (configmap,) = load_yaml(k8s_root() / "base" / "monitoring" / "dashboard.yaml")
    embedded = json.loads(configmap["data"]["fedledger-dashboard.json"])
    on_disk = json.loads((k8s_root() / "base" / "monitoring" / "fedledger-dashboard.json").read_text())
    assert embedded == on_disk
    titles = {p["title"] for p in on_disk["panels"]}
    assert {"Round time", "Ledger latency", "Rejections by reason", "Tokens issued"} <= titles


def test_the_coordinators_federation_file_is_the_federation_with_the_pods_paths(tmp_path: Path) -> None:
    cfg = sample_config().model_copy(update={"id": "credit-eu", "rounds": 9})
    path = tmp_path / "federation.toml"
    path.write_text(federation_toml(cfg, "consortium"))
    loaded = load_config(path)
    assert (loaded.id, loaded.rounds, loaded.metrics_port) == ("credit-eu", 9, 9464)
    assert str(loaded.workdir) == "/var/lib/fedledger"
    assert loaded.participant_ids() == cfg.participant_ids()
    assert 'address = "coordinator-fleet.consortium.svc.cluster.local:9092"' in path.read_text()


def test_a_changed_federation_changes_the_checksum_that_rolls_the_coordinator() -> None:
    def checksum(rounds: int) -> str:
        objects = render(sample_config().model_copy(update={"rounds": rounds}))
        sts = next(o for o in objects if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "coordinator")
        return str(sts["spec"]["template"]["metadata"]["annotations"]["fedledger.io/config-sha256"])

    assert checksum(3) == checksum(3)
    assert checksum(3) != checksum(4)


def test_every_participant_gets_a_node_in_its_own_namespace() -> None:
    cfg = sample_config().model_copy(update={"participants": [
        p.model_copy(update={"id": pid}) for p, pid in zip(sample_config().participants, ["north", "south", "east"])]})
    nodes = [o for o in render(cfg) if o["kind"] == "Deployment" and o["metadata"]["name"] == "institution-node"]
    assert sorted(o["metadata"]["namespace"] for o in nodes) == ["fedledger-east", "fedledger-north", "fedledger-south"]
    north = next(o for o in nodes if o["metadata"]["namespace"] == "fedledger-north")
    assert "--participant=north" in north["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not any("bank-a" in json.dumps(o) for o in nodes)


def test_a_participant_id_that_could_change_more_than_the_id_is_refused() -> None:
    with pytest.raises(RenderError, match="must match"):
        institution_objects("bank-a\n  evil: true")


@pytest.mark.parametrize("overlay", [None, *OVERLAYS])
def test_every_pod_template_is_restricted_probed_and_bounded(overlay: str | None) -> None:
    for workload, template in pod_templates(render(sample_config(), overlay)):
        pod = template["spec"]
        name = workload["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in [*pod["containers"], *pod.get("initContainers", [])]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, name
            assert ctx["readOnlyRootFilesystem"] is True, name
            assert ctx["capabilities"] == {"drop": ["ALL"]}, name
            assert {"requests", "limits"} <= container["resources"].keys(), name
        for container in pod["containers"]:
            assert {"livenessProbe", "readinessProbe", "startupProbe"} <= container.keys(), (name, container["name"])


def test_only_the_operator_mounts_a_service_account_token() -> None:
    mounting = [w["metadata"]["name"] for w, t in pod_templates(render(sample_config()))
                if t["spec"].get("automountServiceAccountToken") is not False]
    assert mounting == ["fedledger-operator"]


def test_no_secret_is_rendered_and_none_is_read_by_a_role() -> None:
    objects = render(sample_config(), "production")
    assert [o for o in objects if o["kind"] == "Secret"] == []
    for role in (o for o in objects if o["kind"] in ("Role", "ClusterRole")):
        assert all("secrets" not in rule.get("resources", []) for rule in role["rules"]), role["metadata"]["name"]
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def test_every_object_carries_the_part_of_label_and_namespaces_enforce_restricted() -> None:
    for obj in render(sample_config()):
        assert obj["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "fedledger", _key(obj)
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_every_namespace_has_a_default_deny_policy() -> None:
    objects = render(sample_config())
    namespaces = {o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"}
    denied = {o["metadata"]["namespace"] for o in objects if o["kind"] == "NetworkPolicy"
              and o["spec"]["podSelector"] == {} and set(o["spec"]["policyTypes"]) == {"Ingress", "Egress"}
              and "ingress" not in o["spec"] and "egress" not in o["spec"]}
    assert namespaces == denied


def test_institution_nodes_may_reach_only_the_fleet_port_and_dns() -> None:
    policy = next(o for o in render(sample_config()) if o["kind"] == "NetworkPolicy"
                  and o["metadata"]["name"] == "institution-node")
    ports = sorted((p["protocol"], p["port"]) for rule in policy["spec"]["egress"] for p in rule["ports"])
    assert ports == [("TCP", 53), ("TCP", 9092), ("UDP", 53)]
    assert "ingress" not in policy["spec"]


def test_strategic_merge_merges_containers_by_name_and_replaces_other_lists() -> None:
    base = {"containers": [{"name": "a", "image": "x", "args": ["1"]}, {"name": "b"}], "tolerations": [1, 2]}
    patch = {"containers": [{"name": "a", "args": ["2"]}], "tolerations": [3]}
    assert strategic_merge(base, patch) == {"containers": [{"name": "a", "image": "x", "args": ["2"]}, {"name": "b"}],
                                            "tolerations": [3]}


def _federation_body(**spec: Any) -> dict[str, Any]:
    return {"kind": "Federation", "metadata": {"name": "f", "namespace": "consortium", "uid": "u-1"},
            "spec": {"federationId": "credit-eu", "participants": [{"id": "bank-a", "mspId": "BankAMSP"}], **spec}}


def test_federation_children_are_owned_and_follow_the_spec() -> None:
    children = federation_children(_federation_body(rounds=4, image="reg/fedledger:1", storage={"size": "5Gi"}))
    assert {c["metadata"]["namespace"] for c in children} == {"consortium"}
    for child in children:
        assert child["metadata"]["ownerReferences"] == [{"apiVersion": "fedledger.io/v1alpha1", "kind": "Federation",
                                                         "name": "f", "uid": "u-1", "controller": True,
                                                         "blockOwnerDeletion": True}]
    sts = next(c for c in children if c["kind"] == "StatefulSet")
    assert {c["image"] for c in sts["spec"]["template"]["spec"]["containers"]} == {"reg/fedledger:1"}
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "5Gi"


def test_a_spec_the_schema_cannot_judge_is_refused_with_its_field() -> None:
    with pytest.raises(RenderError, match="spec.participants"):
        federation_config({"federationId": "x", "participants": [{"id": "a", "mspId": "AMSP"},
                                                                 {"id": "a", "mspId": "BMSP"}]})


def test_conditions_keep_their_transition_time_while_their_status_holds() -> None:
    import datetime as dt

    t0, t1 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)
    first = conditions([], ready=(False, "ReplicasUnavailable", "0 of 1"), degraded=(False, "AsExpected", ""),
                       generation=1, now=t0)
    same = conditions(first, ready=(False, "ReplicasUnavailable", "0 of 1"), degraded=(False, "AsExpected", ""),
                      generation=1, now=t1)
    assert same == first
    flipped = conditions(first, ready=(True, "ReplicasReady", "1 of 1"), degraded=(False, "AsExpected", ""),
                         generation=1, now=t1)
    assert flipped[0]["lastTransitionTime"] == "2026-01-02T00:00:00Z"
    assert flipped[1]["lastTransitionTime"] == "2026-01-01T00:00:00Z"


def test_workload_readiness_counts_ready_replicas_against_desired() -> None:
    assert workload_readiness(None)[:2] == (False, "WorkloadMissing")
    assert workload_readiness({"spec": {"replicas": 1}, "status": {}})[:2] == (False, "ReplicasUnavailable")
    assert workload_readiness({"spec": {"replicas": 1}, "status": {"readyReplicas": 1}})[:2] == (True, "ReplicasReady")


def test_rendered_yaml_parses_back_to_the_same_objects() -> None:
    objects = render(sample_config(), "local")
    assert [o for o in yaml.safe_load_all(to_yaml(objects)) if o] == objects
