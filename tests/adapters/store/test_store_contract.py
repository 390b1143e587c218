"""The Store port's contract, the same assertions over every store (SQLite, and PostgreSQL on a throwaway
cluster): what is written reads back, after a reopen too; names compare case-insensitively; "one active attempt
per scale set" holds under concurrent starts; cancels and approvals reach only an active attempt; the journal keeps
its order; history keeps what the retention says."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from overhaul.adapters.store.postgresql import PostgresStore
from overhaul.adapters.store.sqlite import SqliteStore
from overhaul.core.cloud_events import CloudEvent, Delivery, EventType, parse_event_subscription
from overhaul.core.errors import Conflict
from overhaul.core.gallery import Gallery, ImageDefinition, ImageVersion
from overhaul.core.hosts import parse_host, parse_host_group
from overhaul.core.lifecycle_hooks import ActionState, HookType, LifecycleHook, Response, batch_event, respond
from overhaul.core.maintenance import ConfigurationAssignment, parse_maintenance_configuration
from overhaul.core.model import RollingUpgradePolicy, parse_scale_set
from overhaul.core.network import parse_load_balancer
from overhaul.core.planner import Health, InstanceView
from overhaul.core.replication import Replica, ReplicaState
from overhaul.core.rollout import Action, ActionKind, ActionResult, Attempt, AttemptStatus, StartedBy, start
from overhaul.ports.health import HealthReport
from overhaul.ports.store import HistoryRetention, Store
from tests.builders import RUNTIME_MODEL


@dataclass
class Opened:
    """A store, and how to open it again on the same data (as a restarted orchestrator does)."""

    store: Store
    reopen: Callable[[], Awaitable[Store]]


@pytest.fixture(params=["sqlite", "postgresql"])
async def opened(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opened]:
    retention = HistoryRetention(keep=3)
    if request.param == "sqlite":

        async def make() -> Store:
            return SqliteStore(tmp_path / "overhaul.db", retention)
    else:
        url = request.getfixturevalue("postgres").create_database()

        async def make() -> Store:
            return await PostgresStore.open(url, retention)

    handle = Opened(await make(), make)
    yield handle
    await handle.store.close()


async def reopened(handle: Opened) -> Store:
    await handle.store.close()
    handle.store = await handle.reopen()
    return handle.store


def attempt(scale_set: str, attempt_id: str, now: float = 100.0) -> Attempt:
    views = {i: InstanceView(i, "1.0.0", Health.HEALTHY, observed_at=now) for i in range(2)}
    return start(
        attempt_id=attempt_id,
        scale_set=scale_set,
        target_version="2.0.0",
        started_by=StartedBy.USER,
        disable_automatic_rollback=False,
        policy=RollingUpgradePolicy(),
        capacity=2,
        views=views,
        now=now,
    )


PROBE = {"protocol": "Http", "port": 80, "requestPath": "/"}
REFERENCE = {"publisher": "p", "offer": "o", "sku": "s", "version": "2.0.0"}


async def test_scale_sets_read_back_by_any_spelling_and_after_a_reopen(opened: Opened) -> None:
    model = parse_scale_set(RUNTIME_MODEL, name="Web", resource_group="rg", subscription="sub")
    await opened.store.put_scale_set(model, 1.0)
    assert await opened.store.get_scale_set("WEB") == model
    store = await reopened(opened)
    assert await store.get_scale_set("web") == model
    assert [m.name for m in await store.list_scale_sets()] == ["Web"]
    await store.delete_scale_set("web")
    assert await store.get_scale_set("Web") is None and await store.list_scale_sets() == []


async def test_the_gallery_and_load_balancers_read_back(opened: Opened) -> None:
    store = opened.store
    await store.put_gallery(Gallery("g", "rg", "sub"))
    await store.put_image_definition(ImageDefinition("g", "os", "p", "o", "s"))
    version = ImageVersion("g", "os", "1.0.0", "localhost/os:1.0.0", published_at=5.0)
    await store.put_image_version(version)
    balancer = parse_load_balancer(
        {
            "properties": {
                "probes": [{"name": "http", "properties": {"protocol": "Http", "port": 80, "requestPath": "/"}}]
            }
        },
        name="lb",
        resource_group="rg",
        subscription="sub",
    )
    await store.put_load_balancer(balancer)
    store = await reopened(opened)
    assert [g.name for g in await store.galleries()] == ["g"]
    assert [(d.gallery, d.name) for d in await store.image_definitions()] == [("g", "os")]
    assert await store.image_versions() == [version]
    assert await store.load_balancers() == [balancer]
    await store.delete_image_version("g", "os", "1.0.0")
    await store.delete_image_definition("g", "os")
    await store.delete_gallery("g")
    await store.delete_load_balancer("lb")
    assert (await store.galleries(), await store.image_versions(), await store.load_balancers()) == ([], [], [])


async def test_host_groups_and_hosts_read_back_after_a_reopen_and_one_host_per_engine(opened: Opened) -> None:
    store = opened.store
    group = parse_host_group(
        {"location": "edge", "zones": ["1"], "tags": {"a": "b"}, "properties": {"platformFaultDomainCount": 2}},
        name="Rack1",
        resource_group="rg",
        subscription="s",
    )
    await store.put_host_group(group)
    body = {"sku": {"name": "x"}, "properties": {"platformFaultDomain": 1, "overhaul": {"engine": "unix:///a.sock"}}}
    host = parse_host(body, group="Rack1", name="h1", resource_group="rg", subscription="s")
    await store.put_host(host)
    store = await reopened(opened)
    assert await store.host_groups() == [group]
    assert (await store.host_groups())[0].to_json()["tags"] == {"a": "b"}
    assert await store.hosts() == [host]
    other = parse_host(body, group="Rack1", name="h2", resource_group="rg", subscription="s")
    with pytest.raises(Conflict, match=r"unix:///a\.sock"):  # two writers at once: the store is the last word
        await store.put_host(other)
    await store.delete_host("RACK1", "H1")
    await store.delete_host_group("rack1")
    assert await store.hosts() == [] and await store.host_groups() == []


async def test_one_active_attempt_per_scale_set_under_concurrent_starts(opened: Opened) -> None:
    store = opened.store
    outcomes = await asyncio.gather(*(store.start_attempt(attempt("web", f"a{i}"), REFERENCE) for i in range(20)))
    winners = [f"a{i}" for i, busy in enumerate(outcomes) if busy is None]
    assert len(winners) == 1
    assert {busy for busy in outcomes if busy is not None} == set(winners)  # the losers are told the winner
    assert await store.start_attempt(attempt("api", "other"), REFERENCE) is None  # another scale set: free
    assert {s.attempt.id for s in await store.unfinished_attempts()} == {winners[0], "other"}

    ended = attempt("web", winners[0]).finished(AttemptStatus.COMPLETED, 200.0)
    await store.save_attempt(ended, REFERENCE)
    assert await store.start_attempt(attempt("web", "next", now=300.0), REFERENCE) is None
    store = await reopened(opened)
    stored = await store.get_attempt(winners[0])
    assert stored is not None and stored.attempt == ended and stored.image_reference == REFERENCE


async def test_cancels_and_approvals_reach_only_an_active_attempt(opened: Opened) -> None:
    store = opened.store
    assert not await store.request_cancel("nobody")
    assert not await store.approve("nobody", [0])
    await store.start_attempt(attempt("web", "a"), REFERENCE)
    assert await store.approve("a", [0]) and await store.approve("a", [1])
    assert await store.request_cancel("a")
    store = await reopened(opened)
    assert await store.cancel_requested("a")
    assert await store.approvals("a") == frozenset({0, 1})
    await store.save_attempt(attempt("web", "a").finished(AttemptStatus.CANCELLED, 200.0), REFERENCE)
    assert not await store.request_cancel("a") and not await store.approve("a", [0])


async def test_the_journal_keeps_its_order(opened: Opened) -> None:
    store = opened.store
    await store.start_attempt(attempt("web", "a"), REFERENCE)
    reimage, commit = Action(ActionKind.REIMAGE, 1), Action(ActionKind.COMMIT, 0)
    await store.journal_begin("a", [reimage, commit], 1.0)
    await store.journal_end("a", [ActionResult(commit, ok=True), ActionResult(reimage, ok=False, error="no")], 2.0)
    store = await reopened(opened)
    entries = [(e.instance_id, e.action, e.phase, e.ok, e.error) for e in await store.journal("a")]
    assert entries == [
        (1, "reimage", "begin", None, None),
        (0, "commit", "begin", None, None),
        (0, "commit", "end", True, None),
        (1, "reimage", "end", False, "no"),
    ]


async def test_history_keeps_what_the_retention_says_newest_first(opened: Opened) -> None:
    store = opened.store
    for number in range(5):
        begun = attempt("web", f"a{number}", now=100.0 * (number + 1))
        assert await store.start_attempt(begun, REFERENCE) is None
        await store.save_attempt(begun.finished(AttemptStatus.COMPLETED, begun.start_time + 1), REFERENCE)
    assert [s.attempt.id for s in await store.attempts("web")] == ["a4", "a3", "a2"]  # keep=3


async def test_instance_ports_are_kept_per_instance(opened: Opened) -> None:
    store = opened.store
    await store.put_instance_ports("web", 0, {8080: 40000})
    await store.put_instance_ports("web", 1, {8080: 40001, 8090: 40002})
    await store.put_instance_ports("api", 0, {8080: 40003})
    store = await reopened(opened)
    assert await store.instance_ports("web") == {0: {8080: 40000}, 1: {8080: 40001, 8090: 40002}}
    assert await store.all_host_ports() == {40000, 40001, 40002, 40003}
    await store.delete_instance("web", 1)
    assert await store.instance_ports("web") == {0: {8080: 40000}}
    assert await store.instance_ports_of("web", 0) == {8080: 40000}
    assert await store.instance_ports_of("web", 9) == {}


async def test_a_host_port_is_held_by_one_instance_of_its_host(opened: Opened) -> None:
    """Ports are rows unique per (host, port): two instances of one host never both keep one, whatever the
    writers; another host's same number is its own."""
    store = opened.store
    for scale_set, instance_id, host in (("web", 0, "h1"), ("web", 1, "h1"), ("api", 0, "h2"), ("api", 1, "")):
        await store.put_instance_host(scale_set, instance_id, host)
    await store.put_instance_ports("web", 0, {8080: 20000, 8090: 20001})
    await store.put_instance_ports("api", 0, {8080: 20000})  # another host
    await store.put_instance_ports("api", 1, {8080: 20000})  # the orchestrator's own engine
    with pytest.raises(Conflict, match="port 20001 of host h1 is held by web_0") as refused:
        await store.put_instance_ports("web", 1, {8080: 20002, 8090: 20001})
    assert refused.value.code == "HostPortTaken"
    assert await store.instance_ports_of("web", 1) == {}  # nothing of the refused write is kept
    assert await store.all_host_ports("H1") == {20000, 20001}
    # The engine's word on where an instance listens takes a port over from a record that said otherwise.
    await store.put_instance_ports("web", 1, {8080: 20002, 8090: 20001}, take_over=True)
    assert await store.all_host_ports("h1") == {20000, 20001, 20002}
    assert await store.instance_ports_of("web", 0) == {8080: 20000}
    await store.put_instance_ports("web", 0, {8080: 20003})  # a new OS disk's: the old ports are let go
    store = await reopened(opened)
    assert await store.all_host_ports("h1") == {20001, 20002, 20003}
    await store.delete_scale_set("web")
    assert await store.all_host_ports("h1") == set()
    assert await store.all_host_ports() == {20000}


async def test_lifecycle_hook_events_are_written_by_compare_and_set_and_read_back_newest_first(
    opened: Opened,
) -> None:
    """A response and the platform's settling of the same event never overwrite each other: each writes only
    over what it read."""
    hook = LifecycleHook(HookType.BATCH_STARTING, 60)
    first = batch_event(hook, scale_set="Web", version="2.0.0", attempt_id="a1", batch=1, ids=(0, 1), now=100.0)
    second = batch_event(hook, scale_set="Web", version="2.0.0", attempt_id="a1", batch=2, ids=(2,), now=200.0)
    store = opened.store
    assert await store.put_hook_event(first, None)
    assert not await store.put_hook_event(first, None)  # opened again after a crash: it is there already
    assert await store.put_hook_event(second, None)
    answered = respond(first, Response({0: ActionState.APPROVED}), 110.0)
    assert await store.put_hook_event(answered, first)
    settled = first.settled(160.0)
    assert not await store.put_hook_event(settled, first)  # over a response it did not see: refused
    store = await reopened(opened)
    assert await store.hook_event(first.name.upper()) == answered
    assert [e.name for e in await store.hook_events("web")] == [second.name, first.name]
    await store.delete_scale_set("web")
    assert await store.hook_events("Web") == [] and await store.hook_event(first.name) is None


async def test_the_outbox_keeps_each_delivery_once_until_it_is_delivered_or_dead(opened: Opened) -> None:
    scope = "/subscriptions/s/resourceGroups/rg"
    hook = {"destination": {"endpointType": "WebHook", "properties": {"endpointUrl": "http://127.0.0.1:9/hook"}}}
    subscription = parse_event_subscription({"properties": hook}, name="ops", scope=scope)
    store = opened.store
    await store.put_event_subscription(subscription)
    subject = scope + "/providers/Microsoft.Compute/virtualMachineScaleSets/web"
    first, second = (CloudEvent(f"a/{n}", EventType.ATTEMPT_STARTED, subject, float(n)) for n in (1, 2))
    await store.enqueue([Delivery(subscription.id, first, next_at=1.0), Delivery(subscription.id, second, next_at=2.0)])
    await store.enqueue([Delivery(subscription.id, first, next_at=1.0)])  # produced again after a crash
    assert await store.pending_deliveries() == 2 and await store.next_delivery() == (subscription.id, 1.0)
    assert [d.event for d in await store.due_deliveries(subscription.id, 1.5, 10)] == [first]
    await store.delivered(Delivery(subscription.id, first), 5.0)
    await store.enqueue([Delivery(subscription.id, first, next_at=6.0)])  # delivered: not again
    later = Delivery(subscription.id, second).failed("HTTP 500", 5.0, subscription)
    assert later is not None
    await store.retry_later(later)
    store = await reopened(opened)
    assert await store.event_subscriptions() == [subscription]
    assert await store.due_deliveries(subscription.id, 6.0, 10) == []
    [waiting] = await store.due_deliveries(subscription.id, 15.0, 10)
    assert waiting.attempts == 1 and waiting.last_error == "HTTP 500"
    await store.dead_letter(waiting, "HTTP 500", 16.0)
    [dead] = await store.dead_letters(subscription.id)
    assert dead.event == second and dead.attempts == 2 and dead.last_error == "HTTP 500"
    assert await store.pending_deliveries() == 0 and await store.next_delivery() is None
    await store.delete_event_subscription(subscription.id.upper())
    assert await store.event_subscriptions() == [] and await store.dead_letters(subscription.id) == []


async def test_copies_of_a_version_are_kept_only_while_the_version_and_the_host_exist(opened: Opened) -> None:
    store = opened.store
    await store.put_host_group(
        parse_host_group(
            {"location": "edge", "properties": {"platformFaultDomainCount": 1}},
            name="rack",
            resource_group="rg",
            subscription="s",
        )
    )
    body = {"properties": {"overhaul": {"engine": "unix:///a.sock"}}}
    host = parse_host(body, group="rack", name="h1", resource_group="rg", subscription="s")
    await store.put_host(host)
    version = ImageVersion("g", "os", "1.0.0", "localhost/os:1.0.0", published_at=5.0, quarantine="bad batch 1")
    await store.put_image_version(version)
    copying = Replica(host.id, "edge", ReplicaState.REPLICATING, 40, updated=6.0)
    await store.put_replica("g", "os", "1.0.0", copying)
    await store.put_replica("g", "os", "9.9.9", copying)  # no such version: not kept
    other = Replica(host.id.replace("/h1", "/gone"), "edge", ReplicaState.FAILED, details="refused")
    await store.put_replica("g", "os", "1.0.0", other)  # no such host: not kept
    store = await reopened(opened)
    [read] = await store.image_versions()
    assert read.replicas == (copying,) and read.quarantine == "bad batch 1"
    done = replace(copying, state=ReplicaState.COMPLETED, progress=100)
    await store.put_image_version(replace(version, quarantine=None, replicas=(done,)), replicas=True)
    [read] = await store.image_versions()
    assert read.replicas == (done,) and read.quarantine is None
    await store.put_image_version(replace(version, replicas=()))  # replicas=False: the copies are kept
    assert (await store.image_versions())[0].replicas == (done,)
    await store.delete_host("rack", "h1")
    assert (await store.image_versions())[0].replicas == ()


async def test_maintenance_configurations_and_their_assignments_read_back(opened: Opened) -> None:
    window = {"startDateTime": "2026-11-01 22:00", "duration": "05:00", "timeZone": "UTC", "recurEvery": "Day"}
    doc = {"location": "local", "properties": {"maintenanceScope": "OSImage", "maintenanceWindow": window}}
    configuration = parse_maintenance_configuration(doc, name="Nightly", resource_group="rg", subscription="s")
    assignment = ConfigurationAssignment("a1", "Web", "rg", "s", "local", configuration.id)
    store = opened.store
    await store.put_maintenance_configuration(configuration)
    await store.put_configuration_assignment(assignment)
    store = await reopened(opened)
    assert await store.maintenance_configurations() == [configuration]
    assert await store.configuration_assignments("web") == [assignment] == await store.configuration_assignments()
    await store.delete_configuration_assignment("WEB", "A1")
    await store.delete_maintenance_configuration("nightly")
    assert (await store.maintenance_configurations(), await store.configuration_assignments()) == ([], [])


async def test_health_verdicts_read_back_and_go_with_their_instance(opened: Opened) -> None:
    healthy = HealthReport(Health.HEALTHY, 10.0, "HTTP 200", phase=2, approved="2.0.0")
    gone = HealthReport(Health.UNKNOWN, 11.0, "connection refused", reachable=False)
    store = opened.store
    await store.put_health_verdicts({("Web", 0): healthy, ("web", 1): gone, ("api", 0): healthy})
    await store.put_health_verdicts({("web", 0): replace(healthy, health=Health.UNHEALTHY, final=True)})
    store = await reopened(opened)
    verdicts = {(name.lower(), i): r for (name, i), r in (await store.health_verdicts()).items()}
    assert verdicts == {
        ("web", 0): replace(healthy, health=Health.UNHEALTHY, final=True),
        ("web", 1): gone,
        ("api", 0): healthy,
    }
    await store.delete_instance("web", 1)
    await store.delete_scale_set("API")
    assert [i for _, i in await store.health_verdicts()] == [0]
