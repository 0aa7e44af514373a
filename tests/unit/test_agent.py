"""The in-VM agent, run as a real process against a stdlib fake of the joboutputs contract: from
a directory holding only its shipped files (``AGENT_FILES``), outside this package."""

from __future__ import annotations

import glob
import http.server
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloudvac.context import agent as agent_module
from cloudvac.context.userdata import AGENT_FILES

AGENT = Path(agent_module.__file__)
TOKEN = "tok-" + secrets.token_hex(16)
OTHER_TOKEN = "tok-" + secrets.token_hex(16)
SPACE, NAME = "sp.example", "vm-1"
FILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SHUTDOWN_RE = re.compile(rb"[1-7][0-9]{2} [^\r\n]+\n?")
FAILED = "700 Failed, probably JobAgent or Application problem"


@dataclass
class Put:
    at: float
    file: str
    headers: dict[str, str]
    body: bytes
    status: int


class FakeJoboutputs:
    """``PUT /machines/{space}/{name}/joboutputs/{file}`` as the server contract says.

    Two machines are known, each with its own bearer token. ``inject[file]`` holds statuses to
    answer instead, one per request, to play transient (503) or permanent (400) failures.
    """

    def __init__(self, *, max_file_bytes: int = 2 << 20, max_total_bytes: int = 8 << 20) -> None:
        self.machines = {TOKEN: (SPACE, NAME), OTHER_TOKEN: (SPACE, "vm-2")}
        self.heartbeat_file = "heartbeat"
        self.max_file_bytes, self.max_total_bytes = max_file_bytes, max_total_bytes
        self.files: dict[tuple[str, str], dict[str, bytes]] = {}
        self.puts: list[Put] = []
        self.inject: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                file = self.path.rsplit("/", 1)[-1]
                status, detail = fake.handle(self.path, self.headers.get("Authorization"), body)
                with fake.lock:
                    fake.puts.append(Put(time.time(), file, dict(self.headers), body, status))
                self.send_response(status)
                if status == 204:
                    self.end_headers()
                    return
                payload = json.dumps({"detail": detail}).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler,
                                                     bind_and_activate=False)
        self.httpd.daemon_threads = True
        self.httpd.server_bind()  # bound but not listening: connections are refused
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread: threading.Thread | None = None

    def joboutputs(self, name: str = NAME) -> str:
        return f"{self.url}/machines/{SPACE}/{name}/joboutputs"

    def handle(self, path: str, authorization: str | None, body: bytes) -> tuple[int, str]:
        parts = path.split("/")
        if len(parts) != 6 or parts[1] != "machines" or parts[4] != "joboutputs":
            return 404, "not found"
        space, name, file = parts[2], parts[3], parts[5]
        if self.inject.get(file):
            return self.inject[file].pop(0), "injected"
        scheme, _, token = (authorization or "").partition(" ")
        if scheme != "Bearer" or token not in self.machines:
            return 401, "missing or bad bearer token"
        if (space, name) not in self.machines.values():
            return 404, "no such machine"
        if self.machines[token] != (space, name):
            return 403, "token is for another machine"
        if not (file in (self.heartbeat_file, "shutdown_message") or FILE_RE.fullmatch(file)):
            return 400, "bad file name"
        if file == "shutdown_message" and not SHUTDOWN_RE.fullmatch(body):
            return 400, "malformed shutdown_message"
        with self.lock:
            stored = self.files.setdefault((space, name), {})
            total = sum(len(v) for k, v in stored.items() if k != file) + len(body)
            if len(body) > self.max_file_bytes or total > self.max_total_bytes:
                return 413, "too large"
            stored[file] = body
        return 204, ""

    def start(self) -> None:
        self.httpd.server_activate()
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread is not None:
            self.httpd.shutdown()
        self.httpd.server_close()

    def of(self, file: str) -> list[Put]:
        with self.lock:
            return [p for p in self.puts if p.file == file]


@pytest.fixture
def server() -> Iterator[FakeJoboutputs]:
    fake = FakeJoboutputs()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def down_server() -> Iterator[FakeJoboutputs]:
    fake = FakeJoboutputs()
    yield fake
    fake.stop()


def start_agent(tmp_path: Path, url: str, pilot: str | None, *, python: str = sys.executable,
                env: dict[str, str] | None = None, **config: object) -> subprocess.Popen[str]:
    settings: dict[str, object] = {
        "joboutputs_url": url, "token": TOKEN, "heartbeat_period_seconds": 0.2,
        "poweroff_command": [sys.executable, "-c",
                             "import sys, time; open(sys.argv[1], 'w').write(repr(time.time()))",
                             str(tmp_path / "poweroff")],
        "final_upload_seconds": 8, "request_timeout_seconds": 2,
    }
    settings.update(config)
    (tmp_path / "agent.json").write_text(json.dumps(settings))
    libexec = tmp_path / "libexec"  # as on a VM: the shipped files alone, stdlib only (-S)
    libexec.mkdir(exist_ok=True)
    for file in AGENT_FILES:
        shutil.copy(AGENT.with_name(file), libexec / file)
    command = [python, "-S", str(libexec / "agent.py"), "--config", str(tmp_path / "agent.json")]
    if pilot is not None:
        command += ["--", sys.executable, "-c", pilot, "pilot-arg"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, cwd=tmp_path)


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    assert TOKEN not in err
    return err


def powered_off_at(tmp_path: Path) -> float:
    return float((tmp_path / "poweroff").read_text())


def wait_for(predicate: Callable[[], object], timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def _python36() -> str | None:
    """A working 3.6 interpreter, if this machine has one (a pyenv shim alone does not count)."""
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.6*/bin/python3.6")))
    for candidate in [*candidates, shutil.which("python3.6")]:
        if candidate and subprocess.run(
                [candidate, "-c", "import sys; assert sys.version_info[:2] == (3, 6)"],
                capture_output=True).returncode == 0:
            return candidate
    return None


PYTHON36 = _python36()


def test_success_heartbeats_then_message_then_logs_then_poweroff(
        tmp_path: Path, server: FakeJoboutputs) -> None:
    (tmp_path / "pilot.log").write_bytes(b"pilot says hello\n")
    proc = start_agent(tmp_path, server.joboutputs(), "import time; time.sleep(1)",
                       logs=[str(tmp_path / "pilot.log"), str(tmp_path / "missing.log")])
    finish(proc)
    message, = server.of("shutdown_message")
    log, = server.of("pilot.log")
    beats = [p for p in server.of("heartbeat") if p.at < message.at]
    assert len(beats) >= 3
    for put in [*beats, message, log]:
        assert put.status == 204
        assert put.headers["Authorization"] == f"Bearer {TOKEN}"
        assert put.headers["Content-Type"] == "application/octet-stream"
    assert all(re.fullmatch(rb"\d+ \d+\.\d\d\n", p.body) for p in beats)
    assert abs(int(beats[0].body.split()[0]) - time.time()) < 30
    assert message.body == b"200 Success"
    assert log.body == b"pilot says hello\n"
    assert message.at <= log.at <= powered_off_at(tmp_path)
    assert server.of("missing.log") == []


@pytest.mark.parametrize("python", [
    sys.executable,
    pytest.param(PYTHON36, marks=pytest.mark.skipif(PYTHON36 is None, reason="no Python 3.6"))])
def test_failed_pilot_reports_700_with_exit_code(tmp_path: Path, server: FakeJoboutputs,
                                                 python: str | None) -> None:
    (tmp_path / "job.log").write_text("x" * 50)
    finish(start_agent(tmp_path, server.joboutputs(), "import sys; sys.exit(3)",
                       python=python or "", logs=[str(tmp_path / "job.log")], max_log_bytes=10))
    assert server.of("heartbeat")[0].status == 204
    assert server.of("shutdown_message")[0].body.decode() == f"{FAILED} (exit 3)"
    assert server.of("job.log")[0].body == b"x" * 10
    assert (tmp_path / "poweroff").exists()


@pytest.mark.parametrize(("written", "expected"), [
    ("300 Nothing to do\nmore lines\n", "300 Nothing to do"),
    ("garbage\n", f"{FAILED} (exit 1)"),
])
def test_pilot_written_shutdown_message(tmp_path: Path, server: FakeJoboutputs,
                                        written: str, expected: str) -> None:
    path = tmp_path / "shutdown_message"
    pilot = f"import sys; open({str(path)!r}, 'w').write({written!r}); sys.exit(1)"
    finish(start_agent(tmp_path, server.joboutputs(), pilot, shutdown_message_path=str(path)))
    assert [p.body.decode() for p in server.of("shutdown_message")] == [expected]


def test_pilot_message_refused_by_server_falls_back_to_agents_own(
        tmp_path: Path, server: FakeJoboutputs) -> None:
    path = tmp_path / "msg"
    path.write_text("300 Nothing to do")
    server.inject["shutdown_message"] = [400]
    finish(start_agent(tmp_path, server.joboutputs(), "pass", shutdown_message_path=str(path)))
    assert [(p.status, p.body) for p in server.of("shutdown_message")] == [
        (400, b"300 Nothing to do"), (204, b"200 Success")]


@pytest.mark.parametrize("ignore_term", [False, True])
def test_sigterm_stops_pilot_and_reports_100(tmp_path: Path, server: FakeJoboutputs,
                                             ignore_term: bool) -> None:
    pid_file = tmp_path / "pilot.pid"
    pilot = ("import os, signal, time\n"
             + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else "")
             + f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)\n")
    proc = start_agent(tmp_path, server.joboutputs(), pilot, terminate_grace_seconds=0.5)
    wait_for(lambda: pid_file.exists() and pid_file.read_text())
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    err = finish(proc)
    assert time.monotonic() - started < 5
    assert [p.body for p in server.of("shutdown_message")] == [b"100 Shutdown as requested"]
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)
    assert ("SIGKILL" in err) is ignore_term


def test_without_pilot_only_heartbeats_until_sigterm(tmp_path: Path,
                                                     server: FakeJoboutputs) -> None:
    proc = start_agent(tmp_path, server.joboutputs(), None)
    wait_for(lambda: len(server.of("heartbeat")) >= 3)
    assert server.of("shutdown_message") == []
    proc.send_signal(signal.SIGINT)
    finish(proc)
    assert [p.body for p in server.of("shutdown_message")] == [b"100 Shutdown as requested"]
    assert (tmp_path / "poweroff").exists()


def test_server_down_at_first_then_uploads_succeed(tmp_path: Path,
                                                   down_server: FakeJoboutputs) -> None:
    (tmp_path / "job.log").write_text("x")
    proc = start_agent(tmp_path, down_server.joboutputs(), "pass",
                       logs=[str(tmp_path / "job.log")])
    time.sleep(1.5)
    assert down_server.puts == []
    down_server.start()
    err = finish(proc)
    assert "ConnectionRefusedError" in err
    assert err.count("heartbeat failing") < 3  # once per change of state, not once per try
    assert [p.status for p in down_server.of("shutdown_message")] == [204]
    assert [p.status for p in down_server.of("job.log")] == [204]
    assert (tmp_path / "poweroff").exists()


def test_big_log_uploads_only_its_tail(tmp_path: Path, server: FakeJoboutputs) -> None:
    data = bytes(range(256)) * 20
    (tmp_path / "big.log").write_bytes(data)
    finish(start_agent(tmp_path, server.joboutputs(), "pass", logs=[str(tmp_path / "big.log")],
                       max_log_bytes=1000))
    assert server.of("big.log")[0].body == data[-1000:]


def test_token_reaches_neither_pilot_nor_stderr_nor_uploaded_logs(
        tmp_path: Path, server: FakeJoboutputs) -> None:
    dump, leaky = tmp_path / "dump.json", tmp_path / "leaky.log"
    leaky.write_text(f"t={TOKEN}\n")  # say the pilot logged it
    pilot = (f"import json, os, sys; json.dump({{'env': dict(os.environ), 'argv': sys.argv}}, "
             f"open({str(dump)!r}, 'w'))")
    proc = start_agent(tmp_path, server.joboutputs(), pilot, logs=[str(leaky)],
                       env={"CLOUDVAC_LEAK": TOKEN, "HARMLESS": "1"})
    err = finish(proc)
    seen = json.loads(dump.read_text())
    assert TOKEN not in json.dumps(seen)
    assert "CLOUDVAC_LEAK" not in seen["env"] and seen["env"]["HARMLESS"] == "1"
    assert seen["argv"][1:] == ["pilot-arg"]
    assert "CLOUDVAC_LEAK" in err and TOKEN not in err
    assert server.of("leaky.log")[0].body == b"t=***\n"


@pytest.mark.parametrize("message_kind", ["symlink", "fifo"])
def test_the_pilots_files_are_read_only_if_regular_never_through_a_link(
        tmp_path: Path, server: FakeJoboutputs, message_kind: str) -> None:
    """The pilot's user owns them, the agent is root: a link it planted would have the agent
    read (and upload) what the pilot cannot, and opening a FIFO would wait for a writer."""
    secret = tmp_path / "secret"
    secret.write_text("300 root's secret\n")
    message, link, fifo, folder = (tmp_path / n for n in ("msg", "link.log", "fifo.log", "dir"))
    if message_kind == "symlink":
        message.symlink_to(secret)
    else:
        os.mkfifo(message)
    link.symlink_to(secret)
    os.mkfifo(fifo)
    folder.mkdir()
    err = finish(start_agent(tmp_path, server.joboutputs(), "pass", logs=[str(link), str(fifo),
                             str(folder)], shutdown_message_path=str(message)))
    assert [p.body for p in server.of("shutdown_message")] == [b"200 Success"]
    assert {p.file for p in server.puts} == {"heartbeat", "shutdown_message", "cpu_totals"}
    why = "a symbolic link, not followed" if message_kind == "symlink" else "not a regular file"
    assert f"ignoring {message}: {why}\n" in err
    assert f"skipping log {link}: a symbolic link, not followed\n" in err
    assert f"skipping log {fifo}: not a regular file\n" in err
    assert f"skipping log {folder}: not a regular file\n" in err


def test_bad_config_exits_2_without_running_anything(tmp_path: Path) -> None:
    proc = start_agent(tmp_path, "ftp://nowhere", "open('ran', 'w')")
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 2 and "joboutputs_url" in err and TOKEN not in err
    assert not (tmp_path / "ran").exists() and not (tmp_path / "poweroff").exists()


# The VM ending itself: short limits, generous bounds on when (CI is a loaded machine).
LIMIT = 1.5


def sleeping_pilot(pid_file: Path) -> str:
    return f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"


def assert_pilot_stopped(pid_file: Path, err: str) -> None:
    assert "sent SIGTERM to pilot" in err
    if pid_file.exists() and pid_file.read_text():  # it may not have got that far
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid_file.read_text()), 0)


@pytest.mark.parametrize("how", ["refused", "stops", "404", "silent"])
def test_manager_gone_ends_the_vm_after_unreachable_poweroff_seconds(tmp_path: Path,
                                                                     how: str) -> None:
    fake, silent = FakeJoboutputs(), socket.create_server(("127.0.0.1", 0))  # silent: no answer
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/j" if how == "silent" else fake.joboutputs()
    started, pid_file = time.time(), tmp_path / "pilot.pid"
    try:
        if how in ("stops", "404"):
            fake.start()
        proc = start_agent(tmp_path, url, sleeping_pilot(pid_file), final_upload_seconds=1,
                           request_timeout_seconds=0.5, unreachable_poweroff_seconds=LIMIT)
        if how in ("stops", "404"):
            wait_for(lambda: len(fake.of("heartbeat")) >= 2, timeout=30)
            if how == "stops":
                fake.stop()  # connections refused from now on
            else:  # the manager forgot this machine (deleted, pruned): 404 for its own path
                fake.machines[TOKEN] = (SPACE, "vm-gone")
        err = finish(proc, timeout=60)
    finally:
        fake.stop()
        silent.close()
    last = max([p.at for p in fake.of("heartbeat") if p.status == 204], default=started)
    assert last + LIMIT <= powered_off_at(tmp_path) < last + LIMIT + 30
    assert "shutdown_message: 700 Manager unreachable" in err
    assert [(p.status, p.body) for p in fake.of("shutdown_message")] == (
        [(404, b"700 Manager unreachable")] if how == "404" else [])
    assert_pilot_stopped(pid_file, err)


@pytest.mark.parametrize("offset", [2.0, -60.0])
def test_deadline_ends_the_vm_though_the_manager_answers(tmp_path: Path, server: FakeJoboutputs,
                                                         offset: float) -> None:
    pid_file, message = tmp_path / "pilot.pid", tmp_path / "msg"
    message.write_text("300 Nothing to do")  # the pilot's own word is not why the VM stopped
    started = time.time()
    deadline = started + offset
    err = finish(start_agent(tmp_path, server.joboutputs(), sleeping_pilot(pid_file),
                             deadline=deadline, shutdown_message_path=str(message),
                             unreachable_poweroff_seconds=None), timeout=60)
    assert [(p.status, p.body) for p in server.of("shutdown_message")] == [
        (204, b"700 Exceeded max_wallclock_seconds")]
    assert deadline <= powered_off_at(tmp_path) < max(deadline, started) + 30
    if offset < 0:  # already past at boot: the pilot never starts
        assert not pid_file.exists() and "starting pilot" not in err
    else:
        assert_pilot_stopped(pid_file, err)


def test_a_manager_that_answers_keeps_the_vm(tmp_path: Path, server: FakeJoboutputs) -> None:
    done = tmp_path / "done"
    pilot = f"import os, time\nwhile not os.path.exists({str(done)!r}): time.sleep(0.05)\n"
    proc = start_agent(tmp_path, server.joboutputs(), pilot, unreachable_poweroff_seconds=2.5,
                       deadline=time.time() + 3600)
    # Heartbeats answered for twice the limit, then the pilot is done.
    wait_for(lambda: (beats := server.of("heartbeat")) and beats[-1].at - beats[0].at > 5,
             timeout=60)
    done.touch()
    err = finish(proc)
    assert [p.body for p in server.of("shutdown_message")] == [b"200 Success"]
    assert "no answer from the manager" not in err
