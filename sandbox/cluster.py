"""``SandboxCluster``: one emulated Kubernetes API server (HTTPS or HTTP on 127.0.0.1) plus its
controllers, startable in-process; the Python control surface tests use."""

from __future__ import annotations

import base64
import copy
import fnmatch
import math
import os
import random
import secrets
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from .api import Api, Config
from .controllers import Controllers
from .resources import Registry
from .server import SandboxHTTPServer
from .tls import Certs, make_certs

#: Kinds of injected faults counted by :meth:`SandboxCluster.fault_counts`.
FAULT_KINDS = ("error", "drop", "latency")


def _matches(key: str, patterns: str | None) -> bool:
    """Whether ``key`` matches one of the ``|``-separated fnmatch ``patterns`` (None matches all)."""
    return patterns is None or any(fnmatch.fnmatchcase(key, p.strip()) for p in patterns.split("|"))


class SandboxCluster:
    """An emulated cluster. Not started by the constructor: call ``start()`` or use ``with``.

    Every control method is thread-safe and takes effect on the next request / reconcile pass.
    """

    def __init__(
        self,
        tls: bool = True,
        token: str | None = None,
        ready_delay: float = 0.3,
        lb_delay: float = 0.5,
        delete_delay: float = 0.0,
        aggregated_discovery: bool = False,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.tls = tls
        self.token = token or secrets.token_urlsafe(24)
        self.aggregated_discovery = aggregated_discovery
        self._initial = dict(ready_delay=ready_delay, lb_delay=lb_delay, delete_delay=delete_delay)
        self._host, self._requested_port = host, port
        self._seed = seed
        self.config = Config(ready_delay=ready_delay, lb_delay=lb_delay, delete_delay=delete_delay)
        self._check_delays(ready_delay=ready_delay, lb_delay=lb_delay, delete_delay=delete_delay)
        self.registry = Registry()
        from .store import Store

        self.store = Store()
        self.api = Api(self.store, self.registry, self.config, seed)
        self.controllers = Controllers(self.api)
        self._fault_rng = random.Random(seed)
        self._fault_counts = dict.fromkeys(FAULT_KINDS, 0)
        self._faults_left: int | None = None
        self._counters: dict[str, int] = {}
        self._total = 0
        self._counter_lock = threading.Lock()
        self._server: SandboxHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self.certs: Certs | None = None
        self.port = 0

    # ---- lifecycle ----

    def start(self) -> SandboxCluster:
        """Bind, seed the default namespaces and serve in background threads; returns when serving."""
        if self._server is not None:
            raise RuntimeError("the sandbox cluster is already started")
        ctx = None
        if self.tls:
            self.certs = make_certs()
            ctx = self.certs.server_context()
        self.api.seed_namespaces()
        self._server = SandboxHTTPServer((self._host, self._requested_port), self, ctx)
        self.port = self._server.server_address[1]
        serve = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"sandbox-http-{self.port}",
            daemon=True,
        )
        reconcile = threading.Thread(
            target=self.controllers.run, name=f"sandbox-ctrl-{self.port}", daemon=True
        )
        self._threads = [serve, reconcile]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """Stop serving, end watches and open connections, stop the controllers. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stopping.set()
        with self.store.cond:
            self.store.cond.notify_all()
        server.shutdown()
        server.server_close()
        server.close_connections()
        self.controllers.stop()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> SandboxCluster:
        return self.start() if self._server is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("the sandbox cluster is not started")
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca_pem(self) -> bytes | None:
        return self.certs.ca_pem if self.certs else None

    # ---- kubeconfig ----

    def kubeconfig(self, namespace: str = "default") -> str:
        """A kubeconfig (YAML) with one context ``sandbox`` pointing at this cluster."""
        cluster: dict[str, Any] = {"server": self.url}
        if self.certs:
            cluster["certificate-authority-data"] = base64.b64encode(self.certs.ca_pem).decode()
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [{"name": "sandbox", "cluster": cluster}],
            "users": [{"name": "sandbox", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "sandbox",
                    "context": {"cluster": "sandbox", "user": "sandbox", "namespace": namespace},
                }
            ],
            "current-context": "sandbox",
        }
        return yaml.safe_dump(doc, sort_keys=False)

    def write_kubeconfig(self, path: str | os.PathLike[str], namespace: str = "default") -> Path:
        """Write the kubeconfig with mode 0600 (created so; never world-readable). Returns the path."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.kubeconfig(namespace))
        os.chmod(p, 0o600)
        return p

    # ---- control ----

    @staticmethod
    def _check_delays(**values: Any) -> None:
        for k, v in values.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{k} must be a non-negative number, got {v!r}")

    def configure(self, **changes: Any) -> None:
        """Set any of ready_delay, lb_delay, delete_delay, never_ready, error_rate, drop_rate, latency,
        error_status, retry_after, fault_filter, drop_filter, fault_limit, fault_seed. Raises
        ValueError/TypeError naming the bad key (the HTTP control surface answers 400); nothing changes
        when a key is bad."""
        allowed = {
            "ready_delay",
            "lb_delay",
            "delete_delay",
            "never_ready",
            "error_rate",
            "drop_rate",
            "latency",
            "error_status",
            "retry_after",
            "fault_filter",
            "drop_filter",
            "fault_limit",
            "fault_seed",
        }
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        for k in ("never_ready", "fault_filter", "drop_filter"):
            if k in changes and changes[k] is not None and not isinstance(changes[k], str):
                raise TypeError(f"{k} must be a string pattern or null")
        if "error_status" in changes:
            status = changes["error_status"]
            if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
                raise ValueError(f"error_status must be an HTTP error status (400-599), got {status!r}")
        if "retry_after" in changes:
            after = changes["retry_after"]
            if after is not None and (isinstance(after, bool) or not isinstance(after, int) or after < 0):
                raise ValueError(f"retry_after must be a whole number of seconds or null, got {after!r}")
        if "fault_limit" in changes:
            limit = changes["fault_limit"]
            if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
                raise ValueError(f"fault_limit must be a whole number or null, got {limit!r}")
        if "fault_seed" in changes:
            seed = changes["fault_seed"]
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
                raise TypeError(f"fault_seed must be an integer or null, got {seed!r}")
        special = {
            "never_ready",
            "fault_filter",
            "drop_filter",
            "error_status",
            "retry_after",
            "fault_limit",
            "fault_seed",
        }
        numbers = {k: v for k, v in changes.items() if k not in special}
        self._check_delays(**numbers)
        for k in ("error_rate", "drop_rate"):
            if k in numbers and numbers[k] > 1:
                raise ValueError(f"{k} must be between 0 and 1")
        # Writers take both locks: the controllers read under the store's lock, the HTTP threads'
        # fault decisions under the config's.
        with self.store.lock, self.config.lock:
            for k, v in changes.items():
                setattr(self.config, k, v)
            if "fault_limit" in changes:
                self._faults_left = changes["fault_limit"]
            if "fault_seed" in changes:
                seed = changes["fault_seed"]
                self._fault_rng = random.Random(self._seed if seed is None else seed)
        self.controllers.wake.set()

    def set_never_ready(self, pattern: str | None) -> None:
        """Objects whose name (or an owner's name) matches the fnmatch pattern never get ready."""
        self.configure(never_ready=pattern)

    def set_ready_delay(self, seconds: float) -> None:
        self.configure(ready_delay=seconds)

    def set_delete_delay(self, seconds: float) -> None:
        self.configure(delete_delay=seconds)

    def set_lb_delay(self, seconds: float) -> None:
        self.configure(lb_delay=seconds)

    def set_faults(
        self,
        error_rate: float = 0.0,
        drop_rate: float = 0.0,
        latency: float = 0.0,
        *,
        error_status: int = 500,
        retry_after: int | None = None,
        only: str | None = None,
        drop_only: str | None = None,
        limit: int | None = None,
        seed: int | None = None,
    ) -> None:
        """Per API request: close the connection unanswered with probability ``drop_rate``, else
        answer ``error_status`` (500 by default; with a ``Retry-After: retry_after`` header when given)
        with probability ``error_rate``; sleep ``latency`` seconds first.

        ``only``: fnmatch patterns on the request's counter key, alternatives separated by ``|``
        (``"PUT */secrets/*|POST *"``), that limit faults and latency to matching requests;
        ``drop_only`` further limits drops (``"GET *|WATCH *"``: only requests a client may resend,
        as client-go does). ``limit``: at most that many faults, then requests pass (latency stays).
        The decisions follow one random sequence seeded with ``seed`` (default:
        the cluster's seed), restarted by every call: for one order of requests the faults are the
        same on every run. ``set_faults()`` turns everything off."""
        self.configure(
            error_rate=error_rate,
            drop_rate=drop_rate,
            latency=latency,
            error_status=error_status,
            retry_after=retry_after,
            fault_filter=only,
            drop_filter=drop_only,
            fault_limit=limit,
            fault_seed=seed,
        )

    def fault_decision(self, key: str = "") -> tuple[str | None, float]:
        """What to do with the API request counted as ``key``: ``(None | "error" | "drop", latency)``.
        Every injected fault and every delayed request is counted (:meth:`fault_counts`)."""
        with self.config.lock:
            c = self.config
            if not _matches(key, c.fault_filter):
                return None, 0.0
            fault: str | None = None
            if (c.error_rate or c.drop_rate) and self._faults_left != 0:
                drop, err = self._fault_rng.random(), self._fault_rng.random()
                if drop < c.drop_rate and _matches(key, c.drop_filter):
                    fault = "drop"
                elif err < c.error_rate:
                    fault = "error"
                if fault is not None and self._faults_left is not None:
                    self._faults_left -= 1
            latency = c.latency
        with self._counter_lock:
            if fault is not None:
                self._fault_counts[fault] += 1
            if latency > 0:
                self._fault_counts["latency"] += 1
        return fault, latency

    def fault_counts(self) -> dict[str, int]:
        """Injected faults since the last counter reset: ``{"error": n, "drop": n, "latency": n}``
        (latency: requests delayed)."""
        with self._counter_lock:
            return dict(self._fault_counts)

    # ---- counters ----

    def count(self, key: str) -> None:
        with self._counter_lock:
            self._counters[key] = self._counters.get(key, 0) + 1
            self._total += 1

    def counters(self) -> dict[str, int]:
        """Requests by ``"VERB /path/{template}"`` (VERB is the HTTP method, or WATCH for watches)."""
        with self._counter_lock:
            return dict(self._counters)

    def reset_counters(self) -> None:
        """Zero the request counters and the injected-fault counts."""
        with self._counter_lock:
            self._counters.clear()
            self._total = 0
            self._fault_counts = dict.fromkeys(FAULT_KINDS, 0)

    def total_requests(self) -> int:
        with self._counter_lock:
            return self._total

    def readiness_events(self, namespace: str | None = None, since: float = 0.0) -> list[dict[str, Any]]:
        """Readiness transitions of Pods and Deployments (``{"time", "kind", "namespace", "name",
        "ready"}``, ``time`` in epoch seconds, oldest first) at or after ``since``, optionally of one
        namespace; the most recent 20,000 are kept. An object's first status counts as a transition."""
        with self.store.lock:
            log = list(self.controllers.readiness_log)
        return [
            {"time": t, "kind": kind, "namespace": ns, "name": name, "ready": ready}
            for t, kind, ns, name, ready in log
            if t >= since and (namespace is None or ns == namespace)
        ]

    # ---- state ----

    def _type(self, kind_plural: str) -> Any:
        rt = self.registry.by_plural(kind_plural)
        if rt is None:
            raise ValueError(f"unknown resource {kind_plural!r}")
        return rt

    def get(self, kind_plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """A copy of one object (``plural`` or ``plural.group``), or None. Raises ValueError for an
        unknown resource."""
        rt = self._type(kind_plural)
        with self.store.lock:
            obj = self.store.get(rt.key, (namespace or "") if rt.namespaced else "", name)
            return copy.deepcopy(self.api.view(rt, obj)) if obj is not None else None

    def create(self, kind_plural: str, namespace: str | None, body: dict[str, Any]) -> dict[str, Any]:
        """Create one object as a POST would (uncounted, never faulted); returns a copy of it.
        Raises ValueError for an unknown resource or an object the API refuses."""
        rt = self._type(kind_plural)
        from .api import ApiError

        try:
            return copy.deepcopy(self.api.create(rt, (namespace or "") if rt.namespaced else "", body))
        except ApiError as e:
            raise ValueError(e.message) from e

    def list(
        self, kind_plural: str, namespace: str | None = None, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        """Copies of the matching objects, sorted by namespace and name. Raises ValueError for an unknown
        resource or a malformed selector."""
        rt = self._type(kind_plural)
        from .api import ApiError

        try:
            return copy.deepcopy(self.api.select(rt, namespace, label_selector))
        except ApiError as e:
            raise ValueError(e.message) from e

    def dump(self) -> dict[str, Any]:
        """Every object by ``plural[.group]``, the settings, the counters and the resourceVersion."""
        objects: dict[str, list[dict[str, Any]]] = {}
        with self.store.lock:
            for (group, plural), obj in self.store.all_items():
                objects.setdefault(f"{plural}.{group}" if group else plural, []).append(copy.deepcopy(obj))
            rv = self.store.rv
        return {
            "resourceVersion": str(rv),
            "config": self.config.as_dict(),
            "objects": objects,
            "counters": self.counters(),
            "total_requests": self.total_requests(),
            "faults": self.fault_counts(),
        }

    def reset(self) -> None:
        """Back to a fresh cluster: only the default namespaces, constructor delays, no faults, no
        never-ready rule, zero counters. Old resourceVersions answer 410 Gone."""
        self.configure(
            never_ready=None,
            error_rate=0.0,
            drop_rate=0.0,
            latency=0.0,
            error_status=500,
            retry_after=None,
            fault_filter=None,
            drop_filter=None,
            fault_limit=None,
            fault_seed=None,
            **self._initial,
        )
        with self.store.lock:
            self.api.reset()
            self.controllers.seen.clear()
            self.controllers.readiness_log.clear()
        self.reset_counters()
