"""Test helpers of the status area: a tiny canned Kubernetes API server and helm release records.

``FakeKube`` serves GET requests for objects it holds (list with ``labelSelector`` equality terms
and ``fieldSelector=metadata.name=``, get by name, discovery of custom group-versions, /version)
over HTTP/1.1 keep-alive on 127.0.0.1, optionally TLS with client-certificate checking. It counts
requests and connections so tests can assert the client's cost.
"""

from __future__ import annotations

import base64
import copy
import datetime
import gzip
import http.server
import json
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from activities.kubeapi import _BUILTIN, split_api_version
from sandbox.tls import CertificateAuthority


def plural_of(api_version: str, kind: str) -> tuple[str, bool]:
    group, _ = split_api_version(api_version)
    return _BUILTIN.get((group, kind)) or (kind.lower() + "s", True)


class FakeKube:
    """A canned, read-only Kubernetes API. Use as a context manager (or start()/stop())."""

    def __init__(self, *, token: str | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.objects: list[dict[str, Any]] = []
        #: Custom kinds served through discovery: api_version -> [(kind, plural, namespaced)].
        self.custom: dict[str, list[tuple[str, str, bool]]] = {}
        self.token = token
        self.paths: list[str] = []
        self.auth_headers: list[str | None] = []
        self.connections = 0
        #: Status codes to answer the next requests with (popped first).
        self.fail_next: list[int] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in two writes; without NODELAY, Nagle + delayed ACK add
                # 40 ms per request (a real API server sets it too).
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with fake._lock:
                    fake.connections += 1

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                return

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                with fake._lock:
                    fake.paths.append(self.path)
                    fake.auth_headers.append(self.headers.get("Authorization"))
                    forced = fake.fail_next.pop(0) if fake.fail_next else None
                if forced is not None:
                    return self._send(forced, {"kind": "Status", "code": forced, "message": "forced failure"})
                if fake.token is not None and self.headers.get("Authorization") != f"Bearer {fake.token}":
                    return self._send(
                        401,
                        {"kind": "Status", "code": 401, "reason": "Unauthorized", "message": "Unauthorized"},
                    )
                code, body = fake.route(self.path)
                self._send(code, body)

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeKube:
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kubeconfig(self, **user: Any) -> dict[str, Any]:
        cluster: dict[str, Any] = {"server": self.url}
        if self.scheme == "https":
            cluster["insecure-skip-tls-verify"] = True
        if not user and self.token:
            user = {"token": self.token}
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": "u", "user": user}],
            "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u", "namespace": "ns1"}}],
            "current-context": "ctx",
        }

    # -------------------------------------------------------------------------------------------

    def add(self, *objs: dict[str, Any]) -> None:
        with self._lock:
            for obj in objs:
                self.objects.append(copy.deepcopy(obj))

    def replace(self, obj: dict[str, Any]) -> None:
        """Swap in a new version of an object (same kind, namespace, name)."""
        with self._lock:
            key = _key(obj)
            self.objects = [o for o in self.objects if _key(o) != key]
            self.objects.append(copy.deepcopy(obj))

    def remove(self, kind: str, name: str) -> None:
        with self._lock:
            self.objects = [
                o for o in self.objects if not (o["kind"] == kind and o["metadata"]["name"] == name)
            ]

    def reset_counts(self) -> None:
        with self._lock:
            self.paths.clear()
            self.auth_headers.clear()

    def route(self, raw_path: str) -> tuple[int, dict[str, Any]]:
        url = urllib.parse.urlsplit(raw_path)
        query = dict(urllib.parse.parse_qsl(url.query))
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        if parts == ["version"]:
            return 200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0"}
        if parts[:1] == ["api"] and len(parts) >= 2:
            api_version, rest = parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            api_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            return 404, _status404(url.path)
        if not rest:
            resources = [
                {"name": plural, "kind": kind, "namespaced": namespaced, "verbs": ["get", "list"]}
                for kind, plural, namespaced in self.custom.get(api_version, [])
            ]
            if (
                not resources
                and api_version not in ("v1",)
                and not any(o["apiVersion"] == api_version for o in self.objects)
            ):
                return 404, _status404(url.path)
            return 200, {"kind": "APIResourceList", "groupVersion": api_version, "resources": resources}
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        plural, name = rest[0], (rest[1] if len(rest) > 1 else None)
        with self._lock:
            matching = [
                o
                for o in self.objects
                if o["apiVersion"] == api_version
                and self._plural(o) == plural
                and (namespace is None or o["metadata"].get("namespace") == namespace)
            ]
        if name is not None:
            for obj in matching:
                if obj["metadata"]["name"] == name:
                    return 200, copy.deepcopy(obj)
            return 404, _status404(url.path)
        selector = query.get("labelSelector", "")
        fsel = query.get("fieldSelector", "")
        items = []
        for obj in matching:
            labels = obj["metadata"].get("labels") or {}
            if selector and not all(
                labels.get(k) == v for k, v in (t.split("=", 1) for t in selector.split(","))
            ):
                continue
            if fsel.startswith("metadata.name=") and obj["metadata"]["name"] != fsel.split("=", 1)[1]:
                continue
            item = copy.deepcopy(obj)
            # Like the real server: list items carry no kind/apiVersion.
            item.pop("kind")
            item.pop("apiVersion")
            items.append(item)
        list_kind = (matching[0]["kind"] if matching else self._kind_for(api_version, plural)) + "List"
        return 200, {
            "kind": list_kind,
            "apiVersion": api_version,
            "metadata": {"resourceVersion": "1"},
            "items": items,
        }

    def _plural(self, obj: dict[str, Any]) -> str:
        for kind, plural, _ in self.custom.get(obj["apiVersion"], []):
            if kind == obj["kind"]:
                return plural
        return plural_of(obj["apiVersion"], obj["kind"])[0]

    def _kind_for(self, api_version: str, plural: str) -> str:
        group, _ = split_api_version(api_version)
        for (g, kind), (p, _) in _BUILTIN.items():
            if g == group and p == plural:
                return kind
        return plural.rstrip("s").capitalize()


def _key(obj: dict[str, Any]) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace") or "", obj["metadata"]["name"]


def _status404(path: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": f"{path} not found",
        "reason": "NotFound",
        "code": 404,
    }


# ------------------------------------------------------------------------------------------------
# helm release records
# ------------------------------------------------------------------------------------------------


@dataclass
class Rev:
    version: int
    status: str = "deployed"
    description: str = "Install complete"
    manifest: str = ""
    config: dict[str, Any] | None = None
    notes: str = ""
    chart: str = "demo"
    chart_version: str = "0.1.0"
    app_version: str = "1.16.0"


def release_json(name: str, namespace: str, rev: Rev, helm4: bool = False) -> dict[str, Any]:
    now = datetime.datetime(2026, 11, 25, 20, 0, rev.version, tzinfo=datetime.UTC).isoformat()
    doc: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "version": rev.version,
        "info": {
            "first_deployed": now,
            "last_deployed": now,
            "description": rev.description,
            "status": rev.status,
            "notes": rev.notes,
        },
        "chart": {
            "metadata": {
                "name": rev.chart,
                "version": rev.chart_version,
                "appVersion": rev.app_version,
                "apiVersion": "v2",
            },
            "values": {"replicaCount": 1},
            "templates": [],
        },
        "config": rev.config or {},
        "manifest": rev.manifest,
        "hooks": [],
    }
    if helm4:
        doc["apply_method"] = "ssa"
    else:
        doc["info"]["deleted"] = ""
    return doc


def release_secret(
    name: str, namespace: str, rev: Rev, *, gzipped: bool = True, helm4: bool = False, driver: str = "secret"
) -> dict[str, Any]:
    """A release storage object as the JSON API returns it (Secret or ConfigMap driver)."""
    payload = json.dumps(release_json(name, namespace, rev, helm4)).encode()
    if gzipped:
        payload = gzip.compress(payload)
    inner = base64.b64encode(payload)
    data = base64.b64encode(inner).decode() if driver == "secret" else inner.decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret" if driver == "secret" else "ConfigMap",
        "metadata": {
            "name": f"sh.helm.release.v1.{name}.v{rev.version}",
            "namespace": namespace,
            "labels": {"name": name, "owner": "helm", "status": rev.status, "version": str(rev.version)},
        },
        **({"type": "helm.sh/release.v1"} if driver == "secret" else {}),
        "data": {"release": data},
    }


@dataclass
class Pki:
    """A throwaway CA with a server certificate for 127.0.0.1 and a client certificate (PEM bytes)."""

    ca_pem: bytes
    server_cert: Path
    server_key: Path
    client_cert_pem: bytes
    client_key_pem: bytes


def make_pki(directory: Path) -> Pki:
    ca = CertificateAuthority("kduflow-test-ca")
    server_cert, server_key = ca.issue("127.0.0.1", ("127.0.0.1", "kube.test"))
    client_cert, client_key = ca.issue("kduflow-client", client=True)
    (directory / "server.crt").write_bytes(server_cert)
    (directory / "server.key").write_bytes(server_key)
    return Pki(ca.pem, directory / "server.crt", directory / "server.key", client_cert, client_key)


@contextmanager
def tls_fake_kube(pki: Pki, *, require_client_cert: bool) -> Iterator[FakeKube]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=pki.ca_pem.decode())
    with FakeKube(tls=ctx) as fake:
        yield fake
