"""kduflow's own metrics, recorded through the Temporal SDK's metric meter.

The SDK runtime exports them with its own (``temporal_*``) metrics: with ``KDUFLOW_METRICS_BIND``
set, ``worker.py`` gives the client a runtime with a Prometheus endpoint. Every metric is named
``kduflow_*`` and carries only low-cardinality attributes (never a release, cluster, namespace or
value); the SDK adds ``namespace``, ``task_queue`` and ``activity_type`` (in activities) or
``workflow_type`` (in workflows).

Inside an activity the activity's meter is used, inside a workflow the workflow's, which records
nothing while a workflow replays (so a metric point is never a workflow command and changes no
history). Anywhere else (unit tests calling an activity method directly) every function here does
nothing.

Durations are recorded as ``timedelta`` with unit ``duration``: the exporter turns them into
milliseconds, like the SDK's own latencies (seconds with ``durations_as_seconds``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import MetricMeter

HELM_COMMAND_DURATION = "kduflow_helm_command_duration"
HELM_COMMANDS = "kduflow_helm_commands"
ROLLBACKS = "kduflow_rollbacks"
STATUS_WRITES = "kduflow_status_writes"
LOCK_WAIT = "kduflow_lock_wait"
STUCK_RELEASES_RECOVERED = "kduflow_stuck_releases_recovered"

#: helm verbs named in the ``verb`` attribute; any other first word is "other".
HELM_VERBS = frozenset({
    "install", "upgrade", "rollback", "uninstall", "history", "list", "status", "get", "show",
    "search", "template", "test", "repo", "registry", "pull", "dependency", "version",
})  # fmt: skip
#: Histogram buckets (milliseconds) for helm commands and lock waits: from a cached read to a
#: long ``--wait``. Used as the exporter's bucket overrides by ``worker.py``.
DURATION_BUCKETS_MS = (10, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000, 900_000)


def meter() -> MetricMeter | None:
    """The current activity's or workflow's meter; None outside both."""
    if activity.in_activity():
        try:
            return activity.metric_meter()
        except RuntimeError:  # a non-threaded sync activity (none in kduflow) has no meter
            return None
    if workflow.in_workflow():
        return workflow.metric_meter()
    return None


def helm_verb(argv: Sequence[str]) -> str:
    """The verb of a helm argv (its first word after the program), or "other"."""
    word = next((a for a in argv[1:2] if not a.startswith("-")), "")
    return word if word in HELM_VERBS else "other"


def helm_command(verb: str, helm_major: int | None, outcome: str, duration: float) -> None:
    """One helm process: ``outcome`` is ok, failed, timeout or cancelled; ``duration`` in seconds."""
    m = meter()
    if m is None:
        return
    attrs = {"verb": verb, "helm_major": str(helm_major) if helm_major else "unknown", "outcome": outcome}
    m.create_histogram_timedelta(
        HELM_COMMAND_DURATION, "Wall time of helm commands run by kduflow", "duration"
    ).record(timedelta(seconds=max(duration, 0.0)), attrs)
    m.create_counter(HELM_COMMANDS, "helm commands run by kduflow").add(1, attrs)


def rollback(reason: str, outcome: str) -> None:
    """A remediation rollback of a failed (``reason`` failed) or cancelled upgrade; outcome ok/failed."""
    m = meter()
    if m is not None:
        m.create_counter(ROLLBACKS, "Remediation rollbacks of failed or cancelled upgrades").add(
            1, {"reason": reason, "outcome": outcome}
        )


def status_write(outcome: str) -> None:
    """One status write to the store: ``outcome`` written, stale or no_document."""
    m = meter()
    if m is not None:
        m.create_counter(STATUS_WRITES, "Status writes to MongoDB by outcome").add(1, {"outcome": outcome})


def lock_wait(operation: str, waited: timedelta) -> None:
    """Time from a release lock request to its grant (zero when the lock was free)."""
    m = meter()
    if m is not None:
        m.create_histogram_timedelta(
            LOCK_WAIT, "Time from a release lock request to its grant", "duration"
        ).record(max(waited, timedelta(0)), {"operation": operation})


def stuck_recovered(action: str) -> None:
    """A stuck release revision cleared: ``action`` rolled_back, uninstalled or marked_failed."""
    m = meter()
    if m is not None:
        m.create_counter(
            STUCK_RELEASES_RECOVERED, "Stuck pending release revisions recovered by kduflow"
        ).add(1, {"action": action})
