"""The README's main command (`./run demo`) is a tested path: run the demo as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.e2e


def test_demo_drives_the_whole_lifecycle_through_the_temporal_cli():
    env = {
        **os.environ,
        "NO_COLOR": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "kduflow.demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    steps = [line for line in out.splitlines() if line.startswith("== ")]
    assert [s.split(" ")[1] for s in steps] == ["Starting:", "1.", "2.", "3a.", "3b.", "4.", "5.", "Done:"]
    # Every step printed the temporal CLI command it ran, and only the never-ready upgrade failed.
    assert out.count("$ temporal workflow execute") == 9
    assert out.count("failed as expected") == 1
    assert '"status": "Rollback to 2"' in out and '"phase": "rolled-back"' in out
    assert '"operation": "scale"' in out
    assert "Traceback" not in out + proc.stderr
