"""Pure, kstatus-like readiness judgement of live Kubernetes objects.

``assess(obj)`` takes one object as the API returns it (a dict) and answers a
:class:`~activities.models.ResourceState`: ``Current`` (ready), ``InProgress``, ``Failed``,
``Terminating`` or ``Unknown``. The rules follow cli-utils kstatus (what helm 4 ``--wait`` uses)
with the helm 3 ``--wait`` extras that matter (observedGeneration, Service clusterIP), and Argo CD's
"Degraded" reading of stuck Pods (image pull and crash-loop back-offs are failures worth naming).

Messages are short and human: ``"Deployment web: 1/3 replicas ready"``, ``"Pod web-abc:
ImagePullBackOff"``. They never carry object specs, values or secret data. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from contract.models import ResourceState

CURRENT = "Current"
IN_PROGRESS = "InProgress"
FAILED = "Failed"
NOT_FOUND = "NotFound"
TERMINATING = "Terminating"
UNKNOWN = "Unknown"

#: Container waiting reasons that do not resolve by themselves: a Pod showing one is the culprit.
STUCK_WAITING_REASONS = frozenset(
    {
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "PreCreateHookError",
        "PostStartHookError",
    }
)

#: Kinds whose Pods are looked at to name the culprit of a not-ready workload.
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})

_MAX_DETAIL = 120


def _clip(text: str, limit: int = _MAX_DETAIL) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _state(obj: Mapping[str, Any], state: str, detail: str) -> ResourceState:
    kind = str(obj.get("kind") or "")
    meta = obj.get("metadata") or {}
    name = str(meta.get("name") or "")
    return ResourceState(
        kind=kind,
        name=name,
        namespace=str(meta.get("namespace") or ""),
        state=state,
        ready=state == CURRENT,
        message=f"{kind} {name}: {detail}",
    )


def reason_of(rs: ResourceState) -> str:
    """The message without its ``"<Kind> <name>: "`` prefix (for compact status summaries)."""
    prefix = f"{rs.kind} {rs.name}: "
    return rs.message[len(prefix) :] if rs.message.startswith(prefix) else rs.message


def _conditions(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type"):
            out[str(cond["type"])] = cond
    return out


def _is_true(cond: Mapping[str, Any] | None) -> bool:
    return bool(cond) and str(cond.get("status")) == "True"  # type: ignore[union-attr]


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _generation_pending(obj: Mapping[str, Any]) -> bool:
    """True when the controller has not yet seen the latest spec (kstatus: skip if not reported)."""
    generation = (obj.get("metadata") or {}).get("generation")
    observed = (obj.get("status") or {}).get("observedGeneration")
    if generation is None or observed is None:
        return False
    return _int(observed) < _int(generation)


# ------------------------------------------------------------------------------------------------
# Per-kind rules. Each returns (state, detail) for an object that is not being deleted.
# ------------------------------------------------------------------------------------------------


def _deployment(obj: Mapping[str, Any]) -> tuple[str, str]:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    want = _int(spec.get("replicas"), 1)
    conds = _conditions(obj)
    progressing = conds.get("Progressing")
    if progressing and progressing.get("reason") == "ProgressDeadlineExceeded":
        return FAILED, "progress deadline exceeded"
    if spec.get("paused"):
        return CURRENT, "paused"
    if not status:
        return IN_PROGRESS, f"0/{want} replicas ready (no status yet)"
    if _generation_pending(obj):
        return IN_PROGRESS, "new generation not observed yet"
    ready = _int(status.get("readyReplicas"))
    updated = _int(status.get("updatedReplicas"))
    available = _int(status.get("availableReplicas"))
    total = _int(status.get("replicas"))
    if updated < want:
        return IN_PROGRESS, f"{updated}/{want} replicas updated, {ready} ready"
    if total > want:
        return IN_PROGRESS, f"{total - want} old replicas pending termination"
    if ready < want:
        return IN_PROGRESS, f"{ready}/{want} replicas ready"
    if available < want:
        return IN_PROGRESS, f"{available}/{want} replicas available"
    available_cond = conds.get("Available")
    if available_cond is not None and not _is_true(available_cond):
        return IN_PROGRESS, _clip(f"not available: {available_cond.get('reason') or 'unknown'}")
    return CURRENT, f"{ready}/{want} replicas ready"


def _statefulset(obj: Mapping[str, Any]) -> tuple[str, str]:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    want = _int(spec.get("replicas"), 1)
    if not status:
        return IN_PROGRESS, f"0/{want} replicas ready (no status yet)"
    if _generation_pending(obj):
        return IN_PROGRESS, "new generation not observed yet"
    ready = _int(status.get("readyReplicas"))
    if ready < want:
        return IN_PROGRESS, f"{ready}/{want} replicas ready"
    strategy = (spec.get("updateStrategy") or {}).get("type", "RollingUpdate")
    if strategy == "RollingUpdate":
        partition = _int(((spec.get("updateStrategy") or {}).get("rollingUpdate") or {}).get("partition"))
        updated = _int(status.get("updatedReplicas"))
        if partition == 0 and updated < want:
            return IN_PROGRESS, f"{updated}/{want} replicas updated"
        current_rev, update_rev = status.get("currentRevision"), status.get("updateRevision")
        if partition == 0 and current_rev and update_rev and current_rev != update_rev:
            return IN_PROGRESS, "rolling update in progress"
    return CURRENT, f"{ready}/{want} replicas ready"


def _daemonset(obj: Mapping[str, Any]) -> tuple[str, str]:
    status = obj.get("status") or {}
    if _generation_pending(obj):
        return IN_PROGRESS, "new generation not observed yet"
    if "desiredNumberScheduled" not in status:
        return IN_PROGRESS, "not scheduled yet"
    desired = _int(status.get("desiredNumberScheduled"))
    updated = _int(status.get("updatedNumberScheduled"))
    ready = _int(status.get("numberReady"))
    available = _int(status.get("numberAvailable"))
    if updated < desired:
        return IN_PROGRESS, f"{updated}/{desired} pods updated"
    if ready < desired:
        return IN_PROGRESS, f"{ready}/{desired} pods ready"
    if available < desired:
        return IN_PROGRESS, f"{available}/{desired} pods available"
    return CURRENT, f"{ready}/{desired} pods ready"


def _replicaset(obj: Mapping[str, Any]) -> tuple[str, str]:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    want = _int(spec.get("replicas"), 1)
    failure = _conditions(obj).get("ReplicaFailure")
    if _is_true(failure):
        return IN_PROGRESS, _clip(f"replica failure: {failure.get('reason') or failure.get('message')}")  # type: ignore[union-attr]
    if _generation_pending(obj):
        return IN_PROGRESS, "new generation not observed yet"
    ready = _int(status.get("readyReplicas"))
    available = _int(status.get("availableReplicas"))
    if ready < want:
        return IN_PROGRESS, f"{ready}/{want} replicas ready"
    if available < want:
        return IN_PROGRESS, f"{available}/{want} replicas available"
    return CURRENT, f"{ready}/{want} replicas ready"


def _job(obj: Mapping[str, Any]) -> tuple[str, str]:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    conds = _conditions(obj)
    failed = conds.get("Failed")
    if _is_true(failed):
        return FAILED, _clip(f"failed: {failed.get('reason') or failed.get('message') or 'unknown'}")  # type: ignore[union-attr]
    if _is_true(conds.get("Complete")):
        return CURRENT, "complete"
    completions = _int(spec.get("completions"), 1)
    succeeded = _int(status.get("succeeded"))
    active = _int(status.get("active"))
    return IN_PROGRESS, f"{succeeded}/{completions} completions, {active} active"


def pod_problem(pod: Mapping[str, Any]) -> str | None:
    """The reason a Pod is stuck (a container waiting reason, or unschedulable), else None."""
    status = pod.get("status") or {}
    statuses = list(status.get("initContainerStatuses") or []) + list(status.get("containerStatuses") or [])
    for cstatus in statuses:
        waiting = (cstatus.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in STUCK_WAITING_REASONS:
            return str(reason)
    for cstatus in statuses:
        terminated = (cstatus.get("state") or {}).get("terminated") or {}
        if terminated and _int(terminated.get("exitCode")) != 0 and status.get("phase") != "Succeeded":
            return _clip(f"container {cstatus.get('name')} exited {terminated.get('exitCode')}", 60)
    scheduled = _conditions(pod).get("PodScheduled")
    if scheduled and not _is_true(scheduled) and scheduled.get("reason") == "Unschedulable":
        return _clip(f"Unschedulable: {scheduled.get('message') or ''}".rstrip(": "), 100)
    if status.get("phase") == "Failed":
        return _clip(f"Failed: {status.get('reason') or 'pod failed'}", 60)
    return None


def _pod(obj: Mapping[str, Any]) -> tuple[str, str]:
    status = obj.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase == "Succeeded":
        return CURRENT, "succeeded"
    problem = pod_problem(obj)
    if phase == "Failed":
        return FAILED, problem or "failed"
    if problem is not None:
        stuck = problem in STUCK_WAITING_REASONS or problem.startswith("container ")
        return (FAILED if stuck else IN_PROGRESS), problem
    if phase == "Running" and _is_true(_conditions(obj).get("Ready")):
        return CURRENT, "running, ready"
    if phase == "Running":
        return IN_PROGRESS, "running, not ready"
    return IN_PROGRESS, str(phase)


def _service(obj: Mapping[str, Any]) -> tuple[str, str]:
    spec = obj.get("spec") or {}
    svc_type = spec.get("type") or "ClusterIP"
    if svc_type == "ExternalName":
        return CURRENT, "external name"
    # helm 3 --wait treats a Service without clusterIP as never ready; a real API server assigns
    # one at creation, so its absence means the object is not fully created.
    if not spec.get("clusterIP"):
        return IN_PROGRESS, "no cluster IP assigned"
    if svc_type == "LoadBalancer":
        ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        if not ingress:
            return IN_PROGRESS, "waiting for load balancer ingress"
    return CURRENT, svc_type


def _pvc(obj: Mapping[str, Any]) -> tuple[str, str]:
    phase = (obj.get("status") or {}).get("phase") or "Pending"
    if phase == "Bound":
        return CURRENT, "bound"
    if phase == "Lost":
        return FAILED, "volume lost"
    return IN_PROGRESS, str(phase)


def _generic(obj: Mapping[str, Any]) -> tuple[str, str]:
    conds = _conditions(obj)
    stalled = conds.get("Stalled")
    if _is_true(stalled):
        return FAILED, _clip(f"stalled: {stalled.get('reason') or stalled.get('message') or ''}")  # type: ignore[union-attr]
    reconciling = conds.get("Reconciling")
    if _is_true(reconciling):
        return IN_PROGRESS, _clip(f"reconciling: {reconciling.get('reason') or ''}".rstrip(": "))  # type: ignore[union-attr]
    if _generation_pending(obj):
        return IN_PROGRESS, "new generation not observed yet"
    ready = conds.get("Ready")
    if ready is not None and not _is_true(ready):
        return IN_PROGRESS, _clip(
            f"not ready: {ready.get('reason') or ready.get('message') or ''}".rstrip(": ")
        )
    return CURRENT, "ready" if ready is not None else "exists"


_RULES: dict[str, Callable[[Mapping[str, Any]], tuple[str, str]]] = {
    "Deployment": _deployment,
    "StatefulSet": _statefulset,
    "DaemonSet": _daemonset,
    "ReplicaSet": _replicaset,
    "Job": _job,
    "Pod": _pod,
    "Service": _service,
    "PersistentVolumeClaim": _pvc,
}


def assess(obj: Mapping[str, Any], related_pods: Sequence[Mapping[str, Any]] = ()) -> ResourceState:
    """Judge one live object.

    ``related_pods`` (optional, for workloads) are Pods selected by the workload; when the workload
    is not ready and one of them is stuck, the Pod is named in the message
    (``"Deployment web: 0/1 replicas ready; Pod web-abc: ImagePullBackOff"``). Never raises on odd
    input: unparseable shapes come out ``Unknown``.
    """
    try:
        if (obj.get("metadata") or {}).get("deletionTimestamp"):
            return _state(obj, TERMINATING, "being deleted")
        state, detail = _RULES.get(str(obj.get("kind")), _generic)(obj)
    except (AttributeError, TypeError) as exc:  # malformed status shapes: say so, do not crash a poll
        return _state(obj, UNKNOWN, _clip(f"cannot judge: {exc}", 80))
    if state != CURRENT and related_pods:
        culprit = first_pod_problem(related_pods)
        if culprit is not None:
            detail = f"{detail}; {culprit}"
    return _state(obj, state, detail)


def pod_culprit(pods: Iterable[Mapping[str, Any]]) -> tuple[str, bool] | None:
    """The Pod to blame for a workload, as ``("Pod <name>: <reason>", stuck)``.

    Preference: a stuck container (image pull, crash loop: ``stuck`` True), then an exited
    container / unschedulable / failed Pod (``stuck`` True), then a running-but-not-ready Pod (a
    failing readiness probe), then a Pod still starting (both ``stuck`` False). None when every
    Pod is ready.
    """
    found: list[tuple[int, str]] = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        problem = pod_problem(pod)
        if problem is not None:
            found.append((0 if problem in STUCK_WAITING_REASONS else 1, f"Pod {meta.get('name')}: {problem}"))
            continue
        status = pod.get("status") or {}
        phase = status.get("phase") or "Pending"
        if phase == "Succeeded" or (phase == "Running" and _is_true(_conditions(pod).get("Ready"))):
            continue
        if phase == "Running":
            found.append((2, f"Pod {meta.get('name')}: running, not ready"))
        else:
            found.append((3, f"Pod {meta.get('name')}: {phase}"))
    if not found:
        return None
    rank, text = min(found, key=lambda item: item[0])
    return text, rank <= 1


def first_pod_problem(pods: Iterable[Mapping[str, Any]]) -> str | None:
    """``"Pod <name>: <reason>"`` of the Pod to blame (see :func:`pod_culprit`), or None."""
    culprit = pod_culprit(pods)
    return culprit[0] if culprit else None


def not_found(kind: str, name: str, namespace: str = "") -> ResourceState:
    """The state of an object that the release manifest names but the cluster does not have."""
    return ResourceState(kind, name, namespace, NOT_FOUND, False, f"{kind} {name}: not found in cluster")


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str] | None) -> bool:
    """A ``LabelSelector`` (matchLabels + matchExpressions) against labels. Empty selector: no match.

    An empty selector selects everything in Kubernetes, but a workload never has one and matching
    every Pod of a namespace would blame unrelated Pods, so it is treated as selecting nothing.
    """
    if not selector:
        return False
    labels = labels or {}
    match_labels = selector.get("matchLabels") or {}
    expressions = selector.get("matchExpressions") or []
    if not match_labels and not expressions:
        return False
    for key, value in match_labels.items():
        if labels.get(key) != value:
            return False
    for expr in expressions:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def workload_selector(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The Pod selector of a workload object (Job selectors are generated but present on live Jobs)."""
    if obj.get("kind") not in WORKLOAD_KINDS:
        return None
    selector = (obj.get("spec") or {}).get("selector")
    return selector if isinstance(selector, Mapping) else None
