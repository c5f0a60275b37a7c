"""The API server's object semantics, independent of HTTP: create/read/list/replace/patch/delete with
server-filled metadata, defaults, generation bumps, finalizer-like lingering and ownerReference
garbage collection.

Every public method takes ``store.lock`` itself and raises ``ApiError`` (an HTTP code plus a
Kubernetes ``Status``) for anything a client did wrong.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime as dt
import fnmatch
import ipaddress
import json
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from . import patch as patches
from .resources import Registry, ResourceType
from .selectors import labels_match, parse_field_selector, parse_label_selector
from .store import Key, Store

NEVER_READY_ANNOTATION = "sandbox.kduflow.dev/never-ready"
FAIL_ANNOTATION = "sandbox.kduflow.dev/fail"
LOG_ANNOTATION = "sandbox.kduflow.dev/log"
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
NAMESPACES: Key = ("", "namespaces")
CRDS: Key = ("apiextensions.k8s.io", "customresourcedefinitions")
# Required object fields of the workloads the controllers act on (the real server's validation).
WORKLOADS: dict[Key, tuple[str, ...]] = {
    ("apps", "deployments"): ("selector", "template"),
    ("apps", "replicasets"): ("selector", "template"),
    ("apps", "statefulsets"): ("selector", "template"),
    ("apps", "daemonsets"): ("selector", "template"),
    ("batch", "jobs"): ("template",),
}
# Kinds that never linger on delete_delay: helm's release storage must vanish at once, as Secrets
# and ConfigMaps without finalizers do on a real cluster.
NO_DELETE_DELAY: frozenset[Key] = frozenset({("", "secrets"), ("", "configmaps")})


def now_iso(t: float | None = None) -> str:
    return dt.datetime.fromtimestamp(time.time() if t is None else t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            out["details"] = self.details
        return out


def not_found(rt: ResourceType, name: str) -> ApiError:
    resource = f"{rt.plural}.{rt.group}" if rt.group else rt.plural
    return ApiError(
        404,
        "NotFound",
        f'{resource} "{name}" not found',
        {"name": name, "group": rt.group, "kind": rt.plural},
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def invalid(rt: ResourceType, name: str, message: str) -> ApiError:
    return ApiError(
        422,
        "Invalid",
        f'{rt.kind} "{name}" is invalid: {message}',
        {"name": name, "group": rt.group, "kind": rt.kind},
    )


@dataclass
class Config:
    """Live knobs (the control surface changes them under ``lock``)."""

    ready_delay: float = 0.3
    lb_delay: float = 0.5
    delete_delay: float = 0.0
    never_ready: str | None = None
    error_rate: float = 0.0
    drop_rate: float = 0.0
    latency: float = 0.0
    #: HTTP status of an injected error answer (500 by default; 403 with error_rate 1 is a cluster
    #: that refuses everything, 429/503 a throttling or overloaded one).
    error_status: int = 500
    #: Seconds sent as ``Retry-After`` with injected error answers (None: no header). client-go (helm,
    #: kubectl) retries a 429/5xx answer that carries it, as a real server's throttling asks.
    retry_after: int | None = None
    #: fnmatch pattern(s) on the request's counter key ("VERB /path/{template}"), alternatives
    #: separated by "|": only matching requests get faults and latency (None: every API request).
    fault_filter: str | None = None
    #: Further limits drops to matching requests, same syntax ("GET *|WATCH *": only requests that
    #: clients may resend; None: every request fault_filter lets through).
    drop_filter: str | None = None
    #: At most this many faults (errors + drops) are injected, then requests pass again (None: no
    #: limit); setting it restarts the count. Latency is not limited.
    fault_limit: int | None = None
    #: Seed of the fault decisions (None: the cluster's seed); setting it restarts the sequence.
    fault_seed: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        with self.lock:
            return {
                "ready_delay": self.ready_delay,
                "lb_delay": self.lb_delay,
                "delete_delay": self.delete_delay,
                "never_ready": self.never_ready,
                "error_rate": self.error_rate,
                "drop_rate": self.drop_rate,
                "latency": self.latency,
                "error_status": self.error_status,
                "retry_after": self.retry_after,
                "fault_filter": self.fault_filter,
                "drop_filter": self.drop_filter,
                "fault_limit": self.fault_limit,
                "fault_seed": self.fault_seed,
            }


def spec_part(obj: dict[str, Any]) -> dict[str, Any]:
    """What generation tracks: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def owner_uids(obj: dict[str, Any]) -> list[str]:
    return [r.get("uid", "") for r in (obj.get("metadata") or {}).get("ownerReferences") or []]


class Api:
    def __init__(self, store: Store, registry: Registry, config: Config, seed: int = 0) -> None:
        self.store, self.registry, self.config = store, registry, config
        self.rng = random.Random(seed)
        self.pending_deletes: dict[str, tuple[float, str]] = {}  # uid -> (due time, propagation policy)
        self._next_ip = 10
        self._next_node_port = 30000

    # ---- helpers ----

    def random_suffix(self, n: int = 5) -> str:
        return "".join(self.rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(n))

    def view(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        """The stored object as the requested version shows it (same dict when nothing differs)."""
        if obj.get("apiVersion") == rt.api_version and obj.get("kind") == rt.kind:
            return obj
        return dict(obj, apiVersion=rt.api_version, kind=rt.kind)

    def never_ready(self, obj: dict[str, Any]) -> bool:
        """The never-ready rule: the annotation on the object (pods inherit it from their template),
        on its pod template, or the name pattern on it or any owner up the chain."""
        spec = obj.get("spec") or {}
        for meta in (obj.get("metadata") or {}, ((spec.get("template") or {}).get("metadata") or {})):
            if (meta.get("annotations") or {}).get(NEVER_READY_ANNOTATION) == "true":
                return True
        pattern = self.config.never_ready
        if not pattern:
            return False
        cur: dict[str, Any] | None = obj
        for _ in range(4):
            if cur is None:
                return False
            if fnmatch.fnmatchcase(cur["metadata"]["name"], pattern):
                return True
            uids = owner_uids(cur)
            cur = self.store.by_uid(uids[0]) if uids else None
        return False

    def _alloc_ip(self) -> str:
        self._next_ip += 1
        return str(ipaddress.IPv4Address("10.96.0.0") + self._next_ip)

    def _defaults(self, rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        spec = obj.get("spec")
        if rt.key == ("apps", "deployments") and isinstance(spec, dict):
            spec.setdefault("replicas", 1)
            spec.setdefault(
                "strategy",
                {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            )
            spec.setdefault("progressDeadlineSeconds", 600)
            spec.setdefault("revisionHistoryLimit", 10)
        elif rt.key == ("apps", "statefulsets") and isinstance(spec, dict):
            spec.setdefault("replicas", 1)
            spec.setdefault("podManagementPolicy", "OrderedReady")
            spec.setdefault("updateStrategy", {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
            spec.setdefault("revisionHistoryLimit", 10)
        elif rt.key == ("apps", "daemonsets") and isinstance(spec, dict):
            spec.setdefault(
                "updateStrategy",
                {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
            )
        elif rt.key == ("batch", "jobs") and isinstance(spec, dict):
            spec.setdefault("parallelism", 1)
            spec.setdefault("completions", 1)
            spec.setdefault("backoffLimit", 6)
            uid = obj["metadata"]["uid"]
            if "selector" not in spec and not old:
                spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
                tmeta = spec.setdefault("template", {}).setdefault("metadata", {})
                tmeta["labels"] = {
                    **(tmeta.get("labels") or {}),
                    "batch.kubernetes.io/controller-uid": uid,
                    "batch.kubernetes.io/job-name": obj["metadata"]["name"],
                    "controller-uid": uid,
                    "job-name": obj["metadata"]["name"],
                }
        elif rt.key == ("", "services"):
            spec = obj.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            spec.setdefault("sessionAffinity", "None")
            old_spec = (old or {}).get("spec") or {}
            if spec["type"] == "ExternalName":
                spec.pop("clusterIP", None)
                spec.pop("clusterIPs", None)
            else:
                if not spec.get("clusterIP"):
                    spec["clusterIP"] = old_spec.get("clusterIP") or self._alloc_ip()
                spec.setdefault("clusterIPs", [spec["clusterIP"]])
                spec.setdefault("ipFamilies", ["IPv4"])
                spec.setdefault("ipFamilyPolicy", "SingleStack")
                spec.setdefault("internalTrafficPolicy", "Cluster")
            old_ports = {p.get("port"): p for p in old_spec.get("ports") or [] if isinstance(p, dict)}
            for p in spec.get("ports") or []:
                if not isinstance(p, dict):
                    continue
                p.setdefault("protocol", "TCP")
                if "port" in p:
                    p.setdefault("targetPort", p["port"])
                if spec["type"] in ("NodePort", "LoadBalancer") and not p.get("nodePort"):
                    prev = old_ports.get(p.get("port"), {}).get("nodePort")
                    if not prev:
                        self._next_node_port += 1
                        prev = self._next_node_port
                    p["nodePort"] = prev
            if spec["type"] == "LoadBalancer":
                spec.setdefault("externalTrafficPolicy", "Cluster")
                spec.setdefault("allocateLoadBalancerNodePorts", True)
            obj.setdefault("status", {"loadBalancer": {}})
        elif rt.key == NAMESPACES:
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            labels = obj["metadata"].setdefault("labels", {})
            labels["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
            phase = "Terminating" if obj["metadata"].get("deletionTimestamp") else "Active"
            obj["status"] = {"phase": phase}
        elif rt.key == ("", "pods") and isinstance(spec, dict):
            spec.setdefault("restartPolicy", "Always")
            spec.setdefault("dnsPolicy", "ClusterFirst")
            spec.setdefault("schedulerName", "default-scheduler")
            spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
            obj.setdefault("status", {"phase": "Pending", "qosClass": "BestEffort"})
        elif rt.key == ("", "persistentvolumeclaims"):
            obj.setdefault("status", {"phase": "Pending"})
        elif rt.key == ("", "secrets"):
            obj.setdefault("type", "Opaque")
            string_data = obj.pop("stringData", None)
            if isinstance(string_data, dict):
                data = obj.setdefault("data", {})
                for k, v in string_data.items():
                    data[k] = base64.b64encode(str(v).encode()).decode()
            for k, v in (obj.get("data") or {}).items():
                try:
                    base64.b64decode(v, validate=True)
                except (binascii.Error, TypeError) as e:
                    raise invalid(rt, obj["metadata"]["name"], f"data[{k}]: illegal base64 data") from e
        elif rt.key == CRDS:
            obj["status"] = {
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts"},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted"},
                ],
                "acceptedNames": (spec or {}).get("names") or {},
                "storedVersions": [
                    v["name"]
                    for v in (spec or {}).get("versions") or []
                    if isinstance(v, dict) and v.get("storage")
                ],
            }

    def _check_body(self, rt: ResourceType, body: Any, namespace: str, name: str | None) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise bad_request("the request body must be an object")
        kind, api_version = body.get("kind"), body.get("apiVersion")
        if kind and kind != rt.kind:
            raise bad_request(
                f"the body's kind {kind!r} does not match the resource {rt.plural!r} ({rt.kind})"
            )
        if api_version and api_version.rpartition("/")[0] != rt.group:
            raise bad_request(f"the body's apiVersion {api_version!r} does not match group {rt.group!r}")
        meta = body.get("metadata")
        if meta is None:
            meta = body["metadata"] = {}
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if name is not None and meta.get("name") not in (None, name):
            raise bad_request(
                f"the name in the body ({meta.get('name')!r}) does not match the URL ({name!r})"
            )
        if rt.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise bad_request(
                    f"the namespace of the object ({meta.get('namespace')!r}) does not match the "
                    f"namespace of the request ({namespace!r})"
                )
        spec = body.get("spec")
        template = spec.get("template") if isinstance(spec, dict) else None
        tmeta = template.get("metadata") if isinstance(template, dict) else None
        # The real server rejects non-string label/annotation values when decoding (a chart that sets
        # `never-ready: true` unquoted must fail here as it would on a cluster).
        for where, m in (("metadata", meta), ("spec.template.metadata", tmeta)):
            if not isinstance(m, dict):
                continue
            for f in ("labels", "annotations"):
                value = m.get(f)
                if value is not None and (
                    not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values())
                ):
                    raise bad_request(
                        f"{rt.kind} in version {rt.version!r} cannot be handled as a {rt.kind}: "
                        f"{where}.{f} must be a map of strings"
                    )
        if rt.key in WORKLOADS:
            missing = [
                f
                for f in WORKLOADS[rt.key]
                if not isinstance((spec or {}).get(f) if isinstance(spec, dict) else None, dict)
            ]
            if missing:
                hint = (
                    " (protobuf bodies of this kind decode ObjectMeta only: send JSON)"
                    if body.get("_sandbox_protobuf")
                    else ""
                )
                raise invalid(
                    rt,
                    str(meta.get("name") or ""),
                    ", ".join(f"spec.{f}: Required value" for f in missing) + hint,
                )
        body.pop("_sandbox_protobuf", None)
        return body

    def _require_namespace(self, rt: ResourceType, namespace: str) -> None:
        if not rt.namespaced:
            return
        ns = self.store.get(NAMESPACES, "", namespace)
        if ns is None:
            raise ApiError(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                {"name": namespace, "kind": "namespaces"},
            )
        if ns["metadata"].get("deletionTimestamp"):
            raise ApiError(
                403,
                "Forbidden",
                f"{rt.plural} is forbidden: unable to create new content in "
                f"namespace {namespace} because it is being terminated",
            )

    # ---- create / read / list ----------------------------------------------------------------------

    def create(self, rt: ResourceType, namespace: str, body: Any, dry_run: bool = False) -> dict[str, Any]:
        with self.store.lock:
            body = copy.deepcopy(self._check_body(rt, body, namespace, None))
            meta = body["metadata"]
            if not meta.get("name"):
                if meta.get("generateName"):
                    meta["name"] = meta["generateName"] + self.random_suffix()
                else:
                    raise invalid(rt, "", "metadata.name: Required value: name or generateName is required")
            name = meta["name"]
            if not isinstance(name, str) or len(name) > 253 or "/" in name:
                raise invalid(rt, str(name), "metadata.name: Invalid value")
            self._require_namespace(rt, namespace)
            if self.store.get(rt.key, namespace if rt.namespaced else "", name) is not None:
                resource = f"{rt.plural}.{rt.group}" if rt.group else rt.plural
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{resource} "{name}" already exists',
                    {"name": name, "group": rt.group, "kind": rt.plural},
                )
            body["apiVersion"], body["kind"] = rt.api_version, rt.kind
            if rt.namespaced:
                meta["namespace"] = namespace
            else:
                meta.pop("namespace", None)
            for f in (
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "managedFields",
                "selfLink",
                "resourceVersion",
            ):
                meta.pop(f, None)
            meta["uid"] = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
            meta["creationTimestamp"] = now_iso()
            meta["generation"] = 1
            if "status" in rt.subresources:
                body.pop("status", None)
            self._defaults(rt, body, None)
            if dry_run:
                return body
            if rt.key == CRDS:
                self.registry.set_crd(body)
            return self.view(rt, self.store.put(rt.key, body, "ADDED"))

    def read(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        with self.store.lock:
            obj = self.store.get(rt.key, namespace if rt.namespaced else "", name)
            if obj is None:
                raise not_found(rt, name)
            return self.view(rt, obj)

    def select(
        self, rt: ResourceType, namespace: str | None, label_selector: str = "", field_selector: str = ""
    ) -> list[dict[str, Any]]:
        try:
            reqs = parse_label_selector(label_selector)
            fpred = parse_field_selector(field_selector)
        except ValueError as e:
            raise bad_request(f"unable to parse requirement: {e}") from e
        with self.store.lock:
            return [
                self.view(rt, o)
                for o in self.store.items(rt.key, namespace if rt.namespaced else None)
                if labels_match(reqs, o["metadata"].get("labels")) and fpred(o)
            ]

    def list(
        self,
        rt: ResourceType,
        namespace: str | None,
        label_selector: str = "",
        field_selector: str = "",
        limit: int = 0,
        continue_token: str = "",
    ) -> dict[str, Any]:
        with self.store.lock:
            items = self.select(rt, namespace, label_selector, field_selector)
            rv = self.store.rv
        start = 0
        if continue_token:
            try:
                start = int(json.loads(base64.urlsafe_b64decode(continue_token))["start"])
            except (ValueError, KeyError, TypeError, binascii.Error) as e:
                raise bad_request("invalid continue token") from e
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if limit > 0 and start + limit < len(items):
            meta["continue"] = base64.urlsafe_b64encode(
                json.dumps({"start": start + limit}).encode()
            ).decode()
            meta["remainingItemCount"] = len(items) - start - limit
            items = items[start : start + limit]
        else:
            items = items[start:]
        return {"kind": f"{rt.kind}List", "apiVersion": rt.api_version, "metadata": meta, "items": items}

    # ---- updates ----

    def _commit_update(
        self, rt: ResourceType, old: dict[str, Any], new: dict[str, Any], subresource: str, dry_run: bool
    ) -> dict[str, Any]:
        """Carry server fields over from ``old``, default, bump generation, store (if anything changed)."""
        ometa, nmeta = old["metadata"], new.setdefault("metadata", {})
        new["apiVersion"], new["kind"] = rt.api_version, rt.kind
        if subresource == "status":
            new = dict(copy.deepcopy(old), status=new.get("status"))
        else:
            for f in (
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "name",
                "namespace",
            ):
                if f in ometa:
                    nmeta[f] = ometa[f]
                else:
                    nmeta.pop(f, None)
            nmeta.pop("managedFields", None)
            if "status" in rt.subresources:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
            self._defaults(rt, new, old)
            if spec_part(new) != spec_part(old):
                nmeta["generation"] = int(ometa.get("generation", 1)) + 1
        new["metadata"]["resourceVersion"] = ometa.get("resourceVersion")
        if new == old:
            return self.view(rt, old)
        if dry_run:
            return new
        if rt.key == CRDS:
            self.registry.set_crd(new)
        stored = self.store.put(rt.key, new, "MODIFIED")
        if (
            nmeta.get("deletionTimestamp")
            and not nmeta.get("finalizers")
            and self.pending_deletes.get(nmeta["uid"], (0.0, ""))[0] <= time.time()
        ):
            policy = self.pending_deletes.pop(nmeta["uid"], (0.0, "Background"))[1]
            self._finalize(rt.key, stored, policy)
        return self.view(rt, stored)

    def _existing(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        obj = self.store.get(rt.key, namespace if rt.namespaced else "", name)
        if obj is None:
            raise not_found(rt, name)
        return obj

    def replace(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        body: Any,
        subresource: str = "",
        dry_run: bool = False,
    ) -> dict[str, Any]:
        with self.store.lock:
            body = copy.deepcopy(self._check_body(rt, body, namespace, name))
            old = self._existing(rt, namespace, name)
            rv = body["metadata"].get("resourceVersion")
            if rv and rv != old["metadata"].get("resourceVersion"):
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {rt.plural} "{name}": the '
                    f"object has been modified; please apply your changes to the latest version "
                    f"and try again",
                    {"name": name, "group": rt.group, "kind": rt.plural},
                )
            return self._commit_update(rt, old, body, subresource, dry_run)

    def patch(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        patch_type: str,
        body: Any,
        subresource: str = "",
        dry_run: bool = False,
    ) -> tuple[int, dict[str, Any]]:
        """Returns (HTTP code, object): 201 when an apply patch created the object."""
        with self.store.lock:
            old = self.store.get(rt.key, namespace if rt.namespaced else "", name)
            if patch_type == "apply":
                body = self._check_body(rt, body, namespace, name)
                if old is None:
                    if subresource:
                        raise not_found(rt, name)
                    body = copy.deepcopy(body)
                    body["metadata"]["name"] = name
                    return 201, self.create(rt, namespace, body, dry_run)
                new = patches.server_side_apply(old, body)
                if subresource == "status":
                    new = dict(copy.deepcopy(old), status=body.get("status"))
                return 200, self._commit_update(rt, old, new, subresource, dry_run)
            if old is None:
                raise not_found(rt, name)
            current = copy.deepcopy(old)
            try:
                if patch_type == "merge":
                    new = patches.json_merge(current, body)
                elif patch_type == "strategic":
                    new = patches.strategic_merge(current, body)
                elif patch_type == "json":
                    new = patches.json_patch(current, body)
                else:
                    raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {patch_type!r}")
            except patches.PatchError as e:
                raise invalid(rt, name, str(e)) from e
            except ValueError as e:
                raise bad_request(str(e)) from e
            if not isinstance(new, dict):
                raise bad_request("the patch did not produce an object")
            meta = new.get("metadata")
            if not isinstance(meta, dict) or meta.get("name") != name:
                raise bad_request("a patch cannot change metadata.name")
            self._check_body(rt, new, namespace, name)
            return 200, self._commit_update(rt, old, new, subresource, dry_run)

    # ---- scale subresource ----

    def scale_of(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        sel = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                k: meta[k]
                for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                if k in meta
            },
            "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 0)},
            "status": {
                "replicas": (obj.get("status") or {}).get("replicas", 0),
                "selector": ",".join(f"{k}={v}" for k, v in sel.items()),
            },
        }

    def set_scale(self, rt: ResourceType, namespace: str, name: str, scale: Any) -> dict[str, Any]:
        with self.store.lock:
            old = self._existing(rt, namespace, name)
            replicas = (scale.get("spec") or {}).get("replicas") if isinstance(scale, dict) else None
            if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
                raise invalid(rt, name, "spec.replicas: must be a non-negative integer")
            new = copy.deepcopy(old)
            new.setdefault("spec", {})["replicas"] = replicas
            return self.scale_of(rt, self._commit_update(rt, old, new, "", False))

    # ---- deletion ----

    def delete(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        options: dict[str, Any] | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        options = options or {}
        with self.store.lock:
            obj = self._existing(rt, namespace, name)
            meta = obj["metadata"]
            pre = options.get("preconditions") or {}
            if (pre.get("uid") and pre["uid"] != meta.get("uid")) or (
                pre.get("resourceVersion") and pre["resourceVersion"] != meta.get("resourceVersion")
            ):
                raise ApiError(
                    409,
                    "Conflict",
                    f'Precondition failed for {rt.plural} "{name}"',
                    {"name": name, "group": rt.group, "kind": rt.plural},
                )
            policy = options.get("propagationPolicy") or (
                "Orphan" if options.get("orphanDependents") else "Background"
            )
            if policy not in ("Orphan", "Background", "Foreground"):
                raise bad_request(f"invalid propagationPolicy {policy!r}")
            if dry_run:
                return self.view(rt, obj)
            if meta.get("deletionTimestamp"):
                return self.view(rt, obj)
            delay = 0.0 if rt.key in NO_DELETE_DELAY else self.config.delete_delay
            if delay > 0 or meta.get("finalizers"):
                new = copy.deepcopy(obj)
                new["metadata"]["deletionTimestamp"] = now_iso()
                new["metadata"]["deletionGracePeriodSeconds"] = 0
                if rt.key == NAMESPACES:
                    new["status"] = {"phase": "Terminating"}
                self.pending_deletes[meta["uid"]] = (time.time() + delay, policy)
                stored = self.store.put(rt.key, new, "MODIFIED")
                if rt.key == NAMESPACES:
                    self._purge_namespace(name)
                return self.view(rt, stored)
            self._finalize(rt.key, obj, policy)
            return {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {"name": name, "group": rt.group, "kind": rt.plural, "uid": meta.get("uid")},
            }

    def delete_collection(
        self,
        rt: ResourceType,
        namespace: str | None,
        label_selector: str,
        field_selector: str,
        options: dict[str, Any] | None,
    ) -> dict[str, Any]:
        with self.store.lock:
            items = self.select(rt, namespace, label_selector, field_selector)
            for o in items:
                self.delete(rt, o["metadata"].get("namespace", ""), o["metadata"]["name"], options)
            return {
                "kind": f"{rt.kind}List",
                "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(self.store.rv)},
                "items": items,
            }

    def _purge_namespace(self, namespace: str) -> None:
        for key, o in list(self.store.all_items()):
            if o["metadata"].get("namespace") == namespace:
                self._finalize(key, o, "Orphan")

    def _finalize(self, key: Key, obj: dict[str, Any], policy: str) -> None:
        """Remove the object now and collect what it owned (or orphan it)."""
        meta = obj["metadata"]
        if self.store.remove(key, meta.get("namespace", ""), meta["name"]) is None:
            return
        self.pending_deletes.pop(meta.get("uid", ""), None)
        if key == NAMESPACES:
            self._purge_namespace(meta["name"])
        if key == CRDS:
            spec = obj.get("spec") or {}
            self.registry.drop_crd(meta["name"])
            crd_key = (spec.get("group", ""), (spec.get("names") or {}).get("plural", ""))
            for o in self.store.items(crd_key):
                self._finalize(crd_key, o, "Orphan")
        uid = meta.get("uid")
        if not uid:
            return
        for dkey, dep in list(self.store.all_items()):
            if uid not in owner_uids(dep):
                continue
            if policy == "Orphan":
                new = copy.deepcopy(dep)
                new["metadata"]["ownerReferences"] = [
                    r for r in new["metadata"]["ownerReferences"] if r.get("uid") != uid
                ]
                if not new["metadata"]["ownerReferences"]:
                    del new["metadata"]["ownerReferences"]
                self.store.put(dkey, new, "MODIFIED")
            else:
                self._finalize(dkey, dep, "Background")

    def process_deletions(self, now: float) -> float | None:
        """Finish lingering deletions that are due; returns the next due time, if any."""
        nxt = None
        with self.store.lock:
            for uid, (due, policy) in list(self.pending_deletes.items()):
                obj = self.store.by_uid(uid)
                if obj is None:
                    self.pending_deletes.pop(uid, None)
                elif due <= now:
                    if not obj["metadata"].get("finalizers"):
                        key = self.store._by_uid[uid][0]
                        self._finalize(key, obj, policy)
                else:
                    nxt = due if nxt is None else min(nxt, due)
        return nxt

    def reset(self) -> None:
        with self.store.lock:
            self.store.clear()
            self.registry.reset()
            self.pending_deletes.clear()
            self.seed_namespaces()

    def seed_namespaces(self) -> None:
        ns_type = self.registry.lookup("", "v1", "namespaces")
        assert ns_type is not None
        for name in DEFAULT_NAMESPACES:
            self.create(ns_type, "", {"metadata": {"name": name}})
