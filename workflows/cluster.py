"""Cluster workflows: ``InitCluster``, ``ResetCluster`` and ``SyncRepos`` (N2VC init_env / reset /
synchronize_repos), calling the ``cluster.*`` and ``repo.*`` activities by name.

Deterministic: no I/O, ids from ``workflow.uuid4()``. Secrets stay out of history except the
``k8s_creds`` N2VC's interface puts in InitCluster's input (a warning says so: run with the payload
codec, or store the kubeconfig in ``k8sclusters.credentials`` and leave ``k8s_creds`` empty).

One operation at a time: ResetCluster uninstalls each release through an ``UninstallKdu`` child
workflow, which takes that release's lock like any uninstall; every SyncRepos of a cluster (the
scheduled ones, InitCluster's first one, one started by hand) runs under the cluster's repository
lock (``repos_lock_ref``), so two of them never add and remove the same repositories at once.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    WorkflowAlreadyStartedError,
)

with workflow.unsafe.imports_passed_through():
    from contract.cluster import (
        CLUSTER_ACTIVITY_NAMES,
        AddStableResult,
        ClusterRef,
        ClusterState,
        DesiredReposResult,
        EnsureNamespaceInput,
        EnsureNamespaceResult,
        InitClusterInput,
        InitClusterResult,
        RecordStateInput,
        RecordSyncInput,
        RegisterRepoInput,
        RegisterRepoResult,
        RepoAddInput,
        RepoAddResult,
        RepoListInput,
        RepoListResult,
        RepoRef,
        RepoRemoveInput,
        RepoRemoveResult,
        ResetClusterInput,
        ResetRecord,
        ScheduleInput,
        ScheduleResult,
        StoreCredentialsInput,
        SyncReposInput,
        SyncReposResult,
        UninstallAllInput,
        UninstallAllResult,
        UnregisterRepoInput,
        UnregisterRepoResult,
        VerifyClusterResult,
        uninstall_child_id,
    )
    from contract.models import (
        ACTIVITY_NAMES,
        KduResult,
        ListReleasesInput,
        ListReleasesResult,
        ReleaseRef,
        UninstallKduInput,
    )
    from contract.validation import (
        validate_bool,
        validate_cluster_uuid,
        validate_namespace,
        validate_repo_add,
        validate_repo_list,
        validate_repo_remove,
        validate_sync_interval,
    )

from workflows.common import (
    NON_RETRYABLE_ERROR_TYPES,
    Tracked,
    begin,
    call_read,
    child_search_attributes,
    failure_error,
    finish,
    is_workflow_cancellation,
)
from workflows.decoding import decode_input
from workflows.lock import LockClient, release_lock

#: ``workflow.patched`` id: ResetCluster uninstalls through UninstallKdu children. Histories recorded
#: before it replay the single ``cluster.uninstall_all`` activity.
PATCH_RESET_CHILDREN = "reset-cluster-children-v1"
#: ``workflow.patched`` id: SyncRepos holds the cluster's repository lock. Histories recorded before
#: it replay without the lock.
PATCH_SYNC_LOCK = "sync-repos-lock-v1"
#: UninstallKdu children of one ResetCluster running at once. Each runs a helm process against the
#: same API server for up to its timeout; a cluster with hundreds of releases gets four at a time,
#: not hundreds.
MAX_PARALLEL_UNINSTALLS = 4
#: helm's --timeout for each release ResetCluster uninstalls (UninstallKdu's default).
RESET_UNINSTALL_TIMEOUT = 300
#: Type name of the release uninstall workflow (``workflows/kdu.py``), started by name.
UNINSTALL_WORKFLOW = "UninstallKdu"
#: A child id still taken by a running uninstall (one an earlier run of the same reset started and
#: abandoned) is tried again after this long, for at most ``_CHILD_BUSY_TRIES`` tries (10 minutes,
#: more than one helm uninstall attempt with its 300 s timeout and margin); after that the release
#: is reported failed with ``OperationInProgress``.
_CHILD_BUSY_WAIT = timedelta(seconds=15)
_CHILD_BUSY_TRIES = 40

#: Store and kubectl steps: several quick retries (an unreachable cluster gets ~1 minute).
_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=20),
    maximum_attempts=5,
    non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES,
)
#: Repository add/remove inside SyncRepos: a bad repository is reported after a few seconds, not retried
#: for long, so it never holds the others back (the schedule tries again at the next interval).
_REPO_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=3,
    non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES,
)
_SHORT = timedelta(seconds=60)
_REPO = timedelta(seconds=180)


async def _call(
    name: str, arg: Any, result_type: type | None, *, timeout: timedelta = _SHORT, retry: RetryPolicy = _RETRY
) -> Any:
    return await workflow.execute_activity(
        CLUSTER_ACTIVITY_NAMES[name],
        arg,
        result_type=result_type,
        start_to_close_timeout=timeout,
        retry_policy=retry,
    )


def error_message(err: BaseException) -> str:
    """The innermost failure's message (an activity's ApplicationError text), for reports."""
    cause: BaseException | None = err
    while isinstance(cause, (ActivityError, ChildWorkflowError)) and cause.cause is not None:
        cause = cause.cause
    text = getattr(cause, "message", None) or str(cause)
    type_name = getattr(cause, "type", None)
    return f"{type_name}: {text}" if type_name else str(text)


def repos_lock_ref(cluster_uuid: str) -> ReleaseRef:
    """The lock every SyncRepos of the cluster holds: a ``ReleaseLock`` under names that no release
    can have (":" is allowed in neither release nor namespace names), so it never serialises a
    release operation, only repository syncs against each other."""
    return ReleaseRef(cluster_uuid=cluster_uuid, kdu_instance=":repositories", namespace=":cluster")


@workflow.defn(name="InitCluster")
class InitCluster(Tracked):
    """Register a cluster: store its kubeconfig (when given), check the API server answers, create the
    namespace, add the stable repository (if the worker has one configured), start the SyncRepos
    schedule, run a first SyncRepos, and record ``_admin.helm-chart-v3``.

    The first SyncRepos is a child workflow. It may coincide with a run of the schedule (or another
    SyncRepos of the cluster): both take the cluster's repository lock, so they run one after the
    other, and the later one finds the repositories already as wanted.

    Fails with ``CredentialsInvalid``/``ClusterNotFound``/``InvalidInput`` (non-retryable) or
    ``ClusterUnreachable`` after retries; ``_admin.helm-chart-v3.operationalState`` is then ``ERROR``.
    """

    @workflow.run
    async def run(self, raw: Any = None, *extra: Any) -> InitClusterResult:
        return await finish(self._run(raw, *extra))

    async def _run(self, raw: Any = None, *extra: Any) -> InitClusterResult:
        inp = decode_input(InitClusterInput, raw, extra)
        validate_cluster_uuid(inp.cluster_uuid, allow_empty=True)
        validate_cluster_uuid(inp.reuse_cluster_uuid, "reuse_cluster_uuid", allow_empty=True)
        namespace = validate_namespace(inp.namespace or "kube-system", allow_empty=False)
        if not isinstance(inp.k8s_creds, str):
            raise ApplicationError(
                "invalid k8s_creds: must be a kubeconfig YAML string",
                {"field": "k8s_creds"},
                type="InvalidInput",
                non_retryable=True,
            )
        validate_sync_interval(inp.sync_interval_s)
        cluster_uuid = inp.reuse_cluster_uuid or inp.cluster_uuid or str(workflow.uuid4())
        result = InitClusterResult(cluster_uuid=cluster_uuid, installed_sw=False)
        begin("init-cluster", cluster_uuid)
        ref = ClusterRef(cluster_uuid)
        if inp.k8s_creds:
            workflow.logger.warning(
                "InitCluster %s: k8s_creds came in the workflow input, so the kubeconfig is in workflow "
                "history: enable the payload codec, or store it in k8sclusters.credentials instead",
                cluster_uuid,
            )
            await _call(
                "store_credentials",
                StoreCredentialsInput(
                    cluster_uuid, inp.k8s_creds, namespace,
                    replace_credentials=inp.replace_credentials is True,
                    workflow_id=workflow.info().workflow_id,
                ),
                None,
            )
        try:
            verified: VerifyClusterResult = await _call("verify", ref, VerifyClusterResult)
            result.server_version = verified.server_version
            ns: EnsureNamespaceResult = await _call(
                "ensure_namespace", EnsureNamespaceInput(cluster_uuid, namespace), EnsureNamespaceResult
            )
            result.namespace_created = ns.created
        except ActivityError as err:
            await self._record(cluster_uuid, "ERROR", error_message(err))
            raise
        try:
            stable: AddStableResult = await _call(
                "repo_add_stable", ref, AddStableResult, timeout=_REPO, retry=_REPO_RETRY
            )
            result.stable_repo_added = stable.added
        except ActivityError as err:
            # N2VC's rule: one bad repository must not make the cluster unusable.
            workflow.logger.warning(
                "InitCluster %s: stable repository not added: %s", cluster_uuid, error_message(err)
            )
        if inp.sync_interval_s >= 0:
            sched: ScheduleResult = await _call(
                "upsert_schedule",
                ScheduleInput(
                    cluster_uuid, interval_s=inp.sync_interval_s, task_queue=workflow.info().task_queue
                ),
                ScheduleResult,
            )
            result.schedule_id = sched.schedule_id
        sync: SyncReposResult = await workflow.execute_child_workflow(
            SyncRepos.run,
            SyncReposInput(cluster_uuid),
            id=f"sync-repos-{cluster_uuid}-init-{workflow.uuid4()}",
            search_attributes=child_search_attributes("sync-repos", cluster_uuid),
        )
        if sync.failed:
            workflow.logger.warning("InitCluster %s: repositories failed: %s", cluster_uuid, sync.failed)
        await self._record(cluster_uuid, "ENABLED", "")
        return result

    async def _record(self, cluster_uuid: str, state: str, error_msg: str) -> None:
        await _call(
            "record_state",
            RecordStateInput(cluster_uuid, ClusterState(cluster_uuid, False, state, error_msg)),
            None,
        )


@workflow.defn(name="ResetCluster")
class ResetCluster(Tracked):
    """N2VC ``reset``: stop the SyncRepos schedule (its running syncs are asked to cancel); with
    ``uninstall_sw`` list every release (pending ones too) and uninstall them only when ``force``
    (otherwise keep them and warn); then record the outcome, and remove the local environment and the
    stored credentials.

    Each release is uninstalled by an ``UninstallKdu`` child workflow, at most
    ``MAX_PARALLEL_UNINSTALLS`` at a time: the child takes the release's lock (waiting for an
    install or upgrade in progress to end), observes the release and converges like any uninstall.
    Child ids derive from this workflow's id and the release (``uninstall_child_id``), so a re-run
    of the same reset never starts a second uninstall of a release beside the first.

    Returns True (N2VC's result). A release that could not be uninstalled is logged and does not stop
    the reset (N2VC logs them the same way); what was uninstalled, kept and failed is recorded in the
    cluster document's ``_admin.kduflow_reset`` next to ``_admin.helm-chart-v3`` (``DISABLED``).
    Fails when the releases cannot be listed (the cluster stays registered).
    """

    @workflow.run
    async def run(self, raw: Any = None, *extra: Any) -> bool:
        return await finish(self._run(raw, *extra))

    async def _run(self, raw: Any = None, *extra: Any) -> bool:
        inp = decode_input(ResetClusterInput, raw, extra)
        cluster_uuid = validate_cluster_uuid(inp.cluster_uuid)
        force = validate_bool(inp.force, "force")
        uninstall_sw = validate_bool(inp.uninstall_sw, "uninstall_sw")
        begin("reset-cluster", cluster_uuid)
        ref = ClusterRef(cluster_uuid)
        await _call("delete_schedule", ref, ScheduleResult)
        record = ResetRecord(
            workflow_id=workflow.info().workflow_id, uninstall_sw=uninstall_sw, force=force
        )
        if uninstall_sw:
            if workflow.patched(PATCH_RESET_CHILDREN):
                await self._uninstall_releases(cluster_uuid, force, record)
            else:
                await self._uninstall_all_legacy(cluster_uuid, force, record)
            if record.kept:
                workflow.logger.warning(
                    "ResetCluster %s: releases kept (force is off): %s", cluster_uuid, record.kept
                )
            if record.failed:
                workflow.logger.error(
                    "ResetCluster %s: releases not uninstalled: %s", cluster_uuid, record.failed
                )
        await _call(
            "record_state",
            RecordStateInput(cluster_uuid, ClusterState(cluster_uuid, False, "DISABLED"), reset=record),
            None,
        )
        await _call("forget", ref, None)
        return True

    async def _uninstall_releases(self, cluster_uuid: str, force: bool, record: ResetRecord) -> None:
        listed: ListReleasesResult = await call_read(
            ACTIVITY_NAMES["list_releases"],
            ListReleasesInput(cluster_uuid=cluster_uuid),
            ListReleasesResult,
            f"listing the releases of cluster {cluster_uuid}",
        )
        releases = sorted({(r.namespace, r.name) for r in listed.releases})
        if not force:
            record.kept = [f"{namespace}/{name}" for namespace, name in releases]
            return
        # asyncio's semaphore wakes its waiters in FIFO order, so the order in which children start
        # is the same on every replay.
        slots = asyncio.Semaphore(MAX_PARALLEL_UNINSTALLS)

        async def uninstall(namespace: str, name: str) -> None:
            key = f"{namespace}/{name}"
            async with slots:
                try:
                    await self._uninstall_child(cluster_uuid, namespace, name)
                except (ChildWorkflowError, ApplicationError) as err:
                    if is_workflow_cancellation(err):
                        raise
                    record.failed[key] = error_message(err)
                    workflow.logger.error(
                        "ResetCluster %s: could not uninstall %s: %s", cluster_uuid, key, record.failed[key]
                    )
                    return
            record.uninstalled.append(key)

        await asyncio.gather(*(uninstall(namespace, name) for namespace, name in releases))
        record.uninstalled.sort()

    async def _uninstall_child(self, cluster_uuid: str, namespace: str, name: str) -> KduResult:
        child_id = uninstall_child_id(workflow.info().workflow_id, namespace, name)
        for _ in range(_CHILD_BUSY_TRIES):
            try:
                result: KduResult = await workflow.execute_child_workflow(
                    UNINSTALL_WORKFLOW,
                    UninstallKduInput(cluster_uuid, name, namespace, timeout=RESET_UNINSTALL_TIMEOUT),
                    id=child_id,
                    result_type=KduResult,
                    search_attributes=child_search_attributes(
                        "uninstall", cluster_uuid, release=name, namespace=namespace
                    ),
                    # ABANDON: an uninstall that has started runs to its end even if this reset is
                    # terminated, reset or times out. Cancelling it there would stop helm halfway
                    # and leave the release "uninstalling"; letting it finish does what the reset
                    # was asked to do, and releases the lock normally. Cancelling the reset itself
                    # still cancels its children: their awaits are cancelled with it.
                    parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                )
                return result
            except WorkflowAlreadyStartedError:
                # An earlier run of this reset started this uninstall and closed without waiting
                # for it: wait for it to end, then run again (the release is then absent).
                workflow.logger.info(
                    "ResetCluster: %s is still running; trying again in %s", child_id, _CHILD_BUSY_WAIT
                )
                await workflow.sleep(_CHILD_BUSY_WAIT)
        raise ApplicationError(
            f"uninstall {child_id}, started by an earlier run of this reset, is still running",
            type="OperationInProgress",
            non_retryable=True,
        )

    async def _uninstall_all_legacy(self, cluster_uuid: str, force: bool, record: ResetRecord) -> None:
        """The path of histories recorded before ``PATCH_RESET_CHILDREN``: one activity uninstalling
        everything, outside the release locks."""
        outcome: UninstallAllResult = await _call(
            "uninstall_all",
            UninstallAllInput(cluster_uuid, force=force),
            UninstallAllResult,
            timeout=timedelta(hours=1),
            retry=RetryPolicy(maximum_attempts=2, non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES),
        )
        record.uninstalled = list(outcome.uninstalled)
        record.kept = list(outcome.kept)
        record.failed = dict(outcome.failed)


@workflow.defn(name="SyncRepos")
class SyncRepos(Tracked, LockClient):
    """Make the cluster's repositories what ``_admin.helm_chart_repos`` says: remove what is no longer
    wanted or changed (URL, name, credentials), then add what is missing or changed. One failing
    repository is reported in ``failed`` and does not stop the others; ids in the cluster's list without
    a k8srepos document are reported in ``unknown`` (and ``failed``). The outcome is recorded on the
    cluster document; the activities record ``_admin.helm_charts_added`` as they go.

    The whole sync, from reading what is configured to recording the outcome, holds the cluster's
    repository lock (``repos_lock_ref``): a second SyncRepos of the cluster (the schedule's, or
    InitCluster's first one) waits its turn and then works from what the first one left."""

    @workflow.run
    async def run(self, raw: Any = None, *extra: Any) -> SyncReposResult:
        return await finish(self._run(raw, *extra))

    async def _run(self, raw: Any = None, *extra: Any) -> SyncReposResult:
        inp = decode_input(SyncReposInput, raw, extra)
        cluster_uuid = validate_cluster_uuid(inp.cluster_uuid)
        begin("sync-repos", cluster_uuid)
        if not workflow.patched(PATCH_SYNC_LOCK):
            return await self._sync(cluster_uuid)
        async with release_lock(repos_lock_ref(cluster_uuid), "sync-repos"):
            return await self._sync(cluster_uuid)

    async def _sync(self, cluster_uuid: str) -> SyncReposResult:
        ref = ClusterRef(cluster_uuid)
        state: DesiredReposResult = await _call("repo_desired", ref, DesiredReposResult)
        desired = {r.id: r for r in state.desired}
        configured = {r.id: r for r in state.configured}
        result = SyncReposResult()
        for repo_id in state.unknown:
            result.unknown.append(repo_id)
            result.failed[repo_id] = "RepoNotFound: no k8srepos document with this id"
        changed = {
            rid
            for rid, want in desired.items()
            if rid in configured
            and (
                configured[rid].fingerprint != want.fingerprint
                or configured[rid].name != want.name
                or configured[rid].url != want.url
            )
        }
        to_remove = [rid for rid in configured if rid not in desired or rid in changed]
        to_add = [rid for rid in desired if rid not in configured or rid in changed]
        for rid in to_remove:
            try:
                removed: RepoRemoveResult = await _call(
                    "repo_remove",
                    RepoRef(cluster_uuid, rid, configured[rid].name),
                    RepoRemoveResult,
                    timeout=_REPO,
                    retry=_REPO_RETRY,
                )
                result.deleted.append(removed.repo_id)
            except ActivityError as err:
                result.failed[rid] = error_message(err)
                workflow.logger.warning(
                    "SyncRepos %s: removing %s failed: %s", cluster_uuid, rid, result.failed[rid]
                )
        for rid in to_add:
            try:
                added: RepoAddResult = await _call(
                    "repo_add", RepoRef(cluster_uuid, rid), RepoAddResult, timeout=_REPO, retry=_REPO_RETRY
                )
                result.added[added.repo_id] = added.name
                result.failed.pop(rid, None)
            except ActivityError as err:
                result.failed[rid] = error_message(err)
                workflow.logger.warning(
                    "SyncRepos %s: adding %s failed: %s", cluster_uuid, rid, result.failed[rid]
                )
        await _call("repo_record_sync", RecordSyncInput(cluster_uuid, result), None)
        return result


async def _call_or_fail(name: str, arg: Any, result_type: type, context: str, **kw: Any) -> Any:
    """``_call``, with an activity failure re-raised as a non-retryable ApplicationError of the same type."""
    try:
        return await _call(name, arg, result_type, **kw)
    except ActivityError as err:
        if is_workflow_cancellation(err):
            raise
        raise failure_error(err, context) from err


@workflow.defn(name="RepoAdd")
class RepoAdd(Tracked, LockClient):
    """N2VC ``repo_add`` on one cluster, made durable the way OSM does it: the repository is
    registered (a ``k8srepos`` document, its id in ``_admin.helm_chart_repos``), then added to the
    cluster's helm configuration; later SyncRepos keep it. Holds the cluster's repository lock, like
    every SyncRepos. The URL must pass the worker's URL policy (a registered repository is trusted
    wherever it resolves). If adding fails, the repository is taken off the cluster's list again
    (the k8srepos document stays) and the workflow fails with the cause's type.

    Raises non-retryable ``InvalidInput``, ``UrlNotAllowed``, ``ClusterNotFound``,
    ``CredentialsInvalid``, ``ChartNotFound`` (the URL is not a chart repository), or a retryable
    cause's type once its retries are spent.
    """

    @workflow.run
    async def run(self, raw: Any = None, *extra: Any) -> RepoAddResult:
        return await finish(self._run(raw, *extra))

    async def _run(self, raw: Any = None, *extra: Any) -> RepoAddResult:
        inp = decode_input(RepoAddInput, raw, extra)
        validate_repo_add(inp)
        what = f"adding repository {inp.name} to cluster {inp.cluster_uuid}"
        begin("repo-add", inp.cluster_uuid)
        async with release_lock(repos_lock_ref(inp.cluster_uuid), "repo-add"):
            registered: RegisterRepoResult = await _call_or_fail(
                "repo_register",
                RegisterRepoInput(
                    inp.cluster_uuid, str(workflow.uuid4()), inp.name, inp.url,
                    cert=inp.cert, user=inp.user, password=inp.password, oci=inp.oci,
                ),
                RegisterRepoResult,
                what,
            )  # fmt: skip
            try:
                return await _call(
                    "repo_add", RepoRef(inp.cluster_uuid, registered.repo_id), RepoAddResult,
                    timeout=_REPO, retry=_REPO_RETRY,
                )  # fmt: skip
            except ActivityError as err:
                if is_workflow_cancellation(err):
                    raise
                undo = UnregisterRepoInput(inp.cluster_uuid, inp.name)
                await _call("repo_unregister", undo, UnregisterRepoResult)
                raise failure_error(err, what) from err


@workflow.defn(name="RepoList")
class RepoList:
    """N2VC ``repo_list``: the repositories helm has for the cluster, with their k8srepos ids (never a
    password). Raises non-retryable ``InvalidInput``, ``ClusterNotFound``."""

    @workflow.run
    async def run(self, raw: Any = None, *extra: Any) -> RepoListResult:
        inp = decode_input(RepoListInput, raw, extra)
        validate_repo_list(inp)
        return await _call_or_fail(
            "repo_list", ClusterRef(inp.cluster_uuid), RepoListResult,
            f"listing the repositories of cluster {inp.cluster_uuid}", timeout=_REPO,
        )  # fmt: skip


@workflow.defn(name="RepoRemove")
class RepoRemove(Tracked, LockClient):
    """N2VC ``repo_remove``: take the repository called ``name`` off the cluster's list
    (``_admin.helm_chart_repos``, so SyncRepos does not add it back) and out of its helm
    configuration, under the cluster's repository lock. The ``k8srepos`` document stays (other
    clusters may use it). Idempotent: an unknown name returns ``existed: false``."""

    @workflow.run
    async def run(self, raw: Any = None, *extra: Any) -> RepoRemoveResult:
        return await finish(self._run(raw, *extra))

    async def _run(self, raw: Any = None, *extra: Any) -> RepoRemoveResult:
        inp = decode_input(RepoRemoveInput, raw, extra)
        validate_repo_remove(inp)
        what = f"removing repository {inp.name} from cluster {inp.cluster_uuid}"
        begin("repo-remove", inp.cluster_uuid)
        async with release_lock(repos_lock_ref(inp.cluster_uuid), "repo-remove"):
            unregistered: UnregisterRepoResult = await _call_or_fail(
                "repo_unregister", UnregisterRepoInput(inp.cluster_uuid, inp.name), UnregisterRepoResult, what
            )
            if not unregistered.repo_id:
                return RepoRemoveResult(repo_id="", name=inp.name, existed=False)
            return await _call_or_fail(
                "repo_remove", RepoRef(inp.cluster_uuid, unregistered.repo_id, inp.name), RepoRemoveResult,
                what, timeout=_REPO, retry=_REPO_RETRY,
            )  # fmt: skip


#: The cluster workflows. They need ``workflows.KDU_WORKFLOWS`` (``UninstallKdu``, ``ReleaseLock``)
#: and the ``kdu.*`` and ``lock.*`` activities on the same task queue: ResetCluster starts UninstallKdu
#: children and SyncRepos takes a lock.
CLUSTER_WORKFLOWS = [InitCluster, ResetCluster, SyncRepos, RepoAdd, RepoList, RepoRemove]
