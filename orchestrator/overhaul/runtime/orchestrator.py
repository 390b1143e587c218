"""The orchestrator's commands and queries, one attribute per aggregate: ``scale_sets``, ``upgrades``,
``galleries``, ``load_balancers``, ``host_groups`` (with their hosts), and the rest.

The REST API and the tests use this and nothing below it. Writes to one name are serialised (``Parts.writing``);
"one active attempt per scale set" is the store's compare-and-set; attempts run under the supervisor.
"""

from __future__ import annotations

import asyncio
import logging
import time

from overhaul.core.cloud_events import attempt_events
from overhaul.ports.clock import Clock
from overhaul.ports.driver import Driver, DriverError, HostStatuses, ImageCopies, InstanceState
from overhaul.ports.health import HealthSource
from overhaul.ports.store import Store
from overhaul.runtime.deletions import ScaleSetDeletions
from overhaul.runtime.deployments import Deployments
from overhaul.runtime.event_subscriptions import EventSubscriptions
from overhaul.runtime.galleries import Galleries
from overhaul.runtime.groups import ResourceGroups
from overhaul.runtime.hosts import HostGroups
from overhaul.runtime.kept import KeptResources
from overhaul.runtime.lifecycle_hooks import LifecycleHookEvents
from overhaul.runtime.maintenance import MaintenanceConfigurations
from overhaul.runtime.network import LoadBalancers
from overhaul.runtime.outbox import subject_of
from overhaul.runtime.parts import Parts
from overhaul.runtime.replication import Replicator
from overhaul.runtime.scale_sets import ScaleSets
from overhaul.runtime.settings import RuntimeSettings
from overhaul.runtime.upgrades import Upgrades

log = logging.getLogger(__name__)


class Orchestrator:
    def __init__(
        self,
        store: Store,
        driver: Driver,
        health: HealthSource,
        *,
        clock: Clock = time.time,
        settings: RuntimeSettings | None = None,
        host_statuses: HostStatuses | None = None,
        image_copies: ImageCopies | None = None,
    ) -> None:
        self.parts = Parts.assemble(store, driver, health, clock, settings or RuntimeSettings())
        self.upgrades = Upgrades(self.parts)
        self.scale_sets = ScaleSets(self.parts, self.upgrades)
        self.scale_set_deletions = ScaleSetDeletions(self.scale_sets)
        self.replicator = Replicator(self.parts, image_copies)
        self.galleries = Galleries(self.parts, self.replicator)
        self.load_balancers = LoadBalancers(self.parts)
        self.host_groups = HostGroups(self.parts, host_statuses)
        self.maintenance = MaintenanceConfigurations(self.parts)
        self.lifecycle_hook_events = LifecycleHookEvents(self.parts)
        self.event_subscriptions = EventSubscriptions(self.parts)
        self.resource_groups = ResourceGroups(self)
        self.kept = KeptResources(self.parts)
        self.deployments = Deployments(self)
        # What the serve layer, metrics and tests reach directly.
        self.store, self.driver, self.health, self.clock = store, driver, health, clock
        self.settings = self.parts.settings
        self.events = self.parts.events
        self.changes = self.parts.changes
        self.supervisor = self.parts.supervisor
        self.reconciler = self.parts.reconciler
        self.instances = self.parts.instances
        self.outbox = self.parts.outbox

    async def start(self) -> None:
        """Watches every instance, repairs what a crash left half done, and resumes every unfinished attempt."""
        self.parts.acting_since = self.clock()
        active = {s.attempt.scale_set.lower() for s in await self.store.unfinished_attempts()}
        for model in await self.store.list_scale_sets():
            states: dict[int, InstanceState] | None = None
            if model.name.lower() not in active:
                try:
                    states = await self.scale_sets.repair(model)
                except DriverError as exc:
                    log.warning("could not check %s's instances at start: %s", model.name, exc)
            await self.instances.watch(model, states)
            history = await self.store.attempts(model.name)
            if history:  # what was saved before a crash is in the outbox again (a delivery it has is kept once)
                subject = subject_of(model)
                await self.outbox.publish(attempt_events(None, history[0].attempt, subject, self.clock()))
        await self.resource_groups.adopt()
        await self.resource_groups.resume()
        await self.scale_set_deletions.resume()
        await self.deployments.resume()
        await self.supervisor.start()

    async def close(self) -> None:
        await self.deployments.close()
        await self.resource_groups.close()
        await self.scale_set_deletions.close()
        await self.supervisor.close()
        await self.health.close()

    async def storage_check(self) -> str | None:
        """None while the store takes writes, asked of it now; else why it does not."""
        return await self.store.check()

    def storage_problem(self) -> str | None:
        """None while the store takes writes, as far as it knows; else why it does not."""
        return self.store.problem()

    async def engine_problem(self, timeout: float = 5.0) -> str | None:
        """None when the engine answers now; else what is wrong."""
        try:
            async with asyncio.timeout(timeout):
                await self.driver.ping()
        except DriverError as exc:
            return str(exc)
        except TimeoutError:
            return f"the engine did not answer within {timeout:g}s"
        return None

    @property
    def watch_errors(self) -> int:
        return self.health.watch_errors
