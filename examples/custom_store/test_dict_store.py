"""DictStore against anysched's store contract suite: ``python -m pytest examples/custom_store``."""

from __future__ import annotations

import pytest
from dict_store import DictStore

from anysched.testing import Payload, StoreContract


class TestDictStore(StoreContract):
    @pytest.fixture
    def store(self) -> DictStore[Payload]:
        return DictStore[Payload]()  # a new, empty store for every test
