"""Secret-leak search: find known secret strings, in clear or base64-encoded, wherever a run left text.

A :class:`Secret` is a label and a distinctive value. Its *needles* are the value itself plus the
base64 (standard and URL-safe) characters that encode it at each of the three possible byte
alignments, so a value embedded anywhere inside a larger base64 blob (a Temporal payload in a JSON
history, a basic-auth header, a kubeconfig field) is found too.

Places searched, each producing :class:`Hit` records with a short excerpt in which every secret is
replaced by its label:

* :func:`scan_history`: a Temporal ``WorkflowHistory`` as the server stores it (no codec), event by
  event (event id, event type, JSON path; base64 fields are also searched decoded), plus a whole-text
  check of ``to_json()`` and of the serialised protobuf so nothing escapes the per-event walk;
* :class:`LogCapture`: a root-logger handler at DEBUG (formatted message, exception text, stack and
  extra record attributes);
* :class:`ProcessAudit`: every process this interpreter starts (``subprocess.Popen``, ``os.exec*``,
  ``os.posix_spawn``, ``os.spawn*`` audit events), argv and environment, recorded only while armed;
* :func:`scan_tree` / :func:`dump_store`: documents of every collection of a store;
* :func:`scan_files`: raw bytes of the files under a directory.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

EXCERPT_CHARS = 40
_B64_CHARS = re.compile(rb"^[A-Za-z0-9+/_-]+={0,2}$")


@dataclass(frozen=True)
class Secret:
    """A secret to look for: ``label`` names it in reports, ``value`` is what must never appear."""

    label: str
    value: str

    def needles(self) -> list[tuple[str, bytes]]:
        """``(form, bytes)`` pairs: the clear value and its base64 encodings at every alignment."""
        raw = self.value.encode()
        out: list[tuple[str, bytes]] = [("clear", raw)]
        seen = {raw}
        for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            for shift in range(3):
                encoded = encode(b"\0" * shift + raw)
                # Only the characters whose 6 bits all come from the secret's bytes.
                start = (8 * shift + 5) // 6
                end = (8 * (shift + len(raw))) // 6
                needle = encoded[start:end]
                if needle not in seen:
                    seen.add(needle)
                    out.append((f"{name}@{shift}", needle))
        return out


@dataclass(frozen=True)
class Hit:
    """One occurrence of a secret."""

    place: str
    secret: str  # the secret's label
    form: str  # "clear", "base64@1", ..., or "clear in base64 field <path>"
    where: str
    excerpt: str

    def __str__(self) -> str:
        return f"[{self.place}] {self.secret} ({self.form}) at {self.where}: {self.excerpt}"


def mask(text: str, secrets: Iterable[Secret]) -> str:
    """``text`` with every secret (clear or any base64 needle) replaced by ``<label>``."""
    for secret in secrets:
        for form, needle in secret.needles():
            tag = f"<{secret.label}>" if form == "clear" else f"<{secret.label}:{form}>"
            text = text.replace(needle.decode(), tag)
    return text


def _excerpt(data: bytes, offset: int, length: int, secrets: Iterable[Secret]) -> str:
    lo, hi = max(0, offset - EXCERPT_CHARS), offset + length + EXCERPT_CHARS
    text = data[lo:hi].decode("utf-8", "replace")
    text = mask(text, secrets)
    return ("..." if lo else "") + text.replace("\n", "\\n") + ("..." if hi < len(data) else "")


def scan_bytes(
    secrets: Iterable[Secret], data: bytes | str, place: str, where: str, form_prefix: str = ""
) -> list[Hit]:
    """Every secret needle found in ``data`` (one hit per secret and form, first occurrence)."""
    secrets = list(secrets)
    blob = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else bytes(data)
    hits = []
    for secret in secrets:
        for form, needle in secret.needles():
            offset = blob.find(needle)
            if offset >= 0:
                shown = f"{form_prefix}{form}" if form_prefix else form
                excerpt = _excerpt(blob, offset, len(needle), secrets)
                hits.append(Hit(place, secret.label, shown, where, excerpt))
    return hits


def _maybe_base64(text: str) -> bytes | None:
    raw = text.encode()
    if len(raw) < 8 or not _B64_CHARS.match(raw):
        return None
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            return decode(raw + b"=" * (-len(raw) % 4))
        except (binascii.Error, ValueError):
            continue
    return None


def scan_tree(secrets: Iterable[Secret], obj: Any, place: str, where: str, path: str = "") -> list[Hit]:
    """Walk dicts/lists; search every key and leaf (strings also decoded when they look like base64)."""
    secrets = list(secrets)
    hits: list[Hit] = []
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            hits += scan_bytes(secrets, str(key), place, f"{where} {path}.<key>")
            hits += scan_tree(secrets, value, place, where, f"{path}.{key}")
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            hits += scan_tree(secrets, value, place, where, f"{path}[{index}]")
    elif isinstance(obj, (bytes, bytearray)):
        hits += scan_bytes(secrets, bytes(obj), place, f"{where} {path or '.'}")
    elif obj is not None:
        text = obj if isinstance(obj, str) else repr(obj)
        found = scan_bytes(secrets, text, place, f"{where} {path or '.'}")
        decoded = _maybe_base64(text) if isinstance(obj, str) else None
        if decoded is not None:
            # A base64 field (protobuf bytes in JSON): report what it holds once, decoded, rather
            # than the same occurrence again as a base64 needle of the encoded text.
            inner = scan_bytes(secrets, decoded, place, f"{where} {path or '.'} (base64 field)", "decoded ")
            seen = {h.secret for h in inner}
            found = [h for h in found if h.form == "clear" or h.secret not in seen] + inner
        hits += found
    return hits


# -- Temporal histories ----------------------------------------------------------------------------


def scan_history(secrets: Iterable[Secret], workflow: str, history: Any, place: str = "history") -> list[Hit]:
    """Search one ``temporalio.client.WorkflowHistory`` (fetched without a codec) event by event.

    ``where`` reads ``<workflow> #<event id> <EVENT_TYPE> <json path>``. A secret the per-event walk
    missed but the whole JSON text or serialised protobuf contains is reported as ``unlocated``.
    """
    secrets = list(secrets)
    hits: list[Hit] = []
    for event in history.events:
        as_dict = MessageToDict(event, preserving_proto_field_name=True)
        event_type = str(as_dict.get("event_type", "?"))
        hits += scan_tree(secrets, as_dict, place, f"{workflow} #{event.event_id} {event_type}")
    located = {h.secret for h in hits}
    whole = [
        *scan_bytes(secrets, history.to_json(), place, f"{workflow} to_json()"),
        *scan_bytes(
            secrets, b"".join(e.SerializeToString() for e in history.events), place, f"{workflow} protobuf"
        ),
    ]
    for hit in whole:
        if hit.secret not in located:
            hits.append(Hit(hit.place, hit.secret, hit.form, f"unlocated: {hit.where}", hit.excerpt))
    return hits


def scan_message(secrets: Iterable[Secret], message: Any, place: str, where: str) -> list[Hit]:
    """Search any protobuf message (e.g. a raw DescribeScheduleResponse) as a tree and as bytes."""
    secrets = list(secrets)
    hits = scan_tree(secrets, MessageToDict(message, preserving_proto_field_name=True), place, where)
    if not hits:
        hits = scan_bytes(secrets, message.SerializeToString(), place, f"{where} protobuf")
    return hits


# -- logs ------------------------------------------------------------------------------------------

_STANDARD_RECORD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class LogCapture(logging.Handler):
    """Keeps every record reaching the root logger. Use :meth:`attached` to install it at DEBUG."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._formatter = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @contextmanager
    def attached(self) -> Iterator[LogCapture]:
        root = logging.getLogger()
        level = root.level
        root.addHandler(self)
        root.setLevel(logging.DEBUG)
        try:
            yield self
        finally:
            root.removeHandler(self)
            root.setLevel(level)

    def text(self, record: logging.LogRecord) -> str:
        """What a thorough handler would write: message, exception, stack and extra attributes."""
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string still has msg and args to leak
            message = f"{record.msg!r} % {record.args!r}"
        parts = [message]
        if record.exc_info:
            parts.append(self._formatter.formatException(record.exc_info))
        elif record.exc_text:
            parts.append(record.exc_text)
        if record.stack_info:
            parts.append(record.stack_info)
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD_RECORD_ATTRS}
        if extras:
            parts.append(repr(extras))
        return "\n".join(parts)

    def scan(self, secrets: Iterable[Secret], place: str = "logs") -> list[Hit]:
        secrets = list(secrets)
        hits = []
        for record in list(self.records):
            where = f"{record.name} {record.levelname} {record.pathname.rsplit('/', 1)[-1]}:{record.lineno}"
            hits += scan_bytes(secrets, self.text(record), place, where)
        return hits


# -- processes -------------------------------------------------------------------------------------


@dataclass
class SpawnRecord:
    event: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


class ProcessAudit:
    """Records the argv and environment of every process started while :meth:`armed`.

    Audit hooks cannot be removed, so one hook is installed for the whole interpreter the first time
    and does nothing unless an audit is armed.
    """

    _EVENTS = {"subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn"}
    _active: ProcessAudit | None = None
    _installed = False
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.spawned: list[SpawnRecord] = []

    @classmethod
    def _hook(cls, event: str, args: tuple[Any, ...]) -> None:
        active = cls._active
        if active is None or event not in cls._EVENTS:
            return
        try:
            active.spawned.append(_spawn_record(event, args))
        except Exception as err:  # noqa: BLE001 - an audit hook must never break the caller
            active.spawned.append(SpawnRecord(event, [f"<unreadable audit args: {err!r}>", repr(args)]))

    @contextmanager
    def armed(self) -> Iterator[ProcessAudit]:
        with ProcessAudit._lock:
            if not ProcessAudit._installed:
                sys.addaudithook(ProcessAudit._hook)
                ProcessAudit._installed = True
            if ProcessAudit._active is not None:
                raise RuntimeError("another ProcessAudit is armed")
            ProcessAudit._active = self
        try:
            yield self
        finally:
            ProcessAudit._active = None

    def scan(self, secrets: Iterable[Secret], place: str = "process argv") -> list[Hit]:
        secrets = list(secrets)
        hits = []
        for index, record in enumerate(self.spawned):
            program = record.argv[0].rsplit("/", 1)[-1] if record.argv else "?"
            hits += scan_bytes(
                secrets, json.dumps(record.argv), place, f"#{index} {record.event} {program}"
            )
        return hits

    def scan_env(self, secrets: Iterable[Secret], place: str = "process env") -> list[Hit]:
        secrets = list(secrets)
        hits = []
        for index, record in enumerate(self.spawned):
            program = record.argv[0].rsplit("/", 1)[-1] if record.argv else "?"
            for key, value in record.env.items():
                hits += scan_bytes(secrets, f"{key}={value}", place, f"#{index} {program} env {key}")
        return hits


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _env(value: Any) -> dict[str, str]:
    if isinstance(value, Mapping):
        return {_text(k): _text(v) for k, v in value.items()}
    return {}


def _spawn_record(event: str, args: tuple[Any, ...]) -> SpawnRecord:
    if event == "subprocess.Popen":  # (executable, args, cwd, env)
        executable, argv, _cwd, env = args
        if isinstance(argv, (str, bytes)):
            argv = [argv]
        words = [_text(a) for a in (argv or [])]
        if executable is not None and (not words or _text(executable) != words[0]):
            words.insert(0, _text(executable))
        return SpawnRecord(event, words, _env(env))
    if event in ("os.exec", "os.posix_spawn"):  # (path, args, env)
        path, argv, env = args
        return SpawnRecord(event, [_text(path), *[_text(a) for a in argv or []]], _env(env))
    # os.spawn: (mode, path, args, env)
    _mode, path, argv, env = args
    return SpawnRecord(event, [_text(path), *[_text(a) for a in argv or []]], _env(env))


# -- store and files -------------------------------------------------------------------------------


async def dump_store(store: Any, db_name: str) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``{database: {collection: [documents]}}`` for every database and collection of a
    ``activities.store.Store`` (run on the store's own thread)."""

    def dump() -> dict[str, dict[str, list[dict[str, Any]]]]:
        client = store.client
        try:
            names = list(client.list_database_names())
        except Exception:  # noqa: BLE001 - a driver without it: the configured database only
            names = []
        if db_name not in names:
            names.append(db_name)
        out: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for name in names:
            db = client[name]
            out[name] = {coll: list(db[coll].find({})) for coll in db.list_collection_names()}
        return out

    return await store.run(dump)


def scan_store_dump(
    secrets: Iterable[Secret], dump: Mapping[str, Mapping[str, list[Any]]], place: str = "store"
) -> list[Hit]:
    secrets = list(secrets)
    hits = []
    for db_name, collections in dump.items():
        for coll, docs in collections.items():
            for doc in docs:
                doc_id = doc.get("_id") if isinstance(doc, Mapping) else "?"
                hits += scan_tree(secrets, doc, place, f"{db_name}.{coll} {{_id: {doc_id}}}")
    return hits


def scan_files(
    secrets: Iterable[Secret], root: Path, place: str, skip: Iterable[Path] = ()
) -> tuple[int, list[Hit]]:
    """Search the raw bytes of every regular file under ``root``; returns (files searched, hits)."""
    secrets = list(secrets)
    skipped = [Path(p).resolve() for p in skip]
    count, hits = 0, []
    for path in sorted(Path(root).rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        resolved = path.resolve()
        if any(resolved == s or s in resolved.parents for s in skipped):
            continue
        count += 1
        hits += scan_bytes(secrets, path.read_bytes(), place, str(path.relative_to(root)))
    return count, hits


# -- report ----------------------------------------------------------------------------------------


@dataclass
class Report:
    """Hits per place plus how much each place held, for a readable summary."""

    secrets: list[Secret]
    searched: dict[str, str] = field(default_factory=dict)
    hits: dict[str, list[Hit]] = field(default_factory=dict)

    def add(self, place: str, searched: str, hits: list[Hit]) -> None:
        self.searched[place] = searched
        self.hits.setdefault(place, []).extend(hits)

    def found(self, place: str | None = None, secret: str | None = None) -> list[Hit]:
        return [
            h
            for p, hits in self.hits.items()
            if place is None or p == place
            for h in hits
            if secret is None or h.secret == secret
        ]

    def summary(self, title: str = "") -> str:
        lines = [f"== secret search {title}".rstrip()]
        labels = [s.label for s in self.secrets]
        for place, searched in self.searched.items():
            hits = self.hits.get(place, [])
            per = ", ".join(f"{label}={sum(h.secret == label for h in hits)}" for label in labels)
            lines.append(f"{place:<28} {searched:<40} clear-text hits: {len(hits)} ({per})")
        for hits in self.hits.values():
            for hit in hits:
                lines.append(f"  {hit}")
        return "\n".join(lines)
