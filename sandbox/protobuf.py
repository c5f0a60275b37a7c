"""Decode the Kubernetes protobuf envelope (``k8s\\0`` + ``runtime.Unknown``) into JSON-shaped dicts.

Helm writes release Secrets (POST/PUT) and DeleteOptions as protobuf; kubectl 1.37's typed commands
(``create namespace``) too. Secret, ConfigMap, Namespace and DeleteOptions decode fully; any other
kind decodes its ObjectMeta only (the rest of its fields are dropped: a documented limit).
Every function raises ``ValueError`` on malformed input (the server answers 400).
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

MAGIC = b"k8s\x00"


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """Wire-level decode: ``(field_number, wire_type, value)``; value is int or bytes."""
    out: list[tuple[int, int, Any]] = []
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        num, wt = tag >> 3, tag & 7
        val: int | bytes
        if num == 0:
            raise ValueError("field number 0")
        if wt == 0:
            val, pos = _varint(buf, pos)
        elif wt == 1:
            if pos + 8 > len(buf):
                raise ValueError("truncated fixed64")
            val, pos = int.from_bytes(buf[pos : pos + 8], "little"), pos + 8
        elif wt == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError("truncated length-delimited field")
            val, pos = buf[pos : pos + n], pos + n
        elif wt == 5:
            if pos + 4 > len(buf):
                raise ValueError("truncated fixed32")
            val, pos = int.from_bytes(buf[pos : pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        out.append((num, wt, val))
    return out


def _str(v: Any) -> str:
    if not isinstance(v, bytes):
        raise ValueError("expected a length-delimited string")
    try:
        return v.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError("invalid UTF-8 in a string field") from e


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _map(entries: list[bytes], value_bytes: bool = False) -> dict[str, str]:
    out = {}
    for entry in entries:
        k, v = "", b""
        for num, _, val in fields(entry):
            if num == 1:
                k = _str(val)
            elif num == 2:
                v = val
        out[k] = base64.b64encode(v).decode() if value_bytes else _str(v)
    return out


def _group(buf: bytes) -> dict[int, list[Any]]:
    grouped: dict[int, list[Any]] = {}
    for num, _, val in fields(buf):
        grouped.setdefault(num, []).append(val)
    return grouped


def _time(buf: bytes) -> str:
    g = _group(buf)
    secs = _signed(g.get(1, [0])[-1])
    return dt.datetime.fromtimestamp(secs, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def object_meta(buf: bytes) -> dict[str, Any]:
    g = _group(buf)
    meta: dict[str, Any] = {}
    for num, key in ((1, "name"), (2, "generateName"), (3, "namespace"), (5, "uid"), (6, "resourceVersion")):
        if num in g:
            meta[key] = _str(g[num][-1])
    if 7 in g:
        meta["generation"] = _signed(g[7][-1])
    if 8 in g:
        meta["creationTimestamp"] = _time(g[8][-1])
    if 11 in g:
        meta["labels"] = _map(g[11])
    if 12 in g:
        meta["annotations"] = _map(g[12])
    if 13 in g:
        refs = []
        for raw in g[13]:
            r = _group(raw)
            ref: dict[str, Any] = {}
            for num, key in ((5, "apiVersion"), (1, "kind"), (3, "name"), (4, "uid")):
                if num in r:
                    ref[key] = _str(r[num][-1])
            for num, key in ((6, "controller"), (7, "blockOwnerDeletion")):
                if num in r:
                    ref[key] = bool(r[num][-1])
            refs.append(ref)
        meta["ownerReferences"] = refs
    if 14 in g:
        meta["finalizers"] = [_str(v) for v in g[14]]
    return meta


def _secret(g: dict[int, list[Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    if 2 in g:
        obj["data"] = _map(g[2], value_bytes=True)
    if 3 in g:
        obj["type"] = _str(g[3][-1])
    if 4 in g:
        obj["stringData"] = _map(g[4])
    if 5 in g:
        obj["immutable"] = bool(g[5][-1])
    return obj


def _configmap(g: dict[int, list[Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    if 2 in g:
        obj["data"] = _map(g[2])
    if 3 in g:
        obj["binaryData"] = _map(g[3], value_bytes=True)
    if 4 in g:
        obj["immutable"] = bool(g[4][-1])
    return obj


def _namespace(g: dict[int, list[Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    if 2 in g:
        spec = _group(g[2][-1])
        obj["spec"] = {"finalizers": [_str(v) for v in spec.get(1, [])]} if 1 in spec else {}
    return obj


def delete_options(buf: bytes) -> dict[str, Any]:
    g = _group(buf)
    opts: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
    if 1 in g:
        opts["gracePeriodSeconds"] = _signed(g[1][-1])
    if 2 in g:
        pre = _group(g[2][-1])
        opts["preconditions"] = {
            k: _str(pre[n][-1]) for n, k in ((1, "uid"), (2, "resourceVersion")) if n in pre
        }
    if 3 in g:
        opts["orphanDependents"] = bool(g[3][-1])
    if 4 in g:
        opts["propagationPolicy"] = _str(g[4][-1])
    if 5 in g:
        opts["dryRun"] = [_str(v) for v in g[5]]
    return opts


_KINDS = {"Secret": _secret, "ConfigMap": _configmap, "Namespace": _namespace}


def decode(body: bytes) -> dict[str, Any]:
    """A protobuf request body as the equivalent JSON object (with apiVersion and kind)."""
    if not body.startswith(MAGIC):
        raise ValueError("protobuf body lacks the k8s\\x00 magic prefix")
    unknown = _group(body[len(MAGIC) :])
    api_version = kind = ""
    if 1 in unknown:
        tm = _group(unknown[1][-1])
        api_version = _str(tm[1][-1]) if 1 in tm else ""
        kind = _str(tm[2][-1]) if 2 in tm else ""
    if not kind:
        raise ValueError("protobuf body without a kind")
    raw = unknown.get(2, [b""])[-1]
    if kind == "DeleteOptions":
        opts = delete_options(raw)
        opts["apiVersion"] = api_version or "v1"
        return opts
    g = _group(raw)
    obj: dict[str, Any] = {"apiVersion": api_version, "kind": kind}
    obj["metadata"] = object_meta(g[1][-1]) if 1 in g else {}
    decoder = _KINDS.get(kind)
    if decoder:
        obj.update(decoder(g))
    else:
        obj["_sandbox_protobuf"] = "metadata-only"  # lets validation explain a missing spec
    return obj


# ---- encoding (tests craft bodies with it; the server always answers JSON) ------------------------


def _enc_varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def enc_field(num: int, value: bytes | str | int | bool) -> bytes:
    if isinstance(value, (bool, int)):
        return _enc_varint(num << 3) + _enc_varint(int(value))
    data = value.encode() if isinstance(value, str) else value
    return _enc_varint(num << 3 | 2) + _enc_varint(len(data)) + data


def enc_map(num: int, mapping: dict[str, str | bytes]) -> bytes:
    return b"".join(enc_field(num, enc_field(1, k) + enc_field(2, v)) for k, v in mapping.items())


def encode_unknown(api_version: str, kind: str, raw: bytes) -> bytes:
    type_meta = enc_field(1, api_version) + enc_field(2, kind)
    return (
        MAGIC
        + enc_field(1, type_meta)
        + enc_field(2, raw)
        + enc_field(4, "application/vnd.kubernetes.protobuf")
    )
