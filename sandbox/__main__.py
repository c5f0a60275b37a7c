"""``python -m sandbox``: run one sandbox cluster until SIGINT/SIGTERM.

Prints one JSON line ``{"url", "kubeconfig", "pid", "token_file"?}`` on stdout once serving. The
token is never printed: it is inside the kubeconfig (mode 0600).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from .cluster import SandboxCluster


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sandbox", description="Run a Kubernetes API emulator.")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    p.add_argument("--kubeconfig-out", required=True, type=Path, help="where to write the kubeconfig (0600)")
    p.add_argument("--namespace", default="default", help="the kubeconfig context's namespace")
    p.add_argument("--plain-http", action="store_true", help="serve HTTP instead of HTTPS")
    p.add_argument(
        "--token",
        default=None,
        help="bearer token (default: generated). Prefer SANDBOX_TOKEN: argv is visible to others",
    )
    p.add_argument("--ready-delay", type=float, default=0.3)
    p.add_argument("--lb-delay", type=float, default=0.5)
    p.add_argument("--delete-delay", type=float, default=0.0)
    p.add_argument("--aggregated", action="store_true", help="serve aggregated discovery")
    p.add_argument("--seed", type=int, default=0)
    faults = p.add_argument_group("fault injection (off by default; deterministic for a --seed)")
    faults.add_argument("--error-rate", type=float, default=0.0, help="share of requests answered an error")
    faults.add_argument("--error-status", type=int, default=500, help="HTTP status of those (default 500)")
    faults.add_argument("--retry-after", type=int, default=None, help="Retry-After seconds sent with them")
    faults.add_argument("--drop-rate", type=float, default=0.0, help="share of connections closed unanswered")
    faults.add_argument("--latency", type=float, default=0.0, help="seconds added to every API request")
    faults.add_argument(
        "--fault-filter", default=None, help='fnmatch patterns on "VERB /path/{template}", "|"-separated'
    )
    faults.add_argument("--drop-filter", default=None, help="drop only requests matching these patterns")
    faults.add_argument("--fault-limit", type=int, default=None, help="inject at most this many faults")
    args = p.parse_args(argv)
    token = args.token or os.environ.get("SANDBOX_TOKEN") or None
    try:
        cluster = SandboxCluster(
            tls=not args.plain_http,
            token=token,
            ready_delay=args.ready_delay,
            lb_delay=args.lb_delay,
            delete_delay=args.delete_delay,
            aggregated_discovery=args.aggregated,
            seed=args.seed,
            port=args.port,
        )
        cluster.set_faults(
            args.error_rate,
            args.drop_rate,
            args.latency,
            error_status=args.error_status,
            retry_after=args.retry_after,
            only=args.fault_filter,
            drop_only=args.drop_filter,
            limit=args.fault_limit,
        )
    except (TypeError, ValueError) as e:
        p.error(str(e))
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    cluster.start()
    try:
        path = cluster.write_kubeconfig(args.kubeconfig_out, args.namespace)
        print(json.dumps({"url": cluster.url, "kubeconfig": str(path), "pid": os.getpid()}), flush=True)
        while not done.wait(3600):
            pass
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
