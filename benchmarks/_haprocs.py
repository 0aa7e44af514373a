"""Processes of the ``ha_postgres`` benchmark: a private PostgreSQL (``tests/postgres.py``'s
server, with a benchmark's settings), ``cloudvac sim-cloud`` and N ``cloudvac run``, each
on 127.0.0.1, and their CPU read from ``/proc``."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.postgres import PostgresError, PostgresServer, find_bindir

TICK = os.sysconf("SC_CLK_TCK")
START_SECONDS = 300.0  # imports and migrations on a loaded 2-core machine
STOP_SECONDS = 120.0
SIM_PASSWORD = "bench-sim-password-4a7e"
_DOORS = re.compile(r"web service on (\S+), operator door on (\S+)")
#: Server settings the report records (the tests' server: no fsync, small buffers).
REPORTED = ("fsync", "synchronous_commit", "full_page_writes", "shared_buffers",
            "max_connections", "server_version")


def proc_cpu(pid: int, children: bool = False) -> float:
    """User + system CPU seconds of ``pid`` (with ``children``: also of its reaped
    children); 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


def proc_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(entry.name))
    return found


class BenchPostgres(PostgresServer):
    """The tests' private server: initdb into a temporary directory, 127.0.0.1 and a Unix
    socket, stopped and removed by ``stop``; its settings as the tests have them (no
    fsync: CPU is what is measured, not the disk)."""

    def __init__(self) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise PostgresError("no PostgreSQL server (initdb) found: run `make system-deps`")
        super().__init__(bindir)

    def settings(self) -> dict[str, str]:
        with self.connect() as admin:
            return {n: str(admin.execute(f"SHOW {n}").fetchone()[0])  # type: ignore[index]
                    for n in REPORTED}

    def postmaster(self) -> int:
        """The server's pid (first line of ``postmaster.pid``)."""
        return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])

    def cpu(self) -> float:
        """CPU seconds of the whole server: the postmaster with its reaped children (the
        backends that ended) plus every live child."""
        main = self.postmaster()
        return proc_cpu(main, children=True) + sum(proc_cpu(c) for c in children_of(main))


@dataclass
class SimCloud:
    """A running ``cloudvac sim-cloud``."""

    process: subprocess.Popen[str]
    url: str
    password_file: Path

    def space_lines(self, project: str) -> str:
        return (f"api = openstack\nauth_url = {self.url}/v3\nusername = cloudvac\n"
                f"password_file = {self.password_file}\nproject_name = {project}\n"
                "region_name = RegionOne\nnetworks = none\nflavor_names = m1.small\n")

    def stop(self) -> int:
        return stop_process(self.process)


def start_sim(directory: Path, options: list[str]) -> SimCloud:
    """``cloudvac sim-cloud`` with ``options`` on a free loopback port; its log in
    ``directory/sim-cloud.log``."""
    secret = directory / "sim-password"
    secret.write_text(SIM_PASSWORD)
    secret.chmod(0o600)
    with (directory / "sim-cloud.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cloudvac", "sim-cloud", "--listen", "127.0.0.1:0",
             "--password-file", str(secret), *options],
            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert process.stdout is not None
    line = process.stdout.readline()  # blocks until the line or its exit
    if not line.startswith("listening on "):
        stop_process(process)
        raise RuntimeError(f"sim-cloud did not start ({line!r}); see {directory}")
    return SimCloud(process, line.split()[-1], secret)


def stop_process(process: subprocess.Popen[Any], signal_it: bool = True) -> int:
    """SIGTERM (SIGCONT first; not with ``signal_it`` false: sent already, and a second
    SIGTERM cuts a graceful stop short), SIGKILL if it hangs; its exit code."""
    if signal_it and process.poll() is None:
        process.send_signal(signal.SIGCONT)
        process.terminate()
    try:
        return process.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(STOP_SECONDS)


@dataclass
class Instance:
    """One ``cloudvac run`` process."""

    index: int
    process: subprocess.Popen[bytes]
    log_path: Path
    operator_url: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_started(self, deadline: float) -> None:
        while not self.operator_url:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"instance {self.index} exited: {tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"instance {self.index} not serving in {START_SECONDS} s")
            found = _DOORS.search(self.log_path.read_text(errors="replace"))
            if found:
                self.operator_url = found.group(2)
            else:
                time.sleep(0.5)

    def counters(self) -> dict[str, float]:
        """From its ``/metrics``: space cycles by outcome (``cycles_ok``...), create and
        delete requests, VM uploads, and the cycle-duration sum and count."""
        text = httpx.get(self.operator_url + "/metrics", timeout=300.0, trust_env=False).text
        found: dict[str, float] = {}

        def add(key: str, value: float) -> None:
            found[key] = found.get(key, 0.0) + value

        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name, labels = sample.name, sample.labels
                if name == "cloudvac_cycles_total":
                    add(f"cycles_{labels.get('outcome', '')}", sample.value)
                elif name in ("cloudvac_creates_total", "cloudvac_deletes_total"):
                    add(name[9:-6], sample.value)
                elif name == "cloudvac_uploads_total":
                    add("uploads", sample.value)
                elif name in ("cloudvac_cycle_duration_seconds_sum",
                              "cloudvac_cycle_duration_seconds_count"):
                    add(name[9:], sample.value)
        return found


def start_instance(root: Path, index: int, shared: Path, secret: Path,
                   web_port: int) -> Instance:
    """``cloudvac run`` with the shared configuration file, its own state directory (the
    shared ``server.secret`` copied in, mode 0600) and its own loopback ports."""
    cdir, state = root / f"conf-{index}", root / f"state-{index}"
    cdir.mkdir(parents=True)
    state.mkdir(parents=True)
    shutil.copyfile(secret, state / secret.name)
    (state / secret.name).chmod(0o600)
    shutil.copyfile(shared, cdir / "10-shared.conf")
    (cdir / "90-instance.conf").write_text(
        f"[settings]\nstate_dir = {state}\nweb_listen = 127.0.0.1:{web_port}\n"
        "operator_listen = 127.0.0.1:0\n")
    log_path = root / f"instance-{index}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cloudvac", "run", "--config-dir", str(cdir)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return Instance(index, process, log_path)
