"""The README's "The temporal CLI" section is a tested path: every block runs, in order, with the real
``temporal`` CLI, against the world ``./run demo --keep`` leaves running (dev server, sandbox
cluster, chart repository, worker), and its output is checked against what the README says.

The blocks are the fenced ``sh`` blocks the README marks with ``<!-- cli-test: <name> -->``. They run
as written, through ``bash -o pipefail`` (so ``temporal ... | jq`` fails when temporal does), with only
the variables the README's ``setup`` block tells users to set, taken from the demo's output. A
workflow type the plugin registers without a block, or a block without a check here, fails the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from activities.store import Store
from kduflow.config import Settings
from kduflow.plugin import KduflowPlugin
from tests.conftest import temporal_cli
from workflows.lock import ReleaseLock

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SECTION = "## The temporal CLI"
BLOCK = re.compile(r"<!-- cli-test: ([a-z0-9-]+) -->\n```sh\n(.*?)\n```", re.S)
#: The variables the setup block assigns; the test gives each its value from the demo's output.
SETUP_VARIABLES = {"PATH", "TEMPORAL_ADDRESS", "KUBECONFIG_FILE", "REPO_URL"}
#: How long a block observing the running upgrade is re-run until its check passes (the lock and
#: the list's visibility record appear a moment after `temporal workflow start` returns).
OBSERVE_FOR = 12.0
RELEASE_WF = "upgrade-web-1-never-ready"


@dataclass(frozen=True)
class Block:
    name: str
    code: str


def cli_blocks(text: str) -> list[Block]:
    """The marked ``sh`` blocks of the README's CLI section, in order; every ``sh`` block of the
    section must be marked."""
    start = text.index(f"\n{SECTION}\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end >= 0 else len(text)]
    blocks = [Block(m[1], m[2]) for m in BLOCK.finditer(section)]
    assert section.count("```sh") == len(blocks), "an sh block of the CLI section has no cli-test marker"
    names = [b.name for b in blocks]
    assert len(names) == len(set(names)), f"duplicate cli-test names: {names}"
    return blocks


def documented_types(blocks: list[Block]) -> set[str]:
    """Workflow types the blocks start (``execute`` or ``start`` with ``--type``)."""
    return {
        m[1]
        for b in blocks
        for m in re.finditer(r"temporal workflow (?:execute|start)\b[^\n]*--type (\w+)", b.code)
    }


def assigned_variables(code: str) -> set[str]:
    return set(re.findall(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=", code, re.M))


def workflow_type_names(classes: list[type]) -> set[str]:
    return {cls.__temporal_workflow_definition.name for cls in classes}  # type: ignore[attr-defined]


async def test_every_workflow_type_has_a_cli_block(tmp_path: Path) -> None:
    """A workflow type registered by the plugin without a README block (or table row) fails here."""
    store = Store.open(Settings(state_dir=tmp_path / "db"))
    try:
        plugin = KduflowPlugin(settings=Settings(state_dir=tmp_path / "state"), store=store)
        workflows = plugin.workflows
        assert isinstance(workflows, list)
        # ReleaseLock runs on the lock task queue's companion worker (KduflowPlugin.run_worker).
        registered = workflow_type_names([*workflows, ReleaseLock])
    finally:
        await store.close()
    text = README.read_text()
    blocks = cli_blocks(text)
    lock = workflow_type_names([ReleaseLock])
    assert documented_types(blocks) == registered - lock
    # The lock is started by the operations themselves: its state query is documented instead.
    lock_query = re.compile(r"temporal workflow query --workflow-id kduflow-lock/\S+ --name state")
    assert any(lock_query.search(b.code) for b in blocks)
    table = set(re.findall(r"^\| `(\w+)` \|", text, re.M))
    assert registered <= table, f"missing from the Workflows table: {sorted(registered - table)}"
    assert assigned_variables(blocks[0].code) == SETUP_VARIABLES and blocks[0].name == "setup"


# --------------------------------------------------------------------------------------------------
# What each block must print. ``seen`` carries values between blocks (the repository's id).
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    address: str
    kubeconfig: Path
    repo_url: str
    state_dir: Path


#: A check of a block's stdout, given the world and the values earlier blocks recorded.
Check = Callable[[str, World, dict[str, Any]], None]


@dataclass(frozen=True)
class Expect:
    check: Check
    exit_code: int = 0
    #: Re-run until the check passes (observing an operation that has just started).
    observe: bool = False


def result(check: Callable[[Any, World, dict[str, Any]], None]) -> Check:
    """A check of the block's stdout parsed as one JSON document."""

    def parse(stdout: str, world: World, seen: dict[str, Any]) -> None:
        check(json.loads(stdout), world, seen)

    return parse


def text(*fragments: str) -> Check:
    def contains(stdout: str, world: World, seen: dict[str, Any]) -> None:
        for fragment in fragments:
            assert fragment in stdout, f"{fragment!r} not in output"

    return contains


def release(r: Any, revision: int, chart: str, status: str = "deployed") -> None:
    assert (r["kdu_instance"], r["namespace"]) == ("web-1", "demo")
    assert (r["revision"], r["chart"], r["status"]) == (revision, chart, status)


def _init(r: Any, w: World, seen: dict[str, Any]) -> None:
    assert r["cluster_uuid"] == "cluster-1" and r["installed_sw"] is False
    assert r["server_version"].startswith("v")
    assert r["schedule_id"] == "kduflow-sync-repos-cluster-1"


def _repo_add(r: Any, w: World, seen: dict[str, Any]) -> None:
    assert (r["name"], r["url"], r["changed"], r["oci"]) == ("demo", w.repo_url, True, False)
    assert r["repo_id"]
    seen["repo_id"] = r["repo_id"]


def _repo_list(r: Any, w: World, seen: dict[str, Any]) -> None:
    assert [(x["id"], x["name"], x["url"]) for x in r["repos"]] == [(seen["repo_id"], "demo", w.repo_url)]
    assert r["repos"][0]["fingerprint"]


def _sync(r: Any, w: World, seen: dict[str, Any]) -> None:
    assert not r["added"] and not r["failed"] and not r["deleted"]


def _inspect(r: Any, w: World, seen: dict[str, Any]) -> None:
    assert (r["chart"]["name"], r["chart"]["version"]) == ("webapp", "0.1.0")
    assert "replicaCount:" in r["values"] and r["readme"]


def _install(r: Any, w: World, seen: dict[str, Any]) -> None:
    release(r, 1, "webapp-0.1.0")
    # db_dict: OSM's status fields in the demo's nsrs document.
    status = asyncio.run(nsr_status(w.state_dir))
    assert (status["operation"], status["status"]) == ("install", "Install complete")
    assert status["kduflow"]["revision"] == 1


def _status(r: Any, w: World, seen: dict[str, Any]) -> None:
    release(r, 1, "webapp-0.1.0")
    assert r["ready"] is True and r["ready_resources"] == r["total_resources"] > 0
    assert "web-1" in r["notes"]


def _upgrade(r: Any, w: World, seen: dict[str, Any]) -> None:
    release(r, 2, "webapp-0.2.0")
    assert r["app_version"] == "2.0.0"


def _lock(r: Any, w: World, seen: dict[str, Any]) -> None:
    holder = r["holder"]
    assert (holder["operation"], holder["workflow_id"], holder["workflow_type"]) == (
        "upgrade", RELEASE_WF, "UpgradeKdu"
    )
    assert r["held_since"] and "queue" in r
    assert r["ref"] == {"cluster_uuid": "cluster-1", "namespace": "demo", "kdu_instance": "web-1"}


def _upgrade_result(r: Any, w: World, seen: dict[str, Any]) -> None:
    assert r["type"] == "UpgradeRolledBack"
    assert r["details"] == [{"failed_revision": 3, "restored_revision": 2, "revision": 4}]


def _show(stdout: str, w: World, seen: dict[str, Any]) -> None:
    events = re.findall(r"^\s*\d+\s+\S+\s+(\w+)\s*$", stdout, re.M)
    failed = events.index("ActivityTaskFailed")
    assert "ActivityTaskCompleted" in events[failed:], "no rollback activity after the failed upgrade"
    assert events[-1] == "WorkflowExecutionFailed"


def _rollback(r: Any, w: World, seen: dict[str, Any]) -> None:
    release(r, 5, "webapp-0.1.0")
    assert r["restored_revision"] == 1


def _scale(r: Any, w: World, seen: dict[str, Any]) -> None:
    release(r, 6, "webapp-0.1.0")
    assert (r["replica_key"], r["message"]) == ("replicaCount", "scaled replicaCount from 2 to 3")


def _scale_count(r: Any, w: World, seen: dict[str, Any]) -> None:
    assert (r["replica_key"], r["count"], r["source"]) == ("replicaCount", 3, "user values")


def _services(r: Any, w: World, seen: dict[str, Any]) -> None:
    release(r, 6, "webapp-0.1.0")
    [svc] = r["services"]
    assert (svc["name"], svc["type"], svc["ports"][0]["port"]) == ("web-1-webapp", "ClusterIP", 80)
    assert svc["cluster_ip"]


def _service(r: Any, w: World, seen: dict[str, Any]) -> None:
    assert (r["service"]["name"], r["service"]["namespace"]) == ("web-1-webapp", "demo")


def _values(r: Any, w: World, seen: dict[str, Any]) -> None:
    release(r, 6, "webapp-0.1.0")
    assert r["values"] == {"replicaCount": 3}


def _instances(r: Any, w: World, seen: dict[str, Any]) -> None:
    rows = [(x["name"], x["namespace"], x["status"], x["revision"]) for x in r["releases"]]
    assert ("web-1", "demo", "deployed", 6) in rows


def _uninstall(r: Any, w: World, seen: dict[str, Any]) -> None:
    assert (r["kdu_instance"], r["status"]) == ("web-1", "absent")
    assert r["message"] == "uninstalled (was deployed at revision 6)"


def _repo_remove(r: Any, w: World, seen: dict[str, Any]) -> None:
    assert (r["repo_id"], r["name"], r["existed"]) == (seen["repo_id"], "demo", True)


def _reset(r: Any, w: World, seen: dict[str, Any]) -> None:
    assert r is True


EXPECT: dict[str, Expect] = {
    "init-cluster": Expect(result(_init)),
    "repo-add": Expect(result(_repo_add)),
    "repo-list": Expect(result(_repo_list)),
    "sync-repos": Expect(result(_sync)),
    "inspect": Expect(result(_inspect)),
    "install": Expect(result(_install)),
    "status": Expect(result(_status)),
    "upgrade": Expect(result(_upgrade)),
    "upgrade-start": Expect(text(RELEASE_WF, "UpgradeKdu")),
    "lock-state": Expect(result(_lock), observe=True),
    "describe": Expect(text(RELEASE_WF, "Pending Activities: 1", "kdu.upgrade"), observe=True),
    "list-running": Expect(text(RELEASE_WF, "Running"), observe=True),
    "upgrade-result": Expect(result(_upgrade_result), exit_code=1),
    "show": Expect(_show),
    "rollback": Expect(result(_rollback)),
    "scale": Expect(result(_scale)),
    "get-scale-count": Expect(result(_scale_count)),
    "services": Expect(result(_services)),
    "get-service": Expect(result(_service)),
    "values": Expect(result(_values)),
    "instances": Expect(result(_instances)),
    "uninstall": Expect(result(_uninstall)),
    "repo-remove": Expect(result(_repo_remove)),
    "reset-cluster": Expect(result(_reset)),
}


async def nsr_status(state_dir: Path) -> dict[str, Any]:
    """The status entry the install's db_dict names, read from the demo's embedded store."""
    store = Store.open(Settings(state_dir=state_dir))
    try:
        doc = await store.find_one("nsrs", {"_id": "nsr-demo"})
    finally:
        await store.close()
    assert doc is not None
    entry: dict[str, Any] = doc["_admin"]["deployed"]["K8s"][0]
    return entry


# --------------------------------------------------------------------------------------------------
# The demo's world.
# --------------------------------------------------------------------------------------------------


def _field(output: str, label: str) -> str:
    """The first word after ``label`` on the demo's startup line (``   <label>  <value> ...``)."""
    match = re.search(rf"^   {re.escape(label)}\s+(\S+)", output, re.M)
    assert match, f"the demo printed no {label!r} line:\n{output[-3000:]}"
    return match[1]


@pytest.fixture
def demo_world(tmp_path: Path) -> Iterator[World]:
    """``./run demo --keep`` (the module it runs), left running after its guided story."""
    log = tmp_path / "demo.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kduflow.demo", "--keep"],
            cwd=ROOT,
            env={**os.environ, "NO_COLOR": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while "Ctrl-C to stop." not in log.read_text():
            assert proc.poll() is None, f"the demo exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"the demo did not finish:\n{log.read_text()[-4000:]}"
            time.sleep(0.5)
        output = log.read_text()
        kubeconfig = re.search(r"^   sandbox cluster\s+\S+\s+\(kubeconfig (\S+)\)", output, re.M)
        state = re.search(r"^   worker\s+task queue '\w+', state (\S+)", output, re.M)
        assert kubeconfig and state, output[-3000:]
        yield World(
            address=_field(output, "temporal dev server"),
            kubeconfig=Path(kubeconfig[1]),
            repo_url=_field(output, "chart repository"),
            state_dir=Path(state[1]),
        )
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def run_block(block: Block, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", block.code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.mark.e2e
def test_readme_cli_story(demo_world: World, tmp_path: Path) -> None:
    """Each README block, in order, exits as documented and prints what the README says."""
    if shutil.which("jq") is None:
        pytest.fail("jq is missing: the README's CLI commands use it (apt-get install jq)")
    blocks = cli_blocks(README.read_text())
    setup, story = blocks[0], blocks[1:]
    assert setup.name == "setup" and assigned_variables(setup.code) == SETUP_VARIABLES
    assert [b.name for b in story] == list(EXPECT), "README blocks and their checks differ"
    home = tmp_path / "home"  # no temporal CLI config file of the user's applies
    home.mkdir()
    env = {
        # What the setup block has users set, with this world's values.
        "PATH": os.pathsep.join([str(Path(temporal_cli()).parent), os.environ.get("PATH", os.defpath)]),
        "TEMPORAL_ADDRESS": demo_world.address,
        "KUBECONFIG_FILE": str(demo_world.kubeconfig),
        "REPO_URL": demo_world.repo_url,
        "HOME": str(home),
        "LANG": "C.UTF-8",
    }
    seen: dict[str, Any] = {}
    timings = []
    for block in story:
        expect = EXPECT[block.name]
        started = time.monotonic()
        deadline = started + (OBSERVE_FOR if expect.observe else 0)
        while True:
            proc = run_block(block, env)
            try:
                assert proc.returncode == expect.exit_code, f"exit status {proc.returncode}"
                expect.check(proc.stdout, demo_world, seen)
                break
            except (AssertionError, ValueError, KeyError, TypeError) as err:
                if time.monotonic() < deadline:
                    time.sleep(0.5)
                    continue
                raise AssertionError(
                    f"README block {block.name!r}: {err}\n$ {block.code}\n"
                    f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
                ) from err
        timings.append(f"{block.name} {time.monotonic() - started:.1f}s")
    print("README blocks:", ", ".join(timings))
