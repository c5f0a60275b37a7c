"""Private per-cluster environments for helm and kubectl, materialised from the store.

OSM N2VC keeps a directory per cluster (kubeconfig, helm homes) and mirrors it through GridFS, in
clear text, with races between replicas and no HOME isolation. kduflow treats the local directory
as a disposable cache of the ``k8sclusters`` document:

- ``<state_dir>/clusters/<cluster_uuid>/`` (0700) holds ``.kube/config`` and ``.kube/kuberc``
  (0600), the helm homes ``.config/helm``, ``.cache/helm``, ``.local/share/helm`` and
  ``.kduflow-hash``.
- The content hash of the kubeconfig (and of the kuberc) decides whether the directory is current.
  A directory whose hash file, kubeconfig or kuberc does not match (a leftover, a crash, a
  credential rotation, another exec plugin allowlist) is never reused: a fresh directory is built
  beside it and swapped in with ``rename``, so processes already running with the old paths keep
  their open files, and nothing of the old one is kept (caches, plugins, repositories.yaml are
  rebuilt; ``on_materialise`` re-creates repositories).
- Each :meth:`ClusterEnvs.get` re-reads the store document (one ``find_one``, no TTL), so a changed
  credential is picked up by the next activity; the ``ClusterEnv`` object is cached per hash.
- Several workers each have their own state dir and build equivalent directories from one store:
  nothing local is shared, so there is no cross-worker race.

The environment handed to helm/kubectl is complete (HOME, KUBECONFIG, KUBERC, HELM_*_HOME, NO_COLOR,
PATH): callers use it as the *whole* process environment, never inheriting the worker's
HOME/KUBECONFIG.

Every kubeconfig passes :func:`activities.kubeconfig_policy.check_kubeconfig` when it is stored
and again each time it is materialised, so a document written straight into the store is refused
before helm or kubectl see it: inline credentials only (no file paths), ``exec`` only for commands
of the operator's allowlist (``KDUFLOW_EXEC_PLUGINS``), no ``auth-provider``, ``proxy-url`` only
when ``KDUFLOW_ALLOW_KUBECONFIG_PROXY`` is set. The directories of allowlisted bare-name plugins are
on the environment's PATH. As a second fence for kubectl, each directory holds ``.kube/kuberc``
(named by ``KUBERC``) whose ``credentialPluginPolicy`` is ``DenyAll`` or an ``Allowlist`` of exactly
those commands: kubectl releases that know the field (1.37 does) refuse any other plugin
themselves; older ones ignore it, and helm never reads it, so the policy function is the fence.

Every cluster ``server`` must also lie outside the worker's internal networks
(:func:`activities.kubeconfig_policy.check_cluster_servers`: no loopback, link-local, private or
otherwise not globally routable address, by name resolution, unless inside
``KDUFLOW_ALLOW_PRIVATE_NETWORKS``). That check runs before credentials are stored and once per
content hash when an environment is (re)materialised, so a document written straight into the
store with an internal ``server`` is refused before helm or kubectl connect to it. It resolves the
name once; kubectl and helm resolve it again when they connect (the DNS-rebinding limit written
down in ``check_cluster_servers``).

:meth:`ClusterEnvs.store_credentials` never silently replaces a cluster's different credentials
unless asked to (``replace``); identical content is a no-op, so a retried registration converges.
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
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import errors, kubeconfig_policy
from activities.store import Store
from activities.url_policy import GetAddrInfo
from contract import validation
from kduflow.config import Settings
from kduflow.secretbox import SecretBox, SecretBoxError, aad_for, is_envelope

#: The SDK's adapter: inside an activity, records carry its ids (message and `extra`).
log = activity.LoggerAdapter(logging.getLogger(__name__), None)

CLUSTERS_COLLECTION = "k8sclusters"
CREDENTIALS_FIELD = "credentials"
HASH_FILE = ".kduflow-hash"
#: Where each cluster directory keeps kubectl's preferences file (``$HOME/.kube/kuberc`` is also
#: kubectl's default location, so it is found even without ``KUBERC``).
KUBERC_FILE = ".kube/kuberc"
#: Where ``store_credentials`` records a replacement in the cluster document.
REPLACED_FIELD = "_admin.kduflow.credentials_replaced"
#: Bumped when the on-disk layout changes, so every existing directory is rebuilt once.
LAYOUT_VERSION = "2"
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


def parse_kubeconfig(
    credentials: Any,
    cluster_uuid: str,
    *,
    exec_plugins: tuple[str, ...] = (),
    allow_proxy: bool = False,
) -> dict[str, Any]:
    """Apply the kubeconfig policy to a kubeconfig given as a dict or a YAML string; return it as a dict.

    A missing ``current-context`` is filled in when there is exactly one context. ``exec_plugins``
    and ``allow_proxy`` are the worker's settings (``KDUFLOW_EXEC_PLUGINS``,
    ``KDUFLOW_ALLOW_KUBECONFIG_PROXY``).

    Raises:
        ApplicationError: type ``CredentialsInvalid``, non-retryable; the message names the refused
            field and the rule, never the content.
    """
    try:
        return kubeconfig_policy.check_kubeconfig(
            credentials,
            exec_plugins=exec_plugins,
            allow_proxy=allow_proxy,
            subject=f"credentials of cluster {cluster_uuid!r}",
        )
    except errors.CredentialsInvalid as err:
        raise errors.to_application_error(err) from None


def kuberc_bytes(exec_plugins: tuple[str, ...]) -> bytes:
    """kubectl's preferences file for a cluster directory: its exec plugin policy.

    ``DenyAll`` without allowlisted plugins, else an ``Allowlist`` of exactly those commands
    (kubectl resolves bare names on PATH on both sides before comparing).
    """
    doc: dict[str, Any] = {"apiVersion": "kubectl.config.k8s.io/v1beta1", "kind": "Preference"}
    if exec_plugins:
        doc["credentialPluginPolicy"] = "Allowlist"
        doc["credentialPluginAllowlist"] = [{"name": name} for name in exec_plugins]
    else:
        doc["credentialPluginPolicy"] = "DenyAll"
    header = "# Written by kduflow from KDUFLOW_EXEC_PLUGINS; rebuilt with the directory.\n"
    return (header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)).encode()


class ClusterEnvs:
    """Builds and caches :class:`ClusterEnv` per cluster for one worker process.

    Args:
        settings: ``state_dir`` (where directories live) and ``helm``/``kubectl`` (their dirs go on PATH).
        store: Source of the ``k8sclusters`` documents.
        secretbox: Decrypts encrypted credentials; ``None`` when no key is configured.
        on_materialise: Awaited with ``(env, cluster_document)`` after each (re)build of a directory,
            e.g. to write helm's repositories.yaml. If it raises, the directory is marked stale
            (rebuilt by the next ``get``) and the error propagates.
        getaddrinfo: resolves cluster server names for the network check (default: the running
            loop's ``getaddrinfo``; tests pass their own).
    """

    def __init__(self, settings: Settings, store: Store, secretbox: SecretBox | None = None,
                 on_materialise: OnMaterialise | None = None, *,
                 getaddrinfo: GetAddrInfo | None = None) -> None:
        self.settings = settings
        self.store = store
        self.secretbox = secretbox
        self.on_materialise = on_materialise
        self.clusters_dir = Path(settings.state_dir) / "clusters"
        self._cache: dict[str, ClusterEnv] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.exec_plugins = kubeconfig_policy.exec_plugins_of(settings)
        self.allow_proxy = kubeconfig_policy.allow_proxy_of(settings)
        self._path = _safe_path(settings.helm, settings.kubectl, self.exec_plugins)
        self._kuberc = kuberc_bytes(self.exec_plugins)
        self.getaddrinfo = getaddrinfo
        #: cluster_uuid -> the content hash whose servers passed the network check.
        self._servers_checked: dict[str, str] = {}

    def root_of(self, cluster_uuid: str) -> Path:
        return self.clusters_dir / validate_cluster_uuid(cluster_uuid)

    def _lock(self, cluster_uuid: str) -> asyncio.Lock:
        lock = self._locks.get(cluster_uuid)
        if lock is None:
            lock = self._locks[cluster_uuid] = asyncio.Lock()
        return lock

    async def get(self, cluster_uuid: str) -> ClusterEnv:
        """The cluster's environment, (re)materialised if its credentials changed.

        The cluster servers pass the network check once per content hash, before the directory
        is built or a cached environment is handed out.

        Raises:
            ApplicationError: ``InvalidInput`` (bad id), ``ClusterNotFound`` (no document or no
                credentials), ``CredentialsInvalid`` (undecryptable or malformed kubeconfig, or a
                server outside the allowed networks); all non-retryable. Store errors propagate as
                they are (retryable).
        """
        validate_cluster_uuid(cluster_uuid)
        async with self._lock(cluster_uuid):
            doc = await self.store.find_one(CLUSTERS_COLLECTION, {"_id": cluster_uuid})
            if doc is None:
                raise ApplicationError(
                    f"cluster {cluster_uuid!r} not found in {CLUSTERS_COLLECTION}",
                    type="ClusterNotFound", non_retryable=True,
                )
            config, content = self._kubeconfig(cluster_uuid, doc)
            kuberc = self._kuberc
            digest = self._digest(content)
            if self._servers_checked.get(cluster_uuid) != digest:
                await self._check_servers(cluster_uuid, config)
                self._servers_checked[cluster_uuid] = digest
            root = self.root_of(cluster_uuid)
            cached = self._cache.get(cluster_uuid)
            if cached is not None and cached.content_hash == digest and await asyncio.to_thread(
                _is_current, root, digest, content, kuberc
            ):
                return _copy(cached)
            self._cache.pop(cluster_uuid, None)
            env = self._make_env(cluster_uuid, root, digest)
            rebuilt = await asyncio.to_thread(
                self._materialise, cluster_uuid, root, digest, content, kuberc
            )
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
            self._servers_checked.pop(cluster_uuid, None)
            await asyncio.to_thread(self._remove_all, cluster_uuid)

    async def store_credentials(
        self,
        cluster_uuid: str,
        kubeconfig: dict | str,
        *,
        replace: bool = True,
        workflow_id: str = "",
    ) -> Literal["created", "unchanged", "replaced"]:
        """Apply the kubeconfig policy and write it as ``k8sclusters.{_id}.credentials`` (upsert).

        The value is stored as given (dict or YAML string), inside an encrypted envelope bound to
        this document when a secret key is configured. Stored credentials with the same content
        (compared as canonical kubeconfigs) are left as they are: ``"unchanged"``. Different ones
        are replaced only with ``replace``, and the replacement is recorded in
        ``_admin.kduflow.credentials_replaced`` (``at`` epoch seconds, ``workflow_id``,
        ``previous_fingerprint``, ``fingerprint``: short sha256 prefixes, never the content).
        The write only happens if the credentials are still the ones compared against; otherwise a
        retryable ``OperationInProgress`` is raised and a retry compares again.

        Raises:
            ApplicationError: ``InvalidInput`` (bad id), ``CredentialsInvalid`` (refused
                kubeconfig, or a server outside the allowed networks), ``ClusterExists``
                (different credentials and not ``replace``); all non-retryable and raised before
                anything is written.
        """
        validate_cluster_uuid(cluster_uuid)
        config = self._parse(kubeconfig, cluster_uuid)
        await self._check_servers(cluster_uuid, config)
        new_fingerprint = kubeconfig_policy.fingerprint(config)
        value: Any = kubeconfig
        if self.secretbox is not None:
            value = self.secretbox.encrypt_json(kubeconfig, aad_for(CLUSTERS_COLLECTION, cluster_uuid,
                                                                    CREDENTIALS_FIELD))
        async with self._lock(cluster_uuid):
            doc = await self.store.find_one(CLUSTERS_COLLECTION, {"_id": cluster_uuid})
            previous = (doc or {}).get(CREDENTIALS_FIELD)
            update: dict[str, Any] = {CREDENTIALS_FIELD: value}
            outcome: Literal["created", "unchanged", "replaced"] = "created"
            if not _absent(previous):
                previous_fingerprint = self._stored_fingerprint(cluster_uuid, previous)
                if previous_fingerprint == new_fingerprint:
                    return "unchanged"
                if not replace:
                    raise errors.to_application_error(errors.ClusterExists(
                        f"cluster {cluster_uuid!r} already has different credentials; pass "
                        "replace_credentials=true to replace them",
                        details={"cluster_uuid": cluster_uuid},
                    ))
                update[REPLACED_FIELD] = {
                    "at": int(time.time()),
                    "workflow_id": str(workflow_id or ""),
                    "previous_fingerprint": previous_fingerprint,
                    "fingerprint": new_fingerprint,
                }
                outcome = "replaced"
            # Compare-and-set: the filter holds the value compared against (None also matches a
            # missing field). If another writer changed it meanwhile, the upsert tries to insert a
            # second document with this _id and the store refuses it.
            try:
                await self.store.update_one(
                    CLUSTERS_COLLECTION,
                    {"_id": cluster_uuid, CREDENTIALS_FIELD: previous},
                    {"$set": update},
                    upsert=True,
                )
            except Exception as err:
                if "DuplicateKey" not in type(err).__name__:
                    raise
                raise errors.to_application_error(errors.OperationInProgress(
                    f"credentials of cluster {cluster_uuid!r} changed while being stored; a retry "
                    "compares again"
                )) from None
        if outcome == "replaced":
            log.warning("cluster %s: credentials replaced (%s -> %s) by %s", cluster_uuid,
                        update[REPLACED_FIELD]["previous_fingerprint"] or "unusable", new_fingerprint,
                        workflow_id or "a direct call")
        return outcome

    def _parse(self, credentials: Any, cluster_uuid: str) -> dict[str, Any]:
        return parse_kubeconfig(credentials, cluster_uuid, exec_plugins=self.exec_plugins,
                                allow_proxy=self.allow_proxy)

    async def _check_servers(self, cluster_uuid: str, config: Mapping[str, Any]) -> None:
        """The network check of the cluster servers (see the module docstring)."""
        try:
            await kubeconfig_policy.check_cluster_servers(
                config, self.settings, subject=f"credentials of cluster {cluster_uuid!r}",
                getaddrinfo=self.getaddrinfo,
            )
        except errors.CredentialsInvalid as err:
            raise errors.to_application_error(err) from None

    def _digest(self, content: bytes) -> str:
        return hashlib.sha256(LAYOUT_VERSION.encode() + b"\0" + content + b"\0" + self._kuberc).hexdigest()

    def _stored_fingerprint(self, cluster_uuid: str, credentials: Any) -> str:
        """Fingerprint of stored credentials; "" when they cannot be decrypted or are refused."""
        try:
            if is_envelope(credentials):
                if self.secretbox is None:
                    return ""
                credentials = self.secretbox.decrypt_json(
                    credentials, aad_for(CLUSTERS_COLLECTION, cluster_uuid, CREDENTIALS_FIELD)
                )
            return kubeconfig_policy.fingerprint(self._parse(credentials, cluster_uuid))
        except (SecretBoxError, ApplicationError):
            return ""

    # -- internals ---------------------------------------------------------------------------

    def _kubeconfig(self, cluster_uuid: str, doc: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
        """The document's kubeconfig, checked by the policy, and its canonical bytes."""
        credentials = doc.get(CREDENTIALS_FIELD)
        if _absent(credentials):
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
        config = self._parse(credentials, cluster_uuid)
        try:
            return config, kubeconfig_policy.canonical_bytes(config)
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
            "KUBERC": str(root / KUBERC_FILE),
        }
        return ClusterEnv(cluster_uuid, root, kubeconfig, env, digest)

    def _materialise(self, cluster_uuid: str, root: Path, digest: str, content: bytes, kuberc: bytes) -> bool:
        """Ensure ``root`` holds exactly this content; returns True when it was (re)built."""
        _mkdir_private(self.clusters_dir)
        if _is_current(root, digest, content, kuberc):
            return False
        staging = self.clusters_dir / f".{cluster_uuid}.new-{secrets.token_hex(6)}"
        try:
            _build_dir(staging, digest, content, kuberc)
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


def _absent(credentials: Any) -> bool:
    return credentials is None or credentials == "" or credentials == {}


def _safe_path(helm: str, kubectl: str, exec_plugins: tuple[str, ...] = ()) -> str:
    """A minimal PATH: the directories of helm and kubectl, those where the worker finds the
    allowlisted bare-name exec plugins (on its own PATH), then /usr/bin:/bin."""
    dirs: list[str] = []
    for binary in (helm, kubectl):
        resolved = binary if os.sep in binary else shutil.which(binary)
        if resolved:
            dirs.append(os.path.dirname(os.path.abspath(resolved)))
    for plugin in exec_plugins:
        if os.sep in plugin:
            continue  # an absolute path needs no PATH entry
        found = shutil.which(plugin)
        if found:
            dirs.append(os.path.dirname(os.path.abspath(found)))
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


def _build_dir(root: Path, digest: str, content: bytes, kuberc: bytes) -> None:
    for sub in ("", ".kube", ".config", ".config/helm", ".cache", ".cache/helm", ".local", ".local/share",
                ".local/share/helm"):
        _mkdir_private(root / sub if sub else root)
    _write_private(root / ".kube" / "config", content)
    _write_private(root / KUBERC_FILE, kuberc)
    # The hash goes last: a directory without it (crash mid-build) is never considered current.
    _write_private(root / HASH_FILE, digest.encode())


def _is_current(root: Path, digest: str, content: bytes, kuberc: bytes) -> bool:
    """True when ``root`` is a real directory (0700) with this hash and this exact kubeconfig and
    kuberc (0600)."""
    try:
        if root.is_symlink() or not root.is_dir() or (root.stat().st_mode & 0o777) != 0o700:
            return False
        if (root / HASH_FILE).read_bytes() != digest.encode():
            return False
        for path, expected in ((root / ".kube" / "config", content), (root / KUBERC_FILE, kuberc)):
            if path.is_symlink() or (path.stat().st_mode & 0o777) != 0o600:
                return False
            if path.read_bytes() != expected:
                return False
        return True
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
