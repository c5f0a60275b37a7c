"""The object store: objects by ``(group, plural)`` and ``(namespace, name)``, one resourceVersion
counter, and a bounded event log that watches replay from.

Stored objects are immutable by convention: every write stores a new dict, so readers may serialise
a reference without copying. All methods must be called with ``store.lock`` held (it is reentrant);
``cond`` (on the same lock) is notified on every write.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

Key = tuple[str, str]  # (group, plural)
EVENT_LOG_SIZE = 4096


@dataclass(frozen=True)
class Event:
    rv: int
    key: Key
    namespace: str
    name: str
    labels: dict[str, str]
    type: str  # ADDED, MODIFIED, DELETED
    body: bytes  # the object as compact JSON (memory: events outlive object versions)
    fields: dict[str, Any]  # what field selectors may test without parsing body


def _selector_fields(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    out: dict[str, Any] = {"metadata": {"name": meta.get("name", ""), "namespace": meta.get("namespace", "")}}
    status, spec = obj.get("status"), obj.get("spec")
    if isinstance(status, dict) and "phase" in status:
        out["status"] = {"phase": status["phase"]}
    if isinstance(spec, dict) and "nodeName" in spec:
        out["spec"] = {"nodeName": spec["nodeName"]}
    if "type" in obj and isinstance(obj["type"], str):
        out["type"] = obj["type"]
    return out


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class Store:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.rv = 1
        self._objects: dict[Key, dict[tuple[str, str], dict[str, Any]]] = {}
        self._by_uid: dict[str, tuple[Key, str, str]] = {}
        # controller-owner uid -> locations of what it controls (controllers look this up per object)
        self._controlled: dict[str, set[tuple[Key, str, str]]] = {}
        self.events: deque[Event] = deque(maxlen=EVENT_LOG_SIZE)
        self.on_write: Callable[[], None] = lambda: None
        self.compacted_rv = 0  # events up to here are gone from the log
        self.closed = False

    # ---- reads ----

    def get(self, key: Key, namespace: str, name: str) -> dict[str, Any] | None:
        return self._objects.get(key, {}).get((namespace, name))

    def by_uid(self, uid: str) -> dict[str, Any] | None:
        loc = self._by_uid.get(uid)
        return self.get(*loc) if loc else None

    def controlled_by(self, key: Key, owner_uid: str) -> list[dict[str, Any]]:
        """Objects of one type whose controller ownerReference has this uid, sorted by name."""
        locs = sorted(loc for loc in self._controlled.get(owner_uid, ()) if loc[0] == key)
        return [o for o in (self.get(*loc) for loc in locs) if o is not None]

    def _index(self, loc: tuple[Key, str, str], obj: dict[str, Any] | None, add: bool) -> None:
        if obj is None:
            return
        for ref in obj["metadata"].get("ownerReferences") or []:
            if not isinstance(ref, dict) or not ref.get("controller") or not ref.get("uid"):
                continue
            if add:
                self._controlled.setdefault(ref["uid"], set()).add(loc)
            else:
                locs = self._controlled.get(ref["uid"])
                if locs is not None:
                    locs.discard(loc)
                    if not locs:
                        del self._controlled[ref["uid"]]

    def items(self, key: Key, namespace: str | None = None) -> list[dict[str, Any]]:
        """Objects of one type (in one namespace when given), sorted by namespace then name."""
        objs = self._objects.get(key, {})
        return [objs[k] for k in sorted(objs) if namespace is None or k[0] == namespace]

    def all_items(self) -> Iterator[tuple[Key, dict[str, Any]]]:
        for key, objs in list(self._objects.items()):
            for k in sorted(objs):
                yield key, objs[k]

    def count(self) -> int:
        return sum(len(v) for v in self._objects.values())

    def oldest_replayable_rv(self) -> int:
        """Watches from a resourceVersion below this got events dropped from the log (410 Gone)."""
        dropped = self.events[0].rv - 1 if len(self.events) == self.events.maxlen else 0
        return max(dropped, self.compacted_rv)

    def events_after(self, rv: int) -> list[Event]:
        out = []
        for ev in reversed(self.events):
            if ev.rv <= rv:
                break
            out.append(ev)
        out.reverse()
        return out

    # ---- writes ----

    def put(self, key: Key, obj: dict[str, Any], event_type: str) -> dict[str, Any]:
        """Store ``obj`` (a fresh dict the caller hands over) with a new resourceVersion."""
        self.rv += 1
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self.rv)
        ns, name = meta.get("namespace", ""), meta["name"]
        objs = self._objects.setdefault(key, {})
        self._index((key, ns, name), objs.get((ns, name)), add=False)
        objs[(ns, name)] = obj
        self._index((key, ns, name), obj, add=True)
        if meta.get("uid"):
            self._by_uid[meta["uid"]] = (key, ns, name)
        self._log(key, obj, event_type)
        return obj

    def remove(self, key: Key, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self._objects.get(key, {}).pop((namespace, name), None)
        if obj is None:
            return None
        self.rv += 1
        self._index((key, namespace, name), obj, add=False)
        self._by_uid.pop((obj.get("metadata") or {}).get("uid", ""), None)
        gone = dict(obj, metadata=dict(obj["metadata"], resourceVersion=str(self.rv)))
        self._log(key, gone, "DELETED")
        return gone

    def clear(self) -> None:
        self._objects.clear()
        self._by_uid.clear()
        self._controlled.clear()
        self.events.clear()  # older resourceVersions now answer 410 Gone, as after a compaction
        self.rv += 1
        self.compacted_rv = self.rv
        self.cond.notify_all()

    def _log(self, key: Key, obj: dict[str, Any], event_type: str) -> None:
        meta = obj["metadata"]
        self.events.append(
            Event(
                self.rv,
                key,
                meta.get("namespace", ""),
                meta["name"],
                dict(meta.get("labels") or {}),
                event_type,
                dumps(obj),
                _selector_fields(obj),
            )
        )
        self.cond.notify_all()
        self.on_write()
