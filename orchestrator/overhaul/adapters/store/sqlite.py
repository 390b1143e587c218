"""SQLite (WAL) persistence: scale set models, the gallery, instance ports, attempts, the journal, history.

The port is async (a shared PostgreSQL store answers over the network); here each call runs SQLite directly and
is short (local file, WAL, synchronous=FULL: one fsync per commit, so an acknowledged write survives a crash or a
file system error): well under a millisecond on an SSD, less than handing it to a thread would cost.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from overhaul.adapters.store.sql import Database, Duplicate, Params, Row, SqlStore
from overhaul.ports.store import HistoryRetention, StoreUnavailable

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE scale_sets (
        name TEXT PRIMARY KEY, resource_group TEXT NOT NULL, subscription TEXT NOT NULL,
        doc TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL
    );
    CREATE TABLE image_definitions (
        gallery TEXT NOT NULL, name TEXT NOT NULL, publisher TEXT NOT NULL, offer TEXT NOT NULL, sku TEXT NOT NULL,
        PRIMARY KEY (gallery, name)
    );
    CREATE TABLE image_versions (
        gallery TEXT NOT NULL, image TEXT NOT NULL, version TEXT NOT NULL, artifact TEXT NOT NULL,
        exclude_from_latest INTEGER NOT NULL, locations TEXT NOT NULL, published REAL NOT NULL,
        PRIMARY KEY (gallery, image, version)
    );
    CREATE TABLE instances (
        scale_set TEXT NOT NULL, instance_id INTEGER NOT NULL, ports TEXT NOT NULL,
        PRIMARY KEY (scale_set, instance_id)
    );
    CREATE TABLE attempts (
        id TEXT PRIMARY KEY, scale_set TEXT NOT NULL, status TEXT NOT NULL, start_time REAL NOT NULL,
        end_time REAL, image_reference TEXT NOT NULL, doc TEXT NOT NULL
    );
    CREATE INDEX attempts_by_scale_set ON attempts (scale_set, start_time);
    CREATE TABLE journal (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, attempt_id TEXT NOT NULL, instance_id INTEGER NOT NULL,
        action TEXT NOT NULL, phase TEXT NOT NULL, ok INTEGER, error TEXT, at REAL NOT NULL
    );
    CREATE INDEX journal_by_attempt ON journal (attempt_id, seq);
    """,
    # Names compare case-insensitively, as ARM's do; an attempt is active until its last driver action ended.
    """
    CREATE TABLE scale_sets_v2 (
        name TEXT PRIMARY KEY COLLATE NOCASE, resource_group TEXT NOT NULL COLLATE NOCASE,
        subscription TEXT NOT NULL COLLATE NOCASE, doc TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL
    );
    INSERT INTO scale_sets_v2 SELECT name, resource_group, subscription, doc, created, updated FROM scale_sets;
    DROP TABLE scale_sets;
    ALTER TABLE scale_sets_v2 RENAME TO scale_sets;
    ALTER TABLE attempts ADD COLUMN active INTEGER NOT NULL DEFAULT 0;
    UPDATE attempts SET active = 1 WHERE status = 'RollingForward';
    ALTER TABLE attempts ADD COLUMN cancel INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX attempts_active ON attempts (scale_set) WHERE active = 1;
    """,
    # A version an attempt Faulted on leaves 'latest' until a person clears it: why, or NULL.
    """
    ALTER TABLE image_versions ADD COLUMN quarantine TEXT;
    """,
    # Gallery documents as sent, so Azure fields with no local meaning round-trip.
    """
    ALTER TABLE image_versions ADD COLUMN doc TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE image_definitions ADD COLUMN doc TEXT NOT NULL DEFAULT '{}';
    """,
    # Approvals of deferred OS upgrades (approveRollingUpgrade), read by the attempt's reconciler as a cancel is.
    """
    CREATE TABLE approvals (
        attempt_id TEXT NOT NULL, instance_id INTEGER NOT NULL, PRIMARY KEY (attempt_id, instance_id)
    );
    """,
    # Galleries as resources; those that image definitions already name are kept as galleries of their own.
    """
    CREATE TABLE galleries (
        name TEXT PRIMARY KEY COLLATE NOCASE, resource_group TEXT NOT NULL, subscription TEXT NOT NULL,
        location TEXT NOT NULL, doc TEXT NOT NULL
    );
    INSERT OR IGNORE INTO galleries SELECT DISTINCT gallery, 'default', 'local', 'local', '{}' FROM image_definitions;
    """,
    # Load balancers, for the health probes scale sets name.
    """
    CREATE TABLE load_balancers (
        name TEXT PRIMARY KEY COLLATE NOCASE, resource_group TEXT NOT NULL, subscription TEXT NOT NULL,
        doc TEXT NOT NULL
    );
    """,
    # VM artefacts of an image version (storageProfile.source.overhaul.diskImage) beside its container image.
    """
    ALTER TABLE image_versions ADD COLUMN disk_image TEXT NOT NULL DEFAULT '';
    """,
    # Maintenance configurations and their assignments to scale sets.
    """
    CREATE TABLE maintenance_configurations (
        name TEXT PRIMARY KEY COLLATE NOCASE, resource_group TEXT NOT NULL, subscription TEXT NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE TABLE configuration_assignments (
        scale_set TEXT NOT NULL COLLATE NOCASE, name TEXT NOT NULL COLLATE NOCASE, doc TEXT NOT NULL,
        PRIMARY KEY (scale_set, name)
    );
    """,
    # Lifecycle hook events (core/lifecycle_hooks.py).
    """
    CREATE TABLE lifecycle_hook_events (
        name TEXT PRIMARY KEY COLLATE NOCASE, scale_set TEXT NOT NULL COLLATE NOCASE, created REAL NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE INDEX lifecycle_hook_events_by_scale_set ON lifecycle_hook_events (scale_set, created);
    """,
    # Event subscriptions and the outbox of their deliveries (core/cloud_events.py).
    """
    CREATE TABLE event_subscriptions (id TEXT PRIMARY KEY COLLATE NOCASE, doc TEXT NOT NULL);
    CREATE TABLE event_outbox (
        subscription TEXT NOT NULL COLLATE NOCASE, event_id TEXT NOT NULL, event TEXT NOT NULL,
        attempts INTEGER NOT NULL, next_at REAL NOT NULL, state TEXT NOT NULL, last_error TEXT,
        created REAL NOT NULL, PRIMARY KEY (subscription, event_id)
    );
    CREATE INDEX event_outbox_due ON event_outbox (state, next_at);
    """,
    # Host groups and their hosts (core/hosts.py); one host per engine URL.
    """
    CREATE TABLE host_groups (
        name TEXT PRIMARY KEY COLLATE NOCASE, resource_group TEXT NOT NULL, subscription TEXT NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE TABLE hosts (
        host_group TEXT NOT NULL COLLATE NOCASE, name TEXT NOT NULL COLLATE NOCASE, resource_group TEXT NOT NULL,
        subscription TEXT NOT NULL, engine TEXT NOT NULL UNIQUE, doc TEXT NOT NULL, PRIMARY KEY (host_group, name)
    );
    """,
    # The host each instance is placed on ('': the orchestrator's own engine); its host ports are that host's.
    """
    ALTER TABLE instances ADD COLUMN host TEXT NOT NULL DEFAULT '';
    """,
    # Host ports as rows, one holder per (host, port) ('': the orchestrator's own engine), from the instances' maps.
    """
    CREATE TABLE host_ports (
        host TEXT NOT NULL COLLATE NOCASE, port INTEGER NOT NULL, scale_set TEXT NOT NULL COLLATE NOCASE,
        instance_id INTEGER NOT NULL, PRIMARY KEY (host, port)
    );
    CREATE INDEX host_ports_by_instance ON host_ports (scale_set, instance_id);
    INSERT OR IGNORE INTO host_ports (host, port, scale_set, instance_id)
        SELECT i.host, p.value, i.scale_set, i.instance_id FROM instances i, json_each(i.ports) p;
    """,
    # A gallery version's copies on the hosts of its target locations (core/replication.py).
    """
    CREATE TABLE image_replicas (
        gallery TEXT NOT NULL COLLATE NOCASE, image TEXT NOT NULL COLLATE NOCASE, version TEXT NOT NULL,
        host_group TEXT NOT NULL COLLATE NOCASE, host TEXT NOT NULL COLLATE NOCASE, doc TEXT NOT NULL,
        PRIMARY KEY (gallery, image, version, host_group, host)
    );
    """,
    # Each instance's last health verdict as the leader saw it (ports/store.py HealthStore).
    """
    CREATE TABLE health_verdicts (
        scale_set TEXT NOT NULL COLLATE NOCASE, instance_id INTEGER NOT NULL, doc TEXT NOT NULL,
        PRIMARY KEY (scale_set, instance_id)
    );
    """,
    # The lease token a journal entry was written under (several orchestrators; NULL: one).
    """
    ALTER TABLE journal ADD COLUMN token INTEGER;
    """,
    # Resources kept as documents (core/resources.py): resource groups, managed images, kept network resources.
    """
    CREATE TABLE resources (
        id TEXT PRIMARY KEY COLLATE NOCASE, type TEXT NOT NULL COLLATE NOCASE,
        subscription TEXT NOT NULL COLLATE NOCASE, resource_group TEXT NOT NULL COLLATE NOCASE,
        name TEXT NOT NULL, doc TEXT NOT NULL
    );
    CREATE INDEX resources_by_scope ON resources (subscription, resource_group, type);
    """,
)
# Statements that write nothing (a ROLLBACK undoes): every other one is a write, checked against the guard first.
READS = ("SELECT", "PRAGMA", "ROLLBACK")


class GuardedConnection(sqlite3.Connection):
    """A connection whose writes first ask ``guard`` (None: go ahead; else why not: the state directory was removed
    or replaced) and whose storage failures (disk full, read-only or failing file system) become StoreUnavailable,
    which the API answers with 503 and Retry-After. The last such problem is kept for /healthz until a write
    succeeds again."""

    guard: Callable[[], str | None] | None = None
    problem: str | None = None

    def _check(self, sql: str) -> None:
        if self.guard is not None and not sql.lstrip().upper().startswith(READS):
            problem = self.guard()
            if problem is not None:
                self.problem = problem
                raise StoreUnavailable(f"the store takes no writes: {problem}")

    def _failed(self, exc: sqlite3.Error) -> StoreUnavailable:
        self.problem = f"the database cannot be written: {exc}"
        return StoreUnavailable(f"the store takes no writes: {self.problem}")

    def _guarded(self, sql: str, run: Callable[[], sqlite3.Cursor]) -> sqlite3.Cursor:
        self._check(sql)
        try:
            cursor = run()
        except sqlite3.OperationalError as exc:
            if not storage_failure(exc):
                raise
            raise self._failed(exc) from exc
        if sql == "COMMIT":
            self.problem = None
        return cursor

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        return self._guarded(sql, lambda: super(GuardedConnection, self).execute(sql, parameters))

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        return self._guarded(sql, lambda: super(GuardedConnection, self).executemany(sql, parameters))


def storage_failure(exc: sqlite3.OperationalError) -> bool:
    """Whether SQLite says the storage failed (rather than that a statement is wrong, which is our bug)."""
    text = str(exc).lower()
    return (
        any(
            words in text
            for words in ("disk i/o", "readonly", "read-only", "full", "unable to open", "locked", "no such table")
        )
        or getattr(exc, "sqlite_errorcode", None) in STORAGE_CODES
    )


STORAGE_CODES = {
    getattr(sqlite3, name)
    for name in ("SQLITE_IOERR", "SQLITE_FULL", "SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_BUSY", "SQLITE_LOCKED")
    if hasattr(sqlite3, name)
}


class StoreDamaged(Exception):
    """The database file cannot be trusted; it is left as it is for a person to look at."""


DB_SUFFIXES = ("", "-wal", "-shm", "-journal")


def make_private_files(path: Path) -> None:
    """The database and its companions are the service user's alone (they hold protectedSettings and customData),
    whatever the umask: SQLite gives the companions the database file's mode, so that file is made 0600 first."""
    existed = path.exists()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    if not existed:  # the new file's name is on disk before anything is written in it
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    for suffix in DB_SUFFIXES:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", 0o600)


def check_intact(db: sqlite3.Connection, path: str) -> None:
    """Refuses a damaged database rather than carry on (or start afresh) over it."""
    try:
        result = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.DatabaseError as exc:
        raise StoreDamaged(f"the database {path} is damaged ({exc}); restore it from a backup or move it away") from exc
    if result != ["ok"]:
        raise StoreDamaged(
            f"the database {path} is damaged ({'; '.join(map(str, result[:3]))}); restore it from a backup or move "
            "it away"
        )
    tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version and not tables:
        raise StoreDamaged(f"the database {path} has a schema version ({version}) but no tables: it lost its data")


class SqliteDatabase:
    """The Database the shared statements run on (sql.py), over one connection. Its calls never suspend, so a
    transaction (BEGIN IMMEDIATE: SQLite's one writer) is never interleaved with another task's statements."""

    def __init__(self, db: GuardedConnection) -> None:
        self.db = db

    async def execute(self, sql: str, params: Params = ()) -> int:
        try:
            return self.db.execute(sql, params).rowcount
        except sqlite3.IntegrityError as exc:
            raise Duplicate(str(exc)) from exc

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        self.db.executemany(sql, rows)

    async def one(self, sql: str, params: Params = ()) -> Row | None:
        row: Row | None = self.db.execute(sql, params).fetchone()
        return row

    async def all(self, sql: str, params: Params = ()) -> list[Row]:
        return list(self.db.execute(sql, params).fetchall())

    async def notify(self, topic: str) -> None:
        pass  # one orchestrator: nobody else to tell

    @asynccontextmanager
    async def transaction(self, lock: str = "") -> AsyncIterator[Database]:
        with transaction(self.db):
            yield self


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if db.in_transaction:  # a failed write may have ended it already
            with contextlib.suppress(sqlite3.Error, StoreUnavailable):
                db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class SqliteStore(SqlStore):
    """The embedded store: one SQLite file in WAL mode.

    Its statements are sql.py's; here are the connection, the schema's migrations and how storage failures read."""

    def __init__(
        self,
        path: Path | str,
        retention: HistoryRetention | None = None,
        *,
        guard: Callable[[], str | None] | None = None,
        durable: bool = True,
    ) -> None:
        """``guard``: asked before every write; what it returns (None: nothing) keeps the write from happening.
        ``durable``: every commit synced (FULL); False (NORMAL) still survives the process dying, not the file
        system failing — for tests and benchmarks whose subject is not durability."""
        self.path = str(path)
        make_private_files(Path(self.path))
        self.db: GuardedConnection = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, factory=GuardedConnection
        )
        self.db.guard = guard
        try:
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            # FULL: a write acknowledged to a client is on disk (the WAL is synced at every commit), whatever
            # happens to the process or the file system next.
            self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self.db.execute("PRAGMA foreign_keys=ON")
            check_intact(self.db, self.path)
            self.migrate()
        except sqlite3.DatabaseError as exc:
            self.db.close()
            if isinstance(exc, sqlite3.OperationalError) and storage_failure(exc):
                raise  # the storage fails, not the file: said as it is
            raise StoreDamaged(
                f"the database {self.path} is damaged ({exc}); restore it from a backup or move it away"
            ) from exc
        except BaseException:
            self.db.close()
            raise
        super().__init__(SqliteDatabase(self.db), retention)

    async def close(self) -> None:
        self.db.close()

    async def check(self) -> str | None:
        return self.problem()  # a local file: what it knows is what there is

    def problem(self) -> str | None:
        if self.db.guard is not None and (problem := self.db.guard()) is not None:
            return problem
        return self.db.problem

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> None:
        """Applies the migrations this database has not seen yet, each in one transaction."""
        for version, script in enumerate(MIGRATIONS, start=1):
            if self.schema_version >= version:
                continue
            with transaction(self.db) as db:
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {version}")
