"""Metrics and logs of a real worker: ``python worker.py`` with ``KDUFLOW_METRICS_BIND`` and
``KDUFLOW_LOG_FORMAT=json``, the real dev server, a sandbox cluster and the real helm 4.

The worker's ``/metrics`` endpoint (the SDK runtime's Prometheus exporter) is scraped after real
operations: the SDK's own ``temporal_*`` metrics and every ``kduflow_*`` metric must be there with
their attributes and values that fit what ran. Smaller tests check that the metric functions are
no-ops outside an activity or workflow, and the JSON log format.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError

from activities.errors import ProcessTimeout
from activities.runner import ProcessResult, Runner, metered
from kduflow import logs, metrics, telemetry
from kduflow.config import ConfigError, Settings
from tests.support.charts import ChartRepoServer, chart_repo
from tests.support.faults import FAIL_TIMEOUT, ROOT, DevServer, Op, Rig, free_port

Sample = tuple[str, dict[str, str], float]
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(bind: str) -> list[Sample]:
    with urllib.request.urlopen(f"http://{bind}/metrics", timeout=10) as resp:  # noqa: S310 - loopback
        assert resp.status == 200
        text = resp.read().decode()
    out: list[Sample] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        assert match, f"unparsable exposition line: {line!r}"
        labels = dict(_LABEL.findall(match[2] or ""))
        out.append((match[1], labels, float(match[3])))
    return out


def select(samples: list[Sample], name: str, **want: str) -> list[Sample]:
    return [s for s in samples if s[0] == name and all(s[1].get(k) == v for k, v in want.items())]


def total(samples: list[Sample], name: str, **want: str) -> float:
    return sum(s[2] for s in select(samples, name, **want))


def dump(samples: list[Sample], prefix: str = "kduflow_") -> str:
    return "\n".join(f"{name}{labels} {value}" for name, labels, value in samples if name.startswith(prefix))


@pytest.fixture(scope="module")
def repo() -> Iterator[ChartRepoServer]:
    with chart_repo(ROOT / "tools" / "helm3" / "helm") as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    dev = DevServer(tmp_path_factory.mktemp("temporal"))
    dev.start()
    try:
        yield dev
    finally:
        dev.stop()


async def run_op(rig: Rig, op: Op, timeout: float = 240) -> Op:
    await rig.start(op)
    await rig.finish(op, timeout)
    assert op.outcome is not None
    return op


async def wait_for_history(rig: Rig, op: Op, status: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = op.rel.cluster.helm_json("history", op.rel.name, "-n", op.rel.namespace)
        if isinstance(history, list) and history and history[-1]["status"] == status:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{op.rel} never became {status}:\n{rig.worker_logs()}")


@pytest.mark.e2e
@pytest.mark.timeout(900)
async def test_worker_serves_sdk_and_kduflow_metrics_and_json_logs(
    server: DevServer, repo: ChartRepoServer, tmp_path: Path
) -> None:
    bind = f"127.0.0.1:{free_port()}"
    async with Rig(tmp_path, server, repo.url, dialect="helm4", name="metrics") as rig:
        worker = await rig.start_worker("m", KDUFLOW_METRICS_BIND=bind, KDUFLOW_LOG_FORMAT="json")
        cluster = await rig.add_cluster("metrics")
        rel = await rig.add_release(cluster, "web", "demo")

        install = await run_op(rig, Op("install", rel, params={"message": "a"}, version="0.1.0"))
        assert install.outcome and install.outcome.ok, install.outcome
        upgrade = await run_op(rig, Op("upgrade", rel, params={"message": "b"}, version="0.2.0"))
        assert upgrade.outcome and upgrade.outcome.ok, upgrade.outcome
        failing = await run_op(rig, Op("upgrade-fail", rel, params={"ready": False}, timeout=FAIL_TIMEOUT))
        assert failing.outcome and failing.outcome.error_type == "UpgradeRolledBack", failing.outcome
        # Two upgrades at once: the second waits for the first's lock.
        pair = [Op("upgrade", rel, params={"message": f"p{i}"}) for i in range(2)]
        await rig.run_batch(pair, 240)
        assert all(op.outcome and op.outcome.ok for op in pair), [op.outcome for op in pair]

        samples = scrape(bind)
        shown = dump(samples)
        # The SDK's own metrics, from the same endpoint.
        assert total(samples, "temporal_workflow_completed", workflow_type="UpgradeKdu") >= 3, shown
        assert select(samples, "temporal_activity_execution_latency_count", activity_type="kdu.upgrade")
        assert total(samples, "temporal_workflow_failed", workflow_type="UpgradeKdu") >= 1
        # helm commands: by verb, helm major and outcome; durations in milliseconds.
        h4 = {"helm_major": "4"}
        assert total(samples, "kduflow_helm_commands", verb="install", outcome="ok", **h4) == 1, shown
        assert total(samples, "kduflow_helm_commands", verb="upgrade", outcome="ok", **h4) == 3, shown
        assert total(samples, "kduflow_helm_commands", verb="upgrade", outcome="failed", **h4) == 1, shown
        assert total(samples, "kduflow_helm_commands", verb="rollback", outcome="ok", **h4) == 1, shown
        assert not select(samples, "kduflow_helm_commands", helm_major="3"), shown
        # The cluster and repository activities' helm commands too: InitCluster's version probe and
        # its SyncRepos child's `helm repo add`.
        assert total(samples, "kduflow_helm_commands", verb="repo", outcome="ok", **h4) >= 1, shown
        assert total(samples, "kduflow_helm_commands", verb="version", outcome="ok", **h4) >= 1, shown
        count = total(samples, "kduflow_helm_command_duration_count", verb="upgrade", **h4)
        assert count == 4, shown
        upgrade_ms = total(samples, "kduflow_helm_command_duration_sum", verb="upgrade", outcome="ok", **h4)
        # helm --wait on the sandbox (pods ready after 0.5 s) takes from a fraction of a second to
        # a minute; an upgrade cannot take no time at all.
        assert 3 * 100 <= upgrade_ms <= 3 * 90_000, shown
        failed_ms = total(samples, "kduflow_helm_command_duration_sum", verb="upgrade", outcome="failed")
        assert failed_ms >= FAIL_TIMEOUT * 1000 * 0.9, shown  # helm waited out its --timeout
        buckets = select(samples, "kduflow_helm_command_duration_bucket", verb="install")
        assert {b[1]["le"] for b in buckets} >= {"100", "1000", "60000", "+Inf"}, shown
        for _, labels, _ in select(samples, "kduflow_helm_commands"):
            # Low cardinality: no release, cluster or namespace of a release in the attributes.
            assert set(labels) <= {"verb", "helm_major", "outcome", "namespace", "task_queue",
                                   "activity_type", "service_name"}, labels  # fmt: skip
            assert rel.name not in labels.values() and cluster.uuid not in labels.values()
        # The remediation rollback of the failed upgrade.
        assert total(samples, "kduflow_rollbacks", reason="failed", outcome="ok") == 1, shown
        assert select(samples, "kduflow_rollbacks", reason="failed")[0][1]["workflow_type"] == "UpgradeKdu"
        # Status writes: progress and final statuses of five operations into the nsrs document.
        assert total(samples, "kduflow_status_writes", outcome="written") >= 5, shown
        # Lock waits: one per operation; one of the pair waited for the other's helm.
        assert total(samples, "kduflow_lock_wait_count", operation="install") == 1, shown
        assert total(samples, "kduflow_lock_wait_count", operation="upgrade") == 4, shown
        assert total(samples, "kduflow_lock_wait_count", operation="sync-repos") >= 1, shown  # InitCluster
        waited = [
            b for b in select(samples, "kduflow_lock_wait_bucket", operation="upgrade") if b[1]["le"] == "100"
        ]
        assert sum(b[2] for b in waited) <= 3, shown  # the one that waited took longer than 100 ms
        assert total(samples, "kduflow_lock_wait_sum", operation="upgrade") >= 100, shown
        assert not select(samples, "kduflow_stuck_releases_recovered"), shown  # nothing was stuck

        # A worker dies with its helm mid-upgrade: the retry on the next worker finds the pending
        # revision its own helm left, rolls it back and marks it failed, then upgrades.
        cluster.sandbox.set_ready_delay(6)
        stuck = Op("upgrade", rel, params={"message": "stuck"})
        await rig.start(stuck)
        await wait_for_history(rig, stuck, "pending-upgrade")
        worker.kill(with_helm=True)
        await asyncio.to_thread(worker.start)
        await rig.finish(stuck, 240)
        assert stuck.outcome and stuck.outcome.ok, f"{stuck.outcome}\n{rig.worker_logs()}"
        cluster.sandbox.set_ready_delay(0.5)
        gone = await run_op(rig, Op("uninstall", rel))
        assert gone.outcome and gone.outcome.ok, gone.outcome

        samples = scrape(bind)
        shown = dump(samples)
        assert total(samples, "kduflow_stuck_releases_recovered", action="rolled_back") == 1, shown
        assert total(samples, "kduflow_stuck_releases_recovered", action="marked_failed") == 1, shown
        assert total(samples, "kduflow_helm_commands", verb="rollback", outcome="ok", **h4) == 1, shown
        assert total(samples, "kduflow_helm_commands", verb="uninstall", outcome="ok", **h4) == 1, shown

    # JSON logs: every line an object with time, level, logger and message; records logged inside
    # an activity carry its ids.
    records = []
    for line in worker.log_text().splitlines():
        if not line.strip() or line.startswith("===="):
            continue
        record = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(record), record
        records.append(record)
    in_activity = [r for r in records if "temporal_activity" in r]
    assert in_activity, records[:20]
    ids = in_activity[0]["temporal_activity"]
    assert ids["activity_id"] and ids["workflow_id"] and ids["activity_type"], ids
    assert any(r["logger"].startswith("activities.") for r in in_activity), in_activity[:5]
    assert any("serving metrics at http://" + bind in r["message"] for r in records)


async def test_metric_functions_are_no_ops_outside_activities_and_workflows() -> None:
    assert metrics.meter() is None
    metrics.helm_command("install", 4, "ok", 1.5)
    metrics.rollback("failed", "ok")
    metrics.status_write("written")
    metrics.lock_wait("upgrade", timedelta(seconds=1))
    metrics.stuck_recovered("rolled_back")


class ScriptedRunner(Runner):
    """Answers each argv with a scripted result (or raises the scripted exception)."""

    def __init__(self, answers: dict[str, ProcessResult | BaseException]) -> None:
        self.answers = answers

    async def run(self, argv: Sequence[str], **kwargs: Any) -> ProcessResult:
        answer = self.answers[argv[1]]
        if isinstance(answer, BaseException):
            raise answer
        return answer


async def test_metered_runner_records_helm_commands_only(monkeypatch: pytest.MonkeyPatch) -> None:
    recorded: list[tuple[str, int | None, str]] = []
    monkeypatch.setattr(metrics, "helm_command", lambda verb, major, outcome, duration: recorded.append(
        (verb, major, outcome)))  # fmt: skip
    ok = ProcessResult("x", 0, b"", b"", 0.1)
    inner = ScriptedRunner({
        "repo": ok, "version": ProcessResult("v", 0, b"v4.3.1", b"", 0.1), "get": ok,
        "upgrade": ProcessTimeout("helm overran"), "status": ProcessResult("s", 1, b"", b"Error", 0.1),
        "uninstall": asyncio.CancelledError(),
    })  # fmt: skip
    runner = metered(inner, "/x/helm")
    assert metered(runner, "/x/helm") is runner  # shared: wrapped once, so counted once
    await runner.run(["/x/helm", "repo", "add"], env={}, timeout=5)  # before the probe: major unknown
    await runner.run(["/x/helm", "version"], env={}, timeout=5)
    await runner.run(["/x/kubectl", "get", "pods"], env={}, timeout=5)  # not helm: not recorded
    with pytest.raises(ProcessTimeout):
        await runner.run(["/x/helm", "upgrade", "web"], env={}, timeout=5)
    await runner.run(["/x/helm", "status", "web"], env={}, timeout=5)
    with pytest.raises(asyncio.CancelledError):
        await runner.run(["/x/helm", "uninstall", "web"], env={}, timeout=5)
    assert recorded == [
        ("repo", None, "ok"), ("version", 4, "ok"), ("upgrade", 4, "timeout"), ("status", 4, "failed"),
        ("uninstall", 4, "cancelled"),
    ]  # fmt: skip


def test_helm_verb_is_one_of_a_fixed_set() -> None:
    assert metrics.helm_verb(["/x/helm", "upgrade", "web", "chart"]) == "upgrade"
    assert metrics.helm_verb(["/x/helm", "get", "metadata", "web"]) == "get"
    assert metrics.helm_verb(["/x/helm", "--debug", "install"]) == "other"
    assert metrics.helm_verb(["/x/helm", "my-release-name"]) == "other"
    assert metrics.helm_verb(["/x/helm"]) == "other"


def test_json_log_format_carries_the_sdk_ids() -> None:
    formatter = logs.JsonFormatter()
    record = logging.LogRecord(
        "activities.status", logging.WARNING, __file__, 1, "poll %d failed", (3,), None
    )
    record.temporal_activity = {"activity_id": "7", "workflow_id": "install-web-1"}
    out = json.loads(formatter.format(record))
    assert out["level"] == "WARNING" and out["logger"] == "activities.status"
    assert out["message"] == "poll 3 failed"
    assert out["temporal_activity"] == {"activity_id": "7", "workflow_id": "install-web-1"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", out["time"])
    wf = logging.LogRecord("temporalio.workflow", logging.INFO, __file__, 1, "lock freed", (), None)
    wf.temporal_workflow = {"workflow_id": "kduflow-lock/c/ns/web", "run_id": "r"}
    assert json.loads(formatter.format(wf))["temporal_workflow"]["workflow_id"] == "kduflow-lock/c/ns/web"
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "ValueError: boom" in json.loads(formatter.format(failed))["exception"]


# ------------------------------------------------------------------------------------------------
# worker.py: refusals, and OpenTelemetry tracing to a real OTLP/HTTP endpoint
# ------------------------------------------------------------------------------------------------


def worker_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    tools = ROOT / "tools" / "helm4"
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
        "KDUFLOW_STATE_DIR": str(tmp_path / "state"),
        "KDUFLOW_HELM": str(tools / "helm"),
        "KDUFLOW_KUBECTL": str(tools / "kubectl"),
        "TEMPORAL_ADDRESS": "127.0.0.1:1",
        **extra,
    }


@pytest.mark.parametrize(
    ("argv", "variable", "value", "message"),
    [
        ([], "KDUFLOW_LOG_FORMAT", "yaml", "KDUFLOW_LOG_FORMAT='yaml': must be one of text, json"),
        (["--log-format", "xml"], "KDUFLOW_LOG_FORMAT", "json", "--log-format='xml': must be one of"),
        ([], "KDUFLOW_METRICS_BIND", "localhost:1", "KDUFLOW_METRICS_BIND='localhost:1': must be an IP"),
        ([], "KDUFLOW_OTEL", "perhaps", "KDUFLOW_OTEL='perhaps': must be true or false"),
    ],
)
def test_worker_refuses_bad_telemetry_settings(
    tmp_path: Path, argv: list[str], variable: str, value: str, message: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "worker.py", *argv], cwd=ROOT, env=worker_env(tmp_path, **{variable: value}),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr, proc.stderr


def test_worker_refuses_a_metrics_address_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        bind = f"127.0.0.1:{busy.getsockname()[1]}"
        proc = subprocess.run(
            [sys.executable, "worker.py"], cwd=ROOT, env=worker_env(tmp_path, KDUFLOW_METRICS_BIND=bind),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"KDUFLOW_METRICS_BIND='{bind}': cannot serve metrics" in proc.stderr, proc.stderr
    assert "Address already in use" in proc.stderr


def test_otel_refused_clearly_when_opentelemetry_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if the otel extra were not installed
    with pytest.raises(ConfigError, match=r"^KDUFLOW_OTEL=true: OpenTelemetry is not installed .*\[otel\]"):
        telemetry.tracing_interceptors(Settings(otel=True))
    assert telemetry.tracing_interceptors(Settings(otel=False)) == []


class _OtlpSink(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver: keeps the body of every POST to /v1/traces."""

    bodies: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/v1/traces":
            type(self).bodies.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.e2e
async def test_otel_worker_sends_workflow_and_activity_spans_over_otlp(tmp_path: Path, local_env) -> None:
    """KDUFLOW_OTEL=true: the worker traces with the SDK's TracingInterceptor and its OTLP/HTTP
    exporter (OTEL_EXPORTER_OTLP_ENDPOINT) delivers the spans to a real receiver."""
    _OtlpSink.bodies = []
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OtlpSink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    queue = f"otel-{uuid.uuid4().hex[:8]}"
    env = worker_env(
        tmp_path,
        TEMPORAL_ADDRESS=local_env.client.service_client.config.target_host,
        KDUFLOW_TASK_QUEUE=queue,
        KDUFLOW_OTEL="true",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{sink.server_address[1]}",
        OTEL_SERVICE_NAME="kduflow-otel-test",
        OTEL_BSP_SCHEDULE_DELAY="200",
    )
    proc = subprocess.Popen(
        [sys.executable, "worker.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("kduflow worker on" in line for line in lines):
            lines.append(proc.stdout.readline())
        assert any("otel=on" in line for line in lines), "".join(lines)
        # The caller traces too (its spans in memory): the worker's spans join the caller's trace.
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from temporalio.client import Client
        from temporalio.contrib.opentelemetry import TracingInterceptor

        caller_spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(caller_spans))
        config = local_env.client.config()
        config["interceptors"] = [TracingInterceptor(provider.get_tracer("kduflow-test-caller"))]
        caller = Client(**config)
        with pytest.raises(WorkflowFailureError):  # no such cluster: the activity runs and fails
            await caller.execute_workflow(
                "KduInstances", {"cluster_uuid": "no-such-cluster"}, id=f"otel-{uuid.uuid4()}",
                task_queue=queue, execution_timeout=timedelta(seconds=60),
            )  # fmt: skip
        spans = caller_spans.get_finished_spans()
        started = [span for span in spans if span.name == "StartWorkflow:KduInstances"]
        assert len(started) == 1
        trace_id = started[0].context.trace_id.to_bytes(16, "big")
        wanted = (
            b"RunWorkflow:KduInstances", b"StartActivity:kdu.list_releases", b"RunActivity:kdu.list_releases",
            b"kduflow-otel-test", b"ClusterNotFound", trace_id,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(w in b"".join(_OtlpSink.bodies) for w in wanted):
            await asyncio.sleep(0.2)
        sent = b"".join(_OtlpSink.bodies)
        missing = [w for w in wanted if w not in sent]
        words = " ".join(x.decode() for x in re.findall(rb"[A-Za-z:._-]{8,}", sent))
        assert not missing, f"{missing}: {words}"
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
        sink.shutdown()
