"""The store's statements, written once for both databases (SQLite embedded, PostgreSQL shared).

Each store gives a ``Database``: statements with ``?`` placeholders, rows read by column name, transactions, and
a unique key's violation raised as ``Duplicate``. What differs (schema, migrations, locking, how a connection
fails) lives in sqlite.py and postgresql.py. In a transaction nothing here awaits anything but the database, so
SQLite's single connection (whose calls never suspend) is never shared by two transactions at once."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import Any, Protocol

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
from overhaul.core.planner import Health
from overhaul.core.replication import Replica, host_label
from overhaul.core.resources import Resource
from overhaul.core.rollout import (
    Action,
    ActionResult,
    Attempt,
    AttemptStatus,
    attempt_from_json,
    attempt_to_json,
)
from overhaul.ports.health import HealthReport, Key
from overhaul.ports.hints import VERDICTS
from overhaul.ports.store import HistoryRetention, JournalEntry, StoredAttempt

# Delivered events are kept this long, so one produced again (after a crash) is not delivered again.
DELIVERED_KEPT = 86400.0
# Lifecycle hook events kept per scale set (the newest).
HOOK_EVENTS_KEPT = 100

Row = Mapping[str, Any]
Params = Sequence[Any]


class Duplicate(Exception):
    """A write would give a unique key a second row (the database refused it: nothing was written)."""


class Database(Protocol):
    """Statements use ``?`` placeholders; rows are read by column name."""

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Runs one statement: the number of rows it changed."""
        ...

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None: ...
    async def one(self, sql: str, params: Params = ()) -> Row | None: ...
    async def all(self, sql: str, params: Params = ()) -> list[Row]: ...
    async def notify(self, topic: str) -> None:
        """A hint to other orchestrators sharing the store, delivered when the transaction commits (none for one
        orchestrator's own store)."""
        ...

    def transaction(self, lock: str = "") -> AbstractAsyncContextManager[Database]:
        """A write transaction; ``lock``: a name no other transaction with the same name runs beside (SQLite
        serialises every write transaction anyway)."""
        ...


class SqlStore:
    """The Store port over a ``Database``."""

    def __init__(self, sql: Database, retention: HistoryRetention | None = None) -> None:
        self.sql = sql
        self.retention = retention or HistoryRetention()

    def writer_token(self) -> int | None:
        """The lease token writes are made under (None: this store has one writer)."""
        return None

    # --- scale sets ---------------------------------------------------------------------------------------

    async def put_scale_set(self, model: ScaleSet, now: float) -> None:
        await self.sql.execute(
            "INSERT INTO scale_sets (name, resource_group, subscription, doc, created, updated)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET resource_group = excluded.resource_group,"
            " subscription = excluded.subscription, doc = excluded.doc, updated = excluded.updated",
            (model.name, model.resource_group, model.subscription, json.dumps(model.to_json()), now, now),
        )

    async def get_scale_set(self, name: str) -> ScaleSet | None:
        row = await self.sql.one("SELECT * FROM scale_sets WHERE name = ?", (name,))
        return self._scale_set(row) if row else None

    async def list_scale_sets(self) -> list[ScaleSet]:
        return [self._scale_set(r) for r in await self.sql.all("SELECT * FROM scale_sets ORDER BY name")]

    @staticmethod
    def _scale_set(row: Row) -> ScaleSet:
        return parse_scale_set(
            json.loads(row["doc"]),
            name=row["name"],
            resource_group=row["resource_group"],
            subscription=row["subscription"],
        )

    async def delete_scale_set(self, name: str) -> None:
        async with self.sql.transaction() as db:
            await db.execute("DELETE FROM scale_sets WHERE name = ?", (name,))
            for table in (
                "instances",
                "host_ports",
                "configuration_assignments",
                "lifecycle_hook_events",
                "health_verdicts",
            ):
                await db.execute(f"DELETE FROM {table} WHERE scale_set = ?", (name,))

    # --- instances: host ports kept across reimages ----------------------------------------------------------

    async def instance_ports(self, scale_set: str) -> dict[int, dict[int, int]]:
        rows = await self.sql.all("SELECT instance_id, ports FROM instances WHERE scale_set = ?", (scale_set,))
        return {r["instance_id"]: {int(k): v for k, v in json.loads(r["ports"]).items()} for r in rows}

    async def instance_ports_of(self, scale_set: str, instance_id: int) -> dict[int, int]:
        row = await self.sql.one(
            "SELECT ports FROM instances WHERE scale_set = ? AND instance_id = ?", (scale_set, instance_id)
        )
        return {int(k): v for k, v in json.loads(row["ports"]).items()} if row else {}

    async def all_host_ports(self, host: str = "") -> set[int]:
        return {r["port"] for r in await self.sql.all("SELECT port FROM host_ports WHERE host = ?", (host,))}

    async def instance_hosts(self, scale_set: str) -> dict[int, str]:
        rows = await self.sql.all("SELECT instance_id, host FROM instances WHERE scale_set = ?", (scale_set,))
        return {r["instance_id"]: r["host"] for r in rows}

    async def instance_host(self, scale_set: str, instance_id: int) -> str | None:
        row = await self.sql.one(
            "SELECT host FROM instances WHERE scale_set = ? AND instance_id = ?", (scale_set, instance_id)
        )
        return None if row is None else str(row["host"])

    async def put_instance_host(self, scale_set: str, instance_id: int, host: str) -> None:
        await self.sql.execute(
            "INSERT INTO instances (scale_set, instance_id, ports, host) VALUES (?, ?, '{}', ?)"
            " ON CONFLICT (scale_set, instance_id) DO UPDATE SET host = excluded.host",
            (scale_set, instance_id, host),
        )

    async def put_instance_ports(
        self, scale_set: str, instance_id: int, ports: Mapping[int, int], *, take_over: bool = False
    ) -> None:
        async with self.sql.transaction("host_ports") as db:
            await db.execute(
                "INSERT INTO instances (scale_set, instance_id, ports) VALUES (?, ?, ?)"
                " ON CONFLICT (scale_set, instance_id) DO UPDATE SET ports = excluded.ports",
                (scale_set, instance_id, json.dumps({str(k): v for k, v in ports.items()})),
            )
            key = (scale_set, instance_id)
            await db.execute("DELETE FROM host_ports WHERE scale_set = ? AND instance_id = ?", key)
            placed = await db.one("SELECT host FROM instances WHERE scale_set = ? AND instance_id = ?", key)
            host = str(placed["host"]) if placed else ""
            for port in sorted(set(ports.values())):
                held = await db.one(
                    "SELECT scale_set, instance_id FROM host_ports WHERE host = ? AND port = ?", (host, port)
                )
                if held is not None and not take_over:
                    raise Conflict(
                        f"port {port} of host {host or 'local'} is held by {held['scale_set']}_{held['instance_id']}",
                        "HostPortTaken",
                    )
                if held is not None:
                    await self._let_go(db, held["scale_set"], held["instance_id"], port)
                await db.execute(
                    "INSERT INTO host_ports (host, port, scale_set, instance_id) VALUES (?, ?, ?, ?)",
                    (host, port, scale_set, instance_id),
                )

    @staticmethod
    async def _let_go(db: Database, scale_set: str, instance_id: int, port: int) -> None:
        """Another instance's record gives up a port the engine says is this one's."""
        await db.execute("DELETE FROM host_ports WHERE scale_set = ? AND instance_id = ? AND port = ?",
                         (scale_set, instance_id, port))  # fmt: skip
        row = await db.one(
            "SELECT ports FROM instances WHERE scale_set = ? AND instance_id = ?", (scale_set, instance_id)
        )
        kept = {k: v for k, v in json.loads(row["ports"] if row else "{}").items() if v != port}
        await db.execute("UPDATE instances SET ports = ? WHERE scale_set = ? AND instance_id = ?",
                         (json.dumps(kept), scale_set, instance_id))  # fmt: skip

    async def delete_instance(self, scale_set: str, instance_id: int) -> None:
        async with self.sql.transaction() as db:
            for table in ("instances", "host_ports", "health_verdicts"):
                await db.execute(
                    f"DELETE FROM {table} WHERE scale_set = ? AND instance_id = ?", (scale_set, instance_id)
                )

    # --- gallery -------------------------------------------------------------------------------------------

    async def put_image_definition(self, definition: ImageDefinition) -> None:
        await self.sql.execute(
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

    async def image_definitions(self) -> list[ImageDefinition]:
        rows = await self.sql.all("SELECT * FROM image_definitions ORDER BY gallery, name")
        return [
            ImageDefinition(r["gallery"], r["name"], r["publisher"], r["offer"], r["sku"], json.loads(r["doc"]))
            for r in rows
        ]

    async def delete_image_definition(self, gallery: str, name: str) -> None:
        await self.sql.execute("DELETE FROM image_definitions WHERE gallery = ? AND name = ?", (gallery, name))

    async def put_gallery(self, gallery: Gallery) -> None:
        await self.sql.execute(
            "INSERT INTO galleries (name, resource_group, subscription, location, doc) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET location = excluded.location, doc = excluded.doc",
            (gallery.name, gallery.resource_group, gallery.subscription, gallery.location, json.dumps(gallery.sent)),
        )

    async def galleries(self) -> list[Gallery]:
        rows = await self.sql.all("SELECT * FROM galleries ORDER BY name")
        return [
            Gallery(r["name"], r["resource_group"], r["subscription"], r["location"], json.loads(r["doc"]))
            for r in rows
        ]

    async def delete_gallery(self, name: str) -> None:
        await self.sql.execute("DELETE FROM galleries WHERE name = ?", (name,))

    async def put_image_version(self, version: ImageVersion, *, replicas: bool = False) -> None:
        async with self.sql.transaction() as db:
            await self._put_image_version(db, version)
            if replicas:
                key = (version.gallery, version.image, version.version)
                await db.execute("DELETE FROM image_replicas WHERE gallery = ? AND image = ? AND version = ?", key)
                for replica in version.replicas:
                    await self._put_replica(db, key, replica)

    @staticmethod
    async def _put_image_version(db: Database, version: ImageVersion) -> None:
        await db.execute(
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
    async def _put_replica(db: Database, key: tuple[str, str, str], replica: Replica) -> None:
        group, _, host = host_label(replica.host).partition("/")
        await db.execute(
            "INSERT INTO image_replicas (gallery, image, version, host_group, host, doc)"
            " SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM hosts WHERE host_group = ? AND name = ?)"
            " AND EXISTS (SELECT 1 FROM image_versions WHERE gallery = ? AND image = ? AND version = ?)"
            " ON CONFLICT (gallery, image, version, host_group, host) DO UPDATE SET doc = excluded.doc",
            (*key, group, host, json.dumps(replica.to_json()), group, host, *key),
        )

    async def put_replica(self, gallery: str, image: str, version: str, replica: Replica) -> None:
        async with self.sql.transaction() as db:
            await self._put_replica(db, (gallery, image, version), replica)

    async def image_versions(self) -> list[ImageVersion]:
        replicas: dict[tuple[str, str, str], list[Replica]] = {}
        for r in await self.sql.all("SELECT * FROM image_replicas ORDER BY host_group, host"):
            key = (r["gallery"].lower(), r["image"].lower(), r["version"])
            replicas.setdefault(key, []).append(Replica.from_json(json.loads(r["doc"])))
        rows = await self.sql.all("SELECT * FROM image_versions ORDER BY gallery, image, published")
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
        async with self.sql.transaction() as db:
            for table in ("image_versions", "image_replicas"):
                await db.execute(
                    f"DELETE FROM {table} WHERE gallery = ? AND image = ? AND version = ?", (gallery, image, version)
                )

    # --- resources kept as documents ------------------------------------------------------------------------

    async def put_resource(self, resource: Resource) -> None:
        await self.sql.execute(
            "INSERT INTO resources (id, type, subscription, resource_group, name, doc) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
            (
                resource.id,
                resource.type,
                resource.subscription,
                resource.resource_group,
                resource.name,
                json.dumps(resource.doc),
            ),
        )

    async def get_resource(self, resource_id: str) -> Resource | None:
        row = await self.sql.one("SELECT * FROM resources WHERE id = ?", (resource_id,))
        return None if row is None else _resource(row)

    async def list_resources(
        self, type_: str | None = None, subscription: str | None = None, resource_group: str | None = None
    ) -> list[Resource]:
        clauses, params = [], []
        for column, value in (("type", type_), ("subscription", subscription), ("resource_group", resource_group)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return [_resource(r) for r in await self.sql.all(f"SELECT * FROM resources{where} ORDER BY id", params)]

    async def delete_resource(self, resource_id: str) -> None:
        await self.sql.execute("DELETE FROM resources WHERE id = ?", (resource_id,))

    # --- network, hosts, maintenance -----------------------------------------------------------------------

    async def put_load_balancer(self, balancer: LoadBalancer) -> None:
        await self.sql.execute(
            "INSERT INTO load_balancers (name, resource_group, subscription, doc) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET doc = excluded.doc",
            (balancer.name, balancer.resource_group, balancer.subscription, json.dumps(balancer.sent)),
        )

    async def load_balancers(self) -> list[LoadBalancer]:
        rows = await self.sql.all("SELECT * FROM load_balancers ORDER BY name")
        return [
            parse_load_balancer(
                json.loads(r["doc"]), name=r["name"], resource_group=r["resource_group"], subscription=r["subscription"]
            )
            for r in rows
        ]

    async def delete_load_balancer(self, name: str) -> None:
        await self.sql.execute("DELETE FROM load_balancers WHERE name = ?", (name,))

    async def put_host_group(self, group: HostGroup) -> None:
        await self.sql.execute(
            "INSERT INTO host_groups (name, resource_group, subscription, doc) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET doc = excluded.doc",
            (group.name, group.resource_group, group.subscription, json.dumps(group.sent)),
        )

    async def host_groups(self) -> list[HostGroup]:
        rows = await self.sql.all("SELECT * FROM host_groups ORDER BY name")
        return [
            parse_host_group(
                json.loads(r["doc"]), name=r["name"], resource_group=r["resource_group"], subscription=r["subscription"]
            )
            for r in rows
        ]

    async def delete_host_group(self, name: str) -> None:
        await self.sql.execute("DELETE FROM host_groups WHERE name = ?", (name,))

    async def put_host(self, host: Host) -> None:
        # The whole document: what the host was made with (its fault domain chosen then) is read back as sent.
        doc = json.dumps(host.to_json())
        row = (host.group, host.name, host.resource_group, host.subscription, host.engine.url, doc)
        try:
            await self.sql.execute(
                "INSERT INTO hosts (host_group, name, resource_group, subscription, engine, doc)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (host_group, name) DO UPDATE SET engine = excluded.engine, doc = excluded.doc",
                row,
            )
        except Duplicate:
            field = "properties.overhaul.engine"
            raise Conflict(f"{field}: {host.engine.url} is another host's engine", "EngineInUse", field) from None

    async def hosts(self) -> list[Host]:
        rows = await self.sql.all("SELECT * FROM hosts ORDER BY host_group, name")
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
        async with self.sql.transaction() as db:
            await db.execute("DELETE FROM hosts WHERE host_group = ? AND name = ?", (group, name))
            await db.execute("DELETE FROM image_replicas WHERE host_group = ? AND host = ?", (group, name))

    async def put_maintenance_configuration(self, configuration: MaintenanceConfiguration) -> None:
        await self.sql.execute(
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
        rows = await self.sql.all("SELECT * FROM maintenance_configurations ORDER BY name")
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
        await self.sql.execute("DELETE FROM maintenance_configurations WHERE name = ?", (name,))

    async def put_configuration_assignment(self, assignment: ConfigurationAssignment) -> None:
        doc = {
            "name": assignment.name,
            "resourceGroup": assignment.resource_group,
            "subscription": assignment.subscription,
            "location": assignment.location,
            "maintenanceConfigurationId": assignment.configuration_id,
        }
        await self.sql.execute(
            "INSERT INTO configuration_assignments (scale_set, name, doc) VALUES (?, ?, ?)"
            " ON CONFLICT (scale_set, name) DO UPDATE SET doc = excluded.doc",
            (assignment.scale_set, assignment.name, json.dumps(doc)),
        )

    async def configuration_assignments(self, scale_set: str | None = None) -> list[ConfigurationAssignment]:
        if scale_set is None:
            rows = await self.sql.all("SELECT * FROM configuration_assignments ORDER BY scale_set, name")
        else:
            rows = await self.sql.all(
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
        await self.sql.execute(
            "DELETE FROM configuration_assignments WHERE scale_set = ? AND name = ?", (scale_set, name)
        )

    # --- lifecycle hook events -----------------------------------------------------------------------------

    async def hook_event(self, name: str) -> HookEvent | None:
        row = await self.sql.one("SELECT doc FROM lifecycle_hook_events WHERE name = ?", (name,))
        return HookEvent.from_json(json.loads(row["doc"])) if row else None

    async def hook_events(self, scale_set: str) -> list[HookEvent]:
        rows = await self.sql.all(
            "SELECT doc FROM lifecycle_hook_events WHERE scale_set = ? ORDER BY created DESC, name", (scale_set,)
        )
        return [HookEvent.from_json(json.loads(r["doc"])) for r in rows]

    async def put_hook_event(self, event: HookEvent, expected: HookEvent | None) -> bool:
        doc = json.dumps(event.to_json(), sort_keys=True)
        async with self.sql.transaction() as db:
            if expected is None:
                written = await db.execute(
                    "INSERT INTO lifecycle_hook_events (name, scale_set, created, doc) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT DO NOTHING",
                    (event.name, event.scale_set, event.time_created, doc),
                )
                await db.execute(
                    "DELETE FROM lifecycle_hook_events WHERE scale_set = ? AND name NOT IN (SELECT name FROM "
                    "lifecycle_hook_events WHERE scale_set = ? ORDER BY created DESC LIMIT ?)",
                    (event.scale_set, event.scale_set, HOOK_EVENTS_KEPT),
                )
            else:
                written = await db.execute(
                    "UPDATE lifecycle_hook_events SET doc = ? WHERE name = ? AND doc = ?",
                    (doc, event.name, json.dumps(expected.to_json(), sort_keys=True)),
                )
        return written == 1

    # --- events: subscriptions and the outbox --------------------------------------------------------------

    async def put_event_subscription(self, subscription: EventSubscription) -> None:
        doc = {"name": subscription.name, "scope": subscription.scope, "sent": subscription.sent}
        await self.sql.execute(
            "INSERT INTO event_subscriptions (id, doc) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
            (subscription.id, json.dumps(doc)),
        )

    async def event_subscriptions(self) -> list[EventSubscription]:
        found = []
        for row in await self.sql.all("SELECT doc FROM event_subscriptions ORDER BY id"):
            doc = json.loads(row["doc"])
            found.append(parse_event_subscription(doc["sent"], name=doc["name"], scope=doc["scope"]))
        return found

    async def delete_event_subscription(self, subscription_id: str) -> None:
        async with self.sql.transaction() as db:
            await db.execute("DELETE FROM event_subscriptions WHERE id = ?", (subscription_id,))
            await db.execute("DELETE FROM event_outbox WHERE subscription = ?", (subscription_id,))

    async def enqueue(self, deliveries: Iterable[Delivery]) -> None:
        rows = [
            (d.subscription, d.event.id, json.dumps(d.event.to_json()), d.attempts, d.next_at, d.event.time)
            for d in deliveries
        ]
        if not rows:
            return
        async with self.sql.transaction() as db:
            await db.executemany(
                "INSERT INTO event_outbox (subscription, event_id, event, attempts, next_at, state, created)"
                " VALUES (?, ?, ?, ?, ?, 'pending', ?) ON CONFLICT DO NOTHING",
                rows,
            )

    @staticmethod
    def _delivery(row: Row) -> Delivery:
        event = CloudEvent.from_json(json.loads(row["event"]))
        return Delivery(row["subscription"], event, row["attempts"], row["next_at"], row["last_error"])

    async def due_deliveries(self, subscription_id: str, now: float, limit: int) -> list[Delivery]:
        rows = await self.sql.all(
            "SELECT * FROM event_outbox WHERE subscription = ? AND state = 'pending' AND next_at <= ?"
            " ORDER BY created, rowid LIMIT ?",
            (subscription_id, now, limit),
        )
        return [self._delivery(r) for r in rows]

    async def next_delivery(self) -> tuple[str, float] | None:
        row = await self.sql.one(
            "SELECT subscription, next_at FROM event_outbox WHERE state = 'pending' ORDER BY next_at LIMIT 1"
        )
        return (row["subscription"], row["next_at"]) if row else None

    async def _set_state(self, delivery: Delivery, state: str, error: str | None, now: float) -> None:
        async with self.sql.transaction() as db:
            await db.execute(
                "UPDATE event_outbox SET state = ?, attempts = ?, last_error = ?, next_at = ?"
                " WHERE subscription = ? AND event_id = ?",
                (state, delivery.attempts, error, now, delivery.subscription, delivery.event.id),
            )
            if state == "delivered":
                await db.execute(
                    "DELETE FROM event_outbox WHERE state = 'delivered' AND next_at < ?", (now - DELIVERED_KEPT,)
                )

    async def delivered(self, delivery: Delivery, now: float) -> None:
        await self._set_state(replace(delivery, attempts=delivery.attempts + 1), "delivered", None, now)

    async def retry_later(self, delivery: Delivery) -> None:
        await self._set_state(delivery, "pending", delivery.last_error, delivery.next_at)

    async def dead_letter(self, delivery: Delivery, error: str, now: float) -> None:
        await self._set_state(replace(delivery, attempts=delivery.attempts + 1), "dead", error[:500], now)

    async def dead_letters(self, subscription_id: str) -> list[Delivery]:
        rows = await self.sql.all(
            "SELECT * FROM event_outbox WHERE subscription = ? AND state = 'dead' ORDER BY created, rowid",
            (subscription_id,),
        )
        return [self._delivery(r) for r in rows]

    async def pending_deliveries(self) -> int:
        row = await self.sql.one("SELECT COUNT(*) AS n FROM event_outbox WHERE state = 'pending'")
        return int(row["n"]) if row else 0

    # --- attempts, journal and history ----------------------------------------------------------------------

    @staticmethod
    async def _upsert_attempt(db: Database, attempt: Attempt, image_reference: Mapping[str, Any]) -> None:
        await db.execute(
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
        transaction, serialised per scale set, so it holds across processes too). Returns the id of the active
        one that prevented it."""
        async with self.sql.transaction(f"attempts/{attempt.scale_set.lower()}") as db:
            busy = await db.one(
                "SELECT id FROM attempts WHERE scale_set = ? AND active = 1 AND id != ? LIMIT 1",
                (attempt.scale_set, attempt.id),
            )
            if busy is not None:
                return str(busy["id"])
            await self._upsert_attempt(db, attempt, image_reference)
        if attempt.status.terminal:
            await self._apply_retention(attempt.scale_set, attempt.end_time or attempt.start_time)
        return None

    async def save_attempt(self, attempt: Attempt, image_reference: Mapping[str, Any]) -> None:
        async with self.sql.transaction() as db:
            await self._upsert_attempt(db, attempt, image_reference)
        if attempt.status.terminal:
            await self._apply_retention(attempt.scale_set, attempt.end_time or attempt.start_time)

    async def request_cancel(self, attempt_id: str) -> bool:
        """Marks an active attempt for cancelling; False when it is not active. Its reconciler reads the mark."""
        return await self.sql.execute("UPDATE attempts SET cancel = 1 WHERE id = ? AND active = 1", (attempt_id,)) > 0

    async def cancel_requested(self, attempt_id: str) -> bool:
        row = await self.sql.one("SELECT cancel FROM attempts WHERE id = ?", (attempt_id,))
        return bool(row and row["cancel"])

    async def approve(self, attempt_id: str, instance_ids: Iterable[int]) -> bool:
        """Records approvals for an active attempt; False when it is not active."""
        async with self.sql.transaction() as db:
            if await db.one("SELECT 1 AS one FROM attempts WHERE id = ? AND active = 1", (attempt_id,)) is None:
                return False
            await db.executemany(
                "INSERT INTO approvals (attempt_id, instance_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [(attempt_id, i) for i in instance_ids],
            )
        return True

    async def approvals(self, attempt_id: str) -> frozenset[int]:
        rows = await self.sql.all("SELECT instance_id FROM approvals WHERE attempt_id = ?", (attempt_id,))
        return frozenset(int(r["instance_id"]) for r in rows)

    async def unfinished_attempts(self) -> list[StoredAttempt]:
        """Every attempt with work left (a crash or an error stopped it), oldest first."""
        rows = await self.sql.all("SELECT * FROM attempts WHERE active = 1 ORDER BY start_time, rowid")
        return [self._stored(r) for r in rows]

    @staticmethod
    def _stored(row: Row) -> StoredAttempt:
        return StoredAttempt(attempt_from_json(json.loads(row["doc"])), json.loads(row["image_reference"]))

    async def attempts(self, scale_set: str) -> list[StoredAttempt]:
        """Newest first, as Azure lists osUpgradeHistory."""
        rows = await self.sql.all(
            "SELECT * FROM attempts WHERE scale_set = ? ORDER BY start_time DESC, rowid DESC", (scale_set,)
        )
        return [self._stored(r) for r in rows]

    async def get_attempt(self, attempt_id: str) -> StoredAttempt | None:
        row = await self.sql.one("SELECT * FROM attempts WHERE id = ?", (attempt_id,))
        return self._stored(row) if row else None

    async def _apply_retention(self, scale_set: str, now: float) -> None:
        """Keeps the newest ``keep`` finished attempts younger than ``max_age``; a running one always stays."""
        rows = await self.sql.all(
            "SELECT id, status, start_time, active FROM attempts WHERE scale_set = ?"
            " ORDER BY start_time DESC, rowid DESC",
            (scale_set,),
        )
        doomed = [
            r["id"]
            for index, r in enumerate(rows)
            if r["status"] != AttemptStatus.ROLLING_FORWARD.value
            and not r["active"]
            and (index >= self.retention.keep or now - r["start_time"] > self.retention.max_age)
        ]
        if doomed:
            marks = ",".join("?" * len(doomed))
            async with self.sql.transaction() as db:
                await db.execute(f"DELETE FROM attempts WHERE id IN ({marks})", doomed)
                await db.execute(f"DELETE FROM journal WHERE attempt_id IN ({marks})", doomed)
                await db.execute(f"DELETE FROM approvals WHERE attempt_id IN ({marks})", doomed)

    async def journal_begin(self, attempt_id: str, actions: Iterable[Action], now: float) -> None:
        """Recorded (and committed) before the actions run."""
        token = self.writer_token()
        async with self.sql.transaction() as db:
            await db.executemany(
                "INSERT INTO journal (attempt_id, instance_id, action, phase, at, token)"
                " VALUES (?, ?, ?, 'begin', ?, ?)",
                [(attempt_id, a.instance_id, a.kind.value, now, token) for a in actions],
            )

    async def journal_end(self, attempt_id: str, results: Iterable[ActionResult], now: float) -> None:
        token = self.writer_token()
        rows = [
            (attempt_id, r.action.instance_id, r.action.kind.value, int(r.ok), r.error, now, token) for r in results
        ]
        async with self.sql.transaction() as db:
            await db.executemany(
                "INSERT INTO journal (attempt_id, instance_id, action, phase, ok, error, at, token)"
                " VALUES (?, ?, ?, 'end', ?, ?, ?, ?)",
                rows,
            )

    async def journal(self, attempt_id: str) -> list[JournalEntry]:
        rows = await self.sql.all("SELECT * FROM journal WHERE attempt_id = ? ORDER BY seq", (attempt_id,))
        return [
            JournalEntry(
                r["attempt_id"],
                r["instance_id"],
                r["action"],
                r["phase"],
                None if r["ok"] is None else bool(r["ok"]),
                r["error"],
                r["at"],
                r["token"],
            )
            for r in rows
        ]

    # --- health verdicts ------------------------------------------------------------------------------------

    async def put_health_verdicts(self, verdicts: Mapping[Key, HealthReport]) -> None:
        rows = [
            (scale_set, instance_id, json.dumps(verdict_json(r))) for (scale_set, instance_id), r in verdicts.items()
        ]
        if not rows:
            return
        async with self.sql.transaction() as db:
            await db.executemany(
                "INSERT INTO health_verdicts (scale_set, instance_id, doc) VALUES (?, ?, ?)"
                " ON CONFLICT (scale_set, instance_id) DO UPDATE SET doc = excluded.doc",
                rows,
            )
            await db.notify(VERDICTS)

    async def health_verdicts(self) -> dict[Key, HealthReport]:
        rows = await self.sql.all("SELECT * FROM health_verdicts")
        return {(r["scale_set"], r["instance_id"]): verdict_of(json.loads(r["doc"])) for r in rows}


def verdict_json(report: HealthReport) -> dict[str, Any]:
    return {
        "health": report.health.value,
        "observedAt": report.observed_at,
        "detail": report.detail,
        "phase": report.phase,
        "skipUpgrade": report.skip_upgrade,
        "final": report.final,
        "reachable": report.reachable,
        "approved": report.approved,
    }


def verdict_of(doc: Mapping[str, Any]) -> HealthReport:
    return HealthReport(
        Health(doc["health"]),
        float(doc["observedAt"]),
        str(doc["detail"]),
        doc["phase"],
        bool(doc["skipUpgrade"]),
        bool(doc["final"]),
        bool(doc["reachable"]),
        doc["approved"],
    )


def _resource(row: Row) -> Resource:
    return Resource(row["subscription"], row["resource_group"], row["type"], row["name"], json.loads(row["doc"]))
