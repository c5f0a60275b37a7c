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
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

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
    return parser.parse_args(argv)


async def run_worker(settings: Settings, stop: asyncio.Event) -> None:
    connect = temporal_connect_config(os.environ)
    plugin = KduflowPlugin(settings=settings)
    # On the client, so its payload codec (when a key is set) applies; the worker inherits the plugin.
    client = await Client.connect(**connect, plugins=[plugin])
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
    async with worker:
        await stop.wait()
        log.info("stopping: letting running activities finish (up to %s)", grace)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = Settings.from_args(args, os.environ)
    except ConfigError as err:
        print(f"kduflow-worker: {err}", file=sys.stderr)
        return 2

    async def amain() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, stop)

    asyncio.run(amain())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
