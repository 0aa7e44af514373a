"""Scenario files: a normal configuration plus ``[scenario]`` and ``[phase NAME]`` sections.

```ini
[scenario]
hours = 12                 ; simulated time
cycle_seconds = 60         ; default: [settings] cycle_seconds

[phase no-work]            ; from 2 h to 5 h, t2k pilots find no work
start_hours = 2
end_hours = 5
machinetype = t2k          ; or SPACE/MACHINETYPE; omit for all
no_work_probability = 1.0  ; any sim_* machinetype option (without the prefix)
quota_processors = 32      ; any sim_* space option (without the prefix)
```

The rest of the file (settings, spaces, machinetypes with their ``sim_*`` options) is read
by the ordinary loader, so errors name file and line the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cloudvac.config.ini import Issue, Location, read_files
from cloudvac.config.loader import LoadedConfig, build
from cloudvac.config.models import SimMachinetype, SimSpace

SPACE_OPTIONS = set(SimSpace.model_fields)
MT_OPTIONS = set(SimMachinetype.model_fields)


class ScenarioError(ValueError):
    """A scenario that cannot run; ``str()`` lists every problem with file:line."""


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    start: float
    end: float
    target: str | None  # MT, SPACE/MT, or None for every machinetype
    space_options: dict[str, Any] = field(default_factory=dict)
    mt_options: dict[str, Any] = field(default_factory=dict)

    def active(self, seconds: float) -> bool:
        return self.start <= seconds < self.end

    def applies(self, space: str, machinetype: str) -> bool:
        return self.target in (None, machinetype, f"{space}/{machinetype}")


@dataclass(frozen=True, slots=True)
class Scenario:
    path: Path
    config: LoadedConfig
    hours: float
    cycle_seconds: float
    phases: tuple[Phase, ...]


def load_scenario(path: Path) -> Scenario:
    doc = read_files([path])
    problems: list[Issue] = list(doc.issues)
    hours, cycle, phases = 6.0, None, []
    for key in [k for k in doc.sections if k[0] in ("scenario", "phase")]:
        section = doc.sections.pop(key)
        values = {k: v for k, (v, _) in section.values.items()}
        try:
            if key == ("scenario",):
                hours = float(values.pop("hours", hours))
                cycle = float(values["cycle_seconds"]) if "cycle_seconds" in values else None
                values.pop("cycle_seconds", None)
                if values:
                    raise ValueError(f"unknown option(s) {', '.join(sorted(values))}")
            elif len(key) == 2:
                phases.append(_phase(key[1], values))
            else:
                raise ValueError("expected [scenario] or [phase NAME]")
        except (ValueError, ValidationError) as exc:
            problems.append(Issue(section.header, section.title, None, str(exc)))
    config = build(doc)
    problems += config.issues
    if config.settings is None or not config.spaces:
        problems.append(Issue(Location(path, 0), None, None, "no valid [settings]/[space]"))
    if problems:
        raise ScenarioError("\n".join(str(p) for p in problems))
    assert config.settings is not None
    return Scenario(path, config, hours, cycle or config.settings.cycle_seconds, tuple(phases))


def _phase(name: str, values: dict[str, str]) -> Phase:
    start = float(values.pop("start_hours", "0")) * 3600
    end = float(values.pop("end_hours", "1e9")) * 3600
    target = values.pop("machinetype", None)
    space_options = {k: values.pop(k) for k in list(values) if k in SPACE_OPTIONS}
    mt_options = {k: values.pop(k) for k in list(values) if k in MT_OPTIONS}
    if values:
        raise ValueError(f"unknown phase option(s) {', '.join(sorted(values))}; phases take "
                         "start_hours, end_hours, machinetype and sim_* options without the "
                         "prefix")
    SimSpace.model_validate(space_options)  # fail early, with pydantic's message
    SimMachinetype.model_validate(mt_options)
    return Phase(name, start, end, target, space_options, mt_options)
