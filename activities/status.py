"""Release status: observe a release through the Kubernetes API and write OSM's status fields.

``kdu.status`` observes once (and writes once when given a ``db_dict``: the final write of an
operation, also after a failure). ``kdu.poll_status`` is the heartbeating background poller that
runs while a helm operation is in flight and writes only when something changed.

Observation costs no process: helm's release record is read from its storage Secret (one LIST),
the manifest's objects are fetched per kind and namespace (one GET for a single object, one LIST
for several), and Pods are listed only for workloads that are not ready, to name the culprit
("Pod web-abc: ImagePullBackOff") instead of N2VC's silence on timeouts. A ready release costs
``1 + kinds`` requests per poll; the release record and the parsed manifest are cached while the
revision does not change.

What MongoDB gets, under ``db_dict.path`` (OSM's four fields plus one sub-document):

* ``operation`` -- "install", "upgrade", "scale", "rollback", ...
* ``status`` -- helm's ``info.description`` ("Install complete"), as OSM writes it
* ``detailed-status`` -- a short human summary (<= 1 KB), e.g.
  ``"deployed rev 3: 4/5 resources ready; not ready: Deployment web (1/3 replicas ready)"``.
  OSM wrote the repr of the whole release there, values and manifest included.
  Never values, manifests, notes or secret data here.
* ``status-time`` -- ``str(time.time())``, like OSM
* ``kduflow`` -- ``{phase, operation, release_status, revision, chart, app_version, released, ready,
  ready_resources, total_resources, not_ready: [{kind, name, namespace, state, reason}] (<= 10),
  not_ready_count, last_error, observed_at, seq}`` (``seq`` only on ordered writes, below).

``phase`` uses a Flux-like vocabulary (:data:`PHASES`): "pending", "installing", "upgrading",
"scaling", "rolling-back", "uninstalling" while an operation runs; "progressing" (released, resources
not ready yet), "ready", "degraded" (released but a resource failed, e.g. CrashLoopBackOff),
"failed", "absent", "uninstalled", "unknown"; or the phase a workflow states in ``StatusInput.phase``
("completed", "rolled-back", ...).

Ordered writes. A poll write can land after the final write (cancelling the poller does not stop a
store call already running; a retried poller or a slow worker writes late; workers share no clock
or queue). So a write whose input carries ``seq_base`` carries a sequence number, recorded at
``<path>.kduflow.seq``, and its filter matches the document only while the recorded one is lower
or absent: a write older than the one in place matches nothing and changes nothing, on any thread,
worker or retry, without waiting. ``seq = seq_base * SEQ_SPAN + counter``: ``seq_base`` is the
workflow's time in ms when it built the input, so a later status step of a workflow (the rollback
after a failed upgrade) and the next operation on the release (which builds its inputs only once
this one has released the release lock, after its final write) get larger bases. The counter orders the
writes of one input: the poller's count up within an attempt, a later attempt above an earlier one;
``kdu.status`` counts above every poll, a later attempt above an earlier one (its retry replaces
the "status unavailable" record a failed attempt wrote). Documents written before ordering existed
have no ``seq`` and accept the first ordered write; an unordered write (an input without
``seq_base``) replaces the sub-document, ``seq`` included, as writes always did.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import enum
import hashlib
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import errors, kubeconfig_policy
from activities.cluster_env import ClusterEnv, ClusterEnvs
from activities.kubeapi import (
    KubeApi,
    KubeApiBase,
    KubeApiUnsupported,
    KubectlRawApi,
    KubeNotFound,
    load_kubeconfig,
)
from activities.readiness import (
    CURRENT,
    FAILED,
    IN_PROGRESS,
    NOT_FOUND,
    TERMINATING,
    WORKLOAD_KINDS,
    assess,
    not_found,
    pod_culprit,
    reason_of,
    selector_matches,
    workload_selector,
)
from activities.release_storage import ReleaseCache, ReleaseStorage, StoredRelease
from activities.store import Store
from contract import validation
from contract.models import (
    ACTIVITY_NAMES,
    DbDict,
    KduStatusResult,
    PollStatusInput,
    ReleaseRef,
    ReleaseStatus,
    ResourceState,
    StatusInput,
    StatusReport,
)
from kduflow import metrics
from kduflow.config import Settings

#: The SDK's adapter: inside an activity, records carry its ids (message and `extra`).
log = activity.LoggerAdapter(logging.getLogger(__name__), None)

#: Phase words written to ``<path>.kduflow.phase``.
PHASES = (
    "pending", "installing", "upgrading", "scaling", "rolling-back", "uninstalling",
    "progressing", "ready", "degraded", "failed", "absent", "uninstalled", "unknown",
)  # fmt: skip
OPERATION_PHASES = {
    "install": "installing",
    "upgrade": "upgrading",
    "scale": "scaling",
    "rollback": "rolling-back",
    "uninstall": "uninstalling",
}
MAX_DETAILED_STATUS = 1000
MAX_NOT_READY = 10
MAX_ERROR = 300
#: Shortest poll interval honoured: a smaller value would make the poller a hot loop.
MIN_POLL_INTERVAL = 0.2
#: Kinds not fetched: they have no readiness, and reading Secrets would pull secret data into the
#: worker for nothing. They count as present (helm created them or the install failed).
UNFETCHED_KINDS = frozenset({"Secret", "ConfigMap"})

#: Sequence numbers of ordered writes (module docstring): seq = base * SEQ_SPAN + counter, where a
#: poll's counter is attempt * POLL_ATTEMPT_SPAN + its write number in that attempt (both capped,
#: so polls stay below FINAL_SEQ) and kdu.status's counter is FINAL_SEQ + attempt. Polls past the
#: caps (9,999 writes in one poller attempt, attempt 89) reuse the capped numbers, so a write that
#: is not above the recorded seq is refused until the next status step.
SEQ_SPAN = 1_000_000
POLL_ATTEMPT_SPAN = 10_000
MAX_POLL_ATTEMPT = 89
FINAL_SEQ = 900_000
#: The largest base whose sequence numbers fit MongoDB's int64 (ms: the year 2262).
MAX_SEQ_BASE = (2**63 - 1) // SEQ_SPAN - 1

_RELEASE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _invalid(field: str, why: str) -> ApplicationError:
    return errors.to_application_error(errors.InvalidInput(f"{field}: {why}"))


def validate_ref(ref: ReleaseRef, field: str = "ref") -> None:
    """Fail early (non-retryable InvalidInput naming the field) on names that are not Kubernetes
    names; a ``,`` in a release name would otherwise change the storage label selector."""
    if not isinstance(ref.cluster_uuid, str) or not ref.cluster_uuid:
        raise _invalid(f"{field}.cluster_uuid", "must be a non-empty string")
    name = ref.kdu_instance
    if not isinstance(name, str) or len(name) > 53 or not _RELEASE_NAME.match(name):
        raise _invalid(f"{field}.kdu_instance", f"{name!r} is not a valid release name")
    ns = ref.namespace
    if not isinstance(ns, str) or (ns and (len(ns) > 63 or not _NAMESPACE.match(ns))):
        raise _invalid(f"{field}.namespace", f"{ns!r} is not a valid namespace")


def validate_seq_base(value: Any, field: str = "seq_base") -> int:
    """An ordering base: an integer in [0, MAX_SEQ_BASE] (0 = unordered writes)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEQ_BASE:
        raise _invalid(field, f"must be an integer from 0 to {MAX_SEQ_BASE}")
    return value


def poll_seq(base: int, attempt: int, write: int) -> int:
    """The sequence number of a poller's ``write``-th write (from 1) in activity ``attempt``."""
    attempt = min(max(attempt, 1), MAX_POLL_ATTEMPT)
    return base * SEQ_SPAN + attempt * POLL_ATTEMPT_SPAN + min(max(write, 1), POLL_ATTEMPT_SPAN - 1)


def final_seq(base: int, attempt: int) -> int:
    """The sequence number of ``kdu.status``'s write in activity ``attempt``: above every poll."""
    return base * SEQ_SPAN + FINAL_SEQ + min(max(attempt, 1), SEQ_SPAN - FINAL_SEQ - 1)


def validate_db_dict(
    db: Any, allowed_collections: tuple[str, ...] | None = None, field: str = "db_dict"
) -> DbDict:
    """The workflows' ``db_dict`` rules, plus the operator's collection allowlist when given.

    Activities check again what the workflow checked: any workflow (not only kduflow's) can schedule
    these activities on the task queue, so the status target is hostile until checked here too.
    Raises a non-retryable ``InvalidInput`` naming the field; never echoes filter values.
    """
    checked = validation.validate_db_dict(db, field)
    if checked is None:
        raise _invalid(field, "must be an object")
    if allowed_collections is not None:
        validation.check_status_collection(checked, allowed_collections, field)
    return checked


# ------------------------------------------------------------------------------------------------
# Pure document building
# ------------------------------------------------------------------------------------------------


def _clip(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def derive_phase(
    result: KduStatusResult, operation: str = "", *, in_progress: bool = False, error: str = ""
) -> str:
    """The Flux-like phase of an observation (see the module docstring)."""
    status = result.status
    if status == ReleaseStatus.ABSENT.value:
        if in_progress:
            return OPERATION_PHASES.get(operation, "pending")
        return "failed" if error else "absent"
    if status == ReleaseStatus.PENDING_INSTALL.value:
        return "installing"
    if status == ReleaseStatus.PENDING_UPGRADE.value:
        return "scaling" if operation == "scale" else "upgrading"
    if status == ReleaseStatus.PENDING_ROLLBACK.value:
        return "rolling-back"
    if status == ReleaseStatus.UNINSTALLING.value:
        return "uninstalling"
    if status == ReleaseStatus.UNINSTALLED.value:
        return "uninstalled"
    if status == ReleaseStatus.FAILED.value:
        return "failed"
    if status == ReleaseStatus.DEPLOYED.value:
        if result.ready:
            return "ready"
        if any(rs.state == FAILED for rs in result.not_ready):
            return "degraded"
        return "progressing"
    return "unknown"


def status_text(result: KduStatusResult, *, in_progress: bool = False, error: str = "") -> str:
    """OSM's ``status`` field: helm's description, else a one-word state."""
    if result.description:
        return _clip(result.description, MAX_ERROR)
    if result.status == ReleaseStatus.ABSENT.value:
        if in_progress:
            return "pending"
        return "failed" if error else "absent"
    return result.status


def detailed_status(result: KduStatusResult, *, error: str = "") -> str:
    """The short readable summary for ``detailed-status`` (capped at MAX_DETAILED_STATUS chars)."""
    if result.status == ReleaseStatus.ABSENT.value:
        text = "release absent"
    else:
        text = f"{result.status} rev {result.revision}"
        if result.total_resources:
            text += f": {result.ready_resources}/{result.total_resources} resources ready"
        if result.not_ready:
            shown = ", ".join(f"{rs.kind} {rs.name} ({reason_of(rs)})" for rs in result.not_ready[:3])
            more = len(result.not_ready) - 3
            text += f"; not ready: {shown}" + (f" and {more} more" if more > 0 else "")
    if error:
        text += f"; error: {_clip(error, MAX_ERROR)}"
    return _clip(text, MAX_DETAILED_STATUS)


def build_status_update(
    path: str,
    operation: str,
    result: KduStatusResult,
    *,
    phase: str = "",
    error: str = "",
    in_progress: bool = False,
    now: float | None = None,
) -> dict[str, Any]:
    """The ``$set`` document for one status write (pure; no values, manifests, notes or secrets).

    ``phase`` overrides the derived phase; ``error`` is recorded as ``last_error`` (clipped).
    """
    now = time.time() if now is None else now
    prefix = path.strip(".")
    not_ready = [
        {"kind": rs.kind, "name": rs.name, "namespace": rs.namespace, "state": rs.state,
         "reason": _clip(reason_of(rs), 200)}
        for rs in result.not_ready[:MAX_NOT_READY]
    ]  # fmt: skip
    sub = {
        "phase": phase or derive_phase(result, operation, in_progress=in_progress, error=error),
        "operation": operation,
        "release_status": result.status,
        "revision": result.revision,
        "chart": result.chart,
        "app_version": result.app_version,
        "released": result.status == ReleaseStatus.DEPLOYED.value,
        "ready": bool(result.ready),
        "ready_resources": result.ready_resources,
        "total_resources": result.total_resources,
        "not_ready": not_ready,
        "not_ready_count": len(result.not_ready),
        "last_error": _clip(error, MAX_ERROR) if error else "",
        "observed_at": datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat(timespec="seconds"),
    }
    return {
        f"{prefix}.operation": operation,
        f"{prefix}.status": status_text(result, in_progress=in_progress, error=error),
        f"{prefix}.detailed-status": detailed_status(result, error=error),
        f"{prefix}.status-time": str(now),
        f"{prefix}.kduflow": sub,
    }


def status_digest(update: Mapping[str, Any]) -> str:
    """A digest of a status update ignoring its timestamps, to write only on change."""
    stable: dict[str, Any] = {}
    for key, value in update.items():
        if key.endswith(".status-time"):
            continue
        if key.endswith(".kduflow") and isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if k not in ("observed_at", "seq")}
        stable[key] = value
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()


# ------------------------------------------------------------------------------------------------
# Observation
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjRef:
    """Identity of one manifest object (nothing else of it is kept)."""

    api_version: str
    kind: str
    name: str
    namespace: str  # "" = release namespace or cluster-scoped, decided with discovery


def manifest_objects(manifest: str) -> list[ObjRef]:
    """Identities of the objects of a YAML stream (``kind: List`` expanded); unparseable docs skipped."""
    refs: list[ObjRef] = []
    seen: set[ObjRef] = set()
    try:
        docs = list(yaml.safe_load_all(manifest))
    except yaml.YAMLError:
        log.warning("release manifest is not valid YAML; its resources are not observed")
        return []

    def add(doc: Any) -> None:
        if not isinstance(doc, Mapping):
            return
        if str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
            for item in doc["items"]:
                add(item)
            return
        meta = doc.get("metadata") or {}
        if not (doc.get("apiVersion") and doc.get("kind") and isinstance(meta, Mapping) and meta.get("name")):
            return
        ref = ObjRef(
            str(doc["apiVersion"]), str(doc["kind"]), str(meta["name"]), str(meta.get("namespace") or "")
        )
        if ref not in seen:
            seen.add(ref)
            refs.append(ref)

    for doc in docs:
        add(doc)
    return refs


def _severity(rs: ResourceState, has_culprit: bool) -> int:
    if rs.state == FAILED:
        return 0
    if has_culprit:
        return 1
    if rs.state == NOT_FOUND:
        return 2
    if rs.state == IN_PROGRESS:
        return 3 if rs.kind in WORKLOAD_KINDS else 4
    if rs.state == TERMINATING:
        return 5
    return 6


def _selector_string(selector: Mapping[str, Any]) -> str | None:
    """``matchLabels`` as a labelSelector query (expressions are filtered client-side)."""
    labels = selector.get("matchLabels") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or None


class WriteOutcome(enum.Enum):
    """What a status write did; true only for WRITTEN."""

    WRITTEN = "written"
    #: Ordered write refused: the document holds a write at least as new (nothing changed).
    STALE = "stale"
    NO_DOCUMENT = "no-document"

    def __bool__(self) -> bool:
        return self is WriteOutcome.WRITTEN


class StatusActivities:
    """The ``kdu.status`` and ``kdu.poll_status`` activities, with their API clients cached per cluster.

    Args:
        settings: ``kubectl`` is used only for clusters whose kubeconfig needs an exec plugin.
        envs: cluster environments (kubeconfig path, env for kubectl).
        store: where status documents are written.
        helm_driver: helm's storage driver ("secret" or "configmap").
    """

    def __init__(
        self, settings: Settings, envs: ClusterEnvs, store: Store, *, helm_driver: str = "secret"
    ) -> None:
        self.settings = settings
        self.envs = envs
        self.store = store
        self.helm_driver = helm_driver
        self._clients: dict[str, tuple[str, KubeApiBase]] = {}
        self._client_lock = asyncio.Lock()
        #: cluster_uuid -> the content hash whose servers passed the network check.
        self._servers_checked: dict[str, str] = {}
        self._release_cache = ReleaseCache(256)
        #: Ordered writes refused as stale since start (a newer write was in place).
        self.stale_writes = 0
        self._inventory_cache: collections.OrderedDict[tuple[str, str, int, int], list[ObjRef]] = (
            collections.OrderedDict()
        )

    # -- clients -----------------------------------------------------------------------------

    async def api_for(self, cluster_uuid: str, *, refresh: bool = False) -> KubeApiBase:
        """The cached API client of a cluster, rebuilt when its credentials changed.

        Before a client is built, the kubeconfig's cluster servers pass the network check
        (:func:`activities.kubeconfig_policy.check_cluster_servers`), once per cluster and content
        hash; the :class:`KubeApi` client then judges the addresses again at each connection.

        Raises the ApplicationErrors of ``ClusterEnvs.get`` (ClusterNotFound, CredentialsInvalid,
        InvalidInput), ApplicationError ``CredentialsInvalid`` for a server outside the allowed
        networks, and errors.InvalidInput for a malformed kubeconfig.
        """
        async with self._client_lock:
            cached = self._clients.get(cluster_uuid)
            if cached is not None and not refresh:
                return cached[1]
            env = await self.envs.get(cluster_uuid)
            if cached is not None and cached[0] == env.content_hash:
                return cached[1]
            await self._check_servers(env)
            api = self._make_api(env)
            if cached is not None:
                await cached[1].close()
            self._clients[cluster_uuid] = (env.content_hash, api)
            return api

    async def _check_servers(self, env: ClusterEnv) -> None:
        """The network check of the cluster servers, before any client connects (the kubectl
        fallback included); its verdict is kept per cluster and content hash."""
        if self._servers_checked.get(env.cluster_uuid) == env.content_hash:
            return
        try:
            config = kubeconfig_policy.check_kubeconfig(
                await asyncio.to_thread(load_kubeconfig, env.kubeconfig), exec_plugins=None, allow_proxy=True
            )
            await kubeconfig_policy.check_cluster_servers(
                config,
                self.settings,
                subject=f"credentials of cluster {env.cluster_uuid!r}",
                getaddrinfo=getattr(self.envs, "getaddrinfo", None),
            )
        except (errors.CredentialsInvalid, errors.InvalidInput) as err:
            raise errors.to_application_error(err) from None
        self._servers_checked[env.cluster_uuid] = env.content_hash

    def _make_api(self, env: ClusterEnv) -> KubeApiBase:
        try:
            return KubeApi.from_kubeconfig(
                env.kubeconfig, private_networks=getattr(self.settings, "private_networks", ())
            )
        except KubeApiUnsupported as exc:
            # Exec/auth-provider credentials: let kubectl run the plugin (a process per request).
            log.info("cluster %s: %s; status reads go through kubectl", env.cluster_uuid, exc)
            return KubectlRawApi(self.settings.kubectl, env.env)

    async def close(self) -> None:
        """Close every cached client (worker shutdown)."""
        async with self._client_lock:
            clients, self._clients = list(self._clients.values()), {}
        for _, api in clients:
            await api.close()

    # -- observation -------------------------------------------------------------------------

    def _inventory(self, release: StoredRelease) -> list[ObjRef]:
        key = (release.namespace, release.name, release.version, hash(release.manifest))
        found = self._inventory_cache.get(key)
        if found is None:
            found = manifest_objects(release.manifest)
            self._inventory_cache[key] = found
            if len(self._inventory_cache) > 256:
                self._inventory_cache.popitem(last=False)
        else:
            self._inventory_cache.move_to_end(key)
        return found

    async def observe(self, ref: ReleaseRef, api: KubeApiBase | None = None) -> KduStatusResult:
        """Release record + readiness of its resources. An absent release has status "absent".

        Raises the errors of :mod:`activities.kubeapi` (errors.KduflowError subclasses).
        """
        api = api or await self.api_for(ref.cluster_uuid)
        namespace = ref.namespace or "default"
        storage = ReleaseStorage(api, self.helm_driver, self._release_cache)
        release = await storage.latest(ref.kdu_instance, namespace)
        if release is None:
            return KduStatusResult(
                kdu_instance=ref.kdu_instance,
                namespace=namespace,
                status=ReleaseStatus.ABSENT.value,
                ready=False,
            )
        states = await self._resource_states(api, self._inventory(release), namespace)
        not_ready = [
            rs for rs, _ in sorted(((rs, key) for rs, key in states if not rs.ready), key=lambda x: x[1])
        ]
        ready_count = sum(1 for rs, _ in states if rs.ready)
        return KduStatusResult(
            kdu_instance=release.name or ref.kdu_instance,
            namespace=namespace,
            revision=release.version,
            status=release.status,
            description=release.description,
            chart=release.chart,
            app_version=release.app_version,
            ready=release.status == ReleaseStatus.DEPLOYED.value and not not_ready,
            ready_resources=ready_count,
            total_resources=len(states),
            not_ready=not_ready,
            notes=release.notes,
        )

    async def _resource_states(
        self, api: KubeApiBase, refs: list[ObjRef], release_ns: str
    ) -> list[tuple[ResourceState, tuple[int, int]]]:
        """(state, sort key) per manifest object, in manifest order; the key puts the culprit first."""
        groups: dict[tuple[str, str, str], list[tuple[int, ObjRef]]] = {}
        resolved: list[tuple[int, ObjRef, str] | None] = [None] * len(refs)
        for index, ref in enumerate(refs):
            if ref.kind in UNFETCHED_KINDS:
                continue
            resource = await api.resource_for(ref.api_version, ref.kind)
            if resource is None:
                continue
            plural, namespaced = resource
            ns = (ref.namespace or release_ns) if namespaced else ""
            resolved[index] = (index, ref, ns)
            groups.setdefault((ref.api_version, plural, ns), []).append((index, ref))

        live: dict[int, dict[str, Any]] = {}

        async def fetch(key: tuple[str, str, str], members: list[tuple[int, ObjRef]]) -> None:
            api_version, plural, ns = key
            if len(members) == 1:
                index, ref = members[0]
                obj = await api.get_object(ref.api_version, ref.kind, ns or None, ref.name)
                if obj is not None:
                    live[index] = obj
                return
            # Several objects of one kind in one namespace: one LIST instead of one GET each.
            try:
                items = await api.list(api_version, plural, ns or None)
            except KubeNotFound:
                items = []
            by_name = {str((item.get("metadata") or {}).get("name")): item for item in items}
            for index, ref in members:
                if ref.name in by_name:
                    live[index] = by_name[ref.name]

        # The requests of one observation go out side by side (the client keeps several connections).
        await asyncio.gather(*(fetch(key, members) for key, members in groups.items()))

        states: dict[int, ResourceState] = {}
        for index, ref in enumerate(refs):
            entry = resolved[index]
            ns = entry[2] if entry else (ref.namespace or release_ns)
            if ref.kind in UNFETCHED_KINDS:
                states[index] = ResourceState(
                    ref.kind, ref.name, ns, CURRENT, True, f"{ref.kind} {ref.name}: present"
                )
            elif entry is None:
                rs = not_found(ref.kind, ref.name, ns)
                rs.message = f"{ref.kind} {ref.name}: kind {ref.api_version} not served by the cluster"
                states[index] = rs
            elif index not in live:
                states[index] = not_found(ref.kind, ref.name, ns)
            else:
                states[index] = assess(live[index])

        culprits = await self._name_culprits(api, live, states)
        return [
            (states[i], (_severity(states[i], i in culprits), i))
            for i in range(len(refs))
        ]  # fmt: skip

    async def _name_culprits(
        self, api: KubeApiBase, live: Mapping[int, dict[str, Any]], states: dict[int, ResourceState]
    ) -> set[int]:
        """Re-assess not-ready workloads with their Pods; returns the indexes that got a Pod culprit.

        One Pod LIST per namespace (label-selected when a single workload is concerned)."""
        by_ns: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
        for index, obj in live.items():
            selector = workload_selector(obj)
            if selector is None or states[index].ready or states[index].state == TERMINATING:
                continue
            by_ns.setdefault(states[index].namespace, []).append((index, selector))
        culprits: set[int] = set()
        for ns, workloads in by_ns.items():
            label_selector = _selector_string(workloads[0][1]) if len(workloads) == 1 else None
            try:
                pods = await api.list("v1", "pods", ns or None, label_selector=label_selector)
            except KubeNotFound:
                continue
            for index, selector in workloads:
                related = [
                    p for p in pods if selector_matches(selector, (p.get("metadata") or {}).get("labels"))
                ]
                if not related:
                    continue
                culprit = pod_culprit(related)
                if culprit is not None and culprit[1]:
                    culprits.add(index)
                states[index] = assess(live[index], related_pods=related)
        return culprits

    # -- writes ------------------------------------------------------------------------------

    async def write_status(
        self, db: DbDict, update: Mapping[str, Any], *, seq: int | None = None
    ) -> WriteOutcome:
        """``$set`` the update on ``db.filter`` in ``db.collection``.

        With ``seq`` the write is ordered (module docstring): ``seq`` is recorded at
        ``<path>.kduflow.seq`` and the filter also requires the recorded one to be lower or absent.
        Returns WRITTEN; STALE (logged at debug, counted in ``stale_writes``) when the document
        holds a write at least as new; NO_DOCUMENT (logged) when no document matches ``db.filter``
        (told apart from STALE by one more find, only when nothing matched). The target is checked
        against the policy before every write. Store errors propagate (retryable).
        """
        db = validate_db_dict(db, self.settings.status_collections)
        filter: dict[str, Any] = dict(db.filter)
        fields = dict(update)
        if seq is not None:
            if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 2**63:
                raise _invalid("seq", "must be an integer that fits 64 bits")
            prefix = db.path.strip(".")
            sub_key, seq_key = f"{prefix}.kduflow", f"{prefix}.kduflow.seq"
            sub = fields.get(sub_key)
            if isinstance(sub, Mapping):
                fields[sub_key] = {**sub, "seq": seq}
            else:
                fields[seq_key] = seq
            # Added after validation, which admits plain field names only: the caller's filter can
            # hold no operator, and this is the one key of the filter that is one.
            filter["$or"] = [{seq_key: {"$lt": seq}}, {seq_key: {"$exists": False}}]
        matched = await self.store.update_one(db.collection, filter, {"$set": fields})
        if matched:
            metrics.status_write("written")
            return WriteOutcome.WRITTEN
        if seq is not None and await self.store.find_one(db.collection, dict(db.filter), {"_id": 1}):
            self.stale_writes += 1
            log.debug("status write with seq %d refused: %s holds one at least as new", seq, db.collection)
            metrics.status_write("stale")
            return WriteOutcome.STALE
        metrics.status_write("no_document")
        # Filter values can be anything a caller chose: log the field names only.
        log.warning(
            "status write: no document in %s matches the filter on %s",
            db.collection, ", ".join(sorted(db.filter)),
        )
        return WriteOutcome.NO_DOCUMENT

    # -- activities --------------------------------------------------------------------------

    @activity.defn(name=ACTIVITY_NAMES["status"])
    async def status(self, input: StatusInput) -> KduStatusResult:
        """Observe a release; with ``db_dict``, write its status (OSM fields + ``kduflow``).

        The write also happens after a failed operation: when the release is gone (an atomic
        install purged it), the record says phase ``input.phase`` (default "failed"), release
        status "absent" and ``last_error`` = ``input.error`` -- N2VC lost this final status.
        When the cluster cannot be observed, the error is still recorded (release_status
        "unknown") before the (retryable or not) error is raised.
        """
        validate_ref(input.ref)
        if input.db_dict is not None:
            validate_db_dict(input.db_dict, self.settings.status_collections)
        base = validate_seq_base(input.seq_base)
        seq = final_seq(base, activity.info().attempt) if base else None
        # A one-shot call re-reads the credentials (they may have been rotated since the last use).
        api = await self.api_for(input.ref.cluster_uuid, refresh=True)
        try:
            result = await self.observe(input.ref, api)
        except (errors.KduflowError, KubeNotFound) as exc:
            err = exc if isinstance(exc, errors.KduflowError) else errors.ServerError(str(exc))
            if input.db_dict is not None:
                unknown = KduStatusResult(
                    input.ref.kdu_instance,
                    input.ref.namespace or "default",
                    status=ReleaseStatus.UNKNOWN.value,
                )
                message = "; ".join(m for m in (input.error, f"status unavailable: {err.message}") if m)
                update = build_status_update(
                    input.db_dict.path,
                    input.operation,
                    unknown,
                    phase=input.phase or "unknown",
                    error=message,
                )
                await self.write_status(input.db_dict, update, seq=seq)
            raise errors.to_application_error(err) from None
        if input.db_dict is not None:
            phase = input.phase
            if not phase and input.error and result.status == ReleaseStatus.ABSENT.value:
                phase = "failed"
            update = build_status_update(
                input.db_dict.path, input.operation, result, phase=phase, error=input.error
            )
            await self.write_status(input.db_dict, update, seq=seq)
        return result

    @activity.defn(name=ACTIVITY_NAMES["poll_status"])
    async def poll_status(self, input: PollStatusInput) -> None:
        """Observe every ``interval`` seconds and write on change, until cancelled.

        What workflows recorded before helm activities reported status themselves still schedule
        (``StatusReport``); the observation loop is the same. Heartbeats every loop with ``{polls,
        writes, stale, errors, phase, requests}`` (see :class:`StatusReporter`). Re-raises
        CancelledError. Schedule with a heartbeat timeout larger than ``interval``.
        """
        validate_ref(input.ref)
        validate_db_dict(input.db_dict, self.settings.status_collections)
        base = validate_seq_base(input.seq_base)
        reporter = StatusReporter(
            self, input.ref, input.db_dict, input.operation, base, activity.info().attempt
        )
        await reporter.run(max(float(input.interval), MIN_POLL_INTERVAL), heartbeat=True)

    def reporter(self, ref: ReleaseRef, report: StatusReport, attempt: int) -> StatusReporter:
        """A reporter for a helm activity's own status writes (checked like ``kdu.poll_status``'s)."""
        validate_ref(ref)
        validate_db_dict(report.db_dict, self.settings.status_collections)
        base = validate_seq_base(report.seq_base)
        return StatusReporter(self, ref, report.db_dict, report.operation, base, attempt)


class StatusReporter:
    """The status of one release during one operation step: observed on a timer, written on change,
    then (optionally) a final write that outranks every progress write.

    Used by ``kdu.poll_status`` and, in this process, by the mutating helm activities themselves:
    observing in the activity that runs helm needs no second activity, no cancellation round trip
    and no waiting before the final write. Writes are ordered (``seq``), so a progress write that
    lands late on the store's thread changes nothing after the final one.
    """

    def __init__(
        self,
        status: StatusActivities,
        ref: ReleaseRef,
        db_dict: DbDict,
        operation: str,
        seq_base: int,
        attempt: int,
    ) -> None:
        self.status = status
        self.ref = ref
        self.db_dict = db_dict
        self.operation = operation
        self.base = seq_base
        self.attempt = attempt
        self.polls = self.writes = self.stale = self.failures = 0
        self._sent = 0  # write attempts: the counter of their seq
        self._last_digest = ""
        self._phase = ""
        self._refresh = True  # re-read the credentials once, then on CredentialsInvalid

    async def poll_once(self) -> int:
        """One observation, written if it changed. Returns the API requests it took. Transient
        failures (API, store) are counted and logged at debug; nothing is written for them."""
        self.polls += 1
        requests = 0
        try:
            api = await self.status.api_for(self.ref.cluster_uuid, refresh=self._refresh)
            self._refresh = False
            before = api.requests
            result = await self.status.observe(self.ref, api)
            requests = api.requests - before
            update = build_status_update(self.db_dict.path, self.operation, result, in_progress=True)
            self._phase = update[f"{self.db_dict.path.strip('.')}.kduflow"]["phase"]
            digest = status_digest(update)
            if digest != self._last_digest:
                self._sent += 1
                seq = poll_seq(self.base, self.attempt, self._sent) if self.base else None
                outcome = await self.status.write_status(self.db_dict, update, seq=seq)
                # A stale write is not retried: a newer one is in place.
                self._last_digest = digest
                if outcome is WriteOutcome.STALE:
                    self.stale += 1
                else:
                    self.writes += 1
        except (errors.KduflowError, ApplicationError, KubeNotFound, OSError) as exc:
            self.failures += 1
            log.debug("poll %d of %s failed: %s", self.polls, self.ref.kdu_instance, exc)
            # Credentials may have been rotated in the store: re-read them next time.
            self._refresh = isinstance(exc, errors.CredentialsInvalid)
        except Exception:  # reporting must not die of one odd observation; it is not the operation
            self.failures += 1
            log.warning("poll %d of %s failed unexpectedly", self.polls, self.ref.kdu_instance, exc_info=True)
        return requests

    async def run(self, interval: float, *, heartbeat: bool = False) -> None:
        """Poll every ``interval`` seconds until cancelled (re-raises CancelledError)."""
        interval = max(interval, MIN_POLL_INTERVAL)
        try:
            while True:
                requests = await self.poll_once()
                if heartbeat:
                    activity.heartbeat(
                        {
                            "polls": self.polls,
                            "writes": self.writes,
                            "stale": self.stale,
                            "errors": self.failures,
                            "phase": self._phase,
                            "requests": requests,
                        }
                    )
                await asyncio.sleep(interval)
        except asyncio.CancelledError:
            log.debug(
                "status of %s: %d polls, %d writes", self.ref.kdu_instance, self.polls, self.writes
            )
            raise

    async def final(self, phase: str) -> KduStatusResult | None:
        """Observe once more and write ``phase`` above every progress write; best effort (None when
        the observation or the write failed: the caller's own final write then takes over)."""
        seq = final_seq(self.base, self.attempt) if self.base else None
        try:
            api = await self.status.api_for(self.ref.cluster_uuid)
            result = await self.status.observe(self.ref, api)
            update = build_status_update(self.db_dict.path, self.operation, result, phase=phase)
            outcome = await self.status.write_status(self.db_dict, update, seq=seq)
        except (errors.KduflowError, ApplicationError, KubeNotFound, OSError) as exc:
            log.info("final status of %s not written here: %s", self.ref.kdu_instance, exc)
            return None
        if outcome is not WriteOutcome.WRITTEN:
            return None
        self.writes += 1
        return result
