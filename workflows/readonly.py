"""The read-only KDU workflows: KduStatus, KduInstances, KduServices, KduValues, InspectKdu.

They validate, resolve the namespace when none is given (N2VC's ``status_kdu`` looked it up too,
but with ``helm list`` without ``--all``, which misses pending and failed releases), and run one
short activity with a few retries on retryable errors. They never write to MongoDB (``kdu.status``
is called without ``db_dict``), so they are safe to run at any time, even while a mutating workflow
holds the release.

An activity failure is a failure, never data: a missing release is a non-retryable
``ReleaseNotFound``, not helm's error text returned as values as N2VC did.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from contract.models import (
        ACTIVITY_NAMES,
        GetScaleCountInput,
        GetServiceInput,
        GetValuesInput,
        HistoryResult,
        InspectInput,
        InspectKduInput,
        InspectKduResult,
        KduInstancesInput,
        KduInstancesResult,
        KduRefInput,
        KduResult,
        KduServicesResult,
        KduStatusResult,
        KduValuesResult,
        ListReleasesInput,
        ListReleasesResult,
        ReleaseRef,
        ReleaseStatus,
        ScaleCountResult,
        ServiceResult,
        StatusInput,
        ValuesResult,
    )

from contract import validation
from workflows import common, scale
from workflows.decoding import decode_input

T = TypeVar("T", bound=KduResult)

FMT_NOT_FOUND_ANYWHERE = "release {name} not found in any namespace of cluster {cluster}"


async def _ref(inp: KduRefInput) -> ReleaseRef | None:
    namespace = await common.resolve_namespace(inp.cluster_uuid, inp.kdu_instance, inp.namespace)
    if namespace is None:
        return None
    return ReleaseRef(cluster_uuid=inp.cluster_uuid, kdu_instance=inp.kdu_instance, namespace=namespace)


async def _with_release(ref: ReleaseRef, result: T) -> T:
    """``result`` completed with the release's latest revision, status, description and chart."""
    history = await common.call_read(
        ACTIVITY_NAMES["history"],
        ref,
        HistoryResult,
        f"reading the history of {ref.namespace}/{ref.kdu_instance}",
    )
    if not history.entries:
        return replace(result, status=ReleaseStatus.ABSENT.value)
    latest = max(history.entries, key=lambda e: e.revision)
    return replace(
        result,
        revision=latest.revision,
        status=latest.status,
        description=latest.description,
        chart=latest.chart,
        app_version=latest.app_version,
    )


def _not_found(inp: KduRefInput) -> ApplicationError:
    return ApplicationError(
        FMT_NOT_FOUND_ANYWHERE.format(name=inp.kdu_instance, cluster=inp.cluster_uuid),
        type="ReleaseNotFound",
        non_retryable=True,
    )


@workflow.defn(name="KduStatus")
class KduStatus:
    """The release as stored by helm plus the readiness of its live resources."""

    @workflow.run
    async def run(self, raw: Any = None, *extra: Any) -> KduStatusResult:
        """Returns the observation; status ``absent`` when the release does not exist (not an error,
        so a poller can watch an uninstall finish). Raises non-retryable ``InvalidInput``,
        ``ClusterNotFound``; retryable cluster errors are retried a few times first.
        """
        inp = decode_input(KduRefInput, raw, extra)
        validation.validate_ref(inp)
        ref = await _ref(inp)
        if ref is None:
            return KduStatusResult(
                kdu_instance=inp.kdu_instance,
                namespace="",
                status=ReleaseStatus.ABSENT.value,
                message=FMT_NOT_FOUND_ANYWHERE.format(name=inp.kdu_instance, cluster=inp.cluster_uuid),
            )
        return await common.call_read(
            ACTIVITY_NAMES["status"],
            StatusInput(ref=ref),
            KduStatusResult,
            f"reading the status of {ref.namespace}/{ref.kdu_instance}",
            **common.status_options(),
        )


@workflow.defn(name="KduInstances")
class KduInstances:
    """Every release on the cluster, all namespaces and all statuses (pending ones included)."""

    @workflow.run
    async def run(self, raw: Any = None, *extra: Any) -> KduInstancesResult:
        """Returns the releases sorted by namespace and name. Raises non-retryable ``InvalidInput``,
        ``ClusterNotFound``."""
        inp = decode_input(KduInstancesInput, raw, extra)
        validation.validate_instances(inp)
        result = await common.call_read(
            ACTIVITY_NAMES["list_releases"],
            ListReleasesInput(cluster_uuid=inp.cluster_uuid),
            ListReleasesResult,
            f"listing the releases of cluster {inp.cluster_uuid}",
        )
        return KduInstancesResult(releases=sorted(result.releases, key=lambda r: (r.namespace, r.name)))


@workflow.defn(name="KduServices")
class KduServices:
    """The Services of a release's manifest with their live addresses (N2VC ``get_services``)."""

    @workflow.run
    async def run(self, raw: Any = None, *extra: Any) -> KduServicesResult:
        """Returns the services (LoadBalancers still pending are flagged, not an error; N2VC crashed on them).
        Raises non-retryable ``InvalidInput``, ``ReleaseNotFound``, ``ClusterNotFound``."""
        inp = decode_input(KduRefInput, raw, extra)
        validation.validate_ref(inp)
        ref = await _ref(inp)
        if ref is None:
            raise _not_found(inp)
        services = await common.call_read(
            ACTIVITY_NAMES["services"],
            ref,
            KduServicesResult,
            f"reading the services of {ref.namespace}/{ref.kdu_instance}",
        )
        return await _with_release(ref, services)


@workflow.defn(name="KduValues")
class KduValues:
    """The release's user-supplied values, or all computed values with ``all_values``."""

    @workflow.run
    async def run(self, raw: Any = None, *extra: Any) -> KduValuesResult:
        """Returns the values (never None). Raises non-retryable ``InvalidInput``,
        ``ReleaseNotFound``, ``ClusterNotFound``."""
        inp = decode_input(KduRefInput, raw, extra)
        validation.validate_ref(inp)
        ref = await _ref(inp)
        if ref is None:
            raise _not_found(inp)
        result = await common.call_read(
            ACTIVITY_NAMES["get_values"],
            GetValuesInput(ref=ref, all_values=inp.all_values),
            ValuesResult,
            f"reading the values of {ref.namespace}/{ref.kdu_instance}",
        )
        values = KduValuesResult(
            kdu_instance=ref.kdu_instance, namespace=ref.namespace, values=result.values or {}
        )
        return await _with_release(ref, values)


@workflow.defn(name="InspectKdu")
class InspectKdu:
    """A chart's Chart.yaml, values.yaml and README (N2VC ``inspect_kdu``/``values_kdu``/``help_kdu``)."""

    @workflow.run
    async def run(self, raw: Any = None, *extra: Any) -> InspectKduResult:
        """Returns the chart metadata. ``repo/chart`` is resolved with the cluster's repositories
        (N2VC used none and could not resolve repository charts). Raises non-retryable
        ``InvalidInput``, ``ChartNotFound``, ``RepoNotFound``, ``ClusterNotFound``."""
        inp = decode_input(InspectKduInput, raw, extra)
        chart = validation.validate_inspect(inp)
        result = await common.call_read(
            ACTIVITY_NAMES["inspect"],
            InspectInput(
                cluster_uuid=inp.cluster_uuid, chart=chart.chart, version=chart.version, repo_url=inp.repo_url
            ),
            InspectKduResult,
            f"inspecting chart {inp.kdu_model}",
            **common.read_options(common.INSPECT_TIMEOUT),
        )
        # Report the model as the caller wrote it, whatever the activity echoes.
        result.kdu_model = inp.kdu_model
        return result


def _count(value: Any, path: str) -> int:
    """A replica count as helm values hold it (an integer, or an integer in a string: N2VC's int())."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise ApplicationError(
        f"the replica key {path} does not hold a count",
        {"replica_key": path},
        type=scale.REPLICA_KEY_NOT_FOUND,
        non_retryable=True,
    )


@workflow.defn(name="GetScaleCount")
class GetScaleCount:
    """The replica count of a release's resource (N2VC ``get_scale_count``), read from the release's
    values with ScaleKdu's replica-key detection: what ScaleKdu would change, and its value now."""

    @workflow.run
    async def run(self, raw: Any = None, *extra: Any) -> ScaleCountResult:
        """Returns the key, its count and where it was found (user or chart values). Raises
        non-retryable ``InvalidInput``, ``ReleaseNotFound``, ``ReplicaKeyNotFound``,
        ``ReplicaKeyAmbiguous``, ``ClusterNotFound``."""
        inp = decode_input(GetScaleCountInput, raw, extra)
        validation.validate_get_scale_count(inp)
        ref_input = KduRefInput(inp.cluster_uuid, inp.kdu_instance, inp.namespace)
        ref = await _ref(ref_input)
        if ref is None:
            raise _not_found(ref_input)
        where = f"{ref.namespace}/{ref.kdu_instance}"
        user = await common.call_read(
            ACTIVITY_NAMES["get_values"], GetValuesInput(ref=ref, all_values=False), ValuesResult,
            f"reading the values of {where}",
        )  # fmt: skip
        computed = await common.call_read(
            ACTIVITY_NAMES["get_values"], GetValuesInput(ref=ref, all_values=True), ValuesResult,
            f"reading the computed values of {where}",
        )  # fmt: skip
        key = scale.find_replica_key(user.values, computed.values, inp.resource_name)
        return ScaleCountResult(
            kdu_instance=ref.kdu_instance,
            namespace=ref.namespace,
            replica_key=key.path,
            count=_count(key.current, key.path),
            source=key.source,
        )


@workflow.defn(name="GetService")
class GetService:
    """One Service of a namespace by name (N2VC ``get_service``), with its live addresses."""

    @workflow.run
    async def run(self, raw: Any = None, *extra: Any) -> ServiceResult:
        """Returns the Service, or ``service: null`` when there is none of that name. Raises
        non-retryable ``InvalidInput``, ``ClusterNotFound``."""
        inp = decode_input(GetServiceInput, raw, extra)
        validation.validate_get_service(inp)
        return await common.call_read(
            ACTIVITY_NAMES["service"], inp, ServiceResult,
            f"reading service {inp.service_name} in {inp.namespace} of cluster {inp.cluster_uuid}",
        )  # fmt: skip
