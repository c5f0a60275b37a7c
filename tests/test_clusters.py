"""Cluster activities against the sandbox cluster with real kubectl/helm (both dialects), and the
schedule activities against the Temporal test server."""

from __future__ import annotations

import asyncio
import stat
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.api.enums.v1 import EventType
from temporalio.client import ScheduleDescription
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import ActivityEnvironment

from activities.cluster_env import ClusterEnvs
from activities.clusters import (
    ClusterActivities,
    parse_server_version,
    sync_schedule_jitter,
    sync_schedule_offset,
)
from activities.repos import RepoActivities
from activities.secretbox import is_envelope
from activities.store import Store
from kduflow.config import Settings
from sandbox import SandboxCluster
from tests.conftest import HelmTools
from tests.support import sandbox as sandbox_support
from tests.support.charts import CHARTS_DIR, free_port
from tests.support.sandbox import LOOPBACK_NETWORKS, run_tool
from workflows.cluster_models import (
    ClusterRef,
    ClusterState,
    EnsureNamespaceInput,
    RecordStateInput,
    ResetRecord,
    ScheduleInput,
    StoreCredentialsInput,
    UninstallAllInput,
    schedule_id_for,
)

sandbox = sandbox_support.sandbox


def new_id() -> str:
    return str(uuid.uuid4())


def make(tools: HelmTools, store: Store, state_dir: Path, secret_key: str = "") -> ClusterActivities:
    settings = Settings(
        helm=str(tools.helm), kubectl=str(tools.kubectl), state_dir=state_dir, secret_key=secret_key,
        private_networks=LOOPBACK_NETWORKS,
    )
    repos = RepoActivities(settings, None, store)
    from activities.secretbox import SecretBox

    envs = ClusterEnvs(settings, store, SecretBox.from_setting(secret_key), on_materialise=repos.materialise)
    repos.envs = envs
    return ClusterActivities(settings, envs, store)


async def register(acts: ClusterActivities, kubeconfig: str) -> str:
    cluster = new_id()
    await acts.store_credentials(StoreCredentialsInput(cluster, kubeconfig, "kdu-ns"))
    return cluster


def test_parse_server_version() -> None:
    out = (
        '{"clientVersion":{"gitVersion":"v1.31.9"},'
        '"serverVersion":{"gitVersion":"v1.31.0","platform":"linux/amd64"}}'
    )
    assert parse_server_version(out) == ("v1.31.0", "linux/amd64")
    assert parse_server_version('{"clientVersion":{}}') == ("", "")
    assert parse_server_version("garbage") == ("", "")


async def test_verify_answers_with_the_server_version(
    tools: HelmTools, store: Store, tmp_path: Path, sandbox: SandboxCluster
) -> None:
    acts = make(tools, store, tmp_path / "w")
    cluster = await register(acts, sandbox.kubeconfig())
    out = await acts.verify(ClusterRef(cluster))
    assert out.server_version.startswith("v1.")
    doc = await store.find_one("k8sclusters", {"_id": cluster})
    assert doc["namespace"] == "kdu-ns"


async def test_verify_wrong_token_is_credentials_invalid(
    tools: HelmTools, store: Store, tmp_path: Path, sandbox: SandboxCluster
) -> None:
    acts = make(tools, store, tmp_path / "w")
    config = yaml.safe_load(sandbox.kubeconfig())
    config["users"][0]["user"]["token"] = "wrong-token-value"
    cluster = await register(acts, yaml.safe_dump(config))
    with pytest.raises(ApplicationError) as err:
        await acts.verify(ClusterRef(cluster))
    assert err.value.type == "CredentialsInvalid" and err.value.non_retryable
    assert "wrong-token-value" not in str(err.value)


async def test_verify_unreachable_is_retryable(
    tools: HelmTools, store: Store, tmp_path: Path, sandbox: SandboxCluster
) -> None:
    acts = make(tools, store, tmp_path / "w")
    config = yaml.safe_load(sandbox.kubeconfig())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"
    cluster = await register(acts, yaml.safe_dump(config))
    with pytest.raises(ApplicationError) as err:
        await acts.verify(ClusterRef(cluster))
    assert err.value.type == "ClusterUnreachable" and not err.value.non_retryable


@pytest.mark.parametrize("creds", ["clusters: [unterminated", "just a string", "{}", "clusters: []\n"])
async def test_malformed_kubeconfig_is_refused(
    tools: HelmTools, store: Store, tmp_path: Path, creds: str
) -> None:
    acts = make(tools, store, tmp_path / "w")
    with pytest.raises(ApplicationError) as err:
        await acts.store_credentials(StoreCredentialsInput(new_id(), creds))
    assert err.value.type == "CredentialsInvalid" and err.value.non_retryable
    # Written around the activity (as OSM's NBI does): verify refuses it the same way.
    cluster = new_id()
    await store.insert_one("k8sclusters", {"_id": cluster, "credentials": creds})
    with pytest.raises(ApplicationError) as err:
        await acts.verify(ClusterRef(cluster))
    assert err.value.type in ("CredentialsInvalid", "ClusterNotFound") and err.value.non_retryable


async def test_credentials_encrypted_at_rest(
    tools: HelmTools, store: Store, tmp_path: Path, sandbox: SandboxCluster
) -> None:
    import base64
    import os

    key = "k1:" + base64.b64encode(os.urandom(32)).decode()
    acts = make(tools, store, tmp_path / "w", secret_key=key)
    cluster = await register(acts, sandbox.kubeconfig())
    doc = await store.find_one("k8sclusters", {"_id": cluster})
    assert is_envelope(doc["credentials"]) and sandbox.token not in str(doc)
    assert (await acts.verify(ClusterRef(cluster))).server_version
    kubeconfig = tmp_path / "w" / "clusters" / cluster / ".kube" / "config"
    assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o600
    other = make(tools, store, tmp_path / "w2", secret_key="k1:" + base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(ApplicationError) as err:
        await other.verify(ClusterRef(cluster))
    assert err.value.type == "CredentialsInvalid"


async def test_ensure_namespace(
    tools: HelmTools, store: Store, tmp_path: Path, sandbox: SandboxCluster
) -> None:
    acts = make(tools, store, tmp_path / "w")
    cluster = await register(acts, sandbox.kubeconfig())
    ns = f"ns-{tools.dialect}-{uuid.uuid4().hex[:6]}"
    assert (await acts.ensure_namespace(EnsureNamespaceInput(cluster, ns))).created is True
    assert sandbox.get("namespaces", None, ns) is not None
    assert (await acts.ensure_namespace(EnsureNamespaceInput(cluster, ns))).created is False
    assert (await acts.ensure_namespace(EnsureNamespaceInput(cluster, "kube-system"))).created is False
    with pytest.raises(ApplicationError) as err:
        await acts.ensure_namespace(EnsureNamespaceInput(cluster, "Bad_NS"))
    assert err.value.type == "InvalidInput" and "namespace" in str(err.value)


async def test_record_state_and_forget(
    tools: HelmTools, store: Store, tmp_path: Path, sandbox: SandboxCluster
) -> None:
    acts = make(tools, store, tmp_path / "w")
    cluster = await register(acts, sandbox.kubeconfig())
    await acts.record_state(RecordStateInput(cluster, ClusterState(cluster, False, "ERROR", "boom")))
    doc = await store.find_one("k8sclusters", {"_id": cluster})
    assert doc["_admin"]["helm-chart-v3"] == {
        "id": cluster,
        "created": False,
        "operationalState": "ERROR",
        "error_msg": "boom",
    }
    with pytest.raises(ApplicationError) as err:
        await acts.record_state(RecordStateInput(cluster, ClusterState(cluster, False, "FINE")))
    assert err.value.type == "InvalidInput"
    assert "kduflow_reset" not in doc["_admin"]
    reset = ResetRecord("wf-reset", True, True, ["ns/a"], [], {"ns/b": "ReleaseFailed: " + "x" * 5000})
    await acts.record_state(RecordStateInput(cluster, ClusterState(cluster, False, "DISABLED"), reset=reset))
    doc = await store.find_one("k8sclusters", {"_id": cluster})
    recorded = doc["_admin"]["kduflow_reset"]
    assert doc["_admin"]["helm-chart-v3"]["operationalState"] == "DISABLED"
    assert {k: recorded[k] for k in ("workflow_id", "uninstall_sw", "force", "uninstalled", "kept")} == {
        "workflow_id": "wf-reset", "uninstall_sw": True, "force": True, "uninstalled": ["ns/a"], "kept": [],
    }
    assert list(recorded["failed"]) == ["ns/b"] and len(recorded["failed"]["ns/b"]) == 500
    await acts.record_state(RecordStateInput(cluster, ClusterState(cluster, False, "ERROR", "boom")))
    await acts.verify(ClusterRef(cluster))
    root = tmp_path / "w" / "clusters" / cluster
    assert root.is_dir()
    await acts.forget(ClusterRef(cluster))
    assert not root.exists()
    doc = await store.find_one("k8sclusters", {"_id": cluster})
    assert "credentials" not in doc and doc["_admin"]["helm-chart-v3"]["operationalState"] == "ERROR"
    await acts.forget(ClusterRef(cluster))  # idempotent
    with pytest.raises(ApplicationError) as err:
        await acts.verify(ClusterRef(cluster))
    assert err.value.type == "ClusterNotFound"


async def test_uninstall_all(tools: HelmTools, store: Store, tmp_path: Path, sandbox: SandboxCluster) -> None:
    acts = make(tools, store, tmp_path / "w")
    cluster = await register(acts, sandbox.kubeconfig())
    env = await acts.envs.get(cluster)
    ns = f"rst-{tools.dialect}"
    names = [f"web-{tools.dialect}-1", f"web-{tools.dialect}-2"]
    for name in names:
        out = run_tool(
            [tools.helm, "install", name, CHARTS_DIR / "webapp", "-n", ns, "--create-namespace"], env.env
        )
        assert out.returncode == 0, out.stderr
    kept = await acts.uninstall_all(UninstallAllInput(cluster, force=False))
    assert {f"{ns}/{n}" for n in names} <= set(kept.kept) and kept.uninstalled == []
    done = await acts.uninstall_all(UninstallAllInput(cluster, force=True))
    assert {f"{ns}/{n}" for n in names} <= set(done.uninstalled) and done.failed == {}
    listed = run_tool([tools.helm, "list", "-A", "-o", "json"], env.env)
    assert not any(r["name"] in names for r in yaml.safe_load(listed.stdout) or [])


async def test_schedule_upsert_and_delete(
    tools: HelmTools, store: Store, tmp_path: Path, ts_env: Any
) -> None:
    acts = make(tools, store, tmp_path / "w")
    cluster = new_id()
    act_env = ActivityEnvironment(client=ts_env.client)
    act_env.info = act_env.info.__class__(**{**act_env.info.__dict__, "task_queue": "tq-sched"})
    created = await act_env.run(acts.upsert_schedule, ScheduleInput(cluster, interval_s=120))
    assert (created.action, created.schedule_id, created.interval_s) == (
        "created",
        schedule_id_for(cluster),
        120,
    )
    handle = ts_env.client.get_schedule_handle(created.schedule_id)
    desc = await handle.describe()
    assert intervals(desc) == [(timedelta(seconds=120), sync_schedule_offset(cluster, 120))]
    assert desc.schedule.spec.jitter == timedelta(seconds=12)
    assert desc.schedule.action.workflow == "SyncRepos" and desc.schedule.action.task_queue == "tq-sched"
    updated = await act_env.run(acts.upsert_schedule, ScheduleInput(cluster, interval_s=600))
    assert updated.action == "updated"
    desc = await handle.describe()
    assert intervals(desc) == [(timedelta(seconds=600), sync_schedule_offset(cluster, 600))]
    assert desc.schedule.spec.jitter == timedelta(seconds=60)
    # Any workflow may call this activity: the interval is bounded and the schedule can only start
    # SyncRepos on the activity's own task queue.
    for bad in (
        ScheduleInput(cluster, interval_s=1),
        ScheduleInput(cluster, interval_s=10**20),
        ScheduleInput(cluster, interval_s=True),
        ScheduleInput(cluster, interval_s=120, task_queue="someone-elses-queue"),
    ):
        with pytest.raises(ApplicationError) as err:
            await act_env.run(acts.upsert_schedule, bad)
        assert err.value.type == "InvalidInput" and err.value.non_retryable
    assert (await handle.describe()).schedule.action.task_queue == "tq-sched"
    assert (await act_env.run(acts.delete_schedule, ClusterRef(cluster))).action == "deleted"
    assert (await act_env.run(acts.delete_schedule, ClusterRef(cluster))).action == "absent"


def intervals(desc: ScheduleDescription) -> list[tuple[timedelta, timedelta]]:
    """(every, offset) of each interval; a zero offset comes back from the server as None."""
    return [(i.every, i.offset or timedelta(0)) for i in desc.schedule.spec.intervals]


def schedule_env(ts_env: Any, task_queue: str) -> ActivityEnvironment:
    act_env = ActivityEnvironment(client=ts_env.client)
    act_env.info = act_env.info.__class__(**{**act_env.info.__dict__, "task_queue": task_queue})
    return act_env


def test_schedule_phase_and_jitter_are_per_cluster_and_stable() -> None:
    cluster = "0b0e5f4e-8a53-4f2c-9d0e-2f1b8c4d7a10"
    assert sync_schedule_offset(cluster, 600) == sync_schedule_offset(cluster, 600)
    # A digest, not Python's salted hash(): the same on every worker and after every restart.
    assert sync_schedule_offset(cluster, 600) == timedelta(seconds=574)
    offsets = [sync_schedule_offset(new_id(), 600) for _ in range(200)]
    assert all(timedelta(0) <= o < timedelta(seconds=600) and o.microseconds == 0 for o in offsets)
    assert len(set(offsets)) > 100  # spread over the interval, not one instant for every cluster
    assert sync_schedule_jitter(10) == timedelta(seconds=1)
    assert sync_schedule_jitter(120) == timedelta(seconds=12)
    assert sync_schedule_jitter(86_400) == timedelta(seconds=60)


async def test_schedule_update_keeps_an_operator_pause(
    tools: HelmTools, store: Store, tmp_path: Path, ts_env: Any
) -> None:
    acts = make(tools, store, tmp_path / "w")
    cluster = new_id()
    act_env = schedule_env(ts_env, "tq-sched")
    created = await act_env.run(acts.upsert_schedule, ScheduleInput(cluster, interval_s=120))
    handle = ts_env.client.get_schedule_handle(created.schedule_id)
    await handle.pause(note="repository server maintenance")
    updated = await act_env.run(acts.upsert_schedule, ScheduleInput(cluster, interval_s=300))
    assert updated.action == "updated"
    desc = await handle.describe()
    assert desc.schedule.state.paused is True
    assert desc.schedule.state.note == "repository server maintenance"
    assert intervals(desc) == [(timedelta(seconds=300), sync_schedule_offset(cluster, 300))]
    await handle.unpause()
    await act_env.run(acts.upsert_schedule, ScheduleInput(cluster, interval_s=120))
    assert (await handle.describe()).schedule.state.paused is False
    await handle.delete()


async def test_schedule_delete_cancels_its_running_syncs(
    tools: HelmTools, store: Store, tmp_path: Path, ts_env: Any
) -> None:
    acts = make(tools, store, tmp_path / "w")
    cluster = new_id()
    # No worker polls this queue: a triggered SyncRepos stays running until cancelled or terminated.
    act_env = schedule_env(ts_env, f"tq-idle-{cluster}")
    created = await act_env.run(acts.upsert_schedule, ScheduleInput(cluster, interval_s=3600))
    handle = ts_env.client.get_schedule_handle(created.schedule_id)
    await handle.trigger()
    running: list[str] = []
    for _ in range(100):
        desc = await handle.describe()
        running = [r.workflow_id for r in desc.info.running_actions]
        if running:
            break
        await asyncio.sleep(0.1)
    assert len(running) == 1 and running[0].startswith(f"sync-repos-{cluster}")
    deleted = await act_env.run(acts.delete_schedule, ClusterRef(cluster))
    assert deleted.action == "deleted" and deleted.cancelled == running
    sync = ts_env.client.get_workflow_handle(running[0])
    events = [e.event_type async for e in sync.fetch_history_events()]
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED in events
    with pytest.raises(RPCError):
        await handle.describe()
    again = await act_env.run(acts.delete_schedule, ClusterRef(cluster))
    assert again.action == "absent" and again.cancelled == []
    await sync.terminate("test cleanup")


async def test_store_credentials_never_silently_replaces(
    helm4: HelmTools, store: Store, tmp_path: Path, sandbox: SandboxCluster
) -> None:
    acts = make(helm4, store, tmp_path / "w")
    cluster = new_id()
    first = sandbox.kubeconfig()
    await acts.store_credentials(StoreCredentialsInput(cluster, first, "kdu-ns"))
    # A retry of the same InitCluster (same content, here re-serialised) converges: no error, no record.
    same = yaml.safe_dump(yaml.safe_load(first), sort_keys=True)
    await acts.store_credentials(StoreCredentialsInput(cluster, same, "kdu-ns"))
    doc = await store.find_one("k8sclusters", {"_id": cluster})
    assert doc["credentials"] == first and "_admin" not in doc

    # Another caller registering different credentials under the same id is refused.
    config = yaml.safe_load(first)
    config["users"][0]["user"]["token"] = "attacker-token"
    other = yaml.safe_dump(config)
    with pytest.raises(ApplicationError) as err:
        await acts.store_credentials(StoreCredentialsInput(cluster, other, "other-ns"))
    assert err.value.type == "ClusterExists" and err.value.non_retryable and cluster in str(err.value)
    assert "attacker-token" not in str(err.value)
    doc = await store.find_one("k8sclusters", {"_id": cluster})
    assert doc["credentials"] == first and doc["namespace"] == "kdu-ns"  # nothing written
    assert (await acts.verify(ClusterRef(cluster))).server_version  # still the real credentials

    # Asked for explicitly, the replacement happens and is recorded with the calling workflow.
    act_env = ActivityEnvironment()
    await act_env.run(
        acts.store_credentials, StoreCredentialsInput(cluster, other, "other-ns", replace_credentials=True)
    )
    doc = await store.find_one("k8sclusters", {"_id": cluster})
    assert doc["credentials"] == other and doc["namespace"] == "other-ns"
    record = doc["_admin"]["kduflow"]["credentials_replaced"]
    assert record["workflow_id"] == act_env.info.workflow_id
    assert record["fingerprint"] != record["previous_fingerprint"] and len(record["fingerprint"]) == 16
    assert "attacker-token" not in str(doc["_admin"]) and sandbox.token not in str(doc["_admin"])
    # An explicit workflow id wins; replacing with identical content records nothing new.
    await acts.store_credentials(
        StoreCredentialsInput(cluster, first, replace_credentials=True, workflow_id="wf-explicit")
    )
    doc = await store.find_one("k8sclusters", {"_id": cluster})
    assert doc["_admin"]["kduflow"]["credentials_replaced"]["workflow_id"] == "wf-explicit"
    await acts.store_credentials(
        StoreCredentialsInput(cluster, first, replace_credentials=True, workflow_id="x")
    )
    doc = await store.find_one("k8sclusters", {"_id": cluster})
    assert doc["_admin"]["kduflow"]["credentials_replaced"]["workflow_id"] == "wf-explicit"


async def test_store_credentials_refuses_before_writing(
    helm4: HelmTools, store: Store, tmp_path: Path, sandbox: SandboxCluster
) -> None:
    acts = make(helm4, store, tmp_path / "w")
    cluster = new_id()
    with pytest.raises(ApplicationError) as err:
        await acts.store_credentials(StoreCredentialsInput(cluster, sandbox.kubeconfig(), "Bad_NS"))
    assert err.value.type == "InvalidInput"
    config = yaml.safe_load(sandbox.kubeconfig())
    config["users"][0]["user"] = {"tokenFile": "/proc/self/environ"}
    with pytest.raises(ApplicationError) as err:
        await acts.store_credentials(StoreCredentialsInput(cluster, yaml.safe_dump(config), "kdu-ns"))
    assert err.value.type == "CredentialsInvalid" and err.value.non_retryable
    assert "users[0].user.tokenFile" in str(err.value) and "/proc/self/environ" not in str(err.value)
    assert await store.find_one("k8sclusters", {"_id": cluster}) is None
