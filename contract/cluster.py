"""Inputs and results of the cluster and repository workflows and activities (issue 4).

I/O-free and standard-library only, so workflows import it inside ``imports_passed_through``. Like
``activities/models.py``, fields are only ever added, with defaults. No secret travels in these
types except ``InitClusterInput.k8s_creds`` / ``StoreCredentialsInput.k8s_creds`` (N2VC's interface):
repository passwords and CA certificates are read from the store by the activities themselves.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

#: ``_admin`` sub-document N2VC's helm 3 connector state lives in.
HELM_V3_ADMIN_KEY = "helm-chart-v3"
#: Key of the configured "stable" repository in ``_admin.kduflow_repos`` (never a k8srepos id:
#: those are uuids, and ":" cannot start one).
STABLE_REPO_KEY = ":stable"
STABLE_REPO_NAME = "stable"


# ----------------------------------------------------------------------------------------------
# Workflow inputs / results.
# ----------------------------------------------------------------------------------------------


@dataclass
class InitClusterInput:
    """``InitCluster``: N2VC ``init_env(k8s_creds, namespace, reuse_cluster_uuid)``."""

    cluster_uuid: str = ""
    #: Kubeconfig as YAML. Lands in workflow history: only pass it with the payload codec on;
    #: otherwise store it in ``k8sclusters.credentials`` first and leave this empty.
    k8s_creds: str = ""
    namespace: str = "kube-system"
    reuse_cluster_uuid: str = ""
    #: Run SyncRepos every this many seconds (0 = the worker default, negative = no schedule).
    sync_interval_s: int = 0
    #: Replace the credentials of an already registered cluster when ``k8s_creds`` differs from
    #: them (recorded in ``_admin.kduflow.credentials_replaced``); without it that is ClusterExists.
    replace_credentials: bool = False


@dataclass
class InitClusterResult:
    cluster_uuid: str
    #: N2VC's ``n2vc_installed_sw``: helm 3 installs nothing in the cluster, so always False.
    installed_sw: bool = False
    server_version: str = ""
    namespace_created: bool = False
    stable_repo_added: bool = False
    schedule_id: str = ""


@dataclass
class ResetClusterInput:
    cluster_uuid: str
    #: Uninstall releases (pending ones included) when uninstall_sw is set; without it they are kept.
    force: bool = False
    uninstall_sw: bool = False


@dataclass
class ResetRecord:
    """What a ResetCluster did with the cluster's releases, recorded in ``_admin.kduflow_reset``.

    Entries are ``"namespace/name"``. ``failed`` maps a release to the error of its uninstall.
    """

    workflow_id: str = ""
    uninstall_sw: bool = False
    force: bool = False
    uninstalled: list[str] = field(default_factory=list)
    #: Releases left in place because ``force`` was off.
    kept: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class SyncReposInput:
    cluster_uuid: str


@dataclass
class SyncReposResult:
    """What SyncRepos changed. Keys and list entries are always k8srepos ids (N2VC mixed ids and
    names, as OSM does); ``added`` maps id -> repository name like ``_admin.helm_charts_added``."""

    deleted: list[str] = field(default_factory=list)
    added: dict[str, str] = field(default_factory=dict)
    #: id -> error message, for repositories that could not be removed, added, or found.
    failed: dict[str, str] = field(default_factory=dict)
    #: Ids listed in ``_admin.helm_chart_repos`` with no k8srepos document (also in ``failed``).
    unknown: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Activity inputs / results.
# ----------------------------------------------------------------------------------------------


@dataclass
class ClusterRef:
    cluster_uuid: str


@dataclass
class StoreCredentialsInput:
    cluster_uuid: str
    #: Kubeconfig YAML (see InitClusterInput.k8s_creds).
    k8s_creds: str
    namespace: str = ""
    #: See InitClusterInput.replace_credentials.
    replace_credentials: bool = False
    #: The workflow asking, recorded with a replacement ("" = the calling activity's workflow).
    workflow_id: str = ""


@dataclass
class VerifyClusterResult:
    #: e.g. "v1.31.0"
    server_version: str = ""
    platform: str = ""


@dataclass
class EnsureNamespaceInput:
    cluster_uuid: str
    namespace: str


@dataclass
class EnsureNamespaceResult:
    namespace: str
    created: bool = False


@dataclass
class ClusterState:
    """``k8sclusters._admin.helm-chart-v3`` as OSM's LCM writes it."""

    id: str
    created: bool = False
    #: "ENABLED", "ERROR" or "DISABLED"
    operationalState: str = "ENABLED"  # noqa: N815 - OSM's field name
    error_msg: str = ""


@dataclass
class RecordStateInput:
    cluster_uuid: str
    state: ClusterState
    #: ResetCluster's outcome, written to ``_admin.kduflow_reset`` beside the state (None = none).
    reset: ResetRecord | None = None


@dataclass
class UninstallAllInput:
    """Input of the legacy ``cluster.uninstall_all`` activity (ResetCluster histories recorded
    before it uninstalled each release through an UninstallKdu child workflow)."""

    cluster_uuid: str
    #: Without force nothing is uninstalled; the releases found are reported as kept.
    force: bool = False
    timeout: int = 300


@dataclass
class UninstallAllResult:
    uninstalled: list[str] = field(default_factory=list)
    #: "namespace/name" of releases left in place (force was off).
    kept: list[str] = field(default_factory=list)
    #: "namespace/name" -> error message
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class ScheduleInput:
    cluster_uuid: str
    #: Seconds between SyncRepos runs; 0 = the worker default.
    interval_s: int = 0
    #: Task queue of the SyncRepos workflow; "" = the task queue of the calling activity.
    task_queue: str = ""


@dataclass
class ScheduleResult:
    schedule_id: str
    #: "created", "updated", "deleted", "absent"
    action: str = ""
    interval_s: int = 0
    #: Deleting: workflow ids of the schedule's running SyncRepos runs that were asked to cancel.
    cancelled: list[str] = field(default_factory=list)


@dataclass
class RepoRef:
    """A repository of a cluster, by k8srepos id (the activity reads url and credentials itself)."""

    cluster_uuid: str
    repo_id: str
    #: Name the repository is configured under locally (remove); "" = look it up.
    name: str = ""


@dataclass
class RepoAddResult:
    repo_id: str
    name: str
    url: str = ""
    oci: bool = False
    #: False when helm already had this exact entry ("skipping").
    changed: bool = True


@dataclass
class RepoRemoveResult:
    repo_id: str
    name: str = ""
    #: False when the repository was not configured (idempotent success).
    existed: bool = True


@dataclass
class RepoUpdateInput:
    cluster_uuid: str
    #: Repository names; empty = every configured (non-OCI) repository.
    names: list[str] = field(default_factory=list)


@dataclass
class RepoUpdateResult:
    updated: list[str] = field(default_factory=list)


@dataclass
class RepoInfo:
    """A repository as workflows see it: never a password or certificate."""

    id: str
    name: str
    url: str
    oci: bool = False
    #: Digest of url + username + CA + password (salted, slow hash): changes when any of them does.
    fingerprint: str = ""


@dataclass
class RepoListResult:
    repos: list[RepoInfo] = field(default_factory=list)


@dataclass
class DesiredReposResult:
    """``repo.desired``: what the store wants and what kduflow configured, secrets stripped."""

    desired: list[RepoInfo] = field(default_factory=list)
    #: From ``_admin.kduflow_repos`` / ``_admin.helm_charts_added`` (stable excluded).
    configured: list[RepoInfo] = field(default_factory=list)
    #: Ids in ``_admin.helm_chart_repos`` without a k8srepos document.
    unknown: list[str] = field(default_factory=list)


@dataclass
class RecordSyncInput:
    cluster_uuid: str
    result: SyncReposResult


@dataclass
class AddStableResult:
    added: bool = False
    url: str = ""
    error: str = ""



# ----------------------------------------------------------------------------------------------
# RepoAdd / RepoList / RepoRemove (N2VC repo_add / repo_list / repo_remove on one cluster).
# ----------------------------------------------------------------------------------------------


@dataclass
class RepoAddInput:
    """``RepoAdd``: N2VC ``repo_add(cluster_uuid, name, url, repo_type="chart", cert=None, user=None,
    password=None, oci=False)``.

    Registers the repository as OSM's NBI does (a ``k8srepos`` document, its id in the cluster's
    ``_admin.helm_chart_repos``) and adds it to the cluster, so the next SyncRepos keeps it. The
    password lands in workflow history (encrypted with the payload codec on); it is stored encrypted
    when the worker has ``KDUFLOW_SECRET_KEY`` and reaches helm on stdin only.
    """

    cluster_uuid: str
    name: str
    url: str
    #: "chart" (N2VC) or "helm-chart" (OSM's k8srepos type); nothing else is a helm repository.
    repo_type: str = "chart"
    #: CA certificate (PEM) of the repository's server ("" = system CAs).
    cert: str = ""
    user: str = ""
    password: str = ""
    #: An OCI registry (``oci://host[:port]/path`` or ``host[:port]/path``) instead of an index.
    oci: bool = False


@dataclass
class RepoListInput:
    """``RepoList``: N2VC ``repo_list(cluster_uuid)``."""

    cluster_uuid: str


@dataclass
class RepoRemoveInput:
    """``RepoRemove``: N2VC ``repo_remove(cluster_uuid, name)``."""

    cluster_uuid: str
    name: str


@dataclass
class RegisterRepoInput:
    """``repo.register``: write (or reuse) the k8srepos document and list it on the cluster."""

    cluster_uuid: str
    #: Id for a new document (the workflow's uuid4); an existing document of the same name and URL
    #: keeps its own id.
    new_id: str
    name: str
    url: str
    cert: str = ""
    user: str = ""
    password: str = ""
    oci: bool = False


@dataclass
class RegisterRepoResult:
    repo_id: str
    #: False when a document of that name and URL existed (its credentials were updated).
    created: bool = True


@dataclass
class UnregisterRepoInput:
    """``repo.unregister``: take the repository called ``name`` off the cluster's desired list."""

    cluster_uuid: str
    name: str


@dataclass
class UnregisterRepoResult:
    #: The k8srepos id (or STABLE_REPO_KEY) the name belonged to; "" when the cluster knows no
    #: repository of that name.
    repo_id: str = ""

CLUSTER_ACTIVITY_NAMES = {
    # activities/clusters.py
    "verify": "cluster.verify",  # ClusterRef -> VerifyClusterResult
    "store_credentials": "cluster.store_credentials",  # StoreCredentialsInput -> None
    "ensure_namespace": "cluster.ensure_namespace",  # EnsureNamespaceInput -> EnsureNamespaceResult
    "record_state": "cluster.record_state",  # RecordStateInput -> None
    "uninstall_all": "cluster.uninstall_all",  # UninstallAllInput -> UninstallAllResult (legacy)
    "forget": "cluster.forget",  # ClusterRef -> None
    "upsert_schedule": "cluster.upsert_schedule",  # ScheduleInput -> ScheduleResult
    "delete_schedule": "cluster.delete_schedule",  # ClusterRef -> ScheduleResult
    # activities/repos.py
    "repo_add": "repo.add",  # RepoRef -> RepoAddResult
    "repo_remove": "repo.remove",  # RepoRef -> RepoRemoveResult
    "repo_update": "repo.update",  # RepoUpdateInput -> RepoUpdateResult
    "repo_list": "repo.list",  # ClusterRef -> RepoListResult
    "registry_login": "registry.login",  # RepoRef -> RepoAddResult
    "repo_desired": "repo.desired",  # ClusterRef -> DesiredReposResult
    "repo_record_sync": "repo.record_sync",  # RecordSyncInput -> None
    "repo_add_stable": "repo.add_stable",  # ClusterRef -> AddStableResult
    "repo_register": "repo.register",  # RegisterRepoInput -> RegisterRepoResult
    "repo_unregister": "repo.unregister",  # UnregisterRepoInput -> UnregisterRepoResult
}


def schedule_id_for(cluster_uuid: str) -> str:
    """Id of the per-cluster Temporal Schedule that runs SyncRepos."""
    return f"kduflow-sync-repos-{cluster_uuid}"


#: Longest parent workflow id used verbatim in a child id; longer ones are shortened with a digest
#: (Temporal refuses workflow ids over 1000 characters by default).
_MAX_PARENT_ID = 200


def uninstall_child_id(parent_workflow_id: str, namespace: str, name: str) -> str:
    """Id of the UninstallKdu child ResetCluster starts for one release.

    A function of the parent's workflow id and the release only: a re-run of the same reset (a
    retry under the same workflow id, a reset of its history) addresses the same child instead of
    starting a second uninstall of the release.
    """
    parent = parent_workflow_id
    if len(parent) > _MAX_PARENT_ID:
        digest = hashlib.sha256(parent.encode("utf-8")).hexdigest()[:16]
        parent = f"{parent[:_MAX_PARENT_ID - 17]}-{digest}"
    return f"{parent}/uninstall/{namespace}/{name}"


def as_dict(obj: Any) -> dict[str, Any]:
    """Shallow dict of a dataclass (for store documents)."""
    return {k: getattr(obj, k) for k in obj.__dataclass_fields__}

__all__ = [
    "UnregisterRepoResult",
    "UnregisterRepoInput",
    "RegisterRepoResult",
    "RegisterRepoInput",
    "RepoRemoveInput",
    "RepoListInput",
    "RepoAddInput",
    "AddStableResult",
    "CLUSTER_ACTIVITY_NAMES",
    "ClusterRef",
    "ClusterState",
    "DesiredReposResult",
    "EnsureNamespaceInput",
    "EnsureNamespaceResult",
    "HELM_V3_ADMIN_KEY",
    "InitClusterInput",
    "InitClusterResult",
    "RecordStateInput",
    "RecordSyncInput",
    "RepoAddResult",
    "RepoInfo",
    "RepoListResult",
    "RepoRef",
    "RepoRemoveResult",
    "RepoUpdateInput",
    "RepoUpdateResult",
    "ResetClusterInput",
    "ResetRecord",
    "STABLE_REPO_KEY",
    "STABLE_REPO_NAME",
    "ScheduleInput",
    "ScheduleResult",
    "StoreCredentialsInput",
    "SyncReposInput",
    "SyncReposResult",
    "UninstallAllInput",
    "UninstallAllResult",
    "VerifyClusterResult",
    "as_dict",
    "schedule_id_for",
    "uninstall_child_id",
]
