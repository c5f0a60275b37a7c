"""Strict workflow-input decoding: wrong types, missing and unknown fields fail the workflow at once.

Unit tests of ``workflows.decoding`` and ``kduflow.codec.InputPayloadConverter``, then the same
inputs through real workflows on the time-skipping dev server: each must *fail* (closed, with a
non-retryable ``InvalidInput`` naming the field), never leave a workflow task retrying.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.models import (
    DbDict,
    InspectKduInput,
    InstallKduInput,
    KduInstancesInput,
    KduRefInput,
    RollbackKduInput,
    ScaleKduInput,
    UninstallKduInput,
    UpgradeKduInput,
)
from kduflow.codec import InputPayloadConverter, data_converter
from workflows import KDU_WORKFLOWS
from workflows.cluster import CLUSTER_WORKFLOWS
from workflows.cluster_models import InitClusterInput, ResetClusterInput, SyncReposInput
from workflows.decoding import decode_input
from workflows.validation import InvalidInputError

INSTALL = {"cluster_uuid": "c1", "kdu_model": "stable/nginx"}
DB = {"collection": "nsrs", "filter": {"_id": "ns1"}, "path": "_admin.deployed.K8s.0"}


def refused(cls: type, raw: Any, *extra: Any) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as info:
        decode_input(cls, raw, extra)
    assert info.value.type == "InvalidInput" and info.value.non_retryable
    return info.value


def test_valid_inputs_decode_to_the_dataclasses() -> None:
    inp = decode_input(InstallKduInput, {**INSTALL, "params": {"a": [1, {"b": None}]}, "db_dict": DB})
    assert inp == InstallKduInput("c1", "stable/nginx", params={"a": [1, {"b": None}]}, db_dict=DbDict(**DB))
    scale = {"cluster_uuid": "c", "kdu_instance": "r", "namespace": "n", "scale": 0}
    assert decode_input(ScaleKduInput, scale) == ScaleKduInput("c", "r", "n", scale=0)
    assert decode_input(InitClusterInput, {}) == InitClusterInput()
    assert decode_input(KduInstancesInput, {"cluster_uuid": "c"}) == KduInstancesInput("c")


def test_dataclass_instances_from_python_callers_are_checked_the_same_way() -> None:
    inp = InstallKduInput("c1", "stable/nginx", db_dict=DbDict(**DB))
    assert decode_input(InstallKduInput, inp) == inp
    bad = dataclasses.replace(inp, timeout="300")  # type: ignore[arg-type]
    assert refused(InstallKduInput, bad).field == "timeout"


@pytest.mark.parametrize(
    ("cls", "raw", "field", "words"),
    [
        (InstallKduInput, {**INSTALL, "timeout": "300"}, "timeout", "integer, got string"),
        (InstallKduInput, {**INSTALL, "timeout": True}, "timeout", "integer, got boolean"),
        (InstallKduInput, {**INSTALL, "timeout": 2.9}, "timeout", "integer, got number"),
        (InstallKduInput, {**INSTALL, "cluster_uuid": 5}, "cluster_uuid", "string, got integer"),
        (InstallKduInput, {**INSTALL, "params": [1, 2]}, "params", "JSON object, got array"),
        (InstallKduInput, {**INSTALL, "params": None}, "params", "got null"),
        (InstallKduInput, {**INSTALL, "labels": {"a": 1}}, "labels.a", "string, got integer"),
        (InstallKduInput, {**INSTALL, "db_dict": "nsrs"}, "db_dict", "JSON object, got string"),
        (InstallKduInput, {**INSTALL, "db_dict": {**DB, "filter": []}}, "db_dict.filter", "got array"),
        (InstallKduInput, {**INSTALL, "db_dict": {**DB, "extra": 1}}, "db_dict.extra", "unknown field"),
        (InstallKduInput, {**INSTALL, "atomic": "false"}, "atomic", "boolean, got string"),
        (InstallKduInput, {**INSTALL, "atomic": 0}, "atomic", "boolean, got integer"),
        (InstallKduInput, {"cluster_uuid": "c1"}, "kdu_model", "is required"),
        (InstallKduInput, {**INSTALL, "kdu_instanse": "x"}, "kdu_instanse", "did you mean 'kdu_instance'"),
        (InstallKduInput, [INSTALL], "input", "JSON object, got array"),
        (InstallKduInput, "stable/nginx", "input", "JSON object, got string"),
        (InstallKduInput, None, "input", "missing"),
        (ScaleKduInput, {"cluster_uuid": "c", "kdu_instance": "r", "namespace": "n"}, "scale", "required"),
        (ScaleKduInput, {"cluster_uuid": "c", "kdu_instance": "r", "namespace": "n", "scale": False},
         "scale", "integer, got boolean"),
        (ScaleKduInput, {"cluster_uuid": "c", "kdu_instance": "r", "namespace": "n", "scale": 2.9},
         "scale", "integer, got number"),
        (UpgradeKduInput, {"cluster_uuid": "c"}, "kdu_instance", "required"),
        (UpgradeKduInput, {"cluster_uuid": "c", "kdu_instance": "r", "namespace": "n", "force": 1},
         "force", "boolean"),
        (RollbackKduInput, {"cluster_uuid": "c", "kdu_instance": "r", "namespace": "n", "revision": "1"},
         "revision", "integer, got string"),
        (UninstallKduInput, {"cluster_uuid": "c", "kdu_instance": None, "namespace": "n"},
         "kdu_instance", "got null"),
        (KduRefInput, {"cluster_uuid": "c", "kdu_instance": "r", "namespace": "n", "all_values": "yes"},
         "all_values", "boolean"),
        (InspectKduInput, {"kdu_model": ["x"]}, "kdu_model", "string, got array"),
        (InitClusterInput, {"sync_interval_s": 1e20}, "sync_interval_s", "integer, got number"),
        (InitClusterInput, {"k8s_creds": {"apiVersion": "v1"}}, "k8s_creds", "string, got object"),
        (ResetClusterInput, {"cluster_uuid": "c", "force": "true"}, "force", "boolean"),
        (SyncReposInput, {}, "cluster_uuid", "required"),
        (SyncReposInput, {"cluster_uuid": "c", **{f"f{i}": 1 for i in range(100)}}, "input", "at most"),
    ],
)
def test_wrong_inputs_are_refused_naming_the_field(cls: type, raw: Any, field: str, words: str) -> None:
    err = refused(cls, raw)
    assert err.field == field
    assert words in err.message


def test_more_than_one_argument_is_refused() -> None:
    assert refused(InstallKduInput, INSTALL, {"x": 1}).field == "input"


def test_hostile_key_is_not_echoed() -> None:
    err = refused(InstallKduInput, {**INSTALL, "x" * 10_000: 1})
    assert len(err.message) < 200


@pytest.mark.parametrize(
    "payload",
    [
        Payload(metadata={"encoding": b"json/plain"}, data=b"[" * 5000 + b"]" * 5000),
        Payload(metadata={"encoding": b"json/plain"}, data=b"\xff\xfe"),
        Payload(metadata={"encoding": b"json/plain"}, data=b"{not json"),
        Payload(metadata={"encoding": b"binary/unknown"}, data=b"x"),
    ],
    ids=["nested-5000", "not-utf8", "not-json", "unknown-encoding"],
)
def test_payloads_that_cannot_be_decoded_become_invalid_input(payload: Payload) -> None:
    with pytest.raises(ApplicationError) as info:
        InputPayloadConverter().from_payloads([payload], None)
    assert info.value.type == "InvalidInput" and info.value.non_retryable


async def test_malformed_inputs_fail_the_workflow_instead_of_retrying_its_task(
    ts_env: WorkflowEnvironment,
) -> None:
    """Through real workflows: every case closes FAILED with InvalidInput (none stays RUNNING)."""
    client = Client(**{**ts_env.client.config(), "data_converter": data_converter(None)})
    task_queue = f"decoding-{uuid.uuid4()}"
    raw_nested = RawValue(Payload(metadata={"encoding": b"json/plain"}, data=b"[" * 5000 + b"]" * 5000))
    cases: list[tuple[str, list[Any], str]] = [
        ("ScaleKdu", [{"cluster_uuid": "c", "kdu_instance": "r", "namespace": "n"}], "scale"),
        ("InstallKdu", [{**INSTALL, "timeout": "300"}], "timeout"),
        ("InstallKdu", [{**INSTALL, "kdu_instanse": "web"}], "kdu_instanse"),
        ("KduStatus", [{"cluster_uuid": 5, "kdu_instance": "r", "namespace": "n"}], "cluster_uuid"),
        ("InitCluster", [{"sync_interval_s": 1e20}], "sync_interval_s"),
        ("SyncRepos", [], "input"),
        ("ResetCluster", [{"cluster_uuid": "c"}, {"cluster_uuid": "d"}], "input"),
        ("KduInstances", [raw_nested], "input"),
    ]
    async with Worker(client, task_queue=task_queue, workflows=[*KDU_WORKFLOWS, *CLUSTER_WORKFLOWS]):
        for workflow_type, args, field in cases:
            handle = await client.start_workflow(
                workflow_type, args=args, id=f"decoding-{uuid.uuid4()}", task_queue=task_queue
            )
            with pytest.raises(WorkflowFailureError) as info:
                await asyncio.wait_for(handle.result(), timeout=20)
            cause = info.value.cause
            assert isinstance(cause, ApplicationError), (workflow_type, cause)
            assert cause.type == "InvalidInput" and cause.non_retryable, (workflow_type, cause)
            assert cause.details and cause.details[0] == {"field": field}, (workflow_type, cause.message)
            described = await handle.describe()
            assert described.status == WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_FAILED
