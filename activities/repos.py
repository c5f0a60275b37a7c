"""Chart repositories of a cluster: the store is the truth, every worker rebuilds helm's view of it.

N2VC keeps helm's ``repositories.yaml`` (with passwords) and the index caches in a per-cluster
directory mirrored through GridFS, racing between replicas. kduflow keeps
the repository configuration in the store only:

* ``k8sclusters._admin.helm_chart_repos``: the desired repositories (ids into ``k8srepos``:
  ``name, url, ca_cert, user, password, oci``), written by OSM's NBI or the operator;
* ``k8sclusters._admin.helm_charts_added`` ``{repo_id: name}``: what kduflow configured (OSM's field),
  with ``_admin.kduflow_repos`` ``{repo_id: {name, url, oci, fingerprint}}`` beside it (no secrets; the
  fingerprint is a salted slow hash that changes when the URL, user, CA or password change);
* ``_admin.kduflow_repo_sync``: the outcome of the last SyncRepos.

Any worker, on an empty disk too, writes helm's ``repositories.yaml``, the CA files and the OCI
registry credentials of a cluster from those documents (files 0600) whenever what the store says
differs from what it last wrote (:meth:`ChartRepos.sync_env`), and refreshes a repository index only
when it is older than ``index_ttl`` or lacks the requested chart/version
(:meth:`ChartRepos.ensure_chart_available`). Passwords reach helm through stdin only.

A repository URL carrying credentials (``https://user:password@host``) is refused (``UrlNotAllowed``,
non-retryable) by every activity that would use it, before anything runs: on helm's argv the password
would be readable by every local user (``ps``), and it would travel into logs, activity results and
the store. Such a repository is left out of the cluster's helm configuration; the credentials belong
in the document's ``user`` and ``password`` fields.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import helm_cli, repo_cli
from activities.cluster_env import CLUSTERS_COLLECTION, ClusterEnv, ClusterEnvs, validate_cluster_uuid
from activities.errors import (
    ChartNotFound,
    InvalidInput,
    KduflowError,
    RepoNotFound,
    UnsupportedHelm,
    UrlNotAllowed,
    classify_helm_stderr,
    to_application_error,
)
from activities.runner import Runner, metered
from activities.store import Store
from activities.url_policy import UrlPolicy
from contract.cluster import (
    CLUSTER_ACTIVITY_NAMES,
    STABLE_REPO_KEY,
    STABLE_REPO_NAME,
    AddStableResult,
    ClusterRef,
    DesiredReposResult,
    RecordSyncInput,
    RegisterRepoInput,
    RegisterRepoResult,
    RepoAddResult,
    RepoInfo,
    RepoListResult,
    RepoRef,
    RepoRemoveResult,
    RepoUpdateInput,
    RepoUpdateResult,
    UnregisterRepoInput,
    UnregisterRepoResult,
)
from kduflow.config import Settings
from kduflow.secretbox import SecretBox, SecretBoxError, aad_for, is_envelope

#: The SDK's adapter: inside an activity, records carry its ids (message and `extra`).
log = activity.LoggerAdapter(logging.getLogger(__name__), None)

REPOS_COLLECTION = "k8srepos"
#: Seconds a downloaded repository index is trusted before a chart lookup refreshes it.
DEFAULT_INDEX_TTL = 300.0
REPO_ADD_TIMEOUT = 120.0
REPO_UPDATE_TIMEOUT = 180.0
SHORT_TIMEOUT = 60.0
#: What the worker last wrote for a cluster (no secrets): names, urls, fingerprints, and their hash.
STATE_FILE = ".kduflow-repos.json"
CA_DIR = "repo-ca"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_CONSTRAINT_CHARS = re.compile(r"[\^~<>=*|, ]|\.x\b|^x$")
_FINGERPRINT_ITERATIONS = 20_000


@dataclass(frozen=True)
class Repo:
    """One repository with its secrets; lives only inside activities (``repr`` hides secrets)."""

    id: str
    name: str
    url: str
    oci: bool = False
    username: str = ""
    password: str = field(default="", repr=False)
    ca_cert: str = field(default="", repr=False)

    def fingerprint(self) -> str:
        material = json.dumps([self.name, self.url, self.oci, self.username, self.ca_cert, self.password])
        digest = hashlib.pbkdf2_hmac(
            "sha256", material.encode(), f"kduflow-repo:{self.id}".encode(), _FINGERPRINT_ITERATIONS
        )
        return digest.hex()[:32]

    def info(self) -> RepoInfo:
        return RepoInfo(
            id=self.id, name=self.name, url=repo_cli.redact_url(self.url), oci=self.oci,
            fingerprint=self.fingerprint(),
        )  # fmt: skip


@dataclass
class ClusterRepos:
    """What the store says about one cluster's repositories."""

    #: Configured (what kduflow added): key (repo id or STABLE_REPO_KEY) -> Repo with current secrets.
    configured: dict[str, Repo]
    #: Recorded fingerprints of the configured entries ("" when unknown, e.g. written by OSM's LCM).
    recorded: dict[str, str]
    #: Ids of _admin.helm_chart_repos, in order.
    desired_ids: list[str]

    def by_name(self, name: str) -> Repo | None:
        return next((r for r in self.configured.values() if r.name == name), None)


def _fail(err: KduflowError) -> ApplicationError:
    return to_application_error(err)


def _invalid(message: str) -> ApplicationError:
    return _fail(InvalidInput(message))


def _credentials_in_url(repo_id: str, url: str) -> ApplicationError:
    """The refusal of a repository whose URL carries credentials (logged with the URL redacted)."""
    log.warning("repository %s: URL %s carries credentials; refused", repo_id, repo_cli.redact_url(url))
    if repo_id == STABLE_REPO_KEY:
        message = (
            "KDUFLOW_STABLE_REPO_URL carries credentials (user:password@); kduflow never puts credentials "
            "in a repository URL: register the repository in k8srepos with its user and password instead"
        )
    else:
        message = (
            f"k8srepos {repo_id}: the repository URL carries credentials (user:password@); put them in "
            "the repository's user and password fields, which reach helm on stdin"
        )
    return _fail(UrlNotAllowed(message))


def validate_repo_id(repo_id: Any, field_name: str = "repo_id") -> str:
    if repo_id == STABLE_REPO_KEY:
        return repo_id
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id):
        raise _invalid(f"{field_name} {repo_id!r} is invalid: 1-64 characters of A-Z a-z 0-9 _ -")
    return repo_id


def _write_private(path: Path, content: bytes) -> None:
    """Atomic write, 0600 from creation (the files hold passwords and certificates)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


class ChartRepos:
    """Materialises and refreshes a cluster's repositories for helm; shared by all activities.

    Args:
        settings: ``helm`` binary and ``stable_repo_url``.
        store: source of ``k8sclusters`` / ``k8srepos``.
        runner: the process runner.
        secretbox: decrypts passwords stored as encrypted envelopes (``aad_for("k8srepos", id, "password")``).
        index_ttl: seconds an index is trusted by :meth:`ensure_chart_available`.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        runner: Runner | None = None,
        secretbox: SecretBox | None = None,
        *,
        index_ttl: float = DEFAULT_INDEX_TTL,
    ) -> None:
        self.settings = settings
        self.store = store
        self.runner: Runner = metered(runner, settings.helm)
        self.secretbox = secretbox
        self.index_ttl = index_ttl
        self._locks: dict[str, asyncio.Lock] = {}
        self._dialect: str | None = None
        self._index_cache: dict[Path, tuple[tuple[int, int], dict[str, set[str]]]] = {}

    # -- store -------------------------------------------------------------------------------

    async def cluster_doc(self, cluster_uuid: str) -> dict[str, Any]:
        doc = await self.store.find_one(CLUSTERS_COLLECTION, {"_id": cluster_uuid})
        if doc is None:
            raise _fail_cluster_not_found(cluster_uuid)
        return doc

    async def load_repo(self, repo_id: str) -> Repo | None:
        """The k8srepos document ``repo_id`` with its password decrypted; None when absent.

        Raises:
            ApplicationError: ``InvalidInput`` (document without a usable name/url),
                ``UrlNotAllowed`` (the URL carries credentials), ``CredentialsInvalid`` (encrypted
                password that cannot be decrypted); non-retryable.
        """
        doc = await self.store.find_one(REPOS_COLLECTION, {"_id": repo_id})
        if doc is None:
            return None
        name, url = str(doc.get("name") or ""), str(doc.get("url") or "")
        if repo_cli.url_has_userinfo(url):
            raise _credentials_in_url(repo_id, url)
        oci = doc.get("oci") is True or str(doc.get("oci", "")).lower() == "true" or url.startswith("oci://")
        try:
            repo_cli.validate_repo_name(name)
            repo_cli.validate_repo_url(url, oci=oci)
        except repo_cli.RepoCliError as err:
            raise _invalid(f"k8srepos {repo_id}: {err}") from None
        password = doc.get("password") or ""
        if is_envelope(password):
            if self.secretbox is None:
                raise ApplicationError(
                    f"password of repository {repo_id} is encrypted but this worker has no "
                    "KDUFLOW_SECRET_KEY",
                    type="CredentialsInvalid",
                    non_retryable=True,
                )
            try:
                password = self.secretbox.decrypt_json(
                    password, aad_for(REPOS_COLLECTION, repo_id, "password")
                )
            except SecretBoxError as err:
                raise ApplicationError(
                    f"password of repository {repo_id} cannot be decrypted: {err}",
                    type="CredentialsInvalid",
                    non_retryable=True,
                ) from None
        return Repo(
            id=repo_id,
            name=name,
            url=url,
            oci=oci,
            username=str(doc.get("user") or ""),
            password=str(password),
            ca_cert=str(doc.get("ca_cert") or ""),
        )

    async def cluster_repos(self, cluster_uuid: str, doc: Mapping[str, Any] | None = None) -> ClusterRepos:
        """What the store says: configured repositories (with current secrets) and the desired ids."""
        if doc is None:
            doc = await self.cluster_doc(cluster_uuid)
        admin = doc.get("_admin") or {}
        desired_ids = [str(i) for i in (admin.get("helm_chart_repos") or [])]
        details: dict[str, Any] = dict(admin.get("kduflow_repos") or {})
        added: dict[str, Any] = dict(admin.get("helm_charts_added") or {})
        configured: dict[str, Repo] = {}
        recorded: dict[str, str] = {}
        for key in list(dict.fromkeys([*details, *added])):
            detail = details.get(key) or {}
            if repo_cli.url_has_userinfo(str(detail.get("url") or "")):
                # Recorded before URLs with credentials were refused: never hand it to helm again.
                log.warning(
                    "cluster %s: configured repository %s has credentials in its URL; left out",
                    cluster_uuid, key,
                )  # fmt: skip
                continue
            if key == STABLE_REPO_KEY:
                if detail.get("url"):
                    configured[key] = Repo(id=key, name=STABLE_REPO_NAME, url=str(detail["url"]))
                    recorded[key] = str(detail.get("fingerprint", ""))
                continue
            try:
                current = await self.load_repo(key) if _REPO_ID.match(key) else None
            except ApplicationError as err:
                if err.type != "UrlNotAllowed":
                    raise
                continue  # logged by load_repo; the repository is refused until its document is fixed
            name = str(detail.get("name") or added.get(key) or (current.name if current else ""))
            url = str(detail.get("url") or (current.url if current else ""))
            if not name or not url:
                log.warning(
                    "cluster %s: configured repository %s has no name/url; ignored", cluster_uuid, key
                )
                continue
            if current is not None:
                # The URL helm knows is the one kduflow added; credentials are the current ones.
                configured[key] = Repo(
                    key,
                    name,
                    url,
                    bool(detail.get("oci", current.oci)),
                    current.username,
                    current.password,
                    current.ca_cert,
                )
            else:
                configured[key] = Repo(key, name, url, bool(detail.get("oci", False)))
            recorded[key] = str(detail.get("fingerprint", ""))
        return ClusterRepos(configured, recorded, desired_ids)

    # -- local materialisation ---------------------------------------------------------------

    def _lock(self, env: ClusterEnv) -> asyncio.Lock:
        key = str(env.root)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def materialise(self, env: ClusterEnv, doc: dict) -> None:
        """``ClusterEnvs`` hook: write repositories.yaml, CA files and registry credentials from ``doc``."""
        repos = await self.cluster_repos(env.cluster_uuid, doc)
        async with self._lock(env):
            await asyncio.to_thread(_write_repo_files, env, repos.configured.values(), frozenset())

    async def sync_env(self, env: ClusterEnv, *, keep_cache: Iterable[str] = ()) -> ClusterRepos:
        """Bring the env's repository files in line with the store (no-op when unchanged); return them."""
        repos = await self.cluster_repos(env.cluster_uuid)
        async with self._lock(env):
            await asyncio.to_thread(_write_repo_files, env, repos.configured.values(), frozenset(keep_cache))
        return repos

    # -- helm --------------------------------------------------------------------------------

    async def dialect(self, env: ClusterEnv) -> str:
        """ "helm3" or "helm4" for the configured binary (probed once per process).

        Raises:
            ApplicationError: ``UnsupportedHelm`` (non-retryable) for another major version.
        """
        if self._dialect is None:
            result = await self.runner.run(
                helm_cli.build_version_argv(self.settings.helm), env=env.env, timeout=SHORT_TIMEOUT
            )
            try:
                if result.returncode != 0:
                    raise UnsupportedHelm(f"helm version failed: {_text(result.stderr)[-200:]}")
                version = helm_cli.HelmVersion.parse(result.stdout)
            except KduflowError as err:
                raise _fail(err) from None
            self._dialect = f"helm{version.major}"
        return self._dialect

    async def run_helm(
        self,
        env: ClusterEnv,
        argv: list[str],
        *,
        stdin: bytes | None = None,
        timeout: float = SHORT_TIMEOUT,
        secrets_: Iterable[str] = (),
    ) -> Any:
        return await self.runner.run(argv, env=env.env, stdin=stdin, timeout=timeout, secrets=secrets_)

    async def update(self, env: ClusterEnv, names: list[str]) -> None:
        """``helm repo update NAMES`` that fails when a repository fails (helm 3 too).

        Raises:
            ApplicationError: ``RepoNotFound`` (a name is not configured), or the classified helm error
                (``CredentialsInvalid``/``ChartNotFound`` non-retryable; unreachable/5xx retryable).
        """
        dialect = await self.dialect(env)
        argv = repo_cli.build_repo_update_argv(self.settings.helm, dialect, names)
        result = await self.run_helm(env, argv, timeout=REPO_UPDATE_TIMEOUT)
        if result.returncode != 0:
            stderr = _text(result.stderr)
            if repo_cli.is_update_unknown_repo(stderr):
                raise _fail(RepoNotFound(f"repository {', '.join(names)} is not configured on this cluster"))
            # helm 3 prints the per-repository reason on stdout, the summary on stderr.
            detail = "\n".join(
                ln
                for ln in _text(result.stdout).splitlines()
                if "nable to get an update" in ln or ln.startswith("\t")
            )
            raise _fail(
                classify_helm_stderr(
                    f"{detail}\n{stderr}",
                    result.returncode,
                    context=f"helm repo update {' '.join(names)}".strip(),
                )
            )
        for name in names:
            self._index_cache.pop(_index_path(env, name), None)

    async def ensure_chart_available(self, env: ClusterEnv, repo: str, chart: str, version: str = "") -> str:
        """Make sure ``repo/chart`` (at ``version``, when given) can be installed; return the reference
        to give helm: ``"repo/chart"``, or ``"oci://host/path/chart"`` for an OCI repository.

        The repository files are first brought in line with the store; the index is refreshed (``helm repo
        update repo``) only when it is missing, older than ``index_ttl``, or lacks the chart/version.

        Raises:
            ApplicationError: ``RepoNotFound`` (no repository of that name on the cluster),
                ``ChartNotFound`` (not in a fresh index), both non-retryable; helm errors as classified.
        """
        repos = await self.sync_env(env)
        entry = repos.by_name(repo)
        if entry is None:
            raise _fail(RepoNotFound(f"repository {repo!r} is not configured on cluster {env.cluster_uuid}"))
        if entry.oci:
            base = entry.url if entry.url.startswith("oci://") else f"oci://{entry.url}"
            return f"{base.rstrip('/')}/{chart}"
        path = _index_path(env, repo)
        refreshed = False
        if not self._index_fresh(path):
            await self.update(env, [repo])
            refreshed = True
        if not await self._index_has(path, chart, version):
            if not refreshed:
                await self.update(env, [repo])
            if not await self._index_has(path, chart, version):
                what = f"{chart} version {version}" if version else chart
                raise _fail(
                    ChartNotFound(
                        f"chart {what} not found in repository {repo}",
                        details={"repo": repo, "chart": chart, "version": version},
                    )
                )
        return f"{repo}/{chart}"

    def _index_fresh(self, path: Path) -> bool:
        try:
            return time.time() - path.stat().st_mtime < self.index_ttl
        except OSError:
            return False

    async def _index_has(self, path: Path, chart: str, version: str) -> bool:
        try:
            stat = path.stat()
        except OSError:
            return False
        key = (stat.st_mtime_ns, stat.st_size)
        cached = self._index_cache.get(path)
        if cached is None or cached[0] != key:
            entries = await asyncio.to_thread(_read_index, path)
            self._index_cache[path] = (key, entries)
        else:
            entries = cached[1]
        versions = entries.get(chart)
        if versions is None:
            return False
        if not version or _CONSTRAINT_CHARS.search(version):
            # A semver range: helm resolves it; the chart being listed is what can be checked here.
            return True
        return version in versions or version.lstrip("v") in {v.lstrip("v") for v in versions}


def _fail_cluster_not_found(cluster_uuid: str) -> ApplicationError:
    return ApplicationError(
        f"cluster {cluster_uuid!r} not found in {CLUSTERS_COLLECTION}",
        type="ClusterNotFound",
        non_retryable=True,
    )


def _index_path(env: ClusterEnv, name: str) -> Path:
    return Path(env.env["HELM_CACHE_HOME"]) / "repository" / f"{name}-index.yaml"


#: libyaml's base loader when PyYAML was built with it (the pure-Python one otherwise): every scalar
#: stays a string, which is what versions are ("1.10" is not the number 1.1), nothing but strings,
#: lists and mappings is built, and a 5,000-version index parses in a fraction of the time the
#: pure-Python safe loader takes (seconds).
_INDEX_LOADER: type[yaml.BaseLoader] = getattr(yaml, "CBaseLoader", yaml.BaseLoader)


def _read_index(path: Path) -> dict[str, set[str]]:
    """Chart name -> versions of a repository index helm downloaded (empty when unreadable)."""
    try:
        data = yaml.load(path.read_bytes(), Loader=_INDEX_LOADER)  # strings only (above)
    except (OSError, yaml.YAMLError):
        return {}
    entries = (data or {}).get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        return {}
    return {
        str(name): {str(v.get("version")) for v in versions if isinstance(v, dict)}
        for name, versions in entries.items()
        if isinstance(versions, list)
    }


def _ca_path(env: ClusterEnv, name: str) -> Path:
    return env.root / CA_DIR / f"{name}.crt"


def _registry_config(env: ClusterEnv) -> Path:
    return Path(env.env["HELM_CONFIG_HOME"]) / "registry" / "config.json"


def _write_repo_files(env: ClusterEnv, repos: Iterable[Repo], keep_cache: frozenset[str]) -> bool:
    """Write repositories.yaml, CA files, registry config and the state file; return True if changed.

    Index caches of repositories that are new, gone or changed are deleted (a leftover index from
    another URL must never answer a chart lookup), except names in ``keep_cache`` (just downloaded).
    """
    repos = sorted(repos, key=lambda r: r.name)
    state = {r.name: {"id": r.id, "url": r.url, "oci": r.oci, "fingerprint": r.fingerprint()} for r in repos}
    digest = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()
    state_path = env.root / STATE_FILE
    previous: dict[str, Any] = {}
    try:
        loaded = json.loads(state_path.read_text())
        previous = loaded if isinstance(loaded, dict) else {}
    except (OSError, ValueError):
        previous = {}
    if previous.get("hash") == digest and env.repositories_file.exists():
        return False
    entries = []
    auths: dict[str, Any] = {}
    for repo in repos:
        if repo.oci:
            if repo.username:
                token = base64.b64encode(f"{repo.username}:{repo.password}".encode()).decode()
                auths[repo_cli.registry_host(repo.url)] = {"auth": token}
            continue
        ca_file = ""
        if repo.ca_cert:
            ca_path = _ca_path(env, repo.name)
            _write_private(ca_path, repo.ca_cert.encode())
            ca_file = str(ca_path)
        entries.append(
            {
                "name": repo.name,
                "url": repo.url,
                "username": repo.username,
                "password": repo.password,
                "caFile": ca_file,
                "certFile": "",
                "keyFile": "",
                "insecure_skip_tls_verify": False,
                "pass_credentials_all": False,
            }
        )
    document = {"apiVersion": "", "generated": "0001-01-01T00:00:00Z", "repositories": entries}
    _write_private(env.repositories_file, yaml.safe_dump(document, sort_keys=True).encode())
    registry = _registry_config(env)
    if auths:
        _write_private(registry, json.dumps({"auths": auths}, indent=1).encode())
    else:
        registry.unlink(missing_ok=True)
    recorded = previous.get("repos")
    old: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
    cache_dir = Path(env.env["HELM_CACHE_HOME"]) / "repository"
    for name in set(old) | set(state):
        if name in keep_cache or old.get(name) == state.get(name):
            continue
        for suffix in ("-index.yaml", "-charts.txt"):
            (cache_dir / f"{name}{suffix}").unlink(missing_ok=True)
    # CA files of repositories that are gone.
    ca_dir = env.root / CA_DIR
    if ca_dir.is_dir():
        wanted = {f"{r.name}.crt" for r in repos if r.ca_cert and not r.oci}
        for path in ca_dir.iterdir():
            if path.name not in wanted:
                path.unlink(missing_ok=True)
    _write_private(state_path, json.dumps({"hash": digest, "repos": state}, sort_keys=True).encode())
    return True


class RepoActivities:
    """The ``repo.*`` and ``registry.login`` activities.

    Built as ``RepoActivities(settings, envs, store, runner=None)``; ``envs`` may be set after
    construction (the plugin builds ClusterEnvs with :meth:`materialise` as its hook). Every activity
    reads repository URLs and credentials from the store by id: no secret enters workflow history.
    """

    def __init__(
        self,
        settings: Settings,
        envs: ClusterEnvs | None,
        store: Store,
        runner: Runner | None = None,
        *,
        secretbox: SecretBox | None = None,
        index_ttl: float = DEFAULT_INDEX_TTL,
    ) -> None:
        self.settings = settings
        self.envs = envs
        self.store = store
        if secretbox is None and settings.secret_key:
            secretbox = SecretBox.from_setting(settings.secret_key)
        self.charts = ChartRepos(settings, store, runner, secretbox, index_ttl=index_ttl)
        #: The URL policy a repository registered by ``repo.register`` must pass (the plugin shares
        #: its own; one is built from the settings otherwise).
        self.url_policy: UrlPolicy | None = None

    @property
    def runner(self) -> Runner:
        return self.charts.runner

    async def materialise(self, env: ClusterEnv, doc: dict) -> None:
        """``ClusterEnvs(on_materialise=...)`` hook (see :meth:`ChartRepos.materialise`)."""
        await self.charts.materialise(env, doc)

    async def ensure_chart_available(self, env: ClusterEnv, repo: str, chart: str, version: str = "") -> str:
        """See :meth:`ChartRepos.ensure_chart_available`."""
        return await self.charts.ensure_chart_available(env, repo, chart, version)

    async def _env(self, cluster_uuid: str) -> ClusterEnv:
        validate_cluster_uuid(cluster_uuid)
        if self.envs is None:
            raise RuntimeError("RepoActivities.envs is not set")
        return await self.envs.get(cluster_uuid)

    async def _record_added(self, cluster_uuid: str, repo: Repo) -> None:
        update: dict[str, Any] = {
            f"_admin.kduflow_repos.{repo.id}": {
                "name": repo.name,
                "url": repo.url,
                "oci": repo.oci,
                "fingerprint": repo.fingerprint(),
            },
        }
        if repo.id != STABLE_REPO_KEY:
            update[f"_admin.helm_charts_added.{repo.id}"] = repo.name
        await self.store.update_one(CLUSTERS_COLLECTION, {"_id": cluster_uuid}, {"$set": update})

    async def _record_removed(self, cluster_uuid: str, key: str) -> None:
        unset = {f"_admin.kduflow_repos.{key}": "", f"_admin.helm_charts_added.{key}": ""}
        await self.store.update_one(CLUSTERS_COLLECTION, {"_id": cluster_uuid}, {"$unset": unset})

    async def _add(self, env: ClusterEnv, repos: ClusterRepos, repo: Repo) -> RepoAddResult:
        if repo_cli.url_has_userinfo(repo.url):
            raise _credentials_in_url(repo.id, repo.url)
        clash = repos.by_name(repo.name)
        if clash is not None and clash.id != repo.id:
            raise _invalid(
                f"repository name {repo.name!r} of {repo.id} is already used by {clash.id} on "
                f"cluster {env.cluster_uuid}"
            )
        dialect = await self.charts.dialect(env)
        changed = True
        if repo.oci:
            if repo.username:
                await self._login(env, repo, dialect)
        else:
            ca_file = None
            if repo.ca_cert:
                ca_path = _ca_path(env, repo.name)
                await asyncio.to_thread(_write_private, ca_path, repo.ca_cert.encode())
                ca_file = str(ca_path)
            # An entry of that name already in repositories.yaml (same id, another URL or credentials)
            # is replaced; an identical one makes helm skip.
            argv = repo_cli.build_repo_add_argv(
                self.settings.helm,
                dialect,
                repo.name,
                repo.url,
                ca_file=ca_file,
                username=repo.username or None,
                password_stdin=bool(repo.password),
                force_update=clash is not None and repos.recorded.get(repo.id) != repo.fingerprint(),
            )
            stdin = f"{repo.password}\n".encode() if repo.password else None
            result = await self.charts.run_helm(
                env, argv, stdin=stdin, timeout=REPO_ADD_TIMEOUT, secrets_=[repo.password]
            )
            if result.returncode != 0:
                raise _fail(
                    classify_helm_stderr(
                        result.stderr,
                        result.returncode,
                        secrets=[repo.password],
                        context=f"helm repo add {repo.name}",
                    )
                )
            changed = not repo_cli.add_was_skipped(_text(result.stdout))
        await self._record_added(env.cluster_uuid, repo)
        await self.charts.sync_env(env, keep_cache=[repo.name])
        url = repo_cli.redact_url(repo.url)  # has no credentials (refused above); redacted regardless
        log.info("cluster %s: repository %s (%s) configured as %r", env.cluster_uuid, repo.id, url, repo.name)
        return RepoAddResult(repo_id=repo.id, name=repo.name, url=url, oci=repo.oci, changed=changed)

    async def _login(self, env: ClusterEnv, repo: Repo, dialect: str) -> None:
        ca_file = None
        if repo.ca_cert:
            ca_path = _ca_path(env, f"registry-{repo.name}")
            await asyncio.to_thread(_write_private, ca_path, repo.ca_cert.encode())
            ca_file = str(ca_path)
        argv = repo_cli.build_registry_login_argv(
            self.settings.helm, dialect, repo.url, username=repo.username, ca_file=ca_file
        )
        result = await self.charts.run_helm(
            env, argv, stdin=f"{repo.password}\n".encode(), timeout=REPO_ADD_TIMEOUT, secrets_=[repo.password]
        )
        if result.returncode != 0:
            raise _fail(
                classify_helm_stderr(
                    result.stderr,
                    result.returncode,
                    secrets=[repo.password],
                    context=f"helm registry login {repo_cli.registry_host(repo.url)}",
                )
            )

    @activity.defn(name=CLUSTER_ACTIVITY_NAMES["repo_add"])
    async def add(self, ref: RepoRef) -> RepoAddResult:
        """Add k8srepos ``repo_id`` to the cluster (helm validates it by fetching its index) and record it
        in ``_admin.helm_charts_added``. Idempotent. OCI repositories with credentials log in instead.

        Raises ``RepoNotFound`` (no such k8srepos document), ``InvalidInput``, ``CredentialsInvalid``,
        ``ChartNotFound`` (the URL is not a chart repository) non-retryable; unreachable repositories and
        5xx are retryable.
        """
        validate_repo_id(ref.repo_id)
        env = await self._env(ref.cluster_uuid)
        repos = await self.charts.sync_env(env)
        try:
            repo = await self.charts.load_repo(ref.repo_id)
        except ApplicationError as err:
            if err.type == "UrlNotAllowed":
                # Not configured (cluster_repos leaves it out): forget any record of it, which would
                # otherwise keep an older URL in the cluster document.
                await self._record_removed(ref.cluster_uuid, ref.repo_id)
            raise
        if repo is None:
            raise _fail(RepoNotFound(f"repository {ref.repo_id} not found in {REPOS_COLLECTION}"))
        return await self._add(env, repos, repo)

    @activity.defn(name=CLUSTER_ACTIVITY_NAMES["registry_login"])
    async def registry_login(self, ref: RepoRef) -> RepoAddResult:
        """``helm registry login`` (host only, password on stdin) for OCI repository ``repo_id``.

        Raises ``RepoNotFound``/``InvalidInput`` (not an OCI repository or no username) non-retryable.
        """
        validate_repo_id(ref.repo_id)
        env = await self._env(ref.cluster_uuid)
        repo = await self.charts.load_repo(ref.repo_id)
        if repo is None:
            raise _fail(RepoNotFound(f"repository {ref.repo_id} not found in {REPOS_COLLECTION}"))
        if not repo.oci or not repo.username:
            raise _invalid(
                f"repository {ref.repo_id} is not an OCI registry with a user; nothing to log in to"
            )
        await self._login(env, repo, await self.charts.dialect(env))
        return RepoAddResult(
            repo_id=repo.id, name=repo.name, url=repo_cli.redact_url(repo.url), oci=True, changed=True
        )

    @activity.defn(name=CLUSTER_ACTIVITY_NAMES["repo_remove"])
    async def remove(self, ref: RepoRef) -> RepoRemoveResult:
        """Remove a configured repository (by id, or by ``name``) and forget it in the store.
        Idempotent: an absent repository returns ``existed=False``."""
        validate_repo_id(ref.repo_id)
        env = await self._env(ref.cluster_uuid)
        repos = await self.charts.sync_env(env)
        entry = repos.configured.get(ref.repo_id)
        name = ref.name or (entry.name if entry else "")
        existed = False
        if name and not (entry is not None and entry.oci):
            try:
                repo_cli.validate_repo_name(name)
            except repo_cli.RepoCliError as err:
                raise _invalid(f"name: {err}") from None
            argv = repo_cli.build_repo_remove_argv(self.settings.helm, await self.charts.dialect(env), name)
            result = await self.charts.run_helm(env, argv)
            if result.returncode == 0:
                existed = True
            elif not repo_cli.is_remove_absent(_text(result.stderr)):
                raise _fail(
                    classify_helm_stderr(result.stderr, result.returncode, context=f"helm repo remove {name}")
                )
        existed = existed or entry is not None
        await self._record_removed(ref.cluster_uuid, ref.repo_id)
        await self.charts.sync_env(env)
        return RepoRemoveResult(repo_id=ref.repo_id, name=name, existed=existed)

    @activity.defn(name=CLUSTER_ACTIVITY_NAMES["repo_update"])
    async def update(self, inp: RepoUpdateInput) -> RepoUpdateResult:
        """Refresh the indexes of ``names`` (default: all configured non-OCI repositories).

        Fails when any repository fails (helm 3 included). ``RepoNotFound`` for an unknown name.
        """
        env = await self._env(inp.cluster_uuid)
        repos = await self.charts.sync_env(env)
        names = list(inp.names) or sorted(r.name for r in repos.configured.values() if not r.oci)
        for name in names:
            entry = repos.by_name(name)
            if entry is None:
                raise _fail(
                    RepoNotFound(f"repository {name!r} is not configured on cluster {inp.cluster_uuid}")
                )
            if entry.oci:
                raise _invalid(f"names: {name!r} is an OCI registry, it has no index to update")
        if names:
            await self.charts.update(env, names)
        return RepoUpdateResult(updated=names)

    @activity.defn(name=CLUSTER_ACTIVITY_NAMES["repo_list"])
    async def list_repos(self, ref: ClusterRef) -> RepoListResult:
        """The repositories helm has for the cluster (``helm repo list``), with their k8srepos ids."""
        env = await self._env(ref.cluster_uuid)
        repos = await self.charts.sync_env(env)
        argv = repo_cli.build_repo_list_argv(self.settings.helm, await self.charts.dialect(env))
        result = await self.charts.run_helm(env, argv)
        if result.returncode != 0:
            raise _fail(classify_helm_stderr(result.stderr, result.returncode, context="helm repo list"))
        try:
            listed = repo_cli.parse_repo_list(_text(result.stdout))
        except repo_cli.RepoCliError as err:
            raise ApplicationError(str(err), type="HelmError") from None
        out = []
        for item in listed:
            entry = repos.by_name(item.name)
            out.append(
                RepoInfo(
                    id=entry.id if entry else "",
                    name=item.name,
                    url=repo_cli.redact_url(item.url),
                    fingerprint=entry.fingerprint() if entry else "",
                )
            )
        out += [r.info() for r in repos.configured.values() if r.oci]
        return RepoListResult(repos=out)

    @activity.defn(name=CLUSTER_ACTIVITY_NAMES["repo_desired"])
    async def desired(self, ref: ClusterRef) -> DesiredReposResult:
        """Desired (``_admin.helm_chart_repos``) and configured repositories, secrets stripped.

        Raises ``ClusterNotFound``/``CredentialsInvalid`` (non-retryable) for a cluster that is not
        registered or whose kubeconfig the worker refuses: SyncRepos then fails as a whole instead
        of reporting the same refusal once per repository.
        """
        validate_cluster_uuid(ref.cluster_uuid)
        if self.envs is not None:
            await self.envs.get(ref.cluster_uuid)
        repos = await self.charts.cluster_repos(ref.cluster_uuid)
        desired, unknown = [], []
        for repo_id in repos.desired_ids:
            try:
                repo = await self.charts.load_repo(repo_id) if _REPO_ID.match(repo_id) else None
            except ApplicationError as err:
                if err.type != "UrlNotAllowed":
                    raise
                # Listed (URL redacted) so that SyncRepos tries to add it and reports the refusal.
                doc = await self.store.find_one(REPOS_COLLECTION, {"_id": repo_id}) or {}
                url = repo_cli.redact_url(str(doc.get("url") or ""))
                desired.append(RepoInfo(id=repo_id, name=str(doc.get("name") or ""), url=url))
                continue
            if repo is None:
                unknown.append(repo_id)
            else:
                desired.append(repo.info())
        configured = []
        for key, repo in repos.configured.items():
            if key == STABLE_REPO_KEY:
                continue
            info = repo.info()
            # What was recorded when it was added: a different value means "changed since".
            info.fingerprint = repos.recorded.get(key, "")
            configured.append(info)
        return DesiredReposResult(desired=desired, configured=configured, unknown=unknown)

    @activity.defn(name=CLUSTER_ACTIVITY_NAMES["repo_record_sync"])
    async def record_sync(self, inp: RecordSyncInput) -> None:
        """Record a SyncRepos outcome in ``_admin.kduflow_repo_sync`` (time, deleted, added, failed)."""
        validate_cluster_uuid(inp.cluster_uuid)
        res = inp.result
        outcome = {
            "time": time.time(),
            "deleted": list(res.deleted),
            "added": dict(res.added),
            "failed": dict(res.failed),
            "unknown": list(res.unknown),
        }
        matched = await self.store.update_one(
            CLUSTERS_COLLECTION, {"_id": inp.cluster_uuid}, {"$set": {"_admin.kduflow_repo_sync": outcome}}
        )
        if not matched:
            raise _fail_cluster_not_found(inp.cluster_uuid)

    @activity.defn(name=CLUSTER_ACTIVITY_NAMES["repo_add_stable"])
    async def add_stable(self, ref: ClusterRef) -> AddStableResult:
        """Add the worker's configured stable repository (``KDUFLOW_STABLE_REPO_URL``) as "stable".

        No-op (``added=False``) when none is configured. Errors as :meth:`add`.
        """
        url = self.settings.stable_repo_url
        if not url:
            return AddStableResult(added=False)
        env = await self._env(ref.cluster_uuid)
        repos = await self.charts.sync_env(env)
        repo = Repo(id=STABLE_REPO_KEY, name=STABLE_REPO_NAME, url=url)
        await self._add(env, repos, repo)
        return AddStableResult(added=True, url=url)

    # -- RepoAdd / RepoRemove: the registry (k8srepos + the cluster's desired list) ---------------

    async def _set_desired(self, cluster_uuid: str, ids: list[str]) -> None:
        # Read-modify-write of the whole list (the embedded store has no $pull); RepoAdd and
        # RepoRemove run under the cluster's repository lock, as every SyncRepos does.
        await self.store.update_one(
            CLUSTERS_COLLECTION, {"_id": cluster_uuid}, {"$set": {"_admin.helm_chart_repos": ids}}
        )

    @activity.defn(name=CLUSTER_ACTIVITY_NAMES["repo_register"])
    async def register(self, inp: RegisterRepoInput) -> RegisterRepoResult:
        """Register a repository as OSM's NBI does: a ``k8srepos`` document and its id in the cluster's
        ``_admin.helm_chart_repos``. Idempotent: a document of the same name and URL is reused (its
        user, password and CA replaced by the given ones).

        A registered repository is trusted by the URL policy wherever it resolves, so the URL must
        first pass that policy as any URL from workflow input does (allowlist, public addresses):
        registering cannot widen what callers may make the worker fetch. The password is stored
        encrypted when the worker has a secret key and never logged.

        Raises ``InvalidInput``, ``UrlNotAllowed``, ``ClusterNotFound`` (non-retryable).
        """
        validate_cluster_uuid(inp.cluster_uuid)
        validate_repo_id(inp.new_id, "new_id")
        try:
            repo_cli.validate_repo_name(inp.name)
            repo_cli.validate_repo_url(inp.url, oci=inp.oci)
        except repo_cli.RepoCliError as err:
            raise _invalid(str(err)) from None
        doc = await self.charts.cluster_doc(inp.cluster_uuid)
        policy = self.url_policy or UrlPolicy(self.settings, self.store)
        try:
            await policy.check(inp.url if "://" in inp.url else f"oci://{inp.url}", field="url")
        except KduflowError as err:
            raise _fail(err) from None
        same = [
            d for d in await self.store.find(REPOS_COLLECTION, {"name": inp.name}) if d.get("url") == inp.url
        ]
        repo_id = str(same[0]["_id"]) if same else inp.new_id
        password: Any = inp.password
        box = self.charts.secretbox
        if password and box is not None:
            password = box.encrypt_json(password, aad_for(REPOS_COLLECTION, repo_id, "password"))
        fields = {
            "name": inp.name,
            "url": inp.url,
            "type": "oci" if inp.oci else "helm-chart",
            "oci": inp.oci,
            "user": inp.user,
            "password": password,
            "ca_cert": inp.cert,
        }
        if same:
            await self.store.update_one(REPOS_COLLECTION, {"_id": repo_id}, {"$set": fields})
        else:
            await self.store.insert_one(REPOS_COLLECTION, {"_id": repo_id, **fields})
        desired = [str(i) for i in ((doc.get("_admin") or {}).get("helm_chart_repos") or [])]
        if repo_id not in desired:
            await self._set_desired(inp.cluster_uuid, [*desired, repo_id])
        log.info(
            "cluster %s: repository %s registered as k8srepos %s (%s)",
            inp.cluster_uuid, inp.name, repo_id, "reused" if same else "created",
        )  # fmt: skip
        return RegisterRepoResult(repo_id=repo_id, created=not same)

    @activity.defn(name=CLUSTER_ACTIVITY_NAMES["repo_unregister"])
    async def unregister(self, inp: UnregisterRepoInput) -> UnregisterRepoResult:
        """Take the repository called ``name`` off the cluster's ``_admin.helm_chart_repos`` (so no
        later SyncRepos adds it again) and return its id. The ``k8srepos`` document stays: other
        clusters may list it. Returns ``repo_id=""`` when the cluster knows no repository of that name.
        """
        validate_cluster_uuid(inp.cluster_uuid)
        try:
            repo_cli.validate_repo_name(inp.name)
        except repo_cli.RepoCliError as err:
            raise _invalid(str(err)) from None
        doc = await self.charts.cluster_doc(inp.cluster_uuid)
        repos = await self.charts.cluster_repos(inp.cluster_uuid, doc)
        entry = repos.by_name(inp.name)
        repo_id = entry.id if entry is not None else ""
        if not repo_id:
            for rid in repos.desired_ids:
                listed = await self.store.find_one(REPOS_COLLECTION, {"_id": rid})
                if listed is not None and listed.get("name") == inp.name:
                    repo_id = rid
                    break
        if repo_id and repo_id in repos.desired_ids:
            await self._set_desired(inp.cluster_uuid, [i for i in repos.desired_ids if i != repo_id])
        return UnregisterRepoResult(repo_id=repo_id)
