"""The project's example charts and a local chart repository served over HTTP(S) on 127.0.0.1.

Dev tooling beside the sandbox cluster, used by the demo, the benchmark and the tests. The charts
under ``sandbox/charts`` (``webapp``: a Deployment, Service and ServiceAccount whose pods can be held
not ready with ``ready: false``; ``statefuldb``: a StatefulSet; ``broken``: fails to render) ship as
package data, so :func:`charts_dir` finds them in a checkout and in an installed package alike.
:func:`build_repository` packages them with the real ``helm package`` in two versions each (0.1.0 /
appVersion 1.0.0 and 0.2.0 / appVersion 2.0.0) and indexes them with the real ``helm repo index
--url``. :class:`ChartRepoServer` serves a directory from a thread, optionally behind basic auth
and/or TLS with a freshly generated CA, and records every request (:class:`RequestRecord`).
:func:`chart_repo` does both: a started repository holding every chart, removed on exit.
"""

from __future__ import annotations

import base64
import importlib.resources
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sandbox.tls import make_certs

#: Chart names under :data:`CHARTS_DIR`.
CHART_NAMES: tuple[str, ...] = ("webapp", "statefuldb", "broken")
#: (chart version, app version) pairs every chart is packaged with.
VERSIONS: tuple[tuple[str, str], ...] = (("0.1.0", "1.0.0"), ("0.2.0", "2.0.0"))

#: Where the charts are: ``sandbox/charts`` in a checkout, the package data of an installed package.
CHARTS_DIR: Path = Path(str(importlib.resources.files("sandbox").joinpath("charts")))


def charts_dir() -> Path:
    """:data:`CHARTS_DIR`, after checking that it holds every chart.

    Raises:
        RuntimeError: the package carries no charts (an install without its package data, or one
            loaded from a zip archive, where the charts are no directory helm could read).
    """
    missing = [name for name in CHART_NAMES if not (CHARTS_DIR / name / "Chart.yaml").is_file()]
    if missing:
        raise RuntimeError(
            f"the sandbox package carries no chart {', '.join(missing)} under {CHARTS_DIR}: reinstall "
            "kduflow from a source tree or wheel that includes its package data"
        )
    return CHARTS_DIR


def build_repository(helm: Path | str, out_dir: Path, base_url: str) -> list[Path]:
    """Package every chart in both versions into ``out_dir`` and write ``index.yaml``.

    Returns the paths of the packages and of the index (last). Raises ``subprocess.CalledProcessError``
    (with helm's stderr) when helm fails.
    """
    source = charts_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="kduflow-helm-home-") as home:
        env = helm_env(Path(home))
        for name in CHART_NAMES:
            for version, app_version in VERSIONS:
                _run(
                    [str(helm), "package", str(source / name), "--version", version,
                     "--app-version", app_version, "--destination", str(out_dir)],
                    env,
                )
                made.append(out_dir / f"{name}-{version}.tgz")
        _run([str(helm), "repo", "index", str(out_dir), "--url", base_url.rstrip("/")], env)
    made.append(out_dir / "index.yaml")
    missing = [p for p in made if not p.exists()]
    if missing:
        raise RuntimeError(f"helm did not produce {missing}")
    return made


def helm_env(home: Path) -> dict[str, str]:
    # A private helm home so nothing from the developer's ~/.config/helm leaks into the packages.
    return {
        "HOME": str(home),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
        "NO_COLOR": "1",
        "PATH": "/usr/bin:/bin",
    }


def _run(argv: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, argv, proc.stdout, proc.stderr)


@dataclass(frozen=True)
class RequestRecord:
    """One request the repository saw."""

    method: str
    path: str
    #: User name of the Authorization header (None when absent or not basic auth).
    username: str | None
    #: Whether the credentials matched the configured ones (True when no auth is configured).
    authorized: bool
    status: int


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    repo: ChartRepoServer


class _Handler(SimpleHTTPRequestHandler):
    server: _Server

    #: Set by ChartRepoServer on a per-server subclass.
    _repo_dir: Path

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, directory=str(self._repo_dir), **kwargs)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        return

    def _check(self) -> bool:
        repo = self.server.repo
        username, password = _basic_auth(self.headers.get("Authorization", ""))
        authorized = repo.username is None or (username == repo.username and password == repo.password)
        status = HTTPStatus.OK
        if not authorized:
            status = HTTPStatus.UNAUTHORIZED
        elif repo.fail_status is not None:
            status = HTTPStatus(repo.fail_status)
        path = self.path.split("?", 1)[0]
        if status == HTTPStatus.OK and not (repo.directory / path.lstrip("/")).is_file():
            status = HTTPStatus.NOT_FOUND
        with repo._lock:
            repo.request_log.append(RequestRecord(self.command, path, username, authorized, int(status)))
        if status != HTTPStatus.OK:
            body = f"{int(status)} {status.phrase}\n".encode()
            self.send_response(status)
            if status == HTTPStatus.UNAUTHORIZED:
                self.send_header("WWW-Authenticate", 'Basic realm="kduflow-test"')
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return False
        return True

    def do_GET(self) -> None:
        if self._check():
            super().do_GET()

    def do_HEAD(self) -> None:
        if self._check():
            super().do_HEAD()


def _basic_auth(header: str) -> tuple[str | None, str | None]:
    if not header.lower().startswith("basic "):
        return None, None
    try:
        decoded = base64.b64decode(header[6:].strip()).decode()
    except (ValueError, UnicodeDecodeError):
        return None, None
    user, _, password = decoded.partition(":")
    return user, password


class ChartRepoServer:
    """Serves ``directory`` over HTTP(S) on 127.0.0.1 and a free port, from a daemon thread.

    The port is bound at construction, so :attr:`url` is known before :meth:`start` (build the index
    with it). ``username``/``password`` turn on basic auth (401 otherwise); ``tls`` serves HTTPS with a
    certificate signed by a generated CA (:attr:`ca_pem`, :attr:`ca_file`). Setting :attr:`fail_status`
    (e.g. 500) makes every request fail, to simulate a repository going bad after it was added.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
    ) -> None:
        self.directory = Path(directory)
        self.username = username
        self.password = password
        self.tls = tls
        self.fail_status: int | None = None
        self.request_log: list[RequestRecord] = []
        self._lock = threading.Lock()
        self.ca_pem: str | None = None
        self.ca_file: Path | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="kduflow-chart-repo-tls-")
        repo_dir = self.directory

        class Handler(_Handler):
            _repo_dir = repo_dir

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.repo = self
        if tls:
            # The sandbox's throwaway CA and 127.0.0.1 server certificate serve here too.
            certs = make_certs()
            self._httpd.socket = certs.server_context().wrap_socket(self._httpd.socket, server_side=True)
            self.ca_pem = certs.ca_pem.decode()
            self.ca_file = Path(self._tmp.name) / "ca.pem"
            self.ca_file.write_text(self.ca_pem)
        self.port: int = self._httpd.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    def start(self) -> ChartRepoServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                name=f"chart-repo-{self.port}",
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()
        self._tmp.cleanup()

    def __enter__(self) -> ChartRepoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def requests_for(self, path_suffix: str) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self.request_log if r.path.endswith(path_suffix)]

    def clear_log(self) -> None:
        with self._lock:
            self.request_log.clear()


@contextmanager
def chart_repo(
    helm: Path | str, *, auth: tuple[str, str] | None = None, tls: bool = False
) -> Iterator[ChartRepoServer]:
    """A started repository holding both versions of every chart; stopped and removed on exit."""
    with tempfile.TemporaryDirectory(prefix="kduflow-chart-repo-") as tmp:
        user, password = auth if auth else (None, None)
        server = ChartRepoServer(tmp, username=user, password=password, tls=tls)
        try:
            build_repository(helm, Path(tmp), server.url)
            server.start()
            yield server
        finally:
            server.stop()


def free_port() -> int:
    """A port nothing listens on (for "unreachable repository" cases)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def copy_chart(name: str, dest: Path) -> Path:
    """Copy a chart directory (e.g. for a charts_dir of local charts); returns the copy."""
    target = dest / name
    shutil.copytree(charts_dir() / name, target)
    return target
