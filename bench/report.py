"""Statistics, the printed tables and the machine description of the JSON report."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def p90(values: Sequence[float]) -> float:
    """The 90th percentile (nearest rank), or the maximum of fewer than ten values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(0.9 * len(ordered) + 0.5)) - 1))
    return float(ordered[rank])


def summary(values: Sequence[float]) -> dict[str, Any]:
    """``{n, median, p90, min, max, values}`` of a sample (seconds or counts)."""
    vals = [float(v) for v in values]
    return {
        "n": len(vals),
        "median": round(median(vals), 4),
        "p90": round(p90(vals), 4),
        "min": round(min(vals), 4) if vals else 0.0,
        "max": round(max(vals), 4) if vals else 0.0,
        "values": [round(v, 4) for v in vals],
    }


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


def verdict(met: bool, *, quick: bool) -> str:
    """How a target reads in the table; quick runs are smoke tests whose timings prove nothing."""
    if quick:
        return "(quick: not judged)"
    return "target met" if met else "MISSED"


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with right-aligned numbers."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [
        max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(header)
    ]
    lines = [f"\n== {title}", "  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append(
            "  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(row, widths, strict=True))
        )
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def _numeric(text: str) -> bool:
    return text.replace(".", "", 1).replace("x", "", 1).lstrip("-").isdigit()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(helm_versions: dict[str, str]) -> dict[str, Any]:
    """What the numbers were measured on."""
    try:
        temporal_cli = subprocess.run(
            [str(Path(sys.executable).parent / "temporal"), "--version"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout.strip()
    except OSError:
        temporal_cli = "unknown"
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "temporalio": _version("temporalio"),
        "montydb": _version("montydb"),
        "temporal_cli": temporal_cli,
        "helm": helm_versions,
    }


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"
