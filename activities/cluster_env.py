"""Private per-cluster environments for helm and kubectl, materialised from the store.

OSM N2VC keeps a directory per cluster (kubeconfig, helm homes) and mirrors it through GridFS, in
clear text, with races between replicas and no HOME isolation (reference D, E.28-E.31). kduflow
treats the local directory as a disposable cache of the ``k8sclusters`` document:

- ``<state_dir>/clusters/<cluster_uuid>/`` (0700) holds ``.kube/config`` (0600), the helm homes
  ``.config/helm``, ``.cache/helm``, ``.local/share/helm`` and ``.kduflow-hash``.
- The content hash of the kubeconfig decides whether the directory is current. A directory whose
  hash file or kubeconfig does not match (a leftover, a crash, a credential rotation) is never
  reused: a fresh directory is built beside it and swapped in with ``rename``, so processes
  already running with the old paths keep their open files, and nothing of the old one is kept
  (caches, plugins, repositories.yaml are rebuilt; ``on_materialise`` re-creates repositories).
- Each :meth:`ClusterEnvs.get` re-reads the store document (one ``find_one``, no TTL), so a changed
  credential is picked up by the next activity; the ``ClusterEnv`` object is cached per hash.
- Several workers each have their own state dir and build equivalent directories from one store:
  nothing local is shared, so there is no cross-worker race.

The environment handed to helm/kubectl is complete (HOME, KUBECONFIG, HELM_*_HOME, NO_COLOR, PATH):
callers use it as the *whole* process environment, never inheriting the worker's HOME/KUBECONFIG.

Known limit: a kubeconfig may name an ``exec`` credential plugin or local certificate files; they
run / are read on the worker as kubectl would. Only trusted parties may write ``k8sclusters``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import re
import secrets
import shutil
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from temporalio.exceptions import ApplicationError

from activities.secretbox import SecretBox, SecretBoxError, aad_for, is_envelope
from activities.store import Store
from kduflow.config import Settings
from workflows import validation

log = logging.getLogger(__name__)

CLUSTERS_COLLECTION = "k8sclusters"
CREDENTIALS_FIELD = "credentials"
HASH_FILE = ".kduflow-hash"
#: Bumped when the on-disk layout changes, so every existing directory is rebuilt once.
LAYOUT_VERSION = "1"
#: First character alphanumeric: "." / ".." / hidden names are impossible, and the staging names
#: used while rebuilding (".<uuid>.new-*", ".<uuid>.old-*") never collide with a cluster id.
_BASE_PATH = ("/usr/bin", "/bin")

OnMaterialise = Callable[["ClusterEnv", dict], Awaitable[None]]


@dataclass(frozen=True)
class ClusterEnv:
    """A cluster's private directory and the complete environment to run helm/kubectl with."""

    cluster_uuid: str
    root: Path
    kubeconfig: Path
    env: dict[str, str]
    #: sha256 of what was materialised (kubeconfig bytes + layout version).
    content_hash: str = ""

    @property
    def helm_config_home(self) -> Path:
        return Path(self.env["HELM_CONFIG_HOME"])

    @property
    def helm_cache_home(self) -> Path:
        return Path(self.env["HELM_CACHE_HOME"])

    @property
    def helm_data_home(self) -> Path:
        return Path(self.env["HELM_DATA_HOME"])

    @property
    def repositories_file(self) -> Path:
        """Helm's default repository config (``$HELM_CONFIG_HOME/repositories.yaml``)."""
        return self.helm_config_home / "repositories.yaml"


def validate_cluster_uuid(cluster_uuid: Any) -> str:
    """Return ``cluster_uuid`` if usable as a directory name (the workflows' rule), else raise.

    Raises:
        ApplicationError: type ``InvalidInput``, non-retryable, naming the field.
    """
    return validation.validate_cluster_uuid(cluster_uuid)


def parse_kubeconfig(credentials: Any, cluster_uuid: str) -> dict[str, Any]:
    """Validate a kubeconfig given as a dict or a YAML string; return it as a dict.

    A missing ``current-context`` is filled in when there is exactly one context.

    Raises:
        ApplicationError: type ``CredentialsInvalid``, non-retryable; the message says what is
            wrong, never the content.
    """

    def invalid(why: str) -> ApplicationError:
        return ApplicationError(
            f"credentials of cluster {cluster_uuid!r} are not a usable kubeconfig: {why}",
            type="CredentialsInvalid",
            non_retryable=True,
        )

    config: Any = credentials
    if isinstance(credentials, str):
        try:
            config = yaml.safe_load(credentials)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise invalid(f"YAML does not parse{where}") from None
    if not isinstance(config, dict):
        raise invalid(f"expected a mapping, got {type(config).__name__}")
    config = dict(config)
    for section in ("clusters", "contexts", "users"):
        entries = config.get(section)
        if not isinstance(entries, list) or not entries:
            raise invalid(f"'{section}' must be a non-empty list")
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise invalid(f"every entry of '{section}' needs a 'name'")
    context_names = [entry["name"] for entry in config["contexts"]]
    current = config.get("current-context")
    if not current:
        if len(context_names) != 1:
            raise invalid("no 'current-context' and more than one context")
        config["current-context"] = context_names[0]
    elif current not in context_names:
        raise invalid(f"current-context {current!r} is not among the contexts")
    return config


class ClusterEnvs:
    """Builds and caches :class:`ClusterEnv` per cluster for one worker process.

    Args:
        settings: ``state_dir`` (where directories live) and ``helm``/``kubectl`` (their dirs go on PATH).
        store: Source of the ``k8sclusters`` documents.
        secretbox: Decrypts encrypted credentials; ``None`` when no key is configured.
        on_materialise: Awaited with ``(env, cluster_document)`` after each (re)build of a directory,
            e.g. to write helm's repositories.yaml. If it raises, the directory is marked stale
            (rebuilt by the next ``get``) and the error propagates.
    """

    def __init__(self, settings: Settings, store: Store, secretbox: SecretBox | None = None,
                 on_materialise: OnMaterialise | None = None) -> None:
        self.settings = settings
        self.store = store
        self.secretbox = secretbox
        self.on_materialise = on_materialise
        self.clusters_dir = Path(settings.state_dir) / "clusters"
        self._cache: dict[str, ClusterEnv] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._path = _safe_path(settings.helm, settings.kubectl)

    def root_of(self, cluster_uuid: str) -> Path:
        return self.clusters_dir / validate_cluster_uuid(cluster_uuid)

    def _lock(self, cluster_uuid: str) -> asyncio.Lock:
        lock = self._locks.get(cluster_uuid)
        if lock is None:
            lock = self._locks[cluster_uuid] = asyncio.Lock()
        return lock

    async def get(self, cluster_uuid: str) -> ClusterEnv:
        """The cluster's environment, (re)materialised if its credentials changed.

        Raises:
            ApplicationError: ``InvalidInput`` (bad id), ``ClusterNotFound`` (no document or no
                credentials), ``CredentialsInvalid`` (undecryptable or malformed kubeconfig); all
                non-retryable. Store errors propagate as they are (retryable).
        """
        validate_cluster_uuid(cluster_uuid)
        async with self._lock(cluster_uuid):
            doc = await self.store.find_one(CLUSTERS_COLLECTION, {"_id": cluster_uuid})
            if doc is None:
                raise ApplicationError(
                    f"cluster {cluster_uuid!r} not found in {CLUSTERS_COLLECTION}",
                    type="ClusterNotFound", non_retryable=True,
                )
            content = self._kubeconfig_bytes(cluster_uuid, doc)
            digest = hashlib.sha256(LAYOUT_VERSION.encode() + b"\0" + content).hexdigest()
            root = self.root_of(cluster_uuid)
            cached = self._cache.get(cluster_uuid)
            if cached is not None and cached.content_hash == digest and await asyncio.to_thread(
                _is_current, root, digest, content
            ):
                return _copy(cached)
            self._cache.pop(cluster_uuid, None)
            env = self._make_env(cluster_uuid, root, digest)
            rebuilt = await asyncio.to_thread(self._materialise, cluster_uuid, root, digest, content)
            if rebuilt and self.on_materialise is not None:
                try:
                    await self.on_materialise(env, doc)
                except BaseException:
                    await asyncio.to_thread(_invalidate, root)
                    raise
            if rebuilt:
                log.info("materialised environment of cluster %s (%s)", cluster_uuid, digest[:12])
            self._cache[cluster_uuid] = env
            return _copy(env)

    async def forget(self, cluster_uuid: str) -> None:
        """Remove the cluster's local directory and cached env (idempotent)."""
        validate_cluster_uuid(cluster_uuid)
        async with self._lock(cluster_uuid):
            self._cache.pop(cluster_uuid, None)
            await asyncio.to_thread(self._remove_all, cluster_uuid)

    async def store_credentials(self, cluster_uuid: str, kubeconfig: dict | str) -> None:
        """Validate a kubeconfig and write it as ``k8sclusters.{_id}.credentials`` (upsert).

        The value is stored as given (dict or YAML string), inside an encrypted envelope bound to
        this document when a secret key is configured.

        Raises:
            ApplicationError: ``InvalidInput`` (bad id), ``CredentialsInvalid`` (malformed kubeconfig).
        """
        validate_cluster_uuid(cluster_uuid)
        parse_kubeconfig(kubeconfig, cluster_uuid)
        value: Any = kubeconfig
        if self.secretbox is not None:
            value = self.secretbox.encrypt_json(kubeconfig, aad_for(CLUSTERS_COLLECTION, cluster_uuid,
                                                                    CREDENTIALS_FIELD))
        await self.store.update_one(
            CLUSTERS_COLLECTION, {"_id": cluster_uuid}, {"$set": {CREDENTIALS_FIELD: value}}, upsert=True
        )

    # -- internals ---------------------------------------------------------------------------

    def _kubeconfig_bytes(self, cluster_uuid: str, doc: Mapping[str, Any]) -> bytes:
        credentials = doc.get(CREDENTIALS_FIELD)
        if credentials is None or credentials == "" or credentials == {}:
            raise ApplicationError(
                f"cluster {cluster_uuid!r} has no credentials in {CLUSTERS_COLLECTION}",
                type="ClusterNotFound", non_retryable=True,
            )
        if is_envelope(credentials):
            if self.secretbox is None:
                raise ApplicationError(
                    f"credentials of cluster {cluster_uuid!r} are encrypted but this worker has no "
                    "KDUFLOW_SECRET_KEY configured",
                    type="CredentialsInvalid", non_retryable=True,
                )
            try:
                credentials = self.secretbox.decrypt_json(
                    credentials, aad_for(CLUSTERS_COLLECTION, cluster_uuid, CREDENTIALS_FIELD)
                )
            except SecretBoxError as err:
                raise ApplicationError(
                    f"credentials of cluster {cluster_uuid!r} cannot be decrypted: {err}",
                    type="CredentialsInvalid", non_retryable=True,
                ) from None
        config = parse_kubeconfig(credentials, cluster_uuid)
        try:
            return yaml.safe_dump(config, sort_keys=True, default_flow_style=False).encode()
        except yaml.YAMLError as err:
            raise ApplicationError(
                f"credentials of cluster {cluster_uuid!r} hold a value a kubeconfig cannot carry "
                f"({type(err).__name__})",
                type="CredentialsInvalid", non_retryable=True,
            ) from None

    def _make_env(self, cluster_uuid: str, root: Path, digest: str) -> ClusterEnv:
        kubeconfig = root / ".kube" / "config"
        env = {
            "HOME": str(root),
            "KUBECONFIG": str(kubeconfig),
            "HELM_CONFIG_HOME": str(root / ".config" / "helm"),
            "HELM_CACHE_HOME": str(root / ".cache" / "helm"),
            "HELM_DATA_HOME": str(root / ".local" / "share" / "helm"),
            "NO_COLOR": "1",
            "PATH": self._path,
        }
        return ClusterEnv(cluster_uuid, root, kubeconfig, env, digest)

    def _materialise(self, cluster_uuid: str, root: Path, digest: str, content: bytes) -> bool:
        """Ensure ``root`` holds exactly this content; returns True when it was (re)built."""
        _mkdir_private(self.clusters_dir)
        if _is_current(root, digest, content):
            return False
        staging = self.clusters_dir / f".{cluster_uuid}.new-{secrets.token_hex(6)}"
        try:
            _build_dir(staging, digest, content)
            if os.path.lexists(root):
                trash = self.clusters_dir / f".{cluster_uuid}.old-{secrets.token_hex(6)}"
                os.rename(root, trash)
                os.rename(staging, root)
                _remove(trash)
            else:
                os.rename(staging, root)
        except BaseException:
            _remove(staging)
            raise
        return True

    def _remove_all(self, cluster_uuid: str) -> None:
        if not self.clusters_dir.is_dir():
            return
        _remove(self.clusters_dir / cluster_uuid)
        for leftover in self.clusters_dir.glob(f".{glob_escape(cluster_uuid)}.*-*"):
            _remove(leftover)


def _copy(env: ClusterEnv) -> ClusterEnv:
    # Callers may extend env.env for one process; that must not leak into the cached object.
    return dataclasses.replace(env, env=dict(env.env))


def glob_escape(name: str) -> str:
    # Cluster ids contain no glob metacharacters (validated), but keep this robust.
    return re.sub(r"([*?\[])", r"[\1]", name)


def _safe_path(helm: str, kubectl: str) -> str:
    """A minimal PATH: the directories of helm and kubectl, then /usr/bin:/bin."""
    dirs: list[str] = []
    for binary in (helm, kubectl):
        resolved = binary if os.sep in binary else shutil.which(binary)
        if resolved:
            dirs.append(os.path.dirname(os.path.abspath(resolved)))
    dirs.extend(_BASE_PATH)
    return os.pathsep.join(dict.fromkeys(dirs))


def _mkdir_private(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkdir's mode is filtered by the umask; pin it (the directory holds credentials).
    if (path.stat().st_mode & 0o777) != 0o700:
        os.chmod(path, 0o700)


def _write_private(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` atomically, created 0600 from the start (no chmod window)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _build_dir(root: Path, digest: str, content: bytes) -> None:
    for sub in ("", ".kube", ".config", ".config/helm", ".cache", ".cache/helm", ".local", ".local/share",
                ".local/share/helm"):
        _mkdir_private(root / sub if sub else root)
    _write_private(root / ".kube" / "config", content)
    # The hash goes last: a directory without it (crash mid-build) is never considered current.
    _write_private(root / HASH_FILE, digest.encode())


def _is_current(root: Path, digest: str, content: bytes) -> bool:
    """True when ``root`` is a real directory (0700) with this hash and this exact kubeconfig (0600)."""
    try:
        if root.is_symlink() or not root.is_dir() or (root.stat().st_mode & 0o777) != 0o700:
            return False
        if (root / HASH_FILE).read_bytes() != digest.encode():
            return False
        kubeconfig = root / ".kube" / "config"
        if kubeconfig.is_symlink() or (kubeconfig.stat().st_mode & 0o777) != 0o600:
            return False
        return kubeconfig.read_bytes() == content
    except OSError:
        return False


def _invalidate(root: Path) -> None:
    try:
        os.unlink(root / HASH_FILE)
    except FileNotFoundError:
        pass


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
