"""Build and keep one cloud adapter per space across cycles and configuration reloads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from cloudvac.clouds.base import Cloud
from cloudvac.clouds.openstack import OpenStackCloud
from cloudvac.clouds.sim import PilotReporter, SimCloud, SimProject
from cloudvac.config.models import Settings, SimMachinetype, SimSpace, Space
from cloudvac.engine.metrics import EngineMetrics


class CloudFactory:
    """Adapters are reused across cycles (connections, tokens and caches survive); a changed
    configuration reconfigures the adapter rather than rebuilding it."""

    def __init__(self, settings: Settings, reporter: PilotReporter,
                 clock: Callable[[], float] = time.time,
                 metrics: EngineMetrics | None = None) -> None:
        self.settings, self.reporter, self.clock = settings, reporter, clock
        self.metrics = metrics or EngineMetrics()
        self._clouds: dict[str, Cloud] = {}
        self._projects: dict[str, SimProject] = {}
        self._configs: dict[str, Space] = {}

    def get(self, space: Space) -> Cloud:
        cloud = self._clouds.get(space.name)
        if cloud is not None and self._configs.get(space.name) == space:
            return cloud
        self._configs[space.name] = space
        if space.api == "openstack":
            # Keep the session (and its token) unless the cloud options themselves changed.
            if not (isinstance(cloud, OpenStackCloud) and cloud.options == space.openstack):
                if cloud is not None:
                    asyncio.get_running_loop().create_task(cloud.close())
                cloud = OpenStackCloud(space, self.settings, self.metrics)
        else:
            cloud = self._sim(space, cloud)
        self._clouds[space.name] = cloud
        return cloud

    def _sim(self, space: Space, cloud: Cloud | None) -> Cloud:
        options = space.sim or SimSpace()
        behaviour = {n: mt.sim or SimMachinetype() for n, mt in space.machinetypes.items()}
        if isinstance(cloud, SimCloud):
            cloud.reconfigure(options, behaviour)
            return cloud
        project = self._projects.get(space.name)
        if project is None:
            project = SimProject(options=options, machinetypes=behaviour, clock=self.clock)
            self._projects[space.name] = project
        sim = SimCloud(project, space.name, self.settings.manager_id, self.reporter,
                       options=options)
        sim.reconfigure(options, behaviour)
        return sim

    def use_project(self, space: str, project: SimProject) -> None:
        """Run a sim space on an existing project (a restarted manager finding its VMs)."""
        self._projects[space] = project

    def cloud(self, space: str) -> Cloud | None:
        """The adapter serving ``space`` now, if a cycle has built one (tests, benchmarks)."""
        return self._clouds.get(space)

    def project(self, space: str) -> SimProject | None:
        """The simulated project behind a sim space (for tests and the demo)."""
        return self._projects.get(space)

    async def forget(self, space: str) -> None:
        cloud = self._clouds.pop(space, None)
        self._configs.pop(space, None)
        if cloud is not None:
            await cloud.close()
