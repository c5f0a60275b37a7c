"""One mutating operation per release at a time: the ``ReleaseLock`` workflow and how operations use it.

Two helm operations on one release collide ("another operation (install/upgrade/rollback) is in
progress"), and a failing operation's remediation (rollback to its recorded revision) would then
undo what the other one wrote. So every mutating workflow holds the release's lock from its first
observation of the release to its last status write. The lock is built from Temporal alone:

* **One lock workflow per release**, id ``kduflow-lock/<cluster>/<namespace>/<release>``, reached by
  update-with-start (``id_conflict_policy=USE_EXISTING``) from the short ``lock.request`` activity
  (workflow code cannot start or update other workflows). The ``request`` update grants the lock at
  once when it is free, otherwise queues the requester (FIFO) and answers its position; it is
  idempotent per requester token, so a retried activity neither queues twice nor loses a grant.
* **Grants** to a queued requester are a ``kduflow_lock_granted`` signal carrying its token; the
  requester waits with ``workflow.wait_condition``. **Release** (and withdrawal of a waiter that was
  cancelled) is a ``release`` signal sent from a shielded ``finally``, so cancellation does not skip it.
* **Lease.** Termination and reset skip ``finally`` blocks, so a holder can vanish without releasing.
  The lock never expires a holder by time alone: every ``LEASE_CHECK`` it asks (``lock.describe``)
  whether the holder's run is still open, and only a closed (or vanished) run loses the lock. A
  granted waiter that closed meanwhile cannot be signalled and is skipped.
* **Lifetime.** The lock workflow closes after ``IDLE_CLOSE`` without holder or waiter (the next
  request starts a new one) and continues-as-new when Temporal suggests it, carrying holder and queue.
* **Query** ``state`` shows the holder (operation, workflow id, since when) and the queue.
* **Its own task queue.** Lock workflows run on ``KDUFLOW_LOCK_TASK_QUEUE`` (``lock.request`` starts
  them there), which every kduflow worker polls besides its own queue. A lock started from a queue
  whose workers are gone (moved, renamed, scaled to zero) would otherwise never run again, and every
  later request to that release would wait on it.

Failure modes: a requester whose ``request`` update is accepted but whose activity result is lost
retries with the same token and gets the same answer. A lock workflow that is terminated by hand
loses its queue: waiters wait until their own timeout or cancellation (a new request after that
starts a fresh lock). Operations outside kduflow (a person running helm) are not serialised.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from contract.models import (
        ACTIVITY_NAMES,
        LOCK_RELEASE_SIGNAL,
        LOCK_WORKFLOW,
        LockAnswer,
        LockHolder,
        LockReleaseInput,
        LockRequest,
        LockRequestInput,
        LockState,
        ReleaseRef,
        WorkflowRunRef,
        WorkflowRunStatus,
    )
    from kduflow import metrics

from workflows.common import Tracked, lock_granted, waiting_for_lock
from workflows.decoding import decode_input

GRANTED_SIGNAL = "kduflow_lock_granted"
RELEASE_SIGNAL = LOCK_RELEASE_SIGNAL
#: ``workflow.patched`` id: operations recorded before the lock existed replay without it.
PATCH_LOCK = "release-lock-v1"
#: ``workflow.patched`` id: the lock is requested by a local activity (no activity task round trip
#: through the server). Runs recorded before it replay the activity. (The release signal stays
#: awaited: the server drops a signal whose sender closed before delivering it.)
PATCH_LOCK_LOCAL = "release-lock-local-v1"
#: ``workflow.patched`` id: the holder releases through a local activity that sends the release
#: signal and returns once the server accepted it, so the operation's last workflow task both
#: releases and completes (an external-signal command would need one more workflow task for its
#: result, and the server drops a signal whose sender closed before delivering it).
PATCH_LOCK_RELEASE_LOCAL = "release-lock-local-release-v1"
_RELEASE_TIMEOUT = timedelta(seconds=30)
#: How often the lock checks that its holder's run is still open.
LEASE_CHECK = timedelta(seconds=30)
#: How long an unheld, empty lock stays open for the next request before it closes.
IDLE_CLOSE = timedelta(seconds=30)
_REQUEST_TIMEOUT = timedelta(seconds=30)
_REQUEST_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=5),
    maximum_attempts=20,
)
_DESCRIBE_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=10), maximum_attempts=5)
_CLOSED = {"COMPLETED", "FAILED", "CANCELED", "TERMINATED", "CONTINUED_AS_NEW", "TIMED_OUT", "NOT_FOUND"}


def lock_id(ref: ReleaseRef) -> str:
    """The lock workflow's id: one per (cluster, namespace, release), whoever operates on it."""
    return f"kduflow-lock/{ref.cluster_uuid}/{ref.namespace}/{ref.kdu_instance}"


def describe_holder(holder: LockHolder | None) -> str:
    if holder is None:
        return "nobody"
    return f"{holder.operation or holder.workflow_type or 'an operation'} (workflow {holder.workflow_id})"


@workflow.defn(name=LOCK_WORKFLOW)
class ReleaseLock:
    """The lock of one release (see the module docstring). Input and query: :class:`LockState`."""

    @workflow.init
    def __init__(self, raw: Any = None, *extra: Any) -> None:
        # Decoded here, not in run(): the update of an update-with-start may be handled before
        # run() starts, and it needs the state.
        self._state: LockState = decode_input(LockState, raw, extra)
        self._changed = False

    @workflow.run
    async def run(self, raw: Any = None, *extra: Any) -> None:
        state = self._state
        workflow.set_current_details(self._details())
        while True:
            await self._grant_waiters()
            self._changed = False
            if state.holder is None and not state.queue:
                if not await self._wait_for_change(IDLE_CLOSE) and state.holder is None and not state.queue:
                    break
            elif not await self._wait_for_change(LEASE_CHECK):
                await self._check_holder()
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(state)
        await workflow.wait_condition(workflow.all_handlers_finished)

    @workflow.update(name="request")
    def request(self, req: LockRequest) -> LockAnswer:
        """Grant the lock now, or queue the requester (unless ``fail_fast``). Idempotent per token."""
        state = self._state
        me = req.requester
        if state.holder is not None and state.holder.token == me.token:
            return LockAnswer(granted=True, holder=state.holder)
        for index, waiter in enumerate(state.queue):
            if waiter.token == me.token:
                return LockAnswer(granted=False, holder=state.holder, position=index + 1)
        if state.holder is None and not state.queue:
            state.holder = me
            state.held_since = workflow.now().isoformat()
            self._touch()
            return LockAnswer(granted=True, holder=me)
        if req.fail_fast:
            return LockAnswer(granted=False, holder=state.holder or state.queue[0], position=0)
        state.queue.append(me)
        self._touch()
        return LockAnswer(granted=False, holder=state.holder, position=len(state.queue))

    @request.validator
    def _validate_request(self, req: LockRequest) -> None:
        if not isinstance(req, LockRequest) or not req.requester.token or not req.requester.workflow_id:
            raise ValueError("a lock request needs the requester's workflow id and token")

    @workflow.signal(name=RELEASE_SIGNAL)
    def release(self, token: str) -> None:
        """Release the lock held with ``token``, or withdraw the waiter queued with it."""
        state = self._state
        if state.holder is not None and state.holder.token == token:
            state.holder = None
            state.held_since = ""
        else:
            state.queue = [w for w in state.queue if w.token != token]
        self._touch()

    @workflow.query(name="state")
    def state(self) -> LockState:
        return self._state

    def _touch(self) -> None:
        self._changed = True
        workflow.set_current_details(self._details())

    def _details(self) -> str:
        state = self._state
        queued = ", ".join(describe_holder(w) for w in state.queue) or "none"
        return f"held by {describe_holder(state.holder)} since {state.held_since or '-'}; waiting: {queued}"

    async def _wait_for_change(self, timeout: timedelta) -> bool:
        try:
            await workflow.wait_condition(lambda: self._changed, timeout=timeout)
            return True
        except TimeoutError:
            return False

    async def _grant_waiters(self) -> None:
        state = self._state
        while state.holder is None and state.queue:
            nxt = state.queue.pop(0)
            state.holder = nxt
            state.held_since = workflow.now().isoformat()
            self._touch()
            try:
                waiter = workflow.get_external_workflow_handle(nxt.workflow_id, run_id=nxt.run_id or None)
                await waiter.signal(GRANTED_SIGNAL, nxt.token)
            except Exception as err:  # noqa: BLE001 - the waiter's run is gone: skip it
                workflow.logger.warning(
                    "lock %s: waiter %s could not be granted (%s); skipped",
                    workflow.info().workflow_id, describe_holder(nxt), err,
                )  # fmt: skip
                if state.holder is nxt:
                    state.holder = None
                    state.held_since = ""

    async def _check_holder(self) -> None:
        state = self._state
        holder = state.holder
        if holder is None:
            return
        status: WorkflowRunStatus = await workflow.execute_activity(
            ACTIVITY_NAMES["lock_describe"],
            WorkflowRunRef(holder.workflow_id, holder.run_id),
            result_type=WorkflowRunStatus,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_DESCRIBE_RETRY,
        )
        if status.status in _CLOSED and state.holder is holder:
            workflow.logger.warning(
                "lock %s: holder %s is %s without having released; lock freed",
                workflow.info().workflow_id, describe_holder(holder), status.status,
            )  # fmt: skip
            state.holder = None
            state.held_since = ""
            self._touch()


class LockClient:
    """Mixin for workflows that take release locks: receives the grant signal."""

    def __init__(self) -> None:
        self._kduflow_lock_grants: set[str] = set()

    @workflow.signal(name=GRANTED_SIGNAL)
    def _kduflow_lock_granted(self, token: str) -> None:
        self._kduflow_lock_grants.add(token)


@asynccontextmanager
async def release_lock(ref: ReleaseRef, operation: str, *, wait: bool = True) -> AsyncIterator[None]:
    """Hold the release's lock for the body. Waits its turn (FIFO), or with ``wait=False`` fails at
    once with non-retryable ``OperationInProgress`` naming the holder's operation and workflow id.

    The calling workflow class must derive from :class:`LockClient`.
    """
    if not workflow.patched(PATCH_LOCK):
        yield
        return
    owner = workflow.instance()
    if not isinstance(owner, LockClient):
        raise TypeError(f"{type(owner).__name__} must derive from LockClient to take release locks")
    info = workflow.info()
    token = str(workflow.uuid4())
    me = LockHolder(info.workflow_id, info.run_id, operation, token, info.workflow_type)
    target = lock_id(ref)
    request = LockRequestInput(target, ref, LockRequest(me, fail_fast=not wait), info.task_queue)
    requested_at = workflow.now()
    try:
        if workflow.patched(PATCH_LOCK_LOCAL):
            answer: LockAnswer = await workflow.execute_local_activity(
                ACTIVITY_NAMES["lock_request"],
                request,
                result_type=LockAnswer,
                start_to_close_timeout=_REQUEST_TIMEOUT,
                retry_policy=_REQUEST_RETRY,
            )
        else:
            answer = await workflow.execute_activity(
                ACTIVITY_NAMES["lock_request"],
                request,
                result_type=LockAnswer,
                start_to_close_timeout=_REQUEST_TIMEOUT,
                retry_policy=_REQUEST_RETRY,
            )
    except ActivityError as err:
        raise ApplicationError(
            f"could not reach the lock of release {ref.kdu_instance} in {ref.namespace}: {err}",
            type="OperationInProgress",
            non_retryable=True,
        ) from err
    if not answer.granted:
        if not wait:
            holder = answer.holder
            raise ApplicationError(
                f"release {ref.kdu_instance} in {ref.namespace} of cluster {ref.cluster_uuid} is busy: "
                f"{describe_holder(holder)} holds it",
                {
                    "holder_operation": holder.operation if holder else "",
                    "holder_workflow_id": holder.workflow_id if holder else "",
                },
                type="OperationInProgress",
                non_retryable=True,
            )
        if isinstance(owner, Tracked):
            waiting_for_lock(answer.holder, answer.position)
        else:
            workflow.set_current_details(
                f"waiting for the lock of {ref.kdu_instance}: {describe_holder(answer.holder)} holds it, "
                f"position {answer.position}"
            )
        try:
            await workflow.wait_condition(lambda: token in owner._kduflow_lock_grants)
        except BaseException:
            await _shielded_release(target, token)
            raise
        if isinstance(owner, Tracked):
            lock_granted()
        else:
            workflow.set_current_details("")
    # A metric, not a command: recorded only outside replay.
    metrics.lock_wait(operation, workflow.now() - requested_at)
    try:
        yield
    finally:
        if workflow.patched(PATCH_LOCK_RELEASE_LOCAL):
            await _shielded_local_release(target, token)
        else:
            await _shielded_release(target, token)


async def _shielded_local_release(target: str, token: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return  # evicted from the cache (see _shielded_release): the real run releases
    task = asyncio.ensure_future(_local_release(target, token))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


async def _local_release(target: str, token: str) -> None:
    try:
        await workflow.execute_local_activity(
            ACTIVITY_NAMES["lock_release"],
            LockReleaseInput(target, token),
            start_to_close_timeout=_RELEASE_TIMEOUT,
            retry_policy=_REQUEST_RETRY,
        )
    except ActivityError as err:
        # Retries ran out (the server unreachable for minutes): the lease check frees the lock once
        # this run has closed.
        workflow.logger.warning("lock %s: release failed: %s", target, err)


async def _shielded_release(target: str, token: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        # The workflow is being evicted from the worker's cache (its coroutine is closed outside the
        # event loop): no command may be issued now; the run releases when it really ends.
        return
    task = asyncio.ensure_future(_release(target, token))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


async def _release(target: str, token: str) -> None:
    try:
        await workflow.get_external_workflow_handle(target).signal(RELEASE_SIGNAL, token)
    except Exception as err:  # noqa: BLE001 - a lock that is gone holds nothing
        workflow.logger.warning("lock %s: release signal failed: %s", target, err)
