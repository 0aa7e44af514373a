"""launch.py's start-up wait is bounded by what the server does (CPU time), not by the clock:
a hung server fails after ``stall`` seconds, one that spins fails on its CPU budget, a slow
but progressing one is waited for. Plain local processes, no oracle needed."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.contract.conftest import launch

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# margins for a loaded machine: a spinning process still gains a CPU second in ``stall``
SMALL = launch.Timeouts(ready=2.0, stop=1.0, stall=3.0, wall=30.0)
SPIN = "while True: pass"


@contextmanager
def started(code: str) -> Iterator[tuple[subprocess.Popen[str], threading.Event]]:
    """``python -c code`` in its own session, as launch.py starts a server, and an event set
    by its first line of output or its end (as launch.py's reader does); always killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    got_line = threading.Event()

    def drain() -> None:
        assert proc.stdout is not None
        for _ in proc.stdout:
            got_line.set()
        got_line.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        yield proc, got_line
    finally:
        launch._stop(proc, SMALL.stop)
        assert proc.stdout is not None
        proc.stdout.close()


def test_a_hung_start_up_fails_after_stall_seconds() -> None:
    with started("import time; time.sleep(60)") as (proc, got_line):
        t0 = time.monotonic()
        reason = launch._await_ready(proc, got_line, SMALL)
    assert reason.startswith("hung")
    assert time.monotonic() - t0 < SMALL.stall + 3


def test_a_spinning_start_up_fails_on_its_cpu_budget() -> None:
    with started(SPIN) as (proc, got_line):
        reason = launch._await_ready(proc, got_line, SMALL)
        cpu = launch.session_cpu_seconds(proc.pid)
    assert reason.startswith("not ready after") and "of CPU" in reason
    assert cpu is not None and cpu >= SMALL.ready


def test_a_start_up_slowed_by_the_machine_is_waited_for() -> None:
    """1.5 s of CPU taken at half a core at most: more wall time than ``ready`` allows CPU
    time, and steady progress (also on a machine several times slower)."""
    code = (
        "import time\n"
        "while time.process_time() < 1.5:\n"
        "    t = time.process_time() + 0.05\n"
        "    while time.process_time() < t: pass\n"
        "    time.sleep(0.05)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    timeouts = launch.Timeouts(ready=2.0, stop=1.0, stall=10.0, wall=60.0)
    with started(code) as (proc, got_line):
        t0 = time.monotonic()
        reason = launch._await_ready(proc, got_line, timeouts)
        waited = time.monotonic() - t0
        alive = proc.poll() is None
    assert reason == "" and alive
    assert waited > timeouts.ready
