"""Finding a PostgreSQL server for the tests: ``ANYSCHED_POSTGRES_URL``, else the local server at
127.0.0.1:5432, else a throwaway cluster of our own when PostgreSQL's binaries are installed."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import psycopg
from psycopg import sql

if TYPE_CHECKING:
    from typing_extensions import LiteralString  # typing's, from Python 3.11

URL_ENV = "ANYSCHED_POSTGRES_URL"
LOCAL_URL = "postgresql://127.0.0.1:5432/test"
HOW_TO_RUN = (
    f"the PostgreSQL tests did not run: no server answered at {LOCAL_URL}, {URL_ENV} is not set, and "
    "PostgreSQL's initdb/pg_ctl are not installed. Set {URL_ENV}=postgresql://user@host:port/db "
    "or install PostgreSQL (apt install postgresql) to run them"
).replace("{URL_ENV}", URL_ENV)


@dataclass
class Server:
    url: str
    data_dir: Path | None = None
    pg_ctl: str | None = None
    log: list[str] = field(default_factory=list[str])

    def stop(self) -> None:
        if self.pg_ctl is not None and self.data_dir is not None:
            subprocess.run([self.pg_ctl, "-D", str(self.data_dir), "-m", "immediate", "stop"], check=False)


def answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def _binaries() -> tuple[str, str] | None:
    candidates = [(shutil.which("initdb"), shutil.which("pg_ctl"))]
    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        candidates.append((f"{directory}/initdb", f"{directory}/pg_ctl"))
    for initdb, pg_ctl in candidates:
        if initdb and pg_ctl and os.access(initdb, os.X_OK) and os.access(pg_ctl, os.X_OK):
            return initdb, pg_ctl
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def throwaway_cluster(directory: Path) -> Server | None:
    """A private cluster in ``directory`` (trust auth, a free port), or ``None`` without the binaries."""
    found = _binaries()
    if found is None or os.geteuid() == 0:  # initdb refuses to run as root
        return None
    initdb, pg_ctl = found
    data = directory / "data"
    subprocess.run([initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], check=True, capture_output=True)
    port = _free_port()
    options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1"
    log = directory / "server.log"
    subprocess.run([pg_ctl, "-D", str(data), "-o", options, "-l", str(log), "-w", "start"], check=True)
    return Server(f"postgresql://postgres@127.0.0.1:{port}/postgres", data, pg_ctl)


def find_server(directory: Path) -> Server | None:
    url = os.environ.get(URL_ENV)
    if url:
        return Server(url)
    if answers(LOCAL_URL):
        return Server(LOCAL_URL)
    return throwaway_cluster(directory)


def new_schema_name() -> str:
    return f"anysched_test_{uuid.uuid4().hex[:12]}"


def drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def terminate_backends(url: str, application_name: str | None = None) -> int:
    """Kill every other connection to the database (of ``application_name`` if given); return how many."""
    query = (
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
    )
    params: list[str] = []
    if application_name is not None:
        query += " AND application_name = %s"
        params.append(application_name)
    with psycopg.connect(url, autocommit=True) as connection:
        row = connection.execute(query, params).fetchone()
    return 0 if row is None else int(row[0])


class CallersConnection:
    """A connection of the caller's own, not autocommit: psycopg's async one on asyncio, its sync one
    (each call in a worker thread) on trio, as an application on either would hold it."""

    def __init__(self, url: str, backend: str) -> None:
        self.url = url
        self.backend = backend
        self.connection: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None = None

    async def __aenter__(self) -> CallersConnection:
        if self.backend == "asyncio":
            self.connection = await psycopg.AsyncConnection.connect(self.url)
        else:
            self.connection = await anyio.to_thread.run_sync(psycopg.Connection.connect, self.url)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._call("close")

    async def execute(self, query: sql.Composed | LiteralString) -> None:
        connection = self.connection
        if isinstance(connection, psycopg.AsyncConnection):
            await connection.execute(query)
        elif connection is not None:
            await anyio.to_thread.run_sync(lambda: connection.execute(query))

    async def commit(self) -> None:
        await self._call("commit")

    async def rollback(self) -> None:
        await self._call("rollback")

    async def _call(self, name: str) -> None:
        connection = self.connection
        if isinstance(connection, psycopg.AsyncConnection):
            await getattr(connection, name)()
        elif connection is not None:
            await anyio.to_thread.run_sync(getattr(connection, name))
