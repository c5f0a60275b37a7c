"""``python -m sandbox.bench``: start ``python -m sandbox`` as a separate process, load it with objects,
measure requests/s over keep-alive connections, the server's RSS, and its idle CPU. Prints one JSON line.

Bounded: a fixed number of requests against 127.0.0.1 only; the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Client:
    """One keep-alive connection with the kubeconfig's CA and token."""

    def __init__(self, kubeconfig: dict[str, Any]) -> None:
        import base64

        cluster = kubeconfig["clusters"][0]["cluster"]
        self.token = kubeconfig["users"][0]["user"]["token"]
        host_port = cluster["server"].split("://", 1)[1]
        host, port = host_port.rsplit(":", 1)
        if cluster["server"].startswith("https"):
            ctx = ssl.create_default_context(
                cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
            )
            self.conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, int(port), context=ctx)
        else:
            self.conn = http.client.HTTPConnection(host, int(port))

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        self.conn.request(method, path, body=data, headers=headers)
        resp = self.conn.getresponse()
        return resp.status, resp.read()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sandbox.bench")
    p.add_argument(
        "--objects", type=int, default=1000, help="objects to create (half ConfigMaps, half Deployments)"
    )
    p.add_argument("--requests", type=int, default=3000, help="GET requests in the throughput phase")
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--plain-http", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sandbox-bench-") as d:
        kc_path = Path(d) / "kubeconfig"
        cmd = [
            sys.executable,
            "-m",
            "sandbox",
            "--port",
            "0",
            "--kubeconfig-out",
            str(kc_path),
            "--ready-delay",
            "0.1",
        ]
        if args.plain_http:
            cmd.append("--plain-http")
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            startup = time.monotonic() - t0
            info = json.loads(line)
            kubeconfig = yaml.safe_load(kc_path.read_text())
            client = Client(kubeconfig)
            client.request("POST", "/api/v1/namespaces", {"metadata": {"name": "bench"}})
            t1 = time.monotonic()
            for i in range(args.objects):
                if i % 2:
                    client.request(
                        "POST",
                        "/api/v1/namespaces/bench/configmaps",
                        {
                            "metadata": {"name": f"cm-{i}", "labels": {"i": str(i % 7)}},
                            "data": {"k": "v" * 200},
                        },
                    )
                else:
                    labels = {"app": f"d{i}"}
                    client.request(
                        "POST",
                        "/apis/apps/v1/namespaces/bench/deployments",
                        {
                            "metadata": {"name": f"d-{i}", "labels": labels},
                            "spec": {
                                "replicas": 1,
                                "selector": {"matchLabels": labels},
                                "template": {
                                    "metadata": {"labels": labels},
                                    "spec": {"containers": [{"name": "c", "image": "nginx"}]},
                                },
                            },
                        },
                    )
            create_rate = args.objects / (time.monotonic() - t1)
            time.sleep(2.0)  # let the controllers create ReplicaSets and Pods and settle
            per_thread = args.requests // args.threads
            errors = []

            def worker(n: int) -> None:
                c = Client(kubeconfig)
                for j in range(per_thread):
                    if j % 10 == 0:
                        status, _ = c.request(
                            "GET", "/api/v1/namespaces/bench/configmaps?labelSelector=i%3D3"
                        )
                    else:
                        status, _ = c.request(
                            "GET", f"/api/v1/namespaces/bench/configmaps/cm-{(2 * j + 1) % args.objects}"
                        )
                    if status != 200:
                        errors.append(status)

            threads = [threading.Thread(target=worker, args=(n,)) for n in range(args.threads)]
            t2 = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rps = per_thread * args.threads / (time.monotonic() - t2)
            cpu0 = _cpu_seconds(info["pid"])
            time.sleep(3.0)
            idle_cpu = (_cpu_seconds(info["pid"]) - cpu0) / 3.0
            _, body = client.request("GET", "/_sandbox/dump")
            total_objects = sum(len(v) for v in json.loads(body)["objects"].values())
            print(
                json.dumps(
                    {
                        "startup_s": round(startup, 3),
                        "objects": total_objects,
                        "create_per_s": round(create_rate),
                        "get_requests_per_s": round(rps),
                        "errors": len(errors),
                        "rss_mb": round(_rss_mb(info["pid"]), 1),
                        "idle_cpu_fraction": round(idle_cpu, 4),
                    }
                )
            )
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
