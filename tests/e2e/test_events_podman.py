"""Events of a real Podman rollout reach a real webhook although `overhaul serve` is SIGKILLed in the middle of it
and started again: none is lost (the outbox is persisted), and an event delivered twice carries the same id."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from demo import busybox_images as engine_images
from tests import builders
from tests.serve import API, Served, overhaul_serve
from tests.webhook import subscription_body, webhook_receiver

pytestmark = [pytest.mark.slow, pytest.mark.engine]
REPO = "localhost/overhaul-events"
RG = "/subscriptions/local/resourceGroups/events"
GALLERY = RG + "/providers/Microsoft.Compute/galleries/g/images/tiny"
VMSS = RG + "/providers/Microsoft.Compute/virtualMachineScaleSets/ev"
SERVE = ("--engine", "podman", "--probe-interval", "0.2", "--auto-upgrade-first-delay", "3600")
wait_for = functools.partial(builders.wait_for, timeout=120, every=0.2)


def model() -> dict[str, Any]:
    policy = {"maxBatchInstancePercent": 25, "pauseTimeBetweenBatches": "PT2S"}
    return {
        "sku": {"capacity": 4},
        "properties": {
            "upgradePolicy": {"mode": "Rolling", "rollingUpgradePolicy": policy},
            "virtualMachineProfile": {
                "storageProfile": {
                    "imageReference": {"publisher": "overhaul", "offer": "events", "sku": "tiny", "version": "latest"}
                },
                "networkProfile": {"healthProbe": {"protocol": "Http", "port": 8080, "requestPath": "/health"}},
                "overhaul": {"stopTimeoutInSeconds": 2},
            },
        },
    }


def publish(served: Served, version: str) -> None:
    body = {"properties": {"storageProfile": {"source": {"overhaul": {"containerImage": f"{REPO}:{version}"}}}}}
    status, doc, _ = served.call("PUT", f"{GALLERY}/versions/{version}?{API}", body)
    assert status in (200, 201), doc


def test_no_event_is_lost_when_serve_is_sigkilled_mid_rollout(tmp_path: Path) -> None:
    for version in ("1.0.0", "2.0.0"):
        engine_images.build("podman", f"{REPO}:{version}", version)
    state = tmp_path / "state"
    with webhook_receiver() as receiver:
        with overhaul_serve(state, *SERVE) as first:
            identifier = {"publisher": "overhaul", "offer": "events", "sku": "tiny"}
            assert first.call("PUT", f"{GALLERY}?{API}", {"properties": {"identifier": identifier}})[0] in (200, 201)
            publish(first, "1.0.0")
            assert first.call("PUT", f"{VMSS}?{API}", model())[0] == 201
            wait_for(lambda: [h for _, h in first.versions_and_health(VMSS)] == ["Healthy"] * 4)
            subscribed = first.call(
                "PUT",
                f"{VMSS}/providers/Microsoft.EventGrid/eventSubscriptions/ops?{API}",
                subscription_body(receiver.url),
            )
            assert subscribed[0] == 201, subscribed
            publish(first, "2.0.0")
            assert first.call("POST", f"{VMSS}/osRollingUpgrade?{API}")[0] == 202
            wait_for(lambda: "Overhaul.Compute.RollingUpgradeBatchStarted" in receiver.types())
            first.process.kill()  # mid-rollout: batch 1 of 4 in flight or just done
            first.process.wait(10)
        attempt = receiver.received[0]["data"]["rollingUpgradeId"]
        expected = {
            f"{attempt}/started",
            *(f"{attempt}/batch/{n}" for n in range(1, 5)),
            *(f"{attempt}/instance/{i}/Upgraded" for i in range(4)),
            f"{attempt}/completed",
        }
        with overhaul_serve(state, *SERVE) as second:
            try:
                receiver.wait_for(expected, timeout=180)
                assert second.latest_code(VMSS) == "Completed"
            finally:
                second.delete(f"{VMSS}?{API}")
    by_id: dict[str, list[dict[str, Any]]] = {}
    for event in receiver.received:
        by_id.setdefault(event["id"], []).append(event)
    assert set(by_id) == expected  # none lost, none made up
    for copies in by_id.values():  # a duplicate is the same event
        assert all(
            (c["type"], c["subject"], c["data"]) == (copies[0]["type"], copies[0]["subject"], copies[0]["data"])
            for c in copies
        )
