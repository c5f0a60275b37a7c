"""``python -m bench.worker_probe [worker flags]``: ``worker.py`` with event counters, for the benchmark.

The benchmark cannot change product code, so this wrapper patches three seams of the worker process
before running ``worker.main`` unchanged, and appends one JSON line per event to the file named by
``KDUFLOW_BENCH_PROBE_LOG``:

* ``{"ev": "write", ...}`` -- every ``Store.insert_one`` / ``update_one`` / ``delete_one``: the time it
  returned, the collection, the filter's ``_id``, whether it matched, the activity that made it, and
  for a status write (``<path>.kduflow`` in ``$set``) its OSM status text, phase, readiness and a digest
  of the content without timestamps and sequence numbers (two writes with one digest say the same);
* ``{"ev": "spawn", ...}`` -- every process started through ``subprocess.Popen`` (the runner's helm and
  kubectl, kubectl exec plugins): program name and verb;
* ``{"ev": "observe", ...}`` -- every ``StatusActivities.observe`` (one status observation through the
  Kubernetes API): release and the activity type (``kdu.poll_status`` for a poll).

Each event costs one short ``write`` to a line-buffered file, microseconds against the milliseconds of
the operations measured.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

PROBE_ENV = "KDUFLOW_BENCH_PROBE_LOG"


class EventLog:
    """Appends JSON lines to one file from any thread."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._fh = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives with the process

    def emit(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, default=str, separators=(",", ":"))
        with self._lock:
            self._fh.write(line + "\n")


def _activity_type() -> str:
    from temporalio import activity

    try:
        return activity.info().activity_type if activity.in_activity() else ""
    except RuntimeError:
        return ""


def status_digest(fields: Mapping[str, Any]) -> str:
    """Digest of a status ``$set`` without what changes on every write (times, sequence numbers)."""
    stable: dict[str, Any] = {}
    for key, value in fields.items():
        if key.endswith(".status-time") or key.endswith(".kduflow.seq"):
            continue
        if key.endswith(".kduflow") and isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if k not in ("observed_at", "seq")}
        stable[key] = value
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()[:16]


def describe_write(
    collection: str, filter: Mapping[str, Any], update: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The event recorded for one write (status fields only when it is a status write)."""
    event: dict[str, Any] = {"ev": "write", "coll": collection, "id": str(filter.get("_id", ""))}
    fields = (update or {}).get("$set") if update else None
    if isinstance(fields, Mapping):
        sub_key = next((k for k in fields if k.endswith(".kduflow")), None)
        if sub_key is not None and isinstance(fields[sub_key], Mapping):
            sub = fields[sub_key]
            prefix = sub_key[: -len(".kduflow")]
            event.update(
                status=fields.get(f"{prefix}.status", ""),
                phase=sub.get("phase", ""),
                ready=bool(sub.get("ready")),
                release_status=sub.get("release_status", ""),
                revision=sub.get("revision", 0),
                digest=status_digest(fields),
            )
    return event


#: Subcommands whose own subcommand says what they do (``repo add``, ``show chart``).
_GROUPS = frozenset({"repo", "registry", "show", "get", "search", "plugin", "config", "auth"})


def command_verb(argv: list[str]) -> str:
    """``install`` of ``helm install NAME ...``, ``repo update`` of ``helm repo update``; no release names."""
    words = [a for a in argv[1:3] if not a.startswith("-")]
    if not words:
        return ""
    return " ".join(words[:2]) if words[0] in _GROUPS and len(words) > 1 else words[0]


def install(log: EventLog) -> None:
    """Patch the store, the process start and the status observation of this process."""
    from activities.status import StatusActivities
    from activities.store import Store

    def wrap_write(name: str) -> None:
        original: Callable[..., Any] = getattr(Store, name)

        @functools.wraps(original)
        async def wrapped(self: Store, collection: str, filter_or_doc: dict, *args: Any, **kw: Any) -> Any:
            result = await original(self, collection, filter_or_doc, *args, **kw)
            update = args[0] if name == "update_one" and args else kw.get("update")
            event = describe_write(collection, filter_or_doc, update)
            event.update(t=time.time(), op=name, activity=_activity_type())
            if isinstance(result, int):
                event["matched"] = result
            log.emit(event)
            return result

        setattr(Store, name, wrapped)

    for name in ("insert_one", "update_one", "delete_one"):
        wrap_write(name)

    observe: Callable[..., Any] = StatusActivities.observe

    @functools.wraps(observe)
    async def observed(self: StatusActivities, ref: Any, *args: Any, **kw: Any) -> Any:
        started = time.time()
        try:
            return await observe(self, ref, *args, **kw)
        finally:
            log.emit(
                {
                    "ev": "observe",
                    "t": started,
                    "dt": time.time() - started,
                    "rel": ref.kdu_instance,
                    "ns": ref.namespace,
                    "activity": _activity_type(),
                }
            )

    StatusActivities.observe = observed  # type: ignore[method-assign]

    base_popen = subprocess.Popen

    class CountingPopen(base_popen):  # type: ignore[valid-type, misc]
        def __init__(self, args: Any, *a: Any, **kw: Any) -> None:
            argv = [str(x) for x in args] if isinstance(args, (list, tuple)) else [str(args)]
            log.emit(
                {
                    "ev": "spawn",
                    "t": time.time(),
                    "prog": os.path.basename(argv[0]),
                    "verb": command_verb(argv),
                    "activity": _activity_type(),
                }
            )
            super().__init__(args, *a, **kw)

    subprocess.Popen = CountingPopen  # type: ignore[misc]


def main() -> int:
    path = os.environ.get(PROBE_ENV, "")
    if not path:
        print(f"bench.worker_probe: set {PROBE_ENV} to the event log path", file=sys.stderr)
        return 2
    install(EventLog(Path(path)))
    import worker

    return worker.main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
