import uuid

from temporalio import workflow
from temporalio.worker import Worker


@workflow.defn
class _Echo:
    @workflow.run
    async def run(self, text: str) -> str:
        return text


async def test_time_skipping_env_runs_a_workflow(ts_env):
    async with Worker(ts_env.client, task_queue=f"tq-{uuid.uuid4()}", workflows=[_Echo]) as worker:
        out = await ts_env.client.execute_workflow(
            _Echo.run, "hi", id=f"wf-{uuid.uuid4()}", task_queue=worker.task_queue
        )
    assert out == "hi"
