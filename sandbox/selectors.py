"""Label and field selectors, parsed as the API server does (the subset charts and helm use).

``parse_label_selector`` raises ``ValueError`` on malformed input (the server answers 400).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

_KEY = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_SET_TERM = re.compile(r"^(?P<key>[^\s!=(),]+)\s+(?P<op>in|notin)\s*\((?P<vals>[^()]*)\)$")

Requirement = Callable[[Mapping[str, str]], bool]


def _in(key: str, values: frozenset[str]) -> Requirement:
    return lambda labels: labels.get(key) in values


def _not_in(key: str, values: frozenset[str]) -> Requirement:
    return lambda labels: labels.get(key) not in values


def _eq(key: str, value: str) -> Requirement:
    return lambda labels: labels.get(key) == value


def _ne(key: str, value: str) -> Requirement:
    return lambda labels: labels.get(key) != value


def _exists(key: str) -> Requirement:
    return lambda labels: key in labels


def _absent(key: str) -> Requirement:
    return lambda labels: key not in labels


def _split_terms(selector: str) -> list[str]:
    """Split on commas outside parentheses."""
    terms: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced parenthesis in selector {selector!r}")
        if ch == "," and depth == 0:
            terms.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise ValueError(f"unbalanced parenthesis in selector {selector!r}")
    terms.append("".join(cur).strip())
    return terms


def _check_key(key: str) -> str:
    if not _KEY.match(key):
        raise ValueError(f"invalid label key {key!r}")
    return key


def _check_value(value: str) -> str:
    if len(value) > 63 or not _VALUE.match(value):
        raise ValueError(f"invalid label value {value!r}")
    return value


def parse_label_selector(selector: str) -> list[Requirement]:
    """Requirements (ANDed) for ``=``, ``==``, ``!=``, ``in``, ``notin``, ``key`` and ``!key``."""
    if not selector.strip():
        return []
    reqs: list[Requirement] = []
    for term in _split_terms(selector):
        if not term:
            raise ValueError(f"empty term in selector {selector!r}")
        m = _SET_TERM.match(term)
        if m:
            key = _check_key(m["key"])
            vals = (
                frozenset(_check_value(v.strip()) for v in m["vals"].split(","))
                if m["vals"].strip()
                else frozenset()
            )
            if m["op"] == "in":
                reqs.append(_in(key, vals))
            else:
                reqs.append(_not_in(key, vals))
            continue
        for op in ("!=", "==", "="):
            if op in term:
                key, _, value = term.partition(op)
                key, value = _check_key(key.strip()), _check_value(value.strip())
                if op == "!=":
                    reqs.append(_ne(key, value))
                else:
                    reqs.append(_eq(key, value))
                break
        else:
            if term.startswith("!"):
                key = _check_key(term[1:].strip())
                reqs.append(_absent(key))
            else:
                key = _check_key(term)
                reqs.append(_exists(key))
    return reqs


def labels_match(reqs: list[Requirement], labels: Mapping[str, str] | None) -> bool:
    labels = labels or {}
    return all(r(labels) for r in reqs)


def match_labels_selector(selector: Mapping[str, Any] | None) -> list[Requirement]:
    """Requirements of a ``LabelSelector`` object (matchLabels + matchExpressions)."""
    selector = selector or {}
    reqs: list[Requirement] = []
    for k, v in (selector.get("matchLabels") or {}).items():
        reqs.append(_eq(str(k), str(v)))
    for expr in selector.get("matchExpressions") or []:
        key, op = str(expr.get("key") or ""), expr.get("operator")
        vals = frozenset(str(v) for v in expr.get("values") or [])
        if op == "In":
            reqs.append(_in(key, vals))
        elif op == "NotIn":
            reqs.append(_not_in(key, vals))
        elif op == "Exists":
            reqs.append(_exists(key))
        elif op == "DoesNotExist":
            reqs.append(_absent(key))
    return reqs


def _field(obj: Mapping[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def parse_field_selector(selector: str) -> Callable[[Mapping[str, Any]], bool]:
    """A predicate for ``field=value``, ``field==value`` and ``field!=value`` terms on dotted paths
    (``metadata.name``, ``metadata.namespace``, ``status.phase``, ``spec.nodeName``...)."""
    terms: list[tuple[str, bool, str]] = []
    for term in _split_terms(selector) if selector.strip() else []:
        for op in ("!=", "==", "="):
            if op in term:
                path, _, value = term.partition(op)
                path = path.strip()
                if not re.match(r"^[A-Za-z][A-Za-z0-9]*(\.[A-Za-z][A-Za-z0-9]*)*$", path):
                    raise ValueError(f"invalid field selector term {term!r}")
                terms.append((path, op != "!=", value.strip()))
                break
        else:
            raise ValueError(f"invalid field selector term {term!r}: expected field=value")
    return lambda obj: all((_field(obj, p) == v) == eq for p, eq, v in terms)
