"""The sandbox's fault injection: error answers (status, Retry-After), dropped connections, latency,
request filters, seeded determinism, counts, the HTTP control surface, and what real clients make
of it (kubectl retries an error answer that carries Retry-After, and fails on one that does not)."""

from __future__ import annotations

import http.client
import subprocess
import time
from pathlib import Path

import pytest

from sandbox import SandboxCluster
from tests.conftest import helm_tools
from tests.support.sandbox import ApiClient, sandbox_cluster, tool_env


def statuses(cluster: SandboxCluster, n: int = 40, path: str = "/api/v1/namespaces") -> list[int]:
    client = ApiClient(cluster)
    try:
        return [client.request("GET", path)[0] for _ in range(n)]
    finally:
        client.close()


def test_faults_are_off_by_default() -> None:
    with sandbox_cluster(tls=False) as c:
        config = c.config.as_dict()
        assert (config["error_rate"], config["drop_rate"], config["latency"]) == (0.0, 0.0, 0.0)
        assert (config["error_status"], config["retry_after"], config["fault_filter"]) == (500, None, None)
        assert set(statuses(c, 20)) == {200}
        assert c.fault_counts() == {"error": 0, "drop": 0, "latency": 0}


def test_the_same_seed_gives_the_same_faults_and_set_faults_restarts_the_sequence() -> None:
    with sandbox_cluster(tls=False, seed=1) as c:
        c.set_faults(error_rate=0.3, seed=42)
        first = statuses(c)
        c.set_faults(error_rate=0.3, seed=42)
        assert statuses(c) == first and set(first) == {200, 500}
        c.set_faults(error_rate=0.3, seed=43)
        assert statuses(c) != first
        # Without a seed: the cluster's own seed.
        c.set_faults(error_rate=0.3)
        default = statuses(c)
    with sandbox_cluster(tls=False, seed=1) as other:
        other.set_faults(error_rate=0.3)
        assert statuses(other) == default


def test_error_answers_carry_the_status_reason_and_retry_after() -> None:
    with sandbox_cluster(tls=False) as c:
        client = ApiClient(c)
        c.set_faults(error_rate=1.0, error_status=403)
        status, body = client.json("GET", "/api/v1/namespaces")
        assert status == 403 and body["reason"] == "Forbidden" and body["kind"] == "Status"
        c.set_faults(error_rate=1.0, error_status=429, retry_after=2)
        status, headers, _ = client.request("GET", "/api/v1/namespaces")
        assert status == 429 and headers["retry-after"] == "2"
        c.set_faults(error_rate=1.0, error_status=503)
        status, headers, _ = client.request("GET", "/api/v1/namespaces")
        assert status == 503 and "retry-after" not in headers
        assert c.fault_counts()["error"] == 3
        # The answer was an error: nothing was created.
        c.set_faults(error_rate=1.0)
        assert client.json("POST", "/api/v1/namespaces", {"metadata": {"name": "nope"}})[0] == 500
        c.set_faults()
        assert c.get("namespaces", None, "nope") is None


def test_drops_close_the_connection_unanswered_and_are_counted() -> None:
    with sandbox_cluster(tls=False) as c:
        c.set_faults(drop_rate=1.0)
        client = ApiClient(c)
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            client.request("POST", "/api/v1/namespaces", {"metadata": {"name": "dropped"}})
        assert c.fault_counts()["drop"] == 1
        c.set_faults()
        assert c.get("namespaces", None, "dropped") is None  # dropped before it was handled


def test_latency_delays_every_request_and_is_counted() -> None:
    with sandbox_cluster(tls=False) as c:
        c.set_faults(latency=0.1)
        started = time.monotonic()
        assert statuses(c, 5) == [200] * 5
        assert time.monotonic() - started >= 0.5
        assert c.fault_counts() == {"error": 0, "drop": 0, "latency": 5}
        c.reset_counters()
        assert c.fault_counts() == {"error": 0, "drop": 0, "latency": 0}


def test_filters_limit_faults_to_matching_requests() -> None:
    with sandbox_cluster(tls=False) as c:
        client = ApiClient(c)
        c.set_faults(error_rate=1.0, only="POST *|DELETE */configmaps/*")
        assert client.request("GET", "/api/v1/namespaces/default/configmaps")[0] == 200
        assert (
            client.json("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "x"}})[0]
            == 500
        )
        assert client.request("DELETE", "/api/v1/namespaces/default/configmaps/x")[0] == 500
        assert c.fault_counts()["error"] == 2
        # drop_only limits drops further; errors still follow `only` alone.
        c.set_faults(error_rate=0.0, drop_rate=1.0, drop_only="GET *")
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            client.request("GET", "/api/v1/namespaces")
        client = ApiClient(c)
        assert (
            client.json("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "y"}})[0]
            == 201
        )
        c.set_faults(latency=2.0, only="WATCH *")
        started = time.monotonic()
        assert client.request("GET", "/api/v1/namespaces")[0] == 200
        assert time.monotonic() - started < 1.5


def test_a_limit_stops_faults_after_that_many() -> None:
    with sandbox_cluster(tls=False) as c:
        c.set_faults(error_rate=1.0, only="POST *", limit=2)
        client = ApiClient(c)
        codes = [
            client.json("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": f"c{i}"}})[0]
            for i in range(4)
        ]
        assert codes == [500, 500, 201, 201]
        assert c.fault_counts()["error"] == 2
        c.set_faults(error_rate=1.0, limit=1)  # setting it again restarts the count
        assert [client.request("GET", "/api/v1/namespaces")[0] for _ in range(2)] == [500, 200]
        c.set_faults(latency=0.05, limit=0)  # latency is not limited
        assert client.request("GET", "/api/v1/namespaces")[0] == 200
        assert c.fault_counts()["latency"] == 1


def test_control_surface_sets_reports_and_refuses_fault_settings() -> None:
    with sandbox_cluster(tls=False) as c:
        client = ApiClient(c)
        status, config = client.json(
            "POST",
            "/_sandbox/config",
            {"error_rate": 1.0, "error_status": 503, "retry_after": 1, "fault_filter": "GET /api/v1/*",
             "drop_filter": None, "fault_seed": 9},
        )  # fmt: skip
        assert status == 200 and config["error_status"] == 503 and config["fault_seed"] == 9
        # The control surface itself is never faulted nor counted.
        assert client.request("GET", "/api/v1/namespaces")[0] == 503
        status, counters = client.json("GET", "/_sandbox/counters")
        assert status == 200 and counters["faults"]["error"] == 1 and counters["total"] == 1
        assert client.json("GET", "/_sandbox/dump")[1]["faults"]["error"] == 1
        for bad in (
            {"error_status": 200},
            {"error_status": True},
            {"retry_after": -1},
            {"retry_after": 1.5},
            {"fault_seed": "x"},
            {"fault_filter": 5},
            {"fault_limit": -1},
            {"drop_rate": 1.5},
        ):
            assert client.json("POST", "/_sandbox/config", bad)[0] == 400, bad
        assert c.config.error_status == 503  # a refused change changes nothing
        assert client.json("POST", "/_sandbox/reset")[0] == 200
        config = c.config.as_dict()
        assert (config["error_rate"], config["error_status"], config["retry_after"]) == (0.0, 500, None)
        assert (config["fault_filter"], config["drop_filter"], config["fault_seed"]) == (None, None, None)
        assert config["fault_limit"] is None
        assert c.fault_counts() == {"error": 0, "drop": 0, "latency": 0}


def test_command_line_flags(tmp_path: Path) -> None:
    from sandbox.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(["--kubeconfig-out", str(tmp_path / "kc"), "--error-status", "200"])
    assert info.value.code == 2


@pytest.mark.parametrize("retry_after, succeeds", [(0, True), (None, False)], ids=["retry-after", "none"])
def test_kubectl_retries_only_errors_that_carry_retry_after(
    tmp_path: Path, retry_after: int | None, succeeds: bool
) -> None:
    kubectl = helm_tools("helm4").kubectl
    with sandbox_cluster() as c:
        env = tool_env(c, tmp_path)
        c.set_faults(error_rate=0.5, error_status=503, retry_after=retry_after, seed=5)
        runs = [
            subprocess.run(
                [str(kubectl), "get", "namespaces", "-o", "name"], env=env, capture_output=True, text=True,
                timeout=60, check=False,
            )
            for _ in range(4)
        ]  # fmt: skip
        assert c.fault_counts()["error"] > 0
    ok = [r.returncode == 0 for r in runs]
    if succeeds:
        assert all(ok), [r.stderr[-300:] for r in runs]
        assert all("namespace/default" in r.stdout for r in runs)
    else:
        assert not all(ok)
