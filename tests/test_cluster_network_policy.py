"""Where a kubeconfig's cluster ``server`` may point: never at the worker's internal networks unless
the operator allows them (KDUFLOW_ALLOW_PRIVATE_NETWORKS).

Refusals are checked to name only the field and the rule (never an address, a port or what
answered) and to happen before anything connects: a recording listener on 127.0.0.1 stands for the
internal service a caller would probe. Public addresses are only judged, never connected to."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import errors, kubeconfig_policy
from activities.cluster_env import ClusterEnvs
from activities.clusters import ClusterActivities
from activities.kubeapi import KubeApi
from activities.runner import ProcessResult
from activities.status import StatusActivities
from activities.store import Store
from kduflow.config import Settings
from tests.conftest import helm_tools
from tests.support.hostile import RecordingListener, kubeconfig
from tests.support.sandbox import LOOPBACK_NETWORKS
from tests.support.status import FakeKube
from workflows.cluster_models import ClusterRef, StoreCredentialsInput

RULE = "the server address is outside the networks the operator allows (KDUFLOW_ALLOW_PRIVATE_NETWORKS)"
FIELD = "clusters[0].cluster.server"
#: Addresses Python's ipaddress module considers globally routable (judged here, never connected to).
PUBLIC = ("8.8.8.8", "2001:4860:4860::8888", "1.1.1.1")
#: Names under .test the fake resolver answers for.
NAMES = {"kube.loopback.test": ["127.0.0.1"], "kube.mixed.test": ["8.8.8.8", "10.0.0.1"]}


class Resolver:
    """A ``getaddrinfo`` for names under ``.test``: answers from a table, counts the questions.

    IP literals are parsed numerically (no lookup), other names do not resolve: nothing leaves
    the machine.
    """

    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = dict(table or {})
        self.asked: list[str] = []

    async def __call__(self, host: str, port: Any, *args: Any, **kw: Any) -> list[tuple[Any, ...]]:
        self.asked.append(host)
        if host in self.table:
            return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                    for a in self.table[host]]
        kw["flags"] = socket.AI_NUMERICHOST
        return await asyncio.get_running_loop().getaddrinfo(host, port, *args, **kw)


class NoRunner:
    """A runner that records what it was asked to run; helm and kubectl must never be asked."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def run(self, argv: list[str], **kw: Any) -> ProcessResult:
        self.calls.append(list(argv))
        raise AssertionError(f"ran {argv[:2]}")


@pytest.fixture
def listener() -> Iterator[RecordingListener]:
    recording = RecordingListener()
    try:
        yield recording
    finally:
        recording.close()


def settings(tmp_path: Path, **kw: Any) -> Settings:
    tools = helm_tools("helm4")
    return Settings(helm=str(tools.helm), kubectl=str(tools.kubectl), state_dir=tmp_path / "w", **kw)


def config_for(server: str) -> dict[str, Any]:
    return kubeconfig_policy.check_kubeconfig(kubeconfig(server))


async def refusal(config: dict[str, Any], networks: tuple[str, ...] = (), resolver: Any = None) -> str:
    with pytest.raises(errors.CredentialsInvalid) as info:
        await kubeconfig_policy.check_cluster_servers(
            config, Settings(private_networks=networks), getaddrinfo=resolver or Resolver()
        )
    assert info.value.details == {"field": FIELD}
    return info.value.message


# ----------------------------------------------------------------------------------- the verdict


INTERNAL = [
    pytest.param("https://127.0.0.1:{port}", id="loopback"),
    pytest.param("https://127.8.9.10:6443", id="loopback-127/8"),
    pytest.param("http://169.254.169.254/latest/meta-data", id="link-local-metadata"),
    pytest.param("https://10.1.2.3:6443", id="private-10"),
    pytest.param("https://172.16.5.4:6443", id="private-172.16"),
    pytest.param("https://192.168.1.10:6443", id="private-192.168"),
    pytest.param("https://100.64.0.1:6443", id="shared-address-space"),
    pytest.param("https://0.0.0.0:{port}", id="unspecified"),
    pytest.param("https://[::]:{port}", id="unspecified-v6"),
    pytest.param("https://[::1]:{port}", id="ipv6-loopback"),
    pytest.param("https://[::ffff:127.0.0.1]:{port}", id="ipv4-mapped-loopback"),
    pytest.param("https://[::ffff:a01:203]:6443", id="ipv4-mapped-private"),
    pytest.param("https://[fe80::1]:6443", id="ipv6-link-local"),
    pytest.param("https://[fd00::1]:6443", id="ipv6-unique-local"),
    pytest.param("https://[2002:7f00:1::1]:6443", id="6to4-of-loopback"),
    pytest.param("https://224.0.0.1:6443", id="multicast"),
    pytest.param("https://240.0.0.1:6443", id="reserved"),
    pytest.param("https://203.0.113.10:6443", id="documentation-net"),
    pytest.param("https://2130706433:{port}", id="decimal-loopback"),
    pytest.param("https://127.1:{port}", id="short-loopback"),
    pytest.param("https://localhost:{port}", id="localhost"),
    pytest.param("https://LOCALHOST.:{port}", id="localhost-upper-dot"),
    pytest.param("https://kube.loopback.test:{port}", id="name-to-loopback"),
    pytest.param("https://kube.mixed.test:{port}", id="name-to-public-and-private"),
    pytest.param("https://kube.nowhere.test:{port}", id="name-does-not-resolve"),
]


@pytest.mark.parametrize("server", INTERNAL)
async def test_internal_servers_are_refused_with_one_message(
    server: str, listener: RecordingListener, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="activities.kubeconfig_policy")
    resolver: Any = Resolver(NAMES)
    if "localhost" in server.lower():
        resolver = asyncio.get_running_loop().getaddrinfo  # the machine's own answer for localhost
    config = config_for(server.format(port=listener.port))
    message = await refusal(config, resolver=resolver)
    assert message == f"kubeconfig refused: {FIELD}: {RULE}"
    assert str(listener.port) not in message
    # The operator's log has the reason.
    assert FIELD in caplog.text and "KDUFLOW_ALLOW_PRIVATE_NETWORKS" in caplog.text
    await asyncio.sleep(0.1)
    assert listener.accepted == 0


async def test_the_real_resolver_refuses_localhost(listener: RecordingListener) -> None:
    config = config_for(f"https://localhost:{listener.port}")
    with pytest.raises(errors.CredentialsInvalid) as info:
        await kubeconfig_policy.check_cluster_servers(config, Settings())  # the loop's getaddrinfo
    assert info.value.message == f"kubeconfig refused: {FIELD}: {RULE}"
    assert listener.accepted == 0


async def test_every_cluster_entry_is_judged() -> None:
    config = kubeconfig(f"https://{PUBLIC[0]}:6443")
    config["clusters"].append({"name": "spare", "cluster": {"server": "https://127.0.0.1:6443"}})
    with pytest.raises(errors.CredentialsInvalid) as info:
        await kubeconfig_policy.check_cluster_servers(kubeconfig_policy.check_kubeconfig(config), Settings())
    assert info.value.details == {"field": "clusters[1].cluster.server"}


@pytest.mark.parametrize("address", PUBLIC)
async def test_public_addresses_are_allowed(address: str) -> None:
    host = f"[{address}]" if ":" in address else address
    # Only the verdict: nothing connects to a public address here.
    await kubeconfig_policy.check_cluster_servers(config_for(f"https://{host}:6443"), Settings(),
                                                  getaddrinfo=Resolver())
    resolver = Resolver({"kube.public.test": [address]})
    await kubeconfig_policy.check_cluster_servers(config_for("https://kube.public.test"), Settings(),
                                                  getaddrinfo=resolver)
    assert resolver.asked == ["kube.public.test"]


@pytest.mark.parametrize(
    ("server", "networks", "allowed"),
    [
        ("https://127.0.0.1:6443", ("127.0.0.0/8",), True),
        ("https://127.0.0.1:6443", ("127.0.0.1/32",), True),
        ("https://127.0.0.2:6443", ("127.0.0.1/32",), False),
        ("https://[::ffff:127.0.0.1]:6443", ("127.0.0.0/8",), True),
        ("https://[::1]:6443", ("127.0.0.0/8",), False),
        ("https://[::1]:6443", LOOPBACK_NETWORKS, True),
        ("https://10.20.1.2:6443", ("10.20.0.0/16",), True),
        ("https://10.21.1.2:6443", ("10.20.0.0/16",), False),
        ("https://169.254.169.254", ("10.0.0.0/8",), False),
        ("https://kube.loopback.test", LOOPBACK_NETWORKS, True),
        ("https://kube.mixed.test", ("10.0.0.0/8",), True),
        ("https://kube.mixed.test", ("127.0.0.0/8",), False),
        ("https://kube.nowhere.test", ("0.0.0.0/0", "::/0"), False),
    ],
)
async def test_private_networks_admit_their_addresses(
    server: str, networks: tuple[str, ...], allowed: bool
) -> None:
    resolver = Resolver(NAMES)
    check = kubeconfig_policy.check_cluster_servers(
        config_for(server), Settings(private_networks=networks), getaddrinfo=resolver
    )
    if allowed:
        await check
    else:
        with pytest.raises(errors.CredentialsInvalid):
            await check


async def test_slow_resolution_is_refused_like_any_other() -> None:
    async def stuck(*args: Any, **kw: Any) -> list[Any]:
        await asyncio.sleep(5)
        return []

    started = time.monotonic()
    with pytest.raises(errors.CredentialsInvalid) as info:
        await kubeconfig_policy.check_cluster_servers(
            config_for("https://kube.slow.test"), Settings(), getaddrinfo=stuck, resolve_timeout=0.2
        )
    assert time.monotonic() - started < 2
    assert info.value.message == f"kubeconfig refused: {FIELD}: {RULE}"


# ----------------------------------------------------------------------- where the check is applied


async def test_store_credentials_refuses_before_anything_is_stored(
    tmp_path: Path, store: Store, listener: RecordingListener
) -> None:
    runner = NoRunner()
    envs = ClusterEnvs(settings(tmp_path), store)
    acts = ClusterActivities(envs.settings, envs, store, runner)  # type: ignore[arg-type]
    creds = yaml.safe_dump(kubeconfig(f"https://127.0.0.1:{listener.port}"))
    with pytest.raises(ApplicationError) as info:
        await ActivityEnvironment().run(acts.store_credentials, StoreCredentialsInput("c-loop", creds))
    err = info.value
    assert (err.type, err.non_retryable) == ("CredentialsInvalid", True)
    assert err.message == f"credentials of cluster 'c-loop' refused: {FIELD}: {RULE}"
    assert err.details == ({"field": FIELD},)
    assert await store.find_one("k8sclusters", {"_id": "c-loop"}) is None
    assert runner.calls == [] and listener.accepted == 0


async def test_a_document_written_into_the_store_is_refused_before_kubectl_runs(
    tmp_path: Path, store: Store, listener: RecordingListener
) -> None:
    runner = NoRunner()
    envs = ClusterEnvs(settings(tmp_path), store)
    acts = ClusterActivities(envs.settings, envs, store, runner)  # type: ignore[arg-type]
    for cid, server in (("c-doc", f"https://127.0.0.1:{listener.port}"),
                        ("c-doc6", f"https://[::1]:{listener.port}"),
                        ("c-meta", "http://169.254.169.254")):  # fmt: skip
        await store.insert_one("k8sclusters", {"_id": cid, "credentials": kubeconfig(server)})
        with pytest.raises(ApplicationError) as info:
            await ActivityEnvironment().run(acts.verify, ClusterRef(cid))
        assert (info.value.type, info.value.non_retryable) == ("CredentialsInvalid", True)
        assert info.value.message == f"credentials of cluster '{cid}' refused: {FIELD}: {RULE}"
        assert not envs.root_of(cid).exists()  # nothing materialised for helm or kubectl
    # The status client refuses too, before connecting: through ClusterEnvs.get, and by its own
    # check when the environments come from a worker that allows loopback and it does not.
    strict = StatusActivities(envs.settings, envs, store)
    with pytest.raises(ApplicationError) as info:
        await strict.api_for("c-doc")
    assert info.value.type == "CredentialsInvalid"
    relaxed = ClusterEnvs(settings(tmp_path / "relaxed", private_networks=LOOPBACK_NETWORKS), store)
    assert (await relaxed.get("c-doc")).kubeconfig.is_file()
    status = StatusActivities(envs.settings, relaxed, store)
    with pytest.raises(ApplicationError) as info:
        await status.api_for("c-doc", refresh=True)
    assert (info.value.type, info.value.non_retryable) == ("CredentialsInvalid", True)
    assert info.value.message == f"credentials of cluster 'c-doc' refused: {FIELD}: {RULE}"
    await asyncio.sleep(0.1)
    assert runner.calls == [] and listener.accepted == 0


async def test_the_verdict_is_kept_per_content_hash(tmp_path: Path, store: Store) -> None:
    resolver = Resolver({"kube.a.test": ["8.8.8.8"], "kube.b.test": ["8.8.4.4"]})
    envs = ClusterEnvs(settings(tmp_path), store, getaddrinfo=resolver)
    await envs.store_credentials("c1", kubeconfig("https://kube.a.test:6443"))
    assert resolver.asked == ["kube.a.test"]
    first = await envs.get("c1")
    for _ in range(3):
        assert (await envs.get("c1")).content_hash == first.content_hash
    assert resolver.asked == ["kube.a.test"] * 2  # stored, then materialised once
    # New content (written by anyone): judged again before use.
    await store.update_one("k8sclusters", {"_id": "c1"},
                           {"$set": {"credentials": kubeconfig("https://kube.b.test:6443")}})
    await envs.get("c1")
    await envs.get("c1")
    assert resolver.asked == ["kube.a.test"] * 2 + ["kube.b.test"]
    # A name that now resolves inward is refused at the next change of content.
    resolver.table["kube.c.test"] = ["10.0.0.7"]
    await store.update_one("k8sclusters", {"_id": "c1"},
                           {"$set": {"credentials": kubeconfig("https://kube.c.test:6443")}})
    with pytest.raises(ApplicationError) as info:
        await envs.get("c1")
    assert info.value.type == "CredentialsInvalid"


async def test_the_setting_takes_effect_through_the_environment(tmp_path: Path, store: Store) -> None:
    tools = helm_tools("helm4")
    base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KDUFLOW_HELM": str(tools.helm),
            "KDUFLOW_KUBECTL": str(tools.kubectl)}  # fmt: skip
    creds = kubeconfig("https://127.0.0.1:6443")
    strict = ClusterEnvs(Settings.from_env({**base, "KDUFLOW_STATE_DIR": str(tmp_path / "a")}), store)
    with pytest.raises(ApplicationError) as info:
        await strict.store_credentials("c-env", creds)
    assert info.value.type == "CredentialsInvalid" and "KDUFLOW_ALLOW_PRIVATE_NETWORKS" in info.value.message
    relaxed = ClusterEnvs(
        Settings.from_env({**base, "KDUFLOW_STATE_DIR": str(tmp_path / "b"),
                           "KDUFLOW_ALLOW_PRIVATE_NETWORKS": "127.0.0.0/8, ::1/128"}),
        store,
    )  # fmt: skip
    assert await relaxed.store_credentials("c-env", creds) == "created"
    assert (await relaxed.get("c-env")).kubeconfig.is_file()


# -------------------------------------------------------------- the status client at connect time


async def test_status_client_connects_only_to_the_addresses_it_judged(
    listener: RecordingListener, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The name passed the registration check, then resolves inward (DNS rebinding): the client
    resolves, judges and connects to the same addresses, so it refuses without connecting."""
    caplog.set_level(logging.WARNING, logger="activities.kubeapi")
    real = socket.getaddrinfo

    def rebound(host: Any, port: Any, *args: Any, **kw: Any) -> Any:
        if host == "kube.rebind.test":
            return real("127.0.0.1", port, *args, **kw)
        return real(host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", rebound)
    config = kubeconfig(f"http://kube.rebind.test:{listener.port}")
    api = KubeApi.from_kubeconfig(config, private_networks=())
    with pytest.raises(errors.CredentialsInvalid) as info:
        await api.get("/version")
    assert info.value.message == f"kubeconfig refused: {FIELD}: {RULE}"
    assert info.value.details == {"field": FIELD}
    assert "127.0.0.1" in caplog.text
    await asyncio.sleep(0.1)
    assert listener.accepted == 0
    await api.close()

    # Inside the operator's networks the same client connects (through the judged addresses).
    allowed = KubeApi.from_kubeconfig(config, private_networks=("127.0.0.0/8",))
    with pytest.raises(errors.CredentialsInvalid):  # the listener answers 403
        await allowed.get("/version")
    await allowed.close()
    assert listener.accepted == 1


async def test_status_activities_read_a_cluster_inside_the_allowed_networks(tmp_path: Path) -> None:
    with FakeKube(token="tkn-net") as fake:
        cfg = Settings(state_dir=tmp_path / "state", private_networks=("127.0.0.1/32",))
        opened = Store.open(cfg)
        try:
            envs = ClusterEnvs(cfg, opened)
            await envs.store_credentials("c-fake", fake.kubeconfig())
            acts = StatusActivities(cfg, envs, opened)
            api = await acts.api_for("c-fake")
            assert (await api.version())["gitVersion"]
            await acts.close()
        finally:
            await opened.close()
