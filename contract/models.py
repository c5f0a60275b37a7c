"""Value types shared by workflows and activities: the public contract of kduflow.

This module does no I/O and imports nothing but the standard library, so workflows can import it
inside ``workflow.unsafe.imports_passed_through()``. Every workflow and every activity takes exactly
one of these dataclasses and returns one. Field names of the workflow inputs follow OSM N2VC's
``K8sHelmBaseConnector`` parameters (``cluster_uuid``, ``kdu_model``, ``kdu_instance``, ``params``,
``db_dict``, ...) so an OSM LCM can switch with little change. Fields are only ever added, with
defaults, so histories and callers stay compatible.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

#: Default task queue for every kduflow workflow and activity.
DEFAULT_TASK_QUEUE = "kduflow"


class ReleaseStatus(enum.StrEnum):
    """Helm release statuses, as helm 3 and helm 4 print them."""

    #: No release of that name exists (not a helm status; kduflow's own).
    ABSENT = "absent"
    UNKNOWN = "unknown"
    DEPLOYED = "deployed"
    UNINSTALLED = "uninstalled"
    SUPERSEDED = "superseded"
    FAILED = "failed"
    UNINSTALLING = "uninstalling"
    PENDING_INSTALL = "pending-install"
    PENDING_UPGRADE = "pending-upgrade"
    PENDING_ROLLBACK = "pending-rollback"

    @property
    def is_pending(self) -> bool:
        return self in (
            ReleaseStatus.PENDING_INSTALL,
            ReleaseStatus.PENDING_UPGRADE,
            ReleaseStatus.PENDING_ROLLBACK,
            ReleaseStatus.UNINSTALLING,
        )


@dataclass
class DbDict:
    """Where to write status: OSM's ``db_dict`` (``{collection, filter, path}``).

    ``path`` is a dotted path such as ``_admin.deployed.K8s.0``; kduflow writes
    ``<path>.operation``, ``<path>.status``, ``<path>.detailed-status``, ``<path>.status-time``
    and ``<path>.kduflow`` (a structured sub-document, see ``activities/status.py``).
    """

    collection: str
    filter: dict[str, Any]
    path: str


# --------------------------------------------------------------------------------------------
# Workflow inputs (public contract: type names below are the Temporal workflow type names).
# --------------------------------------------------------------------------------------------


@dataclass
class InstallKduInput:
    """Input of the ``InstallKdu`` workflow."""

    cluster_uuid: str
    #: "repo/chart", "repo/chart:version" (N2VC), "oci://host/path/chart", or a chart
    #: directory / .tgz name under the worker's configured charts directory.
    kdu_model: str
    #: Release name; empty means generate one (N2VC's scheme) and check it is unused.
    kdu_instance: str = ""
    #: Target namespace; empty means "default".
    namespace: str = ""
    #: Chart version; overrides a ":version" suffix of kdu_model.
    version: str = ""
    atomic: bool = True
    #: Seconds helm may take (``--timeout``), also the readiness wait.
    timeout: int = 300
    #: Chart values (instantiation parameters). Never written to MongoDB status fields.
    params: dict[str, Any] = field(default_factory=dict)
    db_dict: DbDict | None = None
    kdu_name: str = ""
    #: Extra labels recorded on the release (helm ``--labels``) for later lookup.
    labels: dict[str, str] = field(default_factory=dict)
    #: False: fail at once with OperationInProgress (naming the holder) when another operation
    #: holds the release, instead of waiting for it.
    wait_for_lock: bool = True


@dataclass
class UpgradeKduInput:
    """Input of the ``UpgradeKdu`` workflow (upgrade, then roll back on failure when atomic)."""

    cluster_uuid: str
    kdu_instance: str
    #: "" = the namespace the release is in, looked up on the cluster (N2VC's default); refused when
    #: the name exists in several namespaces.
    namespace: str = ""
    #: Empty means "the chart the release runs now" (same chart reference, e.g. a values-only upgrade).
    kdu_model: str = ""
    version: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    reuse_values: bool = True
    reset_values: bool = False
    force: bool = False
    atomic: bool = True
    timeout: int = 300
    db_dict: DbDict | None = None
    #: False: fail at once with OperationInProgress (naming the holder) when another operation
    #: holds the release, instead of waiting for it.
    wait_for_lock: bool = True


@dataclass
class RollbackKduInput:
    cluster_uuid: str
    kdu_instance: str
    #: "" = the namespace the release is in, looked up on the cluster (N2VC's default); refused when
    #: the name exists in several namespaces.
    namespace: str = ""
    #: 0 means the last *deployed* revision before the current one (never helm's "previous").
    revision: int = 0
    timeout: int = 300
    db_dict: DbDict | None = None
    #: False: fail at once with OperationInProgress (naming the holder) when another operation
    #: holds the release, instead of waiting for it.
    wait_for_lock: bool = True


@dataclass
class ScaleKduInput:
    cluster_uuid: str
    kdu_instance: str
    #: "" = the namespace the release is in, looked up on the cluster (N2VC's default); refused when
    #: the name exists in several namespaces.
    namespace: str = ""
    #: The replica count to set. Required; keyword-only in Python (it follows defaulted fields), the
    #: JSON field order is unchanged.
    scale: int = field(kw_only=True)
    #: Component key under which the replica key lives ("" = top level), as in N2VC.
    resource_name: str = ""
    timeout: int = 1800
    atomic: bool = True
    db_dict: DbDict | None = None
    #: False: fail at once with OperationInProgress (naming the holder) when another operation
    #: holds the release, instead of waiting for it.
    wait_for_lock: bool = True


@dataclass
class UninstallKduInput:
    cluster_uuid: str
    kdu_instance: str
    #: "" = the namespace the release is in, looked up on the cluster (N2VC's default); refused when
    #: the name exists in several namespaces.
    namespace: str = ""
    timeout: int = 300
    db_dict: DbDict | None = None
    #: False: fail at once with OperationInProgress (naming the holder) when another operation
    #: holds the release, instead of waiting for it.
    wait_for_lock: bool = True


@dataclass
class KduRefInput:
    """Input of the read-only ``KduStatus``, ``KduServices`` and ``KduValues`` workflows."""

    cluster_uuid: str
    kdu_instance: str
    #: "" = the namespace the release is in, looked up on the cluster (N2VC's default); refused when
    #: the name exists in several namespaces.
    namespace: str = ""
    #: KduValues only: all computed values (``helm get values --all``) instead of user-supplied ones.
    all_values: bool = False


@dataclass
class KduInstancesInput:
    cluster_uuid: str


@dataclass
class InspectKduInput:
    #: Chart reference, same forms as InstallKduInput.kdu_model.
    kdu_model: str
    #: Cluster whose repositories resolve "repo/chart" (N2VC inspected without one and failed).
    cluster_uuid: str = ""
    version: str = ""
    #: Optional repository URL: "chart" is then looked up there (helm --repo).
    repo_url: str = ""


# --------------------------------------------------------------------------------------------
# Results.
# --------------------------------------------------------------------------------------------


@dataclass
class KduResult:
    """What every KDU workflow returns: the release as observed after the operation."""

    kdu_instance: str
    namespace: str
    revision: int = 0
    #: A ReleaseStatus value ("deployed", "failed", "absent", ...).
    status: str = ReleaseStatus.UNKNOWN.value
    #: helm's info.description ("Install complete", "Rollback to 3", ...).
    description: str = ""
    #: "name-version", as helm list prints it.
    chart: str = ""
    app_version: str = ""
    #: Operation-specific note, e.g. "release was absent" for an idempotent uninstall.
    message: str = ""
    #: Resource readiness at the end, when observed.
    ready: bool | None = None
    #: ScaleKdu: the values key that was changed (e.g. "replicaCount" or "db.replicas").
    replica_key: str = ""
    #: RollbackKdu / failed UpgradeKdu: the revision that was restored.
    restored_revision: int = 0


@dataclass
class RevisionInfo:
    """One entry of ``helm history -o json``."""

    revision: int
    status: str
    chart: str = ""
    app_version: str = ""
    description: str = ""
    updated: str = ""


@dataclass
class ReleaseSummary:
    """One entry of ``helm list -o json`` (revision converted to int)."""

    name: str
    namespace: str
    revision: int
    status: str
    chart: str = ""
    app_version: str = ""
    updated: str = ""


@dataclass
class KduInstancesResult:
    releases: list[ReleaseSummary] = field(default_factory=list)


@dataclass
class ServicePort:
    port: int
    protocol: str = "TCP"
    name: str = ""
    target_port: str = ""
    node_port: int = 0


@dataclass
class ServiceInfo:
    name: str
    namespace: str
    type: str = "ClusterIP"
    cluster_ip: str = ""
    ports: list[ServicePort] = field(default_factory=list)
    #: LoadBalancer ingress IPs; empty while pending.
    external_ip: list[str] = field(default_factory=list)
    #: LoadBalancer ingress hostnames (e.g. AWS ELB); empty while pending.
    external_hostname: list[str] = field(default_factory=list)
    #: True for a LoadBalancer Service whose ingress is not assigned yet.
    pending: bool = False


@dataclass
class KduServicesResult(KduResult):
    """``KduServices``: the release (revision, status, chart, ...) and its Services."""

    services: list[ServiceInfo] = field(default_factory=list)


@dataclass
class KduValuesResult(KduResult):
    """``KduValues``: the release (revision, status, chart, ...) and its values."""

    #: User-supplied values (or all computed values with all_values). Never ``None``.
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class InspectKduResult:
    kdu_model: str
    #: Chart.yaml as a dict (``helm show chart``).
    chart: dict[str, Any] = field(default_factory=dict)
    #: values.yaml text (``helm show values``), comments kept.
    values: str = ""
    #: README text (``helm show readme``), "" when the chart has none.
    readme: str = ""


@dataclass
class ResourceState:
    """Readiness of one live object, judged like kstatus."""

    kind: str
    name: str
    namespace: str = ""
    #: "Current", "InProgress", "Failed", "NotFound", "Terminating", "Unknown".
    state: str = "Unknown"
    ready: bool = False
    #: Human readable why, e.g. "Available: 0/2 replicas ready" or "Pod x: ImagePullBackOff".
    message: str = ""


@dataclass
class KduStatusResult(KduResult):
    """Result of ``KduStatus``: the release plus the readiness of its resources."""

    ready_resources: int = 0
    total_resources: int = 0
    #: The not-ready resources, first one being the culprit to report.
    not_ready: list[ResourceState] = field(default_factory=list)
    #: Helm notes of the release (NOTES.txt), when any.
    notes: str = ""


# --------------------------------------------------------------------------------------------
# Activity inputs. Activities are registered under the string names in ACTIVITY_NAMES; a
# workflow calls them by name so tests can register mocks under the same names.
# --------------------------------------------------------------------------------------------


@dataclass
class ReleaseRef:
    cluster_uuid: str
    kdu_instance: str
    namespace: str


@dataclass
class ListReleasesInput:
    cluster_uuid: str
    #: Exact release name to look for ("" = all releases), across all namespaces and all statuses.
    name: str = ""


@dataclass
class ListReleasesResult:
    releases: list[ReleaseSummary] = field(default_factory=list)


@dataclass
class HistoryResult:
    """``helm history``; empty ``entries`` means the release does not exist."""

    entries: list[RevisionInfo] = field(default_factory=list)


@dataclass
class StatusReport:
    """Status reporting by a mutating helm activity itself, beside its helm process.

    While helm runs, the activity observes the release every ``KDUFLOW_POLL_INTERVAL`` seconds and
    writes on change; once helm succeeded it writes the final status (``final_phase``) and returns
    the observation in ``ReleaseInfo.final_status``. Writes are ordered by ``seq_base`` as those of
    ``kdu.poll_status`` and ``kdu.status``.
    """

    db_dict: DbDict
    #: OSM operation name written to ``<path>.operation``.
    operation: str
    #: Ordering base (the workflow's time in ms when it built the input).
    seq_base: int
    #: Phase of the final write after a successful helm call; "" = none (the workflow writes it).
    final_phase: str = ""


@dataclass
class HelmInstallInput:
    ref: ReleaseRef
    #: Chart reference as the user gave it, without the ":version" suffix.
    chart: str
    version: str = ""
    values: dict[str, Any] = field(default_factory=dict)
    atomic: bool = True
    #: --wait for readiness (always true when atomic).
    wait: bool = True
    timeout: int = 300
    labels: dict[str, str] = field(default_factory=dict)
    create_namespace: bool = True
    #: Recorded as the release description ("kduflow op=<id>") so a retry recognises its own work.
    operation_id: str = ""
    #: Status reporting while helm runs (None: the workflow runs ``kdu.poll_status`` beside it).
    report: StatusReport | None = None


@dataclass
class HelmUpgradeInput:
    ref: ReleaseRef
    #: "" = the chart of the current release (values-only upgrade).
    chart: str = ""
    version: str = ""
    values: dict[str, Any] = field(default_factory=dict)
    #: Dotted key -> value, passed as typed values (ScaleKdu's replica key). Never free text.
    set_values: dict[str, Any] = field(default_factory=dict)
    reuse_values: bool = True
    reset_values: bool = False
    force: bool = False
    atomic: bool = False
    wait: bool = True
    timeout: int = 300
    operation_id: str = ""
    #: The revision the caller observed before upgrading; a retry that finds a newer revision
    #: carrying its operation_id knows the upgrade already happened.
    expected_revision: int = 0
    report: StatusReport | None = None


@dataclass
class HelmRollbackInput:
    ref: ReleaseRef
    #: Explicit revision to restore (> 0). Workflows resolve "0" before calling.
    revision: int
    wait: bool = True
    timeout: int = 300
    operation_id: str = ""
    #: A pending revision labelled with this operation id was written by a helm the caller saw
    #: exit (the failed or cancelled upgrade being undone): it is rolled back at once, not waited for.
    exited_operation_id: str = ""
    report: StatusReport | None = None


@dataclass
class HelmUninstallInput:
    ref: ReleaseRef
    wait: bool = True
    timeout: int = 300


@dataclass
class ReleaseInfo:
    """What a mutating helm activity observed after it ran (helm status / history)."""

    kdu_instance: str
    namespace: str
    revision: int = 0
    status: str = ReleaseStatus.UNKNOWN.value
    description: str = ""
    chart: str = ""
    app_version: str = ""
    #: The final status the activity wrote (``StatusReport.final_phase``); None when it wrote none.
    final_status: KduStatusResult | None = None


@dataclass
class UninstallOutcome:
    kdu_instance: str
    namespace: str
    #: False when there was no release to remove (idempotent success).
    existed: bool = True
    #: Status the release had before the uninstall ("absent" when it did not exist).
    status_before: str = ReleaseStatus.ABSENT.value


@dataclass
class GetValuesInput:
    ref: ReleaseRef
    all_values: bool = False


@dataclass
class ValuesResult:
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class InspectInput:
    cluster_uuid: str
    chart: str
    version: str = ""
    repo_url: str = ""


@dataclass
class StatusInput:
    """Observe a release (release storage + live resources) and optionally write it to MongoDB."""

    ref: ReleaseRef
    db_dict: DbDict | None = None
    #: OSM operation name written to ``<path>.operation`` ("install", "upgrade", "scale", ...).
    operation: str = ""
    #: An error to record as the last error (e.g. the failed helm command's message).
    error: str = ""
    #: Phase to record in the structured sub-document ("completed", "failed", "rolled-back", ...).
    phase: str = ""
    #: Ordering base of this write (ms; the workflow's time when it built this input). With a base
    #: the write is ordered: a write older than the one the document holds changes nothing (see
    #: ``activities/status.py``). 0 (inputs from before ordering existed) = unconditional write.
    seq_base: int = 0


@dataclass
class PreflightInput:
    """What a workflow asks the worker's policy before it runs anything (see ``kdu.preflight``)."""

    #: Where status will be written: checked against the worker's collection allowlist.
    db_dict: DbDict | None = None
    #: A chart reference from the input (``kdu_model`` form): local charts must exist under the
    #: worker's charts directory, ``oci://`` references must pass the URL policy.
    chart: str = ""
    version: str = ""


@dataclass
class PollStatusInput:
    """Heartbeating poller: observe and write on change every ``interval`` seconds until cancelled."""

    ref: ReleaseRef
    db_dict: DbDict
    operation: str
    interval: float = 5.0
    #: Ordering base of the poller's writes, as ``StatusInput.seq_base`` (0 = unconditional writes).
    seq_base: int = 0


# --------------------------------------------------------------------------------------------
# The per-release lock (workflows/lock.py): one mutating operation per release at a time.
# --------------------------------------------------------------------------------------------


@dataclass
class LockHolder:
    """An operation holding or waiting for a release's lock."""

    workflow_id: str
    run_id: str
    #: "install", "upgrade", "rollback", "scale", "uninstall".
    operation: str = ""
    #: Unique per acquisition (a retried request carries the same token: idempotent).
    token: str = ""
    #: Workflow type of the requester, for humans reading the lock's query.
    workflow_type: str = ""


@dataclass
class LockRequest:
    """The ``request`` update of a ``ReleaseLock`` workflow."""

    requester: LockHolder
    #: True: do not queue; answer at once whether the lock was granted.
    fail_fast: bool = False


@dataclass
class LockAnswer:
    """What ``request`` answers: granted now, or queued behind ``holder`` at ``position`` (1-based)."""

    granted: bool
    holder: LockHolder | None = None
    position: int = 0


@dataclass
class LockState:
    """A ``ReleaseLock``'s state: its input, its continue-as-new carry-over and its query answer."""

    ref: ReleaseRef
    holder: LockHolder | None = None
    queue: list[LockHolder] = field(default_factory=list)
    #: When the holder got the lock (workflow time, ISO 8601), for humans and the lease check.
    held_since: str = ""


@dataclass
class LockRequestInput:
    """``lock.request``: reach the release's lock workflow by update-with-start."""

    lock_id: str
    ref: ReleaseRef
    request: LockRequest
    #: The requester's task queue (where lock workflows ran before KDUFLOW_LOCK_TASK_QUEUE existed;
    #: used only when the worker has no lock queue configured).
    task_queue: str


@dataclass
class LockReleaseInput:
    """``lock.release``: the release signal to a release's lock workflow, from the holder."""

    lock_id: str
    #: The holder's (or waiter's) token.
    token: str


@dataclass
class WorkflowRunRef:
    workflow_id: str
    run_id: str = ""


@dataclass
class WorkflowRunStatus:
    #: ``WorkflowExecutionStatus`` name: "RUNNING", "COMPLETED", "TERMINATED", ...; "NOT_FOUND".
    status: str



# --------------------------------------------------------------------------------------------
# Read-only workflows added for the client (N2VC get_scale_count, get_service).
# --------------------------------------------------------------------------------------------


@dataclass
class GetScaleCountInput:
    """``GetScaleCount``: N2VC ``get_scale_count(resource_name, kdu_instance, cluster_uuid, kdu_model)``."""

    cluster_uuid: str
    kdu_instance: str
    #: Component key under which the replica key lives ("" = top level), as for ScaleKdu.
    resource_name: str = ""
    #: "" = looked up on the cluster.
    namespace: str = ""
    #: Accepted for N2VC's signature; the count is read from the release itself (its values), so a
    #: chart reference is not needed.
    kdu_model: str = ""


@dataclass
class ScaleCountResult:
    """``GetScaleCount``: the replica count ScaleKdu would change, found the same way."""

    kdu_instance: str
    namespace: str
    #: The values key holding the count (e.g. "replicaCount" or "db.replicas").
    replica_key: str = ""
    count: int = 0
    #: "user values" (set on the release) or "chart values" (the chart's default).
    source: str = ""


@dataclass
class GetServiceInput:
    """``GetService``: N2VC ``get_service(cluster_uuid, service_name, namespace)``."""

    cluster_uuid: str
    service_name: str
    namespace: str


@dataclass
class ServiceResult:
    """``GetService``: the Service, or None when the namespace has no Service of that name."""

    service: ServiceInfo | None = None


# --------------------------------------------------------------------------------------------
# The ``operation`` query of every mutating workflow (InstallKdu ... SyncRepos).
# --------------------------------------------------------------------------------------------


@dataclass
class OperationState:
    """What a mutating workflow is doing now: the answer of its ``operation`` query."""

    #: "install", "upgrade", "rollback", "scale", "uninstall", "init-cluster", "reset-cluster",
    #: "sync-repos".
    operation: str = ""
    #: "validating", "waiting-for-lock", "observing", "running", "rolling-back", "writing-status",
    #: then "completed", "failed", "rolled-back" or "cancelled".
    phase: str = "validating"
    cluster_uuid: str = ""
    kdu_instance: str = ""
    namespace: str = ""
    #: The release's revision as last observed (0 = unknown or absent).
    revision: int = 0
    #: Resource readiness at the last observation (None = not observed).
    ready: bool | None = None
    #: The last error this operation met ("" = none), without values or secrets.
    last_error: str = ""
    #: Who holds the release's lock while this operation waits for it (None = nobody / not waiting).
    lock_holder: LockHolder | None = None
    #: 1-based place in the lock's queue while waiting (0 = not queued).
    queue_position: int = 0
    #: What the Web UI shows as the workflow's current details.
    details: str = ""

#: The per-release lock workflow's type name and its release signal (workflows/lock.py defines the
#: workflow; activities/lock.py starts it and sends the signal).
LOCK_WORKFLOW = "ReleaseLock"
LOCK_RELEASE_SIGNAL = "release"

ACTIVITY_NAMES = {
    # release activities (activities/release.py)
    "list_releases": "kdu.list_releases",  # ListReleasesInput -> ListReleasesResult
    "history": "kdu.history",  # ReleaseRef -> HistoryResult
    "install": "kdu.install",  # HelmInstallInput -> ReleaseInfo
    "upgrade": "kdu.upgrade",  # HelmUpgradeInput -> ReleaseInfo
    "rollback": "kdu.rollback",  # HelmRollbackInput -> ReleaseInfo
    "uninstall": "kdu.uninstall",  # HelmUninstallInput -> UninstallOutcome
    "get_values": "kdu.get_values",  # GetValuesInput -> ValuesResult
    "inspect": "kdu.inspect",  # InspectInput -> InspectKduResult
    "services": "kdu.services",  # ReleaseRef -> KduServicesResult
    "service": "kdu.service",  # GetServiceInput -> ServiceResult
    # status activities (activities/status.py)
    "status": "kdu.status",  # StatusInput -> KduStatusResult
    "poll_status": "kdu.poll_status",  # PollStatusInput -> None (runs until cancelled)
    "preflight": "kdu.preflight",  # PreflightInput -> None (local activity, before anything runs)
    # lock activities (activities/lock.py)
    "lock_request": "lock.request",  # LockRequestInput -> LockAnswer (update-with-start)
    "lock_describe": "lock.describe",  # WorkflowRunRef -> WorkflowRunStatus
    "lock_release": "lock.release",  # LockReleaseInput -> None (the release signal, sent and accepted)
}

__all__ = [
    "OperationState",
    "ServiceResult",
    "GetServiceInput",
    "ScaleCountResult",
    "GetScaleCountInput",
    "ACTIVITY_NAMES",
    "LOCK_RELEASE_SIGNAL",
    "LOCK_WORKFLOW",
    "DEFAULT_TASK_QUEUE",
    "DbDict",
    "GetValuesInput",
    "HelmInstallInput",
    "HelmRollbackInput",
    "HelmUninstallInput",
    "HelmUpgradeInput",
    "HistoryResult",
    "InspectInput",
    "InspectKduInput",
    "InspectKduResult",
    "InstallKduInput",
    "KduInstancesInput",
    "KduInstancesResult",
    "KduRefInput",
    "KduResult",
    "KduServicesResult",
    "KduStatusResult",
    "KduValuesResult",
    "ListReleasesInput",
    "ListReleasesResult",
    "LockAnswer",
    "LockHolder",
    "LockRequest",
    "LockReleaseInput",
    "LockRequestInput",
    "LockState",
    "PollStatusInput",
    "PreflightInput",
    "ReleaseInfo",
    "ReleaseRef",
    "ReleaseStatus",
    "ReleaseSummary",
    "ResourceState",
    "RevisionInfo",
    "RollbackKduInput",
    "ScaleKduInput",
    "ServiceInfo",
    "ServicePort",
    "StatusInput",
    "StatusReport",
    "UninstallKduInput",
    "UninstallOutcome",
    "UpgradeKduInput",
    "ValuesResult",
    "WorkflowRunRef",
    "WorkflowRunStatus",
]
