"""The measurements. Each section takes a started :class:`~bench.world.World` and returns a JSON-able
dict; printing and verdicts are in ``bench.__main__``."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import gzip
import json
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from activities.models import (
    DbDict,
    InspectKduInput,
    InspectKduResult,
    InstallKduInput,
    KduInstancesInput,
    KduInstancesResult,
    KduResult,
    RollbackKduInput,
    UpgradeKduInput,
)
from bench.report import median, ratio, summary
from bench.world import CHART, OP_TIMEOUT, World, proc_stat, reset_peak_rss, run_helm
from sandbox.chartrepo import ChartRepoServer
from workflows.cluster_models import SyncReposInput, SyncReposResult

STATUS_PATH = "_admin.deployed.K8s.0"
SEQ_NS = "seq"
OPS = ("install", "upgrade", "rollback")


def db_dict(nsr_id: str) -> DbDict:
    return DbDict(collection="nsrs", filter={"_id": nsr_id}, path=STATUS_PATH)


def install_input(cluster_uuid: str, name: str, namespace: str, nsr_id: str) -> InstallKduInput:
    """The benchmark's InstallKdu: the demo chart 0.1.0, one replica, status into ``nsr_id``."""
    return InstallKduInput(
        cluster_uuid=cluster_uuid,
        kdu_model=CHART,
        version="0.1.0",
        kdu_instance=name,
        namespace=namespace,
        params={"replicaCount": 1},
        db_dict=db_dict(nsr_id),
        timeout=OP_TIMEOUT,
    )


@dataclass
class Sample:
    """One timed operation (kduflow or raw helm) and what it cost."""

    side: str  # "kduflow" | "helm"
    op: str
    seconds: float
    t0: float  # epoch seconds at start / end (to cut the worker's event log)
    t1: float
    requests: int = 0
    cpu_self: float = 0.0
    cpu_children: float = 0.0
    nsr: str = ""
    probe: dict[str, Any] = field(default_factory=dict)
    workflow_id: str = ""


#: Activities that observe a release on a timer: the helm activities report status while helm runs;
#: ``kdu.poll_status`` is the separate poller of workflows recorded before that.
POLLING_ACTIVITIES = frozenset({"kdu.poll_status", "kdu.install", "kdu.upgrade", "kdu.rollback"})


def _spawned_by_polling(event: dict[str, Any]) -> bool:
    """A process a status poll started: anything the separate poller ran, and kubectl anywhere (the
    status reads' fallback for exec-plugin credentials; the helm activities run only helm)."""
    return event.get("activity") == "kdu.poll_status" or event.get("prog") == "kubectl"


def analyse_events(events: list[dict[str, Any]], nsr: str = "") -> dict[str, Any]:
    """Counts from the worker's probe events of one operation (or one round).

    ``status_writes``: update operations on the status document(s); ``distinct_status_changes``: writes
    whose content (without times and sequence numbers) differs from the previous write to the same
    document; ``spawns`` by program and verb; ``polls``: observations made by the poller.
    """
    writes = [
        e
        for e in events
        if e["ev"] == "write"
        and e.get("coll") == "nsrs"
        and e.get("digest")
        and (not nsr or e.get("id") == nsr)
    ]
    last: dict[str, str] = {}
    changes = 0
    for e in writes:
        if last.get(e["id"]) != e["digest"]:
            changes += 1
        last[e["id"]] = e["digest"]
    spawns = [e for e in events if e["ev"] == "spawn"]
    polls = [e for e in events if e["ev"] == "observe" and e.get("activity") in POLLING_ACTIVITIES]
    return {
        "status_writes": len(writes),
        "status_writes_matched": sum(1 for e in writes if e.get("matched", 1)),
        "distinct_status_changes": changes,
        "distinct_status_texts": len({e.get("status") for e in writes}),
        "writes_by_activity": dict(Counter(e.get("activity") or "?" for e in writes)),
        "other_store_writes": sum(1 for e in events if e["ev"] == "write" and e.get("coll") != "nsrs"),
        "spawns": len(spawns),
        "spawns_by_command": dict(Counter(f"{e['prog']} {e['verb']}".strip() for e in spawns)),
        "spawns_in_poller": sum(1 for e in spawns if _spawned_by_polling(e)),
        "spawns_by_activity": dict(
            Counter(f"{e.get('activity') or '?'}: {e['prog']} {e['verb']}" for e in spawns)
        ),
        "polls": len(polls),
        "observations": sum(1 for e in events if e["ev"] == "observe"),
    }


# ------------------------------------------------------------------------------------------------
# 1 (+3, +4 at one operation): sequential install / upgrade / rollback, kduflow vs raw helm
# ------------------------------------------------------------------------------------------------


async def _kduflow_op(w: World, op: str, name: str, nsr: str, rep: int) -> Sample:
    cluster = w.shared.clusters[0]
    cid = w.cluster_ids[0]
    arg: Any
    if op == "install":
        arg = install_input(cid, name, SEQ_NS, nsr)
        wf = "InstallKdu"
    elif op == "upgrade":
        arg = UpgradeKduInput(
            cluster_uuid=cid,
            kdu_instance=name,
            namespace=SEQ_NS,
            kdu_model=CHART,
            version="0.2.0",
            params={"message": f"v2-{rep}"},
            db_dict=db_dict(nsr),
            timeout=OP_TIMEOUT,
        )
        wf = "UpgradeKdu"
    else:
        arg = RollbackKduInput(
            cluster_uuid=cid,
            kdu_instance=name,
            namespace=SEQ_NS,
            revision=1,
            db_dict=db_dict(nsr),
            timeout=OP_TIMEOUT,
        )
        wf = "RollbackKdu"
    before_req, before_cpu, t0 = cluster.total_requests(), proc_stat(w.pid), time.time()
    seconds, result = await w.workflow(wf, arg, KduResult, prefix=f"seq{rep}")
    t1, after_cpu, after_req = time.time(), proc_stat(w.pid), cluster.total_requests()
    if result.status != "deployed":
        raise RuntimeError(f"kduflow {op} of {name} ended {result.status}")
    sample = Sample(
        "kduflow",
        op,
        seconds,
        t0,
        t1,
        after_req - before_req,
        after_cpu.cpu_self - before_cpu.cpu_self,
        after_cpu.cpu_children - before_cpu.cpu_children,
        nsr,
    )
    sample.workflow_id = w.last_workflow_id
    return sample


async def _raw_op(w: World, op: str, name: str, rep: int) -> Sample:
    cluster = w.shared.clusters[0]
    timeout = f"{OP_TIMEOUT}s"
    before_req, t0 = cluster.total_requests(), time.time()
    if op == "install":
        run = await w.raw(
            0,
            "install",
            name,
            CHART,
            "--version",
            "0.1.0",
            "--namespace",
            SEQ_NS,
            "--create-namespace",
            w.wait_flag,
            "--timeout",
            timeout,
            "--output",
            "json",
            values={"replicaCount": 1},
        )
    elif op == "upgrade":
        run = await w.raw(
            0,
            "upgrade",
            name,
            CHART,
            "--version",
            "0.2.0",
            "--namespace",
            SEQ_NS,
            "--reuse-values",
            w.wait_flag,
            "--timeout",
            timeout,
            "--output",
            "json",
            values={"message": f"v2-{rep}"},
        )
    else:
        run = await w.raw(0, "rollback", name, "1", "--namespace", SEQ_NS, w.wait_flag, "--timeout", timeout)
    t1 = time.time()
    return Sample("helm", op, run.seconds, t0, t1, cluster.total_requests() - before_req)


async def sequential(w: World, reps: int) -> dict[str, Any]:
    """``reps`` rounds of install, upgrade, rollback; kduflow and raw helm alternate per operation,
    and which side goes first alternates per round (A B, B A, ...)."""
    samples: list[Sample] = []
    names: list[str] = []
    for rep in range(reps):
        kd_name, raw_name = f"sq{rep}-k", f"sq{rep}-r"
        names += [kd_name, raw_name]
        nsr = await w.new_nsr(f"h{w.major}-sq{rep}")
        for op in OPS:
            sides = ("kduflow", "helm") if rep % 2 == 0 else ("helm", "kduflow")
            for side in sides:
                if side == "kduflow":
                    samples.append(await _kduflow_op(w, op, kd_name, nsr, rep))
                else:
                    samples.append(await _raw_op(w, op, raw_name, rep))
    await w.raw(0, "uninstall", *names, "--namespace", SEQ_NS)
    for s in samples:
        if s.side == "kduflow":
            s.probe = analyse_events(w.events(s.t0, s.t1 + 0.05), s.nsr)
    out: dict[str, Any] = {}
    for op in OPS:
        kd = [s for s in samples if s.op == op and s.side == "kduflow"]
        steps = await timeline(w, kd[-1].workflow_id)
        raw = [s for s in samples if s.op == op and s.side == "helm"]
        kd_med, raw_med = median([s.seconds for s in kd]), median([s.seconds for s in raw])
        out[op] = {
            "kduflow_s": summary([s.seconds for s in kd]),
            "helm_s": summary([s.seconds for s in raw]),
            "ratio_median": ratio(kd_med, raw_med),
            "kduflow_requests": summary([s.requests for s in kd]),
            "helm_requests": summary([s.requests for s in raw]),
            "requests_ratio_median": ratio(
                median([s.requests for s in kd]), median([s.requests for s in raw])
            ),
            "status_writes": summary([s.probe["status_writes"] for s in kd]),
            "distinct_status_changes": summary([s.probe["distinct_status_changes"] for s in kd]),
            "writes_within_changes_plus_1": all(
                s.probe["status_writes"] <= s.probe["distinct_status_changes"] + 1 for s in kd
            ),
            "spawns_per_op": summary([s.probe["spawns"] for s in kd]),
            "spawns_by_command": dict(sum((Counter(s.probe["spawns_by_command"]) for s in kd), Counter())),
            "spawns_by_activity": dict(sum((Counter(s.probe["spawns_by_activity"]) for s in kd), Counter())),
            "polls_per_op": summary([s.probe["polls"] for s in kd]),
            "spawns_in_poller": sum(s.probe["spawns_in_poller"] for s in kd),
            "worker_cpu_s_per_op": summary([s.cpu_self for s in kd]),
            "helm_cpu_s_per_op_in_worker": summary([s.cpu_children for s in kd]),
            "writes_by_activity": dict(sum((Counter(s.probe["writes_by_activity"]) for s in kd), Counter())),
            "timeline_of_last": steps,
        }
    return out


async def timeline(w: World, workflow_id: str) -> list[dict[str, Any]]:
    """Where one workflow's time went, from its history: every activity (scheduled and closed, seconds
    after the workflow started), local activities (markers), signals, and the close."""
    from temporalio.api.enums.v1 import EventType

    assert w.client is not None
    history = await w.client.get_workflow_handle(workflow_id).fetch_history()
    t0: float | None = None
    scheduled: dict[int, tuple[str, float]] = {}
    steps: list[dict[str, Any]] = []
    for event in history.events:
        t = event.event_time.ToDatetime(tzinfo=dt.UTC).timestamp()
        t0 = t if t0 is None else t0
        at = round(t - t0, 3)
        et = event.event_type
        if et == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled[event.event_id] = (
                event.activity_task_scheduled_event_attributes.activity_type.name,
                at,
            )
        elif et in (
            EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
            EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED,
            EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED,
        ):
            attrs = (
                event.activity_task_completed_event_attributes
                if et == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
                else event.activity_task_failed_event_attributes
                if et == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED
                else event.activity_task_canceled_event_attributes
            )
            name, start = scheduled.get(attrs.scheduled_event_id, ("?", at))
            steps.append({"step": name, "start": start, "end": at})
        elif et == EventType.EVENT_TYPE_MARKER_RECORDED:
            steps.append(
                {
                    "step": f"local activity ({event.marker_recorded_event_attributes.marker_name})",
                    "start": at,
                    "end": at,
                }
            )
        elif et == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            steps.append(
                {
                    "step": f"signal {event.workflow_execution_signaled_event_attributes.signal_name}",
                    "start": at,
                    "end": at,
                }
            )
        elif et == EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED:
            steps.append({"step": "cancel requested (poller)", "start": at, "end": at})
        elif et == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
            steps.append({"step": "workflow completed", "start": at, "end": at})
    return sorted(steps, key=lambda s: (s["start"], s["end"]))


# ------------------------------------------------------------------------------------------------
# 2 (+4 at 16 and 64): N installs at once over the clusters
# ------------------------------------------------------------------------------------------------


async def _cleanup(w: World, names_by_cluster: dict[int, list[str]], namespace: str) -> None:
    await asyncio.gather(
        *(
            w.raw(c, "uninstall", *names, "--namespace", namespace)
            for c, names in names_by_cluster.items()
            if names
        )
    )


async def _kduflow_round(w: World, n: int, tag: str, namespace: str) -> dict[str, Any]:
    clusters = len(w.cluster_ids)
    names = [f"{tag}-k{j}" for j in range(n)]
    nsrs = [await w.new_nsr(f"h{w.major}-{tag}-{j}") for j in range(n)]
    req0 = sum(c.total_requests() for c in w.shared.clusters)
    hwm_reset = reset_peak_rss(w.pid)
    cpu0 = proc_stat(w.pid)
    from bench.world import RssSampler

    sampler = RssSampler(w.pid).start()
    t0 = time.time()
    started = time.monotonic()

    async def one(j: int) -> float:
        seconds, result = await w.workflow(
            "InstallKdu",
            install_input(w.cluster_ids[j % clusters], names[j], namespace, nsrs[j]),
            KduResult,
            prefix=tag,
        )
        if result.status != "deployed":
            raise RuntimeError(f"kduflow install {names[j]} ended {result.status}")
        return float(seconds)

    latencies = await asyncio.gather(*(one(j) for j in range(n)))
    wall = time.monotonic() - started
    t1 = time.time()
    sampled_peak = await sampler.stop()
    cpu1 = proc_stat(w.pid)
    requests = sum(c.total_requests() for c in w.shared.clusters) - req0
    probe = analyse_events(w.events(t0, t1 + 0.05))
    await _cleanup(w, {c: names[c::clusters] for c in range(clusters)}, namespace)
    return {
        "wall_s": round(wall, 3),
        "latency_s": summary(latencies),
        "requests_per_install": round(requests / n, 1),
        "peak_rss_mib": round((cpu1.hwm_kib if hwm_reset else sampled_peak) / 1024, 1),
        "peak_rss_source": "VmHWM (reset before the round)" if hwm_reset else "VmRSS sampled every 0.1 s",
        "worker_cpu_s_per_op": round((cpu1.cpu_self - cpu0.cpu_self) / n, 4),
        "helm_cpu_s_per_op": round((cpu1.cpu_children - cpu0.cpu_children) / n, 4),
        "spawns_per_op": round(probe["spawns"] / n, 2),
        "polls_per_op": round(probe["polls"] / n, 2),
        "spawns_in_poller": probe["spawns_in_poller"],
        "status_writes_per_op": round(probe["status_writes"] / n, 2),
        "distinct_status_changes_per_op": round(probe["distinct_status_changes"] / n, 2),
        "spawns_by_command": probe["spawns_by_command"],
    }


async def _raw_round(w: World, n: int, tag: str, namespace: str, parallel: bool) -> dict[str, Any]:
    clusters = len(w.cluster_ids)
    names = [f"{tag}-r{j}" for j in range(n)]
    req0 = sum(c.total_requests() for c in w.shared.clusters)

    def install(j: int) -> Any:
        return w.raw(
            j % clusters,
            "install",
            names[j],
            CHART,
            "--version",
            "0.1.0",
            "--namespace",
            namespace,
            "--create-namespace",
            w.wait_flag,
            "--timeout",
            f"{OP_TIMEOUT}s",
            "--output",
            "json",
            values={"replicaCount": 1},
        )

    started = time.monotonic()
    if parallel:
        runs = await asyncio.gather(*(install(j) for j in range(n)))
    else:
        runs = [await install(j) for j in range(n)]
    wall = time.monotonic() - started
    requests = sum(c.total_requests() for c in w.shared.clusters) - req0
    await _cleanup(w, {c: names[c::clusters] for c in range(clusters)}, namespace)
    return {
        "wall_s": round(wall, 3),
        "latency_s": summary([r.seconds for r in runs]),
        "requests_per_install": round(requests / n, 1),
    }


async def concurrency(
    w: World, sizes: dict[int, int], measure_upto: int, seq_install_s: float
) -> dict[str, Any]:
    """For each size ``n`` (with its number of rounds): kduflow and raw-parallel rounds alternate.

    Raw helm one at a time is measured for sizes up to ``measure_upto``; above, it is ``n`` times the
    median raw install measured one at a time in the sequential section (``seq_install_s``), or, when
    that section did not run, the per-install mean of the largest size measured here (16 at least).
    """
    out: dict[str, Any] = {}
    per_install_seq, basis = seq_install_s, "the median raw helm install of the sequential section"
    for n, reps in sizes.items():
        namespace = f"cc{n}"
        kd_rounds: list[dict[str, Any]] = []
        par_rounds: list[dict[str, Any]] = []
        for rep in range(reps):
            order = ("kduflow", "helm") if rep % 2 == 0 else ("helm", "kduflow")
            for side in order:
                tag = f"cc{n}-{rep}"
                if side == "kduflow":
                    kd_rounds.append(await _kduflow_round(w, n, tag, namespace))
                else:
                    par_rounds.append(await _raw_round(w, n, tag, namespace, parallel=True))
        seq: dict[str, Any]
        if n <= measure_upto or (per_install_seq <= 0 and n <= 16):
            seq = await _raw_round(w, n, f"cc{n}-s", namespace, parallel=False)
            seq["measured"] = True
            per_install_seq, basis = seq["wall_s"] / n, f"{n} raw helm installs measured one at a time"
        else:
            seq = {
                "wall_s": round(per_install_seq * n, 3),
                "measured": False,
                "note": f"estimated: {n} x {per_install_seq:.3f} s ({basis})",
            }
        kd_wall = median([r["wall_s"] for r in kd_rounds])
        par_wall = median([r["wall_s"] for r in par_rounds])
        out[str(n)] = {
            "kduflow": kd_rounds,
            "helm_parallel": par_rounds,
            "helm_one_at_a_time": seq,
            "kduflow_wall_s": kd_wall,
            "helm_parallel_wall_s": par_wall,
            "ratio_vs_parallel": ratio(kd_wall, par_wall),
            "speedup_vs_one_at_a_time": ratio(seq["wall_s"], kd_wall),
            "requests_per_install_ratio": ratio(
                median([r["requests_per_install"] for r in kd_rounds]),
                median([r["requests_per_install"] for r in par_rounds]),
            ),
        }
    return out


# ------------------------------------------------------------------------------------------------
# 3: delay from a readiness change in the cluster to the status in MongoDB
# ------------------------------------------------------------------------------------------------


async def readiness(w: World, trials: int) -> dict[str, Any]:
    """Installs whose pods are held not ready (the sandbox's never-ready rule) until the poller has
    written a not-ready status; then the rule is lifted at a random phase of the poll period and the
    time from the Deployment turning ready (sandbox timestamp) to the first status write saying
    ready is measured (same machine clock)."""
    cluster, cid, namespace = w.shared.clusters[1], w.cluster_ids[1], "ready"
    tag = f"rd{w.major}"
    names = [f"{tag}-{j}" for j in range(trials)]
    nsrs = [await w.new_nsr(f"h{w.major}-{tag}-{j}") for j in range(trials)]
    cluster.set_never_ready(f"{tag}-*")
    t_begin = time.time()
    tasks = []
    for j in range(trials):
        arg = install_input(cid, names[j], namespace, nsrs[j])
        tasks.append(asyncio.create_task(w.workflow("InstallKdu", arg, KduResult, prefix=tag)))
        await asyncio.sleep(random.uniform(0.3, 1.7))  # different poll phases per trial
    # Wait until every poller wrote a not-ready status and polled twice (its period is then known),
    # then lift the rule at a random phase of that period.
    deadline = time.monotonic() + 90
    period = w.poll_interval
    while time.monotonic() < deadline:
        evs = w.events(t_begin)
        seen = {
            e["id"]
            for e in evs
            if e["ev"] == "write"
            and e.get("digest")
            and not e.get("ready")
            and e.get("activity") in POLLING_ACTIVITIES
        }
        gaps = _poll_gaps(evs, names)
        if all(n in seen for n in nsrs) and len(gaps) >= len(names):
            period = max(gaps)
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(random.uniform(0.0, period))
    cluster.set_never_ready(None)
    t_flip = time.time()
    await asyncio.gather(*tasks)
    t_end = time.time()
    events = w.events(t_begin, t_end + 0.05)
    gaps = _poll_gaps(events, names)
    rows: list[dict[str, Any]] = []
    for name, nsr in zip(names, nsrs, strict=True):
        ready_at = [
            e["time"]
            for e in cluster.readiness_events(namespace, since=t_flip - 0.5)
            if e["kind"] == "Deployment" and e["name"].startswith(name) and e["ready"]
        ]
        written = [
            e
            for e in events
            if e["ev"] == "write" and e.get("id") == nsr and e.get("ready") and e.get("matched", 1)
        ]
        if not ready_at or not written:
            rows.append({"release": name, "error": "no readiness event or no ready status write"})
            continue
        first = min(written, key=lambda e: e["t"])
        analysed = analyse_events(events, nsr)
        rows.append(
            {
                "release": name,
                "delay_s": round(first["t"] - min(ready_at), 3),
                "written_by": first.get("activity", ""),
                "status_writes": analysed["status_writes"],
                "distinct_status_changes": analysed["distinct_status_changes"],
            }
        )
    await w.raw(1, "uninstall", *names, "--namespace", namespace)
    delays = [float(r["delay_s"]) for r in rows if "delay_s" in r]
    return {
        "trials": rows,
        "delay_s": summary(delays),
        "configured_poll_interval_s": w.poll_interval,
        "observed_poll_period_s": summary(gaps),
        "bound_configured_s": w.poll_interval + 1.0,
        "bound_observed_s": round(median(gaps) + 1.0, 3) if gaps else None,
    }


# ------------------------------------------------------------------------------------------------
# 5: reads at scale
# ------------------------------------------------------------------------------------------------


def _poll_gaps(events: list[dict[str, Any]], names: list[str]) -> list[float]:
    """Seconds between consecutive polls of each release (the poller's real period)."""
    gaps: list[float] = []
    for name in names:
        ts = sorted(
            e["t"]
            for e in events
            if e["ev"] == "observe" and e.get("rel") == name and e.get("activity") in POLLING_ACTIVITIES
        )
        gaps += [b - a for a, b in zip(ts, ts[1:], strict=False)]
    return gaps


def _release_secret(name: str, namespace: str) -> dict[str, Any]:
    """A helm 3/4 release record (Secret driver: base64 of base64 of gzipped JSON) of a deployed
    revision 1 with an empty manifest."""
    stamp = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).isoformat()
    release = {
        "name": name,
        "namespace": namespace,
        "version": 1,
        "info": {
            "first_deployed": stamp,
            "last_deployed": stamp,
            "deleted": "",
            "description": "Install complete",
            "status": "deployed",
            "notes": "",
        },
        "chart": {
            "metadata": {"name": "webapp", "version": "0.1.0", "appVersion": "1.0.0", "apiVersion": "v2"},
            "values": {"replicaCount": 1},
            "templates": [],
        },
        "config": {},
        "manifest": "",
        "hooks": [],
    }
    inner = base64.b64encode(gzip.compress(json.dumps(release).encode()))
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "helm.sh/release.v1",
        "metadata": {
            "name": f"sh.helm.release.v1.{name}.v1",
            "namespace": namespace,
            "labels": {"name": name, "owner": "helm", "status": "deployed", "version": "1"},
        },
        "data": {"release": base64.b64encode(inner).decode()},
    }


def seed_releases(w: World, cluster_index: int, count: int, namespace: str = "scale") -> None:
    """``count`` release records written straight into the sandbox (no helm, no requests counted)."""
    cluster = w.shared.clusters[cluster_index]
    if cluster.get("namespaces", None, namespace) is not None:
        return
    cluster.create("namespaces", None, {"metadata": {"name": namespace}})
    for i in range(count):
        cluster.create("secrets", namespace, _release_secret(f"rel-{i:04d}", namespace))


def build_big_repo(source: Path, out: Path, versions: int) -> Path:
    """A repository directory holding the packaged test charts of ``source`` and an index of
    ``versions`` chart versions: the real entries plus generated ones of 50 charts (their URLs point
    at a package that does not exist; nothing downloads them)."""
    out.mkdir(parents=True, exist_ok=True)
    for tgz in source.glob("*.tgz"):
        shutil.copy(tgz, out / tgz.name)
    index = yaml.safe_load((source / "index.yaml").read_text())
    entries: dict[str, list[dict[str, Any]]] = index["entries"]
    real = sum(len(v) for v in entries.values())
    stamp = "2026-01-01T00:00:00Z"
    for k in range(versions - real):
        chart = f"bulk{k % 50:02d}"
        version = f"1.{k // 50 // 100}.{k // 50 % 100}"
        entries.setdefault(chart, []).append(
            {
                "apiVersion": "v2",
                "name": chart,
                "version": version,
                "appVersion": version,
                "created": stamp,
                "description": f"generated chart {chart} for the benchmark's repository index",
                "digest": f"{k:064x}",
                "type": "application",
                "urls": [f"charts/{chart}-{version}.tgz"],
            }
        )
    index["generated"] = stamp
    (out / "index.yaml").write_text(yaml.safe_dump(index, sort_keys=False))
    return out


def count_versions(index_path: Path) -> int:
    data = yaml.safe_load(index_path.read_text())
    return sum(len(v) for v in data["entries"].values())


async def scale(w: World, big: ChartRepoServer, releases: int, reps: int) -> dict[str, Any]:
    """KduInstances over ``releases`` seeded releases vs ``helm list``; the big repository: SyncRepos
    adding it vs ``helm repo add``/``update``/``search``, installs and InspectKdu resolving from it."""
    out: dict[str, Any] = {}
    # -- 1,000 releases -------------------------------------------------------------------------
    idx = 3
    seed_releases(w, idx, releases)
    list_argv = ["list", "--output", "json", "--max", "0", "--all-namespaces"] + (
        ["--all"] if w.major == 3 else []
    )
    kd_s: list[float] = []
    raw_s: list[float] = []
    found = listed = 0
    for rep in range(reps):
        for side in ("kduflow", "helm") if rep % 2 == 0 else ("helm", "kduflow"):
            if side == "kduflow":
                seconds, res = await w.workflow(
                    "KduInstances",
                    KduInstancesInput(cluster_uuid=w.cluster_ids[idx]),
                    KduInstancesResult,
                    prefix="scale",
                )
                kd_s.append(seconds)
                found = len(res.releases)
            else:
                run = await w.raw(idx, *list_argv)
                raw_s.append(run.seconds)
                listed = len(json.loads(run.stdout or "[]"))
    out["kdu_instances"] = {
        "releases_seeded": releases,
        "kduflow_found": found,
        "helm_list_found": listed,
        "kduflow_s": summary(kd_s),
        "helm_list_s": summary(raw_s),
        "ratio_median": ratio(median(kd_s), median(raw_s)),
    }
    # -- 5,000 chart versions -------------------------------------------------------------------
    assert w.store is not None
    cidx = 2
    cid = w.cluster_ids[cidx]
    big_name = "big"
    await w.store.insert_one(
        "k8srepos", {"_id": "repo-big", "name": big_name, "url": big.url, "type": "helm-chart"}
    )
    await w.store.update_one("k8sclusters", {"_id": cid}, {"$push": {"_admin.helm_chart_repos": "repo-big"}})
    sync_s, synced = await w.workflow(
        "SyncRepos", SyncReposInput(cluster_uuid=cid), SyncReposResult, prefix="scale"
    )
    if "repo-big" not in synced.added:
        raise RuntimeError(f"SyncRepos did not add the big repository: {synced}")
    env = w.raw_env[cidx]
    add = await w.raw(cidx, "repo", "add", big_name, big.url)
    update = await w.raw(cidx, "repo", "update", big_name)
    search = await w.raw(cidx, "search", "repo", f"{big_name}/", "--versions", "--output", "json")
    show = await w.raw(cidx, "show", "all", f"{big_name}/webapp", "--version", "0.1.0")
    ns = "bigrepo"
    installs: list[dict[str, Any]] = []
    names: list[str] = []
    for rep in range(2):
        name_k, name_r = f"big{rep}-k", f"big{rep}-r"
        names.append(name_k)
        seconds, res = await w.workflow(
            "InstallKdu",
            InstallKduInput(
                cluster_uuid=cid,
                kdu_model=f"{big_name}/webapp",
                version="0.1.0",
                kdu_instance=name_k,
                namespace=ns,
                params={"replicaCount": 1},
                timeout=OP_TIMEOUT,
            ),
            KduResult,
            prefix="big",
        )
        if rep == 0:
            raw = await w.raw(
                cidx,
                "install",
                name_r,
                f"{big_name}/webapp",
                "--version",
                "0.1.0",
                "--namespace",
                ns,
                "--create-namespace",
                w.wait_flag,
                "--timeout",
                f"{OP_TIMEOUT}s",
                "--output",
                "json",
                values={"replicaCount": 1},
            )
            names.append(name_r)
        installs.append(
            {
                "kduflow_s": round(seconds, 3),
                "helm_s": round(raw.seconds, 3),
                "index_cache": "cold" if rep == 0 else "warm",
            }
        )
    inspect_s, inspected = await w.workflow(
        "InspectKdu",
        InspectKduInput(kdu_model=f"{big_name}/webapp", cluster_uuid=cid, version="0.1.0"),
        InspectKduResult,
        prefix="big",
    )
    await w.raw(cidx, "uninstall", *names, "--namespace", ns)
    index_file = Path(env["HELM_CACHE_HOME"]) / "repository" / f"{big_name}-index.yaml"
    out["repo_index"] = {
        "chart_versions": count_versions(index_file),
        "index_bytes": index_file.stat().st_size,
        "kduflow_sync_repos_add_s": round(sync_s, 3),
        "helm_repo_add_s": round(add.seconds, 3),
        "helm_repo_update_s": round(update.seconds, 3),
        "helm_search_repo_s": round(search.seconds, 3),
        "helm_search_repo_found": len(json.loads(search.stdout or "[]")),
        "kduflow_inspect_s": round(inspect_s, 3),
        "kduflow_inspect_chart": str(inspected.chart.get("name", "")),
        "helm_show_all_s": round(show.seconds, 3),
        "installs": installs,
    }
    return out


def median_raw_install(seq: dict[str, Any]) -> float:
    return float(seq["install"]["helm_s"]["median"])


async def probe_helm_version(helm: str) -> str:
    run = await run_helm([helm, "version", "--short"], {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
    return run.stdout.strip()
