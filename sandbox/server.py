"""HTTP front of the sandbox: routing, auth, content types, watches, faults, counters and the
``/_sandbox/...`` control surface. HTTP/1.1 keep-alive with a Content-Length on every non-watch
response; watches stream chunked JSON lines.
"""

from __future__ import annotations

import hmac
import json
import select
import socket
import ssl
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import yaml

from . import protobuf
from .api import ApiError, bad_request, not_found
from .resources import ResourceType
from .selectors import labels_match, parse_field_selector, parse_label_selector
from .store import dumps

if TYPE_CHECKING:
    from .cluster import SandboxCluster

MAX_BODY = 32 * 1024 * 1024
VERSION_INFO = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0",
    "gitCommit": "sandbox",
    "gitTreeState": "clean",
    "buildDate": "2024-08-13T00:00:00Z",
    "goVersion": "go1.22.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}
OPENAPI_V2_PROTO = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
PATCH_TYPES = {
    "application/apply-patch+yaml": "apply",
    "application/strategic-merge-patch+json": "strategic",
    "application/merge-patch+json": "merge",
    "application/json-patch+json": "json",
}
NOT_FOUND_MSG = "the server could not find the requested resource"


def path_template(path: str, is_plural: Any = None) -> str:
    """``/api/v1/namespaces/ns1/secrets/x`` -> ``/api/v1/namespaces/{ns}/secrets/{name}``."""
    segs = [s for s in path.split("/") if s]
    if len(segs) >= 2 and segs[0] == "api":
        head, rest = segs[:2], segs[2:]
    elif len(segs) >= 3 and segs[0] == "apis":
        head, rest = segs[:3], segs[3:]
    else:
        return "/" + "/".join(segs)
    if len(rest) >= 2 and rest[0] == "namespaces":
        if len(rest) >= 3 and rest[2] not in ("status", "finalize"):
            rest = ["namespaces", "{ns}", rest[2]] + (["{name}"] if len(rest) >= 4 else []) + rest[4:]
        else:
            rest = ["namespaces", "{name}"] + rest[2:]
    elif len(rest) >= 2:
        rest = [rest[0], "{name}"] + rest[2:]
    return "/" + "/".join(head + rest)


class SandboxHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], cluster: SandboxCluster, ssl_context: ssl.SSLContext | None):
        self.cluster = cluster
        self.ssl_context = ssl_context
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        self.stopping = threading.Event()
        super().__init__(address, Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, in the connection's own thread, so a slow client cannot
        # stall the accept loop.
        conn = request
        try:
            # Responses are single writes, but without NODELAY a chunked watch or a client that
            # splits headers and body meets delayed ACKs (40 ms per request).
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        if self.ssl_context is not None:
            try:
                request.settimeout(10)
                conn = self.ssl_context.wrap_socket(request, server_side=True)
                conn.settimeout(None)
            except (OSError, ssl.SSLError):
                return
        with self.conn_lock:
            self.connections.add(conn)
        try:
            self.RequestHandlerClass(conn, client_address, self)  # type: ignore[arg-type]
        finally:
            with self.conn_lock:
                self.connections.discard(conn)
            if conn is not request:
                try:
                    conn.close()
                except OSError:
                    pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, ssl.SSLError, TimeoutError, BrokenPipeError)):
            return
        traceback.print_exc()

    def close_connections(self) -> None:
        with self.conn_lock:
            conns = list(self.connections)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Drop(Exception):
    """Close the connection without an answer (injected fault)."""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sandbox-kube/1"
    timeout = 300  # idle keep-alive connections end by themselves
    server: SandboxHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by design
        pass

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

    # ---- plumbing ----

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    raise ApiError(413, "RequestEntityTooLarge", "request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(8)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ApiError(413, "RequestEntityTooLarge", "request body too large")
        return self.rfile.read(length) if length > 0 else b""

    def _send(
        self,
        code: int,
        data: bytes,
        content_type: str = "application/json",
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(code)
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        # Headers and body in one write (one TLS record, one segment).
        self._headers_buffer.append(b"\r\n" + (data if self.command != "HEAD" else b""))  # type: ignore[attr-defined]
        self.flush_headers()

    def _send_json(self, code: int, obj: Any, content_type: str = "application/json") -> None:
        self._send(code, dumps(obj), content_type)

    def _send_error(self, err: ApiError) -> None:
        self._send_json(err.code, err.status())

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization") or ""
        token = self.server.cluster.token
        return header.startswith("Bearer ") and hmac.compare_digest(
            header[7:].strip().encode(), token.encode()
        )

    def _handle(self) -> None:
        cluster = self.server.cluster
        try:
            try:
                body = self._read_body()
            except (ValueError, OSError):
                self.close_connection = True
                self._send_error(bad_request("malformed request body framing"))
                return
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            if url.path.startswith("/_sandbox"):
                if not self._authorized():
                    self._send_error(ApiError(401, "Unauthorized", "Unauthorized"))
                    return
                self._control(url.path, query, body)
                return
            is_watch = self.command == "GET" and query.get("watch") in ("true", "1")
            key = f"{'WATCH' if is_watch else self.command} {path_template(url.path)}"
            cluster.count(key)
            if not self._authorized():
                self._send_error(ApiError(401, "Unauthorized", "Unauthorized"))
                return
            fault, latency = cluster.fault_decision(key)
            if latency > 0:
                time.sleep(latency)
            if fault == "drop":
                raise _Drop()
            if fault == "error":
                err = injected_error(cluster.config.error_status)
                after = cluster.config.retry_after
                if after is None:
                    self._send_error(err)
                else:
                    self._send(err.code, dumps(err.status()), extra_headers={"Retry-After": str(after)})
                return
            self._route(url.path, query, body)
        except _Drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        except ApiError as e:
            self._send_error(e)
        except (BrokenPipeError, ConnectionError, ssl.SSLError, TimeoutError):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - a bug answers 500, never a hung connection
            traceback.print_exc()
            self.close_connection = True
            try:
                self._send_error(ApiError(500, "InternalError", f"Internal error occurred: {e}"))
            except OSError:
                pass

    # ---- routing ----

    def _route(self, path: str, query: dict[str, str], body: bytes) -> None:
        cluster = self.server.cluster
        registry = cluster.registry
        segs = [s for s in path.split("/") if s]
        if (
            self.command != "GET"
            and self.command != "HEAD"
            and (len(segs) < 3 or segs[0] not in ("api", "apis"))
        ):
            raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on {path}")
        if segs in (["version"],):
            self._send_json(200, VERSION_INFO)
            return
        if segs and segs[0] in ("healthz", "readyz", "livez"):
            self._send(200, b"ok", "text/plain; charset=utf-8")
            return
        if segs == ["openapi", "v2"]:
            if "protobuf" in (self.headers.get("Accept") or ""):
                self._send(200, b"", OPENAPI_V2_PROTO)
            else:
                self._send_json(
                    200,
                    {
                        "swagger": "2.0",
                        "info": {"title": "sandbox", "version": "v1.31.0"},
                        "paths": {},
                        "definitions": {},
                    },
                )
            return
        if segs in (["api"], ["apis"]):
            disco = self._aggregated_version()
            if disco:
                self._send_json(
                    200,
                    registry.aggregated(segs == ["api"], disco),
                    f"application/json;g=apidiscovery.k8s.io;v={disco};as=APIGroupDiscoveryList",
                )
            elif segs == ["api"]:
                self._send_json(
                    200,
                    {
                        "kind": "APIVersions",
                        "versions": ["v1"],
                        "serverAddressByClientCIDRs": [
                            {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{cluster.port}"}
                        ],
                    },
                )
            else:
                self._send_json(200, registry.group_list())
            return
        if len(segs) == 2 and segs[0] == "apis":
            versions = registry.versions_of(segs[1])
            if not versions:
                raise ApiError(404, "NotFound", NOT_FOUND_MSG)
            vs = [{"groupVersion": f"{segs[1]}/{v}", "version": v} for v in versions]
            self._send_json(
                200,
                {
                    "kind": "APIGroup",
                    "apiVersion": "v1",
                    "name": segs[1],
                    "versions": vs,
                    "preferredVersion": vs[0],
                },
            )
            return
        if segs[:1] == ["api"] and len(segs) >= 2:
            group, version, rest = "", segs[1], segs[2:]
        elif segs[:1] == ["apis"] and len(segs) >= 3:
            group, version, rest = segs[1], segs[2], segs[3:]
        else:
            raise ApiError(404, "NotFound", NOT_FOUND_MSG)
        if not rest:
            doc = registry.resource_list(group, version)
            if doc is None:
                raise ApiError(404, "NotFound", NOT_FOUND_MSG)
            self._send_json(200, doc)
            return
        namespace: str | None = None
        if (
            rest[0] == "namespaces"
            and len(rest) >= 3
            and not (group == "" and len(rest) == 3 and rest[2] in ("status", "finalize"))
        ):
            namespace, rest = rest[1], rest[2:]
        if len(rest) > 3:
            raise ApiError(404, "NotFound", NOT_FOUND_MSG)
        rt = registry.lookup(group, version, rest[0])
        if rt is None or (namespace is not None and not rt.namespaced):
            raise ApiError(404, "NotFound", NOT_FOUND_MSG)
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else ""
        if sub and sub not in rt.subresources and not (rt.key == ("", "namespaces") and sub == "finalize"):
            raise ApiError(404, "NotFound", NOT_FOUND_MSG)
        if rt.namespaced and namespace is None and name is not None:
            raise ApiError(404, "NotFound", NOT_FOUND_MSG)
        self._resource(rt, namespace, name, sub, query, body)

    def _aggregated_version(self) -> str | None:
        if not self.server.cluster.aggregated_discovery:
            return None
        for part in (self.headers.get("Accept") or "").split(","):
            params = dict(p.strip().partition("=")[::2] for p in part.split(";")[1:])
            if (
                params.get("g") == "apidiscovery.k8s.io"
                and params.get("as") == "APIGroupDiscoveryList"
                and params.get("v") in ("v2", "v2beta1")
            ):
                return params["v"]
        return None

    def _decode(self, body: bytes, allow_yaml: bool = False) -> Any:
        ctype = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip().lower()
        if ctype == "application/vnd.kubernetes.protobuf":
            try:
                return protobuf.decode(body)
            except ValueError as e:
                raise bad_request(f"unable to decode protobuf body: {e}") from e
        if ctype in ("application/json", "application/yaml") or ctype in PATCH_TYPES:
            try:
                return json.loads(body)
            except ValueError as e:
                if ctype == "application/yaml" or ctype == "application/apply-patch+yaml":
                    try:
                        return yaml.safe_load(body)
                    except yaml.YAMLError as ye:
                        raise bad_request(f"unable to decode YAML body: {ye}") from ye
                raise bad_request(f"unable to decode JSON body: {e}") from e
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - "
            f"accepted media types include: application/json, "
            f"application/yaml, application/vnd.kubernetes.protobuf "
            f'(got "{ctype}")',
        )

    def _resource(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str | None,
        sub: str,
        query: dict[str, str],
        body: bytes,
    ) -> None:
        api = self.server.cluster.api
        ns = namespace or ""
        dry_run = query.get("dryRun") == "All"
        method = self.command
        if method in ("GET", "HEAD") and name is None:
            if query.get("watch") in ("true", "1"):
                self._watch(rt, namespace, query)
                return
            try:
                limit = int(query.get("limit") or 0)
            except ValueError as e:
                raise bad_request("limit must be an integer") from e
            self._send_json(
                200,
                api.list(
                    rt,
                    namespace,
                    query.get("labelSelector", ""),
                    query.get("fieldSelector", ""),
                    limit,
                    query.get("continue", ""),
                ),
            )
        elif method in ("GET", "HEAD") and name is not None:  # name None: the list branch above
            obj = api.read(rt, ns, name)
            if sub == "log":
                self._send(200, self._pod_log(obj, query).encode(), "text/plain")
            elif sub == "scale":
                self._send_json(200, api.scale_of(rt, obj))
            else:
                self._send_json(200, obj)
        elif method == "POST":
            if name is not None:
                raise ApiError(405, "MethodNotAllowed", "POST is not allowed on a named object")
            if rt.namespaced and namespace is None:
                raise ApiError(404, "NotFound", NOT_FOUND_MSG)
            self._send_json(201, api.create(rt, ns, self._decode(body), dry_run))
        elif method == "PUT":
            if name is None:
                raise ApiError(405, "MethodNotAllowed", "PUT needs an object name")
            if sub == "scale":
                self._send_json(200, api.set_scale(rt, ns, name, self._decode(body)))
            else:
                self._send_json(200, api.replace(rt, ns, name, self._decode(body), sub, dry_run))
        elif method == "PATCH":
            if name is None:
                raise ApiError(405, "MethodNotAllowed", "PATCH needs an object name")
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            ptype = PATCH_TYPES.get(ctype)
            if ptype is None:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - "
                    f"accepted media types include: {', '.join(PATCH_TYPES)}",
                )
            patch_body = self._decode(body)
            if sub == "scale":
                from .patch import json_merge, json_patch, strategic_merge

                current = api.scale_of(rt, api.read(rt, ns, name))
                fn = {"merge": json_merge, "strategic": strategic_merge, "json": json_patch}.get(
                    ptype, json_merge
                )
                try:
                    new_scale = fn(current, patch_body)
                except ValueError as e:
                    raise bad_request(str(e)) from e
                self._send_json(200, api.set_scale(rt, ns, name, new_scale))
                return
            code, obj = api.patch(rt, ns, name, ptype, patch_body, sub, dry_run)
            self._send_json(code, obj)
        elif method == "DELETE":
            options = self._decode(body) if body else {}
            if not isinstance(options, dict):
                raise bad_request("DeleteOptions must be an object")
            if name is None:
                self._send_json(
                    200,
                    api.delete_collection(
                        rt, namespace, query.get("labelSelector", ""), query.get("fieldSelector", ""), options
                    ),
                )
            else:
                if query.get("propagationPolicy"):
                    options.setdefault("propagationPolicy", query["propagationPolicy"])
                self._send_json(200, api.delete(rt, ns, name, options, dry_run))
        else:
            raise ApiError(405, "MethodNotAllowed", f"method {method} not allowed")

    def _pod_log(self, pod: dict[str, Any], query: dict[str, str]) -> str:
        containers = [c.get("name", "") for c in (pod.get("spec") or {}).get("containers") or []]
        container = query.get("container") or (containers[0] if containers else "")
        if container not in containers:
            raise bad_request(f"container {container} is not valid for pod {pod['metadata']['name']}")
        custom = (pod["metadata"].get("annotations") or {}).get("sandbox.kduflow.dev/log")
        if custom is not None:
            return custom if custom.endswith("\n") or not custom else custom + "\n"
        phase = (pod.get("status") or {}).get("phase", "Pending")
        return (
            f"sandbox: container {container} of pod {pod['metadata']['name']} started\n"
            f"sandbox: phase {phase}\n"
        )

    # ---- watches ----

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _client_gone(self) -> bool:
        # A watch client never sends on its connection while the stream is open: anything readable
        # (EOF or otherwise) means it went away.
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def _watch(self, rt: ResourceType, namespace: str | None, query: dict[str, str]) -> None:
        cluster = self.server.cluster
        store, api = cluster.store, cluster.api
        try:
            timeout = float(query.get("timeoutSeconds") or 1800)
            reqs = parse_label_selector(query.get("labelSelector", ""))
            fpred = parse_field_selector(query.get("fieldSelector", ""))
        except ValueError as e:
            raise bad_request(f"invalid watch parameters: {e}") from e
        send_initial = query.get("sendInitialEvents") == "true"
        if send_initial and query.get("resourceVersionMatch") not in (None, "", "NotOlderThan"):
            raise ApiError(422, "Invalid", "sendInitialEvents requires resourceVersionMatch=NotOlderThan")
        rv_param = query.get("resourceVersion", "")
        multi_version = len([t for t in cluster.registry.all() if t.key == rt.key]) > 1
        gone = False
        with store.lock:
            if send_initial or rv_param in ("", "0"):
                initial = api.select(
                    rt, namespace, query.get("labelSelector", ""), query.get("fieldSelector", "")
                )
                last = store.rv
            else:
                try:
                    last = int(rv_param)
                except ValueError as e:
                    raise bad_request(f"invalid resourceVersion {rv_param!r}") from e
                initial = []
                gone = last < store.oldest_replayable_rv()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.close_connection = True
        if gone:
            err = ApiError(
                410, "Expired", f"too old resource version: {last} ({store.oldest_replayable_rv() + 1})"
            )
            self._chunk(b'{"type":"ERROR","object":' + dumps(err.status()) + b"}\n")
            self._chunk(b"")
            return
        for obj in initial:
            self._chunk(b'{"type":"ADDED","object":' + dumps(obj) + b"}\n")
        if send_initial:
            mark = {
                "kind": rt.kind,
                "apiVersion": rt.api_version,
                "metadata": {
                    "resourceVersion": str(last),
                    "annotations": {"k8s.io/initial-events-end": "true"},
                },
            }
            self._chunk(b'{"type":"BOOKMARK","object":' + dumps(mark) + b"}\n")
        deadline = time.monotonic() + timeout
        while not self.server.stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with store.cond:
                if store.rv <= last:
                    store.cond.wait(min(1.0, remaining))
                if last < store.oldest_replayable_rv():  # this watcher fell behind the event log
                    events, expired = [], True
                else:
                    events, expired = store.events_after(last), False
                last = store.rv
            if expired:
                err = ApiError(410, "Expired", "too old resource version")
                self._chunk(b'{"type":"ERROR","object":' + dumps(err.status()) + b"}\n")
                break
            for ev in events:
                if ev.key != rt.key or (namespace is not None and ev.namespace != namespace):
                    continue
                if not labels_match(reqs, ev.labels) or not fpred(ev.fields):
                    continue
                data = ev.body
                if multi_version:
                    data = dumps(dict(json.loads(data), apiVersion=rt.api_version))
                self._chunk(b'{"type":"' + ev.type.encode() + b'","object":' + data + b"}\n")
            if self._client_gone():
                return
        try:
            self._chunk(b"")
        except OSError:
            pass

    # ---- control surface ----

    def _control(self, path: str, query: dict[str, str], body: bytes) -> None:
        cluster = self.server.cluster
        what = path[len("/_sandbox") :].strip("/")
        method = self.command
        if what == "counters" and method == "GET":
            self._send_json(
                200,
                {
                    "counters": cluster.counters(),
                    "total": cluster.total_requests(),
                    "faults": cluster.fault_counts(),
                },
            )
        elif what == "counters" and method == "DELETE":
            cluster.reset_counters()
            self._send_json(200, {"ok": True})
        elif what == "dump" and method == "GET":
            self._send_json(200, cluster.dump())
        elif what == "reset" and method == "POST":
            cluster.reset()
            self._send_json(200, {"ok": True})
        elif what == "config" and method == "GET":
            self._send_json(200, cluster.config.as_dict())
        elif what == "config" and method in ("POST", "PATCH", "PUT"):
            try:
                changes = json.loads(body or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("the body must be a JSON object")
                cluster.configure(**changes)
            except (ValueError, TypeError) as e:
                raise bad_request(f"invalid sandbox config: {e}") from e
            self._send_json(200, cluster.config.as_dict())
        elif what.startswith("objects/") and method == "GET":
            plural = what[len("objects/") :]
            try:
                items = cluster.list(plural, query.get("namespace") or None, query.get("labelSelector", ""))
            except ValueError as e:
                raise not_found_plain(str(e)) from e
            self._send_json(200, {"items": items})
        else:
            raise ApiError(404, "NotFound", f"unknown sandbox control endpoint {method} {path}")


#: Status reasons of injected error answers, as a real API server words them.
_FAULT_REASONS = {
    400: ("BadRequest", "the server rejected our request for an unknown reason"),
    401: ("Unauthorized", "Unauthorized"),
    403: ("Forbidden", "forbidden: the sandbox refuses this request (injected fault)"),
    404: ("NotFound", NOT_FOUND_MSG),
    409: ("Conflict", "the object has been modified; please apply your changes to the latest version"),
    429: ("TooManyRequests", "the server has received too many requests and has asked us to try again later"),
    500: ("InternalError", "Internal error occurred: sandbox injected fault"),
    503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
    504: ("Timeout", "the server was unable to return a response in the time allotted"),
}


def injected_error(status: int) -> ApiError:
    """The Status answer of an injected error with HTTP ``status``."""
    reason, message = _FAULT_REASONS.get(status, ("InternalError", f"sandbox injected fault {status}"))
    return ApiError(status, reason, message)


def not_found_plain(message: str) -> ApiError:
    return ApiError(404, "NotFound", message)


__all__ = ["SandboxHTTPServer", "path_template", "not_found"]
