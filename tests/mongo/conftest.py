"""Fixtures for the MongoStore tests (the machinery is in ``mongo_support``).

These tests do real I/O (sockets, worker threads), so they run without trio's mock clock
and bound every wait with ``anyio.fail_after``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

pytest.importorskip("pymongo", reason="the Mongo tests need anysched[mongo]: pip install anysched[mongo]")

import pymongo
from mongo_support import (
    CLIENT_OPTIONS,
    DATABASE,
    FLAVOURS,
    URI_ENV,
    ClaimProbe,
    Server,
    launch_secantusd,
    open_collection,
    probe_claim_atomicity,
)

from anysched.stores.mongo import MongoStore
from anysched.testing import Payload


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    uri = os.environ.get(URI_ENV)
    if uri:
        yield Server(uri)
        with pymongo.MongoClient(uri, **CLIENT_OPTIONS) as client:
            client.drop_database(DATABASE)
        return
    server = launch_secantusd(tmp_path_factory.mktemp("secantusd"))
    try:
        yield server
    finally:
        server.stop()


PROBE_KEY = pytest.StashKey[ClaimProbe]()


@pytest.fixture(scope="session")
def claim_probe(mongo_server: Server, pytestconfig: pytest.Config) -> ClaimProbe:
    """Whether the server's claims are atomic per document, probed once (a few seconds) when a
    test that asserts claim exclusivity first needs to know. The result is printed at the end."""
    probe = probe_claim_atomicity(mongo_server.uri)
    pytestconfig.stash[PROBE_KEY] = probe
    return probe


@pytest.fixture(autouse=True)
def _chaos_needs_atomic_claims(request: pytest.FixtureRequest) -> None:
    """The chaos run counts two holders of one job as a violation: only an atomic server can show that."""
    if request.node.get_closest_marker("chaos") is not None:
        probe: ClaimProbe = request.getfixturevalue("claim_probe")
        probe.require_atomic("the chaos run's 'no two holders' check")


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    probe = config.stash.get(PROBE_KEY, None)
    if probe is not None:
        terminalreporter.write_sep("=", "MongoDB claim exclusivity")
        terminalreporter.write_line(probe.describe())
        if not probe.atomic:
            terminalreporter.write_line(
                f"Claim exclusivity was NOT verified on this server; run against a real MongoDB ({URI_ENV})."
            )


@pytest.fixture
def collection_name() -> str:
    return f"jobs_{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=list(FLAVOURS))
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def anyio_backend(flavour: str) -> str:
    """The backend ``flavour`` runs on, without trio's mock clock: these tests do real I/O."""
    return FLAVOURS[flavour]


@pytest.fixture
async def collection(flavour: str, mongo_server: Server, collection_name: str) -> AsyncIterator[Any]:
    async with open_collection(flavour, mongo_server.uri, collection_name) as opened:
        yield opened


@pytest.fixture
async def payload_store(collection: Any) -> MongoStore[Payload]:
    return MongoStore(collection, Payload)
