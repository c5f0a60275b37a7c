"""No clear-text secret anywhere a run leaves text, with the payload codec on.

One scenario per helm dialect, through a real worker (``KduflowPlugin`` given to the client, with a
secret key, so the payload codec is on), the real ``temporal`` dev server, the sandbox cluster
requiring a bearer token, and a chart repository on 127.0.0.1 behind basic auth whose password is
stored encrypted in ``k8srepos``:

InitCluster (``k8s_creds`` = the sandbox kubeconfig with its token) -> SyncRepos -> an InstallKdu
that never becomes ready (pod-template annotation ``sandbox.kduflow.dev/never-ready``; fails with
``ReleaseFailed``) -> an InstallKdu of a local chart whose template rejects the chart password and
quotes it in its render error (``RenderFailed``). Both installs carry the chart password in
``params`` and a ``db_dict`` pointing at an ``nsrs`` document.

Then the distinctive random secrets (chart password, kubeconfig token, repository password, and the
secret key itself) are searched in clear and base64-encoded at every alignment in: the raw history
of every workflow run (as the server stores it: payloads, failure messages, stack traces), the
cluster's SyncRepos schedule, every log record (root logger at DEBUG: activity, workflow and SDK
loggers included), the process's stdout/stderr, the argv of every process started
(``subprocess.Popen``/``os.exec``/``os.posix_spawn``/``os.spawn`` audit events), and every document
of every collection of the embedded store plus its files. Each place is summarised on stdout.

A second scenario adds a numeric chart secret (a PIN) that the local chart quotes in its render
error: helm's error text then carries a value that is not a string leaf of the values.

The control runs the scenario with the codec off (and no key) and finds the chart password and the
token in the workflow inputs, the PIN in failure messages, and the repository password and the token
in the store, so the search demonstrably finds what it looks for.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import secrets as secrets_module
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.workflowservice.v1 import DescribeScheduleRequest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.worker import Worker

from activities.models import DbDict, InstallKduInput, KduResult
from activities.secretbox import SecretBox, aad_for
from activities.store import Store
from kduflow.config import Settings
from kduflow.plugin import KduflowPlugin
from tests.conftest import HelmTools, helm_tools
from tests.support.charts import CHARTS_DIR
from tests.support.leaks import (
    LogCapture,
    ProcessAudit,
    Report,
    Secret,
    dump_store,
    scan_bytes,
    scan_files,
    scan_history,
    scan_message,
    scan_store_dump,
)
from tests.support.sandbox import LOOPBACK_NETWORKS, sandbox_cluster
from workflows.cluster_models import (
    InitClusterInput,
    InitClusterResult,
    SyncReposInput,
    SyncReposResult,
    schedule_id_for,
)

pytestmark = pytest.mark.e2e

REPO_ID = "repo-leak"
REPO_USER = "leak-user"
NAMESPACE = "leak"

#: A template that rejects the chart's secrets and quotes them in its errors, as validation helpers
#: of many public charts do: helm's render error then carries the caller's value. A numeric PIN (a
#: YAML ``pin: 123456`` is a number, not a string) is checked first.
STRICT_TEMPLATE = """\
{{- $pw := "" }}
{{- if .Values.auth }}{{ $pw = .Values.auth.password | default "" }}{{ end }}
{{- if and .Values.auth .Values.auth.pin }}
{{- fail (printf "auth.pin %d must have 4 digits" (.Values.auth.pin | int64)) }}
{{- end }}
{{- if not (regexMatch "^[a-z]+$" $pw) }}
{{- fail (printf "auth.password %q must be lower-case letters only" $pw) }}
{{- end }}
"""


@dataclass
class Outcome:
    report: Report
    #: Problems with the scenario itself (not leaks): an unexpected error type, a failed repository.
    problems: list[str]


def new_key() -> str:
    return f"leak:{base64.b64encode(os.urandom(32)).decode()}"


def strict_chart(charts_dir: Path) -> str:
    chart = charts_dir / "strict"
    shutil.copytree(CHARTS_DIR / "webapp", chart)
    (chart / "templates" / "validate.yaml").write_text(STRICT_TEMPLATE)
    return chart.name


async def expect_failure(
    client: Client, arg: Any, workflow_id: str, task_queue: str
) -> ApplicationError | str:
    try:
        await client.execute_workflow(
            "InstallKdu", arg, id=workflow_id, task_queue=task_queue, result_type=KduResult
        )
    except WorkflowFailureError as err:
        cause: BaseException | None = err.cause
        while cause is not None and not isinstance(cause, ApplicationError):
            cause = getattr(cause, "cause", None)
        return cause if isinstance(cause, ApplicationError) else f"no ApplicationError in {err!r}"
    return "the workflow succeeded"


async def workflow_runs(raw: Client, task_queue: str, started: list[str]) -> list[tuple[str, str]]:
    """(workflow id, run id) of every run on ``task_queue``: visibility, plus the ids started here and
    every child found in their histories."""
    runs: set[tuple[str, str]] = set()
    async for wf in raw.list_workflows(f"TaskQueue = '{task_queue}'"):
        runs.add((wf.id, wf.run_id))
    pending = [(wid, "") for wid in started] + sorted(runs)
    seen: set[tuple[str, str]] = set()
    while pending:
        wid, run_id = pending.pop()
        handle = raw.get_workflow_handle(wid, run_id=run_id or None)
        run_id = run_id or (await handle.describe()).run_id
        if (wid, run_id) in seen:
            continue
        seen.add((wid, run_id))
        history = await raw.get_workflow_handle(wid, run_id=run_id).fetch_history()
        for event in history.events:
            if event.HasField("child_workflow_execution_started_event_attributes"):
                child = event.child_workflow_execution_started_event_attributes.workflow_execution
                pending.append((child.workflow_id, child.run_id))
    return sorted(seen)


async def run_scenario(
    local_env: Any,
    chart_repo_factory: Any,
    tmp_path: Path,
    capfd: Any,
    tools: HelmTools,
    *,
    encrypt: bool,
    pin: bool = False,
) -> Outcome:
    """Run the scenario (see the module docstring) and search every place.

    ``encrypt``: a secret key in the settings (payload codec on, repository password stored
    encrypted). ``pin``: the chart values also carry a numeric PIN, which the local chart quotes in
    its render error (so the render-failure install fails on the PIN rather than the password).
    """
    tag = uuid.uuid4().hex[:8]
    chart_pw = Secret("chart-password", f"pw-{uuid.uuid4().hex}")
    token = Secret("kubeconfig-token", f"tok-{uuid.uuid4().hex}")
    repo_pw = Secret("repo-password", f"rp-{uuid.uuid4().hex}")
    key = new_key() if encrypt else ""
    secrets = [chart_pw, token, repo_pw] + ([Secret("secret-key", key.split(":", 1)[1])] if key else [])
    auth: dict[str, Any] = {"password": chart_pw.value}
    if pin:
        number = secrets_module.randbelow(9 * 10**14) + 10**14  # 15 digits, exact in a float64
        secrets.append(Secret("chart-pin", str(number)))
        auth["pin"] = number
    report = Report(secrets)
    problems: list[str] = []
    logs, audit = LogCapture(), ProcessAudit()
    state = tmp_path / "state"
    charts_dir = tmp_path / "charts"
    charts_dir.mkdir()
    task_queue = f"leak-{tools.dialect}-{tag}"
    started: list[str] = []
    raw = local_env.client  # no codec: reads histories as the server stores them
    cluster_uuid = f"leak-cluster-{tag}"
    schedule_id = schedule_id_for(cluster_uuid)

    with logs.attached(), audit.armed():
        repo = chart_repo_factory(auth=(REPO_USER, repo_pw.value))
        local_chart = strict_chart(charts_dir)
        settings = Settings.from_env(
            {},
            helm=str(tools.helm),
            kubectl=str(tools.kubectl),
            state_dir=state,
            charts_dir=charts_dir,
            poll_interval=0.5,
            secret_key=key,
            private_networks=LOOPBACK_NETWORKS,
        )
        store = Store.open(settings)
        try:
            with sandbox_cluster(token=token.value, ready_delay=0.2) as cluster:
                box = SecretBox.from_setting(key)
                password: Any = repo_pw.value
                if box is not None:
                    password = box.encrypt_json(repo_pw.value, aad_for("k8srepos", REPO_ID, "password"))
                await store.insert_one(
                    "k8srepos",
                    {
                        "_id": REPO_ID,
                        "name": "leak",
                        "url": repo.url,
                        "type": "helm-chart",
                        "user": REPO_USER,
                        "password": password,
                    },
                )
                # Registered without credentials: InitCluster stores the kubeconfig it is given.
                await store.insert_one(
                    "k8sclusters",
                    {"_id": cluster_uuid, "name": "leak", "_admin": {"helm_chart_repos": [REPO_ID]}},
                )
                nsr_ids = [f"nsr-{tag}-{n}" for n in range(2)]
                for nsr_id in nsr_ids:
                    await store.insert_one(
                        "nsrs", {"_id": nsr_id, "_admin": {"deployed": {"K8s": [{"kdu-name": "k"}]}}}
                    )
                plugin = KduflowPlugin(settings=settings, store=store)
                assert plugin.encrypts_payloads is encrypt
                # The plugin on the client: the payload codec applies, and the worker inherits the plugin.
                client = Client(**{**raw.config(), "plugins": [plugin]})

                def wid(name: str) -> str:
                    started.append(f"leak-{name}-{tools.dialect}-{tag}")
                    return started[-1]

                async with Worker(client, task_queue=task_queue):
                    init = await client.execute_workflow(
                        "InitCluster",
                        InitClusterInput(
                            cluster_uuid=cluster_uuid, k8s_creds=cluster.kubeconfig(), namespace=NAMESPACE
                        ),
                        id=wid("InitCluster"),
                        task_queue=task_queue,
                        result_type=InitClusterResult,
                    )
                    if init.schedule_id != schedule_id:
                        problems.append(f"schedule {init.schedule_id!r}, expected {schedule_id!r}")
                    synced = await client.execute_workflow(
                        "SyncRepos",
                        SyncReposInput(cluster_uuid=cluster_uuid),
                        id=wid("SyncRepos"),
                        task_queue=task_queue,
                        result_type=SyncReposResult,
                    )
                    doc = await store.find_one("k8sclusters", {"_id": cluster_uuid})
                    added = ((doc or {}).get("_admin") or {}).get("helm_charts_added")
                    if synced.failed or added != {REPO_ID: "leak"}:
                        problems.append(f"repository not configured: {synced}, helm_charts_added={added}")

                    never = await expect_failure(
                        client,
                        InstallKduInput(
                            cluster_uuid=cluster_uuid,
                            kdu_model="leak/webapp:0.1.0",
                            kdu_instance=f"never-{tools.dialect}",
                            namespace=NAMESPACE,
                            timeout=4,
                            params={"ready": False, "auth": auth},
                            db_dict=DbDict("nsrs", {"_id": nsr_ids[0]}, "_admin.deployed.K8s.0"),
                        ),
                        wid("InstallKdu-never-ready"),
                        task_queue,
                    )
                    render = await expect_failure(
                        client,
                        InstallKduInput(
                            cluster_uuid=cluster_uuid,
                            kdu_model=local_chart,
                            kdu_instance=f"strict-{tools.dialect}",
                            namespace=NAMESPACE,
                            timeout=30,
                            params={"auth": auth},
                            db_dict=DbDict("nsrs", {"_id": nsr_ids[1]}, "_admin.deployed.K8s.0"),
                        ),
                        wid("InstallKdu-render"),
                        task_queue,
                    )
                    for what, err, expected in (
                        ("never-ready install", never, "ReleaseFailed"),
                        ("render-failure install", render, "RenderFailed"),
                    ):
                        got = err.type if isinstance(err, ApplicationError) else err
                        if got != expected:
                            problems.append(f"{what}: expected {expected}, got {got}")

            # Every workflow run on the task queue, as the server stores it.
            runs = await workflow_runs(raw, task_queue, started)
            for workflow_id, run_id in runs:
                history = await raw.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
                report.add("history", "", scan_history(secrets, workflow_id, history))
            report.searched["history"] = f"{len(runs)} workflow runs"
            described = await raw.workflow_service.describe_schedule(
                DescribeScheduleRequest(namespace=raw.namespace, schedule_id=schedule_id)
            )
            report.add("schedule", schedule_id, scan_message(secrets, described, "schedule", schedule_id))

            dump = await dump_store(store, settings.mongo_db)
            n_docs = sum(len(docs) for colls in dump.values() for docs in colls.values())
            n_colls = sum(len(colls) for colls in dump.values())
            report.add("store documents", f"{n_docs} documents in {n_colls} collections",
                       scan_store_dump(secrets, dump, "store documents"))
        finally:
            with contextlib.suppress(RPCError):  # absent when InitCluster failed early
                await raw.get_schedule_handle(schedule_id).delete()
            await store.close()

    store_dir = state / "store"
    n_files, hits = scan_files(secrets, store_dir, "store files")
    report.add("store files", f"{n_files} files", hits)
    report.add("logs", f"{len(logs.records)} records", logs.scan(secrets, "logs"))
    out, err = capfd.readouterr()
    report.add(
        "stdout/stderr",
        f"{len(out) + len(err)} characters",
        scan_bytes(secrets, out, "stdout/stderr", "stdout")
        + scan_bytes(secrets, err, "stdout/stderr", "stderr"),
    )
    report.add("process argv", f"{len(audit.spawned)} processes", audit.scan(secrets, "process argv"))
    with capfd.disabled():
        # Not asserted: the per-cluster kubeconfig and helm's repository files are the materialised
        # credentials helm and kubectl read (0600 files under the state directory, by design), and
        # process environments hold paths to them.
        files, state_hits = scan_files(secrets, state, "state dir (by design)", skip=[store_dir])
        env_hits = audit.scan_env(secrets, "process env (by design)")
        informational = Report(secrets)
        informational.add("state dir (by design)", f"{files} files", state_hits)
        informational.add("process env (by design)", f"{len(audit.spawned)} processes", env_hits)
        mode = "codec ON" if encrypt else "codec OFF (control)"
        print()
        print(report.summary(f"{tools.dialect}, {mode}"))
        print(informational.summary("informational, not asserted"))
        if problems:
            print("scenario problems:", *problems, sep="\n  ")
    return Outcome(report, problems)


@pytest.mark.parametrize("dialect", ["helm4", "helm3"])
async def test_no_clear_text_secret_anywhere_with_the_codec_on(
    dialect, local_env, chart_repo_factory, tmp_path, capfd
):
    outcome = await run_scenario(
        local_env, chart_repo_factory, tmp_path, capfd, helm_tools(dialect), encrypt=True
    )
    leaks = outcome.report.found()
    assert not leaks, "clear-text secrets found:\n" + "\n".join(str(h) for h in leaks)
    assert not outcome.problems, outcome.problems


async def test_no_clear_text_numeric_chart_secret_quoted_by_helm(
    local_env, chart_repo_factory, tmp_path, capfd
):
    """A chart value that is a number is not a string leaf of the values, yet a chart can quote it in
    an error: with the codec on it must not reach histories (failure messages are encoded), logs,
    process arguments or the store either."""
    outcome = await run_scenario(
        local_env, chart_repo_factory, tmp_path, capfd, helm_tools("helm4"), encrypt=True, pin=True
    )
    leaks = outcome.report.found()
    assert not leaks, "clear-text secrets found:\n" + "\n".join(str(h) for h in leaks)
    assert not outcome.problems, outcome.problems


async def test_control_codec_off_the_search_finds_the_secrets(local_env, chart_repo_factory, tmp_path, capfd):
    outcome = await run_scenario(
        local_env, chart_repo_factory, tmp_path, capfd, helm_tools("helm4"), encrypt=False, pin=True
    )
    report = outcome.report
    # Without the codec the workflow inputs are in the history in clear (base64 JSON payloads).
    assert report.found("history", "chart-password"), report.summary()
    assert report.found("history", "kubeconfig-token"), report.summary()
    # The chart quotes the numeric PIN in its render error; the activity scrubs values from error
    # messages before they become failures, so even without the codec no failure carries it.
    assert report.found("history", "chart-pin"), report.summary()
    assert not [h for h in report.found("history", "chart-pin") if "failure" in h.where], report.summary()
    # Without a key the repository password and the kubeconfig are stored as given.
    assert report.found("store documents", "repo-password"), report.summary()
    assert report.found("store documents", "kubeconfig-token"), report.summary()
    assert not outcome.problems, outcome.problems


def test_the_search_finds_planted_secrets(tmp_path):
    """Every place's search finds a secret planted there: clear, base64 at any alignment, argv, logs."""
    secret = Secret("planted", f"pw-{uuid.uuid4().hex}")
    for prefix in (b"", b"x", b"xy"):
        blob = base64.b64encode(prefix + b'{"password": "' + secret.value.encode() + b'"}')
        assert scan_bytes([secret], blob, "t", "w"), prefix
        assert scan_bytes([secret], base64.urlsafe_b64encode(prefix + secret.value.encode()), "t", "w")
    assert not scan_bytes([secret], base64.b64encode(b"pw-" + uuid.uuid4().hex.encode()), "t", "w")

    logs, audit = LogCapture(), ProcessAudit()
    with logs.attached(), audit.armed():
        logging.getLogger("kduflow.test").debug("value %s", secret.value)
        try:
            raise ValueError(secret.value)
        except ValueError:
            logging.getLogger("kduflow.test").warning("failed", exc_info=True)
        subprocess.run([sys.executable, "-c", "pass", secret.value], check=True)
    subprocess.run([sys.executable, "-c", "pass", secret.value], check=True)  # disarmed: not recorded
    assert len(logs.scan([secret])) == 2
    assert len(audit.spawned) == 1 and len(audit.scan([secret])) == 1
    hit = audit.scan([secret])[0]
    assert secret.value not in hit.excerpt and "<planted>" in hit.excerpt


async def test_plugin_given_only_to_the_worker_with_a_key_refuses(local_env, tmp_path):
    """With a secret key, the plugin on a worker whose client has no codec would put every secret in
    the history in clear: the worker must refuse to be built and say to give the plugin to the client."""
    tools = helm_tools("helm4")
    settings = Settings.from_env(
        {},
        helm=str(tools.helm),
        kubectl=str(tools.kubectl),
        state_dir=tmp_path / "state",
        secret_key=new_key(),
    )
    store = Store.open(settings)
    try:
        plugin = KduflowPlugin(settings=settings, store=store)
        with pytest.raises(Exception, match=r"(?is)plugin.*client|client.*plugin") as info:
            Worker(local_env.client, task_queue=f"refuse-{uuid.uuid4()}", plugins=[plugin])
        print(f"\nrefused with: {info.value!r}")
    finally:
        await store.close()
