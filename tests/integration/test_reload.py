"""``systemctl reload`` (SIGHUP) and the log file, as the units use them: a real
``cloudvac run``/``cloudvac web`` process on a simulated cloud, real signals, a real file
renamed as logrotate renames it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CLOUDVAC = [sys.executable, "-m", "cloudvac"]
DEADLINE = 120.0  # a loaded 2-core machine starts Python slowly
SETTINGS = """\
[settings]
state_dir = {state}
web_listen = 127.0.0.1:0
operator_listen = 127.0.0.1:0
; far longer than the test: only SIGHUP can make the daemon re-read its files
cycle_seconds = 3600
"""
SPACE = """\
[space {name}]
api = sim
processors_limit = {limit}
creation_burst_processors = 8
flavor_names = m1.small
sim_boot_seconds = 0.2

[machinetype {name} belle]
target_share = 1
"""


def wait_for(what: Callable[[], bool], message: Callable[[], str]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not what():
        assert time.monotonic() < deadline, message()
        time.sleep(0.1)


class Process:
    """``cloudvac ARGS --log-file LOG`` and what it logged."""

    def __init__(self, log: Path, *args: str) -> None:
        self.log = log
        self.proc = subprocess.Popen([*CLOUDVAC, *args, "--log-file", str(log)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)

    def text(self) -> str:
        """Everything logged so far, rotated files first."""
        files = [*sorted(self.log.parent.glob(self.log.name + ".*"), reverse=True), self.log]
        return "".join(f.read_text() for f in files if f.exists())

    def wait_logged(self, words: str) -> None:
        def said() -> bool:
            assert self.proc.poll() is None, self.proc.stderr and self.proc.stderr.read()
            return words in self.text()
        wait_for(said, lambda: f"never logged {words!r}:\n{self.text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=DEADLINE)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def confdir(tmp_path: Path) -> Path:
    cdir = tmp_path / "cloudvac.d"
    cdir.mkdir()
    (cdir / "00-settings.conf").write_text(SETTINGS.format(state=tmp_path / "state"))
    (cdir / "10-a.conf").write_text(SPACE.format(name="a.example", limit=2))
    return cdir


@pytest.fixture
def run(confdir: Path, tmp_path: Path) -> Iterator[Process]:
    (tmp_path / "log").mkdir()
    process = Process(tmp_path / "log" / "cloudvac.log", "run", "--config-dir", str(confdir))
    yield process
    process.stop()


def test_sighup_rereads_the_configuration_at_once(run: Process, confdir: Path) -> None:
    run.wait_logged("space=a.example machinetype=belle")  # its first cycle created machines
    (confdir / "10-a.conf").write_text(SPACE.format(name="a.example", limit=4))
    (confdir / "20-b.conf").write_text(SPACE.format(name="b.example", limit=2))
    time.sleep(1.0)  # nothing re-reads the files on its own within the test
    assert "b.example" not in run.text()
    run.proc.send_signal(signal.SIGHUP)
    run.wait_logged("SIGHUP: configuration re-read")
    run.wait_logged("space=b.example machinetype=- machine=- managing (1 machinetypes)")
    run.wait_logged("space=b.example machinetype=belle")  # the new space cycles at once
    line = next(x for x in run.text().splitlines() if "SIGHUP: configuration re-read" in x)
    assert f"from {confdir}: 2 spaces in force, 0 invalid, 0 problems" in line
    assert line.endswith("changed: a.example, b.example")

    (confdir / "20-b.conf").write_text("[space b.example]\napi = sim\nflavor_names = m1.small"
                                       "\nprocessors_limit = many\n")
    run.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: run.text().count("SIGHUP: configuration re-read") == 2, run.text)
    text = run.text()
    assert "20-b.conf:4" in text and "processors_limit" in text
    assert "space=b.example machinetype=- machine=- configuration invalid: keeping the last " \
           "good one" in text
    assert run.stop() == 0


def test_the_log_file_is_reopened_after_logrotate_renamed_it(run: Process) -> None:
    run.wait_logged("space=a.example machinetype=belle")
    run.log.rename(run.log.with_name("cloudvac.log.1"))  # what logrotate's create mode does
    run.proc.send_signal(signal.SIGHUP)  # anything that logs a line
    run.wait_logged("SIGHUP: configuration re-read")
    assert "SIGHUP: configuration re-read" in run.log.read_text()
    assert "SIGHUP" not in run.log.with_name("cloudvac.log.1").read_text()
    assert "space=a.example machinetype=belle" in run.log.with_name("cloudvac.log.1").read_text()
    assert run.stop() == 0


def test_sighup_rereads_the_spaces_the_web_door_serves(confdir: Path, tmp_path: Path) -> None:
    web = Process(tmp_path / "web.log", "web", "--config-dir", str(confdir))
    try:
        web.wait_logged("web service on")
        (confdir / "20-b.conf").write_text(SPACE.format(name="b.example", limit=2))
        web.proc.send_signal(signal.SIGHUP)
        web.wait_logged("SIGHUP: configuration re-read from")
        assert f"from {confdir}: 2 spaces served" in web.text()
    finally:
        assert web.stop() == 0


def test_a_log_file_that_cannot_be_opened_is_named_without_a_traceback(
        confdir: Path, tmp_path: Path) -> None:
    log = tmp_path / "missing" / "cloudvac.log"
    result = subprocess.run([*CLOUDVAC, "run", "--config-dir", str(confdir), "--log-file",
                             str(log)], capture_output=True, text=True, timeout=DEADLINE,
                            env={**os.environ, "COLUMNS": "300"})
    assert result.returncode == 2
    assert f"cannot start: log file {log}: No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr
