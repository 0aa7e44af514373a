"""VCycle's ``##user_data_*##`` placeholders, so existing operator templates keep working.

Substitution is exact text replacement, as in VCycle (research-vcycle.md §2.8), with two
fixes: an unknown ``##user_data_...##`` placeholder is an error naming it (VCycle silently
deleted it), and ``heartbeat_machines_url`` includes the machinetype (VCycle's did not,
though its own web layout needed it).  Text like ``##HOSTNAME##`` that is not a
``user_data_`` placeholder is left alone.  cloudvac adds ``##user_data_joboutputs_token##``
(the VM's bearer token for uploads, replacing VCycle's X.509 DN check).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

PLACEHOLDER = re.compile(r"##user_data_([A-Za-z0-9_]+)##")
DEPRECATED = {"vmtype": "machinetype", "vm_hostname": "machine_hostname",
              "vmlm_version": "manager_version", "vmlm_hostname": "manager_hostname"}


class PlaceholderError(ValueError):
    """A template uses placeholders cloudvac does not know."""


def substitute(template: str, values: Mapping[str, str]) -> str:
    """Replace every ``##user_data_NAME##`` with ``values[NAME]`` (deprecated VCycle names
    included); raise PlaceholderError listing the names that have no value."""
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        key = DEPRECATED.get(key, key)
        if key in values:
            return values[key]
        missing.append(match.group(0))
        return match.group(0)

    result = PLACEHOLDER.sub(replace, template)
    if missing:
        raise PlaceholderError("unknown placeholder(s) " + ", ".join(sorted(set(missing))) +
                               "; known: " + ", ".join(f"##user_data_{k}##"
                                                       for k in sorted(values)))
    return result
