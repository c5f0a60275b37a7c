"""Store: the same contract against embedded montydb and (when installed) mongomock via the factory seam."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from activities.store import SERVER_SELECTION_TIMEOUT_MS, Store, StoreClosed, monty_client_factory
from kduflow.config import Settings

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


def open_store(backend: str, tmp_path: Path) -> Store:
    if backend == "montydb":
        return Store.open(Settings(state_dir=tmp_path))
    mongomock = pytest.importorskip("mongomock")
    # The pymongo code path (MONGO_URI set) with the client swapped through the seam.
    return Store.open(Settings(state_dir=tmp_path, mongo_uri="mongodb://mongo:27017/"),
                      client_factory=mongomock.MongoClient)


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
