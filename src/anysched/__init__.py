"""anysched: a job scheduler for trio and asyncio programs, on anyio.

Put jobs (a typed payload and a due time) in a store; a scheduler embedded in your program
leases due jobs and runs them concurrently on an async handler::

    async with open_scheduler(store, handler, workers=10) as scheduler:
        await scheduler.add_job(Job.create(payload))
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version
from types import FunctionType as _FunctionType

from ._exceptions import AnyschedError as AnyschedError
from ._exceptions import DuplicateJobError as DuplicateJobError
from ._exceptions import FailJob as FailJob
from ._exceptions import JobNotFoundError as JobNotFoundError
from ._exceptions import JobTimeoutError as JobTimeoutError
from ._exceptions import LeaseLostError as LeaseLostError
from ._exceptions import PayloadError as PayloadError
from ._exceptions import RetryJob as RetryJob
from ._exceptions import TransientStoreError as TransientStoreError
from ._exceptions import UndecodableDocumentError as UndecodableDocumentError
from ._executor import Handler as Handler
from ._job import Job as Job
from ._job import JobStatus as JobStatus
from ._retry import TRANSIENT_ERRORS as TRANSIENT_ERRORS
from ._retry import Backoff as Backoff
from ._retry import RetryPolicy as RetryPolicy
from ._schedule import Schedule as Schedule
from ._schedule import ScheduledSlot as ScheduledSlot
from ._schedule import slot_of as slot_of
from ._scheduler import Scheduler as Scheduler
from ._scheduler import SchedulerStatistics as SchedulerStatistics
from ._scheduler import open_scheduler as open_scheduler
from ._signals import shutdown_on_signals as shutdown_on_signals
from ._store import InspectsJobs as InspectsJobs
from ._store import JobStore as JobStore
from ._store import KnowsNextDueTime as KnowsNextDueTime
from ._store import SendsWakeUps as SendsWakeUps
from ._store import StoresSchedules as StoresSchedules
from .stores.memory import MemoryStore as MemoryStore

try:
    __version__: str = _version("anysched")
    """The installed distribution's version (PEP 440), as ``pip show anysched`` gives it."""
except _PackageNotFoundError:  # pragma: no cover -- imported from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = (
    "TRANSIENT_ERRORS",
    "AnyschedError",
    "Backoff",
    "DuplicateJobError",
    "FailJob",
    "Handler",
    "InspectsJobs",
    "Job",
    "JobNotFoundError",
    "JobStatus",
    "JobStore",
    "JobTimeoutError",
    "KnowsNextDueTime",
    "LeaseLostError",
    "MemoryStore",
    "PayloadError",
    "RetryJob",
    "RetryPolicy",
    "Schedule",
    "ScheduledSlot",
    "Scheduler",
    "SchedulerStatistics",
    "SendsWakeUps",
    "StoresSchedules",
    "TransientStoreError",
    "UndecodableDocumentError",
    "open_scheduler",
    "shutdown_on_signals",
    "slot_of",
)


def _fixup_module_metadata() -> None:
    """Make each public class and function defined in a private module report ``anysched`` as its
    module (as trio's ``fixup_module_metadata`` does): ``anysched.FailJob: …`` in tracebacks and in a
    job's ``last_error``, ``<class 'anysched.Job'>`` in reprs, and pickles that name the public path.

    Only ``__module__`` changes: names stay (``open_scheduler`` is ``Scheduler``, and is named so), and
    what is neither a class nor a function (the ``Handler`` alias, the ``TRANSIENT_ERRORS`` tuple) is
    left alone. A class re-exported from a public module (``MemoryStore``) keeps that module.
    """
    namespace = globals()
    for name in __all__:
        obj = namespace[name]
        if isinstance(obj, (type, _FunctionType)):
            module: str = obj.__module__
            if module.startswith(f"{__name__}._"):
                obj.__module__ = __name__


_fixup_module_metadata()
del _fixup_module_metadata
