"""A bounded stop: SIGTERM ends ``cloudvac run`` within ``space_timeout_seconds`` plus a few
seconds whatever its clouds do, and a cancelled cycle's cloud calls send nothing more."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudvac.auth.cancel import CallCancelled, CancellableHTTP, run_cancellable

SPACE_TIMEOUT = 3.0
SLACK = 8.0  # process start-up excluded; the stop itself takes well under a second


class BlackHole:
    """A TCP server on 127.0.0.1 that accepts connections and never answers: a hung cloud."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def config(root: Path, port: int) -> Path:
    secret = root / "password"
    secret.write_text("not-a-real-password\n")
    secret.chmod(0o600)
    cdir = root / "conf"
    cdir.mkdir()
    (cdir / "10.conf").write_text(f"""\
[settings]
state_dir = {root / "state"}
cycle_seconds = 1
space_timeout_seconds = {SPACE_TIMEOUT}

[space hung.example]
api = openstack
auth_url = http://127.0.0.1:{port}/v3
username = u
password_file = {secret}
project_name = p
flavor_names = m1.small
api_timeout_seconds = 120
api_retries = 5

[machinetype hung.example belle]
target_share = 1
root_image = 155d900f-4e14-4e4c-a73d-069cbf4541e6
""")
    return cdir


def test_sigterm_with_a_hung_cloud_stops_within_the_space_deadline(
        tmp_path: Path, black_hole: BlackHole) -> None:
    cdir = config(tmp_path, black_hole.port)
    proc = subprocess.Popen([sys.executable, "-m", "cloudvac", "run", "--config-dir",
                             str(cdir)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120  # a loaded machine starts Python slowly
        while black_hole.accepted == 0:
            assert time.monotonic() < deadline and proc.poll() is None, "never called"
            time.sleep(0.1)
        asked = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
        took = time.monotonic() - asked
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0
    assert took < SPACE_TIMEOUT + SLACK, f"stop took {took:.1f}s"


def test_a_cancelled_call_sends_no_more_requests(black_hole: BlackHole) -> None:
    """keystoneauth retries inside the thread; once its coroutine is cancelled (here: its
    timeout), the thread's next request is refused before it leaves."""
    http = CancellableHTTP()
    attempts: list[str] = []

    def retrying() -> None:
        for _ in range(5):
            try:
                http.get(f"http://127.0.0.1:{black_hole.port}/", timeout=0.5)
            except CallCancelled:
                attempts.append("refused")
                raise
            except OSError as exc:  # requests' timeouts are OSErrors
                attempts.append(type(exc).__name__)

    with pytest.raises(TimeoutError):
        asyncio.run(run_cancellable(retrying, timeout=0.2))
    deadline = time.monotonic() + 30
    while "refused" not in attempts and time.monotonic() < deadline:
        time.sleep(0.05)
    assert attempts[-1] == "refused" and len(attempts) == 2
    assert black_hole.accepted == 1
