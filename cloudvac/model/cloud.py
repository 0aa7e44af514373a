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
* A listing may show a server the cloud keeps visible after it ended (EC2 lists terminated
  instances for about an hour) in state ``GONE``: the engine ends its live record with the
  listed fault and otherwise ignores it (it holds no capacity).  A fault starting with
  ``RECLAIMED`` (a spot interruption) ends the machine as ``100 Reclaimed by the cloud``,
  which never sets a backoff.

Metadata (Nova server properties) on every machine cloudvac creates, built by
``machine_metadata``; none of it is secret (every user of the project, and the VM itself
through the metadata service, can read it):

* cloudvac's own tags: ``cloudvac:space``, ``cloudvac:machinetype``, ``cloudvac:manager``
  (the ``manager_id``) and ``cloudvac:created`` (Unix time of the decision to create).
  Only servers carrying this space and manager id are listed or ever touched.
* EGI's provenance properties, as EGI's Infrastructure Manager sets them, so that a cloud
  operator can find the manager behind a VM: ``eu.egi.cloud.orchestrator`` = ``cloudvac``,
  ``eu.egi.cloud.orchestrator.id`` = ``MANAGER_ID/SPACE`` (the unit that owns and will
  delete the VM) and ``eu.egi.cloud.orchestrator.url`` = the manager's public web URL
  (``scheme://host[:port]``; left out when it is loopback or 0.0.0.0).

Every key and value keeps within Nova's limits (``METADATA_KEY``, 255 characters).

Errors are translated into ``model.errors``; nothing else may escape an adapter except
``CloudError`` subclasses (anything else is a bug, reported as such by the cycle).
An adapter that holds credentials with an expiry also implements ``CredentialSource``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

from cloudvac.model.states import MachineState

# Metadata keys cloudvac writes on every machine it creates (the module docstring says what
# each holds; ``machine_metadata`` builds them).
TAG_SPACE = "cloudvac:space"
TAG_MACHINETYPE = "cloudvac:machinetype"
TAG_MANAGER = "cloudvac:manager"
TAG_CREATED = "cloudvac:created"
TAG_ORCHESTRATOR = "eu.egi.cloud.orchestrator"
TAG_ORCHESTRATOR_ID = "eu.egi.cloud.orchestrator.id"
TAG_ORCHESTRATOR_URL = "eu.egi.cloud.orchestrator.url"
#: The value of ``eu.egi.cloud.orchestrator`` on cloudvac's machines.
ORCHESTRATOR = "cloudvac"

#: Nova's rules for server metadata (the compute API's schema): a key is 1-255 of these
#: characters, a value a string of at most ``METADATA_VALUE_CHARS``; a project may set at
#: most ``METADATA_ITEMS`` items per server (the default ``metadata_items`` quota).
METADATA_KEY = re.compile(r"^[a-zA-Z0-9-_:. ]{1,255}$")
METADATA_VALUE_CHARS = 255
METADATA_ITEMS = 128

#: How a fault says the provider took the machine back (a spot interruption).
RECLAIMED = "reclaimed by the cloud"

#: Adapters list a cloud's flavors at most this often (they rarely change).
FLAVOR_CACHE_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class Flavor:
    name: str
    processors: int
    ram_mb: int = 0
    cloud_id: str = ""
    benchmark_type: str = ""
    """The flavor's ``accounting:benchmark_type`` extra spec (what the site's cASO reports)."""
    benchmark_value: float | None = None
    """Its ``accounting:benchmark_value``: benchmark per processor, None when absent."""


def flavor_benchmark(extra_specs: object) -> tuple[str, float | None]:
    """``(type, value)`` from a flavor's extra specs (cASO's keys); ``("", None)`` when they
    are absent or the value is not a positive number."""
    specs = extra_specs if isinstance(extra_specs, dict) else {}
    kind = str(specs.get("accounting:benchmark_type", "") or "")
    try:
        value = float(specs.get("accounting:benchmark_value", ""))
    except (TypeError, ValueError):
        return kind, None
    return kind, value if value > 0 else None


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


def metadata_problem(metadata: Mapping[str, str]) -> str | None:
    """What Nova would refuse in server ``metadata`` (see ``METADATA_KEY``), or None."""
    if len(metadata) > METADATA_ITEMS:
        return f"{len(metadata)} metadata items, more than Nova's default {METADATA_ITEMS}"
    for key, value in metadata.items():
        if not METADATA_KEY.match(key):
            return f"metadata key {key[:40]!r} is not 1-255 of [a-zA-Z0-9-_:. ]"
        if not isinstance(value, str) or len(value) > METADATA_VALUE_CHARS:
            return f"metadata value of {key!r} is not a string of at most " \
                   f"{METADATA_VALUE_CHARS} characters"
    return None


def public_url(url: str) -> str | None:
    """``url``'s ``scheme://host[:port]`` when another host could reach it and it fits a
    metadata value; None for loopback or unspecified hosts (``localhost``, 127.0.0.0/8,
    ::1, 0.0.0.0, ::), for anything unparsable, and for URLs longer than
    ``METADATA_VALUE_CHARS``.  A user:password part, path, query and fragment are dropped:
    they may hold secrets and a base URL needs none of them."""
    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").rstrip(".").lower()
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not host or host == "localhost" \
            or host.endswith(".localhost"):
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if address.is_loopback or address.is_unspecified:
            return None
        host = f"[{host}]" if address.version == 6 else host
    public = f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
    return public if len(public) <= METADATA_VALUE_CHARS else None


def machine_metadata(*, space: str, machinetype: str, manager_id: str,
                     created_at: float | None, manager_url: str) -> dict[str, str]:
    """The metadata of one new machine (the module docstring lists it): cloudvac's own
    tags and EGI's orchestrator properties.  ``eu.egi.cloud.orchestrator.id`` is
    ``MANAGER_ID/SPACE``, the unit that owns the machine (a manager serves several spaces
    and only lists a space's machines carrying both tags; neither name may hold a ``/``);
    ``eu.egi.cloud.orchestrator.url`` is ``public_url(manager_url)`` and left out when
    that is None.  Raises ValueError if Nova would refuse the result (configuration
    validation bounds every name, so that is a bug)."""
    metadata = {TAG_SPACE: space, TAG_MACHINETYPE: machinetype, TAG_MANAGER: manager_id,
                TAG_CREATED: f"{created_at or 0:.0f}", TAG_ORCHESTRATOR: ORCHESTRATOR,
                TAG_ORCHESTRATOR_ID: f"{manager_id}/{space}"}
    if (url := public_url(manager_url)) is not None:
        metadata[TAG_ORCHESTRATOR_URL] = url
    if (problem := metadata_problem(metadata)) is not None:
        raise ValueError(problem)
    return metadata


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
