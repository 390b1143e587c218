"""Event subscriptions over the API, delivering to a real webhook receiver: Event Grid's validation handshake,
CloudEvents 1.0 for every step of a rollout, filters by type, refusals naming the field, and a webhook that fails,
resets or hangs costing its own subscription only (retries, then the dead letter, readable through the API)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.builders import API_MODEL, RG, VMSS, hooked_model, publish, seeded_serve, wait_for
from tests.serve import API, Served
from tests.webhook import Receiver, subscription_body, webhook_receiver

EVENTS = f"{VMSS}/providers/Microsoft.EventGrid/eventSubscriptions"
GROUP_EVENTS = f"{RG}/providers/Microsoft.EventGrid/eventSubscriptions"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with seeded_serve(tmp_path, "--events-timeout", "1") as running:
        yield running


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as running:
        yield running


def rolling(served: Served) -> None:
    model = dict(API_MODEL, sku={"name": "Standard_Container", "capacity": 2})
    model["properties"] = dict(model["properties"], upgradePolicy={"mode": "Rolling"})
    assert served.call("PUT", f"{VMSS}?{API}", model)[0] == 201


def test_a_rollout_reaches_the_webhook_as_cloudevents_after_the_handshake(served: Served, receiver: Receiver) -> None:
    rolling(served)
    status, doc, _ = served.call("PUT", f"{EVENTS}/ops?{API}", subscription_body(receiver.url))
    assert status == 201, doc
    assert receiver.handshakes[-1]["WebHook-Request-Origin"] == "eventgrid.azure.net"
    assert doc["properties"]["destination"]["properties"]["endpointBaseUrl"] == receiver.url
    assert served.call("GET", f"{EVENTS}/ops?{API}")[1]["name"] == "ops"
    assert [s["name"] for s in served.call("GET", f"{EVENTS}?{API}")[1]["value"]] == ["ops"]
    publish(served, "2.0.0")
    status, _, _ = served.call("POST", f"{VMSS}/osRollingUpgrade?{API}")
    assert status == 202
    wait_for(lambda: "Overhaul.Compute.RollingUpgradeCompleted" in receiver.types())
    kinds = receiver.types()
    assert (
        kinds[0] == "Overhaul.Compute.RollingUpgradeStarted" and kinds.count("Overhaul.Compute.InstanceUpgraded") == 2
    )
    assert kinds.count("Overhaul.Compute.RollingUpgradeBatchStarted") == 2
    event = receiver.received[0]
    assert (
        event["specversion"] == "1.0"
        and event["subject"].lower() == VMSS.lower()
        and event["data"]["targetVersion"] == "2.0.0"
    )
    assert set(receiver.content_types) == {"application/cloudevents+json; charset=utf-8"}
    wait_for(lambda: served.metric("overhaul_events_pending") == 0)
    delivered = served.metric(f'overhaul_events_delivered_total{{subscription="{EVENTS}/ops"}}')
    assert delivered == len(kinds)


def test_filters_by_type_and_scope_and_refusals_naming_the_field(served: Served, receiver: Receiver) -> None:
    rolling(served)
    only_ends = subscription_body(
        receiver.url, filter={"includedEventTypes": ["Overhaul.Compute.RollingUpgradeCompleted"]}
    )
    assert served.call("PUT", f"{GROUP_EVENTS}/ends?{API}", only_ends)[0] == 201
    for body, target in [
        (subscription_body("ftp://127.0.0.1/x"), "properties.destination.properties.endpointUrl"),
        (
            subscription_body(receiver.url, filter={"includedEventTypes": ["Nope"]}),
            "properties.filter.includedEventTypes[0]",
        ),
        (subscription_body(receiver.url, eventDeliverySchema="EventGridSchema"), "properties.eventDeliverySchema"),
    ]:
        status, doc, _ = served.call("PUT", f"{EVENTS}/bad?{API}", body)
        assert status == 400 and doc["error"]["target"] == target, doc
    receiver.allow_handshake = False
    status, doc, _ = served.call("PUT", f"{EVENTS}/refused?{API}", subscription_body(receiver.url))
    assert status == 400 and doc["error"]["code"] == "UrlValidationFailed", doc
    assert served.call("GET", f"{EVENTS}/refused?{API}")[0] == 404  # nothing was stored
    other = "/subscriptions/subscription_id/resourceGroups/other/providers/Microsoft.Compute/virtualMachineScaleSets/x"
    assert served.call("PUT", f"{other}/providers/Microsoft.EventGrid/eventSubscriptions/s?{API}", only_ends)[0] == 404
    publish(served, "2.0.0")
    assert served.call("POST", f"{VMSS}/osRollingUpgrade?{API}")[0] == 202
    wait_for(lambda: receiver.types() == ["Overhaul.Compute.RollingUpgradeCompleted"])
    assert served.call("DELETE", f"{GROUP_EVENTS}/ends?{API}")[0] == 200
    assert served.call("DELETE", f"{GROUP_EVENTS}/ends?{API}")[0] == 204
    # A scale set's own subscriptions go with it.
    receiver.allow_handshake = True
    assert served.call("PUT", f"{EVENTS}/mine?{API}", subscription_body(receiver.url))[0] == 201
    assert served.delete(f"{VMSS}?{API}")[1]["status"] == "Succeeded"
    assert served.call("PUT", f"{VMSS}?{API}", API_MODEL)[0] == 201
    assert served.call("GET", f"{EVENTS}?{API}")[1]["value"] == []


def test_a_failing_or_hanging_webhook_costs_its_own_subscription_only(served: Served, tmp_path: Path) -> None:
    rolling(served)
    with (
        webhook_receiver() as good,
        webhook_receiver() as failing,
        webhook_receiver() as hanging,
        webhook_receiver() as resetting,
    ):
        once = {"retryPolicy": {"maxDeliveryAttempts": 1}}
        for name, hook in (("good", good), ("failing", failing), ("hanging", hanging), ("resetting", resetting)):
            assert served.call("PUT", f"{EVENTS}/{name}?{API}", subscription_body(hook.url, **once))[0] == 201
        failing.fail_with = 500
        hanging.hang = True
        resetting.reset = True
        publish(served, "2.0.0")
        assert served.call("POST", f"{VMSS}/osRollingUpgrade?{API}")[0] == 202
        wait_for(lambda: "Overhaul.Compute.RollingUpgradeCompleted" in good.types())
        assert (
            served.call("GET", f"{VMSS}/rollingUpgrades/latest?{API}")[1]["properties"]["runningStatus"]["code"]
            == "Completed"
        )

        def dead(name: str) -> list[dict[str, object]]:
            return list(served.call("GET", f"{EVENTS}/{name}/deadLetteredEvents?{API}")[1]["value"])

        wait_for(lambda: len(dead("failing")) == len(good.ids()), timeout=30)
        [first, *_] = dead("failing")
        assert first["lastError"] == "HTTP 500" and first["deliveryAttempts"] == 1
        assert {e["event"]["id"] for e in dead("failing")} == set(good.ids())  # type: ignore[index]
        wait_for(lambda: len(dead("hanging")) == len(good.ids()), timeout=60)  # one bounded timeout each
        assert "Timeout" in str(dead("hanging")[0]["lastError"])
        wait_for(lambda: len(dead("resetting")) == len(good.ids()), timeout=30)
        assert "Disconnected" in str(dead("resetting")[0]["lastError"]) or "Connection" in str(
            dead("resetting")[0]["lastError"]
        )
        assert dead("good") == [] and served.metric("overhaul_events_pending") == 0


def test_a_lifecycle_hook_waiting_reaches_the_webhook_which_answers_it(served: Served, receiver: Receiver) -> None:
    """The loop a webhook closes: told a batch waits, it approves the event through the API."""
    hook = {"type": "UpgradeAutoOSRollingBatchStarting", "waitDuration": "PT1H"}
    assert served.call("PUT", f"{VMSS}?{API}", hooked_model(hook))[0] == 201
    assert served.call("PUT", f"{EVENTS}/ops?{API}", subscription_body(receiver.url))[0] == 201
    publish(served, "2.0.0")  # the platform starts the upgrade; batch 1 waits
    wait_for(lambda: "Overhaul.Compute.LifecycleHookWaiting" in receiver.types())
    waiting = next(e for e in receiver.received if e["type"] == "Overhaul.Compute.LifecycleHookWaiting")
    assert waiting["data"]["instances"] == ["0"] and waiting["data"]["defaultAction"] == "Approve"
    name = waiting["data"]["lifecycleHookEventName"]
    target = {"resource": {"id": f"{VMSS}/virtualMachines/0"}, "actionState": "Approved"}
    url = f"{VMSS}/lifecycleHookEvents/{name}?{API}"
    assert served.call("PATCH", url, {"properties": {"targetResources": [target]}})[0] == 200
    wait_for(lambda: receiver.types().count("Overhaul.Compute.LifecycleHookWaiting") == 2)  # batch 2's
    # Instance 0's commit may end after batch 2's event opened (commits overlap the next batch's start).
    wait_for(lambda: "Overhaul.Compute.InstanceUpgraded" in receiver.types())
