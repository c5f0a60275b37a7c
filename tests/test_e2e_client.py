"""End to end for the orchestrator's view: the workflows the client needs (GetScaleCount, GetService,
RepoAdd, RepoList, RepoRemove) and the typed client (``kduflow/client.py``) through a real worker, the
real ``temporal`` dev server, the sandbox cluster, chart repositories on 127.0.0.1 and the real
helm 3 and helm 4 binaries.

One world per helm major (module scope): a worker with a secret key (so payloads are encrypted and
the client must use kduflow's codec), a registered cluster, a plain repository registered in
k8srepos and a second repository behind basic auth that is not registered (RepoAdd registers it).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from activities.store import Store
from contract.cluster import (
    InitClusterInput,
    InitClusterResult,
    RepoAddInput,
    RepoAddResult,
    RepoListInput,
    RepoListResult,
    RepoRemoveInput,
    RepoRemoveResult,
)
from contract.models import (
    GetScaleCountInput,
    GetServiceInput,
    InstallKduInput,
    KduResult,
    ScaleCountResult,
    ServiceResult,
)
from contract.search import KDU_CLUSTER, KDU_NAMESPACE, KDU_OPERATION, KDU_OUTCOME, KDU_RELEASE
from kduflow.client import (
    ClusterNotFound,
    KduflowClient,
    OperationCancelled,
    ReleaseNotFound,
    ReplicaKeyNotFound,
    UpgradeRolledBack,
    UrlNotAllowed,
)
from kduflow.config import Settings
from kduflow.plugin import KduflowPlugin
from sandbox import SandboxCluster
from tests.conftest import ROOT, helm_tools, temporal_cli
from tests.support.charts import (
    ChartRepoServer,
    chart_repo_factory,  # noqa: F401  (fixture)
)
from tests.support.sandbox import LOOPBACK_NETWORKS, sandbox_cluster

pytestmark = pytest.mark.e2e

#: One key for both worlds: the lock workflows of one world may still be open (they close when idle)
#: when the other world's worker, polling the same lock task queue, meets them.
SECRET_KEY = "k1:" + base64.b64encode(os.urandom(32)).decode()
REPO_ID = "repo-client"
REPO_NAME = "cl"
PRIVATE_USER = "chartreader"
PRIVATE_PASSWORD = "private-repo-password-4711"


@dataclass
class World:
    dialect: str
    #: A client with kduflow's plugin (its codec): the worker encrypts payloads.
    client: Client
    task_queue: str
    cluster: SandboxCluster
    store: Store
    plugin: KduflowPlugin
    repo: ChartRepoServer
    private_repo: ChartRepoServer
    secret_key: str
    cluster_uuid: str

    async def run(self, workflow: str, arg: Any, result_type: type | None) -> Any:
        return await self.client.execute_workflow(
            workflow, arg, id=f"e2e-{workflow}-{uuid.uuid4()}", task_queue=self.task_queue,
            result_type=result_type,
        )  # fmt: skip

    async def fails(self, workflow: str, arg: Any) -> ApplicationError:
        with pytest.raises(WorkflowFailureError) as info:
            await self.run(workflow, arg, None)
        cause = info.value.cause
        while cause is not None and not isinstance(cause, ApplicationError):
            cause = cause.cause
        assert isinstance(cause, ApplicationError), info.value
        return cause

    async def install(self, release: str, namespace: str, **params: Any) -> KduResult:
        return await self.run(
            "InstallKdu",
            InstallKduInput(
                self.cluster_uuid, f"{REPO_NAME}/webapp:0.1.0", release, namespace, timeout=60, params=params
            ),
            KduResult,
        )


@pytest_asyncio.fixture(scope="module", params=["helm3", "helm4"])
async def world(request, local_env, chart_repo_factory, tmp_path_factory) -> AsyncIterator[World]:  # noqa: F811
    tools = helm_tools(request.param)
    repo = chart_repo_factory()
    private_repo = chart_repo_factory(auth=(PRIVATE_USER, PRIVATE_PASSWORD))
    state = tmp_path_factory.mktemp(f"client-{request.param}")
    key = SECRET_KEY
    cluster_uuid = f"client-{request.param}"
    with sandbox_cluster(ready_delay=0.2, lb_delay=0.3) as cluster:
        settings = Settings.from_env(
            {}, helm=str(tools.helm), kubectl=str(tools.kubectl), state_dir=state / "state",
            poll_interval=0.5, private_networks=LOOPBACK_NETWORKS, secret_key=key,
            # RepoAdd may register repositories on this host (the private one is not in k8srepos).
            url_allowlist=("127.0.0.1",),
        )  # fmt: skip
        store = Store.open(settings)
        await store.insert_one(
            "k8srepos", {"_id": REPO_ID, "name": REPO_NAME, "url": repo.url, "type": "helm-chart"}
        )
        await store.insert_one(
            "k8sclusters",
            {"_id": cluster_uuid, "name": "client", "credentials": cluster.kubeconfig(),
             "_admin": {"helm_chart_repos": [REPO_ID]}},
        )  # fmt: skip
        plugin = KduflowPlugin(settings=settings, store=store)
        client = await Client.connect(
            local_env.client.service_client.config.target_host,
            namespace=local_env.client.namespace,
            plugins=[plugin],
        )
        task_queue = f"client-{request.param}-{uuid.uuid4()}"
        async with Worker(client, task_queue=task_queue):
            w = World(
                request.param, client, task_queue, cluster, store, plugin, repo, private_repo, key,
                cluster_uuid,
            )  # fmt: skip
            init_input = InitClusterInput(cluster_uuid=cluster_uuid, namespace="client")
            init = await w.run("InitCluster", init_input, InitClusterResult)
            assert init.cluster_uuid == cluster_uuid
            yield w
        await store.close()


# ------------------------------------------------------------------------------------------------
# The workflows added for the client.
# ------------------------------------------------------------------------------------------------


async def test_get_scale_count_reads_the_replica_key_scale_would_change(world: World):
    c = world.cluster_uuid
    ns, rel = "count", f"cnt-{world.dialect}"
    await world.install(rel, ns, replicaCount=3)
    # Namespace omitted: looked up, as N2VC's get_scale_count did.
    count = await world.run("GetScaleCount", GetScaleCountInput(c, rel), ScaleCountResult)
    assert (count.namespace, count.replica_key, count.count, count.source) == (
        ns, "replicaCount", 3, "user values"
    )  # fmt: skip
    # The chart default when the user set none (statefuldb: db.replicas).
    db_rel = f"cntdb-{world.dialect}"
    await world.run(
        "InstallKdu",
        InstallKduInput(c, f"{REPO_NAME}/statefuldb:0.1.0", db_rel, ns, timeout=60),
        KduResult,
    )
    db = await world.run(
        "GetScaleCount",
        GetScaleCountInput(c, db_rel, resource_name="db", kdu_model=f"{REPO_NAME}/statefuldb"),
        ScaleCountResult,
    )
    assert (db.replica_key, db.source) == ("db.replicas", "chart values")
    sts = world.cluster.list("statefulsets", ns, f"app.kubernetes.io/instance={db_rel}")
    assert db.count == sts[0]["spec"]["replicas"]
    missing = await world.fails("GetScaleCount", GetScaleCountInput(c, rel, resource_name="cache"))
    assert missing.type == "ReplicaKeyNotFound" and missing.non_retryable
    absent = await world.fails("GetScaleCount", GetScaleCountInput(c, "nothing-here"))
    assert absent.type == "ReleaseNotFound"


async def test_get_service_returns_one_service_or_none(world: World):
    c = world.cluster_uuid
    ns, rel = "svc", f"svc-{world.dialect}"
    await world.install(rel, ns, service={"type": "LoadBalancer"})
    found = await world.run(
        "GetService", GetServiceInput(c, f"{rel}-webapp", ns), ServiceResult
    )
    assert found.service is not None
    svc = found.service
    assert (svc.name, svc.namespace, svc.type) == (f"{rel}-webapp", ns, "LoadBalancer")
    assert svc.cluster_ip and svc.ports[0].port == 80
    live = world.cluster.get("services", ns, f"{rel}-webapp")
    assert svc.cluster_ip == live["spec"]["clusterIP"]
    none = await world.run("GetService", GetServiceInput(c, "no-such-service", ns), ServiceResult)
    assert none.service is None
    bad_name = {"cluster_uuid": c, "service_name": "Bad_Name", "namespace": ns}
    bad = await world.fails("GetService", bad_name)
    assert bad.type == "InvalidInput" and "service_name" in bad.message


async def test_repo_add_registers_adds_lists_and_remove_takes_it_off(world: World, caplog):
    c = world.cluster_uuid
    caplog.set_level(logging.DEBUG)
    name = f"private-{world.dialect}"
    added = await world.run(
        "RepoAdd",
        RepoAddInput(c, name, world.private_repo.url, user=PRIVATE_USER, password=PRIVATE_PASSWORD),
        RepoAddResult,
    )
    assert (added.name, added.url, added.oci) == (name, world.private_repo.url, False)
    # Registered as OSM's NBI would: a k8srepos document (password encrypted: the worker has a key)
    # and its id in the cluster's desired list, so SyncRepos keeps it.
    doc = await world.store.find_one("k8srepos", {"_id": added.repo_id})
    assert doc is not None
    assert (doc["name"], doc["url"], doc["user"]) == (name, world.private_repo.url, PRIVATE_USER)
    assert "kduflow_encrypted" in doc["password"] and PRIVATE_PASSWORD not in json.dumps(doc)
    cluster_doc = await world.store.find_one("k8sclusters", {"_id": c})
    assert added.repo_id in cluster_doc["_admin"]["helm_chart_repos"]
    assert cluster_doc["_admin"]["helm_charts_added"][added.repo_id] == name
    # helm really uses it: a chart from the private repository installs.
    rel = f"priv-{world.dialect}"
    res = await world.run(
        "InstallKdu", InstallKduInput(c, f"{name}/webapp:0.2.0", rel, "priv", timeout=60), KduResult
    )
    assert res.chart == "webapp-0.2.0"
    assert world.private_repo.requests_for("/index.yaml")
    # The same again is idempotent: same id, nothing new registered.
    again = await world.run(
        "RepoAdd",
        RepoAddInput(c, name, world.private_repo.url, user=PRIVATE_USER, password=PRIVATE_PASSWORD),
        RepoAddResult,
    )
    assert again.repo_id == added.repo_id
    assert len(await world.store.find("k8srepos", {"name": name})) == 1

    listed = await world.run("RepoList", RepoListInput(c), RepoListResult)
    by_name = {r.name: r for r in listed.repos}
    assert by_name[name].id == added.repo_id and by_name[REPO_NAME].id == REPO_ID
    assert PRIVATE_PASSWORD not in json.dumps([r.url for r in listed.repos])

    removed = await world.run("RepoRemove", RepoRemoveInput(c, name), RepoRemoveResult)
    assert (removed.repo_id, removed.existed) == (added.repo_id, True)
    cluster_doc = await world.store.find_one("k8sclusters", {"_id": c})
    assert added.repo_id not in cluster_doc["_admin"]["helm_chart_repos"]
    assert added.repo_id not in cluster_doc["_admin"].get("helm_charts_added", {})
    listed = await world.run("RepoList", RepoListInput(c), RepoListResult)
    assert name not in {r.name for r in listed.repos}
    # The k8srepos document stays (other clusters may list it); removing again is a no-op.
    assert await world.store.find_one("k8srepos", {"_id": added.repo_id}) is not None
    twice = await world.run("RepoRemove", RepoRemoveInput(c, name), RepoRemoveResult)
    assert (twice.repo_id, twice.existed) == ("", False)
    # Credentials never reach the worker's log.
    assert PRIVATE_PASSWORD not in caplog.text


async def test_repo_add_refusals_leave_nothing_registered(world: World):
    c = world.cluster_uuid
    before = len(await world.store.find("k8srepos", {}))
    refused = await world.fails(
        "RepoAdd", RepoAddInput(c, "metadata", "http://169.254.169.254/latest")
    )
    assert refused.type == "UrlNotAllowed" and refused.non_retryable
    creds = await world.fails("RepoAdd", {"cluster_uuid": c, "name": "x", "url": "http://u:p@127.0.0.1/"})
    assert creds.type == "InvalidInput" and "url" in creds.message
    # Allowed by the URL policy but wrong credentials: helm's add fails, the registration is undone.
    name = f"wrongpw-{world.dialect}"
    wrong = await world.fails(
        "RepoAdd",
        RepoAddInput(c, name, world.private_repo.url, user=PRIVATE_USER, password="nope-nope"),
    )
    assert wrong.type == "CredentialsInvalid", wrong
    assert "nope-nope" not in wrong.message
    cluster_doc = await world.store.find_one("k8sclusters", {"_id": c})
    listed_names = {
        (await world.store.find_one("k8srepos", {"_id": rid}) or {}).get("name")
        for rid in cluster_doc["_admin"]["helm_chart_repos"]
    }
    assert name not in listed_names and "metadata" not in listed_names
    assert len(await world.store.find("k8srepos", {"name": "metadata"})) == 0
    assert len(await world.store.find("k8srepos", {})) <= before + 1  # at most the undone registration


# ------------------------------------------------------------------------------------------------
# The client (kduflow/client.py): every method against the real worker.
# ------------------------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def kdu(world: World) -> KduflowClient:
    # Its own connection, without kduflow's plugin: the client brings the converter and the key.
    return await KduflowClient.connect(
        world.client.service_client.config.target_host,
        namespace=world.client.namespace,
        task_queue=world.task_queue,
        secret_key=world.secret_key,
    )


async def _new_nsr(world: World) -> dict[str, Any]:
    nsr_id = f"nsr-{uuid.uuid4()}"
    deployed = {"deployed": {"K8s": [{"kdu-name": "k"}]}}
    await world.store.insert_one("nsrs", {"_id": nsr_id, "_admin": deployed})
    return {"collection": "nsrs", "filter": {"_id": nsr_id}, "path": "_admin.deployed.K8s.0"}


async def test_client_release_lifecycle(world: World, kdu: KduflowClient):
    c, ns, rel = world.cluster_uuid, "cli", f"cli-{world.dialect}"
    db = await _new_nsr(world)
    model = f"{REPO_NAME}/webapp:0.1.0"
    res = await kdu.install(c, model, rel, timeout=60, params={"replicaCount": 1}, db_dict=db, namespace=ns)
    assert (res.kdu_instance, res.namespace, res.revision, res.status) == (rel, ns, 1, "deployed")
    doc = await world.store.find_one("nsrs", {"_id": db["filter"]["_id"]})
    assert doc["_admin"]["deployed"]["K8s"][0]["operation"] == "install"

    status = await kdu.status(c, rel)  # namespace looked up
    assert status.namespace == ns and status.ready is True
    (svc,) = (await kdu.services(c, rel, ns)).services
    one = await kdu.service(c, svc.name, ns)
    assert one is not None and one.cluster_ip == svc.cluster_ip
    assert await kdu.service(c, "not-there", ns) is None
    assert (await kdu.values(c, rel)).values == {"replicaCount": 1}
    assert (await kdu.values(c, rel, ns, True)).values["replicaCount"] == 1
    assert (rel, ns) in {(r.name, r.namespace) for r in (await kdu.instances(c)).releases}
    assert (await kdu.get_scale_count("", rel, c, model)).count == 1

    scaled = await kdu.scale(rel, 2, "", 60, c, model, db_dict=db)
    assert (scaled.replica_key, scaled.revision) == ("replicaCount", 2)
    assert world.cluster.get("deployments", ns, f"{rel}-webapp")["spec"]["replicas"] == 2
    assert (await kdu.get_scale_count("", rel, c)).count == 2

    up = await kdu.upgrade(c, rel, f"{REPO_NAME}/webapp", timeout=60, version="0.2.0")
    assert (up.revision, up.chart) == (3, "webapp-0.2.0")
    with pytest.raises(UpgradeRolledBack) as rolled:
        await kdu.upgrade(c, rel, params={"ready": False}, timeout=4, db_dict=db)
    assert rolled.value.detail["failed_revision"] == 4 and rolled.value.detail["restored_revision"] == 3
    assert rolled.value.workflow_id.startswith(f"kdu/{c}/-/{rel}/upgrade/")
    assert isinstance(rolled.value.__cause__, WorkflowFailureError)
    back = await kdu.rollback(c, rel, 1, timeout=60)
    assert (back.restored_revision, back.chart) == (1, "webapp-0.1.0")

    with pytest.raises(ReleaseNotFound):
        await kdu.values(c, "nothing-here", ns)
    with pytest.raises(ReplicaKeyNotFound):
        await kdu.get_scale_count("cache", rel, c)
    inspected = await kdu.inspect(f"{REPO_NAME}/webapp", cluster_uuid=c, version="0.2.0")
    assert inspected.chart["version"] == "0.2.0" and "replicaCount" in inspected.values
    gone = await kdu.uninstall(c, rel)
    assert gone.status == "absent" and gone.namespace == ns
    assert (await kdu.status(c, rel)).status == "absent"


async def _eventually(check: Any, what: str, timeout: float = 30) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not {what} within {timeout} s")
        await asyncio.sleep(0.1)


async def test_client_handles_operation_query_cancel_and_attach_by_op_id(world: World, kdu: KduflowClient):
    c, ns, rel = world.cluster_uuid, "cli-cancel", f"cancel-{world.dialect}"
    op = uuid.uuid4().hex
    model = f"{REPO_NAME}/webapp:0.1.0"
    never = {"ready": False}
    handle = await kdu.start_install(c, model, rel, timeout=120, params=never, namespace=ns, op_id=op)
    assert handle.id == f"kdu/{c}/{ns}/{rel}/install/{op}"
    same = await kdu.start_install(c, model, rel, timeout=120, params=never, namespace=ns, op_id=op)
    assert same.run_id == handle.run_id

    async def running() -> Any:
        state = await handle.operation()
        return state if state.phase == "running" else None

    # The operation query: helm is running (pods never get ready), the release is known.
    state = await _eventually(running, "running")
    assert (state.operation, state.cluster_uuid, state.kdu_instance) == ("install", c, rel)
    assert state.namespace == ns
    assert state.lock_holder is None and state.queue_position == 0
    assert state.details.startswith(f"install {ns}/{rel} on {c}: running")
    # A second operation on the release queues behind the install: its query names the holder.
    upgrade = await kdu.start_upgrade(c, rel, namespace=ns, params={"ready": True}, timeout=60)

    async def queued() -> Any:
        state = await upgrade.operation()
        return state if state.phase == "waiting-for-lock" else None

    waiting = await _eventually(queued, "queued")
    assert waiting.lock_holder is not None and waiting.lock_holder.workflow_id == handle.id
    assert waiting.lock_holder.operation == "install" and waiting.queue_position == 1
    assert "waiting for the lock held by install" in waiting.details
    await upgrade.cancel()
    with pytest.raises(OperationCancelled):
        await upgrade.result()
    await handle.cancel()
    with pytest.raises(OperationCancelled):
        await handle.result()
    with pytest.raises(OperationCancelled):
        await kdu.get_handle(handle.id, KduResult).result()
    final = await handle.operation()  # a closed workflow still answers queries
    assert final.phase == "cancelled"
    attrs = (await handle.workflow_handle.describe()).typed_search_attributes
    assert attrs.get(KDU_OUTCOME) == "cancelled"
    await kdu.uninstall(c, rel, namespace=ns)


async def test_workflows_upsert_what_only_they_know(world: World, kdu: KduflowClient):
    c, ns = world.cluster_uuid, "cli-upsert"
    generated = await kdu.start_install(c, f"{REPO_NAME}/webapp", namespace=ns, timeout=60)
    result = await generated.result()
    attrs = (await generated.workflow_handle.describe()).typed_search_attributes
    # The generated name and the outcome were upserted; the client set cluster and operation.
    assert (attrs.get(KDU_RELEASE), attrs.get(KDU_NAMESPACE)) == (result.kdu_instance, ns)
    assert (attrs.get(KDU_CLUSTER), attrs.get(KDU_OPERATION)) == (c, "install")
    assert attrs.get(KDU_OUTCOME) == "succeeded"
    assert (await generated.operation()).phase == "completed"
    # Namespace omitted: the upgrade resolves it and upserts it; a failed upgrade is rolled back.
    failing = await kdu.start_upgrade(c, result.kdu_instance, params={"ready": False}, timeout=4)
    with pytest.raises(UpgradeRolledBack):
        await failing.result()
    attrs = (await failing.workflow_handle.describe()).typed_search_attributes
    assert (attrs.get(KDU_NAMESPACE), attrs.get(KDU_OUTCOME)) == (ns, "rolled-back")
    state = await failing.operation()
    assert state.phase == "rolled-back" and state.last_error.startswith("UpgradeRolledBack: ")
    missing = await kdu.start_rollback(c, "nothing-here", namespace=ns)
    with pytest.raises(ReleaseNotFound):
        await missing.result()
    attrs = (await missing.workflow_handle.describe()).typed_search_attributes
    assert attrs.get(KDU_OUTCOME) == "failed"
    await kdu.uninstall(c, result.kdu_instance)


async def listed_when(
    kdu: KduflowClient, query: str, check: Callable[[list[Any]], bool], timeout: float = 20
) -> list[Any]:
    """The workflows matching ``query`` once ``check`` holds for them (visibility is eventually
    consistent); the last listing when it never does."""
    deadline = time.monotonic() + timeout
    while True:
        listed = [wf async for wf in kdu.client.list_workflows(query)]
        if check(listed) or time.monotonic() > deadline:
            return listed
        await asyncio.sleep(0.5)


async def test_client_cluster_and_repository_operations(world: World, kdu: KduflowClient):
    other = f"second-{world.dialect}"
    init = await kdu.init_cluster(world.cluster.kubeconfig(), "second-system", cluster_uuid=other)
    assert (init.cluster_uuid, init.installed_sw) == (other, False)
    assert init.namespace_created and init.schedule_id
    synced = await kdu.sync_repos(other)
    assert (synced.added, synced.deleted, synced.failed) == ({}, [], {})
    name = "client-private"
    url = world.private_repo.url
    added = await kdu.repo_add(other, name, url, user=PRIVATE_USER, password=PRIVATE_PASSWORD)
    assert added.name == name
    assert name in {r.name for r in (await kdu.repo_list(other)).repos}
    # Left for ResetCluster to uninstall (below).
    installed = await kdu.install(other, f"{name}/webapp", namespace="second-apps", timeout=60)
    # The repository is the cluster's now: SyncRepos keeps it.
    assert (await kdu.sync_repos(other)).deleted == []
    removed = await kdu.repo_remove(other, name)
    assert removed.existed and removed.repo_id == added.repo_id
    assert name not in {r.name for r in (await kdu.repo_list(other)).repos}
    with pytest.raises(UrlNotAllowed):
        await kdu.repo_add(other, "meta", "http://169.254.169.254/")
    # Children start with the parent's kind of search attributes: InitCluster's SyncRepos, and
    # ResetCluster's uninstalls of the releases it finds (which then upsert their outcome). The
    # second cluster id names the same sandbox cluster, so the reset finds the other tests'
    # releases too: each uninstall child carries its own release.
    assert await kdu.reset_cluster(other, force=True, uninstall_sw=True) is True
    query = f'KduCluster="{other}" AND KduOperation IN ("sync-repos", "uninstall")'

    def children_closed(listed: list[Any]) -> bool:
        init_sync = [wf for wf in listed if wf.id.startswith(f"sync-repos-{other}-init-") and wf.close_time]
        mine = [wf for wf in listed if wf.typed_search_attributes.get(KDU_RELEASE) == installed.kdu_instance]
        ended = len(mine) == 1 and mine[0].typed_search_attributes.get(KDU_OUTCOME) is not None
        return bool(init_sync) and ended

    children = await listed_when(kdu, query, children_closed)
    assert children_closed(children), [(wf.id, wf.typed_search_attributes) for wf in children]
    uninstalls = [wf for wf in children if wf.workflow_type == "UninstallKdu"]
    for wf in uninstalls:
        attrs = wf.typed_search_attributes
        assert attrs.get(KDU_RELEASE) and attrs.get(KDU_NAMESPACE) and attrs.get(KDU_OPERATION) == "uninstall"
    (mine,) = [wf.typed_search_attributes for wf in uninstalls
               if wf.typed_search_attributes.get(KDU_RELEASE) == installed.kdu_instance]  # fmt: skip
    assert (mine.get(KDU_NAMESPACE), mine.get(KDU_OUTCOME)) == ("second-apps", "succeeded")
    with pytest.raises(ClusterNotFound):
        await kdu.repo_list(other)


async def test_temporal_cli_finds_operations_by_search_attribute(world: World, kdu: KduflowClient):
    c, ns, rel = world.cluster_uuid, "cli-find", f"find-{world.dialect}"
    installed = await kdu.start_install(c, f"{REPO_NAME}/webapp:0.1.0", rel, timeout=60, namespace=ns)
    await installed.result()
    removed = await kdu.start_uninstall(c, rel)
    await removed.result()
    address = world.client.service_client.config.target_host

    async def listed(query: str) -> set[str]:
        # The visibility store is eventually consistent: retry for a few seconds.
        for _ in range(50):
            proc = subprocess.run(
                [temporal_cli(), "workflow", "list", "--address", address, "--query", query, "-o", "json"],
                capture_output=True, text=True, timeout=30, check=True,
            )  # fmt: skip
            out = proc.stdout.strip()
            rows = json.loads(out) if out.startswith("[") else [json.loads(x) for x in out.splitlines() if x]
            ids = {row["execution"]["workflowId"] for row in rows}
            if ids:
                return ids
            await asyncio.sleep(0.2)
        return set()

    assert await listed(f'KduRelease="{rel}"') >= {installed.id, removed.id}
    assert await listed(f'KduRelease="{rel}" AND KduOperation="uninstall"') == {removed.id}
    assert installed.id in await listed(f'KduCluster="{c}" AND KduNamespace="{ns}"')


def _shim_source() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- n2vc-shim -->", 1)[1]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


async def test_the_n2vc_shim_of_the_docs_drives_the_client(world: World, kdu: KduflowClient):
    scope: dict[str, Any] = {}
    exec(compile(_shim_source(), "README.md", "exec"), scope)  # noqa: S102 - the documented shim
    conn = scope["KduflowHelmConnector"](kdu)
    c, ns, rel = world.cluster_uuid, "shim", f"shim-{world.dialect}"
    assert await conn.install(c, f"{REPO_NAME}/webapp:0.1.0", rel, timeout=60, namespace=ns) is True
    assert await conn.get_scale_count("", rel, c, f"{REPO_NAME}/webapp") == 1
    assert (await conn.get_instance_info(c, rel))["namespace"] == ns
    assert (await conn.status_kdu(c, rel))["status"] == "deployed"
    assert [s["name"] for s in await conn.get_services(c, rel, ns)] == [f"{rel}-webapp"]
    assert (await conn.get_service(c, f"{rel}-webapp", ns))["type"] == "ClusterIP"
    assert await conn.upgrade(c, rel, params={"replicaCount": 2}, timeout=60) == 2
    assert await conn.rollback(c, rel, 1) == 3
    assert {"name": REPO_NAME, "url": world.repo.url} in await conn.repo_list(c)
    assert await conn.uninstall(c, rel) is True
