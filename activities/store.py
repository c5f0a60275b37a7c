"""The document store: an async facade over pymongo (``MONGO_URI``) or embedded montydb.

OSM keeps its state in MongoDB (``k8sclusters``, ``k8srepos``, ``nsrs``); kduflow reads cluster
credentials from there and writes KDU status into ``nsrs`` through this class. Without
``MONGO_URI`` it uses montydb, an embedded engine speaking the same query/update language over
SQLite files under ``<state_dir>/store``.

Every call runs on a dedicated thread pool owned by the store, so no database call blocks the
event loop:

- montydb: exactly one thread. A montydb client must stay on the thread that created it (sqlite3
  refuses cross-thread use), and its updates are read-modify-write of the whole document, so one
  thread also serialises concurrent updates of one document (nothing is lost). Several processes
  (worker processes on one machine sharing ``<state_dir>/store``) are serialised by an advisory
  file lock (``flock`` on ``<state_dir>/store/kduflow.lock``) held around each write, on the store's
  thread, for that one operation only; without it two processes updating one document lose
  updates. Reads take no lock: SQLite shows them a committed state.
- pymongo: a few threads and no file lock (pymongo is thread-safe and MongoDB applies each update
  atomically).

Errors of the driver (``pymongo.errors.PyMongoError``, e.g. ``ServerSelectionTimeoutError``) are
not translated: to Temporal they are ordinary, retryable activity failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import fcntl
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from kduflow.config import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long pymongo looks for a usable server before an operation fails (retryably). Short so a
#: MongoDB outage surfaces as a failed activity attempt instead of a 30 s hang per call.
SERVER_SELECTION_TIMEOUT_MS = 5000
PYMONGO_THREADS = 4
#: The advisory lock file of an embedded store, inside its directory.
LOCK_FILE = "kduflow.lock"


class StoreClosed(RuntimeError):
    """The store was closed; no further calls are possible."""


def mongo_client_factory(uri: str) -> Callable[[], Any]:
    """A factory for a lazily-connecting ``pymongo.MongoClient`` (no I/O until the first operation).

    ``serverSelectionTimeoutMS`` defaults to :data:`SERVER_SELECTION_TIMEOUT_MS` unless the URI sets it.
    """

    def factory() -> Any:
        from pymongo import MongoClient

        options = {key.lower() for key, _ in parse_qsl(urlsplit(uri).query)}
        kwargs: dict[str, Any] = {"connect": False}
        if "serverselectiontimeoutms" not in options:
            kwargs["serverSelectionTimeoutMS"] = SERVER_SELECTION_TIMEOUT_MS
        return MongoClient(uri, **kwargs)

    return factory


def monty_client_factory(repository: Path) -> Callable[[], Any]:
    """A factory for a montydb client on SQLite storage in ``repository`` (created, mode 0700)."""

    def factory() -> Any:
        from montydb import MontyClient, set_storage

        repository.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not (repository / "monty.storage.cfg").exists():
            set_storage(str(repository), storage="sqlite")
        return MontyClient(str(repository))

    return factory


class FileLock:
    """An exclusive advisory lock (``flock``) on one file, shared by every process that opens it.

    Used from the store's single thread only; the file is opened on first use (mode 0600, its
    directory created with mode 0700) and kept open until :meth:`close`. ``flock`` locks belong to
    the open file description, so two stores of one process on one directory also exclude each
    other. The lock is released when the holder's process dies, so a crashed worker leaves none.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for the duration of the block (blocks the calling thread until free)."""
        if self._fd is None:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Store:
    """Async MongoDB-like store. Build with :meth:`open`; close with :meth:`close`.

    Documents passed in are copied before the driver sees them (drivers add ``_id`` in place) and
    documents returned are the driver's fresh dicts, so callers never share mutable state with it.
    """

    def __init__(self, client_factory: Callable[[], Any], db_name: str, *, threads: int = 1,
                 description: str = "", lock_path: Path | None = None) -> None:
        """Create the executor and the client on its thread (the factory runs on that thread).

        ``lock_path``: an advisory lock file held around each write (and around the factory, which
        may create the storage); for a store shared by processes that do not serialise writes
        themselves (montydb). Only meaningful with ``threads=1``.

        Raises:
            Whatever the factory raises (e.g. ``pymongo.errors.ConfigurationError`` for a bad URI).
        """
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kduflow-store")
        self._closed = False
        self._close_lock = threading.Lock()
        self.description = description
        self._file_lock = FileLock(lock_path) if lock_path is not None else None
        try:
            self._client = self._executor.submit(self._locked(client_factory)).result()
            self._db = self._client[db_name]
        except BaseException:
            self._executor.shutdown(wait=False)
            if self._file_lock is not None:
                self._file_lock.close()
            raise

    @classmethod
    def open(cls, settings: Settings, *, client_factory: Callable[[], Any] | None = None) -> Store:
        """Open the store ``settings`` describe: pymongo when ``mongo_uri`` is set, else montydb.

        ``client_factory`` replaces the client construction (tests, other drivers); it is called
        once, on the store's thread, and must return an object indexable as ``client[db][coll]``
        with pymongo's collection methods.
        """
        if settings.mongo_uri:
            factory = client_factory or mongo_client_factory(settings.mongo_uri)
            return cls(factory, settings.mongo_db, threads=PYMONGO_THREADS, description="mongodb")
        repository = Path(settings.state_dir) / "store"
        factory = client_factory or monty_client_factory(repository)
        return cls(factory, settings.mongo_db, threads=1, description=f"embedded:{repository}",
                   lock_path=repository / LOCK_FILE)

    @property
    def client(self) -> Any:
        """The driver client (use only through :meth:`run`, on the store's thread)."""
        return self._client

    def _locked(self, fn: Callable[[], T]) -> Callable[[], T]:
        """``fn`` holding the store's file lock while it runs (``fn`` itself without one)."""
        lock = self._file_lock
        if lock is None:
            return fn

        def locked() -> T:
            with lock.held():
                return fn()

        return locked

    async def run(self, fn: Callable[..., T], *args: Any, write: bool = False) -> T:
        """Run ``fn(*args)`` on the store's thread and await its result.

        ``write=True``: ``fn`` writes (or reads, decides and writes); on an embedded store it runs
        holding the inter-process file lock.

        Raises:
            StoreClosed: the store is closed.
        """
        if self._closed:
            raise StoreClosed("the store is closed")
        loop = asyncio.get_running_loop()
        call: Callable[[], T] = functools.partial(fn, *args)
        if write:
            call = self._locked(call)
        try:
            return await loop.run_in_executor(self._executor, call)
        except RuntimeError as err:
            # Executor shut down between the check above and the submit.
            if self._closed:
                raise StoreClosed("the store is closed") from err
            raise

    async def find_one(self, collection: str, filter: dict, projection: dict | None = None) -> dict | None:
        """The first document matching ``filter`` (only the ``projection`` fields when given), or ``None``."""
        filter, projection = copy.deepcopy(filter), copy.deepcopy(projection)
        return await self.run(lambda: self._db[collection].find_one(filter, projection))

    async def find(self, collection: str, filter: dict) -> list[dict]:
        """All documents matching ``filter`` (materialised as a list on the store's thread)."""
        return await self.run(lambda: list(self._db[collection].find(copy.deepcopy(filter))))

    async def insert_one(self, collection: str, doc: dict) -> None:
        """Insert ``doc`` (a copy: the caller's dict gets no ``_id``).

        Raises:
            The driver's DuplicateKeyError when ``_id`` exists.
        """
        await self.run(lambda: self._db[collection].insert_one(copy.deepcopy(doc)), write=True)

    async def update_one(self, collection: str, filter: dict, update: dict, upsert: bool = False) -> int:
        """Apply ``update`` (operators: ``$set``, ``$unset``, ...) to the first match.

        Returns:
            The matched count (0 or 1); an upsert that inserted returns 0.
        """
        filter, update = copy.deepcopy(filter), copy.deepcopy(update)
        result = await self.run(
            lambda: self._db[collection].update_one(filter, update, upsert=upsert), write=True
        )
        return int(result.matched_count)

    async def delete_one(self, collection: str, filter: dict) -> int:
        """Delete the first match; returns the deleted count (0 or 1)."""
        result = await self.run(lambda: self._db[collection].delete_one(copy.deepcopy(filter)), write=True)
        return int(result.deleted_count)

    async def ping(self) -> None:
        """One read that reaches the database (a ``find_one`` by an ``_id`` no document has): for
        MongoDB it needs a server, authentication and read rights, as the activities do.

        Raises:
            StoreClosed: the store is closed.
            The driver's error when the database cannot be reached.
        """
        await self.run(lambda: self._db["k8sclusters"].find_one({"_id": "kduflow-health-probe"}, {"_id": 1}))

    async def close(self) -> None:
        """Close the client (on its thread) and stop the thread. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._client.close)
        except Exception:  # closing must not fail a shutdown; the process is going away anyway
            log.warning("closing the store client failed", exc_info=True)
        if self._file_lock is not None:
            # On the store's thread, after every queued call (the lock's only user) has run.
            await loop.run_in_executor(self._executor, self._file_lock.close)
        # Queued calls already submitted finish first; shutdown joins the (idle) thread.
        await asyncio.to_thread(self._executor.shutdown, True)
