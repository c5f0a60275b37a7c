"""``kdu.*`` release activities: helm install/upgrade/rollback/uninstall and read-only queries.

Each activity is build argv -> run (through the one ``Runner``, with the cluster's private
environment) -> parse. Mutating activities are idempotent under Temporal retries: they observe
the release (``helm history``) before acting, so a retry after a crash at any point converges
instead of failing with "name in use" or leaving a ``pending-*`` release behind.

Recognising our own earlier attempt: a release label ``kduflow.dev/op=<hash of operation_id>``.
helm keeps release labels on its storage Secret (helm 3.14+ and 4 ``--labels``); ``helm list
--selector`` reads them back for the latest revision; upgrades merge labels (ours replaces the
previous operation's value) and a rollback copies the target revision's labels. The release
*description* is left alone because OSM shows helm's own description ("Install complete").

Errors leave every activity as ``ApplicationError`` (see ``activities/errors.py``): a helm failure
that wrote a new failed revision is non-retryable ``ReleaseFailed`` (or ``UpgradeFailed`` /
``UpgradeRolledBack`` / ``RollbackFailed``) with details ``{revision, status, description}``;
failures before any revision are classified from stderr (retryable or not).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import helm_cli, kubectl_cli, release_storage
from activities.errors import (
    ChartNotFound,
    HelmError,
    InvalidInput,
    InvalidResource,
    KduflowError,
    OperationInProgress,
    ProcessTimeout,
    ReleaseFailed,
    ReleaseNameInUse,
    ReleaseNotFound,
    RollbackFailed,
    UpgradeFailed,
    UpgradeRolledBack,
    classify_helm_stderr,
    to_application_error,
)
from activities.helm_cli import ChartRef, HelmVersion
from activities.kubeapi import KubeApi, KubeApiBase
from activities.release_storage import ReleaseCache, ReleaseStorage, StoredRelease
from activities.runner import ProcessResult, Runner, metered
from activities.status import StatusActivities
from activities.url_policy import UrlDecision, UrlPolicy
from contract import validation
from contract.models import (
    ACTIVITY_NAMES,
    GetServiceInput,
    GetValuesInput,
    HelmInstallInput,
    HelmRollbackInput,
    HelmUninstallInput,
    HelmUpgradeInput,
    HistoryResult,
    InspectInput,
    InspectKduResult,
    KduServicesResult,
    ListReleasesInput,
    ListReleasesResult,
    PreflightInput,
    ReleaseInfo,
    ReleaseRef,
    ReleaseStatus,
    ReleaseSummary,
    RevisionInfo,
    ServiceResult,
    StatusReport,
    UninstallOutcome,
    ValuesResult,
)
from kduflow import metrics

logger = logging.getLogger(__name__)

#: Release label carrying the hash of the operation that produced the revision.
OP_LABEL = "kduflow.dev/op"
#: Seconds allowed to read-only helm/kubectl calls.
READ_TIMEOUT = 120.0
#: Seconds the runner adds to helm's own --timeout (chart download, hooks bookkeeping, storage).
RUNNER_MARGIN = 60.0
#: Seconds kept back from the activity's start-to-close: the result must still reach the server.
ACTIVITY_RESERVE = 5.0
#: A helm --timeout shorter than this is not worth starting: the attempt gives up (retryable).
MIN_HELM_TIMEOUT = 10
#: Added to a pending revision's helm timeout before it counts as stuck (hooks, the final storage
#: write after helm's wait).
STUCK_MARGIN = 120
#: Seconds between two looks at a pending release while waiting for it.
PENDING_POLL = 3.0
_ROLLBACK_TO = re.compile(r"^Rollback to (\d+)$")
_OCI_NOISE = re.compile(r"^(Pulled|Digest): .*\n", re.MULTILINE)


class _Envs(Protocol):
    async def get(self, cluster_uuid: str) -> Any: ...


class _Charts(Protocol):
    async def ensure_chart_available(self, env: Any, repo: str, chart: str, version: str = "") -> str: ...

    async def sync_env(self, env: Any) -> Any: ...


class _Settings(Protocol):
    @property
    def helm(self) -> str: ...
    @property
    def kubectl(self) -> str: ...
    @property
    def state_dir(self) -> Path: ...
    @property
    def charts_dir(self) -> Path | None: ...
    @property
    def url_allowlist(self) -> tuple[str, ...]: ...
    @property
    def private_networks(self) -> tuple[str, ...]: ...
    @property
    def status_collections(self) -> tuple[str, ...]: ...
    @property
    def pending_stuck_after(self) -> int: ...
    @property
    def poll_interval(self) -> float: ...


def op_marker(operation_id: str) -> dict[str, str]:
    """The release label recording ``operation_id`` (hashed: label values are <= 63 chars)."""
    if not operation_id:
        return {}
    return {OP_LABEL: hashlib.sha256(operation_id.encode()).hexdigest()[:32]}


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _boundary(fn: F) -> F:
    """Convert kduflow errors into ApplicationError at the activity boundary."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except KduflowError as err:
            raise to_application_error(err) from err
        except ValueError as err:  # a parser met output it does not understand
            raise to_application_error(HelmError(f"unexpected helm output: {err}")) from err

    return wrapper  # type: ignore[return-value]


def _reports_status(fn: F) -> F:
    """For a mutating activity whose input may carry a ``StatusReport``: report the release's status
    while the activity runs, and its final status once it succeeded (``ReleaseActivities._reported``)."""

    @functools.wraps(fn)
    async def wrapper(self: ReleaseActivities, inp: Any) -> ReleaseInfo:
        return await self._reported(inp.ref, inp.report, lambda: fn(self, inp))

    return wrapper  # type: ignore[return-value]


class ReleaseActivities:
    """The ``kdu.*`` release activities. Register the bound methods on a worker.

    Args:
        settings: worker settings (``helm``, ``kubectl``, ``charts_dir``, ``state_dir``).
        envs: ``ClusterEnvs`` (``await envs.get(cluster_uuid) -> ClusterEnv``).
        runner: the process runner (tests inject one).
        heartbeat_every: seconds between heartbeats while a helm/kubectl process runs (the SDK
            throttles what reaches the server to 0.8 x the heartbeat timeout).
        charts: the cluster repositories (``activities.repos.ChartRepos``): a "repo/chart" reference
            is checked against the repository index, which is refreshed only when stale or missing
            the chart/version, and an OCI repository name is turned into its oci:// reference.
        url_policy: decides which URLs of the input (``repo_url``, ``oci://`` chart references) helm
            may fetch from. Default: a ``UrlPolicy`` over ``settings`` whose registered repositories
            are those of ``charts.store`` (none without ``charts``).
        apis: the cluster's cached Kubernetes API client (``StatusActivities.api_for``). With it a
            release's history and labels are read from helm's storage in one API request, in this
            process, instead of by a helm process (a Go binary start, discovery and the same list:
            about 80 ms each, several per operation). Without it, or for clusters whose credentials
            need kubectl, helm is asked.
        helm_driver: helm's storage driver on the clusters (``secret`` or ``configmap``).
        status: the status activities: an input's ``StatusReport`` is served with their observer
            and writer, in this activity (``apis`` defaults to their ``api_for``).
    """

    def __init__(
        self,
        settings: _Settings,
        envs: _Envs,
        runner: Runner | None = None,
        *,
        heartbeat_every: float = 5.0,
        charts: _Charts | None = None,
        url_policy: UrlPolicy | None = None,
        apis: Callable[[str], Awaitable[KubeApiBase]] | None = None,
        helm_driver: str = "secret",
        status: StatusActivities | None = None,
    ) -> None:
        self._settings = settings
        self._status = status
        self._apis = apis or (status.api_for if status is not None else None)
        self._helm_driver = helm_driver
        self._charts = charts
        self._url_policy = url_policy or UrlPolicy(settings, getattr(charts, "store", None))
        self._heartbeat_every = heartbeat_every
        self._envs = envs
        self._runner = metered(runner, settings.helm)
        #: Seconds added to a pending revision's timeout before it counts as stuck (tests shorten it).
        self.stuck_margin = STUCK_MARGIN
        self._versions: dict[str, HelmVersion] = {}
        self._version_lock = asyncio.Lock()
        self._release_cache = ReleaseCache(256)

    # -- plumbing -------------------------------------------------------------------------------

    async def _reported(
        self, ref: ReleaseRef, report: StatusReport | None, body: Callable[[], Awaitable[ReleaseInfo]]
    ) -> ReleaseInfo:
        """Run ``body`` (the activity's work) while reporting the release's status every
        ``KDUFLOW_POLL_INTERVAL`` seconds; after a success, write the final status and return it
        in ``final_status``. A failure propagates without a final write: the workflow decides what
        to do and writes the final status itself."""
        if report is None or self._status is None:
            return await body()
        reporter = self._status.reporter(ref, report, activity.info().attempt)
        task = asyncio.ensure_future(reporter.run(self._settings.poll_interval))
        try:
            info = await body()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if report.final_phase:
            info.final_status = await reporter.final(report.final_phase)
        return info

    async def _env(self, cluster_uuid: str) -> dict[str, str]:
        return dict((await self._envs.get(cluster_uuid)).env)

    async def _check_chart(self, chart: ChartRef) -> UrlDecision | None:
        """Apply the URL policy to an ``oci://`` reference taken from the input (None: not a URL).

        References built from a cluster's repositories (``_available``) are not taken from the input.
        Raises ``UrlNotAllowed`` (non-retryable) before anything is fetched.
        """
        if chart.kind != "oci":
            return None
        return await self._url_policy.check(chart.chart, field="kdu_model")

    async def _available(self, cluster_uuid: str, chart: ChartRef) -> ChartRef:
        """Make a "repo/chart" reference installable on this worker (see ``charts`` above)."""
        if chart.kind != "repo" or self._charts is None:
            return chart
        name = chart.chart.split("/", 1)[1]
        resolved = await self._charts.ensure_chart_available(
            await self._envs.get(cluster_uuid), chart.repo, name, chart.version
        )
        return ChartRef("oci", resolved, chart.version) if resolved.startswith("oci://") else chart

    async def _version(self, env: Mapping[str, str]) -> HelmVersion:
        """The helm version, probed once per binary path."""
        helm = self._settings.helm
        if helm not in self._versions:
            async with self._version_lock:
                if helm not in self._versions:
                    res = await self._runner.run(helm_cli.build_version_argv(helm), env=env, timeout=30)
                    if not res.ok:
                        raise classify_helm_stderr(res.stderr, res.returncode, context="helm version")
                    self._versions[helm] = HelmVersion.parse(res.stdout)
        return self._versions[helm]

    async def _run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        timeout: float = READ_TIMEOUT,
        stdin: bytes | None = None,
        secrets: Iterable[str] = (),
    ) -> ProcessResult:
        # Never run a process past the activity's own deadline: Temporal would time the attempt out
        # while the process runs on, and the retry would meet it.
        left = _time_left()
        if left is not None:
            if left - ACTIVITY_RESERVE < 1:
                raise ProcessTimeout("no time left in this attempt to run helm", details={"timeout": 0})
            timeout = min(timeout, left - ACTIVITY_RESERVE)
        return await self._runner.run(
            argv, env=env, stdin=stdin, timeout=timeout, secrets=secrets,
            heartbeat_every=self._heartbeat_every,
        )  # fmt: skip

    def _helm_timeout(self, requested: int) -> int:
        """helm's ``--timeout`` for a mutating call: the request, shortened to what this attempt has
        left (the runner adds RUNNER_MARGIN on top). Raises ProcessTimeout (retryable) when too
        little is left: the next attempt starts with a full start-to-close."""
        left = _time_left()
        if left is None:
            return requested
        fits = int(left - ACTIVITY_RESERVE - RUNNER_MARGIN)
        if fits < min(requested, MIN_HELM_TIMEOUT):
            raise ProcessTimeout(
                f"only {int(left)}s left in this attempt, too little for helm (asked {requested}s)",
                details={"timeout": requested},
            )
        return min(requested, fits)

    async def _settle_pending(
        self,
        env: Mapping[str, str],
        version: HelmVersion,
        ref: ReleaseRef,
        history: list[RevisionInfo],
        *,
        own_timeout: int | None,
    ) -> list[RevisionInfo]:
        """Wait while the latest revision is pending and the helm writing it may still be running.

        ``own_timeout`` is this operation's helm timeout when the pending revision is its own (an
        earlier attempt's), None when it is someone else's (then ``KDUFLOW_PENDING_STUCK_AFTER``
        stands in for the unknown timeout). Returns the history once the latest revision is no
        longer pending, or once it is stuck: the earlier attempt's helm is known to be gone (same
        host, its pid no longer runs helm), or the revision is older than its timeout plus
        STUCK_MARGIN and no live process is known. A live helm of an earlier attempt is always
        waited for: a redeployed worker left it running on purpose.

        Raises OperationInProgress (retryable) when this attempt runs out of time first.
        """
        previous = _previous_process() if own_timeout is not None else None
        timeout = own_timeout if own_timeout is not None else self._settings.pending_stuck_after
        limit = timeout + self.stuck_margin
        while history and ReleaseStatus(history[-1].status).is_pending:
            latest = history[-1]
            alive = _process_alive(previous)
            if alive is False:
                # It may have finished between the history read and this check: look once more.
                history = await self._history(env, version, ref)
                if history and ReleaseStatus(history[-1].status).is_pending:
                    activity.logger.info(
                        "release %s is %s but the helm of the earlier attempt (pid %s) is gone",
                        ref.kdu_instance, latest.status, previous.get("pid") if previous else "?",
                    )  # fmt: skip
                return history
            age = _age_seconds(latest.updated)
            # A revision whose time cannot be read is never taken for stuck: helm always writes it.
            if alive is None and age is not None and age >= limit:
                activity.logger.warning(
                    "release %s is stuck %s at revision %s (%.0fs old, limit %ss): recovering it",
                    ref.kdu_instance, latest.status, latest.revision, age, limit,
                )  # fmt: skip
                return history
            left = _time_left()
            if left is not None and left - ACTIVITY_RESERVE < 2 * PENDING_POLL:
                raise OperationInProgress(
                    f"release {ref.kdu_instance!r} is {latest.status} at revision {latest.revision} and "
                    f"{'its helm is still running' if alive else 'not yet stuck'}: waiting again",
                    details={"revision": latest.revision, "status": latest.status},
                )
            if activity.in_activity():
                # Keep the earlier attempt's process on record for the next attempt.
                activity.heartbeat(previous or {"waiting_for": latest.status, "revision": latest.revision})
            await asyncio.sleep(PENDING_POLL)
            history = await self._history(env, version, ref)
        return history

    async def _run_ok(
        self, argv: Sequence[str], env: Mapping[str, str], context: str, **kw: Any
    ) -> ProcessResult:
        res = await self._run(argv, env, **kw)
        if not res.ok:
            raise classify_helm_stderr(
                res.stderr, res.returncode, secrets=kw.get("secrets", ()), context=context
            )
        return res

    async def _storage(self, cluster_uuid: str) -> ReleaseStorage | None:
        """helm's release storage through the cluster's in-process API client, when there is one."""
        if self._apis is None:
            return None
        api = await self._apis(cluster_uuid)
        if not isinstance(api, KubeApi):
            return None  # credentials that need kubectl: a process per request, no better than helm
        return ReleaseStorage(api, self._helm_driver, self._release_cache)

    async def _labelled_history(self, ref: ReleaseRef) -> list[tuple[RevisionInfo, dict[str, str]]] | None:
        """Revisions with their storage labels from helm's storage (None: no in-process client)."""
        storage = await self._storage(ref.cluster_uuid)
        if storage is None:
            return None
        pairs = await storage.labelled_history(ref.kdu_instance, _ns(ref))
        return [(_revision_info(release), labels) for release, labels in pairs]

    async def _history(
        self, env: Mapping[str, str], version: HelmVersion, ref: ReleaseRef
    ) -> list[RevisionInfo]:
        """All revisions, oldest first; [] when the release does not exist."""
        stored = await self._labelled_history(ref)
        if stored is not None:
            return [info for info, _ in stored]
        argv = helm_cli.build_history_argv(
            self._settings.helm, version, release=ref.kdu_instance, namespace=_ns(ref)
        )
        res = await self._run(argv, env)
        if res.ok:
            return helm_cli.parse_history(res.stdout)
        err = classify_helm_stderr(res.stderr, res.returncode, context=f"helm history {ref.kdu_instance}")
        if isinstance(err, ReleaseNotFound):
            return []
        raise err

    async def _observe(self, env: Mapping[str, str], version: HelmVersion, ref: ReleaseRef) -> ReleaseInfo:
        """The release's latest revision (``helm status`` JSON carries no chart, history does)."""
        return _info(ref, await self._history(env, version, ref))

    async def _carries_marker(
        self, env: Mapping[str, str], version: HelmVersion, ref: ReleaseRef, operation_id: str
    ) -> bool:
        """Whether the latest revision of the release carries this operation's label."""
        if not operation_id:
            return False
        stored = await self._labelled_history(ref)
        if stored is not None:
            return bool(stored) and op_marker(operation_id).items() <= stored[-1][1].items()
        argv = helm_cli.build_list_argv(
            self._settings.helm,
            version,
            namespace=_ns(ref),
            name=ref.kdu_instance,
            selector=op_marker(operation_id),
        )
        res = await self._run_ok(argv, env, f"helm list {ref.kdu_instance}")
        return any(r.name == ref.kdu_instance for r in helm_cli.parse_list(res.stdout))

    async def _uninstall(
        self, env: Mapping[str, str], version: HelmVersion, ref: ReleaseRef, timeout: int, wait: bool
    ) -> None:
        argv = helm_cli.build_uninstall_argv(
            self._settings.helm,
            version,
            release=ref.kdu_instance,
            namespace=_ns(ref),
            timeout=timeout,
            wait=wait,
        )
        res = await self._run(argv, env, timeout=timeout + RUNNER_MARGIN)
        if not res.ok:
            err = classify_helm_stderr(
                res.stderr, res.returncode, context=f"helm uninstall {ref.kdu_instance}"
            )
            if not isinstance(err, ReleaseNotFound):
                raise err

    async def _rollback(
        self,
        env: Mapping[str, str],
        version: HelmVersion,
        ref: ReleaseRef,
        revision: int,
        timeout: int,
        wait: bool,
    ) -> ProcessResult:
        argv = helm_cli.build_rollback_argv(
            self._settings.helm,
            version,
            release=ref.kdu_instance,
            revision=revision,
            namespace=_ns(ref),
            timeout=timeout,
            wait=wait,
        )
        return await self._run(argv, env, timeout=timeout + RUNNER_MARGIN)

    async def _failure(
        self,
        env: Mapping[str, str],
        version: HelmVersion,
        ref: ReleaseRef,
        res: ProcessResult,
        before: list[RevisionInfo],
        verb: str,
        secrets: Iterable[str] = (),
    ) -> KduflowError:
        """The error for a failed mutating helm run: observe whether it wrote a new revision."""
        stderr = res.stderr.decode("utf-8", "replace")
        err = classify_helm_stderr(
            stderr, res.returncode, secrets=secrets, context=f"helm {verb} {ref.kdu_instance}"
        )
        try:
            after = await self._history(env, version, ref)
        except KduflowError:
            return err  # cannot observe: helm's own error is the best report
        known = max((h.revision for h in before), default=0)
        new = [h for h in after if h.revision > known]
        if not new:
            if verb == "install" and "has been uninstalled due to" in stderr:
                # Atomic install: helm wrote revision 1, failed, and removed the release again.
                return ReleaseFailed(
                    err.message,
                    details={"revision": 0, "status": ReleaseStatus.ABSENT.value, "description": err.message},
                )
            return err
        latest = after[-1]
        failed = [h for h in new if h.status == ReleaseStatus.FAILED.value]
        details: dict[str, Any] = {
            "revision": latest.revision,
            "status": latest.status,
            "description": latest.description,
        }
        if verb == "upgrade" and failed and latest.status == ReleaseStatus.DEPLOYED.value:
            restored = _ROLLBACK_TO.match(latest.description)
            details |= {
                "failed_revision": failed[0].revision,
                "restored_revision": int(restored[1]) if restored else latest.revision,
            }
            return UpgradeRolledBack(err.message, details=details)
        cls = {"upgrade": UpgradeFailed, "rollback": RollbackFailed}.get(verb, ReleaseFailed)
        failed_rev = failed[-1] if failed else latest
        details |= {
            "revision": failed_rev.revision,
            "status": failed_rev.status,
            "description": failed_rev.description,
        }
        return cls(err.message, details=details)

    # -- read-only activities ---------------------------------------------------------------------

    @activity.defn(name=ACTIVITY_NAMES["list_releases"])
    @_boundary
    async def list_releases(self, inp: ListReleasesInput) -> ListReleasesResult:
        """Every release of the cluster (all namespaces, all statuses), or only ``inp.name``."""
        storage = await self._storage(inp.cluster_uuid) if inp.name else None
        if storage is not None:
            found = await storage.everywhere(helm_cli.check_release_name(inp.name, "name"))
            return ListReleasesResult(releases=[_summary(release) for release in found])
        env = await self._env(inp.cluster_uuid)
        version = await self._version(env)
        argv = helm_cli.build_list_argv(self._settings.helm, version, name=inp.name)
        res = await self._run_ok(argv, env, "helm list")
        return ListReleasesResult(releases=helm_cli.parse_list(res.stdout))

    @activity.defn(name=ACTIVITY_NAMES["history"])
    @_boundary
    async def history(self, ref: ReleaseRef) -> HistoryResult:
        """``helm history``; empty entries when the release does not exist."""
        env = await self._env(ref.cluster_uuid)
        return HistoryResult(entries=await self._history(env, await self._version(env), ref))

    @activity.defn(name=ACTIVITY_NAMES["get_values"])
    @_boundary
    async def get_values(self, inp: GetValuesInput) -> ValuesResult:
        """User-supplied values (or all computed values). Raises ReleaseNotFound (non-retryable)."""
        env = await self._env(inp.ref.cluster_uuid)
        version = await self._version(env)
        argv = helm_cli.build_get_values_argv(
            self._settings.helm,
            version,
            release=inp.ref.kdu_instance,
            namespace=_ns(inp.ref),
            all_values=inp.all_values,
        )
        res = await self._run_ok(argv, env, f"helm get values {inp.ref.kdu_instance}")
        return ValuesResult(values=helm_cli.parse_get_values(res.stdout))

    @activity.defn(name=ACTIVITY_NAMES["preflight"])
    @_boundary
    async def preflight(self, inp: PreflightInput) -> None:
        """The worker's policy on a workflow's input, asked before the workflow runs anything.

        Run as a local activity by the mutating workflows: the status collection must be one the
        worker writes to (``KDUFLOW_STATUS_COLLECTIONS``), a local chart must exist under the charts
        directory, an ``oci://`` chart must pass the URL policy. No process is started and nothing
        is fetched. Raises non-retryable ``InvalidInput`` (naming the field) or ``UrlNotAllowed``.
        """
        if inp.db_dict is not None:
            db = validation.validate_db_dict(inp.db_dict)
            if db is not None:
                validation.check_status_collection(db, tuple(self._settings.status_collections))
        if inp.chart:
            chart = helm_cli.parse_kdu_model(inp.chart, inp.version, self._settings.charts_dir)
            await self._check_chart(chart)

    @activity.defn(name=ACTIVITY_NAMES["inspect"])
    @_boundary
    async def inspect(self, inp: InspectInput) -> InspectKduResult:
        """Chart.yaml, values.yaml text and README of a chart (no release, no Kubernetes call).

        ``repo/chart`` resolves against the cluster's repositories (``cluster_uuid`` required);
        with ``repo_url`` the chart is looked up in that repository directly. ``repo_url`` and an
        ``oci://`` model pass the URL policy first (``UrlNotAllowed``, non-retryable, nothing run);
        when they are not a registered repository, helm's error text is logged, not returned.
        """
        chart = _inspect_chart(inp, self._settings.charts_dir)
        if chart.kind == "repo" and not inp.repo_url and not inp.cluster_uuid:
            raise InvalidInput("cluster_uuid: required to resolve a repo/chart reference (or give repo_url)")
        if inp.repo_url:
            source: UrlDecision | None = await self._url_policy.check(inp.repo_url, field="repo_url")
        else:
            source = await self._check_chart(chart)
        field = "repo_url" if inp.repo_url else "kdu_model"
        env = await self._env(inp.cluster_uuid) if inp.cluster_uuid else self._scratch_env()
        version = await self._version(env)
        if not inp.repo_url and inp.cluster_uuid:
            chart = await self._available(inp.cluster_uuid, chart)

        async def show(what: str) -> str:
            argv = helm_cli.build_show_argv(
                self._settings.helm, version, what=what, chart=chart, repo_url=inp.repo_url
            )
            context = f"helm show {what} {chart.chart}"
            res = await self._run(argv, env)
            if not res.ok:
                err = classify_helm_stderr(res.stderr, res.returncode, context=context)
                if source is None or source.registered:
                    raise err
                # helm's lines say what answered at that address: the operator reads them, the caller not.
                activity.logger.warning(
                    "%s from %s (%s) failed: %s", context, field, source.rule, err.message
                )
                raise type(err)(
                    f"{context}: fetching the chart from {field} failed (the worker's log has the reason)",
                    details=err.details,
                )
            text = res.stdout.decode("utf-8", "replace")
            return _OCI_NOISE.sub("", text) if chart.kind == "oci" else text

        # Every helm process has ended before the activity returns (a failure of one leaves none running).
        shown = await asyncio.gather(show("chart"), show("values"), show("readme"), return_exceptions=True)
        for outcome in shown:
            if isinstance(outcome, BaseException):
                raise outcome
        chart_text, values, readme = (str(text) for text in shown)
        return InspectKduResult(
            kdu_model=inp.chart, chart=helm_cli.parse_show_chart(chart_text), values=values, readme=readme
        )

    @activity.defn(name=ACTIVITY_NAMES["services"])
    @_boundary
    async def services(self, ref: ReleaseRef) -> KduServicesResult:
        """The release's Services (from its manifest) as the cluster reports them now.

        One ``kubectl get services`` per namespace the manifest uses; Services missing from the
        cluster are left out; LoadBalancers without ingress are ``pending``.
        """
        env = await self._env(ref.cluster_uuid)
        version = await self._version(env)
        argv = helm_cli.build_get_manifest_argv(
            self._settings.helm, version, release=ref.kdu_instance, namespace=_ns(ref)
        )
        res = await self._run_ok(argv, env, f"helm get manifest {ref.kdu_instance}")
        wanted: dict[str, set[str]] = {}
        for namespace, name in helm_cli.parse_manifest_services(res.stdout, _ns(ref)):
            wanted.setdefault(namespace, set()).add(name)
        found = []
        for namespace, names in sorted(wanted.items()):
            kargv = kubectl_cli.build_get_services_argv(self._settings.kubectl, namespace=namespace)
            kres = await self._run_ok(kargv, env, f"kubectl get services -n {namespace}")
            found += kubectl_cli.parse_services(kres.stdout, names=names, namespace=namespace)
        return KduServicesResult(kdu_instance=ref.kdu_instance, namespace=_ns(ref), services=found)

    @activity.defn(name=ACTIVITY_NAMES["service"])
    @_boundary
    async def service(self, inp: GetServiceInput) -> ServiceResult:
        """One Service by name as the cluster reports it now (N2VC ``get_service``); ``service`` is
        None when the namespace has no Service of that name."""
        validation.validate_get_service(inp)
        env = await self._env(inp.cluster_uuid)
        argv = kubectl_cli.build_get_services_argv(self._settings.kubectl, namespace=inp.namespace)
        res = await self._run_ok(argv, env, f"kubectl get services -n {inp.namespace}")
        found = kubectl_cli.parse_services(res.stdout, names={inp.service_name}, namespace=inp.namespace)
        return ServiceResult(service=found[0] if found else None)

    # -- mutating activities -----------------------------------------------------------------------

    @activity.defn(name=ACTIVITY_NAMES["install"])
    @_boundary
    @_reports_status
    async def install(self, inp: HelmInstallInput) -> ReleaseInfo:
        """Install the chart; idempotent for one ``operation_id``.

        Observes first: absent -> install; deployed by this operation -> return it; pending or
        failed from this operation -> uninstall (wait), then install; any other release of that
        name -> ``ReleaseNameInUse`` (non-retryable). Without ``operation_id`` every existing
        release is someone else's.

        Raises (as ApplicationError): ReleaseFailed (helm wrote a failed revision, or an atomic
        install was removed again; details revision/status/description), ReleaseNameInUse,
        InvalidInput, ChartNotFound, RenderFailed, InvalidResource, ... (classified).
        """
        ref = inp.ref
        chart = helm_cli.parse_kdu_model(inp.chart, inp.version, self._settings.charts_dir)
        await self._check_chart(chart)
        values = helm_cli.build_values_stdin(inp.values)
        secrets = helm_cli.secret_strings(inp.values)
        env = await self._env(ref.cluster_uuid)
        chart = await self._available(ref.cluster_uuid, chart)
        version = await self._version(env)
        before = await self._history(env, version, ref)
        if before:
            latest = before[-1]
            if not await self._carries_marker(env, version, ref, inp.operation_id):
                raise ReleaseNameInUse(
                    f"kdu_instance: release {ref.kdu_instance!r} already exists in namespace {_ns(ref)!r} "
                    f"(revision {latest.revision}, {latest.status}) and was not installed by this operation",
                    details={"revision": latest.revision, "status": latest.status},
                )
            # An earlier attempt's helm may still be running (a worker redeploy leaves it running):
            # wait for its outcome before judging it.
            before = await self._settle_pending(env, version, ref, before, own_timeout=inp.timeout)
        if before:
            latest = before[-1]
            if latest.status not in (
                ReleaseStatus.PENDING_INSTALL.value,
                ReleaseStatus.FAILED.value,
                ReleaseStatus.UNINSTALLING.value,
                ReleaseStatus.UNINSTALLED.value,
            ):
                activity.logger.info("release %s already installed by this operation", ref.kdu_instance)
                return await self._observe(env, version, ref)
            activity.logger.info("removing %s left %s by an earlier attempt", ref.kdu_instance, latest.status)
            await self._uninstall(env, version, ref, self._helm_timeout(inp.timeout), wait=True)
            before = []
        helm_timeout = self._helm_timeout(inp.timeout)
        argv = helm_cli.build_install_argv(
            self._settings.helm,
            version,
            release=ref.kdu_instance,
            chart=chart,
            namespace=_ns(ref),
            timeout=helm_timeout,
            atomic=inp.atomic,
            wait=inp.wait,
            create_namespace=inp.create_namespace,
            labels={**inp.labels, **op_marker(inp.operation_id)},
        )
        res = await self._run(argv, env, timeout=helm_timeout + RUNNER_MARGIN, stdin=values, secrets=secrets)
        if not res.ok:
            raise await self._failure(env, version, ref, res, before, "install", secrets)
        return helm_cli.parse_release(res.stdout).info()

    @activity.defn(name=ACTIVITY_NAMES["upgrade"])
    @_boundary
    @_reports_status
    async def upgrade(self, inp: HelmUpgradeInput) -> ReleaseInfo:
        """Upgrade the release; idempotent for one ``operation_id``.

        - latest revision newer than ``expected_revision`` and labelled by this operation:
          deployed -> return it; failed -> ``UpgradeFailed``;
        - latest revision pending (this operation's earlier attempt, or anyone's): wait while its
          helm may still run (an earlier attempt's helm left running by a worker redeploy is waited
          for and its outcome adopted); once stuck (helm gone, or older than its timeout plus a
          margin), roll back to the last deployed revision (pending-install: uninstall), then
          upgrade; ``OperationInProgress`` (retryable) if this attempt runs out of time waiting;
        - ``chart`` "" -> the chart the release runs, found in the cluster's repositories or
          the charts directory by name and version (``ChartNotFound`` otherwise).

        Raises (as ApplicationError): UpgradeFailed / UpgradeRolledBack (details revision,
        status, description, failed_revision, restored_revision), ReleaseNotFound, ... (classified).
        """
        ref = inp.ref
        values = helm_cli.build_values_stdin(inp.values, inp.set_values)
        secrets = helm_cli.secret_strings(inp.values) + helm_cli.secret_strings(inp.set_values)
        requested = (
            helm_cli.parse_kdu_model(inp.chart, inp.version, self._settings.charts_dir) if inp.chart else None
        )
        if requested is not None:
            await self._check_chart(requested)
        env = await self._env(ref.cluster_uuid)
        version = await self._version(env)
        chart = await self._available(
            ref.cluster_uuid,
            requested if requested is not None else await self._current_chart(env, version, ref, inp.version),
        )
        before = await self._history(env, version, ref)
        if not before:
            raise ReleaseNotFound(f"kdu_instance: release {ref.kdu_instance!r} not found in {_ns(ref)!r}")
        latest = before[-1]
        ours = latest.revision > inp.expected_revision and await self._carries_marker(
            env, version, ref, inp.operation_id
        )
        # A pending revision: an earlier attempt's helm that may still run (a worker redeploy leaves
        # it running), or someone else's operation. Wait for it; recover only a stuck one.
        before = await self._settle_pending(
            env, version, ref, before, own_timeout=inp.timeout if ours else None
        )
        if not before:
            raise ReleaseNotFound(f"kdu_instance: release {ref.kdu_instance!r} not found in {_ns(ref)!r}")
        latest = before[-1]
        if ours and latest.status == ReleaseStatus.DEPLOYED.value:
            activity.logger.info("release %s already upgraded by this operation", ref.kdu_instance)
            return await self._observe(env, version, ref)
        if ours and latest.status == ReleaseStatus.FAILED.value:
            details = {
                "revision": latest.revision,
                "status": latest.status,
                "description": latest.description,
            }
            raise UpgradeFailed(f"helm upgrade {ref.kdu_instance}: {latest.description}", details=details)
        if ReleaseStatus(latest.status).is_pending:
            # Stuck (its helm is gone or it outlived its timeout): restore the last deployed revision
            # first, as helm's own rollback would have.
            before = await self._recover_stuck(env, version, ref, before, inp.timeout)
            if not before:
                raise ReleaseNotFound(
                    f"kdu_instance: release {ref.kdu_instance!r} was stuck pending-install and was removed"
                )
        # A recovery's rollback (just now, or before a crash) leaves the revision it rolled back from
        # pending: mark it failed.
        before = await self._fail_stale_pending(env, version, ref, before)
        helm_timeout = self._helm_timeout(inp.timeout)
        argv = helm_cli.build_upgrade_argv(
            self._settings.helm,
            version,
            release=ref.kdu_instance,
            chart=chart,
            namespace=_ns(ref),
            timeout=helm_timeout,
            reuse_values=inp.reuse_values,
            reset_values=inp.reset_values,
            force=inp.force,
            atomic=inp.atomic,
            wait=inp.wait,
            labels=op_marker(inp.operation_id),
        )
        res = await self._run(argv, env, timeout=helm_timeout + RUNNER_MARGIN, stdin=values, secrets=secrets)
        if not res.ok:
            raise await self._failure(env, version, ref, res, before, "upgrade", secrets)
        return helm_cli.parse_release(res.stdout).info()

    async def _recover_stuck(
        self,
        env: Mapping[str, str],
        version: HelmVersion,
        ref: ReleaseRef,
        history: list[RevisionInfo],
        timeout: int,
    ) -> list[RevisionInfo]:
        """Clear a stuck pending revision: pending-install is uninstalled; pending-upgrade and
        pending-rollback are rolled back to the last deployed revision (what helm's own atomic
        rollback would have done). Only called with the release's lock held and once
        ``_settle_pending`` found no live helm for it. Returns the history afterwards ([] once
        uninstalled); the revision rolled back from is still pending in it."""
        latest = history[-1]
        if latest.status in (ReleaseStatus.PENDING_INSTALL.value, ReleaseStatus.UNINSTALLING.value):
            activity.logger.warning(
                "uninstalling %s, stuck %s at revision %s", ref.kdu_instance, latest.status, latest.revision
            )
            await self._uninstall(env, version, ref, self._helm_timeout(timeout), wait=True)
            metrics.stuck_recovered("uninstalled")
            return []
        target = _last_deployed(history[:-1])
        if target is None:
            raise OperationInProgress(
                f"release {ref.kdu_instance!r} is stuck {latest.status} with no deployed revision to restore"
            )
        activity.logger.warning(
            "rolling %s back to revision %s to clear %s at revision %s",
            ref.kdu_instance, target, latest.status, latest.revision,
        )  # fmt: skip
        res = await self._rollback(env, version, ref, target, self._helm_timeout(timeout), wait=True)
        if not res.ok:
            raise await self._failure(env, version, ref, res, history, "rollback")
        metrics.stuck_recovered("rolled_back")
        return await self._history(env, version, ref)

    async def _current_chart(
        self, env: Mapping[str, str], version: HelmVersion, ref: ReleaseRef, chart_version: str
    ) -> ChartRef:
        """The chart the release runs, as a reference helm can upgrade from."""
        argv = helm_cli.build_get_metadata_argv(
            self._settings.helm, version, release=ref.kdu_instance, namespace=_ns(ref)
        )
        meta = helm_cli.parse_get_metadata((await self._run_ok(argv, env, "helm get metadata")).stdout)
        name, want = str(meta.get("chart") or ""), chart_version or str(meta.get("version") or "")
        if self._charts is not None:
            # `helm search repo` reads the cached indexes: bring this worker's copies up to date first.
            cluster_env = await self._envs.get(ref.cluster_uuid)
            for repo in (await self._charts.sync_env(cluster_env)).configured.values():
                if not repo.oci:
                    with contextlib.suppress(ApplicationError):
                        await self._charts.ensure_chart_available(cluster_env, repo.name, name, want)
        sargv = helm_cli.build_search_repo_argv(
            self._settings.helm, version, chart_name=name, chart_version=want
        )
        sres = await self._run(sargv, env)
        # "no repositories configured" is an ordinary answer here: fall through to the charts dir.
        entries = helm_cli.parse_search_repo(sres.stdout) if sres.ok else []
        hits = [e["name"] for e in entries if e.get("name", "").endswith("/" + name)]
        if len(hits) == 1:
            return ChartRef("repo", hits[0], want, hits[0].split("/")[0])
        charts_dir = self._settings.charts_dir
        for candidate in (f"{name}-{want}.tgz", name):
            if charts_dir is not None and (charts_dir / candidate).exists():
                local = helm_cli.parse_kdu_model(candidate, "", charts_dir)
                if candidate.endswith(".tgz") or _local_chart_version(Path(local.chart)) == want:
                    return local
        raise ChartNotFound(
            f"chart: release {ref.kdu_instance!r} runs {name}-{want}, which "
            + ("several repositories provide" if len(hits) > 1 else "no configured repository provides")
            + "; pass kdu_model explicitly"
        )

    async def _fail_stale_pending(
        self, env: Mapping[str, str], version: HelmVersion, ref: ReleaseRef, history: list[RevisionInfo]
    ) -> list[RevisionInfo]:
        """Mark ``failed`` every pending revision below a latest one that is not pending.

        Helm's rollback leaves the revision it rolls back from as it was, so a recovered stuck
        upgrade would stay ``pending-upgrade`` in the history for ever (misleading whoever reads it,
        and every tool that looks for pending revisions). With the release's lock held and the latest
        revision settled, no helm writes those revisions any more. Idempotent: a retry after a crash
        finds them failed already, or marks them then. Returns the history as it is now.
        """
        if not history or ReleaseStatus(history[-1].status).is_pending:
            return history
        stale = [h for h in history[:-1] if ReleaseStatus(h.status).is_pending]
        if not stale:
            return history
        driver = env.get("HELM_DRIVER") or "secret"
        kind = {"secret": "secret", "configmap": "configmap"}.get(driver)
        if kind is None:
            activity.logger.warning("HELM_DRIVER %s: stale pending revisions left as they are", driver)
            return history
        kubectl = self._settings.kubectl
        for revision in stale:
            name = release_storage.record_name(ref.kdu_instance, revision.revision)
            get = kubectl_cli.build_get_object_argv(kubectl, kind=kind, name=name, namespace=_ns(ref))
            res = await self._run_ok(get, env, f"kubectl get {kind} {name}")
            record = helm_cli.load_json(res.stdout)
            if not isinstance(record, dict):
                raise InvalidResource(f"{kind} {name}: not an object")
            description = (
                f"kduflow: marked failed, {revision.status} with no helm running "
                f"(revision {history[-1].revision} is {history[-1].status})"
            )
            updated = release_storage.mark_record_failed(record, driver, description, time.time())
            replace = kubectl_cli.build_replace_argv(kubectl, namespace=_ns(ref))
            await self._run_ok(
                replace, env, f"kubectl replace {kind} {name}", stdin=json.dumps(updated).encode()
            )
            activity.logger.warning(
                "release %s: revision %s was %s with no helm running; marked failed",
                ref.kdu_instance, revision.revision, revision.status,
            )  # fmt: skip
            metrics.stuck_recovered("marked_failed")
        return await self._history(env, version, ref)

    @activity.defn(name=ACTIVITY_NAMES["rollback"])
    @_boundary
    @_reports_status
    async def rollback(self, inp: HelmRollbackInput) -> ReleaseInfo:
        """Roll back to the explicit ``inp.revision``; a retry finding "Rollback to N" deployed returns it.

        Raises (as ApplicationError): RollbackFailed (helm wrote a failed revision), ReleaseNotFound,
        InvalidInput (revision unknown or <= 0), ... (classified).
        """
        ref = inp.ref
        if inp.revision <= 0:
            raise InvalidInput(f"revision: must be an explicit revision > 0, got {inp.revision}")
        env = await self._env(ref.cluster_uuid)
        version = await self._version(env)
        before = await self._history(env, version, ref)
        if not before:
            raise ReleaseNotFound(f"kdu_instance: release {ref.kdu_instance!r} not found in {_ns(ref)!r}")
        if inp.revision not in {h.revision for h in before}:
            raise InvalidInput(
                f"revision: release {ref.kdu_instance!r} has no revision {inp.revision} in its history"
            )
        exited = (
            ReleaseStatus(before[-1].status).is_pending
            and bool(inp.exited_operation_id)
            and await self._carries_marker(env, version, ref, inp.exited_operation_id)
        )
        if not exited:
            # Someone's helm may still be writing a pending revision: wait while it may run.
            before = await self._settle_pending(
                env, version, ref, before,
                own_timeout=inp.timeout if _from_previous_attempt(before[-1]) else None,
            )  # fmt: skip
        if not before:
            raise ReleaseNotFound(f"kdu_instance: release {ref.kdu_instance!r} not found in {_ns(ref)!r}")
        latest = before[-1]
        if (
            latest.status == ReleaseStatus.DEPLOYED.value
            and latest.description == f"Rollback to {inp.revision}"
        ):
            return _info(ref, await self._fail_stale_pending(env, version, ref, before))
        # A pending revision left now (stuck, or written by a helm known to have exited) is cleared
        # by the rollback itself: helm rolls back from a pending revision.
        helm_timeout = self._helm_timeout(inp.timeout)
        res = await self._rollback(env, version, ref, inp.revision, helm_timeout, inp.wait)
        if not res.ok:
            raise await self._failure(env, version, ref, res, before, "rollback")
        # Rolled back from a pending revision: helm leaves that one pending.
        after = await self._fail_stale_pending(env, version, ref, await self._history(env, version, ref))
        return _info(ref, after)

    @activity.defn(name=ACTIVITY_NAMES["uninstall"])
    @_boundary
    async def uninstall(self, inp: HelmUninstallInput) -> UninstallOutcome:
        """Uninstall (purging history); an absent release is a success with ``existed=False``.

        pending-* releases are not absent: they are uninstalled too, once no helm may still be
        writing them (see ``_settle_pending``).
        """
        ref = inp.ref
        env = await self._env(ref.cluster_uuid)
        version = await self._version(env)
        before = await self._history(env, version, ref)
        if not before:
            return UninstallOutcome(
                ref.kdu_instance, _ns(ref), existed=False, status_before=ReleaseStatus.ABSENT.value
            )
        status_before = before[-1].status
        # A pending release is removed too, but not under a helm that may still be writing it.
        await self._settle_pending(
            env, version, ref, before, own_timeout=inp.timeout if _from_previous_attempt(before[-1]) else None
        )
        await self._uninstall(env, version, ref, self._helm_timeout(inp.timeout), inp.wait)
        return UninstallOutcome(ref.kdu_instance, _ns(ref), existed=True, status_before=status_before)

    # -- helpers ---------------------------------------------------------------------------------

    def _scratch_env(self) -> dict[str, str]:
        """A private helm environment for cluster-less inspection (``--repo`` or OCI charts)."""
        root = Path(self._settings.state_dir) / "inspect"
        for sub in (".config/helm", ".cache/helm", ".local/share/helm"):
            (root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        return {
            "HOME": str(root),
            "HELM_CONFIG_HOME": str(root / ".config/helm"),
            "HELM_CACHE_HOME": str(root / ".cache/helm"),
            "HELM_DATA_HOME": str(root / ".local/share/helm"),
            "NO_COLOR": "1",
            "PATH": os.pathsep.join(
                dict.fromkeys([str(Path(self._settings.helm).parent), "/usr/local/bin", "/usr/bin", "/bin"])
            ),
        }


def _revision_info(release: StoredRelease) -> RevisionInfo:
    """A stored revision as ``helm history -o json`` shows it."""
    return RevisionInfo(
        revision=release.version,
        status=release.status,
        chart=release.chart,
        app_version=release.app_version,
        description=release.description,
        updated=release.last_deployed,
    )


def _summary(release: StoredRelease) -> ReleaseSummary:
    """A release's latest stored revision as ``helm list -o json`` shows it."""
    return ReleaseSummary(
        name=release.name,
        namespace=release.namespace,
        revision=release.version,
        status=release.status,
        chart=release.chart,
        app_version=release.app_version,
        updated=release.last_deployed,
    )


def _info(ref: ReleaseRef, history: Sequence[RevisionInfo]) -> ReleaseInfo:
    if not history:
        return ReleaseInfo(ref.kdu_instance, _ns(ref), status=ReleaseStatus.ABSENT.value)
    latest = history[-1]
    return ReleaseInfo(
        kdu_instance=ref.kdu_instance,
        namespace=_ns(ref),
        revision=latest.revision,
        status=latest.status,
        description=latest.description,
        chart=latest.chart,
        app_version=latest.app_version,
    )


def _time_left() -> float | None:
    """Seconds until this activity attempt's start-to-close deadline (None outside an activity)."""
    if not activity.in_activity():
        return None
    info = activity.info()
    # The SDK's ActivityEnvironment (tests) reports a start at the epoch: no real deadline.
    if info.start_to_close_timeout is None or info.started_time is None or info.started_time.timestamp() <= 0:
        return None
    deadline = info.started_time.timestamp() + info.start_to_close_timeout.total_seconds()
    if info.schedule_to_close_timeout and info.scheduled_time:
        overall = info.scheduled_time.timestamp() + info.schedule_to_close_timeout.total_seconds()
        deadline = min(deadline, overall)
    return deadline - time.time()


def _previous_process() -> dict[str, Any] | None:
    """The process an earlier attempt of this activity reported in its last heartbeat, if any."""
    if not activity.in_activity():
        return None
    for detail in activity.info().heartbeat_details:
        if isinstance(detail, Mapping) and isinstance(detail.get("pid"), int) and detail.get("host"):
            return dict(detail)
    return None


def _process_alive(process: Mapping[str, Any] | None) -> bool | None:
    """Whether an earlier attempt's process still runs: None when it cannot be known (no record, or
    another host), False when its pid is gone or now runs something else."""
    if not process or process.get("host") != runner_host():
        return None
    pid = int(process["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = _process_start_time(pid)
    if started is None:
        return None
    if started == -1.0:
        return False  # exited, not yet reaped
    # A pid reused by a process started after the recorded one is not that process.
    return started <= float(process.get("started_at", 0)) + 5


def _process_start_time(pid: int) -> float | None:
    """Epoch seconds ``pid`` started (-1.0: a zombie; None: unknown), from /proc (Linux)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        with open("/proc/stat", "rb") as handle:
            boot = next(float(line.split()[1]) for line in handle if line.startswith(b"btime "))
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    if fields[0] == b"Z":
        return -1.0
    # Field 22 of /proc/<pid>/stat (index 19 after the command name): start time in clock ticks.
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def runner_host() -> str:
    from activities.runner import HOST

    return HOST


def _age_seconds(updated: str) -> float | None:
    """Seconds since helm's ``updated`` time of a revision (RFC 3339, nanoseconds), None if unparsable."""
    text = updated.strip()
    if not text:
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return time.time() - when.timestamp()


def _from_previous_attempt(latest: RevisionInfo) -> bool:
    """Whether a pending revision was written by this activity's earlier attempt: it is no older
    than the process that attempt reported. Used where helm records no operation label (rollback)."""
    previous = _previous_process()
    age = _age_seconds(latest.updated)
    if previous is None or age is None:
        return False
    return time.time() - age >= float(previous.get("started_at", 0)) - 2


def _ns(ref: ReleaseRef) -> str:
    return ref.namespace or "default"


def _last_deployed(history: Iterable[RevisionInfo]) -> int | None:
    """Newest revision that was live at some point (deployed, or superseded by a later one)."""
    live = {ReleaseStatus.DEPLOYED.value, ReleaseStatus.SUPERSEDED.value}
    revisions = [h.revision for h in history if h.status in live]
    return max(revisions) if revisions else None


def _local_chart_version(path: Path) -> str:
    import yaml

    try:
        return str((yaml.safe_load((path / "Chart.yaml").read_text()) or {}).get("version") or "")
    except (OSError, yaml.YAMLError):
        return ""


def _inspect_chart(inp: InspectInput, charts_dir: Path | None) -> ChartRef:
    if not inp.repo_url:
        return helm_cli.parse_kdu_model(inp.chart, inp.version, charts_dir)
    name, _, suffix = inp.chart.partition(":")
    name = name.rsplit("/", 1)[-1]  # "stable/x" with an explicit repo URL: the chart is "x"
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", name):
        raise InvalidInput(f"kdu_model: {inp.chart!r} is not a chart name to look up in repo_url")
    return ChartRef("repo", name, inp.version or helm_cli.check_chart_version(suffix, "kdu_model"))
