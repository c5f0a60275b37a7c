"""The mutating KDU workflows: InstallKdu, UpgradeKdu, RollbackKdu, ScaleKdu, UninstallKdu.

Each follows Flux helm-controller's observe -> decide -> act shape with N2VC's operation semantics
and without N2VC's defects:

* **Validate first.** Bad input fails at once with ``InvalidInput`` naming the field; no activity runs.
* **Observe before acting.** Upgrade, rollback and scale read ``helm history`` first: an absent
  release is ``ReleaseNotFound`` (N2VC missed pending releases because it used ``helm list``
  without ``--all``), a ``pending-*`` release is refused rather than fought over.
* **Status heartbeat.** While helm runs, the helm activity itself observes the release and writes
  progress to MongoDB (N2VC's background ``_store_status`` in practice never wrote), and writes the
  final status once helm succeeded; after a failure or a cancellation the workflow writes the final
  status itself (N2VC wrote none after an atomic install failure).
* **The workflow owns remediation.** Upgrades run with helm's ``--atomic`` off and ``--wait`` on;
  on failure the workflow rolls back to the *explicit* last deployed revision it recorded before
  upgrading, never ``rollback 0`` (helm's "previous" may be a failed revision), and reports both
  revisions.
* **Cancellation** reaches helm (WAIT_CANCELLATION_COMPLETED: the activity SIGTERMs helm and reaps
  it before the workflow goes on) and still writes the final status.

Every mutating body holds the release's lock (``workflows/lock.py``) from its first observation of
the release to its last status write: one mutating operation per release at a time, whoever started
it; ``wait_for_lock=false`` fails at once with ``OperationInProgress`` instead of queueing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from contract.models import (
        ACTIVITY_NAMES,
        DbDict,
        GetValuesInput,
        HelmInstallInput,
        HelmRollbackInput,
        HelmUninstallInput,
        HelmUpgradeInput,
        HistoryResult,
        InstallKduInput,
        KduResult,
        KduStatusResult,
        PollStatusInput,
        ReleaseInfo,
        ReleaseRef,
        ReleaseStatus,
        RevisionInfo,
        RollbackKduInput,
        ScaleKduInput,
        StatusInput,
        StatusReport,
        UninstallKduInput,
        UninstallOutcome,
        UpgradeKduInput,
        ValuesResult,
    )
    from kduflow import metrics

from contract import validation
from contract.validation import InvalidInputError
from workflows import common, naming, scale
from workflows.decoding import decode_input
from workflows.lock import LockClient, release_lock

#: Phases written to the status sub-document (``StatusInput.phase``).
PHASE_COMPLETED = "completed"
#: ``workflow.patched`` id: helm activities report status themselves (no ``kdu.poll_status`` beside
#: them, no ``kdu.status`` after a success). Runs recorded before it replay the two activities.
PATCH_STATUS_IN_HELM = "status-in-helm-v1"
#: ``workflow.patched`` id: ``kdu.history`` runs as a local activity.
PATCH_HISTORY_LOCAL = "history-local-v1"
PHASE_FAILED = "failed"
PHASE_ROLLED_BACK = "rolled-back"
PHASE_CANCELLED = "cancelled"

#: User-facing message formats (kept here so callers and tests can rely on their wording).
FMT_ABSENT = "release was absent"
FMT_PENDING = (
    "release {name} in {namespace} is {status} at revision {revision}: another operation is running or "
    "a helm process was killed mid-operation; nothing was changed"
)
FMT_NOT_FOUND = "release {name} not found in namespace {namespace} of cluster {cluster}"

# Statuses of revisions that were once live and healthy: valid rollback targets.
_GOOD = {ReleaseStatus.DEPLOYED.value, ReleaseStatus.SUPERSEDED.value}


# ------------------------------------------------------------------------------------------------
# Shared steps
# ------------------------------------------------------------------------------------------------


def _ref_text(ref: ReleaseRef) -> str:
    return f"{ref.namespace}/{ref.kdu_instance}"


async def _history(ref: ReleaseRef) -> list[RevisionInfo]:
    """``helm history`` sorted by revision; empty means the release does not exist.

    A local activity (patch ``history-local-v1``): the worker reads helm's storage in one API
    request, far less than an activity task's round trip through the server.
    """
    result = await common.call_read(
        ACTIVITY_NAMES["history"], ref, HistoryResult, f"reading the history of {_ref_text(ref)}",
        local=workflow.patched(PATCH_HISTORY_LOCAL),
    )  # fmt: skip
    entries = sorted(result.entries, key=lambda e: e.revision)
    common.track(revision=entries[-1].revision if entries else 0)
    return entries


def _last_deployed(entries: list[RevisionInfo], below: int | None = None) -> RevisionInfo | None:
    """The revision to restore: the live ``deployed`` one, else the newest ``superseded`` one.

    ``below`` restricts to revisions older than that (RollbackKdu's revision 0). Failed and pending
    revisions are never targets: ``helm rollback 0`` would pick the previous one even if it failed.
    """
    candidates = [e for e in entries if e.status in _GOOD and (below is None or e.revision < below)]
    if below is None:
        # After a failed upgrade helm leaves the previous revision "deployed" (it only supersedes
        # on success), so the live one is the right target even when it is not the newest.
        deployed = [e for e in candidates if e.status == ReleaseStatus.DEPLOYED.value]
        if deployed:
            return deployed[-1]
    return candidates[-1] if candidates else None


def _refuse_pending(ref: ReleaseRef, current: RevisionInfo) -> None:
    if current.status in {s.value for s in ReleaseStatus if s.is_pending}:
        # Workflow-raised, so final: retrying cannot clear a lock that a killed helm left behind.
        raise ApplicationError(
            FMT_PENDING.format(
                name=ref.kdu_instance,
                namespace=ref.namespace,
                status=current.status,
                revision=current.revision,
            ),
            {"revision": current.revision, "status": current.status},
            type="OperationInProgress",
            non_retryable=True,
        )


def _not_found(ref: ReleaseRef) -> ApplicationError:
    return ApplicationError(
        FMT_NOT_FOUND.format(
            name=ref.kdu_instance, namespace=ref.namespace or "(any)", cluster=ref.cluster_uuid
        ),
        type="ReleaseNotFound",
        non_retryable=True,
    )


async def _stop_poller(poller: workflow.ActivityHandle[Any]) -> None:
    # Cancel and *await*: with WAIT_CANCELLATION_COMPLETED the await returns only once the poller
    # has stopped, so none of its writes can land after the final status write.
    poller.cancel()
    try:
        await poller
    except (ActivityError, asyncio.CancelledError) as err:
        # Cancelled is the normal end; any other poller failure only cost us progress reports,
        # never the operation itself, so it is logged and swallowed.
        if not is_cancelled_exception(err):
            etype, message, _ = common.describe_failure(err)
            workflow.logger.info("status poller ended early: %s: %s", etype, message)


async def _run_with_status(
    activity: str,
    arg: Any,
    result_type: type[Any],
    ref: ReleaseRef,
    db_dict: DbDict | None,
    operation: str,
    timeout: int,
    *,
    final_phase: str = "",
) -> Any:
    """Run one helm activity reporting the release's status into ``db_dict`` while it runs.

    The helm activity reports itself (``StatusReport``): it observes every ``KDUFLOW_POLL_INTERVAL``
    seconds beside its helm process and, given ``final_phase``, writes the final status as soon as
    helm succeeded (returned in ``ReleaseInfo.final_status``; None when it could not, and the caller
    writes it). Runs recorded before that (patch ``status-in-helm-v1``) run ``kdu.poll_status`` as a
    second activity, cancelled and awaited however the helm activity ends. Errors of the helm
    activity propagate unchanged.
    """
    if db_dict is not None and workflow.patched(PATCH_STATUS_IN_HELM):
        arg.report = StatusReport(
            db_dict=db_dict,
            operation=operation,
            seq_base=int(workflow.now().timestamp() * 1000),
            final_phase=final_phase,
        )
        common.track(note=f"{activity} running", phase="running")
        return await workflow.execute_activity(
            activity, arg, result_type=result_type, **common.helm_options(timeout)
        )
    poller = None
    if db_dict is not None:
        # Started before helm so the first "operation in progress" write is not delayed by helm's
        # chart pull; it observes through the API, not helm, so it never contends for helm's lock.
        poller = workflow.start_activity(
            ACTIVITY_NAMES["poll_status"],
            PollStatusInput(
                ref=ref,
                db_dict=db_dict,
                operation=operation,
                interval=common.POLL_INTERVAL,
                # Orders the status writes (activities/status.py): workflow time is the same on
                # replay, and a later status step or a later operation on the release (which waits
                # for this one's lock) gets a later time. Only the activity's input changes, not the
                # command sequence: replay checks a scheduled activity's id and type, not its input,
                # so runs recorded before this field replay unchanged; no workflow.patched needed.
                seq_base=int(workflow.now().timestamp() * 1000),
            ),
            **common.poller_options(timeout),
        )
    common.track(note=f"{activity} running", phase="running")
    try:
        return await workflow.execute_activity(
            activity, arg, result_type=result_type, **common.helm_options(timeout)
        )
    finally:
        if poller is not None:
            await _stop_poller(poller)


async def _final_status(
    ref: ReleaseRef, db_dict: DbDict | None, operation: str, phase: str, error: str = ""
) -> KduStatusResult | None:
    """Write the final status through ``kdu.status`` (only with a ``db_dict``); best effort.

    Returns the observation, or None when there is nothing to write or the write failed: the helm
    outcome, not the bookkeeping, decides the workflow's result.
    """
    if db_dict is None:
        return None
    common.track(phase="writing-status", last_error=error)
    # Written on success, failure and cancellation alike: N2VC wrote nothing after an atomic
    # install failure, leaving OSM with whatever the last poll had seen.
    try:
        return await workflow.execute_activity(
            ACTIVITY_NAMES["status"],
            StatusInput(
                ref=ref,
                db_dict=db_dict,
                operation=operation,
                error=error,
                phase=phase,
                # Ordering base as for the poller (_run_with_status); an input change only, no
                # command change, so no workflow.patched.
                seq_base=int(workflow.now().timestamp() * 1000),
            ),
            result_type=KduStatusResult,
            **common.status_options(),
        )
    except ActivityError as err:
        if common.is_workflow_cancellation(err):
            raise
        # Failing the workflow here would misreport a successful helm operation as failed.
        etype, message, _ = common.describe_failure(err)
        workflow.logger.warning("final status write for %s failed: %s: %s", _ref_text(ref), etype, message)
        return None


def _result(info: ReleaseInfo, status: KduStatusResult | None, message: str = "", **extra: Any) -> KduResult:
    return KduResult(
        kdu_instance=info.kdu_instance,
        namespace=info.namespace,
        revision=info.revision,
        status=info.status,
        description=info.description,
        chart=info.chart,
        app_version=info.app_version,
        message=message,
        ready=status.ready if status is not None else None,
        **extra,
    )


async def _generate_unused_name(cluster_uuid: str, kdu_model: str) -> str:
    """N2VC's name scheme plus the uniqueness check N2VC never made, with bounded attempts."""
    tried = []
    for _ in range(naming.MAX_NAME_ATTEMPTS):
        # workflow.random() is seeded by the workflow run, so a replay regenerates the same names.
        candidate = naming.generate_kdu_instance_name(kdu_model, workflow.random())
        tried.append(candidate)
        if not await common.find_releases(cluster_uuid, candidate):
            return candidate
    raise ApplicationError(
        f"could not find an unused release name for {kdu_model} after {len(tried)} attempts "
        f"(tried {', '.join(tried)}); pass kdu_instance explicitly",
        {"tried": tried},
        type="ReleaseNameInUse",
        non_retryable=True,
    )


async def _require_namespace(cluster_uuid: str, name: str, namespace: str) -> str:
    resolved = await common.resolve_namespace(cluster_uuid, name, namespace)
    if resolved is None:
        raise _not_found(ReleaseRef(cluster_uuid, name, namespace))
    return resolved


# ------------------------------------------------------------------------------------------------
# Upgrade with remediation (UpgradeKdu and ScaleKdu)
# ------------------------------------------------------------------------------------------------


@dataclass
class _UpgradePlan:
    ref: ReleaseRef
    helm_input: HelmUpgradeInput
    atomic: bool
    timeout: int
    db_dict: DbDict | None
    #: "upgrade" or "scale": the OSM operation name written to MongoDB.
    operation: str


async def _written_revision(ref: ReleaseRef, before: int, err: BaseException) -> tuple[bool, int]:
    """Did the failed helm call write a new revision? Returns (changed, failed_revision).

    History is the ground truth (helm records the failed revision before it waits). If history
    cannot be read, the activity's own report decides, and failing that we assume a change: for an
    atomic upgrade a needless rollback to the live revision is harmless, a missed one is not.
    """
    try:
        entries = await _history(ref)
    except ApplicationError:
        # ReleaseFailed carries the revision helm wrote; other errors may or may not have written.
        reported = common.revision_from_details(common.describe_failure(err)[2])
        return True, reported or 0
    latest = entries[-1].revision if entries else 0
    if latest > before:
        return True, latest
    return False, 0


async def _rollback_to(plan: _UpgradePlan, target: int, step: str, *, helm_exited: bool) -> ReleaseInfo:
    """Roll back to ``target``. ``helm_exited``: the upgrade's helm is known to have exited (the
    activity itself reported the failure, or was cancelled and reaped it), so a revision it left
    pending is not waited for. An activity that timed out may have left helm running: then the
    rollback waits for it like for anyone's pending revision. Only the activity input changes with
    this flag, not the command sequence: no ``workflow.patched`` is needed."""
    common.track(phase="rolling-back", note=f"to revision {target}")
    return await _run_with_status(
        ACTIVITY_NAMES["rollback"],
        HelmRollbackInput(
            ref=plan.ref,
            revision=target,
            wait=True,
            timeout=plan.timeout,
            operation_id=common.operation_id(step),
            exited_operation_id=plan.helm_input.operation_id if helm_exited else "",
        ),
        ReleaseInfo,
        plan.ref,
        plan.db_dict,
        plan.operation,
        plan.timeout,
    )


async def _remediate(
    plan: _UpgradePlan, err: BaseException, current: int, restore: RevisionInfo | None
) -> None:
    """Decide what a failed upgrade leaves behind, act, write the status, and raise (always)."""
    etype, emsg, details = common.describe_failure(err)
    what = f"{plan.operation} of {_ref_text(plan.ref)}"
    changed, failed_rev = await _written_revision(plan.ref, current, err)
    if not changed:
        # Chart not found, render error, unreachable cluster...: helm stopped before writing a
        # revision, so there is nothing to roll back. Keep the cause's type for the caller.
        msg = (
            f"{what} failed before helm recorded a new revision; "
            f"the release is unchanged at revision {current}: {emsg}"
        )
        await _final_status(plan.ref, plan.db_dict, plan.operation, PHASE_FAILED, msg)
        raise ApplicationError(msg, *details, type=etype, non_retryable=True) from err
    if not plan.atomic:
        # The caller asked to keep the failed state (e.g. to debug it); say which revision it is.
        msg = f"{what} failed: revision {failed_rev} stays in place (atomic=false, no rollback): {emsg}"
        await _final_status(plan.ref, plan.db_dict, plan.operation, PHASE_FAILED, msg)
        raise ApplicationError(
            msg, {"failed_revision": failed_rev}, type="UpgradeFailed", non_retryable=True
        ) from err
    if restore is None:
        msg = f"{what} failed at revision {failed_rev}; there is no deployed revision to roll back to: {emsg}"
        await _final_status(plan.ref, plan.db_dict, plan.operation, PHASE_FAILED, msg)
        raise ApplicationError(
            msg,
            {"failed_revision": failed_rev, "rollback_revision": 0},
            type="RollbackFailed",
            non_retryable=True,
        ) from err
    # The explicit revision recorded before the upgrade, with --wait: "rolled back" must mean the
    # old revision is serving again, not merely that helm accepted the rollback.
    try:
        restored = await _rollback_to(
            plan, restore.revision, f"{plan.operation}-rollback",
            helm_exited=common.application_cause(err) is not None,
        )  # fmt: skip
    except (ActivityError, asyncio.CancelledError) as rb_err:
        if common.is_workflow_cancellation(rb_err):
            await common.shielded(
                _final_status(plan.ref, plan.db_dict, plan.operation, PHASE_CANCELLED, emsg)
            )
            raise
        metrics.rollback("failed", "failed")
        _, rb_msg, _ = common.describe_failure(rb_err)
        msg = (
            f"{what} failed at revision {failed_rev} ({emsg}) and the rollback to revision "
            f"{restore.revision} failed too: {rb_msg}"
        )
        await _final_status(plan.ref, plan.db_dict, plan.operation, PHASE_FAILED, msg)
        raise ApplicationError(
            msg,
            {"failed_revision": failed_rev, "rollback_revision": restore.revision},
            type="RollbackFailed",
            non_retryable=True,
        ) from rb_err
    metrics.rollback("failed", "ok")
    msg = (
        f"{what} failed at revision {failed_rev}: {emsg}; rolled back to revision {restore.revision} "
        f"(recorded as revision {restored.revision})"
    )
    await _final_status(plan.ref, plan.db_dict, plan.operation, PHASE_ROLLED_BACK, msg)
    raise ApplicationError(
        msg,
        {"failed_revision": failed_rev, "restored_revision": restore.revision, "revision": restored.revision},
        type="UpgradeRolledBack",
        non_retryable=True,
    ) from err


async def _compensate_cancel(plan: _UpgradePlan, current: int, restore: RevisionInfo | None) -> None:
    """After a cancelled upgrade: roll back what helm left (atomic only), write the status.

    Never raises: the caller re-raises the cancellation, which must stay the workflow's outcome.
    """
    note = f"{plan.operation} cancelled by request"
    try:
        if plan.atomic and restore is not None:
            # helm traps SIGTERM during upgrade and marks the new revision failed; if it was
            # cancelled before writing one, there is nothing to undo.
            entries = await _history(plan.ref)
            if entries and entries[-1].revision > current:
                try:
                    restored = await _rollback_to(
                        plan, restore.revision, f"{plan.operation}-cancel-rollback", helm_exited=True
                    )
                except (ActivityError, ApplicationError):
                    metrics.rollback("cancelled", "failed")
                    raise
                metrics.rollback("cancelled", "ok")
                note += (
                    f"; rolled back to revision {restore.revision} (recorded as revision {restored.revision})"
                )
                await _final_status(plan.ref, plan.db_dict, plan.operation, PHASE_ROLLED_BACK, note)
                return
    except (ActivityError, ApplicationError) as err:
        note += f"; rollback after cancel failed: {common.describe_failure(err)[1]}"
    await _final_status(plan.ref, plan.db_dict, plan.operation, PHASE_CANCELLED, note)


async def _guarded_upgrade(plan: _UpgradePlan) -> tuple[ReleaseInfo, KduStatusResult | None]:
    """Observe, record the restore target, upgrade, and remediate on failure.

    Returns the upgraded release and the final status observation. Raises (non-retryable)
    ``ReleaseNotFound``, ``OperationInProgress`` (pending release), ``UpgradeRolledBack``,
    ``UpgradeFailed`` (atomic=false), ``RollbackFailed``, or the cause's type when helm failed
    before writing a revision.
    """
    entries = await _history(plan.ref)
    if not entries:
        raise _not_found(plan.ref)
    current = entries[-1]
    _refuse_pending(plan.ref, current)
    # Recorded *before* acting: after a failure helm's history has one more entry to confuse us.
    restore = _last_deployed(entries)
    plan.helm_input.expected_revision = current.revision
    try:
        info: ReleaseInfo = await _run_with_status(
            ACTIVITY_NAMES["upgrade"],
            plan.helm_input,
            ReleaseInfo,
            plan.ref,
            plan.db_dict,
            plan.operation,
            plan.timeout,
            final_phase=PHASE_COMPLETED,
        )
    except (ActivityError, asyncio.CancelledError) as err:
        if common.is_workflow_cancellation(err):
            # Saga compensation: shielded so a second cancel cannot interrupt the rollback, then
            # the cancellation is re-raised so the workflow still ends CANCELED.
            await common.shielded(_compensate_cancel(plan, current.revision, restore))
            raise
        # Shielded: once helm has failed, a cancel arriving mid-remediation must not leave the
        # release on its failed revision; the workflow then reports what remediation did.
        await common.shielded(_remediate(plan, err, current.revision, restore))
        raise  # unreachable: _remediate always raises
    status = info.final_status or await _final_status(plan.ref, plan.db_dict, plan.operation, PHASE_COMPLETED)
    return info, status


# ------------------------------------------------------------------------------------------------
# Workflows
# ------------------------------------------------------------------------------------------------


@workflow.defn(name="InstallKdu")
class InstallKdu(common.Tracked, LockClient):
    """Install a chart as a new release (N2VC ``install``), generating the name if none is given."""

    @workflow.run
    async def run(self, raw: Any = None, *extra: Any) -> KduResult:
        return await common.finish(self._run(raw, *extra))

    async def _run(self, raw: Any = None, *extra: Any) -> KduResult:
        """Returns the installed release (with the generated ``kdu_instance``).

        Raises non-retryable ``InvalidInput``, ``ReleaseNameInUse`` (no free generated name), or the
        install's own failure type (``ReleaseFailed``, ``ChartNotFound``, ...) after the final status
        was written. With ``atomic`` helm removes a failed release itself; without it the failed
        release stays for inspection. Cancellation stops helm and the poller, writes the status.
        """
        inp = decode_input(InstallKduInput, raw, extra)
        chart = validation.validate_install(inp)
        db_dict = validation.validate_db_dict(inp.db_dict)
        await common.preflight(db_dict, inp.kdu_model, inp.version)
        namespace = inp.namespace or common.DEFAULT_NAMESPACE
        # The name is fixed before the lock and the install: a retried install activity must target
        # the same release, and a replay regenerates the same name from workflow.random().
        name = inp.kdu_instance or await _generate_unused_name(inp.cluster_uuid, inp.kdu_model)
        ref = ReleaseRef(cluster_uuid=inp.cluster_uuid, kdu_instance=name, namespace=namespace)
        common.begin("install", inp.cluster_uuid, name, namespace)
        helm_input = HelmInstallInput(
            ref=ref,
            chart=chart.chart,
            version=chart.version,
            values=inp.params,
            atomic=inp.atomic,
            # Always wait: "deployed" must mean ready, atomic or not (N2VC's non-atomic path did not).
            wait=True,
            timeout=inp.timeout,
            labels=inp.labels,
            create_namespace=True,
            operation_id=common.operation_id("install"),
        )
        async with release_lock(ref, "install", wait=inp.wait_for_lock):
            try:
                info: ReleaseInfo = await _run_with_status(
                    ACTIVITY_NAMES["install"], helm_input, ReleaseInfo, ref, db_dict, "install", inp.timeout,
                    final_phase=PHASE_COMPLETED,
                )  # fmt: skip
            except (ActivityError, asyncio.CancelledError) as err:
                if common.is_workflow_cancellation(err):
                    await common.shielded(
                        _final_status(
                            ref, db_dict, "install", PHASE_CANCELLED, "install cancelled by request"
                        )
                    )
                    raise
                # Keep the activity's error type (ReleaseFailed, ChartNotFound, ...) so callers can
                # branch on it; only the message gains the release and what helm left behind.
                etype, emsg, details = common.describe_failure(err)
                msg = f"install of {chart.chart} as {_ref_text(ref)} failed: {emsg}"
                left = _install_leftover(etype, inp.atomic)
                if left:
                    msg = f"{msg}; {left}"
                await _final_status(ref, db_dict, "install", PHASE_FAILED, msg)
                raise ApplicationError(msg, *details, type=etype, non_retryable=True) from err
            status = info.final_status or await _final_status(ref, db_dict, "install", PHASE_COMPLETED)
        return _result(info, status, message="installed")


def _install_leftover(error_type: str, atomic: bool) -> str:
    """What a failed install left in the cluster, as far as its error type tells."""
    if error_type == "ReleaseFailed":
        # helm wrote a failed revision: --atomic uninstalls it, otherwise it stays for inspection.
        return (
            "helm removed the failed release (atomic)"
            if atomic
            else "the failed release is left in place (atomic=false)"
        )
    if error_type == "ReleaseNameInUse":
        return "the existing release of that name was not touched"
    # Refused before helm wrote anything (chart, input, credentials), or retries ran out: nothing
    # here says what the cluster holds; the status document and helm history do.
    return ""


@workflow.defn(name="UpgradeKdu")
class UpgradeKdu(common.Tracked, LockClient):
    """Upgrade a release; on failure roll back to the recorded last deployed revision (atomic)."""

    @workflow.run
    async def run(self, raw: Any = None, *extra: Any) -> KduResult:
        return await common.finish(self._run(raw, *extra))

    async def _run(self, raw: Any = None, *extra: Any) -> KduResult:
        """Returns the upgraded release. Raises non-retryable ``InvalidInput``, ``ReleaseNotFound``,
        ``OperationInProgress``, ``UpgradeRolledBack`` (details: failed_revision, restored_revision),
        ``UpgradeFailed`` (atomic=false; the failed revision stays), ``RollbackFailed``
        (details: failed_revision, rollback_revision), or the cause's type if no revision was written.
        """
        inp = decode_input(UpgradeKduInput, raw, extra)
        chart = validation.validate_upgrade(inp)
        db_dict = validation.validate_db_dict(inp.db_dict)
        await common.preflight(db_dict, inp.kdu_model, inp.version)
        namespace = await _require_namespace(inp.cluster_uuid, inp.kdu_instance, inp.namespace)
        ref = ReleaseRef(cluster_uuid=inp.cluster_uuid, kdu_instance=inp.kdu_instance, namespace=namespace)
        common.begin("upgrade", ref.cluster_uuid, ref.kdu_instance, ref.namespace)
        helm_input = HelmUpgradeInput(
            ref=ref,
            chart=chart.chart if chart else "",
            version=chart.version if chart else "",
            values=inp.params,
            # reset wins over reuse: N2VC let the default reuse_values=True mask a requested reset.
            reuse_values=inp.reuse_values and not inp.reset_values,
            reset_values=inp.reset_values,
            force=inp.force,
            # The workflow, not helm, rolls back: it can then target and report an explicit revision.
            atomic=False,
            wait=True,
            timeout=inp.timeout,
            operation_id=common.operation_id("upgrade"),
        )
        plan = _UpgradePlan(ref, helm_input, inp.atomic, inp.timeout, db_dict, "upgrade")
        async with release_lock(ref, "upgrade", wait=inp.wait_for_lock):
            info, status = await _guarded_upgrade(plan)
        return _result(info, status, message="upgraded")


@workflow.defn(name="RollbackKdu")
class RollbackKdu(common.Tracked, LockClient):
    """Roll a release back to an explicit revision (0 = last deployed before the current one)."""

    @workflow.run
    async def run(self, raw: Any = None, *extra: Any) -> KduResult:
        return await common.finish(self._run(raw, *extra))

    async def _run(self, raw: Any = None, *extra: Any) -> KduResult:
        """Returns the release after the rollback; ``restored_revision`` is the revision restored.

        Raises non-retryable ``InvalidInput`` (bad input, revision not in history, or no earlier
        deployed revision for 0), ``ReleaseNotFound``, ``OperationInProgress``, ``RollbackFailed``.
        """
        inp = decode_input(RollbackKduInput, raw, extra)
        validation.validate_rollback(inp)
        db_dict = validation.validate_db_dict(inp.db_dict)
        await common.preflight(db_dict)
        namespace = await _require_namespace(inp.cluster_uuid, inp.kdu_instance, inp.namespace)
        ref = ReleaseRef(cluster_uuid=inp.cluster_uuid, kdu_instance=inp.kdu_instance, namespace=namespace)
        common.begin("rollback", ref.cluster_uuid, ref.kdu_instance, ref.namespace)
        async with release_lock(ref, "rollback", wait=inp.wait_for_lock):
            entries = await _history(ref)
            if not entries:
                raise _not_found(ref)
            current = entries[-1]
            _refuse_pending(ref, current)
            # Resolved here, never passed to helm as 0: helm's "previous" may be a failed revision.
            target = self._target(entries, current, inp.revision)
            try:
                info: ReleaseInfo = await _run_with_status(
                    ACTIVITY_NAMES["rollback"],
                    HelmRollbackInput(
                        ref=ref,
                        revision=target,
                        wait=True,
                        timeout=inp.timeout,
                        operation_id=common.operation_id("rollback"),
                    ),
                    ReleaseInfo,
                    ref,
                    db_dict,
                    "rollback",
                    inp.timeout,
                    final_phase=PHASE_COMPLETED,
                )
            except (ActivityError, asyncio.CancelledError) as err:
                if common.is_workflow_cancellation(err):
                    await common.shielded(
                        _final_status(
                            ref, db_dict, "rollback", PHASE_CANCELLED, "rollback cancelled by request"
                        )
                    )
                    raise
                _, emsg, _ = common.describe_failure(err)
                msg = f"rollback of {_ref_text(ref)} to revision {target} failed: {emsg}"
                await _final_status(ref, db_dict, "rollback", PHASE_FAILED, msg)
                raise ApplicationError(
                    msg,
                    {"rollback_revision": target, "current_revision": current.revision},
                    type="RollbackFailed",
                    non_retryable=True,
                ) from err
            status = info.final_status or await _final_status(ref, db_dict, "rollback", PHASE_COMPLETED)
        return _result(info, status, message=f"rolled back to revision {target}", restored_revision=target)

    @staticmethod
    def _target(entries: list[RevisionInfo], current: RevisionInfo, revision: int) -> int:
        history = ", ".join(f"{e.revision} {e.status}" for e in entries)
        if revision == 0:
            target = _last_deployed(entries, below=current.revision)
            if target is None:
                raise InvalidInputError(
                    "revision",
                    f"0 means the last deployed revision before {current.revision}, and there is none "
                    f"(history: {history})",
                )
            return target.revision
        if not any(e.revision == revision for e in entries):
            raise InvalidInputError("revision", f"revision {revision} is not in the history ({history})")
        return revision


@workflow.defn(name="ScaleKdu")
class ScaleKdu(common.Tracked, LockClient):
    """Change the replica key (N2VC's ``replicaCount``/``replicas``) and upgrade with reused values."""

    @workflow.run
    async def run(self, raw: Any = None, *extra: Any) -> KduResult:
        return await common.finish(self._run(raw, *extra))

    async def _run(self, raw: Any = None, *extra: Any) -> KduResult:
        """Returns the scaled release with ``replica_key`` set. Raises non-retryable ``InvalidInput``,
        ``ReleaseNotFound``, ``ReplicaKeyNotFound``, ``ReplicaKeyAmbiguous``, and the upgrade errors
        of UpgradeKdu (``UpgradeRolledBack``, ``UpgradeFailed``, ``RollbackFailed``, ...).
        """
        inp = decode_input(ScaleKduInput, raw, extra)
        validation.validate_scale_input(inp)
        db_dict = validation.validate_db_dict(inp.db_dict)
        await common.preflight(db_dict)
        namespace = await _require_namespace(inp.cluster_uuid, inp.kdu_instance, inp.namespace)
        ref = ReleaseRef(cluster_uuid=inp.cluster_uuid, kdu_instance=inp.kdu_instance, namespace=namespace)
        common.begin("scale", ref.cluster_uuid, ref.kdu_instance, ref.namespace)
        async with release_lock(ref, "scale", wait=inp.wait_for_lock):
            # Values come from the release itself, not from the repository as in N2VC: that also
            # works for OCI/local charts and when the repository is gone or has moved on.
            user = await common.call_read(
                ACTIVITY_NAMES["get_values"],
                GetValuesInput(ref=ref, all_values=False),
                ValuesResult,
                f"reading the values of {_ref_text(ref)}",
            )
            computed = await common.call_read(
                ACTIVITY_NAMES["get_values"],
                GetValuesInput(ref=ref, all_values=True),
                ValuesResult,
                f"reading the computed values of {_ref_text(ref)}",
            )
            key = scale.find_replica_key(user.values, computed.values, inp.resource_name)
            helm_input = HelmUpgradeInput(
                ref=ref,
                chart="",
                # Only the replica key changes; reuse keeps every other value (N2VC's helm 2 path
                # dropped them).
                set_values={key.path: inp.scale},
                reuse_values=True,
                atomic=False,
                wait=True,
                timeout=inp.timeout,
                operation_id=common.operation_id("scale"),
            )
            plan = _UpgradePlan(ref, helm_input, inp.atomic, inp.timeout, db_dict, "scale")
            info, status = await _guarded_upgrade(plan)
        return _result(
            info, status, message=f"scaled {key.path} from {key.current} to {inp.scale}", replica_key=key.path
        )


@workflow.defn(name="UninstallKdu")
class UninstallKdu(common.Tracked, LockClient):
    """Uninstall a release; an absent release is a success ("release was absent")."""

    @workflow.run
    async def run(self, raw: Any = None, *extra: Any) -> KduResult:
        return await common.finish(self._run(raw, *extra))

    async def _run(self, raw: Any = None, *extra: Any) -> KduResult:
        """Returns status ``absent``; ``message`` says whether it was removed or already absent.

        A ``pending-*`` release is uninstalled, not reported absent (N2VC leaked those).
        Raises non-retryable ``InvalidInput`` or the uninstall's failure type after writing status.
        """
        inp = decode_input(UninstallKduInput, raw, extra)
        validation.validate_uninstall(inp)
        db_dict = validation.validate_db_dict(inp.db_dict)
        await common.preflight(db_dict)
        # Idempotent by design: a retried or repeated uninstall must succeed, as N2VC's did.
        namespace = await common.resolve_namespace(inp.cluster_uuid, inp.kdu_instance, inp.namespace)
        if namespace is None:
            # No namespace given and the name exists nowhere: nothing to remove, nowhere to observe.
            return KduResult(kdu_instance=inp.kdu_instance, namespace="", status="absent", message=FMT_ABSENT)
        ref = ReleaseRef(cluster_uuid=inp.cluster_uuid, kdu_instance=inp.kdu_instance, namespace=namespace)
        common.begin("uninstall", ref.cluster_uuid, ref.kdu_instance, ref.namespace)
        async with release_lock(ref, "uninstall", wait=inp.wait_for_lock):
            # history, not list: N2VC's `helm list` hid pending releases and so "uninstalled" them
            # without deleting anything.
            entries = await _history(ref)
            if not entries:
                await _final_status(ref, db_dict, "uninstall", PHASE_COMPLETED)
                return KduResult(ref.kdu_instance, ref.namespace, status="absent", message=FMT_ABSENT)
            last = entries[-1]
            try:
                outcome: UninstallOutcome = await workflow.execute_activity(
                    ACTIVITY_NAMES["uninstall"],
                    HelmUninstallInput(ref=ref, wait=True, timeout=inp.timeout),
                    result_type=UninstallOutcome,
                    **common.helm_options(inp.timeout),
                )
            except (ActivityError, asyncio.CancelledError) as err:
                if common.is_workflow_cancellation(err):
                    await common.shielded(
                        _final_status(
                            ref, db_dict, "uninstall", PHASE_CANCELLED, "uninstall cancelled by request"
                        )
                    )
                    raise
                etype, emsg, details = common.describe_failure(err)
                was = f"was {last.status} at revision {last.revision}"
                msg = f"uninstall of {_ref_text(ref)} ({was}) failed: {emsg}"
                await _final_status(ref, db_dict, "uninstall", PHASE_FAILED, msg)
                raise ApplicationError(msg, *details, type=etype, non_retryable=True) from err
            await _final_status(ref, db_dict, "uninstall", PHASE_COMPLETED)
        message = (
            f"uninstalled (was {outcome.status_before} at revision {last.revision})"
            if outcome.existed
            else FMT_ABSENT
        )
        return KduResult(
            kdu_instance=ref.kdu_instance,
            namespace=ref.namespace,
            revision=last.revision,
            status=ReleaseStatus.ABSENT.value,
            chart=last.chart,
            app_version=last.app_version,
            message=message,
        )
