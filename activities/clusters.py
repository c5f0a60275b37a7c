"""Cluster activities: verify, credentials, namespace, OSM state, reset helpers, SyncRepos schedule.

N2VC's ``init_env``/``reset`` split into idempotent steps the ``InitCluster`` and ``ResetCluster``
workflows sequence. Kubeconfigs pass the kubeconfig policy (``activities/kubeconfig_policy.py``) and
are stored through ``ClusterEnvs.store_credentials`` (encrypted at rest when ``KDUFLOW_SECRET_KEY``
is set), never replacing a registered cluster's different credentials without
``replace_credentials``; they are never logged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.client import (
    Schedule,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode

from activities import helm_cli
from activities.cluster_env import CLUSTERS_COLLECTION, ClusterEnv, ClusterEnvs, validate_cluster_uuid
from activities.errors import (
    ClusterUnreachable,
    CredentialsInvalid,
    InvalidInput,
    KduflowError,
    classify_helm_stderr,
    to_application_error,
)
from activities.runner import Runner, metered
from activities.store import Store
from contract.cluster import (
    CLUSTER_ACTIVITY_NAMES,
    HELM_V3_ADMIN_KEY,
    ClusterRef,
    EnsureNamespaceInput,
    EnsureNamespaceResult,
    RecordStateInput,
    ResetRecord,
    ScheduleInput,
    ScheduleResult,
    StoreCredentialsInput,
    SyncReposInput,
    UninstallAllInput,
    UninstallAllResult,
    VerifyClusterResult,
    schedule_id_for,
)
from kduflow.config import Settings

#: The SDK's adapter: inside an activity, records carry its ids (message and `extra`).
log = activity.LoggerAdapter(logging.getLogger(__name__), None)

#: Default seconds between two SyncRepos runs of a cluster's schedule.
DEFAULT_SYNC_INTERVAL_S = 600
MIN_SYNC_INTERVAL_S = 10
MAX_SYNC_INTERVAL_S = 30 * 86_400
KUBECTL_TIMEOUT = 60.0
#: kubectl's own per-request timeout, so an unreachable server fails fast and is retried by Temporal.
REQUEST_TIMEOUT = "15s"
_STATES = {"ENABLED", "ERROR", "DISABLED"}
# kubectl's messages for a kubeconfig it cannot use at all (never fixed by a retry).
_BAD_KUBECONFIG = re.compile(
    r"error loading config file|invalid configuration|no configuration has been provided|"
    r"couldn't get current server API group list: .*(unauthorized|forbidden)|context was not found|"
    r"unable to load root certificates|failed to parse|illegal base64",
    re.IGNORECASE,
)
# kubectl's own wording ("The connection to the server h:p was refused - did you specify ...").
_KUBECTL_UNREACHABLE = re.compile(
    r"unable to connect to the server|connection to the server \S+ was refused|timed out waiting|"
    r"context deadline exceeded|Client\.Timeout exceeded",
    re.IGNORECASE,
)
_NS_NOT_FOUND = re.compile(r"NotFound|not found", re.IGNORECASE)
_ALREADY_EXISTS = re.compile(r"AlreadyExists|already exists", re.IGNORECASE)
SYNC_REPOS_WORKFLOW = "SyncRepos"
#: A schedule's runs start up to this fraction of the interval late, at most ``MAX_SYNC_JITTER_S``.
SYNC_JITTER_FRACTION = 0.1
MAX_SYNC_JITTER_S = 60.0
#: Where ``record_state`` writes ResetCluster's outcome.
RESET_FIELD = "_admin.kduflow_reset"
#: Bounds of that record: entries kept per list and characters per error message.
_RESET_MAX_ENTRIES = 1000
_RESET_MAX_MESSAGE = 500


def sync_schedule_offset(cluster_uuid: str, interval_s: int) -> timedelta:
    """The phase of the cluster's SyncRepos schedule within its interval, in whole seconds.

    A digest of the cluster id modulo the interval: clusters spread over the interval instead of all
    syncing at the same instant, and a cluster keeps its phase whichever worker writes the schedule.
    """
    digest = hashlib.sha256(cluster_uuid.encode("utf-8")).digest()
    return timedelta(seconds=int.from_bytes(digest[:8], "big") % interval_s)


def sync_schedule_jitter(interval_s: int) -> timedelta:
    """Random delay Temporal adds to each scheduled run: 10 % of the interval, at most 60 s."""
    return timedelta(seconds=min(interval_s * SYNC_JITTER_FRACTION, MAX_SYNC_JITTER_S))


def _reset_document(record: ResetRecord) -> dict[str, Any]:
    """ResetCluster's outcome as stored: bounded lists of strings, bounded messages, a time."""
    failed = dict(list((record.failed or {}).items())[:_RESET_MAX_ENTRIES])
    return {
        "time": time.time(),
        "workflow_id": str(record.workflow_id)[:_RESET_MAX_MESSAGE],
        "uninstall_sw": record.uninstall_sw is True,
        "force": record.force is True,
        "uninstalled": [str(k) for k in (record.uninstalled or [])[:_RESET_MAX_ENTRIES]],
        "kept": [str(k) for k in (record.kept or [])[:_RESET_MAX_ENTRIES]],
        "failed": {str(k): str(v)[:_RESET_MAX_MESSAGE] for k, v in failed.items()},
    }


def build_server_version_argv(kubectl: str) -> list[str]:
    """``kubectl version -o json`` (client and server) with a bounded request timeout."""
    return [kubectl, "version", "--output", "json", f"--request-timeout={REQUEST_TIMEOUT}"]


def parse_server_version(stdout: bytes | str) -> tuple[str, str]:
    """``(gitVersion, platform)`` of ``serverVersion`` in ``kubectl version -o json``; ("", "") if absent."""
    text = stdout.decode("utf-8", "replace") if isinstance(stdout, bytes) else stdout
    start = text.find("{")
    try:
        doc = json.loads(text[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        return "", ""
    server = (doc or {}).get("serverVersion") or {}
    return str(server.get("gitVersion") or ""), str(server.get("platform") or "")


def build_get_namespace_argv(kubectl: str, namespace: str) -> list[str]:
    return [
        kubectl,
        "get",
        "namespace",
        helm_cli.check_namespace(namespace),
        "--output",
        "name",
        f"--request-timeout={REQUEST_TIMEOUT}",
    ]


def _calling_workflow_id() -> str:
    """The workflow id of the running activity ("" outside an activity)."""
    try:
        return activity.info().workflow_id or ""
    except RuntimeError:
        return ""


def classify_kubectl_failure(stderr: bytes | str, returncode: int, context: str) -> KduflowError:
    """A failed kubectl call as an error of the tree; unusable kubeconfigs are CredentialsInvalid."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    if _BAD_KUBECONFIG.search(text):
        err = classify_helm_stderr(text, returncode, context=context)
        return CredentialsInvalid(err.message, details=err.details)
    err = classify_helm_stderr(text, returncode, context=context)
    if err.type_name == "HelmError" and _KUBECTL_UNREACHABLE.search(text):
        return ClusterUnreachable(err.message, details=err.details)
    return err


class ClusterActivities:
    """The ``cluster.*`` activities, built as ``ClusterActivities(settings, envs, store, runner=None)``.

    ``sync_interval_s`` is the default SyncRepos schedule interval (``settings.repo_sync_interval`` when
    the settings carry one).
    """

    def __init__(
        self,
        settings: Settings,
        envs: ClusterEnvs,
        store: Store,
        runner: Runner | None = None,
        *,
        sync_interval_s: int | None = None,
    ) -> None:
        self.settings = settings
        self.envs = envs
        self.store = store
        self.runner: Runner = metered(runner, settings.helm)
        configured = getattr(settings, "repo_sync_interval", None)
        self.sync_interval_s = int(sync_interval_s or configured or DEFAULT_SYNC_INTERVAL_S)

    async def _env(self, cluster_uuid: str) -> ClusterEnv:
        validate_cluster_uuid(cluster_uuid)
        return await self.envs.get(cluster_uuid)

    async def _helm_version(self, env: ClusterEnv) -> helm_cli.HelmVersion:
        result = await self.runner.run(
            helm_cli.build_version_argv(self.settings.helm), env=env.env, timeout=KUBECTL_TIMEOUT
        )
        try:
            return helm_cli.HelmVersion.parse(result.stdout)
        except KduflowError as err:
            raise to_application_error(err) from None

    @activity.defn(name=CLUSTER_ACTIVITY_NAMES["store_credentials"])
    async def store_credentials(self, inp: StoreCredentialsInput) -> None:
        """Apply the kubeconfig policy and store the kubeconfig in ``k8sclusters.{_id}.credentials``
        (encrypted when a key is configured), with ``namespace`` when given.

        Idempotent: credentials with the same content (a retry of the same InitCluster) are left
        as they are. Different credentials of an already registered cluster are replaced only with
        ``replace_credentials``, recorded in ``_admin.kduflow.credentials_replaced`` with
        ``workflow_id`` (default: the calling workflow) and fingerprints, never the content.

        Raises ``InvalidInput`` (bad id/namespace), ``CredentialsInvalid`` (kubeconfig refused by
        the policy), ``ClusterExists`` (different credentials, no ``replace_credentials``): all
        non-retryable and raised before anything is written.
        """
        validate_cluster_uuid(inp.cluster_uuid)
        if not isinstance(inp.k8s_creds, str) or not inp.k8s_creds.strip():
            raise to_application_error(InvalidInput("k8s_creds: empty kubeconfig"))
        if inp.namespace:
            try:
                helm_cli.check_namespace(inp.namespace)
            except KduflowError as err:
                raise to_application_error(err) from None
        outcome = await self.envs.store_credentials(
            inp.cluster_uuid,
            inp.k8s_creds,
            replace=inp.replace_credentials is True,
            workflow_id=inp.workflow_id or _calling_workflow_id(),
        )
        if outcome != "unchanged":
            log.info("cluster %s: credentials %s", inp.cluster_uuid, outcome)
        if inp.namespace:
            await self.store.update_one(
                CLUSTERS_COLLECTION, {"_id": inp.cluster_uuid}, {"$set": {"namespace": inp.namespace}}
            )

    @activity.defn(name=CLUSTER_ACTIVITY_NAMES["verify"])
    async def verify(self, ref: ClusterRef) -> VerifyClusterResult:
        """Ask the API server its version with the stored credentials.

        Raises ``ClusterNotFound``/``CredentialsInvalid`` (no or unusable kubeconfig, 401/403, bad
        certificate) non-retryable; ``ClusterUnreachable``/``ServerError`` retryable.
        """
        env = await self._env(ref.cluster_uuid)
        result = await self.runner.run(
            build_server_version_argv(self.settings.kubectl), env=env.env, timeout=KUBECTL_TIMEOUT
        )
        version, platform = parse_server_version(result.stdout)
        if result.returncode != 0 or not version:
            stderr = result.stderr or b"no server version in kubectl's output"
            raise to_application_error(
                classify_kubectl_failure(stderr, result.returncode, f"cluster {ref.cluster_uuid}")
            )
        return VerifyClusterResult(server_version=version, platform=platform)

    @activity.defn(name=CLUSTER_ACTIVITY_NAMES["ensure_namespace"])
    async def ensure_namespace(self, inp: EnsureNamespaceInput) -> EnsureNamespaceResult:
        """Create ``namespace`` unless it exists (``kube-system`` is never created). Idempotent."""
        try:
            helm_cli.check_namespace(inp.namespace)
        except KduflowError as err:
            raise to_application_error(err) from None
        if inp.namespace == "kube-system":
            return EnsureNamespaceResult(namespace=inp.namespace, created=False)
        env = await self._env(inp.cluster_uuid)
        got = await self.runner.run(
            build_get_namespace_argv(self.settings.kubectl, inp.namespace),
            env=env.env,
            timeout=KUBECTL_TIMEOUT,
        )
        if got.returncode == 0:
            return EnsureNamespaceResult(namespace=inp.namespace, created=False)
        if not _NS_NOT_FOUND.search(got.stderr.decode("utf-8", "replace")):
            raise to_application_error(
                classify_kubectl_failure(got.stderr, got.returncode, f"get namespace {inp.namespace}")
            )
        argv = [
            self.settings.kubectl,
            "create",
            "namespace",
            inp.namespace,
            f"--request-timeout={REQUEST_TIMEOUT}",
        ]
        made = await self.runner.run(argv, env=env.env, timeout=KUBECTL_TIMEOUT)
        if made.returncode != 0:
            if _ALREADY_EXISTS.search(made.stderr.decode("utf-8", "replace")):
                return EnsureNamespaceResult(namespace=inp.namespace, created=False)
            raise to_application_error(
                classify_kubectl_failure(made.stderr, made.returncode, f"create namespace {inp.namespace}")
            )
        log.info("cluster %s: created namespace %s", inp.cluster_uuid, inp.namespace)
        return EnsureNamespaceResult(namespace=inp.namespace, created=True)

    @activity.defn(name=CLUSTER_ACTIVITY_NAMES["record_state"])
    async def record_state(self, inp: RecordStateInput) -> None:
        """Write ``_admin.helm-chart-v3`` {id, created, operationalState, error_msg} (no-op without a doc),
        and with ``reset`` ResetCluster's outcome in ``_admin.kduflow_reset``."""
        validate_cluster_uuid(inp.cluster_uuid)
        state = inp.state
        if state.operationalState not in _STATES:
            raise to_application_error(
                InvalidInput(
                    f"state.operationalState: {state.operationalState!r} is not one of {sorted(_STATES)}"
                )
            )
        doc = {
            "id": state.id,
            "created": bool(state.created),
            "operationalState": state.operationalState,
            "error_msg": str(state.error_msg)[:2000],
        }
        update: dict[str, Any] = {f"_admin.{HELM_V3_ADMIN_KEY}": doc}
        if inp.reset is not None:
            update[RESET_FIELD] = _reset_document(inp.reset)
        await self.store.update_one(CLUSTERS_COLLECTION, {"_id": inp.cluster_uuid}, {"$set": update})

    @activity.defn(name=CLUSTER_ACTIVITY_NAMES["uninstall_all"])
    async def uninstall_all(self, inp: UninstallAllInput) -> UninstallAllResult:
        """List every release of every status (pending ones included); with ``force`` uninstall each one,
        collecting failures; without it uninstall nothing and report them as kept (N2VC ``reset``).

        Legacy: only ResetCluster histories recorded before ``reset-cluster-children-v1`` call it
        (kept registered so they replay and finish). It runs outside the release locks; ResetCluster
        now lists with ``kdu.list_releases`` and uninstalls through UninstallKdu child workflows.
        """
        env = await self._env(inp.cluster_uuid)
        version = await self._helm_version(env)
        listed = await self.runner.run(
            helm_cli.build_list_argv(self.settings.helm, version), env=env.env, timeout=KUBECTL_TIMEOUT
        )
        if listed.returncode != 0:
            raise to_application_error(
                classify_helm_stderr(listed.stderr, listed.returncode, context="helm list")
            )
        releases = helm_cli.parse_list(listed.stdout)
        out = UninstallAllResult()
        for rel in releases:
            key = f"{rel.namespace}/{rel.name}"
            if not inp.force:
                out.kept.append(key)
                continue
            argv = helm_cli.build_uninstall_argv(
                self.settings.helm,
                version,
                release=rel.name,
                namespace=rel.namespace,
                timeout=inp.timeout,
                wait=False,
            )
            done = await self.runner.run(argv, env=env.env, timeout=inp.timeout + 30)
            stderr = done.stderr.decode("utf-8", "replace")
            if done.returncode == 0 or re.search(r"release: not found|not found", stderr):
                out.uninstalled.append(key)
            else:
                out.failed[key] = classify_helm_stderr(
                    stderr, done.returncode, context=f"uninstall {key}"
                ).message
                log.error("cluster %s: could not uninstall %s: %s", inp.cluster_uuid, key, out.failed[key])
        if out.kept:
            log.warning(
                "cluster %s: %d release(s) kept (force is off): %s",
                inp.cluster_uuid,
                len(out.kept),
                ", ".join(out.kept),
            )
        return out

    @activity.defn(name=CLUSTER_ACTIVITY_NAMES["forget"])
    async def forget(self, ref: ClusterRef) -> None:
        """Remove this worker's local environment and the stored credentials and repository records.
        Idempotent; other workers drop their copies when they find the credentials gone."""
        validate_cluster_uuid(ref.cluster_uuid)
        await self.envs.forget(ref.cluster_uuid)
        unset = {"credentials": "", "_admin.kduflow_repos": "", "_admin.helm_charts_added": ""}
        await self.store.update_one(CLUSTERS_COLLECTION, {"_id": ref.cluster_uuid}, {"$unset": unset})

    # -- the per-cluster SyncRepos schedule -------------------------------------------------------

    def _schedule(self, cluster_uuid: str, interval_s: int, task_queue: str) -> Schedule:
        return Schedule(
            action=ScheduleActionStartWorkflow(
                SYNC_REPOS_WORKFLOW,
                SyncReposInput(cluster_uuid=cluster_uuid),
                # Temporal appends each run's scheduled time to this id.
                id=f"sync-repos-{cluster_uuid}",
                task_queue=task_queue,
                execution_timeout=timedelta(seconds=max(interval_s, 300)),
            ),
            spec=ScheduleSpec(
                intervals=[
                    ScheduleIntervalSpec(
                        every=timedelta(seconds=interval_s),
                        offset=sync_schedule_offset(cluster_uuid, interval_s),
                    )
                ],
                jitter=sync_schedule_jitter(interval_s),
            ),
            policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        )

    @activity.defn(name=CLUSTER_ACTIVITY_NAMES["upsert_schedule"])
    async def upsert_schedule(self, inp: ScheduleInput) -> ScheduleResult:
        """Create, or update in place, the Schedule running SyncRepos for the cluster.

        Runs every ``interval_s`` at the cluster's own phase (``sync_schedule_offset``) plus a random
        jitter (``sync_schedule_jitter``), never two at once (overlap: skip). An update replaces the
        spec and action but keeps the schedule's state: a schedule an operator paused stays paused,
        with its note. Any SyncRepos of the cluster also serialises on the cluster's repository lock.
        """
        validate_cluster_uuid(inp.cluster_uuid)
        # Any workflow can schedule this activity: bound the interval like InitCluster does, and
        # start SyncRepos only on this worker's own task queue (a caller must not point a recurring
        # schedule at a queue the operator does not serve).
        if isinstance(inp.interval_s, bool) or not isinstance(inp.interval_s, int):
            raise to_application_error(InvalidInput("interval_s: must be an integer"))
        interval = int(inp.interval_s or self.sync_interval_s)
        if not MIN_SYNC_INTERVAL_S <= interval <= MAX_SYNC_INTERVAL_S:
            raise to_application_error(
                InvalidInput(f"interval_s: {interval} is not between {MIN_SYNC_INTERVAL_S} and "
                             f"{MAX_SYNC_INTERVAL_S} seconds")
            )
        task_queue = activity.info().task_queue
        if inp.task_queue and inp.task_queue != task_queue:
            raise to_application_error(
                InvalidInput("task_queue: SyncRepos schedules run on the task queue of this worker only")
            )
        client = activity.client()
        schedule_id = schedule_id_for(inp.cluster_uuid)
        schedule = self._schedule(inp.cluster_uuid, interval, task_queue)
        try:
            await client.create_schedule(schedule_id, schedule)
            action = "created"
        except ScheduleAlreadyRunningError:

            def replace(current: ScheduleUpdateInput) -> ScheduleUpdate:
                # An update replaces the whole schedule, state included: without the current state
                # it would un-pause a schedule an operator paused and drop the note saying why.
                state = current.description.schedule.state
                return ScheduleUpdate(schedule=dataclasses.replace(schedule, state=state))

            await client.get_schedule_handle(schedule_id).update(replace)
            action = "updated"
        log.info(
            "cluster %s: SyncRepos schedule %s %s (every %ss)",
            inp.cluster_uuid,
            schedule_id,
            action,
            interval,
        )
        return ScheduleResult(schedule_id=schedule_id, action=action, interval_s=interval)

    @activity.defn(name=CLUSTER_ACTIVITY_NAMES["delete_schedule"])
    async def delete_schedule(self, ref: ClusterRef) -> ScheduleResult:
        """Delete the cluster's SyncRepos schedule and ask its running SyncRepos to cancel
        (``cancelled``: their workflow ids); ``action="absent"`` when there was no schedule.

        The schedule is paused first, so it starts no run between listing the running ones and the
        deletion; the cancellations go out before the deletion, so a retry after a failure in
        between finds the schedule and its runs again. SyncRepos started otherwise (InitCluster's
        first one, one started by hand) are not the schedule's and are left alone.
        """
        validate_cluster_uuid(ref.cluster_uuid)
        schedule_id = schedule_id_for(ref.cluster_uuid)
        client = activity.client()
        handle = client.get_schedule_handle(schedule_id)
        cancelled: list[str] = []
        try:
            await handle.pause(note="kduflow: deleting the schedule")
            described = await handle.describe()
            for run in described.info.running_actions:
                if not isinstance(run, ScheduleActionExecutionStartWorkflow):
                    continue
                try:
                    # By its first run: the current run of that chain, never a later workflow that
                    # reuses the id.
                    await client.get_workflow_handle(
                        run.workflow_id, first_execution_run_id=run.first_execution_run_id or None
                    ).cancel()
                except RPCError as err:
                    # Closed meanwhile: nothing left to cancel.
                    if err.status != RPCStatusCode.NOT_FOUND:
                        raise
                    continue
                cancelled.append(run.workflow_id)
            await handle.delete()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return ScheduleResult(schedule_id=schedule_id, action="absent", cancelled=cancelled)
            raise
        if cancelled:
            log.info(
                "cluster %s: SyncRepos schedule %s deleted; cancelling %s",
                ref.cluster_uuid, schedule_id, ", ".join(cancelled),
            )  # fmt: skip
        return ScheduleResult(schedule_id=schedule_id, action="deleted", cancelled=cancelled)
