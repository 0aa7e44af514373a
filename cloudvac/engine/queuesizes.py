"""How many processors and how much RAM a machinetype's VMs get, for ``cloudvac dirac-cs``.

The CS queue must advertise what the VM really has, or the pilot of an 8-core VM takes
single-core jobs.  The answer is the flavor the daemon would boot (the first of the
machinetype's ``flavor_names`` whose vCPUs lie within ``min_processors``-
``max_processors``, as the adapters pick it):

1. from the cloud, when it answers (an OpenStack project's flavor list; a sim space's
   ``sim_flavors``), through the same adapter the daemon uses;
2. else from configuration: ``max_processors`` (RAM then ``mb_per_processor`` x processors);
3. else nothing: the caller says so rather than advertising ``min_processors``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from cloudvac.clouds.factory import CloudFactory
from cloudvac.config.models import Machinetype, Space
from cloudvac.config.settings import Settings
from cloudvac.context.diraccs import QueueSize
from cloudvac.model.cloud import Cloud
from cloudvac.model.errors import CloudError, Misconfigured
from cloudvac.model.observer import NullObserver

CLOUD_TIMEOUT_SECONDS = 60.0


async def _from_cloud(space: Space, cloud: Cloud, mts: Sequence[Machinetype],
                      sizes: dict[str, QueueSize], problems: list[str]) -> str:
    """Fill ``sizes`` from the cloud; the reason it could not, or ''."""
    try:
        for mt in mts:
            try:
                flavor = await asyncio.wait_for(cloud.flavor(
                    space.flavors_for(mt), mt.min_processors, mt.max_processors),
                    CLOUD_TIMEOUT_SECONDS)
            except Misconfigured as exc:
                problems.append(f"machinetype {mt.name}: {exc}")
                continue
            sizes[mt.name] = QueueSize(flavor.processors, flavor.ram_mb,
                                       f"flavor {flavor.name} (the cloud)")
    except (CloudError, OSError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return ""


async def resolve_sizes(space: Space, settings: Settings, mts: Sequence[Machinetype]
                        ) -> tuple[dict[str, QueueSize], list[str]]:
    """Sizes of ``mts`` (machinetypes of ``space``) by the rules of the module docstring,
    and the problems met (the cloud not answering, no flavor fitting, no size at all).
    A machinetype missing from the sizes has none that can be told."""
    sizes: dict[str, QueueSize] = {}
    problems: list[str] = []
    factory = CloudFactory(NullObserver())
    try:
        why = await _from_cloud(space, factory.get(space, settings), mts, sizes, problems)
    except CloudError as exc:  # the adapter cannot even be built (a secret file, say)
        why = str(exc)
    finally:
        await factory.forget(space.name)
    if why:
        problems.append(f"the cloud of space {space.name} did not answer: {why}")
    for mt in mts:
        if mt.name in sizes:
            continue
        if mt.max_processors is None:
            problems.append(f"machinetype {mt.name}: cannot tell its processors (set "
                            "max_processors, or run where the cloud answers)")
            continue
        reason = "the cloud did not answer" if why else "no flavor of the cloud fits"
        sizes[mt.name] = QueueSize(mt.max_processors, 0, f"max_processors ({reason})")
    return sizes, problems
