"""Connection-level protections of the web service (``web/guard.py``, ``web/protocols.py``)
on a real uvicorn on 127.0.0.1: slow headers and slow bodies end in 408 while others are
served, a slow-loris crowd under an open-file limit of 256 locks no VM out and floods no
log (with the connection bound, and with the bound set above the file limit), a client over
its request rate gets 429, and the start-up line names the event loop and HTTP
implementation really in use.

Every wait is a bounded poll: the checks hold on a loaded two-core machine.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cloudvac.auth.vmtokens import TokenSigner, load_or_create_secret
from cloudvac.model.records import MachineRecord
from cloudvac.model.states import MachineState
from cloudvac.store import Store
from cloudvac.web import protocols
from tests.integration.webserver import SPACE, WAIT, Running, poll, web_server

A = "cloudvac-aaaaaa-belle-aaaaaaaaaa"
B = "cloudvac-aaaaaa-belle-bbbbbbbbbb"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["httptools", "h11"])
def http(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both HTTP implementations uvicorn may use (h11 when httptools is missing)."""
    if request.param == "h11":
        monkeypatch.setattr(protocols, "_HTTPTOOLS", None)
    return str(request.param)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def heartbeat(name: str, token: str, body: bytes = b"1 0.5\n") -> bytes:
    return (f"PUT /machines/{SPACE}/{name}/joboutputs/heartbeat HTTP/1.1\r\n"
            f"Host: cloudvac\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def until_closed(sock: socket.socket, seconds: float = WAIT) -> bytes:
    """Everything the server sends until it closes (bounded)."""
    sock.settimeout(seconds)
    data = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def status_of(port: int, request: bytes, seconds: float = WAIT) -> int:
    """Send ``request`` on a new connection; the status of the answer (0: none)."""
    with socket.create_connection(("127.0.0.1", port), timeout=seconds) as sock:
        sock.settimeout(seconds)
        try:
            sock.sendall(request)
            head = b""
            while b"\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    return 0
                head += chunk
        except ConnectionResetError:
            return 0
    return int(head.split()[1])


def sample(web: Running, name: str, **labels: str) -> float:
    return web.context.registry.get_sample_value(name, {"listener": "vm", **labels}) or 0.0


# ------------------------------------------------------------ in-process ---------------


def test_slow_headers_get_408_while_others_are_served(tmp_path: Path, http: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with web_server(tmp_path, web_header_timeout_seconds=1) as web:
        web.add_machine(A)
        port = port_of(web.url)
        silent = socket.create_connection(("127.0.0.1", port))
        trickle = socket.create_connection(("127.0.0.1", port))
        started = time.monotonic()
        trickle.sendall(b"PUT /machines/")
        # a byte every 0.3 s does not extend the deadline; others are served meanwhile
        for byte in b"web.example/x":
            assert status_of(port, heartbeat(A, web.token(A))) == 204
            try:
                trickle.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.3)
        for sock in (trickle, silent):
            answer = until_closed(sock)
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert b"connection: close" in answer
            sock.close()
        assert time.monotonic() - started >= 1.0
        assert sample(web, "cloudvac_web_timeouts_total", kind="header") == 2
        assert status_of(port, heartbeat(A, web.token(A))) == 204
    lines = [r for r in caplog.records if r.name == "cloudvac.web.guard"
             and "request headers" in r.getMessage()]
    assert 1 <= len(lines) <= 2  # one line now, the second one counted for later
    assert all(r.levelno < logging.ERROR for r in caplog.records)


def test_slow_body_gets_408_and_nothing_is_written(tmp_path: Path, http: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    with web_server(tmp_path, web_body_timeout_seconds=1) as web:
        web.add_machine(A)
        web.add_machine(B)
        port = port_of(web.url)
        slow = socket.create_connection(("127.0.0.1", port))
        head = heartbeat(A, web.token(A), b"x" * 100)[:-100]
        slow.sendall(head + b"12345")
        assert status_of(port, heartbeat(B, web.token(B))) == 204
        answer = until_closed(slow)
        slow.close()
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert sample(web, "cloudvac_web_timeouts_total", kind="body") == 1
        time.sleep(1.5)  # the heartbeat flusher's period: nothing of A's may land
        assert web.joboutput(A, "heartbeat") is None
        assert poll(lambda: web.joboutput(B, "heartbeat") is not None)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_client_over_its_rate_gets_429_others_do_not(tmp_path: Path) -> None:
    with web_server(tmp_path, web_rate_per_client=1, web_rate_burst=3) as web:
        web.add_machine(A)
        with httpx.Client(base_url=web.url, timeout=WAIT) as client:
            answers = [client.get("/healthz") for _ in range(5)]
        assert [a.status_code for a in answers[:3]] == [200, 200, 200]
        assert answers[4].status_code == 429
        assert int(answers[4].headers["retry-after"]) >= 1
        assert sample(web, "cloudvac_web_rate_limited_total") >= 1
        # the bucket refills at the rate: one request a second later is served
        assert poll(lambda: httpx.get(f"{web.url}/healthz").status_code == 200, 10)


def test_accept_errors_are_counted_and_logged_once(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """What asyncio's loop does on EMFILE, a thousand times over: one line."""
    with web_server(tmp_path) as web:
        import asyncio

        loop = asyncio.new_event_loop()
        try:
            for _ in range(1000):
                loop.call_exception_handler({
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(24, "Too many open files")})
        finally:
            loop.close()
        counted = web.context.registry.get_sample_value("cloudvac_web_accept_errors_total")
    assert counted == 1000
    lines = [r for r in caplog.records if r.name == "asyncio"]
    assert len(lines) <= 1 and not any(r.exc_info for r in lines)


# ------------------------------------------------------------ `cloudvac web` processes -


CONFIG = """\
[settings]
state_dir = {state}
web_listen = 127.0.0.1:{port}
operator_listen = 127.0.0.1:0
{options}

[space {space}]
api = sim
flavor_names = m1.small

[machinetype {space} belle]
target_share = 1
heartbeat_file = heartbeat
"""
VMS = [f"cloudvac-aaaaaa-belle-{i:010d}" for i in range(40)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Process:
    port: int
    signer: TokenSigner
    log: Path
    proc: subprocess.Popen[bytes]

    def token(self, name: str) -> str:
        return self.signer.token(SPACE, name, time.time() + 3600)

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def _populate(state: Path) -> None:
    state.mkdir(parents=True)
    store = Store(f"sqlite:///{state / 'cloudvac.db'}")
    now = time.time()
    try:
        store.apply(SPACE, [MachineRecord(space=SPACE, name=name, machinetype="belle",
                                          state=MachineState.RUNNING, cloud_id=f"id-{name}",
                                          processors=1, created_at=now - 60, started_at=now)
                            for name in VMS], {}, now)
    finally:
        store.close()


@contextmanager
def cloudvac_web(tmp_path: Path, nofile: int | None = None, server: list[str] | None = None,
                 **options: object) -> Iterator[Process]:
    """``cloudvac web`` (or ``server``) in its own process, its open-file limit ``nofile``
    (soft and hard), until SIGTERM."""
    state, config, port = tmp_path / "state", tmp_path / "cloudvac.d", free_port()
    _populate(state)
    config.mkdir()
    (config / "00.conf").write_text(CONFIG.format(
        state=state, port=port, space=SPACE,
        options="\n".join(f"{k} = {v}" for k, v in options.items())))

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            server or [sys.executable, "-m", "cloudvac", "web", "--config-dir", str(config)],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, preexec_fn=limit,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)})
    try:
        served = Process(port, TokenSigner(b""), log, proc)
        assert poll(lambda: proc.poll() is not None or "web vm listening on" in served.text()), \
            "server did not start"
        assert proc.poll() is None, served.text()[-3000:]
        served.signer = TokenSigner(load_or_create_secret(state))
        yield served
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_start_up_line_names_the_loop_and_http_in_use(tmp_path: Path) -> None:
    with cloudvac_web(tmp_path) as web:
        assert status_of(web.port, heartbeat(VMS[0], web.token(VMS[0]))) == 204
        text = web.text()
    lines = [line for line in text.splitlines() if "web vm listening on" in line]
    assert len(lines) == 1, text
    loop = "uvloop.Loop" if importlib.util.find_spec("uvloop") else "asyncio."
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    assert re.search(rf"127\.0\.0\.1:{web.port}: event loop {re.escape(loop)}\S*, "
                     rf"HTTP {http}; header timeout 10 s, body 30 s, keep-alive 5 s, at most "
                     r"\d+ connections", lines[0]), lines[0]
    assert "open-file limit" in text


def _crowd(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that send half a request line and then nothing."""
    crowd = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        with contextlib.suppress(OSError):  # refused and closed already
            sock.sendall(b"PUT /machines/")
        crowd.append(sock)
    return crowd


def _honest(web: Process, count: int) -> list[tuple[int, float]]:
    """(status, seconds) of ``count`` heartbeats of different VMs, one connection each."""
    answers = []
    for name in VMS[:count]:
        began = time.monotonic()
        answers.append((status_of(web.port, heartbeat(name, web.token(name)), seconds=30),
                        time.monotonic() - began))
    return answers


def _no_flood(text: str, events: int) -> None:
    lines = text.splitlines()
    assert len(lines) < 60, f"{len(lines)} log lines for {events} hostile connections"
    assert "Traceback" not in text


@pytest.mark.slow
def test_slow_loris_under_a_file_limit_of_256_locks_no_vm_out(tmp_path: Path) -> None:
    with cloudvac_web(tmp_path, nofile=256, web_header_timeout_seconds=60) as web:
        crowd = _crowd(web.port, 300)
        time.sleep(1.5)  # the crowd is now old enough to be pushed out for honest VMs
        answers = _honest(web, 20)
        told = _told(crowd)
        text = web.text()
    assert all(status in (204, 503) and seconds < 30 for status, seconds in answers), answers
    assert sum(status == 204 for status, _ in answers) >= 10, answers
    # the crowd beyond the bound got a clean 503 at once, or made room (408) for the VMs
    assert set(told) <= {b"", b"503", b"408"}, told
    assert told.count(b"408") >= 1, told  # one pushed out, then the VMs came and went
    assert told.count(b"503") + told.count(b"408") >= 300 - 192, told
    assert "at the connection limit" in text
    _no_flood(text, 300)


def _told(crowd: list[socket.socket]) -> list[bytes]:
    """The status each connection of the crowd was answered so far (b"": none), closed."""
    told = []
    for sock in crowd:
        sock.setblocking(False)
        try:
            told.append(sock.recv(4096)[9:12])
        except (BlockingIOError, ConnectionResetError):
            told.append(b"")
        sock.close()
    return told


SERVE_IN_PROCESS = """\
import os, sys
from pathlib import Path
from cloudvac.logs import setup_logging
from tests.integration.webserver import web_server
setup_logging("INFO")
with web_server(Path(sys.argv[1]), web_header_timeout_seconds=3) as web:
    # something else holds file descriptors: accept() fails before the connection bound
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(120)]
    print("serving", web.url, flush=True)
    sys.stdin.read()
    print("accept errors", web.context.registry.get_sample_value(
        "cloudvac_web_accept_errors_total"), flush=True)
"""


@pytest.mark.slow
def test_accept_errors_do_not_flood_the_log(tmp_path: Path) -> None:
    """asyncio's own loop, file descriptors running out before the connection bound:
    accept() fails with EMFILE (asyncio logs each failure, 2048 per burst, and retries as
    many times); honest VMs are answered once the crowd times out, and the log gets a
    line per 10 s."""
    state = tmp_path / "state"
    log = tmp_path / "server.log"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", SERVE_IN_PROCESS, str(state)],
                                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                                cwd=ROOT, preexec_fn=limit,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert poll(lambda: "serving http" in log.read_text() or proc.poll() is not None)
        port = int(re.findall(r"serving http://127.0.0.1:(\d+)", log.read_text())[0])
        crowd = _crowd(port, 300)
        answers = [status_of(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", seconds=30)
                   for _ in range(5)]
        for sock in crowd:
            sock.close()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
    text = log.read_text(errors="replace")
    assert "accept() failed" in text
    assert float(re.findall(r"accept errors (\S+)", text)[0]) > 0
    assert answers.count(200) >= 1, answers
    _no_flood(text, 300)
