"""Command line: ``cloudvac --help`` lists every command.

Commands live by concern (``commands``: run, web, validate, status, demo, render, dirac-cs,
simulate; ``events``: the event log; ``ops``: acting on a running daemon; ``vcycle``:
migrating from VCycle; ``simcloud``: the simulated cloud as its own
process); each registers itself on ``base.app`` when imported here.
"""

from __future__ import annotations

import logging

from cloudvac.cli import accounting, commands, docs, events, ops, simcloud, vcycle
from cloudvac.cli.base import app

__all__ = ["accounting", "app", "commands", "docs", "events", "main", "ops", "simcloud",
           "vcycle"]


def main() -> None:  # pragma: no cover - console entry point
    logging.captureWarnings(True)
    app()
