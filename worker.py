"""kduflow worker: runs every kduflow workflow and activity on one task queue.

Configuration comes from the environment, with flags that mirror it (a flag wins):
the Temporal connection from Temporal's own variables (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE,
TEMPORAL_API_KEY, TEMPORAL_TLS_*, or a TEMPORAL_PROFILE in the SDK's config file), MONGO_URI for
MongoDB, and KDUFLOW_* for the rest (see `python worker.py --help`). A bad value stops the worker
at start with a message naming the variable.

Workers are stateless and interchangeable: start as many as the load needs, on any machine.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.worker import Worker

from kduflow import health, logs, telemetry
from kduflow.config import ConfigError, Settings, add_arguments, temporal_connect_config
from kduflow.plugin import KduflowPlugin

log = logging.getLogger("kduflow.worker")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kduflow-worker", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument(
        "--log-level",
        default=os.environ.get("KDUFLOW_LOG_LEVEL", "INFO"),
        help="logging level (env KDUFLOW_LOG_LEVEL, default %(default)s)",
    )
    parser.add_argument(
        "--log-format",
        default=None,
        help="log format: text, or json for one JSON object per line with the activity's or "
        "workflow's ids when present (env KDUFLOW_LOG_FORMAT, default text)",
    )
    return parser.parse_args(argv)


def log_format(args: argparse.Namespace) -> str:
    """``--log-format``, else ``KDUFLOW_LOG_FORMAT``, else "text".

    Raises:
        ConfigError: naming the flag or the variable.
    """
    label, value = ("--log-format", args.log_format) if args.log_format is not None else (
        "KDUFLOW_LOG_FORMAT", os.environ.get("KDUFLOW_LOG_FORMAT", "text"))  # fmt: skip
    fmt = value.strip().lower() or "text"
    if fmt not in logs.LOG_FORMATS:
        raise ConfigError(f"{label}={value!r}: must be one of {', '.join(logs.LOG_FORMATS)}")
    return fmt


async def run_worker(
    settings: Settings, stop: asyncio.Event, runtime: Runtime | None = None, interceptors: Sequence[Any] = ()
) -> None:
    connect = temporal_connect_config(os.environ)
    plugin = KduflowPlugin(settings=settings)
    # On the client, so its payload codec (when a key is set) applies; the worker inherits the plugin
    # and the client's interceptors (tracing). The runtime, when given, serves the metrics.
    client = await Client.connect(
        **connect, plugins=[plugin], interceptors=list(interceptors), runtime=runtime
    )
    # After the graceful period, running activities are cancelled as a worker shutdown: helm is left
    # running (a redeploy is not a cancellation) and the next attempt adopts its outcome.
    grace = timedelta(seconds=settings.graceful_shutdown)
    worker = Worker(client, task_queue=settings.task_queue, graceful_shutdown_timeout=grace)
    if not plugin.encrypts_payloads:
        log.warning(
            "KDUFLOW_SECRET_KEY is not set: workflow inputs (chart values, kubeconfigs) are stored "
            "unencrypted in Temporal histories"
        )
    log.info(
        "kduflow worker on %s, task queue %r; %s",
        connect.get("target_host"),
        settings.task_queue,
        settings.describe(),
    )
    async with worker, health.reporting(
        settings.health_file, settings.health_interval, worker, client, plugin.store, settings.task_queue
    ):
        await stop.wait()
        log.info("stopping: letting running activities finish (up to %s)", grace)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        fmt = log_format(args)
        logs.configure(args.log_level, fmt)
        settings = Settings.from_args(args, os.environ)
        interceptors = telemetry.tracing_interceptors(settings)
        runtime = telemetry.runtime(settings)
    except ConfigError as err:
        print(f"kduflow-worker: {err}", file=sys.stderr)
        return 2
    if runtime is not None:
        log.info("serving metrics at http://%s/metrics", settings.metrics_bind)

    async def amain() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, stop, runtime, interceptors)

    asyncio.run(amain())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
