"""The README's main command (`./run demo`) is a tested path: run the demo as a user would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.e2e


def test_demo_drives_the_whole_lifecycle_through_the_temporal_cli_and_ctrl_c_stops_it():
    env = {
        **os.environ,
        "NO_COLOR": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "kduflow.demo", "--keep"],
        cwd=ROOT,
        env=env,
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
            if line.startswith("Ctrl-C to stop"):
                break
        out = "".join(lines)
        assert lines and lines[-1].startswith("Ctrl-C to stop"), out[-4000:]
        # Ctrl-C: the worker, the sandbox, the chart repository and the dev server all stop.
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0 and rest.strip().endswith("stopped"), rest
    steps = [line for line in lines if line.startswith("== ")]
    assert [s.split(" ")[1] for s in steps] == ["Starting:", "1.", "2.", "3a.", "3b.", "4.", "5.", "Done:"]
    # Every step printed the temporal CLI command it ran, and only the never-ready upgrade failed.
    assert out.count("$ temporal workflow execute") == 9
    assert out.count("failed as expected") == 1
    assert '"status": "Rollback to 2"' in out and '"phase": "rolled-back"' in out
    assert '"operation": "scale"' in out
    assert "Traceback" not in out + rest
    address = next(line for line in lines if line.startswith("   temporal dev server")).split()[3]
    leftovers = subprocess.run(
        ["pgrep", "-f", f"start-dev --ip 127.0.0.1 --port {address.rsplit(':', 1)[1]}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert leftovers.stdout == "", "the demo's dev server is still running"
