"""Maintenance configurations and their assignments to scale sets: when automatic OS upgrades may run."""

from __future__ import annotations

import builtins

from overhaul.core.arm_json import ModelError
from overhaul.core.errors import Conflict, InvalidInput, NotFound
from overhaul.core.maintenance import (
    ConfigurationAssignment,
    MaintenanceConfiguration,
    MaintenanceWindow,
    parse_assignment,
)
from overhaul.core.model import ScaleSet
from overhaul.runtime.parts import Parts
from overhaul.runtime.resources import Kind, NamedResources

MAINTENANCE = Kind(
    "maintenance configuration", "ResourceNotFound", "MaintenanceConfigurationNameTaken", "/maintenanceConfigurations"
)


class MaintenanceConfigurations(NamedResources[MaintenanceConfiguration]):
    def __init__(self, parts: Parts) -> None:
        store = parts.store
        super().__init__(
            parts,
            MAINTENANCE,
            store.maintenance_configurations,
            store.put_maintenance_configuration,
            store.delete_maintenance_configuration,
        )

    async def check_delete(self, resource: MaintenanceConfiguration) -> None:
        """Refused while a scale set is assigned to it: its assignment would name nothing."""
        users = [a.scale_set for a in await self.parts.store.configuration_assignments() if _names(a, resource)]
        if users:
            raise Conflict(
                f"maintenance configuration {resource.name} is assigned to scale set(s) {', '.join(users)}",
                "MaintenanceConfigurationInUse",
            )

    async def assign(self, model: ScaleSet, name: str, body: object) -> tuple[ConfigurationAssignment, bool]:
        """PUT of a configuration assignment on a scale set; the configuration it names must exist."""
        try:
            assignment = parse_assignment(
                body,
                name=name,
                scale_set=model.name,
                resource_group=model.resource_group,
                subscription=model.subscription,
            )
        except ModelError as exc:
            raise InvalidInput(str(exc), target=exc.path) from exc
        if await self._configuration(assignment) is None:
            raise InvalidInput(
                f"properties.maintenanceConfigurationId: no maintenance configuration {assignment.configuration_id}",
                target="properties.maintenanceConfigurationId",
            )
        async with self.parts.writing(model.name):
            existing = await self.assignments(model)
            created = not any(a.name.lower() == name.lower() for a in existing)
            await self.parts.store.put_configuration_assignment(assignment)
        self.parts.changes.bump()  # the automatic upgrader looks again: a window may have opened or closed
        return assignment, created

    async def assignments(self, model: ScaleSet) -> builtins.list[ConfigurationAssignment]:
        return await self.parts.store.configuration_assignments(model.name)

    async def assignment(self, model: ScaleSet, name: str) -> ConfigurationAssignment:
        found = next((a for a in await self.assignments(model) if a.name.lower() == name.lower()), None)
        if found is None:
            raise NotFound(f"configuration assignment {name} of {model.name} does not exist", "ResourceNotFound")
        return found

    async def unassign(self, model: ScaleSet, name: str) -> None:
        found = await self.assignment(model, name)
        async with self.parts.writing(model.name):
            await self.parts.store.delete_configuration_assignment(model.name, found.name)
        self.parts.changes.bump()

    async def _configuration(self, assignment: ConfigurationAssignment) -> MaintenanceConfiguration | None:
        return next((c for c in await self.list() if _names(assignment, c)), None)


async def window_of(parts: Parts, scale_set: str) -> MaintenanceWindow | None:
    """The maintenance window automatic OS upgrades of the scale set keep to (None: any time)."""
    configurations = await parts.store.maintenance_configurations()
    for assignment in await parts.store.configuration_assignments(scale_set):
        configuration = next((c for c in configurations if _names(assignment, c)), None)
        if configuration is not None and configuration.window is not None:
            return configuration.window
    return None


def _names(assignment: ConfigurationAssignment, configuration: MaintenanceConfiguration) -> bool:
    return assignment.configuration_id.lower() == configuration.id.lower()
