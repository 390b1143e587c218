"""Template deployments as `az vmss create` makes them (Microsoft.Resources/deployments): the template's resources
put in dependency order, its outputs, each resource's operation; a template with what overhaul cannot evaluate is
refused before anything is made; a resource that fails fails the deployment with its error, the others kept."""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.builders import GALLERY, seeded_serve
from tests.serve import Served

API = "api-version=2024-11-01"
RG = "/subscriptions/subscription_id/resourcegroups/myResourceGroup"
DEPLOYMENTS = f"{RG}/providers/Microsoft.Resources/deployments"
LB_ID = "[resourceId('Microsoft.Network/loadBalancers', 'webLB')]"
# The shape `az vmss create --image GALLERY_IMAGE_ID` deploys (trimmed of what repeats), as az 2.91 sends it.
TEMPLATE: dict[str, Any] = {
    "$schema": "https://schema.management.azure.com/schemas/2015-01-01/deploymentTemplate.json#",
    "contentVersion": "1.0.0.0",
    "parameters": {"capacity": {"type": "int", "defaultValue": 2}},
    "variables": {"pool": "webLBBEPool"},
    "resources": [
        {
            "type": "Microsoft.Compute/virtualMachineScaleSets",
            "name": "web",
            "location": "local",
            "apiVersion": "2026-04-01",
            "dependsOn": ["Microsoft.Network/virtualNetworks/webVNET", "Microsoft.Network/loadBalancers/webLB"],
            "sku": {"name": "Standard_D2s_v5", "capacity": "[parameters('capacity')]"},
            "properties": {
                "upgradePolicy": {"mode": "Manual"},
                "orchestrationMode": "Uniform",
                "virtualMachineProfile": {
                    "storageProfile": {
                        "imageReference": {"id": GALLERY.replace("/resourceGroups/", "/resourceGroups/")},
                        "osDisk": {"createOption": "FromImage", "caching": "ReadWrite"},
                    },
                    "osProfile": {"computerNamePrefix": "web", "adminUsername": "azureuser"},
                    "networkProfile": {
                        "networkInterfaceConfigurations": [
                            {
                                "name": "webNic",
                                "properties": {
                                    "ipConfigurations": [
                                        {
                                            "name": "webIPConfig",
                                            "properties": {
                                                "loadBalancerBackendAddressPools": [
                                                    {
                                                        "id": f"[concat({LB_ID[1:-1]}, '/backendAddressPools/', "
                                                        "variables('pool'))]"
                                                    }
                                                ]
                                            },
                                        }
                                    ]
                                },
                            }
                        ]
                    },
                    "overhaul": {"healthFromPowerState": True},
                },
            },
        },
        {
            "type": "Microsoft.Network/loadBalancers/inboundNatRules",
            "name": "webLB/NatRule",
            "apiVersion": "2022-01-01",
            "dependsOn": ["[concat('Microsoft.Network/loadBalancers/', 'webLB')]"],
            "properties": {"backendPort": 22, "frontendPortRangeStart": "50000", "protocol": "tcp"},
        },
        {
            "type": "Microsoft.Network/loadBalancers",
            "name": "webLB",
            "location": "local",
            "apiVersion": "2022-01-01",
            "dependsOn": ["Microsoft.Network/virtualNetworks/webVNET"],
            "properties": {"backendAddressPools": [{"name": "[variables('pool')]"}]},
        },
        {
            "type": "Microsoft.Network/virtualNetworks",
            "name": "webVNET",
            "location": "local",
            "apiVersion": "2015-06-15",
            "properties": {"addressSpace": {"addressPrefixes": ["10.0.0.0/16"]}},
        },
    ],
    "outputs": {
        "VMSS": {
            "type": "object",
            "value": "[reference(resourceId('Microsoft.Compute/virtualMachineScaleSets', 'web'),"
            "providers('Microsoft.Compute', 'virtualMachineScaleSets').apiVersions[0])]",
        }
    },
}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with seeded_serve(tmp_path) as running:
        yield running


def deploy(served: Served, name: str, template: dict[str, Any]) -> dict[str, Any]:
    """PUT, then poll the operation as az does; the deployment's record once it has ended."""
    body = {"properties": {"template": template, "parameters": {}, "mode": "Incremental"}}
    status, doc, headers = served.call("PUT", f"{DEPLOYMENTS}/{name}?{API}", body)
    assert status == 201, doc
    assert doc["properties"]["provisioningState"] == "Running"
    operation = headers["Azure-AsyncOperation"].removeprefix(served.url)
    deadline = time.monotonic() + 30
    while (polled := served.call("GET", operation))[1]["status"] == "Running":
        assert polled[2]["Retry-After"] == "1"
        assert time.monotonic() < deadline, "the deployment did not end"
        time.sleep(0.05)
    return dict(served.call("GET", f"{DEPLOYMENTS}/{name}?{API}")[1])


def test_a_template_is_deployed_in_dependency_order_with_its_outputs(served: Served) -> None:
    done = deploy(served, "vmss_deploy", TEMPLATE)
    assert done["properties"]["provisioningState"] == "Succeeded", done
    assert re.fullmatch(r"PT[0-9.]+S", done["properties"]["duration"])
    # Output names come back camel-cased, as Resource Manager answers them (az reads "vmss").
    assert done["properties"]["outputs"]["vmss"]["value"]["upgradePolicy"]["mode"] == "Manual"
    base = "/subscriptions/subscription_id/resourceGroups/myResourceGroup/providers"
    vmss = served.call("GET", f"{base}/Microsoft.Compute/virtualMachineScaleSets/web?{API}")[1]
    assert vmss["sku"]["capacity"] == 2
    pools = vmss["properties"]["virtualMachineProfile"]["networkProfile"]["networkInterfaceConfigurations"][0]
    pool_id = pools["properties"]["ipConfigurations"][0]["properties"]["loadBalancerBackendAddressPools"][0]["id"]
    assert pool_id == f"{base}/Microsoft.Network/loadBalancers/webLB/backendAddressPools/webLBBEPool"
    assert len(served.call("GET", f"{base}/Microsoft.Compute/virtualMachineScaleSets/web/virtualMachines?{API}")[1][
        "value"]) == 2  # fmt: skip
    balancer = served.call("GET", f"{base}/Microsoft.Network/loadBalancers/webLB?{API}")[1]
    assert [r["name"] for r in balancer["properties"]["inboundNatRules"]] == ["NatRule"]
    assert served.call("GET", f"{base}/Microsoft.Network/virtualNetworks/webVNET?{API}")[0] == 200
    operations = served.call("GET", f"{DEPLOYMENTS}/vmss_deploy/operations?{API}")[1]["value"]
    order = [o["properties"]["targetResource"]["resourceType"] for o in operations]
    assert order == [
        "Microsoft.Network/virtualNetworks",
        "Microsoft.Network/loadBalancers",
        "Microsoft.Compute/virtualMachineScaleSets",
        "Microsoft.Network/loadBalancers/inboundNatRules",
    ]
    assert {o["properties"]["provisioningState"] for o in operations} == {"Succeeded"}
    assert [d["name"] for d in served.call("GET", f"{DEPLOYMENTS}?{API}")[1]["value"]] == ["vmss_deploy"]


def test_a_function_overhaul_cannot_evaluate_is_400_naming_the_resource_and_nothing_is_made(served: Served) -> None:
    template = copy.deepcopy(TEMPLATE)
    template["resources"][3]["properties"]["dhcpOptions"] = "[listKeys('x', '2020-01-01')]"
    body = {"properties": {"template": template, "mode": "Incremental"}}
    status, doc, _ = served.call("PUT", f"{DEPLOYMENTS}/bad?{API}", body)
    assert status == 400, doc
    assert "webVNET" in doc["error"]["message"] and "listKeys()" in doc["error"]["message"]
    assert doc["error"]["target"] == "properties.template.resources[3]"
    assert served.call("GET", f"{DEPLOYMENTS}/bad?{API}")[0] == 404
    vnet = "/subscriptions/subscription_id/resourceGroups/myResourceGroup/providers/Microsoft.Network/virtualNetworks"
    assert served.call("GET", f"{vnet}/webVNET?{API}")[0] == 404


def test_a_resource_that_fails_fails_the_deployment_with_its_error_the_others_kept(served: Served) -> None:
    template = copy.deepcopy(TEMPLATE)
    template["resources"][0]["sku"]["capacity"] = -1  # refused by the scale set's own checks
    done = deploy(served, "failing", template)
    props = done["properties"]
    assert props["provisioningState"] == "Failed"
    [detail] = props["error"]["details"]
    assert "virtualMachineScaleSets 'web'" in detail["message"] and "capacity" in detail["message"]
    states = {
        o["properties"]["targetResource"]["resourceName"]: o["properties"]["provisioningState"]
        for o in served.call("GET", f"{DEPLOYMENTS}/failing/operations?{API}")[1]["value"]
    }
    assert states == {"webVNET": "Succeeded", "webLB": "Succeeded", "web": "Failed"}


def test_a_copy_loop_makes_each_copy_and_what_depends_on_the_loop_comes_after(served: Served) -> None:
    networks = {
        "type": "Microsoft.Network/virtualNetworks",
        "apiVersion": "2022-01-01",
        "name": "[format('net{0}', copyIndex(1))]",
        "location": "[resourceGroup().location]",
        "copy": {"name": "nets", "count": "[parameters('networks')]"},
        "properties": {"addressSpace": {"addressPrefixes": ["[format('10.{0}.0.0/16', copyIndex())]"]}},
    }
    balancer = {
        "type": "Microsoft.Network/loadBalancers",
        "apiVersion": "2022-01-01",
        "name": "looped",
        "location": "local",
        "dependsOn": ["nets"],
        "properties": {},
    }
    template: dict[str, Any] = {
        "parameters": {"networks": {"type": "int", "defaultValue": 3}},
        "resources": [balancer, networks],
    }
    done = deploy(served, "looped", template)
    assert done["properties"]["provisioningState"] == "Succeeded", done
    operations = served.call("GET", f"{DEPLOYMENTS}/looped/operations?{API}")[1]["value"]
    made = [o["properties"]["targetResource"]["resourceName"] for o in operations]
    assert made == ["net1", "net2", "net3", "looped"]
    base = RG.replace("resourcegroups", "resourceGroups") + "/providers/Microsoft.Network/virtualNetworks"
    prefixes = [
        served.call("GET", f"{base}/net{i}?{API}")[1]["properties"]["addressSpace"]["addressPrefixes"]
        for i in (1, 2, 3)
    ]
    assert prefixes == [["10.0.0.0/16"], ["10.1.0.0/16"], ["10.2.0.0/16"]]

    broken = copy.deepcopy(template)
    broken["resources"][1]["copy"] = {"count": 2}
    body = {"properties": {"template": broken, "mode": "Incremental"}}
    status, doc, _ = served.call("PUT", f"{DEPLOYMENTS}/broken?{API}", body)
    assert (status, doc["error"]["target"]) == (400, "properties.template.resources[1].copy"), doc


def test_reference_reads_a_resource_outside_the_deployment_by_id_and_outputs_hold_no_secret(served: Served) -> None:
    base = RG.replace("resourcegroups", "resourceGroups") + "/providers"
    probe = {"name": "health", "properties": {"protocol": "Http", "port": 8080, "requestPath": "/health"}}
    outside = {"location": "local", "properties": {"probes": [probe]}}
    assert served.call("PUT", f"{base}/Microsoft.Network/loadBalancers/outside?{API}", outside)[0] == 201
    template = copy.deepcopy(TEMPLATE)
    extension = {
        "name": "setup",
        "properties": {
            "publisher": "Microsoft.Azure.Extensions",
            "type": "CustomScript",
            "typeHandlerVersion": "2.1",
            "settings": {},
            "protectedSettings": {"commandToExecute": "echo hunter2-secret"},
        },
    }
    profile = template["resources"][0]["properties"]["virtualMachineProfile"]
    profile["extensionProfile"] = {"extensions": [extension]}
    template["outputs"]["probePath"] = {
        "type": "string",
        "value": "[reference(resourceId('Microsoft.Network/loadBalancers', 'outside')).probes[0]"
        ".properties.requestPath]",
    }
    done = deploy(served, "outside", template)
    assert done["properties"]["provisioningState"] == "Succeeded", done
    assert done["properties"]["outputs"]["probePath"]["value"] == "/health"
    assert "hunter2-secret" not in str(done)  # the scale set's output is answered as a GET answers it

    template["outputs"] = {"missing": {"type": "object", "value": "[reference('nowhere')]"}}
    failed = deploy(served, "missing", template)
    assert failed["properties"]["provisioningState"] == "Failed"
    assert "no other resource has that id" in failed["properties"]["error"]["details"][0]["message"]
