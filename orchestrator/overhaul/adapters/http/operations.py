"""The operations of the REST API as its OpenAPI document lists them (openapi.py builds the document): method,
path, summary, body schema, success statuses."""

from __future__ import annotations

from typing import Any

from overhaul.core.resources import KEPT_NETWORK_TYPES, MANAGED_IMAGE_TYPE

VMSS = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachineScaleSets"
GALLERY = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/galleries/{gallery}"
LB = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network/loadBalancers/{lb}"
SUB = "/subscriptions/{sub}/providers"
RG = "/subscriptions/{sub}/resourceGroups/{rg}/providers"
MAINTENANCE = RG + "/Microsoft.Maintenance/maintenanceConfigurations"
ASSIGNMENTS = VMSS + "/{name}/providers/Microsoft.Maintenance/configurationAssignments"
NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "target": {"type": "string"}},
        }
    },
}
SCALE_SET_BODY = {
    "type": "object",
    "properties": {
        "location": {"type": "string"},
        "tags": {"type": "object", "additionalProperties": {"type": "string"}},
        "sku": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "capacity": {"type": "integer", "minimum": 0, "maximum": 10000}},
        },
        "properties": {"type": "object"},
    },
}
IMAGE_DEFINITION_BODY = {
    "type": "object",
    "properties": {
        "properties": {
            "type": "object",
            "properties": {
                "identifier": {
                    "type": "object",
                    "properties": {
                        "publisher": {"type": "string"},
                        "offer": {"type": "string"},
                        "sku": {"type": "string"},
                    },
                }
            },
        }
    },
}
IMAGE_VERSION_BODY = {
    "type": "object",
    "properties": {"location": {"type": "string"}, "properties": {"type": "object"}},
}
REIMAGE_BODY = {"type": "object", "properties": {"instanceIds": {"type": "array", "items": {"type": "string"}}}}

Operation = tuple[str, str, str, dict[str, Any] | None, tuple[int, ...]]


def named(provider: str, item: str, noun: str, plural: str, refused: str = "") -> list[Operation]:
    """The five operations of a resource kept by name (routes/named.py): list (all, a group's), PUT, GET, DELETE."""
    path = f"{RG}/{provider}/{{{item}}}"
    return [
        ("get", f"{SUB}/{provider}", f"List all {plural}", None, (200,)),
        ("get", f"{RG}/{provider}", f"List the {plural} of a resource group", None, (200,)),
        ("put", path, f"Create or update a {noun}", {"type": "object"}, (200, 201)),
        ("get", path, f"Get a {noun}", None, (200,)),
        ("delete", path, f"Delete a {noun}{refused}", None, (200, 204)),
    ]


HOSTS = RG + "/Microsoft.Compute/hostGroups/{hostGroup}/hosts"
GROUP = "/subscriptions/{sub}/resourcegroups/{rg}"
DEPLOYMENTS = GROUP + "/providers/Microsoft.Resources/deployments"
GROUP_BODY = {
    "type": "object",
    "properties": {
        "location": {"type": "string"},
        "tags": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
PUBLISHERS = SUB + "/Microsoft.Compute/locations/{location}/publishers"
SKU_VERSIONS = PUBLISHERS + "/{publisher}/artifacttypes/vmimage/offers/{offer}/skus/{sku}/versions"
EXTENSION_TYPES = PUBLISHERS + "/{publisher}/artifacttypes/vmextension/types"

# (method, path, summary, request body schema or None, success statuses)
OPERATIONS: list[Operation] = [
    ("get", DEPLOYMENTS, "List a group's template deployments", None, (200,)),
    ("get", DEPLOYMENTS + "/", "List a group's template deployments (az's form)", None, (200,)),
    ("put", DEPLOYMENTS + "/{name}", "Deploy a template (201; poll Azure-AsyncOperation)", {"type": "object"}, (201,)),
    ("get", DEPLOYMENTS + "/{name}", "Get a deployment: provisioningState, outputs, error", None, (200,)),
    ("delete", DEPLOYMENTS + "/{name}", "Delete a deployment's record (its resources stay)", None, (200, 204)),
    ("get", DEPLOYMENTS + "/{name}/operationStatuses/{operation}", "A deployment's status", None, (200,)),
    ("get", DEPLOYMENTS + "/{name}/operations", "A deployment's operation per resource", None, (200,)),
    ("get", GROUP + "/deployments/{name}/operations", "A deployment's operations (az's path)", None, (200,)),
    ("get", "/subscriptions/{sub}/resources", "List every resource of a subscription ($filter, $top)", None, (200,)),
    ("get", "/subscriptions/{sub}/resourceGroups/{rg}/resources", "List a group's resources ($filter)", None, (200,)),
    *named(MANAGED_IMAGE_TYPE, "name", "managed image (properties.overhaul.containerImage)", "managed images"),
    *[op for kind in KEPT_NETWORK_TYPES for op in named(kind, "name", f"{kind} (kept, not acted upon)", kind)],
    ("get", "/subscriptions/{sub}/resourcegroups", "List the resource groups", None, (200,)),
    ("put", GROUP, "Create or update a resource group", GROUP_BODY, (200, 201)),
    ("patch", GROUP, "Change a resource group's tags", GROUP_BODY, (200,)),
    ("get", GROUP, "Get a resource group", None, (200,)),
    ("head", GROUP, "Whether a resource group exists (204, else 404)", None, (204, 404)),
    ("delete", GROUP, "Delete a resource group and everything in it (202: poll Location)", None, (202,)),
    ("get", "/subscriptions/{sub}/operationresults/{operation}", "Poll a group's deletion", None, (200, 202)),
    ("get", "/subscriptions", "List the subscriptions (namespaces) in use", None, (200,)),
    ("get", "/subscriptions/{subscription}", "Get a subscription", None, (200,)),
    ("get", "/tenants", "List the tenant of overhaul's access tokens", None, (200,)),
    (
        "get",
        "/subscriptions/{sub}/providers/Microsoft.Compute/virtualMachineScaleSets",
        "List all scale sets",
        None,
        (200,),
    ),
    ("get", VMSS, "List the scale sets of a resource group", None, (200,)),
    ("put", VMSS + "/{name}", "Create or replace a scale set", SCALE_SET_BODY, (200, 201)),
    ("patch", VMSS + "/{name}", "Update a scale set (JSON merge patch)", SCALE_SET_BODY, (200,)),
    ("get", VMSS + "/{name}", "Get a scale set", None, (200,)),
    ("delete", VMSS + "/{name}", "Delete a scale set, its instances and data disks (202: poll)", None, (202, 204)),
    ("get", VMSS + "/{name}/virtualMachines", "List instances with their instanceView", None, (200,)),
    ("get", VMSS + "/{name}/instanceView", "The scale set's instance view: statuses and health counts", None, (200,)),
    ("get", VMSS + "/{name}/virtualMachines/{instance}", "One instance with its instanceView", None, (200,)),
    (
        "get",
        VMSS + "/{name}/virtualMachines/{instance}/instanceView",
        "One instance's view: its OS disk, health and statuses",
        None,
        (200,),
    ),
    (
        "get",
        SUB + "/Microsoft.Compute/locations/{location}/operations/{operation}",
        "A long operation's status",
        None,
        (200,),
    ),
    *named(
        "Microsoft.Network/loadBalancers",
        "lb",
        "load balancer",
        "load balancers",
        " (409 while a scale set uses a probe)",
    ),
    ("get", LB + "/probes", "List a load balancer's probes", None, (200,)),
    ("get", LB + "/probes/{probe}", "Get a load balancer probe", None, (200,)),
    *named("Microsoft.Compute/galleries", "gallery", "gallery", "galleries", " (409 while it holds image definitions)"),
    *named("Microsoft.Compute/hostGroups", "hostGroup", "host group", "host groups", " (409 while it holds hosts)"),
    ("get", HOSTS, "List a host group's hosts", None, (200,)),
    ("put", HOSTS + "/{host}", "Create or update a host (its engine under properties.overhaul)", None, (200, 201)),
    ("get", HOSTS + "/{host}", "Get a host", None, (200,)),
    ("delete", HOSTS + "/{host}", "Delete a host", None, (200, 204)),
    ("get", HOSTS + "/{host}/instanceView", "Whether a host's engine answers now", None, (200,)),
    ("post", VMSS + "/{name}/reimage", "Reimage chosen instances (all when none are named)", REIMAGE_BODY, (200,)),
    ("post", VMSS + "/{name}/reimageall", "Reimage chosen instances; data disks are kept", REIMAGE_BODY, (200,)),
    (
        "post",
        VMSS + "/{name}/manualupgrade",
        "Give chosen instances new OS disks made with the latest model (an operation to follow)",
        REIMAGE_BODY,
        (202,),
    ),
    (
        "post",
        VMSS + "/{name}/approveRollingUpgrade",
        "Let deferred OS upgrades of chosen instances go ahead (all when none are named)",
        REIMAGE_BODY,
        (200,),
    ),
    ("get", VMSS + "/{name}/osUpgradeHistory", "OS upgrade history, newest first", None, (200,)),
    ("post", VMSS + "/{name}/osRollingUpgrade", "Start a rolling OS upgrade", None, (202,)),
    (
        "post",
        VMSS + "/{name}/rollingUpgrades/cancel",
        "Cancel the rolling upgrade after its batch in flight",
        None,
        (202,),
    ),
    ("get", VMSS + "/{name}/rollingUpgrades/latest", "The latest rolling upgrade", None, (200,)),
    (
        "get",
        VMSS + "/{name}/rollingUpgrades/why",
        "Why the scale set's upgrade waits, stopped or will not start (properties.overhaul.why)",
        None,
        (200,),
    ),
    ("get", VMSS + "/{name}/lifecycleHookEvents", "List the scale set's lifecycle hook events", None, (200,)),
    ("get", VMSS + "/{name}/lifecycleHookEvents/{event}", "Get a lifecycle hook event", None, (200,)),
    (
        "patch",
        VMSS + "/{name}/lifecycleHookEvents/{event}",
        "Approve or reject a lifecycle hook event's targets, or put it off (waitUntil)",
        {"type": "object"},
        (200,),
    ),
    *(
        operation
        for scope in (RG, VMSS + "/{name}/providers")
        for operation in (
            ("get", scope + "/Microsoft.EventGrid/eventSubscriptions", "List event subscriptions on it", None, (200,)),
            (
                "put",
                scope + "/Microsoft.EventGrid/eventSubscriptions/{subscription}",
                "Create or update an event subscription (a webhook that passes the validation handshake)",
                {"type": "object"},
                (200, 201),
            ),
            (
                "get",
                scope + "/Microsoft.EventGrid/eventSubscriptions/{subscription}",
                "Get an event subscription",
                None,
                (200,),
            ),
            (
                "delete",
                scope + "/Microsoft.EventGrid/eventSubscriptions/{subscription}",
                "Delete an event subscription with its pending deliveries",
                None,
                (200, 204),
            ),
            (
                "get",
                scope + "/Microsoft.EventGrid/eventSubscriptions/{subscription}/deadLetteredEvents",
                "Events that could not be delivered (ours)",
                None,
                (200,),
            ),
        )
    ),
    ("get", GALLERY + "/images", "List a gallery's image definitions", None, (200,)),
    ("delete", GALLERY + "/images/{image}", "Delete an image definition (409 while it has versions)", None, (200, 204)),
    ("put", GALLERY + "/images/{image}", "Create or update an image definition", IMAGE_DEFINITION_BODY, (200,)),
    ("get", GALLERY + "/images/{image}", "Get an image definition", None, (200,)),
    ("get", GALLERY + "/images/{image}/versions", "List image versions", None, (200,)),
    ("put", GALLERY + "/images/{image}/versions/{version}", "Publish an image version", IMAGE_VERSION_BODY, (200,)),
    ("patch", GALLERY + "/images/{image}/versions/{version}", "Update an image version", IMAGE_VERSION_BODY, (200,)),
    ("get", GALLERY + "/images/{image}/versions/{version}", "Get an image version", None, (200,)),
    ("delete", GALLERY + "/images/{image}/versions/{version}", "Delete an image version", None, (200,)),
    ("get", PUBLISHERS, "List the image and extension publishers of a location", None, (200,)),
    ("get", PUBLISHERS + "/{publisher}/artifacttypes/vmimage/offers", "List a publisher's offers", None, (200,)),
    (
        "get",
        PUBLISHERS + "/{publisher}/artifacttypes/vmimage/offers/{offer}/skus",
        "List an offer's skus",
        None,
        (200,),
    ),
    ("get", SKU_VERSIONS, "List the image versions of a sku in a location", None, (200,)),
    ("get", SKU_VERSIONS + "/{version}", "Get an image version of a sku (or latest)", None, (200,)),
    ("get", EXTENSION_TYPES, "List a publisher's extension types overhaul runs", None, (200,)),
    ("get", EXTENSION_TYPES + "/{type}/versions", "List an extension type's versions", None, (200,)),
    ("get", EXTENSION_TYPES + "/{type}/versions/{version}", "Get an extension version", None, (200,)),
    *named(
        "Microsoft.Maintenance/maintenanceConfigurations",
        "config",
        "maintenance configuration (a window)",
        "maintenance configurations",
        " (409 while a scale set is assigned it)",
    ),
    ("get", ASSIGNMENTS, "List the scale set's configuration assignments", None, (200,)),
    (
        "put",
        ASSIGNMENTS + "/{assignment}",
        "Assign a maintenance configuration to the scale set",
        {"type": "object"},
        (200, 201),
    ),
    ("get", ASSIGNMENTS + "/{assignment}", "Get a configuration assignment", None, (200,)),
    ("delete", ASSIGNMENTS + "/{assignment}", "Remove a configuration assignment", None, (200, 204)),
]
