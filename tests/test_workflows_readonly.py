"""KduStatus, KduInstances, KduServices, KduValues, InspectKdu against mocked ``kdu.*`` activities."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from activities.models import InspectKduInput, KduInstancesInput, KduRefInput, ReleaseSummary
from tests.support.workflows import FakeCluster, KduTestEnv, kdu_test_env
from workflows import InspectKdu, KduInstances, KduServices, KduStatus, KduValues


@pytest_asyncio.fixture(scope="module")
async def kdu(ts_env) -> AsyncIterator[KduTestEnv]:
    async with kdu_test_env(ts_env.client) as env:
        yield env


@pytest.fixture
def cluster(kdu: KduTestEnv) -> FakeCluster:
    return kdu.fresh()


async def fails_with(coro, expected_type: str) -> ApplicationError:
    with pytest.raises(WorkflowFailureError) as info:
        await coro
    cause = info.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == expected_type, repr(cause)
    return cause


async def test_kdu_status_reads_without_writing(kdu, cluster):
    cluster.add_release("web", "prod", ["superseded", "deployed"])
    result = await kdu.run(KduStatus.run, KduRefInput("c1", "web", "prod"))
    assert (result.revision, result.status, result.ready) == (2, "deployed", True)
    (call,) = cluster.calls["kdu.status"]
    assert call.db_dict is None and call.operation == ""


async def test_kdu_status_of_release_absent_everywhere_is_absent_not_an_error(kdu, cluster):
    result = await kdu.run(KduStatus.run, KduRefInput("c1", "web", ""))
    assert (result.status, result.namespace) == ("absent", "")
    assert "not found in any namespace" in result.message
    assert cluster.calls["kdu.status"] == []


async def test_kdu_status_refuses_ambiguous_namespace(kdu, cluster):
    cluster.add_release("web", "a", ["deployed"])
    cluster.extra_listed = [
        ReleaseSummary("web", "b", 1, "deployed"),
        ReleaseSummary("other", "c", 1, "deployed"),
    ]
    err = await fails_with(kdu.run(KduStatus.run, KduRefInput("c1", "web", "")), "InvalidInput")
    assert err.message == "invalid namespace: release web exists in namespaces a, b: name one"
    assert cluster.calls["kdu.status"] == []


async def test_kdu_instances_lists_every_release_sorted(kdu, cluster):
    cluster.add_release("zeta", "a", ["deployed"])
    cluster.add_release("alpha", "b", ["pending-install"])
    cluster.add_release("beta", "a", ["failed"])
    result = await kdu.run(KduInstances.run, KduInstancesInput("c1"))
    assert [(r.namespace, r.name, r.status) for r in result.releases] == [
        ("a", "beta", "failed"),
        ("a", "zeta", "deployed"),
        ("b", "alpha", "pending-install"),
    ]
    assert [q.name for q in cluster.calls["kdu.list_releases"]] == [""]


async def test_kdu_services_resolves_namespace_then_reads(kdu, cluster):
    cluster.add_release("web", "team", ["deployed"])
    result = await kdu.run(KduServices.run, KduRefInput("c1", "web", ""))
    assert [s.name for s in result.services] == ["web-svc"]
    assert cluster.calls["kdu.services"][0].namespace == "team"


async def test_kdu_services_of_absent_release_is_release_not_found(kdu, cluster):
    err = await fails_with(kdu.run(KduServices.run, KduRefInput("c1", "web", "")), "ReleaseNotFound")
    assert "web" in err.message and cluster.calls["kdu.services"] == []


@pytest.mark.parametrize("all_values, expected", [(False, {"a": 1}), (True, {"a": 1, "b": 2})])
async def test_kdu_values_user_or_all(kdu, cluster, all_values, expected):
    cluster.add_release("web", "prod", ["deployed"], user_values={"a": 1}, chart_values={"a": 0, "b": 2})
    result = await kdu.run(KduValues.run, KduRefInput("c1", "web", "prod", all_values=all_values))
    assert result.values == expected and (result.kdu_instance, result.namespace) == ("web", "prod")


async def test_kdu_values_activity_failure_keeps_its_type(kdu, cluster):
    err = await fails_with(
        kdu.run(KduValues.run, KduRefInput("c1", "web", "prod")),
        "ReleaseNotFound",
    )
    assert err.message.startswith("reading the values of prod/web: ")


async def test_inspect_kdu_splits_version_and_keeps_model(kdu, cluster):
    result = await kdu.run(InspectKdu.run, InspectKduInput("stable/nginx:1.2.3", cluster_uuid="c1"))
    (call,) = cluster.calls["kdu.inspect"]
    assert (call.chart, call.version, call.cluster_uuid, call.repo_url) == ("stable/nginx", "1.2.3", "c1", "")
    assert result.kdu_model == "stable/nginx:1.2.3" and result.chart == {"name": "nginx"}


async def test_inspect_kdu_chart_not_found_is_not_returned_as_data(kdu, cluster):
    cluster.errors["kdu.inspect"] = ApplicationError(
        'chart "nope" not found', type="ChartNotFound", non_retryable=True
    )
    err = await fails_with(
        kdu.run(
            InspectKdu.run,
            InspectKduInput("nope", repo_url="https://charts.example.com"),
        ),
        "ChartNotFound",
    )
    assert err.message == 'inspecting chart nope: chart "nope" not found'


@pytest.mark.parametrize(
    "run, inp, field",
    [
        pytest.param(
            KduStatus.run, KduRefInput("c1", "-web", "prod"), "kdu_instance", id="status: flag release"
        ),
        pytest.param(
            KduInstances.run, KduInstancesInput(".."), "cluster_uuid", id="instances: dot-dot cluster"
        ),
        pytest.param(
            KduServices.run, KduRefInput("c1", "web", "Prod"), "namespace", id="services: bad namespace"
        ),
        pytest.param(
            KduValues.run, KduRefInput("c/1", "web", "prod"), "cluster_uuid", id="values: slash cluster"
        ),
        pytest.param(
            InspectKdu.run, InspectKduInput("/etc/passwd"), "kdu_model", id="inspect: absolute path"
        ),
    ],
)
async def test_readonly_workflows_refuse_invalid_input_before_any_activity(kdu, cluster, run, inp, field):
    err = await fails_with(kdu.run(run, inp), "InvalidInput")
    assert err.message.startswith(f"invalid {field}:")
    assert cluster.helm_calls == []
