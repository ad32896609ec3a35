"""Helpers for the MongoStore tests: a server, clients of each driver flavour, fresh collections.

The server is the one at ``ANYSCHED_MONGODB_URL`` when that is set (a real MongoDB, say), else a
SecantusDB (``secantusd-py``, found on ``PATH`` or where ``python3 -m nox`` installs it,
``.nox/_secantusdb``) that the session starts on a free loopback port and stops at the end.
SecantusDB is GPL: it runs only as a separate process from its own virtualenv and is never imported.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NoReturn

import anyio
import anyio.lowlevel
import pymongo
import pymongo.errors
import pytest

URI_ENV = "ANYSCHED_MONGODB_URL"
BINARY_ENV = "ANYSCHED_SECANTUSD"  # internal: a secantusd-py elsewhere (nobody has to set it)
NOX_SECANTUSD = Path(__file__).resolve().parents[2] / ".nox" / "_secantusdb" / "bin" / "secantusd-py"
DATABASE = f"anysched_test_{uuid.uuid4().hex[:8]}"
CLIENT_OPTIONS: dict[str, Any] = {"tz_aware": True, "serverSelectionTimeoutMS": 10_000}

FLAVOURS = {
    "pymongo-async": "asyncio",
    "motor": "asyncio",
    "pymongo-sync": "asyncio",
    "pymongo-sync-trio": "trio",
}
"""Each driver flavour and the backend it runs on: the async drivers are asyncio only."""


def secantusd_binary() -> str | None:
    installed_by_nox = str(NOX_SECANTUSD) if NOX_SECANTUSD.exists() else None
    return os.environ.get(BINARY_ENV) or shutil.which("secantusd-py") or installed_by_nox


def no_server(reason: str) -> NoReturn:
    """Fail in CI (a missing server there is a broken setup), skip on a developer's machine."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A MongoDB-compatible server for the tests; ``process`` is ``None`` for ``ANYSCHED_MONGODB_URL``'s."""

    uri: str
    binary: str | None = None
    port: int = 0
    storage: str = ":memory:"
    log: Path | None = None
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def launch(cls, binary: str, log: Path, *, storage: str = ":memory:", durable: bool = False) -> Server:
        port = free_port()
        uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"
        extra = ("--sync-on-commit",) if durable else ()
        server = cls(uri, binary, port, storage, log, extra)
        server.start()
        return server

    def start(self, timeout: float = 30.0) -> None:
        assert self.binary is not None
        assert self.log is not None
        command = [self.binary, "--host", "127.0.0.1", "--port", str(self.port), "--storage-path", self.storage]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([*command, *self.extra_args], stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready(timeout)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL): no goodbye to the clients."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with pymongo.MongoClient[dict[str, Any]](
            self.uri, serverSelectionTimeoutMS=250, connectTimeoutMS=250
        ) as client:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"secantusd-py exited with {self.process.returncode}; see {self.log}")
                try:
                    client.admin.command("ping")
                    return
                except pymongo.errors.PyMongoError:
                    if time.monotonic() > deadline:
                        self.kill()
                        raise RuntimeError(f"secantusd-py did not answer within {timeout}s; see {self.log}") from None


def launch_secantusd(tmp: Path, *, storage: str = ":memory:", durable: bool = False) -> Server:
    binary = secantusd_binary()
    if binary is None:
        no_server(
            f"no MongoDB-compatible server: set {URI_ENV} to a MongoDB, or run `python3 -m nox -s tests`, "
            f"which installs SecantusDB into {NOX_SECANTUSD.parent.parent}, or put its secantusd-py on PATH"
        )
    return Server.launch(binary, tmp / "secantusd.log", storage=storage, durable=durable)


@asynccontextmanager
async def open_collection(flavour: str, uri: str, name: str, **options: Any) -> AsyncGenerator[Any, None]:
    """A collection of ``name`` in the test database, through a fresh client of ``flavour``."""
    options = {**CLIENT_OPTIONS, **options}
    if flavour == "pymongo-async":
        async_client: pymongo.AsyncMongoClient[dict[str, Any]] = pymongo.AsyncMongoClient(uri, **options)
        try:
            yield async_client[DATABASE][name]
        finally:
            await async_client.close()
    elif flavour == "motor":
        from motor.motor_asyncio import AsyncIOMotorClient

        motor_client: AsyncIOMotorClient[dict[str, Any]] = AsyncIOMotorClient(uri, **options)
        try:
            yield motor_client[DATABASE][name]
        finally:
            motor_client.close()
    else:
        sync_client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(uri, **options)
        try:
            yield sync_client[DATABASE][name]
        finally:
            await anyio.to_thread.run_sync(sync_client.close)


# -- fault injection -------------------------------------------------------------------------------


class Injected(pymongo.errors.AutoReconnect):
    """The fault a ``FaultyDriver`` raises: a transient driver error, as a dropped connection is."""


class FaultyDriver:
    """Wraps a MongoStore's driver (``store._driver``) and injects one fault into one call.

    The ``nth`` call of ``method`` for which ``matching(*args)`` holds runs ``fault`` instead
    of returning: before the real call (the request never reached the server) or, with
    ``after_call``, after it (the server applied it and the reply was lost).
    """

    def __init__(
        self,
        inner: Any,
        method: str,
        fault: Callable[[], Awaitable[None]],
        *,
        nth: int = 1,
        after_call: bool = False,
        matching: Callable[..., bool] = lambda *args: True,
    ) -> None:
        self.inner = inner
        self.method = method
        self.fault = fault
        self.nth = nth
        self.after_call = after_call
        self.matching = matching
        self.seen = 0
        self.injected = False

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if name != self.method:
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.injected or not self.matching(*args):
                return await target(*args, **kwargs)
            self.seen += 1
            if self.seen < self.nth:
                return await target(*args, **kwargs)
            if self.after_call:
                await target(*args, **kwargs)
            self.injected = True
            await self.fault()
            raise AssertionError("the fault did not raise")

        return call


async def raise_injected() -> None:
    raise Injected("injected fault")


def cancelling(scope: anyio.CancelScope) -> Callable[[], Awaitable[None]]:
    """A fault that cancels ``scope`` from inside the call, as a shutdown or a timeout would."""

    async def fault() -> None:
        scope.cancel()
        await anyio.lowlevel.checkpoint()

    return fault


# -- is the server atomic per document? -----------------------------------------------------------


PROBE_BUDGET = 2.0
"""Seconds the claim probe starts new rounds for (a round in flight then finishes, bounded too)."""
PROBE_INDEX = "anysched_claim"


@dataclass(frozen=True)
class ClaimProbe:
    """What racing claims on the server showed: whether two claimers ever won the same document."""

    server: str
    double_claims: int
    claims: int
    rounds: int
    seconds: float

    @property
    def atomic(self) -> bool:
        return self.double_claims == 0

    @property
    def is_secantusdb(self) -> bool:
        return self.server.startswith("SecantusDB")

    def describe(self) -> str:
        verdict = "no double claim seen, taken as atomic" if self.atomic else "NOT atomic per document"
        return (
            f"claim probe on {self.server}: {verdict}: {self.double_claims} document(s) claimed twice "
            f"in {self.claims} racing claims ({self.rounds} round(s), {self.seconds:.1f}s; "
            f"find_one_and_update and guarded update_many on the {PROBE_INDEX} index)"
        )

    def require_atomic(self, what: str) -> None:
        """Skip (loudly) what only an atomic server can show; fail if an unexpected server is not."""
        if self.atomic:
            return
        reason = (
            f"NOT VERIFIED: {what}. {self.describe()}. On this server such a test cannot fail for a "
            f"reason of the store's own; run the suite against a real MongoDB ({URI_ENV}) to verify it"
        )
        if not self.is_secantusdb:  # only SecantusDB's flaw is known; anything else is news
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


def probe_claim_atomicity(uri: str, *, budget: float = PROBE_BUDGET) -> ClaimProbe:
    """Race anysched-shaped claims with raw PyMongo over an indexed collection; count double claims.

    Alternates the two claim modes' shapes (``find_one_and_update``; find, guarded
    ``update_many``, read back by token) until a double claim shows or ``budget`` runs out.
    """
    begin = time.monotonic()
    clients = [pymongo.MongoClient(uri, **CLIENT_OPTIONS, socketTimeoutMS=10_000) for _ in range(4)]
    try:
        server = _server_name(clients[0])
        doubles = claims = rounds = 0
        while not doubles and (rounds < 2 or time.monotonic() - begin < budget):
            won = _race(clients, f"claim_probe_{uuid.uuid4().hex[:8]}", batch=rounds % 2 == 1)
            rounds += 1
            claims += sum(won.values())
            doubles += sum(1 for count in won.values() if count > 1)
        return ClaimProbe(server, doubles, claims, rounds, time.monotonic() - begin)
    finally:
        for client in clients:
            client.close()


def _server_name(client: pymongo.MongoClient[dict[str, Any]]) -> str:
    info = client.admin.command("buildInfo")
    if "secantusVersion" in info:
        return f"SecantusDB {info['secantusVersion']}"
    return f"MongoDB {info.get('version', '?')}"


PROBE_DOCUMENTS = 40
PROBE_NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)
PROBE_CLAIMABLE = {"status": "pending", "process_after": {"$lte": PROBE_NOW}, "claimable_at": {"$lte": PROBE_NOW}}


def _race(clients: list[pymongo.MongoClient[dict[str, Any]]], name: str, *, batch: bool) -> Counter[int]:
    """One round: two threads per client claim until nothing is left; how often each doc was won."""
    collection = clients[0][DATABASE][name]
    collection.create_index([("status", 1), ("process_after", 1), ("claimable_at", 1)], name=PROBE_INDEX)
    due = [PROBE_NOW - timedelta(milliseconds=n) for n in range(PROBE_DOCUMENTS)]
    collection.insert_many(
        [{"_id": n, "status": "pending", "process_after": t, "claimable_at": t} for n, t in enumerate(due)]
    )
    won: Counter[int] = Counter()
    lock = threading.Lock()
    racers = [client[DATABASE][name] for client in clients for _ in range(2)]
    start = threading.Barrier(len(racers))

    def race(mine: Any) -> None:
        start.wait(timeout=10)
        while ids := (_claim_batch(mine) if batch else _claim_one(mine)):
            with lock:
                won.update(ids)

    threads = [threading.Thread(target=race, args=(racer,), daemon=True) for racer in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    collection.drop()
    return won


def _claimed_by(token: str) -> dict[str, Any]:
    until = PROBE_NOW + timedelta(hours=1)
    return {"$set": {"visible_after": until, "claimable_at": until, "lease": token}, "$inc": {"attempts": 1}}


def _claim_one(collection: Any) -> list[int]:
    found = collection.find_one_and_update(
        PROBE_CLAIMABLE, _claimed_by(uuid.uuid4().hex), sort=[("process_after", 1)], return_document=True
    )
    return [] if found is None else [found["_id"]]


def _claim_batch(collection: Any) -> list[int]:
    candidates = [doc["_id"] for doc in collection.find(PROBE_CLAIMABLE, {"_id": 1}, limit=4)]
    if not candidates:
        return []
    token = uuid.uuid4().hex
    collection.update_many({"_id": {"$in": candidates}, **PROBE_CLAIMABLE}, _claimed_by(token))
    return [doc["_id"] for doc in collection.find({"_id": {"$in": candidates}, "lease": token}, {"_id": 1})]
