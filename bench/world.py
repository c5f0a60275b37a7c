"""The benchmark's world: one dev server, four sandbox clusters and a chart repository shared by the
whole run (:class:`Shared`), and per helm major one kduflow worker subprocess with its own state
directory, embedded store and registered clusters, plus private helm environments for the raw
baseline (:class:`World`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client

from activities.store import Store
from bench.worker_probe import PROBE_ENV
from kduflow.codec import data_converter
from kduflow.config import Settings
from kduflow.devserver import LOOPBACK_NETWORKS
from sandbox import SandboxCluster
from sandbox.chartrepo import ChartRepoServer
from workflows.cluster_models import InitClusterInput, InitClusterResult

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
REPO_NAME = "bench"
REPO_ID = "repo-bench"
CHART = f"{REPO_NAME}/webapp"
#: helm --timeout (seconds) of every operation meant to succeed.
OP_TIMEOUT = 120


@dataclass
class Shared:
    """What every helm major's round uses: the dev server address, the clusters, the repository."""

    address: str
    clusters: list[SandboxCluster]
    repo: ChartRepoServer
    workdir: Path


@dataclass
class HelmRun:
    """One raw helm process: wall seconds, exit status, output."""

    seconds: float
    returncode: int
    stdout: str
    stderr: str


@dataclass
class ProcStat:
    """CPU seconds (own, and of reaped children) and resident memory of one process."""

    cpu_self: float
    cpu_children: float
    rss_kib: int
    hwm_kib: int


def proc_stat(pid: int) -> ProcStat:
    """Read ``/proc/<pid>/stat`` and ``status`` (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    # After ")": state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    cpu_self = (int(fields[11]) + int(fields[12])) / tick
    cpu_children = (int(fields[13]) + int(fields[14])) / tick
    rss = hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return ProcStat(cpu_self, cpu_children, rss, hwm)


def reset_peak_rss(pid: int) -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of ``pid`` (``clear_refs`` 5); False when refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class RssSampler:
    """Samples VmRSS of a process every ``period`` seconds; the peak stands in for VmHWM when the
    kernel refuses to reset the latter."""

    def __init__(self, pid: int, period: float = 0.1) -> None:
        self.pid = pid
        self.period = period
        self.peak_kib = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                self.peak_kib = max(self.peak_kib, proc_stat(self.pid).rss_kib)
            await asyncio.sleep(self.period)

    def start(self) -> RssSampler:
        self.peak_kib = 0
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def stop(self) -> int:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(OSError):
            self.peak_kib = max(self.peak_kib, proc_stat(self.pid).rss_kib)
        return self.peak_kib


def helm_home_env(root: Path, kubeconfig: Path) -> dict[str, str]:
    """A private helm environment (HOME, HELM_*_HOME, KUBECONFIG) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    return {
        "HOME": str(root),
        "KUBECONFIG": str(kubeconfig),
        "HELM_CONFIG_HOME": str(root / "helm-config"),
        "HELM_CACHE_HOME": str(root / "helm-cache"),
        "HELM_DATA_HOME": str(root / "helm-data"),
        "NO_COLOR": "1",
        "PATH": "/usr/bin:/bin",
    }


async def run_helm(argv: Sequence[str], env: dict[str, str], stdin: bytes | None = None) -> HelmRun:
    """Run one helm process (argv list, no shell) and time it from spawn to exit."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin)
    return HelmRun(
        time.monotonic() - started,
        proc.returncode or 0,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
    )


class World:
    """One helm major: the kduflow worker subprocess, the store it writes, the registered clusters,
    and the baseline's private helm environments (one per cluster)."""

    def __init__(self, shared: Shared, major: int, poll_interval: float) -> None:
        self.shared = shared
        self.major = major
        self.poll_interval = poll_interval
        self.helm = str(ROOT / "tools" / f"helm{major}" / "helm")
        self.kubectl = str(ROOT / "tools" / f"helm{major}" / "kubectl")
        self.dir = shared.workdir / f"helm{major}"
        self.state_dir = self.dir / "state"
        self.probe_log = self.dir / "probe.jsonl"
        self.worker_log = self.dir / "worker.log"
        run = uuid.uuid4().hex[:6]
        self.task_queue = f"bench-h{major}-{run}"
        self.lock_queue = f"bench-locks-h{major}-{run}"
        self.cluster_ids = [f"h{major}-c{i}-{run}" for i in range(len(shared.clusters))]
        self.raw_env: list[dict[str, str]] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: Client | None = None
        self.store: Store | None = None
        self.versions: dict[str, str] = {}
        #: Id of the workflow :meth:`workflow` started last.
        self.last_workflow_id = ""

    @property
    def wait_flag(self) -> str:
        # The same flag kduflow passes (activities/helm_cli.py): helm 4's --wait takes a value.
        return "--wait=watcher" if self.major == 4 else "--wait"

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        settings = Settings.from_env(
            {},
            helm=self.helm,
            kubectl=self.kubectl,
            state_dir=self.state_dir,
            private_networks=LOOPBACK_NETWORKS,
        )
        self.store = Store.open(settings)
        await self.store.insert_one(
            "k8srepos", {"_id": REPO_ID, "name": REPO_NAME, "url": self.shared.repo.url, "type": "helm-chart"}
        )
        for cid, cluster in zip(self.cluster_ids, self.shared.clusters, strict=True):
            await self.store.insert_one(
                "k8sclusters",
                {
                    "_id": cid,
                    "name": cid,
                    "credentials": cluster.kubeconfig(),
                    "_admin": {"helm_chart_repos": [REPO_ID]},
                },
            )
        await asyncio.to_thread(self._start_worker)
        self.client = await Client.connect(self.shared.address, data_converter=data_converter(None))
        await self.client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="default"))
        await asyncio.gather(*(self._init_cluster(cid) for cid in self.cluster_ids))
        for i, cluster in enumerate(self.shared.clusters):
            home = self.dir / f"raw-c{i}"
            env = helm_home_env(home, cluster.write_kubeconfig(home / "kubeconfig"))
            self.raw_env.append(env)
            added = await run_helm([self.helm, "repo", "add", REPO_NAME, self.shared.repo.url], env)
            if added.returncode:
                raise RuntimeError(f"helm repo add failed: {added.stderr}")
        self.versions["helm"] = (
            await run_helm([self.helm, "version", "--short"], self.raw_env[0])
        ).stdout.strip()

    def worker_env(self) -> dict[str, str]:
        home = self.dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        return {
            "PATH": os.pathsep.join([str(Path(PYTHON).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
            "HOME": str(home),
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "TEMPORAL_ADDRESS": self.shared.address,
            "TEMPORAL_NAMESPACE": "default",
            "KDUFLOW_TASK_QUEUE": self.task_queue,
            "KDUFLOW_LOCK_TASK_QUEUE": self.lock_queue,
            "KDUFLOW_STATE_DIR": str(self.state_dir),
            "KDUFLOW_HELM": self.helm,
            "KDUFLOW_KUBECTL": self.kubectl,
            "KDUFLOW_ALLOW_PRIVATE_NETWORKS": ",".join(LOOPBACK_NETWORKS),
            "KDUFLOW_POLL_INTERVAL": f"{self.poll_interval:g}",
            "KDUFLOW_LOG_LEVEL": "WARNING",
            PROBE_ENV: str(self.probe_log),
        }

    def _start_worker(self, timeout: float = 60) -> None:
        with open(self.worker_log, "ab") as out:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "bench.worker_probe", "--log-level", "INFO"],
                cwd=ROOT,
                env=self.worker_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while "kduflow worker on" not in self.worker_log.read_text(errors="replace"):
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited ({self.proc.returncode}): {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready after {timeout:.0f}s: {self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.worker_log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    async def _init_cluster(self, cid: str) -> None:
        assert self.client is not None
        await self.client.execute_workflow(
            "InitCluster",
            InitClusterInput(cluster_uuid=cid, namespace="kube-system", sync_interval_s=-1),
            id=f"bench-init-{cid}",
            task_queue=self.task_queue,
            result_type=InitClusterResult,
            execution_timeout=timedelta(seconds=180),
        )

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 40)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        if self.store is not None:
            await self.store.close()
            self.store = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    # -- operations ----------------------------------------------------------------------------

    async def workflow(
        self, name: str, arg: Any, result_type: type, *, prefix: str = "bench"
    ) -> tuple[float, Any]:
        """Start one workflow and wait for its result; seconds from ``start_workflow`` to the result."""
        assert self.client is not None
        started = time.monotonic()
        self.last_workflow_id = f"{prefix}-{name}-{uuid.uuid4().hex[:10]}"
        handle = await self.client.start_workflow(
            name,
            arg,
            id=self.last_workflow_id,
            task_queue=self.task_queue,
            result_type=result_type,
            execution_timeout=timedelta(seconds=600),
        )
        result = await handle.result()
        return time.monotonic() - started, result

    async def new_nsr(self, name: str) -> str:
        """An ``nsrs`` document with one KDU entry for the status writes; returns its id."""
        assert self.store is not None
        nsr_id = f"nsr-{name}"
        await self.store.insert_one(
            "nsrs", {"_id": nsr_id, "_admin": {"deployed": {"K8s": [{"kdu-name": name}]}}}
        )
        return nsr_id

    async def raw(self, cluster: int, *args: str, values: dict[str, Any] | None = None) -> HelmRun:
        """The raw helm baseline against cluster ``cluster`` (values as JSON on stdin, like kduflow)."""
        argv = [self.helm, *args]
        stdin = None
        if values is not None:
            argv += ["--values", "-"]
            stdin = json.dumps(values).encode()
        run = await run_helm(argv, self.raw_env[cluster], stdin)
        if run.returncode:
            raise RuntimeError(f"helm {' '.join(args[:3])} failed: {run.stderr.strip()[:500]}")
        return run

    # -- the probe's event log -------------------------------------------------------------------

    def events(self, since: float = 0.0, until: float | None = None) -> list[dict[str, Any]]:
        """Probe events of the worker with ``since <= t <= until`` (epoch seconds)."""
        out = []
        try:
            lines = self.probe_log.read_text().splitlines()
        except OSError:
            return []
        for line in lines:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            t = float(ev.get("t", 0))
            if t >= since and (until is None or t <= until):
                out.append(ev)
        return out
