"""Activities of the per-release lock (``workflows/lock.py``): what workflow code cannot do itself.

* ``lock.request`` reaches a release's ``ReleaseLock`` workflow by update-with-start: it starts the
  lock workflow when none runs (``USE_EXISTING`` otherwise) and delivers the ``request`` update in one
  call. A lock workflow that closed between the request and the update (it closes when idle) makes
  the call fail; the activity is retried and starts a fresh one.
* ``lock.describe`` tells the lock whether its holder's run is still open (termination and reset
  skip the holder's ``finally``, so the lock checks before it frees anything).
"""

from __future__ import annotations

import logging
from typing import Any

from temporalio import activity
from temporalio.client import WithStartWorkflowOperation, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from contract.models import (
    ACTIVITY_NAMES,
    LOCK_RELEASE_SIGNAL,
    LOCK_WORKFLOW,
    LockAnswer,
    LockReleaseInput,
    LockRequestInput,
    LockState,
    WorkflowRunRef,
    WorkflowRunStatus,
)

#: The SDK's adapter: inside an activity, records carry its ids (message and `extra`).
log = activity.LoggerAdapter(logging.getLogger(__name__), None)


class LockActivities:
    """The ``lock.*`` activities. They need nothing but the activity's Temporal client.

    Args:
        task_queue: Where lock workflows run (``KDUFLOW_LOCK_TASK_QUEUE``). Every kduflow worker
            polls it, so a lock stays reachable when the queue of whoever started it has no worker
            left. Empty: the requester's own queue (what the request names).
    """

    def __init__(self, task_queue: str = "") -> None:
        self.task_queue = task_queue

    @activity.defn(name=ACTIVITY_NAMES["lock_request"])
    async def request(self, inp: LockRequestInput) -> LockAnswer:
        """Ask the release's lock for the requester; start the lock workflow if none runs."""
        client = activity.client()
        start: WithStartWorkflowOperation[Any, None] = WithStartWorkflowOperation(
            LOCK_WORKFLOW,
            LockState(ref=inp.ref),
            id=inp.lock_id,
            task_queue=self.task_queue or inp.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
        try:
            answer: LockAnswer = await client.execute_update_with_start_workflow(
                "request", inp.request, start_workflow_operation=start, result_type=LockAnswer
            )
        except WorkflowUpdateFailedError as err:
            # The lock refused the request itself (malformed): nothing a retry changes.
            log.warning("lock %s refused a request: %s", inp.lock_id, err.cause)
            raise
        outcome = "granted" if answer.granted else f"queued #{answer.position}"
        who = inp.request.requester
        log.debug("lock %s: %s for %s (%s)", inp.lock_id, outcome, who.workflow_id, who.operation)
        return answer

    @activity.defn(name=ACTIVITY_NAMES["lock_release"])
    async def release(self, inp: LockReleaseInput) -> None:
        """Send the release signal and return once the server accepted it. A lock workflow that is
        gone holds nothing: that is a success too."""
        handle = activity.client().get_workflow_handle(inp.lock_id)
        try:
            await handle.signal(LOCK_RELEASE_SIGNAL, inp.token)
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            log.debug("lock %s is gone: nothing to release", inp.lock_id)

    @activity.defn(name=ACTIVITY_NAMES["lock_describe"])
    async def describe(self, ref: WorkflowRunRef) -> WorkflowRunStatus:
        """The run's status name ("RUNNING", "TERMINATED", ...), "NOT_FOUND" when it is gone."""
        handle = activity.client().get_workflow_handle(ref.workflow_id, run_id=ref.run_id or None)
        try:
            described = await handle.describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return WorkflowRunStatus("NOT_FOUND")
            raise
        return WorkflowRunStatus(described.status.name if described.status is not None else "UNKNOWN")
