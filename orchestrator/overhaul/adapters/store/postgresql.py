"""PostgreSQL persistence, for several orchestrators sharing one fleet: the statements are sql.py's (as SQLite's).

psycopg 3 (not asyncpg): it ships its own type hints (the project runs mypy --strict) and gives LISTEN/NOTIFY as
an async iterator. Connections are pooled here (``Pool``), a few lines that say at once why a connection failed (a
pool that reconnects in the background makes a caller wait for its timeout and then says only that).

Names compare case-insensitively as SQLite's NOCASE columns do (``citext``, a trusted extension the database's
owner may create); other text sorts byte-wise (``COLLATE "C"``) as SQLite's does. One active attempt per scale
set is a partial unique index besides a per-scale-set transaction lock. Every call is bounded by ``call_timeout``;
a server that cannot be reached makes calls fail with StoreUnavailable (the API's 503) until it can again."""

from __future__ import annotations

import asyncio
import contextlib
import re
import select
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from functools import lru_cache
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import dict_row

from overhaul.adapters.store.sql import Database, Duplicate, Params, Row, SqlStore
from overhaul.ports.lease import LeaseLost
from overhaul.ports.store import HistoryRetention, StoreUnavailable

# A text key that sorts as SQLite's: byte-wise, whatever the database's locale.
T = 'TEXT COLLATE "C"'
MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE EXTENSION IF NOT EXISTS citext;
    CREATE TABLE scale_sets (
        name CITEXT PRIMARY KEY, resource_group CITEXT NOT NULL, subscription CITEXT NOT NULL, doc TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE image_definitions (
        gallery {T} NOT NULL, name {T} NOT NULL, publisher TEXT NOT NULL, offer TEXT NOT NULL, sku TEXT NOT NULL,
        doc TEXT NOT NULL DEFAULT '{{}}', PRIMARY KEY (gallery, name)
    );
    CREATE TABLE image_versions (
        gallery {T} NOT NULL, image {T} NOT NULL, version {T} NOT NULL, artifact TEXT NOT NULL,
        exclude_from_latest INTEGER NOT NULL, locations TEXT NOT NULL, published DOUBLE PRECISION NOT NULL,
        quarantine TEXT, doc TEXT NOT NULL DEFAULT '{{}}', disk_image TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (gallery, image, version)
    );
    CREATE TABLE instances (
        scale_set {T} NOT NULL, instance_id INTEGER NOT NULL, ports TEXT NOT NULL, host {T} NOT NULL DEFAULT '',
        PRIMARY KEY (scale_set, instance_id)
    );
    CREATE TABLE attempts (
        rowid BIGSERIAL, id {T} PRIMARY KEY, scale_set {T} NOT NULL, status TEXT NOT NULL,
        start_time DOUBLE PRECISION NOT NULL, end_time DOUBLE PRECISION, image_reference TEXT NOT NULL,
        doc TEXT NOT NULL, active INTEGER NOT NULL DEFAULT 0, cancel INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX attempts_by_scale_set ON attempts (scale_set, start_time);
    CREATE UNIQUE INDEX attempts_one_active ON attempts (scale_set) WHERE active = 1;
    CREATE TABLE journal (
        seq BIGSERIAL PRIMARY KEY, attempt_id {T} NOT NULL, instance_id INTEGER NOT NULL, action TEXT NOT NULL,
        phase TEXT NOT NULL, ok INTEGER, error TEXT, at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX journal_by_attempt ON journal (attempt_id, seq);
    CREATE TABLE approvals (
        attempt_id {T} NOT NULL, instance_id INTEGER NOT NULL, PRIMARY KEY (attempt_id, instance_id)
    );
    CREATE TABLE galleries (
        name CITEXT PRIMARY KEY, resource_group TEXT NOT NULL, subscription TEXT NOT NULL, location TEXT NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE TABLE load_balancers (
        name CITEXT PRIMARY KEY, resource_group TEXT NOT NULL, subscription TEXT NOT NULL, doc TEXT NOT NULL
    );
    CREATE TABLE maintenance_configurations (
        name CITEXT PRIMARY KEY, resource_group TEXT NOT NULL, subscription TEXT NOT NULL, doc TEXT NOT NULL
    );
    CREATE TABLE configuration_assignments (
        scale_set CITEXT NOT NULL, name CITEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (scale_set, name)
    );
    CREATE TABLE lifecycle_hook_events (
        name CITEXT PRIMARY KEY, scale_set CITEXT NOT NULL, created DOUBLE PRECISION NOT NULL, doc TEXT NOT NULL
    );
    CREATE INDEX lifecycle_hook_events_by_scale_set ON lifecycle_hook_events (scale_set, created);
    CREATE TABLE event_subscriptions (id CITEXT PRIMARY KEY, doc TEXT NOT NULL);
    CREATE TABLE event_outbox (
        rowid BIGSERIAL, subscription CITEXT NOT NULL, event_id {T} NOT NULL, event TEXT NOT NULL,
        attempts INTEGER NOT NULL, next_at DOUBLE PRECISION NOT NULL, state TEXT NOT NULL, last_error TEXT,
        created DOUBLE PRECISION NOT NULL, PRIMARY KEY (subscription, event_id)
    );
    CREATE INDEX event_outbox_due ON event_outbox (state, next_at);
    CREATE TABLE host_groups (
        name CITEXT PRIMARY KEY, resource_group TEXT NOT NULL, subscription TEXT NOT NULL, doc TEXT NOT NULL
    );
    CREATE TABLE hosts (
        host_group CITEXT NOT NULL, name CITEXT NOT NULL, resource_group TEXT NOT NULL, subscription TEXT NOT NULL,
        engine TEXT NOT NULL UNIQUE, doc TEXT NOT NULL, PRIMARY KEY (host_group, name)
    );
    CREATE TABLE host_ports (
        host CITEXT NOT NULL, port INTEGER NOT NULL, scale_set CITEXT NOT NULL, instance_id INTEGER NOT NULL,
        PRIMARY KEY (host, port)
    );
    CREATE INDEX host_ports_by_instance ON host_ports (scale_set, instance_id);
    CREATE TABLE image_replicas (
        gallery CITEXT NOT NULL, image CITEXT NOT NULL, version {T} NOT NULL, host_group CITEXT NOT NULL,
        host CITEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (gallery, image, version, host_group, host)
    );
    CREATE TABLE lease (
        name TEXT PRIMARY KEY, holder TEXT NOT NULL, address TEXT NOT NULL, token BIGINT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
    """,
    # Settings every replica shares (the API token: one for all of them).
    """
    CREATE TABLE shared_settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # Each instance's last health verdict as the leader saw it (ports/store.py HealthStore).
    """
    CREATE TABLE health_verdicts (
        scale_set CITEXT NOT NULL, instance_id INTEGER NOT NULL, doc TEXT NOT NULL,
        PRIMARY KEY (scale_set, instance_id)
    );
    """,
    # The lease token a journal entry was written under.
    """
    ALTER TABLE journal ADD COLUMN token BIGINT;
    """,
    # Resources kept as documents (core/resources.py): resource groups, managed images, kept network resources.
    """
    CREATE TABLE resources (
        id CITEXT PRIMARY KEY, type CITEXT NOT NULL, subscription CITEXT NOT NULL, resource_group CITEXT NOT NULL,
        name TEXT NOT NULL, doc TEXT NOT NULL
    );
    CREATE INDEX resources_by_scope ON resources (subscription, resource_group, type);
    """,
)
# pg_advisory_lock keys (any bigint; these spell "ovhl" and "ovhl"+1): migrations run one replica at a time.
MIGRATION_LOCK = 0x6F76686C
LEASE_NAME = "leader"
# The LISTEN/NOTIFY channel of hints (ports/hints.py); payloads are topic names only.
CHANNEL = "overhaul"


class SchemaTooNew(Exception):
    """The database was migrated by a newer overhaul: this one does not know its schema and changes nothing."""


def redacted(url: str) -> str:
    """The store URL with its password replaced (for logs, /healthz and errors)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


@lru_cache(maxsize=512)
def placeholders(sql: str) -> str:
    """sql.py's ``?`` placeholders as psycopg's ``%s`` (its statements hold no other ``?`` and no ``%``)."""
    if "%" in sql:
        raise ValueError(f"a statement with '%' would be misread: {sql}")
    return sql.replace("?", "%s")


def unavailable(exc: BaseException) -> StoreUnavailable:
    detail = re.sub(r"\s+", " ", str(exc)).strip() or type(exc).__name__
    return StoreUnavailable(f"the PostgreSQL store cannot be reached: {detail}")


Connection = psycopg.AsyncConnection[Row]
# A connection idle longer than this is asked whether it still works before it is lent (the server may have
# restarted or cut it meanwhile); one used more recently is lent as it is unless the server said something.
CHECK_AFTER_IDLE = 2.0
# Seconds the server lets one of our sessions sit in an open transaction without a word before it ends it: a
# replica cut off from the database mid-transaction (a partition) would otherwise keep its row locks (the lease
# row's among them, so no standby could take over) until the server noticed the connection was dead. Our
# transactions never wait on anything but the database between statements; well under the lease's TTL.
IDLE_IN_TRANSACTION = 3.0
# Seconds /healthz waits for the database's answer.
CHECK_TIMEOUT = 3.0


def said_something(conn: Connection) -> bool:
    """Whether an idle connection has something to read: the server ended it (a restart, an administrator) or
    said something unasked; either way it is asked whether it still works before it is lent."""
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return True
    return bool(readable)


class Pool:
    """At most ``size`` connections, each lent to one transaction at a time; a broken one is dropped, and a new one
    made when needed (a failure to connect is the caller's, with the server's words)."""

    def __init__(self, url: str, size: int, connect_timeout: float) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self._slots = asyncio.Semaphore(size)
        self._idle: list[tuple[Connection, float]] = []

    async def _connect(self) -> Connection:
        return await psycopg.AsyncConnection.connect(
            self.url,
            row_factory=dict_row,
            connect_timeout=max(1, round(self.connect_timeout)),
            options=f"-c idle_in_transaction_session_timeout={round(IDLE_IN_TRANSACTION * 1000)}",
        )

    async def _lend(self) -> Connection:
        while self._idle:
            conn, since = self._idle.pop()
            if conn.closed or conn.broken:
                continue
            if time.monotonic() - since < CHECK_AFTER_IDLE and not said_something(conn):
                return conn
            try:
                await conn.execute("SELECT 1")
                await conn.rollback()
                return conn
            except psycopg.Error:
                await conn.close()
        return await self._connect()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A connection in a transaction, committed when the block ends (rolled back if it raises)."""
        async with self._slots:
            conn = await self._lend()
            try:
                yield conn
                await conn.commit()
            except (asyncio.CancelledError, TimeoutError):
                await conn.close()  # it may be waiting on a server that no longer answers: not lent again
                raise
            except BaseException:
                try:
                    async with asyncio.timeout(self.connect_timeout):
                        await conn.rollback()
                except (psycopg.Error, TimeoutError):
                    await conn.close()
                raise
            finally:
                if not conn.closed and not conn.broken:
                    self._idle.append((conn, time.monotonic()))

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            await conn.close()


class Connected:
    """The Database over one connection inside a transaction (sql.py's ``db`` in ``async with transaction``)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        try:
            cursor = await self.conn.execute(placeholders(sql), params)
        except psycopg.errors.UniqueViolation as exc:
            raise Duplicate(str(exc)) from exc
        return cursor.rowcount

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        async with self.conn.cursor() as cursor:
            await cursor.executemany(placeholders(sql), list(rows))

    async def one(self, sql: str, params: Params = ()) -> Row | None:
        cursor = await self.conn.execute(placeholders(sql), params)
        return await cursor.fetchone()

    async def all(self, sql: str, params: Params = ()) -> list[Row]:
        cursor = await self.conn.execute(placeholders(sql), params)
        return await cursor.fetchall()

    async def notify(self, topic: str) -> None:
        await self.conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, topic))

    @asynccontextmanager
    async def transaction(self, lock: str = "") -> AsyncIterator[Database]:
        yield self  # already in one


class PostgresDatabase:
    """The Database over a pool. Every call is one transaction (committed when it returns), bounded by
    ``call_timeout``. When ``fence`` gives a token, each write transaction first locks the lease row FOR SHARE and
    checks that token is still the lease's (so a takeover waits for it, or it sees the takeover): else LeaseLost
    and nothing is written."""

    def __init__(self, pool: Pool, call_timeout: float) -> None:
        self.pool = pool
        self.call_timeout = call_timeout
        self.fence: Callable[[], int | None] = lambda: None
        self.problem: str | None = None

    @asynccontextmanager
    async def _connected(self, *, write: bool, lock: str = "") -> AsyncIterator[Connected]:
        try:
            async with asyncio.timeout(self.call_timeout), self.pool.connection() as conn:
                connected = Connected(conn)
                if write:
                    await self._check_fence(connected)
                if lock:
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock,))
                yield connected
        except (psycopg.OperationalError, TimeoutError, OSError) as exc:
            failure = unavailable(exc)
            self.problem = str(failure)
            raise failure from exc
        self.problem = None

    async def _check_fence(self, connected: Connected) -> None:
        token = self.fence()
        if token is None:
            return
        row = await connected.one("SELECT token FROM lease WHERE name = ? FOR SHARE", (LEASE_NAME,))
        if row is None or row["token"] != token:
            current = "none" if row is None else row["token"]
            raise LeaseLost(f"write refused: made under lease token {token}, the lease's is {current}")

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with self._connected(write=True) as db:
            return await db.execute(sql, params)

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        async with self._connected(write=True) as db:
            await db.executemany(sql, rows)

    async def one(self, sql: str, params: Params = ()) -> Row | None:
        async with self._connected(write=False) as db:
            return await db.one(sql, params)

    async def notify(self, topic: str) -> None:
        async with self._connected(write=False) as db:
            await db.notify(topic)

    async def all(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._connected(write=False) as db:
            return await db.all(sql, params)

    @asynccontextmanager
    async def transaction(self, lock: str = "") -> AsyncIterator[Database]:
        async with self._connected(write=True, lock=lock) as db:
            yield db


class PostgresStore(SqlStore):
    """The shared store. Made with ``await PostgresStore.open(url)``: it connects and migrates first."""

    def __init__(self, database: PostgresDatabase, url: str, retention: HistoryRetention | None = None) -> None:
        super().__init__(database, retention)
        self.database = database
        self.url = url

    @classmethod
    async def open(
        cls,
        url: str,
        retention: HistoryRetention | None = None,
        *,
        call_timeout: float = 10.0,
        pool_size: int = 4,
    ) -> PostgresStore:
        pool = Pool(url, pool_size, call_timeout)
        try:
            await migrate(pool, call_timeout)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, psycopg.OperationalError | TimeoutError | OSError):
                raise unavailable(exc) from exc
            raise
        return cls(PostgresDatabase(pool, call_timeout), url, retention)

    async def close(self) -> None:
        await self.database.pool.close()

    def problem(self) -> str | None:
        return self.database.problem

    async def check(self) -> str | None:
        wait = min(CHECK_TIMEOUT, self.database.call_timeout)
        try:
            async with asyncio.timeout(wait):
                await self.database.one("SELECT 1 AS one")
        except StoreUnavailable as exc:
            return str(exc)
        except TimeoutError:
            return f"the PostgreSQL store cannot be reached: no answer within {wait:g}s"
        return None

    def writer_token(self) -> int | None:
        return self.database.fence()

    def fence_with(self, token: Callable[[], int | None]) -> None:
        """Writes from now on are made under the lease ``token`` gives (None: unfenced)."""
        self.database.fence = token

    async def shared_setting(self, key: str, proposed: str) -> str:
        """The value every replica uses: the first one's ``proposed`` (written unfenced: before any lease)."""
        async with asyncio.timeout(self.database.call_timeout), self.database.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO shared_settings (key, value) VALUES (%s, %s) ON CONFLICT DO NOTHING", (key, proposed)
            )
            row = await (await conn.execute("SELECT value FROM shared_settings WHERE key = %s", (key,))).fetchone()
        return str(row["value"]) if row else proposed

    async def schema_version(self) -> int:
        row = await self.database.one("SELECT coalesce(max(version), 0) AS v FROM overhaul_migrations")
        return int(row["v"]) if row else 0


async def migrate(pool: Pool, call_timeout: float) -> None:
    """Applies the migrations the database has not seen, each in one transaction, one replica at a time (a
    session advisory lock: a second replica starting meanwhile waits, then finds nothing to do)."""
    async with asyncio.timeout(call_timeout * 6), pool.connection() as conn:
        await conn.set_autocommit(True)
        try:
            await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS overhaul_migrations"
                " (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            found = await conn.execute("SELECT coalesce(max(version), 0) AS v FROM overhaul_migrations")
            row = await found.fetchone()
            current = int(row["v"]) if row else 0
            if current > len(MIGRATIONS):
                raise SchemaTooNew(
                    f"the database's schema is version {current}, newer than this overhaul's ({len(MIGRATIONS)}): "
                    "run the newer overhaul, or restore a backup made for this one"
                )
            for version, script in enumerate(MIGRATIONS, start=1):
                if version <= current:
                    continue
                async with conn.transaction():
                    await conn.execute(script.encode())
                    await conn.execute("INSERT INTO overhaul_migrations (version) VALUES (%s)", (version,))
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
            await conn.set_autocommit(False)
