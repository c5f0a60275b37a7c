"""ReleaseActivities against the REAL helm 3 and helm 4 binaries and a sandbox cluster.

Scenario tests run each activity through ``ActivityEnvironment`` (heartbeats and cancellation as in a
worker) and check idempotency the way Temporal exercises it: calling an activity again with the same
input converges to the same result. A few branch tests use a recording fake runner.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import helm_cli
from activities.kubeapi import KubeApi
from activities.models import (
    DbDict,
    GetValuesInput,
    HelmInstallInput,
    HelmRollbackInput,
    HelmUninstallInput,
    HelmUpgradeInput,
    InspectInput,
    ListReleasesInput,
    PreflightInput,
    ReleaseInfo,
    ReleaseRef,
    RevisionInfo,
    StatusReport,
)
from activities.release import OP_LABEL, ReleaseActivities, op_marker
from activities.runner import HOST, ProcessResult, Runner
from activities.status import StatusActivities, final_seq
from activities.store import Store
from kduflow.config import Settings
from sandbox.chartrepo import CHARTS_DIR
from tests.support.sandbox import LOOPBACK_NETWORKS

try:
    from sandbox import SandboxCluster
except ImportError as exc:  # the sandbox area ships it; without it only the fake-runner tests run
    SandboxCluster = None  # type: ignore[assignment,misc]
    SANDBOX_MISSING = f"sandbox.SandboxCluster cannot be imported: {exc}"
else:
    SANDBOX_MISSING = ""

CHARTS = CHARTS_DIR
needs_sandbox = pytest.mark.skipif(SandboxCluster is None, reason=SANDBOX_MISSING or "sandbox available")


@dataclass(frozen=True)
class FakeEnv:
    env: dict[str, str]


class Envs:
    """Stands in for ClusterEnvs: one fixed environment for every cluster_uuid."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.asked: list[str] = []

    async def get(self, cluster_uuid: str) -> FakeEnv:
        self.asked.append(cluster_uuid)
        return FakeEnv(self.env)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    if SandboxCluster is None:
        pytest.skip(SANDBOX_MISSING)
    with SandboxCluster(ready_delay=0.2, lb_delay=0.2) as c:
        yield c


@pytest.fixture
def kube_env(cluster: Any, tools: Any, tmp_path: Path) -> dict[str, str]:
    kubeconfig = cluster.write_kubeconfig(tmp_path / ".kube" / "config")
    return {
        "HOME": str(tmp_path),
        "KUBECONFIG": str(kubeconfig),
        "HELM_CONFIG_HOME": str(tmp_path / ".config" / "helm"),
        "HELM_CACHE_HOME": str(tmp_path / ".cache" / "helm"),
        "HELM_DATA_HOME": str(tmp_path / ".local" / "share" / "helm"),
        "NO_COLOR": "1",
        "PATH": f"{tools.helm.parent}:/usr/bin:/bin",
    }


@pytest_asyncio.fixture
async def api(cluster: Any) -> AsyncIterator[KubeApi]:
    """An in-process API client of the sandbox, as the plugin gives the release activities."""
    client = KubeApi.from_kubeconfig(yaml.safe_load(cluster.kubeconfig()), private_networks=LOOPBACK_NETWORKS)
    try:
        yield client
    finally:
        await client.close()


def settings_for(tools: Any, tmp_path: Path) -> Settings:
    return Settings(
        helm=str(tools.helm), kubectl=str(tools.kubectl), state_dir=tmp_path / "state", charts_dir=CHARTS
    )


@pytest.fixture
def acts(tools: Any, kube_env: dict[str, str], tmp_path: Path, api: KubeApi) -> ReleaseActivities:
    """Release activities as the plugin builds them: history and labels read from helm's storage."""

    async def apis(cluster_uuid: str) -> KubeApi:
        return api

    return ReleaseActivities(settings_for(tools, tmp_path), Envs(kube_env), heartbeat_every=0.2, apis=apis)


@pytest.fixture
def helm_acts(tools: Any, kube_env: dict[str, str], tmp_path: Path) -> ReleaseActivities:
    """Release activities that ask helm for everything (clusters whose credentials need kubectl)."""
    return ReleaseActivities(settings_for(tools, tmp_path), Envs(kube_env), heartbeat_every=0.2)


def with_previous_attempt(env: ActivityEnvironment, pid: int, started_at: float) -> ActivityEnvironment:
    """An activity environment for attempt 2 whose attempt 1 last heartbeated helm's process."""
    beat = {"command": "helm upgrade", "pid": pid, "host": HOST, "started_at": int(started_at)}
    env.info = dataclasses.replace(env.info, attempt=2, heartbeat_details=[beat])
    return env


def ref_for(tools: Any, name: str) -> ReleaseRef:
    return ReleaseRef("cluster-1", f"{name}-{tools.dialect}", f"ns-{tools.dialect}")


async def app_error(coro: Any) -> ApplicationError:
    with pytest.raises(ApplicationError) as info:
        await coro
    return info.value


def helm(tools: Any, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(tools.helm), *args], env=env, capture_output=True, text=True, timeout=60)


@needs_sandbox
async def test_release_lifecycle_is_idempotent_at_every_step(acts: ReleaseActivities, tools: Any) -> None:
    env = ActivityEnvironment()
    ref = ref_for(tools, "life")

    assert (await env.run(acts.history, ref)).entries == []
    absent = await env.run(acts.uninstall, HelmUninstallInput(ref, timeout=30))
    assert (absent.existed, absent.status_before) == (False, "absent")

    inst = HelmInstallInput(
        ref,
        chart="webapp",
        values={"message": "one"},
        timeout=60,
        operation_id="op-install",
        labels={"team": "kdu"},
    )
    installed = await env.run(acts.install, inst)
    assert (installed.revision, installed.status, installed.chart) == (1, "deployed", "webapp-0.1.0")
    assert await env.run(acts.install, inst) == installed  # a retry returns the same release

    foreign = await app_error(
        env.run(acts.install, HelmInstallInput(ref, chart="webapp", operation_id="other"))
    )
    assert (foreign.type, foreign.non_retryable) == ("ReleaseNameInUse", True)

    up = HelmUpgradeInput(
        ref, chart="webapp", values={"message": "two"}, timeout=60, operation_id="op-up", expected_revision=1
    )
    upgraded = await env.run(acts.upgrade, up)
    assert (upgraded.revision, upgraded.status, upgraded.description) == (2, "deployed", "Upgrade complete")
    assert await env.run(acts.upgrade, up) == upgraded  # no third revision on retry

    # Values-only upgrade: chart "" resolves to the chart the release runs (here from the charts dir).
    scaled = await env.run(
        acts.upgrade,
        HelmUpgradeInput(
            ref, set_values={"replicaCount": 2}, timeout=60, operation_id="op-scale", expected_revision=2
        ),
    )
    assert (scaled.revision, scaled.chart) == (3, "webapp-0.1.0")
    values = await env.run(acts.get_values, GetValuesInput(ref))
    assert values.values == {"message": "two", "replicaCount": 2}  # reuse_values kept "two"
    assert (await env.run(acts.get_values, GetValuesInput(ref, all_values=True))).values["image"][
        "tag"
    ] == "3.9"

    rolled = await env.run(
        acts.rollback, HelmRollbackInput(ref, revision=1, timeout=60, operation_id="op-rb")
    )
    assert (rolled.revision, rolled.status, rolled.description) == (4, "deployed", "Rollback to 1")
    assert await env.run(acts.rollback, HelmRollbackInput(ref, revision=1, timeout=60)) == rolled

    listed = await env.run(acts.list_releases, ListReleasesInput("cluster-1", name=ref.kdu_instance))
    assert [(r.name, r.namespace, r.revision, r.status) for r in listed.releases] == [
        (ref.kdu_instance, ref.namespace, 4, "deployed")
    ]
    history = (await env.run(acts.history, ref)).entries
    assert [h.status for h in history] == ["superseded", "superseded", "superseded", "deployed"]

    services = await env.run(acts.services, ref)
    assert [(s.name, s.type, s.pending) for s in services.services] == [
        (f"{ref.kdu_instance}-webapp", "ClusterIP", False)
    ]
    assert services.services[0].cluster_ip and services.services[0].ports[0].port == 80

    removed = await env.run(acts.uninstall, HelmUninstallInput(ref, timeout=60))
    assert (removed.existed, removed.status_before) == (True, "deployed")
    again = await env.run(acts.uninstall, HelmUninstallInput(ref, timeout=60))
    assert (again.existed, again.status_before) == (False, "absent")


@needs_sandbox
async def test_storage_reads_agree_with_helm(
    acts: ReleaseActivities, helm_acts: ReleaseActivities, tools: Any, kube_env: dict[str, str]
) -> None:
    """History, the by-name listing and the operation label read from helm's storage in-process are
    what helm itself reports, for deployed, superseded, failed and pending revisions."""
    env = ActivityEnvironment()
    ref = ref_for(tools, "agree")
    inst = HelmInstallInput(ref, chart="webapp", timeout=60, operation_id="op-i", labels={"team": "kdu"})
    await env.run(acts.install, inst)
    failing = HelmUpgradeInput(
        ref, chart="webapp", values={"ready": False}, timeout=2, operation_id="op-f", expected_revision=1
    )
    assert (await app_error(env.run(acts.upgrade, failing))).type == "UpgradeFailed"
    proc = start_helm_upgrade(tools, kube_env, ref, b'{"ready": false}', "op-p")
    await wait_status(tools, kube_env, ref, "pending-upgrade")
    proc.kill()
    proc.wait()

    by_name = ListReleasesInput("cluster-1", name=ref.kdu_instance)

    async def reads(a: ReleaseActivities) -> tuple[Any, ...]:
        history = (await env.run(a.history, ref)).entries
        listed = (await env.run(a.list_releases, by_name)).releases
        helm_env = await a._env(ref.cluster_uuid)
        version = await a._version(helm_env)
        marks = [await a._carries_marker(helm_env, version, ref, op) for op in ("op-p", "op-f", "op-i", "")]
        return history, listed, marks

    from_storage, from_helm = await reads(acts), await reads(helm_acts)
    # Revision 1 stays "deployed" under helm 3.17 after a failed upgrade; helm 4 supersedes it.
    assert [(h.revision, h.status) for h in from_storage[0]][1:] == [(2, "failed"), (3, "pending-upgrade")]
    for mine, helms in zip(from_storage[0], from_helm[0], strict=True):
        assert dataclasses.replace(mine, updated="") == dataclasses.replace(helms, updated="")
        assert _epoch(mine.updated) == pytest.approx(_epoch(helms.updated), abs=1e-3)
    assert [dataclasses.replace(r, updated="") for r in from_storage[1]] == [
        dataclasses.replace(r, updated="") for r in from_helm[1]
    ]
    assert from_storage[2] == from_helm[2] == [True, False, False, False]
    # The pending revision counts as stuck at once (its helm was killed): uninstall clears it.
    acts.stuck_margin = 0
    acts._settings = dataclasses.replace(acts._settings, pending_stuck_after=0)  # type: ignore[attr-defined]
    await env.run(acts.uninstall, HelmUninstallInput(ref, timeout=60))
    assert (await env.run(acts.list_releases, by_name)).releases == []


def _epoch(stamp: str) -> float:
    """helm's timestamps (RFC 3339 with up to nanoseconds) as seconds."""
    head, _, frac = stamp.partition(".")
    zone = ""
    for sep in ("Z", "+", "-"):
        if sep in frac:
            frac, _, rest = frac.partition(sep)
            zone = sep + rest
            break
    parsed = datetime.datetime.fromisoformat(head + (zone if zone != "Z" else "+00:00"))
    return parsed.timestamp() + (float("0." + frac) if frac else 0.0)


@needs_sandbox
async def test_install_atomic_failure_is_release_failed_and_leaves_nothing(
    acts: ReleaseActivities, tools
) -> None:
    env = ActivityEnvironment()
    ref = ref_for(tools, "atomic")
    inp = HelmInstallInput(
        ref, chart="webapp", values={"ready": False}, atomic=True, timeout=3, operation_id="a1"
    )
    err = await app_error(env.run(acts.install, inp))
    assert (err.type, err.non_retryable) == ("ReleaseFailed", True)
    assert err.details[0]["status"] == "absent"
    assert "uninstalled due to" in err.message
    assert (await env.run(acts.history, ref)).entries == []


@needs_sandbox
async def test_install_failure_then_retry_of_the_same_operation_converges(
    acts: ReleaseActivities, tools
) -> None:
    env = ActivityEnvironment()
    ref = ref_for(tools, "retry")
    failing = HelmInstallInput(
        ref, chart="webapp", values={"ready": False}, atomic=False, timeout=3, operation_id="op-1"
    )
    err = await app_error(env.run(acts.install, failing))
    assert err.type == "ReleaseFailed" and err.non_retryable
    assert (err.details[0]["revision"], err.details[0]["status"]) == (1, "failed")
    # Our own failed attempt is removed and installed afresh (never "name in use").
    fixed = HelmInstallInput(ref, chart="webapp", values={"ready": True}, timeout=60, operation_id="op-1")
    done = await env.run(acts.install, fixed)
    assert (done.revision, done.status) == (1, "deployed")
    await env.run(acts.uninstall, HelmUninstallInput(ref, timeout=60))


@needs_sandbox
async def test_upgrade_failures_carry_revisions(acts: ReleaseActivities, tools) -> None:
    env = ActivityEnvironment()
    ref = ref_for(tools, "upfail")
    await env.run(acts.install, HelmInstallInput(ref, chart="webapp", timeout=60, operation_id="i"))
    bad = HelmUpgradeInput(
        ref, chart="webapp", values={"ready": False}, timeout=3, operation_id="u1", expected_revision=1
    )
    err = await app_error(env.run(acts.upgrade, bad))
    assert (err.type, err.non_retryable) == ("UpgradeFailed", True)
    assert (err.details[0]["revision"], err.details[0]["status"]) == (2, "failed")
    # A retry of the same operation reports the same failure instead of upgrading again.
    again = await app_error(env.run(acts.upgrade, bad))
    assert (again.type, again.details[0]["revision"]) == ("UpgradeFailed", 2)

    atomic = HelmUpgradeInput(
        ref,
        chart="webapp",
        values={"ready": False},
        timeout=3,
        atomic=True,
        operation_id="u2",
        expected_revision=2,
    )
    rolled = await app_error(env.run(acts.upgrade, atomic))
    assert (rolled.type, rolled.non_retryable) == ("UpgradeRolledBack", True)
    assert rolled.details[0]["failed_revision"] == 3
    assert rolled.details[0]["status"] == "deployed"
    assert rolled.details[0]["restored_revision"] in (1, 2)  # helm's "previous" deployed revision
    await env.run(acts.uninstall, HelmUninstallInput(ref, timeout=60))


@needs_sandbox
async def test_upgrade_recovers_a_pending_upgrade_left_by_its_own_killed_helm(
    acts: ReleaseActivities, tools, kube_env
) -> None:
    env = ActivityEnvironment()
    ref = ref_for(tools, "pending")
    await env.run(acts.install, HelmInstallInput(ref, chart="webapp", timeout=60, operation_id="i"))
    version = helm_cli.HelmVersion.parse(
        helm(tools, kube_env, "version", "--template", "{{.Version}}").stdout
    )
    argv = helm_cli.build_upgrade_argv(
        str(tools.helm),
        version,
        release=ref.kdu_instance,
        chart=helm_cli.ChartRef("local", str(CHARTS / "webapp")),
        namespace=ref.namespace,
        timeout=60,
        labels=op_marker("crashy"),
    )
    proc = subprocess.Popen(
        argv, env=kube_env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    proc.stdin.write(b'{"ready": false}')  # type: ignore[union-attr]
    proc.stdin.close()  # type: ignore[union-attr]
    for _ in range(100):
        out = helm(tools, kube_env, "history", ref.kdu_instance, "-n", ref.namespace, "-o", "json").stdout
        if json.loads(out)[-1]["status"] == "pending-upgrade":
            break
        await asyncio.sleep(0.1)
    proc.kill()  # helm killed mid-upgrade: it never records the outcome
    proc.wait()
    out = helm(tools, kube_env, "history", ref.kdu_instance, "-n", ref.namespace, "-o", "json").stdout
    assert json.loads(out)[-1]["status"] == "pending-upgrade"

    retry = HelmUpgradeInput(
        ref, chart="webapp", values={"ready": True}, timeout=60, operation_id="crashy", expected_revision=1
    )
    # The earlier attempt's last heartbeat names its helm process: on this host and gone, so the
    # retry recovers at once instead of waiting for the pending revision to age.
    retry_env = with_previous_attempt(ActivityEnvironment(), proc.pid, time.time() - 5)
    done = await retry_env.run(acts.upgrade, retry)
    assert (done.revision, done.status) == (4, "deployed")  # 2 pending -> 3 "Rollback to 1" -> 4 upgrade
    statuses = [h.status for h in (await env.run(acts.history, ref)).entries]
    # helm's rollback supersedes deployed revisions only; kduflow marks the interrupted one failed.
    assert statuses == ["superseded", "failed", "superseded", "deployed"]
    await env.run(acts.uninstall, HelmUninstallInput(ref, timeout=60))


def start_helm_upgrade(tools: Any, kube_env: dict[str, str], ref: ReleaseRef, values: bytes, op: str) -> Any:
    out = helm(tools, kube_env, "version", "--template", "{{.Version}}").stdout
    version = helm_cli.HelmVersion.parse(out)
    argv = helm_cli.build_upgrade_argv(
        str(tools.helm), version, release=ref.kdu_instance,
        chart=helm_cli.ChartRef("local", str(CHARTS / "webapp")), namespace=ref.namespace, timeout=60,
        labels=op_marker(op),
    )  # fmt: skip
    proc = subprocess.Popen(
        argv, env=kube_env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    proc.stdin.write(values)  # type: ignore[union-attr]
    proc.stdin.close()  # type: ignore[union-attr]
    return proc


async def wait_status(tools: Any, kube_env: dict[str, str], ref: ReleaseRef, status: str) -> None:
    for _ in range(200):
        out = helm(tools, kube_env, "history", ref.kdu_instance, "-n", ref.namespace, "-o", "json").stdout
        if json.loads(out)[-1]["status"] == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"release never became {status}")


@needs_sandbox
async def test_upgrade_retry_adopts_the_outcome_of_a_helm_a_redeploy_left_running(
    acts: ReleaseActivities, tools, kube_env
) -> None:
    """A worker redeploy leaves helm running; the retry (another worker) waits for it and adopts its
    outcome: no rollback, no second upgrade."""
    env = ActivityEnvironment()
    ref = ref_for(tools, "adopt")
    await env.run(acts.install, HelmInstallInput(ref, chart="webapp", timeout=60, operation_id="i"))
    started = time.time()
    # The sandbox makes pods ready after its ready_delay: helm --wait takes a moment.
    proc = start_helm_upgrade(tools, kube_env, ref, b'{"replicaCount": 2}', "redeployed")
    await wait_status(tools, kube_env, ref, "pending-upgrade")
    retry = HelmUpgradeInput(
        ref, chart="webapp", values={"replicaCount": 2}, timeout=60, operation_id="redeployed",
        expected_revision=1,
    )  # fmt: skip
    done = await with_previous_attempt(ActivityEnvironment(), proc.pid, started).run(acts.upgrade, retry)
    assert proc.wait(timeout=30) == 0
    assert (done.revision, done.status) == (2, "deployed")
    statuses = [h.status for h in (await env.run(acts.history, ref)).entries]
    assert statuses == ["superseded", "deployed"]  # adopted: nothing rolled back, nothing redone
    await env.run(acts.uninstall, HelmUninstallInput(ref, timeout=60))


@needs_sandbox
async def test_someone_elses_pending_release_waits_then_is_recovered_once_stuck(
    acts: ReleaseActivities, tools, kube_env
) -> None:
    """A pending-upgrade nobody is writing any more (its helm killed, no record of it) is left alone
    while it may still be live, then rolled back once older than the stuck limit."""
    env = ActivityEnvironment()
    ref = ref_for(tools, "stuck")
    await env.run(acts.install, HelmInstallInput(ref, chart="webapp", timeout=60, operation_id="i"))
    proc = start_helm_upgrade(tools, kube_env, ref, b'{"ready": false}', "someone-else")
    await wait_status(tools, kube_env, ref, "pending-upgrade")
    proc.kill()
    proc.wait()
    # Too young to be stuck, and this attempt has little time: wait, then give up (retryable).
    acts.stuck_margin = 3600
    young = HelmUninstallInput(ref, timeout=60)
    quick = ActivityEnvironment()
    quick.info = dataclasses.replace(
        quick.info, started_time=datetime.datetime.now(datetime.UTC),
        start_to_close_timeout=datetime.timedelta(seconds=12), schedule_to_close_timeout=None,
    )  # fmt: skip
    err = await app_error(quick.run(acts.uninstall, young))
    assert (err.type, err.non_retryable) == ("OperationInProgress", False)
    assert [h.status for h in (await env.run(acts.history, ref)).entries][-1] == "pending-upgrade"
    # Old enough (the limit shortened to what it is now): a rollback clears it before the upgrade.
    acts.stuck_margin = 0
    acts._settings = dataclasses.replace(acts._settings, pending_stuck_after=0)  # type: ignore[attr-defined]
    inp = HelmUpgradeInput(ref, chart="webapp", values={"replicaCount": 2}, timeout=60, operation_id="mine",
                           expected_revision=2)  # fmt: skip
    done = await env.run(acts.upgrade, inp)
    assert done.status == "deployed"
    statuses = [h.status for h in (await env.run(acts.history, ref)).entries]
    assert statuses == ["superseded", "failed", "superseded", "deployed"]
    await env.run(acts.uninstall, HelmUninstallInput(ref, timeout=60))


@needs_sandbox
async def test_rollback_of_a_failed_upgrade_whose_helm_exited_does_not_wait(
    acts: ReleaseActivities, tools, kube_env
) -> None:
    """The API failed helm's final status write, so its revision stays pending-upgrade after helm
    exited; the workflow saw the failure and says so: the rollback clears it at once."""
    env = ActivityEnvironment()
    ref = ref_for(tools, "exited")
    await env.run(acts.install, HelmInstallInput(ref, chart="webapp", timeout=60, operation_id="i"))
    proc = start_helm_upgrade(tools, kube_env, ref, b'{"ready": false}', "failed-upgrade")
    await wait_status(tools, kube_env, ref, "pending-upgrade")
    proc.kill()  # stands in for helm exiting without recording its outcome
    proc.wait()
    acts.stuck_margin = 3600  # without the hint this would wait (and run out of time)
    quick = ActivityEnvironment()
    quick.info = dataclasses.replace(
        quick.info, started_time=datetime.datetime.now(datetime.UTC),
        start_to_close_timeout=datetime.timedelta(seconds=90), schedule_to_close_timeout=None,
    )  # fmt: skip
    inp = HelmRollbackInput(
        ref, revision=1, timeout=60, operation_id="rb", exited_operation_id="failed-upgrade"
    )
    started = time.monotonic()
    done = await quick.run(acts.rollback, inp)
    assert (done.revision, done.status) == (3, "deployed")
    assert time.monotonic() - started < 30
    # The revision rolled back from is marked failed (helm's rollback leaves it pending), and helm
    # itself reads the rewritten record back.
    out = helm(tools, kube_env, "history", ref.kdu_instance, "-n", ref.namespace, "-o", "json").stdout
    history = json.loads(out)
    assert [h["status"] for h in history] == ["superseded", "failed", "deployed"]
    assert history[1]["description"].startswith("kduflow: marked failed, pending-upgrade")
    values = helm(tools, kube_env, "get", "values", ref.kdu_instance, "-n", ref.namespace,
                  "--revision", "2", "-o", "json").stdout
    assert json.loads(values) == {"ready": False}  # the rest of the record is intact
    # A retry of the same rollback converges (nothing left to mark).
    again = await quick.run(acts.rollback, inp)
    assert (again.revision, again.status) == (3, "deployed")
    await env.run(acts.uninstall, HelmUninstallInput(ref, timeout=60))


@needs_sandbox
async def test_cancelled_install_terminates_helm_which_records_failed_not_pending(
    acts: ReleaseActivities, tools
) -> None:
    env = ActivityEnvironment()
    beats: list[Any] = []
    env.on_heartbeat = lambda *d: beats.append(d)
    ref = ref_for(tools, "cancel")
    # Not atomic: an atomic install would uninstall itself on SIGTERM (also never pending).
    inp = HelmInstallInput(
        ref, chart="webapp", values={"ready": False}, atomic=False, timeout=120, operation_id="c"
    )
    task = asyncio.create_task(env.run(acts.install, inp))
    probe = ActivityEnvironment()
    for _ in range(100):
        entries = (await probe.run(acts.history, ref)).entries
        # Cancel only once helm has written its pending record and the runner has heartbeated
        # (heartbeat_every=0.2): on a loaded machine the record can appear before the first beat.
        if entries and entries[-1].status == "pending-install" and beats:
            break
        await asyncio.sleep(0.1)
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert beats, "the runner heartbeats while helm runs"
    entries = (await probe.run(acts.history, ref)).entries
    assert [e.status for e in entries] == ["failed"]  # helm got SIGTERM and recorded the failure
    # The next attempt of the same operation cleans its own failed release up.
    done = await probe.run(acts.install, HelmInstallInput(ref, chart="webapp", timeout=60, operation_id="c"))
    assert (done.revision, done.status) == (1, "deployed")
    await probe.run(acts.uninstall, HelmUninstallInput(ref, timeout=60))


@needs_sandbox
async def test_read_activity_errors_are_classified(acts: ReleaseActivities, tools) -> None:
    env = ActivityEnvironment()
    ref = ref_for(tools, "nope")
    err = await app_error(env.run(acts.get_values, GetValuesInput(ref)))
    assert (err.type, err.non_retryable) == ("ReleaseNotFound", True)
    err = await app_error(env.run(acts.rollback, HelmRollbackInput(ref, revision=1)))
    assert err.type == "ReleaseNotFound"
    err = await app_error(env.run(acts.install, HelmInstallInput(ref, chart="broken", timeout=30)))
    assert (err.type, err.non_retryable) == ("RenderFailed", True)
    assert "mustSet is required" in err.message
    err = await app_error(env.run(acts.install, HelmInstallInput(ref, chart="../etc", timeout=30)))
    assert (err.type, err.non_retryable) == ("InvalidInput", True)
    err = await app_error(env.run(acts.install, HelmInstallInput(ref, chart="norepo/webapp", timeout=30)))
    assert (err.type, err.non_retryable) == ("ChartNotFound", True)


async def test_inspect_local_chart_without_cluster(tools: Any, tmp_path: Path) -> None:
    settings = Settings(
        helm=str(tools.helm), kubectl=str(tools.kubectl), state_dir=tmp_path, charts_dir=CHARTS
    )
    envs = Envs({})
    acts = ReleaseActivities(settings, envs)
    result = await ActivityEnvironment().run(acts.inspect, InspectInput(cluster_uuid="", chart="webapp"))
    assert (result.chart["name"], result.chart["version"]) == ("webapp", "0.1.0")
    assert "replicaCount: 1" in result.values
    assert result.readme.strip()
    assert envs.asked == []  # no cluster needed
    err = await app_error(
        ActivityEnvironment().run(acts.inspect, InspectInput(cluster_uuid="", chart="emu/webapp"))
    )
    assert (err.type, err.non_retryable) == ("InvalidInput", True)


# ------------------------------------------------------------------------------ fake-runner branch tests


class FakeRunner(Runner):
    """Answers by helm verb from a table and records every argv and stdin."""

    def __init__(self, answers: dict[str, list[tuple[int, str, str]]]) -> None:
        self.answers = answers
        self.calls: list[tuple[list[str], bytes | None]] = []

    async def run(self, argv, *, env, stdin=None, timeout, heartbeat_every=5.0, term_grace=10.0, secrets=()):
        self.calls.append((list(argv), stdin))
        verb = argv[1]
        queue = self.answers[verb]
        rc, out, err = queue.pop(0) if len(queue) > 1 else queue[0]
        return ProcessResult(" ".join(argv), rc, out.encode(), err.encode(), 0.01)

    def verbs(self) -> list[str]:
        return [c[0][1] for c in self.calls]


def history_json(*entries: tuple[int, str]) -> str:
    return json.dumps([RevisionInfo(r, s, "webapp-0.1.0", "1.0.0", "d").__dict__ for r, s in entries])


def fake_acts(
    answers: dict[str, list[tuple[int, str, str]]], tmp_path: Path
) -> tuple[ReleaseActivities, FakeRunner]:
    runner = FakeRunner({"version": [(0, "v4.3.1", "")], **answers})
    settings = Settings(helm="helm", kubectl="kubectl", state_dir=tmp_path, charts_dir=None)
    return ReleaseActivities(settings, Envs({"KUBECONFIG": "/k"}), runner), runner


async def test_upgrade_of_a_release_pending_for_another_operation_waits_then_is_retryable(
    tmp_path: Path,
) -> None:
    """A young pending revision of another operation may still be written by a live helm: the
    attempt waits while it has time, then gives up with a retryable OperationInProgress."""
    now = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
    history = json.loads(history_json((1, "deployed"), (2, "pending-upgrade")))
    for entry in history:
        entry["updated"] = now
    acts, runner = fake_acts(
        {"history": [(0, json.dumps(history), "")] * 10, "list": [(0, "[]", "")]}, tmp_path
    )
    inp = HelmUpgradeInput(
        ReleaseRef("c", "demo", "ns"), chart="emu/webapp", operation_id="mine", expected_revision=1
    )
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, started_time=datetime.datetime.now(datetime.UTC),
        start_to_close_timeout=datetime.timedelta(seconds=12), schedule_to_close_timeout=None,
    )  # fmt: skip
    err = await app_error(env.run(acts.upgrade, inp))
    assert (err.type, err.non_retryable) == ("OperationInProgress", False)
    assert "upgrade" not in runner.verbs() and "rollback" not in runner.verbs()
    assert runner.verbs().count("history") >= 2  # looked again while waiting


async def test_install_sends_values_on_stdin_only_and_labels_the_operation(tmp_path: Path) -> None:
    release = {"name": "demo", "namespace": "ns", "version": 1, "info": {"status": "deployed"}}
    acts, runner = fake_acts(
        {
            "history": [(1, "", "Error: release: not found")],
            "install": [(0, json.dumps(release), "WARNING: something deprecated")],
        },
        tmp_path,
    )
    inp = HelmInstallInput(
        ReleaseRef("c", "demo", "ns"),
        chart="emu/webapp:1.0.0",
        values={"password": "s3cr3t!"},
        operation_id="wf/1",
    )
    info = await ActivityEnvironment().run(acts.install, inp)
    assert (info.revision, info.status) == (1, "deployed")
    argv, stdin = next(c for c in runner.calls if c[0][1] == "install")
    assert json.loads(stdin or b"") == {"password": "s3cr3t!"}
    assert not any("s3cr3t" in a for a in argv)
    assert argv[argv.index("--version") + 1] == "1.0.0"
    assert argv[argv.index("--labels") + 1] == f"{OP_LABEL}={op_marker('wf/1')[OP_LABEL]}"


async def test_failure_messages_never_contain_values(tmp_path: Path) -> None:
    acts, _ = fake_acts(
        {
            "history": [(1, "", "Error: release: not found")],
            "install": [(1, "", "Error: INSTALLATION FAILED: parse error: value hunter2-secret bad")],
        },
        tmp_path,
    )
    inp = HelmInstallInput(ReleaseRef("c", "demo", "ns"), chart="emu/webapp", values={"pw": "hunter2-secret"})
    err = await app_error(ActivityEnvironment().run(acts.install, inp))
    assert err.type == "RenderFailed"
    assert "hunter2-secret" not in err.message and "<redacted>" in err.message


async def test_version_is_probed_once_per_binary(tmp_path: Path) -> None:
    acts, runner = fake_acts({"history": [(1, "", "Error: release: not found")]}, tmp_path)
    for _ in range(3):
        await ActivityEnvironment().run(acts.history, ReleaseRef("c", "demo", "ns"))
    assert runner.verbs().count("version") == 1


async def test_unsupported_helm_is_non_retryable(tmp_path: Path) -> None:
    acts, _ = fake_acts({"version": [(0, "v4.1.4", "")]}, tmp_path)
    err = await app_error(ActivityEnvironment().run(acts.history, ReleaseRef("c", "demo", "ns")))
    assert (err.type, err.non_retryable) == ("UnsupportedHelm", True)


# ------------------------------------------------------------------------------ URL policy (fake runner)


REF = ReleaseRef("c", "demo", "ns")


@pytest.mark.parametrize(
    ("activity", "inp", "field"),
    [
        pytest.param(
            "install",
            HelmInstallInput(REF, chart="oci://169.254.169.254/latest/app"),
            "kdu_model",
            id="install oci metadata",
        ),
        pytest.param(
            "install",
            HelmInstallInput(REF, chart="oci://10.0.0.1:5000/charts/app:1.0"),
            "kdu_model",
            id="install oci private",
        ),
        pytest.param(
            "upgrade",
            HelmUpgradeInput(REF, chart="oci://192.168.1.10/charts/app"),
            "kdu_model",
            id="upgrade oci private",
        ),
        pytest.param(
            "inspect",
            InspectInput("", "app", repo_url="http://169.254.169.254/latest/meta-data"),
            "repo_url",
            id="inspect repo_url metadata",
        ),
        pytest.param(
            "inspect",
            InspectInput("", "oci://172.16.0.1/charts/app"),
            "kdu_model",
            id="inspect oci private",
        ),
        pytest.param(
            "inspect",
            InspectInput("", "app", repo_url="https://user:pw-Secret@charts.example.com/"),
            "repo_url",
            id="inspect repo_url with credentials",
        ),
    ],
)
async def test_urls_outside_the_policy_are_refused_before_helm_runs(
    tmp_path: Path, activity: str, inp: Any, field: str
) -> None:
    acts, runner = fake_acts({}, tmp_path)
    err = await app_error(ActivityEnvironment().run(getattr(acts, activity), inp))
    assert (err.type, err.non_retryable) == ("UrlNotAllowed", True)
    assert err.message == (
        f"{field}: the URL is neither a registered repository nor allowed by the operator's URL policy"
    )
    assert runner.calls == []


async def test_cluster_repository_references_are_not_subject_to_the_allowlist(tmp_path: Path) -> None:
    """ "repo/chart" resolves against the cluster's repositories: no URL of the input, no check."""
    release = {"name": "demo", "namespace": "ns", "version": 1, "info": {"status": "deployed"}}
    acts, runner = fake_acts(
        {"history": [(1, "", "Error: release: not found")], "install": [(0, json.dumps(release), "")]},
        tmp_path,
    )
    inp = HelmInstallInput(ReleaseRef("c", "demo", "ns"), chart="emu/webapp")
    assert (await ActivityEnvironment().run(acts.install, inp)).revision == 1
    assert "install" in runner.verbs()


@pytest.mark.parametrize(
    ("inp", "etype", "field"),
    [
        pytest.param(PreflightInput(chart="oci://169.254.169.254/x/app"), "UrlNotAllowed", "kdu_model",
                     id="oci metadata address"),
        pytest.param(PreflightInput(chart="oci://127.0.0.1:5000/charts/app:1.0"), "UrlNotAllowed",
                     "kdu_model", id="oci loopback"),
        pytest.param(PreflightInput(chart="tests"), "InvalidInput", "kdu_model",
                     id="local name without charts dir"),
        pytest.param(PreflightInput(chart="--post-renderer=/bin/sh"), "InvalidInput", "kdu_model",
                     id="flag as chart"),
        pytest.param(PreflightInput(db_dict=DbDict("k8sclusters", {"_id": "c"}, "a")), "InvalidInput",
                     "db_dict.collection", id="credentials collection"),
        pytest.param(PreflightInput(db_dict=DbDict("nsrs", {"x": None}, "a")), "InvalidInput",
                     "db_dict.filter", id="null filter"),
    ],
)  # fmt: skip
async def test_preflight_refuses_before_anything_runs(
    tmp_path: Path, inp: PreflightInput, etype: str, field: str
) -> None:
    acts, runner = fake_acts({}, tmp_path)
    err = await app_error(ActivityEnvironment().run(acts.preflight, inp))
    assert (err.type, err.non_retryable) == (etype, True)
    assert field in err.message
    assert runner.calls == []


async def test_preflight_accepts_what_the_policy_allows(tmp_path: Path) -> None:
    charts = tmp_path / "charts"
    (charts / "webapp").mkdir(parents=True)
    (charts / "webapp" / "Chart.yaml").write_text("apiVersion: v2\nname: webapp\nversion: 0.1.0\n")
    settings = Settings(helm="helm", kubectl="kubectl", state_dir=tmp_path, charts_dir=charts,
                        url_allowlist=("oci://registry.example.com/charts",),
                        status_collections=("nsrs", "vnfrs"))  # fmt: skip
    runner = FakeRunner({})
    acts = ReleaseActivities(settings, Envs({"KUBECONFIG": "/k"}), runner)

    async def public(host: str, port: Any, **kw: Any) -> list[Any]:
        return [(2, 1, 6, "", ("93.184.215.14", 443))]

    acts._url_policy._getaddrinfo = public  # the allowlisted name resolves to a public address
    for inp in (
        PreflightInput(db_dict=DbDict("vnfrs", {"_id": "v"}, "_admin.deployed.K8s.0")),
        PreflightInput(chart="webapp"),
        PreflightInput(chart="stable/nginx", version="1.0.0"),
        PreflightInput(chart="oci://registry.example.com/charts/app:1.2.3"),
    ):
        assert await ActivityEnvironment().run(acts.preflight, inp) is None
    assert runner.calls == []


# ------------------------------------------------------------------------------------------------
# Status reported by the helm activity itself (StatusReport)
# ------------------------------------------------------------------------------------------------

REPORT_PATH = "_admin.deployed.K8s.0"


@needs_sandbox
async def test_helm_activity_reports_progress_then_the_final_status(
    tools: Any, kube_env: dict[str, str], tmp_path: Path, api: KubeApi, cluster: Any, store: Store
) -> None:
    """While helm waits for readiness the activity writes the progress it observes (ordered writes,
    on change only); once helm succeeded it writes the final phase above every progress write and
    returns that observation. A failed upgrade writes progress but no final status (the workflow
    decides and writes it)."""
    settings = dataclasses.replace(settings_for(tools, tmp_path), poll_interval=0.5)

    class Status(StatusActivities):
        async def api_for(self, cluster_uuid: str, *, refresh: bool = False) -> KubeApi:
            return api

    writes: list[dict[str, Any]] = []
    update_one = store.update_one

    async def recording(collection: str, filter: dict, update: dict, upsert: bool = False) -> int:
        writes.append(update["$set"])
        return await update_one(collection, filter, update, upsert)

    store.update_one = recording  # type: ignore[method-assign]
    await store.insert_one("nsrs", {"_id": "nsr-1", "_admin": {"deployed": {"K8s": [{"kdu-name": "web"}]}}})
    acts = ReleaseActivities(settings, Envs(kube_env), status=Status(settings, Envs(kube_env), store))
    db = DbDict(collection="nsrs", filter={"_id": "nsr-1"}, path=REPORT_PATH)
    ref = ref_for(tools, "reported")
    cluster.set_ready_delay(1.5)
    try:
        inp = HelmInstallInput(
            ref, chart="webapp", timeout=60, operation_id="op-r",
            report=StatusReport(db, "install", seq_base=1_000, final_phase="completed"),
        )  # fmt: skip
        info = await ActivityEnvironment().run(acts.install, inp)
        assert info.final_status is not None and info.final_status.ready
        sub = "_admin.deployed.K8s.0.kduflow"
        phases = [w[sub]["phase"] for w in writes]
        assert phases[-1] == "completed" and len(phases) >= 2, phases  # progress seen, then final
        seqs = [w[sub]["seq"] for w in writes]
        assert seqs == sorted(seqs) and seqs[-1] == final_seq(1_000, 1)
        doc = await store.find_one("nsrs", {"_id": "nsr-1"})
        assert doc is not None
        assert doc["_admin"]["deployed"]["K8s"][0]["kduflow"]["phase"] == "completed"

        writes.clear()
        failing = HelmUpgradeInput(
            ref, chart="webapp", values={"ready": False}, timeout=3, operation_id="op-f", expected_revision=1,
            report=StatusReport(db, "upgrade", seq_base=2_000, final_phase="completed"),
        )  # fmt: skip
        assert (await app_error(ActivityEnvironment().run(acts.upgrade, failing))).type == "UpgradeFailed"
        assert writes and all(w[sub]["phase"] != "completed" for w in writes)
        assert all(w[sub]["seq"] < final_seq(2_000, 1) for w in writes)
    finally:
        cluster.set_ready_delay(0.2)
    await ActivityEnvironment().run(acts.uninstall, HelmUninstallInput(ref, timeout=60))


async def test_status_reports_use_the_workers_poll_interval(tmp_path: Path) -> None:
    """KDUFLOW_POLL_INTERVAL takes effect: the helm activity's status report polls at the worker's
    setting (workflows no longer pass an interval of their own)."""
    seen: list[float] = []

    class Reporter:
        async def run(self, interval: float, *, heartbeat: bool = False) -> None:
            seen.append(interval)
            await asyncio.Event().wait()

        async def final(self, phase: str) -> None:
            return None

    class Status:
        async def api_for(self, cluster_uuid: str, *, refresh: bool = False) -> None:
            raise AssertionError("no API use here")

        def reporter(self, ref: ReleaseRef, report: StatusReport, attempt: int) -> Reporter:
            return Reporter()

    for interval in (0.7, 2.5):
        settings = Settings(state_dir=tmp_path / "s", poll_interval=interval)
        acts = ReleaseActivities(settings, Envs({}), status=Status())  # type: ignore[arg-type]
        db = DbDict(collection="nsrs", filter={"_id": "n"}, path="p")
        report = StatusReport(db, "install", seq_base=1)

        async def body() -> ReleaseInfo:
            await asyncio.sleep(0.05)
            return ReleaseInfo("r", "ns")

        await ActivityEnvironment().run(acts._reported, ReleaseRef("c", "r", "ns"), report, body)
    assert seen == [0.7, 2.5]
