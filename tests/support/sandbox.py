"""Sandbox-cluster helpers other areas' tests import.

```python
from tests.support.sandbox import sandbox, sandbox_cluster, tool_env, demo_chart, run_tool

def test_x(sandbox, tools, tmp_path):            # `sandbox`: one cluster per test module
    env = tool_env(sandbox, tmp_path, tools.dialect)
    run_tool([tools.helm, "install", ...], env)
```
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from sandbox import SandboxCluster

ROOT = Path(__file__).resolve().parents[2]

#: ``Settings(private_networks=...)`` for every test that registers a cluster on loopback (the
#: sandbox, the status test servers): cluster servers outside these networks must be public.
LOOPBACK_NETWORKS: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


@contextmanager
def sandbox_cluster(**kw: Any) -> Iterator[SandboxCluster]:
    """A started ``SandboxCluster(**kw)`` (defaults: TLS, ready_delay 0.2), stopped on exit."""
    kw.setdefault("ready_delay", 0.2)
    with SandboxCluster(**kw) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxCluster]:
    """One HTTPS cluster per test module (ready_delay 0.2 s). Tests share it: use distinct namespaces."""
    with sandbox_cluster() as cluster:
        yield cluster


@pytest.fixture
def sandbox_fresh() -> Iterator[SandboxCluster]:
    """A cluster of the test's own (cheap: it starts in ~10 ms)."""
    with sandbox_cluster() as cluster:
        yield cluster


def tool_env(
    cluster: SandboxCluster, root: Path, name: str = "helm", namespace: str = "default"
) -> dict[str, str]:
    """A private environment for helm/kubectl against ``cluster``: its own HOME, HELM_*_HOME and
    KUBECONFIG (0600) under ``root/name`` — never the user's. Returns the whole process environment."""
    home = root / name
    home.mkdir(parents=True, exist_ok=True)
    kubeconfig = cluster.write_kubeconfig(home / ".kube" / "config", namespace)
    return {
        "HOME": str(home),
        "KUBECONFIG": str(kubeconfig),
        "HELM_CONFIG_HOME": str(home / "helm-config"),
        "HELM_CACHE_HOME": str(home / "helm-cache"),
        "HELM_DATA_HOME": str(home / "helm-data"),
        "NO_COLOR": "1",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }


def run_tool(
    argv: Sequence[str | os.PathLike[str]], env: dict[str, str], timeout: float = 60, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a binary (argv list, no shell) and return the completed process (check rc yourself)."""
    return subprocess.run(
        [str(a) for a in argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
        check=False,
    )


def demo_chart(directory: Path, helm: str | os.PathLike[str] | None = None) -> Path:
    """``helm create demo`` in ``directory`` plus a README.md (for ``helm show readme``); no network."""
    helm = helm or ROOT / "tools" / "helm3" / "helm"
    chart = directory / "demo"
    if not chart.exists():
        home = directory / ".chart-home"
        home.mkdir(parents=True, exist_ok=True)
        env = {
            "HOME": str(home),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HELM_CONFIG_HOME": str(home / "c"),
            "HELM_CACHE_HOME": str(home / "ca"),
            "HELM_DATA_HOME": str(home / "d"),
        }
        proc = run_tool([helm, "create", chart], env)
        if proc.returncode != 0:
            raise RuntimeError(f"helm create failed: {proc.stderr}")
        shutil.rmtree(home, ignore_errors=True)
        (chart / "README.md").write_text("# demo\n\nA chart made by `helm create demo` for sandbox tests.\n")
    return chart


class ApiClient:
    """A raw HTTP client for one sandbox (keep-alive; the cluster's CA; its token unless told otherwise).

    ``request`` returns ``(status, headers, body)``; ``json`` decodes the body. For protocol-level tests
    that need exact headers and bodies (helm-level behaviour is tested with the real binaries)."""

    def __init__(self, cluster: SandboxCluster, token: str | None = None, timeout: float = 10) -> None:
        import http.client
        import ssl

        self.token = cluster.token if token is None else token
        self.timeout = timeout
        if cluster.tls:
            assert cluster.ca_pem is not None
            ctx = ssl.create_default_context(cadata=cluster.ca_pem.decode())
            self.conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", cluster.port, context=ctx, timeout=timeout
            )
        else:
            self.conn = http.client.HTTPConnection("127.0.0.1", cluster.port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        import json

        hdrs = {"Accept": "application/json"}
        if self.token:
            hdrs["Authorization"] = f"Bearer {self.token}"
        data: bytes | None = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            hdrs["Content-Type"] = content_type
        hdrs.update(headers or {})
        self.conn.request(method, path, body=data, headers=hdrs)
        resp = self.conn.getresponse()
        payload = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload

    def json(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        import json

        status, _, payload = self.request(method, path, body, content_type, headers)
        return status, json.loads(payload) if payload else None

    def stream(self, path: str) -> Any:
        """Start a GET (a watch) and return the open response; read it with ``readline()``."""
        hdrs = {"Accept": "application/json", "Authorization": f"Bearer {self.token}"}
        self.conn.request("GET", path, headers=hdrs)
        return self.conn.getresponse()

    def close(self) -> None:
        self.conn.close()
