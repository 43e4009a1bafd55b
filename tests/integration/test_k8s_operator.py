"""The operator, run as a process with its own ServiceAccount's token (so its Role is
all it has) against a real kube-apiserver: children, updates, status, idempotence."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fl.kube.client import Kube
from fl.kube.deploy import apply_all
from fl.kube.manifests import k8s_root, load_yaml, set_namespace
from fl.kube.render import render, sample_config
from fl.kube.testenv import ControlPlane, user_kubeconfig
from ledger import processes

pytestmark = pytest.mark.integration
NS = "fed-op"
API = "fedledger.io/v1alpha1"
T = TypeVar("T")


def _wait(what: str, probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Operator:
    """``python -m fl.kube.operator`` as a child process, stopped by pid."""

    def __init__(self, kubeconfig: Path, log: Path) -> None:
        self.kubeconfig, self.log = kubeconfig, log
        self.proc: Any = None
        self.offset = 0

    def start(self) -> None:
        self.offset = self.log.stat().st_size if self.log.exists() else 0
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "FEDLEDGER_OPERATOR_STATUS_INTERVAL": "1"}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        self.proc = processes.spawn([sys.executable, "-m", "fl.kube.operator", "--namespace", NS],
                                    env=env, log_path=self.log)

    def output(self) -> str:
        with open(self.log, "rb") as handle:
            handle.seek(self.offset)
            return handle.read().decode("utf-8", errors="replace")

    def stop(self) -> None:
        if self.proc is not None:
            result = processes.stop(self.proc.pid, proc=self.proc, timeout=15)
            assert not [p for p in result.tree if processes.pid_alive(p)]
            self.proc = None


@pytest.fixture(scope="module")
def operator(kube_cluster: ControlPlane, kube_admin: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """CRDs, a namespace with the operator's ServiceAccount and Role, and the operator
    running with a token of that ServiceAccount."""
    apply_all(kube_admin, [o for o in render(sample_config(), None) if o["kind"] == "CustomResourceDefinition"])
    kube_admin.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    rbac = load_yaml(k8s_root() / "base" / "operator" / "rbac.yaml")
    for obj in rbac:
        set_namespace(obj, NS)
    apply_all(kube_admin, rbac)
    token = kube_admin.request(
        "POST", f"/api/v1/namespaces/{NS}/serviceaccounts/fedledger-operator/token",
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
              "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600}},
        verb="create")["status"]["token"]
    folder = tmp_path_factory.mktemp("operator")
    op = Operator(user_kubeconfig(kube_cluster, folder / "operator.kubeconfig", token=token), folder / "operator.log")
    op.start()
    try:
        yield op
    finally:
        op.stop()


def _federation(name: str, **spec: Any) -> dict[str, Any]:
    body = {"federationId": "credit-eu", "rounds": 2,
            "participants": [{"id": "bank-a", "mspId": "BankAMSP"}, {"id": "bank-b", "mspId": "BankBMSP"}], **spec}
    return {"apiVersion": API, "kind": "Federation", "metadata": {"name": name, "namespace": NS}, "spec": body}


def _condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for condition in ((obj or {}).get("status") or {}).get("conditions") or []:
        if condition["type"] == kind:
            return condition
    return None


@pytest.fixture(scope="module")
def federation(operator: Operator, kube_admin: Kube) -> dict[str, Any]:
    """A Federation the operator has reconciled."""
    created = kube_admin.apply(_federation("credit-eu"))
    _wait("the coordinator StatefulSet", lambda: kube_admin.get("apps/v1", "StatefulSet", "coordinator", NS))
    return created


@pytest.fixture(scope="module")
def institution(operator: Operator, kube_admin: Kube) -> dict[str, Any]:
    """An Institution the operator has reconciled."""
    created = kube_admin.apply({
        "apiVersion": API, "kind": "Institution", "metadata": {"name": "bank-a", "namespace": NS},
        "spec": {"federationId": "credit-eu", "participantId": "bank-a", "mspId": "BankAMSP",
                 "superlink": f"coordinator-fleet.{NS}.svc.cluster.local:9092", "keySecret": "bank-a-key"}})
    _wait("the node Deployment", lambda: kube_admin.get("apps/v1", "Deployment", "institution-node", NS))
    return created


CHILDREN = [("v1", "ConfigMap", "coordinator-federation"), ("v1", "Service", "coordinator"),
            ("v1", "Service", "coordinator-fleet"), ("v1", "ServiceAccount", "coordinator"),
            ("apps/v1", "StatefulSet", "coordinator"), ("networking.k8s.io/v1", "NetworkPolicy", "coordinator")]


def test_a_federation_gets_the_coordinators_objects_owned_by_it(kube_admin: Kube, federation: dict[str, Any]) -> None:
    for api_version, kind, name in CHILDREN:
        child = _wait(f"{kind} {name}", lambda: kube_admin.get(api_version, kind, name, NS))
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == \
            ("Federation", "credit-eu", federation["metadata"]["uid"], True)
        assert "fedledger-operator" in {m["manager"] for m in child["metadata"]["managedFields"]}
    config = kube_admin.get("v1", "ConfigMap", "coordinator-federation", NS)
    assert config is not None
    text = config["data"]["federation.toml"]
    assert 'id = "credit-eu"' in text and "rounds = 2" in text and 'id = "bank-b"' in text
    assert f'address = "coordinator-fleet.{NS}.svc.cluster.local:9092"' in text


def test_federation_status_says_not_ready_until_the_coordinator_has_a_ready_replica(
        kube_admin: Kube, federation: dict[str, Any]) -> None:
    def condition() -> dict[str, Any] | None:
        return _condition(kube_admin.get(API, "Federation", "credit-eu", NS), "Ready")

    ready = _wait("a Ready condition", condition)
    assert (ready["status"], ready["reason"]) == ("False", "ReplicasUnavailable")
    degraded = _condition(kube_admin.get(API, "Federation", "credit-eu", NS), "Degraded")
    assert degraded is not None and (degraded["status"], degraded["reason"]) == ("False", "AsExpected")
    # No kubelet runs pods here: play the StatefulSet controller's part and report a ready pod.
    sts = kube_admin.get("apps/v1", "StatefulSet", "coordinator", NS)
    assert sts is not None
    kube_admin.patch_status(sts, {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1,
                                  "currentReplicas": 1, "updatedReplicas": 1})
    now_ready = _wait("Ready=True", lambda: (c := condition()) and c["status"] == "True" and c)
    assert now_ready["reason"] == "ReplicasReady"
    federation_now = kube_admin.get(API, "Federation", "credit-eu", NS)
    assert federation_now is not None and federation_now["status"]["readyReplicas"] == 1


def test_a_spec_change_updates_the_federation_file_and_rolls_the_coordinator(
        kube_admin: Kube, federation: dict[str, Any]) -> None:
    before = kube_admin.get("apps/v1", "StatefulSet", "coordinator", NS)
    assert before is not None
    checksum = before["spec"]["template"]["metadata"]["annotations"]["fedledger.io/config-sha256"]
    kube_admin.apply(_federation("credit-eu", rounds=7))

    def updated() -> dict[str, Any] | None:
        config = kube_admin.get("v1", "ConfigMap", "coordinator-federation", NS)
        return config if config and "rounds = 7" in config["data"]["federation.toml"] else None

    _wait("rounds = 7 in the ConfigMap", updated)
    after = kube_admin.get("apps/v1", "StatefulSet", "coordinator", NS)
    assert after is not None
    assert after["spec"]["template"]["metadata"]["annotations"]["fedledger.io/config-sha256"] != checksum


def test_an_institution_gets_its_node_without_a_token_and_with_its_secrets_by_name(
        kube_admin: Kube, institution: dict[str, Any]) -> None:
    node = kube_admin.get("apps/v1", "Deployment", "institution-node", NS)
    assert node is not None
    pod = node["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert f"--superlink=coordinator-fleet.{NS}.svc.cluster.local:9092" in pod["containers"][0]["args"]
    assert {"name": "key", "secret": {"secretName": "bank-a-key", "defaultMode": 0o440}} in pod["volumes"]
    for api_version, kind, name in [("v1", "ServiceAccount", "institution-node"),
                                    ("networking.k8s.io/v1", "NetworkPolicy", "institution-node"),
                                    ("networking.k8s.io/v1", "NetworkPolicy", "default-deny")]:
        child = kube_admin.get(api_version, kind, name, NS)
        assert child is not None
        assert child["metadata"]["ownerReferences"][0]["uid"] == institution["metadata"]["uid"]
    status = _wait("the Institution's Ready condition",
                   lambda: _condition(kube_admin.get(API, "Institution", "bank-a", NS), "Ready"))
    assert (status["status"], status["reason"]) == ("False", "ReplicasUnavailable")


def test_a_child_the_api_server_refuses_marks_the_federation_degraded_with_an_event(
        operator: Operator, kube_admin: Kube, federation: dict[str, Any]) -> None:
    kube_admin.apply(_federation("credit-eu", rounds=7, storage={"storageClassName": "Not_A_Class"}))

    def degraded() -> dict[str, Any] | None:
        c = _condition(kube_admin.get(API, "Federation", "credit-eu", NS), "Degraded")
        return c if c and c["status"] == "True" else None

    condition = _wait("Degraded=True", degraded)
    assert condition["reason"] == "ChildRejected"
    assert "StatefulSet" in condition["message"] and "Not_A_Class" in condition["message"]
    ready = _condition(kube_admin.get(API, "Federation", "credit-eu", NS), "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", "ChildRejected")
    events = kube_admin.request("GET", f"/api/v1/namespaces/{NS}/events")["items"]
    assert any(e["reason"] == "ApplyFailed" and e["involvedObject"]["name"] == "credit-eu" for e in events)
    kube_admin.apply(_federation("credit-eu", rounds=7))  # repaired
    _wait("Degraded=False", lambda: (c := _condition(kube_admin.get(API, "Federation", "credit-eu", NS),
                                                      "Degraded")) and c["status"] == "False")


def test_a_restarted_operator_changes_no_child(operator: Operator, kube_admin: Kube, federation: dict[str, Any],
                                               institution: dict[str, Any]) -> None:
    watched = [*CHILDREN, ("apps/v1", "Deployment", "institution-node"),
               ("networking.k8s.io/v1", "NetworkPolicy", "institution-node")]

    def versions() -> dict[str, str]:
        found = {}
        for api_version, kind, name in watched:
            child = kube_admin.get(api_version, kind, name, NS)
            assert child is not None
            found[f"{kind}/{name}"] = child["metadata"]["resourceVersion"]
        return found

    time.sleep(2)  # let pending status refreshes land
    before = versions()
    conditions_before = kube_admin.get(API, "Federation", "credit-eu", NS)["status"]["conditions"]  # type: ignore[index]
    operator.stop()
    operator.start()
    _wait("the resumed reconciliations", lambda: operator.output().count("succeeded") >= 2
          and "reconcile_federation" in operator.output() and "reconcile_institution" in operator.output(),
          timeout=40)
    time.sleep(2)
    assert versions() == before
    after = kube_admin.get(API, "Federation", "credit-eu", NS)
    assert after is not None
    assert [c["lastTransitionTime"] for c in after["status"]["conditions"]] == \
        [c["lastTransitionTime"] for c in conditions_before]
