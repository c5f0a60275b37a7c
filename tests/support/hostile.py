"""Harness of the hostile-input suite (``tests/test_hostile_inputs.py``).

Whoever can start a workflow on the task queue is a *caller*, not the operator. The suite sends
callers' inputs to a real worker and checks, for every case, that nothing ran, nothing was read or
written outside the worker's state directory, nothing was contacted, no store document changed and
the workflow closed quickly with the expected refusal. The pieces:

* :class:`AuditRecorder`: one ``sys.addaudithook`` hook per process (hooks cannot be removed). It does
  nothing until :meth:`AuditRecorder.arm` and records, while armed, process spawns
  (``subprocess.Popen`` - ``asyncio.create_subprocess_exec`` goes through it - and the ``os.*`` spawn
  events), file opens and other file-system calls outside the allowed roots, socket connects and
  host name resolutions. To keep all traffic on this machine it also *blocks*, while armed, connects
  to non-loopback addresses, resolutions of names other than ``localhost`` and spawns whose argv
  names one of the off-box hosts the cases use; the attempt is recorded either way. Reads by C code
  (OpenSSL loading a certificate file) raise no audit event: :class:`Canary` catches those through
  the file's access time.
* :class:`RecordingListener`: a TCP listener on 127.0.0.1 (and ::1 on the same port when possible)
  that counts and records every connection and answers with an HTTP 403, so a client that reached
  it fails fast instead of waiting.
* :func:`snapshot_store` / :func:`store_diff` / :func:`restore_store`: every collection of the
  worker's store, before and after a case; a changed store is restored so later cases start equal.
* :class:`CaseRunner`: starts one workflow (Python client, or the ``temporal`` CLI), waits at most
  ``timeout`` seconds, and reports a workflow whose *task* failed (the SDK retries such a task for
  ever while the workflow stays RUNNING) as hung at once, from its history. A workflow still open at
  the deadline is described (status, pending activities and their last failure) and terminated.
  It also checks that no known secret (the canary's, the legitimate cluster's token) appears in the
  error message or the workflow history, and measures, for information, the longest stall of the
  event loop the in-process worker runs on (a synchronous CPU burn in an activity shows there).
* Probe workflows (``HostileProbe*``): registered on the same worker by the suite, they let the
  control tests prove the runner detects a hang, a timeout and a proper refusal.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import ipaddress
import json
import os
import secrets
import site
import socket
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError, FailureError
from temporalio.service import RPCError

ROOT = Path(__file__).resolve().parents[2]

#: A refusal must close the workflow within this many seconds.
CASE_TIMEOUT = 10.0
#: How often the runner looks at the history of a workflow that has not closed yet.
POLL_INTERVAL = 0.25
#: An error message longer than this echoes the hostile input back into history and logs.
MAX_MESSAGE_CHARS = 4096

#: Hosts the cases name that are not on this machine. A spawn whose argv names one is blocked
#: (and recorded): a hole must not turn into traffic leaving 127.0.0.1.
OFFBOX_HOSTS = (
    "169.254.169.254",
    "10.0.0.1",
    "192.168.1.1",
    "172.16.0.1",
    "example.invalid",
)

# --------------------------------------------------------------------------------------------
# Audit hook
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One thing the worker did while a case was armed."""

    kind: str  # spawn | read | write | connect | resolve
    detail: str
    blocked: bool = False

    def __str__(self) -> str:
        return f"{self.kind}{' (blocked)' if self.blocked else ''}: {self.detail}"


@dataclass(frozen=True)
class Policy:
    """What is allowed while a case is armed."""

    #: Reads and writes below it are the worker's own business.
    state_dir: str
    #: Reads below these are allowed (interpreter, site-packages, the repository's source tree).
    read_roots: tuple[str, ...]
    #: ``(host, port)`` the worker may connect to (the Temporal server).
    allowed_connect: frozenset[tuple[str, int]] = frozenset()
    #: argv[0] of spawns the harness makes itself (the ``temporal`` CLI of the CLI cases).
    own_executables: frozenset[str] = frozenset()
    offbox: tuple[str, ...] = OFFBOX_HOSTS


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_SPAWN_EVENTS = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "pty.spawn"}
# event -> (index of the path argument, index of dir_fd or None, is a write)
_PATH_EVENTS: dict[str, tuple[int, int | None, bool]] = {
    "os.mkdir": (0, 2, True),
    "os.rmdir": (0, 1, True),
    "os.remove": (0, 1, True),
    "os.chmod": (0, 2, True),
    "os.chown": (0, 3, True),
    "os.truncate": (0, None, True),
    "os.utime": (0, 4, True),
    "os.listdir": (0, None, False),
    "os.scandir": (0, None, False),
    "shutil.rmtree": (0, 1, True),
    "tempfile.mkstemp": (0, None, True),
    "tempfile.mkdtemp": (0, None, True),
}
# event -> indexes of (source, destination); both are checked, the destination as a write
_TWO_PATH_EVENTS = {"os.rename": (0, 1), "os.symlink": (0, 1), "os.link": (0, 1),
                    "shutil.copyfile": (0, 1), "shutil.move": (0, 1)}  # fmt: skip


def _under(path: str, roots: Iterable[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _is_loopback_literal(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return True
    except ValueError:
        return False


class AuditRecorder:
    """The process-wide audit hook. Get it with :meth:`install` (idempotent)."""

    _instance: AuditRecorder | None = None
    _install_lock = threading.Lock()

    def __init__(self) -> None:
        self._armed = False
        self._policy: Policy | None = None
        self._events: list[Event] = []
        self._lock = threading.Lock()
        self._tls = threading.local()
        self.hook_errors: list[str] = []

    @classmethod
    def install(cls) -> AuditRecorder:
        with cls._install_lock:
            if cls._instance is None:
                cls._instance = cls()
                sys.addaudithook(cls._instance._hook)
            return cls._instance

    def arm(self, policy: Policy) -> None:
        with self._lock:
            self._events = []
            self._policy = policy
            self._armed = True

    def disarm(self) -> list[Event]:
        with self._lock:
            self._armed = False
            events, self._events = self._events, []
            return events

    # -- the hook ---------------------------------------------------------------------------

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self._armed:
            return
        if (
            event not in _PATH_EVENTS
            and event not in _TWO_PATH_EVENTS
            and event not in _SPAWN_EVENTS
            and event not in ("open", "subprocess.Popen", "socket.connect", "socket.getaddrinfo",
                              "sqlite3.connect")
        ):
            return
        if getattr(self._tls, "busy", False):
            return
        self._tls.busy = True
        block: BaseException | None = None
        try:
            policy = self._policy
            if policy is not None:
                block = self._handle(policy, event, args)
        except Exception as err:  # the hook must never break the code it observes
            self.hook_errors.append(f"{event}: {type(err).__name__}: {err}")
        finally:
            self._tls.busy = False
        if block is not None:
            raise block

    def _record(self, kind: str, detail: str, blocked: bool = False) -> None:
        with self._lock:
            if self._armed:
                self._events.append(Event(kind, detail[:400], blocked))

    def _handle(self, policy: Policy, event: str, args: tuple[Any, ...]) -> BaseException | None:
        if event == "subprocess.Popen":
            executable, argv = args[0], args[1]
            parts = [os.fsdecode(a) for a in argv] if isinstance(argv, list | tuple) else [os.fsdecode(argv)]
            first = os.fsdecode(executable) if executable else (parts[0] if parts else "")
            if first in policy.own_executables or (parts and parts[0] in policy.own_executables):
                return None
            text = " ".join(parts)
            blocked = any(host in text for host in policy.offbox)
            self._record("spawn", text, blocked)
            return PermissionError("spawn blocked by the hostile-input harness") if blocked else None
        if event in _SPAWN_EVENTS:
            self._record("spawn", f"{event} {' '.join(str(a)[:120] for a in args)}")
            return None
        if event == "open":
            path, mode, flags = (list(args) + [None, None, None])[:3]
            if isinstance(path, int) or path is None:
                return None
            write = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and bool(flags & _WRITE_FLAGS)
            )
            self._check_path(policy, os.fsdecode(path), None, write, "open")
            return None
        if event in _PATH_EVENTS:
            index, fd_index, write = _PATH_EVENTS[event]
            path = args[index] if len(args) > index else None
            dir_fd = args[fd_index] if fd_index is not None and len(args) > fd_index else None
            if path is None or isinstance(path, int):
                return None
            self._check_path(policy, os.fsdecode(path), dir_fd, write, event)
            return None
        if event in _TWO_PATH_EVENTS:
            src_i, dst_i = _TWO_PATH_EVENTS[event]
            for i, write in ((src_i, event in ("os.rename", "shutil.move")), (dst_i, True)):
                path = args[i] if len(args) > i else None
                if path is not None and not isinstance(path, int):
                    self._check_path(policy, os.fsdecode(path), None, write, event)
            return None
        if event == "sqlite3.connect":
            database = args[0] if args else None
            if isinstance(database, str | bytes | os.PathLike) and os.fsdecode(database) != ":memory:":
                self._check_path(policy, os.fsdecode(database), None, True, event)
            return None
        if event == "socket.connect":
            address = args[1] if len(args) > 1 else None
            if isinstance(address, tuple) and len(address) >= 2:
                host, port = str(address[0]), address[1]
                if (host, port) in policy.allowed_connect:
                    return None
                blocked = not _is_loopback_literal(host)
                self._record("connect", f"{host}:{port}", blocked)
                if blocked:
                    return ConnectionRefusedError("connect blocked by the hostile-input harness")
                return None
            self._record("connect", repr(address))
            return None
        if event == "socket.getaddrinfo":
            raw_host = args[0] if args else None
            if raw_host is None:
                return None
            name = os.fsdecode(raw_host) if isinstance(raw_host, bytes | str) else str(raw_host)
            if _is_ip_literal(name) or any(name == h for h, _ in policy.allowed_connect):
                return None
            blocked = name.lower() != "localhost"
            self._record("resolve", name, blocked)
            if blocked:
                return socket.gaierror(socket.EAI_NONAME, "resolution blocked by the hostile-input harness")
            return None
        return None

    def _check_path(self, policy: Policy, path: str, dir_fd: Any, write: bool, what: str) -> None:
        if not os.path.isabs(path) and isinstance(dir_fd, int):
            try:
                path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
            except OSError:
                pass
        full = os.path.abspath(path)
        if full == "/dev/null" or _under(full, (policy.state_dir,)):
            return
        if write:
            # The import system caches bytecode beside the sources it reads.
            bytecode = "/__pycache__/" in full and ".pyc" in os.path.basename(full)
            if bytecode and _under(full, policy.read_roots):
                return
            self._record("write", f"{what} {full}")
            return
        if _under(full, policy.read_roots):
            return
        self._record("read", f"{what} {full}")


def default_read_roots() -> tuple[str, ...]:
    """Interpreter, site-packages and the repository's source tree (realpaths and as spelled)."""
    roots: set[str] = set()
    candidates = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, str(ROOT)]
    candidates += list(site.getsitepackages())
    user_site = site.getusersitepackages()
    if isinstance(user_site, str):
        candidates.append(user_site)
    for candidate in candidates:
        if candidate:
            roots.add(os.path.abspath(candidate))
            roots.add(os.path.realpath(candidate))
    return tuple(sorted(roots))


# --------------------------------------------------------------------------------------------
# Recording listener and canary
# --------------------------------------------------------------------------------------------


class RecordingListener:
    """Counts and records every TCP connection on 127.0.0.1:port (and [::1]:port when possible)."""

    def __init__(self) -> None:
        self.connections: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._stop = threading.Event()
        v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        v4.bind(("127.0.0.1", 0))
        v4.listen(64)
        self.port: int = v4.getsockname()[1]
        self._socks.append(v4)
        try:
            v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            v6.bind(("::1", self.port))
            v6.listen(64)
            self._socks.append(v6)
        except OSError:
            pass
        self._threads = [threading.Thread(target=self._serve, args=(s,), daemon=True) for s in self._socks]
        for thread in self._threads:
            thread.start()

    @property
    def accepted(self) -> int:
        with self._lock:
            return len(self.connections)

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, peer = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn, peer), daemon=True).start()

    def _answer(self, conn: socket.socket, peer: Any) -> None:
        first = b""
        with conn:
            conn.settimeout(0.5)
            try:
                first = conn.recv(512)
            except OSError:
                pass
            with self._lock:
                self.connections.append((str(peer), first))
            try:
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        for sock in self._socks:
            sock.close()


class Canary:
    """A file holding a known secret. Any read of it (by Python, by C code such as OpenSSL, or by a
    child process) moves its access time: :meth:`arm` sets the access time before the modification
    time, and the file system's ``relatime`` rule updates it on the next read."""

    def __init__(self, path: Path) -> None:
        self.secret = f"kduflow-canary-{secrets.token_hex(12)}"
        self.path = path
        path.write_text(self.secret + "\n")
        os.chmod(path, 0o600)
        self._armed_atime = 0

    def arm(self) -> None:
        mtime = self.path.stat().st_mtime_ns
        os.utime(self.path, ns=(mtime - 60 * 10**9, mtime))
        self._armed_atime = self.path.stat().st_atime_ns

    def was_read(self) -> bool:
        return self.path.stat().st_atime_ns != self._armed_atime


# --------------------------------------------------------------------------------------------
# Store snapshots
# --------------------------------------------------------------------------------------------


@dataclass
class StoreSnapshot:
    #: collection -> canonical _id -> canonical JSON of the document
    canonical: dict[str, dict[str, str]]
    #: collection -> canonical _id -> the document (for restoring)
    raw: dict[str, dict[str, dict]]


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


async def snapshot_store(store: Any, db_name: str) -> StoreSnapshot:
    """Every document of every collection of ``store`` (a :class:`activities.store.Store`)."""

    def read() -> StoreSnapshot:
        db = store.client[db_name]
        canonical: dict[str, dict[str, str]] = {}
        raw: dict[str, dict[str, dict]] = {}
        for name in db.list_collection_names():
            docs = list(db[name].find({}))
            if not docs:
                continue
            canonical[name] = {_canon(d.get("_id")): _canon(d) for d in docs}
            raw[name] = {_canon(d.get("_id")): copy.deepcopy(d) for d in docs}
        return StoreSnapshot(canonical, raw)

    return await store.run(read)


def store_diff(before: StoreSnapshot, after: StoreSnapshot) -> list[str]:
    """Human-readable differences: ``collection: added|removed|changed <_id>``."""
    out: list[str] = []
    for name in sorted(set(before.canonical) | set(after.canonical)):
        old, new = before.canonical.get(name, {}), after.canonical.get(name, {})
        for key in sorted(set(old) | set(new)):
            if key not in old:
                out.append(f"{name}: added {key}")
            elif key not in new:
                out.append(f"{name}: removed {key}")
            elif old[key] != new[key]:
                paths = _changed_paths(json.loads(old[key]), json.loads(new[key]))
                out.append(f"{name}: changed {key} ({', '.join(paths[:4])})")
    return out


def _changed_paths(old: Any, new: Any, prefix: str = "", depth: int = 4) -> list[str]:
    if old == new:
        return []
    if depth == 0 or not isinstance(old, dict) or not isinstance(new, dict):
        return [prefix or "<document>"]
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        out += _changed_paths(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key, depth - 1)
    return out


async def restore_store(store: Any, db_name: str, before: StoreSnapshot) -> None:
    """Put every collection back to ``before`` (documents added by a hole are deleted)."""

    def write() -> None:
        db = store.client[db_name]
        for name in db.list_collection_names():
            wanted = before.raw.get(name, {})
            for doc in list(db[name].find({})):
                key = _canon(doc.get("_id"))
                if key not in wanted or _canon(doc) != before.canonical[name][key]:
                    db[name].delete_one({"_id": doc.get("_id")})
        for name, docs in before.raw.items():
            for doc in docs.values():
                if db[name].find_one({"_id": doc.get("_id")}) is None:
                    db[name].insert_one(copy.deepcopy(doc))

    await store.run(write)


# --------------------------------------------------------------------------------------------
# Kubeconfigs
# --------------------------------------------------------------------------------------------

_FAKE_PEM = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").decode()


def kubeconfig(
    server: str,
    user: dict[str, Any] | None = None,
    cluster_extra: dict[str, Any] | None = None,
    top_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A structurally valid one-context kubeconfig; the hostile part goes in ``user``/extras."""
    cluster: dict[str, Any] = {"server": server, "insecure-skip-tls-verify": True}
    cluster.update(cluster_extra or {})
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user if user is not None else {"token": "hostile-token"}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    }
    doc.update(top_extra or {})
    return doc


def to_yaml(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


def nested_kubeconfig(server: str, depth: int) -> str:
    """A valid kubeconfig plus ``preferences`` nested ``depth`` flow sequences deep."""
    return to_yaml(kubeconfig(server)) + "preferences:\n  deep: " + "[" * depth + "]" * depth + "\n"


def alias_bomb_kubeconfig(server: str, levels: int = 7, width: int = 9) -> str:
    """A valid kubeconfig plus a YAML alias bomb (``width ** levels`` leaves once expanded: with the
    defaults ~4.8 million strings, ~25 MB as JSON; small on disk, bounded if something expands it)."""
    lines = ["preferences:", "  bomb:"]
    lines.append("    l0: &l0 [" + ", ".join(["lol"] * width) + "]")
    for i in range(1, levels):
        lines.append(f"    l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return to_yaml(kubeconfig(server)) + "\n".join(lines) + "\n"


def padded_kubeconfig(server: str, size: int) -> str:
    """A valid kubeconfig grown to ``size`` bytes by one long ``preferences`` scalar."""
    base = to_yaml(kubeconfig(server)) + "preferences:\n  padding: "
    return base + "x" * max(0, size - len(base) - 1) + "\n"


def fake_pem_b64() -> str:
    return _FAKE_PEM


# --------------------------------------------------------------------------------------------
# Cases and outcomes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ctx:
    """Values only known once the stack runs (ports, paths)."""

    cluster: str
    release: str
    release_namespace: str
    nsr_id: str
    listener_port: int
    canary: str
    marker_dir: str
    legit_kubeconfig: str

    @property
    def listener_http(self) -> str:
        return f"http://127.0.0.1:{self.listener_port}"

    @property
    def listener_https(self) -> str:
        return f"https://127.0.0.1:{self.listener_port}"

    def marker(self, name: str) -> str:
        return os.path.join(self.marker_dir, name)


Builder = Callable[[Ctx], Any]


@dataclass(frozen=True)
class Case:
    """One hostile input and the refusal it must get."""

    cls: str
    n: int
    workflow: str
    slug: str
    #: The workflow's argument (raw JSON-like), built from the context.
    inp: Builder | None
    #: ``ApplicationError.type`` the workflow must fail with.
    expect: str
    #: The field the message must name (any of them when a tuple); None: not checked.
    field: str | tuple[str, ...] | None = None
    #: Several arguments instead of one (``inp`` is then ignored).
    args: Builder | None = None
    #: Start the workflow with no argument at all.
    no_arg: bool = False
    #: "client" (Python SDK) or "cli" (``temporal workflow execute --input``).
    via: str = "client"
    #: A ``k8sclusters`` document written before the case (and removed after it).
    doc: Builder | None = None
    #: Marker file names (under ``ctx.marker_dir``) that must not exist after the case.
    markers: tuple[str, ...] = ()
    #: Why this expectation (e.g. which form is refused syntactically).
    note: str = ""
    #: The Temporal frontend itself may refuse the start (payload beyond its message limit).
    frontend_may_refuse: bool = False
    #: CLI only: ``--input-meta`` pairs (e.g. ``encoding=binary/plain``); the input is then sent as is.
    input_meta: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        via = "-cli" if self.via == "cli" else ""
        return f"{self.cls}-{self.n:02d}-{self.workflow}-{self.slug}{via}"

    def build_args(self, ctx: Ctx) -> list[Any]:
        if self.no_arg:
            return []
        if self.args is not None:
            return list(self.args(ctx))
        assert self.inp is not None
        return [self.inp(ctx)]


@dataclass
class Outcome:
    elapsed: float = 0.0
    #: "failed" (workflow failure), "completed", "hung" (task failure), "timeout", "rpc-refused", "error"
    state: str = ""
    status: str = ""
    error_type: str | None = None
    message: str = ""
    details: list[Any] = field(default_factory=list)
    result: Any = None
    why: str = ""
    events: list[Event] = field(default_factory=list)
    accepted: list[tuple[str, bytes]] = field(default_factory=list)
    store_changes: list[str] = field(default_factory=list)
    markers_present: list[str] = field(default_factory=list)
    canary_read: bool = False
    leaks: list[str] = field(default_factory=list)
    hook_errors: list[str] = field(default_factory=list)
    #: Longest time the test process's event loop (which runs the worker) did not get to run.
    loop_stall: float = 0.0


async def _watch_loop(out: Outcome, tick: float = 0.02) -> None:
    last = time.monotonic()
    while True:
        await asyncio.sleep(tick)
        now = time.monotonic()
        out.loop_stall = max(out.loop_stall, now - last - tick)
        last = now


def application_error(err: BaseException) -> ApplicationError | None:
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ApplicationError):
            return seen
        seen = seen.cause if isinstance(seen, FailureError | WorkflowFailureError) else seen.__cause__
    return None


def names_field(details: Iterable[Any], message: str, wanted: str | tuple[str, ...]) -> bool:
    """Whether the refusal names the field: in its message or as ``{"field": ...}`` in its details."""
    options = (wanted,) if isinstance(wanted, str) else wanted
    for option in options:
        if option in message:
            return True
        if any(isinstance(d, dict) and d.get("field") == option for d in details):
            return True
    return False


def problems(case: Case, out: Outcome) -> list[str]:
    """Everything wrong with ``out`` for ``case`` (empty: the case passes)."""
    found: list[str] = []
    if out.state == "hung":
        found.append(f"HUNG: {out.why}")
    elif out.state == "timeout":
        found.append(f"NOT CLOSED within the deadline: {out.why}")
    elif out.state == "completed":
        found.append(f"ACCEPTED: the workflow completed successfully (result {str(out.result)[:200]})")
    elif out.state == "rpc-refused":
        if not case.frontend_may_refuse:
            found.append(f"START REFUSED by the Temporal frontend: {out.why}")
    elif out.state == "error":
        found.append(f"HARNESS/CLIENT ERROR: {out.why}")
    elif out.state == "failed":
        if out.error_type != case.expect:
            found.append(
                f"WRONG TYPE: expected {case.expect}, got {out.error_type}: {out.message[:300]}"
            )
        elif case.field is not None and not names_field(out.details, out.message, case.field):
            found.append(f"FIELD NOT NAMED: expected {case.field!r} in: {out.message[:300]}")
        if len(out.message) > MAX_MESSAGE_CHARS:
            found.append(f"ECHO: error message of {len(out.message)} characters")
    if out.elapsed >= CASE_TIMEOUT and out.state not in ("timeout", "hung"):
        found.append(f"SLOW: closed after {out.elapsed:.1f}s")
    spawns = [e for e in out.events if e.kind == "spawn"]
    reads = [e for e in out.events if e.kind == "read"]
    writes = [e for e in out.events if e.kind == "write"]
    nets = [e for e in out.events if e.kind in ("connect", "resolve")]
    if spawns:
        found.append("SPAWNED: " + "; ".join(str(e) for e in spawns[:4]))
    if reads or out.canary_read:
        shown = [str(e) for e in reads[:4]]
        if out.canary_read:
            shown.append("canary file read (access time moved)")
        found.append("READ: " + "; ".join(shown))
    if writes:
        found.append("WROTE: " + "; ".join(str(e) for e in writes[:4]))
    if nets or out.accepted:
        shown = [str(e) for e in nets[:4]] + [f"listener accepted {peer}" for peer, _ in out.accepted[:2]]
        found.append("NETWORK: " + "; ".join(shown))
    if out.store_changes:
        found.append("STORE CHANGED: " + "; ".join(out.store_changes[:6]))
    if out.markers_present:
        found.append("MARKER CREATED (code ran): " + ", ".join(out.markers_present))
    if out.leaks:
        found.append("LEAKED: " + "; ".join(out.leaks))
    if out.hook_errors:
        found.append("HARNESS HOOK ERRORS: " + "; ".join(out.hook_errors[:3]))
    return found


# --------------------------------------------------------------------------------------------
# Running cases
# --------------------------------------------------------------------------------------------


@dataclass
class CaseRunner:
    client: Client
    task_queue: str
    store: Any
    db_name: str
    recorder: AuditRecorder
    policy: Policy
    listener: RecordingListener
    canary: Canary
    ctx: Ctx
    temporal_cli: str
    temporal_address: str
    #: Secrets that must never come back in an error message or the history.
    secrets: tuple[str, ...] = ()

    async def run(self, case: Case, timeout: float = CASE_TIMEOUT) -> Outcome:
        out = Outcome()
        wid = f"hostile-{case.id}-{uuid.uuid4().hex[:8]}"[:200]
        if case.doc is not None:
            doc = case.doc(self.ctx)
            await self.store.delete_one("k8sclusters", {"_id": doc["_id"]})
            await self.store.insert_one("k8sclusters", doc)
        try:
            args = case.build_args(self.ctx)
            before = await snapshot_store(self.store, self.db_name)
            accepted_before = self.listener.accepted
            self.canary.arm()
            watcher = asyncio.ensure_future(_watch_loop(out))
            self.recorder.arm(self.policy)
            handle: WorkflowHandle | None = None
            history_json = ""
            try:
                started = time.monotonic()
                if case.via == "cli":
                    handle = await self._run_cli(case, wid, args, out, timeout, started)
                else:
                    handle = await self._run_client(case, wid, args, out, timeout, started)
                if handle is not None and out.state in ("hung", "timeout"):
                    await self._describe_and_stop(handle, out)
                if handle is not None and out.state != "rpc-refused":
                    try:
                        history = await handle.fetch_history()
                        history_json = history.to_json()
                    except RPCError:
                        history_json = ""
            finally:
                out.events = self.recorder.disarm()
                watcher.cancel()
                out.hook_errors = list(self.recorder.hook_errors)
                self.recorder.hook_errors.clear()
            if out.state in ("hung", "timeout"):
                # A terminated workflow schedules nothing new; give an activity attempt already
                # running a moment to end so its effects are not attributed to the next case.
                await asyncio.sleep(0.5)
            out.canary_read = self.canary.was_read()
            with self.listener._lock:
                out.accepted = list(self.listener.connections[accepted_before:])
            after = await snapshot_store(self.store, self.db_name)
            out.store_changes = store_diff(before, after)
            if out.store_changes:
                await restore_store(self.store, self.db_name, before)
            out.markers_present = [m for m in case.markers if os.path.lexists(self.ctx.marker(m))]
            for secret in self.secrets:
                if secret and secret in out.message:
                    out.leaks.append(f"secret {secret[:12]}... in the error message")
                if secret and secret in history_json:
                    out.leaks.append(f"secret {secret[:12]}... in the workflow history")
        finally:
            if case.doc is not None:
                await self.store.delete_one("k8sclusters", {"_id": case.doc(self.ctx)["_id"]})
        return out

    async def _run_client(
        self, case: Case, wid: str, args: list[Any], out: Outcome, timeout: float, started: float
    ) -> WorkflowHandle | None:
        try:
            handle = await self.client.start_workflow(
                case.workflow,
                args=args,
                id=wid,
                task_queue=self.task_queue,
                result_type=dict,
                execution_timeout=timedelta(minutes=5),
            )
        except RPCError as err:
            out.elapsed = time.monotonic() - started
            out.state, out.why = "rpc-refused", f"{err.status.name if err.status else ''} {err.message}"[:300]
            return None
        await self._await_close(handle, out, timeout, started, None)
        return handle

    async def _run_cli(
        self, case: Case, wid: str, args: list[Any], out: Outcome, timeout: float, started: float
    ) -> WorkflowHandle | None:
        argv = [
            self.temporal_cli, "workflow", "execute", "--address", self.temporal_address,
            "--namespace", "default", "--task-queue", self.task_queue, "--type", case.workflow,
            "--workflow-id", wid, "--execution-timeout", "5m",
        ]  # fmt: skip
        for arg in args:
            argv += ["--input", arg if case.input_meta else json.dumps(arg)]
        for meta in case.input_meta:
            argv += ["--input-meta", meta]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        handle = self.client.get_workflow_handle(wid, result_type=dict)
        try:
            await self._await_close(handle, out, timeout, started, proc)
        finally:
            if proc.returncode is None:
                proc.kill()
            stdout, stderr = await proc.communicate()
            if out.state == "error" or out.state == "":
                out.why += f" (cli rc={proc.returncode}: {stderr.decode(errors='replace')[-300:]})"
        return handle

    async def _await_close(
        self,
        handle: WorkflowHandle,
        out: Outcome,
        timeout: float,
        started: float,
        proc: asyncio.subprocess.Process | None,
    ) -> None:
        deadline = started + timeout
        result_task: asyncio.Task[Any] | None = None
        try:
            while True:
                if result_task is None:
                    try:
                        await handle.describe()
                        result_task = asyncio.ensure_future(handle.result())
                    except RPCError:
                        if proc is not None and proc.returncode is not None:
                            out.elapsed = time.monotonic() - started
                            out.state, out.why = "error", "the CLI exited before the workflow existed"
                            return
                if result_task is not None:
                    done, _ = await asyncio.wait({result_task}, timeout=POLL_INTERVAL)
                    if done:
                        out.elapsed = time.monotonic() - started
                        self._settle(result_task, out)
                        return
                    failure = await self._task_failure(handle)
                    if failure is not None:
                        out.elapsed = time.monotonic() - started
                        out.state, out.why = "hung", failure
                        return
                else:
                    await asyncio.sleep(POLL_INTERVAL)
                if time.monotonic() >= deadline:
                    out.elapsed = time.monotonic() - started
                    out.state = "timeout"
                    return
        finally:
            if result_task is not None and not result_task.done():
                result_task.cancel()

    @staticmethod
    def _settle(task: asyncio.Task[Any], out: Outcome) -> None:
        err = task.exception()
        if err is None:
            out.state, out.result = "completed", task.result()
            return
        if isinstance(err, WorkflowFailureError):
            out.state = "failed"
            app = application_error(err)
            if app is not None:
                out.error_type, out.message, out.details = app.type, app.message, list(app.details)
            else:
                cause = err.cause
                out.error_type = type(cause).__name__ if cause is not None else None
                out.message = str(cause or err)
            return
        out.state, out.why = "error", f"{type(err).__name__}: {err}"[:400]

    @staticmethod
    async def _task_failure(handle: WorkflowHandle) -> str | None:
        try:
            async for event in handle.fetch_history_events():
                if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                    failure = event.workflow_task_failed_event_attributes.failure
                    text = failure.message
                    if failure.HasField("cause"):
                        text += f" <- {failure.cause.message}"
                    return (
                        "the workflow task failed (the SDK retries it for ever; the workflow stays "
                        f"RUNNING): {text}"[:500]
                    )
        except RPCError:
            return None
        return None

    @staticmethod
    async def _describe_and_stop(handle: WorkflowHandle, out: Outcome) -> None:
        try:
            desc = await handle.describe()
            out.status = desc.status.name if desc.status is not None else "?"
            pending = [
                f"{p.activity_type.name} attempt {p.attempt}"
                + (f" last failure: {p.last_failure.message[:200]}" if p.HasField("last_failure") else "")
                for p in desc.raw_description.pending_activities
            ]
            if out.state == "timeout":
                out.why = f"status {out.status} after {out.elapsed:.1f}s; pending: {pending or 'none'}"
            else:
                out.why += f" [status {out.status}]"
            await handle.terminate(reason="hostile-input suite: the case did not close in time")
        except RPCError as err:
            out.why += f" (describe/terminate failed: {err.message})"


# --------------------------------------------------------------------------------------------
# Probe workflows (harness controls)
# --------------------------------------------------------------------------------------------


@workflow.defn(name="HostileProbeHang", sandboxed=False)
class ProbeHang:
    """Fails its workflow task: the shape of a workflow that hangs on undecodable input."""

    @workflow.run
    async def run(self, raw: Any = None) -> None:
        raise RuntimeError("probe: workflow code raised a non-Temporal exception")


@workflow.defn(name="HostileProbeSlow", sandboxed=False)
class ProbeSlow:
    """Stays open for a minute."""

    @workflow.run
    async def run(self, raw: Any = None) -> None:
        await workflow.sleep(60)


@workflow.defn(name="HostileProbeRefuse", sandboxed=False)
class ProbeRefuse:
    """Refuses its input the way a workflow should."""

    @workflow.run
    async def run(self, raw: Any = None) -> None:
        raise ApplicationError(
            "invalid probe_field: refused by the probe", {"field": "probe_field"},
            type="InvalidInput", non_retryable=True,
        )  # fmt: skip


PROBE_WORKFLOWS = [ProbeHang, ProbeSlow, ProbeRefuse]


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


@dataclass
class Summary:
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, case: Case, out: Outcome, found: list[str]) -> None:
        self.rows.append({
            "id": case.id, "class": case.cls, "workflow": case.workflow, "via": case.via,
            "expect": case.expect, "state": out.state, "got": out.error_type, "message": out.message[:240],
            "elapsed": round(out.elapsed, 3), "loop_stall": round(out.loop_stall, 3), "passed": not found,
            "problems": found,
        })  # fmt: skip

    def lines(self) -> list[str]:
        if not self.rows:
            return []
        out = ["hostile-input suite summary"]
        by_class: dict[str, list[dict[str, Any]]] = {}
        for row in self.rows:
            by_class.setdefault(row["class"], []).append(row)
        for cls, rows in by_class.items():
            passed = sum(r["passed"] for r in rows)
            out.append(f"  {cls:12s} {len(rows):3d} cases, {passed:3d} pass, {len(rows) - passed:3d} fail")
        elapsed = [r["elapsed"] for r in self.rows if r["state"] not in ("rpc-refused",)]
        if elapsed:
            out.append(
                f"  close time: median {statistics.median(elapsed):.2f}s, max {max(elapsed):.2f}s "
                f"over {len(elapsed)} cases"
            )
        stalls = sorted((r for r in self.rows if r["loop_stall"] >= 0.5), key=lambda r: -r["loop_stall"])
        if stalls:
            out.append("  event loop (the worker's) stalled >= 0.5s in: " + ", ".join(
                f"{r['id']} ({r['loop_stall']:.1f}s)" for r in stalls[:6]))  # fmt: skip
        kinds: dict[str, int] = {}
        for row in self.rows:
            for problem in row["problems"]:
                kind = problem.split(":", 1)[0]
                kinds[kind] = kinds.get(kind, 0) + 1
        if kinds:
            out.append("  problems: " + ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items())))
        return out
