"""activities/status.py: observation, the OSM status document, kdu.status and kdu.poll_status.

The API side is a canned local server (tests/support/status.py); the store is the real embedded
Store (montydb) and cluster credentials go through the real ClusterEnvs.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import random
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import errors as errors_mod
from activities import status as status_module
from activities.cluster_env import ClusterEnvs
from activities.models import DbDict, KduStatusResult, PollStatusInput, ReleaseRef, ResourceState, StatusInput
from activities.release_storage import ReleaseStorage
from activities.status import (
    MAX_DETAILED_STATUS,
    MAX_POLL_ATTEMPT,
    MAX_SEQ_BASE,
    POLL_ATTEMPT_SPAN,
    StatusActivities,
    WriteOutcome,
    build_status_update,
    derive_phase,
    final_seq,
    manifest_objects,
    poll_seq,
    status_digest,
    validate_seq_base,
)
from activities.store import Store
from kduflow.config import Settings
from sandbox import NEVER_READY_ANNOTATION, SandboxCluster
from tests.support import sandbox as sandbox_support
from tests.support.sandbox import LOOPBACK_NETWORKS, demo_chart, run_tool, tool_env
from tests.support.status import FakeKube, Rev, release_secret

PASSWORD = "pa55-w0rd-in-values"
SECRET_VALUE = "db-root-password-in-manifest"
NOTES_SECRET = "notes-print-the-token-abc123"
PATH = "_admin.deployed.K8s.0"
DB = DbDict(collection="nsrs", filter={"_id": "ns-1"}, path=PATH)
sandbox = sandbox_support.sandbox  # module-scoped SandboxCluster fixture


def manifest(*extra: str) -> str:
    docs = [
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: demo\n",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: demo\nspec:\n  ports:\n  - port: 80\n",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: demo\nspec:\n  replicas: 2\n"
        "  selector:\n    matchLabels:\n      app: demo\n",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: demo-creds\ntype: Opaque\ndata:\n"
        f"  password: {base64.b64encode(SECRET_VALUE.encode()).decode()}\n"
        f"stringData:\n  root: {SECRET_VALUE}\n",
        *extra,
    ]
    return "".join(f"---\n# Source: demo/templates/t{i}.yaml\n{doc}" for i, doc in enumerate(docs))


def sa() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "demo", "namespace": "ns1"}}


def svc(name: str = "demo") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "ns1"},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.7", "ports": [{"port": 80}]}}  # fmt: skip


def deploy(ready: int, replicas: int = 2) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "demo", "namespace": "ns1", "generation": 1, "uid": "d-1"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "demo"}}},
        "status": {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                   "readyReplicas": ready, "availableReplicas": ready},
    }  # fmt: skip


def pod(name: str, waiting: str | None = None, app: str = "demo") -> dict[str, Any]:
    state = {"waiting": {"reason": waiting}} if waiting else {"running": {}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns1", "labels": {"app": app}},
        "status": {"phase": "Pending" if waiting else "Running",
                   "conditions": [{"type": "Ready", "status": "False" if waiting else "True"}],
                   "containerStatuses": [{"name": "c", "state": state}]},
    }  # fmt: skip


def record(version: int = 1, status: str = "deployed", description: str = "Install complete",
           man: str | None = None) -> dict[str, Any]:  # fmt: skip
    rev = Rev(version, status, description, manifest() if man is None else man,
              {"db": {"password": PASSWORD}}, f"token: {NOTES_SECRET}")  # fmt: skip
    return release_secret("demo", "ns1", rev)


@dataclass
class Harness:
    fake: FakeKube
    store: Store
    acts: StatusActivities
    ref: ReleaseRef

    async def doc(self) -> dict[str, Any]:
        found = await self.store.find_one("nsrs", {"_id": "ns-1"})
        assert found is not None
        return found["_admin"]["deployed"]["K8s"][0]


@pytest_asyncio.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    settings = Settings(state_dir=tmp_path / "state", private_networks=LOOPBACK_NETWORKS)
    store = Store.open(settings)
    envs = ClusterEnvs(settings, store)
    with FakeKube(token="tkn-123456") as fake:
        await envs.store_credentials("c1", fake.kubeconfig())
        await store.insert_one(
            "nsrs", {"_id": "ns-1", "_admin": {"deployed": {"K8s": [{"kdu-name": "demo"}]}}}
        )
        acts = StatusActivities(settings, envs, store)
        try:
            yield Harness(fake, store, acts, ReleaseRef("c1", "demo", "ns1"))
        finally:
            await acts.close()
            await store.close()


# ------------------------------------------------------------------------------------------------
# pure parts
# ------------------------------------------------------------------------------------------------


def test_manifest_objects() -> None:
    text = manifest(
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata:\n    name: a\n",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: r\n",
        "# only a comment\n",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: other\n  namespace: elsewhere\n",
    )
    refs = manifest_objects(text)
    assert [(r.kind, r.name, r.namespace) for r in refs] == [
        ("ServiceAccount", "demo", ""), ("Service", "demo", ""), ("Deployment", "demo", ""),
        ("Secret", "demo-creds", ""), ("ConfigMap", "a", ""), ("ClusterRole", "r", ""),
        ("Service", "other", "elsewhere"),
    ]  # fmt: skip
    assert manifest_objects("key: [unclosed") == []
    assert manifest_objects("") == []


def _result(**kw: Any) -> KduStatusResult:
    base: dict[str, Any] = {"kdu_instance": "demo", "namespace": "ns1", "revision": 1, "status": "deployed"}
    base.update(kw)
    return KduStatusResult(**base)


FAILING = ResourceState("Pod", "p", "ns1", "Failed", False, "Pod p: CrashLoopBackOff")
WAITING = ResourceState("Deployment", "d", "ns1", "InProgress", False, "Deployment d: 0/1 replicas ready")


@pytest.mark.parametrize(
    ("result", "operation", "in_progress", "error", "phase"),
    [
        pytest.param(
            _result(status="absent"), "install", True, "", "installing", id="absent-polling-install"
        ),
        pytest.param(_result(status="absent"), "", True, "", "pending", id="absent-polling-unknown-op"),
        pytest.param(_result(status="absent"), "install", False, "", "absent", id="absent-final"),
        pytest.param(_result(status="absent"), "install", False, "boom", "failed", id="absent-after-failure"),
        pytest.param(
            _result(status="pending-install"), "install", True, "", "installing", id="pending-install"
        ),
        pytest.param(
            _result(status="pending-upgrade"), "upgrade", True, "", "upgrading", id="pending-upgrade"
        ),
        pytest.param(_result(status="pending-upgrade"), "scale", True, "", "scaling", id="pending-scale"),
        pytest.param(
            _result(status="pending-rollback"), "rollback", True, "", "rolling-back", id="pending-rollback"
        ),
        pytest.param(
            _result(status="uninstalling"), "uninstall", True, "", "uninstalling", id="uninstalling"
        ),
        pytest.param(_result(status="uninstalled"), "", False, "", "uninstalled", id="uninstalled"),
        pytest.param(_result(status="failed"), "upgrade", False, "x", "failed", id="failed"),
        pytest.param(_result(ready=True), "install", False, "", "ready", id="ready"),
        pytest.param(
            _result(ready=False, not_ready=[WAITING]), "", False, "", "progressing", id="progressing"
        ),
        pytest.param(
            _result(ready=False, not_ready=[FAILING, WAITING]), "", False, "", "degraded", id="degraded"
        ),
        pytest.param(_result(status="superseded"), "", False, "", "unknown", id="superseded"),
    ],
)
def test_derive_phase(
    result: KduStatusResult, operation: str, in_progress: bool, error: str, phase: str
) -> None:
    assert derive_phase(result, operation, in_progress=in_progress, error=error) == phase


def test_build_status_update_shape() -> None:
    result = _result(revision=3, description="Upgrade complete", chart="demo-0.1.0", app_version="1.16.0",
                     ready=False, ready_resources=4, total_resources=5, not_ready=[WAITING])  # fmt: skip
    update = build_status_update(PATH + ".", "upgrade", result, now=1764100000.5)
    assert update == {
        f"{PATH}.operation": "upgrade",
        f"{PATH}.status": "Upgrade complete",
        f"{PATH}.detailed-status": (
            "deployed rev 3: 4/5 resources ready; not ready: Deployment d (0/1 replicas ready)"
        ),
        f"{PATH}.status-time": "1764100000.5",
        f"{PATH}.kduflow": {
            "phase": "progressing", "operation": "upgrade", "release_status": "deployed", "revision": 3,
            "chart": "demo-0.1.0", "app_version": "1.16.0", "released": True, "ready": False,
            "ready_resources": 4, "total_resources": 5,
            "not_ready": [{"kind": "Deployment", "name": "d", "namespace": "ns1", "state": "InProgress",
                           "reason": "0/1 replicas ready"}],
            "not_ready_count": 1, "last_error": "", "observed_at": "2025-11-25T19:46:40+00:00",
        },
    }  # fmt: skip


def test_build_status_update_is_bounded() -> None:
    many = [ResourceState("Deployment", f"d{i:03d}" * 8, "ns1", "InProgress", False,
                          f"Deployment {f'd{i:03d}' * 8}: " + "x" * 300) for i in range(50)]  # fmt: skip
    update = build_status_update(
        PATH, "install", _result(not_ready=many, total_resources=50), error="e" * 5000
    )
    assert len(update[f"{PATH}.detailed-status"]) <= MAX_DETAILED_STATUS
    assert "and 47 more" in update[f"{PATH}.detailed-status"] or update[f"{PATH}.detailed-status"].endswith(
        "…"
    )
    sub = update[f"{PATH}.kduflow"]
    assert len(sub["not_ready"]) == 10 and sub["not_ready_count"] == 50
    assert len(sub["last_error"]) <= 300
    assert len(json.dumps(update)) < 6000


def test_digest_ignores_timestamps_only() -> None:
    a = build_status_update(PATH, "install", _result(ready=True), now=1.0)
    b = build_status_update(PATH, "install", _result(ready=True), now=2.0)
    c = build_status_update(PATH, "install", _result(ready=False, not_ready=[WAITING]), now=1.0)
    assert a != b and status_digest(a) == status_digest(b)
    assert status_digest(a) != status_digest(c)


# ------------------------------------------------------------------------------------------------
# observation against the canned API
# ------------------------------------------------------------------------------------------------


async def test_observe_absent(h: Harness) -> None:
    result = await h.acts.observe(h.ref)
    assert (result.status, result.ready, result.total_resources) == ("absent", False, 0)


async def test_observe_names_the_culprit_first_and_is_cheap(h: Harness) -> None:
    h.fake.add(record(), sa(), svc(), deploy(ready=1), pod("demo-a"), pod("demo-b", "ImagePullBackOff"),
               pod("other-x", "CrashLoopBackOff", app="other"))  # fmt: skip
    api = await h.acts.api_for("c1")
    before = api.requests
    result = await h.acts.observe(h.ref)
    not_ready_requests = api.requests - before
    assert (result.status, result.revision, result.description) == ("deployed", 1, "Install complete")
    assert (result.chart, result.app_version, result.ready) == ("demo-0.1.0", "1.16.0", False)
    assert (result.ready_resources, result.total_resources) == (3, 4)
    assert [rs.message for rs in result.not_ready] == [
        "Deployment demo: 1/2 replicas ready; Pod demo-b: ImagePullBackOff"
    ]
    # The Secret of the manifest is never read; Pods are listed once, label-selected.
    assert not any("/secrets/demo-creds" in p for p in h.fake.paths)
    assert "/api/v1/namespaces/ns1/pods?labelSelector=app%3Ddemo" in h.fake.paths
    # storage LIST + one GET per kind (SA, Service, Deployment) + one Pod LIST
    print(f"API requests per poll, not ready: {not_ready_requests}")
    assert not_ready_requests == 5

    h.fake.replace(deploy(ready=2))
    before = api.requests
    result = await h.acts.observe(h.ref)
    print(f"API requests per poll, ready: {api.requests - before}")
    assert result.ready and result.not_ready == [] and result.ready_resources == 4
    assert api.requests - before == 4  # no Pod LIST when every workload is ready


async def test_observe_lists_once_per_kind_and_handles_scopes(h: Harness) -> None:
    extra = (
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: demo-b\n",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: demo-gone\n",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: demo-reader\n",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n",
        "apiVersion: nothere.io/v1\nkind: Gizmo\nmetadata:\n  name: g\n",
    )
    h.fake.custom["example.com/v1"] = [("Widget", "widgets", True)]
    h.fake.add(
        record(man=manifest(*extra)), sa(), svc(), svc("demo-b"), deploy(ready=2),
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "demo-reader"}},
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "ns1"},
         "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Provisioning"}]}},
    )  # fmt: skip
    result = await h.acts.observe(h.ref)
    assert [rs.message for rs in result.not_ready] == [
        "Service demo-gone: not found in cluster",
        "Gizmo g: kind nothere.io/v1 not served by the cluster",
        "Widget w: not ready: Provisioning",
    ]
    assert result.total_resources == 9 and result.ready_resources == 6
    services = [p for p in h.fake.paths if "/services" in p]
    assert services == ["/api/v1/namespaces/ns1/services"]  # one LIST for three Services
    assert "/apis/rbac.authorization.k8s.io/v1/clusterroles/demo-reader" in h.fake.paths


async def test_observe_pending_release(h: Harness) -> None:
    h.fake.add(record(1, "pending-install", "Initial install underway"), sa(), svc())
    result = await h.acts.observe(h.ref)
    assert result.status == "pending-install" and result.ready is False
    assert result.not_ready[0].message == "Deployment demo: not found in cluster"


# ------------------------------------------------------------------------------------------------
# kdu.status
# ------------------------------------------------------------------------------------------------


async def test_status_writes_osm_fields_without_secrets(h: Harness) -> None:
    h.fake.add(record(), sa(), svc(), deploy(ready=0), pod("demo-a", "CrashLoopBackOff"))
    result = await ActivityEnvironment().run(
        h.acts.status, StatusInput(h.ref, DB, operation="install", phase="completed")
    )
    assert NOTES_SECRET in result.notes  # the workflow result carries the notes...
    doc = await h.doc()
    assert doc["kdu-name"] == "demo"  # LCM's own fields are untouched
    assert doc["operation"] == "install"
    assert doc["status"] == "Install complete"
    assert doc["detailed-status"] == (
        "deployed rev 1: 3/4 resources ready; not ready: Deployment demo (0/2 replicas ready; "
        "Pod demo-a: CrashLoopBackOff)"
    )
    assert float(doc["status-time"]) > 1.7e9
    sub = doc["kduflow"]
    assert (sub["phase"], sub["release_status"], sub["revision"], sub["ready"]) == (
        "completed",
        "deployed",
        1,
        False,
    )
    assert sub["not_ready"][0]["reason"] == "0/2 replicas ready; Pod demo-a: CrashLoopBackOff"
    # ...but nothing of the values, the manifest's Secret or the notes reaches MongoDB.
    stored = json.dumps(doc)
    for secret in (PASSWORD, SECRET_VALUE, base64.b64encode(SECRET_VALUE.encode()).decode(), NOTES_SECRET,
                   "tkn-123456", "stringData", "# Source"):  # fmt: skip
        assert secret not in stored


async def test_status_after_atomic_purge_records_the_failure(h: Harness) -> None:
    error = "helm install demo: context deadline exceeded"
    result = await ActivityEnvironment().run(
        h.acts.status, StatusInput(h.ref, DB, operation="install", error=error)
    )
    assert result.status == "absent"
    doc = await h.doc()
    assert (doc["status"], doc["operation"]) == ("failed", "install")
    assert doc["detailed-status"] == f"release absent; error: {error}"
    assert (doc["kduflow"]["phase"], doc["kduflow"]["release_status"]) == ("failed", "absent")
    assert doc["kduflow"]["last_error"] == error


async def test_status_missing_document_is_not_fatal(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    h.fake.add(record(), sa(), svc(), deploy(ready=2))
    db = DbDict("nsrs", {"_id": "no-such-ns"}, PATH)
    result = await ActivityEnvironment().run(h.acts.status, StatusInput(h.ref, db, operation="install"))
    assert result.ready is True
    assert "no document in nsrs" in caplog.text


@pytest.mark.parametrize(
    ("ref", "db", "field"),
    [
        pytest.param(ReleaseRef("c1", "demo,owner!=helm", "ns1"), None, "ref.kdu_instance",
                     id="selector-injection"),
        pytest.param(ReleaseRef("c1", "Demo", "ns1"), None, "ref.kdu_instance", id="uppercase"),
        pytest.param(ReleaseRef("c1", "demo", "ns_1"), None, "ref.namespace", id="bad-namespace"),
        pytest.param(ReleaseRef("", "demo", "ns1"), None, "ref.cluster_uuid", id="no-cluster"),
        pytest.param(ReleaseRef("c1", "demo", "ns1"), DbDict("nsrs", {"_id": "x"}, ""), "db_dict.path",
                     id="no-path"),
        pytest.param(ReleaseRef("c1", "demo", "ns1"), DbDict("", {"_id": "x"}, PATH), "db_dict.collection",
                     id="no-collection"),
    ],
)  # fmt: skip
async def test_status_rejects_invalid_input(
    h: Harness, ref: ReleaseRef, db: DbDict | None, field: str
) -> None:
    with pytest.raises(ApplicationError) as info:
        await ActivityEnvironment().run(h.acts.status, StatusInput(ref, db))
    assert info.value.type == "InvalidInput" and info.value.non_retryable
    assert field in str(info.value)
    assert h.fake.paths == []


async def test_status_missing_document_log_names_no_filter_value(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h.fake.add(record(), sa(), svc(), deploy(ready=2))
    db = DbDict("nsrs", {"_id": "tenant-private-id-42"}, PATH)
    await ActivityEnvironment().run(h.acts.status, StatusInput(h.ref, db, operation="install"))
    assert "filter on _id" in caplog.text and "tenant-private-id-42" not in caplog.text


@pytest.mark.parametrize("collection", ["k8sclusters", "k8srepos", "other_tenant", "users"])
async def test_status_writes_only_to_allowed_collections(h: Harness, collection: str) -> None:
    """Any workflow can call these activities: the target is checked here too, before any write."""
    await h.store.insert_one(collection, {"_id": "victim", "credentials": "keep"})
    for db in (DbDict(collection, {"_id": "victim"}, "credentials"), DbDict(collection, {"_id": "v"}, "a")):
        with pytest.raises(ApplicationError) as info:
            await ActivityEnvironment().run(h.acts.status, StatusInput(h.ref, db, operation="install"))
        assert info.value.type == "InvalidInput" and info.value.non_retryable
        assert "db_dict." in str(info.value)
    assert await h.store.find_one(collection, {"_id": "victim"}) == {"_id": "victim", "credentials": "keep"}
    assert h.fake.paths == []


async def test_status_collections_setting_takes_effect(h: Harness, tmp_path: Path) -> None:
    """KDUFLOW_STATUS_COLLECTIONS: an operator-listed collection is written, nsrs then is not."""
    h.fake.add(record(), sa(), svc(), deploy(ready=2))
    await h.store.insert_one("vnfrs", {"_id": "v1"})
    settings = dataclasses.replace(h.acts.settings, status_collections=("vnfrs",))
    acts = StatusActivities(settings, h.acts.envs, h.store)
    try:
        await ActivityEnvironment().run(
            acts.status, StatusInput(h.ref, DbDict("vnfrs", {"_id": "v1"}, PATH), operation="install")
        )
        assert (await h.store.find_one("vnfrs", {"_id": "v1"}) or {}).get("_admin")
        with pytest.raises(ApplicationError, match="KDUFLOW_STATUS_COLLECTIONS"):
            await ActivityEnvironment().run(
                acts.status, StatusInput(h.ref, DbDict("nsrs", {"_id": "ns-1"}, PATH), operation="install")
            )
    finally:
        await acts.close()


async def test_status_unreachable_cluster_records_and_raises_retryable(h: Harness, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = h.fake.kubeconfig()
    config["clusters"][0]["cluster"]["server"] = f"http://127.0.0.1:{port}"
    await h.acts.envs.store_credentials("c2", config)
    ref = ReleaseRef("c2", "demo", "ns1")
    with pytest.raises(ApplicationError) as info:
        await ActivityEnvironment().run(
            h.acts.status, StatusInput(ref, DB, operation="upgrade", error="upgrade x")
        )
    assert info.value.type == "ClusterUnreachable" and not info.value.non_retryable
    doc = await h.doc()
    assert doc["kduflow"]["release_status"] == "unknown"
    assert doc["kduflow"]["last_error"].startswith("upgrade x; status unavailable: Kubernetes API")


async def test_status_picks_up_rotated_credentials(h: Harness) -> None:
    h.fake.add(record(), sa(), svc(), deploy(ready=2))
    await h.acts.observe(h.ref)  # a client is cached with the good token
    await h.acts.envs.store_credentials("c1", h.fake.kubeconfig(token="revoked-token"))
    with pytest.raises(ApplicationError) as info:
        await ActivityEnvironment().run(h.acts.status, StatusInput(h.ref, DB, operation="install"))
    assert info.value.type == "CredentialsInvalid" and info.value.non_retryable
    assert (await h.doc())["kduflow"]["last_error"].startswith("status unavailable: Kubernetes API 401")
    await h.acts.envs.store_credentials("c1", h.fake.kubeconfig())
    result = await ActivityEnvironment().run(h.acts.status, StatusInput(h.ref, DB, operation="install"))
    assert result.ready is True and (await h.doc())["kduflow"]["last_error"] == ""


async def test_status_unknown_cluster(h: Harness) -> None:
    with pytest.raises(ApplicationError) as info:
        await ActivityEnvironment().run(h.acts.status, StatusInput(ReleaseRef("nope", "demo", "ns1")))
    assert info.value.type == "ClusterNotFound"


# ------------------------------------------------------------------------------------------------
# kdu.poll_status
# ------------------------------------------------------------------------------------------------


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_poll_writes_on_change_survives_errors_and_cancels(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(status_module, "MIN_POLL_INTERVAL", 0.01)
    beats: list[dict[str, Any]] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details[0])
    writes: list[dict[str, Any]] = []
    original = h.acts.write_status

    async def counting_write(db: DbDict, update: Any, **kw: Any) -> Any:
        writes.append(update)
        return await original(db, update, **kw)

    h.acts.write_status = counting_write  # type: ignore[method-assign]
    task = asyncio.create_task(
        env.run(h.acts.poll_status, PollStatusInput(h.ref, DB, operation="install", interval=0.05))
    )
    # 1. before the release exists
    await wait_for(lambda: len(beats) >= 3)
    assert len(writes) == 1 and writes[0][f"{PATH}.kduflow"]["phase"] == "installing"
    assert (await h.doc())["status"] == "pending"
    # 2. helm created the release; the Deployment is stuck on its image
    h.fake.add(record(1, "pending-install", "Initial install underway"), sa(), svc(), deploy(ready=0),
               pod("demo-a", "ImagePullBackOff"))  # fmt: skip
    await wait_for(lambda: len(writes) >= 2)
    assert len(writes) == 2 and beats[-1]["phase"] == "installing"
    doc = await h.doc()
    assert doc["kduflow"]["not_ready"][0]["reason"] == "0/2 replicas ready; Pod demo-a: ImagePullBackOff"
    assert "Pod demo-a: ImagePullBackOff" in doc["detailed-status"]
    # 3. transient API failures: counted, no write, the loop goes on
    n = len(beats)
    h.fake.fail_next.extend([500, 503, 500])
    await wait_for(lambda: len(beats) >= n + 5)
    assert beats[-1]["errors"] >= 1 and len(writes) == 2
    # 4. ready and deployed: one more write, then quiet
    h.fake.replace(deploy(ready=2))
    h.fake.replace(record(1, "deployed", "Install complete"))
    await wait_for(lambda: len(writes) == 3)
    n = len(beats)
    await wait_for(lambda: len(beats) >= n + 4)
    assert len(writes) == 3
    assert beats[-1]["phase"] == "ready" and beats[-1]["requests"] == 4
    doc = await h.doc()
    assert (doc["status"], doc["kduflow"]["phase"], doc["kduflow"]["ready"]) == (
        "Install complete",
        "ready",
        True,
    )
    # 5. cancellation ends it with CancelledError
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    print(f"poller: {beats[-1]['polls']} polls, {len(writes)} writes, {beats[-1]['errors']} errors")


async def test_poll_rejects_invalid_input(h: Harness) -> None:
    with pytest.raises(ApplicationError) as info:
        await ActivityEnvironment().run(
            h.acts.poll_status, PollStatusInput(h.ref, DbDict("nsrs", {}, PATH), operation="install")
        )
    assert info.value.type == "InvalidInput" and "db_dict.filter" in str(info.value)


# ------------------------------------------------------------------------------------------------
# ordered writes: a write older than the one in place changes nothing
# ------------------------------------------------------------------------------------------------

#: Two operations on one release, the second started (and its inputs built) later.
BASE_A = 1_764_100_000_000
BASE_B = BASE_A + 2_500


def test_sequence_numbers_order_polls_finals_and_operations() -> None:
    # Within an input: polls count up, a later attempt above an earlier one, the final above all.
    assert poll_seq(BASE_A, 1, 1) < poll_seq(BASE_A, 1, 2) < poll_seq(BASE_A, 2, 1)
    last_poll = poll_seq(BASE_A, 10**6, 10**9)  # capped, never up to the final
    assert last_poll == poll_seq(BASE_A, MAX_POLL_ATTEMPT, POLL_ATTEMPT_SPAN - 1)
    assert last_poll < final_seq(BASE_A, 1) < final_seq(BASE_A, 2) < final_seq(BASE_A, 10**9)
    # A later base (later status step, later operation) beats everything of an earlier one.
    assert final_seq(BASE_A, 10**9) < poll_seq(BASE_A + 1, 1, 1)
    # Fits MongoDB's int64 at the largest base accepted.
    assert final_seq(MAX_SEQ_BASE, 10**9) < 2**63
    assert validate_seq_base(0) == 0 and validate_seq_base(MAX_SEQ_BASE) == MAX_SEQ_BASE
    for bad in (-1, MAX_SEQ_BASE + 1, True, 1.5, "1764100000000", None):
        with pytest.raises(ApplicationError) as info:
            validate_seq_base(bad)
        assert (
            info.value.type == "InvalidInput" and info.value.non_retryable and "seq_base" in str(info.value)
        )


def _update(marker: str, phase: str = "") -> dict[str, Any]:
    """A status update told apart by its last_error."""
    return build_status_update(PATH, "install", _result(ready=True), phase=phase, error=marker)


async def _marker(h: Harness) -> tuple[str, int | None]:
    sub = (await h.doc())["kduflow"]
    return sub["last_error"], sub.get("seq")


async def test_late_poll_write_after_the_final_changes_nothing(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h.fake.add(record(), sa(), svc(), deploy(ready=2))
    poll = poll_seq(BASE_A, 1, 3)
    assert (
        await h.acts.write_status(DB, _update("poll 2"), seq=poll_seq(BASE_A, 1, 2)) is WriteOutcome.WRITTEN
    )
    await ActivityEnvironment().run(
        h.acts.status, StatusInput(h.ref, DB, operation="install", phase="completed", seq_base=BASE_A)
    )
    final = await h.doc()
    assert (final["kduflow"]["phase"], final["kduflow"]["seq"]) == ("completed", final_seq(BASE_A, 1))
    # The poll write that was already on the store's thread when the poller was cancelled.
    caplog.set_level("DEBUG", logger="activities.status")
    outcome = await h.acts.write_status(DB, _update("poll 3", phase="installing"), seq=poll)
    assert outcome is WriteOutcome.STALE and not outcome
    assert await h.doc() == final
    assert h.acts.stale_writes == 1
    stale_logs = [r for r in caplog.records if "refused" in r.getMessage()]
    assert [r.levelname for r in stale_logs] == ["DEBUG"]
    assert not any("no document" in r.getMessage() for r in caplog.records)


async def test_retried_or_late_poller_cannot_overwrite_the_final(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poller attempt that runs after the final write (a retry, a slow worker) writes nothing."""
    monkeypatch.setattr(status_module, "MIN_POLL_INTERVAL", 0.01)
    h.fake.add(record(), sa(), svc(), deploy(ready=2))
    await ActivityEnvironment().run(
        h.acts.status, StatusInput(h.ref, DB, operation="install", phase="completed", seq_base=BASE_A)
    )
    final = await h.doc()
    beats: list[dict[str, Any]] = []
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=3)
    env.on_heartbeat = lambda *details: beats.append(details[0])
    task = asyncio.create_task(
        env.run(h.acts.poll_status, PollStatusInput(h.ref, DB, "install", interval=0.02, seq_base=BASE_A))
    )
    await wait_for(lambda: len(beats) >= 3)
    h.fake.replace(deploy(ready=1))  # a change: the poller tries again
    await wait_for(lambda: bool(beats) and beats[-1]["stale"] >= 2)
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert beats[-1]["writes"] == 0 and beats[-1]["errors"] == 0
    assert await h.doc() == final


async def test_two_operations_interleaved_out_of_order(h: Harness) -> None:
    """Writes of operation A arrive late, mixed with B's: what stays is always B's newest."""
    write = h.acts.write_status
    assert await write(DB, _update("A poll 1"), seq=poll_seq(BASE_A, 1, 1))
    assert await write(DB, _update("A final"), seq=final_seq(BASE_A, 1))
    # B's first poll beats A's final: a later operation's base is larger.
    assert await write(DB, _update("B poll 1"), seq=poll_seq(BASE_B, 1, 1))
    arrivals = [
        ("A poll 2", poll_seq(BASE_A, 1, 2), WriteOutcome.STALE, "B poll 1"),
        ("A final (retry 2)", final_seq(BASE_A, 2), WriteOutcome.STALE, "B poll 1"),
        ("B poll 3", poll_seq(BASE_B, 1, 3), WriteOutcome.WRITTEN, "B poll 3"),
        ("B poll 2", poll_seq(BASE_B, 1, 2), WriteOutcome.STALE, "B poll 3"),
        ("B poll 1 (retry 2)", poll_seq(BASE_B, 2, 1), WriteOutcome.WRITTEN, "B poll 1 (retry 2)"),
        ("B final", final_seq(BASE_B, 1), WriteOutcome.WRITTEN, "B final"),
        ("B poll 4", poll_seq(BASE_B, 1, 4), WriteOutcome.STALE, "B final"),
        ("A final", final_seq(BASE_A, 1), WriteOutcome.STALE, "B final"),
    ]
    for marker, seq, outcome, in_place in arrivals:
        assert await write(DB, _update(marker), seq=seq) is outcome, marker
        assert (await h.doc())["kduflow"]["last_error"] == in_place, marker
    assert await _marker(h) == ("B final", final_seq(BASE_B, 1))
    assert h.acts.stale_writes == 5


async def test_retried_final_write_is_idempotent(h: Harness) -> None:
    h.fake.add(record(), sa(), svc(), deploy(ready=2))
    inp = StatusInput(h.ref, DB, operation="install", phase="completed", seq_base=BASE_A)
    await ActivityEnvironment().run(h.acts.status, inp)
    first = await h.doc()
    # The same attempt delivered again (same seq): nothing changes, not even status-time.
    await ActivityEnvironment().run(h.acts.status, inp)
    assert await h.doc() == first and h.acts.stale_writes == 1
    # A retry (next attempt) re-observes and writes the same final state; then the late write of
    # the first attempt (same seq as before) is refused.
    retry = ActivityEnvironment()
    retry.info = dataclasses.replace(retry.info, attempt=2)
    await retry.run(h.acts.status, inp)
    second = await h.doc()
    assert second["kduflow"]["seq"] == final_seq(BASE_A, 2)

    def content(doc: dict[str, Any]) -> dict[str, Any]:
        sub = {k: v for k, v in doc["kduflow"].items() if k not in ("seq", "observed_at")}
        return {**{k: v for k, v in doc.items() if k != "status-time"}, "kduflow": sub}

    assert content(second) == content(first)
    await ActivityEnvironment().run(h.acts.status, inp)
    assert await h.doc() == second and h.acts.stale_writes == 2


async def test_retried_final_write_replaces_the_failed_attempts_record(h: Harness) -> None:
    """Attempt 1 could not observe and recorded "status unavailable"; attempt 2 must replace it."""
    h.fake.add(record(), sa(), svc(), deploy(ready=2))
    inp = StatusInput(h.ref, DB, operation="install", phase="completed", seq_base=BASE_A)
    h.fake.fail_next.extend([500] * 10)
    with pytest.raises(ApplicationError) as info:
        await ActivityEnvironment().run(h.acts.status, inp)
    assert info.value.type == "ServerError" and not info.value.non_retryable
    assert (await h.doc())["kduflow"]["release_status"] == "unknown"
    h.fake.fail_next.clear()
    retry = ActivityEnvironment()
    retry.info = dataclasses.replace(retry.info, attempt=2)
    await retry.run(h.acts.status, inp)
    sub = (await h.doc())["kduflow"]
    assert (sub["release_status"], sub["phase"], sub["last_error"]) == ("deployed", "completed", "")


async def test_documents_without_seq_accept_the_first_ordered_write(h: Harness) -> None:
    # The harness document has no status at all; then one written before ordering existed.
    assert await h.acts.write_status(DB, _update("first ever"), seq=poll_seq(BASE_A, 1, 1))
    await h.store.update_one("nsrs", {"_id": "ns-1"}, {"$set": {f"{PATH}.kduflow": {"last_error": "old"}}})
    assert await h.acts.write_status(DB, _update("ordered"), seq=poll_seq(BASE_A, 1, 1))
    assert await _marker(h) == ("ordered", poll_seq(BASE_A, 1, 1))
    # An unordered write (an input from before ordering) replaces the sub-document as it always
    # did, its seq included; the next ordered write is then accepted whatever its seq.
    assert await h.acts.write_status(DB, _update("unordered")) is WriteOutcome.WRITTEN
    assert await _marker(h) == ("unordered", None)
    assert await h.acts.write_status(DB, _update("older but ordered"), seq=poll_seq(BASE_A - 1, 1, 1))
    assert h.acts.stale_writes == 0


async def test_ordered_write_without_document_is_no_document_not_stale(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    db = DbDict("nsrs", {"_id": "nobody"}, PATH)
    outcome = await h.acts.write_status(db, _update("x"), seq=final_seq(BASE_A, 1))
    assert outcome is WriteOutcome.NO_DOCUMENT and h.acts.stale_writes == 0
    assert [r.levelname for r in caplog.records if "no document" in r.getMessage()] == ["WARNING"]
    assert await h.store.find_one("nsrs", {"_id": "nobody"}) is None


async def test_ordered_write_still_refuses_operators_in_the_callers_filter(h: Harness) -> None:
    sneaky = {"_id": "ns-1", "$or": [{"_id": {"$exists": True}}]}
    for db in (DbDict("nsrs", sneaky, PATH), DbDict("nsrs", {"_id": {"$ne": "x"}}, PATH)):
        with pytest.raises(ApplicationError) as info:
            await h.acts.write_status(db, _update("x"), seq=final_seq(BASE_A, 1))
        assert info.value.type == "InvalidInput"
    with pytest.raises(ApplicationError) as info:
        await ActivityEnvironment().run(h.acts.status, StatusInput(h.ref, DB, "install", seq_base=-5))
    assert info.value.type == "InvalidInput" and "seq_base" in str(info.value)
    assert h.fake.paths == [] and "kduflow" not in await h.doc()


async def test_order_holds_across_two_workers_sharing_the_embedded_store(h: Harness) -> None:
    """Two stores (two workers' threads and file locks) on one directory, writes in random order:
    the document ends with the highest seq; every other write was either replaced or refused."""
    other = Store.open(h.acts.settings)
    acts2 = StatusActivities(h.acts.settings, h.acts.envs, other)
    try:
        seqs = [poll_seq(BASE_A, attempt, n) for attempt in (1, 2) for n in range(1, 41)]
        seqs += [final_seq(BASE_A, 1), poll_seq(BASE_B, 1, 1)]
        order = list(seqs)
        random.Random(7).shuffle(order)
        outcomes = await asyncio.gather(*(
            (h.acts if i % 2 else acts2).write_status(DB, _update(str(seq)), seq=seq)
            for i, seq in enumerate(order)
        ))  # fmt: skip
        assert await _marker(h) == (str(max(seqs)), max(seqs))
        written = outcomes.count(WriteOutcome.WRITTEN)
        assert written >= 1 and written + h.acts.stale_writes + acts2.stale_writes == len(seqs)
    finally:
        await acts2.close()
        await other.close()


# ------------------------------------------------------------------------------------------------
# Real helm (both dialects) against the sandbox cluster
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_chart(tmp_path_factory.mktemp("chart"))


@pytest_asyncio.fixture
async def sh(sandbox: SandboxCluster, tmp_path: Path) -> AsyncIterator[Harness]:
    """A Harness whose cluster "sb" is the module's sandbox (credentials stored as a YAML string)."""
    settings = Settings(state_dir=tmp_path / "state", private_networks=LOOPBACK_NETWORKS)
    store = Store.open(settings)
    envs = ClusterEnvs(settings, store)
    await envs.store_credentials("sb", sandbox.kubeconfig())
    await store.insert_one("nsrs", {"_id": "ns-1", "_admin": {"deployed": {"K8s": [{"kdu-name": "demo"}]}}})
    acts = StatusActivities(settings, envs, store)
    try:
        yield Harness(FakeKube(), store, acts, ReleaseRef("sb", "", ""))
    finally:
        await acts.close()
        await store.close()


async def test_sandbox_installed_release_is_observed_cheaply(
    sandbox: SandboxCluster, sh: Harness, tools: Any, chart: Path, tmp_path: Path
) -> None:
    ns, name = f"st-ok-{tools.dialect}", f"demo-{tools.dialect}"
    env = tool_env(sandbox, tmp_path, tools.dialect)
    argv = [tools.helm, "install", name, chart, "-n", ns, "--create-namespace", "--wait", "--timeout", "60s"]
    proc = await asyncio.to_thread(run_tool, argv, env)
    assert proc.returncode == 0, proc.stderr
    ref = ReleaseRef("sb", name, ns)
    result = await ActivityEnvironment().run(sh.acts.status, StatusInput(ref, DB, operation="install"))
    assert (result.status, result.revision, result.description) == ("deployed", 1, "Install complete")
    assert (result.chart, result.app_version) == ("demo-0.1.0", "1.16.0")
    assert result.ready is True and (result.ready_resources, result.total_resources) == (3, 3)
    assert "kubectl" in result.notes  # NOTES.txt of `helm create`
    doc = await sh.doc()
    assert (doc["status"], doc["operation"]) == ("Install complete", "install")
    assert doc["detailed-status"] == "deployed rev 1: 3/3 resources ready"
    assert (doc["kduflow"]["phase"], doc["kduflow"]["ready"], doc["kduflow"]["chart"]) == (
        "ready",
        True,
        "demo-0.1.0",
    )

    # Cost of one more poll, counted by the client and by the server.
    api = await sh.acts.api_for("sb")
    before_client, before_server = api.requests, sandbox.total_requests()
    await sh.acts.observe(ref)
    client, server = api.requests - before_client, sandbox.total_requests() - before_server
    kinds = 3  # ServiceAccount, Service, Deployment
    print(f"{tools.dialect}: API requests per poll of a ready release: client {client}, server {server}")
    assert client == server <= 2 + kinds

    latest = await ReleaseStorage(api).latest(name, ns)
    assert latest is not None and latest.apply_method == ("ssa" if tools.dialect == "helm4" else "")

    # An upgrade: the newest revision wins over the superseded one.
    argv = [
        tools.helm,
        "upgrade",
        name,
        chart,
        "-n",
        ns,
        "--set",
        "replicaCount=2",
        "--wait",
        "--timeout",
        "60s",
    ]
    proc = await asyncio.to_thread(run_tool, argv, env)
    assert proc.returncode == 0, proc.stderr
    result = await ActivityEnvironment().run(sh.acts.status, StatusInput(ref, DB, operation="upgrade"))
    assert (result.revision, result.description, result.ready) == (2, "Upgrade complete", True)
    history = await ReleaseStorage(api).history(name, ns)
    assert [(r.version, r.status) for r in history] == [(1, "superseded"), (2, "deployed")]
    assert (await sh.doc())["kduflow"]["revision"] == 2


async def test_sandbox_atomic_install_purge_still_records_the_failure(
    sandbox: SandboxCluster, sh: Harness, tools: Any, chart: Path, tmp_path: Path
) -> None:
    """N2VC wrote nothing after an atomic install failure: the release is gone; the final write
    must say so."""
    ns, name = f"st-atomic-{tools.dialect}", f"atomic-{tools.dialect}"
    env = tool_env(sandbox, tmp_path, tools.dialect)
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"podAnnotations": {NEVER_READY_ANNOTATION: "true"}}))
    undo = "--atomic" if tools.dialect == "helm3" else "--rollback-on-failure"
    argv = [
        tools.helm,
        "install",
        name,
        chart,
        "-n",
        ns,
        "--create-namespace",
        "-f",
        values,
        undo,
        "--timeout",
        "2s",
    ]
    proc = await asyncio.to_thread(run_tool, argv, env)
    assert proc.returncode != 0
    error = errors_mod.short_message(proc.stderr)
    result = await ActivityEnvironment().run(
        sh.acts.status, StatusInput(ReleaseRef("sb", name, ns), DB, operation="install", error=error)
    )
    assert result.status == "absent"
    doc = await sh.doc()
    assert (doc["status"], doc["kduflow"]["phase"], doc["kduflow"]["release_status"]) == (
        "failed",
        "failed",
        "absent",
    )
    assert doc["kduflow"]["last_error"] == error[:300] or doc["kduflow"]["last_error"].endswith("…")
    assert doc["detailed-status"].startswith("release absent; error: ")


async def test_sandbox_never_ready_install_names_the_culprit(
    sandbox: SandboxCluster,
    sh: Harness,
    tools: Any,
    chart: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(status_module, "MIN_POLL_INTERVAL", 0.05)
    ns, name = f"st-stuck-{tools.dialect}", f"stuck-{tools.dialect}"
    env = tool_env(sandbox, tmp_path, tools.dialect)
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"podAnnotations": {NEVER_READY_ANNOTATION: "true"}}))
    ref = ReleaseRef("sb", name, ns)
    beats: list[dict[str, Any]] = []
    act_env = ActivityEnvironment()
    act_env.on_heartbeat = lambda *details: beats.append(details[0])
    poller = asyncio.create_task(
        act_env.run(sh.acts.poll_status, PollStatusInput(ref, DB, operation="install", interval=0.1))
    )
    argv = [
        tools.helm,
        "install",
        name,
        chart,
        "-n",
        ns,
        "--create-namespace",
        "-f",
        values,
        "--wait",
        "--timeout",
        "4s",
    ]
    proc = await asyncio.to_thread(run_tool, argv, env)
    assert proc.returncode != 0
    seen_phases = {b["phase"] for b in beats}
    assert "installing" in seen_phases, seen_phases
    poll_requests = max(b["requests"] for b in beats)
    act_env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await poller
    print(f"{tools.dialect}: poller {beats[-1]['polls']} polls, {beats[-1]['writes']} writes, "
          f"max {poll_requests} API requests per poll, phases {sorted(seen_phases)}")  # fmt: skip
    assert poll_requests <= 2 + 3 + 1  # storage + kinds + the Pod LIST naming the culprit

    # Final write after the failed helm run: the failed revision stays (not atomic), culprit named.
    error = errors_mod.short_message(proc.stderr)
    result = await ActivityEnvironment().run(
        sh.acts.status, StatusInput(ref, DB, operation="install", error=error, phase="failed")
    )
    assert result.status == "failed" and result.ready is False
    assert result.not_ready[0].kind == "Deployment"
    assert "0/1 replicas ready; Pod stuck-" in result.not_ready[0].message
    assert result.not_ready[0].message.endswith(": running, not ready")
    doc = await sh.doc()
    assert doc["status"].startswith(f'Release "{name}" failed')
    assert doc["kduflow"]["phase"] == "failed" and doc["kduflow"]["last_error"]
    assert f"not ready: Deployment {name}" in doc["detailed-status"]
