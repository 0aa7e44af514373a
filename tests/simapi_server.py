"""``cloudvac sim-cloud`` as a subprocess on a free 127.0.0.1 port, for tests.

``sim_cloud(tmp_path, ...)`` starts it (password, admin token and the optional application
credential secret in 0600 files under ``tmp_path``), waits for its ``listening on URL``
line with a generous deadline, yields a ``SimCloudServer`` (URLs, credentials, the
admin calls ``faults()`` and ``state()``, ``space_options()`` for a cloudvac config) and
stops it with SIGTERM (SIGKILL only if it hangs; ``server["exit_code"]`` afterwards).
Its log is ``server.log_path``.  ``projects=N`` serves N projects (``server.projects``,
``project-0001``...), ``vm_door=[URL, ...]`` sends the VMs' reports there instead of the
URL their user_data names, ``heartbeat_seconds`` is how often the VMs heartbeat.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cloudvac.clouds.simkeystone import image_id

READY = "listening on "
START_SECONDS = 120.0  # a loaded 2-core CI machine: imports alone may take many seconds
STOP_SECONDS = 60.0
#: The flavors of the shared contract scenario (tests/contract/scenario.py, ScenarioCloud).
CONTRACT_FLAVORS = ("m1.tiny:1:512", "m1.small:1:2048", "m1.xlarge:8:16384",
                    "cv.unschedulable:1:512", "cv.accounted:1:512:12.5:HEPscore23")


@dataclass(frozen=True)
class SimCloudServer:
    """A running ``cloudvac sim-cloud``: what a client needs to talk to it."""

    url: str
    username: str
    password: str = field(repr=False)
    projects: tuple[str, ...]
    admin_token: str = field(repr=False)
    log_path: Path
    pid: int
    app_cred_id: str | None = None
    app_cred_secret: str | None = field(default=None, repr=False)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def project_name(self) -> str:
        """The first project (the only one, unless ``projects=N``)."""
        return self.projects[0]

    @property
    def auth_url(self) -> str:
        return f"{self.url}/v3"

    def __getitem__(self, key: str) -> Any:  # like the oracles' OracleInfo: nova["image_id"]
        return self.data[key]

    def connect_kwargs(self, project: str | None = None) -> dict[str, Any]:
        """Keyword arguments for ``openstack.connect`` (password auth, scoped to
        ``project``, default the first)."""
        return {"auth_url": self.auth_url, "username": self.username,
                "password": self.password, "project_name": project or self.project_name,
                "user_domain_name": "Default", "project_domain_name": "Default",
                "region_name": "RegionOne"}

    def space_options(self, password_file: Path, project: str | None = None) -> str:
        """The lines of a cloudvac ``[space]`` on this cloud's ``project`` (default the
        first; password auth, written to ``password_file`` with mode 0600), as the
        oracles' ``space_options``."""
        password_file.write_text(self.password)
        password_file.chmod(0o600)
        return (f"api = openstack\nauth_url = {self.auth_url}\nusername = {self.username}\n"
                f"password_file = {password_file}\n"
                f"project_name = {project or self.project_name}\n"
                "region_name = RegionOne\nnetworks = none\nflavor_names = m1.small\n")

    def _admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = httpx.request(method, self.url + path, json=body, timeout=60.0,
                                 headers={"Authorization": f"Bearer {self.admin_token}"})
        response.raise_for_status()
        return response.json()

    def faults(self, **plan: Any) -> dict[str, Any]:
        """Replace the fault plan (``simfaults.FaultPlan`` fields; none: no faults)."""
        return dict(self._admin("POST", "/_sim/faults", plan)["faults"])

    def state(self, project: str | None = None) -> dict[str, Any]:
        """Servers (live and soft-deleted; of ``project`` only, if given) with what their
        VMs sent, creates per name, calls per kind, injected faults, usage."""
        return dict(self._admin("GET", "/_sim/state" + (f"?project={project}" if project
                                                         else "")))


def _secret_file(directory: Path, name: str, value: str) -> Path:
    path = directory / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def _wait_ready(process: subprocess.Popen[str], deadline: float) -> str:
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if line is None:
            break
        if line.startswith(READY):
            return line[len(READY):].strip()
    raise RuntimeError("cloudvac sim-cloud did not say it was listening "
                       f"(exit code {process.poll()})")


@dataclass(frozen=True)
class SimCloudOptions:
    """How to start ``cloudvac sim-cloud`` (the command's options; ``extra``: more
    arguments as given)."""

    flavors: Sequence[str] = CONTRACT_FLAVORS
    unschedulable: Sequence[str] = ("cv.unschedulable",)
    quota_processors: int | None = None
    quota_instances: int | None = None
    page_limit: int | None = None
    boot_seconds: float = 1.0
    job_seconds: float = 3600.0
    seed: int | None = 1
    password: str = field(default="sim-password-9f3c", repr=False)
    admin_token: str = field(default="sim-admin-5e1d", repr=False)
    app_cred: bool = False
    projects: int | None = None
    vm_door: Sequence[str] = ()
    heartbeat_seconds: float | None = None
    extra: Sequence[str] = ()
    start_seconds: float = START_SECONDS

    def names(self) -> tuple[str, ...]:
        return tuple(f"project-{i:04d}" for i in range(1, self.projects + 1)) \
            if self.projects else ("sim-project",)

    def arguments(self, directory: Path, tag: str) -> list[str]:
        args = ["--listen", "127.0.0.1:0",
                "--password-file", str(_secret_file(directory, f"sim-{tag}-password",
                                                    self.password)),
                "--admin-token-file", str(_secret_file(directory, f"sim-{tag}-admin",
                                                       self.admin_token)),
                "--flavors", ",".join(self.flavors),
                "--unschedulable-flavors", ",".join(self.unschedulable),
                "--boot-seconds", str(self.boot_seconds), "--job-seconds",
                str(self.job_seconds), "--log-level", "DEBUG"]
        for option, value in (("--quota-processors", self.quota_processors),
                              ("--quota-instances", self.quota_instances),
                              ("--page-limit", self.page_limit), ("--seed", self.seed),
                              ("--projects", self.projects),
                              ("--heartbeat-seconds", self.heartbeat_seconds),
                              ("--vm-door", ",".join(self.vm_door) or None)):
            if value is not None:
                args += [option, str(value)]
        return [*args, *self.extra]


@contextmanager
def sim_cloud(directory: Path, options: SimCloudOptions | None = None,
              **overrides: Any) -> Iterator[SimCloudServer]:
    """Run ``cloudvac sim-cloud`` until the block ends (see the module docstring);
    ``overrides``: fields of ``SimCloudOptions``."""
    opts = dataclasses.replace(options or SimCloudOptions(), **overrides)
    directory.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha256(str(directory).encode()).hexdigest()[:8]
    args = [sys.executable, "-m", "cloudvac", "sim-cloud", *opts.arguments(directory, tag)]
    cred_id = cred_secret = None
    if opts.app_cred:
        cred_id, cred_secret = f"appcred-{tag}", f"appcred-secret-{tag}-7b2a"
        args += ["--app-cred-id", cred_id, "--app-cred-secret-file",
                 str(_secret_file(directory, f"sim-{tag}-appcred", cred_secret))]
    log_path = directory / f"sim-cloud-{tag}.log"
    with log_path.open("a") as log:
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    info: dict[str, Any] = {"image_id": image_id("cloudvac-sim-image")}
    try:
        url = _wait_ready(process, time.monotonic() + opts.start_seconds)
        yield SimCloudServer(url, "cloudvac", opts.password, opts.names(), opts.admin_token,
                             log_path, process.pid, cred_id, cred_secret, info)
    finally:
        process.terminate()
        try:
            exit_code = process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            exit_code = process.wait(STOP_SECONDS)
        info["exit_code"] = exit_code  # 0: SIGTERM stopped it cleanly
