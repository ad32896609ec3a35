"""The adversarial review of PostgresStore: a server that stops answering, rows written by hand,
session settings of the user's, against the real server (see ``tests/postgres/postgres_support``)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import anyio.abc
import pytest

pytest.importorskip("psycopg", reason="the PostgreSQL tests need anysched[postgres]: pip install anysched[postgres]")

sys.path.insert(0, str(Path(__file__).parent.parent / "postgres"))  # the Postgres tests' helpers

from postgres_support import drop_schema, find_server, new_schema_name

from anysched.stores.postgres import PostgresStore
from anysched.testing import Payload

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)  # no mock clock: these tests wait on real I/O


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = find_server(tmp_path_factory.mktemp("postgres"))
    if server is None:
        pytest.skip("no PostgreSQL server: see tests/postgres/postgres_support.py")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def schema(postgres_url: str) -> Iterator[str]:
    name = new_schema_name()
    yield name
    drop_schema(postgres_url, name)


class FreezingProxy:
    """A TCP proxy in front of the server that can stop answering: once ``frozen``, it accepts new
    connections and reads nothing from them, as a server that hangs would (or a network that drops)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = False
        self.port = 0
        self.accepted_frozen = anyio.Event()

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
        async with listener:
            task_status.started()
            await listener.serve(self._handle)

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        if self.frozen:
            async with client:  # never read, never closed while the proxy runs
                self.accepted_frozen.set()
                await anyio.sleep_forever()
        server = await anyio.connect_tcp("127.0.0.1", self.target_port)
        async with client, server, anyio.create_task_group() as tg:
            tg.start_soon(_pipe, client, server)
            await _pipe(server, client)
            tg.cancel_scope.cancel()


async def _pipe(source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream) -> None:
    try:
        async for chunk in source:
            await sink.send(chunk)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass


@pytest.fixture
async def proxy(postgres_url: str) -> AsyncIterator[FreezingProxy]:
    import psycopg.conninfo

    port = int(psycopg.conninfo.conninfo_to_dict(postgres_url).get("port") or 5432)
    frozen = FreezingProxy(port)
    async with anyio.create_task_group() as tg:
        await tg.start(frozen.serve)
        yield frozen
        tg.cancel_scope.cancel()


def through(proxy: FreezingProxy, url: str, **options: str) -> str:
    import psycopg.conninfo

    return psycopg.conninfo.make_conninfo(url, host="127.0.0.1", port=str(proxy.port), **options)


# -- the listener on a server that stops answering ---------------------------------------------


async def test_a_listener_connecting_to_a_hung_server_stops_when_cancelled(
    postgres_url: str, schema: str, proxy: FreezingProxy
) -> None:
    # libpq would wait up to connect_timeout for the hung server; the block must end well before.
    conninfo = through(proxy, postgres_url, connect_timeout="8")
    async with PostgresStore(conninfo, Payload, schema=schema) as store:
        proxy.frozen = True
        started = anyio.current_time()
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:

                async def listen() -> None:
                    async with store.wake_ups(lambda: None):
                        await anyio.sleep_forever()

                tg.start_soon(listen)
                with anyio.fail_after(5):
                    await proxy.accepted_frozen.wait()  # the listener is connecting
                started = anyio.current_time()
                scope.cancel()
        assert anyio.current_time() - started < 3, "the listener's connect kept the block from ending"
