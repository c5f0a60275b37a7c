"""Cluster workflows: ``InitCluster``, ``ResetCluster`` and ``SyncRepos`` (N2VC init_env / reset /
synchronize_repos, reference A.2 and B.3), calling the ``cluster.*`` and ``repo.*`` activities by name.

Deterministic: no I/O, ids from ``workflow.uuid4()``. Secrets stay out of history except the
``k8s_creds`` N2VC's interface puts in InitCluster's input (a warning says so: run with the payload
codec, or store the kubeconfig in ``k8sclusters.credentials`` and leave ``k8s_creds`` empty).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from workflows.cluster_models import (
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
        RepoAddResult,
        RepoRef,
        RepoRemoveResult,
        ResetClusterInput,
        ScheduleInput,
        ScheduleResult,
        StoreCredentialsInput,
        SyncReposInput,
        SyncReposResult,
        UninstallAllInput,
        UninstallAllResult,
        VerifyClusterResult,
    )
    from workflows.validation import (
        validate_bool,
        validate_cluster_uuid,
        validate_namespace,
        validate_sync_interval,
    )

from workflows.common import NON_RETRYABLE_ERROR_TYPES
from workflows.decoding import decode_input

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


@workflow.defn(name="InitCluster")
class InitCluster:
    """Register a cluster: store its kubeconfig (when given), check the API server answers, create the
    namespace, add the stable repository (if the worker has one configured), start the SyncRepos
    schedule, run a first SyncRepos, and record ``_admin.helm-chart-v3``.

    Fails with ``CredentialsInvalid``/``ClusterNotFound``/``InvalidInput`` (non-retryable) or
    ``ClusterUnreachable`` after retries; ``_admin.helm-chart-v3.operationalState`` is then ``ERROR``.
    """

    @workflow.run
    async def run(self, raw: Any = None, *extra: Any) -> InitClusterResult:
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
class ResetCluster:
    """N2VC ``reset``: stop the SyncRepos schedule; with ``uninstall_sw`` list every release (pending
    ones too) and uninstall them only when ``force`` (otherwise keep them and warn); then remove the
    local environment and the stored credentials. Returns True; uninstall failures are logged and do
    not stop the reset (N2VC logs them the same way)."""

    @workflow.run
    async def run(self, raw: Any = None, *extra: Any) -> bool:
        inp = decode_input(ResetClusterInput, raw, extra)
        cluster_uuid = validate_cluster_uuid(inp.cluster_uuid)
        force = validate_bool(inp.force, "force")
        uninstall_sw = validate_bool(inp.uninstall_sw, "uninstall_sw")
        ref = ClusterRef(cluster_uuid)
        await _call("delete_schedule", ref, ScheduleResult)
        if uninstall_sw:
            outcome: UninstallAllResult = await _call(
                "uninstall_all",
                UninstallAllInput(cluster_uuid, force=force),
                UninstallAllResult,
                timeout=timedelta(hours=1),
                retry=RetryPolicy(maximum_attempts=2, non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES),
            )
            if outcome.kept:
                workflow.logger.warning(
                    "ResetCluster %s: releases kept (force is off): %s", cluster_uuid, outcome.kept
                )
            if outcome.failed:
                workflow.logger.error(
                    "ResetCluster %s: releases not uninstalled: %s", cluster_uuid, outcome.failed
                )
        await _call(
            "record_state",
            RecordStateInput(cluster_uuid, ClusterState(cluster_uuid, False, "DISABLED")),
            None,
        )
        await _call("forget", ref, None)
        return True


@workflow.defn(name="SyncRepos")
class SyncRepos:
    """Make the cluster's repositories what ``_admin.helm_chart_repos`` says: remove what is no longer
    wanted or changed (URL, name, credentials), then add what is missing or changed. One failing
    repository is reported in ``failed`` and does not stop the others; ids in the cluster's list without
    a k8srepos document are reported in ``unknown`` (and ``failed``). The outcome is recorded on the
    cluster document; the activities record ``_admin.helm_charts_added`` as they go."""

    @workflow.run
    async def run(self, raw: Any = None, *extra: Any) -> SyncReposResult:
        inp = decode_input(SyncReposInput, raw, extra)
        cluster_uuid = validate_cluster_uuid(inp.cluster_uuid)
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


CLUSTER_WORKFLOWS = [InitCluster, ResetCluster, SyncRepos]
