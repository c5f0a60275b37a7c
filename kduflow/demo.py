"""The kduflow demo: ``./run demo``.

Starts everything on this machine (nothing leaves 127.0.0.1): the ``temporal`` dev server, the
embedded store, a sandbox Kubernetes cluster, a chart repository with the project's test charts,
and a kduflow worker. It then drives the KDU lifecycle with the real ``temporal`` CLI, printing
every command before running it, so each step can be copied and replayed by hand:

1. InitCluster registers the sandbox cluster, SyncRepos adds the chart repository;
2. InstallKdu installs ``demo/webapp`` 0.1.0 with a status heartbeat into MongoDB;
3. UpgradeKdu to 0.2.0 succeeds; a second UpgradeKdu with ``ready: false`` never becomes ready
   and is rolled back to the recorded revision;
4. ScaleKdu to 3 replicas, KduServices, KduStatus;
5. UninstallKdu.

Ctrl-C stops everything cleanly. ``--keep`` leaves it all running after the script, to try more
commands; ``--helm 3`` uses helm 3.17 instead of helm 4.3.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from kduflow.devserver import LOOPBACK_NETWORKS, ROOT, dev_server, free_port, temporal_binary

TASK_QUEUE = "kduflow"
CLUSTER = "sandbox-1"
NS = "demo"
RELEASE = "demo-web"
NSR_ID = "nsr-demo"

BOLD, DIM, GREEN, RED, RESET = "\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m"
if not sys.stdout.isatty() or os.environ.get("NO_COLOR"):
    BOLD = DIM = GREEN = RED = RESET = ""


def say(text: str) -> None:
    print(f"\n{BOLD}== {text}{RESET}", flush=True)


class Demo:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.address = ""
        self.store: Any = None

    def temporal(self, *argv: str, input_obj: Any = None, expect_failure: bool = False) -> Any:
        """Run one ``temporal`` CLI command, printing it first; returns its JSON result."""
        cmd = [temporal_binary(), *argv, "--address", self.address]
        if input_obj is not None:
            cmd += ["--input", json.dumps(input_obj)]
        shown = " ".join(shlex.quote(a) for a in ["temporal", *argv])
        if input_obj is not None:
            shown += " \\\n    --input " + shlex.quote(json.dumps(input_obj))
        print(f"{DIM}$ {shown}{RESET}", flush=True)
        started = time.monotonic()
        proc = subprocess.run([*cmd, "--output", "json"], capture_output=True, text=True, check=False)
        took = time.monotonic() - started
        result = parse_cli_json(proc.stdout)
        failed = proc.returncode != 0 or (
            isinstance(result, dict) and result.get("status") not in (None, "COMPLETED")
        )
        if failed and not expect_failure:
            raise SystemExit(
                f"{RED}command failed ({took:.1f}s):{RESET}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )
        colour = RED if failed else GREEN
        print(f"{colour}{'failed as expected' if failed else 'ok'} in {took:.1f}s{RESET}")
        return result

    def execute(self, wf_type: str, wf_id: str, payload: dict[str, Any], expect_failure: bool = False) -> Any:
        return self.temporal(
            "workflow",
            "execute",
            "--type",
            wf_type,
            "--task-queue",
            TASK_QUEUE,
            "--workflow-id",
            wf_id,
            "--id-reuse-policy",
            "AllowDuplicate",
            input_obj=payload,
            expect_failure=expect_failure,
        )

    async def show_status(self) -> None:
        doc = await self.store.find_one("nsrs", {"_id": NSR_ID})
        kdu = (((doc or {}).get("_admin") or {}).get("deployed") or {}).get("K8s", [{}])[0]
        fields = {k: kdu.get(k) for k in ("operation", "status", "detailed-status", "status-time")}
        print(textwrap.indent(json.dumps(fields, indent=2), "   nsrs." + NSR_ID + " _admin.deployed.K8s.0 "))
        sub = kdu.get("kduflow") or {}
        keep = (
            "phase",
            "release_status",
            "revision",
            "ready",
            "ready_resources",
            "total_resources",
            "not_ready",
        )
        print(textwrap.indent(json.dumps({k: sub.get(k) for k in keep}, indent=2), "   .kduflow "))


def parse_cli_json(stdout: str) -> Any:
    """`temporal workflow execute -o json` prints one JSON document; be lenient about leading text."""
    start = min((i for i in (stdout.find("{"), stdout.find("[")) if i >= 0), default=-1)
    if start < 0:
        return None
    try:
        return json.loads(stdout[start:])
    except json.JSONDecodeError:
        return None


def workflow_result(out: Any) -> Any:
    if isinstance(out, dict):
        return out.get("result", out)
    return out


async def run_demo(args: argparse.Namespace) -> None:
    # Imported here so `--help` works before the tools are fetched.
    from temporalio.client import Client
    from temporalio.worker import Worker

    from activities.store import Store
    from kduflow.config import Settings
    from kduflow.plugin import KduflowPlugin
    from sandbox import SandboxCluster
    from sandbox.chartrepo import chart_repo

    dialect = f"helm{args.helm}"
    helm, kubectl = ROOT / "tools" / dialect / "helm", ROOT / "tools" / dialect / "kubectl"
    workdir = Path(tempfile.mkdtemp(prefix="kduflow-demo-"))
    demo = Demo(args, workdir)
    async with AsyncExitStack() as stack:
        say(f"Starting: temporal dev server, sandbox cluster, chart repository, worker ({dialect})")
        port = args.port or free_port()
        demo.address = stack.enter_context(dev_server(workdir / "temporal", port, args.ui_port))
        print(
            f"   temporal dev server  {demo.address}"
            + (f"  (UI http://127.0.0.1:{args.ui_port})" if args.ui_port else "")
        )
        cluster = stack.enter_context(SandboxCluster(tls=True, ready_delay=1.0, lb_delay=2.0))
        kubeconfig = cluster.write_kubeconfig(workdir / "kubeconfig")
        print(f"   sandbox cluster      {cluster.url}  (kubeconfig {kubeconfig})")
        repo = stack.enter_context(chart_repo(helm))
        print(f"   chart repository     {repo.url}")

        settings = Settings.from_env(
            {},
            helm=str(helm),
            kubectl=str(kubectl),
            state_dir=workdir / "state",
            task_queue=TASK_QUEUE,
            poll_interval=1.0,
            # The sandbox cluster listens on loopback: let cluster servers be there.
            private_networks=LOOPBACK_NETWORKS,
        )
        store = Store.open(settings)
        demo.store = store
        stack.push_async_callback(store.close)
        await store.insert_one(
            "k8srepos", {"_id": "repo-demo", "name": "demo", "url": repo.url, "type": "helm-chart"}
        )
        await store.insert_one(
            "k8sclusters",
            {
                "_id": CLUSTER,
                "name": "sandbox",
                "credentials": cluster.kubeconfig(),
                "_admin": {"helm_chart_repos": ["repo-demo"]},
            },
        )
        await store.insert_one(
            "nsrs", {"_id": NSR_ID, "_admin": {"deployed": {"K8s": [{"kdu-name": "web"}]}}}
        )
        client = await Client.connect(demo.address)
        worker = Worker(
            client, task_queue=TASK_QUEUE, plugins=[KduflowPlugin(settings=settings, store=store)]
        )
        await stack.enter_async_context(worker)
        print(f"   worker               task queue {TASK_QUEUE!r}, state {settings.state_dir}")
        print(f"                        cluster servers allowed on {', '.join(LOOPBACK_NETWORKS)} "
              "(KDUFLOW_ALLOW_PRIVATE_NETWORKS) for the sandbox")

        db_dict = {"collection": "nsrs", "filter": {"_id": NSR_ID}, "path": "_admin.deployed.K8s.0"}
        run = asyncio.to_thread

        say("1. Register the cluster and synchronise its chart repositories")
        await run(demo.execute, "InitCluster", "demo-init", {"cluster_uuid": CLUSTER, "namespace": NS})
        out = await run(demo.execute, "SyncRepos", "demo-sync", {"cluster_uuid": CLUSTER})
        print(f"   {json.dumps(workflow_result(out))}")

        say("2. Install demo/webapp 0.1.0 (status heartbeat into nsrs)")
        out = await run(
            demo.execute,
            "InstallKdu",
            "demo-install",
            {
                "cluster_uuid": CLUSTER,
                "kdu_model": "demo/webapp:0.1.0",
                "kdu_instance": RELEASE,
                "namespace": NS,
                "params": {"replicaCount": 1},
                "db_dict": db_dict,
                "timeout": 120,
            },
        )
        print(f"   {json.dumps(workflow_result(out))}")
        await demo.show_status()

        say("3a. Upgrade to 0.2.0")
        await run(
            demo.execute,
            "UpgradeKdu",
            "demo-upgrade",
            {
                "cluster_uuid": CLUSTER,
                "kdu_instance": RELEASE,
                "namespace": NS,
                "kdu_model": "demo/webapp",
                "version": "0.2.0",
                "db_dict": db_dict,
                "timeout": 120,
            },
        )
        say("3b. Upgrade that never becomes ready (ready=false): rolled back to the recorded revision")
        out = await run(
            demo.execute,
            "UpgradeKdu",
            "demo-upgrade-bad",
            {
                "cluster_uuid": CLUSTER,
                "kdu_instance": RELEASE,
                "namespace": NS,
                "params": {"ready": False},
                "db_dict": db_dict,
                "timeout": 8,
            },
            True,
        )
        failure = out.get("failure") or out.get("result") if isinstance(out, dict) else out
        print(f"   {json.dumps(failure)[:600]}")
        await demo.show_status()

        say("4. Scale to 3 replicas, then read services and status")
        await run(
            demo.execute,
            "ScaleKdu",
            "demo-scale",
            {
                "cluster_uuid": CLUSTER,
                "kdu_instance": RELEASE,
                "namespace": NS,
                "scale": 3,
                "db_dict": db_dict,
                "timeout": 120,
            },
        )
        out = await run(
            demo.execute,
            "KduServices",
            "demo-services",
            {"cluster_uuid": CLUSTER, "kdu_instance": RELEASE, "namespace": NS},
        )
        print(f"   {json.dumps(workflow_result(out))}")
        out = await run(
            demo.execute,
            "KduStatus",
            "demo-status",
            {"cluster_uuid": CLUSTER, "kdu_instance": RELEASE, "namespace": NS},
        )
        print(f"   {json.dumps(workflow_result(out))[:800]}")
        await demo.show_status()

        say("5. Uninstall")
        out = await run(
            demo.execute,
            "UninstallKdu",
            "demo-uninstall",
            {"cluster_uuid": CLUSTER, "kdu_instance": RELEASE, "namespace": NS, "db_dict": db_dict},
        )
        print(f"   {json.dumps(workflow_result(out))}")

        say(f"Done: {cluster.total_requests()} Kubernetes API requests served by the sandbox")
        if args.keep:
            print(
                f"Everything keeps running; try: temporal workflow list --address {demo.address}\n"
                f"KUBECONFIG={kubeconfig} {kubectl} get all -A\nCtrl-C to stop."
            )
            await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--helm", choices=["3", "4"], default="4", help="helm major version (default %(default)s)"
    )
    parser.add_argument("--port", type=int, default=0, help="dev server port (default: a free one)")
    parser.add_argument("--ui-port", type=int, default=None, help="also serve the Temporal UI on this port")
    parser.add_argument("--keep", action="store_true", help="keep everything running after the demo")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # An activity failing on purpose (step 3b) is logged by the SDK with a traceback: keep the demo readable.
    logging.getLogger("temporalio.activity").setLevel(logging.ERROR)

    async def until_signal() -> None:
        # Ctrl-C or SIGTERM cancels the demo, so every `async with` above unwinds: the worker shuts
        # down, the sandbox, chart repository and dev server stop; nothing is left running.
        main = asyncio.current_task()
        assert main is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, main.cancel)
        await run_demo(args)

    try:
        asyncio.run(until_signal())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\nstopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
