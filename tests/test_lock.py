"""One mutating operation per release: the ReleaseLock workflow with the real release workflows.

On the time-skipping dev server with the in-memory cluster of tests/support/workflows.py: the real
``ReleaseLock`` workflow and the real ``lock.*`` activities, mocked helm. Serialisation is shown on
the mocks' call order (a second upgrade's helm call starts only after the first one ended), and by
the lock's own ``state`` query.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.models import LockState, ReleaseRef, UninstallKduInput, UpgradeKduInput
from kduflow.config import Settings
from kduflow.plugin import KduflowPlugin
from tests.support.lock_holder import HoldReleaseLock
from tests.support.workflows import FakeCluster, KduTestEnv, kdu_test_env
from workflows.kdu import UninstallKdu, UpgradeKdu
from workflows.lock import ReleaseLock, lock_id

REF = ReleaseRef("c1", "web", "ns1")


@pytest_asyncio.fixture(scope="module")
async def env(ts_env: WorkflowEnvironment) -> AsyncIterator[KduTestEnv]:
    async with kdu_test_env(ts_env.client) as kdu:
        yield kdu


@pytest.fixture
def cluster(env: KduTestEnv) -> FakeCluster:
    cluster = env.fresh()
    cluster.add_release("web", "ns1", ["superseded", "deployed"], user_values={"replicaCount": 1})
    return cluster


def upgrade(**kw: Any) -> UpgradeKduInput:
    return UpgradeKduInput(cluster_uuid="c1", kdu_instance="web", namespace="ns1", **kw)


async def lock_state(env: KduTestEnv, ref: ReleaseRef = REF) -> LockState:
    handle = env.client.get_workflow_handle(lock_id(ref))
    return await handle.query(ReleaseLock.state)


async def eventually(check: Any, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            if await check():
                return
        except Exception:  # noqa: BLE001 - not there yet (e.g. the lock workflow is not started)
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def holder_and_queue(env: KduTestEnv) -> tuple[str, list[str]]:
    state = await lock_state(env)
    return (state.holder.workflow_id if state.holder else "", [w.workflow_id for w in state.queue])


async def test_second_operation_waits_its_turn_and_fail_fast_names_the_holder(
    env: KduTestEnv, cluster: FakeCluster
) -> None:
    cluster.block_upgrade = True
    first: WorkflowHandle[Any, Any] = await env.start(UpgradeKdu.run, upgrade())
    await asyncio.wait_for(cluster.upgrade_started.wait(), 20)
    second = await env.start(UninstallKdu.run, UninstallKduInput("c1", "web", "ns1"))

    async def queued() -> bool:
        return await holder_and_queue(env) == (first.id, [second.id])

    await eventually(queued)
    assert cluster.calls["kdu.uninstall"] == []  # the uninstall has not touched helm

    # A caller that does not want to wait fails at once, naming the holder.
    with pytest.raises(WorkflowFailureError) as info:
        await env.run(UpgradeKdu.run, upgrade(wait_for_lock=False))
    cause = info.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "OperationInProgress"
    assert cause.non_retryable and first.id in cause.message
    assert cause.details[0] == {"holder_operation": "upgrade", "holder_workflow_id": first.id}

    # The first upgrade ends (cancelled: the mock then writes a failed revision and the workflow
    # restores revision 2); only then does the uninstall run helm.
    cluster.block_upgrade = False
    await first.cancel()
    with pytest.raises(WorkflowFailureError):
        await first.result()
    rollbacks_of_first = len(cluster.calls["kdu.rollback"])
    result = await asyncio.wait_for(second.result(), 30)
    assert result.status == "absent"
    assert len(cluster.calls["kdu.uninstall"]) == 1
    # The uninstall's turn came after the first operation's remediation, never in between.
    assert rollbacks_of_first == len(cluster.calls["kdu.rollback"])


async def test_operations_on_different_releases_do_not_wait_for_each_other(
    env: KduTestEnv, cluster: FakeCluster
) -> None:
    cluster.add_release("db", "ns1", ["deployed"])
    cluster.block_upgrade = True
    first = await env.start(UpgradeKdu.run, upgrade())
    await asyncio.wait_for(cluster.upgrade_started.wait(), 20)
    # Another release of the same cluster and namespace: its own lock, no waiting.
    result = await asyncio.wait_for(env.run(UninstallKdu.run, UninstallKduInput("c1", "db", "ns1")), 30)
    assert result.status == "absent"
    cluster.block_upgrade = False
    await first.cancel()
    with pytest.raises(WorkflowFailureError):
        await first.result()


async def test_a_terminated_holder_loses_the_lock_after_the_lease_check(
    env: KduTestEnv, cluster: FakeCluster
) -> None:
    """Termination skips the holder's finally: the lock frees it only once it sees the run closed."""
    cluster.block_upgrade = True
    first = await env.start(UpgradeKdu.run, upgrade())
    await asyncio.wait_for(cluster.upgrade_started.wait(), 20)
    await first.terminate("operator gave up")
    cluster.block_upgrade = False
    # The lease check (every 30 s of workflow time; the test server skips ahead) frees the lock.
    result = await asyncio.wait_for(env.run(UninstallKdu.run, UninstallKduInput("c1", "web", "ns1")), 60)
    assert result.status == "absent"


async def test_a_cancelled_waiter_withdraws_and_the_next_one_gets_the_lock(
    env: KduTestEnv, cluster: FakeCluster
) -> None:
    cluster.block_upgrade = True
    first = await env.start(UpgradeKdu.run, upgrade())
    await asyncio.wait_for(cluster.upgrade_started.wait(), 20)
    waiter = await env.start(UpgradeKdu.run, upgrade(params={"replicaCount": 5}))

    async def waiter_queued() -> bool:
        return await holder_and_queue(env) == (first.id, [waiter.id])

    # One at a time: two requests started together may reach the lock in either order.
    await eventually(waiter_queued)
    last = await env.start(UninstallKdu.run, UninstallKduInput("c1", "web", "ns1"))

    async def both_queued() -> bool:
        return await holder_and_queue(env) == (first.id, [waiter.id, last.id])

    await eventually(both_queued)
    await waiter.cancel()
    with pytest.raises(WorkflowFailureError):
        await waiter.result()

    async def withdrawn() -> bool:
        return await holder_and_queue(env) == (first.id, [last.id])

    await eventually(withdrawn)
    cluster.block_upgrade = False
    await first.cancel()
    with pytest.raises(WorkflowFailureError):
        await first.result()
    assert (await asyncio.wait_for(last.result(), 30)).status == "absent"
    # The cancelled waiter never ran helm: one upgrade call (the first's) in all.
    assert len(cluster.calls["kdu.upgrade"]) == 1


async def test_three_simultaneous_upgrades_run_one_after_another(
    env: KduTestEnv, cluster: FakeCluster
) -> None:
    handles = [
        await env.client.start_workflow(
            UpgradeKdu.run, upgrade(params={"replicaCount": n}), id=f"up-{n}-{uuid.uuid4()}",
            task_queue=env.worker.task_queue,
        )
        for n in (2, 3, 4)
    ]  # fmt: skip
    results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 60)
    assert [r.status for r in results] == ["deployed"] * 3
    # Each upgrade observed the revision the previous one wrote: 3, 4, 5 in the order served.
    assert sorted(r.revision for r in results) == [3, 4, 5]
    assert [e.status for e in cluster.releases["web"].history] == ["superseded"] * 4 + ["deployed"]
    expected = [u.expected_revision for u in cluster.calls["kdu.upgrade"]]
    assert expected == [2, 3, 4]


async def test_the_lock_stays_reachable_when_its_first_requesters_queue_has_no_worker(
    local_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    """Lock workflows run on the lock queue, which every kduflow worker polls: a release whose lock
    was started from queue A (whose workers are gone now) is still granted to a caller on queue B."""
    ref = ReleaseRef(f"c-{uuid.uuid4().hex[:8]}", "web", "ns1")
    settings = Settings(state_dir=tmp_path / "state", lock_task_queue=f"locks-{uuid.uuid4().hex[:8]}")
    client = local_env.client

    async def hold_on(queue: str) -> str:
        plugin = KduflowPlugin(settings=settings)
        async with Worker(client, task_queue=queue, workflows=[HoldReleaseLock], plugins=[plugin]):
            handle = await client.start_workflow(
                HoldReleaseLock.run, ref, id=f"hold-{uuid.uuid4()}", task_queue=queue
            )

            async def holds() -> bool:
                state = await client.get_workflow_handle(lock_id(ref)).query(ReleaseLock.state)
                return state.holder is not None and state.holder.workflow_id == handle.id

            await eventually(holds)
            await handle.signal(HoldReleaseLock.go)
            return await asyncio.wait_for(handle.result(), 20)

    assert await hold_on(f"a-{uuid.uuid4().hex[:8]}") == "done"
    # Queue A has no worker now, and the lock workflow is still open (it closes after being idle).
    described = await client.get_workflow_handle(lock_id(ref)).describe()
    assert described.task_queue == settings.lock_task_queue
    assert await hold_on(f"b-{uuid.uuid4().hex[:8]}") == "done"
