"""MongoStore: jobs in a MongoDB collection, shared by any number of processes and hosts.

Works with a collection from PyMongo's async API (``pymongo.AsyncMongoClient``), from Motor
(``motor.motor_asyncio.AsyncIOMotorClient``) or from sync PyMongo (``pymongo.MongoClient``,
whose calls run in worker threads, so it works on trio too). The store talks to all three
through one small adapter, so every query below is written once.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, Protocol, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread

try:
    from bson.errors import InvalidDocument
    from pymongo import ReturnDocument
    from pymongo.asynchronous.collection import AsyncCollection
    from pymongo.collection import Collection
    from pymongo.errors import (
        ConnectionFailure,
        DuplicateKeyError,
        ExecutionTimeout,
        OperationFailure,
        PyMongoError,
        WriteConcernError,
    )
except ImportError as _missing:  # pragma: no cover -- tested in a subprocess without pymongo
    raise ImportError(
        "anysched.stores.mongo needs PyMongo >= 4.13: pip install anysched[mongo] (anysched[motor] for Motor)"
    ) from _missing

from .._codec import PayloadCodec
from .._exceptions import (
    AnyschedError,
    DuplicateJobError,
    JobNotFoundError,
    PayloadError,
    TransientStoreError,
    UndecodableDocumentError,
)
from .._job import Job, JobStatus, new_lease_token
from .._schedule import Schedule, check_schedule
from .._schedule_document import schedule_document, schedules_from_documents
from .._store import check_claim_arguments as _check_claim_arguments
from .._store import check_job as _check_job
from .._store import check_list_arguments as _check_list_arguments
from .._store import refused_by_job as _refused_by_job
from .._store import undecodable_last_error as _undecodable_last_error
from .._store import update_refused as _update_refused
from .._time import Seconds, require_utc, to_seconds
from .._wake_ups import beside

if TYPE_CHECKING:
    from motor.motor_asyncio import AsyncIOMotorCollection

__all__ = (
    "CLAIM_INDEX",
    "NEXT_DUE_INDEX",
    "TTL_INDEX",
    "ChangeStreamsUnavailableError",
    "ClaimMode",
    "MongoStore",
    "UndecodableDocumentError",
)

T = TypeVar("T")
_Document = dict[str, Any]
ClaimMode = Literal["batch", "one_by_one"]
"""How :meth:`MongoStore.fetch_pending_jobs` claims: ``"batch"`` (three round trips for
any number of jobs) or ``"one_by_one"`` (one ``find_one_and_update`` per job)."""

_logger: logging.Logger = logging.getLogger("anysched")

CLAIM_INDEX: Final = "anysched_claim"
"""The name of the index claims use: ``{status, process_after, claimable_at}``."""
NEXT_DUE_INDEX: Final = "anysched_next_due"
"""The name of the index :meth:`MongoStore.next_due_time` uses: ``{status, claimable_at}``."""
TTL_INDEX: Final = "anysched_completed_ttl"
"""The name of the TTL index on completed jobs' ``processed_at``, created with ``completed_ttl``."""

_MAX_CLAIM_ROUNDS = 3
"""A batched claim that loses jobs to a concurrent claimer tries again at most this often."""
_HAND_BACK_TIMEOUT = 5.0
"""Seconds a claim that failed part-way may spend, shielded, handing back the jobs it won."""
_PURGE_BATCH = 500
"""Documents one :meth:`MongoStore.purge` step deletes at most: each step is one bounded ``delete_many``."""

_TRANSIENT_CODES = frozenset(
    {
        6,  # HostUnreachable
        7,  # HostNotFound
        24,  # LockTimeout
        46,  # LockBusy
        50,  # MaxTimeMSExpired
        89,  # NetworkTimeout
        91,  # ShutdownInProgress
        112,  # WriteConflict
        133,  # FailedToSatisfyReadPreference
        134,  # ReadConcernMajorityNotAvailableYet
        189,  # PrimarySteppedDown
        262,  # ExceededTimeLimit
        9001,  # SocketException
        10107,  # NotWritablePrimary
        11600,  # InterruptedAtShutdown
        11602,  # InterruptedDueToReplStateChange
        13435,  # NotPrimaryNoSecondaryOk
        13436,  # NotPrimaryOrSecondary
    }
)
"""Server error codes that mean "try again later" (the drivers' retryable-error list)."""

_TRANSIENT_LABELS = ("RetryableWriteError", "TransientTransactionError")
_NO_CHANGE_STREAMS = frozenset({40573})
"""``Location40573``: "The $changeStream stage is only supported on replica sets" (a standalone server)."""
_WATCH_WAIT_MS = 200
"""How long a threaded change stream's ``try_next`` waits for a change: the thread checks its stop
flag that often (a cancelled block abandons the thread at once; it ends within this)."""
_WAKING_CHANGES: Final[list[_Document]] = [
    {
        "$match": {
            "$or": [
                {"operationType": {"$in": ["insert", "replace"]}},
                # A lease that ends without an outcome (a release, a retry); not a claim or a
                # renewal (they set visible_after), not a job that finished.
                {
                    "operationType": "update",
                    "updateDescription.updatedFields.visible_after": {"$type": "null"},
                    "updateDescription.updatedFields.status": {"$nin": ["completed", "failed"]},
                },
            ]
        }
    },
    {"$project": {"_id": 1}},  # the resume token only: no document travels
]
"""The changes that may make a job claimable: the change stream's filter, run by the server."""


class ChangeStreamsUnavailableError(AnyschedError, RuntimeError):
    """The MongoDB server has no change streams (a standalone server: they need a replica set),
    so :meth:`MongoStore.wake_ups` cannot listen; the scheduler polls instead."""

    def __init__(self) -> None:
        super().__init__(
            "this MongoDB server does not support change streams (they need a replica set or a sharded "
            "cluster): no wake-ups, the scheduler polls every fetch_interval"
        )


# -- errors ------------------------------------------------------------------------------------


def _is_transient_driver_error(error: PyMongoError) -> bool:
    """Whether a driver error may go away by itself: network trouble, timeouts, elections."""
    if isinstance(error, (ConnectionFailure, ExecutionTimeout, WriteConcernError)) or error.timeout:
        return True
    if any(error.has_error_label(label) for label in _TRANSIENT_LABELS):
        return True
    return isinstance(error, OperationFailure) and error.code in _TRANSIENT_CODES


def _describe(error: PyMongoError) -> str:
    """The error's class and code, never its message: messages can name hosts and users."""
    code = getattr(error, "code", None)
    details: Mapping[str, Any] | None = error.details if isinstance(error, OperationFailure) else None
    name = None if details is None else details.get("codeName")
    return type(error).__name__ + ("" if code is None else f" (code {code}{'' if name is None else f', {name}'})")


@contextmanager
def _translated(operation: str) -> Generator[None]:
    """Raise transient driver errors as :class:`~anysched.TransientStoreError`; let the rest through,
    a server's refusal without its words."""
    try:
        yield
    except PyMongoError as error:
        if _is_transient_driver_error(error):
            raise TransientStoreError(f"MongoDB {operation} failed: {_describe(error)}") from error
        if isinstance(error, OperationFailure):
            raise _without_details(error, operation) from None
        raise


def _without_details(error: OperationFailure, operation: str) -> OperationFailure:
    """The same class and code, without the server's message and details: they can quote the
    document (a failed validation's ``consideredValue``, a duplicate key's value)."""
    message = f"MongoDB {operation} failed: {_describe(error)}"
    try:
        return type(error)(message, error.code)
    except TypeError:  # a subclass with a constructor of its own
        return OperationFailure(message, error.code)


# -- one adapter over three drivers -------------------------------------------------------------


class _Driver(Protocol):
    """The handful of collection calls the store makes, as coroutines, whatever the driver."""

    def check_backend(self) -> None: ...
    async def insert_one(self, document: _Document) -> None: ...
    async def update_one(self, query: _Document, update: _Document) -> int: ...
    async def update_many(self, query: _Document, update: _Document) -> int: ...
    async def delete_many(self, query: _Document) -> int: ...
    async def claim_one(self, query: _Document, update: _Document, sort: list[tuple[str, int]]) -> _Document | None: ...
    async def find(
        self, query: _Document, *, sort: list[tuple[str, int]], limit: int = 0, projection: _Document | None = None
    ) -> list[_Document]: ...
    async def find_one(self, query: _Document) -> _Document | None: ...
    async def count(self, query: _Document) -> int: ...
    async def create_index(self, keys: list[tuple[str, int]], **options: Any) -> None: ...
    def listen(self, pipeline: list[_Document], wake: Callable[[], None]) -> AbstractAsyncContextManager[None]: ...
    async def upsert(self, query: _Document, update: _Document) -> None: ...


class _AwaitingDriver:
    """PyMongo's ``AsyncCollection`` and Motor's ``AsyncIOMotorCollection``: same API, asyncio only."""

    def __init__(self, collection: Any, kind: str) -> None:
        self._collection = collection
        self._kind = kind

    def check_backend(self) -> None:
        if not _running_on_asyncio():
            raise RuntimeError(
                f"MongoStore got a collection from {self._kind}, which runs only on asyncio; "
                "on trio, give it a collection from the sync client pymongo.MongoClient "
                "(its calls then run in worker threads)"
            )

    async def insert_one(self, document: _Document) -> None:
        await self._collection.insert_one(document)

    async def update_one(self, query: _Document, update: _Document) -> int:
        return int((await self._collection.update_one(query, update)).matched_count)

    async def update_many(self, query: _Document, update: _Document) -> int:
        return int((await self._collection.update_many(query, update)).modified_count)

    async def delete_many(self, query: _Document) -> int:
        return int((await self._collection.delete_many(query)).deleted_count)

    async def claim_one(self, query: _Document, update: _Document, sort: list[tuple[str, int]]) -> _Document | None:
        found: _Document | None = await self._collection.find_one_and_update(
            query, update, sort=sort, return_document=ReturnDocument.AFTER
        )
        return found

    async def find(
        self, query: _Document, *, sort: list[tuple[str, int]], limit: int = 0, projection: _Document | None = None
    ) -> list[_Document]:
        cursor = self._collection.find(query, projection, sort=sort, limit=limit)
        found: list[_Document] = await cursor.to_list(None)
        return found

    async def find_one(self, query: _Document) -> _Document | None:
        found: _Document | None = await self._collection.find_one(query)
        return found

    async def count(self, query: _Document) -> int:
        return int(await self._collection.count_documents(query))

    async def create_index(self, keys: list[tuple[str, int]], **options: Any) -> None:
        await self._collection.create_index(keys, **options)

    @asynccontextmanager
    async def listen(self, pipeline: list[_Document], wake: Callable[[], None]) -> AsyncGenerator[None]:
        if _is_motor_collection(self._collection):
            # Motor opens a change stream only at its first read, which waits for a change; its
            # sync PyMongo collection opens it at once (so entering fails at once) in a thread.
            async with _listen_in_thread(self._collection.delegate, pipeline, wake):
                yield
            return
        stream = await self._collection.watch(pipeline)  # opened here: a server without them refuses now
        async with stream:

            async def forward() -> None:
                async for _ in stream:
                    wake()
                raise _stream_ended()

            async with beside(forward):
                yield

    async def upsert(self, query: _Document, update: _Document) -> None:
        await self._collection.update_one(query, update, upsert=True)


class _ThreadedDriver:
    """Sync PyMongo's ``Collection``: each call runs in a worker thread, on any anyio backend.

    A cancelled call abandons its thread, as a cancelled async driver call abandons its
    request: the server may still apply it, which the lease protocol already allows for.
    """

    def __init__(self, collection: Collection[_Document]) -> None:
        self._collection = collection

    def check_backend(self) -> None:
        pass

    async def insert_one(self, document: _Document) -> None:
        await _in_thread(self._collection.insert_one, document)

    async def update_one(self, query: _Document, update: _Document) -> int:
        return (await _in_thread(self._collection.update_one, query, update)).matched_count

    async def update_many(self, query: _Document, update: _Document) -> int:
        return (await _in_thread(self._collection.update_many, query, update)).modified_count

    async def delete_many(self, query: _Document) -> int:
        return (await _in_thread(self._collection.delete_many, query)).deleted_count

    async def claim_one(self, query: _Document, update: _Document, sort: list[tuple[str, int]]) -> _Document | None:
        call = functools.partial(
            self._collection.find_one_and_update, query, update, sort=sort, return_document=ReturnDocument.AFTER
        )
        return await _in_thread(call)

    async def find(
        self, query: _Document, *, sort: list[tuple[str, int]], limit: int = 0, projection: _Document | None = None
    ) -> list[_Document]:
        return await _in_thread(lambda: list(self._collection.find(query, projection, sort=sort, limit=limit)))

    async def find_one(self, query: _Document) -> _Document | None:
        return await _in_thread(self._collection.find_one, query)

    async def count(self, query: _Document) -> int:
        return await _in_thread(self._collection.count_documents, query)

    async def create_index(self, keys: list[tuple[str, int]], **options: Any) -> None:
        await _in_thread(functools.partial(self._collection.create_index, keys, **options))

    async def upsert(self, query: _Document, update: _Document) -> None:
        await _in_thread(functools.partial(self._collection.update_one, query, update, upsert=True))

    def listen(self, pipeline: list[_Document], wake: Callable[[], None]) -> AbstractAsyncContextManager[None]:
        return _listen_in_thread(self._collection, pipeline, wake)


@asynccontextmanager
async def _listen_in_thread(
    collection: Collection[_Document], pipeline: list[_Document], wake: Callable[[], None]
) -> AsyncGenerator[None]:
    """A sync PyMongo change stream, read in a thread of its own that calls ``wake`` on the event loop.

    A cancelled block abandons the thread at once; it sees the stop flag within
    ``_WATCH_WAIT_MS`` and closes the stream itself (a cursor is used by one thread only).
    """
    stream = await _in_thread(functools.partial(collection.watch, pipeline, max_await_time_ms=_WATCH_WAIT_MS))
    stop = threading.Event()
    forward = functools.partial(_forward_changes, stream, stop, wake)
    read = functools.partial(
        anyio.to_thread.run_sync, forward, abandon_on_cancel=True, limiter=anyio.CapacityLimiter(1)
    )
    async with beside(read):
        try:
            yield
        finally:
            stop.set()


def _forward_changes(stream: Any, stop: threading.Event, wake: Callable[[], None]) -> None:
    with stream:
        while not stop.is_set():
            if stream.try_next() is None:
                if not stream.alive:
                    raise _stream_ended()
                continue
            if stop.is_set():
                return
            try:
                anyio.from_thread.run_sync(wake)
            except RuntimeError:  # the event loop is gone: nobody to wake
                return


def _stream_ended() -> TransientStoreError:
    return TransientStoreError("the MongoDB change stream ended (the collection was dropped or renamed?)")


R = TypeVar("R")


async def _in_thread(function: Callable[..., R], *args: Any) -> R:
    return await anyio.to_thread.run_sync(functools.partial(function, *args), abandon_on_cancel=True)


def _running_on_asyncio() -> bool:
    # anyio before 4.11 has no public "which backend is this"; its cancellation class tells.
    return anyio.get_cancelled_exc_class().__module__.partition(".")[0] == "asyncio"


def _driver_for(collection: object) -> _Driver:
    """The adapter for ``collection``, detected from its type."""
    if isinstance(collection, Collection):
        return _ThreadedDriver(collection)  # pyright: ignore[reportUnknownArgumentType]
    if isinstance(collection, AsyncCollection):
        return _AwaitingDriver(collection, "pymongo.AsyncMongoClient")
    if _is_motor_collection(collection):
        return _AwaitingDriver(collection, "Motor (AsyncIOMotorClient)")
    raise TypeError(
        "collection must be a collection of pymongo.MongoClient, pymongo.AsyncMongoClient or "
        f"motor's AsyncIOMotorClient, not {type(collection).__name__}"
    )


def _is_motor_collection(collection: object) -> bool:
    try:
        from motor.motor_asyncio import AsyncIOMotorCollection
    except ImportError:
        return False
    return isinstance(collection, AsyncIOMotorCollection)


_SCHEDULES_MARKER: _Document = {"_id": {"anysched": "schedules_marker"}}
"""The change marker's document: an ``_id`` no schedule (whose ``_id`` is its string id) can have."""


# -- the store -----------------------------------------------------------------------------------


class MongoStore(Generic[T]):
    """A job store in one MongoDB collection: atomic, fenced claims across processes and hosts.

    Each job is one document: its id as ``_id``, the payload as a nested document (through
    a pydantic ``TypeAdapter`` for ``payload_type``), times as BSON dates (millisecond
    precision; they come back timezone-aware UTC whether or not the client was created
    with ``tz_aware=True``), and a derived ``claimable_at`` (when a pending job may next be
    claimed) that keeps the claim and next-due queries on indexes.

    The store creates its indexes on first use (or call :meth:`ensure_indexes`):
    ``{status, process_after, claimable_at}`` for claims, ``{status, claimable_at}`` for the
    next due time and, with ``completed_ttl``, a TTL index on ``processed_at`` that lets
    the server delete completed jobs that old (failed jobs are kept).

    :param collection: a collection of ``pymongo.AsyncMongoClient`` or Motor's
        ``AsyncIOMotorClient`` (asyncio only), or of ``pymongo.MongoClient`` (any backend)
    :param payload_type: the payload's type: a dataclass, ``TypedDict``, pydantic model…
    :param claim: ``"batch"`` (default: find candidates, claim them with one guarded
        ``update_many`` under a fresh lease token, read back what was won) or
        ``"one_by_one"`` (one ``find_one_and_update`` per job)
    :param completed_ttl: if set, completed jobs are deleted by the server this long after
        ``processed_at`` (MongoDB's TTL monitor runs about once a minute)
    :param create_indexes: create the indexes on first use (turn off when an operator
        manages them)
    """

    def __init__(
        self,
        collection: Collection[Any] | AsyncCollection[Any] | AsyncIOMotorCollection[Any],
        payload_type: type[T],
        *,
        claim: ClaimMode = "batch",
        completed_ttl: Seconds | None = None,
        create_indexes: bool = True,
    ) -> None:
        self._driver = _driver_for(collection)
        # Schedules live beside the jobs, in "<collection>_schedules" (see StoresSchedules).
        self._schedules = _driver_for(collection.database[f"{collection.name}_schedules"])
        self._codec = PayloadCodec[T](payload_type)
        if claim not in ("batch", "one_by_one"):
            raise ValueError(f"claim must be 'batch' or 'one_by_one', got {claim!r}")
        self._claim_mode: ClaimMode = claim
        self._ttl = None if completed_ttl is None else to_seconds("completed_ttl", completed_ttl)
        self._indexes_ready = not create_indexes

    # -- the store contract ------------------------------------------------------------------

    async def fetch_pending_jobs(self, now: datetime, limit: int, visibility_timeout: timedelta) -> list[Job[T]]:
        """Lease up to ``limit`` due jobs, oldest due first (see :class:`~anysched.JobStore`)."""
        now = require_utc("now", now)
        _check_claim_arguments(limit, visibility_timeout)
        await self._ready()
        if limit == 0:
            return []
        claim = _Claim(now, now + visibility_timeout)
        try:
            with _translated("claim"):
                if self._claim_mode == "batch":
                    documents = await self._claim_batch(claim, limit)
                else:
                    documents = await self._claim_one_by_one(claim, limit)
            return await self._decode_claimed(documents, now)
        except BaseException:
            # Whatever was won under this claim's tokens would otherwise stay leased to nobody
            # until the lease ends, and count an attempt that never ran.
            await self._hand_back(claim)
            raise

    async def update_job(self, job: Job[T]) -> None:
        """Write ``job`` while its lease is held: the stored job is pending, leased and carries ``job.lease``.

        See :class:`~anysched.JobStore` and :meth:`~anysched.Job.accepts_write_fenced_by`.
        """
        _check_job(job)
        document = self._document(job)
        del document["_id"]
        await self._ready()
        with _translated("update_job"):
            matched = 0
            if job.lease is not None:  # a None lease must not match a stored job that has none
                matched = await self._driver.update_one(_fenced(job.id, job.lease), {"$set": document})
            if matched == 0:
                await self._raise_why_unmatched(job.id)

    async def add_job(self, job: Job[T]) -> None:
        """Insert ``job``; an existing id raises :class:`~anysched.DuplicateJobError`.

        :raises PayloadError: the payload does not fit ``payload_type`` (nothing is stored)
        """
        _check_job(job)
        document = self._document(job)
        await self._ready()
        with _translated("add_job"):
            try:
                await self._driver.insert_one(document)
            except DuplicateKeyError:
                raise DuplicateJobError(job.id) from None
            except (InvalidDocument, OverflowError) as error:
                # bson's message may quote the value: name the error's type only, and do not chain it
                raise PayloadError(
                    f"job {job.id!r}: its payload cannot be stored as a BSON document ({type(error).__name__})"
                ) from None

    async def next_due_time(self) -> datetime | None:
        """The earliest moment a pending job becomes claimable, or ``None`` when none is pending."""
        await self._ready()
        with _translated("next_due_time"):
            found = await self._driver.find(_PENDING, sort=[("claimable_at", 1)], limit=1)
        return _utc(found[0]["claimable_at"]) if found else None

    # -- wake-ups (anysched.SendsWakeUps) --------------------------------------------------------

    @asynccontextmanager
    async def wake_ups(self, wake: Callable[[], None]) -> AsyncGenerator[None]:
        """Call ``wake`` when a job may have become claimable: a change stream on the collection
        that the server filters to inserts and to leases that end without an outcome (releases
        and retries); claims, renewals and finished jobs are not sent.

        Async drivers read the stream on the event loop; sync PyMongo (and Motor, through
        the sync collection it wraps) in a thread of its own.

        :raises ChangeStreamsUnavailableError: the server has no change streams (a standalone
            ``mongod``); the scheduler then polls, as without wake-ups
        """
        await self._ready()
        try:
            with _translated("watch"):
                async with self._driver.listen(_WAKING_CHANGES, wake):
                    yield
        except OperationFailure as error:
            if error.code in _NO_CHANGE_STREAMS:
                raise ChangeStreamsUnavailableError() from None
            raise

    # -- schedules (anysched.StoresSchedules), in the collection "<name>_schedules" ---------------

    async def put_schedule(self, schedule: Schedule[T]) -> None:
        """Store ``schedule``, replacing the one with its id (see :class:`~anysched.StoresSchedules`)."""
        document = schedule_document(check_schedule(schedule), self._codec.encode(schedule.payload))
        del document["id"]
        with _translated("put_schedule"):
            await self._schedules.upsert({"_id": schedule.id}, {"$set": document})
            await self._schedules.upsert(_SCHEDULES_MARKER, {"$inc": {"value": 1}})

    async def remove_schedule(self, schedule_id: str) -> bool:
        """Remove the schedule with this id; whether there was one."""
        with _translated("remove_schedule"):
            found = await self._schedules.delete_many({"_id": schedule_id}) > 0
            if found:
                await self._schedules.upsert(_SCHEDULES_MARKER, {"$inc": {"value": 1}})
        return found

    async def list_schedules(self) -> list[Schedule[T]]:
        """Every stored schedule, by id; one that does not decode is logged and left out."""
        with _translated("list_schedules"):
            documents = await self._schedules.find({"_id": {"$type": "string"}}, sort=[("_id", 1)])
        return schedules_from_documents(
            ({**document, "id": document["_id"]} for document in documents), self._codec.decode
        )

    async def schedules_marker(self) -> int:
        """A number that changes whenever a schedule is put or removed (one read by ``_id``)."""
        with _translated("schedules_marker"):
            found = await self._schedules.find_one(_SCHEDULES_MARKER)
        return 0 if found is None else int(found["value"])

    # -- beyond the contract -------------------------------------------------------------------

    async def ensure_indexes(self) -> None:
        """Create the store's indexes (idempotent; done on first use unless ``create_indexes=False``).

        :raises ValueError: a TTL index exists with another age (drop ``anysched_completed_ttl`` to change it)
        """
        self._driver.check_backend()
        with _translated("create_index"):
            await self._driver.create_index(
                [("status", 1), ("process_after", 1), ("claimable_at", 1)], name=CLAIM_INDEX
            )
            await self._driver.create_index([("status", 1), ("claimable_at", 1)], name=NEXT_DUE_INDEX)
            if self._ttl is not None:
                await self._create_ttl_index(self._ttl)
        self._indexes_ready = True

    # -- inspection (anysched.InspectsJobs) --------------------------------------------------

    async def get_job(self, job_id: str) -> Job[T]:
        """The stored job with this id.

        :raises JobNotFoundError: no such job
        :raises UndecodableDocumentError: its document cannot be decoded (a ``ValueError``)
        """
        await self._ready()
        with _translated("get_job"):
            found = await self._driver.find_one({"_id": job_id})
        if found is None:
            raise JobNotFoundError(job_id)
        return self._job(found)

    async def count(self, status: JobStatus | None = None) -> int:
        """How many jobs have ``status`` (all jobs when ``None``)."""
        await self._ready()
        query = {} if status is None else {"status": JobStatus(status).value}
        with _translated("count"):
            return await self._driver.count(query)

    async def list_jobs(
        self, status: JobStatus | None = None, *, limit: int = 100, after: str | None = None
    ) -> list[Job[T]]:
        """Up to ``limit`` jobs with ``status`` (all when ``None``) whose ids sort after ``after``, by id.

        :raises UndecodableDocumentError: a listed job's document cannot be decoded (a ``ValueError``)
        """
        status = _check_list_arguments(status, limit, after)
        query: _Document = {} if status is None else {"status": status.value}
        if after is not None:
            query["_id"] = {"$gt": after}
        await self._ready()
        with _translated("list_jobs"):
            found = await self._driver.find(query, sort=[("_id", 1)], limit=limit)
        return [self._job(document) for document in found]

    async def purge(self, *, completed_before: datetime) -> int:
        """Delete completed jobs processed before ``completed_before``; return how many.

        Pending and failed jobs are never purged. Each step finds at most a few hundred
        such jobs and deletes those still completed and old, so no one request runs long
        (``completed_ttl`` has the server delete them by itself).
        """
        cutoff = require_utc("completed_before", completed_before)
        old_completed: _Document = {"status": JobStatus.COMPLETED.value, "processed_at": {"$lt": cutoff}}
        await self._ready()
        deleted = 0
        while True:
            with _translated("purge"):
                found = await self._driver.find(
                    old_completed, sort=[("processed_at", 1)], limit=_PURGE_BATCH, projection={"_id": 1}
                )
                if found:
                    ids = [document["_id"] for document in found]
                    deleted += await self._driver.delete_many({"_id": {"$in": ids}, **old_completed})
            if len(found) < _PURGE_BATCH:
                return deleted

    # -- claims --------------------------------------------------------------------------------

    async def _claim_batch(self, claim: _Claim, limit: int) -> list[_Document]:
        """Claim with O(1) round trips: candidates, one guarded ``update_many``, read back.

        The guard repeats the claimable filter, so a job another caller claimed between
        our find and our update is not touched; each batch has its own lease token, and
        updates are fenced by ``_id`` and token together.
        """
        won: list[_Document] = []
        for _ in range(_MAX_CLAIM_ROUNDS):
            wanted = limit - len(won)
            candidates = await self._driver.find(
                _claimable(claim.now), sort=[("process_after", 1)], limit=wanted, projection={"_id": 1}
            )
            if not candidates:
                break
            ids = [candidate["_id"] for candidate in candidates]
            token = claim.new_token()  # recorded before the update: its reply may be lost after it applied
            query = {"_id": {"$in": ids}, **_claimable(claim.now)}
            round_won: list[_Document] = []
            if await self._driver.update_many(query, _claim_update(token, claim.lease_until)):
                round_won = await self._driver.find({"_id": {"$in": ids}, "lease": token}, sort=[("process_after", 1)])
            won += round_won
            claim.won = len(won)
            if len(round_won) == len(candidates) or len(won) == limit:
                break  # nothing lost to a concurrent claimer: no reason to look again
        return sorted(won, key=lambda document: document["process_after"])

    async def _claim_one_by_one(self, claim: _Claim, limit: int) -> list[_Document]:
        """Claim with one ``find_one_and_update`` per job, each under its own lease token."""
        won: list[_Document] = []
        while len(won) < limit:
            update = _claim_update(claim.new_token(), claim.lease_until)
            found = await self._driver.claim_one(_claimable(claim.now), update, [("process_after", 1)])
            if found is None:
                break
            won.append(found)
            claim.won = len(won)
        return won

    async def _hand_back(self, claim: _Claim) -> None:
        """Release every job still leased under ``claim``'s tokens, shielded and bounded.

        Matched by token, not by the documents read back: a claim whose reply was lost may
        have won jobs it never saw. They were claimable at ``claim.now``, so they are again.
        """
        if not claim.tokens:
            return
        handed_back: int | None = None
        with anyio.move_on_after(_HAND_BACK_TIMEOUT, shield=True):
            try:
                handed_back = await self._driver.update_many(claim.still_leased(), claim.release())
            except Exception as error:
                _log_not_handed_back(claim, _describe_any(error))
                return
        if handed_back is None:
            _log_not_handed_back(claim, f"no answer within {_HAND_BACK_TIMEOUT:g}s")
        elif handed_back:
            _logger.warning("a claim failed part-way; handed back the %d job(s) it had won", handed_back)

    async def _decode_claimed(self, documents: list[_Document], now: datetime) -> list[Job[T]]:
        """Jobs for the claimed documents; one that cannot be decoded is marked failed and skipped.

        Handing it back would make every fetch claim it again (a crash loop); a failed job
        with ``last_error`` is where an operator looks.
        """
        jobs: list[Job[T]] = []
        for document in documents:
            try:
                jobs.append(self._job(document))
            except UndecodableDocumentError as error:
                await self._fail_undecodable(document, now, error)
        return jobs

    async def _fail_undecodable(self, document: _Document, now: datetime, error: UndecodableDocumentError) -> None:
        # The error names the field and the error's type only: the stored value may be a secret.
        _logger.error("job %r: stored document cannot be decoded, marking it failed: %s", document["_id"], error)
        failed = {
            "status": JobStatus.FAILED.value,
            "processed_at": now,
            "visible_after": None,
            "claimable_at": None,
            "last_error": _undecodable_last_error(error),
        }
        with _translated("update_job (undecodable)"):
            await self._driver.update_one(_fenced(document["_id"], document["lease"]), {"$set": failed})

    # -- helpers -------------------------------------------------------------------------------

    async def _ready(self) -> None:
        if self._indexes_ready:
            self._driver.check_backend()
        else:
            await self.ensure_indexes()

    async def _create_ttl_index(self, ttl: float) -> None:
        try:
            await self._driver.create_index(
                [("processed_at", 1)],
                name=TTL_INDEX,
                expireAfterSeconds=int(ttl),
                partialFilterExpression={"status": JobStatus.COMPLETED.value},
            )
        except OperationFailure as error:
            if error.code not in (85, 86):  # IndexOptionsConflict, IndexKeySpecsConflict
                raise
            raise ValueError(
                f"the collection has a {TTL_INDEX} index with other options than completed_ttl={ttl:g}s; "
                "drop that index to change the age"
            ) from error

    async def _raise_why_unmatched(self, job_id: str) -> None:
        exists = await self._driver.find_one({"_id": job_id}) is not None
        raise _update_refused(job_id, exists=exists)

    def _document(self, job: Job[T]) -> _Document:
        """The document that stores ``job``: each field as ``_FIELDS`` maps it, and its ``claimable_at``."""
        document = {key: write(getattr(job, name)) for name, (key, write, _, _) in _FIELDS.items()}
        return {**document, "payload": self._codec.encode(job.payload), "claimable_at": job.claimable_at}

    def _job(self, document: Mapping[str, Any]) -> Job[T]:
        """The job ``document`` stores. :raises UndecodableDocumentError: naming the field, not its value"""
        with _decoding("payload"):
            payload = self._codec.decode(document["payload"])
        fields = {name: _read(document, key, read, default) for name, (key, _, read, default) in _FIELDS.items()}
        try:
            return Job(payload=payload, **fields)
        except (TypeError, ValueError) as error:  # Job's own checks quote the value: name the field
            raise UndecodableDocumentError(_refused_by_job(fields), error) from None


_PENDING: _Document = {"status": JobStatus.PENDING.value}
_LEASED: _Document = {"status": JobStatus.PENDING.value, "visible_after": {"$ne": None}}
"""A job whose lease is held: an outcome (finished, or ``visible_after`` cleared) ends it."""


def _claimable(now: datetime) -> _Document:
    """Pending, due and not leased (``claimable_at`` is the later of due time and lease end)."""
    return {"status": JobStatus.PENDING.value, "process_after": {"$lte": now}, "claimable_at": {"$lte": now}}


def _claim_update(token: str, lease_until: datetime) -> _Document:
    return {
        "$set": {"visible_after": lease_until, "claimable_at": lease_until, "lease": token},
        "$inc": {"attempts": 1},
    }


def _fenced(job_id: str, lease: str) -> _Document:
    """Only while the lease is held (``Job.accepts_write_fenced_by``): an outcome ends it, so a
    write sent before it with the same token (a renewal abandoned in a thread) cannot land after."""
    return {"_id": job_id, "lease": lease, **_LEASED}


@dataclass
class _Claim:
    """One ``fetch_pending_jobs`` call: its moment, its lease's end and every token it used."""

    now: datetime
    lease_until: datetime
    tokens: list[str] = field(default_factory=list[str])
    won: int = 0
    """Jobs known won (read back); a lost reply may have won more."""

    def new_token(self) -> str:
        token = new_lease_token()
        self.tokens.append(token)
        return token

    def still_leased(self) -> _Document:
        # claimable_at equals this claim's lease end on every job it won: the next-due index finds them
        return {"lease": {"$in": self.tokens}, "claimable_at": self.lease_until, **_LEASED}

    def release(self) -> _Document:
        return {"$set": {"visible_after": None, "claimable_at": self.now}, "$inc": {"attempts": -1}}


def _log_not_handed_back(claim: _Claim, why: str) -> None:
    _logger.error(
        "a claim failed part-way and could not hand back the job(s) it won (%d known): %s; "
        "they can be claimed again when their lease ends at %s",
        *(claim.won, why, claim.lease_until.isoformat()),
    )


def _describe_any(error: Exception) -> str:
    return _describe(error) if isinstance(error, PyMongoError) else type(error).__name__


def _utc(value: object) -> datetime | None:
    return None if value is None else _required_utc(value)


def _required_utc(value: object) -> datetime:
    """A stored date as aware UTC: naive ones (a client without ``tz_aware=True``) are UTC."""
    if not isinstance(value, datetime):
        raise TypeError(f"expected a BSON date, got {type(value).__name__}")
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


# -- decoding --------------------------------------------------------------------------------------


@contextmanager
def _decoding(field: str) -> Generator[None]:
    try:
        yield
    except (PayloadError, KeyError, TypeError, ValueError) as error:
        raise UndecodableDocumentError(field, error) from None


def _read(document: Mapping[str, Any], key: str, read: Callable[[Any], Any], default: object) -> Any:
    with _decoding(key):
        return read(document[key] if default is _REQUIRED else document.get(key, default))


def _as_is(value: object) -> object:
    return value


def _status_value(status: JobStatus) -> str:
    return status.value


_REQUIRED = object()
_FIELDS: dict[str, tuple[str, Callable[[Any], Any], Callable[[Any], Any], object]] = {
    "id": ("_id", _as_is, _as_is, _REQUIRED),
    "status": ("status", _status_value, JobStatus, _REQUIRED),
    "process_after": ("process_after", _as_is, _required_utc, _REQUIRED),
    "visible_after": ("visible_after", _as_is, _utc, None),
    "processed_at": ("processed_at", _as_is, _utc, None),
    "attempts": ("attempts", _as_is, _as_is, 0),
    "lease": ("lease", _as_is, _as_is, None),
    "last_error": ("last_error", _as_is, _as_is, None),
    "max_attempts": ("max_attempts", _as_is, _as_is, None),  # absent from documents written before 0.1
    "timeout": ("timeout", _as_is, _as_is, None),
}
"""The one map of Job attributes to document keys: every attribute but the payload (a nested
document through the codec), with its key, how its value is written (datetimes as BSON dates,
as they are), how it is read back, and its default when absent. Queries name the keys the
claim and the fence use (``status``, ``lease``, ``visible_after``…) directly."""
