"""Repository activities against the real chart repository, with real helm 3 and helm 4."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from temporalio.exceptions import ApplicationError

from activities import repos as repos_module
from activities.cluster_env import ClusterEnvs
from activities.repos import RepoActivities
from activities.runner import ProcessResult, Runner
from activities.secretbox import SecretBox, aad_for
from activities.store import Store
from kduflow.config import Settings
from tests.conftest import HelmTools
from tests.support import charts
from tests.support.charts import ChartRepoServer, free_port
from tests.support.sandbox import LOOPBACK_NETWORKS
from workflows.cluster_models import ClusterRef, RecordSyncInput, RepoRef, RepoUpdateInput, SyncReposResult

chart_repo_factory = charts.chart_repo_factory
chart_repo_server = charts.chart_repo_server

CLUSTER = "c0ffee00-1111-2222-3333-444455556666"
PASSWORD = "Very-S3cret-Repo-Passw0rd"


def kubeconfig() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "c",
        "clusters": [
            {"name": "k", "cluster": {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True}}
        ],
        "users": [{"name": "u", "user": {"token": "t0ken-not-used"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }


class RecordingRunner(Runner):
    """The real runner, recording every argv and stdin it was given (the spawned processes' argv)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], bytes | None]] = []

    async def run(
        self, argv: Sequence[str], *, env: Any, stdin: bytes | None = None, timeout: float, **kwargs: Any
    ) -> ProcessResult:
        self.calls.append((list(argv), stdin))
        return await super().run(argv, env=env, stdin=stdin, timeout=timeout, **kwargs)


@dataclass
class Worker:
    settings: Settings
    runner: RecordingRunner
    repos: RepoActivities
    envs: ClusterEnvs


def make_worker(tools: HelmTools, store: Store, state_dir: Path, secret_key: str = "", **kw: Any) -> Worker:
    settings = Settings(
        helm=str(tools.helm), kubectl=str(tools.kubectl), state_dir=state_dir, secret_key=secret_key,
        private_networks=LOOPBACK_NETWORKS,
    )
    runner = RecordingRunner()
    repos = RepoActivities(settings, None, store, runner, **kw)
    envs = ClusterEnvs(settings, store, SecretBox.from_setting(secret_key), on_materialise=repos.materialise)
    repos.envs = envs
    return Worker(settings, runner, repos, envs)


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = Store.open(Settings(state_dir=tmp_path / "db"))
    await opened.insert_one("k8sclusters", {"_id": CLUSTER, "credentials": kubeconfig(), "_admin": {}})
    try:
        yield opened
    finally:
        await opened.close()


async def add_repo_doc(store: Store, repo_id: str, name: str, url: str, **extra: Any) -> None:
    await store.update_one(
        "k8srepos", {"_id": repo_id}, {"$set": {"name": name, "url": url, **extra}}, upsert=True
    )


@pytest.fixture(scope="module")
def auth_repo(chart_repo_factory) -> ChartRepoServer:
    return chart_repo_factory(auth=("alice", PASSWORD), tls=True)


def helm_repo_names(worker: Worker) -> dict[str, str]:
    env_file = worker.settings.state_dir / "clusters" / CLUSTER / ".config" / "helm" / "repositories.yaml"
    doc = yaml.safe_load(env_file.read_text()) or {}
    return {r["name"]: r["url"] for r in doc.get("repositories") or []}


async def test_add_list_update_remove_with_auth_and_ca(
    tools: HelmTools, store: Store, tmp_path: Path, auth_repo: ChartRepoServer, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    await add_repo_doc(
        store, "r-priv", "priv", auth_repo.url, user="alice", password=PASSWORD, ca_cert=auth_repo.ca_pem
    )
    w = make_worker(tools, store, tmp_path / "w1")
    added = await w.repos.add(RepoRef(CLUSTER, "r-priv"))
    assert (added.repo_id, added.name, added.url, added.changed) == ("r-priv", "priv", auth_repo.url, True)
    doc = await store.find_one("k8sclusters", {"_id": CLUSTER})
    assert doc["_admin"]["helm_charts_added"] == {"r-priv": "priv"}
    assert doc["_admin"]["kduflow_repos"]["r-priv"]["url"] == auth_repo.url
    assert PASSWORD not in str(doc["_admin"])

    again = await w.repos.add(RepoRef(CLUSTER, "r-priv"))
    assert again.changed is False  # identical entry: helm skipped it

    listed = await w.repos.list_repos(ClusterRef(CLUSTER))
    assert [(r.id, r.name, r.url) for r in listed.repos] == [("r-priv", "priv", auth_repo.url)]
    auth_repo.clear_log()
    updated = await w.repos.update(RepoUpdateInput(CLUSTER))
    assert updated.updated == ["priv"]
    assert [r.authorized for r in auth_repo.requests_for("/index.yaml")] == [True]

    # Files holding secrets are private.
    root = w.settings.state_dir / "clusters" / CLUSTER
    for path in (root / ".config/helm/repositories.yaml", root / "repo-ca/priv.crt"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path

    removed = await w.repos.remove(RepoRef(CLUSTER, "r-priv"))
    assert removed.existed and removed.name == "priv"
    assert helm_repo_names(w) == {}
    assert not (root / "repo-ca/priv.crt").exists()
    doc = await store.find_one("k8sclusters", {"_id": CLUSTER})
    assert doc["_admin"]["helm_charts_added"] == {}
    gone = await w.repos.remove(RepoRef(CLUSTER, "r-priv", name="priv"))
    assert gone.existed is False

    # The password went to helm on stdin only: never in an argv, never in a log line.
    assert any(stdin and PASSWORD.encode() in stdin for _, stdin in w.runner.calls)
    assert not any(PASSWORD in arg for argv, _ in w.runner.calls for arg in argv)
    assert PASSWORD not in caplog.text


async def test_wrong_password_is_credentials_invalid(
    tools: HelmTools, store: Store, tmp_path: Path, auth_repo: ChartRepoServer
) -> None:
    await add_repo_doc(
        store,
        "r-bad",
        "bad",
        auth_repo.url,
        user="alice",
        password="wrong-password",
        ca_cert=auth_repo.ca_pem,
    )
    w = make_worker(tools, store, tmp_path / "w1")
    with pytest.raises(ApplicationError) as err:
        await w.repos.add(RepoRef(CLUSTER, "r-bad"))
    assert err.value.type == "CredentialsInvalid" and err.value.non_retryable
    assert "wrong-password" not in str(err.value)
    doc = await store.find_one("k8sclusters", {"_id": CLUSTER})
    assert "r-bad" not in (doc["_admin"].get("helm_charts_added") or {})


async def test_missing_ca_is_refused(
    tools: HelmTools, store: Store, tmp_path: Path, auth_repo: ChartRepoServer
) -> None:
    await add_repo_doc(store, "r-noca", "noca", auth_repo.url, user="alice", password=PASSWORD)
    w = make_worker(tools, store, tmp_path / "w1")
    with pytest.raises(ApplicationError) as err:
        await w.repos.add(RepoRef(CLUSTER, "r-noca"))
    assert err.value.type == "CredentialsInvalid" and err.value.non_retryable


async def test_unreachable_repository_is_retryable(tools: HelmTools, store: Store, tmp_path: Path) -> None:
    await add_repo_doc(store, "r-down", "down", f"http://127.0.0.1:{free_port()}")
    w = make_worker(tools, store, tmp_path / "w1")
    with pytest.raises(ApplicationError) as err:
        await w.repos.add(RepoRef(CLUSTER, "r-down"))
    assert not err.value.non_retryable
    assert "connection refused" in str(err.value)


async def test_unknown_repo_id_and_name(tools: HelmTools, store: Store, tmp_path: Path) -> None:
    w = make_worker(tools, store, tmp_path / "w1")
    with pytest.raises(ApplicationError) as err:
        await w.repos.add(RepoRef(CLUSTER, "nope"))
    assert err.value.type == "RepoNotFound" and err.value.non_retryable
    with pytest.raises(ApplicationError) as err:
        await w.repos.update(RepoUpdateInput(CLUSTER, names=["nope"]))
    assert err.value.type == "RepoNotFound"
    with pytest.raises(ApplicationError) as err:
        await w.repos.add(RepoRef(CLUSTER, "../etc"))
    assert err.value.type == "InvalidInput" and "repo_id" in str(err.value)


async def test_failing_repository_update_fails(
    tools: HelmTools, store: Store, tmp_path: Path, chart_repo_factory
) -> None:
    repo = chart_repo_factory()
    await add_repo_doc(store, "r-flaky", "flaky", repo.url)
    w = make_worker(tools, store, tmp_path / "w1")
    await w.repos.add(RepoRef(CLUSTER, "r-flaky"))
    repo.fail_status = 500
    try:
        with pytest.raises(ApplicationError) as err:
            await w.repos.update(RepoUpdateInput(CLUSTER, names=["flaky"]))
    finally:
        repo.fail_status = None
    # helm 3 exits 0 here without --fail-on-repo-update-fail: the activity must still fail.
    assert not err.value.non_retryable
    assert "500" in str(err.value) or "failed to update" in str(err.value).lower()
    if tools.dialect == "helm3":
        update_argv = [argv for argv, _ in w.runner.calls if argv[1:3] == ["repo", "update"]][-1]
        assert "--fail-on-repo-update-fail" in update_argv


async def test_two_workers_see_the_same_repositories(
    tools: HelmTools,
    store: Store,
    tmp_path: Path,
    auth_repo: ChartRepoServer,
    chart_repo_server: ChartRepoServer,
) -> None:
    await add_repo_doc(
        store, "r-priv", "priv", auth_repo.url, user="alice", password=PASSWORD, ca_cert=auth_repo.ca_pem
    )
    await add_repo_doc(store, "r-pub", "pub", chart_repo_server.url)
    w1 = make_worker(tools, store, tmp_path / "w1")
    await w1.repos.add(RepoRef(CLUSTER, "r-priv"))
    await w1.repos.add(RepoRef(CLUSTER, "r-pub"))

    # A second worker on an empty disk: no add ran there, yet helm knows both repositories.
    w2 = make_worker(tools, store, tmp_path / "w2")
    listed = await w2.repos.list_repos(ClusterRef(CLUSTER))
    assert {(r.id, r.name, r.url) for r in listed.repos} == {
        ("r-priv", "priv", auth_repo.url),
        ("r-pub", "pub", chart_repo_server.url),
    }
    env2 = await w2.envs.get(CLUSTER)
    ref = await w2.repos.ensure_chart_available(env2, "priv", "statefuldb", "0.2.0")
    assert ref == "priv/statefuldb"
    assert not any(argv[1:3] == ["repo", "add"] for argv, _ in w2.runner.calls)

    # A removal by worker 1 reaches worker 2 through the store.
    await w1.repos.remove(RepoRef(CLUSTER, "r-pub"))
    listed = await w2.repos.list_repos(ClusterRef(CLUSTER))
    assert [r.name for r in listed.repos] == ["priv"]
    with pytest.raises(ApplicationError) as err:
        await w2.repos.ensure_chart_available(env2, "pub", "webapp")
    assert err.value.type == "RepoNotFound"


async def test_index_refreshed_only_when_stale_or_missing_chart(
    tools: HelmTools, store: Store, tmp_path: Path, chart_repo_factory
) -> None:
    repo = chart_repo_factory()
    await add_repo_doc(store, "r-pub", "pub", repo.url)
    w = make_worker(tools, store, tmp_path / "w1", index_ttl=3600)
    await w.repos.add(RepoRef(CLUSTER, "r-pub"))
    env = await w.envs.get(CLUSTER)
    repo.clear_log()
    for version in ("0.1.0", "0.2.0", "", "^0.1"):
        assert await w.repos.ensure_chart_available(env, "pub", "webapp", version) == "pub/webapp"
    assert repo.requests_for("/index.yaml") == []  # fresh index, chart present: no download

    with pytest.raises(ApplicationError) as err:
        await w.repos.ensure_chart_available(env, "pub", "webapp", "9.9.9")
    assert err.value.type == "ChartNotFound" and err.value.non_retryable
    assert len(repo.requests_for("/index.yaml")) == 1  # missing version: one refresh, then the verdict

    w.repos.charts.index_ttl = 0  # everything is stale now
    repo.clear_log()
    await w.repos.ensure_chart_available(env, "pub", "statefuldb", "0.1.0")
    assert len(repo.requests_for("/index.yaml")) == 1


async def test_url_change_in_store_drops_the_old_index(
    tools: HelmTools, store: Store, tmp_path: Path, chart_repo_factory
) -> None:
    old, new = chart_repo_factory(), chart_repo_factory()
    await add_repo_doc(store, "r-x", "x", old.url)
    w = make_worker(tools, store, tmp_path / "w1", index_ttl=3600)
    await w.repos.add(RepoRef(CLUSTER, "r-x"))
    await add_repo_doc(store, "r-x", "x", new.url)
    added = await w.repos.add(RepoRef(CLUSTER, "r-x"))  # what SyncRepos does for a URL change
    assert added.url == new.url and added.changed
    assert helm_repo_names(w) == {"x": new.url}
    new.clear_log()
    env = await w.envs.get(CLUSTER)
    await w.repos.ensure_chart_available(env, "x", "webapp", "0.1.0")
    assert new.requests_for("/index.yaml") == []  # the replacement downloaded the new index already


async def test_encrypted_repo_password(
    tools: HelmTools, store: Store, tmp_path: Path, auth_repo: ChartRepoServer
) -> None:
    key = "k1:" + __import__("base64").b64encode(os.urandom(32)).decode()
    box = SecretBox.from_setting(key)
    assert box is not None
    envelope = box.encrypt_json(PASSWORD, aad_for("k8srepos", "r-enc", "password"))
    await add_repo_doc(
        store, "r-enc", "enc", auth_repo.url, user="alice", password=envelope, ca_cert=auth_repo.ca_pem
    )
    w = make_worker(tools, store, tmp_path / "w1", secret_key=key)
    assert (await w.repos.add(RepoRef(CLUSTER, "r-enc"))).name == "enc"
    wrong = make_worker(
        tools,
        store,
        tmp_path / "w2",
        secret_key="k1:" + __import__("base64").b64encode(os.urandom(32)).decode(),
    )
    with pytest.raises(ApplicationError) as err:
        await wrong.repos.add(RepoRef(CLUSTER, "r-enc"))
    assert err.value.type == "CredentialsInvalid" and "k1" in str(err.value)


async def test_stable_repository(
    tools: HelmTools, store: Store, tmp_path: Path, chart_repo_server: ChartRepoServer
) -> None:
    w = make_worker(tools, store, tmp_path / "w0")
    assert (await w.repos.add_stable(ClusterRef(CLUSTER))).added is False
    settings = Settings(
        helm=str(tools.helm),
        kubectl=str(tools.kubectl),
        state_dir=tmp_path / "w1",
        stable_repo_url=chart_repo_server.url,
        private_networks=LOOPBACK_NETWORKS,
    )
    repos = RepoActivities(settings, None, store)
    repos.envs = ClusterEnvs(settings, store, None, on_materialise=repos.materialise)
    out = await repos.add_stable(ClusterRef(CLUSTER))
    assert out.added and out.url == chart_repo_server.url
    doc = await store.find_one("k8sclusters", {"_id": CLUSTER})
    assert (
        "stable" not in (doc["_admin"].get("helm_charts_added") or {}).values()
    )  # OSM's field: k8srepos only
    env = await repos.envs.get(CLUSTER)
    assert await repos.ensure_chart_available(env, "stable", "webapp", "0.2.0") == "stable/webapp"
    desired = await repos.desired(ClusterRef(CLUSTER))
    assert desired.configured == []  # stable is never SyncRepos' business


async def test_record_sync_and_desired(tools: HelmTools, store: Store, tmp_path: Path) -> None:
    await add_repo_doc(store, "r-a", "a", "https://a.example/charts", user="u", password=PASSWORD)
    await store.update_one(
        "k8sclusters", {"_id": CLUSTER}, {"$set": {"_admin.helm_chart_repos": ["r-a", "ghost"]}}
    )
    w = make_worker(tools, store, tmp_path / "w1")
    desired = await w.repos.desired(ClusterRef(CLUSTER))
    assert [(r.id, r.name, r.url, r.oci) for r in desired.desired] == [
        ("r-a", "a", "https://a.example/charts", False)
    ]
    assert desired.unknown == ["ghost"]
    assert PASSWORD not in repr(desired)
    result = SyncReposResult(
        deleted=["x"], added={"r-a": "a"}, failed={"ghost": "missing"}, unknown=["ghost"]
    )
    await w.repos.record_sync(RecordSyncInput(CLUSTER, result))
    doc = await store.find_one("k8sclusters", {"_id": CLUSTER})
    assert doc["_admin"]["kduflow_repo_sync"]["failed"] == {"ghost": "missing"}
    with pytest.raises(ApplicationError) as err:
        await w.repos.record_sync(RecordSyncInput("no-such-cluster", result))
    assert err.value.type == "ClusterNotFound"


# ------------------------------------------------------------------------------ credentials in URLs


def with_userinfo(url: str, user: str, password: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{user}:{password}@{rest}"


async def test_repository_url_with_credentials_is_refused_everywhere(
    tools: HelmTools, store: Store, tmp_path: Path, auth_repo: ChartRepoServer, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_url = with_userinfo(auth_repo.url, "alice", PASSWORD)
    await add_repo_doc(store, "r-cred", "cred", secret_url, ca_cert=auth_repo.ca_pem)
    await add_repo_doc(
        store, "r-oci", "ocireg", with_userinfo("oci://127.0.0.1:5000/charts", "bob", PASSWORD), oci=True
    )
    # As an older worker recorded it: the credentialed URL in the cluster document.
    legacy = {"name": "cred", "url": secret_url, "oci": False, "fingerprint": ""}
    await store.update_one(
        "k8sclusters",
        {"_id": CLUSTER},
        {
            "$set": {
                "_admin.helm_chart_repos": ["r-cred"],
                "_admin.kduflow_repos": {"r-cred": legacy},
                "_admin.helm_charts_added": {"r-cred": "cred"},
            }
        },
    )
    requests_before = len(auth_repo.request_log)
    w = make_worker(tools, store, tmp_path / "w1")

    desired = await w.repos.desired(ClusterRef(CLUSTER))
    assert [(r.id, r.name, r.url) for r in desired.desired] == [
        ("r-cred", "cred", auth_repo.url.replace("://", "://***@"))
    ]
    assert desired.configured == []  # the legacy record is never handed to helm

    for call in (w.repos.add, w.repos.registry_login):
        for repo_id in ("r-cred", "r-oci"):
            if call == w.repos.registry_login and repo_id == "r-cred":
                continue
            with pytest.raises(ApplicationError) as err:
                await call(RepoRef(CLUSTER, repo_id))
            assert (err.value.type, err.value.non_retryable) == ("UrlNotAllowed", True)
            assert "user and password fields" in err.value.message
            assert PASSWORD not in str(err.value)

    listed = await w.repos.list_repos(ClusterRef(CLUSTER))
    assert "cred" not in {r.name for r in listed.repos}
    assert "cred" not in helm_repo_names(w)
    # Nothing reached an argv, stdin, the store, the log or the repository.
    assert not any(
        PASSWORD in " ".join(argv) or PASSWORD.encode() in (stdin or b"") for argv, stdin in w.runner.calls
    )
    assert not any(argv[1:3] in (["repo", "add"], ["registry", "login"]) for argv, _ in w.runner.calls)
    doc = await store.find_one("k8sclusters", {"_id": CLUSTER})
    assert PASSWORD not in repr(doc)
    assert "r-cred" not in (doc["_admin"].get("kduflow_repos") or {})
    assert PASSWORD not in caplog.text and "***@127.0.0.1" in caplog.text
    assert len(auth_repo.request_log) == requests_before


async def test_stable_repository_url_with_credentials_is_refused(
    tools: HelmTools, store: Store, tmp_path: Path
) -> None:
    settings = Settings(
        helm=str(tools.helm),
        kubectl=str(tools.kubectl),
        state_dir=tmp_path / "w1",
        stable_repo_url=f"http://stable:{PASSWORD}@127.0.0.1:{free_port()}/charts",
        private_networks=LOOPBACK_NETWORKS,
    )
    runner = RecordingRunner()
    repos = RepoActivities(settings, None, store, runner)
    repos.envs = ClusterEnvs(settings, store, None, on_materialise=repos.materialise)
    with pytest.raises(ApplicationError) as err:
        await repos.add_stable(ClusterRef(CLUSTER))
    assert (err.value.type, err.value.non_retryable) == ("UrlNotAllowed", True)
    assert PASSWORD not in str(err.value) and "KDUFLOW_STABLE_REPO_URL" in err.value.message
    assert not any(argv[1:3] == ["repo", "add"] for argv, _ in runner.calls)
    doc = await store.find_one("k8sclusters", {"_id": CLUSTER})
    assert PASSWORD not in repr(doc)


def test_index_versions_stay_strings(tmp_path: Path) -> None:
    """Versions are read as helm reads them, strings: an unquoted ``1.10`` is not the number 1.1,
    a date-like or boolean-like value is not converted; libyaml parses when PyYAML has it."""
    index = tmp_path / "index.yaml"
    index.write_text(
        "apiVersion: v1\nentries:\n"
        "  ten:\n  - name: ten\n    version: 1.10\n  - name: ten\n    version: 2.0\n"
        "  odd:\n  - name: odd\n    version: 2026-01-01\n  - version: yes\n  - not-a-mapping\n"
        "  broken: 7\n"
    )
    assert repos_module._read_index(index) == {"ten": {"1.10", "2.0"}, "odd": {"2026-01-01", "yes"}}
    if yaml.__with_libyaml__:
        assert repos_module._INDEX_LOADER is yaml.CBaseLoader
    index.write_text("entries: [unclosed\n")
    assert repos_module._read_index(index) == {}
