"""The test charts and the local chart repository, exercised with both real helm binaries."""

from __future__ import annotations

import json
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from sandbox.chartrepo import helm_env
from tests.conftest import HelmTools
from tests.support import charts
from tests.support.charts import CHART_NAMES, CHARTS_DIR, ChartRepoServer, build_repository

# Fixtures shared through tests/support/charts.py.
chart_repo_factory = charts.chart_repo_factory
chart_repo_server = charts.chart_repo_server


class Helm:
    """Runs one real helm binary in a private, throwaway home."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.env = helm_env(home)

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args], env=self.env, input=stdin, capture_output=True, text=True,
            timeout=60, check=False,
        )


@pytest.fixture
def helm(tools: HelmTools) -> Iterator[Helm]:
    with tempfile.TemporaryDirectory(prefix="kduflow-test-helm-") as home:
        yield Helm(tools.helm, Path(home))


def test_build_repository_packages_both_versions_with_absolute_urls(helm3: HelmTools, tmp_path: Path) -> None:
    made = build_repository(helm3.helm, tmp_path, "http://127.0.0.1:1/")
    assert sorted(p.name for p in made[:-1]) == sorted(
        f"{c}-{v}.tgz" for c in CHART_NAMES for v in ("0.1.0", "0.2.0")
    )
    index = yaml.safe_load((tmp_path / "index.yaml").read_text())
    webapp = {e["version"]: e for e in index["entries"]["webapp"]}
    assert set(webapp) == {"0.1.0", "0.2.0"}
    assert webapp["0.1.0"]["appVersion"] == "1.0.0"
    assert webapp["0.2.0"]["appVersion"] == "2.0.0"
    assert webapp["0.2.0"]["urls"] == ["http://127.0.0.1:1/webapp-0.2.0.tgz"]


def test_repo_add_search_and_show(helm: Helm, chart_repo_server: ChartRepoServer) -> None:
    out = helm("repo", "add", "testrepo", chart_repo_server.url)
    assert out.returncode == 0, out.stderr
    out = helm("search", "repo", "testrepo/", "--versions", "-o", "json")
    assert out.returncode == 0, out.stderr
    found = {(e["name"], e["version"], e["app_version"]) for e in json.loads(out.stdout)}
    for chart in CHART_NAMES:
        assert (f"testrepo/{chart}", "0.1.0", "1.0.0") in found
        assert (f"testrepo/{chart}", "0.2.0", "2.0.0") in found
    out = helm("show", "chart", "testrepo/webapp", "--version", "0.1.0")
    assert out.returncode == 0, out.stderr
    chart = yaml.safe_load(out.stdout)
    assert (chart["name"], chart["version"], chart["apiVersion"]) == ("webapp", "0.1.0", "v2")
    assert "webapp-0.1.0.tgz" in {r.path.lstrip("/") for r in chart_repo_server.request_log}


@pytest.mark.parametrize("chart", ["webapp", "statefuldb"])
def test_charts_render(helm: Helm, chart: str) -> None:
    out = helm("template", "rel", str(CHARTS_DIR / chart))
    assert out.returncode == 0, out.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(out.stdout) if d}
    expected = {"webapp": {"Deployment", "Service", "ServiceAccount", "Pod"},
                "statefuldb": {"StatefulSet", "Service"}}[chart]
    assert kinds == expected


def test_webapp_values(helm: Helm) -> None:
    out = helm("template", "rel", str(CHARTS_DIR / "webapp"), "--set", "ready=false",
               "--set", "service.type=LoadBalancer", "--set", "replicaCount=3")
    assert out.returncode == 0, out.stderr
    docs = {d["kind"]: d for d in yaml.safe_load_all(out.stdout) if d}
    dep = docs["Deployment"]
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["template"]["metadata"]["annotations"]["sandbox.kduflow.dev/never-ready"] == "true"
    assert docs["Service"]["spec"]["type"] == "LoadBalancer"
    hook = docs["Pod"]
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert hook["spec"]["restartPolicy"] == "Never"
    # Ready by default: no marker.
    out = helm("template", "rel", str(CHARTS_DIR / "webapp"))
    assert "never-ready" not in out.stdout


def test_statefuldb_replica_key_under_component(helm: Helm) -> None:
    out = helm("template", "rel", str(CHARTS_DIR / "statefuldb"), "--set", "db.replicas=2")
    assert out.returncode == 0, out.stderr
    sts = next(d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "StatefulSet")
    assert sts["spec"]["replicas"] == 2
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    svc = next(d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "Service")
    assert svc["spec"]["clusterIP"] == "None"


def test_broken_chart_fails_to_render(helm: Helm, chart_repo_server: ChartRepoServer) -> None:
    out = helm("template", "rel", str(CHARTS_DIR / "broken"))
    assert out.returncode != 0
    assert "mustSet is required" in out.stderr
    # The packaged one from the repository fails the same way.
    out = helm("template", "rel", "broken", "--repo", chart_repo_server.url, "--version", "0.2.0")
    assert out.returncode != 0
    assert "mustSet is required" in out.stderr


def test_auth_repository(helm: Helm, chart_repo_factory) -> None:
    repo = chart_repo_factory(auth=("alice", "s3cret-pw"))
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{repo.url}/index.yaml", timeout=5)  # noqa: S310 - local test server
    assert err.value.code == 401
    out = helm("repo", "add", "authrepo", repo.url)
    assert out.returncode != 0
    out = helm("repo", "add", "authrepo", repo.url, "--username", "alice", "--password-stdin",
               stdin="s3cret-pw\n")
    assert out.returncode == 0, out.stderr
    out = helm("show", "chart", "authrepo/statefuldb", "--version", "0.2.0")
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["version"] == "0.2.0"
    seen = {(r.username, r.authorized) for r in repo.request_log}
    assert (None, False) in seen and ("alice", True) in seen


def test_tls_repository(helm: Helm, chart_repo_factory, tmp_path: Path) -> None:
    repo = chart_repo_factory(tls=True)
    assert repo.url.startswith("https://") and repo.ca_pem
    out = helm("repo", "add", "tlsrepo", repo.url)
    assert out.returncode != 0
    assert "certificate" in out.stderr
    ca = tmp_path / "ca.pem"
    ca.write_text(repo.ca_pem)
    out = helm("repo", "add", "tlsrepo", repo.url, "--ca-file", str(ca))
    assert out.returncode == 0, out.stderr
    out = helm("search", "repo", "tlsrepo/webapp", "--versions", "-o", "json")
    assert {e["version"] for e in json.loads(out.stdout)} == {"0.1.0", "0.2.0"}


def test_fail_status_breaks_the_repository(chart_repo_factory) -> None:
    repo = chart_repo_factory()
    repo.fail_status = 500
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{repo.url}/index.yaml", timeout=5)  # noqa: S310 - local test server
    assert err.value.code == 500
    repo.fail_status = None
    with urllib.request.urlopen(f"{repo.url}/index.yaml", timeout=5) as resp:  # noqa: S310
        assert resp.status == 200
