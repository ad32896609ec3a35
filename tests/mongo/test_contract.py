"""The store contract suite against MongoStore, once per driver flavour and claim mode."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from mongo_support import ClaimProbe, Server, open_collection

from anysched.stores.mongo import ClaimMode, MongoStore
from anysched.testing import Payload, StoreContract

EXCLUSIVITY = ("concurrent", "never_share", "exclusiv")
"""Words in the name of a contract test that asserts two claimers never get the same job."""


class MongoContract(StoreContract):
    flavour = "pymongo-sync"
    claim: ClaimMode = "batch"

    @pytest.fixture(autouse=True)
    def _exclusivity_needs_an_atomic_server(self, request: pytest.FixtureRequest) -> None:
        if any(word in request.node.name for word in EXCLUSIVITY):
            probe: ClaimProbe = request.getfixturevalue("claim_probe")
            probe.require_atomic(f"{request.node.name}: concurrent claims never share a job")

    @pytest.fixture
    async def store(self, mongo_server: Server, collection_name: str) -> AsyncIterator[MongoStore[Payload]]:
        async with open_collection(self.flavour, mongo_server.uri, collection_name) as collection:
            yield MongoStore(collection, Payload, claim=self.claim)

    @pytest.fixture
    async def other_store(self, mongo_server: Server, collection_name: str) -> AsyncIterator[MongoStore[Payload]]:
        """A second client's store on the same collection."""
        async with open_collection(self.flavour, mongo_server.uri, collection_name) as collection:
            yield MongoStore(collection, Payload, claim=self.claim)


class TestPyMongoSync(MongoContract):
    """Sync PyMongo in worker threads, on asyncio and trio (the suite's own ``anyio_backend``)."""


class TestPyMongoSyncOneByOne(MongoContract):
    claim = "one_by_one"


class TestPyMongoAsync(MongoContract):
    flavour = "pymongo-async"

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"


class TestPyMongoAsyncOneByOne(TestPyMongoAsync):
    claim = "one_by_one"


class TestMotor(MongoContract):
    flavour = "motor"

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"
