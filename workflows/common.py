"""Workflow-side plumbing shared by the KDU workflows: activity options, error helpers, small calls.

Everything here runs inside workflow code, so it is deterministic: no I/O, no clocks, no randomness
outside ``workflow.*``. Activities are called by *name* (``ACTIVITY_NAMES``) so tests can register
mocks under the same names and so this package never imports the activity implementations.

Option sets and why they differ:

* **helm** (install/upgrade/rollback/uninstall): ``start_to_close`` is helm's ``--timeout`` plus a
  margin (chart pull, render, hooks all come on top of the wait), a heartbeat timeout because the
  runner heartbeats while helm runs and cancellation only reaches an activity through heartbeats,
  and ``WAIT_CANCELLATION_COMPLETED`` so a compensating rollback can never overlap a still-running
  ``helm upgrade``. Retries are few: a retry of a mutating helm call is only safe
  because the activity recognises its own ``operation_id``, and helm's own failures come back as
  non-retryable ``ReleaseFailed``.
* **read** (history/list/values/services/inspect): short, several retries, no heartbeat timeout
  (a one-shot helm read need not heartbeat).
* **status** (final ``kdu.status`` write): short attempts, retried over about 15 s: it is best
  effort (the helm outcome is what the workflow reports), but should outlast a brief API outage.
* **poller** (``kdu.poll_status``): lives as long as the helm call, heartbeats, is cancelled when
  helm returns; ``schedule_to_close`` bounds it even if a cancel were lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, TypedSearchAttributes
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    FailureError,
    is_cancelled_exception,
)
from temporalio.exceptions import TimeoutError as ActivityTimeoutError

with workflow.unsafe.imports_passed_through():
    from contract import search
    from contract.errors import NON_RETRYABLE_TYPES, application_cause
    from contract.models import (
        ACTIVITY_NAMES,
        DbDict,
        KduResult,
        ListReleasesInput,
        ListReleasesResult,
        LockHolder,
        OperationState,
        PreflightInput,
        ReleaseSummary,
    )

from contract.validation import InvalidInputError

T = TypeVar("T")

#: Namespace used when an install names none (N2VC's helm 3 status looked in kube-system instead).
DEFAULT_NAMESPACE = "default"

#: ApplicationError types that no retry can fix: the one list, kept beside the error tree.
NON_RETRYABLE_ERROR_TYPES = list(NON_RETRYABLE_TYPES)

#: Added to helm's --timeout for the activity's start_to_close: pull + render + hooks + status read.
HELM_MARGIN = timedelta(seconds=120)
#: The runner heartbeats every 5 s while helm runs. 15 s tolerates a busy worker and bounds how
#: long a dead worker's attempt stays unnoticed; the SDK then sends heartbeats (which carry
#: cancellation back) at most every 12 s, so a cancel reaches helm within that.
HELM_HEARTBEAT = timedelta(seconds=15)
READ_TIMEOUT = timedelta(seconds=60)
INSPECT_TIMEOUT = timedelta(seconds=180)
STATUS_TIMEOUT = timedelta(seconds=90)
#: Default PollStatusInput.interval; the worker's own setting cannot be read from workflow code.
POLL_INTERVAL = 5.0

_HELM_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=4,
    non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES,
)
_READ_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=15),
    maximum_attempts=5,
    non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES,
)
#: The final status outlasts a short API outage (1 + 2 + 4 + 8 s between five attempts): a status
#: left "unknown" after a successful operation misleads whoever reads it.
_STATUS_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=5,
    non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES,
)


def helm_attempt(timeout_s: int) -> timedelta:
    """Start-to-close of one attempt of a mutating helm activity with ``--timeout timeout_s``.

    Twice helm's timeout plus the margin: an attempt may first have to clear what an earlier one
    left (uninstall a failed install, roll back a stuck upgrade) and then run its own helm call,
    each bounded by ``timeout_s``. The activity derives helm's ``--timeout`` from the time it has
    left, so neither step can outlive the attempt.
    """
    return 2 * timedelta(seconds=timeout_s) + HELM_MARGIN


def helm_budget(timeout_s: int) -> timedelta:
    """Upper bound of every attempt of a mutating helm activity, retries and backoff included."""
    attempts = _HELM_RETRY.maximum_attempts
    cap = _HELM_RETRY.maximum_interval or _HELM_RETRY.initial_interval
    backoff = timedelta()
    for n in range(attempts - 1):
        backoff += min(_HELM_RETRY.initial_interval * (_HELM_RETRY.backoff_coefficient**n), cap)
    return attempts * helm_attempt(timeout_s) + backoff


def helm_options(timeout_s: int) -> dict[str, Any]:
    """``execute_activity`` keyword arguments for a mutating helm activity with ``--timeout timeout_s``."""
    return {
        "start_to_close_timeout": helm_attempt(timeout_s),
        "heartbeat_timeout": HELM_HEARTBEAT,
        "retry_policy": _HELM_RETRY,
        "cancellation_type": workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    }


def read_options(timeout: timedelta = READ_TIMEOUT) -> dict[str, Any]:
    return {"start_to_close_timeout": timeout, "retry_policy": _READ_RETRY}


def status_options() -> dict[str, Any]:
    return {"start_to_close_timeout": STATUS_TIMEOUT, "retry_policy": _STATUS_RETRY}


def poller_options(timeout_s: int, interval: float = POLL_INTERVAL) -> dict[str, Any]:
    # The poller lives as long as the helm activity it reports on, all of that one's retries
    # included; the workflow cancels it as soon as helm returns, and status writes are ordered, so
    # a poller write arriving late changes nothing.
    budget = helm_budget(timeout_s)
    return {
        "start_to_close_timeout": budget,
        "schedule_to_close_timeout": budget,
        "heartbeat_timeout": timedelta(seconds=max(30.0, 3 * interval)),
        "retry_policy": RetryPolicy(maximum_attempts=3, non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES),
        "cancellation_type": workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    }


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


def describe_failure(err: BaseException) -> tuple[str, str, tuple[Any, ...]]:
    """(type, message, details) of an activity failure, for re-raising with context.

    An activity that ran out of time has no ApplicationError cause; it is reported as
    ``ProcessTimeout`` because that is what it is for the caller: helm did not finish in time.
    """
    app = application_cause(err)
    if app is not None:
        return app.type or "HelmError", app.message, tuple(app.details)
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ActivityTimeoutError):
            return "ProcessTimeout", f"activity timed out ({seen.type.name if seen.type else 'timeout'})", ()
        seen = seen.cause if isinstance(seen, FailureError) else seen.__cause__
    return "HelmError", str(err) or type(err).__name__, ()


def is_workflow_cancellation(err: BaseException) -> bool:
    """True when ``err`` is the echo of a cancellation requested for this workflow.

    With WAIT_CANCELLATION_COMPLETED the awaited activity ends as ``ActivityError(CancelledError)``
    rather than ``asyncio.CancelledError``; an activity cancelled for another reason (e.g. the
    worker shutting down) is not a workflow cancellation and is handled as a failure.
    """
    return workflow.cancellation_reason() is not None and is_cancelled_exception(err)


def failure_error(err: BaseException, context: str) -> ApplicationError:
    """A non-retryable ApplicationError keeping the cause's type and details, message prefixed.

    Workflows re-raise activity failures through this so the caller sees ``ReleaseNotFound``
    (not a generic ``ActivityError``) and a message naming the release and the operation.
    """
    etype, message, details = describe_failure(err)
    return ApplicationError(f"{context}: {message}", *details, type=etype, non_retryable=True)


def revision_from_details(details: tuple[Any, ...]) -> int | None:
    """The revision an activity reported in its error details (``{"revision": n}`` or a bare int)."""
    for item in details:
        if isinstance(item, Mapping) and isinstance(item.get("revision"), int):
            return int(item["revision"])
        if isinstance(item, int) and not isinstance(item, bool):
            return item
    return None


# ------------------------------------------------------------------------------------------------
# Cancellation, locking, ids
# ------------------------------------------------------------------------------------------------


async def shielded(awaitable: Awaitable[T]) -> T:
    """Run cleanup to completion even if the workflow is cancelled (again) meanwhile.

    Used for the final status write and for compensation after a cancellation: the cancel request
    must stop helm, not the bookkeeping that tells OSM what state helm left behind.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


#: ``workflow.patched`` id of the preflight: histories recorded before it replay without it.
PATCH_PREFLIGHT = "preflight-v1"
#: The preflight reads the worker's settings, the store and DNS: seconds at most.
PREFLIGHT_TIMEOUT = timedelta(seconds=30)


async def preflight(db_dict: DbDict | None, chart: str = "", version: str = "") -> None:
    """Ask the worker's policy about the input before anything runs (``kdu.preflight``).

    Which collections status may be written to, which charts exist under the charts directory and
    which URLs the worker may fetch are the *worker's* configuration and state, which workflow code
    cannot read deterministically, so a local activity answers (recorded in history: replays do not
    ask again). The activities check again where they act; asking first makes a refused input fail
    the workflow before any helm process runs (name generation and the release observation run
    helm). Raises the activity's non-retryable error (``InvalidInput``, ``UrlNotAllowed``, ...).
    """
    if (db_dict is None and not chart) or not workflow.patched(PATCH_PREFLIGHT):
        return
    try:
        await workflow.execute_local_activity(
            ACTIVITY_NAMES["preflight"],
            PreflightInput(db_dict=db_dict, chart=chart, version=version),
            start_to_close_timeout=PREFLIGHT_TIMEOUT,
            retry_policy=_STATUS_RETRY,
        )
    except ActivityError as err:
        if is_workflow_cancellation(err):
            raise
        etype, message, details = describe_failure(err)
        raise ApplicationError(message, *details, type=etype, non_retryable=True) from err


def operation_id(step: str) -> str:
    """Stable id of one helm step of this operation; a retried activity gets the same id (idempotency).

    Built from the workflow id and the *first* run's id: a workflow retry or a reset starts a new run
    of the same operation, which must recognise the release its earlier run installed or upgraded
    (a run id would make an install fail with ReleaseNameInUse on its own release and an upgrade run
    twice). A different operation on the same release always has another workflow id. Changing this
    needs no ``workflow.patched``: the id only travels inside activity inputs, which replays take
    from history.
    """
    info = workflow.info()
    return f"{info.workflow_id}/{info.first_execution_run_id or info.run_id}/{step}"


# ------------------------------------------------------------------------------------------------
# Small activity calls used by several workflows
# ------------------------------------------------------------------------------------------------


async def call_read(
    name: str, arg: Any, result_type: type[T], context: str, *, local: bool = False, **options: Any
) -> T:
    """Run a read-only activity; failures become non-retryable ApplicationErrors naming ``context``.

    ``local``: as a local activity, for reads that take milliseconds in the worker (helm's storage
    through the API): no activity task goes through the server.
    """
    run = workflow.execute_local_activity if local else workflow.execute_activity
    try:
        return await run(name, arg, result_type=result_type, **(options or read_options()))
    except ActivityError as err:
        if is_workflow_cancellation(err):
            raise
        raise failure_error(err, context) from err


async def find_releases(cluster_uuid: str, name: str) -> list[ReleaseSummary]:
    """Releases called exactly ``name`` in any namespace, any status (``helm list -A -a``)."""
    result = await call_read(
        ACTIVITY_NAMES["list_releases"],
        ListReleasesInput(cluster_uuid=cluster_uuid, name=name),
        ListReleasesResult,
        f"listing releases named {name} on cluster {cluster_uuid}",
    )
    # Filter again: the contract says exact name, but a substring filter would be an easy mistake.
    return [r for r in result.releases if r.name == name]


async def resolve_namespace(cluster_uuid: str, name: str, namespace: str) -> str | None:
    """The namespace of release ``name``: ``namespace`` if given, else looked up on the cluster.

    N2VC looked the namespace up when the caller gave none; we do too, but refuse to guess when the
    same name exists in several namespaces. Returns None when no namespace was given and the release
    exists nowhere. Raises InvalidInput (field ``namespace``) when the name is ambiguous.
    """
    if namespace:
        return namespace
    found = sorted({r.namespace for r in await find_releases(cluster_uuid, name)})
    if not found:
        return None
    if len(found) > 1:
        raise InvalidInputError(
            "namespace", f"release {name} exists in namespaces {', '.join(found)}: name one"
        )
    return found[0]


# ------------------------------------------------------------------------------------------------
# The ``operation`` query and the search attributes of mutating workflows
# ------------------------------------------------------------------------------------------------

#: ``workflow.patched`` id: workflows upsert kduflow's search attributes (release, namespace,
#: outcome). Only runs whose start carried kduflow's attributes ever ask, so runs recorded before
#: (started without them) replay unchanged.
PATCH_SEARCH_ATTRIBUTES = "search-attributes-v1"
#: ``workflow.patched`` id: child workflows (InitCluster's SyncRepos, ResetCluster's uninstalls)
#: start with kduflow's search attributes when their parent's start carried them.
PATCH_CHILD_SEARCH_ATTRIBUTES = "child-search-attributes-v1"
#: Name of the query every mutating workflow answers (``OperationState``).
OPERATION_QUERY = "operation"
_MAX_DETAIL_ERROR = 300


class Tracked:
    """Mixin of the mutating workflows: keeps an :class:`OperationState` and answers the
    ``operation`` query with it. Queries are read-only: no command, no ``workflow.patched``."""

    def __init__(self) -> None:
        super().__init__()
        self._operation_state = OperationState()

    @workflow.query(name=OPERATION_QUERY)
    def operation(self) -> OperationState:
        return self._operation_state


def _state() -> OperationState | None:
    state = getattr(workflow.instance(), "_operation_state", None)
    return state if isinstance(state, OperationState) else None


def _describe(state: OperationState, note: str) -> str:
    what = state.operation or workflow.info().workflow_type
    target = "/".join(p for p in (state.namespace, state.kdu_instance) if p) or state.cluster_uuid
    text = f"{what} {target} on {state.cluster_uuid}: {state.phase}" if target else f"{what}: {state.phase}"
    if state.revision:
        text += f", revision {state.revision}"
    if state.ready is not None:
        text += ", ready" if state.ready else ", not ready"
    if state.lock_holder is not None:
        holder = state.lock_holder
        who = holder.operation or holder.workflow_type or "an operation"
        text += f", waiting for the lock held by {who} (workflow {holder.workflow_id})"
        if state.queue_position:
            text += f", position {state.queue_position}"
    if note:
        text += f" ({note})"
    if state.last_error:
        text += f"; last error: {state.last_error[:_MAX_DETAIL_ERROR]}"
    return text


def track(note: str = "", **changes: Any) -> None:
    """Update the workflow's :class:`OperationState` (when it keeps one) and the Web UI's current
    details. ``note`` (e.g. the activity running) goes into the details only."""
    state = _state()
    if state is None:
        return
    for name, value in changes.items():
        setattr(state, name, value)
    state.details = _describe(state, note)
    workflow.set_current_details(state.details)


def _search_enabled() -> bool:
    # The client set KduOperation at start: the namespace has kduflow's attributes registered.
    if workflow.info().typed_search_attributes.get(search.KDU_OPERATION) is None:
        return False
    return workflow.patched(PATCH_SEARCH_ATTRIBUTES)


def child_search_attributes(
    operation: str, cluster_uuid: str, *, release: str = "", namespace: str = ""
) -> TypedSearchAttributes | None:
    """kduflow's search attributes for a child workflow (as the client would set them at its start),
    or None (start it without) unless this workflow's own start carried them."""
    if workflow.info().typed_search_attributes.get(search.KDU_OPERATION) is None:
        return None
    if not workflow.patched(PATCH_CHILD_SEARCH_ATTRIBUTES):
        return None
    return search.start_attributes(cluster_uuid, operation, release, namespace)


def upsert_search(*, release: str = "", namespace: str = "", outcome: str = "") -> None:
    """Upsert what the starter could not know: a generated release name, a looked-up namespace, the
    outcome. Nothing unless the start carried kduflow's search attributes."""
    if not _search_enabled():
        return
    current = workflow.info().typed_search_attributes
    updates = [
        key.value_set(value)
        for key, value in (
            (search.KDU_RELEASE, release), (search.KDU_NAMESPACE, namespace), (search.KDU_OUTCOME, outcome)
        )
        if value and current.get(key) != value
    ]  # fmt: skip
    if updates:
        workflow.upsert_search_attributes(updates)


def begin(operation: str, cluster_uuid: str, kdu_instance: str = "", namespace: str = "") -> None:
    """The operation's target is known (release name generated, namespace resolved)."""
    track(
        operation=operation, cluster_uuid=cluster_uuid, kdu_instance=kdu_instance, namespace=namespace,
        phase="observing",
    )  # fmt: skip
    upsert_search(release=kdu_instance, namespace=namespace)


def waiting_for_lock(holder: LockHolder | None, position: int) -> None:
    track(phase="waiting-for-lock", lock_holder=holder, queue_position=position)


def lock_granted() -> None:
    track(phase="observing", lock_holder=None, queue_position=0)


async def finish(body: Awaitable[T]) -> T:
    """Run a mutating workflow's body; record its outcome in the query state, the current details
    and (with search attributes) ``KduOutcome``, then return or re-raise unchanged."""
    try:
        result = await body
    except BaseException as err:
        if is_cancelled_exception(err):
            track(phase="cancelled")
            upsert_search(outcome=search.OUTCOME_CANCELLED)
        else:
            etype, message, _ = describe_failure(err)
            rolled_back = etype == "UpgradeRolledBack"
            track(phase="rolled-back" if rolled_back else "failed", last_error=f"{etype}: {message}")
            upsert_search(outcome=search.OUTCOME_ROLLED_BACK if rolled_back else search.OUTCOME_FAILED)
        raise
    if isinstance(result, KduResult):
        track(phase="completed", revision=result.revision, ready=result.ready)
    else:
        track(phase="completed")
    upsert_search(outcome=search.OUTCOME_SUCCEEDED)
    return result
