"""Table-driven tests of the kstatus-like readiness rules (activities/readiness.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from activities.readiness import (
    assess,
    first_pod_problem,
    not_found,
    pod_culprit,
    reason_of,
    selector_matches,
    workload_selector,
)


def deployment(
    replicas: int = 3,
    ready: int = 3,
    updated: int | None = None,
    available: int | None = None,
    total: int | None = None,
    generation: int = 2,
    observed: int | None = 2,
    conditions: list[dict[str, Any]] | None = None,
    with_status: bool = True,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "ns1", "generation": generation, "uid": "u-1"},
        "spec": {
            "replicas": replicas,
            "progressDeadlineSeconds": 600,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c"}]}},
        },
    }
    if with_status:
        status: dict[str, Any] = {
            "replicas": replicas if total is None else total,
            "updatedReplicas": replicas if updated is None else updated,
            "readyReplicas": ready,
            "availableReplicas": ready if available is None else available,
        }
        if observed is not None:
            status["observedGeneration"] = observed
        status["conditions"] = (
            conditions
            if conditions is not None
            else [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
            ]
        )
        obj["status"] = status
    return obj


def pod(
    name: str = "web-5d8f-abcde",
    phase: str = "Running",
    ready: bool = True,
    waiting: str | None = None,
    terminated_exit: int | None = None,
    unschedulable: bool = False,
) -> dict[str, Any]:
    state: dict[str, Any] = {"running": {"startedAt": "2026-11-25T20:00:00Z"}}
    if waiting:
        state = {"waiting": {"reason": waiting, "message": 'Back-off pulling image "nginx:nope"'}}
    if terminated_exit is not None:
        state = {"terminated": {"exitCode": terminated_exit, "reason": "Error"}}
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    if unschedulable:
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient cpu.",
            }
        )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns1", "labels": {"app": "web", "pod-template-hash": "5d8f"}},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]},
        "status": {
            "phase": phase,
            "conditions": conditions,
            "containerStatuses": [] if unschedulable else [{"name": "c", "ready": ready, "state": state}],
        },
    }


def statefulset(
    ready: int = 2, replicas: int = 2, current: str = "db-1", update: str = "db-1"
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db", "generation": 1},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "db"}}},
        "status": {
            "observedGeneration": 1,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": replicas,
            "currentRevision": current,
            "updateRevision": update,
        },
    }


def daemonset(desired: int | None = 3, ready: int = 3, updated: int = 3) -> dict[str, Any]:
    status: dict[str, Any] = {
        "observedGeneration": 1,
        "numberReady": ready,
        "updatedNumberScheduled": updated,
        "numberAvailable": ready,
    }
    if desired is not None:
        status["desiredNumberScheduled"] = desired
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "agent", "generation": 1},
        "spec": {},
        "status": status,
    }


def job(
    conditions: list[dict[str, Any]] | None = None, succeeded: int = 0, active: int = 1
) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "migrate"},
        "spec": {"completions": 1, "selector": {"matchLabels": {"job-name": "migrate"}}},
        "status": {"conditions": conditions or [], "succeeded": succeeded, "active": active},
    }


def service(
    svc_type: str = "ClusterIP",
    cluster_ip: str | None = "10.96.0.10",
    ingress: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": svc_type, "ports": [{"port": 80}]}
    if cluster_ip is not None:
        spec["clusterIP"] = cluster_ip
    if svc_type == "ExternalName":
        spec = {"type": "ExternalName", "externalName": "db.example.com"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": spec,
        "status": {"loadBalancer": {"ingress": ingress} if ingress is not None else {}},
    }


def pvc(phase: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {},
        "status": {"phase": phase},
    }


def generic(
    kind: str, conditions: list[dict[str, Any]] | None = None, gen: int = 1, obs: int = 1
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "example.com/v1",
        "kind": kind,
        "metadata": {"name": "thing", "generation": gen},
        "spec": {},
    }
    if conditions is not None or obs != gen:
        obj["status"] = {"observedGeneration": obs, "conditions": conditions or []}
    return obj


def terminating(obj: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj["metadata"]["deletionTimestamp"] = "2026-11-25T20:00:00Z"
    return obj


CASES = [
    pytest.param(deployment(), "Current", "Deployment web: 3/3 replicas ready", id="deploy-ready"),
    pytest.param(
        deployment(ready=1), "InProgress", "Deployment web: 1/3 replicas ready", id="deploy-partial"
    ),
    pytest.param(
        deployment(with_status=False),
        "InProgress",
        "Deployment web: 0/3 replicas ready (no status yet)",
        id="deploy-no-status",
    ),
    pytest.param(
        deployment(generation=3, observed=2),
        "InProgress",
        "Deployment web: new generation not observed yet",
        id="deploy-generation-lag",
    ),
    pytest.param(
        deployment(observed=None),
        "Current",
        "Deployment web: 3/3 replicas ready",
        id="deploy-no-observed-generation-skipped",
    ),
    pytest.param(
        deployment(updated=1, ready=3),
        "InProgress",
        "Deployment web: 1/3 replicas updated, 3 ready",
        id="deploy-rolling",
    ),
    pytest.param(
        deployment(total=4),
        "InProgress",
        "Deployment web: 1 old replicas pending termination",
        id="deploy-old-replicas",
    ),
    pytest.param(
        deployment(available=2),
        "InProgress",
        "Deployment web: 2/3 replicas available",
        id="deploy-not-available",
    ),
    pytest.param(
        deployment(
            ready=0,
            conditions=[{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}],
        ),
        "Failed",
        "Deployment web: progress deadline exceeded",
        id="deploy-deadline-exceeded",
    ),
    pytest.param(
        deployment(
            conditions=[{"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"}]
        ),
        "InProgress",
        "Deployment web: not available: MinimumReplicasUnavailable",
        id="deploy-available-false",
    ),
    pytest.param(
        terminating(deployment()), "Terminating", "Deployment web: being deleted", id="deploy-terminating"
    ),
    pytest.param(statefulset(), "Current", "StatefulSet db: 2/2 replicas ready", id="sts-ready"),
    pytest.param(statefulset(ready=1), "InProgress", "StatefulSet db: 1/2 replicas ready", id="sts-partial"),
    pytest.param(
        statefulset(update="db-2"),
        "InProgress",
        "StatefulSet db: rolling update in progress",
        id="sts-revision-mismatch",
    ),
    pytest.param(daemonset(), "Current", "DaemonSet agent: 3/3 pods ready", id="ds-ready"),
    pytest.param(
        daemonset(desired=None), "InProgress", "DaemonSet agent: not scheduled yet", id="ds-unscheduled"
    ),
    pytest.param(daemonset(ready=2), "InProgress", "DaemonSet agent: 2/3 pods ready", id="ds-partial"),
    pytest.param(daemonset(updated=1), "InProgress", "DaemonSet agent: 1/3 pods updated", id="ds-updating"),
    pytest.param(
        job([{"type": "Complete", "status": "True"}], succeeded=1, active=0),
        "Current",
        "Job migrate: complete",
        id="job-complete",
    ),
    pytest.param(
        job([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]),
        "Failed",
        "Job migrate: failed: BackoffLimitExceeded",
        id="job-failed",
    ),
    pytest.param(job(), "InProgress", "Job migrate: 0/1 completions, 1 active", id="job-running"),
    pytest.param(pod(), "Current", "Pod web-5d8f-abcde: running, ready", id="pod-ready"),
    pytest.param(
        pod(ready=False), "InProgress", "Pod web-5d8f-abcde: running, not ready", id="pod-not-ready"
    ),
    pytest.param(
        pod(phase="Succeeded", ready=False), "Current", "Pod web-5d8f-abcde: succeeded", id="pod-succeeded"
    ),
    pytest.param(
        pod(phase="Pending", ready=False, waiting="ImagePullBackOff"),
        "Failed",
        "Pod web-5d8f-abcde: ImagePullBackOff",
        id="pod-image-pull",
    ),
    pytest.param(
        pod(ready=False, waiting="CrashLoopBackOff"),
        "Failed",
        "Pod web-5d8f-abcde: CrashLoopBackOff",
        id="pod-crashloop",
    ),
    pytest.param(
        pod(ready=False, waiting="ContainerCreating"),
        "InProgress",
        "Pod web-5d8f-abcde: running, not ready",
        id="pod-container-creating-not-a-problem",
    ),
    pytest.param(
        pod(phase="Pending", ready=False, unschedulable=True),
        "InProgress",
        "Pod web-5d8f-abcde: Unschedulable: 0/3 nodes are available: 3 Insufficient cpu.",
        id="pod-unschedulable",
    ),
    pytest.param(
        pod(phase="Failed", ready=False, terminated_exit=1),
        "Failed",
        "Pod web-5d8f-abcde: container c exited 1",
        id="pod-failed",
    ),
    pytest.param(service(), "Current", "Service web: ClusterIP", id="svc-clusterip"),
    pytest.param(service(cluster_ip="None"), "Current", "Service web: ClusterIP", id="svc-headless"),
    pytest.param(
        service(cluster_ip=None), "InProgress", "Service web: no cluster IP assigned", id="svc-no-ip"
    ),
    pytest.param(
        service("ExternalName", cluster_ip=None),
        "Current",
        "Service web: external name",
        id="svc-externalname",
    ),
    pytest.param(
        service("LoadBalancer"),
        "InProgress",
        "Service web: waiting for load balancer ingress",
        id="svc-lb-pending",
    ),
    pytest.param(
        service("LoadBalancer", ingress=[{"hostname": "a.elb.amazonaws.com"}]),
        "Current",
        "Service web: LoadBalancer",
        id="svc-lb-hostname",
    ),
    pytest.param(pvc("Bound"), "Current", "PersistentVolumeClaim data: bound", id="pvc-bound"),
    pytest.param(pvc("Pending"), "InProgress", "PersistentVolumeClaim data: Pending", id="pvc-pending"),
    pytest.param(pvc("Lost"), "Failed", "PersistentVolumeClaim data: volume lost", id="pvc-lost"),
    pytest.param(generic("ServiceAccount"), "Current", "ServiceAccount thing: exists", id="generic-plain"),
    pytest.param(
        generic("Widget", [{"type": "Ready", "status": "True"}]),
        "Current",
        "Widget thing: ready",
        id="generic-ready",
    ),
    pytest.param(
        generic("Widget", [{"type": "Ready", "status": "False", "reason": "Waiting"}]),
        "InProgress",
        "Widget thing: not ready: Waiting",
        id="generic-not-ready",
    ),
    pytest.param(
        generic("Widget", [{"type": "Reconciling", "status": "True", "reason": "Progressing"}]),
        "InProgress",
        "Widget thing: reconciling: Progressing",
        id="generic-reconciling",
    ),
    pytest.param(
        generic("Widget", [{"type": "Stalled", "status": "True", "reason": "RetriesExceeded"}]),
        "Failed",
        "Widget thing: stalled: RetriesExceeded",
        id="generic-stalled",
    ),
    pytest.param(
        generic("Widget", gen=2, obs=1),
        "InProgress",
        "Widget thing: new generation not observed yet",
        id="generic-generation-lag",
    ),
    pytest.param(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "odd"},
            "spec": {"replicas": 1},
            "status": "garbage",
        },
        "Unknown",
        None,
        id="malformed",
    ),
]


@pytest.mark.parametrize(("obj", "state", "message"), CASES)
def test_assess(obj: dict[str, Any], state: str, message: str | None) -> None:
    rs = assess(obj)
    assert rs.state == state
    assert rs.ready is (state == "Current")
    if message is not None:
        assert rs.message == message
    assert rs.kind == obj["kind"]
    assert rs.name == obj["metadata"]["name"]


def test_workload_names_stuck_pod_as_culprit() -> None:
    pods = [pod("web-a", ready=True), pod("web-b", phase="Pending", ready=False, waiting="ImagePullBackOff")]
    rs = assess(deployment(ready=1), related_pods=pods)
    assert rs.state == "InProgress"
    assert rs.message == "Deployment web: 1/3 replicas ready; Pod web-b: ImagePullBackOff"
    assert reason_of(rs) == "1/3 replicas ready; Pod web-b: ImagePullBackOff"


def test_ready_workload_ignores_pods() -> None:
    rs = assess(deployment(), related_pods=[pod("web-x", ready=False, waiting="CrashLoopBackOff")])
    assert rs.message == "Deployment web: 3/3 replicas ready"


def test_first_pod_problem_prefers_stuck_reason_over_scheduling() -> None:
    pods = [
        pod("a", phase="Pending", ready=False, unschedulable=True),
        pod("b", ready=False, waiting="CrashLoopBackOff"),
        terminating(pod("c", ready=False, waiting="ErrImagePull")),
    ]
    assert first_pod_problem(pods) == "Pod b: CrashLoopBackOff"
    assert first_pod_problem([pod("ok")]) is None
    assert pod_culprit(pods) == ("Pod b: CrashLoopBackOff", True)
    assert pod_culprit([pod("u", phase="Pending", ready=False, unschedulable=True)]) == (
        "Pod u: Unschedulable: 0/3 nodes are available: 3 Insufficient cpu.",
        True,
    )


@pytest.mark.parametrize(
    ("pods", "expected"),
    [
        pytest.param(
            [pod("r", ready=False), pod("s", phase="Pending", ready=False, waiting="ContainerCreating")],
            ("Pod r: running, not ready", False),
            id="readiness-probe-before-starting",
        ),
        pytest.param([pod("s", phase="Pending", ready=False, waiting="ContainerCreating")],
                     ("Pod s: Pending", False), id="starting"),
        pytest.param([pod("ok"), pod("done", phase="Succeeded", ready=False)], None, id="all-fine"),
    ],
)  # fmt: skip
def test_pod_culprit_without_stuck_pods(
    pods: list[dict[str, Any]], expected: tuple[str, bool] | None
) -> None:
    assert pod_culprit(pods) == expected


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        pytest.param({"matchLabels": {"app": "web"}}, {"app": "web", "x": "1"}, True, id="labels-match"),
        pytest.param({"matchLabels": {"app": "web"}}, {"app": "db"}, False, id="labels-differ"),
        pytest.param(
            {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]},
            {"tier": "b"},
            True,
            id="expr-in",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]},
            {"tier": "a"},
            False,
            id="expr-notin",
        ),
        pytest.param(
            {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, {}, False, id="expr-exists"
        ),
        pytest.param(
            {"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]},
            {},
            True,
            id="expr-does-not-exist",
        ),
        pytest.param({}, {"app": "web"}, False, id="empty-selects-nothing"),
        pytest.param(None, {"app": "web"}, False, id="none"),
    ],
)
def test_selector_matches(selector: dict[str, Any] | None, labels: dict[str, str], expected: bool) -> None:
    assert selector_matches(selector, labels) is expected


def test_workload_selector_and_not_found() -> None:
    assert workload_selector(deployment()) == {"matchLabels": {"app": "web"}}
    assert workload_selector(service()) is None
    rs = not_found("ConfigMap", "cfg", "ns1")
    assert (rs.state, rs.ready, rs.message) == ("NotFound", False, "ConfigMap cfg: not found in cluster")
