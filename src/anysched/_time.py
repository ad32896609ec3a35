"""Time helpers: every datetime in anysched is timezone-aware UTC."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TypeAlias

Seconds: TypeAlias = "float | timedelta"
"""A duration given as seconds or as a ``timedelta``."""


def utc_now() -> datetime:
    """The current wall-clock time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def require_utc(name: str, value: datetime) -> datetime:
    """Return ``value`` converted to UTC; a naive datetime is a ``ValueError`` naming ``name``.

    A naive datetime is refused rather than guessed at: local time and UTC differ by hours,
    and a job due at the wrong hour is a silent wrong result.
    """
    if type(value) is datetime and value.tzinfo is timezone.utc:  # the common case, first and fast
        return value
    if not isinstance(value, datetime):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}")
    offset = value.utcoffset()
    if offset is None:
        raise ValueError(
            f"{name} must be timezone-aware, got a naive datetime ({value!r}): make aware ones with "
            "datetime.now(timezone.utc), or attach the zone a naive one is in, e.g. "
            "value.replace(tzinfo=timezone.utc) (from datetime import timezone)"
        )
    if offset or value.tzinfo is not timezone.utc:
        value = value.astimezone(timezone.utc)
    return value


def to_seconds(name: str, value: Seconds, *, allow_zero: bool = False) -> float:
    """Return a duration in seconds; a wrong type or a negative (or zero) value names ``name``."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):  # pyright: ignore[reportUnnecessaryIsInstance]
        seconds = float(value)
    else:
        raise TypeError(f"{name} must be seconds (a number) or a timedelta, not {type(value).__name__}")
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return seconds
