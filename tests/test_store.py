"""Store: the same contract against embedded montydb and (when installed) mongomock via the factory seam."""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from activities.store import LOCK_FILE, SERVER_SELECTION_TIMEOUT_MS, Store, StoreClosed, monty_client_factory
from kduflow.config import Settings

ROOT = Path(__file__).resolve().parent.parent

NSR = {
    "_id": "nsr-1",
    "name": "ns",
    "_admin": {
        "deployed": {
            "K8s": [
                {"kdu-instance": "a-0001", "member-vnf-index": "1"},
                {"kdu-instance": "b-0002", "member-vnf-index": "2"},
            ]
        }
    },
}


class Serialized:
    """A mongomock client, database or collection whose calls run one at a time.

    A MongoDB server applies each single-document update atomically, and pymongo is thread-safe,
    so the store drives pymongo from several threads. mongomock is neither: its update deep-copies
    the document while another thread changes it ("dictionary changed size during iteration").
    One lock around every call gives mongomock the server's guarantee; a cursor is read whole
    under it.
    """

    def __init__(self, target: Any, lock: threading.Lock) -> None:
        self._target = target
        self._lock = lock

    def __getitem__(self, name: str) -> Serialized:
        return Serialized(self._target[name], self._lock)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                result = attr(*args, **kwargs)
                return list(result) if name == "find" else result

        return call


def serialized_mongomock() -> Serialized:
    mongomock = pytest.importorskip("mongomock")
    return Serialized(mongomock.MongoClient(), threading.Lock())


def open_store(backend: str, tmp_path: Path) -> Store:
    if backend == "montydb":
        return Store.open(Settings(state_dir=tmp_path))
    # The pymongo code path (MONGO_URI set, several threads) with the client swapped through the seam.
    return Store.open(
        Settings(state_dir=tmp_path, mongo_uri="mongodb://mongo:27017/"), client_factory=serialized_mongomock
    )


@pytest_asyncio.fixture(params=["montydb", "mongomock"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    opened = open_store(request.param, tmp_path)
    try:
        yield opened
    finally:
        await opened.close()


async def test_array_index_set_and_dotted_paths(store: Store) -> None:
    await store.insert_one("nsrs", NSR)
    matched = await store.update_one(
        "nsrs", {"_id": "nsr-1"},
        {"$set": {"_admin.deployed.K8s.1.detailed-status": "ok",
                  "_admin.deployed.K8s.1.status": "Install complete"}},
    )
    assert matched == 1
    doc = await store.find_one("nsrs", {"_id": "nsr-1"})
    assert doc is not None
    k8s = doc["_admin"]["deployed"]["K8s"]
    assert k8s[0] == {"kdu-instance": "a-0001", "member-vnf-index": "1"}
    assert k8s[1] == {"kdu-instance": "b-0002", "member-vnf-index": "2", "detailed-status": "ok",
                      "status": "Install complete"}
    # Dotted filter into an array element, then $unset.
    assert await store.find_one("nsrs", {"_admin.deployed.K8s.kdu-instance": "b-0002"}) is not None
    unset = {"$unset": {"_admin.deployed.K8s.1.status": ""}}
    assert await store.update_one("nsrs", {"_id": "nsr-1"}, unset) == 1
    doc = await store.find_one("nsrs", {"_id": "nsr-1"})
    assert doc is not None and "status" not in doc["_admin"]["deployed"]["K8s"][1]


async def test_dotted_filter_on_nested_field(store: Store) -> None:
    await store.insert_one("k8sclusters", {"_id": "c1", "_admin": {"helm-chart-v3": {"id": "c1"}}})
    await store.insert_one("k8sclusters", {"_id": "c2", "_admin": {"helm-chart-v3": {"id": "c2"}}})
    found = await store.find("k8sclusters", {"_admin.helm-chart-v3.id": "c2"})
    assert [doc["_id"] for doc in found] == ["c2"]
    assert sorted(doc["_id"] for doc in await store.find("k8sclusters", {})) == ["c1", "c2"]


async def test_upsert_insert_and_delete(store: Store) -> None:
    assert await store.find_one("k8srepos", {"_id": "r1"}) is None
    assert await store.update_one("k8srepos", {"_id": "r1"}, {"$set": {"url": "http://a"}}) == 0
    assert await store.find_one("k8srepos", {"_id": "r1"}) is None
    # An upsert that inserts matched nothing.
    assert await store.update_one("k8srepos", {"_id": "r1"}, {"$set": {"url": "http://a"}}, upsert=True) == 0
    assert await store.find_one("k8srepos", {"_id": "r1"}) == {"_id": "r1", "url": "http://a"}
    assert await store.update_one("k8srepos", {"_id": "r1"}, {"$set": {"url": "http://b"}}, upsert=True) == 1
    assert (await store.find_one("k8srepos", {"_id": "r1"}) or {})["url"] == "http://b"
    assert await store.delete_one("k8srepos", {"_id": "r1"}) == 1
    assert await store.delete_one("k8srepos", {"_id": "r1"}) == 0


async def test_caller_documents_are_not_shared_with_the_driver(store: Store) -> None:
    doc: dict[str, Any] = {"name": "no-id", "nested": {"a": 1}}
    await store.insert_one("things", doc)
    assert doc == {"name": "no-id", "nested": {"a": 1}}  # no _id added in place
    stored = await store.find_one("things", {"name": "no-id"})
    assert stored is not None and "_id" in stored
    stored["nested"]["a"] = 2
    again = await store.find_one("things", {"name": "no-id"})
    assert again is not None and again["nested"]["a"] == 1


async def test_concurrent_updates_of_one_document_lose_nothing(store: Store) -> None:
    await store.insert_one("nsrs", {"_id": "busy", "_admin": {"deployed": {"K8s": [{} for _ in range(4)]}}})
    results = await asyncio.gather(*(
        store.update_one("nsrs", {"_id": "busy"}, {"$set": {f"_admin.deployed.K8s.{i % 4}.f{i}": i}})
        for i in range(100)
    ))
    assert results == [1] * 100
    doc = await store.find_one("nsrs", {"_id": "busy"})
    assert doc is not None
    fields = {key: value for entry in doc["_admin"]["deployed"]["K8s"] for key, value in entry.items()}
    assert fields == {f"f{i}": i for i in range(100)}


async def test_ordered_update_filter(store: Store) -> None:
    """The operators of ordered status writes ($or, $lt, $exists on a dotted path through an array
    index) as MongoDB applies them: lower or absent seq matches, equal or higher does not."""
    await store.insert_one("nsrs", NSR)
    path = "_admin.deployed.K8s.1.kduflow"

    async def write(seq: int) -> int:
        ordered = {"$or": [{f"{path}.seq": {"$lt": seq}}, {f"{path}.seq": {"$exists": False}}]}
        return await store.update_one("nsrs", {"_id": "nsr-1", **ordered}, {"$set": {path: {"seq": seq}}})

    big = 1_764_100_000_000 * 1_000_000  # int64 range, above 2**53: compared exactly
    results = [await write(seq) for seq in (10, 5, 10, 11, big + 2, big + 1, big + 2, big + 3)]
    assert results == [1, 0, 0, 1, 1, 0, 0, 1]
    doc = await store.find_one("nsrs", {"_id": "nsr-1"})
    assert doc is not None
    k8s = doc["_admin"]["deployed"]["K8s"]
    assert k8s[1] == {"kdu-instance": "b-0002", "member-vnf-index": "2", "kduflow": {"seq": big + 3}}
    assert "kduflow" not in k8s[0]
    assert await store.find_one("nsrs", {"_id": "nsr-1"}, {"_id": 1}) == {"_id": "nsr-1"}


async def test_close_is_idempotent_and_final(store: Store) -> None:
    await store.insert_one("x", {"_id": 1})
    await store.close()
    await store.close()
    with pytest.raises(StoreClosed):
        await store.find_one("x", {"_id": 1})


async def test_embedded_store_persists_across_reopen(tmp_path: Path) -> None:
    first = Store.open(Settings(state_dir=tmp_path))
    await first.insert_one("nsrs", NSR)
    await first.update_one("nsrs", {"_id": "nsr-1"}, {"$set": {"_admin.deployed.K8s.0.status": "ok"}})
    await first.close()
    assert (tmp_path / "store").stat().st_mode & 0o777 == 0o700
    second = Store.open(Settings(state_dir=tmp_path))
    try:
        doc = await second.find_one("nsrs", {"_id": "nsr-1"})
        assert doc is not None and doc["_admin"]["deployed"]["K8s"][0]["status"] == "ok"
    finally:
        await second.close()


async def test_embedded_store_uses_one_thread_which_created_the_client(tmp_path: Path) -> None:
    created_on: list[int] = []

    def factory() -> Any:
        created_on.append(threading.get_ident())
        return monty_client_factory(tmp_path / "store")()

    store = Store.open(Settings(state_dir=tmp_path), client_factory=factory)
    try:
        idents = await asyncio.gather(*(store.run(threading.get_ident) for _ in range(20)))
        assert set(idents) == {created_on[0]}
        assert created_on[0] != threading.get_ident()
        # The sqlite-backed client works from there (it refuses any other thread).
        await store.insert_one("x", {"_id": "ok"})
        assert await store.find_one("x", {"_id": "ok"}) == {"_id": "ok"}
    finally:
        await store.close()


async def test_store_calls_do_not_block_the_event_loop(tmp_path: Path) -> None:
    store = Store.open(Settings(state_dir=tmp_path))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    try:
        await store.run(time.sleep, 0.3)
        assert ticks >= 10
    finally:
        task.cancel()
        await store.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_pymongo_client_is_lazy_and_fails_fast(tmp_path: Path) -> None:
    port = free_port()
    started = time.monotonic()
    # SRV needs DNS; a lazy client must not resolve (or connect) at construction.
    srv = Store.open(Settings(state_dir=tmp_path, mongo_uri="mongodb+srv://u:p@cluster.example.invalid/"))
    lazy = Store.open(Settings(state_dir=tmp_path, mongo_uri=f"mongodb://127.0.0.1:{port}/"))
    assert time.monotonic() - started < 1.0
    try:
        assert lazy.client.options.server_selection_timeout == SERVER_SELECTION_TIMEOUT_MS / 1000
        assert not (tmp_path / "store").exists()  # no embedded store when MONGO_URI is set
    finally:
        await srv.close()
        await lazy.close()

    from pymongo.errors import ServerSelectionTimeoutError

    uri = f"mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=200"
    fast = Store.open(Settings(state_dir=tmp_path, mongo_uri=uri))
    try:
        assert fast.client.options.server_selection_timeout == 0.2
        started = time.monotonic()
        with pytest.raises(ServerSelectionTimeoutError):
            await fast.find_one("k8sclusters", {"_id": "c"})
        assert time.monotonic() - started < 3.0
    finally:
        await fast.close()


# ------------------------------------------------------------------------------------------------
# Several processes on one embedded store
# ------------------------------------------------------------------------------------------------

#: One worker process: waits for the go file, then does N `$inc` on one document, through a Store
#: ("store": the file lock) or straight through montydb ("raw": no lock).
INCREMENTER = """
import asyncio, pathlib, sys, time
state, n, mode, ready, go = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]

def wait():
    pathlib.Path(ready).touch()
    while not pathlib.Path(go).exists():
        time.sleep(0.002)

if mode == "store":
    from activities.store import Store
    from kduflow.config import Settings

    async def main():
        store = Store.open(Settings(state_dir=state))
        try:
            await store.find_one("counters", {"_id": "c"})
            wait()
            for _ in range(n):
                assert await store.update_one("counters", {"_id": "c"}, {"$inc": {"n": 1}}) == 1
        finally:
            await store.close()

    asyncio.run(main())
else:
    from montydb import MontyClient

    counters = MontyClient(str(state / "store"))["osm"]["counters"]
    counters.find_one({"_id": "c"})
    wait()
    for _ in range(n):
        counters.update_one({"_id": "c"}, {"$inc": {"n": 1}})
"""


async def run_incrementers(tmp_path: Path, mode: str, processes: int = 2, n: int = 200) -> int:
    """``processes`` processes doing ``n`` increments each, started together; the final count."""
    store = Store.open(Settings(state_dir=tmp_path))
    await store.insert_one("counters", {"_id": "c", "n": 0})
    await store.close()
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-c", INCREMENTER, str(tmp_path), str(n), mode]
    procs = [
        subprocess.Popen(
            [*argv, str(tmp_path / f"ready-{i}"), str(go)],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready-{i}").exists() for i in range(processes)):
            assert all(p.poll() is None for p in procs), [p.communicate()[1] for p in procs]
            assert time.monotonic() < deadline, "workers did not start"
            await asyncio.sleep(0.01)
        go.touch()
        for p in procs:
            _, err = await asyncio.to_thread(p.communicate, timeout=120)
            assert p.returncode == 0, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    store = Store.open(Settings(state_dir=tmp_path))
    try:
        doc = await store.find_one("counters", {"_id": "c"})
    finally:
        await store.close()
    assert doc is not None
    return int(doc["n"])


async def test_two_processes_sharing_the_embedded_store_lose_no_update(tmp_path: Path) -> None:
    started = time.monotonic()
    assert await run_incrementers(tmp_path, "store") == 400
    print(f"2 x 200 locked $inc from two processes: {time.monotonic() - started:.2f}s")
    lock = tmp_path / "store" / LOCK_FILE
    assert lock.stat().st_mode & 0o777 == 0o600


async def test_without_the_lock_two_processes_lose_updates(tmp_path: Path) -> None:
    """Why the lock exists: montydb's update is read-modify-write, unguarded across processes."""
    count = await run_incrementers(tmp_path, "raw")
    print(f"2 x 200 unlocked $inc from two processes: {count}")
    assert count < 400


async def test_file_lock_only_on_the_embedded_store(tmp_path: Path) -> None:
    store = Store.open(Settings(state_dir=tmp_path, mongo_uri="mongodb://mongo:27017/"),
                       client_factory=serialized_mongomock)  # fmt: skip
    try:
        await store.insert_one("x", {"_id": 1})
        assert await store.update_one("x", {"_id": 1}, {"$set": {"a": 1}}) == 1
    finally:
        await store.close()
    assert not (tmp_path / "store").exists()


async def test_file_lock_is_held_only_during_a_write(tmp_path: Path) -> None:
    """A write waits while another process holds the lock, and the store holds it only for a write."""
    store = Store.open(Settings(state_dir=tmp_path))
    # A second store (another worker) reads while the first one's only thread waits in the write.
    reader = Store.open(Settings(state_dir=tmp_path))
    try:
        await store.insert_one("x", {"_id": 1, "n": 0})
        fd = os.open(tmp_path / "store" / LOCK_FILE, os.O_RDWR)
        try:
            # Between writes the lock is free (LOCK_NB would raise otherwise).
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            write = asyncio.ensure_future(store.update_one("x", {"_id": 1}, {"$inc": {"n": 1}}))
            await asyncio.sleep(0.3)
            assert not write.done()
            # Reads take no lock.
            assert await asyncio.wait_for(reader.find("x", {}), 5) == [{"_id": 1, "n": 0}]
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        assert await asyncio.wait_for(write, 5) == 1
        assert (await reader.find_one("x", {"_id": 1}) or {})["n"] == 1
    finally:
        await reader.close()
        await store.close()


async def test_ping_reads_without_writing(store: Store) -> None:
    await store.ping()
    assert await store.find("k8sclusters", {}) == []
    await store.close()
    with pytest.raises(StoreClosed):
        await store.ping()
