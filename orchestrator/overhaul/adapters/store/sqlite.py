"""SQLite (WAL) persistence: scale set models, the gallery, instance ports, attempts, the journal, history.

The port is async (a shared PostgreSQL store answers over the network); here each call runs SQLite directly and
is short (local file, WAL, synchronous=FULL: one fsync per commit, so an acknowledged write survives a crash or a
file system error): well under a millisecond on an SSD, less than handing it to a thread would cost.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from overhaul.core.cloud_events import CloudEvent, Delivery, EventSubscription, parse_event_subscription
from overhaul.core.errors import Conflict
from overhaul.core.gallery import Gallery, ImageDefinition, ImageVersion
from overhaul.core.hosts import Host, HostGroup, parse_host, parse_host_group
from overhaul.core.lifecycle_hooks import HookEvent
from overhaul.core.maintenance import (
    ConfigurationAssignment,
    MaintenanceConfiguration,
    parse_maintenance_configuration,
)
from overhaul.core.model import ScaleSet, parse_scale_set
from overhaul.core.network import LoadBalancer, parse_load_balancer
from overhaul.core.replication import Replica, host_label
from overhaul.core.rollout import (
    Action,
    ActionResult,
    Attempt,
    AttemptStatus,
    attempt_from_json,
    attempt_to_json,
)
from overhaul.ports.store import HistoryRetention, JournalEntry, StoredAttempt, StoreUnavailable

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
)
# Delivered events are kept this long, so one produced again (after a crash) is not delivered again.
DELIVERED_KEPT = 86400.0
# Lifecycle hook events kept per scale set (the newest).
HOOK_EVENTS_KEPT = 100


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


class SqliteStore:
    """The embedded store: one SQLite file in WAL mode."""

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
        self.retention = retention or HistoryRetention()
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

    async def close(self) -> None:
        self.db.close()

    def problem(self) -> str | None:
        if self.db.guard is not None and (problem := self.db.guard()) is not None:
            return problem
        return self.db.problem

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            if self.db.in_transaction:  # a failed write may have ended it already
                with contextlib.suppress(sqlite3.Error, StoreUnavailable):
                    self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> None:
        """Applies the migrations this database has not seen yet, each in one transaction."""
        for version, script in enumerate(MIGRATIONS, start=1):
            if self.schema_version >= version:
                continue
            with self.transaction() as db:
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {version}")

    # --- scale sets ---------------------------------------------------------------------------------------

    async def put_scale_set(self, model: ScaleSet, now: float) -> None:
        self.db.execute(
            "INSERT INTO scale_sets (name, resource_group, subscription, doc, created, updated)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET resource_group = excluded.resource_group,"
            " subscription = excluded.subscription, doc = excluded.doc, updated = excluded.updated",
            (model.name, model.resource_group, model.subscription, json.dumps(model.to_json()), now, now),
        )

    async def get_scale_set(self, name: str) -> ScaleSet | None:
        row = self.db.execute("SELECT * FROM scale_sets WHERE name = ?", (name,)).fetchone()
        return self._scale_set(row) if row else None

    async def list_scale_sets(self) -> list[ScaleSet]:
        rows = self.db.execute("SELECT * FROM scale_sets ORDER BY name").fetchall()
        return [self._scale_set(r) for r in rows]

    @staticmethod
    def _scale_set(row: sqlite3.Row) -> ScaleSet:
        return parse_scale_set(
            json.loads(row["doc"]),
            name=row["name"],
            resource_group=row["resource_group"],
            subscription=row["subscription"],
        )

    async def delete_scale_set(self, name: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM scale_sets WHERE name = ?", (name,))
            db.execute("DELETE FROM instances WHERE scale_set = ?", (name,))
            db.execute("DELETE FROM host_ports WHERE scale_set = ?", (name,))
            db.execute("DELETE FROM configuration_assignments WHERE scale_set = ?", (name,))
            db.execute("DELETE FROM lifecycle_hook_events WHERE scale_set = ?", (name,))

    # --- instances: host ports kept across reimages ----------------------------------------------------------

    async def instance_ports(self, scale_set: str) -> dict[int, dict[int, int]]:
        rows = self.db.execute("SELECT instance_id, ports FROM instances WHERE scale_set = ?", (scale_set,))
        return {r["instance_id"]: {int(k): v for k, v in json.loads(r["ports"]).items()} for r in rows}

    async def instance_ports_of(self, scale_set: str, instance_id: int) -> dict[int, int]:
        row = self.db.execute(
            "SELECT ports FROM instances WHERE scale_set = ? AND instance_id = ?", (scale_set, instance_id)
        ).fetchone()
        return {int(k): v for k, v in json.loads(row["ports"]).items()} if row else {}

    async def all_host_ports(self, host: str = "") -> set[int]:
        return {r["port"] for r in self.db.execute("SELECT port FROM host_ports WHERE host = ?", (host,))}

    async def instance_hosts(self, scale_set: str) -> dict[int, str]:
        rows = self.db.execute("SELECT instance_id, host FROM instances WHERE scale_set = ?", (scale_set,))
        return {r["instance_id"]: r["host"] for r in rows}

    async def instance_host(self, scale_set: str, instance_id: int) -> str | None:
        row = self.db.execute(
            "SELECT host FROM instances WHERE scale_set = ? AND instance_id = ?", (scale_set, instance_id)
        ).fetchone()
        return None if row is None else str(row["host"])

    async def put_instance_host(self, scale_set: str, instance_id: int, host: str) -> None:
        self.db.execute(
            "INSERT INTO instances (scale_set, instance_id, ports, host) VALUES (?, ?, '{}', ?)"
            " ON CONFLICT (scale_set, instance_id) DO UPDATE SET host = excluded.host",
            (scale_set, instance_id, host),
        )

    async def put_instance_ports(
        self, scale_set: str, instance_id: int, ports: Mapping[int, int], *, take_over: bool = False
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO instances (scale_set, instance_id, ports) VALUES (?, ?, ?)"
                " ON CONFLICT (scale_set, instance_id) DO UPDATE SET ports = excluded.ports",
                (scale_set, instance_id, json.dumps({str(k): v for k, v in ports.items()})),
            )
            db.execute("DELETE FROM host_ports WHERE scale_set = ? AND instance_id = ?", (scale_set, instance_id))
            host = db.execute(
                "SELECT host FROM instances WHERE scale_set = ? AND instance_id = ?", (scale_set, instance_id)
            ).fetchone()["host"]
            for port in sorted(set(ports.values())):
                held = db.execute(
                    "SELECT scale_set, instance_id FROM host_ports WHERE host = ? AND port = ?", (host, port)
                ).fetchone()
                if held is not None and not take_over:
                    raise Conflict(
                        f"port {port} of host {host or 'local'} is held by {held['scale_set']}_{held['instance_id']}",
                        "HostPortTaken",
                    )
                if held is not None:
                    self._let_go(db, held["scale_set"], held["instance_id"], port)
                db.execute(
                    "INSERT INTO host_ports (host, port, scale_set, instance_id) VALUES (?, ?, ?, ?)",
                    (host, port, scale_set, instance_id),
                )

    @staticmethod
    def _let_go(db: sqlite3.Connection, scale_set: str, instance_id: int, port: int) -> None:
        """Another instance's record gives up a port the engine says is this one's."""
        db.execute("DELETE FROM host_ports WHERE scale_set = ? AND instance_id = ? AND port = ?",
                   (scale_set, instance_id, port))  # fmt: skip
        row = db.execute(
            "SELECT ports FROM instances WHERE scale_set = ? AND instance_id = ?", (scale_set, instance_id)
        ).fetchone()
        kept = {k: v for k, v in json.loads(row["ports"]).items() if v != port}
        db.execute("UPDATE instances SET ports = ? WHERE scale_set = ? AND instance_id = ?",
                   (json.dumps(kept), scale_set, instance_id))  # fmt: skip

    async def delete_instance(self, scale_set: str, instance_id: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM instances WHERE scale_set = ? AND instance_id = ?", (scale_set, instance_id))
            db.execute("DELETE FROM host_ports WHERE scale_set = ? AND instance_id = ?", (scale_set, instance_id))

    # --- gallery -------------------------------------------------------------------------------------------

    async def put_image_definition(self, definition: ImageDefinition) -> None:
        self.db.execute(
            "INSERT INTO image_definitions (gallery, name, publisher, offer, sku, doc) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (gallery, name) DO UPDATE SET publisher = excluded.publisher, offer = excluded.offer,"
            " sku = excluded.sku, doc = excluded.doc",
            (
                definition.gallery,
                definition.name,
                definition.publisher,
                definition.offer,
                definition.sku,
                json.dumps(definition.sent),
            ),
        )

    async def delete_image_definition(self, gallery: str, name: str) -> None:
        self.db.execute("DELETE FROM image_definitions WHERE gallery = ? AND name = ?", (gallery, name))

    async def put_gallery(self, gallery: Gallery) -> None:
        self.db.execute(
            "INSERT INTO galleries (name, resource_group, subscription, location, doc) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET location = excluded.location, doc = excluded.doc",
            (gallery.name, gallery.resource_group, gallery.subscription, gallery.location, json.dumps(gallery.sent)),
        )

    async def galleries(self) -> list[Gallery]:
        rows = self.db.execute("SELECT * FROM galleries ORDER BY name")
        return [
            Gallery(r["name"], r["resource_group"], r["subscription"], r["location"], json.loads(r["doc"]))
            for r in rows
        ]

    async def delete_gallery(self, name: str) -> None:
        self.db.execute("DELETE FROM galleries WHERE name = ?", (name,))

    async def put_load_balancer(self, balancer: LoadBalancer) -> None:
        self.db.execute(
            "INSERT INTO load_balancers (name, resource_group, subscription, doc) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET doc = excluded.doc",
            (balancer.name, balancer.resource_group, balancer.subscription, json.dumps(balancer.sent)),
        )

    async def load_balancers(self) -> list[LoadBalancer]:
        rows = self.db.execute("SELECT * FROM load_balancers ORDER BY name")
        return [
            parse_load_balancer(
                json.loads(r["doc"]), name=r["name"], resource_group=r["resource_group"], subscription=r["subscription"]
            )
            for r in rows
        ]

    async def delete_load_balancer(self, name: str) -> None:
        self.db.execute("DELETE FROM load_balancers WHERE name = ?", (name,))

    async def put_host_group(self, group: HostGroup) -> None:
        self.db.execute(
            "INSERT INTO host_groups (name, resource_group, subscription, doc) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET doc = excluded.doc",
            (group.name, group.resource_group, group.subscription, json.dumps(group.sent)),
        )

    async def host_groups(self) -> list[HostGroup]:
        rows = self.db.execute("SELECT * FROM host_groups ORDER BY name")
        return [
            parse_host_group(
                json.loads(r["doc"]), name=r["name"], resource_group=r["resource_group"], subscription=r["subscription"]
            )
            for r in rows
        ]

    async def delete_host_group(self, name: str) -> None:
        self.db.execute("DELETE FROM host_groups WHERE name = ?", (name,))

    async def put_host(self, host: Host) -> None:
        # The whole document: what the host was made with (its fault domain chosen then) is read back as sent.
        doc = json.dumps(host.to_json())
        row = (host.group, host.name, host.resource_group, host.subscription, host.engine.url, doc)
        try:
            self.db.execute(
                "INSERT INTO hosts (host_group, name, resource_group, subscription, engine, doc)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (host_group, name) DO UPDATE SET engine = excluded.engine, doc = excluded.doc",
                row,
            )
        except sqlite3.IntegrityError:
            field = "properties.overhaul.engine"
            raise Conflict(f"{field}: {host.engine.url} is another host's engine", "EngineInUse", field) from None

    async def hosts(self) -> list[Host]:
        rows = self.db.execute("SELECT * FROM hosts ORDER BY host_group, name")
        return [
            parse_host(
                json.loads(r["doc"]),
                group=r["host_group"],
                name=r["name"],
                resource_group=r["resource_group"],
                subscription=r["subscription"],
            )
            for r in rows
        ]

    async def delete_host(self, group: str, name: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM hosts WHERE host_group = ? AND name = ?", (group, name))
            db.execute("DELETE FROM image_replicas WHERE host_group = ? AND host = ?", (group, name))

    async def hook_event(self, name: str) -> HookEvent | None:
        row = self.db.execute("SELECT doc FROM lifecycle_hook_events WHERE name = ?", (name,)).fetchone()
        return HookEvent.from_json(json.loads(row["doc"])) if row else None

    async def hook_events(self, scale_set: str) -> list[HookEvent]:
        rows = self.db.execute(
            "SELECT doc FROM lifecycle_hook_events WHERE scale_set = ? ORDER BY created DESC, name", (scale_set,)
        )
        return [HookEvent.from_json(json.loads(r["doc"])) for r in rows]

    async def put_hook_event(self, event: HookEvent, expected: HookEvent | None) -> bool:
        doc = json.dumps(event.to_json(), sort_keys=True)
        with self.transaction() as db:
            if expected is None:
                written = db.execute(
                    "INSERT OR IGNORE INTO lifecycle_hook_events (name, scale_set, created, doc) VALUES (?, ?, ?, ?)",
                    (event.name, event.scale_set, event.time_created, doc),
                ).rowcount
                db.execute(
                    "DELETE FROM lifecycle_hook_events WHERE scale_set = ? AND name NOT IN (SELECT name FROM "
                    "lifecycle_hook_events WHERE scale_set = ? ORDER BY created DESC LIMIT ?)",
                    (event.scale_set, event.scale_set, HOOK_EVENTS_KEPT),
                )
            else:
                written = db.execute(
                    "UPDATE lifecycle_hook_events SET doc = ? WHERE name = ? AND doc = ?",
                    (doc, event.name, json.dumps(expected.to_json(), sort_keys=True)),
                ).rowcount
        return written == 1

    # --- events: subscriptions and the outbox --------------------------------------------------------------

    async def put_event_subscription(self, subscription: EventSubscription) -> None:
        doc = {"name": subscription.name, "scope": subscription.scope, "sent": subscription.sent}
        self.db.execute(
            "INSERT INTO event_subscriptions (id, doc) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
            (subscription.id, json.dumps(doc)),
        )

    async def event_subscriptions(self) -> list[EventSubscription]:
        found = []
        for row in self.db.execute("SELECT doc FROM event_subscriptions ORDER BY id"):
            doc = json.loads(row["doc"])
            found.append(parse_event_subscription(doc["sent"], name=doc["name"], scope=doc["scope"]))
        return found

    async def delete_event_subscription(self, subscription_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM event_subscriptions WHERE id = ?", (subscription_id,))
            db.execute("DELETE FROM event_outbox WHERE subscription = ?", (subscription_id,))

    async def enqueue(self, deliveries: Iterable[Delivery]) -> None:
        rows = [
            (d.subscription, d.event.id, json.dumps(d.event.to_json()), d.attempts, d.next_at, d.event.time)
            for d in deliveries
        ]
        if not rows:
            return
        with self.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO event_outbox (subscription, event_id, event, attempts, next_at, state, created)"
                " VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                rows,
            )

    @staticmethod
    def _delivery(row: sqlite3.Row) -> Delivery:
        event = CloudEvent.from_json(json.loads(row["event"]))
        return Delivery(row["subscription"], event, row["attempts"], row["next_at"], row["last_error"])

    async def due_deliveries(self, subscription_id: str, now: float, limit: int) -> list[Delivery]:
        rows = self.db.execute(
            "SELECT * FROM event_outbox WHERE subscription = ? AND state = 'pending' AND next_at <= ?"
            " ORDER BY created, rowid LIMIT ?",
            (subscription_id, now, limit),
        )
        return [self._delivery(r) for r in rows]

    async def next_delivery(self) -> tuple[str, float] | None:
        row = self.db.execute(
            "SELECT subscription, next_at FROM event_outbox WHERE state = 'pending' ORDER BY next_at LIMIT 1"
        ).fetchone()
        return (row["subscription"], row["next_at"]) if row else None

    async def _set_state(self, delivery: Delivery, state: str, error: str | None, now: float) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE event_outbox SET state = ?, attempts = ?, last_error = ?, next_at = ?"
                " WHERE subscription = ? AND event_id = ?",
                (state, delivery.attempts, error, now, delivery.subscription, delivery.event.id),
            )
            if state == "delivered":
                db.execute(
                    "DELETE FROM event_outbox WHERE state = 'delivered' AND next_at < ?", (now - DELIVERED_KEPT,)
                )

    async def delivered(self, delivery: Delivery, now: float) -> None:
        await self._set_state(replace(delivery, attempts=delivery.attempts + 1), "delivered", None, now)

    async def retry_later(self, delivery: Delivery) -> None:
        await self._set_state(delivery, "pending", delivery.last_error, delivery.next_at)

    async def dead_letter(self, delivery: Delivery, error: str, now: float) -> None:
        await self._set_state(replace(delivery, attempts=delivery.attempts + 1), "dead", error[:500], now)

    async def dead_letters(self, subscription_id: str) -> list[Delivery]:
        rows = self.db.execute(
            "SELECT * FROM event_outbox WHERE subscription = ? AND state = 'dead' ORDER BY created, rowid",
            (subscription_id,),
        )
        return [self._delivery(r) for r in rows]

    async def pending_deliveries(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM event_outbox WHERE state = 'pending'").fetchone()[0])

    async def put_maintenance_configuration(self, configuration: MaintenanceConfiguration) -> None:
        self.db.execute(
            "INSERT INTO maintenance_configurations (name, resource_group, subscription, doc) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET doc = excluded.doc",
            (
                configuration.name,
                configuration.resource_group,
                configuration.subscription,
                json.dumps(configuration.sent),
            ),
        )

    async def maintenance_configurations(self) -> list[MaintenanceConfiguration]:
        rows = self.db.execute("SELECT * FROM maintenance_configurations ORDER BY name")
        # Checked when it was put (against the minimum window then in force): read back as it was.
        return [
            parse_maintenance_configuration(
                json.loads(r["doc"]),
                name=r["name"],
                resource_group=r["resource_group"],
                subscription=r["subscription"],
                min_duration=0.0,
            )
            for r in rows
        ]

    async def delete_maintenance_configuration(self, name: str) -> None:
        self.db.execute("DELETE FROM maintenance_configurations WHERE name = ?", (name,))

    async def put_configuration_assignment(self, assignment: ConfigurationAssignment) -> None:
        doc = {
            "name": assignment.name,
            "resourceGroup": assignment.resource_group,
            "subscription": assignment.subscription,
            "location": assignment.location,
            "maintenanceConfigurationId": assignment.configuration_id,
        }
        self.db.execute(
            "INSERT INTO configuration_assignments (scale_set, name, doc) VALUES (?, ?, ?)"
            " ON CONFLICT (scale_set, name) DO UPDATE SET doc = excluded.doc",
            (assignment.scale_set, assignment.name, json.dumps(doc)),
        )

    async def configuration_assignments(self, scale_set: str | None = None) -> list[ConfigurationAssignment]:
        if scale_set is None:
            rows = self.db.execute("SELECT * FROM configuration_assignments ORDER BY scale_set, name")
        else:
            rows = self.db.execute(
                "SELECT * FROM configuration_assignments WHERE scale_set = ? ORDER BY name", (scale_set,)
            )
        found = []
        for r in rows:
            doc = json.loads(r["doc"])
            found.append(
                ConfigurationAssignment(
                    doc["name"],
                    r["scale_set"],
                    doc["resourceGroup"],
                    doc["subscription"],
                    doc["location"],
                    doc["maintenanceConfigurationId"],
                )
            )
        return found

    async def delete_configuration_assignment(self, scale_set: str, name: str) -> None:
        self.db.execute("DELETE FROM configuration_assignments WHERE scale_set = ? AND name = ?", (scale_set, name))

    async def image_definitions(self) -> list[ImageDefinition]:
        rows = self.db.execute("SELECT * FROM image_definitions ORDER BY gallery, name")
        return [
            ImageDefinition(r["gallery"], r["name"], r["publisher"], r["offer"], r["sku"], json.loads(r["doc"]))
            for r in rows
        ]

    async def put_image_version(self, version: ImageVersion, *, replicas: bool = False) -> None:
        with self.transaction() as db:
            self._put_image_version(db, version)
            if replicas:
                key = (version.gallery, version.image, version.version)
                db.execute("DELETE FROM image_replicas WHERE gallery = ? AND image = ? AND version = ?", key)
                for replica in version.replicas:
                    self._put_replica(db, key, replica)

    def _put_image_version(self, db: sqlite3.Connection, version: ImageVersion) -> None:
        db.execute(
            "INSERT INTO image_versions"
            " (gallery, image, version, artifact, exclude_from_latest, locations, published, quarantine, doc,"
            " disk_image)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (gallery, image, version) DO UPDATE SET"
            " artifact = excluded.artifact, disk_image = excluded.disk_image,"
            " exclude_from_latest = excluded.exclude_from_latest,"
            " locations = excluded.locations, quarantine = excluded.quarantine, doc = excluded.doc",
            (
                version.gallery,
                version.image,
                version.version,
                version.container_image,
                int(version.exclude_from_latest),
                json.dumps(list(version.target_locations)),
                version.published_at,
                version.quarantine,
                json.dumps(version.sent),
                version.disk_image,
            ),
        )

    @staticmethod
    def _put_replica(db: sqlite3.Connection, key: tuple[str, str, str], replica: Replica) -> None:
        group, _, host = host_label(replica.host).partition("/")
        db.execute(
            "INSERT INTO image_replicas (gallery, image, version, host_group, host, doc)"
            " SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM hosts WHERE host_group = ? AND name = ?)"
            " AND EXISTS (SELECT 1 FROM image_versions WHERE gallery = ? AND image = ? AND version = ?)"
            " ON CONFLICT (gallery, image, version, host_group, host) DO UPDATE SET doc = excluded.doc",
            (*key, group, host, json.dumps(replica.to_json()), group, host, *key),
        )

    async def put_replica(self, gallery: str, image: str, version: str, replica: Replica) -> None:
        with self.transaction() as db:
            self._put_replica(db, (gallery, image, version), replica)

    async def image_versions(self) -> list[ImageVersion]:
        replicas: dict[tuple[str, str, str], list[Replica]] = {}
        for r in self.db.execute("SELECT * FROM image_replicas ORDER BY host_group, host"):
            key = (r["gallery"].lower(), r["image"].lower(), r["version"])
            replicas.setdefault(key, []).append(Replica.from_json(json.loads(r["doc"])))
        rows = self.db.execute("SELECT * FROM image_versions ORDER BY gallery, image, published")
        return [
            ImageVersion(
                r["gallery"],
                r["image"],
                r["version"],
                r["artifact"],
                bool(r["exclude_from_latest"]),
                tuple(json.loads(r["locations"])),
                r["published"],
                quarantine=r["quarantine"],
                sent=json.loads(r["doc"]),
                disk_image=r["disk_image"],
                replicas=tuple(replicas.get((r["gallery"].lower(), r["image"].lower(), r["version"]), ())),
            )
            for r in rows
        ]

    async def delete_image_version(self, gallery: str, image: str, version: str) -> None:
        with self.transaction() as db:
            for table in ("image_versions", "image_replicas"):
                db.execute(
                    f"DELETE FROM {table} WHERE gallery = ? AND image = ? AND version = ?", (gallery, image, version)
                )

    # --- attempts, journal and history ----------------------------------------------------------------------

    def _upsert_attempt(self, db: sqlite3.Connection, attempt: Attempt, image_reference: Mapping[str, Any]) -> None:
        db.execute(
            "INSERT INTO attempts (id, scale_set, status, start_time, end_time, image_reference, doc, active)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET status = excluded.status,"
            " end_time = excluded.end_time, doc = excluded.doc, active = excluded.active",
            (
                attempt.id,
                attempt.scale_set,
                attempt.status.value,
                attempt.start_time,
                attempt.end_time,
                json.dumps(dict(image_reference)),
                json.dumps(attempt_to_json(attempt)),
                int(not attempt.done),
            ),
        )

    async def start_attempt(self, attempt: Attempt, image_reference: Mapping[str, Any]) -> str | None:
        """Records a new attempt unless another one of its scale set is active (compare-and-set in one write
        transaction, so it holds across processes too). Returns the id of the active one that prevented it."""
        with self.transaction() as db:
            busy = db.execute(
                "SELECT id FROM attempts WHERE scale_set = ? AND active = 1 AND id != ? LIMIT 1",
                (attempt.scale_set, attempt.id),
            ).fetchone()
            if busy is not None:
                return str(busy["id"])
            self._upsert_attempt(db, attempt, image_reference)
        if attempt.status.terminal:
            self._apply_retention(attempt.scale_set, attempt.end_time or attempt.start_time)
        return None

    async def save_attempt(self, attempt: Attempt, image_reference: Mapping[str, Any]) -> None:
        self._upsert_attempt(self.db, attempt, image_reference)
        if attempt.status.terminal:
            self._apply_retention(attempt.scale_set, attempt.end_time or attempt.start_time)

    async def request_cancel(self, attempt_id: str) -> bool:
        """Marks an active attempt for cancelling; False when it is not active. Its reconciler reads the mark."""
        cursor = self.db.execute("UPDATE attempts SET cancel = 1 WHERE id = ? AND active = 1", (attempt_id,))
        return cursor.rowcount > 0

    async def cancel_requested(self, attempt_id: str) -> bool:
        row = self.db.execute("SELECT cancel FROM attempts WHERE id = ?", (attempt_id,)).fetchone()
        return bool(row and row["cancel"])

    async def approve(self, attempt_id: str, instance_ids: Iterable[int]) -> bool:
        """Records approvals for an active attempt; False when it is not active."""
        row = self.db.execute("SELECT 1 FROM attempts WHERE id = ? AND active = 1", (attempt_id,)).fetchone()
        if row is None:
            return False
        self.db.executemany(
            "INSERT OR IGNORE INTO approvals (attempt_id, instance_id) VALUES (?, ?)",
            [(attempt_id, i) for i in instance_ids],
        )
        return True

    async def approvals(self, attempt_id: str) -> frozenset[int]:
        rows = self.db.execute("SELECT instance_id FROM approvals WHERE attempt_id = ?", (attempt_id,)).fetchall()
        return frozenset(int(r["instance_id"]) for r in rows)

    async def unfinished_attempts(self) -> list[StoredAttempt]:
        """Every attempt with work left (a crash or an error stopped it), oldest first."""
        rows = self.db.execute("SELECT * FROM attempts WHERE active = 1 ORDER BY start_time, rowid").fetchall()
        return [self._stored(r) for r in rows]

    @staticmethod
    def _stored(row: sqlite3.Row) -> StoredAttempt:
        return StoredAttempt(attempt_from_json(json.loads(row["doc"])), json.loads(row["image_reference"]))

    async def attempts(self, scale_set: str) -> list[StoredAttempt]:
        """Newest first, as Azure lists osUpgradeHistory."""
        rows = self.db.execute(
            "SELECT * FROM attempts WHERE scale_set = ? ORDER BY start_time DESC, rowid DESC", (scale_set,)
        ).fetchall()
        return [self._stored(r) for r in rows]

    async def get_attempt(self, attempt_id: str) -> StoredAttempt | None:
        row = self.db.execute("SELECT * FROM attempts WHERE id = ?", (attempt_id,)).fetchone()
        return self._stored(row) if row else None

    def _apply_retention(self, scale_set: str, now: float) -> None:
        """Keeps the newest ``keep`` finished attempts younger than ``max_age``; a running one always stays."""
        rows = self.db.execute(
            "SELECT id, status, start_time, active FROM attempts WHERE scale_set = ?"
            " ORDER BY start_time DESC, rowid DESC",
            (scale_set,),
        ).fetchall()
        doomed = [
            r["id"]
            for index, r in enumerate(rows)
            if r["status"] != AttemptStatus.ROLLING_FORWARD.value
            and not r["active"]
            and (index >= self.retention.keep or now - r["start_time"] > self.retention.max_age)
        ]
        if doomed:
            marks = ",".join("?" * len(doomed))
            with self.transaction() as db:
                db.execute(f"DELETE FROM attempts WHERE id IN ({marks})", doomed)
                db.execute(f"DELETE FROM journal WHERE attempt_id IN ({marks})", doomed)
                db.execute(f"DELETE FROM approvals WHERE attempt_id IN ({marks})", doomed)

    async def journal_begin(self, attempt_id: str, actions: Iterable[Action], now: float) -> None:
        """Recorded (and committed) before the actions run."""
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO journal (attempt_id, instance_id, action, phase, at) VALUES (?, ?, ?, 'begin', ?)",
                [(attempt_id, a.instance_id, a.kind.value, now) for a in actions],
            )

    async def journal_end(self, attempt_id: str, results: Iterable[ActionResult], now: float) -> None:
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO journal (attempt_id, instance_id, action, phase, ok, error, at)"
                " VALUES (?, ?, ?, 'end', ?, ?, ?)",
                [(attempt_id, r.action.instance_id, r.action.kind.value, int(r.ok), r.error, now) for r in results],
            )

    async def journal(self, attempt_id: str) -> list[JournalEntry]:
        rows = self.db.execute("SELECT * FROM journal WHERE attempt_id = ? ORDER BY seq", (attempt_id,))
        return [
            JournalEntry(
                r["attempt_id"],
                r["instance_id"],
                r["action"],
                r["phase"],
                None if r["ok"] is None else bool(r["ok"]),
                r["error"],
                r["at"],
            )
            for r in rows
        ]
