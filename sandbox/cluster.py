"""``SandboxCluster``: one emulated Kubernetes API server (HTTPS or HTTP on 127.0.0.1) plus its
controllers, startable in-process; the Python control surface tests use."""

from __future__ import annotations

import base64
import copy
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
        """Set any of ready_delay, lb_delay, delete_delay, never_ready, error_rate, drop_rate, latency.
        Raises ValueError/TypeError naming the bad key (the HTTP control surface answers 400)."""
        allowed = {
            "ready_delay",
            "lb_delay",
            "delete_delay",
            "never_ready",
            "error_rate",
            "drop_rate",
            "latency",
        }
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        if (
            "never_ready" in changes
            and changes["never_ready"] is not None
            and not isinstance(changes["never_ready"], str)
        ):
            raise TypeError("never_ready must be a string pattern or null")
        numbers = {k: v for k, v in changes.items() if k != "never_ready"}
        self._check_delays(**numbers)
        for k in ("error_rate", "drop_rate"):
            if k in numbers and numbers[k] > 1:
                raise ValueError(f"{k} must be between 0 and 1")
        with self.store.lock:
            for k, v in changes.items():
                setattr(self.config, k, v)
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

    def set_faults(self, error_rate: float = 0.0, drop_rate: float = 0.0, latency: float = 0.0) -> None:
        """Per API request: answer 500 with probability error_rate, close the connection unanswered with
        probability drop_rate, sleep ``latency`` seconds first. Deterministic for a given seed."""
        self.configure(error_rate=error_rate, drop_rate=drop_rate, latency=latency)

    def fault_decision(self) -> tuple[str | None, float]:
        with self.config.lock:
            c = self.config
            if not (c.error_rate or c.drop_rate):
                return None, c.latency
            drop, err = self._fault_rng.random(), self._fault_rng.random()
            if drop < c.drop_rate:
                return "drop", c.latency
            if err < c.error_rate:
                return "error", c.latency
            return None, c.latency

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
        with self._counter_lock:
            self._counters.clear()
            self._total = 0

    def total_requests(self) -> int:
        with self._counter_lock:
            return self._total

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
        }

    def reset(self) -> None:
        """Back to a fresh cluster: only the default namespaces, constructor delays, no faults, no
        never-ready rule, zero counters. Old resourceVersions answer 410 Gone."""
        self.configure(never_ready=None, error_rate=0.0, drop_rate=0.0, latency=0.0, **self._initial)
        with self.store.lock:
            self.api.reset()
            self.controllers.seen.clear()
        with self.config.lock:
            self._fault_rng = random.Random(self._seed)
        self.reset_counters()
