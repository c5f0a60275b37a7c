"""Recorded workflow histories replay against the current workflow code.

``tests/histories/*.json`` are histories of real runs (``scripts/record_histories.py``: real worker,
sandbox cluster, real helm). A workflow change that would issue different commands for a recorded
run (another activity, another order, a child workflow or marker more or less) makes its replay
fail with a nondeterminism error: the change would break workflows running when it is deployed, and
needs ``workflow.patched``. Re-recording to make a replay pass defeats the test
(``tests/histories/README.md``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.common import RetryPolicy
from temporalio.worker import Replayer, WorkflowReplayResults

from kduflow.codec import data_converter
from workflows import KDU_WORKFLOWS
from workflows.cluster import CLUSTER_WORKFLOWS

HISTORIES_DIR = Path(__file__).resolve().parent / "histories"
HISTORY_FILES = sorted(HISTORIES_DIR.glob("*.json"))
#: Every workflow type the plugin registers (KduflowPlugin: KDU_WORKFLOWS + CLUSTER_WORKFLOWS).
REGISTERED = [*KDU_WORKFLOWS, *CLUSTER_WORKFLOWS]
#: The recorded history the control test replays against a modified workflow.
CONTROL_HISTORY = "KduInstances-one-release.json"


def _started(data: dict[str, Any]) -> dict[str, Any]:
    first = data["events"][0]
    attrs = first.get("workflowExecutionStartedEventAttributes")
    assert attrs is not None, f"first event is {first.get('eventType')}, not the workflow's start"
    return attrs


def load_history(path: Path) -> WorkflowHistory:
    """The history in ``path``, under the workflow id it ran with (the file name without .json
    when the start event does not carry it)."""
    text = path.read_text(encoding="utf-8")
    workflow_id = _started(json.loads(text)).get("workflowId") or path.stem
    return WorkflowHistory.from_json(workflow_id, text)


def workflow_type(path: Path) -> str:
    return str(_started(json.loads(path.read_text(encoding="utf-8")))["workflowType"]["name"])


def defn_name(cls: type) -> str:
    defn = workflow._Definition.from_class(cls)
    assert defn is not None and defn.name, f"{cls.__name__} is not a named @workflow.defn class"
    return defn.name


async def replay(histories: list[WorkflowHistory], workflows: list[type]) -> WorkflowReplayResults:
    async def each() -> AsyncIterator[WorkflowHistory]:
        for history in histories:
            yield history

    # kduflow's data converter as the worker has it (strict input decoding); the histories were
    # recorded without a secret key, so no codec.
    replayer = Replayer(workflows=workflows, data_converter=data_converter(None))
    return await replayer.replay_workflows(each(), raise_on_replay_failure=False)


def describe(failures: Any) -> str:
    return "\n".join(f"run {run_id}: {type(err).__name__}: {err}" for run_id, err in failures.items())


def test_histories_are_recorded() -> None:
    assert HISTORY_FILES, f"no recorded histories in {HISTORIES_DIR}: run scripts/record_histories.py"
    run_ids = [load_history(p).run_id for p in HISTORY_FILES]
    assert len(set(run_ids)) == len(run_ids), "two history files hold the same run"


@pytest_asyncio.fixture(scope="module")
async def replay_failures() -> dict[str, Exception]:
    """Replay failures of all recorded histories, by run id (one replayer for all: it takes most of a
    second to start, a history takes milliseconds)."""
    results = await replay([load_history(p) for p in HISTORY_FILES], REGISTERED)
    return dict(results.replay_failures)


@pytest.mark.parametrize("path", HISTORY_FILES, ids=[p.name for p in HISTORY_FILES])
def test_recorded_history_replays(path: Path, replay_failures: dict[str, Exception]) -> None:
    run_id = load_history(path).run_id
    failures = {run_id: replay_failures[run_id]} if run_id in replay_failures else {}
    assert not failures, (
        f"{path.name} no longer replays: the workflow code changed what a run recorded with the "
        f"earlier code does. Put the change behind workflow.patched(...) instead of re-recording.\n"
        + describe(failures)
    )


def test_every_registered_workflow_type_has_a_history() -> None:
    recorded = {workflow_type(p) for p in HISTORY_FILES}
    registered = {defn_name(cls) for cls in REGISTERED}
    missing = sorted(registered - recorded)
    assert not missing, f"no recorded history for {missing}: extend scripts/record_histories.py and re-record"
    unknown = sorted(recorded - registered)
    assert not unknown, f"histories of workflow types no longer registered: {unknown}"


# ------------------------------------------------------------------------------------------------
# Control: replay does fail when the code no longer matches the history.
# ------------------------------------------------------------------------------------------------


@workflow.defn(name="KduInstances", sandboxed=False)
class KduInstancesReadingHistoryFirst:
    """KduInstances as it would be if a change made it schedule another activity first."""

    @workflow.run
    async def run(self, raw: Any = None, *extra: Any) -> Any:
        options: dict[str, Any] = {
            "start_to_close_timeout": timedelta(seconds=60),
            "retry_policy": RetryPolicy(maximum_attempts=1),
        }
        await workflow.execute_activity("kdu.history", {"cluster_uuid": "x", "kdu_instance": "y"}, **options)
        return await workflow.execute_activity("kdu.list_releases", raw, **options)


async def test_replay_detects_a_changed_workflow() -> None:
    path = HISTORIES_DIR / CONTROL_HISTORY
    assert workflow_type(path) == "KduInstances"
    history = load_history(path)
    # The recorded history itself replays against the real workflow...
    ok = await replay([history], REGISTERED)
    assert not ok.replay_failures, describe(ok.replay_failures)
    # ...and not against a copy that schedules a different activity first.
    results = await replay([history], [KduInstancesReadingHistoryFirst])
    assert len(results.replay_failures) == 1, "replaying a changed workflow was not reported as a failure"
    (failure,) = results.replay_failures.values()
    assert isinstance(failure, workflow.NondeterminismError), f"{type(failure).__name__}: {failure}"
    assert "kdu.list_releases" in str(failure) or "kdu.history" in str(failure), str(failure)
