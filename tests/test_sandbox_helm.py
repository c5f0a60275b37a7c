"""Real helm 3 / helm 4 and kubectl against the sandbox: each row runs its setup, then the command
under test, and asserts the sandbox's resulting state (objects, release Secrets)."""

from __future__ import annotations

import base64
import gzip
import itertools
import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sandbox import SandboxCluster
from tests.support.sandbox import demo_chart, run_tool, sandbox_cluster, tool_env

_NS = itertools.count(1)
NEVER_READY = "podAnnotations.sandbox\\.kduflow\\.dev/never-ready=true"


@dataclass
class Ctx:
    cluster: SandboxCluster
    dialect: str
    helm: Path
    kubectl: Path
    env: dict[str, str]
    chart: Path
    ns: str
    rel: str = "rel"

    def argv(self, template: list[str]) -> list[str]:
        atomic = "--atomic" if self.dialect == "helm3" else "--rollback-on-failure"
        out: list[str] = []
        for a in template:
            if a == "{atomic}":
                out.append(atomic)
            else:
                out.append(a.format(chart=self.chart, ns=self.ns, rel=self.rel))
        return out

    def run(self, template: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        exe = self.kubectl if template[0] == "kubectl" else self.helm
        return run_tool([exe, *self.argv(template[1:])], self.env, timeout)

    def release_secrets(self) -> dict[int, dict]:
        out = {}
        for s in self.cluster.list("secrets", self.ns, "owner=helm"):
            out[int(s["metadata"]["labels"]["version"])] = s
        return out

    def release(self, version: int) -> dict:
        raw = base64.b64decode(self.release_secrets()[version]["data"]["release"])
        return json.loads(gzip.decompress(base64.b64decode(raw)))


@dataclass
class Case:
    command: list[str]
    check: Callable[[Ctx, subprocess.CompletedProcess[str]], None]
    setup: list[list[str]] = field(default_factory=list)
    rc: int = 0
    never_ready_pattern: bool = False


INSTALL = ["helm", "install", "{rel}", "{chart}", "-n", "{ns}", "--create-namespace"]
INSTALL_WAIT = [*INSTALL, "--wait", "--timeout", "20s"]


def _status(ctx: Ctx, version: int) -> str:
    return ctx.release_secrets()[version]["metadata"]["labels"]["status"]


def check_installed(ctx: Ctx, proc: subprocess.CompletedProcess[str]) -> None:
    c = ctx.cluster
    assert c.get("deployments", ctx.ns, "rel-demo") is not None
    assert c.get("services", ctx.ns, "rel-demo")["spec"]["clusterIP"]
    assert c.get("serviceaccounts", ctx.ns, "rel-demo") is not None
    secret = ctx.release_secrets()[1]
    assert secret["type"] == "helm.sh/release.v1"
    labels = secret["metadata"]["labels"]
    assert (labels["name"], labels["owner"], labels["status"], labels["version"]) == (
        "rel",
        "helm",
        "deployed",
        "1",
    )
    assert ctx.release(1)["manifest"].count("kind: Deployment") == 1


def check_installed_ready(ctx: Ctx, proc: subprocess.CompletedProcess[str]) -> None:
    check_installed(ctx, proc)
    dep = ctx.cluster.get("deployments", ctx.ns, "rel-demo")
    assert dep["status"]["readyReplicas"] == 1
    assert dep["status"]["observedGeneration"] == dep["metadata"]["generation"]
    rs = ctx.cluster.list("replicasets", ctx.ns)
    assert len(rs) == 1 and rs[0]["metadata"]["ownerReferences"][0]["uid"] == dep["metadata"]["uid"]
    pods = ctx.cluster.list(
        "pods", ctx.ns, f"pod-template-hash={rs[0]['metadata']['labels']['pod-template-hash']}"
    )
    assert [p["status"]["phase"] for p in pods] == ["Running"]


def check_atomic_failed(ctx: Ctx, proc: subprocess.CompletedProcess[str]) -> None:
    assert "deadline" in proc.stderr or "not ready" in proc.stderr, proc.stderr
    assert ctx.cluster.get("deployments", ctx.ns, "rel-demo") is None
    assert ctx.cluster.list("replicasets", ctx.ns) == []
    assert ctx.release_secrets() == {}


def check_upgraded(ctx: Ctx, proc: subprocess.CompletedProcess[str]) -> None:
    dep = ctx.cluster.get("deployments", ctx.ns, "rel-demo")
    assert dep["spec"]["replicas"] == 2 and dep["metadata"]["generation"] == 2
    assert dep["status"]["readyReplicas"] == 2
    assert (_status(ctx, 1), _status(ctx, 2)) == ("superseded", "deployed")


def check_rolled_back(ctx: Ctx, proc: subprocess.CompletedProcess[str]) -> None:
    dep = ctx.cluster.get("deployments", ctx.ns, "rel-demo")
    assert dep["spec"]["replicas"] == 1
    assert [_status(ctx, v) for v in (1, 2, 3)] == ["superseded", "superseded", "deployed"]


def check_history(ctx: Ctx, proc: subprocess.CompletedProcess[str]) -> None:
    history = json.loads(proc.stdout)
    assert [(h["revision"], h["status"]) for h in history] == [(1, "superseded"), (2, "deployed")]
    assert len(ctx.release_secrets()) == 2


def check_status(ctx: Ctx, proc: subprocess.CompletedProcess[str]) -> None:
    status = json.loads(proc.stdout)
    assert (status["name"], status["info"]["status"], status["version"]) == ("rel", "deployed", 1)
    assert _status(ctx, 1) == "deployed"


def check_list(ctx: Ctx, proc: subprocess.CompletedProcess[str]) -> None:
    rows = json.loads(proc.stdout)
    assert [(r["name"], r["namespace"], r["revision"], r["status"]) for r in rows] == [
        ("rel", ctx.ns, "1", "deployed")
    ]


def check_values(ctx: Ctx, proc: subprocess.CompletedProcess[str]) -> None:
    assert json.loads(proc.stdout) == {"replicaCount": 2}
    assert ctx.cluster.get("deployments", ctx.ns, "rel-demo")["spec"]["replicas"] == 2


def check_manifest(ctx: Ctx, proc: subprocess.CompletedProcess[str]) -> None:
    assert "kind: Deployment" in proc.stdout and "kind: Service" in proc.stdout
    assert proc.stdout.strip() == ctx.release(1)["manifest"].strip()


def check_tested(ctx: Ctx, proc: subprocess.CompletedProcess[str]) -> None:
    pod = ctx.cluster.get("pods", ctx.ns, "rel-demo-test-connection")
    assert pod is not None and pod["status"]["phase"] == "Succeeded"
    assert "Succeeded" in proc.stdout
    hook = ctx.release(1)["hooks"][0]
    assert hook["last_run"]["phase"] == "Succeeded"


def check_uninstalled(ctx: Ctx, proc: subprocess.CompletedProcess[str]) -> None:
    for kind in ("deployments", "replicasets", "pods", "services", "serviceaccounts"):
        assert ctx.cluster.list(kind, ctx.ns) == [], kind
    assert ctx.release_secrets() == {}


def check_kubectl_deployments(ctx: Ctx, proc: subprocess.CompletedProcess[str]) -> None:
    doc = json.loads(proc.stdout)
    assert doc["kind"] == "List"
    assert [(i["kind"], i["metadata"]["name"]) for i in doc["items"]] == [("Deployment", "rel-demo")]
    assert (
        doc["items"][0]["metadata"]["uid"]
        == ctx.cluster.get("deployments", ctx.ns, "rel-demo")["metadata"]["uid"]
    )


def check_kubectl_services(ctx: Ctx, proc: subprocess.CompletedProcess[str]) -> None:
    doc = json.loads(proc.stdout)
    [svc] = doc["items"]
    assert svc["spec"]["clusterIP"] == ctx.cluster.get("services", ctx.ns, "rel-demo")["spec"]["clusterIP"]
    assert svc["spec"]["ports"][0]["port"] == 80


def check_kubectl_namespaces(ctx: Ctx, proc: subprocess.CompletedProcess[str]) -> None:
    names = [line.split()[0] for line in proc.stdout.splitlines()[1:]]
    assert ctx.ns in names and "default" in names
    assert sorted(names) == sorted(n["metadata"]["name"] for n in ctx.cluster.list("namespaces"))


CASES = [
    pytest.param(Case(INSTALL, check_installed), id="install"),
    pytest.param(Case(INSTALL_WAIT, check_installed_ready), id="install-wait"),
    pytest.param(
        Case(
            [*INSTALL, "--set-string", NEVER_READY, "{atomic}", "--timeout", "4s"], check_atomic_failed, rc=1
        ),
        id="atomic-install-fails-annotation",
    ),
    pytest.param(
        Case([*INSTALL, "{atomic}", "--timeout", "3s"], check_atomic_failed, rc=1, never_ready_pattern=True),
        id="atomic-install-fails-pattern",
    ),
    pytest.param(
        Case(
            [
                "helm",
                "upgrade",
                "{rel}",
                "{chart}",
                "-n",
                "{ns}",
                "--set",
                "replicaCount=2",
                "--wait",
                "--timeout",
                "20s",
            ],
            check_upgraded,
            setup=[INSTALL],
        ),
        id="upgrade-wait",
    ),
    pytest.param(
        Case(
            ["helm", "rollback", "{rel}", "1", "-n", "{ns}", "--wait", "--timeout", "20s"],
            check_rolled_back,
            setup=[INSTALL, ["helm", "upgrade", "{rel}", "{chart}", "-n", "{ns}", "--set", "replicaCount=2"]],
        ),
        id="rollback",
    ),
    pytest.param(
        Case(
            ["helm", "history", "{rel}", "-n", "{ns}", "-o", "json"],
            check_history,
            setup=[INSTALL, ["helm", "upgrade", "{rel}", "{chart}", "-n", "{ns}"]],
        ),
        id="history",
    ),
    pytest.param(
        Case(["helm", "status", "{rel}", "-n", "{ns}", "-o", "json"], check_status, setup=[INSTALL]),
        id="status",
    ),
    pytest.param(Case(["helm", "list", "-n", "{ns}", "-o", "json"], check_list, setup=[INSTALL]), id="list"),
    pytest.param(
        Case(
            ["helm", "get", "values", "{rel}", "-n", "{ns}", "-o", "json"],
            check_values,
            setup=[[*INSTALL, "--set", "replicaCount=2"]],
        ),
        id="get-values",
    ),
    pytest.param(
        Case(["helm", "get", "manifest", "{rel}", "-n", "{ns}"], check_manifest, setup=[INSTALL]),
        id="get-manifest",
    ),
    pytest.param(
        Case(
            ["helm", "test", "{rel}", "-n", "{ns}", "--logs", "--timeout", "20s"],
            check_tested,
            setup=[INSTALL_WAIT],
        ),
        id="test",
    ),
    pytest.param(
        Case(
            ["helm", "uninstall", "{rel}", "-n", "{ns}", "--wait", "--timeout", "20s"],
            check_uninstalled,
            setup=[INSTALL],
        ),
        id="uninstall-wait",
    ),
    pytest.param(
        Case(
            ["kubectl", "get", "deployments", "-n", "{ns}", "-o", "json"],
            check_kubectl_deployments,
            setup=[INSTALL],
        ),
        id="kubectl-get-deployments",
    ),
    pytest.param(
        Case(
            ["kubectl", "get", "services", "-n", "{ns}", "-o", "json"],
            check_kubectl_services,
            setup=[INSTALL],
        ),
        id="kubectl-get-services",
    ),
    pytest.param(
        Case(["kubectl", "get", "namespaces"], check_kubectl_namespaces, setup=[INSTALL]),
        id="kubectl-get-namespaces",
    ),
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[SandboxCluster]:
    with sandbox_cluster(ready_delay=0.2) as c:
        yield c


@pytest.fixture(scope="module")
def chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_chart(tmp_path_factory.mktemp("chart"))


@pytest.mark.parametrize("case", CASES)
def test_helm_command(case: Case, tools, cluster: SandboxCluster, chart: Path, tmp_path: Path) -> None:
    ns = f"{tools.dialect}-{next(_NS)}"
    ctx = Ctx(
        cluster,
        tools.dialect,
        tools.helm,
        tools.kubectl,
        tool_env(cluster, tmp_path, tools.dialect, ns),
        chart,
        ns,
    )
    for step in case.setup:
        proc = ctx.run(step)
        assert proc.returncode == 0, (step, proc.stderr)
    if case.never_ready_pattern:
        cluster.set_never_ready(f"{ctx.rel}-demo*")
    try:
        proc = ctx.run(case.command)
    finally:
        if case.never_ready_pattern:
            cluster.set_never_ready(None)
    assert proc.returncode == case.rc, (proc.stdout, proc.stderr)
    case.check(ctx, proc)


def test_aggregated_discovery_cluster(tools, chart: Path, tmp_path: Path) -> None:
    """The same binaries against aggregated discovery: install --wait, kubectl get, uninstall --wait."""
    with sandbox_cluster(ready_delay=0.2, aggregated_discovery=True) as c:
        ctx = Ctx(
            c,
            tools.dialect,
            tools.helm,
            tools.kubectl,
            tool_env(c, tmp_path, tools.dialect, "agg"),
            chart,
            "agg",
        )
        proc = ctx.run(INSTALL_WAIT)
        assert proc.returncode == 0, proc.stderr
        check_installed_ready(ctx, proc)
        proc = ctx.run(["kubectl", "get", "deployments", "-n", "{ns}", "-o", "json"])
        assert proc.returncode == 0, proc.stderr
        check_kubectl_deployments(ctx, proc)
        proc = ctx.run(["helm", "uninstall", "{rel}", "-n", "{ns}", "--wait", "--timeout", "20s"])
        assert proc.returncode == 0, proc.stderr
        check_uninstalled(ctx, proc)
        # Aggregated discovery saves the per-group-version fetches. The processes read the
        # aggregated documents (helm 3 and kubectl keep discovery in ~/.kube/cache, so with helm 3
        # only the first process fetches them); together they fetched at most one group version
        # per process (helm 4 sometimes fetches one directly as well: /api/v1 during install
        # --wait or /apis/apps/v1 during uninstall --wait, in about one run in three). Legacy
        # discovery makes every process fetch every group version.
        counters = c.counters()
        assert counters["GET /api"] >= 1 and counters["GET /apis"] >= 1, counters
        group_versions = ["GET /api/v1"] + [
            f"GET /apis/{g}/{v}" for g in c.registry.groups() for v in c.registry.versions_of(g)
        ]
        assert len(group_versions) > 5
        per_version = sum(counters.get(key, 0) for key in group_versions)
        assert per_version <= 3, {key: counters[key] for key in group_versions if key in counters}
