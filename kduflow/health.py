"""Worker health: a file the worker rewrites while it can do its job, and a check that reads it.

With ``KDUFLOW_HEALTH_FILE`` set, the worker checks every ``KDUFLOW_HEALTH_INTERVAL`` seconds that

- its Temporal worker has not shut down (after a fatal error),
- the Temporal frontend answers (``GetSystemInfo``, over the worker's own connection), and
- the document store answers (one read, with the worker's credentials),

and writes the outcome, with the time of the check, to the file (a temporary file renamed over it,
so a reader never sees half of it). The file is removed when the worker starts and when it exits.

``python -m kduflow.health`` (a container's health check, a Kubernetes exec probe) exits 0 when
the file is fresh and says healthy, and 1 with the reason otherwise: missing (starting, stopped),
stale (the process hangs or died without removing it: older than three intervals), or the failed
checks. ``--liveness`` fails only when a restart would help: no fresh file, or the worker shut
down; Temporal or the store being away passes (the worker recovers when they are back). The probe
does no network I/O, so it never adds load to Temporal or MongoDB.

Both ends read the same variables, so in a container the probe needs no arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

log = logging.getLogger("kduflow.health")

HEALTH_FILE_ENV = "KDUFLOW_HEALTH_FILE"
HEALTH_INTERVAL_ENV = "KDUFLOW_HEALTH_INTERVAL"
DEFAULT_INTERVAL = 10.0
#: A file older than this many intervals is stale: the writer stopped without removing it.
STALE_AFTER_INTERVALS = 3
#: Each check gets at most this share of the interval (and at most 10 s).
CHECK_TIMEOUT_SHARE = 0.8


class _Pingable(Protocol):
    async def ping(self) -> None: ...


class _Runnable(Protocol):
    @property
    def is_shutdown(self) -> bool: ...


@dataclass(frozen=True)
class Report:
    """One round of checks, as written to the health file."""

    healthy: bool
    checked_at: float
    interval: float
    problems: tuple[str, ...] = ()
    task_queue: str = ""
    pid: int = 0

    def to_json(self) -> str:
        return json.dumps(
            {
                "healthy": self.healthy,
                "checked_at": self.checked_at,
                "interval": self.interval,
                "problems": list(self.problems),
                "task_queue": self.task_queue,
                "pid": self.pid,
            }
        )


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


async def check_once(worker: _Runnable, client: Any, store: _Pingable, timeout: float) -> list[str]:
    """The problems found by one round of checks (empty: healthy). Never raises but on cancellation."""
    problems: list[str] = []
    # Only after a shutdown: the worker's run starts in a task of its own, a moment after the
    # ``async with`` around this check has begun.
    if worker.is_shutdown:
        problems.append("temporal worker: shut down")
    async def temporal() -> None:
        request = GetSystemInfoRequest()
        await client.workflow_service.get_system_info(request, timeout=timedelta(seconds=timeout))

    for what, check in (("temporal frontend", temporal), ("document store", store.ping)):
        try:
            await asyncio.wait_for(check(), timeout)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            problems.append(f"{what}: no answer within {timeout:g} s")
        except Exception as err:  # any failure of the check is the finding, not an error of the loop
            problems.append(f"{what}: {_short(err)}")
    return problems


def write_atomically(path: Path, text: str) -> None:
    """``text`` into ``path`` via a temporary file in the same directory and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


@contextlib.asynccontextmanager
async def reporting(
    path: Path | None, interval: float, worker: _Runnable, client: Any, store: _Pingable, task_queue: str = ""
) -> AsyncIterator[None]:
    """While the block runs, check and write ``path`` every ``interval`` seconds (nothing when
    ``path`` is None). The file is removed before the first check and when the block ends."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove(path)
    timeout = min(10.0, interval * CHECK_TIMEOUT_SHARE)
    last_problems: list[str] | None = None

    async def loop() -> None:
        nonlocal last_problems
        while True:
            problems = await check_once(worker, client, store, timeout)
            report = Report(not problems, time.time(), interval, tuple(problems), task_queue, os.getpid())
            try:
                write_atomically(path, report.to_json())
            except OSError as err:
                log.error("cannot write the health file %s: %s", path, err)
            if problems != last_problems:
                if problems:
                    log.warning("worker unhealthy: %s", "; ".join(problems))
                elif last_problems:
                    log.info("worker healthy again")
                last_problems = problems
            await asyncio.sleep(interval)

    task = asyncio.create_task(loop(), name="kduflow-health")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        _remove(path)


# ---- the probe ---------------------------------------------------------------------------------


#: Prefix of the problem a shut-down worker reports: the one failed check a restart cures.
WORKER_PROBLEM = "temporal worker:"


def evaluate(path: Path, now: float | None = None, liveness: bool = False) -> tuple[bool, str]:
    """(healthy, one-line reason) from the health file at ``path``.

    ``liveness``: fail only when a restart would help: the file is missing or stale (the process
    died or hangs) or the worker shut down. Temporal or the store not answering is reported but
    passes: the worker recovers by itself when they are back.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        healthy, checked_at = bool(data["healthy"]), float(data["checked_at"])
        interval = float(data["interval"])
        problems = [str(p) for p in data.get("problems", [])]
    except FileNotFoundError:
        return False, f"no health file at {path}: the worker is starting, stopped, or does not write it"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return False, f"unreadable health file {path}: {_short(err)}"
    age = (time.time() if now is None else now) - checked_at
    limit = STALE_AFTER_INTERVALS * interval
    if age > limit:
        return False, f"stale: last check {age:.0f} s ago (more than {limit:g} s): the worker hangs or died"
    if not healthy:
        reason = "unhealthy: " + ("; ".join(problems) or "no reason recorded")
        if liveness and not any(p.startswith(WORKER_PROBLEM) for p in problems) and problems:
            return True, f"alive, {reason}"
        return False, reason
    return True, f"healthy (checked {max(age, 0):.0f} s ago, task queue {data.get('task_queue', '')})"


def probe_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m kduflow.health``."""
    parser = argparse.ArgumentParser(
        prog="python -m kduflow.health",
        description="Exit 0 when the worker's health file is fresh and healthy, 1 otherwise, 2 when no "
        "health file is configured.",
    )
    parser.add_argument(
        "--file", type=Path, default=None, help=f"the worker's health file [env {HEALTH_FILE_ENV}]"
    )
    parser.add_argument(
        "--liveness",
        action="store_true",
        help="fail only when a restart would help (no fresh file, or the worker shut down); Temporal or "
        "MongoDB not answering passes, since the worker recovers when they are back",
    )
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    args = probe_parser().parse_args(argv)
    path = args.file or (Path(environ[HEALTH_FILE_ENV]) if environ.get(HEALTH_FILE_ENV) else None)
    if path is None:
        print(f"kduflow health: set {HEALTH_FILE_ENV} (as for the worker) or pass --file", file=sys.stderr)
        return 2
    healthy, reason = evaluate(path, liveness=args.liveness)
    print(f"kduflow health: {reason}", file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    raise SystemExit(main())
