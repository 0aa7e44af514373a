"""Where the daemon re-reads its configuration (``Daemon.load``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudvac.config import LoadedConfig, load_config_dir
from cloudvac.engine.pipes import PipeFetcher


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where the daemon re-reads its configuration, and settings it must keep whatever
    the files say (the demo's state directory and loopback port)."""

    directory: Path
    overrides: Mapping[str, Any] = field(default_factory=dict)
    pipes: PipeFetcher = field(default_factory=PipeFetcher, compare=False, repr=False)
    """Fetches the [vacuum_pipe] documents into the cache the loader reads."""

    def load(self, previous: LoadedConfig | None = None) -> LoadedConfig:
        """The configuration now; ``previous`` (the last load) lets the loader tell a file
        that became unreadable or empty from a space the operator removed."""
        self.pipes.poll(self.directory)  # starts due fetches; never waits long
        loaded = load_config_dir(self.directory, previous)
        if loaded.settings is not None and self.overrides:
            loaded.settings = loaded.settings.model_copy(update=dict(self.overrides))
        return loaded
