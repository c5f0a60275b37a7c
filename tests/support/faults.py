"""Fault-test rig: real worker processes, a restartable Temporal dev server, sandbox clusters, a chart
repository, and the oracle that checks convergence after crashes, redeploys and faults.

Pieces:

* :class:`DevServer` -- ``temporal server start-dev`` with a SQLite file, so it can be stopped and
  started again on the same port with the same data.
* :class:`WorkerProcess` -- ``python worker.py`` configured only through environment variables, one
  state directory per process. The embedded store is shared: every state directory's ``store`` is a
  symlink to one directory (the store serialises writers of several processes with a file lock).
  ``kill`` sends a signal to the worker alone (helm runs in its own session and survives it) or, with
  ``with_helm``, to the helm/kubectl processes the worker started as well (a container that dies
  takes its children with it).
* :class:`Rig` -- one test's world: clusters registered in the store and initialised with
  ``InitCluster``, workers on a private task queue, a client with kduflow's data converter.
* :class:`Op`, :class:`ReleaseModel`, :func:`check_batch` -- the oracle. Operations on one release
  are ordered by when each acquired the release's lock (read from the workflow histories: the lock
  is granted by the ``lock.request`` activity's answer or by the ``kduflow_lock_granted`` signal),
  a sequential model of helm predicts each operation's outcome in that order, and the final state
  of each release (helm history, values, chart, the ``nsrs`` status document) is compared with the
  model and with itself.

Seeds: :func:`scenario_seed` takes ``KDUFLOW_FAULTS_SEED`` or the clock and prints it; every
randomised choice of a scenario comes from ``random.Random(seed)``. ``KDUFLOW_FAULTS_LARGE=1``
selects the larger variants. :data:`TALLY` counts operations, kills, restarts and faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.service import RPCError

from activities.models import (
    ACTIVITY_NAMES,
    DbDict,
    InstallKduInput,
    KduResult,
    RollbackKduInput,
    ScaleKduInput,
    UninstallKduInput,
    UpgradeKduInput,
)
from activities.store import Store
from contract.errors import application_cause
from contract.search import dev_server_args
from kduflow.codec import data_converter
from kduflow.config import Settings
from sandbox import SandboxCluster
from tests.support.sandbox import tool_env
from workflows.cluster_models import InitClusterInput, InitClusterResult

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
LARGE = os.environ.get("KDUFLOW_FAULTS_LARGE", "") not in ("", "0")
REPO_NAME = "faults"
REPO_ID = "repo-faults"
CHART = f"{REPO_NAME}/webapp"
#: Statuses helm leaves while an operation is in flight (or after a helm process died mid-way).
PENDING = {"pending-install", "pending-upgrade", "pending-rollback", "uninstalling"}
#: Phases the status poller writes while an operation runs; never the last word of a finished one.
IN_PROGRESS_PHASES = {"pending", "installing", "upgrading", "scaling", "rolling-back", "uninstalling"}
HELM_ACTIVITIES = {ACTIVITY_NAMES[k] for k in ("install", "upgrade", "rollback", "uninstall")}


def log(text: str) -> None:
    """A progress line on the terminal (pytest captures stdout; stderr of the terminal shows with -s)."""
    print(f"[faults {time.strftime('%H:%M:%S')}] {text}", flush=True)


def scenario_seed(name: str) -> int:
    """The scenario's seed: ``KDUFLOW_FAULTS_SEED`` or the clock; printed so a failure can be replayed."""
    raw = os.environ.get("KDUFLOW_FAULTS_SEED", "").strip()
    seed = int(raw) if raw else int(time.time() * 1000) % 1_000_000_007
    log(f"{name}: seed {seed} (replay with KDUFLOW_FAULTS_SEED={seed})")
    return seed


@dataclass
class Tally:
    """What the fault tests did, over the whole module (printed per scenario)."""

    operations: int = 0
    sigkills: int = 0
    helm_killed: int = 0
    sigterms: int = 0
    worker_starts: int = 0
    server_restarts: int = 0
    faults_injected: int = 0
    requests_delayed: int = 0

    def line(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in vars(self).items())


TALLY = Tally()


# ------------------------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def temporal_cli() -> str:
    from tests.conftest import temporal_cli as find

    return find()


def children_of(pid: int) -> list[tuple[int, str]]:
    """``(pid, argv as text)`` of the live processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
            if int(fields[1]) != pid or fields[0] == b"Z":
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except (OSError, IndexError, ValueError):
            continue
        found.append((int(entry), argv))
    return found


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


class DevServer:
    """``temporal server start-dev`` on a fixed port with a SQLite file (restartable with its data)."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.db = workdir / "temporal.db"
        self.port = free_port()
        self.log_path = workdir / "temporal.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [
            temporal_cli(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(self.port),
            "--db-filename", str(self.db), "--headless", "--log-level", "warn", *dev_server_args(),
        ]  # fmt: skip
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while not port_open(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"temporal dev server exited ({self.proc.returncode}): {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"temporal dev server not listening after 60 s: {self.log_tail()}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, grace: float = 20) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self, down_for: float = 0.0, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        time.sleep(down_for)
        self.start()
        self.restarts += 1
        TALLY.server_restarts += 1

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


class WorkerProcess:
    """One ``python worker.py`` process, configured by environment variables only."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.env = env
        self.log_path = workdir / f"worker-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        #: Every pid this worker ran as (identities in histories are "<pid>@<host>").
        self.pids: list[int] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def identity(self) -> str:
        return f"{self.pid}@{socket.gethostname()}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60) -> None:
        """Start and return once the worker polls its task queue (it logs its settings then)."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as out:
            out.write(f"\n==== start {time.strftime('%H:%M:%S')} ====\n".encode())
            self.proc = subprocess.Popen(
                [PYTHON, str(ROOT / "worker.py")],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pids.append(self.proc.pid)
        TALLY.worker_starts += 1
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_path.read_bytes()[offset:].decode("utf-8", "replace")
            if "kduflow worker on" in text:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited with {self.proc.returncode}:\n{text[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {self.name} not ready after {timeout:.0f}s:\n{text[-3000:]}")
            time.sleep(0.1)

    def helm_children(self) -> list[tuple[int, str]]:
        """The helm/kubectl processes this worker runs now."""
        if not self.alive():
            return []
        return [(pid, argv) for pid, argv in children_of(self.pid) if "helm" in argv or "kubectl" in argv]

    def kill(self, sig: int = signal.SIGKILL, *, with_helm: bool = False) -> list[tuple[int, str]]:
        """Signal the worker (only it: helm has its own session). ``with_helm``: SIGKILL the helm and
        kubectl processes it started too, as when a container dies. Returns those processes."""
        if not self.alive():
            return []
        helm = self.helm_children()
        os.kill(self.pid, sig)
        killed = []
        if with_helm:
            for pid, argv in helm:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append((pid, argv))
        if sig == signal.SIGKILL:
            TALLY.sigkills += 1
            TALLY.helm_killed += len(killed)
            assert self.proc is not None
            self.proc.wait(10)
        elif sig == signal.SIGTERM:
            TALLY.sigterms += 1
        return helm

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """End the process (SIGTERM, then SIGKILL after the 30 s graceful shutdown plus a margin)."""
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


# ------------------------------------------------------------------------------------------------
# The rig
# ------------------------------------------------------------------------------------------------


@dataclass
class ClusterHandle:
    """A registered sandbox cluster plus a private helm environment for checking it."""

    uuid: str
    sandbox: SandboxCluster
    helm: str
    env: dict[str, str]

    def helm_json(self, *args: str) -> Any:
        """Run the real helm against the sandbox; the JSON output, or ``{"error": stderr}``."""
        proc = subprocess.run(
            [self.helm, *args, "-o", "json"], env=self.env, capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            return {"error": proc.stderr.strip()}
        return json.loads(proc.stdout or "null")


@dataclass
class Rel:
    """One release the scenario operates on, with its own ``nsrs`` status document."""

    cluster: ClusterHandle
    name: str
    namespace: str
    nsr_id: str

    @property
    def db_dict(self) -> DbDict:
        return DbDict(collection="nsrs", filter={"_id": self.nsr_id}, path="_admin.deployed.K8s.0")

    def __str__(self) -> str:
        return f"{self.cluster.uuid}/{self.namespace}/{self.name}"


class Rig:
    """One scenario's world. Use as ``async with Rig(...) as rig``; stops its workers and clusters."""

    def __init__(
        self,
        tmp: Path,
        server: DevServer,
        repo_url: str,
        *,
        dialect: str = "helm4",
        name: str = "rig",
    ) -> None:
        self.tmp = tmp
        self.server = server
        self.repo_url = repo_url
        self.dialect = dialect
        self.helm = str(ROOT / "tools" / dialect / "helm")
        self.kubectl = str(ROOT / "tools" / dialect / "kubectl")
        self.task_queue = f"faults-{name}-{uuid.uuid4().hex[:8]}"
        self.store_dir = tmp / "shared-store"
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.clusters: dict[str, ClusterHandle] = {}
        self.workers: list[WorkerProcess] = []
        self.client: Client | None = None
        self.store: Store | None = None
        self._sandboxes: list[SandboxCluster] = []

    def state_dir(self, name: str) -> Path:
        """A private state directory whose ``store`` is the shared store directory."""
        state = self.tmp / f"state-{name}"
        state.mkdir(parents=True, exist_ok=True)
        link = state / "store"
        if not link.exists():
            link.symlink_to(self.store_dir, target_is_directory=True)
        return state

    async def __aenter__(self) -> Rig:
        settings = Settings.from_env(
            {}, helm=self.helm, kubectl=self.kubectl, state_dir=self.state_dir("test")
        )
        self.store = Store.open(settings)
        await self.store.insert_one(
            "k8srepos", {"_id": REPO_ID, "name": REPO_NAME, "url": self.repo_url, "type": "helm-chart"}
        )
        self.client = await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for worker in self.workers:
            await asyncio.to_thread(worker.stop)
        for sandbox in self._sandboxes:
            sandbox.stop()
        if self.store is not None:
            await self.store.close()

    async def connect(self) -> Client:
        """A client with kduflow's data converter; waits for the server to answer (it may be starting)."""
        deadline = time.monotonic() + 60
        while True:
            try:
                client = await Client.connect(self.server.address, data_converter=data_converter(None))
                await client.workflow_service.describe_namespace(
                    DescribeNamespaceRequest(namespace="default")
                )
                return client
            except (RuntimeError, RPCError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    # -- workers ------------------------------------------------------------------------------------

    def worker_env(self, name: str) -> dict[str, str]:
        home = self.tmp / f"home-{name}"
        home.mkdir(parents=True, exist_ok=True)
        return {
            "PATH": os.pathsep.join([str(Path(PYTHON).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
            "HOME": str(home),
            "PYTHONUNBUFFERED": "1",
            "TEMPORAL_ADDRESS": self.server.address,
            "TEMPORAL_NAMESPACE": "default",
            "KDUFLOW_TASK_QUEUE": self.task_queue,
            "KDUFLOW_STATE_DIR": str(self.state_dir(name)),
            "KDUFLOW_HELM": self.helm,
            "KDUFLOW_KUBECTL": self.kubectl,
            "KDUFLOW_ALLOW_PRIVATE_NETWORKS": "127.0.0.0/8",
            "KDUFLOW_POLL_INTERVAL": "1",
            "KDUFLOW_LOG_LEVEL": "INFO",
        }

    async def start_worker(self, name: str, **env: str) -> WorkerProcess:
        """Start ``python worker.py``; keyword arguments add or override environment variables."""
        worker = WorkerProcess(name, {**self.worker_env(name), **env}, self.tmp)
        await asyncio.to_thread(worker.start)
        self.workers.append(worker)
        return worker

    def worker_logs(self, limit: int = 4000) -> str:
        return "\n".join(f"--- worker {w.name} ---\n{w.log_text()[-limit:]}" for w in self.workers)

    # -- clusters and releases -----------------------------------------------------------------------

    async def add_cluster(self, name: str, **sandbox_kw: Any) -> ClusterHandle:
        """Start a sandbox cluster, register it (``k8sclusters``) and run ``InitCluster`` (needs a worker).

        The cluster id gets a random suffix: lock workflows are named after the cluster and outlive
        a test by their idle time, so ids are never reused.
        """
        sandbox_kw.setdefault("ready_delay", 0.5)
        sandbox_kw.setdefault("lb_delay", 0.3)
        sandbox = SandboxCluster(**sandbox_kw).start()
        self._sandboxes.append(sandbox)
        assert self.store is not None and self.client is not None
        cluster_uuid = f"{name}-{uuid.uuid4().hex[:6]}"
        await self.store.insert_one(
            "k8sclusters",
            {
                "_id": cluster_uuid,
                "name": name,
                "credentials": sandbox.kubeconfig(),
                "_admin": {"helm_chart_repos": [REPO_ID]},
            },
        )
        await self.client.execute_workflow(
            "InitCluster",
            InitClusterInput(cluster_uuid=cluster_uuid, namespace="kube-system", sync_interval_s=-1),
            id=f"init-{cluster_uuid}",
            task_queue=self.task_queue,
            result_type=InitClusterResult,
            execution_timeout=dt.timedelta(seconds=180),
        )
        handle = ClusterHandle(cluster_uuid, sandbox, self.helm, tool_env(sandbox, self.tmp / "check", name))
        self.clusters[cluster_uuid] = handle
        return handle

    async def add_release(self, cluster: ClusterHandle, name: str, namespace: str) -> Rel:
        assert self.store is not None
        rel = Rel(cluster, name, namespace, f"nsr-{name}-{uuid.uuid4().hex[:6]}")
        await self.store.insert_one(
            "nsrs", {"_id": rel.nsr_id, "_admin": {"deployed": {"K8s": [{"kdu-name": name}]}}}
        )
        return rel

    async def status_doc(self, rel: Rel) -> dict[str, Any]:
        assert self.store is not None
        doc = await self.store.find_one("nsrs", {"_id": rel.nsr_id})
        assert doc is not None, f"nsrs document of {rel} is gone"
        return doc["_admin"]["deployed"]["K8s"][0]

    # -- operations ------------------------------------------------------------------------------------

    async def start(self, op: Op) -> Op:
        assert self.client is not None
        op.wf_id = f"{op.kind}-{op.rel.name}-{uuid.uuid4().hex[:8]}"
        op.started_at = time.monotonic()
        op.handle = await self.client.start_workflow(
            op.workflow_type,
            op.workflow_input(),
            id=op.wf_id,
            task_queue=self.task_queue,
            result_type=KduResult,
        )
        TALLY.operations += 1
        return op

    async def finish(self, op: Op, timeout: float) -> Op:
        """Wait for the operation's workflow to close (tolerating a Temporal server that is down)."""
        assert op.handle is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                op.outcome = Outcome(status="RUNNING", message=f"still open after {timeout:.0f}s")
                return op
            try:
                result = await asyncio.wait_for(op.handle.result(), timeout=left)
                op.outcome = Outcome(status="COMPLETED", ok=True, result=result)
                break
            except WorkflowFailureError as err:
                app = application_cause(err)
                op.outcome = Outcome(
                    status="FAILED",
                    error_type=(app.type or "") if app else type(err.cause).__name__,
                    message=str(app.message if app else err.cause),
                    details=list(app.details) if app else [],
                )
                break
            except TimeoutError:
                continue
            except (RPCError, RuntimeError):
                await asyncio.sleep(1)  # the server is restarting: ask again
        op.finished_at = time.monotonic()
        return op

    async def run_batch(self, ops: Sequence[Op], timeout: float) -> None:
        """Start ``ops`` (already in start order) concurrently and wait for all of them."""
        for op in ops:
            await self.start(op)
        await asyncio.gather(*(self.finish(op, timeout) for op in ops))
        for op in ops:
            op.timeline = await timeline(op.handle)


# ------------------------------------------------------------------------------------------------
# Operations and their outcomes
# ------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    status: str = ""  # COMPLETED, FAILED, RUNNING (did not close in time)
    ok: bool = False
    error_type: str = ""
    message: str = ""
    details: list[Any] = field(default_factory=list)
    result: KduResult | None = None

    def short(self) -> str:
        if self.ok and self.result is not None:
            return f"ok rev {self.result.revision} {self.result.status}"
        return f"{self.status} {self.error_type}: {self.message[:300]}"


@dataclass
class Timeline:
    """What a workflow's history says about its lock and its helm activities (server times, s)."""

    acquired: float | None = None
    released: float | None = None
    closed: float | None = None
    #: (activity name, scheduled, closed, attempt, identity of the last start, identity of completion)
    helm: list[tuple[str, float, float | None, int, str, str]] = field(default_factory=list)
    #: activity name -> attempts of its last run, for every activity with more than one attempt
    retried: dict[str, int] = field(default_factory=dict)
    identities: set[str] = field(default_factory=set)


#: Events that close an activity, and the field holding their attributes.
_CLOSING = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "activity_task_completed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: "activity_task_failed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: "activity_task_timed_out_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED: "activity_task_canceled_event_attributes",
}


def _local_activity(event: Any) -> tuple[str, float, float] | None:
    """(activity type, scheduled, completed) of a local activity's marker, else None."""
    attrs = event.marker_recorded_event_attributes
    if attrs.marker_name != "core_local_activity" or "data" not in attrs.details:
        return None
    payloads = attrs.details["data"].payloads
    if not payloads:
        return None
    data = json.loads(payloads[0].data)

    def seconds(stamp: Any) -> float:
        stamp = stamp or {}
        return float(stamp.get("seconds", 0)) + float(stamp.get("nanos", 0)) / 1e9

    return str(data.get("activity_type", "")), seconds(data.get("original_schedule_time")), seconds(
        data.get("complete_time")
    )


async def timeline(handle: WorkflowHandle[Any, Any] | None) -> Timeline:
    """Read the lock and helm-activity timeline from a closed workflow's history."""
    out = Timeline()
    if handle is None:
        return out
    for attempt in range(30):
        try:
            history = await handle.fetch_history()
            break
        except RPCError:
            if attempt == 29:
                raise
            await asyncio.sleep(1)
    scheduled: dict[int, tuple[str, float]] = {}
    started: dict[int, tuple[int, str]] = {}
    lock_answer: float | None = None
    granted: float | None = None

    def ts(event: Any) -> float:
        return float(event.event_time.ToDatetime(tzinfo=dt.UTC).timestamp())

    for event in history.events:
        et = event.event_type
        if et == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled[event.event_id] = (
                event.activity_task_scheduled_event_attributes.activity_type.name,
                ts(event),
            )
        elif et == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attrs = event.activity_task_started_event_attributes
            started[attrs.scheduled_event_id] = (attrs.attempt, attrs.identity)
            out.identities.add(attrs.identity)
        elif et in _CLOSING:
            closing = getattr(event, _CLOSING[et])
            who = getattr(closing, "identity", "")  # a timeout has no worker identity
            name, at = scheduled.get(closing.scheduled_event_id, ("?", ts(event)))
            attempt, starter = started.get(closing.scheduled_event_id, (1, ""))
            if who:
                out.identities.add(who)
            if attempt > 1:
                out.retried[name] = max(out.retried.get(name, 0), attempt)
            if name == ACTIVITY_NAMES["lock_request"] and et == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                lock_answer = ts(event)
            if name in HELM_ACTIVITIES:
                out.helm.append((name, at, ts(event), attempt, starter, who))
        elif et == EventType.EVENT_TYPE_MARKER_RECORDED:
            # The lock's request and release are local activities (a marker each, no activity task).
            marker = _local_activity(event)
            if marker is not None:
                kind, scheduled_at, completed_at = marker
                if kind == ACTIVITY_NAMES["lock_request"]:
                    lock_answer = completed_at
                elif kind == ACTIVITY_NAMES["lock_release"]:
                    # When the release was sent: the lock may grant the next holder right after.
                    out.released = scheduled_at
        elif et == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            if event.workflow_execution_signaled_event_attributes.signal_name == "kduflow_lock_granted":
                granted = ts(event)
        elif et == EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED:
            if event.signal_external_workflow_execution_initiated_event_attributes.signal_name == "release":
                out.released = ts(event)
        elif et in (
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
        ):
            out.closed = ts(event)
    if lock_answer is not None:
        out.acquired = max(lock_answer, granted or lock_answer)
    # A helm activity still open when the history was read (it should not be: the workflow closed).
    for sid, (name, at) in scheduled.items():
        if name in HELM_ACTIVITIES and not any(h[1] == at and h[0] == name for h in out.helm):
            attempt, starter = started.get(sid, (1, ""))
            out.helm.append((name, at, None, attempt, starter, ""))
    return out


WORKFLOW_TYPES = {
    "install": "InstallKdu",
    "install-fail": "InstallKdu",
    "upgrade": "UpgradeKdu",
    "upgrade-fail": "UpgradeKdu",
    "rollback": "RollbackKdu",
    "scale": "ScaleKdu",
    "uninstall": "UninstallKdu",
}
#: helm --timeout of operations meant to succeed, and of those meant to time out (never-ready pods).
OK_TIMEOUT = 90
FAIL_TIMEOUT = 5


@dataclass
class Op:
    kind: str
    rel: Rel
    params: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    scale: int = 0
    timeout: int = OK_TIMEOUT
    chart: str = CHART
    wf_id: str = ""
    handle: WorkflowHandle[Any, KduResult] | None = None
    outcome: Outcome | None = None
    timeline: Timeline | None = None
    expected: Expect | None = None
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def workflow_type(self) -> str:
        return WORKFLOW_TYPES[self.kind]

    def workflow_input(self) -> Any:
        rel = self.rel
        cluster = rel.cluster.uuid
        if self.kind in ("install", "install-fail"):
            return InstallKduInput(
                cluster_uuid=cluster, kdu_model=self.chart, kdu_instance=rel.name, namespace=rel.namespace,
                version=self.version, atomic=True, timeout=self.timeout, params=self.params,
                db_dict=rel.db_dict,
            )  # fmt: skip
        if self.kind in ("upgrade", "upgrade-fail"):
            return UpgradeKduInput(
                cluster_uuid=cluster, kdu_instance=rel.name, namespace=rel.namespace,
                kdu_model=self.chart if self.version else "", version=self.version, params=self.params,
                atomic=True, timeout=self.timeout, db_dict=rel.db_dict,
            )  # fmt: skip
        if self.kind == "rollback":
            return RollbackKduInput(
                cluster_uuid=cluster, kdu_instance=rel.name, namespace=rel.namespace, revision=0,
                timeout=self.timeout, db_dict=rel.db_dict,
            )  # fmt: skip
        if self.kind == "scale":
            return ScaleKduInput(
                cluster_uuid=cluster, kdu_instance=rel.name, namespace=rel.namespace, scale=self.scale,
                timeout=self.timeout, db_dict=rel.db_dict,
            )  # fmt: skip
        return UninstallKduInput(
            cluster_uuid=cluster, kdu_instance=rel.name, namespace=rel.namespace, timeout=self.timeout,
            db_dict=rel.db_dict,
        )  # fmt: skip

    def describe(self) -> str:
        what = self.kind
        if self.params:
            what += f" {json.dumps(self.params, sort_keys=True)}"
        if self.version:
            what += f" v{self.version}"
        if self.kind == "scale":
            what += f" to {self.scale}"
        return f"{what} on {self.rel} ({self.wf_id})"


_counter = iter(range(1, 1_000_000))


def random_op(rng: random.Random, rel: Rel, *, allow_install: bool = True) -> Op:
    """One random operation on ``rel`` (its outcome depends on the state it meets; the model knows)."""
    kinds = ["upgrade"] * 4 + ["upgrade-fail"] * 2 + ["rollback"] * 2 + ["scale"] * 3 + ["uninstall"]
    if allow_install:
        kinds += ["install"] * 2 + ["install-fail"]
    kind = rng.choice(kinds)
    n = next(_counter)
    if kind == "install":
        return Op(kind, rel, params={"message": f"m{n}"}, version=rng.choice(["0.1.0", "0.2.0"]))
    if kind == "install-fail":
        return Op(
            kind, rel, params={"message": f"m{n}", "ready": False}, version="0.1.0", timeout=FAIL_TIMEOUT
        )
    if kind == "upgrade":
        return Op(kind, rel, params={"message": f"m{n}"}, version=rng.choice(["", "", "0.1.0", "0.2.0"]))
    if kind == "upgrade-fail":
        return Op(kind, rel, params={"ready": False}, timeout=FAIL_TIMEOUT)
    if kind == "scale":
        return Op(kind, rel, scale=rng.randint(1, 3))
    return Op(kind, rel)


def install_op(rel: Rel, version: str = "0.1.0") -> Op:
    return Op("install", rel, params={"message": f"m{next(_counter)}"}, version=version)


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------


@dataclass
class Rev:
    values: dict[str, Any]
    version: str
    status: str
    description: str = ""


@dataclass
class Expect:
    ok: bool
    error_type: str = ""
    #: Revision the result (or the failure's details) should carry; 0: not checked.
    revision: int = 0
    failed_revision: int = 0
    restored_revision: int = 0
    absent: bool = False


def merged(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


class ReleaseModel:
    """helm's history of one release, as a sequence of kduflow operations would leave it."""

    def __init__(self) -> None:
        self.revs: list[Rev] = []

    @property
    def exists(self) -> bool:
        return bool(self.revs)

    def _deployed(self) -> Rev | None:
        for rev in reversed(self.revs):
            if rev.status == "deployed":
                return rev
        return None

    def _supersede(self) -> None:
        for rev in self.revs:
            if rev.status == "deployed":
                rev.status = "superseded"

    def _add(self, values: dict[str, Any], version: str, status: str, description: str) -> int:
        if status == "deployed":
            self._supersede()
        self.revs.append(Rev(dict(values), version, status, description))
        return len(self.revs)

    def apply(self, op: Op) -> Expect:
        kind = op.kind
        if kind in ("install", "install-fail"):
            if self.revs:
                return Expect(False, "ReleaseNameInUse")
            if kind == "install-fail":
                return Expect(False, "ReleaseFailed", absent=True)  # atomic: helm purges it again
            return Expect(True, revision=self._add(op.params, op.version, "deployed", "Install complete"))
        if kind == "uninstall":
            revision = len(self.revs)
            self.revs = []
            return Expect(True, revision=revision, absent=True)
        if not self.revs:
            return Expect(False, "ReleaseNotFound")
        deployed = self._deployed()
        assert deployed is not None, "the model never leaves a release without a deployed revision"
        if kind in ("upgrade", "upgrade-fail"):
            values = merged(deployed.values, op.params)
            version = op.version or deployed.version
            if kind == "upgrade":
                return Expect(True, revision=self._add(values, version, "deployed", "Upgrade complete"))
            failed = self._add(values, version, "failed", "Upgrade failed")
            restored_index = self.revs.index(deployed) + 1
            back = self._add(deployed.values, deployed.version, "deployed", f"Rollback to {restored_index}")
            return Expect(
                False, "UpgradeRolledBack", revision=back, failed_revision=failed,
                restored_revision=restored_index,
            )  # fmt: skip
        if kind == "scale":
            values = merged(deployed.values, {"replicaCount": op.scale})
            return Expect(True, revision=self._add(values, deployed.version, "deployed", "Upgrade complete"))
        if kind == "rollback":
            below = len(self.revs)
            candidates = [
                i for i, rev in enumerate(self.revs[:-1], start=1)
                if rev.status in ("deployed", "superseded") and i < below
            ]  # fmt: skip
            if not candidates:
                return Expect(False, "InvalidInput")
            restored = candidates[-1]
            latest = self.revs[-1]
            if latest.status == "deployed" and latest.description == f"Rollback to {restored}":
                # kdu.rollback takes a deployed "Rollback to N" for an earlier attempt of its own and
                # writes nothing (the content is N's already): no new revision.
                return Expect(True, revision=len(self.revs), restored_revision=restored)
            target = self.revs[restored - 1]
            revision = self._add(target.values, target.version, "deployed", f"Rollback to {restored}")
            return Expect(True, revision=revision, restored_revision=restored)
        raise AssertionError(f"unknown operation kind {kind}")

    def statuses(self) -> list[tuple[int, str]]:
        return [(i, rev.status) for i, rev in enumerate(self.revs, start=1)]


# ------------------------------------------------------------------------------------------------
# The oracle
# ------------------------------------------------------------------------------------------------


@dataclass
class Problems:
    """Everything the checks found, with evidence; the test fails when any was found."""

    items: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.items.append(text)

    def __bool__(self) -> bool:
        return bool(self.items)

    def report(self, header: str = "") -> str:
        return "\n".join([header, *(f"- {item}" for item in self.items)])


def lock_order(ops: Iterable[Op], problems: Problems) -> list[Op]:
    """The operations of one release sorted by when they got its lock."""
    ordered = []
    for op in ops:
        if op.timeline is None or op.timeline.acquired is None:
            outcome = op.outcome.short() if op.outcome else "-"
            problems.add(f"{op.describe()}: no lock acquisition in its history (outcome {outcome})")
            continue
        ordered.append(op)
    return sorted(ordered, key=lambda o: o.timeline.acquired if o.timeline and o.timeline.acquired else 0.0)


def check_outcome(op: Op, exact_revisions: bool, problems: Problems) -> None:
    exp, out = op.expected, op.outcome
    assert exp is not None
    if out is None or out.status == "RUNNING":
        problems.add(f"{op.describe()}: workflow still RUNNING ({out.message if out else 'not awaited'})")
        return
    if exp.ok != out.ok or (not exp.ok and exp.error_type != out.error_type):
        want = "success" if exp.ok else f"failure {exp.error_type}"
        problems.add(f"{op.describe()}: expected {want}, got {out.short()}")
        return
    if op.kind == "uninstall" and out.result is not None and out.result.status != "absent":
        problems.add(f"{op.describe()}: uninstall result status {out.result.status!r}, not 'absent'")
    if not exact_revisions:
        return
    if out.ok and out.result is not None and op.kind != "uninstall":
        if exp.revision and out.result.revision != exp.revision:
            problems.add(f"{op.describe()}: result revision {out.result.revision}, expected {exp.revision}")
        if op.kind == "rollback" and out.result.restored_revision != exp.restored_revision:
            problems.add(
                f"{op.describe()}: restored revision {out.result.restored_revision}, "
                f"expected {exp.restored_revision}"
            )
    if not out.ok and exp.error_type == "UpgradeRolledBack":
        details = out.details[0] if out.details and isinstance(out.details[0], dict) else {}
        got = (details.get("failed_revision"), details.get("restored_revision"), details.get("revision"))
        expected = (exp.failed_revision, exp.restored_revision, exp.revision)
        if got != expected:
            problems.add(f"{op.describe()}: (failed, restored, new) revisions {got}, expected {expected}")


def check_serialised(ops: Sequence[Op], problems: Problems) -> None:
    """Lock holdings and helm activities of one release's operations never overlap in time."""
    held = sorted(
        (op.timeline.acquired, op.timeline.released or op.timeline.closed or float("inf"), op.wf_id)
        for op in ops
        if op.timeline is not None and op.timeline.acquired is not None
    )  # fmt: skip
    _report_overlaps(f"lock of {ops[0].rel}", held, problems)
    spans = sorted(
        (h[1], h[2] if h[2] is not None else float("inf"), op.wf_id)
        for op in ops
        if op.timeline is not None
        for h in op.timeline.helm
    )  # fmt: skip
    _report_overlaps(f"helm activities on {ops[0].rel}", spans, problems)


def _report_overlaps(what: str, spans: list[tuple[float, float, str]], problems: Problems) -> None:
    """Spans (start, end, owner) sorted by start: report one owner's span starting inside another's."""
    end, owner = float("-inf"), ""
    for start, stop, who in spans:
        if start < end and who != owner:
            problems.add(f"{what}: {who} started at {start:.3f} while {owner} ran until {end:.3f}")
        if stop > end:
            end, owner = stop, who


async def check_release(
    rig: Rig,
    rel: Rel,
    model: ReleaseModel | None,
    problems: Problems,
    *,
    exact_revisions: bool = True,
    require_deployed: bool = True,
) -> dict[str, Any]:
    """Compare the cluster (real helm), the status document and the model; return what was seen.

    Always: no revision pending, the status document agrees with helm's latest revision. With
    ``require_deployed`` the latest revision must be deployed; with a model, the release must exist
    as the model says, with its values and chart (and, ``exact_revisions``, its revision statuses).
    """
    cluster = rel.cluster
    history = await asyncio.to_thread(
        cluster.helm_json, "history", rel.name, "-n", rel.namespace, "--max", "256"
    )
    seen: dict[str, Any] = {"history": history}
    absent = isinstance(history, dict) and "error" in history
    if absent and "not found" not in history["error"]:
        problems.add(f"{rel}: helm history failed: {history['error']}")
        return seen
    entries = [] if absent else sorted(history, key=lambda h: h["revision"])
    statuses = [(h["revision"], h["status"]) for h in entries]
    if statuses and statuses[-1][1] in PENDING:
        problems.add(f"{rel}: release left {statuses[-1][1]} (history {statuses})")
    # An older revision still pending claims an operation that ended long ago (helm's rollback does
    # not touch it): the record must say how it ended.
    stale = [s for s in statuses[:-1] if s[1] in PENDING]
    if stale:
        problems.add(f"{rel}: revisions below the latest left pending: {stale} (history {statuses})")
    if require_deployed and entries and entries[-1]["status"] != "deployed":
        problems.add(f"{rel}: latest revision is {entries[-1]['status']} (history {statuses})")
    values: dict[str, Any] | None = None
    if entries:
        values = await asyncio.to_thread(cluster.helm_json, "get", "values", rel.name, "-n", rel.namespace)
        values = values or {}
        seen["values"] = values
    if model is not None:
        if model.exists == absent:
            problems.add(
                f"{rel}: {'absent' if absent else 'present'} on the cluster, the model says "
                f"{'present' if model.exists else 'absent'} (history {statuses}, model {model.statuses()})"
            )
        elif model.exists:
            want = model.revs[-1]
            if values != want.values:
                problems.add(f"{rel}: values {values}, expected {want.values} (history {statuses})")
            if entries[-1]["chart"] != f"webapp-{want.version}":
                problems.add(f"{rel}: chart {entries[-1]['chart']}, expected webapp-{want.version}")
            # helm keeps the last 10 revisions (--history-max): compare what it kept.
            kept = [entry for entry in model.statuses() if entry[0] >= statuses[0][0]]
            if exact_revisions and statuses != kept:
                problems.add(f"{rel}: history {statuses}, expected {kept}")
    doc = await rig.status_doc(rel)
    seen["doc"] = doc
    sub = doc.get("kduflow")
    if sub is None:
        if entries:
            problems.add(f"{rel}: no status was ever written, the cluster has revision {statuses[-1]}")
    else:
        latest_rev = entries[-1]["revision"] if entries else 0
        latest_status = entries[-1]["status"] if entries else "absent"
        got = (sub.get("revision"), sub.get("release_status"))
        if got != (latest_rev, latest_status):
            problems.add(
                f"{rel}: status document says revision {got[0]} {got[1]} (phase {sub.get('phase')}, "
                f"operation {doc.get('operation')}), the cluster has {latest_rev} {latest_status}"
            )
        if sub.get("phase") in IN_PROGRESS_PHASES:
            problems.add(f"{rel}: status document left in phase {sub.get('phase')!r} ({doc.get('status')})")
    return seen


async def check_no_strays(
    rig: Rig, cluster: ClusterHandle, expected: set[tuple[str, str]], problems: Problems
) -> None:
    """``helm list -A -a``: exactly the expected releases exist (no duplicate, no leftover)."""
    every_status = ["--all"] if "/helm3/" in cluster.helm else []  # helm 4 lists every status anyway
    listed = await asyncio.to_thread(cluster.helm_json, "list", "-A", "--max", "0", *every_status)
    if isinstance(listed, dict):
        problems.add(f"{cluster.uuid}: helm list failed: {listed['error']}")
        return
    names = [(r["namespace"], r["name"]) for r in listed]
    if len(names) != len(set(names)):
        problems.add(f"{cluster.uuid}: duplicate releases listed: {sorted(names)}")
    if set(names) != expected:
        problems.add(f"{cluster.uuid}: releases {sorted(set(names))}, expected {sorted(expected)}")


async def check_batch(
    rig: Rig,
    ops: Sequence[Op],
    models: dict[str, ReleaseModel],
    problems: Problems,
    *,
    exact_revisions: bool = True,
) -> None:
    """Order each release's operations by lock, predict, and check outcomes and the final state."""
    by_rel: dict[str, list[Op]] = {}
    for op in ops:
        by_rel.setdefault(str(op.rel), []).append(op)
    for key, rel_ops in by_rel.items():
        model = models.setdefault(key, ReleaseModel())
        for op in lock_order(rel_ops, problems):
            op.expected = model.apply(op)
            check_outcome(op, exact_revisions, problems)
        check_serialised(rel_ops, problems)
        await check_release(rig, rel_ops[0].rel, model, problems, exact_revisions=exact_revisions)


def describe_ops(ops: Sequence[Op]) -> str:
    lines = []
    for op in sorted(ops, key=lambda o: (str(o.rel), (o.timeline.acquired or 0) if o.timeline else 0)):
        tl = op.timeline
        retried = f" retried {tl.retried}" if tl and tl.retried else ""
        lines.append(f"  {op.describe()}: {op.outcome.short() if op.outcome else '-'}{retried}")
    return "\n".join(lines)
