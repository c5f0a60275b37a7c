"""The controllers helm waits on: Deployment -> ReplicaSet -> Pod, StatefulSet, DaemonSet, Job, Pod
lifecycle, Service load balancers, PVC binding, and lingering deletions.

``Controllers.reconcile(now)`` runs one idempotent pass (it writes only what differs, so an idle
cluster costs nothing) and returns the next time something becomes due. ``run()`` is the loop:
it sleeps until a write wakes it or a deadline passes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
from collections import deque
from typing import Any

from .api import FAIL_ANNOTATION, Api, now_iso
from .resources import ResourceType
from .store import Key

DEPLOYMENTS: Key = ("apps", "deployments")
REPLICASETS: Key = ("apps", "replicasets")
STATEFULSETS: Key = ("apps", "statefulsets")
DAEMONSETS: Key = ("apps", "daemonsets")
JOBS: Key = ("batch", "jobs")
PODS: Key = ("", "pods")
SERVICES: Key = ("", "services")
PVCS: Key = ("", "persistentvolumeclaims")
NODE_NAME = "sandbox-node"
#: Readiness transitions kept by :attr:`Controllers.readiness_log` (oldest dropped first).
READINESS_LOG_SIZE = 20_000
_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def template_hash(template: Any) -> str:
    """A stable 10-character hash of a pod template, in the alphabet Kubernetes uses for names."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    return "".join(_ALPHABET[b % len(_ALPHABET)] for b in digest[:10])


def _controller_ref(owner: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _max_unavailable(dep: dict[str, Any], desired: int) -> int:
    value = (((dep.get("spec") or {}).get("strategy") or {}).get("rollingUpdate") or {}).get(
        "maxUnavailable", "25%"
    )
    if isinstance(value, str) and value.endswith("%"):
        try:
            return desired * int(value[:-1]) // 100
        except ValueError:
            return 0
    return value if isinstance(value, int) else 0


def _condition(
    old: list[dict[str, Any]],
    ctype: str,
    status: str,
    reason: str,
    message: str,
    now: str,
    update_time: bool = False,
) -> dict[str, Any]:
    """A condition that keeps its old timestamps while status and reason stay the same (no churn)."""
    prev = next((c for c in old if c.get("type") == ctype), None)
    same = prev is not None and prev.get("status") == status and prev.get("reason") == reason
    cond = {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": prev.get("lastTransitionTime", now) if same and prev else now,
    }
    if update_time:
        cond["lastUpdateTime"] = prev.get("lastUpdateTime", now) if same and prev else now
    return cond


def _ready(key: Key, obj: dict[str, Any]) -> bool:
    """Whether a Pod is Ready, or a Deployment has every replica updated and ready (generation seen)."""
    status = obj.get("status") or {}
    if key == PODS:
        return any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
        )
    desired = int((obj.get("spec") or {}).get("replicas", 1))
    return (
        int(status.get("observedGeneration", 0)) >= int(obj["metadata"].get("generation", 1))
        and int(status.get("updatedReplicas", 0)) >= desired
        and int(status.get("readyReplicas", 0)) >= desired
        and int(status.get("replicas", 0)) == desired
    )


class Controllers:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.store = api.store
        self.config = api.config
        self.seen: dict[str, float] = {}  # uid -> when the controllers first saw it (readiness clocks)
        self.wake = threading.Event()
        self.stopped = threading.Event()
        self.store.on_write = self.wake.set
        self.passes = 0
        #: ``(epoch seconds, kind, namespace, name, ready)`` each time a Pod's Ready condition or a
        #: Deployment's readiness (every replica updated and ready, generation observed) changes,
        #: stamped when the controllers write the status that clients then read.
        self.readiness_log: deque[tuple[float, str, str, str, bool]] = deque(maxlen=READINESS_LOG_SIZE)

    def _rt(self, key: Key) -> ResourceType:
        rt = self.api.registry.by_plural(f"{key[1]}.{key[0]}" if key[0] else key[1])
        assert rt is not None
        return rt

    # ---- the loop ----

    def run(self) -> None:
        while not self.stopped.is_set():
            now = time.time()
            try:
                due = self.reconcile(now)
            except Exception:  # noqa: BLE001 - a bug in one pass must not kill the cluster
                import traceback

                traceback.print_exc()
                due = now + 1.0
            # Wake on the next deadline or on a write; the 5 s cap is only a safety net.
            timeout = 5.0 if due is None else min(5.0, max(0.0, due - time.time()))
            if self.wake.wait(timeout):
                self.wake.clear()
                self.stopped.wait(0.02)  # batch bursts of writes into one pass

    def stop(self) -> None:
        self.stopped.set()
        self.wake.set()

    def reconcile(self, now: float) -> float | None:
        deadlines: list[float] = []
        with self.store.lock:
            self.passes += 1
            live = set()
            for _key, obj in self.store.all_items():
                live.add(obj["metadata"].get("uid"))
            for uid in list(self.seen):
                if uid not in live:
                    del self.seen[uid]
            for dep in self.store.items(DEPLOYMENTS):
                self._deployment(dep, now)
            for rs in self.store.items(REPLICASETS):
                self._replicaset(rs)
            for sts in self.store.items(STATEFULSETS):
                self._statefulset(sts)
            for ds in self.store.items(DAEMONSETS):
                self._daemonset(ds)
            for job in self.store.items(JOBS):
                self._job(job, now)
            for pod in self.store.items(PODS):
                d = self._pod(pod, now)
                if d is not None:
                    deadlines.append(d)
            for svc in self.store.items(SERVICES):
                d = self._service(svc, now)
                if d is not None:
                    deadlines.append(d)
            for pvc in self.store.items(PVCS):
                self._pvc(pvc)
            # Statuses of owners lag their children by one pass; run the owners again now.
            for rs in self.store.items(REPLICASETS):
                self._replicaset(rs)
            for dep in self.store.items(DEPLOYMENTS):
                self._deployment(dep, now)
            for sts in self.store.items(STATEFULSETS):
                self._statefulset(sts)
            for ds in self.store.items(DAEMONSETS):
                self._daemonset(ds)
            for job in self.store.items(JOBS):
                self._job(job, now)
        d = self.api.process_deletions(now)
        if d is not None:
            deadlines.append(d)
        return min(deadlines) if deadlines else None

    # ---- write helpers ----

    def _set_status(self, key: Key, obj: dict[str, Any], status: dict[str, Any]) -> None:
        if obj.get("status") == status:
            return
        new = dict(obj, metadata=dict(obj["metadata"]), status=status)
        self.store.put(key, new, "MODIFIED")
        if key in (PODS, DEPLOYMENTS):
            was, now = _ready(key, obj), _ready(key, new)
            if was != now or obj.get("status") is None:
                meta = obj["metadata"]
                kind = "Pod" if key == PODS else "Deployment"
                self.readiness_log.append((time.time(), kind, meta.get("namespace", ""), meta["name"], now))

    def _set_replicas(self, key: Key, obj: dict[str, Any], replicas: int) -> None:
        if (obj.get("spec") or {}).get("replicas") == replicas:
            return
        new = copy.deepcopy(obj)
        new["spec"]["replicas"] = replicas
        self.api._commit_update(self._rt(key), obj, new, "", False)

    def _create(self, key: Key, namespace: str, body: dict[str, Any]) -> None:
        try:
            self.api.create(self._rt(key), namespace, body)
        except Exception:  # noqa: BLE001 - e.g. the namespace is terminating; retried next pass
            pass

    def _delete_now(self, key: Key, obj: dict[str, Any]) -> None:
        self.api._finalize(key, obj, "Background")

    def _owned(self, key: Key, owner: dict[str, Any]) -> list[dict[str, Any]]:
        return self.store.controlled_by(key, owner["metadata"]["uid"])

    def _pod_body(
        self, owner: dict[str, Any], name: str, template: dict[str, Any], extra_labels: dict[str, str]
    ) -> dict[str, Any]:
        tmeta = template.get("metadata") or {}
        meta: dict[str, Any] = {
            "name": name,
            "labels": {**(tmeta.get("labels") or {}), **extra_labels},
            "ownerReferences": [_controller_ref(owner)],
        }
        if tmeta.get("annotations"):
            meta["annotations"] = dict(tmeta["annotations"])
        spec = copy.deepcopy(template.get("spec") or {})
        spec["nodeName"] = NODE_NAME
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}

    # ---- workloads ----

    def _deployment(self, dep: dict[str, Any], now: float) -> None:
        meta, spec = dep["metadata"], dep.get("spec") or {}
        if meta.get("deletionTimestamp"):
            return
        ns, name = meta["namespace"], meta["name"]
        template = spec.get("template") or {}
        desired = int(spec.get("replicas", 1))
        h = template_hash(template)
        rs_name = f"{name}-{h}"
        owned = self._owned(REPLICASETS, dep)
        new_rs = next((rs for rs in owned if rs["metadata"]["name"] == rs_name), None)
        for rs in owned:
            if rs is not new_rs and not spec.get("paused"):
                self._set_replicas(REPLICASETS, rs, 0)
        if new_rs is None:
            if self.store.get(REPLICASETS, ns, rs_name) is None:
                rs_template = copy.deepcopy(template)
                tmeta = rs_template.setdefault("metadata", {})
                tmeta["labels"] = {**(tmeta.get("labels") or {}), "pod-template-hash": h}
                selector = copy.deepcopy(spec.get("selector") or {})
                selector["matchLabels"] = {**(selector.get("matchLabels") or {}), "pod-template-hash": h}
                self._create(
                    REPLICASETS,
                    ns,
                    {
                        "apiVersion": "apps/v1",
                        "kind": "ReplicaSet",
                        "metadata": {
                            "name": rs_name,
                            "labels": dict(tmeta["labels"]),
                            "annotations": {"deployment.kubernetes.io/desired-replicas": str(desired)},
                            "ownerReferences": [_controller_ref(dep)],
                        },
                        "spec": {"replicas": desired, "selector": selector, "template": rs_template},
                    },
                )
            owned = self._owned(REPLICASETS, dep)
            new_rs = next((rs for rs in owned if rs["metadata"]["name"] == rs_name), None)
        elif (new_rs.get("spec") or {}).get("replicas") != desired:
            self._set_replicas(REPLICASETS, new_rs, desired)
        new_status = (new_rs or {}).get("status") or {}
        total = sum(int((rs.get("status") or {}).get("replicas", 0)) for rs in owned)
        ready = sum(int((rs.get("status") or {}).get("readyReplicas", 0)) for rs in owned)
        available = sum(int((rs.get("status") or {}).get("availableReplicas", 0)) for rs in owned)
        updated = int(new_status.get("replicas", 0))
        stamp = now_iso(now)
        old_conds = (dep.get("status") or {}).get("conditions") or []
        if available >= desired - _max_unavailable(dep, desired):
            avail = _condition(
                old_conds,
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
                stamp,
                True,
            )
        else:
            avail = _condition(
                old_conds,
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
                stamp,
                True,
            )
        if (
            updated >= desired
            and available >= desired
            and total == desired
            and int(new_status.get("availableReplicas", 0)) >= desired
        ):
            prog = _condition(
                old_conds,
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                f'ReplicaSet "{rs_name}" has successfully progressed.',
                stamp,
                True,
            )
        else:
            prog = _condition(
                old_conds,
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                f'ReplicaSet "{rs_name}" is progressing.',
                stamp,
                True,
            )
        status: dict[str, Any] = {
            "observedGeneration": meta.get("generation", 1),
            "replicas": total,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": available,
            "conditions": [avail, prog],
        }
        if desired - available > 0:
            status["unavailableReplicas"] = desired - available
        self._set_status(DEPLOYMENTS, dep, status)

    def _replicaset(self, rs: dict[str, Any]) -> None:
        meta, spec = rs["metadata"], rs.get("spec") or {}
        if meta.get("deletionTimestamp"):
            return
        desired = int(spec.get("replicas", 1))
        pods = [p for p in self._owned(PODS, rs) if not p["metadata"].get("deletionTimestamp")]
        for extra in pods[desired:] if len(pods) > desired else []:
            self._delete_now(PODS, extra)
        pods = pods[:desired]
        for _ in range(desired - len(pods)):
            name = f"{meta['name']}-{self.api.random_suffix()}"
            self._create(PODS, meta["namespace"], self._pod_body(rs, name, spec.get("template") or {}, {}))
        pods = self._owned(PODS, rs)
        ready = sum(1 for p in pods if self._pod_ready(p))
        status = {
            "replicas": len(pods),
            "fullyLabeledReplicas": len(pods),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "observedGeneration": meta.get("generation", 1),
        }
        self._set_status(REPLICASETS, rs, status)

    def _statefulset(self, sts: dict[str, Any]) -> None:
        meta, spec = sts["metadata"], sts.get("spec") or {}
        if meta.get("deletionTimestamp"):
            return
        ns, name = meta["namespace"], meta["name"]
        desired = int(spec.get("replicas", 1))
        template = spec.get("template") or {}
        revision = f"{name}-{template_hash(template)}"
        pods = {p["metadata"]["name"]: p for p in self._owned(PODS, sts)}
        wanted = [f"{name}-{i}" for i in range(desired)]
        for pname, pod in list(pods.items()):
            stale = (pod["metadata"].get("labels") or {}).get("controller-revision-hash") != revision
            if pname not in wanted or stale:
                self._delete_now(PODS, pod)
                del pods[pname]
        sel = ((spec.get("selector") or {}).get("matchLabels")) or {}
        for i, pname in enumerate(wanted):
            for vct in spec.get("volumeClaimTemplates") or []:
                claim = f"{(vct.get('metadata') or {}).get('name', 'data')}-{name}-{i}"
                if self.store.get(PVCS, ns, claim) is None:
                    self._create(
                        PVCS,
                        ns,
                        {
                            "apiVersion": "v1",
                            "kind": "PersistentVolumeClaim",
                            "metadata": {"name": claim, "labels": dict(sel)},
                            "spec": copy.deepcopy(vct.get("spec") or {}),
                        },
                    )
            if pname not in pods:
                self._create(
                    PODS,
                    ns,
                    self._pod_body(
                        sts,
                        pname,
                        template,
                        {
                            "controller-revision-hash": revision,
                            "statefulset.kubernetes.io/pod-name": pname,
                            "apps.kubernetes.io/pod-index": str(i),
                        },
                    ),
                )
        pods_now = self._owned(PODS, sts)
        ready = sum(1 for p in pods_now if self._pod_ready(p))
        old = sts.get("status") or {}
        current = old.get("currentRevision") or revision
        if ready >= desired and len(pods_now) == desired:
            current = revision
        status = {
            "observedGeneration": meta.get("generation", 1),
            "replicas": len(pods_now),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "currentReplicas": len(pods_now) if current == revision else 0,
            "updatedReplicas": len(pods_now),
            "currentRevision": current,
            "updateRevision": revision,
            "collisionCount": 0,
        }
        self._set_status(STATEFULSETS, sts, status)

    def _daemonset(self, ds: dict[str, Any]) -> None:
        meta, spec = ds["metadata"], ds.get("spec") or {}
        if meta.get("deletionTimestamp"):
            return
        template = spec.get("template") or {}
        revision = template_hash(template)
        pods = self._owned(PODS, ds)
        for pod in pods:
            if (pod["metadata"].get("labels") or {}).get("controller-revision-hash") != revision:
                self._delete_now(PODS, pod)
        pods = self._owned(PODS, ds)
        if not pods:
            self._create(
                PODS,
                meta["namespace"],
                self._pod_body(
                    ds,
                    f"{meta['name']}-{self.api.random_suffix()}",
                    template,
                    {"controller-revision-hash": revision},
                ),
            )
            pods = self._owned(PODS, ds)
        ready = sum(1 for p in pods if self._pod_ready(p))
        status = {
            "observedGeneration": meta.get("generation", 1),
            "desiredNumberScheduled": 1,
            "currentNumberScheduled": len(pods),
            "updatedNumberScheduled": len(pods),
            "numberMisscheduled": 0,
            "numberReady": ready,
            "numberAvailable": ready,
        }
        if ready < 1:
            status["numberUnavailable"] = 1
        self._set_status(DAEMONSETS, ds, status)

    def _job(self, job: dict[str, Any], now: float) -> None:
        meta, spec = job["metadata"], job.get("spec") or {}
        if meta.get("deletionTimestamp") or spec.get("suspend"):
            return
        old = job.get("status") or {}
        conds = old.get("conditions") or []
        finished = any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conds)
        pods = self._owned(PODS, job)
        phases = [(p.get("status") or {}).get("phase") for p in pods]
        succeeded, failed = phases.count("Succeeded"), phases.count("Failed")
        active = len(pods) - succeeded - failed
        completions, parallelism = int(spec.get("completions", 1)), int(spec.get("parallelism", 1))
        backoff = int(spec.get("backoffLimit", 6))
        stamp = now_iso(now)
        status: dict[str, Any] = {
            "startTime": old.get("startTime", stamp),
            "active": active,
            "succeeded": succeeded,
            "failed": failed,
            "ready": active,
        }
        if finished:
            return
        if succeeded >= completions:
            status.update(
                active=0,
                completionTime=stamp,
                conditions=[
                    {
                        "type": "SuccessCriteriaMet",
                        "status": "True",
                        "reason": "CompletionsReached",
                        "lastTransitionTime": stamp,
                    },
                    {
                        "type": "Complete",
                        "status": "True",
                        "reason": "CompletionsReached",
                        "lastTransitionTime": stamp,
                    },
                ],
            )
        elif failed > backoff:
            status.update(
                active=0,
                conditions=[
                    {
                        "type": "FailureTarget",
                        "status": "True",
                        "reason": "BackoffLimitExceeded",
                        "lastTransitionTime": stamp,
                    },
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "BackoffLimitExceeded",
                        "message": "Job has reached the specified backoff limit",
                        "lastTransitionTime": stamp,
                    },
                ],
            )
        else:
            for _ in range(min(parallelism, completions - succeeded) - active):
                name = f"{meta['name']}-{self.api.random_suffix()}"
                self._create(
                    PODS, meta["namespace"], self._pod_body(job, name, spec.get("template") or {}, {})
                )
            status["active"] = status["ready"] = len(self._owned(PODS, job)) - succeeded - failed
        if status.get("active") == 0:
            status.pop("ready", None)
        self._set_status(JOBS, job, status)

    # ---- pods, services, claims ---------------------------------------------------------------------------

    def _pod_ready(self, pod: dict[str, Any]) -> bool:
        status = pod.get("status") or {}
        return status.get("phase") == "Running" and any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
        )

    def _pod(self, pod: dict[str, Any], now: float) -> float | None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        if meta.get("deletionTimestamp"):
            return None
        old = pod.get("status") or {}
        if old.get("phase") in ("Succeeded", "Failed"):
            return None
        uid = meta["uid"]
        first = self.seen.setdefault(uid, now)
        due = first + self.config.ready_delay
        never = self.api.never_ready(pod)
        fail = (meta.get("annotations") or {}).get(FAIL_ANNOTATION) == "true"
        completes = spec.get("restartPolicy", "Always") != "Always"
        started = now >= due
        if not started:
            phase, ready = "Pending", False
        elif completes and not never:
            phase, ready = ("Failed" if fail else "Succeeded"), False
        else:
            phase, ready = "Running", not (never or fail)
        t_first, t_due = now_iso(first), now_iso(due)
        digest = hashlib.sha256(uid.encode()).digest()
        status: dict[str, Any] = {
            "phase": phase,
            "hostIP": "10.0.0.2",
            "podIP": f"10.244.{digest[0]}.{digest[1] % 254 + 1}",
            "startTime": t_first,
            "qosClass": "BestEffort",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": t_first},
                {"type": "Initialized", "status": "True", "lastTransitionTime": t_first},
                {
                    "type": "ContainersReady",
                    "status": "True" if ready else "False",
                    "lastTransitionTime": t_due if started else t_first,
                },
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "lastTransitionTime": t_due if started else t_first,
                },
            ],
        }
        status["podIPs"] = [{"ip": status["podIP"]}]
        cstatuses = []
        for c in spec.get("containers") or []:
            if not isinstance(c, dict):
                continue
            if phase == "Pending":
                state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
            elif phase in ("Succeeded", "Failed"):
                code = 1 if phase == "Failed" else 0
                state = {
                    "terminated": {
                        "exitCode": code,
                        "reason": "Error" if code else "Completed",
                        "startedAt": t_first,
                        "finishedAt": t_due,
                    }
                }
            else:
                state = {"running": {"startedAt": t_due}}
            cstatuses.append(
                {
                    "name": c.get("name", ""),
                    "image": c.get("image", ""),
                    "imageID": f"sandbox://{c.get('image', '')}",
                    "ready": ready,
                    "started": phase == "Running",
                    "restartCount": 0,
                    "state": state,
                }
            )
        status["containerStatuses"] = cstatuses
        self._set_status(PODS, pod, status)
        return due if not started else None

    def _service(self, svc: dict[str, Any], now: float) -> float | None:
        spec = svc.get("spec") or {}
        if spec.get("type") != "LoadBalancer" or svc["metadata"].get("deletionTimestamp"):
            return None
        uid = svc["metadata"]["uid"]
        due = self.seen.setdefault(uid, now) + self.config.lb_delay
        if now < due:
            return due
        digest = hashlib.sha256(uid.encode()).digest()
        ingress = [{"ip": f"198.51.100.{digest[0] % 254 + 1}", "ipMode": "VIP"}]
        status = dict(svc.get("status") or {}, loadBalancer={"ingress": ingress})
        self._set_status(SERVICES, svc, status)
        return None

    def _pvc(self, pvc: dict[str, Any]) -> None:
        spec = pvc.get("spec") or {}
        storage = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
        status = {
            "phase": "Bound",
            "accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]),
            "capacity": {"storage": storage},
        }
        if pvc["metadata"].get("deletionTimestamp"):
            return
        if not spec.get("volumeName"):
            new = copy.deepcopy(pvc)
            new["spec"]["volumeName"] = f"pvc-{pvc['metadata']['uid']}"
            new["spec"].setdefault("storageClassName", "standard")
            new["spec"].setdefault("volumeMode", "Filesystem")
            new["status"] = status
            self.store.put(PVCS, new, "MODIFIED")
            return
        self._set_status(PVCS, pvc, status)
