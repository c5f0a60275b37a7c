"""InstallKdu, UpgradeKdu, RollbackKdu, ScaleKdu, UninstallKdu against mocked ``kdu.*`` activities."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.worker import Replayer

from activities.models import (
    DbDict,
    InstallKduInput,
    RollbackKduInput,
    ScaleKduInput,
    UninstallKduInput,
    UpgradeKduInput,
)
from tests.support.workflows import FakeCluster, KduTestEnv, kdu_test_env
from workflows import KDU_WORKFLOWS, InstallKdu, RollbackKdu, ScaleKdu, UninstallKdu, UpgradeKdu


@pytest_asyncio.fixture(scope="module")
async def kdu(ts_env) -> AsyncIterator[KduTestEnv]:
    async with kdu_test_env(ts_env.client) as env:
        yield env


@pytest.fixture
def cluster(kdu: KduTestEnv) -> FakeCluster:
    return kdu.fresh()


DB = DbDict(collection="nsrs", filter={"_id": "ns-1"}, path="_admin.deployed.K8s.0")
RELEASE_FAILED = ApplicationError(
    "helm upgrade failed: timed out waiting for the condition", type="ReleaseFailed"
)


async def fails_with(coro, expected_type: str) -> ApplicationError:
    """Await a workflow run expected to fail; return its ApplicationError after checking the type."""
    with pytest.raises(WorkflowFailureError) as info:
        await coro
    cause = info.value.cause
    assert isinstance(cause, ApplicationError), repr(cause)
    assert cause.type == expected_type, f"{cause.type}: {cause.message}"
    assert cause.non_retryable
    return cause


# ------------------------------------------------------------------------------------------------
# InstallKdu
# ------------------------------------------------------------------------------------------------


async def test_install_kdu_success_writes_final_status_and_returns_release(kdu, cluster):
    inp = InstallKduInput(
        cluster_uuid="c1",
        kdu_model="stable/nginx:1.2.3",
        kdu_instance="web",
        namespace="prod",
        params={"replicaCount": 2},
        db_dict=DB,
        labels={"osm.etsi.org/ns-id": "ns-1"},
    )
    result = await kdu.run(InstallKdu.run, inp)

    assert (result.kdu_instance, result.namespace, result.revision, result.status) == (
        "web",
        "prod",
        1,
        "deployed",
    )
    assert result.ready is True
    (helm,) = cluster.calls["kdu.install"]
    # The ":version" suffix goes to --version, not into the chart argument.
    assert (helm.chart, helm.version, helm.atomic, helm.wait) == ("stable/nginx", "1.2.3", True, True)
    assert helm.values == {"replicaCount": 2} and helm.labels == {"osm.etsi.org/ns-id": "ns-1"}
    assert helm.operation_id.endswith("/install")
    # Name given: no name generation, so no list_releases.
    assert cluster.calls["kdu.list_releases"] == []
    # The install activity reported status itself and wrote the final status: no poller activity,
    # no kdu.status after it.
    (report,) = cluster.reports
    assert (report.db_dict, report.operation, report.final_phase) == (DB, "install", "completed")
    assert report.seq_base > 0
    assert cluster.calls["kdu.poll_status"] == [] and cluster.calls["kdu.status"] == []
    (final,) = cluster.final_writes
    assert (final.operation, final.phase, final.error, final.db_dict) == ("install", "completed", "", DB)


async def test_install_kdu_writes_the_final_status_itself_when_the_activity_could_not(kdu, cluster):
    cluster.final_report_fails = True
    inp = InstallKduInput(cluster_uuid="c1", kdu_model="stable/nginx", kdu_instance="web", db_dict=DB)
    result = await kdu.run(InstallKdu.run, inp)
    assert result.ready is True
    (final,) = cluster.calls["kdu.status"]
    assert (final.operation, final.phase) == ("install", "completed")


async def test_install_kdu_without_db_dict_runs_no_poller_and_no_status_write(kdu, cluster):
    result = await kdu.run(
        InstallKdu.run,
        InstallKduInput(cluster_uuid="c1", kdu_model="mychart", kdu_instance="a1"),
    )
    assert result.namespace == "default"
    assert cluster.calls["kdu.poll_status"] == [] and cluster.calls["kdu.status"] == []
    assert result.ready is None


async def test_install_kdu_atomic_failure_writes_final_status_then_fails(kdu, cluster):
    cluster.errors["kdu.install"] = ApplicationError(
        "release web failed, and has been uninstalled due to atomic being set",
        {"revision": 1},
        type="ReleaseFailed",
    )
    inp = InstallKduInput(cluster_uuid="c1", kdu_model="stable/nginx", kdu_instance="web", db_dict=DB)

    err = await fails_with(kdu.run(InstallKdu.run, inp), "ReleaseFailed")

    assert "install of stable/nginx as default/web failed" in err.message
    assert "helm removed the failed release (atomic)" in err.message
    assert list(err.details) == [{"revision": 1}]
    assert len(cluster.reports) == 1
    (final,) = cluster.final_writes
    assert (final.operation, final.phase) == ("install", "failed")
    assert "uninstalled due to atomic" in final.error


async def test_install_kdu_non_atomic_failure_says_release_is_left(kdu, cluster):
    cluster.errors["kdu.install"] = ApplicationError("boom", type="ReleaseFailed")
    inp = InstallKduInput(cluster_uuid="c1", kdu_model="stable/nginx", kdu_instance="web", atomic=False)
    err = await fails_with(kdu.run(InstallKdu.run, inp), "ReleaseFailed")
    assert "left in place (atomic=false)" in err.message
    assert cluster.releases["web"].latest.status == "failed"


async def test_install_kdu_failure_before_helm_wrote_anything_claims_no_removal(kdu, cluster):
    cluster.errors["kdu.install"] = ApplicationError(
        "chart nope not found", type="ChartNotFound", non_retryable=True
    )
    inp = InstallKduInput(cluster_uuid="c1", kdu_model="stable/nope", kdu_instance="web")
    err = await fails_with(kdu.run(InstallKdu.run, inp), "ChartNotFound")
    assert err.message == "install of stable/nope as default/web failed: chart nope not found"


async def test_install_kdu_generates_n2vc_name_and_skips_a_taken_one_deterministically(kdu, cluster):
    cluster.taken_first_queries = 1  # the first generated name "exists" somewhere on the cluster
    inp = InstallKduInput(cluster_uuid="c1", kdu_model="stable/openldap:1.2.2")
    handle = await kdu.start(InstallKdu.run, inp)
    result = await handle.result()
    history = await handle.fetch_history()

    first, second = (q.name for q in cluster.calls["kdu.list_releases"])
    assert first != second
    for name in (first, second):
        assert re.fullmatch(r"stable-openldap-1-2-2-\d{10}", name), name
    assert result.kdu_instance == second
    assert cluster.calls["kdu.install"][0].ref.kdu_instance == second
    # workflow.random() makes the names part of the deterministic replay.
    await Replayer(workflows=KDU_WORKFLOWS).replay_workflow(history)


async def test_install_kdu_gives_up_after_bounded_name_attempts(kdu, cluster):
    cluster.taken_first_queries = 100
    inp = InstallKduInput(cluster_uuid="c1", kdu_model="stable/nginx")
    err = await fails_with(kdu.run(InstallKdu.run, inp), "ReleaseNameInUse")
    assert len(cluster.calls["kdu.list_releases"]) == 5
    assert "pass kdu_instance explicitly" in err.message
    assert cluster.calls["kdu.install"] == []


async def test_install_kdu_cancellation_reaches_helm_stops_poller_and_writes_status(kdu, cluster):
    cluster.block_install = True
    inp = InstallKduInput(cluster_uuid="c1", kdu_model="stable/nginx", kdu_instance="web", db_dict=DB)
    handle = await kdu.start(InstallKdu.run, inp)
    await asyncio.wait_for(cluster.install_started.wait(), 20)
    await handle.cancel()
    with pytest.raises(WorkflowFailureError) as info:
        await handle.result()
    description = await handle.describe()

    assert isinstance(info.value.cause, CancelledError)
    assert description.status == WorkflowExecutionStatus.CANCELED
    # WAIT_CANCELLATION_COMPLETED: the workflow ended only after helm's activity saw the cancel.
    assert cluster.install_saw_cancel
    (final,) = cluster.final_writes
    assert (final.operation, final.phase) == ("install", "cancelled")


# ------------------------------------------------------------------------------------------------
# UpgradeKdu
# ------------------------------------------------------------------------------------------------


def _upgrade(**kw) -> UpgradeKduInput:
    base = {"cluster_uuid": "c1", "kdu_instance": "web", "namespace": "prod", "db_dict": DB}
    base.update(kw)
    return UpgradeKduInput(**base)


async def test_upgrade_kdu_success(kdu, cluster):
    cluster.add_release("web", "prod", ["superseded", "deployed"], user_values={"a": 1})
    result = await kdu.run(
        UpgradeKdu.run,
        _upgrade(kdu_model="stable/nginx", version="2.0.0", params={"b": 2}),
    )
    assert (result.revision, result.status, result.restored_revision) == (3, "deployed", 0)
    (helm,) = cluster.calls["kdu.upgrade"]
    # The workflow owns the rollback; helm still waits for readiness.
    assert (helm.atomic, helm.wait, helm.expected_revision) == (False, True, 2)
    assert (helm.chart, helm.version, helm.reuse_values) == ("stable/nginx", "2.0.0", True)
    assert cluster.releases["web"].user_values == {"a": 1, "b": 2}
    assert cluster.calls["kdu.rollback"] == []
    assert [s.phase for s in cluster.final_writes] == ["completed"]
    assert [r.operation for r in cluster.reports] == ["upgrade"]


async def test_upgrade_kdu_reset_values_wins_over_default_reuse(kdu, cluster):
    cluster.add_release("web", "prod", ["deployed"], user_values={"a": 1})
    await kdu.run(UpgradeKdu.run, _upgrade(reset_values=True, params={"b": 2}))
    (helm,) = cluster.calls["kdu.upgrade"]
    assert (helm.reuse_values, helm.reset_values, helm.chart) == (False, True, "")


async def test_upgrade_kdu_failure_rolls_back_to_recorded_deployed_revision(kdu, cluster):
    cluster.add_release("web", "prod", ["superseded", "deployed"])
    cluster.errors["kdu.upgrade"] = RELEASE_FAILED

    err = await fails_with(kdu.run(UpgradeKdu.run, _upgrade()), "UpgradeRolledBack")

    (rollback,) = cluster.calls["kdu.rollback"]
    assert rollback.revision == 2  # the recorded deployed revision, never 0 / "previous"
    assert rollback.wait
    assert err.details[0] == {"failed_revision": 3, "restored_revision": 2, "revision": 4}
    assert "failed at revision 3" in err.message and "rolled back to revision 2" in err.message
    assert [e.status for e in cluster.releases["web"].history] == [
        "superseded",
        "superseded",
        "failed",
        "deployed",
    ]
    final = cluster.final_writes[-1]
    assert (final.operation, final.phase) == ("upgrade", "rolled-back")
    assert "timed out waiting" in final.error
    # The upgrade and the rollback reported status while they ran; only the workflow wrote the
    # final status (the rollback's report asks for no final write), after both.
    reports = [(r.operation, r.final_phase) for r in cluster.reports]
    assert reports == [("upgrade", "completed"), ("upgrade", "")]
    assert cluster.reports[0].seq_base <= cluster.reports[1].seq_base <= final.seq_base
    assert len(cluster.final_writes) == 1


async def test_upgrade_kdu_rollback_target_skips_failed_revisions(kdu, cluster):
    # A previous non-atomic failure (4) left revision 3 deployed; "previous" would be the failed 4.
    cluster.add_release("web", "prod", ["superseded", "superseded", "deployed", "failed"])
    cluster.errors["kdu.upgrade"] = RELEASE_FAILED
    err = await fails_with(kdu.run(UpgradeKdu.run, _upgrade()), "UpgradeRolledBack")
    assert cluster.calls["kdu.rollback"][0].revision == 3
    assert err.details[0]["failed_revision"] == 5


async def test_upgrade_kdu_non_atomic_failure_leaves_failed_revision(kdu, cluster):
    cluster.add_release("web", "prod", ["superseded", "deployed"])
    cluster.errors["kdu.upgrade"] = RELEASE_FAILED
    err = await fails_with(kdu.run(UpgradeKdu.run, _upgrade(atomic=False)), "UpgradeFailed")
    assert cluster.calls["kdu.rollback"] == []
    assert err.details[0] == {"failed_revision": 3}
    assert "revision 3 stays in place" in err.message
    assert cluster.final_writes[-1].phase == "failed"


async def test_upgrade_kdu_rollback_failure_reports_both_revisions(kdu, cluster):
    cluster.add_release("web", "prod", ["superseded", "deployed"])
    cluster.errors["kdu.upgrade"] = RELEASE_FAILED
    cluster.errors["kdu.rollback"] = ApplicationError(
        "rollback: no such revision", type="HelmError", non_retryable=True
    )
    err = await fails_with(kdu.run(UpgradeKdu.run, _upgrade()), "RollbackFailed")
    assert err.details[0] == {"failed_revision": 3, "rollback_revision": 2}
    assert "rollback to revision 2 failed too" in err.message
    assert cluster.final_writes[-1].phase == "failed"


async def test_upgrade_kdu_failure_without_new_revision_keeps_cause_type_and_does_not_roll_back(kdu, cluster):
    cluster.add_release("web", "prod", ["deployed"])
    cluster.errors["kdu.upgrade"] = ApplicationError(
        "chart not found", type="ChartNotFound", non_retryable=True
    )
    err = await fails_with(
        kdu.run(UpgradeKdu.run, _upgrade(kdu_model="stable/nope")),
        "ChartNotFound",
    )
    assert "unchanged at revision 1" in err.message
    assert cluster.calls["kdu.rollback"] == []


async def test_upgrade_kdu_absent_release_is_release_not_found(kdu, cluster):
    err = await fails_with(kdu.run(UpgradeKdu.run, _upgrade()), "ReleaseNotFound")
    assert "web" in err.message
    assert cluster.calls["kdu.upgrade"] == []


async def test_upgrade_kdu_refuses_pending_release(kdu, cluster):
    cluster.add_release("web", "prod", ["deployed", "pending-upgrade"])
    err = await fails_with(kdu.run(UpgradeKdu.run, _upgrade()), "OperationInProgress")
    assert "pending-upgrade" in err.message
    assert cluster.calls["kdu.upgrade"] == []


@pytest.mark.parametrize("atomic", [True, False])
async def test_upgrade_kdu_cancellation_stops_helm_and_compensates_when_atomic(kdu, cluster, atomic):
    cluster.add_release("web", "prod", ["superseded", "deployed"])
    cluster.block_upgrade = True
    handle = await kdu.start(UpgradeKdu.run, _upgrade(atomic=atomic))
    await asyncio.wait_for(cluster.upgrade_started.wait(), 20)
    await handle.cancel()
    with pytest.raises(WorkflowFailureError) as info:
        await handle.result()
    description = await handle.describe()

    assert isinstance(info.value.cause, CancelledError)
    assert description.status == WorkflowExecutionStatus.CANCELED
    statuses = [e.status for e in cluster.releases["web"].history]
    final = cluster.final_writes[-1]
    if atomic:
        # The cancelled upgrade left failed revision 3; the saga restores the recorded revision 2.
        assert [r.revision for r in cluster.calls["kdu.rollback"]] == [2]
        assert statuses == ["superseded", "superseded", "failed", "deployed"]
        assert final.phase == "rolled-back" and "cancelled by request" in final.error
    else:
        assert cluster.calls["kdu.rollback"] == []
        assert statuses == ["superseded", "deployed", "failed"]
        assert final.phase == "cancelled"
    assert len(cluster.reports) == (2 if atomic else 1)


async def test_upgrade_kdu_resolves_empty_namespace_from_the_cluster(kdu, cluster):
    cluster.add_release("web", "team-a", ["deployed"])
    result = await kdu.run(UpgradeKdu.run, _upgrade(namespace="", db_dict=None))
    assert result.namespace == "team-a"
    assert cluster.calls["kdu.upgrade"][0].ref.namespace == "team-a"


# ------------------------------------------------------------------------------------------------
# RollbackKdu
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statuses, revision, expected",
    [
        pytest.param(
            ["superseded", "deployed"], 0, 1, id="0 is the deployed revision before the current one"
        ),
        pytest.param(
            ["superseded", "failed", "deployed"],
            0,
            1,
            id="0 skips a failed revision helm's 'previous' would pick",
        ),
        pytest.param(
            ["superseded", "deployed", "failed"],
            0,
            2,
            id="0 after a failed upgrade restores the still-deployed one",
        ),
        pytest.param(["superseded", "superseded", "deployed"], 1, 1, id="explicit revision in history"),
    ],
)
async def test_rollback_kdu_resolves_target_revision(kdu, cluster, statuses, revision, expected):
    cluster.add_release("web", "prod", statuses)
    result = await kdu.run(
        RollbackKdu.run,
        RollbackKduInput(
            cluster_uuid="c1", kdu_instance="web", namespace="prod", revision=revision, db_dict=DB
        ),
    )
    (helm,) = cluster.calls["kdu.rollback"]
    assert helm.revision == expected
    assert result.restored_revision == expected
    assert result.revision == len(statuses) + 1
    assert cluster.final_writes[-1].phase == "completed"
    assert [r.operation for r in cluster.reports] == ["rollback"]


@pytest.mark.parametrize(
    "statuses, revision, needle",
    [
        pytest.param(["deployed"], 0, "there is none", id="0 with a single revision"),
        pytest.param(["failed", "deployed"], 0, "there is none", id="0 with only failed earlier revisions"),
        pytest.param(["superseded", "deployed"], 7, "not in the history", id="explicit revision missing"),
    ],
)
async def test_rollback_kdu_refuses_unresolvable_revision(kdu, cluster, statuses, revision, needle):
    cluster.add_release("web", "prod", statuses)
    err = await fails_with(
        kdu.run(
            RollbackKdu.run,
            RollbackKduInput(cluster_uuid="c1", kdu_instance="web", namespace="prod", revision=revision),
        ),
        "InvalidInput",
    )
    assert err.message.startswith("invalid revision:") and needle in err.message
    assert cluster.calls["kdu.rollback"] == []


async def test_rollback_kdu_failure_is_rollback_failed(kdu, cluster):
    cluster.add_release("web", "prod", ["superseded", "deployed"])
    cluster.errors["kdu.rollback"] = ApplicationError("timed out", type="ReleaseFailed", non_retryable=True)
    err = await fails_with(
        kdu.run(
            RollbackKdu.run,
            RollbackKduInput(cluster_uuid="c1", kdu_instance="web", namespace="prod", db_dict=DB),
        ),
        "RollbackFailed",
    )
    assert err.details[0] == {"rollback_revision": 1, "current_revision": 2}
    assert cluster.final_writes[-1].phase == "failed"


# ------------------------------------------------------------------------------------------------
# ScaleKdu
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "user, chart, resource, key",
    [
        pytest.param(
            {}, {"replicaCount": 1}, "", "replicaCount", id="top-level replicaCount in chart defaults"
        ),
        pytest.param({"replicas": 2}, {}, "", "replicas", id="top-level replicas in user values"),
        pytest.param(
            {}, {"db": {"replicas": 1}, "replicaCount": 1}, "db", "db.replicas", id="under component"
        ),
        pytest.param(
            {"replicaCount": 2}, {"replicaCount": 1, "replicas": 1}, "", "replicaCount", id="user choice wins"
        ),
    ],
)
async def test_scale_kdu_changes_only_the_detected_key(kdu, cluster, user, chart, resource, key):
    cluster.add_release("web", "prod", ["deployed"], user_values=dict(user, keep="me"), chart_values=chart)
    result = await kdu.run(
        ScaleKdu.run,
        ScaleKduInput(
            cluster_uuid="c1",
            kdu_instance="web",
            namespace="prod",
            scale=5,
            resource_name=resource,
            db_dict=DB,
        ),
    )
    assert result.replica_key == key
    (helm,) = cluster.calls["kdu.upgrade"]
    assert helm.set_values == {key: 5} and helm.values == {} and helm.reuse_values and helm.chart == ""
    assert cluster.releases["web"].user_values["keep"] == "me"
    assert cluster.final_writes[-1].operation == "scale"


@pytest.mark.parametrize(
    "chart, resource, error_type, needle",
    [
        pytest.param({"replicaCount": 1, "replicas": 1}, "", "ReplicaKeyAmbiguous", "both", id="both keys"),
        pytest.param({"image": "x"}, "", "ReplicaKeyNotFound", "replicaCount and replicas", id="no key"),
        pytest.param(
            {"replicaCount": 1}, "db", "ReplicaKeyNotFound", "db.replicaCount", id="component missing"
        ),
    ],
)
async def test_scale_kdu_refuses_undetectable_key(kdu, cluster, chart, resource, error_type, needle):
    cluster.add_release("web", "prod", ["deployed"], chart_values=chart)
    err = await fails_with(
        kdu.run(
            ScaleKdu.run,
            ScaleKduInput(
                cluster_uuid="c1", kdu_instance="web", namespace="prod", scale=2, resource_name=resource
            ),
        ),
        error_type,
    )
    assert needle in err.message
    assert cluster.calls["kdu.upgrade"] == []


async def test_scale_kdu_failure_rolls_back_like_upgrade(kdu, cluster):
    cluster.add_release("web", "prod", ["superseded", "deployed"], chart_values={"replicaCount": 1})
    cluster.errors["kdu.upgrade"] = RELEASE_FAILED
    err = await fails_with(
        kdu.run(
            ScaleKdu.run,
            ScaleKduInput(cluster_uuid="c1", kdu_instance="web", namespace="prod", scale=50),
        ),
        "UpgradeRolledBack",
    )
    assert cluster.calls["kdu.rollback"][0].revision == 2
    assert err.message.startswith("scale of prod/web failed at revision 3")


# ------------------------------------------------------------------------------------------------
# UninstallKdu
# ------------------------------------------------------------------------------------------------


async def test_uninstall_kdu_absent_release_is_success(kdu, cluster):
    result = await kdu.run(
        UninstallKdu.run,
        UninstallKduInput(cluster_uuid="c1", kdu_instance="web", namespace="prod", db_dict=DB),
    )
    assert (result.status, result.message) == ("absent", "release was absent")
    assert cluster.calls["kdu.uninstall"] == []
    (final,) = cluster.calls["kdu.status"]
    assert final.operation == "uninstall"


async def test_uninstall_kdu_absent_everywhere_without_namespace(kdu, cluster):
    result = await kdu.run(
        UninstallKdu.run,
        UninstallKduInput(cluster_uuid="c1", kdu_instance="web", namespace=""),
    )
    assert (result.status, result.message) == ("absent", "release was absent")
    assert [q.name for q in cluster.calls["kdu.list_releases"]] == ["web"]


@pytest.mark.parametrize("status", ["pending-install", "deployed", "failed", "uninstalling"])
async def test_uninstall_kdu_removes_existing_release_even_if_pending(kdu, cluster, status):
    cluster.add_release("web", "prod", [status])
    result = await kdu.run(
        UninstallKdu.run,
        UninstallKduInput(cluster_uuid="c1", kdu_instance="web", namespace="prod", db_dict=DB),
    )
    assert len(cluster.calls["kdu.uninstall"]) == 1
    assert "web" not in cluster.releases
    assert result.status == "absent"
    assert result.message == f"uninstalled (was {status} at revision 1)"
    assert cluster.final_writes[-1].phase == "completed"


async def test_uninstall_kdu_failure_keeps_type_and_writes_status(kdu, cluster):
    cluster.add_release("web", "prod", ["deployed"])
    cluster.errors["kdu.uninstall"] = ApplicationError(
        "forbidden", type="CredentialsInvalid", non_retryable=True
    )
    err = await fails_with(
        kdu.run(
            UninstallKdu.run,
            UninstallKduInput(cluster_uuid="c1", kdu_instance="web", namespace="prod", db_dict=DB),
        ),
        "CredentialsInvalid",
    )
    assert "uninstall of prod/web (was deployed at revision 1) failed: forbidden" == err.message
    assert cluster.final_writes[-1].phase == "failed"


# ------------------------------------------------------------------------------------------------
# Validation happens before any activity
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "run, inp, field",
    [
        pytest.param(
            InstallKdu.run,
            InstallKduInput(cluster_uuid="c1", kdu_model="--post-renderer=/bin/sh"),
            "kdu_model",
            id="install: model is a flag",
        ),
        pytest.param(
            InstallKdu.run,
            InstallKduInput(cluster_uuid="../c1", kdu_model="stable/nginx"),
            "cluster_uuid",
            id="install: cluster path traversal",
        ),
        pytest.param(
            UpgradeKdu.run,
            UpgradeKduInput(cluster_uuid="c1", kdu_instance="Web", namespace="prod"),
            "kdu_instance",
            id="upgrade: upper-case release",
        ),
        pytest.param(
            RollbackKdu.run,
            RollbackKduInput(cluster_uuid="c1", kdu_instance="web", namespace="prod", revision=-1),
            "revision",
            id="rollback: negative revision",
        ),
        pytest.param(
            ScaleKdu.run,
            ScaleKduInput(cluster_uuid="c1", kdu_instance="web", namespace="prod", scale=10001),
            "scale",
            id="scale: too many replicas",
        ),
        pytest.param(
            UninstallKdu.run,
            UninstallKduInput(
                cluster_uuid="c1",
                kdu_instance="web",
                namespace="prod",
                db_dict=DbDict(collection="nsrs", filter={"$where": "1"}, path="a"),
            ),
            "db_dict.filter",
            id="uninstall: mongo operator in filter",
        ),
    ],
)
async def test_kdu_workflows_refuse_invalid_input_before_any_activity(kdu, cluster, run, inp, field):
    err = await fails_with(kdu.run(run, inp), "InvalidInput")
    assert err.message.startswith(f"invalid {field}:")
    assert err.details[0] == {"field": field}
    assert cluster.helm_calls == []


def test_kdu_workflows_are_exported_under_their_class_names():
    from temporalio.workflow import _Definition

    names = [_Definition.must_from_class(wf).name for wf in KDU_WORKFLOWS]
    assert names == [wf.__name__ for wf in KDU_WORKFLOWS]
    assert len(set(names)) == 13


async def test_every_mutating_workflow_accepts_an_omitted_namespace_and_resolves_it(kdu, cluster):
    # N2VC's upgrade, rollback, scale and uninstall look the namespace up when none is given: the
    # JSON input may leave the field out altogether (it has a default), not only send "".
    cluster.add_release("web", "team-a", ["deployed"], user_values={"replicaCount": 1})
    ref = {"cluster_uuid": "c1", "kdu_instance": "web"}
    upgraded = await kdu.run(UpgradeKdu.run, dict(ref))
    scaled = await kdu.run(ScaleKdu.run, {**ref, "scale": 2})
    rolled = await kdu.run(RollbackKdu.run, {**ref, "revision": 1})
    removed = await kdu.run(UninstallKdu.run, dict(ref))
    assert [r.namespace for r in (upgraded, scaled, rolled, removed)] == ["team-a"] * 4
    assert scaled.replica_key == "replicaCount" and rolled.restored_revision == 1
    assert removed.status == "absent" and cluster.calls["kdu.uninstall"][0].ref.namespace == "team-a"
