"""The resource types the sandbox serves, and the discovery documents built from them.

Storage is keyed by ``(group, plural)`` so that the autoscaling v1 and v2 views of a
HorizontalPodAutoscaler share one object (no schema conversion: a limit documented in README.md).
CustomResourceDefinitions add types at run time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()  # "status", "scale", "log"
    preferred: bool = True  # the preferred version of its group (discovery, Python lookups by plural)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)


def _rt(
    gv: str,
    plural: str,
    kind: str,
    namespaced: bool = True,
    short: tuple[str, ...] = (),
    subs: tuple[str, ...] = ("status",),
    preferred: bool = True,
) -> ResourceType:
    group, _, version = gv.rpartition("/")
    return ResourceType(group, version, plural, kind.lower(), kind, namespaced, short, subs, preferred)


BUILTIN_TYPES: tuple[ResourceType, ...] = (
    _rt("v1", "namespaces", "Namespace", False, ("ns",)),
    _rt("v1", "secrets", "Secret", subs=()),
    _rt("v1", "configmaps", "ConfigMap", short=("cm",), subs=()),
    _rt("v1", "serviceaccounts", "ServiceAccount", short=("sa",), subs=()),
    _rt("v1", "services", "Service", short=("svc",)),
    _rt("v1", "pods", "Pod", short=("po",), subs=("status", "log")),
    _rt("v1", "endpoints", "Endpoints", short=("ep",), subs=()),
    _rt("v1", "persistentvolumeclaims", "PersistentVolumeClaim", short=("pvc",)),
    _rt("v1", "events", "Event", short=("ev",), subs=()),
    _rt("apps/v1", "deployments", "Deployment", short=("deploy",), subs=("status", "scale")),
    _rt("apps/v1", "replicasets", "ReplicaSet", short=("rs",), subs=("status", "scale")),
    _rt("apps/v1", "statefulsets", "StatefulSet", short=("sts",), subs=("status", "scale")),
    _rt("apps/v1", "daemonsets", "DaemonSet", short=("ds",)),
    _rt("batch/v1", "jobs", "Job"),
    _rt("batch/v1", "cronjobs", "CronJob", short=("cj",)),
    _rt("autoscaling/v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", short=("hpa",)),
    _rt(
        "autoscaling/v1",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        short=("hpa",),
        preferred=False,
    ),
    _rt("networking.k8s.io/v1", "ingresses", "Ingress", short=("ing",)),
    _rt("networking.k8s.io/v1", "networkpolicies", "NetworkPolicy", short=("netpol",), subs=()),
    _rt("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget", short=("pdb",)),
    _rt("rbac.authorization.k8s.io/v1", "roles", "Role", subs=()),
    _rt("rbac.authorization.k8s.io/v1", "rolebindings", "RoleBinding", subs=()),
    _rt("rbac.authorization.k8s.io/v1", "clusterroles", "ClusterRole", False, subs=()),
    _rt("rbac.authorization.k8s.io/v1", "clusterrolebindings", "ClusterRoleBinding", False, subs=()),
    _rt("storage.k8s.io/v1", "storageclasses", "StorageClass", False, ("sc",), subs=()),
    _rt(
        "apiextensions.k8s.io/v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        ("crd", "crds"),
    ),
)

_SUB_VERBS = {"status": ["get", "patch", "update"], "scale": ["get", "patch", "update"], "log": ["get"]}


class Registry:
    """Thread-safe table of served types: built-ins plus those of stored CRDs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._builtin = list(BUILTIN_TYPES)
        self._crd: dict[str, list[ResourceType]] = {}  # CRD name -> its types

    def all(self) -> list[ResourceType]:
        with self._lock:
            return self._builtin + [t for ts in self._crd.values() for t in ts]

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        for t in self.all():
            if t.group == group and t.version == version and t.plural == plural:
                return t
        return None

    def by_plural(self, plural: str) -> ResourceType | None:
        """The preferred type of that plural (or ``plural.group``), for the Python API."""
        name, _, group = plural.partition(".")
        found = [t for t in self.all() if t.plural == name and (not group or t.group == group)]
        found.sort(key=lambda t: not t.preferred)
        return found[0] if found else None

    def versions_of(self, group: str) -> list[str]:
        """Versions of a group, preferred first."""
        seen: list[str] = []
        for t in sorted(self.all(), key=lambda t: not t.preferred):
            if t.group == group and t.version not in seen:
                seen.append(t.version)
        return seen

    def groups(self) -> list[str]:
        seen: list[str] = []
        for t in self.all():
            if t.group and t.group not in seen:
                seen.append(t.group)
        return seen

    def set_crd(self, crd: dict[str, Any]) -> None:
        """Serve the types a CustomResourceDefinition declares (its served versions)."""
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
        if not (isinstance(group, str) and isinstance(plural, str) and isinstance(kind, str)):
            return
        types = []
        for i, v in enumerate(spec.get("versions") or []):
            if not isinstance(v, dict) or not v.get("served", True) or not isinstance(v.get("name"), str):
                continue
            subs = tuple(s for s in ("status", "scale") if s in (v.get("subresources") or {}))
            types.append(
                ResourceType(
                    group,
                    v["name"],
                    plural,
                    names.get("singular") or kind.lower(),
                    kind,
                    spec.get("scope", "Namespaced") == "Namespaced",
                    tuple(names.get("shortNames") or ()),
                    subs,
                    preferred=i == 0,
                )
            )
        with self._lock:
            self._crd[crd["metadata"]["name"]] = types

    def drop_crd(self, name: str) -> None:
        with self._lock:
            self._crd.pop(name, None)

    def reset(self) -> None:
        with self._lock:
            self._crd.clear()

    # ---- discovery documents ----

    def resource_list(self, group: str, version: str) -> dict[str, Any] | None:
        types = [t for t in self.all() if t.group == group and t.version == version]
        if not types:
            return None
        resources: list[dict[str, Any]] = []
        for t in types:
            entry: dict[str, Any] = {
                "name": t.plural,
                "singularName": t.singular,
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": list(ALL_VERBS),
            }
            if t.short_names:
                entry["shortNames"] = list(t.short_names)
            resources.append(entry)
            for sub in t.subresources:
                sub_entry = {
                    "name": f"{t.plural}/{sub}",
                    "singularName": "",
                    "namespaced": t.namespaced,
                    "kind": t.kind,
                    "verbs": _SUB_VERBS[sub],
                }
                if sub == "scale":
                    sub_entry.update(group="autoscaling", version="v1", kind="Scale")
                resources.append(sub_entry)
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": types[0].api_version,
            "resources": resources,
        }

    def group_list(self) -> dict[str, Any]:
        groups = []
        for g in self.groups():
            versions = [{"groupVersion": f"{g}/{v}", "version": v} for v in self.versions_of(g)]
            groups.append({"name": g, "versions": versions, "preferredVersion": versions[0]})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def aggregated(self, legacy: bool, disco_version: str) -> dict[str, Any]:
        """An ``APIGroupDiscoveryList`` for ``/api`` (legacy=True) or ``/apis``."""
        items = []
        for g in [""] if legacy else self.groups():
            versions = []
            for v in self.versions_of(g):
                resources = []
                for t in self.all():
                    if t.group != g or t.version != v:
                        continue
                    r: dict[str, Any] = {
                        "resource": t.plural,
                        "singularResource": t.singular,
                        "responseKind": {"group": g, "version": v, "kind": t.kind},
                        "scope": "Namespaced" if t.namespaced else "Cluster",
                        "verbs": list(ALL_VERBS),
                    }
                    if t.short_names:
                        r["shortNames"] = list(t.short_names)
                    subs = []
                    for sub in t.subresources:
                        kind = (
                            {"group": "autoscaling", "version": "v1", "kind": "Scale"}
                            if sub == "scale"
                            else {"group": g, "version": v, "kind": t.kind}
                        )
                        subs.append({"subresource": sub, "responseKind": kind, "verbs": _SUB_VERBS[sub]})
                    if subs:
                        r["subresources"] = subs
                    resources.append(r)
                versions.append({"version": v, "resources": resources, "freshness": "Current"})
            items.append({"metadata": {"name": g} if g else {}, "versions": versions})
        return {
            "kind": "APIGroupDiscoveryList",
            "apiVersion": f"apidiscovery.k8s.io/{disco_version}",
            "metadata": {},
            "items": items,
        }
