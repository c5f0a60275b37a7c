"""Worker health: the checks, the file, the probe, and a real worker process writing it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kduflow import health
from kduflow.config import ConfigError, Settings
from tests.conftest import helm_tools, worker_env

ROOT = Path(__file__).resolve().parent.parent


def write(path: Path, **fields: Any) -> None:
    data = {"healthy": True, "checked_at": time.time(), "interval": 10.0, "problems": [], "task_queue": "q"}
    data.update(fields)
    path.write_text(json.dumps(data))


def test_evaluate_fresh_healthy_file(tmp_path: Path) -> None:
    path = tmp_path / "health.json"
    write(path)
    healthy, reason = health.evaluate(path)
    assert healthy and "task queue q" in reason


@pytest.mark.parametrize(
    ("age", "fields", "expected"),
    [
        pytest.param(31, {}, "stale: last check 31 s ago", id="older than 3 intervals"),
        pytest.param(7, {"interval": 2.0}, "stale", id="interval from the file"),
        pytest.param(
            0,
            {"healthy": False, "problems": ["document store: TimeoutError: x", "temporal worker: y"]},
            "unhealthy: document store: TimeoutError: x; temporal worker: y",
            id="failed checks",
        ),
        pytest.param(0, {"healthy": False, "problems": []}, "no reason recorded", id="no reason"),
        pytest.param(0, {"interval": "soon"}, "unreadable health file", id="bad field"),
    ],
)
def test_evaluate_unhealthy_files(tmp_path: Path, age: float, fields: dict[str, Any], expected: str) -> None:
    path = tmp_path / "health.json"
    now = time.time()
    write(path, checked_at=now - age, **fields)
    healthy, reason = health.evaluate(path, now=now)
    assert not healthy and expected in reason, reason


def test_liveness_fails_only_where_a_restart_helps(tmp_path: Path) -> None:
    path = tmp_path / "health.json"
    write(path, healthy=False, problems=["document store: ServerSelectionTimeoutError: x"])
    assert health.evaluate(path, liveness=True) == (
        True, "alive, unhealthy: document store: ServerSelectionTimeoutError: x"
    )  # fmt: skip
    assert not health.evaluate(path)[0]
    write(path, healthy=False, problems=["temporal worker: shut down", "temporal frontend: RPCError: x"])
    assert not health.evaluate(path, liveness=True)[0]
    write(path, checked_at=time.time() - 60)
    assert not health.evaluate(path, liveness=True)[0]
    path.unlink()
    assert not health.evaluate(path, liveness=True)[0]


def test_evaluate_missing_and_garbled(tmp_path: Path) -> None:
    healthy, reason = health.evaluate(tmp_path / "absent.json")
    assert not healthy and "no health file" in reason
    garbled = tmp_path / "garbled.json"
    garbled.write_text('{"healthy": tr')
    healthy, reason = health.evaluate(garbled)
    assert not healthy and "unreadable" in reason


def test_probe_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "health.json"
    assert health.main([], environ={}) == 2
    assert "KDUFLOW_HEALTH_FILE" in capsys.readouterr().err
    assert health.main([], environ={"KDUFLOW_HEALTH_FILE": str(path)}) == 1
    write(path)
    assert health.main([], environ={"KDUFLOW_HEALTH_FILE": str(path)}) == 0
    assert "healthy" in capsys.readouterr().out
    write(path, healthy=False, problems=["temporal frontend: RPCError: unavailable"])
    assert health.main(["--file", str(path)], environ={}) == 1
    assert "temporal frontend: RPCError: unavailable" in capsys.readouterr().err


class FakeWorker:
    def __init__(self, shut_down: bool = False) -> None:
        self.is_shutdown = shut_down


class FakeService:
    def __init__(self) -> None:
        self.error: Exception | None = None
        self.calls = 0

    async def get_system_info(self, request: Any, timeout: Any = None) -> None:
        self.calls += 1
        if self.error is not None:
            raise self.error


class FakeClient:
    def __init__(self) -> None:
        self.workflow_service = FakeService()


class FakeStore:
    def __init__(self) -> None:
        self.delay = 0.0
        self.error: Exception | None = None

    async def ping(self) -> None:
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error


async def test_check_once_names_each_failed_check() -> None:
    client, store = FakeClient(), FakeStore()
    assert await health.check_once(FakeWorker(), client, store, timeout=1) == []
    assert client.workflow_service.calls == 1
    client.workflow_service.error = RuntimeError("connection refused\nmore")
    store.delay = 5
    problems = await health.check_once(FakeWorker(shut_down=True), client, store, timeout=0.2)
    assert problems == [
        "temporal worker: shut down",
        "temporal frontend: RuntimeError: connection refused",
        "document store: no answer within 0.2 s",
    ]


async def until(check: Any, timeout: float = 10) -> None:
    """Wait until ``check()`` holds (the reporting loop runs on this event loop, every 0.1 s)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the timeout"
        await asyncio.sleep(0.05)


def read(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, ValueError):
        return {}


async def test_reporting_rewrites_the_file_and_removes_it(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "health.json"
    path.parent.mkdir()
    write(path, checked_at=time.time())  # left by an earlier run: removed before the first check
    store = FakeStore()
    async with health.reporting(path, 0.1, FakeWorker(), FakeClient(), store, "tq"):
        assert not path.exists()
        await until(lambda: read(path).get("task_queue") == "tq")
        first = read(path)
        assert first["healthy"] and first["pid"] == os.getpid() and first["interval"] == 0.1
        store.error = ConnectionError("mongo down")
        await until(lambda: not read(path).get("healthy", True))
        assert health.evaluate(path) == (False, "unhealthy: document store: ConnectionError: mongo down")
        store.error = None
        await until(lambda: read(path).get("healthy") is True)
        assert health.evaluate(path)[0]
        assert read(path)["checked_at"] > first["checked_at"]
    assert not path.exists()
    assert list(path.parent.iterdir()) == []  # no temporary file left behind


async def test_reporting_without_a_file_does_nothing(tmp_path: Path) -> None:
    client = FakeClient()
    async with health.reporting(None, 0.1, FakeWorker(), client, FakeStore()):
        await asyncio.sleep(0.2)
    assert client.workflow_service.calls == 0


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("KDUFLOW_HEALTH_FILE", "relative/health.json", "absolute path"),
        ("KDUFLOW_HEALTH_FILE", "/", "directory"),
        ("KDUFLOW_HEALTH_INTERVAL", "0.5", "between 1 and 300"),
        ("KDUFLOW_HEALTH_INTERVAL", "often", "not a number"),
    ],
)
def test_bad_health_settings_name_the_variable(tmp_path: Path, variable: str, value: str, message: str):
    env = {"KDUFLOW_STATE_DIR": str(tmp_path), "PATH": os.environ.get("PATH", ""), variable: value}
    with pytest.raises(ConfigError, match=f"{variable}.*{message}"):
        Settings.from_env(env, helm=str(helm_tools("helm4").helm), kubectl=str(helm_tools("helm4").kubectl))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def probe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kduflow.health", *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=30,
    )  # fmt: skip


def wait_for(path: Path, check: Any, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            data = None
        if data is not None and check(data):
            return data
        time.sleep(0.2)
    raise AssertionError(f"{path}: not as expected within {timeout} s")


@pytest.mark.parametrize("store", ["embedded", "mongodb-down"])
async def test_worker_writes_its_health_file(tmp_path: Path, local_env: Any, store: str) -> None:
    """KDUFLOW_HEALTH_FILE and KDUFLOW_HEALTH_INTERVAL reach a real worker: the file says healthy
    with the embedded store and names the store when MONGO_URI points at nothing; the probe agrees;
    the file goes away when the worker stops."""
    path = tmp_path / "run" / "health.json"
    env = worker_env(tmp_path, local_env, KDUFLOW_HEALTH_FILE=str(path), KDUFLOW_HEALTH_INTERVAL="1")
    if store == "mongodb-down":
        env["MONGO_URI"] = f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=300"
    proc = subprocess.Popen(
        [sys.executable, "worker.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        first = wait_for(path, lambda data: True)
        assert first["interval"] == 1 and first["task_queue"] == env["KDUFLOW_TASK_QUEUE"]
        if store == "embedded":
            assert first["healthy"] and first["problems"] == [], first
            second = wait_for(path, lambda data: data["checked_at"] > first["checked_at"], timeout=15)
            assert 0.5 < second["checked_at"] - first["checked_at"] < 10  # every KDUFLOW_HEALTH_INTERVAL
            result = probe(env)
            assert result.returncode == 0 and "healthy" in result.stdout, result
        else:
            assert not first["healthy"], first
            assert [p.split(":")[0] for p in first["problems"]] == ["document store"], first
            result = probe(env)
            assert result.returncode == 1 and "document store" in result.stderr, result
            result = probe(env, "--liveness")
            assert result.returncode == 0 and "alive, unhealthy: document store" in result.stdout, result
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert f"health={path} every 1s" in out
    assert not path.exists()
    assert probe(env).returncode == 1
