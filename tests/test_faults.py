"""Convergence after crashes, redeploys and faults, with real worker processes.

Every scenario runs ``python worker.py`` subprocesses (configured by environment variables, one state
directory each, one shared embedded store), the real ``temporal server start-dev`` (SQLite file),
sandbox clusters and a chart repository, and the real helm 4 (helm 3 in one scenario). Workflows are
started from this process. After each batch of operations the oracle in ``tests/support/faults.py``
checks: every workflow closed in the state a sequential model predicts for the order in which the
operations got the release's lock; no release is left ``pending-*``; no duplicate or stray release;
the ``nsrs`` status document of each release agrees with helm's history; the final values and chart
are what the last successful operation in lock order wrote; operations on one release never overlap.

Randomised scenarios print their seed (``KDUFLOW_FAULTS_SEED`` replays one); ``KDUFLOW_FAULTS_LARGE=1``
runs more seeds and operations.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox import SandboxCluster
from tests.support.charts import ChartRepoServer, chart_repo
from tests.support.faults import (
    LARGE,
    REPO_NAME,
    ROOT,
    TALLY,
    DevServer,
    Op,
    Problems,
    Rel,
    ReleaseModel,
    Rig,
    WorkerProcess,
    check_batch,
    check_no_strays,
    check_outcome,
    check_release,
    describe_ops,
    install_op,
    log,
    pid_alive,
    random_op,
    scenario_seed,
    timeline,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800 if LARGE else 600)]


@pytest.fixture(scope="module")
def repo() -> Iterator[ChartRepoServer]:
    with chart_repo(ROOT / "tools" / "helm3" / "helm") as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    dev = DevServer(tmp_path_factory.mktemp("temporal"))
    dev.start()
    try:
        yield dev
    finally:
        dev.stop()
        log(f"totals: {TALLY.line()}")


def fail_with(problems: Problems, header: str, ops: list[Op], rig: Rig) -> None:
    if problems:
        pytest.fail(
            problems.report(header) + "\n\noperations (lock order):\n" + describe_ops(ops)
            + "\n\n" + rig.worker_logs(3000),
            pytrace=False,
        )  # fmt: skip


async def check_strays(
    rig: Rig, rels: list[Rel], models: dict[str, ReleaseModel], problems: Problems
) -> None:
    """Every cluster lists exactly the releases the model says exist (no duplicate, no leftover)."""
    for cluster in {rel.cluster.uuid: rel.cluster for rel in rels}.values():
        expected = {
            (rel.namespace, rel.name)
            for rel in rels
            if rel.cluster is cluster and models.get(str(rel), ReleaseModel()).exists
        }
        await check_no_strays(rig, cluster, expected, problems)


def chains(rng: random.Random, rels: list[Rel], count: tuple[int, int], *, first_batch: bool) -> list[Op]:
    """Per release ``count`` (min, max) random operations, an install first in the first batch; in
    start order: every release's first operation, then the others shuffled."""
    firsts: list[Op] = []
    rest: list[Op] = []
    for rel in rels:
        n = rng.randint(*count)
        chain = [install_op(rel, rng.choice(["0.1.0", "0.2.0"]))] if first_batch else []
        chain += [random_op(rng, rel, allow_install=not first_batch) for _ in range(n - len(chain))]
        firsts.append(chain[0])
        rest += chain[1:]
    rng.shuffle(rest)
    return firsts + rest


@dataclass
class KillPlan:
    after: float
    mid_helm: bool = False
    with_helm: bool = False
    restart_after: float = 0.0
    #: With ``mid_helm``: seconds to wait at most for a helm process that changes a release.
    wait_limit: float = 10.0
    #: With ``mid_helm``: seconds to let that helm run before the kill (it records the new revision
    #: after its discovery and rendering, then waits for readiness).
    linger: float = 0.0


async def kill_and_restart(
    worker: WorkerProcess, plans: list[KillPlan], label: str, done: asyncio.Event
) -> list[tuple[int, str]]:
    """For each plan in turn: SIGKILL ``worker`` ``plan.after`` seconds later (with ``mid_helm``, once
    it runs a helm process that changes a release, waiting at most ``plan.wait_limit`` s more) and
    start it again ``plan.restart_after`` seconds later; no more kills once ``done`` is set. Returns
    the helm processes killed with it."""
    killed: list[tuple[int, str]] = []
    for plan in plans:
        await asyncio.sleep(plan.after)
        deadline = time.monotonic() + plan.wait_limit
        while (
            plan.mid_helm and time.monotonic() < deadline and not done.is_set() and not mutating_helm(worker)
        ):
            await asyncio.sleep(0.1)
        if done.is_set():
            log(f"{label}: every operation closed before the next kill")
            break
        if plan.mid_helm and plan.linger:
            await asyncio.sleep(plan.linger)
        running = worker.kill(signal.SIGKILL, with_helm=plan.with_helm)
        log(
            f"{label}: SIGKILL worker{' with its helm' if plan.with_helm else ''}; "
            f"it ran {[argv[:90] for _, argv in running]}"
        )
        await asyncio.sleep(plan.restart_after)
        await asyncio.to_thread(worker.start)
        killed += running if plan.with_helm else []
    return killed


def mutating_helm(worker: WorkerProcess) -> list[str]:
    verbs = ("install", "upgrade", "rollback", "uninstall")
    return [argv for _, argv in worker.helm_children() if any(v in argv.split()[1:3] for v in verbs)]


# ------------------------------------------------------------------------------------------------
# 1. SIGKILL at seeded random points during a mix of operations
# ------------------------------------------------------------------------------------------------


async def test_sigkill_at_random_points_converges(server: DevServer, repo: ChartRepoServer, tmp_path: Path):
    """Batches of 2-5 simultaneous operations per release (installs, upgrades, failing upgrades that
    are rolled back, rollbacks, scales, uninstalls); the worker is SIGKILLed at a random moment of each
    batch (sometimes with the helm processes it runs, as when its container dies) and started again."""
    seed = scenario_seed("sigkill")
    rng = random.Random(seed)
    batches, releases = (5, 4) if LARGE else (1, 3)
    header = f"SIGKILL scenario, seed {seed}"
    async with Rig(tmp_path, server, repo.url, name="kill") as rig:
        worker = await rig.start_worker("w1")
        cluster = await rig.add_cluster("kill-c1", ready_delay=1.0)
        rels = [await rig.add_release(cluster, f"k{i}", "kill") for i in range(releases)]
        models: dict[str, ReleaseModel] = {}
        inexact: set[str] = set()
        problems = Problems()
        all_ops: list[Op] = []
        for batch in range(batches):
            ops = chains(rng, rels, (2, 5), first_batch=batch == 0)
            # The first batch kills twice, once each way, in a random order: the worker alone while it
            # runs a helm process that changes a release, and the worker with its helm processes (a
            # dying container). Later batches kill once or twice at random moments; half of those
            # kills wait (at most 10 s more) for such a helm process.
            if batch == 0:
                kinds = [False, True]
                rng.shuffle(kinds)
                plans = [
                    KillPlan(
                        rng.uniform(0.5, 3.0), True, kind, rng.uniform(0.0, 2.0), 45, rng.uniform(0.0, 1.5)
                    )
                    for kind in kinds
                ]
            else:
                plans = [
                    KillPlan(
                        rng.uniform(0.5, 4.0),
                        rng.random() < 0.5,
                        rng.random() < 0.4,
                        rng.uniform(0.0, 2.0),
                        linger=rng.uniform(0.0, 1.5),
                    )  # fmt: skip
                    for _ in range(rng.randint(1, 2))
                ]
            done = asyncio.Event()
            task = asyncio.create_task(kill_and_restart(worker, plans, f"batch {batch}", done))
            started = time.monotonic()
            await rig.run_batch(ops, timeout=900 if LARGE else 420)
            done.set()
            killed = await task
            # A killed helm upgrade/rollback leaves a pending revision that the retry recovers by a
            # rollback: revision numbers then differ from the model's (values and outcomes do not).
            for _, argv in killed:
                words = argv.split()
                for rel in rels:
                    if rel.name in words and any(v in words for v in ("upgrade", "rollback")):
                        inexact.add(str(rel))
            log(f"batch {batch}: {len(ops)} operations in {time.monotonic() - started:.0f}s")
            for key in {str(op.rel) for op in ops}:
                exact = key not in inexact
                await check_batch(
                    rig, [op for op in ops if str(op.rel) == key], models, problems, exact_revisions=exact
                )
            all_ops += ops
            log(describe_ops(ops))
        await check_strays(rig, rels, models, problems)
        fail_with(problems, header, all_ops, rig)
    log(f"after sigkill: {TALLY.line()}")


# ------------------------------------------------------------------------------------------------
# 2. SIGTERM (a redeploy) in the middle of an upgrade with a long helm timeout
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ready_after", "grace"),
    [
        # Ready well inside the worker's graceful shutdown: the old worker finishes the upgrade.
        (4.0, 10),
        # Ready only after the graceful shutdown ended: the old worker leaves helm running and exits,
        # the retry on the new worker waits for that helm and adopts its outcome.
        (15.0, 5) if not LARGE else (40.0, 30),
    ],
    ids=["ready-within-grace", "ready-after-grace"],
)
async def test_sigterm_mid_upgrade_completes_without_rollback(
    server: DevServer, repo: ChartRepoServer, tmp_path: Path, ready_after: float, grace: int
):
    """An upgrade with helm --timeout 120 whose pods get ready only after ``ready_after`` seconds; the
    worker (``KDUFLOW_GRACEFUL_SHUTDOWN=grace``) gets SIGTERM (a redeploy) while helm runs and a new
    worker starts at once. The old worker exits within its graceful shutdown, the upgrade ends
    deployed at revision 2, and helm's history has no rollback (nothing was undone or redone)."""
    async with Rig(tmp_path, server, repo.url, name="term") as rig:
        old = await rig.start_worker("old", KDUFLOW_GRACEFUL_SHUTDOWN=str(grace))
        cluster = await rig.add_cluster("term-c1", ready_delay=0.3)
        rel = await rig.add_release(cluster, "t1", "term")
        install = install_op(rel)
        await rig.run_batch([install], timeout=180)
        assert install.outcome is not None and install.outcome.ok, install.outcome
        cluster.sandbox.set_ready_delay(ready_after)
        upgrade = Op("upgrade", rel, params={"message": "redeployed"}, version="0.2.0", timeout=120)
        await rig.start(upgrade)
        started = time.monotonic()
        helm: list[tuple[int, str]] = []
        while time.monotonic() - started < 30 and not helm:
            helm = [(pid, a) for pid, a in old.helm_children() if " upgrade t1 " in f" {a} "]
            await asyncio.sleep(0.1)
        assert helm, f"no helm upgrade ran on the old worker:\n{old.log_text()[-3000:]}"
        helm_pid = helm[0][0]
        old.kill(signal.SIGTERM)
        signalled = time.monotonic()
        log(f"SIGTERM to the old worker {signalled - started:.1f}s into the upgrade (helm pid {helm_pid})")
        new = await rig.start_worker("new")
        code = await asyncio.to_thread(old.wait, 60)
        old_gone = time.monotonic() - signalled
        helm_outlived_worker = pid_alive(helm_pid)
        log(
            f"old worker exited with {code} after {old_gone:.1f}s; helm still running: {helm_outlived_worker}"
        )
        await rig.finish(upgrade, timeout=300)
        upgrade.timeline = await timeline(upgrade.handle)
        problems = Problems()
        assert code == 0, f"the old worker exited with {code}:\n{old.log_text()[-3000:]}"
        assert old_gone < grace + 10, f"graceful shutdown took {old_gone:.0f}s (limit {grace} s)"
        out = upgrade.outcome
        if out is None or not out.ok or out.result is None:
            problems.add(f"upgrade did not complete: {out.short() if out else '-'}")
        elif (out.result.revision, out.result.status) != (2, "deployed"):
            problems.add(f"upgrade result {out.short()}, expected revision 2 deployed")
        history = await asyncio.to_thread(cluster.helm_json, "history", rel.name, "-n", rel.namespace)
        statuses = (
            [(h["revision"], h["status"], h["description"]) for h in history]
            if isinstance(history, list)
            else history
        )
        if statuses != [(1, "superseded", "Install complete"), (2, "deployed", "Upgrade complete")]:
            problems.add(f"history {statuses}: expected the install superseded by one upgrade, no rollback")
        model = ReleaseModel()
        model.apply(install)
        upgrade.expected = model.apply(upgrade)
        await check_release(rig, rel, model, problems)
        if ready_after > grace and not helm_outlived_worker:
            problems.add(
                "the old worker's helm did not outlive the worker (a redeploy must leave it running)"
            )
        attempts = {h[0]: h[3] for h in upgrade.timeline.helm}
        identities = {who for h in upgrade.timeline.helm for who in h[4:6] if who}
        log(f"upgrade attempts {attempts}, completed by {identities}; new worker {new.identity}")
        if ready_after > grace and new.identity not in identities:
            problems.add(f"the upgrade activity did not finish on the new worker ({identities})")
        fail_with(problems, f"SIGTERM scenario (ready after {ready_after:.0f}s)", [install, upgrade], rig)


# ------------------------------------------------------------------------------------------------
# 3. The Temporal server restarts while operations run
# ------------------------------------------------------------------------------------------------


async def test_temporal_server_restart_mid_run(repo: ChartRepoServer, tmp_path: Path):
    """The dev server is stopped (SIGTERM) while operations run and started again on the same port with
    the same SQLite file; the worker (helm 3 here) and the client reconnect and everything completes."""
    seed = scenario_seed("temporal-restart")
    rng = random.Random(seed)
    own = DevServer(tmp_path / "temporal")
    own.start()
    try:
        async with Rig(tmp_path, own, repo.url, dialect="helm3", name="restart") as rig:
            worker = await rig.start_worker("w1")
            cluster = await rig.add_cluster("restart-c1", ready_delay=1.0)
            rels = [await rig.add_release(cluster, f"r{i}", "restart") for i in range(4 if LARGE else 3)]
            models: dict[str, ReleaseModel] = {}
            problems = Problems()
            all_ops: list[Op] = []
            for batch in range(3 if LARGE else 1):
                ops = chains(rng, rels, (3, 4), first_batch=batch == 0)
                plan = [(rng.uniform(1.0, 4.0), rng.uniform(1.0, 4.0)) for _ in range(2 if LARGE else 1)]

                async def restarter(plan: list[tuple[float, float]] = plan, batch: int = batch) -> None:
                    for after, down in plan:
                        await asyncio.sleep(after)
                        await asyncio.to_thread(own.restart, down)
                        log(f"batch {batch}: dev server restarted after {after:.1f}s, down for {down:.1f}s")

                task = asyncio.create_task(restarter())
                started = time.monotonic()
                await rig.run_batch(ops, timeout=600)
                await task
                log(f"batch {batch}: {len(ops)} operations in {time.monotonic() - started:.0f}s")
                await check_batch(rig, ops, models, problems)
                all_ops += ops
            await check_strays(rig, rels, models, problems)
            if not worker.alive():
                problems.add(f"the worker died while the server was down:\n{worker.log_text()[-2000:]}")
            log(describe_ops(all_ops))
            fail_with(problems, f"Temporal restart scenario, seed {seed}", all_ops, rig)
    finally:
        own.stop()


def tally_faults(sandbox: SandboxCluster) -> None:
    """Add the sandbox's injected faults to the module's tally and zero its counters."""
    counts = sandbox.fault_counts()
    TALLY.faults_injected += counts["error"] + counts["drop"]
    TALLY.requests_delayed += counts["latency"]
    sandbox.reset_counters()


async def fails_fast(
    rig: Rig, sandbox: SandboxCluster, op: Op, error_type: str | None, problems: Problems, seconds: float = 30
) -> None:
    """Run ``op``: it must fail (with ``error_type`` unless None) within ``seconds``, with at most 50
    API requests to ``sandbox``; without retries when ``error_type`` is a non-retryable type."""
    sandbox.reset_counters()
    started = time.monotonic()
    await rig.run_batch([op], timeout=300)
    took, requests = time.monotonic() - started, sandbox.total_requests()
    tally_faults(sandbox)
    out = op.outcome
    retried = op.timeline.retried if op.timeline else {}
    shown = out.short() if out else "-"
    log(f"{op.describe()}: {shown} in {took:.1f}s, {requests} requests, retried {retried}")
    if out is None or out.ok or (error_type is not None and out.error_type != error_type):
        problems.add(f"{op.describe()}: {out.short() if out else '-'} (expected {error_type or 'a failure'})")
    if took > seconds or requests > 50 or (error_type is not None and retried):
        problems.add(f"{op.describe()}: not fast: {took:.0f}s, {requests} API requests, retried {retried}")


async def harsh_faults(rig: Rig, rng: random.Random, seed: int, problems: Problems) -> list[Op]:
    """10 % plain 500 answers, 5 % drops of any request, 50 ms: helm gives up on the first fault it
    meets, so operations fail, but every workflow must close in bounded time, no release may be left
    pending, every status document must agree with helm, and the API requests stay bounded."""
    harsh = await rig.add_cluster("harsh", ready_delay=0.5)
    hrels = [await rig.add_release(harsh, f"h{i}", "harsh") for i in range(3 if LARGE else 2)]
    setup = [install_op(rel) for rel in hrels]
    await rig.run_batch(setup, timeout=300)
    harsh.sandbox.reset_counters()
    harsh.sandbox.set_faults(0.10, 0.05, 0.05, seed=seed)
    hops = chains(rng, hrels, (3, 4) if LARGE else (2, 3), first_batch=False)
    started = time.monotonic()
    await rig.run_batch(hops, timeout=900)
    took = time.monotonic() - started
    faults = harsh.sandbox.fault_counts()
    requests = harsh.sandbox.total_requests()
    harsh.sandbox.set_faults()
    tally_faults(harsh.sandbox)
    log(f"(b) {len(hops)} operations in {took:.0f}s, {requests} API requests, faults {faults}")
    log(describe_ops(hops))
    for op in hops:
        if op.outcome is None or op.outcome.status == "RUNNING":
            problems.add(f"(b) {op.describe()}: still RUNNING after {took:.0f}s")
    if requests > 600 * len(hops):
        problems.add(f"(b) {requests} API requests for {len(hops)} operations: a retry storm")
    for rel in hrels:
        await check_release(rig, rel, None, problems, require_deployed=False)
    return hops


# ------------------------------------------------------------------------------------------------
# 4. Kubernetes API faults
# ------------------------------------------------------------------------------------------------


async def test_api_faults_converge_and_permanent_errors_fail_fast(
    server: DevServer, repo: ChartRepoServer, tmp_path: Path
):
    """(a) 10 % 503 answers with Retry-After, 5 % dropped connections (on requests clients resend:
    GET and WATCH) and 50 ms latency: every operation ends as the model predicts. (b) The same rates
    as plain 500s and drops of any request: helm itself gives up on the first one, so operations may
    fail, but every workflow closes in bounded time and every release ends consistent (not pending,
    status document = helm). (c) Permanent errors (403 for every request; a chart that fails to
    render) fail at once, without retries, with a bounded number of API requests."""
    seed = scenario_seed("api-faults")
    rng = random.Random(seed)
    async with Rig(tmp_path, server, repo.url, name="apifaults") as rig:
        await rig.start_worker("w1")
        problems = Problems()
        all_ops: list[Op] = []

        # (a) faults clients retry: strict model.
        soft = await rig.add_cluster("soft", ready_delay=0.5)
        rels = [await rig.add_release(soft, f"s{i}", "soft") for i in range(3 if LARGE else 2)]
        models: dict[str, ReleaseModel] = {}
        soft.sandbox.set_faults(
            0.10, 0.05, 0.05, error_status=503, retry_after=1, drop_only="GET *|WATCH *", seed=seed
        )
        for batch in range(3 if LARGE else 1):
            ops = chains(rng, rels, (3, 5) if LARGE else (2, 4), first_batch=batch == 0)
            started = time.monotonic()
            await rig.run_batch(ops, timeout=600)
            took = time.monotonic() - started
            log(f"(a) batch {batch}: {len(ops)} operations in {took:.0f}s, {soft.sandbox.fault_counts()}")
            await check_batch(rig, ops, models, problems)
            all_ops += ops
        tally_faults(soft.sandbox)
        soft.sandbox.set_faults()
        await check_strays(rig, rels, models, problems)
        log(describe_ops(all_ops))

        # (b) faults helm does not retry (larger runs): consistency and bounded time; outcomes reported.
        hops = await harsh_faults(rig, rng, seed, problems) if LARGE else []

        # (c) permanent errors fail fast: RBAC forbids the release storage (403 on namespaced
        # resources), a chart fails to render; and a cluster refusing every request (403 on
        # discovery too, which helm reports as "cluster unreachable") ends in bounded time.
        hard = await rig.add_cluster("hard", ready_delay=0.3)
        rel = await rig.add_release(hard, "p1", "hard")
        await rig.run_batch([install_op(rel)], timeout=300)
        hard.sandbox.set_faults(1.0, error_status=403, only="* /api/v1/namespaces/*|* /apis/*/namespaces/*")
        await fails_fast(
            rig, hard.sandbox, Op("upgrade", rel, params={"message": "rbac"}), "CredentialsInvalid", problems
        )
        hard.sandbox.set_faults(1.0, error_status=403)
        everything = Op("upgrade", rel, params={"message": "forbidden"})
        await fails_fast(rig, hard.sandbox, everything, None, problems, seconds=60)
        hard.sandbox.set_faults()
        await check_release(rig, rel, None, problems)
        broken_rel = await rig.add_release(hard, "p2", "hard")
        broken = Op("install", broken_rel, version="0.1.0", chart=f"{REPO_NAME}/broken")
        await fails_fast(rig, hard.sandbox, broken, "RenderFailed", problems)
        await check_release(rig, broken_rel, None, problems)

        # (d) helm cannot record an upgrade's outcome (its release-Secret updates fail: the last two
        # writes of `helm upgrade`), so the revision stays pending-upgrade although no helm runs any
        # more. The operation must still end within a minute and leave a consistent release: rolled
        # back to the recorded revision (UpgradeRolledBack), or upgraded after all (success).
        stuck = await rig.add_release(hard, "p3", "hard")
        first = install_op(stuck)
        await rig.run_batch([first], timeout=300)
        hard.sandbox.set_faults(1.0, only="PUT /api/v1/namespaces/{ns}/secrets/{name}", limit=2)
        unrecorded = Op("upgrade", stuck, params={"message": "unrecorded"}, timeout=30)
        started = time.monotonic()
        await rig.run_batch([unrecorded], timeout=60)
        took = time.monotonic() - started
        tally_faults(hard.sandbox)
        hard.sandbox.set_faults()
        outcome = unrecorded.outcome.short() if unrecorded.outcome else "-"
        log(f"(d) upgrade whose outcome helm could not record: {outcome} after {took:.0f}s")
        model = ReleaseModel()
        model.apply(first)
        succeeded = unrecorded.outcome is not None and unrecorded.outcome.ok
        as_run = unrecorded if succeeded else Op("upgrade-fail", stuck, params={"message": "unrecorded"})
        unrecorded.expected = model.apply(as_run)
        check_outcome(unrecorded, False, problems)
        await check_release(rig, stuck, model, problems, exact_revisions=False)
        if unrecorded.outcome is not None and unrecorded.outcome.status == "RUNNING":
            assert unrecorded.handle is not None
            await unrecorded.handle.terminate("fault test: still running after 60 s (reported)")
        all_ops += [first, unrecorded]
        fail_with(problems, f"API faults scenario, seed {seed}", all_ops + hops, rig)


# ------------------------------------------------------------------------------------------------
# 5. Two workers on one task queue, one of them killed
# ------------------------------------------------------------------------------------------------


async def test_two_workers_one_killed_work_completes_on_the_other(
    server: DevServer, repo: ChartRepoServer, tmp_path: Path
):
    """Two worker processes share the task queue (and the embedded store); the one running a helm
    process that changes a release is SIGKILLed and not restarted: the survivor finishes everything."""
    seed = scenario_seed("two-workers")
    rng = random.Random(seed)
    async with Rig(tmp_path, server, repo.url, name="pair") as rig:
        a = await rig.start_worker("a")
        b = await rig.start_worker("b")
        cluster = await rig.add_cluster("pair-c1", ready_delay=1.5)
        rels = [await rig.add_release(cluster, f"p{i}", "pair") for i in range(6 if LARGE else 3)]
        ops = chains(rng, rels, (2, 3), first_batch=True)
        for op in ops:
            await rig.start(op)
        started = time.monotonic()
        victim: WorkerProcess | None = None
        running: list[str] = []
        while time.monotonic() - started < 30 and victim is None:
            for worker in (a, b):
                running = mutating_helm(worker)
                if running:
                    victim = worker
                    break
            await asyncio.sleep(0.1)
        assert victim is not None, "no helm process changing a release ran within 30 s"
        survivor = b if victim is a else a
        victim_identity = victim.identity
        victim.kill(signal.SIGKILL)
        killed_at = time.time()
        log(f"SIGKILL worker {victim.name} ({victim_identity}) while it ran {[r[:90] for r in running]}")
        await asyncio.gather(*(rig.finish(op, 600) for op in ops))
        for op in ops:
            op.timeline = await timeline(op.handle)
        log(f"all {len(ops)} operations closed {time.monotonic() - started:.0f}s after the start")
        problems = Problems()
        models: dict[str, ReleaseModel] = {}
        await check_batch(rig, ops, models, problems)
        await check_strays(rig, rels, models, problems)
        # The operations that held their release's lock while the victim ran their helm.
        names = {word for argv in running for word in argv.split()}
        interrupted = [
            op
            for op in ops
            if op.rel.name in names
            and op.timeline is not None
            and op.timeline.acquired is not None
            and op.timeline.acquired <= killed_at <= (op.timeline.released or float("inf"))
        ]
        for op in interrupted:
            finishers = {who for *_, who in op.timeline.helm} if op.timeline else set()
            log(f"{op.wf_id} (interrupted on {victim.name}): helm activities finished by {finishers}")
            if survivor.identity not in finishers or not (op.outcome and op.outcome.status == "COMPLETED"):
                problems.add(
                    f"{op.describe()}, interrupted on {victim.name}, did not complete on {survivor.name}: "
                    f"{op.outcome.short() if op.outcome else '-'}, finished by {finishers}"
                )
        if not interrupted:
            problems.add(f"no operation held its lock while {victim.name}'s helm ran {running}")
        late = [
            (op.wf_id, name)
            for op in ops
            for name, _, closed, _, _, who in (op.timeline.helm if op.timeline else [])
            if who == victim_identity and closed is not None and closed > killed_at + 1
        ]
        if late:
            problems.add(f"activities completed by the killed worker after its death: {late}")
        if not survivor.alive():
            problems.add(f"the survivor {survivor.name} died")
        log(describe_ops(ops))
        fail_with(problems, f"two-worker scenario, seed {seed}", ops, rig)


# ------------------------------------------------------------------------------------------------
# 6. 20 releases on 4 clusters at once
# ------------------------------------------------------------------------------------------------


async def test_twenty_releases_on_four_clusters_serialised_and_parallel(
    server: DevServer, repo: ChartRepoServer, tmp_path: Path
):
    """20 releases (5 on each of 4 clusters), each with an install and one or two more operations
    started at the same moment. Operations on one release never overlap (lock holdings and helm
    activities from the histories; the lock's ``state`` query shows waiters queued behind a holder);
    different releases run in parallel (wall time well below the sum of the lock holdings)."""
    seed = scenario_seed("twenty-releases")
    rng = random.Random(seed)
    async with Rig(tmp_path, server, repo.url, name="many") as rig:
        await rig.start_worker("w1")
        await rig.start_worker("w2")
        clusters = [await rig.add_cluster(f"many-c{i}", ready_delay=2.0) for i in range(4)]
        rels = [await rig.add_release(c, f"m{j}", "many") for c in clusters for j in range(5)]
        ops: list[Op] = []
        for rel in rels:
            ops.append(install_op(rel))
            ops.append(Op("upgrade", rel, params={"message": f"u-{rel.name}"}, version="0.2.0"))
            if LARGE or rng.random() < 0.5:
                ops.append(Op("scale", rel, scale=rng.randint(1, 3)))
        watched = rels[0]
        lock_id = f"kduflow-lock/{watched.cluster.uuid}/{watched.namespace}/{watched.name}"
        queued: list[int] = []

        async def watch_lock() -> None:
            from activities.models import LockState

            assert rig.client is not None
            handle = rig.client.get_workflow_handle(lock_id)
            for _ in range(120):
                with contextlib.suppress(Exception):
                    state = await handle.query("state", result_type=LockState)
                    if state.holder is not None:
                        queued.append(len(state.queue))
                await asyncio.sleep(0.25)

        watcher = asyncio.create_task(watch_lock())
        started = time.monotonic()
        await rig.run_batch(ops, timeout=600)
        wall = max(op.finished_at for op in ops) - started
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        problems = Problems()
        models: dict[str, ReleaseModel] = {}
        await check_batch(rig, ops, models, problems)
        await check_strays(rig, rels, models, problems)
        holdings = [
            (op.timeline.released or op.timeline.closed or 0) - op.timeline.acquired
            for op in ops
            if op.timeline and op.timeline.acquired is not None
        ]
        total_held = sum(holdings)
        spans = sorted(
            (h[1], h[2] or h[1], str(op.rel)) for op in ops if op.timeline for h in op.timeline.helm
        )
        starts = [s0 for s0, _, _ in spans]
        peak = max((len({rel for s0, s1, rel in spans if s0 <= t < s1}) for t in starts), default=0)
        log(
            f"{len(ops)} operations on {len(rels)} releases: wall {wall:.0f}s, lock held "
            f"{total_held:.0f}s in total, at most {peak} releases in helm at once; lock {lock_id} had up to "
            f"{max(queued, default=0)} waiters behind its holder"
        )
        if wall > 0.5 * total_held:
            problems.add(f"not parallel: wall time {wall:.0f}s vs {total_held:.0f}s of lock holdings")
        if peak < 4:
            problems.add(f"at most {peak} releases had helm running at the same time")
        if not queued or max(queued) < 1:
            problems.add(f"the lock of {watched} never showed a waiter behind its holder ({queued[:20]})")
        fail_with(problems, f"20-release scenario, seed {seed}", ops, rig)
