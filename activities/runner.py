"""The one process runner: every helm and kubectl call of kduflow goes through ``Runner.run``.

Contract:
- argv is a list run with ``asyncio.create_subprocess_exec`` (never a shell);
- ``env`` is the *whole* environment of the child (the worker's HOME/KUBECONFIG never leak in);
- ``stdin`` (chart values as JSON for ``--values -``) is written then closed, and never logged;
- stdout and stderr are kept apart (helm 4 prints warnings on stderr of successful commands);
- while the process runs inside an activity, the runner heartbeats a short progress dict;
- on timeout or cancellation the child gets SIGTERM first (helm then records the release as
  failed instead of leaving it pending-*), ``term_grace`` seconds to exit, and only then SIGKILL
  of its whole process group;
- the argv is logged at DEBUG in redacted form (``redact_argv``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from temporalio import activity

from activities.errors import ProcessTimeout, UnsupportedHelm

logger = logging.getLogger(__name__)

#: Flags whose next argv element (or ``=value``) is a secret or a free-form value.
SECRET_FLAGS = frozenset(
    {"--password", "--token", "--username", "--kube-token", "--set", "--set-string", "--set-file",
     "--set-json", "--set-literal", "--pass", "--key-file-password"}
)  # fmt: skip
REDACTED = "<redacted>"
#: Seconds the runner waits for pipes to close after SIGKILL before giving up on them.
_REAP_TIMEOUT = 5.0


@dataclass(frozen=True)
class ProcessResult:
    """A finished process. ``argv_display`` is the redacted argv, safe to log or put in errors."""

    argv_display: str
    returncode: int
    stdout: bytes
    stderr: bytes
    duration: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def redact_argv(argv: Sequence[str], secrets: Iterable[str] = ()) -> list[str]:
    """A loggable copy of ``argv``.

    Values of ``SECRET_FLAGS`` (``--flag v`` and ``--flag=v``) and every element containing one of
    ``secrets`` become ``<redacted>``; ``-`` (stdin) becomes ``<stdin>``; multi-line elements become
    ``<multi-line string>``.
    """
    secret_list = [s for s in secrets if s]
    shown: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            shown.append(REDACTED)
            hide_next = False
            continue
        flag, eq, _ = arg.partition("=")
        if flag in SECRET_FLAGS:
            if eq:
                shown.append(f"{flag}={REDACTED}")
            else:
                shown.append(arg)
                hide_next = True
        elif any(s in arg for s in secret_list):
            shown.append(REDACTED)
        elif arg == "-":
            shown.append("<stdin>")
        elif "\n" in arg:
            shown.append("<multi-line string>")
        else:
            shown.append(arg)
    return shown


class Runner:
    """Runs one process at a time per call; stateless, safe to share between activities.

    Tests inject a subclass or any object with the same ``run`` signature.
    """

    async def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        stdin: bytes | None = None,
        timeout: float,
        heartbeat_every: float = 5.0,
        term_grace: float = 10.0,
        secrets: Iterable[str] = (),
    ) -> ProcessResult:
        """Run ``argv`` to completion and return its result whatever the exit status.

        Raises:
            ProcessTimeout: (retryable) the process overran ``timeout`` and was stopped.
            UnsupportedHelm: (non-retryable) the executable does not exist.
            asyncio.CancelledError: re-raised after the child was stopped (SIGTERM, grace, SIGKILL).
        """
        display = " ".join(redact_argv(argv, secrets))
        logger.debug("run: %s", display)
        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=dict(env),
                # Own process group: the final SIGKILL reaches helm's children (plugins,
                # post-renderers) too; SIGTERM goes to helm alone so it can record the failure.
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise UnsupportedHelm(f"executable not found: {argv[0]}") from exc
        except PermissionError as exc:
            raise UnsupportedHelm(f"executable not runnable: {argv[0]}") from exc

        comm = asyncio.ensure_future(proc.communicate(stdin))
        deadline = started + timeout
        label = _label(argv)
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                done, _ = await asyncio.wait({comm}, timeout=min(heartbeat_every, remaining))
                if done:
                    stdout, stderr = comm.result()
                    duration = time.monotonic() - started
                    logger.debug("exit %s after %.1fs: %s", proc.returncode, duration, display)
                    return ProcessResult(display, proc.returncode or 0, stdout, stderr, duration)
                if activity.in_activity():
                    activity.heartbeat({"command": label, "elapsed_s": int(time.monotonic() - started)})
        except asyncio.CancelledError:
            logger.info("cancelled, stopping (SIGTERM, then SIGKILL after %ss): %s", term_grace, display)
            await _stop(proc, comm, term_grace)
            raise
        logger.warning("timed out after %ss, stopping: %s", timeout, display)
        await _stop(proc, comm, term_grace)
        raise ProcessTimeout(f"{label} did not finish within {timeout:g}s", details={"timeout": timeout})


def _label(argv: Sequence[str]) -> str:
    """``helm upgrade`` from a full argv: the program's base name and its verb, nothing secret."""
    words = [os.path.basename(argv[0])] if argv else []
    words += [a for a in argv[1:3] if not a.startswith("-")][:1]
    return " ".join(words)


async def _stop(proc: asyncio.subprocess.Process, comm: asyncio.Future, term_grace: float) -> None:
    """SIGTERM the child, give it ``term_grace`` seconds, then SIGKILL its process group; reap it.

    A second cancellation during the grace period escalates to SIGKILL at once and propagates.
    """
    if proc.returncode is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        await asyncio.wait_for(asyncio.shield(comm), term_grace)
    except TimeoutError:
        pass
    except asyncio.CancelledError:
        _kill_group(proc)
        raise
    # Even when helm itself exited, a child it left in the group could hold the pipes open.
    _kill_group(proc)
    try:
        await asyncio.wait_for(asyncio.shield(comm), _REAP_TIMEOUT)
    except TimeoutError:
        comm.cancel()
        logger.warning("process group %s kept its pipes open after SIGKILL", proc.pid)
    if proc.returncode is None:
        await proc.wait()


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
