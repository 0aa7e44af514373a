"""What a cloud reports and the small protocol every cloud adapter implements.

Contract for adapters:

* ``list_machines()`` returns *every* server of this space that carries cloudvac's tags
  for this manager (``cloudvac:space`` and ``cloudvac:manager``), following pagination to
  the end, in one logical listing.  A listing that cannot be completed raises: a partial
  listing must never be returned, because the engine treats "not listed" as "gone".
* ``create_machine(spec)`` asks the cloud for one server and returns its cloud id.  It
  must tag the server with ``spec.metadata`` and use ``spec.name`` verbatim, so that a
  create whose answer was lost is recognised by name at the next listing.  The engine
  remembers a created machine until it is listed; adapters keep no such memory.
* ``delete_machine(cloud_id)`` requests deletion; a server that is already gone is
  success (idempotent).
* ``find_machine(name)`` looks one of our servers up by its exact name (None: the cloud
  has none), for creates whose outcome a crash left unknown.
* ``limits()`` returns what the project may still use, counting foreign servers.
* ``flavor(names, min_processors, max_processors)`` resolves the first flavor in
  ``names`` whose vCPU count lies in the range (VCycle's rule); the adapter caches what
  it lists, so asking every cycle costs no request.
* ``create_machine`` raises ``NotSent`` for anything that failed before the create
  request left (an image lookup, a refused connection): the engine frees the intent.

Errors are translated into ``model.errors``; nothing else may escape an adapter except
``CloudError`` subclasses (anything else is a bug, reported as such by the cycle).
An adapter that holds credentials with an expiry also implements ``CredentialSource``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from cloudvac.model.states import MachineState

# Metadata keys cloudvac writes on every machine it creates.
TAG_SPACE = "cloudvac:space"
TAG_MACHINETYPE = "cloudvac:machinetype"
TAG_MANAGER = "cloudvac:manager"
TAG_CREATED = "cloudvac:created"

#: Adapters list a cloud's flavors at most this often (they rarely change).
FLAVOR_CACHE_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class Flavor:
    name: str
    processors: int
    ram_mb: int = 0
    cloud_id: str = ""


@dataclass(frozen=True, slots=True)
class Limits:
    """Free capacity of the project, foreign usage included.  ``None`` means unlimited."""

    free_processors: int | None = None
    free_instances: int | None = None
    free_ram_mb: int | None = None
    foreign_processors: int = 0

    def fits(self, flavor: Flavor) -> bool:
        """Whether one more machine of ``flavor`` fits in the free capacity."""
        return (self.free_processors is None or self.free_processors >= flavor.processors) \
            and (self.free_instances is None or self.free_instances >= 1) \
            and (self.free_ram_mb is None or self.free_ram_mb >= flavor.ram_mb)


@dataclass(frozen=True, slots=True)
class ObservedMachine:
    """One of our servers as the cloud listed it this cycle."""

    cloud_id: str
    name: str
    machinetype: str
    state: MachineState
    processors: int
    created_at: float | None = None
    started_at: float | None = None
    cloud_status: str = ""
    fault: str = ""
    address: str = ""


@dataclass(frozen=True, slots=True)
class MachineSpec:
    """Everything an adapter needs to create one machine."""

    name: str
    space: str
    machinetype: str
    flavor: Flavor
    image: str
    user_data: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class Cloud(Protocol):
    """One space's cloud.  Methods are coroutines so an adapter may do its I/O in a thread
    or natively; every method must return or raise within the adapter's own timeout."""

    async def list_machines(self) -> Sequence[ObservedMachine]: ...

    async def create_machine(self, spec: MachineSpec) -> str: ...

    async def delete_machine(self, cloud_id: str) -> None: ...

    async def find_machine(self, name: str) -> ObservedMachine | None: ...

    async def limits(self) -> Limits: ...

    async def flavor(
        self, names: Sequence[str], min_processors: int, max_processors: int | None
    ) -> Flavor: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Credential:
    """One credential of a space and when it expires."""

    kind: str
    """Short stable name (``keystone``, ``checkin_access``, ``checkin_refresh``)."""
    expires_at: float
    """Unix time."""
    renewed_by_operator: str = ""
    """Empty when the adapter renews it itself; else what the operator must renew (named
    in the warning cloudvac raises ahead of its expiry), e.g. "Check-in refresh token"."""


@runtime_checkable
class CredentialSource(Protocol):
    """An adapter whose credentials expire: it says which, and when."""

    def credentials(self) -> Sequence[Credential]: ...
