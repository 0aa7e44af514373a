"""The small protocol every cloud adapter implements, its records and its error taxonomy.

Contract for adapters:

* ``list_machines()`` returns *every* server of this space that carries cloudvac's tags
  for this manager (``cloudvac:space`` and ``cloudvac:manager``), following pagination to
  the end, in one logical listing.  A listing that cannot be completed raises: a partial
  listing must never be returned, because the engine treats "not listed" as "gone".
* ``create_machine(spec)`` asks the cloud for one server and returns its cloud id.  It
  must tag the server with ``spec.metadata`` and use ``spec.name`` verbatim, so that a
  create whose answer was lost is recognised by name at the next listing.
* ``delete_machine(cloud_id)`` requests deletion; a server that is already gone is
  success (idempotent).
* ``limits()`` returns what the project may still use, counting foreign servers.
* ``flavor(names, min_processors, max_processors)`` resolves the first flavor in
  ``names`` whose vCPU count lies in the range (VCycle's rule).

Errors are translated into the taxonomy below; nothing else may escape an adapter
except ``CloudError`` subclasses (the cycle treats anything else as a bug and reports it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from cloudvac.engine.states import MachineState

# Metadata keys cloudvac writes on every machine it creates.
TAG_SPACE = "cloudvac:space"
TAG_MACHINETYPE = "cloudvac:machinetype"
TAG_MANAGER = "cloudvac:manager"
TAG_CREATED = "cloudvac:created"


class CloudError(Exception):
    """Base of every error an adapter may raise.  ``str()`` is safe to log and show."""


class Retryable(CloudError):
    """Transient: 5xx, timeout, connection refused.  Try again next cycle."""


class QuotaExceeded(CloudError):
    """The cloud refused for quota reasons (Nova 403 quota, 413).  Never sets backoff."""


class Gone(CloudError):
    """The object does not exist (404)."""


class AuthFailed(CloudError):
    """Credentials refused even after one re-authentication (401)."""


class Misconfigured(CloudError):
    """The request itself is wrong (400: bad flavor, image, network).  Carries the cloud's
    own message so the operator sees what to fix."""


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

    async def limits(self) -> Limits: ...

    async def flavor(
        self, names: Sequence[str], min_processors: int, max_processors: int | None
    ) -> Flavor: ...

    async def close(self) -> None: ...
