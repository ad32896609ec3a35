"""Every statement the PostgreSQL store runs, built once per schema and table.

Names are quoted with :class:`psycopg.sql.Identifier`; values always travel as parameters.
The columns and how each Job attribute is written and read back are in one map, ``FIELDS``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final

from psycopg import sql

from ..._job import JobStatus

if TYPE_CHECKING:
    from typing_extensions import LiteralString

SCHEMA_VERSION: Final = 1
"""The version of the tables this anysched writes; kept in the ``<table>_meta`` table."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_TABLE = 50  # PostgreSQL keeps 63 bytes of a name; the table's indexes and meta table add a suffix


def check_identifier(name: str, value: object, *, max_length: int = 63) -> str:
    """``value`` if it is a plain SQL identifier; a ``ValueError``/``TypeError`` naming ``name`` otherwise."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not _IDENTIFIER.fullmatch(value) or len(value) > max_length:
        raise ValueError(
            f"{name} must be letters, digits and underscores, not starting with a digit, "
            f"at most {max_length} characters; got {value!r}"
        )
    return value


def _as_is(value: Any) -> Any:
    return value


def _status_value(status: JobStatus) -> str:
    return status.value


def _utc(value: datetime | None) -> datetime | None:
    # psycopg returns timestamptz in the session's time zone; jobs keep UTC.
    return None if value is None else value.astimezone(timezone.utc)


FIELDS: Final[dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]]] = {
    "id": (_as_is, _as_is),
    "status": (_status_value, JobStatus),
    "process_after": (_as_is, _utc),
    "visible_after": (_as_is, _utc),
    "processed_at": (_as_is, _utc),
    "attempts": (_as_is, _as_is),
    "lease": (_as_is, _as_is),
    "last_error": (_as_is, _as_is),
    "max_attempts": (_as_is, _as_is),
    "timeout": (_as_is, _as_is),
}
"""The one map of Job attributes to columns (every attribute but the payload, a ``jsonb``
column): each in the column of its name, with how its value is written and read back."""
NAMES: Final = ("payload", *FIELDS)

ARRAY_TYPES: Final[dict[str, LiteralString]] = {
    "id": "text",
    "payload": "text",  # JSON text, cast to jsonb in the SET
    "status": "text",
    "process_after": "timestamptz",
    "visible_after": "timestamptz",
    "processed_at": "timestamptz",
    "attempts": "integer",
    "lease": "text",
    "last_error": "text",
    "max_attempts": "integer",
    "timeout": "double precision",
}
"""The column types ``update_many`` passes each column's values as (one array per column)."""

LEASE_HELD: Final = "status = 'pending' AND visible_after IS NOT NULL AND lease = %(lease)s"
"""The stored job is leased under the caller's token (``Job.accepts_write_fenced_by``)."""


class Statements:
    """The statements for one ``schema.table``, composed once."""

    def __init__(self, schema: str, table: str) -> None:
        self.schema = check_identifier("schema", schema)
        self.table = check_identifier("table", table, max_length=_MAX_TABLE)
        # One channel per table, whatever the names' length: NOTIFY channels are identifiers too.
        digest = hashlib.sha256(f"{schema}.{table}".encode()).hexdigest()[:16]
        self.channel: str = f"anysched_{digest}"
        jobs = sql.Identifier(schema, table)
        meta = sql.Identifier(schema, f"{table}_meta")
        columns = sql.SQL(", ").join(map(sql.Identifier, NAMES))
        values = sql.SQL(", ").join(map(sql.Placeholder, NAMES))
        fmt = {"jobs": jobs, "meta": meta, "columns": columns}

        def composed(text: LiteralString, **extra: sql.Composable) -> sql.Composed:
            return sql.SQL(text).format(**fmt, **extra)

        def compose(text: LiteralString, **extra: sql.Composable) -> bytes:
            # Rendered once: composing a statement on every call cost a seventh of a job's CPU time.
            # The names are plain ASCII identifiers, the same bytes in every client encoding.
            return composed(text, **extra).as_bytes(None)

        self.lock = compose("SELECT pg_advisory_xact_lock(hashtext({name}))", name=sql.Literal(f"anysched:{schema}"))
        self.create_schema = compose("CREATE SCHEMA IF NOT EXISTS {name}", name=sql.Identifier(schema))
        self.create_meta = compose("CREATE TABLE IF NOT EXISTS {meta} (key text PRIMARY KEY, value integer NOT NULL)")
        self.read_version = compose("SELECT value FROM {meta} WHERE key = 'schema_version'")
        self.jobs_exists = compose(
            "SELECT to_regclass({name}) IS NOT NULL AS found", name=sql.Literal(f'"{schema}"."{table}"')
        )
        self.create = [
            compose(
                """CREATE TABLE {jobs} (
                    id text PRIMARY KEY,
                    payload jsonb NOT NULL,
                    status text NOT NULL CHECK (status IN ('pending', 'completed', 'failed')),
                    process_after timestamptz NOT NULL,
                    visible_after timestamptz,
                    processed_at timestamptz,
                    attempts integer NOT NULL CHECK (attempts >= 0),
                    lease text,
                    last_error text,
                    max_attempts integer,
                    timeout double precision
                )"""
            ),
            # The claim walks unleased pending jobs oldest due first and stops after `limit` rows;
            # a claimed job leaves this index, so a claim never walks over leased jobs.
            compose(
                "CREATE INDEX {name} ON {jobs} (process_after) WHERE status = 'pending' AND visible_after IS NULL",
                name=self._index("claim"),
            ),
            # Expired leases for the claim, and next_due_time's earliest lease expiry: leased jobs only.
            compose(
                "CREATE INDEX {name} ON {jobs} (visible_after) WHERE status = 'pending' AND visible_after IS NOT NULL",
                name=self._index("leased"),
            ),
            # purge and completed_ttl: completed jobs by age.
            compose(
                "CREATE INDEX {name} ON {jobs} (processed_at) WHERE status = 'completed'", name=self._index("completed")
            ),
            compose("INSERT INTO {meta} (key, value) VALUES ('schema_version', {v})", v=sql.Literal(SCHEMA_VERSION)),
        ]
        notify = sql.SQL("pg_notify({channel}, '')").format(channel=sql.Literal(self.channel))
        self.notify = compose("SELECT {notify}", notify=notify)
        self.insert = compose("INSERT INTO {jobs} ({columns}) VALUES ({values})", values=values)
        self.insert_notify = compose(
            "WITH added AS (INSERT INTO {jobs} ({columns}) VALUES ({values}) RETURNING 1) SELECT {notify} FROM added",
            values=values,
            notify=notify,
        )
        sets = sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(n), sql.Placeholder(n)) for n in NAMES[1:])
        update = composed("UPDATE {jobs} SET {sets} WHERE id = %(id)s AND " + LEASE_HELD + " RETURNING id", sets=sets)
        self.update = update.as_bytes(None)
        self.update_notify = compose(
            "WITH changed AS ({update}) SELECT id, {notify} FROM changed", update=update, notify=notify
        )
        self.exists = compose("SELECT 1 FROM {jobs} WHERE id = %(id)s")
        # Many updates in one statement (the coalesced update_job calls of one store): each row
        # fenced by its own lease; listeners notified when a row that wakes them was applied.
        self.update_many = compose(
            "WITH v AS (SELECT * FROM unnest({arrays}, %(wakes)s::boolean[]) AS v({names}, wakes)),"
            " changed AS (UPDATE {jobs} AS j SET {sets_from_v} FROM v WHERE j.id = v.id AND j.lease = v.lease"
            " AND j.status = 'pending' AND j.visible_after IS NOT NULL RETURNING j.id, v.wakes)"
            " SELECT id, CASE WHEN wakes THEN {notify} END AS notified FROM changed",
            arrays=sql.SQL(", ").join(
                sql.SQL("{}::{}[]").format(sql.Placeholder(name), sql.SQL(kind)) for name, kind in ARRAY_TYPES.items()
            ),
            names=sql.SQL(", ").join(map(sql.Identifier, ARRAY_TYPES)),
            sets_from_v=sql.SQL(", ").join(
                sql.SQL("{name} = v.{name}{cast}").format(
                    name=sql.Identifier(name), cast=sql.SQL("::jsonb" if name == "payload" else "")
                )
                for name in NAMES[1:]
            ),
            notify=notify,
        )
        # One statement. Unleased jobs (a partial index that leased ones leave) and expired leases
        # (the few leased ones) are locked, at most `limit` of each, skipping rows another claim
        # holds; the oldest due `limit` of them are numbered, and the UPDATE gives each the token
        # of its number. Rows locked but not taken are free again when the statement commits.
        self.claim = compose(
            "WITH fresh AS (SELECT id, process_after FROM {jobs} WHERE status = 'pending' AND visible_after IS NULL"
            " AND process_after <= %(now)s ORDER BY process_after LIMIT %(limit)s FOR UPDATE SKIP LOCKED),"
            " expired AS (SELECT id, process_after FROM {jobs} WHERE status = 'pending'"
            " AND visible_after IS NOT NULL AND visible_after <= %(now)s AND process_after <= %(now)s"
            " ORDER BY process_after LIMIT %(limit)s FOR UPDATE SKIP LOCKED),"
            " picked AS (SELECT id, row_number() OVER (ORDER BY process_after) AS n"
            " FROM (SELECT * FROM fresh UNION ALL SELECT * FROM expired) AS candidates),"
            " numbered AS (SELECT id, n FROM picked WHERE n <= %(limit)s)"
            " UPDATE {jobs} AS j SET visible_after = %(visible)s, lease = (%(tokens)s::text[])[numbered.n],"
            " attempts = j.attempts + 1 FROM numbered WHERE j.id = numbered.id RETURNING {returned}",
            returned=sql.SQL(", ").join(sql.SQL("j.{}").format(sql.Identifier(n)) for n in NAMES),
        )
        release = (
            "UPDATE {jobs} SET visible_after = NULL, attempts = attempts - 1 WHERE lease = ANY(%(tokens)s)"
            " AND status = 'pending' AND visible_after IS NOT NULL RETURNING id"
        )
        self.release = compose(release)
        self.release_notify = compose(
            "WITH released AS (" + release + ") SELECT id, {notify} FROM released", notify=notify
        )
        self.fail_undecodable = compose(
            "UPDATE {jobs} SET status = 'failed', processed_at = %(now)s, visible_after = NULL,"
            " last_error = %(last_error)s WHERE id = %(id)s AND lease = %(lease)s"
        )
        self.next_due = compose(
            "SELECT least((SELECT process_after FROM {jobs} WHERE status = 'pending' AND visible_after IS NULL"
            " ORDER BY process_after LIMIT 1), (SELECT min(greatest(process_after, visible_after)) FROM {jobs}"
            " WHERE status = 'pending' AND visible_after IS NOT NULL)) AS due"
        )
        self.select_one = compose("SELECT {columns} FROM {jobs} WHERE id = %(id)s")
        self.count_all = compose("SELECT count(*) AS n FROM {jobs}")
        self.count_status = compose("SELECT count(*) AS n FROM {jobs} WHERE status = %(status)s")
        conditions: dict[tuple[bool, bool], LiteralString] = {
            (False, False): "TRUE",
            (True, False): "status = %(status)s",
            (False, True): "id > %(after)s",
            (True, True): "status = %(status)s AND id > %(after)s",
        }
        self.page = {
            key: compose("SELECT {columns} FROM {jobs} WHERE " + where + " ORDER BY id LIMIT %(limit)s")
            for key, where in conditions.items()
        }
        self.delete_completed = compose(
            "DELETE FROM {jobs} WHERE id IN (SELECT id FROM {jobs} WHERE status = 'completed'"
            " AND processed_at < %(cutoff)s LIMIT %(limit)s)"
        )

    def _index(self, suffix: str) -> sql.Identifier:
        return sql.Identifier(f"{self.table}_{suffix}")


# -- schedules (anysched.StoresSchedules) ---------------------------------------------------------


class ScheduleStatements:
    """The statements for the schedules of one ``schema.table``: kept in ``<table>_schedules``.

    Each schedule is one row, its id and its document (``anysched._schedule_document``) as
    ``jsonb``. The change marker is the ``schedules_marker`` row of ``<table>_meta``, moved in
    the transaction of every put and remove. Both are created when the store opens, under the
    job table's creation lock and in its transaction (``IF NOT EXISTS``): they are additive,
    no older anysched reads them, so the schema version stays the same and an older process on
    the same tables keeps working.
    """

    def __init__(self, schema: str, table: str) -> None:
        schema = check_identifier("schema", schema)
        table = check_identifier("table", table, max_length=_MAX_TABLE)
        fmt = {
            "schedules": sql.Identifier(schema, f"{table}_schedules"),
            "meta": sql.Identifier(schema, f"{table}_meta"),
        }

        def compose(text: LiteralString) -> bytes:
            return sql.SQL(text).format(**fmt).as_bytes(None)

        self.create = [
            compose("CREATE TABLE IF NOT EXISTS {schedules} (id text PRIMARY KEY, document jsonb NOT NULL)"),
            compose("INSERT INTO {meta} (key, value) VALUES ('schedules_marker', 0) ON CONFLICT (key) DO NOTHING"),
        ]
        # Every write locks the marker row first, so two writers take their locks in one order
        # (a put and a remove of one id never deadlock) and the marker moves once per write.
        # It counts modulo 2**31 - 1: the meta table's values are 32-bit integers.
        self.bump_marker = compose(
            "UPDATE {meta} SET value = mod(value + 1, 2147483647) WHERE key = 'schedules_marker' RETURNING value"
        )
        self.upsert = compose(
            "INSERT INTO {schedules} (id, document) VALUES (%(id)s, %(document)s)"
            " ON CONFLICT (id) DO UPDATE SET document = EXCLUDED.document"
        )
        self.lock_marker = compose("SELECT value FROM {meta} WHERE key = 'schedules_marker' FOR UPDATE")
        self.delete = compose("DELETE FROM {schedules} WHERE id = %(id)s")
        # By code point, as every store lists them, whatever the database's collation.
        self.select_all = compose('SELECT document FROM {schedules} ORDER BY id COLLATE "C"')
        self.read_marker = compose("SELECT value FROM {meta} WHERE key = 'schedules_marker'")
