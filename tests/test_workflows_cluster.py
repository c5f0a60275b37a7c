"""InitCluster, ResetCluster and SyncRepos on the time-skipping test server: SyncRepos with the real
repository activities and both helm binaries against real chart repositories, InitCluster/ResetCluster
with mocked activities (sequencing, inputs, failures; ResetCluster's UninstallKdu children against the
in-memory cluster of ``tests/support/workflows.py``) and once end to end on the sandbox cluster."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner, Worker

from activities.cluster_env import ClusterEnvs
from activities.clusters import ClusterActivities
from activities.lock import LockActivities
from activities.models import HelmUninstallInput, ReleaseRef, UninstallOutcome
from activities.release import ReleaseActivities
from activities.repos import RepoActivities
from activities.store import Store
from kduflow.config import Settings
from kduflow.plugin import activity_methods
from sandbox import SandboxCluster
from tests.conftest import HelmTools
from tests.support import charts
from tests.support import sandbox as sandbox_support
from tests.support.charts import CHARTS_DIR, ChartRepoServer, free_port
from tests.support.sandbox import LOOPBACK_NETWORKS, run_tool
from tests.support.workflows import FakeCluster, build_activities
from workflows import KDU_WORKFLOWS
from workflows.cluster import (
    CLUSTER_WORKFLOWS,
    MAX_PARALLEL_UNINSTALLS,
    PATCH_RESET_CHILDREN,
    InitCluster,
    ResetCluster,
    SyncRepos,
    repos_lock_ref,
)
from workflows.cluster_models import (
    CLUSTER_ACTIVITY_NAMES,
    AddStableResult,
    ClusterRef,
    ClusterState,
    DesiredReposResult,
    EnsureNamespaceInput,
    EnsureNamespaceResult,
    InitClusterInput,
    RecordStateInput,
    RecordSyncInput,
    ResetClusterInput,
    ScheduleInput,
    ScheduleResult,
    StoreCredentialsInput,
    SyncReposInput,
    UninstallAllInput,
    UninstallAllResult,
    VerifyClusterResult,
    schedule_id_for,
    uninstall_child_id,
)
from workflows.lock import lock_id

#: What a worker running the cluster workflows registers: ResetCluster starts UninstallKdu children
#: and SyncRepos takes a ReleaseLock, so the release workflows and the lock activities come along.
ALL_WORKFLOWS = [*CLUSTER_WORKFLOWS, *KDU_WORKFLOWS]


def lock_activities() -> list[Any]:
    return activity_methods(LockActivities())

chart_repo_factory = charts.chart_repo_factory
sandbox = sandbox_support.sandbox

KUBECONFIG_DICT = {
    "apiVersion": "v1",
    "kind": "Config",
    "current-context": "c",
    "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:1"}}],
    "users": [{"name": "u", "user": {"token": "unused"}}],
    "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
}


def real_activities(
    tools: HelmTools, store: Store, state_dir: Path, **settings: Any
) -> tuple[RepoActivities, ClusterActivities]:
    settings.setdefault("private_networks", LOOPBACK_NETWORKS)
    cfg = Settings(helm=str(tools.helm), kubectl=str(tools.kubectl), state_dir=state_dir, **settings)
    repos = RepoActivities(cfg, None, store)
    envs = ClusterEnvs(cfg, store, None, on_materialise=repos.materialise)
    repos.envs = envs
    return repos, ClusterActivities(cfg, envs, store)


# ----------------------------------------------------------------------------------------------
# SyncRepos: the difference table, real activities, real helm, real repositories.
# ----------------------------------------------------------------------------------------------

SYNC_CASES = [
    # (initial desired ids, change applied before the second sync, expected second result)
    pytest.param([], {"desired": ["A"]}, {"deleted": [], "added": {"A": "repo-a"}, "failed": []}, id="add"),
    pytest.param(["A", "B"], {"desired": ["A"]}, {"deleted": ["B"], "added": {}, "failed": []}, id="remove"),
    pytest.param(
        ["A"],
        {"desired": ["A"], "url": {"A": "second"}},
        {"deleted": ["A"], "added": {"A": "repo-a"}, "failed": []},
        id="url-change",
    ),
    pytest.param(
        ["A"],
        {"desired": ["A", "ghost"]},
        {"deleted": [], "added": {}, "failed": ["ghost"], "unknown": ["ghost"]},
        id="unknown-id",
    ),
    pytest.param(
        [],
        {"desired": ["A", "BAD", "B"]},
        {"deleted": [], "added": {"A": "repo-a", "B": "repo-b"}, "failed": ["BAD"]},
        id="one-bad-among-good",
    ),
    pytest.param(
        ["A", "B"], {"desired": []}, {"deleted": ["A", "B"], "added": {}, "failed": []}, id="remove-all"
    ),
]


@pytest.mark.parametrize(("initial", "change", "expected"), SYNC_CASES)
async def test_sync_repos_differences(
    tools: HelmTools,
    store: Store,
    tmp_path: Path,
    ts_env: Any,
    chart_repo_factory,
    initial: list[str],
    change: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    first: ChartRepoServer = chart_repo_factory()
    second: ChartRepoServer = chart_repo_factory()
    urls = {"first": first.url, "second": second.url}
    cluster = str(uuid.uuid4())
    ids = {"A": f"a-{cluster[:8]}", "B": f"b-{cluster[:8]}", "BAD": f"bad-{cluster[:8]}", "ghost": "ghost-id"}
    await store.insert_one("k8sclusters", {"_id": cluster, "credentials": KUBECONFIG_DICT, "_admin": {}})
    await store.insert_one("k8srepos", {"_id": ids["A"], "name": "repo-a", "url": first.url})
    await store.insert_one("k8srepos", {"_id": ids["B"], "name": "repo-b", "url": first.url})
    await store.insert_one(
        "k8srepos", {"_id": ids["BAD"], "name": "repo-bad", "url": f"http://127.0.0.1:{free_port()}"}
    )
    repos, _ = real_activities(tools, store, tmp_path / "worker")
    task_queue = f"tq-{uuid.uuid4()}"

    async def sync() -> Any:
        return await ts_env.client.execute_workflow(
            SyncRepos.run, SyncReposInput(cluster), id=f"sync-{uuid.uuid4()}", task_queue=task_queue
        )

    async with Worker(
        ts_env.client,
        task_queue=task_queue,
        workflows=ALL_WORKFLOWS,
        activities=[*activity_methods(repos), *lock_activities()],
    ):
        await store.update_one(
            "k8sclusters", {"_id": cluster}, {"$set": {"_admin.helm_chart_repos": [ids[k] for k in initial]}}
        )
        setup = await sync()
        assert setup.failed == {} and sorted(setup.added) == sorted(ids[k] for k in initial)
        for key, where in change.get("url", {}).items():
            await store.update_one("k8srepos", {"_id": ids[key]}, {"$set": {"url": urls[where]}})
        await store.update_one(
            "k8sclusters",
            {"_id": cluster},
            {"$set": {"_admin.helm_chart_repos": [ids[k] for k in change["desired"]]}},
        )
        result = await sync()

    assert sorted(result.deleted) == sorted(ids[k] for k in expected["deleted"])
    assert result.added == {ids[k]: name for k, name in expected["added"].items()}
    assert sorted(result.failed) == sorted(ids[k] for k in expected["failed"])
    assert result.unknown == [ids[k] for k in expected.get("unknown", [])]
    # What kduflow configured, as recorded and as helm sees it on a fresh worker.
    wanted = {ids[k]: f"repo-{k.lower()}" for k in change["desired"] if k not in ("BAD", "ghost")}
    doc = await store.find_one("k8sclusters", {"_id": cluster})
    assert doc["_admin"]["helm_charts_added"] == wanted
    assert doc["_admin"]["kduflow_repo_sync"]["added"] == result.added
    fresh, _ = real_activities(tools, store, tmp_path / "fresh-worker")
    listed = await fresh.list_repos(ClusterRef(cluster))
    expected_urls = {
        name: urls[change.get("url", {}).get(k, "first")]
        for k, name in ((k, f"repo-{k.lower()}") for k in change["desired"] if k not in ("BAD", "ghost"))
    }
    assert {r.name: r.url for r in listed.repos} == expected_urls
    # A third run with nothing changed does nothing.
    async with Worker(
        ts_env.client,
        task_queue=task_queue,
        workflows=ALL_WORKFLOWS,
        activities=[*activity_methods(repos), *lock_activities()],
    ):
        again = await sync()
    assert again.deleted == [] and again.added == {}
    assert sorted(again.failed) == sorted(ids[k] for k in expected["failed"])


# ----------------------------------------------------------------------------------------------
# InitCluster / ResetCluster with mocked activities.
# ----------------------------------------------------------------------------------------------


class Mocks:
    """One mock per cluster/repo activity, by name; records the inputs and can fail on demand."""

    def __init__(self) -> None:
        self.calls: dict[str, list[Any]] = defaultdict(list)
        self.fail: dict[str, ApplicationError] = {}

    def _hit(self, key: str, arg: Any) -> None:
        self.calls[key].append(arg)
        if key in self.fail:
            raise self.fail[key]

    def activities(self) -> list[Any]:
        m = self

        @activity.defn(name=CLUSTER_ACTIVITY_NAMES["store_credentials"])
        async def store_credentials(inp: StoreCredentialsInput) -> None:
            m._hit("store_credentials", inp)

        @activity.defn(name=CLUSTER_ACTIVITY_NAMES["verify"])
        async def verify(ref: ClusterRef) -> VerifyClusterResult:
            m._hit("verify", ref)
            return VerifyClusterResult(server_version="v1.31.0")

        @activity.defn(name=CLUSTER_ACTIVITY_NAMES["ensure_namespace"])
        async def ensure_namespace(inp: EnsureNamespaceInput) -> EnsureNamespaceResult:
            m._hit("ensure_namespace", inp)
            return EnsureNamespaceResult(inp.namespace, created=inp.namespace != "kube-system")

        @activity.defn(name=CLUSTER_ACTIVITY_NAMES["repo_add_stable"])
        async def add_stable(ref: ClusterRef) -> AddStableResult:
            m._hit("repo_add_stable", ref)
            return AddStableResult(added=True, url="https://stable.example")

        @activity.defn(name=CLUSTER_ACTIVITY_NAMES["upsert_schedule"])
        async def upsert_schedule(inp: ScheduleInput) -> ScheduleResult:
            m._hit("upsert_schedule", inp)
            return ScheduleResult(schedule_id_for(inp.cluster_uuid), "created", inp.interval_s or 600)

        @activity.defn(name=CLUSTER_ACTIVITY_NAMES["delete_schedule"])
        async def delete_schedule(ref: ClusterRef) -> ScheduleResult:
            m._hit("delete_schedule", ref)
            return ScheduleResult(schedule_id_for(ref.cluster_uuid), "deleted")

        @activity.defn(name=CLUSTER_ACTIVITY_NAMES["record_state"])
        async def record_state(inp: RecordStateInput) -> None:
            m._hit("record_state", inp)

        @activity.defn(name=CLUSTER_ACTIVITY_NAMES["uninstall_all"])
        async def uninstall_all(inp: UninstallAllInput) -> UninstallAllResult:
            m._hit("uninstall_all", inp)
            if inp.force:
                return UninstallAllResult(uninstalled=["ns/a"], failed={"ns/b": "boom"})
            return UninstallAllResult(kept=["ns/a", "ns/b"])

        @activity.defn(name=CLUSTER_ACTIVITY_NAMES["forget"])
        async def forget(ref: ClusterRef) -> None:
            m._hit("forget", ref)

        @activity.defn(name=CLUSTER_ACTIVITY_NAMES["repo_desired"])
        async def desired(ref: ClusterRef) -> Any:
            from workflows.cluster_models import DesiredReposResult

            m._hit("repo_desired", ref)
            return DesiredReposResult()

        @activity.defn(name=CLUSTER_ACTIVITY_NAMES["repo_record_sync"])
        async def record_sync(inp: RecordSyncInput) -> None:
            m._hit("repo_record_sync", inp)

        return [
            store_credentials,
            verify,
            ensure_namespace,
            add_stable,
            upsert_schedule,
            delete_schedule,
            record_state,
            uninstall_all,
            forget,
            desired,
            record_sync,
        ]


def activity_name(fn: Any) -> str:
    return activity._Definition.must_from_callable(fn).name


def mock_worker(ts_env: Any, mocks: Mocks, fake: FakeCluster | None = None, *overrides: Any) -> Worker:
    """A worker with the cluster mocks, the ``kdu.*`` mocks acting on ``fake`` (the UninstallKdu
    children of ResetCluster run against it), the real lock activities, and ``overrides`` replacing
    mocks of the same name."""
    cluster = fake or FakeCluster()
    replaced = {activity_name(fn) for fn in overrides}
    kdu = [fn for fn in build_activities(lambda: cluster) if activity_name(fn) not in replaced]
    return Worker(
        ts_env.client,
        task_queue=f"tq-{uuid.uuid4()}",
        workflows=ALL_WORKFLOWS,
        activities=[
            *(fn for fn in mocks.activities() if activity_name(fn) not in replaced),
            *kdu,
            *overrides,
        ],
        # Cancellation reaches a heartbeating mock within milliseconds.
        max_heartbeat_throttle_interval=timedelta(milliseconds=50),
        default_heartbeat_throttle_interval=timedelta(milliseconds=50),
    )


async def run_with_mocks(
    ts_env: Any, mocks: Mocks, workflow_run: Any, arg: Any, fake: FakeCluster | None = None, *overrides: Any
) -> Any:
    worker = mock_worker(ts_env, mocks, fake, *overrides)
    async with worker:
        return await ts_env.client.execute_workflow(
            workflow_run, arg, id=f"wf-{uuid.uuid4()}", task_queue=worker.task_queue
        )


@pytest.mark.parametrize(
    ("inp", "expected_id"),
    [
        (InitClusterInput(cluster_uuid="given", reuse_cluster_uuid="reused"), "reused"),
        (InitClusterInput(cluster_uuid="given"), "given"),
        (InitClusterInput(), None),
    ],
)
async def test_init_cluster_id_choice_and_steps(
    ts_env: Any, inp: InitClusterInput, expected_id: str | None
) -> None:
    mocks = Mocks()
    result = await run_with_mocks(ts_env, mocks, InitCluster.run, inp)
    if expected_id is None:
        assert uuid.UUID(result.cluster_uuid)
    else:
        assert result.cluster_uuid == expected_id
    assert result.installed_sw is False and result.server_version == "v1.31.0" and result.stable_repo_added
    assert "store_credentials" not in mocks.calls  # credentials come from the k8sclusters document
    assert mocks.calls["ensure_namespace"] == [EnsureNamespaceInput(result.cluster_uuid, "kube-system")]
    assert mocks.calls["upsert_schedule"][0].cluster_uuid == result.cluster_uuid
    assert [c.cluster_uuid for c in mocks.calls["repo_desired"]] == [
        result.cluster_uuid
    ]  # the first SyncRepos
    states = [c.state for c in mocks.calls["record_state"]]
    assert [(s.id, s.created, s.operationalState, s.error_msg) for s in states] == [
        (result.cluster_uuid, False, "ENABLED", "")
    ]


@pytest.mark.parametrize("replace", [False, True])
async def test_init_cluster_with_creds_stores_them_and_warns(ts_env: Any, replace: bool) -> None:
    mocks = Mocks()
    cluster = new_cluster()  # each run's SyncRepos takes this cluster's repository lock
    inp = InitClusterInput(
        cluster_uuid=cluster,
        k8s_creds="apiVersion: v1\n",
        namespace="osm-ns",
        sync_interval_s=-1,
        replace_credentials=replace,
    )
    result = await run_with_mocks(ts_env, mocks, InitCluster.run, inp)
    [stored] = mocks.calls["store_credentials"]
    assert stored.workflow_id.startswith("wf-")  # the InitCluster run, recorded with a replacement
    assert stored == StoreCredentialsInput(
        cluster, "apiVersion: v1\n", "osm-ns", replace_credentials=replace, workflow_id=stored.workflow_id
    )
    assert result.namespace_created and result.schedule_id == ""
    assert "upsert_schedule" not in mocks.calls


async def test_init_cluster_existing_cluster_fails_without_retry(ts_env: Any) -> None:
    mocks = Mocks()
    mocks.fail["store_credentials"] = ApplicationError(
        "cluster 'c1' already has different credentials", type="ClusterExists", non_retryable=True
    )
    inp = InitClusterInput(cluster_uuid="c1", k8s_creds="apiVersion: v1\n", sync_interval_s=-1)
    with pytest.raises(WorkflowFailureError) as err:
        await run_with_mocks(ts_env, mocks, InitCluster.run, inp)
    assert err.value.cause.cause.type == "ClusterExists"
    assert len(mocks.calls["store_credentials"]) == 1
    assert "verify" not in mocks.calls and "ensure_namespace" not in mocks.calls


async def test_init_cluster_bad_credentials_records_error(ts_env: Any) -> None:
    mocks = Mocks()
    mocks.fail["verify"] = ApplicationError("401 Unauthorized", type="CredentialsInvalid", non_retryable=True)
    with pytest.raises(WorkflowFailureError) as err:
        await run_with_mocks(ts_env, mocks, InitCluster.run, InitClusterInput(cluster_uuid="c2"))
    assert err.value.cause.cause.type == "CredentialsInvalid"
    assert len(mocks.calls["verify"]) == 1  # non-retryable: no retry
    state = mocks.calls["record_state"][-1].state
    assert state.operationalState == "ERROR" and "401 Unauthorized" in state.error_msg
    assert "ensure_namespace" not in mocks.calls and "upsert_schedule" not in mocks.calls


async def test_init_cluster_unreachable_is_retried_then_fails(ts_env: Any) -> None:
    mocks = Mocks()
    mocks.fail["verify"] = ApplicationError("connection refused", type="ClusterUnreachable")
    with pytest.raises(WorkflowFailureError):
        await run_with_mocks(ts_env, mocks, InitCluster.run, InitClusterInput(cluster_uuid="c3"))
    assert len(mocks.calls["verify"]) == 5
    assert mocks.calls["record_state"][-1].state.operationalState == "ERROR"


async def test_init_cluster_stable_failure_does_not_block(ts_env: Any) -> None:
    mocks = Mocks()
    mocks.fail["repo_add_stable"] = ApplicationError("404", type="ChartNotFound", non_retryable=True)
    result = await run_with_mocks(ts_env, mocks, InitCluster.run, InitClusterInput(cluster_uuid="c4"))
    assert result.stable_repo_added is False
    assert mocks.calls["record_state"][-1].state.operationalState == "ENABLED"


@pytest.mark.parametrize(
    ("inp", "field"),
    [
        (InitClusterInput(cluster_uuid="../x"), "cluster_uuid"),
        (InitClusterInput(reuse_cluster_uuid="-rf"), "reuse_cluster_uuid"),
        (InitClusterInput(namespace="Bad_Namespace"), "namespace"),
        (InitClusterInput(sync_interval_s=3), "sync_interval_s"),
    ],
)
async def test_init_cluster_invalid_input(ts_env: Any, inp: InitClusterInput, field: str) -> None:
    mocks = Mocks()
    with pytest.raises(WorkflowFailureError) as err:
        await run_with_mocks(ts_env, mocks, InitCluster.run, inp)
    assert err.value.cause.type == "InvalidInput" and field in str(err.value.cause)
    assert not mocks.calls


def new_cluster() -> str:
    """A cluster id of its own per test: release and repository locks are keyed by cluster."""
    return f"c-{uuid.uuid4().hex[:12]}"


def slow_uninstall(
    fake: FakeCluster, *, until: Callable[[], bool] = lambda: True, fail: str = ""
) -> tuple[Any, dict[str, int]]:
    """A ``kdu.uninstall`` mock that heartbeats for a while (at least 0.3 s, and until ``until()``),
    counting how many run at once; release ``fail`` fails the way helm's failures do."""
    seen = {"running": 0, "peak": 0}

    @activity.defn(name="kdu.uninstall")
    async def uninstall(inp: HelmUninstallInput) -> UninstallOutcome:
        fake.calls["kdu.uninstall"].append(inp)
        seen["running"] += 1
        seen["peak"] = max(seen["peak"], seen["running"])
        try:
            for _ in range(6):
                activity.heartbeat()
                await asyncio.sleep(0.05)
            while not until():
                activity.heartbeat()
                await asyncio.sleep(0.05)
        finally:
            seen["running"] -= 1
        if inp.ref.kdu_instance == fail:
            raise ApplicationError("helm: pre-delete hook failed", type="ReleaseFailed", non_retryable=True)
        rel = fake.releases.pop(inp.ref.kdu_instance)
        return UninstallOutcome(inp.ref.kdu_instance, inp.ref.namespace, status_before=rel.latest.status)

    return uninstall, seen


@pytest.mark.parametrize(
    ("force", "uninstall_sw"), [(False, False), (True, False), (False, True), (True, True)]
)
async def test_reset_cluster_semantics(ts_env: Any, force: bool, uninstall_sw: bool) -> None:
    mocks = Mocks()
    fake = FakeCluster()
    fake.add_release("a", "ns", ["deployed"])
    fake.add_release("b", "other", ["superseded", "pending-upgrade"])  # pending ones are uninstalled too
    cluster = new_cluster()
    inp = ResetClusterInput(cluster, force, uninstall_sw)
    ok = await run_with_mocks(ts_env, mocks, ResetCluster.run, inp, fake)
    assert ok is True
    assert "uninstall_all" not in mocks.calls  # legacy: only histories from before the children call it
    assert mocks.calls["delete_schedule"] == [ClusterRef(cluster)]
    assert mocks.calls["forget"] == [ClusterRef(cluster)]
    [recorded] = mocks.calls["record_state"]
    assert recorded.state == ClusterState(cluster, False, "DISABLED", "")
    reset = recorded.reset
    assert reset.workflow_id.startswith("wf-") and (reset.uninstall_sw, reset.force) == (uninstall_sw, force)
    assert bool(fake.calls["kdu.list_releases"]) == uninstall_sw
    both = ["ns/a", "other/b"]
    if uninstall_sw and force:
        assert (reset.uninstalled, reset.kept, reset.failed) == (both, [], {})
        assert fake.releases == {}
        assert sorted(c.ref.kdu_instance for c in fake.calls["kdu.uninstall"]) == ["a", "b"]
    else:
        assert (reset.uninstalled, reset.kept, reset.failed) == ([], both if uninstall_sw else [], {})
        assert sorted(fake.releases) == ["a", "b"] and not fake.calls["kdu.uninstall"]


def test_uninstall_child_ids_are_deterministic_and_bounded() -> None:
    assert uninstall_child_id("reset-c1", "ns", "web") == "reset-c1/uninstall/ns/web"
    long_a, long_b = "r" * 900 + "a", "r" * 900 + "b"
    ids = [uninstall_child_id(parent, "n" * 63, "w" * 53) for parent in (long_a, long_b, long_a)]
    assert ids[0] == ids[2] and ids[0] != ids[1] and all(len(i) < 400 for i in ids)


async def test_reset_cluster_uninstalls_through_bounded_children(ts_env: Any) -> None:
    """Every release through its own UninstallKdu child (which takes the release's lock), never more
    than MAX_PARALLEL_UNINSTALLS at once; a failing release is recorded and the reset goes on."""
    mocks = Mocks()
    fake = FakeCluster()
    releases = [("ns", f"r{i}") for i in range(9)] + [("ns2", "bad")]
    for namespace, name in releases:
        fake.add_release(name, namespace, ["deployed"])
    uninstall, seen = slow_uninstall(fake, fail="bad")
    cluster = new_cluster()
    parent_id = f"reset-{cluster}"
    async with mock_worker(ts_env, mocks, fake, uninstall) as worker:
        handle = await ts_env.client.start_workflow(
            ResetCluster.run,
            ResetClusterInput(cluster, True, True),
            id=parent_id,
            task_queue=worker.task_queue,
        )
        assert await handle.result() is True
        children = {
            (namespace, name): await ts_env.client.get_workflow_handle(
                uninstall_child_id(parent_id, namespace, name)
            ).describe()
            for namespace, name in releases
        }
        locks = [
            await ts_env.client.get_workflow_handle(lock_id(ReleaseRef(cluster, name, namespace))).describe()
            for namespace, name in releases
        ]
        history = await handle.fetch_history()
    assert 1 < seen["peak"] <= MAX_PARALLEL_UNINSTALLS
    reset = mocks.calls["record_state"][-1].reset
    assert reset.uninstalled == sorted(f"ns/r{i}" for i in range(9)) and reset.kept == []
    assert list(reset.failed) == ["ns2/bad"]
    assert reset.failed["ns2/bad"].startswith("ReleaseFailed: ")
    assert "pre-delete hook failed" in reset.failed["ns2/bad"]
    assert list(fake.releases) == ["bad"]
    assert mocks.calls["forget"] == [ClusterRef(cluster)]  # the failure did not stop the reset
    for (_, name), child in children.items():
        assert child.workflow_type == "UninstallKdu" and child.parent_id == parent_id
        expected = WorkflowExecutionStatus.FAILED if name == "bad" else WorkflowExecutionStatus.COMPLETED
        assert child.status == expected
    assert {lock.workflow_type for lock in locks} == {"ReleaseLock"}
    # New runs record the patch marker, and their histories replay.
    markers = [
        e.SerializeToString() for e in history.events if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
    ]
    assert any(PATCH_RESET_CHILDREN.encode() in m for m in markers)
    await Replayer(workflows=ALL_WORKFLOWS).replay_workflow(history)


async def test_reset_cluster_rerun_waits_for_the_abandoned_child(ts_env: Any) -> None:
    """A reset terminated mid-way leaves its uninstall running (ABANDON); a new run under the same
    workflow id addresses the same child id, waits for it to end, and does not uninstall twice."""
    mocks = Mocks()
    fake = FakeCluster()
    fake.add_release("slow", "ns", ["deployed"])
    # The first run's uninstall lasts until the second run has listed the releases (and 0.3 s more).
    uninstall, _ = slow_uninstall(fake, until=lambda: len(fake.calls["kdu.list_releases"]) >= 2)
    cluster = new_cluster()
    parent_id = f"reset-{cluster}"
    inp = ResetClusterInput(cluster, True, True)
    async with mock_worker(ts_env, mocks, fake, uninstall) as worker:
        first = await ts_env.client.start_workflow(
            ResetCluster.run, inp, id=parent_id, task_queue=worker.task_queue
        )
        for _ in range(300):
            if fake.calls["kdu.uninstall"]:
                break
            await asyncio.sleep(0.05)
        await first.terminate("operator restarts the reset")
        second = await ts_env.client.start_workflow(
            ResetCluster.run, inp, id=parent_id, task_queue=worker.task_queue
        )
        assert await second.result() is True
        events = [e.event_type async for e in second.fetch_history_events()]
        child_id = uninstall_child_id(parent_id, "ns", "slow")
        child = await ts_env.client.get_workflow_handle(child_id).describe()
    assert len(fake.calls["kdu.uninstall"]) == 1 and fake.releases == {}
    assert EventType.EVENT_TYPE_TIMER_STARTED in events  # the child id was busy: it waited
    assert child.status == WorkflowExecutionStatus.COMPLETED and child.parent_run_id == second.result_run_id
    assert mocks.calls["record_state"][-1].reset.uninstalled == ["ns/slow"]


async def test_cancelling_reset_cluster_cancels_its_children(ts_env: Any) -> None:
    mocks = Mocks()
    fake = FakeCluster()
    fake.add_release("stuck", "ns", ["deployed"])
    uninstall, seen = slow_uninstall(fake, until=lambda: False)
    cluster = new_cluster()
    parent_id = f"reset-{cluster}"
    async with mock_worker(ts_env, mocks, fake, uninstall) as worker:
        handle = await ts_env.client.start_workflow(
            ResetCluster.run,
            ResetClusterInput(cluster, True, True),
            id=parent_id,
            task_queue=worker.task_queue,
        )
        for _ in range(300):
            if seen["running"]:
                break
            await asyncio.sleep(0.05)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        child_id = uninstall_child_id(parent_id, "ns", "stuck")
        child = await ts_env.client.get_workflow_handle(child_id).describe()
    assert child.status == WorkflowExecutionStatus.CANCELED
    assert seen["running"] == 0 and "stuck" in fake.releases
    assert "record_state" not in mocks.calls and "forget" not in mocks.calls


@workflow.defn(name="ResetCluster", sandboxed=False)
class ResetClusterBeforeChildren:
    """ResetCluster's command sequence before ``reset-cluster-children-v1``: one ``uninstall_all``."""

    @workflow.run
    async def run(self, inp: ResetClusterInput) -> bool:
        ref = ClusterRef(inp.cluster_uuid)
        short = timedelta(seconds=60)
        await workflow.execute_activity(
            CLUSTER_ACTIVITY_NAMES["delete_schedule"],
            ref,
            result_type=ScheduleResult,
            start_to_close_timeout=short,
        )
        if inp.uninstall_sw:
            await workflow.execute_activity(
                CLUSTER_ACTIVITY_NAMES["uninstall_all"],
                UninstallAllInput(inp.cluster_uuid, force=inp.force),
                result_type=UninstallAllResult,
                start_to_close_timeout=timedelta(hours=1),
            )
        state = ClusterState(inp.cluster_uuid, False, "DISABLED")
        await workflow.execute_activity(
            CLUSTER_ACTIVITY_NAMES["record_state"],
            RecordStateInput(inp.cluster_uuid, state),
            start_to_close_timeout=short,
        )
        await workflow.execute_activity(CLUSTER_ACTIVITY_NAMES["forget"], ref, start_to_close_timeout=short)
        return True


@pytest.mark.parametrize("force", [False, True])
async def test_reset_cluster_replays_histories_from_before_the_children(ts_env: Any, force: bool) -> None:
    mocks = Mocks()
    task_queue = f"tq-{uuid.uuid4()}"
    async with Worker(
        ts_env.client,
        task_queue=task_queue,
        workflows=[ResetClusterBeforeChildren],
        activities=mocks.activities(),
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        handle = await ts_env.client.start_workflow(
            "ResetCluster", ResetClusterInput(new_cluster(), force, True), id=f"wf-{uuid.uuid4()}",
            task_queue=task_queue,
        )
        assert await handle.result() is True
        history = await handle.fetch_history()
    assert [c.force for c in mocks.calls["uninstall_all"]] == [force]
    # Replayed by today's ResetCluster: without the marker it takes the legacy branch, command for
    # command (a replay that diverged would raise a nondeterminism error here).
    await Replayer(workflows=ALL_WORKFLOWS).replay_workflow(history)


async def test_sync_repos_of_a_cluster_run_one_at_a_time(ts_env: Any) -> None:
    """InitCluster's first SyncRepos and other SyncRepos of the cluster (the schedule's, one started
    by hand) coincide: the cluster's repository lock runs them one after the other."""
    mocks = Mocks()
    seen = {"running": 0, "peak": 0}

    @activity.defn(name=CLUSTER_ACTIVITY_NAMES["repo_desired"])
    async def desired(ref: ClusterRef) -> DesiredReposResult:
        mocks.calls["repo_desired"].append(ref)
        seen["running"] += 1
        seen["peak"] = max(seen["peak"], seen["running"])
        try:
            await asyncio.sleep(0.3)
        finally:
            seen["running"] -= 1
        return DesiredReposResult()

    cluster = new_cluster()
    async with mock_worker(ts_env, mocks, None, desired) as worker:
        syncs = [
            await ts_env.client.start_workflow(
                SyncRepos.run,
                SyncReposInput(cluster),
                id=f"sync-repos-{cluster}-{i}",
                task_queue=worker.task_queue,
            )
            for i in range(2)
        ]
        init = await ts_env.client.start_workflow(
            InitCluster.run,
            InitClusterInput(cluster_uuid=cluster),
            id=f"init-{cluster}",
            task_queue=worker.task_queue,
        )
        await init.result()
        for sync in syncs:
            await sync.result()
        lock = await ts_env.client.get_workflow_handle(lock_id(repos_lock_ref(cluster))).describe()
    assert len(mocks.calls["repo_desired"]) == 3 and seen["peak"] == 1
    assert lock.workflow_type == "ReleaseLock"


async def test_reset_cluster_invalid_input(ts_env: Any) -> None:
    mocks = Mocks()
    with pytest.raises(WorkflowFailureError) as err:
        await run_with_mocks(ts_env, mocks, ResetCluster.run, ResetClusterInput(""))
    assert err.value.cause.type == "InvalidInput" and "cluster_uuid" in str(err.value.cause)
    assert not mocks.calls


# ----------------------------------------------------------------------------------------------
# End to end on the sandbox cluster with real activities.
# ----------------------------------------------------------------------------------------------


async def test_init_cluster_reregistration_end_to_end(
    helm4: HelmTools, store: Store, tmp_path: Path, ts_env: Any, sandbox: SandboxCluster
) -> None:
    """With the real activities: re-running InitCluster with the same kubeconfig converges, a
    different one is ClusterExists (nothing replaced), and replace_credentials replaces and records."""
    repos, clusters = real_activities(helm4, store, tmp_path / "w")
    cluster = str(uuid.uuid4())
    task_queue = f"tq-{uuid.uuid4()}"
    other = sandbox.kubeconfig(namespace="another-default")  # valid, but different content
    assert other != sandbox.kubeconfig()

    def init(creds: str, replace: bool = False) -> InitClusterInput:
        return InitClusterInput(
            cluster_uuid=cluster, k8s_creds=creds, sync_interval_s=-1, replace_credentials=replace
        )

    async with Worker(
        ts_env.client,
        task_queue=task_queue,
        workflows=ALL_WORKFLOWS,
        activities=[*activity_methods(repos), *activity_methods(clusters), *lock_activities()],
    ):
        for run in ("first", "again"):
            result = await ts_env.client.execute_workflow(
                InitCluster.run, init(sandbox.kubeconfig()), id=f"init-{run}-{cluster}", task_queue=task_queue
            )
            assert result.server_version.startswith("v1.")
        with pytest.raises(WorkflowFailureError) as err:
            await ts_env.client.execute_workflow(
                InitCluster.run, init(other), id=f"init-other-{cluster}", task_queue=task_queue
            )
        assert err.value.cause.cause.type == "ClusterExists"
        doc = await store.find_one("k8sclusters", {"_id": cluster})
        assert doc["credentials"] == sandbox.kubeconfig()
        assert "credentials_replaced" not in doc["_admin"].get("kduflow", {})
        replaced = await ts_env.client.execute_workflow(
            InitCluster.run, init(other, replace=True), id=f"init-replace-{cluster}", task_queue=task_queue
        )
        assert replaced.server_version.startswith("v1.")
    doc = await store.find_one("k8sclusters", {"_id": cluster})
    assert doc["credentials"] == other
    record = doc["_admin"]["kduflow"]["credentials_replaced"]
    assert record["workflow_id"] == f"init-replace-{cluster}"
    assert record["fingerprint"] != record["previous_fingerprint"]
    assert sandbox.token not in str(doc["_admin"])


async def test_init_and_reset_cluster_end_to_end(
    tools: HelmTools, store: Store, tmp_path: Path, ts_env: Any, sandbox: SandboxCluster, chart_repo_factory
) -> None:
    stable: ChartRepoServer = chart_repo_factory()
    extra: ChartRepoServer = chart_repo_factory()
    repos, clusters = real_activities(tools, store, tmp_path / "w", stable_repo_url=stable.url)
    cluster = str(uuid.uuid4())
    await store.insert_one("k8srepos", {"_id": "r-extra", "name": "extra", "url": extra.url})
    await store.insert_one("k8sclusters", {"_id": cluster, "_admin": {"helm_chart_repos": ["r-extra"]}})
    task_queue = f"tq-{uuid.uuid4()}"
    ns = f"init-{tools.dialect}"
    async with Worker(
        ts_env.client,
        task_queue=task_queue,
        workflows=ALL_WORKFLOWS,
        activities=[
            *activity_methods(repos),
            *activity_methods(clusters),
            *activity_methods(ReleaseActivities(clusters.settings, clusters.envs, charts=repos.charts)),
            *lock_activities(),
        ],
    ):
        result = await ts_env.client.execute_workflow(
            InitCluster.run,
            InitClusterInput(
                reuse_cluster_uuid=cluster, k8s_creds=sandbox.kubeconfig(), namespace=ns, sync_interval_s=3600
            ),
            id=f"init-{cluster}",
            task_queue=task_queue,
        )
        assert result.cluster_uuid == cluster and result.server_version.startswith("v1.")
        assert result.namespace_created and result.stable_repo_added
        assert sandbox.get("namespaces", None, ns) is not None
        doc = await store.find_one("k8sclusters", {"_id": cluster})
        assert doc["_admin"]["helm-chart-v3"] == {
            "id": cluster,
            "created": False,
            "operationalState": "ENABLED",
            "error_msg": "",
        }
        assert doc["_admin"]["helm_charts_added"] == {"r-extra": "extra"}
        desc = await ts_env.client.get_schedule_handle(result.schedule_id).describe()
        assert desc.schedule.action.workflow == "SyncRepos"

        env = await clusters.envs.get(cluster)
        assert await repos.ensure_chart_available(env, "stable", "webapp", "0.1.0") == "stable/webapp"
        out = run_tool(
            [tools.helm, "install", "rel1", "extra/webapp", "--version", "0.2.0", "-n", ns], env.env
        )
        assert out.returncode == 0, out.stderr
        out = run_tool([tools.helm, "install", "rel2", CHARTS_DIR / "statefuldb", "-n", ns], env.env)
        assert out.returncode == 0, out.stderr

        ok = await ts_env.client.execute_workflow(
            ResetCluster.run,
            ResetClusterInput(cluster, True, True),
            id=f"reset-{cluster}",
            task_queue=task_queue,
        )
    assert ok is True
    release_secrets = [s["metadata"]["name"] for s in sandbox.list("secrets", ns)]
    assert not [n for n in release_secrets if n.startswith("sh.helm.release.v1.rel")], release_secrets
    doc = await store.find_one("k8sclusters", {"_id": cluster})
    assert "credentials" not in doc and doc["_admin"]["helm-chart-v3"]["operationalState"] == "DISABLED"
    reset = doc["_admin"]["kduflow_reset"]
    assert reset["workflow_id"] == f"reset-{cluster}" and reset["force"] and reset["uninstall_sw"]
    assert {f"{ns}/rel1", f"{ns}/rel2"} <= set(reset["uninstalled"]) and reset["kept"] == []
    assert not (tmp_path / "w" / "clusters" / cluster).exists()
    with pytest.raises(RPCError):
        await ts_env.client.get_schedule_handle(schedule_id_for(cluster)).describe()
