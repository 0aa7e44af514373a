"""``cloudvac events``: the store's event log, filtered, and followed by a real process while
another writes to the store."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from cloudvac.cli import app
from cloudvac.model.naming import machine_name
from cloudvac.model.records import Event, MachineRecord
from cloudvac.model.states import MachineState, ShutdownMessage
from cloudvac.store import Store

DEADLINE_S = 120.0


def setup(tmp_path: Path) -> tuple[Path, Store]:
    confdir = tmp_path / "cloudvac.d"
    confdir.mkdir()
    (confdir / "00-settings.conf").write_text(f"[settings]\nstate_dir = {tmp_path}\n")
    return confdir, Store(f"sqlite:///{tmp_path / 'cloudvac.db'}")


def test_events_filtered_by_machinetype_oldest_first(tmp_path: Path) -> None:
    confdir, store = setup(tmp_path)
    now = time.time()
    name = machine_name("a.example", "belle")
    try:
        store.apply("a.example", [MachineRecord(
            "a.example", name, "belle", MachineState.GONE, created_at=now - 9,
            shutdown=ShutdownMessage(300, "Nothing to do"))], {}, now)
        store.add_events(
            [Event(now - 10 + i, "a.example", "t2k", f"t{i}", "gone", "") for i in range(5)]
            + [Event(now - 4, "a.example", "belle", name, "create",
                     "created with flavor m1.large (4 processors)"),
               Event(now - 3, "a.example", "belle", name, "abort",
                     "shutdown code 300 Nothing to do: backoff 600s"),
               Event(now - 2, "a.example", "belle", name, "delete",
                     "deleting (stopped) in state stopped"),
               Event(now - 1, "b.example", "belle", "other", "gone", "")])
    finally:
        store.close()
    result = CliRunner().invoke(app, ["events", "-c", str(confdir), "--space", "a.example",
                                      "--machinetype", "belle", "--limit", "2"])
    assert result.exit_code == 0, result.output
    short = name.rsplit("-", 1)[1]
    assert [line[9:] for line in result.stdout.splitlines()] == [
        f"a.example/belle/{short} 300 Nothing to do (no work) → backoff 600s",
        f"a.example/belle/{short} deleted after 300 Nothing to do (no work)",
    ]
    everything = CliRunner().invoke(app, ["events", "-c", str(confdir), "--limit", "100"])
    assert len(everything.stdout.splitlines()) == 9


def read_line(proc: subprocess.Popen[str], deadline: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(timeout=1.0):
                return proc.stdout.readline()
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    raise AssertionError("no line before the deadline")


def test_follow_prints_new_events_as_they_are_stored(tmp_path: Path) -> None:
    confdir, store = setup(tmp_path)
    now = time.time()
    store.add_events([Event(now, "a.example", "belle", "old", "gone", "")])
    proc = subprocess.Popen([sys.executable, "-m", "cloudvac", "events", "-c", str(confdir),
                             "--follow", "--limit", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    try:
        deadline = time.monotonic() + DEADLINE_S
        assert read_line(proc, deadline).endswith("a.example/belle/old gone\n")
        store.add_events([Event(now, "a.example", "belle", "new", "error", "quota\nexceeded")])
        assert read_line(proc, deadline).endswith("a.example/belle/new error: quota exceeded\n")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=DEADLINE_S) == 0
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    finally:
        store.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
