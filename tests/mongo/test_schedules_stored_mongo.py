"""Schedules kept in MongoDB: the stored-schedule tests of ``tests/schedules/test_stored.py`` on a
MongoStore, with every driver flavour (and the backend it runs on)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from anysched.stores.mongo import MongoStore

sys.path.insert(0, str(Path(__file__).parent.parent / "schedules"))
from test_stored import (
    test_a_schedule_added_paused_changed_and_removed_elsewhere_is_followed as test_followed_on_mongo,
)
from test_stored import (
    test_changing_a_schedule_never_makes_a_second_job_for_a_slot as test_no_second_job_on_mongo,
)
from test_stored import (
    test_declared_schedules_are_put_into_the_store_at_start as test_declared_put_on_mongo,
)
from test_stored import test_put_list_remove_and_the_marker as test_put_list_remove_on_mongo

pytestmark = pytest.mark.anyio

__all__ = [
    "test_declared_put_on_mongo",
    "test_followed_on_mongo",
    "test_no_second_job_on_mongo",
    "test_put_list_remove_on_mongo",
]


@pytest.fixture
def stores(collection: Any) -> tuple[MongoStore[str], MongoStore[str]]:
    """Two handles on one collection: the scheduler's, and another process's stand-in."""
    return MongoStore(collection, str), MongoStore(collection, str)
