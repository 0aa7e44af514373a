"""What cloudvac delivered: one accounting record per finished machine.

Made by ``engine/accounting.py`` when a machine ends (from its ``MachineRecord``, its
machinetype's configuration and what the VM uploaded); read by the accounting report
(``cloudvac accounting``) and the APEL writer.  Times are Unix seconds; the benchmark is per
processor, on the HS06 scale (HEPscore23 has the same scale).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class JobCounts:
    """Jobs the pilot ran, by kind, when its log says (else all zero and ``known`` False)."""

    production: int = 0
    user: int = 0
    known: bool = False


@dataclass(frozen=True, slots=True)
class AccountingRecord:
    """One finished machine.  ``machine`` is cloudvac's name, ``vm_uuid`` the cloud's id
    (APEL's LocalJobId).  ``cpu_seconds`` is what the VM reported (user + system of the
    pilot's process tree), None when it reported nothing; ``idle_seconds`` the VM's
    ``/proc/stat`` idle time for a cross-check, None likewise.  ``fizzled``: it ran less than
    its machinetype's ``fizzle_seconds``; kept, but flagged."""

    space: str
    machine: str
    vm_uuid: str
    machinetype: str
    vo: str
    dirac_site: str
    """The DIRAC site name its pilots reported as (per DIRAC instance), '' if none."""
    processors: int
    benchmark_per_processor: float | None
    """HS06 per processor (config, or the flavor's ``accounting:benchmark_value``)."""
    benchmark_source: str
    """Where the benchmark came from: 'config', 'flavor' or '' (none known)."""
    started_at: float
    stopped_at: float
    cpu_seconds: float | None
    idle_seconds: float | None
    shutdown_code: int | None
    shutdown_text: str
    jobs: JobCounts
    fizzled: bool
    site: str = ""
    """The space's ``site_name`` (``<Site>.<cc>``: GOCDB name and country), '' if unset."""

    @property
    def wall_seconds(self) -> float:
        return max(0.0, self.stopped_at - self.started_at)
