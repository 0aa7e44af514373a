"""Vacuum pipes end to end: a real HTTPS server on 127.0.0.1 serves a pipe document
(then a broken one, then 404, then a changed one with a new ETag); the daemon's
configuration source fetches it into the cache and the loader turns it into
machinetypes, keeping the last good definition while the pipe is bad."""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cloudvac.config import LoadedConfig, load_config_dir
from cloudvac.config.pipecache import url_hash
from cloudvac.engine.configsource import ConfigSource
from cloudvac.engine.daemon import Daemon
from cloudvac.engine.pipes import RETRY_SECONDS, PipeFetcher, http_get
from cloudvac.service import build_daemon
from cloudvac.store import Store

DEADLINE = 120.0  # generous: the CI machine is a loaded 2-core box
SPACES = """\
[settings]
state_dir = {state}

[space s.example]
api = sim
flavor_names = m1.small

[machinetype s.example local]
target_share = 1

[space other.example]
api = sim
flavor_names = m1.small

[machinetype other.example t2k]
target_share = 1

[vacuum_pipe s.example belle]
vacuum_pipe_url = {url}
target_share = 8
"""


@dataclass
class Served:
    status: int = 200
    body: bytes = b""
    etag: str | None = None


@dataclass
class PipeServer:
    """What the server serves per path, and what it was asked (path, If-None-Match,
    status answered)."""

    port: int = 0
    routes: dict[str, Served] = field(default_factory=dict)
    asked: list[tuple[str, str | None, int]] = field(default_factory=list)
    open: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def statuses(self, path: str) -> list[tuple[str | None, int]]:
        return [(etag, status) for p, etag, status in self.asked if p == path]


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@contextmanager
def pipe_server(tmp_path: Path) -> Iterator[tuple[PipeServer, ssl.SSLContext]]:
    """A real HTTPS server on 127.0.0.1 (ETag / If-None-Match -> 304), and a client
    context trusting it."""
    cert, key = self_signed(tmp_path)
    server = PipeServer()
    server.open.set()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server.open.wait()
            served = server.routes.get(self.path, Served(404))
            asked = self.headers.get("If-None-Match")
            status = 304 if served.etag is not None and asked == served.etag else served.status
            server.asked.append((self.path, asked, status))
            self.send_response(status)
            if served.etag is not None:
                self.send_header("ETag", served.etag)
            body = served.body if status == 200 else b""
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    server.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, ssl.create_default_context(cafile=str(cert))
    finally:
        server.open.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(DEADLINE)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def configure(tmp_path: Path, url: str) -> Path:
    cdir = tmp_path / "conf"
    cdir.mkdir()
    (cdir / "10-spaces.conf").write_text(SPACES.format(state=tmp_path / "state", url=url))
    return cdir


def pipe(*entries: dict[str, object]) -> bytes:
    return json.dumps({"cache_seconds": 3600, "machinetypes": list(entries)}).encode()


def refreshed(daemon: Daemon, fetcher: PipeFetcher) -> LoadedConfig:
    """A load that starts the fetches due, then the load after they finished."""
    daemon.load()
    assert fetcher.join(DEADLINE), "a pipe fetch did not finish"
    return daemon.load()


def pipe_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "cloudvac.engine.pipes"]


def test_pipe_is_fetched_kept_while_broken_or_gone_and_updated_when_changed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cloudvac")
    with pipe_server(tmp_path) as (server, trusted):
        server.routes["/belle.pipe"] = Served(body=pipe(
            {"suffix": "prod", "target_share": 3, "max_wallclock_seconds": 86400},
            {"suffix": "test", "target_share": 1, "machine_model": "vm-raw"},
            {"suffix": "box", "machine_model": "docker"}), etag='"v1"')
        cdir = configure(tmp_path, server.url("/belle.pipe"))
        settings = load_config_dir(cdir).settings
        assert settings is not None
        store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
        clock = Clock(1_800_000_000.0)
        fetcher = PipeFetcher(clock=clock, get=partial(http_get, verify=trusted))
        daemon = build_daemon(cdir, settings, store)
        daemon.config = ConfigSource(cdir, pipes=fetcher)
        try:
            _lifecycle(daemon, fetcher, server, clock, caplog)
        finally:
            store.close()


def _lifecycle(daemon: Daemon, fetcher: PipeFetcher, server: PipeServer, clock: Clock,
               caplog: pytest.LogCaptureFixture) -> None:
    path = "/belle.pipe"
    # 1. first fetch: the pipe's machinetypes, the total share split 3:1
    loaded = refreshed(daemon, fetcher)
    assert loaded.issues == [] and loaded.warnings == []
    mts = daemon.current_spaces()["s.example"].machinetypes
    assert sorted(mts) == ["belle-prod", "belle-test", "local"]
    assert (mts["belle-prod"].target_share, mts["belle-test"].target_share) == (6.0, 2.0)
    assert "other.example" in daemon.current_spaces()
    [line] = pipe_lines(caplog)
    assert "fetched: 2 machinetypes (belle-prod, belle-test)" in line
    assert "space=s.example machinetype=belle-* machine=-" in line and "box" in line
    # 2. not due before the refresh period; then a conditional GET answered 304
    clock.now += 3599
    refreshed(daemon, fetcher)
    assert server.statuses(path) == [(None, 200)]
    clock.now += 1
    refreshed(daemon, fetcher)
    assert server.statuses(path)[-1] == ('"v1"', 304)
    assert len(pipe_lines(caplog)) == 1  # nothing changed, nothing said
    # 3. a broken document: the last good definition stays, with a warning that says so
    server.routes[path] = Served(body=pipe({"suffix": "prod", "fizzle_seconds": "soon"}),
                                 etag='"v2"')
    clock.now += 3600
    loaded = refreshed(daemon, fetcher)
    assert sorted(daemon.current_spaces()["s.example"].machinetypes) == \
        ["belle-prod", "belle-test", "local"]
    [warning] = loaded.warnings
    assert f"vacuum pipe {server.url(path)} failing since" in warning.message
    assert "$.machinetypes[0].fizzle_seconds" in warning.message
    assert "keeping its last good definition" in warning.message
    assert loaded.issues == []
    lines = pipe_lines(caplog)
    assert len(lines) == 2 and "invalid: $.machinetypes[0].fizzle_seconds" in lines[1]
    # ... tried again after RETRY_SECONDS, still broken: not said again
    clock.now += RETRY_SECONDS
    again = refreshed(daemon, fetcher)
    assert len(server.statuses(path)) == 4 and again.warnings == loaded.warnings
    assert len(pipe_lines(caplog)) == 2
    # 4. gone (404): still the last good definition, the reason changes
    server.routes[path] = Served(404)
    clock.now += RETRY_SECONDS
    loaded = refreshed(daemon, fetcher)
    assert "belle-prod" in daemon.current_spaces()["s.example"].machinetypes
    [warning] = loaded.warnings
    assert "HTTP 404" in warning.message
    lines = pipe_lines(caplog)
    assert len(lines) == 3 and "HTTP 404" in lines[2] and "keeping the definition" in lines[2]
    # 5. a changed document with a new ETag: taken, warning gone
    server.routes[path] = Served(body=pipe({"suffix": "prod", "target_share": 1},
                                           {"suffix": "new", "target_share": 1,
                                            "backoff_seconds": 60}), etag='"v3"')
    clock.now += RETRY_SECONDS
    loaded = refreshed(daemon, fetcher)
    assert loaded.issues == [] and loaded.warnings == []
    mts = daemon.current_spaces()["s.example"].machinetypes
    assert sorted(mts) == ["belle-new", "belle-prod", "local"]
    assert mts["belle-new"].backoff_seconds == 60 and mts["belle-prod"].target_share == 4.0
    lines = pipe_lines(caplog)
    assert len(lines) == 4 and "fetched again" in lines[3] and "belle-new" in lines[3]
    clock.now += 3600
    refreshed(daemon, fetcher)
    assert server.statuses(path)[-1] == ('"v3"', 304)


def test_a_pipe_never_fetched_is_an_error_for_that_pipe_only(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cdir = configure(tmp_path, f"https://127.0.0.1:{port}/belle.pipe")
    fetcher = PipeFetcher(clock=Clock(1_800_000_000.0))
    source = ConfigSource(cdir, pipes=fetcher)
    source.load()
    assert fetcher.join(DEADLINE)
    loaded = source.load()
    [issue] = loaded.issues
    assert issue.section == "vacuum_pipe s.example belle" and issue.location.line == 19
    assert "cannot be fetched since" in issue.message and "ConnectError" in issue.message
    assert "machinetypes are absent" in issue.message
    assert sorted(loaded.spaces) == ["other.example", "s.example"]
    assert sorted(loaded.spaces["s.example"].machinetypes) == ["local"]
    [line] = pipe_lines(caplog)
    assert "no good definition yet" in line


def test_a_hanging_pipe_server_does_not_hold_up_the_load(tmp_path: Path) -> None:
    with pipe_server(tmp_path) as (server, trusted):
        server.routes["/belle.pipe"] = Served(body=pipe({"suffix": "prod"}), etag='"1"')
        server.open.clear()  # requests wait until the test lets them through
        cdir = configure(tmp_path, server.url("/belle.pipe"))
        fetcher = PipeFetcher(clock=Clock(1_800_000_000.0), first_wait=0.1,
                              get=partial(http_get, verify=trusted))
        source = ConfigSource(cdir, pipes=fetcher)
        loaded = source.load()
        assert not fetcher.join(0), "the fetch is still waiting for the server"
        assert "not fetched yet" in loaded.issues[0].message
        assert sorted(loaded.spaces["s.example"].machinetypes) == ["local"]
        server.open.set()
        assert fetcher.join(DEADLINE)
        assert "belle-prod" in source.load().spaces["s.example"].machinetypes


def test_https_user_data_templates_are_fetched_with_the_pipe(tmp_path: Path) -> None:
    with pipe_server(tmp_path) as (server, trusted):
        template = b"#cloud-config\nruncmd:\n - [echo, '##user_data_machinetype##']\n"
        server.routes["/user_data"] = Served(body=template, etag='"t1"')
        server.routes["/belle.pipe"] = Served(body=pipe(
            {"suffix": "prod", "user_data": server.url("/user_data")}), etag='"1"')
        cdir = configure(tmp_path, server.url("/belle.pipe"))
        clock = Clock(1_800_000_000.0)
        fetcher = PipeFetcher(clock=clock, get=partial(http_get, verify=trusted))
        source = ConfigSource(cdir, pipes=fetcher)
        source.load()
        assert fetcher.join(DEADLINE)
        mt = source.load().spaces["s.example"].machinetypes["belle-prod"]
        assert mt.user_data is not None and Path(mt.user_data).read_bytes() == template
        assert Path(mt.user_data).name == url_hash(server.url("/user_data"))
        # a new document whose template cannot be had is not taken
        server.routes["/belle.pipe"] = Served(body=pipe(
            {"suffix": "prod", "user_data": server.url("/gone")}), etag='"2"')
        clock.now += 3600
        source.load()
        assert fetcher.join(DEADLINE)
        loaded = source.load()
        assert loaded.spaces["s.example"].machinetypes["belle-prod"].user_data == mt.user_data
        [warning] = loaded.warnings
        assert f"user_data template {server.url('/gone')}: HTTP 404" in warning.message


def test_validate_and_status_say_a_pipe_is_failing(tmp_path: Path) -> None:
    with pipe_server(tmp_path) as (server, trusted):
        server.routes["/belle.pipe"] = Served(body=pipe({"suffix": "prod"}), etag='"1"')
        cdir = configure(tmp_path, server.url("/belle.pipe"))
        clock = Clock(1_800_000_000.0)
        fetcher = PipeFetcher(clock=clock, get=partial(http_get, verify=trusted))
        source = ConfigSource(cdir, pipes=fetcher)
        source.load()
        assert fetcher.join(DEADLINE)
        server.routes["/belle.pipe"] = Served(404)
        clock.now += 3600
        source.load()
        assert fetcher.join(DEADLINE)
    env = {**os.environ, "COLUMNS": "200"}
    for command in ("validate", "status"):
        result = subprocess.run([sys.executable, "-m", "cloudvac", command, "--config-dir",
                                 str(cdir)], capture_output=True, text=True, env=env,
                                timeout=DEADLINE)
        text = " ".join(result.stderr.split())
        assert result.returncode == 0, result.stderr
        assert f"{cdir / '10-spaces.conf'}:19: [vacuum_pipe s.example belle] " \
               f"vacuum_pipe_url: vacuum pipe {server.url('/belle.pipe')} failing since " \
               "2027-01-15 09:00:00 UTC: HTTP 404 Not Found; keeping its last good " \
               "definition, fetched at 2027-01-15 08:00:00 UTC" in text, text
