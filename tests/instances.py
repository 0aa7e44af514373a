"""Several real ``cloudvac run`` processes on one PostgreSQL store, for tests.

``Cluster(root, shared, database)`` lays out what every instance shares: the same
configuration files (``shared``: the spaces and ``[settings]`` common to all, with
``database = ...``) and one server secret (made once, copied into every state directory
with mode 0600, as an operator copies ``STATE_DIR/server.secret``).  ``start()`` starts one
more ``cloudvac run`` with a state directory and a drop-in of its own (``90-instance.conf``:
``state_dir``, its VM door on a port chosen before the sim cloud starts, the operator door
on any free port; both on 127.0.0.1), optionally under libfaketime (``faked_clock``: its
wall clock moved; the monotonic clock is left alone, as on a host whose NTP is off).  Each instance
logs to ``instance-N.log``; its operator door's URL is read from its start-up line, with a
generous deadline.  ``status()`` / ``owners()`` run the real ``cloudvac status --json`` /
``--instances --json`` against the shared database; ``RunningInstance.metrics()`` reads
its ``/metrics`` (last successful cycle per space, cloud requests per space and kind).
``stop_all()`` (SIGTERM, then SIGKILL after ``STOP_SECONDS``; a stopped process is
continued first) runs in the caller's ``finally``.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cloudvac.auth.vmtokens import SECRET_FILE, load_or_create_secret

START_SECONDS = 240.0
"""Until an instance's operator door is up (imports, migrations, a loaded 2-core box)."""
STOP_SECONDS = 90.0
CLI_SECONDS = 300.0
POLL_SECONDS = 0.25
_DOORS = re.compile(r"web service on (\S+), operator door on (\S+)")
T = TypeVar("T")


def free_port() -> int:
    """A port free now on 127.0.0.1 (the VM doors must be known before the sim cloud
    starts, so they cannot be port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def until(check: Callable[[], T | None], deadline: float, what: str,
          every: float = POLL_SECONDS) -> T:
    """Poll ``check`` until it returns something true; AssertionError naming ``what``
    when ``deadline`` (monotonic) passes first."""
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within the deadline: {what}")
        time.sleep(every)


def faked_clock(offset: str) -> dict[str, str]:
    """The environment that runs a process under libfaketime (Debian's ``faketime``) with
    its wall clock moved by ``offset`` (``+90s``, ``-90s``); the monotonic clock is left
    alone.  The library is preloaded directly: the ``faketime`` command forks, and the
    tests must signal (and find by pid in ``status --instances``) the manager itself.
    The multi-threaded variant, as the manager runs worker threads."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    assert found, "libfaketime is not installed: run scripts/system-deps.sh"
    return {"LD_PRELOAD": found[0], "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


@dataclass
class RunningInstance:
    """One ``cloudvac run`` process."""

    index: int
    config_dir: Path
    state_dir: Path
    log_path: Path
    web_port: int
    process: subprocess.Popen[bytes]
    operator_url: str = ""
    faketime: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def door(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_started(self, deadline: float) -> None:
        def doors() -> str | None:
            if not self.alive():
                raise AssertionError(f"instance {self.index} exited with "
                                     f"{self.process.returncode}:\n{self.log()[-3000:]}")
            found = _DOORS.search(self.log())
            return found.group(2) if found else None

        self.operator_url = until(doors, deadline, f"instance {self.index} serving")

    def send(self, sig: signal.Signals) -> None:
        if self.alive():
            self.process.send_signal(sig)

    def stop(self) -> int:
        """SIGTERM (SIGCONT first, in case it was stopped), then SIGKILL if it hangs."""
        self.send(signal.SIGCONT)
        self.send(signal.SIGTERM)
        try:
            return self.process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(STOP_SECONDS)

    def metrics(self) -> Metrics:
        """Its operator door's ``/metrics`` now."""
        text = httpx.get(self.operator_url + "/metrics", timeout=30.0).text
        last: dict[str, float] = {}
        requests: dict[tuple[str, str], int] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "cloudvac_last_cycle_timestamp_seconds":
                    last[sample.labels["space"]] = sample.value
                elif sample.name == "cloudvac_cloud_requests_total":
                    key = (sample.labels["space"], sample.labels["kind"])
                    requests[key] = requests.get(key, 0) + int(sample.value)
        return Metrics(last, requests)


@dataclass(frozen=True)
class Metrics:
    last_cycle: dict[str, float]
    """Space -> unix time (the instance's clock) its last successful cycle ended."""
    requests: dict[tuple[str, str], int]
    """(space, kind) -> cloud API requests so far."""

    def acting(self) -> int:
        """Create and delete requests so far, all spaces."""
        return sum(n for (_, kind), n in self.requests.items()
                   if kind in ("create", "delete"))


@dataclass
class Cluster:
    """N instances sharing ``shared`` (configuration text) and one server secret."""

    root: Path
    shared: str
    web_ports: list[int] = field(default_factory=list)
    instances: list[RunningInstance] = field(default_factory=list)

    def __post_init__(self) -> None:
        seed = self.root / "seed"
        load_or_create_secret(seed)
        self._secret = seed / SECRET_FILE

    def reserve(self, count: int) -> list[str]:
        """Choose the VM doors of the next ``count`` instances: their URLs."""
        self.web_ports += [free_port() for _ in range(count)]
        return [f"http://127.0.0.1:{port}" for port in self.web_ports]

    def start(self, faketime: str | None = None) -> RunningInstance:
        """Start the next instance (its reserved port, else a new one); returns once its
        process runs (``wait_started`` waits for its doors)."""
        index = len(self.instances)
        if index >= len(self.web_ports):
            self.web_ports.append(free_port())
        cdir, state = self.root / f"conf-{index}", self.root / f"state-{index}"
        cdir.mkdir(parents=True)
        state.mkdir(parents=True)
        shutil.copyfile(self._secret, state / SECRET_FILE)
        (state / SECRET_FILE).chmod(0o600)
        (cdir / "10-shared.conf").write_text(self.shared)
        (cdir / "90-instance.conf").write_text(
            f"[settings]\nstate_dir = {state}\nweb_listen = 127.0.0.1:{self.web_ports[index]}"
            "\noperator_listen = 127.0.0.1:0\n")
        args = [sys.executable, "-m", "cloudvac", "run", "--config-dir", str(cdir)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if faketime is not None:
            env.update(faked_clock(faketime))
        log_path = self.root / f"instance-{index}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                       stdin=subprocess.DEVNULL)
        instance = RunningInstance(index, cdir, state, log_path, self.web_ports[index],
                                   process, faketime=faketime)
        self.instances.append(instance)
        return instance

    def start_all(self, count: int, faketimes: dict[int, str] | None = None
                  ) -> list[RunningInstance]:
        """Start ``count`` instances at once (concurrent start-up), then wait for all."""
        started = [self.start((faketimes or {}).get(i)) for i in range(count)]
        deadline = time.monotonic() + START_SECONDS
        for instance in started:
            instance.wait_started(deadline)
        return started

    def cli(self, *args: str) -> Any:
        """``cloudvac ARGS --config-dir`` (the first instance's) as JSON."""
        done = subprocess.run([sys.executable, "-m", "cloudvac", *args, "--config-dir",
                               str(self.root / "conf-0")], capture_output=True, text=True,
                              timeout=CLI_SECONDS, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout)

    def status(self) -> list[dict[str, Any]]:
        return list(self.cli("status", "--json"))

    def owners(self) -> dict[int, list[str]]:
        """Instance index -> the spaces it owns now (``status --instances --json``;
        instances with no row are left out)."""
        by_pid = {i.pid: i.index for i in self.instances}
        found: dict[int, list[str]] = {}
        for row in self.cli("status", "--instances", "--json"):
            index = by_pid.get(int(row["pid"]))
            assert index is not None, f"an instance no test started: {row}"
            found[index] = sorted(row["spaces"])
        return found

    def stop_all(self) -> dict[int, int]:
        """Stop every instance still running; exit codes by index."""
        return {i.index: i.stop() for i in self.instances}
