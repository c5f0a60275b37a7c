"""Patch semantics: JSON merge (RFC 7386), JSON patch (RFC 6902), the strategic-merge subset helm's
3-way patches need, and the crude server-side apply the reference measured as sufficient.

All functions return new objects and never mutate their inputs. They raise ``PatchError`` for a
patch that cannot apply (the server answers 422) and ``ValueError`` for a malformed patch (400).
"""

from __future__ import annotations

import copy
from typing import Any

# Merge keys of list elements, tried in order (the first key every element carries wins). The real
# server takes them from the OpenAPI schema; these cover containers/env/volumes/ports/mounts.
MERGE_KEYS = ("name", "containerPort", "port", "mountPath", "devicePath", "ip", "topologyKey")


class PatchError(Exception):
    """The patch is well-formed but cannot be applied (a failed ``test``, a missing path)."""


# ---- JSON merge patch ----------------------------------------------------------------------------


def json_merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = json_merge(result.get(k), v)
    return result


# ---- JSON patch ----------------------------------------------------------------------------------


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ValueError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    cur = doc
    for p in parts:
        if isinstance(cur, dict):
            if p not in cur:
                raise PatchError(f"path element {p!r} not found")
            cur = cur[p]
        elif isinstance(cur, list):
            try:
                cur = cur[int(p)]
            except (ValueError, IndexError) as e:
                raise PatchError(f"bad list index {p!r}") from e
        else:
            raise PatchError(f"cannot descend into {type(cur).__name__} at {p!r}")
    return cur


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _walk(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        else:
            try:
                idx = int(last)
            except ValueError as e:
                raise PatchError(f"bad list index {last!r}") from e
            if not 0 <= idx <= len(parent):
                raise PatchError(f"list index {idx} out of range")
            parent.insert(idx, value)
    else:
        raise PatchError(f"cannot add into {type(parent).__name__}")
    return doc


def _remove(doc: Any, parts: list[str]) -> Any:
    if not parts:
        raise PatchError("cannot remove the whole document")
    parent = _walk(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"path element {last!r} not found")
        return parent.pop(last)
    if isinstance(parent, list):
        try:
            return parent.pop(int(last))
        except (ValueError, IndexError) as e:
            raise PatchError(f"bad list index {last!r}") from e
    raise PatchError(f"cannot remove from {type(parent).__name__}")


def json_patch(target: Any, ops: Any) -> Any:
    if not isinstance(ops, list):
        raise ValueError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise ValueError(f"invalid JSON patch operation {op!r}")
        kind, parts = op["op"], _pointer(op["path"])
        if kind in ("add", "replace", "test") and "value" not in op:
            raise ValueError(f"JSON patch operation {kind!r} needs a value")
        if kind == "add":
            doc = _add(doc, parts, copy.deepcopy(op["value"]))
        elif kind == "remove":
            _remove(doc, parts)
        elif kind == "replace":
            _walk(doc, parts)  # must exist
            if parts:
                _remove(doc, parts)
            doc = _add(doc, parts, copy.deepcopy(op["value"]))
        elif kind in ("move", "copy"):
            src = _pointer(op.get("from", ""))
            value = _remove(doc, src) if kind == "move" else copy.deepcopy(_walk(doc, src))
            doc = _add(doc, parts, value)
        elif kind == "test":
            if _walk(doc, parts) != op["value"]:
                raise PatchError(f"test failed at {op['path']!r}")
        else:
            raise ValueError(f"unknown JSON patch operation {kind!r}")
    return doc


# ---- strategic merge patch -----------------------------------------------------------------------


def _merge_key(items: list[Any]) -> str | None:
    dicts = [i for i in items if isinstance(i, dict)]
    if not dicts or len(dicts) != len(items):
        return None
    for key in MERGE_KEYS:
        if all(key in d for d in dicts):
            return key
    return None


def _merge_list(original: list[Any], patch: list[Any], order: list[Any] | None) -> list[Any]:
    key = _merge_key(patch) or _merge_key(original)
    if key is None or not all(isinstance(i, dict) for i in patch):
        if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
            return [i for i in patch if not (isinstance(i, dict) and "$patch" in i)]
        return copy.deepcopy(patch)
    result = [copy.deepcopy(i) for i in original]
    for item in patch:
        directive = item.get("$patch")
        if directive == "replace":
            return [strategic_merge({}, i) for i in patch if i.get("$patch") != "replace"]
        idx = next(
            (n for n, cur in enumerate(result) if isinstance(cur, dict) and cur.get(key) == item.get(key)),
            None,
        )
        if directive == "delete":
            if idx is not None:
                result.pop(idx)
            continue
        clean = {k: v for k, v in item.items() if k != "$patch"}
        if idx is None:
            result.append(strategic_merge({}, clean))
        else:
            result[idx] = strategic_merge(result[idx], clean)
    if order:
        rank = {}
        for n, o in enumerate(order):
            if isinstance(o, dict) and key in o:
                rank[repr(o[key])] = n
        result.sort(key=lambda i: rank.get(repr(i.get(key)), len(rank)))
    return result


def strategic_merge(original: Any, patch: Any) -> Any:
    """Apply a strategic-merge patch: maps merge, ``null`` deletes, lists of objects merge on their
    merge key (``name``, ``containerPort``, ``port``...), other lists replace. Directives handled:
    ``$patch`` (replace/delete/merge), ``$retainKeys``, ``$setElementOrder/<f>``,
    ``$deleteFromPrimitiveList/<f>``."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(original, dict):
        original = {}
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return strategic_merge({}, {k: v for k, v in patch.items() if k != "$patch"})
    result = copy.deepcopy(original)
    orders = {k.split("/", 1)[1]: v for k, v in patch.items() if k.startswith("$setElementOrder/")}
    for k, v in patch.items():
        if k.startswith("$"):
            if k.startswith("$deleteFromPrimitiveList/"):
                field = k.split("/", 1)[1]
                if isinstance(result.get(field), list) and isinstance(v, list):
                    result[field] = [i for i in result[field] if i not in v]
            continue
        if v is None:
            result.pop(k, None)
        elif isinstance(v, dict):
            merged = strategic_merge(result.get(k), v)
            if merged is None:
                result.pop(k, None)
            else:
                result[k] = merged
        elif isinstance(v, list):
            cur = result.get(k)
            result[k] = _merge_list(cur if isinstance(cur, list) else [], v, orders.get(k))
        else:
            result[k] = copy.deepcopy(v)
    for field, order in orders.items():
        if field not in patch and isinstance(result.get(field), list) and isinstance(order, list):
            result[field] = _merge_list(result[field], [], order)
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


# ---- server-side apply (crude, as measured sufficient) --------------------------------------------


def server_side_apply(existing: dict[str, Any], applied: dict[str, Any]) -> dict[str, Any]:
    """Replace every field outside metadata/status with the applied one; labels and annotations are a
    union (applied wins); other metadata and ``status`` stay. Callers re-apply server defaults and
    keep allocated fields such as a Service's clusterIP."""
    result = {k: copy.deepcopy(v) for k, v in applied.items() if k not in ("metadata", "status")}
    meta = copy.deepcopy(existing.get("metadata") or {})
    ameta = applied.get("metadata") or {}
    for field in ("labels", "annotations"):
        if ameta.get(field):
            meta[field] = {**(meta.get(field) or {}), **ameta[field]}
    for field in ("ownerReferences", "finalizers"):
        if field in ameta:
            meta[field] = copy.deepcopy(ameta[field])
    result["metadata"] = meta
    if "status" in existing:
        result["status"] = copy.deepcopy(existing["status"])
    return result
