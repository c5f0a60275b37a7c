"""Runner tests with real child processes (small Python scripts), no fakes."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest
from temporalio import activity
from temporalio.testing import ActivityEnvironment

from activities.errors import ProcessTimeout, UnsupportedHelm
from activities.runner import Runner, redact_argv

PY = sys.executable
ENV = {"LC_ALL": "C.UTF-8"}


def script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "child.py"
    path.write_text(textwrap.dedent(body))
    return [PY, str(path), str(tmp_path)]


async def wait_for_file(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


def assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# A child that records its pid, reports SIGTERM in a file, then exits (or ignores it).
TRAP = """
    import os, signal, sys, time
    d = sys.argv[1]
    def on_term(signum, frame):
        open(os.path.join(d, "term"), "w").write("TERM")
        if {exit_on_term}:
            sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    open(os.path.join(d, "pid"), "w").write(str(os.getpid()))
    time.sleep(60)
"""


async def test_run_keeps_stdout_and_stderr_apart_and_reports_returncode(tmp_path: Path) -> None:
    argv = script(
        tmp_path,
        """
        import sys
        sys.stdout.write('{"ok": true}')
        sys.stderr.write("WARNING: deprecated flag\\n")
        sys.exit(3)
    """,
    )
    result = await Runner().run(argv, env=ENV, timeout=10)
    assert result.returncode == 3
    assert result.stdout == b'{"ok": true}'
    assert result.stderr == b"WARNING: deprecated flag\n"
    assert not result.ok
    assert result.duration > 0


async def test_run_delivers_stdin_and_closes_it(tmp_path: Path) -> None:
    payload = b'{"password": "' + b"x" * 1_000_000 + b'"}'
    argv = script(
        tmp_path,
        """
        import sys
        data = sys.stdin.buffer.read()
        sys.stdout.write(str(len(data)))
    """,
    )
    result = await Runner().run(argv, env=ENV, stdin=payload, timeout=10)
    assert result.stdout == str(len(payload)).encode()


async def test_run_without_stdin_gives_the_child_an_empty_stdin(tmp_path: Path) -> None:
    argv = script(tmp_path, "import sys; sys.stdout.write(repr(sys.stdin.read()))")
    result = await Runner().run(argv, env=ENV, timeout=10)
    assert result.stdout == b"''"


async def test_run_environment_is_exactly_the_one_passed() -> None:
    assert "HOME" in os.environ or "PATH" in os.environ
    result = await Runner().run(
        ["/usr/bin/env"], env={"KUBECONFIG": "/k/config", "NO_COLOR": "1"}, timeout=10
    )
    assert sorted(result.stdout.decode().splitlines()) == ["KUBECONFIG=/k/config", "NO_COLOR=1"]


async def test_run_timeout_raises_process_timeout_and_the_child_is_gone(tmp_path: Path) -> None:
    argv = script(tmp_path, TRAP.format(exit_on_term=True))
    started = time.monotonic()
    with pytest.raises(ProcessTimeout) as info:
        await Runner().run(argv, env=ENV, timeout=1.0, term_grace=5)
    assert time.monotonic() - started < 4
    assert info.value.retryable
    assert (tmp_path / "term").read_text() == "TERM"  # SIGTERM first, and the child exited on it
    assert_gone(int((tmp_path / "pid").read_text()))


async def test_run_cancellation_sends_sigterm_first_and_reraises(tmp_path: Path) -> None:
    argv = script(tmp_path, TRAP.format(exit_on_term=True))
    task = asyncio.create_task(Runner().run(argv, env=ENV, timeout=60, term_grace=5))
    pid = int(await wait_for_file(tmp_path / "pid"))
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 3  # no waiting for the grace when the child obeys
    assert (tmp_path / "term").read_text() == "TERM"
    assert_gone(pid)


async def test_run_cancellation_kills_a_child_ignoring_sigterm_only_after_the_grace(tmp_path: Path) -> None:
    argv = script(tmp_path, TRAP.format(exit_on_term=False))
    task = asyncio.create_task(Runner().run(argv, env=ENV, timeout=60, term_grace=1.0))
    pid = int(await wait_for_file(tmp_path / "pid"))
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    elapsed = time.monotonic() - started
    assert (tmp_path / "term").read_text() == "TERM"
    assert 1.0 <= elapsed < 5
    assert_gone(pid)


async def test_run_final_sigkill_reaches_the_childs_own_children(tmp_path: Path) -> None:
    grandchild = tmp_path / "grandchild.py"
    grandchild.write_text(
        textwrap.dedent("""
        import os, signal, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open(os.path.join(sys.argv[1], "gpid"), "w").write(str(os.getpid()))
        time.sleep(60)
    """)
    )
    argv = script(
        tmp_path,
        f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, {str(grandchild)!r}, sys.argv[1]])
        time.sleep(60)
    """,
    )
    task = asyncio.create_task(Runner().run(argv, env=ENV, timeout=60, term_grace=0.5))
    gpid = int(await wait_for_file(tmp_path / "gpid"))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The grandchild is not ours to reap: it is gone or a zombie reparented to init.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{gpid}/stat").read_text().split(")")[-1].split()[0]
        except FileNotFoundError:
            break
        if state == "Z":
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("grandchild survived the process-group SIGKILL")


async def test_run_heartbeats_inside_an_activity(tmp_path: Path) -> None:
    argv = script(tmp_path, "import time; time.sleep(0.7)")
    beats: list[tuple] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)

    @activity.defn
    async def run_it() -> int:
        return (await Runner().run(argv, env=ENV, timeout=10, heartbeat_every=0.1)).returncode

    assert await env.run(run_it) == 0
    assert len(beats) >= 3
    detail = beats[-1][0]
    # Enough for a later attempt to find the process (same host: is the pid still alive?).
    assert set(detail) == {"command", "elapsed_s", "pid", "host", "started_at"}
    assert detail["command"].startswith("python")


async def test_run_heartbeats_the_pid_at_once(tmp_path: Path) -> None:
    """A crash in helm's first seconds must still leave its pid to the next attempt: the first
    heartbeat goes out as soon as the process exists, not after the first interval."""
    argv = script(tmp_path, "import time; time.sleep(0.5)")
    beats: list[tuple[float, dict]] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append((time.monotonic(), details[0]))

    @activity.defn
    async def run_it() -> float:
        started = time.monotonic()
        await Runner().run(argv, env=ENV, timeout=10, heartbeat_every=60)
        return started

    started = await env.run(run_it)
    assert beats, "no heartbeat while the process ran"
    at, detail = beats[0]
    assert at - started < 0.3
    assert detail["elapsed_s"] == 0 and detail["pid"] > 0


async def test_run_activity_cancellation_stops_the_child(tmp_path: Path) -> None:
    argv = script(tmp_path, TRAP.format(exit_on_term=True))
    env = ActivityEnvironment()

    @activity.defn
    async def run_it() -> int:
        return (await Runner().run(argv, env=ENV, timeout=60, heartbeat_every=0.1)).returncode

    task = asyncio.create_task(env.run(run_it))
    pid = int(await wait_for_file(tmp_path / "pid"))
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (tmp_path / "term").read_text() == "TERM"
    assert_gone(pid)


async def test_run_leaves_the_child_running_when_the_worker_shuts_down(tmp_path: Path) -> None:
    """A redeploy is not a cancellation: helm finishes (writing to its stderr after the worker let
    go of it, which a pipe would answer with SIGPIPE) and the next attempt adopts its outcome."""
    argv = script(
        tmp_path,
        """
        import os, sys, time
        d = sys.argv[1]
        open(os.path.join(d, "pid"), "w").write(str(os.getpid()))
        while not os.path.exists(os.path.join(d, "go")):
            time.sleep(0.02)
        for i in range(2000):
            sys.stderr.write("W1202 client-side throttling, waited %d ms\\n" % i)
            sys.stdout.write("x" * 100)
        sys.stderr.flush()
        open(os.path.join(d, "done"), "w").write("done")
        """,
    )
    env = ActivityEnvironment()

    @activity.defn
    async def run_it() -> int:
        return (await Runner().run(argv, env=ENV, timeout=60, heartbeat_every=0.1)).returncode

    task = asyncio.create_task(env.run(run_it))
    pid = int(await wait_for_file(tmp_path / "pid"))
    env.worker_shutdown()
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    os.kill(pid, 0)  # still running: not signalled
    (tmp_path / "go").write_text("go")
    assert await wait_for_file(tmp_path / "done") == "done"


async def test_run_missing_executable_is_unsupported_helm(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedHelm) as info:
        await Runner().run([str(tmp_path / "no-helm"), "version"], env=ENV, timeout=5)
    assert not info.value.retryable


async def test_run_logs_only_a_redacted_argv(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    argv = [
        "/bin/true", "repo", "add", "r", "https://x", "--username", "alice", "--password", "s3cr3t-pw",
        "--kube-token=tok-123456", "--set", "db.password=hunter22", "--values", "-", "api-key-987654",
    ]  # fmt: skip
    with caplog.at_level(logging.DEBUG, logger="activities.runner"):
        result = await Runner().run(
            argv, env=ENV, stdin=b'{"stdin-secret": 1}', timeout=5, secrets=["api-key-987654"]
        )
    logged = caplog.text + result.argv_display
    for secret in ("alice", "s3cr3t-pw", "tok-123456", "hunter22", "api-key-987654", "stdin-secret"):
        assert secret not in logged
    assert "--values <stdin>" in result.argv_display


@pytest.mark.parametrize(
    ("argv", "secrets", "expected"),
    [
        pytest.param(["helm", "--password", "p"], [], ["helm", "--password", "<redacted>"], id="flag value"),
        pytest.param(["helm", "--password=p"], [], ["helm", "--password=<redacted>"], id="flag=value"),
        pytest.param(
            ["helm", "--set-string", "a=b"], [], ["helm", "--set-string", "<redacted>"], id="set-string"
        ),
        pytest.param(["helm", "--set-json=a={}"], [], ["helm", "--set-json=<redacted>"], id="set-json="),
        pytest.param(["helm", "--values", "-"], [], ["helm", "--values", "<stdin>"], id="stdin"),
        pytest.param(["helm", "x\ny"], [], ["helm", "<multi-line string>"], id="multi-line"),
        pytest.param(["helm", "https://u:tok@h"], ["tok"], ["helm", "<redacted>"], id="listed secret"),
        pytest.param(["helm", "--password"], [], ["helm", "--password"], id="trailing flag"),
        pytest.param(["helm", "status", "demo"], [""], ["helm", "status", "demo"], id="empty secret ignored"),
    ],
)
def test_redact_argv(argv: list[str], secrets: list[str], expected: list[str]) -> None:
    assert redact_argv(argv, secrets) == expected
