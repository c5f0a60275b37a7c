"""pytest fixtures for the local chart repository of ``sandbox.chartrepo``.

The charts (``sandbox/charts``), the repository builder and the server live in
:mod:`sandbox.chartrepo` (dev tooling, no pytest); this module re-exports the names tests use.

Fixtures: ``chart_repo_factory`` (session; ``factory(auth=None|(user, pw), tls=False)`` -> a started
:class:`ChartRepoServer`) and ``chart_repo_server`` (session; plain HTTP, no auth). Other test modules
use them by binding them at module level (or the lead lists this module in ``pytest_plugins``)::

    from tests.support import charts
    chart_repo_factory = charts.chart_repo_factory
    chart_repo_server = charts.chart_repo_server
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.chartrepo import (
    CHART_NAMES,
    CHARTS_DIR,
    VERSIONS,
    ChartRepoServer,
    RequestRecord,
    build_repository,
    chart_repo,
    charts_dir,
    copy_chart,
    free_port,
)

__all__ = [
    "CHART_NAMES",
    "CHARTS_DIR",
    "VERSIONS",
    "ChartRepoFactory",
    "ChartRepoServer",
    "RequestRecord",
    "build_repository",
    "chart_repo",
    "chart_repo_factory",
    "chart_repo_server",
    "charts_dir",
    "copy_chart",
    "free_port",
]

_PACKAGING_HELM = Path(__file__).resolve().parent.parent.parent / "tools" / "helm3" / "helm"

ChartRepoFactory = Callable[..., ChartRepoServer]


@pytest.fixture(scope="session")
def chart_repo_factory() -> Iterator[ChartRepoFactory]:
    """``factory(auth=None | (user, password), tls=False) -> started ChartRepoServer``.

    Repositories live until the end of the session. Charts are packaged with the pinned helm 3 (the
    packages are identical for helm 4, which reads them in tests).
    """
    stack: list[Any] = []

    def factory(*, auth: tuple[str, str] | None = None, tls: bool = False) -> ChartRepoServer:
        if not _PACKAGING_HELM.exists():
            pytest.fail(f"{_PACKAGING_HELM} is missing: run `python scripts/fetch_tools.py`")
        cm = chart_repo(_PACKAGING_HELM, auth=auth, tls=tls)
        server = cm.__enter__()
        stack.append(cm)
        return server

    try:
        yield factory
    finally:
        for cm in reversed(stack):
            cm.__exit__(None, None, None)


@pytest.fixture(scope="session")
def chart_repo_server(chart_repo_factory: ChartRepoFactory) -> ChartRepoServer:
    """A plain-HTTP repository without auth, shared by the session. Don't set fail_status on it."""
    return chart_repo_factory()
