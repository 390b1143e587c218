"""The scale set models of the demos and the end-to-end tests: system containers, or QEMU VMs, with the agent
inside."""

from __future__ import annotations

from typing import Any

# Written on the OS disk by the CustomScript extension at every (re)image; the data disk's marker only once.
EXTENSION_MARKER = "/var/lib/overhaul-demo-extension"
DATA_MARKER = "/datadisks/lun0/first"


def health_extension(settings: dict[str, Any]) -> dict[str, Any]:
    """Azure's Application Health extension with ``settings``: the agent probes the application as they say."""
    return {
        "name": "health",
        "properties": {
            "publisher": "Microsoft.ManagedServices",
            "type": "ApplicationHealthLinux",
            "typeHandlerVersion": "2.0",
            "settings": settings,
        },
    }


# The CustomScript extension: a new marker on every OS disk, the data disk's written once; both said on stdout, which
# the agent serves in /health (how a VM's files are seen from outside).
SETUP = (
    f"date +%s%N > {EXTENSION_MARKER}; [ -f {DATA_MARKER} ] || cat /etc/overhaul-release > {DATA_MARKER}; "
    f"echo marker=$(cat {EXTENSION_MARKER}) data=$(cat {DATA_MARKER})"
)


def os_fleet_model(capacity: int, *, health_timeout: str = "PT30S") -> dict[str, Any]:
    health = {
        "protocol": "http",
        "port": 8080,
        "requestPath": "/health",
        "intervalInSeconds": 1,
        "numberOfProbes": 1,
        "gracePeriod": 30,
        "overhaul": {"fastProbes": True},
    }
    return {
        "location": "local",
        "sku": {"name": "Standard_Container", "capacity": capacity},
        "properties": {
            "upgradePolicy": {
                "mode": "Automatic",
                "automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": True},
                "rollingUpgradePolicy": {
                    "maxBatchInstancePercent": 20,
                    "maxUnhealthyInstancePercent": 20,
                    "maxUnhealthyUpgradedInstancePercent": 20,
                    "pauseTimeBetweenBatches": "PT0S",
                    "overhaul": {"instanceHealthTimeout": health_timeout},
                },
            },
            "virtualMachineProfile": {
                "storageProfile": {
                    "imageReference": {"publisher": "contoso", "offer": "os", "sku": "bookworm", "version": "latest"},
                    "dataDisks": [{"lun": 0, "diskSizeGB": 1}],
                },
                "extensionProfile": {
                    "extensions": [
                        health_extension(health),
                        {
                            "name": "setup",
                            "properties": {
                                "publisher": "Microsoft.Azure.Extensions",
                                "type": "CustomScript",
                                "typeHandlerVersion": "2.1",
                                "settings": {"commandToExecute": SETUP},
                                "provisionAfterExtensions": ["health"],
                            },
                        },
                    ]
                },
                "overhaul": {"systemd": True, "stopTimeoutInSeconds": 10},
            },
        },
    }


def vm_fleet_model(
    capacity: int, *, health_timeout: str = "PT4M", memory_mb: int = 512, vcpus: int = 2
) -> dict[str, Any]:
    """The same fleet as QEMU VMs, one instance per batch: a VM boots in 30-50 s under TCG."""
    model = os_fleet_model(capacity, health_timeout=health_timeout)
    model["sku"]["name"] = "Standard_VM"
    policy = model["properties"]["upgradePolicy"]["rollingUpgradePolicy"]
    policy["maxBatchInstancePercent"] = max(5, 100 // max(capacity, 1))
    model["properties"]["virtualMachineProfile"]["overhaul"] = {
        "vm": {"memoryMB": memory_mb, "vCPUs": vcpus},
        "stopTimeoutInSeconds": 30,
    }
    return model
