"""The sandbox over HTTP: discovery, auth, CRUD and error Status objects, patches, protobuf bodies,
watches, cascade deletion, controllers, faults, counters, the control surface, several clusters,
the CLI, and kubectl/helm features beyond the helm table."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandbox import SandboxCluster, protobuf
from tests.support.sandbox import ApiClient, demo_chart, run_tool, sandbox, sandbox_cluster, tool_env  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster() -> Iterator[SandboxCluster]:
    with sandbox_cluster(ready_delay=0.1, lb_delay=0.2) as c:
        yield c


@pytest.fixture
def client(cluster: SandboxCluster) -> Iterator[ApiClient]:
    c = ApiClient(cluster)
    yield c
    c.close()


_counter = iter(range(1, 10**6))


@pytest.fixture
def ns(client: ApiClient) -> str:
    name = f"t{next(_counter)}"
    status, _ = client.json("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    assert status == 201
    return name


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def deployment(name: str, replicas: int = 1, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    labels = {"app": name}
    tmeta: dict[str, Any] = {"labels": labels}
    if annotations:
        tmeta["annotations"] = annotations
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": tmeta,
                "spec": {
                    "containers": [{"name": "app", "image": "nginx:1", "ports": [{"containerPort": 80}]}]
                },
            },
        },
    }


# ---- discovery, version, openapi, auth ----


def test_version_discovery_and_openapi(client: ApiClient) -> None:
    status, version = client.json("GET", "/version")
    assert status == 200 and (version["major"], version["minor"]) == ("1", "31")
    assert client.json("GET", "/api")[1] == {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{client.conn.port}"}
        ],
    }
    groups = {g["name"]: g for g in client.json("GET", "/apis")[1]["groups"]}
    assert groups["autoscaling"]["preferredVersion"]["version"] == "v2"
    assert {
        "apps",
        "batch",
        "networking.k8s.io",
        "policy",
        "rbac.authorization.k8s.io",
        "storage.k8s.io",
        "apiextensions.k8s.io",
    } <= set(groups)
    names = {r["name"]: r for r in client.json("GET", "/apis/apps/v1")[1]["resources"]}
    assert (
        names["deployments"]["namespaced"] and "deployments/scale" in names and "deployments/status" in names
    )
    core = {r["name"]: r for r in client.json("GET", "/api/v1")[1]["resources"]}
    assert core["pods/log"]["verbs"] == ["get"] and core["namespaces"]["namespaced"] is False
    status, _, body = client.request("GET", "/openapi/v3")
    assert status == 404 and json.loads(body)["kind"] == "Status"
    status, headers, body = client.request(
        "GET", "/openapi/v2", headers={"Accept": "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"}
    )
    assert (status, body, headers["content-type"]) == (
        200,
        b"",
        "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
    )
    assert client.json("GET", "/apis/nope.example.com/v1")[0] == 404


def test_aggregated_discovery() -> None:
    accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
    with sandbox_cluster(aggregated_discovery=True, tls=False) as c:
        client = ApiClient(c)
        status, headers, body = client.request("GET", "/apis", headers={"Accept": accept})
        assert (
            headers["content-type"] == "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
        )
        doc = json.loads(body)
        apps = next(i for i in doc["items"] if i["metadata"]["name"] == "apps")
        dep = next(r for r in apps["versions"][0]["resources"] if r["resource"] == "deployments")
        assert dep["scope"] == "Namespaced" and {s["subresource"] for s in dep["subresources"]} == {
            "status",
            "scale",
        }
        _, headers, body = client.request("GET", "/api", headers={"Accept": accept})
        assert json.loads(body)["items"][0]["versions"][0]["version"] == "v1"
        # A client that does not ask for it gets the legacy documents.
        assert client.json("GET", "/apis")[1]["kind"] == "APIGroupList"


@pytest.mark.parametrize("token", [pytest.param("", id="missing"), pytest.param("wrong", id="wrong")])
def test_bad_token_gets_401_status(cluster: SandboxCluster, token: str) -> None:
    client = ApiClient(cluster, token=token)
    for path in ("/version", "/api/v1/namespaces", "/_sandbox/counters"):
        status, body = client.json("GET", path)
        assert status == 401 and body["kind"] == "Status" and body["reason"] == "Unauthorized", path


# ---- CRUD and errors ----


def test_crud_metadata_and_generation(client: ApiClient, ns: str) -> None:
    status, obj = client.json("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", deployment("web"))
    assert status == 201
    meta = obj["metadata"]
    assert meta["uid"] and meta["resourceVersion"] and meta["creationTimestamp"] and meta["generation"] == 1
    assert (
        obj["spec"]["progressDeadlineSeconds"] == 600 and obj["spec"]["strategy"]["type"] == "RollingUpdate"
    )
    path = f"/apis/apps/v1/namespaces/{ns}/deployments/web"
    status, obj = client.json(
        "PATCH", path, {"metadata": {"labels": {"x": "1"}}}, "application/merge-patch+json"
    )
    assert status == 200 and obj["metadata"]["generation"] == 1  # metadata only: no bump
    status, obj = client.json("PATCH", path, {"spec": {"replicas": 3}}, "application/merge-patch+json")
    assert obj["metadata"]["generation"] == 2 and obj["metadata"]["uid"] == meta["uid"]
    stale = dict(obj, metadata=dict(obj["metadata"], resourceVersion=meta["resourceVersion"]))
    status, err = client.json("PUT", path, stale)
    assert (status, err["reason"]) == (409, "Conflict")
    fresh = dict(obj, spec=dict(obj["spec"], replicas=2))
    status, obj = client.json("PUT", path, fresh)
    assert status == 200 and obj["spec"]["replicas"] == 2 and obj["metadata"]["generation"] == 3
    status, lst = client.json("GET", f"/apis/apps/v1/namespaces/{ns}/deployments")
    assert lst["kind"] == "DeploymentList" and [i["metadata"]["name"] for i in lst["items"]] == ["web"]
    assert int(lst["metadata"]["resourceVersion"]) >= int(obj["metadata"]["resourceVersion"])


@pytest.mark.parametrize(
    ("method", "path", "body", "ctype", "code", "reason"),
    [
        pytest.param(
            "GET", "/api/v1/namespaces/{ns}/configmaps/nope", None, None, 404, "NotFound", id="get-missing"
        ),
        pytest.param(
            "POST",
            "/api/v1/namespaces/{ns}/configmaps",
            {"metadata": {"name": "dup"}},
            None,
            409,
            "AlreadyExists",
            id="duplicate",
        ),
        pytest.param(
            "POST",
            "/api/v1/namespaces/absent-ns/configmaps",
            {"metadata": {"name": "a"}},
            None,
            404,
            "NotFound",
            id="namespace-missing",
        ),
        pytest.param(
            "POST",
            "/api/v1/namespaces/{ns}/configmaps",
            b"{not json",
            None,
            400,
            "BadRequest",
            id="malformed-json",
        ),
        pytest.param(
            "POST",
            "/api/v1/namespaces/{ns}/configmaps",
            b"x",
            "text/plain",
            415,
            "UnsupportedMediaType",
            id="unknown-content-type",
        ),
        pytest.param(
            "POST",
            "/api/v1/namespaces/{ns}/configmaps",
            b"k8s\x00\xff",
            "application/vnd.kubernetes.protobuf",
            400,
            "BadRequest",
            id="malformed-protobuf",
        ),
        pytest.param(
            "POST",
            "/api/v1/namespaces/{ns}/configmaps",
            {"kind": "Secret", "metadata": {"name": "k"}},
            None,
            400,
            "BadRequest",
            id="kind-mismatch",
        ),
        pytest.param(
            "POST", "/api/v1/namespaces/{ns}/configmaps", {"metadata": {}}, None, 422, "Invalid", id="no-name"
        ),
        pytest.param(
            "POST", "/api/v1/namespaces/{ns}/configmaps", [1, 2], None, 400, "BadRequest", id="not-object"
        ),
        pytest.param(
            "GET",
            "/apis/example.com/v1/namespaces/{ns}/widgets",
            None,
            None,
            404,
            "NotFound",
            id="unknown-kind",
        ),
        pytest.param(
            "GET",
            "/api/v1/namespaces/{ns}/configmaps/dup/bogus",
            None,
            None,
            404,
            "NotFound",
            id="unknown-subresource",
        ),
        pytest.param("GET", "/nothing/here", None, None, 404, "NotFound", id="unknown-path"),
        pytest.param(
            "GET",
            "/api/v1/namespaces/{ns}/configmaps?labelSelector=a%3D(",
            None,
            None,
            400,
            "BadRequest",
            id="bad-selector",
        ),
        pytest.param(
            "PATCH",
            "/api/v1/namespaces/{ns}/configmaps/dup",
            [{"op": "test", "path": "/data/k", "value": "no"}],
            "application/json-patch+json",
            422,
            "Invalid",
            id="json-patch-test-fails",
        ),
        pytest.param(
            "PATCH",
            "/api/v1/namespaces/{ns}/configmaps/dup",
            {"a": 1},
            "application/json",
            415,
            "UnsupportedMediaType",
            id="patch-wrong-type",
        ),
        pytest.param(
            "PATCH",
            "/api/v1/namespaces/{ns}/configmaps/nope",
            {"a": 1},
            "application/merge-patch+json",
            404,
            "NotFound",
            id="patch-missing",
        ),
        pytest.param(
            "DELETE",
            "/api/v1/namespaces/{ns}/configmaps/nope",
            None,
            None,
            404,
            "NotFound",
            id="delete-missing",
        ),
        pytest.param(
            "POST",
            "/apis/apps/v1/namespaces/{ns}/deployments",
            {"metadata": {"name": "b"}, "spec": {"template": {"metadata": {"annotations": {"x": True}}}}},
            None,
            400,
            "BadRequest",
            id="non-string-annotation",
        ),
    ],
)
def test_error_status_objects(
    client: ApiClient, ns: str, method: str, path: str, body: Any, ctype: str | None, code: int, reason: str
) -> None:
    client.json(
        "POST", f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": "dup"}, "data": {"k": "v"}}
    )
    status, headers, payload = client.request(method, path.format(ns=ns), body, ctype or "application/json")
    doc = json.loads(payload)
    assert (status, doc["kind"], doc["status"], doc["code"], doc["reason"]) == (
        code,
        "Status",
        "Failure",
        code,
        reason,
    )
    assert headers["content-length"] == str(len(payload))
    # The connection stays usable after an error.
    assert client.json("GET", "/version")[0] == 200


def test_selectors_over_http(client: ApiClient, ns: str) -> None:
    for name, labels in (
        ("a", {"app": "x", "tier": "1"}),
        ("b", {"app": "y"}),
        ("c", {"app": "x", "tier": "2"}),
    ):
        client.json(
            "POST", f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": name, "labels": labels}}
        )

    def names(query: str) -> list[str]:
        status, doc = client.json("GET", f"/api/v1/namespaces/{ns}/configmaps?{query}")
        assert status == 200, doc
        return [i["metadata"]["name"] for i in doc["items"]]

    assert names("labelSelector=app%3Dx") == ["a", "c"]
    assert names("labelSelector=app%3D%3Dx,tier!%3D1") == ["c"]
    assert names("labelSelector=tier%20in%20(1,2)") == ["a", "c"]
    assert names("labelSelector=tier%20notin%20(1)") == ["b", "c"]
    assert names("labelSelector=!tier") == ["b"]
    assert names("labelSelector=tier") == ["a", "c"]
    assert names("fieldSelector=metadata.name%3Db") == ["b"]
    assert names(f"fieldSelector=metadata.namespace%3D{ns},metadata.name!%3Db") == ["a", "c"]
    _, page = client.json("GET", f"/api/v1/namespaces/{ns}/configmaps?limit=2")
    assert len(page["items"]) == 2 and page["metadata"]["continue"]
    _, rest = client.json(
        "GET", f"/api/v1/namespaces/{ns}/configmaps?limit=2&continue={page['metadata']['continue']}"
    )
    assert [i["metadata"]["name"] for i in rest["items"]] == ["c"]
    _, all_ns = client.json("GET", "/api/v1/configmaps?labelSelector=app%3Dy")
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in all_ns["items"]] == [(ns, "b")]


def test_patch_types_over_http(client: ApiClient, ns: str) -> None:
    base = f"/apis/apps/v1/namespaces/{ns}/deployments"
    client.json("POST", base, deployment("web"))
    smp = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [{"name": "app", "image": "nginx:2"}, {"name": "side", "image": "busybox"}]
                }
            }
        }
    }
    status, obj = client.json("PATCH", f"{base}/web", smp, "application/strategic-merge-patch+json")
    containers = obj["spec"]["template"]["spec"]["containers"]
    assert status == 200 and [(c["name"], c["image"]) for c in containers] == [
        ("app", "nginx:2"),
        ("side", "busybox"),
    ]
    assert containers[0]["ports"] == [{"containerPort": 80}]
    status, obj = client.json(
        "PATCH",
        f"{base}/web",
        [{"op": "replace", "path": "/spec/replicas", "value": 2}],
        "application/json-patch+json",
    )
    assert obj["spec"]["replicas"] == 2
    # Server-side apply creates when absent (201), then updates (200) and keeps allocated fields.
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "s"},
        "spec": {"ports": [{"port": 80}]},
    }
    path = f"/api/v1/namespaces/{ns}/services/s?fieldManager=helm&force=false"
    status, created = client.json("PATCH", path, svc, "application/apply-patch+yaml")
    assert status == 201 and created["spec"]["clusterIP"]
    svc["spec"]["ports"] = [{"port": 81}]
    status, applied = client.json("PATCH", path, yaml.safe_dump(svc).encode(), "application/apply-patch+yaml")
    assert status == 200 and applied["spec"]["ports"][0]["port"] == 81
    assert applied["spec"]["clusterIP"] == created["spec"]["clusterIP"]
    assert applied["metadata"]["uid"] == created["metadata"]["uid"]


def test_protobuf_bodies(client: ApiClient, ns: str) -> None:
    meta = protobuf.enc_field(1, "sh.helm.release.v1.r.v1") + protobuf.enc_map(
        11, {"owner": "helm", "status": "deployed"}
    )
    raw = (
        protobuf.enc_field(1, meta)
        + protobuf.enc_map(2, {"release": b"H4sI\x00"})
        + protobuf.enc_field(3, "helm.sh/release.v1")
    )
    status, obj = client.json(
        "POST",
        f"/api/v1/namespaces/{ns}/secrets",
        protobuf.encode_unknown("v1", "Secret", raw),
        "application/vnd.kubernetes.protobuf",
    )
    assert status == 201 and obj["metadata"]["namespace"] == ns and obj["type"] == "helm.sh/release.v1"
    assert base64.b64decode(obj["data"]["release"]) == b"H4sI\x00"
    status, lst = client.json(
        "GET", f"/api/v1/namespaces/{ns}/secrets?labelSelector=owner%3Dhelm,status%3Ddeployed"
    )
    assert [i["metadata"]["name"] for i in lst["items"]] == ["sh.helm.release.v1.r.v1"]
    # An unconditional PUT without resourceVersion, as helm sends it.
    meta2 = protobuf.enc_field(1, "sh.helm.release.v1.r.v1") + protobuf.enc_map(
        11, {"owner": "helm", "status": "superseded"}
    )
    status, obj = client.json(
        "PUT",
        f"/api/v1/namespaces/{ns}/secrets/sh.helm.release.v1.r.v1",
        protobuf.encode_unknown(
            "v1", "Secret", protobuf.enc_field(1, meta2) + protobuf.enc_map(2, {"release": b"x"})
        ),
        "application/vnd.kubernetes.protobuf",
    )
    assert status == 200 and obj["metadata"]["labels"]["status"] == "superseded"
    opts = protobuf.encode_unknown("v1", "DeleteOptions", protobuf.enc_field(4, "Background"))
    status, _ = client.json(
        "DELETE",
        f"/api/v1/namespaces/{ns}/secrets/sh.helm.release.v1.r.v1",
        opts,
        "application/vnd.kubernetes.protobuf",
    )
    assert status == 200
    assert client.json("GET", f"/api/v1/namespaces/{ns}/secrets/sh.helm.release.v1.r.v1")[0] == 404


# ---- watches ----


def read_events(resp: http.client.HTTPResponse, count: int) -> list[dict[str, Any]]:
    events = []
    while len(events) < count:
        line = resp.readline()
        if not line:
            break
        events.append(json.loads(line))
    return events


def test_classic_watch_replays_and_streams(cluster: SandboxCluster, client: ApiClient, ns: str) -> None:
    base = f"/api/v1/namespaces/{ns}/configmaps"
    client.json("POST", base, {"metadata": {"name": "before"}})
    _, lst = client.json("GET", base)
    rv = lst["metadata"]["resourceVersion"]
    client.json("POST", base, {"metadata": {"name": "after-list", "labels": {"w": "1"}}})
    watcher = ApiClient(cluster)
    resp = watcher.stream(f"{base}?watch=true&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=2")
    assert resp.status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
    [replayed] = read_events(resp, 1)
    assert (replayed["type"], replayed["object"]["metadata"]["name"]) == ("ADDED", "after-list")
    assert replayed["object"]["kind"] == "ConfigMap" and replayed["object"]["apiVersion"] == "v1"
    client.json("PATCH", f"{base}/before", {"data": {"a": "b"}}, "application/merge-patch+json")
    client.json("DELETE", f"{base}/before")
    client.json("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": f"other-{ns}"}})
    events = read_events(resp, 2)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("MODIFIED", "before"),
        ("DELETED", "before"),
    ]
    t0 = time.monotonic()
    assert resp.read() == b""  # closed at timeoutSeconds, nothing else from other namespaces
    assert time.monotonic() - t0 < 3
    # A label-selected watch on the same log sees only its objects.
    selected = ApiClient(cluster).stream(
        f"{base}?watch=true&resourceVersion={rv}&labelSelector=w%3D1&timeoutSeconds=1"
    )
    assert [e["object"]["metadata"]["name"] for e in read_events(selected, 5)] == ["after-list"]


def test_watchlist_sends_initial_events_then_bookmark(
    cluster: SandboxCluster, client: ApiClient, ns: str
) -> None:
    base = f"/api/v1/namespaces/{ns}/pods"
    for name in ("p1", "p2"):
        client.json(
            "POST", base, {"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
        )
    resp = ApiClient(cluster).stream(
        f"{base}?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
        f"&allowWatchBookmarks=true&timeoutSeconds=3"
    )
    events = read_events(resp, 3)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events[:2]] == [
        ("ADDED", "p1"),
        ("ADDED", "p2"),
    ]
    mark = events[2]
    assert mark["type"] == "BOOKMARK" and mark["object"]["kind"] == "Pod"
    assert mark["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    client.json("DELETE", f"{base}/p1")
    later: list[tuple[str, str]] = []
    while ("DELETED", "p1") not in later:
        [e] = read_events(resp, 1)
        later.append((e["type"], e["object"]["metadata"]["name"]))
    status, err = client.json("GET", f"{base}?watch=true&sendInitialEvents=true&resourceVersionMatch=Exact")
    assert (status, err["reason"]) == (422, "Invalid")


def test_watch_from_compacted_resource_version_gets_410() -> None:
    with sandbox_cluster(tls=False) as c:
        client = ApiClient(c)
        _, lst = client.json("GET", "/api/v1/namespaces")
        c.reset()  # clears the event log, as a compaction would
        resp = ApiClient(c).stream(
            f"/api/v1/namespaces?watch=true&resourceVersion={lst['metadata']['resourceVersion']}"
        )
        [err] = read_events(resp, 1)
        assert (
            err["type"] == "ERROR" and err["object"]["code"] == 410 and err["object"]["reason"] == "Expired"
        )


def test_watch_threads_end_when_clients_disconnect() -> None:
    with sandbox_cluster(tls=True) as c:
        server = c._server
        assert server is not None
        baseline = threading.active_count()
        watchers = []
        for _ in range(5):
            w = ApiClient(c)
            resp = w.stream("/api/v1/namespaces/default/pods?watch=true&timeoutSeconds=600")
            assert resp.status == 200
            watchers.append(w)
        wait_for(lambda: len(server.connections) == 5)
        for w in watchers:
            w.conn.sock.close() if w.conn.sock else None
            w.close()
        wait_for(lambda: len(server.connections) == 0, timeout=5)
        wait_for(lambda: threading.active_count() <= baseline, timeout=5)


# ---- deletion ----


def test_cascade_delete_and_orphan(cluster: SandboxCluster, client: ApiClient, ns: str) -> None:
    base = f"/apis/apps/v1/namespaces/{ns}/deployments"
    for name in ("gone", "kept"):
        client.json("POST", base, deployment(name, replicas=2))
    wait_for(lambda: len(cluster.list("pods", ns)) == 4)
    rs = cluster.list("replicasets", ns, "app=gone")[0]
    dep = cluster.get("deployments", ns, "gone")
    ref = rs["metadata"]["ownerReferences"][0]
    assert (ref["kind"], ref["uid"], ref["controller"]) == ("Deployment", dep["metadata"]["uid"], True)
    assert rs["metadata"]["name"] == f"gone-{rs['metadata']['labels']['pod-template-hash']}"
    status, _ = client.json("DELETE", f"{base}/gone", {"propagationPolicy": "Background"})
    assert status == 200
    assert cluster.list("replicasets", ns, "app=gone") == [] and cluster.list("pods", ns, "app=gone") == []
    client.json("DELETE", f"{base}/kept", {"propagationPolicy": "Orphan"})
    [orphan] = cluster.list("replicasets", ns, "app=kept")
    assert "ownerReferences" not in orphan["metadata"]
    assert len(cluster.list("pods", ns, "app=kept")) == 2  # still owned by the orphaned ReplicaSet
    # Deleting a namespace takes its content with it.
    client.json("DELETE", f"/api/v1/namespaces/{ns}")
    assert cluster.list("pods", ns) == [] and cluster.get("namespaces", None, ns) is None


def test_delete_delay_and_finalizers(client: ApiClient, ns: str) -> None:
    with sandbox_cluster(tls=False, delete_delay=0.3) as c:
        cl = ApiClient(c)
        cl.json("POST", "/api/v1/namespaces/default/serviceaccounts", {"metadata": {"name": "slow"}})
        status, obj = cl.json("DELETE", "/api/v1/namespaces/default/serviceaccounts/slow")
        assert status == 200 and obj["metadata"]["deletionTimestamp"]
        assert c.get("serviceaccounts", "default", "slow")["metadata"]["deletionTimestamp"]
        wait_for(lambda: c.get("serviceaccounts", "default", "slow") is None, timeout=3)
        # Secrets (helm's release storage) never linger.
        cl.json("POST", "/api/v1/namespaces/default/secrets", {"metadata": {"name": "s"}})
        cl.json("DELETE", "/api/v1/namespaces/default/secrets/s")
        assert c.get("secrets", "default", "s") is None
        c.set_delete_delay(0)
        cl.json(
            "POST",
            "/api/v1/namespaces/default/serviceaccounts",
            {"metadata": {"name": "fin", "finalizers": ["x/y"]}},
        )
        cl.json("DELETE", "/api/v1/namespaces/default/serviceaccounts/fin")
        time.sleep(0.2)
        assert c.get("serviceaccounts", "default", "fin")["metadata"]["deletionTimestamp"]
        cl.json(
            "PATCH",
            "/api/v1/namespaces/default/serviceaccounts/fin",
            {"metadata": {"finalizers": None}},
            "application/merge-patch+json",
        )
        assert c.get("serviceaccounts", "default", "fin") is None


# ---- controllers ----


def test_deployment_readiness_never_ready_and_scale(
    cluster: SandboxCluster, client: ApiClient, ns: str
) -> None:
    base = f"/apis/apps/v1/namespaces/{ns}/deployments"
    client.json("POST", base, deployment("ok", replicas=2))
    client.json("POST", base, deployment("stuck", annotations={"sandbox.kduflow.dev/never-ready": "true"}))
    cluster.set_never_ready("pattern-*")
    try:
        client.json("POST", base, deployment("pattern-x"))
        ok = wait_for(
            lambda: (
                (d := cluster.get("deployments", ns, "ok")).get("status", {}).get("readyReplicas") == 2 and d
            )
        )
        conds = {c["type"]: c for c in ok["status"]["conditions"]}
        assert conds["Available"]["status"] == "True"
        assert conds["Progressing"]["reason"] == "NewReplicaSetAvailable"
        assert ok["status"]["observedGeneration"] == ok["metadata"]["generation"]
        time.sleep(0.5)
        for name in ("stuck", "pattern-x"):
            status = cluster.get("deployments", ns, name)["status"]
            assert status["readyReplicas"] == 0 and status["unavailableReplicas"] == 1, name
            pods = cluster.list("pods", ns, f"app={name}")
            assert [p["status"]["phase"] for p in pods] == ["Running"]
    finally:
        cluster.set_never_ready(None)
    wait_for(lambda: cluster.get("deployments", ns, "pattern-x")["status"]["readyReplicas"] == 1)
    status, scale = client.json("GET", f"{base}/ok/scale")
    assert (scale["kind"], scale["spec"]["replicas"]) == ("Scale", 2)
    client.json("PATCH", f"{base}/ok/scale", {"spec": {"replicas": 3}}, "application/merge-patch+json")
    wait_for(lambda: len(cluster.list("pods", ns, "app=ok")) == 3)
    # A template change rolls to a new ReplicaSet and scales the old one to zero.
    client.json(
        "PATCH",
        f"{base}/ok",
        {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "v2"}]}}}},
        "application/strategic-merge-patch+json",
    )
    wait_for(
        lambda: sorted(r["spec"]["replicas"] for r in cluster.list("replicasets", ns, "app=ok")) == [0, 3]
    )
    wait_for(lambda: cluster.get("deployments", ns, "ok").get("status", {}).get("updatedReplicas") == 3)


def test_other_controllers(cluster: SandboxCluster, client: ApiClient, ns: str) -> None:
    tmpl = {"metadata": {"labels": {"app": "s"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
    client.json(
        "POST",
        f"/apis/apps/v1/namespaces/{ns}/statefulsets",
        {
            "metadata": {"name": "db"},
            "spec": {
                "replicas": 2,
                "serviceName": "db",
                "selector": {"matchLabels": {"app": "s"}},
                "template": tmpl,
                "volumeClaimTemplates": [
                    {
                        "metadata": {"name": "data"},
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "1Gi"}},
                        },
                    }
                ],
            },
        },
    )
    client.json(
        "POST",
        f"/apis/apps/v1/namespaces/{ns}/daemonsets",
        {
            "metadata": {"name": "agent"},
            "spec": {
                "selector": {"matchLabels": {"app": "d"}},
                "template": {**tmpl, "metadata": {"labels": {"app": "d"}}},
            },
        },
    )
    client.json(
        "POST",
        f"/apis/batch/v1/namespaces/{ns}/jobs",
        {
            "metadata": {"name": "once"},
            "spec": {
                "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}
            },
        },
    )
    client.json(
        "POST",
        f"/api/v1/namespaces/{ns}/services",
        {"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}},
    )
    client.json(
        "POST",
        f"/api/v1/namespaces/{ns}/services",
        {"metadata": {"name": "ext"}, "spec": {"type": "ExternalName", "externalName": "example.invalid"}},
    )
    client.json(
        "POST",
        f"/api/v1/namespaces/{ns}/pods",
        {
            "metadata": {"name": "hook"},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]},
        },
    )
    client.json(
        "POST",
        f"/api/v1/namespaces/{ns}/pods",
        {
            "metadata": {"name": "bad-hook", "annotations": {"sandbox.kduflow.dev/fail": "true"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]},
        },
    )

    sts = wait_for(
        lambda: (s := cluster.get("statefulsets", ns, "db")).get("status", {}).get("readyReplicas") == 2 and s
    )
    assert sts["status"]["currentRevision"] == sts["status"]["updateRevision"]
    assert sorted(p["metadata"]["name"] for p in cluster.list("pods", ns, "app=s")) == ["db-0", "db-1"]
    pvcs = wait_for(
        lambda: [p for p in cluster.list("persistentvolumeclaims", ns) if p["status"]["phase"] == "Bound"]
    )
    assert sorted(p["metadata"]["name"] for p in pvcs) == ["data-db-0", "data-db-1"]
    ds = wait_for(
        lambda: (d := cluster.get("daemonsets", ns, "agent")).get("status", {}).get("numberReady") == 1 and d
    )
    assert ds["status"]["desiredNumberScheduled"] == 1 and ds["status"]["observedGeneration"] == 1
    job = wait_for(
        lambda: (j := cluster.get("jobs", ns, "once")).get("status", {}).get("succeeded") == 1 and j
    )
    assert {c["type"] for c in job["status"]["conditions"]} >= {"Complete"}
    lb = wait_for(
        lambda: (
            (s := cluster.get("services", ns, "lb")).get("status", {}).get("loadBalancer", {}).get("ingress")
            and s
        )
    )
    assert lb["status"]["loadBalancer"]["ingress"][0]["ip"] and lb["spec"]["clusterIP"]
    assert lb["spec"]["ports"][0]["nodePort"] >= 30000
    assert "clusterIP" not in cluster.get("services", ns, "ext")["spec"]
    wait_for(lambda: cluster.get("pods", ns, "hook").get("status", {}).get("phase") == "Succeeded")
    wait_for(lambda: cluster.get("pods", ns, "bad-hook").get("status", {}).get("phase") == "Failed")
    status, _, log = client.request("GET", f"/api/v1/namespaces/{ns}/pods/hook/log?container=c")
    assert status == 200 and b"hook" in log
    # A template change replaces StatefulSet pods and moves currentRevision once they are ready.
    old_rev = sts["status"]["updateRevision"]
    client.json(
        "PATCH",
        f"/apis/apps/v1/namespaces/{ns}/statefulsets/db",
        {"spec": {"template": {"metadata": {"annotations": {"r": "2"}}}}},
        "application/merge-patch+json",
    )
    new = wait_for(
        lambda: (
            (s := cluster.get("statefulsets", ns, "db")).get("status", {}).get("currentRevision") != old_rev
            and s
        )
    )
    assert (
        new["status"]["updateRevision"] == new["status"]["currentRevision"]
        and new["status"]["readyReplicas"] == 2
    )


def test_custom_resource_definitions_are_served(cluster: SandboxCluster, client: ApiClient, ns: str) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": True, "storage": True}],
        },
    }
    assert client.json("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)[0] == 201
    assert "widgets" in {r["name"] for r in client.json("GET", "/apis/example.com/v1")[1]["resources"]}
    status, w = client.json(
        "POST",
        f"/apis/example.com/v1/namespaces/{ns}/widgets",
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "size": 3},
    )
    assert status == 201 and w["size"] == 3
    client.json("DELETE", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com")
    assert client.json("GET", f"/apis/example.com/v1/namespaces/{ns}/widgets")[0] == 404


# ---- faults, counters, control surface, several clusters ----


def test_faults_are_deterministic_and_cleared() -> None:
    def statuses(seed: int) -> list[int]:
        with sandbox_cluster(tls=False, seed=seed) as c:
            c.set_faults(error_rate=0.5)
            cl = ApiClient(c)
            return [cl.request("GET", "/version")[0] for _ in range(30)]

    first = statuses(7)
    assert first == statuses(7) and set(first) == {200, 500}
    with sandbox_cluster(tls=False) as c:
        cl = ApiClient(c)
        c.set_faults(drop_rate=1.0)
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            cl.request("GET", "/version")
        c.set_faults(latency=0.2)
        cl = ApiClient(c)
        t0 = time.monotonic()
        assert cl.request("GET", "/version")[0] == 200
        assert time.monotonic() - t0 >= 0.2
        c.set_faults()
        assert cl.request("GET", "/version")[0] == 200
        with pytest.raises(ValueError):
            c.set_faults(error_rate=2)


def test_counters(cluster: SandboxCluster, client: ApiClient, ns: str) -> None:
    cluster.reset_counters()
    client.json("GET", f"/api/v1/namespaces/{ns}/secrets")
    client.json("GET", f"/api/v1/namespaces/{ns}/secrets")
    client.json("GET", f"/api/v1/namespaces/{ns}/secrets/x")
    client.json("POST", f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": "c"}})
    ApiClient(cluster).stream(f"/api/v1/namespaces/{ns}/pods?watch=true&timeoutSeconds=1").read()
    counts = cluster.counters()
    assert counts == {
        "GET /api/v1/namespaces/{ns}/secrets": 2,
        "GET /api/v1/namespaces/{ns}/secrets/{name}": 1,
        "POST /api/v1/namespaces/{ns}/configmaps": 1,
        "WATCH /api/v1/namespaces/{ns}/pods": 1,
    }
    assert cluster.total_requests() == 5
    cluster.reset_counters()
    assert cluster.counters() == {} and cluster.total_requests() == 0


def test_control_surface_over_http() -> None:
    with sandbox_cluster(tls=False, ready_delay=0.1) as c:
        cl = ApiClient(c)
        status, cfg = cl.json("POST", "/_sandbox/config", {"never_ready": "web*", "ready_delay": 0.5})
        assert status == 200 and cfg["never_ready"] == "web*" and c.config.ready_delay == 0.5
        assert cl.json("POST", "/_sandbox/config", {"ready_delay": -1})[0] == 400
        assert cl.json("POST", "/_sandbox/config", {"bogus": 1})[0] == 400
        cl.json("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "x"}})
        status, counters = cl.json("GET", "/_sandbox/counters")
        assert (
            counters["counters"] == {"POST /api/v1/namespaces/{ns}/configmaps": 1} and counters["total"] == 1
        )
        dump = cl.json("GET", "/_sandbox/dump")[1]
        assert [o["metadata"]["name"] for o in dump["objects"]["configmaps"]] == ["x"]
        status, objs = cl.json("GET", "/_sandbox/objects/configmaps?namespace=default")
        assert [o["metadata"]["name"] for o in objs["items"]] == ["x"]
        assert cl.json("POST", "/_sandbox/reset")[0] == 200
        assert c.get("configmaps", "default", "x") is None and c.config.never_ready is None
        assert c.config.ready_delay == 0.1 and c.total_requests() == 0
        assert cl.json("DELETE", "/_sandbox/counters")[0] == 200
        assert cl.json("GET", "/_sandbox/nope")[0] == 404


def test_several_clusters_are_independent() -> None:
    with sandbox_cluster() as a, sandbox_cluster(tls=False) as b:
        assert a.port != b.port and a.token != b.token
        ApiClient(a).json("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "only-a"}})
        assert a.get("configmaps", "default", "only-a") and b.get("configmaps", "default", "only-a") is None
        assert ApiClient(b, token=a.token).json("GET", "/version")[0] == 401
        kc = yaml.safe_load(a.kubeconfig("ns7"))
        assert kc["contexts"][0]["context"]["namespace"] == "ns7"
        assert base64.b64decode(kc["clusters"][0]["cluster"]["certificate-authority-data"]) == a.ca_pem
        assert "certificate-authority-data" not in yaml.safe_load(b.kubeconfig())["clusters"][0]["cluster"]


def test_write_kubeconfig_mode(tmp_path: Path) -> None:
    with sandbox_cluster(tls=False) as c:
        p = c.write_kubeconfig(tmp_path / "kc")
        assert (
            p.stat().st_mode & 0o777 == 0o600
            and yaml.safe_load(p.read_text())["users"][0]["user"]["token"] == c.token
        )


def test_python_api_validation() -> None:
    with pytest.raises(ValueError):
        SandboxCluster(ready_delay=-1)
    with sandbox_cluster(tls=False) as c:
        with pytest.raises(ValueError):
            c.get("widgets", "default", "x")
        with pytest.raises(ValueError):
            c.list("configmaps", label_selector="a in (")
        with pytest.raises(RuntimeError):
            c.start()


# ---- command line ----


def test_cli_runs_until_sigterm(tmp_path: Path) -> None:
    kc = tmp_path / "kc"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sandbox",
            "--port",
            "0",
            "--kubeconfig-out",
            str(kc),
            "--plain-http",
            "--ready-delay",
            "0.1",
            "--aggregated",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "SANDBOX_TOKEN": "tok-1"},
    )
    try:
        assert proc.stdout is not None
        t0 = time.monotonic()
        info = json.loads(proc.stdout.readline())
        assert time.monotonic() - t0 < 5
        assert info["pid"] == proc.pid and info["kubeconfig"] == str(kc)
        assert kc.stat().st_mode & 0o777 == 0o600
        doc = yaml.safe_load(kc.read_text())
        assert (
            doc["clusters"][0]["cluster"]["server"] == info["url"]
            and doc["users"][0]["user"]["token"] == "tok-1"
        )
        port = int(info["url"].rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/version", headers={"Authorization": "Bearer tok-1"})
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


# ---- real kubectl / helm features beyond the helm table ----


def test_kubectl_create_namespace_scale_and_delete(tools, tmp_path: Path) -> None:
    with sandbox_cluster() as c:
        env = tool_env(c, tmp_path, tools.dialect)
        # kubectl 1.37 sends this Namespace as protobuf; 1.31 as JSON.
        proc = run_tool([tools.kubectl, "create", "namespace", "k1"], env)
        assert proc.returncode == 0, proc.stderr
        assert c.get("namespaces", None, "k1")["status"]["phase"] == "Active"
        proc = run_tool([tools.kubectl, "create", "deployment", "web", "--image", "nginx", "-n", "k1"], env)
        if tools.dialect == "helm4":
            # kubectl 1.37 sends a protobuf Deployment; the sandbox decodes only its ObjectMeta and says so
            # (422) rather than storing a Deployment without spec.
            assert proc.returncode == 1 and "protobuf" in proc.stderr and "spec.selector" in proc.stderr
            dep = {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web"},
                "spec": {
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "nginx", "image": "nginx"}]},
                    },
                },
            }
            proc = run_tool([tools.kubectl, "apply", "-n", "k1", "-f", "-"], env, stdin=json.dumps(dep))
        assert proc.returncode == 0, proc.stderr
        proc = run_tool([tools.kubectl, "scale", "deployment", "web", "--replicas", "2", "-n", "k1"], env)
        assert proc.returncode == 0, proc.stderr
        assert c.get("deployments", "k1", "web")["spec"]["replicas"] == 2
        proc = run_tool(
            [tools.kubectl, "apply", "--server-side", "-n", "k1", "-f", "-"],
            env,
            stdin=yaml.safe_dump(
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"a": "1"}}
            ),
        )
        assert proc.returncode == 0, proc.stderr
        assert c.get("configmaps", "k1", "applied")["data"] == {"a": "1"}
        proc = run_tool([tools.kubectl, "delete", "namespace", "k1"], env)
        assert proc.returncode == 0, proc.stderr
        assert c.get("namespaces", None, "k1") is None and c.list("deployments", "k1") == []


def test_helm4_legacy_wait_and_lingering_uninstall(helm4, tmp_path: Path) -> None:
    chart = demo_chart(tmp_path)
    with sandbox_cluster(delete_delay=1.0) as c:
        env = tool_env(c, tmp_path, "helm4")
        proc = run_tool(
            [
                helm4.helm,
                "install",
                "r",
                chart,
                "-n",
                "l1",
                "--create-namespace",
                "--wait=legacy",
                "--timeout",
                "20s",
            ],
            env,
        )
        assert proc.returncode == 0, proc.stderr
        assert c.get("deployments", "l1", "r-demo")["status"]["readyReplicas"] == 1
        t0 = time.monotonic()
        proc = run_tool([helm4.helm, "uninstall", "r", "-n", "l1", "--wait", "--timeout", "20s"], env)
        assert proc.returncode == 0, proc.stderr
        assert time.monotonic() - t0 >= 1.0  # waited for the lingering objects
        assert c.get("deployments", "l1", "r-demo") is None and c.list("secrets", "l1", "owner=helm") == []


def test_bench_reports_throughput_and_memory() -> None:
    """Measures, does not assert speed (that would flake): prints the numbers for the report."""
    proc = subprocess.run(
        [sys.executable, "-m", "sandbox.bench", "--objects", "1000", "--requests", "1500"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print("sandbox bench:", result)
    assert result["errors"] == 0 and result["objects"] >= 1000


def test_shared_fixture_serves_real_kubectl(sandbox: SandboxCluster, helm3, tmp_path: Path) -> None:  # noqa: F811
    """The fixture other areas import: a started HTTPS cluster that kubectl reaches via tool_env."""
    proc = run_tool([helm3.kubectl, "get", "namespaces", "-o", "json"], tool_env(sandbox, tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "default" in [i["metadata"]["name"] for i in json.loads(proc.stdout)["items"]]
