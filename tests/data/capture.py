"""Regenerate the captured real helm/kubectl outputs under tests/data/helm3 and tests/data/helm4.

    .venv/bin/python tests/data/capture.py

Runs the pinned binaries (tools/helm3, tools/helm4) offline (version, create/show/template) and
against a ``sandbox.SandboxCluster`` (install, upgrade, rollback, status, history, list, values,
manifest, metadata, services, failures). Parser tests in tests/test_helm_cli.py and
tests/test_kubectl_cli.py read these files; the files are committed so the parser tests need no
cluster. Outputs are written verbatim (stdout as ``<name>.out``, stderr as ``<name>.err``).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from sandbox import SandboxCluster  # noqa: E402
from sandbox.chartrepo import CHARTS_DIR  # noqa: E402

WEBAPP = CHARTS_DIR / "webapp"


def run(
    argv: list[str], env: dict[str, str], stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, env=env, input=stdin, capture_output=True, timeout=120, check=False)


def save(
    out_dir: Path, name: str, proc: subprocess.CompletedProcess[bytes], *, expect_ok: bool = True
) -> None:
    if expect_ok and proc.returncode != 0:
        raise SystemExit(f"{name}: rc={proc.returncode}\n{proc.stderr.decode()}")
    if not expect_ok and proc.returncode == 0:
        raise SystemExit(f"{name}: expected a failure")
    (out_dir / f"{name}.out").write_bytes(proc.stdout)
    if proc.stderr or not expect_ok:
        (out_dir / f"{name}.err").write_bytes(proc.stderr)


def capture(dialect: str) -> None:
    tools = ROOT / "tools" / dialect
    helm, kubectl = str(tools / "helm"), str(tools / "kubectl")
    out = DATA / dialect
    out.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env = {
            "HOME": tmp,
            "NO_COLOR": "1",
            "PATH": f"{tools}:/usr/bin:/bin",
            "HELM_CONFIG_HOME": f"{tmp}/cfg",
            "HELM_CACHE_HOME": f"{tmp}/cache",
            "HELM_DATA_HOME": f"{tmp}/data",
        }
        save(out, "version", run([helm, "version", "--template", "{{.Version}}"], env))
        chart = home / "demo"
        run([helm, "create", str(chart)], env).check_returncode()
        (chart / "README.md").write_text("# demo\n\nA chart made by `helm create`.\n")
        for what in ("chart", "values", "readme"):
            save(out, f"show-{what}", run([helm, "show", what, str(chart)], env))
        save(
            out,
            "template",
            run(
                [helm, "template", "demo-1", str(chart), "--namespace", "ns1", "--values", "-"],
                env,
                b'{"replicaCount": 2}',
            ),
        )

        with SandboxCluster(ready_delay=0.2, lb_delay=0.2) as cluster:
            env["KUBECONFIG"] = str(cluster.write_kubeconfig(home / "kubeconfig"))
            save(out, "list-empty", run([helm, "list", "--all-namespaces", "--output", "json"], env))
            save(
                out,
                "status-missing",
                run([helm, "status", "nope", "-n", "ns1", "-o", "json"], env),
                expect_ok=False,
            )
            save(
                out,
                "history-missing",
                run([helm, "history", "nope", "-n", "ns1", "-o", "json"], env),
                expect_ok=False,
            )
            wait = "--wait=watcher" if dialect == "helm4" else "--wait"
            atomic = "--rollback-on-failure" if dialect == "helm4" else "--atomic"
            base = ["--namespace", "ns1", "--output", "json", "--timeout", "60s", "--values", "-", wait]
            save(
                out,
                "install",
                run(
                    [
                        helm,
                        "install",
                        "demo-1",
                        str(WEBAPP),
                        *base,
                        "--create-namespace",
                        "--labels",
                        "kduflow.dev/op=abc",
                    ],
                    env,
                    b"{}",
                ),
            )
            save(
                out, "get-values-null", run([helm, "get", "values", "demo-1", "-n", "ns1", "-o", "json"], env)
            )
            svc = '{"service": {"type": "LoadBalancer"}, "message": "bye"}'
            save(
                out,
                "upgrade",
                run(
                    [
                        helm,
                        "upgrade",
                        "demo-1",
                        str(WEBAPP),
                        *base,
                        "--reuse-values",
                        "--labels",
                        "kduflow.dev/op=def",
                    ],
                    env,
                    svc.encode(),
                ),
            )
            save(
                out,
                "rollback",
                run([helm, "rollback", "demo-1", "1", "-n", "ns1", "--timeout", "60s", wait], env),
            )
            save(out, "status", run([helm, "status", "demo-1", "-n", "ns1", "-o", "json"], env))
            save(out, "history", run([helm, "history", "demo-1", "-n", "ns1", "-o", "json"], env))
            save(out, "list", run([helm, "list", "--all-namespaces", "--output", "json"], env))
            list_sel = [helm, "list", "-n", "ns1", "-o", "json", "--filter", "^demo\\-1$"]
            list_sel += ["--all"] if dialect == "helm3" else []
            save(out, "list-selector-hit", run([*list_sel, "--selector", "kduflow.dev/op=abc"], env))
            save(out, "list-selector-miss", run([*list_sel, "--selector", "kduflow.dev/op=def"], env))
            save(
                out,
                "get-values",
                run([helm, "get", "values", "demo-1", "-n", "ns1", "-o", "json", "--revision", "2"], env),
            )
            save(out, "get-manifest", run([helm, "get", "manifest", "demo-1", "-n", "ns1"], env))
            save(
                out, "get-metadata", run([helm, "get", "metadata", "demo-1", "-n", "ns1", "-o", "json"], env)
            )
            run([helm, "upgrade", "demo-1", str(WEBAPP), *base], env, svc.encode()).check_returncode()
            save(out, "kubectl-services", run([kubectl, "get", "services", "-n", "ns1", "-o", "json"], env))
            save(
                out,
                "install-in-use",
                run([helm, "install", "demo-1", str(WEBAPP), *base], env, b"{}"),
                expect_ok=False,
            )
            bad = [
                helm,
                "install",
                "demo-2",
                str(WEBAPP),
                *base[:4],
                "--timeout",
                "5s",
                "--values",
                "-",
                wait,
            ]
            save(out, "install-atomic-fail", run([*bad, atomic], env, b'{"ready": false}'), expect_ok=False)
            save(out, "install-fail", run(bad, env, b'{"ready": false}'), expect_ok=False)
            save(out, "history-failed", run([helm, "history", "demo-2", "-n", "ns1", "-o", "json"], env))
            broken = CHARTS_DIR / "broken"
            save(
                out,
                "install-render-fail",
                run([helm, "install", "demo-3", str(broken), *base], env, b"{}"),
                expect_ok=False,
            )
            save(
                out,
                "uninstall",
                run([helm, "uninstall", "demo-1", "-n", "ns1", "--timeout", "60s", wait], env),
            )
    print(f"{dialect}: captured into {out.relative_to(ROOT)}")


if __name__ == "__main__":
    for d in sys.argv[1:] or ["helm3", "helm4"]:
        capture(d)
