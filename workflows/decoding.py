"""Strict decoding of workflow input: the project, not the SDK, turns a caller's JSON into dataclasses.

Why: when the SDK decodes a workflow argument into a dataclass and that fails (``"cluster_uuid": 5``
is fine for it, but ``params`` as a list, a missing required field or a string where a nested object
belongs raise), the failure happens before workflow code runs, so the workflow *task* fails and is
retried for ever while the workflow stays RUNNING. Where decoding succeeds it is lenient in the
wrong places: ``scale: false`` becomes 0, ``2.9`` becomes 2, ``timeout: true`` becomes 1, and a
misspelt field (``kdu_instanse``) is dropped, so an install goes ahead under a generated name.

So every workflow's ``run`` takes the raw decoded JSON value and calls :func:`decode_input`, which
fails the workflow at once with a non-retryable ``InvalidInput`` naming the field for: a value that is
not an object, unknown fields (with the closest known name suggested), missing required fields,
``null`` where no ``None`` is allowed, and every type mismatch. Booleans are not numbers and floats
are not integers. Python callers passing the dataclasses keep working: the client serialises them to
the same JSON objects.

Pure and deterministic (standard library only): safe inside the workflow sandbox.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from contract.validation import InvalidInputError

T = TypeVar("T")

#: No kduflow input has more fields than this; a larger object is refused before looking at it.
MAX_FIELDS = 64


def decode_input(cls: type[T], raw: Any, extra: tuple[Any, ...] = ()) -> T:
    """``raw`` (the workflow's JSON argument) as a ``cls`` instance, checked field by field.

    ``extra`` holds any further positional arguments the caller sent; a kduflow workflow takes
    exactly one.

    Raises:
        InvalidInputError: non-retryable ``InvalidInput`` naming the offending field.
    """
    if extra:
        raise InvalidInputError("input", f"takes one JSON object, got {1 + len(extra)} arguments")
    if raw is None:
        raise InvalidInputError("input", "missing: the workflow takes one JSON object")
    return typing.cast(T, _decode_dataclass(cls, raw, ""))


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _hints(cls: type) -> dict[str, Any]:
    # Resolved once per class: the modules use ``from __future__ import annotations``.
    cached = _HINTS.get(cls)
    if cached is None:
        cached = _HINTS[cls] = typing.get_type_hints(cls)
    return cached


_HINTS: dict[type, dict[str, Any]] = {}


def _decode_dataclass(cls: type, raw: Any, prefix: str) -> Any:
    if isinstance(raw, cls):
        # A Python caller handing the dataclass itself (direct calls, tests): check it the same way.
        raw = _plain(raw)
    where = prefix or "input"
    if not isinstance(raw, Mapping):
        raise InvalidInputError(where, f"must be a JSON object, got {_type_name(raw)}")
    if len(raw) > MAX_FIELDS:
        raise InvalidInputError(where, f"has {len(raw)} fields; at most {MAX_FIELDS}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if not isinstance(key, str) or key not in fields:
            shown = key if isinstance(key, str) and len(key) <= 64 else "<field>"
            close = difflib.get_close_matches(shown, list(fields), n=1) if isinstance(key, str) else []
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InvalidInputError(_join(prefix, shown), f"unknown field{hint}")
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for name, spec in fields.items():
        path = _join(prefix, name)
        if name not in raw:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise InvalidInputError(path, "is required")
            continue
        values[name] = _decode_value(hints[name], raw[name], path)
    return cls(**values)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def _decode_value(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None:
            if type(None) in options:
                return None
            raise InvalidInputError(path, "must not be null")
        concrete = [o for o in options if o is not type(None)]
        if len(concrete) != 1:  # not used by kduflow's contract; refuse rather than guess
            raise TypeError(f"unsupported union type for {path}: {hint!r}")
        return _decode_value(concrete[0], value, path)
    if value is None:
        raise InvalidInputError(path, f"must be {_expected(hint)}, got null")
    if hint is bool:
        if not isinstance(value, bool):
            raise InvalidInputError(path, f"must be a boolean, got {_type_name(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInputError(path, f"must be an integer, got {_type_name(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInputError(path, f"must be a number, got {_type_name(value)}")
        if not math.isfinite(value):
            raise InvalidInputError(path, "must be a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise InvalidInputError(path, f"must be a string, got {_type_name(value)}")
        return value
    if origin is dict:
        key_hint, value_hint = typing.get_args(hint)
        if not isinstance(value, Mapping):
            raise InvalidInputError(path, f"must be a JSON object, got {_type_name(value)}")
        if key_hint is not str:
            raise TypeError(f"unsupported mapping key type for {path}: {key_hint!r}")
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInputError(path, "keys must be strings")
            out[key] = item if value_hint is Any else _decode_value(value_hint, item, f"{path}.{key}"[:200])
        return out
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            raise InvalidInputError(path, f"must be an array, got {_type_name(value)}")
        return [_decode_value(item_hint, item, f"{path}[{i}]") for i, item in enumerate(value)]
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _decode_dataclass(hint, value, path)
    raise TypeError(f"unsupported field type for {path}: {hint!r}")


def _expected(hint: Any) -> str:
    if hint is bool:
        return "a boolean"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if typing.get_origin(hint) is dict or dataclasses.is_dataclass(hint):
        return "a JSON object"
    if typing.get_origin(hint) is list:
        return "an array"
    return "a value"
