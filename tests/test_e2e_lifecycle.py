"""End to end: a real worker (KduflowPlugin), the real `temporal` dev server, the sandbox cluster, a
chart repository on 127.0.0.1 and the real helm 3 and helm 4 binaries.

After every step the release is checked in the sandbox with the real helm (history, status, values)
and the status written to the store is checked (OSM's four fields and the `kduflow` sub-document).
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from activities.models import (
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
    RollbackKduInput,
    ScaleKduInput,
    UninstallKduInput,
    UpgradeKduInput,
)
from activities.store import Store
from kduflow.config import Settings
from kduflow.plugin import KduflowPlugin
from sandbox import SandboxCluster
from tests.conftest import helm_tools
from tests.support.charts import (
    ChartRepoServer,
    chart_repo_factory,  # noqa: F401  (fixture)
)
from tests.support.sandbox import LOOPBACK_NETWORKS, sandbox_cluster
from workflows.cluster_models import InitClusterInput, InitClusterResult, SyncReposInput, SyncReposResult

pytestmark = pytest.mark.e2e

CLUSTER = "e2e-cluster"
REPO_ID = "repo-e2e"


@dataclass
class Stack:
    dialect: str
    client: Client
    task_queue: str
    cluster: SandboxCluster
    store: Store
    plugin: KduflowPlugin
    repo: ChartRepoServer

    async def run(self, workflow: str, arg: Any, result_type: type) -> Any:
        return await self.client.execute_workflow(
            workflow,
            arg,
            id=f"e2e-{workflow}-{uuid.uuid4()}",
            task_queue=self.task_queue,
            result_type=result_type,
        )

    async def fails(self, workflow: str, arg: Any) -> ApplicationError:
        with pytest.raises(WorkflowFailureError) as info:
            await self.run(workflow, arg, KduResult)
        cause = info.value.cause
        while cause is not None and not isinstance(cause, ApplicationError):
            cause = cause.cause
        assert isinstance(cause, ApplicationError), info.value
        return cause

    async def helm(self, *args: str) -> Any:
        """Run the real helm of this stack against the sandbox, as the worker's cluster env does."""
        env = await self.plugin.envs.get(CLUSTER)
        proc = subprocess.run(
            [self.plugin.settings.helm, *args, "-o", "json"],
            env=env.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode != 0:
            return {"error": proc.stderr}
        return json.loads(proc.stdout)

    async def kdu_doc(self, nsr_id: str) -> dict[str, Any]:
        doc = await self.store.find_one("nsrs", {"_id": nsr_id})
        assert doc is not None
        return doc["_admin"]["deployed"]["K8s"][0]

    async def new_nsr(self) -> DbDict:
        nsr_id = f"nsr-{uuid.uuid4()}"
        await self.store.insert_one(
            "nsrs", {"_id": nsr_id, "_admin": {"deployed": {"K8s": [{"kdu-name": "k"}]}}}
        )
        return DbDict(collection="nsrs", filter={"_id": nsr_id}, path="_admin.deployed.K8s.0")


@pytest_asyncio.fixture(scope="module", params=["helm3", "helm4"])
async def stack(request, local_env, chart_repo_factory, tmp_path_factory) -> AsyncIterator[Stack]:  # noqa: F811
    tools = helm_tools(request.param)
    repo = chart_repo_factory()
    state = tmp_path_factory.mktemp(f"e2e-{request.param}")
    with sandbox_cluster(ready_delay=0.2, lb_delay=0.3) as cluster:
        settings = Settings.from_env(
            {}, helm=str(tools.helm), kubectl=str(tools.kubectl), state_dir=state / "state",
            poll_interval=0.5, private_networks=LOOPBACK_NETWORKS,
        )
        store = Store.open(settings)
        await store.insert_one(
            "k8srepos", {"_id": REPO_ID, "name": "e2e", "url": repo.url, "type": "helm-chart"}
        )
        await store.insert_one(
            "k8sclusters",
            {
                "_id": CLUSTER,
                "name": "e2e",
                "credentials": cluster.kubeconfig(),
                "_admin": {"helm_chart_repos": [REPO_ID]},
            },
        )
        plugin = KduflowPlugin(settings=settings, store=store)
        task_queue = f"e2e-{request.param}-{uuid.uuid4()}"
        async with Worker(local_env.client, task_queue=task_queue, plugins=[plugin]):
            s = Stack(request.param, local_env.client, task_queue, cluster, store, plugin, repo)
            await s.run(
                "InitCluster", InitClusterInput(cluster_uuid=CLUSTER, namespace="e2e"), InitClusterResult
            )
            # InitCluster already synchronised the repositories (a child SyncRepos): nothing left to do.
            synced = await s.run("SyncRepos", SyncReposInput(cluster_uuid=CLUSTER), SyncReposResult)
            assert (synced.added, synced.deleted, synced.failed) == ({}, [], {}), synced
            doc = await store.find_one("k8sclusters", {"_id": CLUSTER})
            assert doc["_admin"]["helm_charts_added"] == {REPO_ID: "e2e"}
            assert doc["_admin"]["helm-chart-v3"]["operationalState"] == "ENABLED"
            yield s
        await store.close()


def history_statuses(history: Any) -> list[tuple[int, str]]:
    return [(h["revision"], h["status"]) for h in history]


async def test_install_status_services_values_uninstall(stack: Stack):
    ns, rel = "apps", f"web-{stack.dialect}"
    db = await stack.new_nsr()
    secret = "s3cr3t-value-never-in-status"
    res = await stack.run(
        "InstallKdu",
        InstallKduInput(
            cluster_uuid=CLUSTER,
            kdu_model="e2e/webapp:0.1.0",
            kdu_instance=rel,
            namespace=ns,
            params={"replicaCount": 2, "password": secret},
            db_dict=db,
            timeout=60,
        ),
        KduResult,
    )
    assert (res.kdu_instance, res.namespace, res.revision, res.status) == (rel, ns, 1, "deployed")
    assert res.chart == "webapp-0.1.0"

    assert history_statuses(await stack.helm("history", rel, "-n", ns)) == [(1, "deployed")]
    assert (await stack.helm("get", "values", rel, "-n", ns))["replicaCount"] == 2
    assert stack.cluster.get("deployments", ns, f"{rel}-webapp")["spec"]["replicas"] == 2

    kdu = await stack.kdu_doc(db.filter["_id"])
    assert kdu["operation"] == "install"
    assert kdu["status"] == "Install complete"
    assert float(kdu["status-time"]) > 0
    assert kdu["kduflow"]["revision"] == 1 and kdu["kduflow"]["ready"] is True
    assert secret not in json.dumps(kdu, default=str)
    assert len(kdu["detailed-status"]) < 1100

    status = await stack.run("KduStatus", KduRefInput(CLUSTER, rel, ns), KduStatusResult)
    assert status.status == "deployed" and status.ready is True
    assert status.total_resources >= 3 and status.ready_resources == status.total_resources

    services = await stack.run("KduServices", KduRefInput(CLUSTER, rel, ns), KduServicesResult)
    (svc,) = services.services
    assert svc.name == f"{rel}-webapp" and svc.cluster_ip and svc.ports[0].port == 80

    values = await stack.run("KduValues", KduRefInput(CLUSTER, rel, ns), KduValuesResult)
    assert values.values == {"replicaCount": 2, "password": secret}
    # Every release result carries the release itself too.
    for result in (services, values):
        assert (result.revision, result.status, result.chart, result.app_version) == (
            1,
            "deployed",
            "webapp-0.1.0",
            "1.0.0",
        )

    listed = await stack.run("KduInstances", KduInstancesInput(CLUSTER), KduInstancesResult)
    assert (rel, ns, "deployed") in {(r.name, r.namespace, r.status) for r in listed.releases}

    gone = await stack.run("UninstallKdu", UninstallKduInput(CLUSTER, rel, ns, db_dict=db), KduResult)
    assert gone.status in ("uninstalled", "absent") and not gone.message.startswith("release was absent")
    assert "error" in await stack.helm("history", rel, "-n", ns)
    assert stack.cluster.get("deployments", ns, f"{rel}-webapp") is None
    again = await stack.run("UninstallKdu", UninstallKduInput(CLUSTER, rel, ns), KduResult)
    assert again.status == "absent" and "absent" in again.message


async def test_install_with_generated_name_and_a_load_balancer(stack: Stack):
    index_fetches = len(stack.repo.requests_for("/index.yaml"))
    res = await stack.run(
        "InstallKdu",
        InstallKduInput(
            cluster_uuid=CLUSTER,
            kdu_model="e2e/webapp",
            namespace="gen",
            timeout=60,
            params={"service": {"type": "LoadBalancer"}},
        ),
        KduResult,
    )
    # N2VC's scheme keeps the repository prefix: "<repo>-<chart>-<10 digits>".
    assert re.fullmatch(r"e2e-webapp-\d{10}", res.kdu_instance), res.kdu_instance
    listed = await stack.helm("list", "-n", "gen")
    assert [r["name"] for r in listed] == [res.kdu_instance]
    # The repository index this worker fetched during InitCluster is fresh and lists the chart:
    # installing "repo/chart" must not refresh it again.
    assert len(stack.repo.requests_for("/index.yaml")) == index_fetches > 0
    services = await stack.run(
        "KduServices", KduRefInput(CLUSTER, res.kdu_instance, "gen"), KduServicesResult
    )
    (svc,) = services.services
    assert (svc.type, svc.pending) == ("LoadBalancer", False) and svc.external_ip and svc.cluster_ip
    await stack.run("UninstallKdu", UninstallKduInput(CLUSTER, res.kdu_instance, "gen"), KduResult)


async def test_upgrade_failed_upgrade_rolls_back_then_explicit_rollback(stack: Stack):
    ns, rel = "upg", f"up-{stack.dialect}"
    db = await stack.new_nsr()
    await stack.run(
        "InstallKdu",
        InstallKduInput(
            CLUSTER, "e2e/webapp", rel, ns, version="0.1.0", timeout=60, params={"replicaCount": 1}
        ),
        KduResult,
    )
    up = await stack.run(
        "UpgradeKdu",
        UpgradeKduInput(CLUSTER, rel, ns, kdu_model="e2e/webapp", version="0.2.0", db_dict=db, timeout=60),
        KduResult,
    )
    assert (up.revision, up.status, up.chart) == (2, "deployed", "webapp-0.2.0")
    assert (await stack.helm("get", "values", rel, "-n", ns))["replicaCount"] == 1  # values reused
    kdu = await stack.kdu_doc(db.filter["_id"])
    assert (kdu["operation"], kdu["status"]) == ("upgrade", "Upgrade complete")

    err = await stack.fails(
        "UpgradeKdu", UpgradeKduInput(CLUSTER, rel, ns, params={"ready": False}, db_dict=db, timeout=4)
    )
    assert err.type == "UpgradeRolledBack", err
    details = err.details[0]
    assert details["failed_revision"] == 3 and details["restored_revision"] == 2
    history = await stack.helm("history", rel, "-n", ns)
    assert history_statuses(history)[2:] == [(3, "failed"), (4, "deployed")]
    assert history[3]["description"] == "Rollback to 2" and history[3]["chart"] == "webapp-0.2.0"
    kdu = await stack.kdu_doc(db.filter["_id"])
    assert kdu["kduflow"]["phase"] == "rolled-back" and kdu["kduflow"]["revision"] == 4
    assert kdu["kduflow"]["last_error"]

    back = await stack.run(
        "RollbackKdu", RollbackKduInput(CLUSTER, rel, ns, revision=1, db_dict=db, timeout=60), KduResult
    )
    assert (back.revision, back.restored_revision, back.chart) == (5, 1, "webapp-0.1.0")
    assert (await stack.helm("status", rel, "-n", ns))["info"]["description"] == "Rollback to 1"
    assert (await stack.kdu_doc(db.filter["_id"]))["operation"] == "rollback"

    # revision 0 = the last *deployed* revision before the current one: 4 (the failed 3 is skipped).
    prev = await stack.run("RollbackKdu", RollbackKduInput(CLUSTER, rel, ns, timeout=60), KduResult)
    assert prev.restored_revision == 4 and prev.chart == "webapp-0.2.0"
    await stack.run("UninstallKdu", UninstallKduInput(CLUSTER, rel, ns), KduResult)


async def test_scale_top_level_and_component_keys(stack: Stack):
    ns = "scale"
    web, db_rel = f"sw-{stack.dialect}", f"sdb-{stack.dialect}"
    db = await stack.new_nsr()
    await stack.run(
        "InstallKdu",
        InstallKduInput(
            CLUSTER, "e2e/webapp:0.1.0", web, ns, timeout=60, params={"image": {"tag": "custom"}}
        ),
        KduResult,
    )
    scaled = await stack.run(
        "ScaleKdu", ScaleKduInput(CLUSTER, web, ns, scale=3, db_dict=db, timeout=60), KduResult
    )
    assert scaled.replica_key == "replicaCount" and scaled.revision == 2
    assert stack.cluster.get("deployments", ns, f"{web}-webapp")["spec"]["replicas"] == 3
    values = await stack.helm("get", "values", web, "-n", ns)
    assert values == {"image": {"tag": "custom"}, "replicaCount": 3}  # only the key changed
    assert (await stack.kdu_doc(db.filter["_id"]))["operation"] == "scale"

    await stack.run(
        "InstallKdu", InstallKduInput(CLUSTER, "e2e/statefuldb:0.1.0", db_rel, ns, timeout=60), KduResult
    )
    scaled = await stack.run(
        "ScaleKdu", ScaleKduInput(CLUSTER, db_rel, ns, scale=2, resource_name="db", timeout=60), KduResult
    )
    assert scaled.replica_key == "db.replicas"
    (sts,) = stack.cluster.list("statefulsets", ns, f"app.kubernetes.io/instance={db_rel}")
    assert sts["spec"]["replicas"] == 2

    missing = await stack.fails(
        "ScaleKdu", ScaleKduInput(CLUSTER, db_rel, ns, scale=1, resource_name="cache")
    )
    assert missing.type == "ReplicaKeyNotFound"
    for rel in (web, db_rel):
        await stack.run("UninstallKdu", UninstallKduInput(CLUSTER, rel, ns), KduResult)


async def test_atomic_install_failure_writes_final_status(stack: Stack):
    ns, rel = "bad", f"never-{stack.dialect}"
    db = await stack.new_nsr()
    err = await stack.fails(
        "InstallKdu",
        InstallKduInput(CLUSTER, "e2e/webapp:0.1.0", rel, ns, timeout=4, params={"ready": False}, db_dict=db),
    )
    assert err.type == "ReleaseFailed", err
    assert "error" in await stack.helm("history", rel, "-n", ns)  # atomic: purged
    kdu = await stack.kdu_doc(db.filter["_id"])
    assert kdu["operation"] == "install"
    assert kdu["kduflow"]["phase"] == "failed" and kdu["kduflow"]["last_error"]

    render = await stack.fails(
        "InstallKdu", InstallKduInput(CLUSTER, "e2e/broken:0.1.0", f"br-{stack.dialect}", ns)
    )
    assert render.type == "RenderFailed" and render.non_retryable


async def test_inspect_chart_from_the_cluster_repository(stack: Stack):
    out = await stack.run(
        "InspectKdu", InspectKduInput("e2e/webapp", cluster_uuid=CLUSTER, version="0.2.0"), InspectKduResult
    )
    assert out.chart["name"] == "webapp" and out.chart["version"] == "0.2.0"
    assert "replicaCount" in out.values
    assert out.readme.strip()
