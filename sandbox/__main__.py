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
    except ValueError as e:
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
