"""The client module without a worker: what it imports, its error classes, checks made before
anything is sent, and starting on a Temporal namespace without kduflow's search attributes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError, CancelledError, TerminatedError
from temporalio.testing import WorkflowEnvironment

from contract import errors, search
from kduflow import client as kc
from tests.conftest import temporal_cli

ROOT = Path(__file__).resolve().parent.parent
#: Packages a client process must never load: worker code, the store, the cluster emulator, YAML.
FORBIDDEN = ("activities", "workflows", "sandbox", "pymongo", "montydb", "yaml", "worker")


def test_the_client_imports_no_worker_code() -> None:
    code = "import sys, json\nimport kduflow.client\nprint(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    loaded = json.loads(out.stdout)
    assert [m for m in loaded if m.split(".")[0] in FORBIDDEN] == []
    # Of kduflow itself only the client, the codec and the secret box (no settings, plugin, devserver).
    assert sorted(m for m in loaded if m.split(".")[0] == "kduflow") == [
        "kduflow", "kduflow.client", "kduflow.codec", "kduflow.secretbox",
    ]  # fmt: skip


def test_one_client_exception_class_per_contract_error_type() -> None:
    assert set(kc.ERRORS) == set(errors.ERROR_TYPES)
    for name, cls in kc.ERRORS.items():
        assert cls.type_name == name and issubclass(cls, kc.KduflowError)
        assert cls.retryable is (name in errors.RETRYABLE_TYPES)
    for child, parent in errors.PARENT_TYPES.items():
        assert issubclass(kc.ERRORS[child], kc.ERRORS[parent])


def _failure(cause: BaseException) -> WorkflowFailureError:
    return WorkflowFailureError(cause=cause)  # type: ignore[arg-type]


def test_failures_translate_to_their_classes() -> None:
    rolled = ApplicationError(
        "upgrade failed", {"failed_revision": 3, "restored_revision": 2}, type="UpgradeRolledBack"
    )
    err = kc.translate_failure(_failure(rolled), "kdu/c/n/r/upgrade/x", "run-1")
    assert isinstance(err, kc.UpgradeRolledBack) and isinstance(err, kc.ReleaseFailed)
    assert (err.message, err.detail["restored_revision"], err.workflow_id) == (
        "upgrade failed", 2, "kdu/c/n/r/upgrade/x"
    )  # fmt: skip
    refused = ApplicationError("invalid x", {"field": "x"}, type="InvalidInput")
    invalid = kc.translate_failure(_failure(refused))
    assert isinstance(invalid, kc.InvalidInput) and invalid.field == "x"
    assert isinstance(kc.translate_failure(_failure(CancelledError("cancelled"))), kc.OperationCancelled)
    assert isinstance(kc.translate_failure(_failure(TerminatedError("bye"))), kc.OperationTerminated)
    odd = kc.translate_failure(_failure(ApplicationError("?", type="SomethingNew")))
    assert isinstance(odd, kc.UnknownFailure) and odd.type_name == "SomethingNew"


async def test_bad_input_is_refused_before_anything_is_sent(ts_env) -> None:
    kdu = kc.KduflowClient(ts_env.client, task_queue=f"nobody-{uuid.uuid4()}")
    with pytest.raises(kc.InvalidInput) as info:
        await kdu.start_install("c1", "stable/x", "Bad_Name")
    assert info.value.field == "kdu_instance"
    with pytest.raises(kc.InvalidInput) as info:
        await kdu.start_upgrade("c1", "web", timeout="300")  # type: ignore[arg-type]
    assert info.value.field == "timeout"
    with pytest.raises(kc.InvalidInput) as info:
        await kdu.start_repo_add("c1", "r", "http://127.0.0.1/", password="secret-without-user")
    assert info.value.field == "user" and "secret-without-user" not in info.value.message
    with pytest.raises(kc.InvalidInput) as info:
        await kdu.start_scale("web", 2)  # N2VC's cluster_uuid=None
    assert info.value.field == "cluster_uuid"
    with pytest.raises(kc.InvalidInput) as info:
        await kdu.start_install("c1", "x", db_dict={"collection": "nsrs", "filter": {}, "path": "a"})
    assert info.value.field == "db_dict.filter"


async def test_ids_and_search_attributes_at_start(ts_env) -> None:
    kdu = kc.KduflowClient(ts_env.client, task_queue=f"nobody-{uuid.uuid4()}")
    op = uuid.uuid4().hex
    handle = await kdu.start_upgrade("c1", "web", namespace="prod", op_id=op)
    assert handle.id == f"kdu/c1/prod/web/upgrade/{op}"
    # The same op_id again attaches to the workflow already started.
    again = await kdu.start_upgrade("c1", "web", namespace="prod", op_id=op)
    assert (again.id, again.run_id) == (handle.id, handle.run_id)
    described = await handle.workflow_handle.describe()
    attrs = described.typed_search_attributes
    keys = (search.KDU_CLUSTER, search.KDU_RELEASE, search.KDU_NAMESPACE)
    assert tuple(attrs.get(k) for k in keys) == ("c1", "web", "prod")
    assert attrs.get(search.KDU_OPERATION) == "upgrade"
    generated = await kdu.start_install("c1", "stable/nginx")
    assert generated.id.startswith("kdu/c1/-/-/install/")
    cluster = await kdu.start_sync_repos("c1")
    assert cluster.id.startswith("cluster/c1/sync-repos/")
    repo = await kdu.start_repo_remove("c1", "stable")
    assert repo.id.startswith("repo/c1/stable/repo-remove/")
    for h in (handle, generated, cluster, repo):
        await h.workflow_handle.terminate("test")


async def test_a_namespace_without_the_search_attributes_still_starts_workflows(caplog) -> None:
    # A plain dev server: kduflow's attributes are not registered there.
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=temporal_cli(), ui=False)
    try:
        caplog.set_level(logging.WARNING, logger="kduflow.client")
        kdu = kc.KduflowClient(env.client, task_queue=f"nobody-{uuid.uuid4()}")
        handle = await kdu.start_uninstall("c1", "web", namespace="prod")
        described = await handle.workflow_handle.describe()
        assert described.status == WorkflowExecutionStatus.RUNNING
        assert described.typed_search_attributes.get(search.KDU_RELEASE) is None
        assert "search attributes are not registered" in caplog.text
        # Once seen, later starts go without them at once.
        second = await kdu.start_status("c1", "web")
        for h in (handle, second):
            await h.workflow_handle.terminate("test")
    finally:
        await env.shutdown()


def test_the_dev_server_of_run_worker_registers_the_search_attributes(tmp_path: Path) -> None:
    from kduflow.devserver import dev_server, free_port

    with dev_server(tmp_path / "temporal", free_port()) as address:
        proc = subprocess.run(
            [temporal_cli(), "operator", "search-attribute", "list", "--address", address, "-o", "json"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
    text = proc.stdout
    for key in search.ALL_KEYS:
        assert f'"{key.name}"' in text, key.name
