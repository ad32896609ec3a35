"""Each database store maps Job's fields by name in one place: that map covers every field."""

from __future__ import annotations

import dataclasses

import pytest

from anysched import Job

JOB_FIELDS = {field.name for field in dataclasses.fields(Job)}


def test_sqlite_maps_every_job_field() -> None:
    from anysched.stores import sqlite

    assert {"payload", *sqlite._FIELDS} == JOB_FIELDS  # pyright: ignore[reportPrivateUsage]


def test_mongo_maps_every_job_field() -> None:
    pytest.importorskip("pymongo")
    from anysched.stores import mongo

    assert {"payload", *mongo._FIELDS} == JOB_FIELDS  # pyright: ignore[reportPrivateUsage]
