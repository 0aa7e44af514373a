"""Configuration: pydantic models and the drop-in directory loader."""

from cloudvac.config.ini import Issue, Location
from cloudvac.config.loader import DEFAULT_CONFIG_DIR, LoadedConfig, load_config_dir
from cloudvac.config.models import Machinetype, SimMachinetype, SimSpace, Space
from cloudvac.config.settings import Settings

__all__ = [
    "DEFAULT_CONFIG_DIR",
    "Issue",
    "LoadedConfig",
    "Location",
    "Machinetype",
    "Settings",
    "SimMachinetype",
    "SimSpace",
    "Space",
    "load_config_dir",
]
