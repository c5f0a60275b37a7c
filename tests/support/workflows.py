"""Test helpers of the workflows area: an in-memory helm cluster behind mocked ``kdu.*`` activities.

``FakeCluster`` keeps releases as helm would (revision history with deployed/superseded/failed
statuses, user values, chart defaults). ``build_activities`` registers one mock per ``ACTIVITY_NAMES``
entry, by name, exactly as the workflows call them. Every call is recorded (``calls``: activity
name -> inputs) so tests can assert what ran and with what, and knobs make helm fail, block until
cancelled, or collide on generated names. ``kdu_test_env`` runs one worker per test module and
hands each test a fresh cluster.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from activities.lock import LockActivities
from activities.models import (
    GetValuesInput,
    HelmInstallInput,
    HelmRollbackInput,
    HelmUninstallInput,
    HelmUpgradeInput,
    HistoryResult,
    InspectInput,
    InspectKduResult,
    KduServicesResult,
    KduStatusResult,
    ListReleasesInput,
    ListReleasesResult,
    PollStatusInput,
    PreflightInput,
    ReleaseInfo,
    ReleaseRef,
    ReleaseSummary,
    RevisionInfo,
    ServiceInfo,
    ServicePort,
    StatusInput,
    StatusReport,
    UninstallOutcome,
    ValuesResult,
)
from activities.status import validate_db_dict
from kduflow.config import Settings
from kduflow.plugin import activity_methods
from workflows import KDU_WORKFLOWS


@dataclass
class FakeRelease:
    namespace: str
    chart: str = "nginx-1.0.0"
    history: list[RevisionInfo] = field(default_factory=list)
    user_values: dict[str, Any] = field(default_factory=dict)
    chart_values: dict[str, Any] = field(default_factory=dict)

    @property
    def latest(self) -> RevisionInfo:
        return self.history[-1]

    def add(self, status: str, description: str) -> RevisionInfo:
        if status == "deployed":
            for entry in self.history:
                if entry.status == "deployed":
                    entry.status = "superseded"
        entry = RevisionInfo(
            revision=(self.latest.revision + 1) if self.history else 1,
            status=status,
            chart=self.chart,
            description=description,
        )
        self.history.append(entry)
        return entry


def _deep_set(values: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = values
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def _merged(defaults: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    out = dict(defaults)
    for key, value in user.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


class FakeCluster:
    """An in-memory cluster; ``activities()`` returns the ``kdu.*`` mocks bound to it."""

    def __init__(self) -> None:
        self.releases: dict[str, FakeRelease] = {}
        self.calls: dict[str, list[Any]] = defaultdict(list)
        #: activity name -> error raised (after the side effect helm would have had, see below).
        self.errors: dict[str, ApplicationError] = {}
        #: Extra entries list_releases reports (e.g. the same name in a second namespace).
        self.extra_listed: list[ReleaseSummary] = []
        #: Generated names reported as taken by list_releases, in query order (collision test).
        self.taken_first_queries = 0
        #: install mock heartbeats until cancelled instead of finishing.
        self.block_install = False
        #: upgrade mock heartbeats until cancelled, then records a failed revision (helm's SIGTERM path).
        self.block_upgrade = False
        self.upgrade_started = asyncio.Event()
        self.install_started = asyncio.Event()
        self.install_saw_cancel = False
        self.poller_started = asyncio.Event()
        self.poller_stopped = 0
        #: StatusReports the helm mocks were given (they report status themselves).
        self.reports: list[StatusReport] = []
        #: Final status writes in order, by ``kdu.status`` or by a helm mock that succeeded with a
        #: ``StatusReport.final_phase`` (as a StatusInput: operation, phase, error, db_dict).
        self.final_writes: list[StatusInput] = []
        #: The helm mocks' own final write fails (the workflow then writes through kdu.status).
        self.final_report_fails = False

    # -- setup helpers ----------------------------------------------------------------------------

    def add_release(
        self,
        name: str,
        namespace: str,
        statuses: list[str],
        *,
        user_values: dict[str, Any] | None = None,
        chart_values: dict[str, Any] | None = None,
    ) -> FakeRelease:
        rel = FakeRelease(namespace=namespace, user_values=user_values or {}, chart_values=chart_values or {})
        for i, status in enumerate(statuses, start=1):
            rel.history.append(
                RevisionInfo(revision=i, status=status, chart=rel.chart, description=f"rev {i}")
            )
        self.releases[name] = rel
        return rel

    @property
    def helm_calls(self) -> list[str]:
        """Names of every activity called, in no particular order, excluding none."""
        return sorted(name for name, calls in self.calls.items() if calls)

    def _info(self, name: str) -> ReleaseInfo:
        rel = self.releases[name]
        return ReleaseInfo(
            kdu_instance=name,
            namespace=rel.namespace,
            revision=rel.latest.revision,
            status=rel.latest.status,
            description=rel.latest.description,
            chart=rel.chart,
        )

    def _reported(self, inp: Any, info: ReleaseInfo) -> ReleaseInfo:
        """What a helm activity given a StatusReport does after a success: the final write."""
        report = inp.report
        if report is None or not report.final_phase or self.final_report_fails:
            return info
        self.final_writes.append(
            StatusInput(inp.ref, report.db_dict, report.operation, phase=report.final_phase,
                        seq_base=report.seq_base)
        )  # fmt: skip
        info.final_status = KduStatusResult(
            info.kdu_instance, info.namespace, revision=info.revision, status=info.status, ready=True
        )
        return info

    def _find(self, ref: ReleaseRef) -> FakeRelease | None:
        rel = self.releases.get(ref.kdu_instance)
        return rel if rel is not None and rel.namespace == ref.namespace else None

    def _fail(self, name: str) -> None:
        if name in self.errors:
            raise self.errors[name]


def _worker(client: Client, activities: list[Any]) -> Worker:
    # A short heartbeat throttle so cancellation reaches the mocks in milliseconds, not 24 s
    # (0.8 x the 30 s heartbeat timeout the workflows use).
    return Worker(
        client,
        task_queue=f"tq-{uuid.uuid4()}",
        workflows=KDU_WORKFLOWS,
        activities=activities,
        max_heartbeat_throttle_interval=timedelta(milliseconds=50),
        default_heartbeat_throttle_interval=timedelta(milliseconds=50),
    )


def build_activities(current: Callable[[], FakeCluster]) -> list[Any]:
    """The ``kdu.*`` mocks; each call acts on ``current()``, the cluster of the running test."""

    @activity.defn(name="kdu.preflight")
    async def preflight(inp: PreflightInput) -> None:
        # The real status-target check (the worker's default policy: status goes to nsrs only);
        # charts are the fake cluster's business.
        current().calls["kdu.preflight"].append(inp)
        if inp.db_dict is not None:
            validate_db_dict(inp.db_dict, Settings.status_collections)

    @activity.defn(name="kdu.list_releases")
    async def list_releases(inp: ListReleasesInput) -> ListReleasesResult:
        cluster = current()
        cluster.calls["kdu.list_releases"].append(inp)
        if inp.name and len(cluster.calls["kdu.list_releases"]) <= cluster.taken_first_queries:
            return ListReleasesResult([ReleaseSummary(inp.name, "other", 1, "deployed")])
        listed = [
            ReleaseSummary(n, r.namespace, r.latest.revision, r.latest.status, chart=r.chart)
            for n, r in cluster.releases.items()
        ]
        return ListReleasesResult(
            [r for r in listed + cluster.extra_listed if not inp.name or r.name == inp.name]
        )

    @activity.defn(name="kdu.history")
    async def history(ref: ReleaseRef) -> HistoryResult:
        cluster = current()
        cluster.calls["kdu.history"].append(ref)
        rel = cluster._find(ref)
        return HistoryResult([RevisionInfo(**vars(e)) for e in rel.history] if rel else [])

    @activity.defn(name="kdu.install")
    async def install(inp: HelmInstallInput) -> ReleaseInfo:
        cluster = current()
        cluster.calls["kdu.install"].append(inp)
        if inp.report is not None:
            cluster.reports.append(inp.report)
        cluster.install_started.set()
        if cluster.block_install:
            try:
                while True:
                    activity.heartbeat("helm install running")
                    await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                cluster.install_saw_cancel = True
                raise
        if "kdu.install" in cluster.errors:
            if not inp.atomic:
                cluster.releases[inp.ref.kdu_instance] = FakeRelease(namespace=inp.ref.namespace)
                cluster.releases[inp.ref.kdu_instance].add("failed", "Release failed")
            cluster._fail("kdu.install")
        rel = FakeRelease(namespace=inp.ref.namespace, user_values=dict(inp.values))
        rel.add("deployed", "Install complete")
        cluster.releases[inp.ref.kdu_instance] = rel
        return cluster._reported(inp, cluster._info(inp.ref.kdu_instance))

    @activity.defn(name="kdu.upgrade")
    async def upgrade(inp: HelmUpgradeInput) -> ReleaseInfo:
        cluster = current()
        cluster.calls["kdu.upgrade"].append(inp)
        if inp.report is not None:
            cluster.reports.append(inp.report)
        rel = cluster._find(inp.ref)
        if rel is None:
            raise ApplicationError("release: not found", type="ReleaseNotFound", non_retryable=True)
        cluster.upgrade_started.set()
        if cluster.block_upgrade:
            try:
                while True:
                    activity.heartbeat("helm upgrade running")
                    await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                rel.add("failed", 'Upgrade "web" failed: context canceled')
                raise
        if "kdu.upgrade" in cluster.errors:
            err = cluster.errors["kdu.upgrade"]
            if err.type == "ReleaseFailed":
                # helm records the failed revision, and the previous one stays "deployed".
                failed = rel.add("failed", "Upgrade failed: timed out waiting for the condition")
                raise ApplicationError(
                    err.message, {"revision": failed.revision}, type=err.type, non_retryable=True
                )
            raise err
        values = {} if inp.reset_values else dict(rel.user_values) if inp.reuse_values else {}
        values.update(inp.values)
        for key, value in inp.set_values.items():
            _deep_set(values, key, value)
        rel.user_values = values
        rel.add("deployed", "Upgrade complete")
        return cluster._reported(inp, cluster._info(inp.ref.kdu_instance))

    @activity.defn(name="kdu.rollback")
    async def rollback(inp: HelmRollbackInput) -> ReleaseInfo:
        cluster = current()
        cluster.calls["kdu.rollback"].append(inp)
        if inp.report is not None:
            cluster.reports.append(inp.report)
        cluster._fail("kdu.rollback")
        rel = cluster._find(inp.ref)
        assert rel is not None and inp.revision > 0
        rel.add("deployed", f"Rollback to {inp.revision}")
        return cluster._reported(inp, cluster._info(inp.ref.kdu_instance))

    @activity.defn(name="kdu.uninstall")
    async def uninstall(inp: HelmUninstallInput) -> UninstallOutcome:
        cluster = current()
        cluster.calls["kdu.uninstall"].append(inp)
        cluster._fail("kdu.uninstall")
        rel = cluster._find(inp.ref)
        if rel is None:
            return UninstallOutcome(inp.ref.kdu_instance, inp.ref.namespace, existed=False)
        del cluster.releases[inp.ref.kdu_instance]
        return UninstallOutcome(inp.ref.kdu_instance, inp.ref.namespace, status_before=rel.latest.status)

    @activity.defn(name="kdu.get_values")
    async def get_values(inp: GetValuesInput) -> ValuesResult:
        cluster = current()
        cluster.calls["kdu.get_values"].append(inp)
        rel = cluster._find(inp.ref)
        if rel is None:
            raise ApplicationError("release: not found", type="ReleaseNotFound", non_retryable=True)
        return ValuesResult(_merged(rel.chart_values, rel.user_values) if inp.all_values else rel.user_values)

    @activity.defn(name="kdu.inspect")
    async def inspect(inp: InspectInput) -> InspectKduResult:
        cluster = current()
        cluster.calls["kdu.inspect"].append(inp)
        cluster._fail("kdu.inspect")
        return InspectKduResult(
            kdu_model=inp.chart, chart={"name": inp.chart.rsplit("/", 1)[-1]}, values="a: 1\n"
        )

    @activity.defn(name="kdu.services")
    async def services(ref: ReleaseRef) -> KduServicesResult:
        cluster = current()
        cluster.calls["kdu.services"].append(ref)
        cluster._fail("kdu.services")
        return KduServicesResult(
            kdu_instance=ref.kdu_instance,
            namespace=ref.namespace,
            services=[ServiceInfo(f"{ref.kdu_instance}-svc", ref.namespace, ports=[ServicePort(80)])],
        )

    @activity.defn(name="kdu.status")
    async def status(inp: StatusInput) -> KduStatusResult:
        cluster = current()
        cluster.calls["kdu.status"].append(inp)
        cluster._fail("kdu.status")
        if inp.db_dict is not None:
            cluster.final_writes.append(inp)
        rel = cluster._find(inp.ref)
        if rel is None:
            return KduStatusResult(inp.ref.kdu_instance, inp.ref.namespace, status="absent")
        info = cluster._info(inp.ref.kdu_instance)
        return KduStatusResult(
            info.kdu_instance, info.namespace, revision=info.revision, status=info.status, ready=True
        )

    @activity.defn(name="kdu.poll_status")
    async def poll_status(inp: PollStatusInput) -> None:
        cluster = current()
        cluster.calls["kdu.poll_status"].append(inp)
        cluster.poller_started.set()
        try:
            while True:
                activity.heartbeat()
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            cluster.poller_stopped += 1
            raise

    return [
        # The real lock activities: the workflow tests exercise the real ReleaseLock workflow.
        *activity_methods(LockActivities()),
        preflight,
        list_releases,
        history,
        install,
        upgrade,
        rollback,
        uninstall,
        get_values,
        inspect,
        services,
        status,
        poll_status,
    ]


class KduTestEnv:
    """One worker for a whole test module; ``fresh()`` gives each test its own empty cluster.

    Starting a worker per test costs more than the workflow under test, so the mocks look up the
    current cluster at call time instead of being rebuilt. Tests run one at a time, and every
    workflow finishes (or is cancelled and awaited) inside its test, so clusters never mix.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.cluster = FakeCluster()
        self.worker = _worker(client, build_activities(lambda: self.cluster))

    def fresh(self) -> FakeCluster:
        self.cluster = FakeCluster()
        return self.cluster

    async def run(self, run: Any, arg: Any) -> Any:
        """Run one workflow to completion; returns its result (raises WorkflowFailureError)."""
        return await self.client.execute_workflow(
            run, arg, id=f"wf-{uuid.uuid4()}", task_queue=self.worker.task_queue
        )

    async def start(self, run: Any, arg: Any) -> WorkflowHandle[Any, Any]:
        return await self.client.start_workflow(
            run, arg, id=f"wf-{uuid.uuid4()}", task_queue=self.worker.task_queue
        )


@asynccontextmanager
async def kdu_test_env(client: Client) -> AsyncIterator[KduTestEnv]:
    env = KduTestEnv(client)
    async with env.worker:
        yield env
