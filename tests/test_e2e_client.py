"""End to end for the orchestrator's view: the workflows the client needs (GetScaleCount, GetService,
RepoAdd, RepoList, RepoRemove) and the typed client (``kduflow/client.py``) through a real worker, the
real ``temporal`` dev server, the sandbox cluster, chart repositories on 127.0.0.1 and the real
helm 3 and helm 4 binaries.

One world per helm major (module scope): a worker with a secret key (so payloads are encrypted and
the client must use kduflow's codec), a registered cluster, a plain repository registered in
k8srepos and a second repository behind basic auth that is not registered (RepoAdd registers it).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator
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
from kduflow.config import Settings
from kduflow.plugin import KduflowPlugin
from sandbox import SandboxCluster
from tests.conftest import helm_tools
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
