"""worker.py and the plugin: registration and start-up configuration errors."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from activities.models import ACTIVITY_NAMES
from kduflow.config import Settings
from kduflow.plugin import KduflowPlugin, activity_methods
from tests.conftest import helm_tools, worker_env
from workflows.cluster_models import CLUSTER_ACTIVITY_NAMES

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def plugin(tmp_path: Path) -> KduflowPlugin:
    tools = helm_tools("helm4")
    return KduflowPlugin(
        settings=Settings.from_env(
            {}, helm=str(tools.helm), kubectl=str(tools.kubectl), state_dir=tmp_path / "state"
        )
    )


async def test_plugin_registers_every_workflow_and_activity(ts_env, plugin: KduflowPlugin):
    worker = Worker(ts_env.client, task_queue=f"tq-{uuid.uuid4()}", plugins=[plugin])
    config = worker.config(active_config=True)
    names = {w.__temporal_workflow_definition.name for w in config["workflows"]}  # type: ignore[attr-defined]
    assert names == {
        "InstallKdu",
        "UpgradeKdu",
        "RollbackKdu",
        "ScaleKdu",
        "UninstallKdu",
        "KduStatus",
        "KduInstances",
        "KduServices",
        "KduValues",
        "InspectKdu",
        "InitCluster",
        "ResetCluster",
        "SyncRepos",
        "ReleaseLock",
        "GetScaleCount",
        "GetService",
        "RepoAdd",
        "RepoList",
        "RepoRemove",
    }
    activities = {a.__temporal_activity_definition.name for a in config["activities"]}  # type: ignore[attr-defined]
    assert set(ACTIVITY_NAMES.values()) <= activities
    assert set(CLUSTER_ACTIVITY_NAMES.values()) <= activities
    # The SDK's own heartbeat throttle: no worker-wide cap (status is reported in the helm
    # activities, nothing waits for a poller's cancellation).
    assert config["max_heartbeat_throttle_interval"] == timedelta(seconds=60)  # the SDK's default
    await plugin.store.close()


async def test_plugin_keeps_a_heartbeat_throttle_the_worker_chose(ts_env, plugin: KduflowPlugin):
    worker = Worker(
        ts_env.client,
        task_queue=f"tq-{uuid.uuid4()}",
        plugins=[plugin],
        max_heartbeat_throttle_interval=timedelta(seconds=7),
    )
    assert worker.config(active_config=True)["max_heartbeat_throttle_interval"] == timedelta(seconds=7)
    await plugin.store.close()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        pytest.param("KDUFLOW_POLL_INTERVAL", "abc", id="poll interval not a number"),
        pytest.param("KDUFLOW_HELM", "/nonexistent/helm", id="helm binary missing"),
        pytest.param("MONGO_URI", "http://db", id="mongo uri scheme"),
        pytest.param("KDUFLOW_TASK_QUEUE", "two words", id="task queue with whitespace"),
        pytest.param("KDUFLOW_SECRET_KEY", "k1:dG9vc2hvcnQ=", id="secret key too short"),
    ],
)
def test_worker_refuses_a_bad_setting_at_start_naming_the_variable(tmp_path: Path, variable: str, value: str):
    env = {
        "PATH": os.environ.get("PATH", ""),
        "KDUFLOW_STATE_DIR": str(tmp_path / "state"),
        "KDUFLOW_HELM": str(helm_tools("helm4").helm),
        "KDUFLOW_KUBECTL": str(helm_tools("helm4").kubectl),
        "TEMPORAL_ADDRESS": "127.0.0.1:1",
        variable: value,
    }
    proc = subprocess.run(
        [sys.executable, "worker.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert variable in proc.stderr
    if variable == "KDUFLOW_SECRET_KEY":
        assert "dG9vc2hvcnQ" not in proc.stderr  # never echo a key


def test_dev_worker_starts_on_embedded_defaults_and_stops_on_ctrl_c(tmp_path: Path):
    """`./run worker`: a dev server and a worker on the embedded store; SIGINT stops both cleanly."""
    import signal
    import socket
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "KDUFLOW_", "MONGO_"))}
    env["KDUFLOW_STATE_DIR"] = str(tmp_path / "state")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kduflow.devserver", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "kduflow worker on" in line or not line:
                break
        assert any("kduflow worker on" in line for line in lines), "".join(lines)
        banner = next(line for line in lines if "kduflow worker on" in line)
        assert f"127.0.0.1:{port}" in banner and "store=embedded" in banner and "tools/helm4/helm" in banner
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, "".join(lines) + out
    assert "Traceback" not in out
    with socket.socket() as sock:  # the dev server went away with the worker
        assert sock.connect_ex(("127.0.0.1", port)) != 0


async def test_graceful_shutdown_setting_reaches_the_worker(tmp_path: Path, local_env: Any) -> None:
    """KDUFLOW_GRACEFUL_SHUTDOWN: worker.py hands it to the SDK worker (its shutdown message says so)."""
    import signal
    import time

    env = worker_env(tmp_path, local_env, KDUFLOW_GRACEFUL_SHUTDOWN="42.5")
    proc = subprocess.Popen(
        [sys.executable, "worker.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        lines: list[str] = []
        while time.monotonic() < deadline and not any("kduflow worker on" in line for line in lines):
            lines.append(proc.stdout.readline())
        assert any("graceful_shutdown=42.5s" in line for line in lines), "".join(lines)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "up to 0:00:42.500000" in out, out


async def test_each_activity_name_is_registered_on_the_method_it_names(plugin: KduflowPlugin):
    """A method inserted between an ``@activity.defn`` and the method it decorated would silently
    take over that activity name: every registered method carries the name it is meant for."""
    renamed = {"repo.list": "list_repos", "registry.login": "registry_login"}
    for obj in (plugin.release, plugin.status, plugin.repos, plugin.clusters, plugin.lock):
        for method in activity_methods(obj):
            name = method.__temporal_activity_definition.name  # type: ignore[attr-defined]
            assert not method.__name__.startswith("_"), (name, method.__name__)
            assert method.__name__ == renamed.get(name, name.rsplit(".", 1)[-1]), (name, method.__name__)
    await plugin.store.close()


async def test_plugin_passes_pure_modules_through_the_sandbox_and_keeps_its_guards(ts_env, plugin):
    """Pure modules are shared between workflow runs (not re-imported per run); the sandbox still
    guards the modules that hold workflow logic, and a runner the worker chose itself is kept."""
    worker = Worker(ts_env.client, task_queue=f"tq-{uuid.uuid4()}", plugins=[plugin])
    runner = worker.config(active_config=True)["workflow_runner"]
    assert isinstance(runner, SandboxedWorkflowRunner)
    passed = runner.restrictions.passthrough_modules
    assert {"workflows.validation", "activities.models", "yaml"} <= passed
    assert not {"workflows", "workflows.kdu", "workflows.lock", "workflows.common"} & passed
    own = UnsandboxedWorkflowRunner()
    chosen = Worker(ts_env.client, task_queue=f"tq-{uuid.uuid4()}", plugins=[plugin], workflow_runner=own)
    assert chosen.config(active_config=True)["workflow_runner"] is own
    await plugin.store.close()
