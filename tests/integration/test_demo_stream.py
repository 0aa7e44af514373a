"""``cloudvac demo`` as a person sees it: on a pipe, one plain line per event and the table
each cycle; on a terminal, the live table with the event stream under it; never a line
wider than 80 columns.  The real demo (two simulated clouds, web service, store)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console
from typer.testing import CliRunner

from cloudvac.cli import app
from cloudvac.demo import run_demo
from cloudvac.events import event_line
from cloudvac.model.records import Event
from cloudvac.store import Store

pytestmark = pytest.mark.slow
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
LINE = re.compile(r"^\d\d:\d\d:\d\d \S+ ")


def stored_events(state: Path) -> list[Event]:
    store = Store(f"sqlite:///{state / 'cloudvac.db'}")
    try:
        return store.events(None, 100_000)[::-1]
    finally:
        store.close()


def too_wide(text: str) -> list[str]:
    """Lines over 80 columns, but for the APEL directory's (a path is printed whole)."""
    return [line for line in text.splitlines()
            if cell_len(line) > 80 and not line.startswith("APEL records: /")]


def test_piped_demo_prints_each_event_once_and_the_table_each_cycle(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["demo", "--cycles", "3", "--state-dir", str(tmp_path)],
                           env={"COLUMNS": "200", "FORCE_COLOR": None, "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "\x1b[" not in out  # plain text, no cursor movement, no colour
    assert too_wide(out) == []
    events = stored_events(tmp_path)
    printed = [line for line in out.splitlines() if LINE.match(line)]
    # one line per stored event, in order, each as event_line says it (the demo may add
    # the VM's own shutdown message to a deletion)
    assert len(printed) == len(events)
    for line, event in zip(printed, events, strict=True):
        assert line == event_line(event) or (event.kind == "delete" and
                                             line.startswith(event_line(event)[:40]))
    kinds = {e.kind for e in events}
    assert {"create", "listed"} <= kinds
    assert not any(line.split(" ", 2)[2].startswith("create:") for line in printed)
    for cycle in (1, 2, 3):
        assert f"cloudvac demo: cycle {cycle}" in out
    assert out.count("space ") >= 3 and "share: actual/target" in out


def test_live_demo_on_a_terminal_shows_the_table_and_the_newest_events(tmp_path: Path) -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=80, height=30,
                      color_system="standard", legacy_windows=False)
    summary = run_demo(3, tmp_path, console)
    assert summary["ok"], summary
    raw = screen.getvalue()
    assert "\x1b[" in raw  # redrawn in place
    text = ANSI.sub("", raw).replace("\r", "\n")
    assert too_wide(text) == []
    last = text[text.rindex("cloudvac demo on http://127.0.0.1:"):]
    assert "last error" in last and "events" in last
    shown = [line for line in last.splitlines() if LINE.match(line)]
    assert shown, last
    expected = {event_line(e)[:40] for e in stored_events(tmp_path)}
    assert all(line[:40] in expected for line in shown)
    # the newest events are the ones under the table
    assert event_line(stored_events(tmp_path)[-1])[:40] in {line[:40] for line in shown}
