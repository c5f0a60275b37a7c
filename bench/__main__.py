"""kduflow's benchmark: ``./run bench`` (``python -m bench``). What durability costs against raw helm.

It starts its own ``temporal server start-dev``, four sandbox clusters (1 s readiness delay), a chart
repository, and for each helm major (3 and/or 4) ONE kduflow worker subprocess (``worker.py`` behind
``bench.worker_probe``, which counts store writes, process starts and status polls), then measures,
with every kduflow figure taken side by side with the raw helm command in the same run (A B / B A
interleaved repetitions, same chart, values, cluster; a different release name):

``sequential``   InstallKdu, UpgradeKdu, RollbackKdu with a ``db_dict`` (start_workflow to result) vs
                 ``helm install|upgrade|rollback --wait`` (process start to exit); median, p90, ratio.
                 Also per operation: Kubernetes API requests (sandbox counters), status writes vs
                 distinct status changes, processes started, polls, worker CPU.
``concurrency``  16 and 64 installs at once spread over the four clusters on one worker: wall time vs
                 the same helm installs run in parallel and one at a time (N2VC's global lock); worker
                 peak RSS, CPU seconds per operation (own, and of its helm children), processes per
                 operation and whether the poller ever started one.
``readiness``    pods held not ready until the poller wrote "not ready", then released: seconds from
                 the Deployment turning ready (sandbox timestamp) to the first status write saying
                 ready (worker probe timestamp), against the poll interval + 1 s.
``scale``        KduInstances over 1,000 release records vs ``helm list``; a repository index of 5,000
                 chart versions: SyncRepos adding it, installs and InspectKdu resolving from it, vs
                 ``helm repo add/update``, ``helm search repo``, ``helm show all``, ``helm install``.

Reading the output: one table per section and helm major; ``ratio`` is kduflow / helm (lower is
better; 1.10 means kduflow takes 10 % longer). Each target of issue 9 prints "target met" or
"MISSED"; timings never change the exit status. ``--quick`` (CI smoke) runs fewer and smaller
rounds and judges nothing. Everything lands in the JSON report (``--report``) with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import report as rpt

SECTIONS = ("sequential", "concurrency", "readiness", "scale")
DEFAULT_REPORT = Path(__file__).resolve().parent / "results" / "latest.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CI smoke run: few, small rounds; no verdicts")
    p.add_argument("--helm", choices=("3", "4", "both"), default="both", help="helm major(s) (default both)")
    p.add_argument("--reps", type=int, default=None, help="sequential repetitions (default 10, quick 2)")
    p.add_argument("--only", default="", help=f"comma-separated sections of {', '.join(SECTIONS)}")
    p.add_argument(
        "--report", type=Path, default=DEFAULT_REPORT, help="JSON report path (default %(default)s)"
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        help="KDUFLOW_POLL_INTERVAL given to the worker (default %(default)s s)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed of the random poll phases")
    p.add_argument(
        "--temporal-db",
        choices=("memory", "file"),
        default="file",
        help="the dev server's persistence: SQLite file (default) or in memory",
    )
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    if args.reps is None:
        args.reps = 2 if args.quick else 10
    if args.reps < 1:
        p.error("--reps must be at least 1")
    return args


def plan(args: argparse.Namespace) -> dict[str, Any]:
    """Sizes of every section for this mode."""
    if args.quick:
        return {
            "sizes": {4: 1},
            "seq_measured": 4,
            "trials": 1,
            "releases": 200,
            "versions": 1000,
            "scale_reps": 1,
        }
    # Ten-minute budget: one round per side and size; one-at-a-time comes from section 1's ten raw
    # installs, which are exactly that (measured here only when section 1 is skipped).
    return {
        "sizes": {16: 1, 64: 1},
        "seq_measured": 0,
        "trials": 3,
        "releases": 1000,
        "versions": 5000,
        "scale_reps": 2,
    }


def say(text: str) -> None:
    print(text, flush=True)


async def run_major(
    shared: Any, major: int, args: argparse.Namespace, sizes: dict[str, Any], big: Any
) -> dict[str, Any]:
    from bench import sections
    from bench.world import World, proc_stat, reset_peak_rss

    w = World(shared, major, args.poll_interval)
    out: dict[str, Any] = {}
    started = time.monotonic()
    await w.start()
    out["helm_version"] = w.versions.get("helm", "")
    say(
        f"\n#### helm {major} ({out['helm_version']}): worker pid {w.pid}, "
        f"KDUFLOW_POLL_INTERVAL {args.poll_interval:g} s, started in {time.monotonic() - started:.1f} s"
    )
    try:
        if "sequential" in args.sections:
            t = time.monotonic()
            hwm_reset = reset_peak_rss(w.pid)
            out["sequential"] = await sections.sequential(w, args.reps)
            if hwm_reset:
                out["peak_rss_level1_mib"] = round(proc_stat(w.pid).hwm_kib / 1024, 1)
            say(f"   sequential: {time.monotonic() - t:.0f} s")
        if "concurrency" in args.sections:
            t = time.monotonic()
            seq_install = sections.median_raw_install(out["sequential"]) if "sequential" in out else 0.0
            out["concurrency"] = await sections.concurrency(
                w, sizes["sizes"], sizes["seq_measured"], seq_install
            )
            say(f"   concurrency: {time.monotonic() - t:.0f} s")
        if "readiness" in args.sections:
            t = time.monotonic()
            out["readiness"] = await sections.readiness(w, sizes["trials"])
            say(f"   readiness: {time.monotonic() - t:.0f} s")
        if "scale" in args.sections:
            t = time.monotonic()
            out["scale"] = await sections.scale(w, big, sizes["releases"], sizes["scale_reps"])
            say(f"   scale: {time.monotonic() - t:.0f} s")
    except BaseException:
        say(f"worker log tail:\n{w.log_tail()}")
        raise
    finally:
        await w.stop()
    out["seconds"] = round(time.monotonic() - started, 1)
    return out


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    from bench import sections
    from bench.world import ROOT, Shared
    from kduflow.devserver import dev_server, free_port
    from sandbox import SandboxCluster
    from sandbox.chartrepo import ChartRepoServer, chart_repo

    sizes = plan(args)
    majors = [3, 4] if args.helm == "both" else [int(args.helm)]
    result: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "poll_interval_s": args.poll_interval,
        "temporal_db": args.temporal_db,
        "reps": args.reps,
        "plan": sizes,
        "helm": {},
    }
    started = time.monotonic()
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kduflow-bench-")))
        address = stack.enter_context(
            dev_server(workdir / "temporal", free_port(), persist=args.temporal_db == "file")
        )
        clusters = [stack.enter_context(SandboxCluster(tls=True, ready_delay=1.0)) for _ in range(4)]
        repo = stack.enter_context(chart_repo(ROOT / "tools" / "helm3" / "helm"))
        big_dir = sections.build_big_repo(repo.directory, workdir / "big-repo", sizes["versions"])
        big = ChartRepoServer(big_dir)
        # The index names its packages relative to the repository, so the URL is not needed in it.
        stack.enter_context(big)
        shared = Shared(address=address, clusters=clusters, repo=repo, workdir=workdir)
        say(
            f"kduflow bench ({result['mode']}): dev server {address}, 4 sandbox clusters "
            f"(ready_delay 1 s), chart repo {repo.url}, big index {sizes['versions']} versions; "
            f"sections {','.join(args.sections)}"
        )
        for major in majors:
            result["helm"][str(major)] = await run_major(shared, major, args, sizes, big)
            for cluster in clusters:
                cluster.reset()
    result["seconds"] = round(time.monotonic() - started, 1)
    result["machine"] = rpt.machine_info({k: v.get("helm_version", "") for k, v in result["helm"].items()})
    return result


# ------------------------------------------------------------------------------------------------
# Printing
# ------------------------------------------------------------------------------------------------


def print_report(result: dict[str, Any]) -> None:
    quick = result["mode"] == "quick"
    targets: list[dict[str, Any]] = []
    for major, data in result["helm"].items():
        h = f"helm {major}"
        seq = data.get("sequential")
        if seq:
            rows = []
            for op, d in seq.items():
                met = d["ratio_median"] <= 1.10
                targets.append(
                    {
                        "target": f"1. sequential {op} <= 1.10x",
                        "helm": major,
                        "value": d["ratio_median"],
                        "met": met,
                    }
                )
                rows.append(
                    [
                        op,
                        d["kduflow_s"]["median"],
                        d["kduflow_s"]["p90"],
                        d["helm_s"]["median"],
                        d["helm_s"]["p90"],
                        f"{d['ratio_median']:.2f}x",
                        rpt.verdict(met, quick=quick),
                    ]
                )
            say(
                rpt.table(
                    f"{h}: 1. sequential, {seq['install']['kduflow_s']['n']} runs each (seconds)",
                    ["op", "kduflow med", "p90", "helm med", "p90", "ratio", "<= 1.10x"],
                    rows,
                )
            )
            rows = []
            for op, d in seq.items():
                req_met = d["requests_ratio_median"] <= 1.3
                wr_met = d["writes_within_changes_plus_1"]
                if op == "install":
                    targets.append(
                        {
                            "target": "3. API requests per install <= 1.3x",
                            "helm": major,
                            "value": d["requests_ratio_median"],
                            "met": req_met,
                        }
                    )
                targets.append(
                    {
                        "target": f"3. status writes <= changes + 1 ({op})",
                        "helm": major,
                        "value": d["status_writes"]["max"],
                        "met": wr_met,
                    }
                )
                rows.append(
                    [
                        op,
                        d["kduflow_requests"]["median"],
                        d["helm_requests"]["median"],
                        f"{d['requests_ratio_median']:.2f}x",
                        d["status_writes"]["median"],
                        d["distinct_status_changes"]["median"],
                        rpt.verdict(wr_met, quick=False),
                        d["spawns_per_op"]["median"],
                        d["polls_per_op"]["median"],
                        d["spawns_in_poller"],
                        d["worker_cpu_s_per_op"]["median"],
                        d["helm_cpu_s_per_op_in_worker"]["median"],
                    ]
                )
            say(
                rpt.table(
                    f"{h}: 3/4. cost per sequential operation (medians)",
                    [
                        "op",
                        "API req kduflow",
                        "helm",
                        "ratio",
                        "status writes",
                        "distinct changes",
                        "writes <= changes+1",
                        "procs",
                        "polls",
                        "procs by poller",
                        "worker CPU s",
                        "helm CPU s",
                    ],
                    rows,
                )
            )
            for op, d in seq.items():
                steps = "; ".join(
                    f"{x['step']} {x['start']:.2f}-{x['end']:.2f}" for x in d["timeline_of_last"]
                )
                say(f"   where the time of the last {op} went (s after start): {steps}")
            for op, d in seq.items():
                cmds = ", ".join(f"{k} x{v}" for k, v in sorted(d["spawns_by_activity"].items()))
                say(f"   processes of {d['kduflow_s']['n']} kduflow {op}s (activity: command): {cmds}")
        conc = data.get("concurrency")
        if conc:
            rows = []
            for n, d in conc.items():
                par_met = d["ratio_vs_parallel"] <= 1.2
                seq_met = d["speedup_vs_one_at_a_time"] >= 5
                targets.append(
                    {
                        "target": f"2. {n} at once <= 1.2x parallel helm",
                        "helm": major,
                        "value": d["ratio_vs_parallel"],
                        "met": par_met,
                    }
                )
                targets.append(
                    {
                        "target": f"2. {n} at once >= 5x faster than one at a time",
                        "helm": major,
                        "value": d["speedup_vs_one_at_a_time"],
                        "met": seq_met,
                    }
                )
                one = d["helm_one_at_a_time"]
                rows.append(
                    [
                        n,
                        d["kduflow_wall_s"],
                        d["helm_parallel_wall_s"],
                        f"{d['ratio_vs_parallel']:.2f}x",
                        rpt.verdict(par_met, quick=quick),
                        one["wall_s"] if one["measured"] else f"~{one['wall_s']:.1f}",
                        f"{d['speedup_vs_one_at_a_time']:.1f}x",
                        rpt.verdict(seq_met, quick=quick),
                        f"{d['requests_per_install_ratio']:.2f}x",
                    ]
                )
            say(
                rpt.table(
                    f"{h}: 2. installs at once over 4 clusters, one worker (wall seconds, median of rounds)",
                    [
                        "N",
                        "kduflow",
                        "helm parallel",
                        "ratio",
                        "<= 1.2x",
                        "helm 1-by-1",
                        "speedup",
                        ">= 5x",
                        "API req/install ratio",
                    ],
                    rows,
                )
            )
            for n, d in conc.items():
                if not d["helm_one_at_a_time"]["measured"]:
                    say(f"   N={n}: helm one at a time {d['helm_one_at_a_time']['note']}")
        rows = []
        if seq:
            d = seq["install"]
            rows.append(
                [
                    1,
                    "-",
                    d["worker_cpu_s_per_op"]["median"],
                    d["helm_cpu_s_per_op_in_worker"]["median"],
                    d["spawns_per_op"]["median"],
                    d["polls_per_op"]["median"],
                    d["spawns_in_poller"],
                ]
            )
        for n, d in (conc or {}).items():
            r = d["kduflow"][-1]
            rows.append(
                [
                    n,
                    max(x["peak_rss_mib"] for x in d["kduflow"]),
                    median([x["worker_cpu_s_per_op"] for x in d["kduflow"]]),
                    median([x["helm_cpu_s_per_op"] for x in d["kduflow"]]),
                    r["spawns_per_op"],
                    r["polls_per_op"],
                    sum(x["spawns_in_poller"] for x in d["kduflow"]),
                ]
            )
        if rows:
            if data.get("peak_rss_level1_mib"):
                rows[0][1] = data["peak_rss_level1_mib"]
            say(
                rpt.table(
                    f"{h}: 4. worker resources per install by concurrency",
                    [
                        "concurrent",
                        "peak RSS MiB",
                        "worker CPU s/op",
                        "helm CPU s/op",
                        "procs/op",
                        "polls/op",
                        "procs by poller",
                    ],
                    rows,
                )
            )
        rd = data.get("readiness")
        if rd:
            bound = rd["bound_configured_s"]
            met = bool(rd["delay_s"]["n"]) and rd["delay_s"]["max"] <= bound
            targets.append(
                {
                    "target": "3. readiness -> MongoDB <= poll interval + 1 s",
                    "helm": major,
                    "value": rd["delay_s"]["max"],
                    "met": met,
                }
            )
            rows = [
                [
                    t["release"],
                    t.get("delay_s", "-"),
                    t.get("written_by", t.get("error", "")),
                    t.get("status_writes", "-"),
                    t.get("distinct_status_changes", "-"),
                ]
                for t in rd["trials"]
            ]
            say(
                rpt.table(
                    f"{h}: 3. readiness change -> status in MongoDB (configured poll interval "
                    f"{rd['configured_poll_interval_s']:g} s, observed poll period "
                    f"{rd['observed_poll_period_s']['median']:.2f} s)",
                    ["release", "delay s", "written by", "status writes", "distinct changes"],
                    rows,
                )
            )
            say(
                f"   max delay {rd['delay_s']['max']:.2f} s vs configured poll interval + 1 s "
                f"= {bound:.2f} s: "
                f"{rpt.verdict(met, quick=quick)}"
            )
            if rd.get("bound_observed_s"):
                ok = rd["delay_s"]["max"] <= rd["bound_observed_s"]
                say(
                    f"   (vs the poller's observed period + 1 s = {rd['bound_observed_s']:.2f} s: "
                    f"{'within' if ok else 'beyond'})"
                )
        sc = data.get("scale")
        if sc:
            ki, ri = sc["kdu_instances"], sc["repo_index"]
            rows = [
                [
                    f"KduInstances ({ki['kduflow_found']} releases)",
                    ki["kduflow_s"]["median"],
                    f"helm list ({ki['helm_list_found']})",
                    ki["helm_list_s"]["median"],
                    f"{ki['ratio_median']:.2f}x",
                ],
                [
                    f"SyncRepos adding {ri['chart_versions']} versions",
                    ri["kduflow_sync_repos_add_s"],
                    "helm repo add",
                    ri["helm_repo_add_s"],
                    f"{rpt.ratio(ri['kduflow_sync_repos_add_s'], ri['helm_repo_add_s']):.2f}x",
                ],
                ["", "", "helm repo update", ri["helm_repo_update_s"], ""],
                ["", "", f"helm search repo ({ri['helm_search_repo_found']})", ri["helm_search_repo_s"], ""],
                [
                    "InspectKdu",
                    ri["kduflow_inspect_s"],
                    "helm show all",
                    ri["helm_show_all_s"],
                    f"{rpt.ratio(ri['kduflow_inspect_s'], ri['helm_show_all_s']):.2f}x",
                ],
            ]
            for inst in ri["installs"]:
                rows.append(
                    [
                        f"InstallKdu, no db_dict ({inst['index_cache']} index cache)",
                        inst["kduflow_s"],
                        "helm install --wait",
                        inst["helm_s"],
                        f"{rpt.ratio(inst['kduflow_s'], inst['helm_s']):.2f}x",
                    ]
                )
            say(rpt.table(f"{h}: 5. reads at scale (seconds)", ["kduflow", "s", "helm", "s", "ratio"], rows))
    result["targets"] = targets
    if targets:
        say(
            rpt.table(
                "targets of issue 9",
                ["target", "helm", "value", "verdict"],
                [[t["target"], t["helm"], t["value"], rpt.verdict(t["met"], quick=quick)] for t in targets],
            )
        )
    say(
        f"\ntotal {result['seconds']:.0f} s on {result['machine']['cpu_model']} "
        f"({result['machine']['cores']} cores)"
    )


def median(values: list[float]) -> float:
    return rpt.median(values)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.seed is not None:
        random.seed(args.seed)
    result = asyncio.run(amain(args))
    print_report(result)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(result, indent=2, default=str))
    say(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
