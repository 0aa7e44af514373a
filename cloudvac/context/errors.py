"""The one error the engine must understand from contextualization."""

from __future__ import annotations


class RenderError(ValueError):
    """A machinetype's user_data cannot be rendered or is invalid; ``str()`` names
    space/machinetype and what to fix.  The cycle catches it by name and creates nothing
    for that machinetype (the configuration must be fixed)."""
