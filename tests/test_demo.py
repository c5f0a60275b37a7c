"""The README's main command (`./run demo`) is a tested path: run the demo as a user would, from the
checkout and from an installed package (package data only, no `tools/`)."""

from __future__ import annotations

import importlib.resources
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kduflow import demo
from sandbox import chartrepo

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools"


def run_demo(argv: list[str], cwd: Path, env: dict[str, str], stop_after: str) -> tuple[list[str], str, int]:
    """Start the demo, read its output until a line starting with ``stop_after``, then Ctrl-C it.

    Returns the lines read, the output after Ctrl-C and the exit status.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "kduflow.demo", *argv],
        cwd=cwd,
        env={**env, "NO_COLOR": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith(stop_after):
                break
        assert lines and lines[-1].startswith(stop_after), "".join(lines)[-4000:]
        # Ctrl-C: the worker, the sandbox, the chart repository and the dev server all stop.
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return lines, rest, proc.returncode


def assert_dev_server_gone(lines: list[str]) -> None:
    address = next(line for line in lines if line.startswith("   temporal dev server")).split()[3]
    leftovers = subprocess.run(
        ["pgrep", "-f", f"start-dev --ip 127.0.0.1 --port {address.rsplit(':', 1)[1]}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert leftovers.stdout == "", "the demo's dev server is still running"


def section(lines: list[str], start: str, end: str) -> list[str]:
    """The lines from the one starting with ``start`` up to the next one starting with ``end``."""
    first = next(i for i, line in enumerate(lines) if line.startswith(start))
    last = next(i for i, line in enumerate(lines) if i > first and line.startswith(end))
    return lines[first:last]


def phases(lines: list[str]) -> list[str]:
    return [line.strip()[4:] for line in lines if line.startswith("   ... ")]


@pytest.mark.e2e
def test_demo_drives_the_whole_lifecycle_through_the_temporal_cli_and_ctrl_c_stops_it():
    env = {
        key: value for key, value in os.environ.items() if key not in ("KDUFLOW_HELM", "KDUFLOW_KUBECTL")
    }
    env["PATH"] = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    lines, rest, returncode = run_demo(["--keep"], ROOT, env, "Ctrl-C to stop")
    out = "".join(lines)
    assert returncode == 0 and rest.strip().endswith("stopped"), rest
    steps = [line for line in lines if line.startswith("== ")]
    assert [s.split(" ")[1] for s in steps] == ["Starting:", "1.", "2.", "3a.", "3b.", "4.", "5.", "Done:"]
    # A checkout uses its pinned helm 4 and the charts of its sandbox package.
    assert f"   helm                 {TOOLS / 'helm4' / 'helm'}  (from the checkout's tools/helm4)" in out
    assert f"(charts from {ROOT / 'sandbox' / 'charts'})" in out
    # Every step printed the temporal CLI command it ran, and only the never-ready upgrade failed.
    assert out.count("$ temporal workflow execute") == 9
    assert out.count("failed as expected") == 1
    assert '"status": "Rollback to 2"' in out and '"phase": "rolled-back"' in out
    assert '"operation": "scale"' in out
    assert "UpgradeRolledBack: upgrade of demo/demo-web failed at revision 3" in out
    assert "Traceback" not in out + rest

    # The release's phase is printed live while a step runs, between its command and its outcome.
    install = phases(section(lines, "== 2.", "ok in"))
    assert install[0].startswith("installing"), install
    assert install[-1] == "completed (deployed, revision 1, 3/3 ready)", install
    bad = phases(section(lines, "== 3b.", "failed as expected"))
    upgrading = [i for i, p in enumerate(bad) if p.startswith("upgrading (pending-upgrade, revision 3")]
    failed = bad.index(next(p for p in bad if p.startswith("failed (failed, revision 3")))
    assert upgrading and upgrading[-1] < failed, bad
    assert bad[-1] == "rolled-back (deployed, revision 4, 3/3 ready)", bad
    # A line per change: never the same phase line twice in a row.
    assert all(a != b for a, b in zip(bad, bad[1:], strict=False)), bad
    scale = phases(section(lines, "== 4.", "ok in"))
    assert scale[-1] == "completed (deployed, revision 5, 3/3 ready)", scale
    assert phases(section(lines, "== 5.", "ok in"))[-1].startswith("completed (absent")
    assert_dev_server_gone(lines)


@pytest.mark.e2e
def test_demo_runs_from_an_installed_package_with_helm_from_kduflow_helm(tmp_path: Path):
    """A non-editable install (no checkout, no tools/): charts come from the package data, helm and
    kubectl from KDUFLOW_HELM / KDUFLOW_KUBECTL. Runs the demo through the install step."""
    source = tmp_path / "src"
    # A copy of the source tree, so the build leaves nothing in the checkout.
    top_level = {".git", ".venv", "tools", "build", "tests", "bench", ".kduflow"}

    def ignore(directory: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n == "__pycache__" or n.endswith((".egg-info", "_cache"))}
        return skip | (top_level & set(names) if Path(directory) == ROOT else set())

    shutil.copytree(ROOT, source, ignore=ignore)
    site = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    # Every file of every chart is package data: templates (tests/ included) and dotfiles.
    installed = sorted(str(p.relative_to(site / "sandbox")) for p in (site / "sandbox" / "charts").rglob("*"))
    assert installed == sorted(
        str(p.relative_to(ROOT / "sandbox")) for p in (ROOT / "sandbox" / "charts").rglob("*")
    )
    assert "charts/webapp/templates/tests/test-connection.yaml" in installed
    assert "charts/webapp/.helmignore" in installed
    assert not (site / "tools").exists() and not (site / "pyproject.toml").exists()

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("KDUFLOW_", "PYTHON"))
    }
    env.update(
        PYTHONPATH=str(site),
        KDUFLOW_HELM=str(TOOLS / "helm3" / "helm"),
        KDUFLOW_KUBECTL=str(TOOLS / "helm3" / "kubectl"),
        # No helm or kubectl on PATH: only the variables can name them.
        PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin",
    )
    lines, rest, returncode = run_demo(["--helm", "3"], run_dir, env, "== 3a.")
    out = "".join(lines)
    assert returncode == 0 and rest.strip().endswith("stopped"), out[-3000:] + rest
    assert "worker (helm v3." in out
    assert f"   helm                 {TOOLS / 'helm3' / 'helm'}  (from KDUFLOW_HELM)" in out
    assert f"   kubectl              {TOOLS / 'helm3' / 'kubectl'}  (from KDUFLOW_KUBECTL)" in out
    assert f"(charts from {site / 'sandbox' / 'charts'})" in out
    assert phases(section(lines, "== 2.", "ok in"))[-1] == "completed (deployed, revision 1, 3/3 ready)"
    assert "Traceback" not in out + rest
    assert_dev_server_gone(lines)


# Unit level: where the demo finds its tools and charts.


def test_charts_are_found_through_importlib_resources():
    resource = importlib.resources.files("sandbox").joinpath("charts")
    assert chartrepo.charts_dir() == chartrepo.CHARTS_DIR == Path(str(resource))
    for name in chartrepo.CHART_NAMES:
        assert resource.joinpath(name, "Chart.yaml").is_file()


def test_charts_dir_names_missing_package_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(chartrepo, "CHARTS_DIR", tmp_path / "charts")
    with pytest.raises(RuntimeError, match="no chart webapp, statefuldb, broken under .*package data"):
        chartrepo.charts_dir()


def test_checkout_tools_only_in_a_checkout(tmp_path: Path):
    assert demo.checkout_tools(ROOT) == TOOLS
    # An installed package: site-packages holds the modules but no pyproject.toml (even with a tools/).
    (tmp_path / "tools" / "helm4").mkdir(parents=True)
    assert demo.checkout_tools(tmp_path) is None


def test_checkout_default_is_the_pinned_helm_of_the_major():
    for major, dialect in ((None, "helm4"), (4, "helm4"), (3, "helm3")):
        tool = demo.resolve_tool("helm", None, {"PATH": ""}, TOOLS, major)
        assert tool == demo.Tool(str(TOOLS / dialect / "helm"), f"the checkout's tools/{dialect}")
    tool = demo.resolve_tool("kubectl", None, {"PATH": ""}, TOOLS, 3)
    assert tool.path == str(TOOLS / "helm3" / "kubectl")


def test_flag_then_variable_then_checkout_then_path(tmp_path: Path):
    helm3, helm4 = str(TOOLS / "helm3" / "helm"), str(TOOLS / "helm4" / "helm")
    environ = {"KDUFLOW_HELM": helm3, "PATH": ""}
    assert demo.resolve_tool("helm", helm4, environ, TOOLS, None) == demo.Tool(helm4, "--helm-binary")
    assert demo.resolve_tool("helm", None, environ, TOOLS, 4) == demo.Tool(helm3, "KDUFLOW_HELM")
    # No checkout, no variable: a helm on PATH.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "helm").symlink_to(helm4)
    assert demo.resolve_tool("helm", None, {"PATH": str(bin_dir)}, None, None) == demo.Tool(
        str(bin_dir / "helm"), "PATH"
    )
    # A bare name in the variable is looked up on PATH.
    found = demo.resolve_tool("helm", None, {"KDUFLOW_HELM": "helm", "PATH": str(bin_dir)}, None, None)
    assert found == demo.Tool(str(bin_dir / "helm"), "KDUFLOW_HELM")


def test_missing_tools_are_named(tmp_path: Path):
    with pytest.raises(SystemExit, match=r"no kubectl binary: looked in PATH; pass --kubectl-binary PATH "
                       r"or set KDUFLOW_KUBECTL"):
        demo.resolve_tool("kubectl", None, {"PATH": str(tmp_path)}, None, None)
    # A checkout without fetched tools says how to fetch them.
    with pytest.raises(SystemExit, match=r"helm9/helm \(\./run setup fetches it\) and PATH"):
        demo.resolve_tool("helm", None, {"PATH": str(tmp_path)}, TOOLS, 9)
    with pytest.raises(SystemExit, match=r"^KDUFLOW_HELM='/nonexistent/helm': not an executable file$"):
        demo.resolve_tool("helm", None, {"KDUFLOW_HELM": "/nonexistent/helm"}, TOOLS, None)
    with pytest.raises(SystemExit, match=r"^--helm-binary='helm': no executable of that name on PATH$"):
        demo.resolve_tool("helm", "helm", {"PATH": str(tmp_path)}, TOOLS, None)


def test_probe_helm_checks_the_requested_major():
    helm3 = demo.Tool(str(TOOLS / "helm3" / "helm"), "KDUFLOW_HELM")
    assert demo.probe_helm(helm3, 3).startswith("v3.")
    assert demo.probe_helm(helm3, None).startswith("v3.")
    with pytest.raises(SystemExit, match=r"--helm 4 asks for helm 4, but .*helm3/helm \(from KDUFLOW_HELM\)"
                       r" is helm v3\."):
        demo.probe_helm(helm3, 4)
    with pytest.raises(SystemExit, match=r"helm /bin/true \(from PATH\): cannot parse helm version"):
        demo.probe_helm(demo.Tool("/bin/true", "PATH"), None)


def test_phase_line():
    assert demo.phase_line({}) == ""
    assert demo.phase_line({"kduflow": {"phase": "installing", "release_status": "absent"}}) == (
        "installing (absent)"
    )
    sub = {"phase": "upgrading", "release_status": "pending-upgrade", "revision": 2, "ready_resources": 0,
           "total_resources": 1}
    assert demo.phase_line({"kduflow": sub}) == "upgrading (pending-upgrade, revision 2, 0/1 ready)"
