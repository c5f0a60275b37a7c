"""The one process runner: every helm and kubectl call of kduflow goes through ``Runner.run``.

Contract:
- argv is a list run with ``subprocess.Popen`` (never a shell), watched through a pidfd;
- ``env`` is the *whole* environment of the child (the worker's HOME/KUBECONFIG never leak in);
- ``stdin`` (chart values as JSON for ``--values -``) is written then closed, and never logged;
- stdout and stderr are kept apart (helm 4 prints warnings on stderr of successful commands);
- while the process runs inside an activity, the runner heartbeats a short progress dict;
- on timeout or cancellation the child gets SIGTERM first (helm then records the release as
  failed instead of leaving it pending-*), ``term_grace`` seconds to exit, and only then SIGKILL
  of its whole process group; a worker shutdown is not a cancellation: the child is left running;
- the argv is logged at DEBUG in redacted form (``redact_argv``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from temporalio import activity

from activities.errors import KduflowError, ProcessTimeout, UnsupportedHelm
from activities.helm_cli import HelmVersion
from kduflow import metrics

#: The SDK's adapter: inside an activity, records carry its ids (message and `extra`).
logger = activity.LoggerAdapter(logging.getLogger(__name__), None)

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


#: This machine, as heartbeat details name it: a retry on the same machine can check the pid.
HOST = socket.gethostname()


class Runner:
    """Runs one process at a time per call; stateless, safe to share between activities.

    Tests inject a subclass or any object with the same ``run`` signature.

    The child's stdout and stderr are unlinked temporary files, not pipes, and its exit is watched
    through a pidfd: nothing ties the child's life to this process. That is what lets a worker
    shutdown leave helm running (see :meth:`run`): a pipe whose reader died would kill helm with
    SIGPIPE at its next warning line, and asyncio's subprocess transport kills its child when it
    is closed.
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

        Inside an activity the runner heartbeats ``{command, elapsed_s, pid, host, started_at}``, so a
        later attempt knows which process an earlier one started. Cancellation stops the child
        (SIGTERM, ``term_grace``, SIGKILL of its group) -- except when the worker is shutting down:
        a redeploy is not a cancellation of the operation, so the child is left to finish and the
        next attempt (on any worker) adopts its outcome.

        Raises:
            ProcessTimeout: (retryable) the process overran ``timeout`` and was stopped.
            UnsupportedHelm: (non-retryable) the executable does not exist.
            asyncio.CancelledError: re-raised after the child was stopped (or left running, above).
        """
        display = " ".join(redact_argv(argv, secrets))
        logger.debug("run: %s", display)
        started = time.monotonic()
        started_at = time.time()
        out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        try:
            try:
                proc = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=dict(env),
                    # Own session and process group: the worker's signals (Ctrl-C, a kill of its
                    # group) do not reach helm, and the final SIGKILL reaches helm's children
                    # (plugins, post-renderers) too; SIGTERM goes to helm alone so it can record
                    # the failure.
                    start_new_session=True,
                    close_fds=True,
                )
            except FileNotFoundError as exc:
                raise UnsupportedHelm(f"executable not found: {argv[0]}") from exc
            except PermissionError as exc:
                raise UnsupportedHelm(f"executable not runnable: {argv[0]}") from exc
            exited = _watch_exit(proc)
            label = _label(argv)
            beat = {"command": label, "pid": proc.pid, "host": HOST, "started_at": int(started_at)}
            if activity.in_activity():
                # At once, not after the first interval: a crash in helm's first seconds must still
                # leave the pid to the next attempt, or it has to wait out helm's whole timeout.
                activity.heartbeat({**beat, "elapsed_s": 0})
            if stdin is not None:
                await _feed(proc, stdin)
            deadline = started + timeout
            try:
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    done, _ = await asyncio.wait({exited}, timeout=min(heartbeat_every, remaining))
                    if done:
                        returncode = proc.wait()
                        stdout, stderr = await asyncio.to_thread(_read_both, out, err)
                        duration = time.monotonic() - started
                        logger.debug("exit %s after %.1fs: %s", returncode, duration, display)
                        return ProcessResult(display, returncode, stdout, stderr, duration)
                    if activity.in_activity():
                        activity.heartbeat({**beat, "elapsed_s": int(time.monotonic() - started)})
            except asyncio.CancelledError:
                if _worker_shutting_down():
                    exited.cancel()
                    logger.warning(
                        "worker shutting down: leaving %s (pid %s) running; the next attempt adopts its "
                        "outcome: %s", label, proc.pid, display,
                    )  # fmt: skip
                    raise
                logger.info("cancelled, stopping (SIGTERM, then SIGKILL after %ss): %s", term_grace, display)
                await _stop(proc, exited, term_grace)
                raise
            logger.warning("timed out after %ss, stopping: %s", timeout, display)
            await _stop(proc, exited, term_grace)
            raise ProcessTimeout(f"{label} did not finish within {timeout:g}s", details={"timeout": timeout})
        finally:
            # The child keeps its own descriptors of these (unlinked) files if it is still running.
            out.close()
            err.close()


def _worker_shutting_down() -> bool:
    return activity.in_activity() and activity.is_worker_shutdown()


def _read_both(out: IO[bytes], err: IO[bytes]) -> tuple[bytes, bytes]:
    out.seek(0)
    err.seek(0)
    return out.read(), err.read()


async def _feed(proc: subprocess.Popen[bytes], data: bytes) -> None:
    """Write ``data`` to the child's stdin and close it, without blocking the event loop."""
    assert proc.stdin is not None
    pipe = proc.stdin

    def write() -> None:
        try:
            pipe.write(data)
        except BrokenPipeError:
            pass  # the child exited without reading: its exit status says why
        finally:
            try:
                pipe.close()
            except BrokenPipeError:
                pass

    await asyncio.to_thread(write)


def _watch_exit(proc: subprocess.Popen[bytes]) -> asyncio.Future[None]:
    """A future resolved when ``proc`` exits (pidfd readable), without reaping it."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:
        # No pidfd (old kernel): poll instead.
        async def poll() -> None:
            while proc.poll() is None:
                await asyncio.sleep(0.05)

        def settle(task: asyncio.Future[None]) -> None:
            if not future.done() and not task.cancelled():
                future.set_result(None)

        task = asyncio.ensure_future(poll())
        task.add_done_callback(settle)
        future.add_done_callback(lambda f: task.cancel())
        return future

    def readable() -> None:
        if not future.done():
            future.set_result(None)
        cleanup()

    def cleanup(*_: object) -> None:
        loop.remove_reader(pidfd)
        try:
            os.close(pidfd)
        except OSError:
            pass

    loop.add_reader(pidfd, readable)
    future.add_done_callback(lambda f: cleanup() if f.cancelled() else None)
    return future


def _label(argv: Sequence[str]) -> str:
    """``helm upgrade`` from a full argv: the program's base name and its verb, nothing secret."""
    words = [os.path.basename(argv[0])] if argv else []
    words += [a for a in argv[1:3] if not a.startswith("-")][:1]
    return " ".join(words)


async def _stop(proc: subprocess.Popen[bytes], exited: asyncio.Future[None], term_grace: float) -> None:
    """SIGTERM the child, give it ``term_grace`` seconds, then SIGKILL its process group; reap it.

    A second cancellation during the grace period escalates to SIGKILL at once and propagates.
    """
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        await asyncio.wait_for(asyncio.shield(exited), term_grace)
    except TimeoutError:
        pass
    except asyncio.CancelledError:
        _kill_group(proc)
        raise
    # Even when helm itself exited, a child it left in the group would live on.
    _kill_group(proc)
    try:
        await asyncio.wait_for(asyncio.shield(exited), _REAP_TIMEOUT)
    except TimeoutError:
        logger.warning("process %s did not exit after SIGKILL", proc.pid)
    proc.poll()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class HelmMeteredRunner(Runner):
    """A runner that records each helm process it runs in ``kduflow_helm_commands`` and
    ``kduflow_helm_command_duration`` (verb, helm major, outcome) and passes everything else, the
    kubectl calls included, straight to the runner it wraps.

    The helm major comes from the first successful ``helm version`` run through it: every activity
    class probes the version before its other helm commands. Until then it is "unknown".
    """

    def __init__(self, inner: Runner, helm: str) -> None:
        self.inner = inner
        self.helm = helm
        self.major: int | None = None

    async def run(self, argv: Sequence[str], **kwargs: Any) -> ProcessResult:
        if not argv or argv[0] != self.helm:
            return await self.inner.run(argv, **kwargs)
        verb = metrics.helm_verb(argv)
        started, outcome = time.monotonic(), "failed"
        try:
            res = await self.inner.run(argv, **kwargs)
            outcome = "ok" if res.ok else "failed"
            if res.ok and verb == "version" and self.major is None:
                with contextlib.suppress(KduflowError):
                    self.major = HelmVersion.parse(res.stdout).major
            return res
        except ProcessTimeout:
            outcome = "timeout"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            metrics.helm_command(verb, self.major, outcome, time.monotonic() - started)


def metered(runner: Runner | None, helm: str) -> HelmMeteredRunner:
    """``runner`` (a new :class:`Runner` when None) recording helm commands; one already metered is
    returned as it is, so a runner shared between activity classes counts each command once."""
    if isinstance(runner, HelmMeteredRunner):
        return runner
    return HelmMeteredRunner(runner or Runner(), helm)
