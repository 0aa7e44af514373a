"""A pilot VM's boot, in a shell harness: the rendered ``el9`` user_data's files are written
and its scripts run in the order cloud-init and systemd run them, against the real web service.

What cannot run here is replaced, and only that:

* every absolute VM path the scripts use (``RELOCATED``) is rewritten under a temporary root, in
  the files, the runcmd and the agent's config alike;
* stubs on ``PATH`` stand in for what needs root or a real VM: ``useradd``, ``getent``,
  ``install``, ``chown``, ``sysctl``, ``cvmfs_config``, ``ip``, ``systemctl`` and ``runuser``.
  Each records its command line; ``runuser`` then runs its command with ``HARNESS_USER`` set
  to the user it was asked for (the real one would switch to it), ``install -d`` makes the
  directory, ``ip`` fails when ``HARNESS_FAIL_IP`` is set;
* "systemd" is the test: after the runcmd asked for ``cloudvac-agent.service``, it runs that
  unit's ``ExecStart=`` line as written.

The pilot is a stub ``dirac-pilot.py`` inside a real ``pilot.tar`` with its checksums, fetched
from a ``file:`` URL; it reads the machine/job features the way DIRAC does
(``urlopen(os.path.join($MACHINEFEATURES, key))``) and records what it saw.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cloudvac.config import Space, load_config_dir
from cloudvac.context.userdata import LIBEXEC, PILOT_USER, ContextRenderer
from cloudvac.model.states import ShutdownMessage
from tests.integration.webserver import SPACE, Running, web_server
from tests.unit.userdata_tools import Text, cloud_configs, exec_start, file_content, shellify

NAME = "cloudvac-aaaaaa-belle-aaaaaaaaaa"
RELOCATED = ("/etc/cloudvac", "/var/lib/cloudvac", LIBEXEC, "/etc/grid-security",
             "/var/run/cloudvac", "/etc/cvmfs", "/etc/systemd/system")
STUBS = {
    "useradd": "", "chown": "", "sysctl": "", "cvmfs_config": "", "systemctl": "",
    "getent": "exit 2\n",
    "install": 'mkdir -p "${@: -1}"\n',
    "ip": '[ -z "${HARNESS_FAIL_IP:-}" ] || exit 1\n',
    "runuser": '[ "$1" = -u ] && [ "$3" = -- ] || exit 125\n'
               'user=$2; shift 3\nHARNESS_USER=$user exec "$@"\n'}
PILOT = """\
import json, os, sys
from urllib.request import urlopen
def feature(variable, key):
    return urlopen(os.path.join(os.environ[variable], key)).read().decode().strip()
seen = {"user": os.environ.get("HARNESS_USER"), "cwd": os.getcwd(), "argv": sys.argv[1:],
        "MACHINEFEATURES": os.environ["MACHINEFEATURES"],
        "JOBFEATURES": os.environ["JOBFEATURES"],
        "total_cpu": feature("MACHINEFEATURES", "total_cpu"),
        "allocated_cpu": feature("JOBFEATURES", "allocated_cpu"),
        "wall_limit_secs": feature("JOBFEATURES", "wall_limit_secs"),
        "environment": sorted(os.environ)}
json.dump(seen, open(os.environ["HARNESS_RECORD"], "w"))
print('JobAgent will stop with message "Nothing to do for more than 600 seconds", '
      'execution complete.')
"""
CONFIG = """\
[dirac belle2]
format = setups
site_prefix = VCYCLE
setup = Belle-KEK
configuration_servers = dips://dirac.cc.kek.jp:9135/Configuration/Server
pilot_files_url = file:{pilot_files}

[space {space}]
api = sim
site_name = Napoli.it
flavor_names = m1.large

[machinetype {space} belle]
dirac = belle2
vo = belle
user_data = builtin:belle
image_family = el9
target_share = 1
hs06_per_processor = 10
max_wallclock_seconds = 7200
heartbeat_file = heartbeat
heartbeat_seconds = 600
"""


@dataclass(frozen=True)
class Boot:
    root: Path
    calls: list[str]
    seen: dict[str, Any] | None
    agent_exit: int
    agent_stderr: str
    token: str


def relocate(text: str, root: Path) -> str:
    for path in RELOCATED:
        text = text.replace(path, f"{root}{path}")
    return text.replace("/usr/sbin/runuser", f"{root}/stubs/runuser")


def pilot_files(directory: Path) -> Path:
    directory.mkdir()
    buffer = io.BytesIO()
    sums = []
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("dirac-pilot.py", "pilotTools.py", "pilotCommands.py", "proxyTools.py"):
            data = (PILOT if name == "dirac-pilot.py" else "# stub\n").encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            sums.append(f"{hashlib.sha512(data).hexdigest()}  {name}\n")
    (directory / "pilot.tar").write_bytes(buffer.getvalue())
    (directory / "checksums.sha512").write_text("".join(sums))
    return directory


def napoli_belle(tmp_path: Path) -> Space:
    config = tmp_path / "config"
    config.mkdir()
    (config / "10.conf").write_text(CONFIG.format(space=SPACE,
                                                  pilot_files=pilot_files(tmp_path / "pf")))
    loaded = load_config_dir(config)
    assert loaded.issues == [], loaded.issues
    return loaded.spaces[SPACE]


def write_files(document: dict[str, Any], root: Path) -> None:
    for entry in document["write_files"]:
        path = Path(relocate(entry["path"], root))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(relocate(file_content(entry), root))
        path.chmod(int(entry["permissions"], 8))


def stubs(root: Path) -> Path:
    directory = root / "stubs"
    directory.mkdir(parents=True)
    for name, body in STUBS.items():
        script = directory / name
        script.write_text(f'#!/bin/bash\necho "{name} $*" >> "$HARNESS_CALLS"\n{body}')
        script.chmod(0o755)
    return directory


def boot(web: Running, tmp_path: Path, **environment: str) -> Boot:
    """Write the VM's files, run its runcmd, then its agent unit; return what happened."""
    root = tmp_path / "vm"
    renderer = ContextRenderer(web.settings.model_copy(update={"web_url": web.url}),
                               web.signer)
    mt = web.space.machinetypes["belle"]
    text = renderer(web.space, mt, NAME)
    ((_, document),) = cloud_configs(text)
    write_files(document, root)
    env = {"PATH": f"{stubs(root)}:{os.environ['PATH']}", "LANG": "C.UTF-8",
           "HARNESS_CALLS": str(root / "calls"), "HARNESS_RECORD": str(root / "seen.json"),
           **environment}
    runcmd = relocate(shellify(document["runcmd"]), root)
    subprocess.run(["bash", "-c", runcmd], env=env, check=True, timeout=120)
    unit = root / "etc/systemd/system/cloudvac-agent.service"
    assert "systemctl start --no-block cloudvac-agent.service" in calls(root)
    argv = exec_start(Text(str(unit), unit.read_text()))
    agent = subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True,
                           timeout=300, check=False)
    seen = root / "seen.json"
    token = json.loads(base64.b64decode(next(
        e["content"] for e in document["write_files"]
        if e["path"] == "/etc/cloudvac/agent.json")))["token"]
    return Boot(root, calls(root), json.loads(seen.read_text()) if seen.exists() else None,
                agent.returncode, agent.stderr, token)


def calls(root: Path) -> list[str]:
    path = root / "calls"
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Running]:
    with web_server(tmp_path / "state", napoli_belle(tmp_path)) as running:
        running.add_machine(NAME, processors=4)
        yield running


def index(lines: list[str], prefix: str) -> int:
    return next(n for n, line in enumerate(lines) if line.startswith(prefix))


def test_the_pilot_runs_unprivileged_with_its_features(web: Running, tmp_path: Path) -> None:
    vm = boot(web, tmp_path)
    assert vm.agent_exit == 0, vm.agent_stderr
    steps = [index(vm.calls, prefix) for prefix in (
        f"useradd --system --user-group --no-create-home --home-dir {vm.root}/var/lib/cloudvac"
        f"/pilot --shell /sbin/nologin {PILOT_USER}",
        f"chown -R {PILOT_USER}:{PILOT_USER} {vm.root}/etc/cloudvac/pilot",
        "ip route replace prohibit 169.254.169.254/32",
        "systemctl start --no-block cloudvac-agent.service",
        f"runuser -u {PILOT_USER} -- {vm.root}{LIBEXEC}/pilot.sh",
        "systemctl poweroff")]
    assert steps == sorted(steps), vm.calls
    assert not [c for c in vm.calls if c.startswith("chown") and "agent.json" in c]
    assert (vm.root / "var/lib/cloudvac/prepared").read_text() == "ok\n"
    assert vm.seen is not None, vm.agent_stderr
    features = f"file://{vm.root}/var/run/cloudvac"
    assert vm.seen["user"] == PILOT_USER
    assert vm.seen["cwd"] == f"{vm.root}/var/lib/cloudvac/pilot"
    assert (vm.seen["MACHINEFEATURES"], vm.seen["JOBFEATURES"]) == (
        f"{features}/machinefeatures", f"{features}/jobfeatures")
    assert (vm.seen["total_cpu"], vm.seen["allocated_cpu"], vm.seen["wall_limit_secs"]) == (
        "4", "4", "7200")
    assert "-N" in vm.seen["argv"] and "VCYCLE.Napoli.it" in " ".join(vm.seen["argv"])
    assert vm.token not in vm.agent_stderr
    assert _shutdown(web) == ShutdownMessage(300, "Nothing to do")
    assert "Nothing to do" in (web.joboutput(NAME, "pilot.log") or b"").decode()


def test_a_failed_metadata_block_keeps_the_pilot_from_running(web: Running,
                                                              tmp_path: Path) -> None:
    vm = boot(web, tmp_path, HARNESS_FAIL_IP="1")
    assert vm.agent_exit == 0, vm.agent_stderr
    assert vm.seen is None  # dirac-pilot.py never ran
    verdict = "500 VM preparation failed: ip route replace prohibit 169.254.169.254/32"
    assert (vm.root / "var/lib/cloudvac/prepared").read_text() == verdict + "\n"
    assert _shutdown(web) == ShutdownMessage(500, verdict[4:])


def _shutdown(web: Running) -> ShutdownMessage | None:
    record = web.store.machine(SPACE, NAME)
    return None if record is None else record.shutdown
