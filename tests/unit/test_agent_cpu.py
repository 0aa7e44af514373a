"""The in-VM agent's ``cpu_totals`` upload: the pilot's process tree's CPU time (the pilot and
what it spawned and reaped) and ``/proc/stat`` idle, after the shutdown message and before
the logs; the manager's accounting reads it back (``engine.accounting.cpu_totals``)."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudvac.context import agent
from cloudvac.engine.accounting import cpu_totals
from tests.unit.test_agent import PYTHON36, FakeJoboutputs, finish, start_agent

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\n"
#: The pilot burns 0.5 s of CPU itself and has a child burn 0.5 s more.
PILOT = ("import subprocess, sys\n"
         f"subprocess.run([sys.executable, '-c', {BURN!r}], check=True)\n" + BURN)


@pytest.fixture
def joboutputs() -> Iterator[FakeJoboutputs]:
    fake = FakeJoboutputs()
    fake.start()
    yield fake
    fake.stop()


@pytest.mark.parametrize("python", [
    sys.executable,
    pytest.param(PYTHON36, marks=pytest.mark.skipif(PYTHON36 is None, reason="no Python 3.6"))])
def test_cpu_totals_of_the_pilot_tree_after_the_message_before_the_logs(
        tmp_path: Path, joboutputs: FakeJoboutputs, python: str | None) -> None:
    assert python is not None
    (tmp_path / "pilot.log").write_bytes(b"done\n")
    finish(start_agent(tmp_path, joboutputs.joboutputs(), PILOT, python=python,
                       logs=[str(tmp_path / "pilot.log")]))
    message, = joboutputs.of("shutdown_message")
    totals, = joboutputs.of("cpu_totals")
    log, = joboutputs.of("pilot.log")
    assert message.at <= totals.at <= log.at
    assert totals.status == 204
    assert re.fullmatch(rb"\d+\.\d\d \d+\.\d\d (\d+\.\d\d|-)\n", totals.body), totals.body
    user, system, _ = totals.body.split()
    # Both burns count (the child's too); the agent's own work is not a child's.
    assert 0.9 <= float(user) + float(system) < 30
    cpu, idle = cpu_totals(totals.body)
    assert cpu == pytest.approx(float(user) + float(system))
    assert idle is None or idle >= 0


def test_no_pilot_no_cpu_totals(tmp_path: Path, joboutputs: FakeJoboutputs) -> None:
    proc = start_agent(tmp_path, joboutputs.joboutputs(), None)
    end = time.monotonic() + 60
    while not joboutputs.of("heartbeat"):
        assert time.monotonic() < end, "no heartbeat"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    finish(proc)
    assert joboutputs.of("shutdown_message")
    assert joboutputs.of("cpu_totals") == []


def test_proc_stat_idle_reads_the_cpu_line(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 12345 7 0 0 0 0 0\ncpu0 1 2 3 4\n")
    ticks = os.sysconf("SC_CLK_TCK")
    assert agent.proc_stat_idle(str(stat)) == pytest.approx(12345 / ticks)
    stat.write_text("garbage\n")
    assert agent.proc_stat_idle(str(stat)) is None
    assert agent.proc_stat_idle(str(tmp_path / "missing")) is None
