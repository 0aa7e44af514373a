"""The pieces of the simulated cloud that do not run it: one server's record and timeline
(``SimServer``), its canned outcomes and Nova-like statuses, and flavor parsing.  ``sim.py``
runs them (``SimProject``, ``SimCloud``); ``simpilots.py`` is where its pilots report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from cloudvac.model.cloud import TAG_MACHINETYPE, Flavor, ObservedMachine
from cloudvac.model.errors import Misconfigured
from cloudvac.model.layout import HEARTBEAT_FILE
from cloudvac.model.states import MachineState, ShutdownMessage

NO_VALID_HOST = "No valid host was found. There are not enough hosts available."
SUCCESS = ShutdownMessage(200, "Success")
NO_WORK = ShutdownMessage(300, "Nothing to do")
ENV_ERROR = ShutdownMessage(500, "Certificate/proxy not acceptable")
APP_ERROR = ShutdownMessage(600, "Payload execution failed with error")
DELETE_SECONDS = 1.0
#: A pilot without work (or with a broken environment) gives up after 5 % of job_seconds but
#: never later than this (x0.5-1.5), so it always stays well under a typical fizzle_seconds.
EARLY_END_CAP_SECONDS = 120.0
USER_DATA_MAX = 65535  # Nova's limit on base64-encoded user_data

Owner = tuple[str, str]  # (space, manager) from the server's cloudvac tags

_NOVA_STATUS = {MachineState.STARTING: "BUILD", MachineState.RUNNING: "ACTIVE",
                MachineState.STOPPED: "SHUTOFF", MachineState.FAILED: "ERROR"}


@dataclass(slots=True, eq=False)
class SimServer:
    """One server of the project: identity, drawn timeline and progress along it."""

    id: str
    name: str
    metadata: dict[str, str]
    flavor: Flavor
    owner: Owner | None  # None: untagged, never listed and its pilot reports to nobody
    created_at: float
    state: MachineState = MachineState.STARTING
    status: str = "BUILD"
    # Timeline, drawn at create.
    boot_at: float = 0.0
    fails: bool = False
    end_at: float = math.inf
    message: ShutdownMessage = SUCCESS
    heartbeat_period: float = math.inf
    heartbeat_file: str = HEARTBEAT_FILE
    # Progress.
    started_at: float | None = None
    stopped_at: float | None = None
    next_heartbeat: float = math.inf
    delete_at: float | None = None
    fault: str = ""
    address: str = ""
    seq: int = -1  # sequence number of this server's one valid heap entry; -1: none
    observed: ObservedMachine | None = None  # cache, reset on every change

    @property
    def machinetype(self) -> str:
        return self.metadata.get(TAG_MACHINETYPE, "")

    def move(self, state: MachineState, status: str = "") -> None:
        self.state, self.status = state, status or _NOVA_STATUS[state]
        self.observed = None

    def observe(self) -> ObservedMachine:
        if self.observed is None:
            self.observed = ObservedMachine(
                cloud_id=self.id, name=self.name, machinetype=self.machinetype,
                state=self.state, processors=self.flavor.processors,
                created_at=self.created_at, started_at=self.started_at,
                cloud_status=self.status, fault=self.fault, address=self.address)
        return self.observed


@dataclass(frozen=True, slots=True)
class _Report:
    owner: Owner
    name: str
    machinetype: str
    at: float
    message: ShutdownMessage | None  # None: heartbeat
    file: str = HEARTBEAT_FILE
    started_at: float = 0.0  # a shutdown's: when its pilot started, on how many processors
    processors: int = 1


def parse_flavors(entries: Iterable[str]) -> dict[str, Flavor]:
    """Parse ``NAME:VCPUS:RAM_MB[:BENCHMARK[:TYPE]]`` entries (BENCHMARK per processor and
    TYPE, default ``HEPSPEC``, stand for the flavor's ``accounting:benchmark_value`` and
    ``accounting:benchmark_type`` extra specs); raises Misconfigured naming a bad entry."""
    flavors: dict[str, Flavor] = {}
    for index, entry in enumerate(entries, 1):
        parts = entry.split(":")
        value: float | None = None
        kind = ""
        try:
            name, vcpus, ram = parts[:3]
            value = float(parts[3]) if len(parts) > 3 else None
            kind = (parts[4] if len(parts) > 4 else "HEPSPEC") if value is not None else ""
            flavor = Flavor(name.strip(), int(vcpus), int(ram), str(index), kind, value)
        except ValueError:
            flavor = Flavor("", 0)
        if len(parts) > 5 or not flavor.name or flavor.processors < 1 or flavor.ram_mb < 0 \
                or not (value is None or value > 0) or (value is not None and not kind):
            raise Misconfigured(
                f"sim flavor {entry!r} is not NAME:VCPUS:RAM_MB[:BENCHMARK[:TYPE]]")
        flavors[flavor.name] = flavor
    return flavors
