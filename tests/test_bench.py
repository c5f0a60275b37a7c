"""The benchmark harness runs end to end (``python -m bench --quick``) and writes a complete report.

Only the report's structure is checked (sections present, numbers positive, kduflow and baseline
figures side by side), never a timing: timings on a shared CI machine prove nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent


def positive(summary: dict[str, Any]) -> bool:
    return summary["n"] > 0 and summary["median"] > 0 and all(v > 0 for v in summary["values"])


@pytest.mark.timeout(200)
def test_quick_bench_writes_a_complete_report(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--helm", "4", "--report", str(report)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "(quick: not judged)" in proc.stdout, "a quick run judges no timing"
    data = json.loads(report.read_text())
    assert data["mode"] == "quick"
    assert data["machine"]["cores"] >= 1 and data["machine"]["temporalio"]
    h4 = data["helm"]["4"]
    assert h4["helm_version"].startswith("v4.")

    seq = h4["sequential"]
    for op in ("install", "upgrade", "rollback"):
        d = seq[op]
        assert positive(d["kduflow_s"]) and positive(d["helm_s"]), op
        assert d["ratio_median"] > 0
        assert positive(d["kduflow_requests"]) and positive(d["helm_requests"]), op
        assert d["status_writes"]["median"] >= 1 and d["distinct_status_changes"]["median"] >= 1
        assert d["spawns_per_op"]["median"] >= 1 and d["worker_cpu_s_per_op"]["n"] > 0
    assert any(cmd.startswith("helm install") for cmd in seq["install"]["spawns_by_command"])

    (size, conc), *_ = h4["concurrency"].items()
    assert int(size) > 1
    assert conc["kduflow_wall_s"] > 0 and conc["helm_parallel_wall_s"] > 0
    assert conc["helm_one_at_a_time"]["wall_s"] > 0
    assert conc["ratio_vs_parallel"] > 0 and conc["speedup_vs_one_at_a_time"] > 0
    kd = conc["kduflow"][0]
    assert kd["peak_rss_mib"] > 0 and kd["worker_cpu_s_per_op"] > 0 and kd["requests_per_install"] > 0
    assert conc["helm_parallel"][0]["requests_per_install"] > 0

    rd = h4["readiness"]
    assert rd["trials"] and all("delay_s" in t for t in rd["trials"]), rd["trials"]
    assert rd["delay_s"]["n"] == len(rd["trials"]) and rd["bound_configured_s"] > 0

    sc = h4["scale"]
    ki = sc["kdu_instances"]
    assert ki["kduflow_found"] >= ki["releases_seeded"] and ki["helm_list_found"] >= ki["releases_seeded"]
    assert positive(ki["kduflow_s"]) and positive(ki["helm_list_s"])
    ri = sc["repo_index"]
    assert ri["chart_versions"] >= 1000 and ri["helm_search_repo_found"] >= 1000
    for key in ("kduflow_sync_repos_add_s", "helm_repo_add_s", "helm_repo_update_s", "kduflow_inspect_s"):
        assert ri[key] > 0, key
    assert all(i["kduflow_s"] > 0 and i["helm_s"] > 0 for i in ri["installs"])

    assert data["targets"] and all({"target", "helm", "value", "met"} <= set(t) for t in data["targets"])
