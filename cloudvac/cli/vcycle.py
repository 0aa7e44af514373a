"""``cloudvac import-vcycle``: VCycle's configuration converted to cloudvac's."""

from __future__ import annotations

from cloudvac.cli.base import app

__all__ = ["app"]
