"""A schedule as a JSON-compatible document, for the stores that keep schedules.

The payload is encoded by the store's own codec (the caller's ``payload_data`` and ``payload``);
everything else maps here, field by field, once for every store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from ._schedule import Schedule

T = TypeVar("T")

logger = logging.getLogger("anysched")

_US = timedelta(microseconds=1)


def schedule_document(schedule: Schedule[Any], payload_data: Any) -> dict[str, Any]:
    """``schedule`` as a document of JSON types, its payload already encoded as ``payload_data``."""
    return {
        "id": schedule.id,
        "payload": payload_data,
        "cron": schedule.cron,
        "zone": schedule.zone,
        "every_us": None if schedule.every is None else schedule.every // _US,
        "start_us": _maybe_us(schedule.start),
        "end_us": _maybe_us(schedule.end),
        "jitter_us": schedule.jitter // _US,
        "max_attempts": schedule.max_attempts,
        "timeout": schedule.timeout,
        "misfire": schedule.misfire,
        "misfire_grace_us": schedule.misfire_grace // _US,
        "catch_up_limit": schedule.catch_up_limit,
        "paused": schedule.paused,
    }


def schedule_from_document(document: dict[str, Any], payload: T) -> Schedule[T]:
    """The schedule a document holds, with its payload already decoded.

    :raises ValueError: the document does not hold a valid schedule
    """
    try:
        return Schedule(
            id=document["id"],
            payload=payload,
            cron=document["cron"],
            zone=document["zone"],
            every=None if document["every_us"] is None else document["every_us"] * _US,
            start=_maybe_datetime(document["start_us"]),
            end=_maybe_datetime(document["end_us"]),
            jitter=document["jitter_us"] * _US,
            max_attempts=document["max_attempts"],
            timeout=document["timeout"],
            misfire=document["misfire"],
            misfire_grace=document["misfire_grace_us"] * _US,
            catch_up_limit=document["catch_up_limit"],
            paused=document["paused"],
        )
    except (KeyError, TypeError) as error:
        raise ValueError(f"not a stored schedule: {type(error).__name__} {error}") from None


def schedules_from_documents(documents: Iterable[dict[str, Any]], decode: Callable[[Any], T]) -> list[Schedule[T]]:
    """The schedules ``documents`` hold, their payloads decoded by ``decode``.

    A document that does not hold a valid schedule (a payload of a type the code has since
    changed, say) is logged by its id and left out: it must not stop every other schedule.
    Messages name no payload value (the codec's errors do not quote it).
    """
    found: list[Schedule[T]] = []
    for document in documents:
        try:
            found.append(schedule_from_document(document, decode(document["payload"])))
        except (KeyError, ValueError) as error:  # PayloadError is a ValueError
            logger.error(
                "schedule %s: stored, but it cannot be read, so it is not ticked: %s: %s",
                document.get("id"),
                type(error).__name__,
                error,
            )
    return found


def _maybe_us(moment: datetime | None) -> int | None:
    return None if moment is None else (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // _US


def _maybe_datetime(value: int | None) -> datetime | None:
    return None if value is None else datetime(1970, 1, 1, tzinfo=timezone.utc) + value * _US
