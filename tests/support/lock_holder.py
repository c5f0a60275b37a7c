"""A workflow that holds a release's lock until signalled (its own module: the workflow sandbox
re-imports it, and test modules import too much for that)."""

from __future__ import annotations

from temporalio import workflow

from activities.models import ReleaseRef
from workflows.lock import LockClient, release_lock


@workflow.defn(name="HoldReleaseLock")
class HoldReleaseLock(LockClient):
    """Takes a release's lock, then holds it until told to let go."""

    def __init__(self) -> None:
        super().__init__()
        self._go = False

    @workflow.run
    async def run(self, ref: ReleaseRef) -> str:
        async with release_lock(ref, "hold"):
            await workflow.wait_condition(lambda: self._go)
        return "done"

    @workflow.signal
    def go(self) -> None:
        self._go = True
