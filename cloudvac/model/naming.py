"""Machine names: ``cloudvac-<space hash>-<machinetype>-<random>``.

Unique, recognisable and DNS-safe; the space hash lets a listing filter by name prefix,
and the machinetype can be read back from a name (simulated pilots need it).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string

#: Space names are DNS-like (a cloud project at a site): what the configuration accepts and
#: what the web side lets through in a URL.
SPACE_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")
MACHINETYPE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
#: Machine names as a URL segment (cloudvac's own, and adopted ones).
MACHINE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_ALPHABET = string.ascii_lowercase + string.digits
SUFFIX_LENGTH = 10


def name_prefix(space: str) -> str:
    """Every machine of ``space`` starts with this."""
    return f"cloudvac-{hashlib.sha256(space.encode()).hexdigest()[:6]}-"


def machine_name(space: str, machinetype: str) -> str:
    """A new machine's name, with a random suffix."""
    suffix = "".join(secrets.choice(_ALPHABET) for _ in range(SUFFIX_LENGTH))
    return f"{name_prefix(space)}{machinetype}-{suffix}"


def machinetype_of(name: str) -> str:
    """The machinetype encoded in a cloudvac machine name, or "" if none."""
    parts = name.split("-")
    return "-".join(parts[2:-1]) if len(parts) >= 4 else ""
