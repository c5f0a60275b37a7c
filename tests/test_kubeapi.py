"""activities/kubeapi.py against a canned local API server (HTTP and TLS)."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from activities import errors
from activities.kubeapi import (
    RETRY_AFTER_ATTEMPTS,
    KubeApi,
    KubeApiUnsupported,
    KubectlRawApi,
    KubeNotFound,
    resource_path,
)
from tests.support.sandbox import LOOPBACK_NETWORKS
from tests.support.status import FakeKube, make_pki, tls_fake_kube

DEPLOY = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "ns1", "labels": {"app": "web"}},
    "spec": {"replicas": 1},
}
SVC = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "ns1"},
    "spec": {"clusterIP": "10.0.0.1"},
}
WIDGET = {
    "apiVersion": "example.com/v1alpha1",
    "kind": "Widget",
    "metadata": {"name": "w1", "namespace": "ns1"},
}
CLUSTER_ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRole",
    "metadata": {"name": "reader"},
}


@pytest.fixture
def fake() -> Any:
    with FakeKube(token="s3cr3t-token") as server:
        server.add(DEPLOY, SVC, WIDGET, CLUSTER_ROLE)
        server.custom["example.com/v1alpha1"] = [("Widget", "widgets", True)]
        yield server


def test_resource_path() -> None:
    assert resource_path("v1", "pods", "ns1") == "/api/v1/namespaces/ns1/pods"
    assert (
        resource_path("apps/v1", "deployments", "ns1", "web")
        == "/apis/apps/v1/namespaces/ns1/deployments/web"
    )
    assert resource_path("rbac.authorization.k8s.io/v1", "clusterroles", None, "r") == (
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/r"
    )


async def test_get_list_get_object_over_one_connection(fake: FakeKube) -> None:
    api = KubeApi.from_kubeconfig(fake.kubeconfig())
    try:
        assert api.namespace == "ns1"
        assert (await api.version())["gitVersion"] == "v1.31.0"
        deploys = await api.list("apps/v1", "deployments", "ns1")
        assert [(d["kind"], d["apiVersion"], d["metadata"]["name"]) for d in deploys] == [
            ("Deployment", "apps/v1", "web")
        ]
        assert await api.list("apps/v1", "deployments", "ns1", label_selector="app=other") == []
        obj = await api.get_object("v1", "Service", "ns1", "web")
        assert obj is not None and obj["spec"]["clusterIP"] == "10.0.0.1"
        assert await api.get_object("v1", "Service", "ns1", "nope") is None
        # Cluster-scoped kinds ignore the namespace.
        role = await api.get_object("rbac.authorization.k8s.io/v1", "ClusterRole", "ns1", "reader")
        assert role is not None and role["metadata"]["name"] == "reader"
        with pytest.raises(KubeNotFound):
            await api.get("/api/v1/namespaces/ns1/services/nope")
    finally:
        await api.close()
    assert api.requests == len(fake.paths) == 7
    assert fake.auth_headers[0] == "Bearer s3cr3t-token"
    # keep-alive: every request went over the same connection
    assert fake.connections == 1


async def test_discovery_is_cached_per_client(fake: FakeKube) -> None:
    api = KubeApi.from_kubeconfig(fake.kubeconfig())
    try:
        first = await api.get_object("example.com/v1alpha1", "Widget", "ns1", "w1")
        second = await api.get_object("example.com/v1alpha1", "Widget", "ns1", "w1")
        assert first is not None and second is not None and first["kind"] == "Widget"
        assert await api.get_object("example.com/v1alpha1", "Gadget", "ns1", "g") is None
        assert await api.resource_for("nothere.io/v1", "Thing") is None
    finally:
        await api.close()
    assert fake.paths.count("/apis/example.com/v1alpha1") == 1
    assert fake.paths.count("/apis/nothere.io/v1") == 1


@pytest.mark.parametrize(
    ("code", "err_type", "retryable"),
    [
        pytest.param(401, errors.CredentialsInvalid, False, id="401"),
        pytest.param(403, errors.CredentialsInvalid, False, id="403"),
        pytest.param(500, errors.ServerError, True, id="500"),
        pytest.param(429, errors.ServerError, True, id="429"),
        pytest.param(400, errors.InvalidInput, False, id="400"),
    ],
)
async def test_status_codes_map_to_error_tree(
    fake: FakeKube, code: int, err_type: type, retryable: bool
) -> None:
    api = KubeApi.from_kubeconfig(fake.kubeconfig())
    fake.fail_next.append(code)
    try:
        with pytest.raises(err_type) as info:
            await api.list("apps/v1", "deployments", "ns1")
        assert info.value.retryable is retryable
        assert str(code) in str(info.value)
        # The connection is still usable afterwards.
        assert len(await api.list("apps/v1", "deployments", "ns1")) == 1
    finally:
        await api.close()


async def test_wrong_token_is_credentials_invalid(fake: FakeKube) -> None:
    api = KubeApi.from_kubeconfig(fake.kubeconfig(token="wrong"))
    try:
        with pytest.raises(errors.CredentialsInvalid):
            await api.version()
    finally:
        await api.close()


async def test_unreachable_server_is_retryable() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api = KubeApi(f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(errors.ClusterUnreachable) as info:
        await api.version()
    assert info.value.retryable
    await api.close()


async def test_server_closing_idle_connection_is_retried_once(fake: FakeKube) -> None:
    api = KubeApi.from_kubeconfig(fake.kubeconfig())
    try:
        await api.version()
        # Simulate the server dropping the idle keep-alive connection.
        (idle,) = api._idle
        assert idle.sock is not None
        idle.sock.shutdown(socket.SHUT_RDWR)
        assert (await api.version())["major"] == "1"
    finally:
        await api.close()
    assert fake.connections == 2


async def test_basic_auth(fake: FakeKube) -> None:
    fake.token = None
    api = KubeApi.from_kubeconfig(fake.kubeconfig(username="admin", password="pw"))
    await api.version()
    await api.close()
    assert fake.auth_headers[-1] == "Basic " + base64.b64encode(b"admin:pw").decode()


async def test_kubeconfig_file_is_read_through_the_policy(fake: FakeKube, tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(fake.kubeconfig()))
    api = KubeApi.from_kubeconfig(path)
    try:
        assert (await api.version())["major"] == "1"
    finally:
        await api.close()
    path.write_text("x" * (600 * 1024))
    with pytest.raises(errors.CredentialsInvalid, match="larger than 512 KiB"):
        KubeApi.from_kubeconfig(path)


@pytest.mark.parametrize(
    ("section", "field"),
    [
        pytest.param("user", "tokenFile", id="tokenFile"),
        pytest.param("user", "client-certificate", id="client-certificate"),
        pytest.param("user", "client-key", id="client-key"),
        pytest.param("cluster", "certificate-authority", id="certificate-authority"),
    ],
)
def test_file_paths_are_refused_without_reading_them(
    fake: FakeKube, tmp_path: Path, section: str, field: str
) -> None:
    """A kubeconfig naming a worker file never makes the client read it or say whether it exists."""
    secret = tmp_path / "environ"
    secret.write_text("SECRET=worker-only\n")
    messages = []
    for target in (str(secret), "/proc/self/environ", str(tmp_path / "absent")):
        config = fake.kubeconfig()
        entry = config["users"][0]["user"] if section == "user" else config["clusters"][0]["cluster"]
        entry[field] = target
        with pytest.raises(errors.CredentialsInvalid) as info:
            KubeApi.from_kubeconfig(config)
        assert not info.value.retryable
        assert info.value.details == {"field": f"{section}s[0].{section}.{field}"}
        assert target not in str(info.value) and "worker-only" not in str(info.value)
        messages.append(str(info.value))
    assert len(set(messages)) == 1  # the same whether the file exists, is readable or is absent
    assert fake.paths == []


@pytest.mark.parametrize("token", ["abc\r\nX-Injected: 1", "abc\n", "tab\there", "caf\u00e9"])
def test_token_with_control_characters_is_refused(fake: FakeKube, token: str) -> None:
    with pytest.raises(errors.CredentialsInvalid) as info:
        KubeApi.from_kubeconfig(fake.kubeconfig(token=token))
    assert info.value.details == {"field": "users[0].user.token"}
    assert "abc" not in str(info.value)


@pytest.mark.parametrize(
    "user",
    [
        pytest.param({"exec": {"command": "aws", "args": ["eks", "get-token"]}}, id="exec"),
        pytest.param({"token": "t", "as": "admin"}, id="impersonation"),
        pytest.param({"token": "t", "as-groups": ["system:masters"]}, id="impersonated-groups"),
    ],
)
def test_plugins_and_impersonation_are_unsupported(fake: FakeKube, user: dict[str, Any]) -> None:
    # Not judged here (this client never runs a plugin): the kubectl fallback does, with the
    # cluster env's kubeconfig that ClusterEnvs checked against the worker's settings.
    with pytest.raises(KubeApiUnsupported):
        KubeApi.from_kubeconfig(fake.kubeconfig(**user))


def test_proxy_is_unsupported_or_refused(fake: FakeKube) -> None:
    config = fake.kubeconfig()
    config["clusters"][0]["cluster"]["proxy-url"] = "http://proxy.example:3128"
    with pytest.raises(KubeApiUnsupported):
        KubeApi.from_kubeconfig(config)
    with pytest.raises(errors.CredentialsInvalid) as info:
        KubeApi.from_kubeconfig(config, allow_proxy=False)
    assert info.value.details == {"field": "clusters[0].cluster.proxy-url"}


def test_exec_outside_the_allowlist_is_refused_when_judged(fake: FakeKube) -> None:
    config = fake.kubeconfig(exec={"command": "/bin/sh", "args": ["-c", "id"]})
    with pytest.raises(errors.CredentialsInvalid) as info:
        KubeApi.from_kubeconfig(config, exec_plugins=("aws",))
    assert info.value.details == {"field": "users[0].user.exec.command"}
    assert "/bin/sh" not in str(info.value)
    with pytest.raises(KubeApiUnsupported):
        KubeApi.from_kubeconfig(config, exec_plugins=("/bin/sh",))


def test_auth_provider_is_refused(fake: FakeKube) -> None:
    with pytest.raises(errors.CredentialsInvalid) as info:
        KubeApi.from_kubeconfig(fake.kubeconfig(**{"auth-provider": {"name": "oidc"}}))
    assert info.value.details == {"field": "users[0].user.auth-provider"}


def _two_contexts(config: dict[str, Any]) -> None:
    config.pop("current-context")
    config["contexts"].append({"name": "ctx2", "context": {"cluster": "c", "user": "u"}})


@pytest.mark.parametrize(
    ("mutate", "field", "needle"),
    [
        pytest.param(_two_contexts, "current-context", "more than one context", id="no-context"),
        pytest.param(
            lambda c: c.update({"current-context": "other"}),
            "current-context",
            "is not among the contexts",
            id="unknown-context",
        ),
        pytest.param(
            lambda c: c["clusters"][0]["cluster"].update(server="ftp://x"),
            "clusters[0].cluster.server",
            "https:// or http://",
            id="bad-server",
        ),
        pytest.param(
            lambda c: c["clusters"][0]["cluster"].update(server="https://user:pw@host"),
            "clusters[0].cluster.server",
            "userinfo",
            id="server-userinfo",
        ),
    ],
)
def test_refused_kubeconfig_is_credentials_invalid(
    fake: FakeKube, mutate: Any, field: str, needle: str
) -> None:
    config = fake.kubeconfig()
    mutate(config)
    with pytest.raises(errors.CredentialsInvalid) as info:
        KubeApi.from_kubeconfig(config)
    assert not info.value.retryable
    assert info.value.details == {"field": field}
    assert needle in str(info.value)
    assert "s3cr3t" not in str(info.value) and "pw@" not in str(info.value)


def test_missing_named_context_is_invalid_input(fake: FakeKube) -> None:
    with pytest.raises(errors.InvalidInput, match="'nope'"):
        KubeApi.from_kubeconfig(fake.kubeconfig(), context="nope")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def test_tls_with_ca_data_and_client_cert_data(pki: Any) -> None:
    with tls_fake_kube(pki, require_client_cert=True) as fake:
        fake.add(SVC)
        config = fake.kubeconfig(
            **{
                "client-certificate-data": base64.b64encode(pki.client_cert_pem).decode(),
                "client-key-data": base64.b64encode(pki.client_key_pem).decode(),
            }
        )
        cluster = config["clusters"][0]["cluster"]
        del cluster["insecure-skip-tls-verify"]
        cluster["certificate-authority-data"] = base64.b64encode(pki.ca_pem).decode()
        before = set(os.listdir("/tmp"))
        api = KubeApi.from_kubeconfig(config)
        # The key material written for ssl.load_cert_chain is gone again.
        assert not {n for n in set(os.listdir("/tmp")) - before if n.startswith("kduflow-kube-")}
        try:
            assert (await api.get_object("v1", "Service", "ns1", "web")) is not None
        finally:
            await api.close()


async def test_tls_server_name_with_inline_data(pki: Any) -> None:
    with tls_fake_kube(pki, require_client_cert=True) as fake:
        config = fake.kubeconfig(
            **{
                "client-certificate-data": base64.b64encode(pki.client_cert_pem).decode(),
                "client-key-data": base64.b64encode(pki.client_key_pem).decode(),
            }
        )
        cluster = config["clusters"][0]["cluster"]
        del cluster["insecure-skip-tls-verify"]
        cluster["certificate-authority-data"] = base64.b64encode(pki.ca_pem).decode()
        cluster["tls-server-name"] = "kube.test"
        api = KubeApi.from_kubeconfig(config)
        try:
            assert (await api.version())["major"] == "1"
        finally:
            await api.close()


async def test_tls_unknown_ca_is_credentials_invalid(pki: Any) -> None:
    with tls_fake_kube(pki, require_client_cert=False) as fake:
        config = fake.kubeconfig(token="t")
        del config["clusters"][0]["cluster"]["insecure-skip-tls-verify"]
        api = KubeApi.from_kubeconfig(config)  # system CAs only: the test CA is unknown
        try:
            with pytest.raises(errors.CredentialsInvalid) as info:
                await api.version()
            assert not info.value.retryable
        finally:
            await api.close()


async def test_close_during_request_does_not_block(fake: FakeKube) -> None:
    api = KubeApi.from_kubeconfig(fake.kubeconfig())
    task = asyncio.create_task(api.version())
    await asyncio.sleep(0)
    await api.close()
    # The in-flight request either completed or was refused; the client is closed afterwards.
    try:
        await task
    except errors.ClusterUnreachable:
        pass
    with pytest.raises(errors.ClusterUnreachable):
        await api.version()


async def test_kubectl_raw_fallback(fake: FakeKube, helm3: Any, tmp_path: Path) -> None:
    """The exec-plugin fallback transport, driven by the real kubectl against the fake server."""
    fake.token = None  # client-go never sends a bearer token over plain http
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(yaml.safe_dump(fake.kubeconfig()))
    env = {"KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    api = KubectlRawApi(str(helm3.kubectl), env)
    deploys = await api.list("apps/v1", "deployments", "ns1", label_selector="app=web")
    assert [d["metadata"]["name"] for d in deploys] == ["web"]
    assert await api.get_object("v1", "Service", "ns1", "nope") is None
    assert any("labelSelector=app%3Dweb" in p for p in fake.paths)
    fake.fail_next.append(403)
    with pytest.raises(errors.CredentialsInvalid):
        await api.version()


@pytest.mark.parametrize(("status", "retry_after"), [(503, 0), (429, 0), (500, 0)])
async def test_throttled_answers_with_retry_after_are_retried_like_client_go(
    status: int, retry_after: int
) -> None:
    """The sandbox answers twice with ``status`` and Retry-After, then normally: the read succeeds."""
    from sandbox import SandboxCluster

    with SandboxCluster(tls=False) as cluster:
        config = yaml.safe_load(cluster.kubeconfig())
        api = KubeApi.from_kubeconfig(config, private_networks=LOOPBACK_NETWORKS)
        try:
            cluster.set_faults(error_rate=1.0, error_status=status, retry_after=retry_after, limit=2)
            assert (await api.version())["gitVersion"]
            assert api.requests == 3
            # Without Retry-After the answer is an error at once (Temporal's retry takes over).
            cluster.set_faults(error_rate=1.0, error_status=status, limit=1)
            with pytest.raises(errors.ServerError):
                await api.version()
            assert api.requests == 4
            # At most RETRY_AFTER_ATTEMPTS resends, then the error.
            cluster.set_faults(error_rate=1.0, error_status=status, retry_after=retry_after)
            with pytest.raises(errors.ServerError):
                await api.version()
            assert api.requests == 4 + 1 + RETRY_AFTER_ATTEMPTS
        finally:
            await api.close()


async def test_concurrent_requests_use_several_kept_alive_connections(fake: FakeKube) -> None:
    """Status reports of many releases on one cluster run side by side (at most max_connections at
    once), each on a kept-alive connection that later requests reuse."""
    api = KubeApi.from_kubeconfig(fake.kubeconfig(), max_connections=3)
    try:
        for _ in range(3):
            await asyncio.gather(*(api.version() for _ in range(6)))
    finally:
        await api.close()
    assert 1 < fake.connections <= 3
    assert api.requests == 18
