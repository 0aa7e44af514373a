"""Build and keep one cloud adapter per space across cycles and configuration reloads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from cloudvac.clouds.sim import SimCloud, SimProject
from cloudvac.clouds.simpilots import NullPilots, PilotReporter
from cloudvac.config.models import SimMachinetype, SimSpace, Space
from cloudvac.config.settings import Settings
from cloudvac.model.cloud import Cloud
from cloudvac.model.layout import HEARTBEAT_FILE
from cloudvac.model.observer import Observer


class CloudFactory:
    """Adapters are reused across cycles (connections, tokens and caches survive); a changed
    configuration reconfigures a sim adapter, and rebuilds an OpenStack or EC2 one only
    when its cloud options or the settings it uses changed.  Simulated projects outlive their
    adapters (a restarted manager finds its VMs)."""

    def __init__(self, observer: Observer, pilots: PilotReporter | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """``pilots``: where simulated VMs report; ``clock``: the simulated projects'."""
        self.observer, self.clock = observer, clock
        self.pilots: PilotReporter = pilots if pilots is not None else NullPilots()
        self._clouds: dict[str, Cloud] = {}
        self._projects: dict[str, SimProject] = {}
        self._configs: dict[str, tuple[Space, Settings]] = {}

    def get(self, space: Space, settings: Settings) -> Cloud:
        cloud = self._clouds.get(space.name)
        if cloud is not None and self._configs.get(space.name) == (space, settings):
            return cloud
        self._configs[space.name] = (space, settings)
        if space.api == "openstack":
            cloud = self._openstack(space, settings, cloud)
        elif space.api == "ec2":
            cloud = self._ec2(space, settings, cloud)
        else:
            cloud = self._sim(space, settings, cloud)
        self._clouds[space.name] = cloud
        return cloud

    def _openstack(self, space: Space, settings: Settings, cloud: Cloud | None) -> Cloud:
        from cloudvac.clouds.openstack import OpenStackCloud  # only spaces that need it

        kept = self._kept(cloud, OpenStackCloud, space.openstack, settings)
        return kept or OpenStackCloud(space, settings, self.observer)

    def _ec2(self, space: Space, settings: Settings, cloud: Cloud | None) -> Cloud:
        from cloudvac.clouds.ec2 import Ec2Cloud  # only spaces that need it (boto3 is heavy)

        return self._kept(cloud, Ec2Cloud, space.ec2, settings) \
            or Ec2Cloud(space, settings, self.observer)

    @staticmethod
    def _kept(cloud: Cloud | None, kind: type[Cloud], options: object,
              settings: Settings) -> Cloud | None:
        """``cloud`` if it is a ``kind`` built from ``options`` and ``settings`` (its session
        and token are kept); else None, and the old adapter is closed in the background."""
        if isinstance(cloud, kind) and getattr(cloud, "options", None) == options \
                and getattr(cloud, "settings", None) == settings:
            return cloud
        if cloud is not None:
            asyncio.get_running_loop().create_task(cloud.close())
        return None

    def _sim(self, space: Space, settings: Settings, cloud: Cloud | None) -> Cloud:
        options = space.sim or SimSpace()
        behaviour = {n: mt.sim or SimMachinetype() for n, mt in space.machinetypes.items()}
        files = {n: mt.heartbeat_file or HEARTBEAT_FILE for n, mt in space.machinetypes.items()}
        if not (isinstance(cloud, SimCloud) and cloud.manager_id == settings.manager_id):
            project = self._projects.get(space.name)
            if project is None:
                project = SimProject(options=options, machinetypes=behaviour, clock=self.clock)
                self._projects[space.name] = project
            cloud = SimCloud(project, (space.name, settings.manager_id), self.pilots, options)
        cloud.reconfigure(options, behaviour, files)
        return cloud

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
