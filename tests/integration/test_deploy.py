"""``deploy/install.sh`` into a temporary root, and what it installed checked by the tools
that will read it on a site's host: ``systemd-analyze verify`` and ``security`` on the
units against the installed paths, ``systemd-sysusers`` and ``systemd-tmpfiles`` on their
entries, logrotate on a live log; then the installed daemon run under the unit's own
confinement (``confine.py``): read-only system, private /tmp and /dev, no capability, the
unit's syscall filter, no writable-executable memory (helpers: ``deploytools.py``).

Offline: install.sh builds the wheel from a copy of the source tree and installs it with its
dependencies from the local wheelhouse ``make test`` fills (``offline.py``), into a
virtualenv made from Debian's python3, as it asks of a site.  The tools are Debian packages
that ``scripts/system-deps.sh`` installs: a missing one fails, naming it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.deploytools import (
    SYSTEM_PYTHON,
    UNIT_DIR,
    UNITS,
    Image,
    build_image,
    run,
    tool,
    unit,
)
from tests.integration.offline import offline_env, source_copy, wheelhouse

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[2]
DEADLINE = 180.0  # a loaded 2-core machine: installs and starts are slow
SIM = """\
[settings]
web_listen = 127.0.0.1:0
operator_listen = 127.0.0.1:0
cycle_seconds = 2

[space sim.example]
api = sim
processors_limit = 4
creation_burst_processors = 4
flavor_names = m1.small
sim_boot_seconds = 0.5

[machinetype sim.example belle]
target_share = 1
heartbeat_file = heartbeat
heartbeat_seconds = 60
sim_job_seconds = 3
sim_heartbeat_period_seconds = 1
"""


@dataclass(frozen=True)
class Installed:
    script: Path
    """install.sh in a copy of the source tree (its build writes nothing into the tree)."""
    root: Path
    args: tuple[str, ...]
    output: str

    def install(self, *args: str, env: dict[str, str] | None = None,
                prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        """install.sh ARGS, offline (pip on the wheelhouse only), after ``prefix``."""
        return subprocess.run([*prefix, str(self.script), *args], capture_output=True,
                              text=True, timeout=900,
                              env=offline_env({"PIP_NO_CACHE_DIR": "1", **(env or {})}))


@dataclass(frozen=True)
class RealRoot:
    """install.sh without --destdir, through overlays (``REAL_ROOT``): what it said, and the
    overlays' upper directory (where its writes landed)."""

    done: Future[subprocess.CompletedProcess[str]]
    upper: Path


@dataclass(frozen=True)
class Installs:
    staged: Installed
    real: RealRoot


def _into_the_real_root(script: Path, args: tuple[str, ...], base: Path
                        ) -> subprocess.CompletedProcess[str]:
    """Without --destdir, as an admin runs it, the host's /etc, /opt, /usr/local and /var
    seen through overlays whose upper layers are directories under ``base``."""
    return Installed(script, base, args, "").install(
        *args, env={"UPPER": str(base / "upper"), "WORK": str(base / "work")},
        prefix=(tool("unshare"), "--mount", "--propagation", "private", "sh", "-c", REAL_ROOT,
                "sh"))


@pytest.fixture(scope="module")
def installs(tmp_path_factory: pytest.TempPathFactory) -> Installs:
    """Both installs of install.sh at once (each a minute of pip on a loaded machine, and
    independent: their own copy of the source tree, their own root): --log-file from a
    source tree into a temporary root, offline, plus systemd's own units and /usr/bin/kill
    in that root, as on any host; and the same into the real root (checked by its own test,
    which fails alone if that install does)."""
    assert Path(SYSTEM_PYTHON).exists(), "Debian's python3 is missing (make system-deps)"
    base = tmp_path_factory.mktemp("deploy")
    sources = []
    for name in ("src", "src-real-root"):
        src = source_copy(base / name)
        for tree in ("deploy", "docs"):
            shutil.copytree(REPO / tree, src / tree)
        sources.append(src / "deploy/install.sh")
    root = base / "root"
    args = ("--destdir", str(root), "--python", SYSTEM_PYTHON, "--wheelhouse",
            str(wheelhouse()), "--log-file")
    with ThreadPoolExecutor(1) as pool:
        real = RealRoot(pool.submit(_into_the_real_root, sources[1], args[2:],
                                    base / "real-root"), base / "real-root" / "upper")
        done = Installed(sources[0], root, args, "").install(*args)
        wait([real.done])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "building the cloudvac wheel from" in done.stderr
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system",
                    symlinks=True)
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    shutil.copy("/usr/bin/kill", root / "usr/bin/kill")
    (root / "bin").symlink_to("usr/bin")
    return Installs(Installed(sources[0], root, args, done.stdout + done.stderr), real)


@pytest.fixture(scope="module")
def installed(installs: Installs) -> Installed:
    """The install into a temporary root."""
    return installs.staged


def test_install_puts_cloudvac_where_the_units_and_docs_say(installed: Installed) -> None:
    root = installed.root
    venv = root / "opt/cloudvac"
    assert (venv / "bin/cloudvac").read_text().startswith("#!/opt/cloudvac/bin/python")
    assert os.readlink(root / "usr/local/bin/cloudvac") == "/opt/cloudvac/bin/cloudvac"
    version = run(str(venv / "bin/python"), "-I", "-m", "cloudvac", "--version")
    assert version.returncode == 0 and re.fullmatch(r"\d+\.\d+\.\d+\S*\n", version.stdout)
    module = run(str(venv / "bin/python"), "-I", "-c", "import cloudvac; print(cloudvac.__file__)")
    assert module.stdout.startswith(f"{venv}/lib/"), module.stdout  # the installed one
    for name in UNITS:
        settings = unit(installed.root, name)
        start = shlex.split(settings["ExecStart"][0])
        assert start[0] == "/opt/cloudvac/bin/cloudvac" and (root / start[0][1:]).exists()
        assert "ExecStartPre" not in settings  # no start that needs every space valid
        assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
        for doc in settings["Documentation"][0].split():
            page = re.fullmatch(r"man:([\w.]+)\((\d)\)", doc)
            where = root / (f"usr/local/share/man/man{page[2]}/{page[1]}.{page[2]}"
                            if page else doc.removeprefix("file:///"))
            assert where.is_file(), doc
    for name in ("cloudvac.1", "cloudvac.conf.5"):
        if (REPO / "docs/man" / name).exists():
            assert (root / f"usr/local/share/man/man{name[-1]}" / name).read_bytes() == \
                (REPO / "docs/man" / name).read_bytes()
    assert "--log-file /var/log/cloudvac/cloudvac.log" in \
        (root / "etc/default/cloudvac").read_text()
    assert (root / "etc/cloudvac.d").stat().st_mode & 0o777 == 0o750


def test_units_verify_against_the_installed_paths(installed: Installed) -> None:
    """verify exits 0 on unknown keys (it only warns): any output at all fails."""
    paths = [f"{UNIT_DIR}/{name}" for name in UNITS]
    result = run(tool("systemd-analyze"), "verify", f"--root={installed.root}", *paths,
                 env={"MANPATH": str(installed.root / "usr/local/share/man")})
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("name", UNITS)
def test_security_rating_is_ok(installed: Installed, name: str) -> None:
    result = run(tool("systemd-analyze"), "security", "--offline=true",
                 f"--root={installed.root}", f"{UNIT_DIR}/{name}")
    overall = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", result.stdout)
    assert overall, result.stdout + result.stderr
    assert overall[2] in ("PERFECT", "SAFE", "OK", "MEDIUM"), result.stdout
    assert float(overall[1]) < 2.0, result.stdout  # 1.1 OK when written


def test_sysusers_and_tmpfiles_entries_apply(installed: Installed) -> None:
    """By file name, as install.sh runs them: found in the directories the tools search."""
    root = installed.root
    users = run(tool("systemd-sysusers"), f"--root={root}", "cloudvac.conf")
    assert users.returncode == 0, users.stderr
    entry = next(line.split(":") for line in (root / "etc/passwd").read_text().splitlines()
                 if line.startswith("cloudvac:"))
    assert entry[5:] == ["/var/lib/cloudvac", "/usr/sbin/nologin"] and int(entry[2]) < 1000
    assert (root / "etc/group").read_text().startswith(f"cloudvac:x:{entry[3]}:")
    dirs = run(tool("systemd-tmpfiles"), f"--root={root}", "--create", "cloudvac.conf")
    assert dirs.returncode == 0, dirs.stderr
    for path, owner in (("etc/cloudvac.d", 0), ("var/lib/cloudvac", int(entry[2])),
                        ("var/log/cloudvac", int(entry[2]))):
        info = (root / path).stat()
        assert (info.st_mode & 0o777, info.st_uid, info.st_gid) == \
            (0o750, owner, int(entry[3])), path


@pytest.fixture(scope="module")
def image(installed: Installed, tmp_path_factory: pytest.TempPathFactory) -> Image:
    """The installed root made a host, with a simulated cloud configured."""
    made = build_image(installed.root, tmp_path_factory.mktemp("image") / "root")
    (made.path / "etc/cloudvac.d/10-sim.conf").write_text(SIM)
    return made


def wait_for(what: Callable[[], bool], message: Callable[[], str]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not what():
        assert time.monotonic() < deadline, message()
        time.sleep(0.2)


@pytest.fixture
def daemon(image: Image, installed: Installed) -> Iterator[subprocess.Popen[str]]:
    settings = unit(installed.root, "cloudvac.service")
    proc = image.start(image.spec([], settings))
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def stored_heartbeats(database: Path) -> int:
    """Heartbeat files the store holds (uploads live in its joboutputs table)."""
    import sqlite3

    if not database.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            return int(db.execute("SELECT count(*) FROM joboutputs WHERE file = 'heartbeat'")
                       .fetchone()[0])
    except sqlite3.Error:  # not created or migrated yet
        return 0


def test_the_confined_daemon_writes_its_state_and_log_and_nothing_else(
        image: Image, daemon: subprocess.Popen[str]) -> None:
    state, logs = image.path / "var/lib/cloudvac", image.path / "var/log/cloudvac"
    log = logs / "cloudvac.log"

    def text() -> str:
        return "".join(f.read_text() for f in sorted(logs.glob("cloudvac.log*"), reverse=True))

    def running() -> str:
        out = "" if daemon.poll() is None else daemon.stdout.read() if daemon.stdout else ""
        assert not out, f"the daemon exited:\n{out}\n{text()}"
        return text()
    wait_for(lambda: stored_heartbeats(state / "cloudvac.db") > 0,  # a VM's upload
             lambda: f"no heartbeat stored:\n{running()}")
    operator = re.search(r"operator door on (http://127\.0\.0\.1:\d+)", text())
    assert operator
    with urllib.request.urlopen(f"{operator[1]}/healthz", timeout=60) as answer:
        assert answer.status == 200
    for name in ("cloudvac.db", "cloudvac.db.lock", "server.secret"):
        info = (state / name).stat()
        assert (info.st_uid, info.st_mode & 0o077) == (image.user[1], 0), name
    assert log.stat().st_uid == image.user[1]
    assert re.search(r"open-file limit \d+ \(was 1024,", text())  # raised under the filter

    daemon.send_signal(signal.SIGHUP)  # systemctl reload
    wait_for(lambda: "SIGHUP: configuration re-read" in text(), running)
    rotate = image.start(image.spec(["/usr/sbin/logrotate", "-f", "-s",
                                     "/var/lib/logrotate.status",
                                     "/etc/logrotate.d/cloudvac"]))
    assert rotate.wait(timeout=DEADLINE) == 0, rotate.stdout and rotate.stdout.read()
    assert (logs / "cloudvac.log.1").exists() and log.stat().st_size == 0
    assert (log.stat().st_uid, log.stat().st_mode & 0o777) == (image.user[1], 0o640)
    daemon.send_signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP: configuration re-read" in log.read_text(), running)
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=DEADLINE) == 0
    for refusal in ("Traceback", "Read-only file system", "Permission denied",
                    "Operation not permitted", "ERROR"):
        assert refusal not in text(), refusal


PROBE = """\
import json, mmap, os, socket
def attempt(what):
    try:
        what()
        return "ok"
    except OSError as exc:
        return exc.errno
print(json.dumps({
    "uid": os.getuid(), "capabilities": open("/proc/self/status").read().split("CapBnd:")[1]
    .split()[0],
    "write_execute": attempt(lambda: mmap.mmap(-1, 4096, prot=7)),
    "etc": attempt(lambda: open("/etc/cloudvac.d/probe", "w")),
    "opt": attempt(lambda: open("/opt/cloudvac/probe", "w")),
    "home": attempt(lambda: os.listdir("/root")),
    "tmp": attempt(lambda: open("/tmp/probe", "w")),
    "state": attempt(lambda: open("/var/lib/cloudvac/probe", "w")),
    "netlink": attempt(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)),
    "inet6": attempt(lambda: socket.socket(socket.AF_INET6)),
    "nice": attempt(lambda: os.setpriority(os.PRIO_PROCESS, 0, 5)),
}))
"""


def test_the_confinement_is_what_the_unit_says(image: Image, installed: Installed) -> None:
    """The harness above is no placebo: under it, what the unit forbids fails."""
    spec = image.spec(["/opt/cloudvac/bin/python", "-c", PROBE],
                      unit(installed.root, "cloudvac.service"))
    probe = image.start(spec)
    out = probe.stdout.read() if probe.stdout else ""
    assert probe.wait(timeout=DEADLINE) == 0, out
    (image.path / "var/lib/cloudvac/probe").unlink()
    assert json.loads(out) == {
        "uid": image.user[1], "capabilities": "0000000000000000",
        "write_execute": errno.EACCES,  # MemoryDenyWriteExecute=yes
        "etc": errno.EROFS, "opt": errno.EROFS,  # ProtectSystem=strict
        "home": errno.EACCES,  # ProtectHome=yes
        "tmp": "ok", "state": "ok",  # PrivateTmp=yes, StateDirectory=cloudvac
        "netlink": errno.EPERM, "inet6": "ok",  # RestrictAddressFamilies=
        "nice": errno.EPERM}  # SystemCallFilter=~@resources


REAL_ROOT = """\
set -eu
for dir in etc opt usr/local var; do  # every write of install.sh lands in UPPER/DIR
    mkdir -p "$UPPER/$dir" "$WORK/$dir"
    mount -t overlay overlay -o "lowerdir=/$dir,upperdir=$UPPER/$dir,workdir=$WORK/$dir" "/$dir"
    [ "$(findmnt -n -o FSTYPE "/$dir")" = overlay ]
done
"$@"
id cloudvac
stat -c '%a %U %G %n' /etc/cloudvac.d /var/lib/cloudvac
/opt/cloudvac/bin/cloudvac --version
cloudvac --help >/dev/null
"""


def test_install_into_the_real_root_creates_the_user_and_directories(
        installs: Installs) -> None:
    """Without --destdir, as an admin runs it (``_into_the_real_root``, run by the fixture
    while the staged install runs)."""
    done = installs.real.done.result()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert re.match(r"uid=\d+\(cloudvac\) gid=\d+\(cloudvac\) groups=\d+\(cloudvac\)$",
                    lines[-4])
    assert lines[-3:-1] == ["750 root cloudvac /etc/cloudvac.d",
                            "750 cloudvac cloudvac /var/lib/cloudvac"]
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", lines[-1])
    assert "next: write /etc/cloudvac.d/*.conf" in done.stderr
    upper = installs.real.upper
    assert (upper / "usr/local/lib/systemd/system/cloudvac.service").read_bytes() == \
        (installs.staged.root / UNIT_DIR.lstrip("/") / "cloudvac.service").read_bytes()


def test_reinstall_is_idempotent_and_keeps_the_admins_files(installed: Installed) -> None:
    root = installed.root
    (root / "etc/default/cloudvac").write_text("CLOUDVAC_OPTIONS=--log-level DEBUG\n")
    units = {n: (root / UNIT_DIR.lstrip("/") / n).read_bytes() for n in UNITS}
    again = installed.install(*installed.args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "kept your /etc/default/cloudvac" in again.stderr
    assert (root / "etc/default/cloudvac").read_text() == \
        "CLOUDVAC_OPTIONS=--log-level DEBUG\n"
    assert units == {n: (root / UNIT_DIR.lstrip("/") / n).read_bytes() for n in UNITS}
    assert run(str(root / "opt/cloudvac/bin/python"), "-I", "-m", "cloudvac", "--version") \
        .returncode == 0
