"""Minimal async Kubernetes REST client, built from a kubeconfig, for cheap status polling.

Why not helm/kubectl: a status poller that spawns a process per release every few seconds is too
expensive, so status reads go to the API directly: a few kept-alive HTTP(S) connections per
client, JSON only, GET only.

Two transports share one interface (:class:`KubeApiBase`):

* :class:`KubeApi` speaks HTTP(S) itself (stdlib ``http.client`` on request threads; up to
  ``MAX_CONNECTIONS`` connections per client, kept alive and reused). It understands the
  kubeconfig's current context: server,
  ``certificate-authority-data``, ``insecure-skip-tls-verify``, ``tls-server-name``, user ``token``,
  ``client-certificate-data`` + ``client-key-data``, ``username``/``password``.
* :class:`KubectlRawApi` runs ``kubectl get --raw`` per request. It exists for kubeconfigs whose user
  authenticates through an allowlisted ``exec`` plugin (EKS, GKE, OIDC...) or impersonates
  (``as``...), or whose cluster uses a ``proxy-url``: :meth:`KubeApi.from_kubeconfig` raises
  :class:`KubeApiUnsupported` for those and the caller falls back to it (see
  ``activities/status.py``), paying a process per request only for such clusters.

Every kubeconfig first passes :func:`activities.kubeconfig_policy.check_kubeconfig`: this client
never reads a file a kubeconfig names (``tokenFile``, ``client-certificate``, ``client-key``,
``certificate-authority`` are refused), so it cannot be made to send a worker file to a server.

Built with ``private_networks`` (the status activities pass the worker's
``KDUFLOW_ALLOW_PRIVATE_NETWORKS``), :class:`KubeApi` resolves the server's name itself at each
connection, judges every address with the rule of
:func:`activities.kubeconfig_policy.check_cluster_servers`, and connects only to the addresses it
judged: a name whose DNS answers change after the registration check (DNS rebinding) still cannot
make it connect to an internal address. A refusal is ``CredentialsInvalid`` with that function's
message; the addresses go to the log only.

Errors are the classes of :mod:`activities.errors` (the activity boundary turns them into
ApplicationErrors with ``to_application_error``): ``ClusterUnreachable`` (connection refused/reset,
timeout; retryable), ``ServerError`` (5xx, 429, other unexpected answers; retryable),
``CredentialsInvalid`` (401, 403, TLS verification failure; not retryable), ``InvalidInput`` (400/422,
missing context; not retryable), and ``CredentialsInvalid`` for a kubeconfig the policy refuses
(not retryable). A 404 raises :class:`KubeNotFound`, which callers handle;
:meth:`KubeApiBase.get_object` turns it into ``None``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import functools
import http.client
import ipaddress
import json
import logging
import os
import shutil
import socket
import ssl
import tempfile
import threading
import urllib.parse
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from temporalio import activity

from activities import errors, kubeconfig_policy, url_policy

#: The SDK's adapter: inside an activity, records carry its ids (message and `extra`).
log = activity.LoggerAdapter(logging.getLogger(__name__), None)

DEFAULT_TIMEOUT = 10.0
#: Requests one client (one cluster) sends at once, each on its own kept-alive connection: status
#: reports of many releases on one cluster must not queue behind each other on one connection.
MAX_CONNECTIONS = 8
#: Threads that run the blocking HTTP requests of every client of the process (not the event loop's
#: default executor, which has cpu_count + 4 threads shared with everything else).
REQUEST_THREADS = 32
_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _request_threads() -> concurrent.futures.ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(REQUEST_THREADS, "kduflow-kubeapi")
        return _executor
#: Like client-go: a 429 or 5xx answer with Retry-After is retried after the delay it asks for
#: (capped), a few times, before it becomes an error.
RETRY_AFTER_ATTEMPTS = 3
RETRY_AFTER_MAX = 10.0
_USER_AGENT = "kduflow-status/0.1"


class KubeApiUnsupported(Exception):
    """The kubeconfig needs something this client does not do (exec plugin, impersonation, proxy).

    Not a KduflowError: the caller is expected to fall back to :class:`KubectlRawApi`.
    """


class KubeNotFound(Exception):
    """HTTP 404 from the API server (object, kind or path absent)."""

    def __init__(self, path: str) -> None:
        super().__init__(f"not found: {path}")
        self.path = path


def _error(type_name: str, message: str, *, status: int = 0) -> errors.KduflowError:
    cls: type[errors.KduflowError] = getattr(errors, type_name)
    return cls(message, details={"http_status": status} if status else None)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds; an HTTP date or garbage counts as 1 s)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return 1.0
    return seconds if 0 <= seconds < float("inf") else 1.0


def _status_error(status: int, path: str, body: bytes) -> Exception:
    """Map a non-2xx answer to the error tree (the server's Status message, never the request body)."""
    message = ""
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            message = str(parsed.get("message") or parsed.get("reason") or "")
    except ValueError:
        message = body[:200].decode("utf-8", "replace").strip()
    text = f"Kubernetes API {status} for GET {path.split('?', 1)[0]}" + (
        f": {message[:300]}" if message else ""
    )
    if status == 404:
        return KubeNotFound(path)
    if status in (401, 403):
        return _error("CredentialsInvalid", text, status=status)
    if status >= 500 or status == 429:
        return _error("ServerError", text, status=status)
    if status in (400, 422):
        return _error("InvalidInput", text, status=status)
    return _error("ServerError", text, status=status)


# ------------------------------------------------------------------------------------------------
# Kind -> (plural, namespaced) for built-in kinds, keyed by API group (scope and plural never
# change between versions). Anything else goes through discovery, cached per client.
# ------------------------------------------------------------------------------------------------
_BUILTIN: dict[tuple[str, str], tuple[str, bool]] = {
    ("", "Pod"): ("pods", True),
    ("", "Service"): ("services", True),
    ("", "ServiceAccount"): ("serviceaccounts", True),
    ("", "ConfigMap"): ("configmaps", True),
    ("", "Secret"): ("secrets", True),
    ("", "PersistentVolumeClaim"): ("persistentvolumeclaims", True),
    ("", "PersistentVolume"): ("persistentvolumes", False),
    ("", "Namespace"): ("namespaces", False),
    ("", "Node"): ("nodes", False),
    ("", "Endpoints"): ("endpoints", True),
    ("", "Event"): ("events", True),
    ("", "LimitRange"): ("limitranges", True),
    ("", "ResourceQuota"): ("resourcequotas", True),
    ("", "ReplicationController"): ("replicationcontrollers", True),
    ("apps", "Deployment"): ("deployments", True),
    ("apps", "StatefulSet"): ("statefulsets", True),
    ("apps", "DaemonSet"): ("daemonsets", True),
    ("apps", "ReplicaSet"): ("replicasets", True),
    ("apps", "ControllerRevision"): ("controllerrevisions", True),
    ("batch", "Job"): ("jobs", True),
    ("batch", "CronJob"): ("cronjobs", True),
    ("autoscaling", "HorizontalPodAutoscaler"): ("horizontalpodautoscalers", True),
    ("networking.k8s.io", "Ingress"): ("ingresses", True),
    ("networking.k8s.io", "NetworkPolicy"): ("networkpolicies", True),
    ("networking.k8s.io", "IngressClass"): ("ingressclasses", False),
    ("policy", "PodDisruptionBudget"): ("poddisruptionbudgets", True),
    ("rbac.authorization.k8s.io", "Role"): ("roles", True),
    ("rbac.authorization.k8s.io", "RoleBinding"): ("rolebindings", True),
    ("rbac.authorization.k8s.io", "ClusterRole"): ("clusterroles", False),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"): ("clusterrolebindings", False),
    ("storage.k8s.io", "StorageClass"): ("storageclasses", False),
    ("apiextensions.k8s.io", "CustomResourceDefinition"): ("customresourcedefinitions", False),
    ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"): (
        "validatingwebhookconfigurations",
        False,
    ),
    ("admissionregistration.k8s.io", "MutatingWebhookConfiguration"): (
        "mutatingwebhookconfigurations",
        False,
    ),
    ("scheduling.k8s.io", "PriorityClass"): ("priorityclasses", False),
}


def split_api_version(api_version: str) -> tuple[str, str]:
    """``"apps/v1"`` -> ``("apps", "v1")``; ``"v1"`` -> ``("", "v1")``."""
    group, _, version = api_version.rpartition("/")
    return group, version


def api_prefix(api_version: str) -> str:
    group, version = split_api_version(api_version)
    return f"/api/{version}" if not group else f"/apis/{group}/{version}"


def resource_path(api_version: str, plural: str, namespace: str | None, name: str | None = None) -> str:
    """REST path of a collection (``name`` None) or object; ``namespace`` None/"" = cluster scope."""
    path = api_prefix(api_version)
    if namespace:
        path += f"/namespaces/{urllib.parse.quote(namespace, safe='')}"
    path += f"/{plural}"
    if name is not None:
        path += f"/{urllib.parse.quote(name, safe='')}"
    return path


class KubeApiBase:
    """Transport-independent part: JSON decoding, paths, discovery cache, request counting."""

    def __init__(self, namespace: str = "default") -> None:
        #: The kubeconfig context's namespace ("default" when it has none).
        self.namespace = namespace or "default"
        #: Number of requests sent so far (tests and benchmarks read it).
        self.requests = 0
        #: The last request paths, newest last (bounded; for tests and debugging).
        self.request_log: collections.deque[str] = collections.deque(maxlen=200)
        self._discovery: dict[str, dict[str, tuple[str, bool]]] = {}

    async def _get_raw(self, path_qs: str) -> tuple[int, bytes, float | None]:  # pragma: no cover
        """One GET: status, body and the Retry-After delay in seconds (None without one)."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release the connection. Idempotent."""

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """GET ``path`` (with query ``params``) and decode the JSON object.

        Raises KubeNotFound on 404, a KduflowError otherwise (see the module docstring).
        """
        path_qs = path + ("?" + urllib.parse.urlencode(dict(params)) if params else "")
        for attempt in range(RETRY_AFTER_ATTEMPTS + 1):
            self.requests += 1
            self.request_log.append(path_qs)
            status, body, retry_after = await self._get_raw(path_qs)
            throttled = status == 429 or status >= 500
            if not throttled or retry_after is None or attempt == RETRY_AFTER_ATTEMPTS:
                break
            log.debug("Kubernetes API %s for GET %s: retrying after %.1fs", status, path, retry_after)
            await asyncio.sleep(min(retry_after, RETRY_AFTER_MAX))
        if not 200 <= status < 300:
            raise _status_error(status, path_qs, body)
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise _error("ServerError", f"Kubernetes API sent invalid JSON for {path}: {exc}") from None
        if not isinstance(data, dict):
            raise _error("ServerError", f"Kubernetes API sent a non-object for {path}")
        return data

    async def version(self) -> dict[str, Any]:
        """``GET /version`` (gitVersion, major, minor, ...)."""
        return await self.get("/version")

    async def list(
        self,
        group_version: str,
        plural: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        """Items of a collection, each with ``apiVersion`` and ``kind`` filled in.

        ``namespace`` None lists across all namespaces (or a cluster-scoped kind). A kind the
        server does not serve raises KubeNotFound.
        """
        params: dict[str, str] = {}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        data = await self.get(resource_path(group_version, plural, namespace), params or None)
        # The server leaves kind/apiVersion out of list items; put them back so readiness rules
        # and callers see complete objects.
        list_kind = str(data.get("kind") or "")
        item_kind = list_kind[: -len("List")] if list_kind.endswith("List") else ""
        items = []
        for item in data.get("items") or []:
            if isinstance(item, dict):
                item.setdefault("apiVersion", data.get("apiVersion") or group_version)
                if item_kind:
                    item.setdefault("kind", item_kind)
                items.append(item)
        return items

    async def resource_for(self, api_version: str, kind: str) -> tuple[str, bool] | None:
        """``(plural, namespaced)`` for a kind, or None when the server does not serve it.

        Built-in kinds need no request; others cost one discovery GET per group-version per client.
        """
        group, _version = split_api_version(api_version)
        builtin = _BUILTIN.get((group, kind))
        if builtin is not None:
            return builtin
        known = self._discovery.get(api_version)
        if known is None:
            try:
                data = await self.get(api_prefix(api_version))
            except KubeNotFound:
                data = {}
            known = {}
            for res in data.get("resources") or []:
                name = str(res.get("name") or "")
                if res.get("kind") and name and "/" not in name:
                    known[str(res["kind"])] = (name, bool(res.get("namespaced")))
            self._discovery[api_version] = known
        return known.get(kind)

    async def get_object(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        """One object, or None if it (or its kind) does not exist. ``namespace`` is ignored for
        cluster-scoped kinds."""
        resource = await self.resource_for(api_version, kind)
        if resource is None:
            return None
        plural, namespaced = resource
        try:
            obj = await self.get(resource_path(api_version, plural, namespace if namespaced else None, name))
        except KubeNotFound:
            return None
        obj.setdefault("apiVersion", api_version)
        obj.setdefault("kind", kind)
        return obj


# ------------------------------------------------------------------------------------------------
# kubeconfig -> connection parameters
# ------------------------------------------------------------------------------------------------


def load_kubeconfig(kubeconfig: Mapping[str, Any] | str | os.PathLike[str]) -> Mapping[str, Any] | str:
    """The kubeconfig as a mapping, or the text of the kubeconfig file at a path (at most
    ``kubeconfig_policy.MAX_TEXT_BYTES`` + 1 bytes are read, so an oversized file is refused)."""
    if isinstance(kubeconfig, Mapping):
        return kubeconfig
    path = Path(kubeconfig)
    try:
        with open(path, "rb") as handle:
            data = handle.read(kubeconfig_policy.MAX_TEXT_BYTES + 1)
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _error("InvalidInput", f"cannot read kubeconfig {path}: {type(exc).__name__}") from None


def _named(entries: Any, name: str, what: str) -> dict[str, Any]:
    for entry in entries or []:
        if isinstance(entry, Mapping) and entry.get("name") == name:
            return dict(entry.get(what) or {})
    raise _error("InvalidInput", f"kubeconfig has no {what} named {name!r}")


def _b64(data: str, field: str) -> bytes:
    try:
        return base64.b64decode(data, validate=False)
    except (ValueError, TypeError):
        raise _error("InvalidInput", f"kubeconfig {field} is not valid base64") from None


class _AddressRefused(Exception):
    """The server's name resolves to an address outside the allowed networks (log text only)."""


def _connect_within(
    networks: tuple[url_policy.IPNetwork, ...],
    address: tuple[str, int],
    timeout: Any = socket._GLOBAL_DEFAULT_TIMEOUT,  # type: ignore[attr-defined]
    source_address: tuple[str, int] | None = None,
) -> socket.socket:
    """``socket.create_connection`` that first judges every address the name resolves to and then
    connects only to those addresses (no second resolution between the check and the connect).

    Raises:
        _AddressRefused: an address is internal and outside ``networks``.
        OSError: resolution or connection failed (as ``socket.create_connection`` would).
    """
    host, port = address
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = [str(info[4][0]) for info in infos]
    problems = [p for p in (url_policy.address_problem(a, networks) for a in addresses) if p]
    if problems:
        raise _AddressRefused(f"{host} resolves to {', '.join(addresses)}: {'; '.join(problems)}")
    error: OSError = OSError(f"{host} resolves to no address")
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


class _HTTPConnection(http.client.HTTPConnection):
    """HTTP whose connections go through :func:`_connect_within` when ``networks`` is given."""

    def __init__(
        self, host: str, port: int | None, *, timeout: float,
        networks: tuple[url_policy.IPNetwork, ...] | None = None,
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        if networks is not None:
            self._create_connection = functools.partial(_connect_within, networks)


class _HTTPSConnection(http.client.HTTPSConnection):
    """HTTPS with a separate TLS server name (kubeconfig ``tls-server-name``), connecting through
    :func:`_connect_within` when ``networks`` is given."""

    def __init__(
        self,
        host: str,
        port: int | None,
        *,
        context: ssl.SSLContext,
        timeout: float,
        server_name: str | None,
        networks: tuple[url_policy.IPNetwork, ...] | None = None,
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._server_name = server_name
        if networks is not None:
            self._create_connection = functools.partial(_connect_within, networks)

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._server_name or self.host)  # type: ignore[attr-defined]


class KubeApi(KubeApiBase):
    """HTTP(S) transport: up to ``max_connections`` kept-alive connections, requests run on threads."""

    def __init__(
        self,
        server: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        namespace: str = "default",
        tls_server_name: str | None = None,
        private_networks: Iterable[str | url_policy.IPNetwork] | None = None,
        server_field: str = "clusters[0].cluster.server",
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        super().__init__(namespace)
        url = urllib.parse.urlsplit(server)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise _error(
                "InvalidInput",
                f"kubeconfig cluster server {server!r} is not an http(s) URL",
            )
        self.server = server
        self._scheme = url.scheme
        self._host = url.hostname
        self._port = url.port
        self._base_path = url.path.rstrip("/")
        self._ssl = ssl_context
        self._tls_server_name = tls_server_name
        self._headers = {"Accept": "application/json", "User-Agent": _USER_AGENT, **(headers or {})}
        self._timeout = timeout
        #: Kept-alive connections not in use, and the number of requests allowed at once.
        self._idle: list[http.client.HTTPConnection] = []
        self._pool_lock = threading.Lock()
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False
        #: None: connect wherever the server resolves; else only to public addresses or these networks.
        self._networks: tuple[url_policy.IPNetwork, ...] | None = (
            None if private_networks is None
            else tuple(ipaddress.ip_network(net, strict=False) for net in private_networks)
        )
        self._server_field = server_field

    @classmethod
    def from_kubeconfig(
        cls,
        kubeconfig: Mapping[str, Any] | str | os.PathLike[str],
        *,
        context: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        exec_plugins: Collection[str] | None = None,
        allow_proxy: bool | None = None,
        private_networks: Iterable[str | url_policy.IPNetwork] | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> KubeApi:
        """Build a client for the kubeconfig's current (or named) context.

        ``kubeconfig`` is a mapping or the path of a kubeconfig file (e.g. a cluster env's
        materialised one). It passes the kubeconfig policy first; no file path inside it is ever
        read. ``exec_plugins``/``allow_proxy`` are the worker's settings; ``None`` (the default)
        leaves the exec command and ``proxy-url`` unjudged here, because this client never runs a
        plugin nor uses a proxy: such kubeconfigs raise KubeApiUnsupported and the kubectl fallback
        runs with the cluster env's kubeconfig, which ``ClusterEnvs`` checked against the settings.
        ``private_networks`` (the worker's ``KDUFLOW_ALLOW_PRIVATE_NETWORKS``) makes every
        connection judge the addresses it connects to (see the module docstring); ``None`` (the
        default) connects wherever the server resolves.

        Raises errors.CredentialsInvalid for a refused kubeconfig, KubeApiUnsupported for exec
        users, impersonation and proxies (fall back to KubectlRawApi), errors.InvalidInput for a
        missing context, cluster or user. Client certificate/key data are written to a private 0700
        temporary directory only long enough for ``ssl.load_cert_chain`` and removed right after.
        """
        config = kubeconfig_policy.check_kubeconfig(
            load_kubeconfig(kubeconfig),
            exec_plugins=exec_plugins,
            allow_proxy=True if allow_proxy is None else allow_proxy,
        )
        ctx_name = context or config.get("current-context")
        if not ctx_name:
            raise _error("InvalidInput", "kubeconfig has no current-context")
        ctx = _named(config.get("contexts"), str(ctx_name), "context")
        cluster = _named(config.get("clusters"), str(ctx.get("cluster")), "cluster")
        cluster_index = next(
            (index for index, entry in enumerate(config.get("clusters") or [])
             if isinstance(entry, Mapping) and entry.get("name") == str(ctx.get("cluster"))),
            0,
        )
        user = _named(config.get("users"), str(ctx.get("user")), "user") if ctx.get("user") else {}
        if user.get("exec"):
            raise KubeApiUnsupported("kubeconfig user authenticates through an exec plugin")
        if any(user.get(key) for key in ("as", "as-uid", "as-groups", "as-user-extra")):
            raise KubeApiUnsupported("kubeconfig user impersonates another identity")
        if cluster.get("proxy-url"):
            raise KubeApiUnsupported("kubeconfig cluster uses a proxy-url")
        server = str(cluster.get("server") or "")
        headers: dict[str, str] = {}
        token = user.get("token")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        elif user.get("username") is not None and user.get("password") is not None:
            basic = base64.b64encode(f"{user['username']}:{user['password']}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"

        ssl_context: ssl.SSLContext | None = None
        if server.startswith("https:"):
            ssl_context = ssl.create_default_context()
            if cluster.get("insecure-skip-tls-verify"):
                ssl_context.check_hostname = False
                ssl_context.verify_mode = ssl.CERT_NONE
            elif cluster.get("certificate-authority-data"):
                pem = _b64(str(cluster["certificate-authority-data"]), "certificate-authority-data")
                try:
                    ssl_context.load_verify_locations(cadata=pem.decode())
                except (ssl.SSLError, UnicodeDecodeError):
                    raise _error(
                        "InvalidInput",
                        "kubeconfig certificate-authority-data is not a PEM certificate",
                    ) from None
            _load_client_cert(ssl_context, user)
        return cls(
            server,
            ssl_context=ssl_context,
            headers=headers,
            timeout=timeout,
            namespace=str(ctx.get("namespace") or "default"),
            tls_server_name=cluster.get("tls-server-name"),
            private_networks=private_networks,
            server_field=f"clusters[{cluster_index}].cluster.server",
            max_connections=max_connections,
        )

    def _new_conn(self) -> http.client.HTTPConnection:
        if self._scheme == "https":
            return _HTTPSConnection(
                self._host,
                self._port,
                context=self._ssl or ssl.create_default_context(),
                timeout=self._timeout,
                server_name=self._tls_server_name,
                networks=self._networks,
            )
        return _HTTPConnection(self._host, self._port, timeout=self._timeout, networks=self._networks)

    def _checkout(self) -> http.client.HTTPConnection | None:
        with self._pool_lock:
            return self._idle.pop() if self._idle else None

    def _checkin(self, conn: http.client.HTTPConnection) -> None:
        with self._pool_lock:
            if not self._closed:
                self._idle.append(conn)
                return
        conn.close()  # close() ran during the request

    def _request_sync(self, path_qs: str) -> tuple[int, bytes, float | None]:
        """One GET on an idle kept-alive connection, or a new one; runs in a request thread."""
        if self._closed:
            raise _error("ClusterUnreachable", "Kubernetes API client is closed")
        conn = self._checkout()
        for attempt in range(2):
            reused = conn is not None
            if conn is None:
                conn = self._new_conn()
            try:
                conn.request("GET", self._base_path + path_qs, headers=self._headers)
                resp = conn.getresponse()
                body = resp.read()
            except _AddressRefused as exc:
                conn.close()
                field = self._server_field
                log.warning("kubeconfig refused: %s: %s (not in KDUFLOW_ALLOW_PRIVATE_NETWORKS)", field, exc)
                raise errors.CredentialsInvalid(
                    f"kubeconfig refused: {field}: {kubeconfig_policy.SERVER_REFUSED}",
                    details={"field": field},
                ) from None
            except ssl.SSLCertVerificationError as exc:
                conn.close()
                raise _error(
                    "CredentialsInvalid",
                    f"TLS verification of {self.server} failed: {exc.verify_message}",
                ) from None
            except (
                http.client.RemoteDisconnected,
                ConnectionResetError,
                BrokenPipeError,
                http.client.BadStatusLine,
            ) as exc:
                conn.close()
                conn = None
                # A kept-alive connection the server closed while idle: GET is safe to resend once.
                if reused and attempt == 0:
                    continue
                what = type(exc).__name__
                raise _error("ClusterUnreachable", f"Kubernetes API {self.server}: {what}") from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                what = "timed out" if isinstance(exc, socket.timeout | TimeoutError) else str(exc)
                message = f"Kubernetes API {self.server} unreachable: {what}"
                raise _error("ClusterUnreachable", message) from None
            if resp.will_close:
                conn.close()
            else:
                self._checkin(conn)
            return resp.status, body, _retry_after(resp.getheader("Retry-After"))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _get_raw(self, path_qs: str) -> tuple[int, bytes, float | None]:
        # At most max_connections requests of this client at once; the others queue here, on the
        # event loop, rather than each holding a request thread while they wait.
        async with self._slots:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(_request_threads(), self._request_sync, path_qs)

    async def close(self) -> None:
        """Close the idle connections; those in use are closed when their request ends."""
        with self._pool_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _load_client_cert(ctx: ssl.SSLContext, user: Mapping[str, Any]) -> None:
    cert_data, key_data = user.get("client-certificate-data"), user.get("client-key-data")
    if not cert_data:
        return
    if not key_data:
        raise _error("InvalidInput", "kubeconfig has client-certificate-data but no client-key-data")
    tmp = tempfile.mkdtemp(prefix="kduflow-kube-")  # mkdtemp creates it 0700
    try:
        cert_file = os.path.join(tmp, "client.crt")
        _write_private(cert_file, _b64(str(cert_data), "client-certificate-data"))
        key_file = os.path.join(tmp, "client.key")
        _write_private(key_file, _b64(str(key_data), "client-key-data"))
        try:
            ctx.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError):
            raise _error("InvalidInput", "kubeconfig client certificate/key cannot be loaded") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


class KubectlRawApi(KubeApiBase):
    """Fallback transport: ``kubectl get --raw PATH`` per request, for exec/impersonation/proxy kubeconfigs.

    ``env`` is the whole process environment (the cluster env: KUBECONFIG, HOME, PATH...); the
    kubeconfig never appears on argv. Costs a process per request, so only used when
    :meth:`KubeApi.from_kubeconfig` raised KubeApiUnsupported.
    """

    def __init__(
        self, kubectl: str, env: Mapping[str, str], *, timeout: float = 30.0, namespace: str = "default"
    ) -> None:
        super().__init__(namespace)
        self._kubectl = kubectl
        self._env = dict(env)
        self._timeout = timeout

    async def _get_raw(self, path_qs: str) -> tuple[int, bytes, float | None]:
        # kubectl (client-go) honours Retry-After itself.
        proc = await asyncio.create_subprocess_exec(
            self._kubectl,
            "get",
            "--raw",
            path_qs,
            f"--request-timeout={int(self._timeout)}s",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self._timeout + 5)
        except TimeoutError:
            raise _error("ClusterUnreachable", "kubectl get --raw timed out") from None
        finally:
            # Cancelled or timed out: never leave the kubectl child behind.
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if proc.returncode == 0:
            return 200, out, None
        text = err.decode("utf-8", "replace")
        if "(NotFound)" in text:
            return 404, json.dumps({"message": errors.short_message(text)}).encode(), None
        # kubectl's messages are helm's (same client-go): the shared classifier knows them.
        raise errors.classify_helm_stderr(text, proc.returncode, context="kubectl get --raw")
