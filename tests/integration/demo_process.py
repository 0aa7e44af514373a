"""``cloudvac demo`` as a real subprocess (its own state directory, loopback ports only):
the dashboard URL it prints first, stopped with SIGTERM at the end."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

START_SECONDS = 180.0  # a loaded 2-core CI box: generous
URL = re.compile(r"dashboard: (http://127\.0\.0\.1:\d+)/dashboard")


@dataclass(frozen=True)
class Demo:
    operator_url: str
    """The operator door, e.g. ``http://127.0.0.1:PORT``."""
    dashboard_url: str
    output: Path
    config_dir: Path


def _answers(url: str) -> bool:
    try:
        httpx.get(url + "/api/status", timeout=30)
    except httpx.TransportError:
        return False
    return True


@contextmanager
def running_demo(state_dir: Path) -> Iterator[Demo]:
    output = state_dir.parent / "demo-output.txt"
    with output.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "cloudvac", "demo", "--state-dir",
                                    str(state_dir)], stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_SECONDS
        while (found := URL.search(output.read_text(errors="replace"))) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the demo printed no dashboard URL:\n"
                                     + output.read_text(errors="replace")[-4000:])
            time.sleep(0.2)
        first = output.read_text(errors="replace").splitlines()[0]
        assert URL.search(first), f"the dashboard URL is not the first line: {first!r}"
        # Printed once the port is bound; it answers once the service serves.
        while not _answers(found[1]):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the operator door never answered:\n"
                                     + output.read_text(errors="replace")[-4000:])
            time.sleep(0.2)
        yield Demo(found[1], found[0].removeprefix("dashboard: "), output,
                   state_dir / "cloudvac.d")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=60)
