"""Commands that act on a running daemon through the store: drain, undrain, kill, logs,
events."""

from __future__ import annotations

from cloudvac.cli.base import app

__all__ = ["app"]
