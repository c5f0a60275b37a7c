"""The URL policy: which URLs from workflow input helm may fetch from (SSRF guard).

Pure tests of the matcher and the address classes, then the policy with a fake resolver (no DNS
query leaves the machine: only ``localhost`` is resolved for real), then ``kdu.inspect`` /
``kdu.install`` / ``kdu.upgrade`` with the real helm 3 and helm 4 against chart repositories and a
recording TCP listener on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.errors import UrlNotAllowed
from activities.models import HelmInstallInput, HelmUpgradeInput, InspectInput, ReleaseRef
from activities.release import ReleaseActivities
from activities.runner import ProcessResult, Runner
from activities.store import Store
from activities.url_policy import (
    AllowEntry,
    UrlPolicy,
    UrlRefused,
    address_problem,
    parse_url,
    refusal_message,
)
from kduflow.config import Settings
from tests.conftest import HelmTools
from tests.support.charts import ChartRepoServer, free_port
from workflows import validation

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------ test doubles


class FakeDns:
    """Stands in for ``loop.getaddrinfo``: answers from a table, records every name asked."""

    def __init__(self, answers: dict[str, list[str]] | None = None) -> None:
        self.answers = answers or {}
        self.asked: list[str] = []

    async def __call__(self, host: str, port: Any, *, type: int = 0, **kw: Any) -> list[tuple[Any, ...]]:
        self.asked.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for address in self.answers[host]:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            out.append((family, socket.SOCK_STREAM, 6, "", (address, port)))
        return out


class Docs:
    """Stands in for the store's ``find`` over ``k8srepos``."""

    def __init__(self, *docs: dict[str, Any]) -> None:
        self.docs = list(docs)

    async def find(self, collection: str, filter: dict) -> list[dict]:
        assert (collection, filter) == ("k8srepos", {})
        return list(self.docs)


class RecordingRunner(Runner):
    """The real runner, recording every argv it was asked to run."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def run(self, argv: Sequence[str], *, env: Any, **kwargs: Any) -> ProcessResult:
        self.calls.append(list(argv))
        return await super().run(argv, env=env, **kwargs)


class Envs:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.asked: list[str] = []

    async def get(self, cluster_uuid: str) -> Any:
        self.asked.append(cluster_uuid)
        return type("Env", (), {"env": self.env})()


def settings(tmp_path: Path, helm: str = "helm", **kw: Any) -> Settings:
    return Settings(helm=helm, kubectl="kubectl", state_dir=tmp_path / "state", charts_dir=None, **kw)


async def refused(coro: Any) -> UrlNotAllowed:
    with pytest.raises(UrlNotAllowed) as info:
        await coro
    return info.value


async def app_error(coro: Any) -> ApplicationError:
    with pytest.raises(ApplicationError) as info:
        await coro
    return info.value


# ------------------------------------------------------------------------------------ address classes


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.1", "private"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:10.0.0.1", "private"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("fc00::1", "private"),
        ("fec0::1", "site-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("100.64.0.1", "not globally routable"),
        ("192.0.2.1", "private"),
        ("2001:db8::1", "private"),
        ("64:ff9b::7f00:1", "reserved"),
        ("2002:7f00:1::1", "embeds 127.0.0.1 is loopback"),
        ("2002:a9fe:a9fe::1", "embeds 169.254.169.254 is link-local"),
    ],
)
def test_internal_addresses_are_refused(address: str, why: str) -> None:
    problem = address_problem(address)
    assert problem is not None and why in problem


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert address_problem(address) is None


@pytest.mark.parametrize(
    ("address", "networks", "allowed"),
    [
        ("127.0.0.1", ["127.0.0.1/32"], True),
        ("127.0.0.2", ["127.0.0.1/32"], False),
        ("::ffff:127.0.0.1", ["127.0.0.1/32"], True),  # mapped: judged as its IPv4 address
        ("10.20.3.4", ["10.20.0.0/16"], True),
        ("10.21.3.4", ["10.20.0.0/16"], False),
        ("169.254.169.254", ["10.0.0.0/8"], False),
        ("::1", ["127.0.0.0/8"], False),
        ("::1", ["::1/128"], True),
        ("fe80::1", ["fe80::/10"], True),
    ],
)
def test_private_networks_admit_only_their_addresses(
    address: str, networks: list[str], allowed: bool
) -> None:
    import ipaddress

    nets = [ipaddress.ip_network(n) for n in networks]
    assert (address_problem(address, nets) is None) is allowed


# ------------------------------------------------------------------------------------ parsing and matching


def test_parse_normalises() -> None:
    a = parse_url("HTTPS://Charts.Example.COM.:443/a//b/")
    assert (a.scheme, a.host, a.port, a.segments) == ("https", "charts.example.com", 443, ("a", "b"))
    assert parse_url("http://[::1]:8080/x").host == "::1"
    assert parse_url("reg.example:5000/charts", default_scheme="oci").key == (
        "oci", "reg.example", 5000, ("charts",)
    )  # fmt: skip


@pytest.mark.parametrize(
    "url",
    [
        "",
        "ftp://h/x",
        "file:///etc/passwd",
        "https://u:p@h/x",
        "https://u@h/x",
        "oci://user:pw@reg.io/charts/app",
        "https://h/x?token=1",
        "https://h/x#frag",
        "https://h/a/../b",
        "https://h/a/%2e%2e/b",
        "https://h/a%2fb",
        "https://h\\@evil/x",
        "https:///nohost",
        "https://h:0/",
        "https://h:99999/",
        "https://h x/",
        "https://*.example.com/",
        "reg.example:5000/charts",  # no scheme and none implied
    ],
)
def test_parse_refuses(url: str) -> None:
    with pytest.raises(UrlRefused):
        parse_url(url)


@pytest.mark.parametrize(
    ("entry", "url", "matches"),
    [
        ("https://charts.example.com", "https://charts.example.com/x/index.yaml", True),
        ("https://charts.example.com", "https://charts.example.com:443/x", True),
        ("https://charts.example.com", "https://charts.example.com:8443/x", False),  # not the default port
        ("https://charts.example.com", "http://charts.example.com/x", False),  # scheme must match
        ("https://charts.example.com:8443/", "https://charts.example.com:8443", True),
        ("https://charts.example.com/stable", "https://charts.example.com/stable", True),
        ("https://charts.example.com/stable", "https://charts.example.com/stable/", True),
        ("https://charts.example.com/stable", "https://charts.example.com/stable/sub", True),
        ("https://charts.example.com/stable", "https://charts.example.com/stablex", False),
        ("https://charts.example.com/stable", "https://charts.example.com/", False),
        ("https://charts.example.com/stable/", "https://charts.example.com/stable/x", True),
        ("https://charts.example.com", "https://evil.charts.example.com/", False),
        ("https://charts.example.com", "https://charts.example.com.evil.io/", False),
        ("oci://reg.example.com/charts", "oci://reg.example.com/charts/app", True),
        ("oci://reg.example.com/charts", "oci://reg.example.com/other/app", False),
        ("oci://reg.example.com:5000/charts", "oci://reg.example.com/charts/app", False),
        ("oci://reg.example.com", "https://reg.example.com/x", False),
        ("charts.example.com", "http://charts.example.com:8080/x", True),  # bare host: any scheme/port
        ("charts.example.com", "oci://charts.example.com/a/b", True),
        ("charts.example.com", "https://sub.charts.example.com/", False),
        ("*.example.com", "https://charts.example.com/", True),
        ("*.example.com", "oci://a.b.example.com:5000/c/d", True),
        ("*.example.com", "https://example.com/", False),
        ("*.example.com", "https://badexample.com/", False),
        ("https://*.example.com/charts", "https://a.example.com/charts/x", True),
        ("https://*.example.com/charts", "https://a.example.com/other", False),
        ("10.20.1.2", "https://10.20.1.2:8443/x", True),
        ("https://[::1]:8443/", "https://[0:0::1]:8443/x", True),
        ("CHARTS.example.com", "https://charts.EXAMPLE.com/", True),
    ],
)
def test_allowlist_matching(entry: str, url: str, matches: bool) -> None:
    assert AllowEntry.parse(entry).matches(parse_url(url)) is matches


# ------------------------------------------------------------------------------------ the policy


async def test_unlisted_url_is_refused_without_resolving(tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="activities.url_policy")
    dns = FakeDns({"charts.example.com": ["8.8.8.8"]})
    policy = UrlPolicy(settings(tmp_path), Docs(), getaddrinfo=dns)
    for url in ("https://charts.example.com/", "http://169.254.169.254/latest/meta-data", "http://10.0.0.1/"):
        err = await refused(policy.check(url, field="repo_url"))
        assert err.message == refusal_message("repo_url")
        assert err.retryable is False and err.type_name == "UrlNotAllowed"
    assert dns.asked == []
    assert "169.254.169.254" in caplog.text and "neither a registered repository" in caplog.text


async def test_allowlisted_public_host_is_allowed(tmp_path: Path) -> None:
    dns = FakeDns({"charts.example.com": ["8.8.8.8", "2606:4700:4700::1111"]})
    policy = UrlPolicy(settings(tmp_path, url_allowlist=("charts.example.com",)), getaddrinfo=dns)
    decision = await policy.check("https://charts.example.com/stable", field="repo_url")
    assert (decision.registered, decision.rule) == (False, "allowlist charts.example.com")
    assert dns.asked == ["charts.example.com"]


@pytest.mark.parametrize(
    "answers",
    [
        ["127.0.0.1"],
        ["::1"],
        ["169.254.169.254"],
        ["8.8.8.8", "10.0.0.5"],  # every address counts
        ["::ffff:127.0.0.1"],
        ["0.0.0.0"],
    ],
)
async def test_allowlisted_host_resolving_inside_is_refused(
    tmp_path: Path, answers: list[str], caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="activities.url_policy")
    dns = FakeDns({"charts.example.com": answers})
    policy = UrlPolicy(settings(tmp_path, url_allowlist=("https://charts.example.com",)), getaddrinfo=dns)
    err = await refused(policy.check("https://charts.example.com/x", field="kdu_model"))
    assert err.message == refusal_message("kdu_model")
    for address in answers:
        assert address not in err.message
    # The operator learns why.
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert all(a in warning.getMessage() for a in answers)
    assert "https://charts.example.com" in warning.getMessage()


async def test_private_networks_admit_an_allowlisted_host(tmp_path: Path) -> None:
    dns = FakeDns({"charts.internal": ["10.20.1.2", "127.0.0.1"]})
    cfg = settings(
        tmp_path, url_allowlist=("charts.internal",), private_networks=("10.20.0.0/16", "127.0.0.1/32")
    )
    decision = await UrlPolicy(cfg, getaddrinfo=dns).check("http://charts.internal:8080/", field="repo_url")
    assert decision.registered is False
    only_one = settings(tmp_path, url_allowlist=("charts.internal",), private_networks=("10.20.0.0/16",))
    policy = UrlPolicy(only_one, getaddrinfo=dns)
    await refused(policy.check("http://charts.internal:8080/", field="repo_url"))


async def test_private_networks_alone_allow_nothing(tmp_path: Path) -> None:
    dns = FakeDns({"charts.internal": ["10.20.1.2"]})
    policy = UrlPolicy(settings(tmp_path, private_networks=("10.0.0.0/8",)), getaddrinfo=dns)
    await refused(policy.check("http://charts.internal/", field="repo_url"))
    await refused(policy.check("http://10.20.1.2/", field="repo_url"))
    assert dns.asked == []


async def test_resolution_failure_is_the_same_refusal(tmp_path: Path) -> None:
    dns = FakeDns({})
    policy = UrlPolicy(settings(tmp_path, url_allowlist=("*.example.com",)), getaddrinfo=dns)
    err = await refused(policy.check("https://nope.example.com/", field="repo_url"))
    assert err.message == refusal_message("repo_url")

    async def slow(*args: Any, **kw: Any) -> list[Any]:
        await asyncio.sleep(5)
        return []

    policy = UrlPolicy(
        settings(tmp_path, url_allowlist=("*.example.com",)), getaddrinfo=slow, resolve_timeout=0.05
    )
    err = await refused(policy.check("https://slow.example.com/", field="repo_url"))
    assert err.message == refusal_message("repo_url")


async def test_localhost_resolves_to_loopback_and_is_refused(tmp_path: Path) -> None:
    # The real resolver: "localhost" comes from the hosts file, no query leaves the machine.
    policy = UrlPolicy(settings(tmp_path, url_allowlist=("localhost",)))
    await refused(policy.check("http://localhost:8879/charts", field="repo_url"))
    policy = UrlPolicy(
        settings(tmp_path, url_allowlist=("localhost",), private_networks=("127.0.0.0/8", "::1/128"))
    )
    assert (await policy.check("http://localhost:8879/charts", field="repo_url")).registered is False


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8879/", "http://[::1]:8879/", "http://0.0.0.0:8879/", "http://[::ffff:127.0.0.1]/"],
)
async def test_allowlisted_ip_literal_inside_is_refused(tmp_path: Path, url: str) -> None:
    host = parse_url(url).host
    policy = UrlPolicy(settings(tmp_path, url_allowlist=(host,)))
    await refused(policy.check(url, field="repo_url"))


async def test_registered_repository_is_allowed_whatever_it_resolves_to(tmp_path: Path) -> None:
    dns = FakeDns()
    docs = Docs(
        {"_id": "r1", "name": "local", "url": "http://127.0.0.1:8879/charts/"},
        {"_id": "r2", "name": "meta", "url": "HTTP://LocalHost:80"},
        {"_id": "r3", "name": "reg", "url": "oci://127.0.0.1:5000/helm", "oci": True},
        {"_id": "r4", "name": "reg2", "url": "10.0.0.9:5000/charts", "oci": True},
        {"_id": "r5", "name": "cred", "url": "http://u:pw@192.168.1.1/"},
    )
    policy = UrlPolicy(settings(tmp_path), docs, getaddrinfo=dns)
    for url, rid in [
        ("http://127.0.0.1:8879/charts", "r1"),
        ("http://127.0.0.1:8879/charts/", "r1"),
        ("http://localhost/", "r2"),
        ("oci://127.0.0.1:5000/helm/webapp", "r3"),
        ("oci://127.0.0.1:5000/helm/sub/webapp", "r3"),
        ("oci://10.0.0.9:5000/charts/webapp", "r4"),
    ]:
        decision = await policy.check(url, field="kdu_model")
        assert (decision.registered, decision.rule) == (True, f"k8srepos {rid}"), url
    for url in [
        "http://127.0.0.1:8879/charts/sub",  # http(s) repositories match exactly
        "https://127.0.0.1:8879/charts",
        "http://127.0.0.1:8880/charts",
        "oci://127.0.0.1:5000/helmx/webapp",
        "oci://127.0.0.1:5001/helm/webapp",
        "http://127.0.0.1:5000/helm",  # an OCI registration does not cover http
        "oci://127.0.0.1:8879/charts/webapp",  # nor an http one oci
        "http://192.168.1.1/",  # a document with credentials in its URL registers nothing
        "http://u:pw@127.0.0.1:8879/charts",  # credentials in the input: refused even when registered
    ]:
        await refused(policy.check(url, field="kdu_model"))
    assert dns.asked == []


async def test_registered_repositories_come_from_the_store(tmp_path: Path, store: Store) -> None:
    await store.insert_one("k8srepos", {"_id": "r1", "name": "local", "url": "http://127.0.0.1:8879"})
    policy = UrlPolicy(settings(tmp_path), store, getaddrinfo=FakeDns())
    assert (await policy.check("http://127.0.0.1:8879/", field="repo_url")).registered is True
    await refused(policy.check("http://127.0.0.1:8878/", field="repo_url"))


async def test_refusal_logs_redact_credentials(tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="activities.url_policy")
    policy = UrlPolicy(settings(tmp_path, url_allowlist=("charts.example.com",)), getaddrinfo=FakeDns())
    err = await refused(policy.check("https://alice:Sup3r-Secret@charts.example.com/", field="repo_url"))
    assert "Sup3r-Secret" not in err.message and "Sup3r-Secret" not in caplog.text
    assert "***@charts.example.com" in caplog.text


async def test_each_setting_takes_effect_from_the_environment(tmp_path: Path, helm3: HelmTools) -> None:
    base = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "KDUFLOW_HELM": str(helm3.helm),
        "KDUFLOW_KUBECTL": str(helm3.kubectl),
        "KDUFLOW_STATE_DIR": str(tmp_path / "state"),
    }
    url = "http://charts.internal:8080/stable"
    dns = FakeDns({"charts.internal": ["10.20.1.2"]})

    nothing = Settings.from_env(base)
    await refused(UrlPolicy(nothing, getaddrinfo=dns).check(url, field="repo_url"))
    assert dns.asked == []  # not allowlisted: never resolved

    listed = Settings.from_env({**base, "KDUFLOW_URL_ALLOWLIST": "https://other.example, charts.internal"})
    assert listed.url_allowlist == ("https://other.example", "charts.internal")
    await refused(UrlPolicy(listed, getaddrinfo=dns).check(url, field="repo_url"))
    assert dns.asked == ["charts.internal"]  # allowlisted, resolved, refused: 10.20.1.2 is private

    both = Settings.from_env(
        {**base, "KDUFLOW_URL_ALLOWLIST": "charts.internal", "KDUFLOW_ALLOW_PRIVATE_NETWORKS": "10.20.0.0/16"}
    )
    decision = await UrlPolicy(both, getaddrinfo=dns).check(url, field="repo_url")
    assert decision.rule == "allowlist charts.internal"


async def test_the_plugin_wires_the_policy_with_the_store(
    tmp_path: Path, store: Store, helm3: HelmTools
) -> None:
    from kduflow.plugin import KduflowPlugin

    cfg = Settings(
        helm=str(helm3.helm),
        kubectl=str(helm3.kubectl),
        state_dir=tmp_path / "w",
        url_allowlist=("x.example",),
    )
    plugin = KduflowPlugin(settings=cfg, store=store)
    assert plugin.release._url_policy is plugin.url_policy
    assert plugin.url_policy.store is store
    assert [e.text for e in plugin.url_policy.allowlist] == ["x.example"]


def test_workflow_validation_refuses_credentials_in_urls() -> None:
    with pytest.raises(validation.InvalidInputError):
        validation.validate_repo_url("https://u:p@charts.example.com/x")
    with pytest.raises(validation.InvalidInputError):
        validation.validate_repo_url("https://charts.example.com@evil.io/x")
    with pytest.raises(validation.InvalidInputError):
        validation.parse_kdu_model("oci://u:p@reg.example.com/charts/app")


# ------------------------------------------------------------------------------------ release activities


class Listener:
    """A TCP listener on 127.0.0.1 that records every connection it accepts."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Listener:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def real_acts(
    tools: HelmTools, tmp_path: Path, store: Any = None, **kw: Any
) -> tuple[ReleaseActivities, RecordingRunner, Envs]:
    cfg = Settings(helm=str(tools.helm), kubectl=str(tools.kubectl), state_dir=tmp_path / "state", **kw)
    runner = RecordingRunner()
    envs = Envs({"KUBECONFIG": str(tmp_path / "nokube"), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    acts = ReleaseActivities(cfg, envs, runner, url_policy=UrlPolicy(cfg, store), heartbeat_every=0.2)
    return acts, runner, envs


async def test_refused_urls_never_start_helm_nor_connect(tools: HelmTools, tmp_path: Path) -> None:
    async with Listener() as listener:
        port = listener.port
        # 127.0.0.1 allowlisted, but without private_networks it stays refused.
        acts, runner, envs = real_acts(tools, tmp_path, url_allowlist=("127.0.0.1", "localhost"))
        env = ActivityEnvironment()
        ref = ReleaseRef("c1", "demo", "ns")
        calls: list[tuple[Any, Any]] = [
            (acts.inspect, InspectInput("", "webapp", repo_url=f"http://127.0.0.1:{port}/charts")),
            (acts.inspect, InspectInput("", "webapp", repo_url=f"http://localhost:{port}")),
            (acts.inspect, InspectInput("", f"oci://127.0.0.1:{port}/charts/webapp:0.1.0")),
            (acts.inspect, InspectInput("c1", f"oci://localhost:{port}/charts/webapp")),
            (acts.install, HelmInstallInput(ref, chart=f"oci://127.0.0.1:{port}/charts/webapp", timeout=5)),
            (acts.upgrade, HelmUpgradeInput(ref, chart=f"oci://127.0.0.1:{port}/c/webapp:0.2.0", timeout=5)),
        ]
        for fn, inp in calls:
            err = await app_error(env.run(fn, inp))
            assert (err.type, err.non_retryable) == ("UrlNotAllowed", True)
            assert "127.0.0.1" not in err.message and str(port) not in err.message
            assert "neither a registered repository nor allowed" in err.message
        await asyncio.sleep(0.2)
        assert listener.connections == 0
    assert runner.calls == []  # not even `helm version`
    assert envs.asked == []


async def test_inspect_via_allowlisted_repo_url_on_loopback_needs_private_networks(
    tools: HelmTools, tmp_path: Path, chart_repo_server: ChartRepoServer
) -> None:
    server = chart_repo_server
    inp = InspectInput("", "webapp", version="0.2.0", repo_url=server.url)
    before = len(server.request_log)
    acts, runner, _ = real_acts(tools, tmp_path / "a", url_allowlist=(server.url,))
    err = await app_error(ActivityEnvironment().run(acts.inspect, inp))
    assert (err.type, err.non_retryable) == ("UrlNotAllowed", True)
    assert runner.calls == [] and len(server.request_log) == before

    acts, runner, _ = real_acts(
        tools, tmp_path / "b", url_allowlist=(server.url,), private_networks=("127.0.0.1/32",)
    )
    result = await ActivityEnvironment().run(acts.inspect, inp)
    assert (result.chart["name"], result.chart["version"]) == ("webapp", "0.2.0")
    assert "replicaCount" in result.values and result.readme.strip()
    assert server.requests_for("/index.yaml") and len(server.request_log) > before


async def test_inspect_from_a_registered_repository_on_loopback(
    tools: HelmTools, tmp_path: Path, chart_repo_server: ChartRepoServer, store: Store
) -> None:
    await store.insert_one("k8srepos", {"_id": "r1", "name": "local", "url": chart_repo_server.url + "/"})
    acts, _, _ = real_acts(tools, tmp_path, store)  # no allowlist, no private networks
    inp = InspectInput("", "webapp", version="0.1.0", repo_url=chart_repo_server.url)
    result = await ActivityEnvironment().run(acts.inspect, inp)
    assert (result.chart["name"], result.chart["version"]) == ("webapp", "0.1.0")
    # A registered repository's errors keep helm's reason.
    missing = InspectInput("", "nope", repo_url=chart_repo_server.url)
    err = await app_error(ActivityEnvironment().run(acts.inspect, missing))
    assert err.type == "ChartNotFound" and "nope" in err.message
    assert str(chart_repo_server.port) in err.message


async def test_unregistered_fetch_errors_do_not_echo_helm(
    tools: HelmTools, tmp_path: Path, chart_repo_server: ChartRepoServer, caplog: Any
) -> None:
    caplog.set_level(logging.WARNING)
    dead = f"http://127.0.0.1:{free_port()}"
    acts, _, _ = real_acts(
        tools,
        tmp_path,
        url_allowlist=(chart_repo_server.url, dead),
        private_networks=("127.0.0.1/32",),
    )
    env = ActivityEnvironment()
    missing = await app_error(env.run(acts.inspect, InspectInput("", "nope", repo_url=chart_repo_server.url)))
    assert missing.type == "ChartNotFound" and missing.non_retryable
    unreachable = await app_error(env.run(acts.inspect, InspectInput("", "webapp", repo_url=dead)))
    assert not unreachable.non_retryable
    for err, port in ((missing, chart_repo_server.port), (unreachable, int(dead.rsplit(":", 1)[1]))):
        assert "fetching the chart from repo_url failed" in err.message
        assert str(port) not in err.message and "127.0.0.1" not in err.message
        assert "Error" not in err.message and "refused" not in err.message
    # The operator's log has helm's reason.
    assert "connection refused" in caplog.text.lower()
