"""Canaries: known secrets pushed through every error path of the running service are found
nowhere it writes or shows (issue 13, point 6).

One loopback server plays every remote party, each misbehaving by quoting the request it
got: an OIDC provider (the refresh token in the form, the client secret in ``Authorization:
Basic`` and decoded), Keystone (the password in a 401 and a 400 body), Nova (the
``X-Auth-Token`` in a listing error, the whole create request, user_data base64 and
decoded, in a 400), and the EGI IS / GOCDB (an API key in GOCDB's URL query).  The
service (engine and web, ``service.build``) runs one space per path until each has
failed twice; then every canary is searched for in the log records (pytest's capture and a
file written by the production handler, both at DEBUG; cloudvac's own records also
unfiltered), a dump of the SQLite store, every file under the state dir, ``/status``,
``cloudvac status --json`` and ``/metrics``.  No log line may exceed 4 KB.

A second test (``contract``: it starts the real servers of ``tests/oracle``, about a
minute) does the same against a real OIDC provider, a real Keystone federated with it and
a real Nova: their own refusals of a wrong password, an unknown refresh token, a wrong
client secret and a create (with the canaries in its user_data, which keystoneauth logs at
DEBUG) must leak nothing either, and Nova's message must reach the operator intact.

Neither needs the engine to redact its own texts: the adapters redact what they quote, the
store redacts events, and the log filter every record.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from cloudvac.config import load_config_dir
from cloudvac.engine.configsource import ConfigSource
from cloudvac.logs import LINE_BYTES, RedactingFilter, redacting
from cloudvac.model.redact import CUT
from cloudvac.service import Service, build
from cloudvac.store import Store

PROXY_HEAD = "-----BEGIN RSA PRIVATE KEY-----"
PROXY_TAIL = "-----END RSA PRIVATE KEY-----"
IMAGE = "6f4c1f7e-0d55-4a52-9c1e-2a8b7f3c9d10"
CLIENT_ID = "cloudvac-canary"
RUN_SECONDS = 90.0  # bound on waiting for every space's failures (a loaded 2-core box)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass(frozen=True)
class Canaries:
    """Fresh secrets for one run, each shaped like the real thing."""

    refresh_token: str = field(default_factory=lambda: ".".join((
        _b64url(b'{"alg":"none"}'),
        _b64url(json.dumps({"jti": secrets.token_hex(16), "exp": 4102444800}).encode()),
        "")))
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    password: str = field(default_factory=lambda: "pw-" + secrets.token_hex(6))
    keystone_token: str = field(default_factory=lambda: "gAAAAAB" + secrets.token_urlsafe(90))
    proxy_line: str = field(default_factory=lambda: base64.b64encode(
        secrets.token_bytes(48)).decode())
    pilot_token: str = field(default_factory=lambda: "pilot-" + secrets.token_hex(8))
    gocdb_key: str = field(default_factory=lambda: "gk" + secrets.token_hex(10))

    @property
    def basic(self) -> str:
        return base64.b64encode(f"{CLIENT_ID}:{self.client_secret}".encode()).decode()

    def named(self) -> dict[str, str]:
        found = {name: getattr(self, name) for name in self.__dataclass_fields__}
        found["basic"] = self.basic
        found["refresh_token payload"] = self.refresh_token.split(".")[1]
        return found


@dataclass
class Received:
    """What the loopback parties were sent (to check each path really ran)."""

    requests: list[tuple[str, str, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, method: str, path: str, body: bytes) -> None:
        with self.lock:
            self.requests.append((method, path, body))

    def bodies(self, method: str, path_prefix: str) -> list[bytes]:
        with self.lock:
            return [b for m, p, b in self.requests if m == method and p.startswith(path_prefix)]


class FakeParties(ThreadingHTTPServer):
    """IdP, Keystone, Nova, IS and GOCDB on one 127.0.0.1 port, all quoting requests."""

    daemon_threads = True

    def __init__(self, canaries: Canaries) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.canaries, self.received = canaries, Received()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeParties
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test's own server: its access log is not cloudvac's output

    def do_GET(self) -> None:
        self._route(b"")

    def do_POST(self) -> None:
        self._route(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    def _route(self, body: bytes) -> None:
        path = self.path.split("?")[0]
        self.server.received.add(self.command, path, body)
        for prefix, handle in (("/idp/", _idp), ("/keystone/", _keystone),
                               ("/nova/", _nova), ("/is/", _refuse), ("/gocdb", _refuse)):
            if path.startswith(prefix):
                status, doc, headers = handle(self, path, body)
                return self._answer(status, doc, headers)
        self._answer(404, {"error": "not here"}, {})

    def _answer(self, status: int, doc: Any, headers: dict[str, str]) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def echo(self, body: bytes) -> str:
        """The request as a careless server quotes it: line, headers, body."""
        headers = "\r\n".join(f"{k}: {v}" for k, v in self.headers.items())
        return f"{self.command} {self.path}\r\n{headers}\r\n\r\n{body.decode(errors='replace')}"


Answer = tuple[int, Any, dict[str, str]]


def _idp(handler: _Handler, path: str, body: bytes) -> Answer:
    base = f"{handler.server.url}/idp"
    if path.endswith("/.well-known/openid-configuration"):
        return 200, {"issuer": base, "token_endpoint": f"{base}/token",
                     "userinfo_endpoint": f"{base}/userinfo"}, {}
    auth = handler.headers.get("Authorization", "")
    decoded = base64.b64decode(auth.split()[-1]).decode() if auth.startswith("Basic ") else ""
    said = (f"request was {handler.echo(body)!r}; parsed credentials "
            f"{dict(zip(('client_id', 'client_secret'), decoded.split(':', 1), strict=False))}")
    if parse_qs(body.decode()).get("grant_type") == ["client_credentials"]:
        return 400, {"error": said * 4}, {}  # the quote where the error code should be
    return 400, {"error": "invalid_grant", "error_description": said * 4}, {}


def _keystone(handler: _Handler, path: str, body: bytes) -> Answer:
    if not path.endswith("/auth/tokens"):
        return 404, {"error": {"code": 404, "message": "not found"}}, {}
    user = json.loads(body)["auth"]["identity"]["password"]["user"]["name"]
    if user == "refused":
        return 401, {"error": {"code": 401, "title": "Unauthorized", "message":
                               f"The request you have made requires authentication: "
                               f"{handler.echo(body)}"}}, {}
    if user == "broken":
        return 400, {"error": {"code": 400, "title": "Bad Request",
                               "message": f"Invalid request {handler.echo(body)}" * 8}}, {}
    token = handler.server.canaries.keystone_token if user == "listecho" else "tok-" + user
    return 201, _token_doc(f"{handler.server.url}/nova/v2.1", user), {"X-Subject-Token": token}


def _token_doc(compute_url: str, user: str) -> dict[str, Any]:
    expires = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(time.time() + 3600))
    domain = {"id": "default", "name": "Default"}
    return {"token": {
        "methods": ["password"], "expires_at": expires, "issued_at": expires,
        "user": {"id": f"u-{user}", "name": user, "domain": domain},
        "project": {"id": f"p-{user}", "name": f"project-{user}", "domain": domain},
        "roles": [{"id": "r1", "name": "member"}],
        "catalog": [{"type": "compute", "name": "nova", "id": "c1", "endpoints": [
            {"id": "e1", "interface": "public", "region": "RegionOne",
             "region_id": "RegionOne", "url": compute_url}]}]}}


def _nova(handler: _Handler, path: str, body: bytes) -> Answer:
    version = {"id": "v2.1", "status": "CURRENT", "version": "2.90", "min_version": "2.1",
               "links": [{"rel": "self", "href": f"{handler.server.url}/nova/v2.1/"}]}
    tail = path.removeprefix("/nova").removeprefix("/v2.1").rstrip("/")
    listing = handler.headers.get("X-Auth-Token") == handler.server.canaries.keystone_token
    if tail == "":
        return 200, ({"version": version} if "v2.1" in path else {"versions": [version]}), {}
    if tail == "/servers/detail" and listing:
        return 400, {"badRequest": {"code": 400, "message":
                                    f"Invalid filter in {handler.echo(body)}"}}, {}
    if tail == "/servers" and handler.command == "POST":
        data = json.loads(body)["server"].get("user_data", "")
        decoded = base64.b64decode(data).decode(errors="replace")
        return 400, {"badRequest": {"code": 400, "message": (
            f"Invalid input for field/attribute server. Value: {handler.echo(body)}. "
            f"user_data was: {decoded}") * 3}}, {}
    return 200, {
        "/servers/detail": {"servers": []},
        "/flavors/detail": {"flavors": [{"id": "1", "name": "m1.small", "vcpus": 1,
                                         "ram": 2048, "disk": 20}]},
        "/limits": {"limits": {"absolute": {"maxTotalCores": 100, "totalCoresUsed": 0,
                                            "maxTotalInstances": 100,
                                            "totalInstancesUsed": 0}}},
    }.get(tail, {}), {}


def _refuse(handler: _Handler, path: str, body: bytes) -> Answer:
    return 500, {"error": f"down; you sent {handler.echo(body)}"}, {}


@contextmanager
def fake_parties(canaries: Canaries) -> Iterator[FakeParties]:
    server = FakeParties(canaries)
    thread = threading.Thread(target=server.serve_forever, name="fake-parties", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


SETTINGS = """\
[settings]
state_dir = {state}
cycle_seconds = 0.5
space_timeout_seconds = 30
web_listen = 127.0.0.1:0
operator_listen = 127.0.0.1:0
"""
COMMON = """\
api = openstack
region_name = RegionOne
networks = none
flavor_names = m1.small
api_timeout_seconds = 10
api_retries = 0
"""
PASSWORD_SPACE = """\
[space {name}]
{common}auth_url = {auth_url}
username = {user}
password_file = {password}
project_name = {project}
{extra}
[machinetype {name} belle]
target_share = 1
root_image = {image}
user_data = {template}
user_data_file_proxy = {proxy}
user_data_option_pilot_token = {pilot}
"""
CHECKIN_SPACE = """\
[space {name}]
{common}auth = egi_checkin
egi_checkin_url = {issuer}
egi_checkin_client_id = {client}
egi_checkin_client_secret_file = {secret}
{extra}
[machinetype {name} belle]
target_share = 1
root_image = {image}
"""
TEMPLATE = """\
#!/bin/sh
cat > /tmp/x509up <<'END'
##user_data_file_proxy##
END
export DIRAC_PILOT_TOKEN=##user_data_option_pilot_token##
export JOBOUTPUTS_TOKEN=##user_data_joboutputs_token##
"""
#: The spaces run against the loopback parties, and what each runs into.
FAKE_SPACES = {
    "idp-refresh.example": "OIDC provider refuses the refresh token, quoting the request",
    "idp-client.example": "OIDC provider quotes the request as its error code",
    "keystone-401.example": "Keystone refuses the password, quoting the request",
    "keystone-400.example": "Keystone answers 400 quoting the request",
    "nova-list.example": "Nova refuses the listing, quoting X-Auth-Token",
    "nova-create.example": "Nova refuses the create, quoting user_data",
    "discovery.example": "IS and GOCDB down; GOCDB's URL holds an API key",
}


def secret_files(tmp_path: Path, canaries: Canaries, client_secret: str) -> dict[str, Any]:
    """The secret files (0600) and the user_data template the spaces use, as format values
    (``password``: the canary password; ``secret``: ``client_secret``)."""
    files = {"password": canaries.password, "client.secret": client_secret,
             "refresh.token": canaries.refresh_token,
             "proxy.pem": f"{PROXY_HEAD}\n{canaries.proxy_line}\n{PROXY_TAIL}\n",
             "template.sh": TEMPLATE}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o600)
    return {"common": COMMON, "password": tmp_path / "password",
            "template": tmp_path / "template.sh", "proxy": tmp_path / "proxy.pem",
            "pilot": canaries.pilot_token, "secret": tmp_path / "client.secret",
            "refresh": tmp_path / "refresh.token"}


def config_dir(tmp_path: Path, spaces: str) -> Path:
    cdir = tmp_path / "conf"
    cdir.mkdir()
    (cdir / "10-canaries.conf").write_text(SETTINGS.format(state=tmp_path / "state") + spaces)
    return cdir


def fake_config(tmp_path: Path, url: str, canaries: Canaries) -> Path:
    """The seven spaces of ``FAKE_SPACES`` on the loopback parties at ``url``."""
    values = {**secret_files(tmp_path, canaries, canaries.client_secret), "image": IMAGE,
              "auth_url": f"{url}/keystone/v3", "issuer": f"{url}/idp", "client": CLIENT_ID}
    text = ""
    for name, user in (("keystone-401.example", "refused"), ("keystone-400.example", "broken"),
                       ("nova-list.example", "listecho"), ("nova-create.example", "create")):
        text += PASSWORD_SPACE.format(name=name, user=user, project=f"project-{user}",
                                      extra="", **values)
    federation = f"auth_url = {url}/keystone/v3\negi_project_id = p-fed\n"
    extras = {"idp-refresh.example": f"{federation}egi_checkin_refresh_token_file = "
                                     f"{values['refresh']}\n",
              "idp-client.example": federation,
              "discovery.example": f"egi_site = CANARY-SITE\negi_vo = vo.example.eu\n"
                                   f"egi_is_url = {url}/is\negi_gocdb_url = {url}/gocdb/"
                                   f"?apikey={canaries.gocdb_key}\n"}
    for name, extra in extras.items():
        text += CHECKIN_SPACE.format(name=name, extra=extra, **values)
    return config_dir(tmp_path, text)


@dataclass
class Shown:
    """What the running service showed while every space was failing."""

    status: str = ""
    metrics: str = ""


async def run_until_failed_twice(service: Service, spaces: Collection[str],
                                 shown: Shown) -> None:
    """Serve until each of ``spaces`` has two failed cycles (bounded), then read
    ``/status`` and ``/metrics`` and stop."""
    serving = asyncio.create_task(service.serve())
    daemon = service.daemon
    assert daemon is not None
    try:
        deadline = time.monotonic() + RUN_SECONDS
        while not _failed_twice(service, spaces) and time.monotonic() < deadline:
            if serving.done():
                serving.result()  # raises what stopped it
            await asyncio.sleep(0.1)
        assert _failed_twice(service, spaces), {n: [r.error for r in s.reports]
                                                for n, s in daemon.spaces.items()}
        operator = f"http://127.0.0.1:{service.operator_port}"
        async with httpx.AsyncClient(base_url=operator) as client:
            shown.status = (await client.get("/status", timeout=30)).text
            shown.metrics = (await client.get("/metrics", timeout=30)).text
    finally:
        service.stop()
        await asyncio.wait_for(serving, 60)


def _failed_twice(service: Service, spaces: Collection[str]) -> bool:
    assert service.daemon is not None
    found = service.daemon.spaces
    return set(found) == set(spaces) and all(
        sum(not r.ok or r.create_failures > 0 for r in s.reports) >= 2 for s in found.values())


def run_service(cdir: Path, spaces: Collection[str]) -> tuple[Path, Shown]:
    """Build the service (engine and web) on ``cdir`` and run it until ``spaces`` failed;
    its state dir and what it showed."""
    loaded, shown = load_config_dir(cdir), Shown()
    assert loaded.settings is not None and not loaded.issues, loaded.issues
    store = Store(loaded.settings.database_url)
    try:
        service = build(ConfigSource(cdir), loaded.settings, store, keep_reports=50)
        asyncio.run(run_until_failed_twice(service, spaces, shown))
    finally:
        store.close()
    return loaded.settings.state_dir, shown


class Records(logging.Handler):
    """Every record as it arrives, unformatted and unfiltered."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(record.getMessage())


@dataclass(frozen=True)
class Logs:
    file: Path
    own: Records
    caplog: pytest.LogCaptureFixture

    def places(self) -> dict[str, str]:
        return {"caplog": self.caplog.text, "log file": self.file.read_text(encoding="utf-8"),
                "cloudvac records": "\n".join(self.own.texts)}

    def long_lines(self) -> list[str]:
        lines = [*self.file.read_text(encoding="utf-8").splitlines(),
                 *self.caplog.text.splitlines()]
        return [line[:100] for line in lines if len(line.encode()) > LINE_BYTES]


@contextmanager
def captured(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[Logs]:
    """Every record at DEBUG: in pytest's capture and a file written by the production
    handler (both filtered, as every handler of ``setup_logging`` is: third-party DEBUG
    lines hold raw request bodies before the filter), and cloudvac's own records before
    any filter (they must be clean as sent)."""
    caplog.set_level(logging.DEBUG)
    caplog.handler.addFilter(RedactingFilter())
    logs = Logs(tmp_path / "cloudvac.log", Records(), caplog)
    handler = redacting(logging.FileHandler(logs.file, encoding="utf-8"))
    logging.getLogger().addHandler(handler)
    logging.getLogger("cloudvac").addHandler(logs.own)
    try:
        yield logs
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger("cloudvac").removeHandler(logs.own)
        handler.close()


def store_dump(database: Path) -> str:
    connection = sqlite3.connect(database)
    try:
        return "\n".join(connection.iterdump())
    finally:
        connection.close()


def state_files(state_dir: Path) -> dict[str, str]:
    """Every file under the state dir, bytes read as Latin-1 (the database and its WAL)."""
    return {f"state dir: {p.relative_to(state_dir)}": p.read_bytes().decode("latin-1")
            for p in sorted(state_dir.rglob("*")) if p.is_file()}


def cli_status(cdir: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "cloudvac", "status", "--config-dir",
                           str(cdir), "--json"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


def everywhere(logs: Logs, cdir: Path, state_dir: Path, shown: Shown) -> dict[str, str]:
    """Every place a secret must not reach, by name."""
    return {**logs.places(), "store dump": store_dump(state_dir / "cloudvac.db"),
            "/status": shown.status, "status --json": cli_status(cdir),
            "/metrics": shown.metrics, **state_files(state_dir)}


def sent_secrets(creates: Sequence[bytes]) -> dict[str, str]:
    """Secrets only known once sent: the VM token's signature and stretches of the
    user_data as Nova received it, base64 (from the first create request)."""
    found: dict[str, str] = {}
    for body in creates[:1]:
        data = json.loads(body)["server"]["user_data"]
        found.update({f"user_data b64 @{i}": data[i:i + 24] for i in range(0, len(data), 97)})
        token = re.search(r"v1\.[\w-]+\.\d+\.([\w-]+)", base64.b64decode(data).decode())
        assert token is not None, "the VM token is in the user_data"
        found["VM token signature"] = token.group(1)
    return found


def leaks(wanted: Mapping[str, str], places: Mapping[str, str]) -> list[str]:
    return sorted(f"{name} in {place}" for name, secret in wanted.items()
                  for place, text in places.items() if secret in text)


def assert_every_path_ran(received: Received, canaries: Canaries, shown: Shown) -> None:
    """The search proves something only if each secret really went out and each space
    really failed: check both."""
    tokens = b"".join(received.bodies("POST", "/idp/token"))
    assert canaries.refresh_token.encode() in tokens and b"client_credentials" in tokens
    logins = b"".join(received.bodies("POST", "/keystone/v3/auth/tokens"))
    assert canaries.password.encode() in logins
    assert received.bodies("GET", "/nova/v2.1/servers/detail")
    creates = received.bodies("POST", "/nova/v2.1/servers")
    assert creates and canaries.proxy_line in base64.b64decode(
        json.loads(creates[0])["server"]["user_data"]).decode()
    assert received.bodies("GET", "/gocdb/")
    errors = {row["space"]: row["last_error"] for row in json.loads(shown.status)}
    assert set(errors) == set(FAKE_SPACES) and all(errors.values()), errors


def test_no_canary_from_echoing_parties_reaches_any_output(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Parties that quote requests (IdP, Keystone, Nova, GOCDB's URL): nothing of the
    secrets in logs, store, state dir, status or metrics; no log line over 4 KB."""
    canaries = Canaries()
    with captured(tmp_path, caplog) as logs, fake_parties(canaries) as parties:
        cdir = fake_config(tmp_path, parties.url, canaries)
        state_dir, shown = run_service(cdir, FAKE_SPACES)
    assert_every_path_ran(parties.received, canaries, shown)
    wanted = {**canaries.named(), **encoded("proxy_line", canaries.proxy_line),
              **sent_secrets(parties.received.bodies("POST", "/nova/v2.1/servers"))}
    found = leaks(wanted, everywhere(logs, cdir, state_dir, shown))
    assert not found, "leaked: " + "; ".join(found)
    assert logs.long_lines() == []
    assert CUT in logs.file.read_text(encoding="utf-8"), "a long record was cut (bound tested)"


def encoded(name: str, text: str) -> dict[str, str]:
    """``text`` as it appears inside any base64 encoding of a document holding it: one of
    three strings, by the offset of ``text`` modulo 3 (trailing bytes dropped, as they mix
    with what follows)."""
    return {f"{name} base64 (+{k})": base64.b64encode(
        text[k:k + (len(text) - k) // 3 * 3].encode()).decode() for k in range(3)}


REAL_SPACES = {
    "real-keystone.example": "Keystone refuses the canary password",
    "real-nova.example": "Nova refuses the create (no such key_name); user_data has canaries",
    "real-idp-refresh.example": "the OIDC provider refuses the canary refresh token",
    "real-idp-client.example": "the OIDC provider refuses the canary client secret",
}


def real_config(tmp_path: Path, oracles: tuple[Any, Any, Any], canaries: Canaries) -> Path:
    """``REAL_SPACES`` on a real OIDC provider, Keystone federated with it and Nova."""
    op, ks, nova = oracles
    values = {**secret_files(tmp_path, canaries, canaries.client_secret),
              "image": nova["image_id"], "auth_url": ks.auth_url, "user": ks.username,
              "project": ks.project_name, "issuer": ks["federation"]["issuers"][0],
              "client": op["client_id"]}
    for name, text in (("good.password", nova.password), ("good.secret", op["client_secret"])):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o600)
    text = PASSWORD_SPACE.format(name="real-keystone.example", extra="", **values)
    text += PASSWORD_SPACE.format(name="real-nova.example", **{
        **values, "user": nova.username, "project": nova.project_name,
        "password": tmp_path / "good.password", "extra": "key_name = canary-no-such-key\n"})
    federation = f"auth_url = {ks.auth_url}\negi_project_id = {ks['vo_project_id']}\n"
    text += CHECKIN_SPACE.format(name="real-idp-refresh.example", **{
        **values, "secret": tmp_path / "good.secret",
        "extra": f"{federation}egi_checkin_refresh_token_file = {values['refresh']}\n"})
    text += CHECKIN_SPACE.format(name="real-idp-client.example", extra=federation, **values)
    return config_dir(tmp_path, text)


def oracles_or_skip() -> Any:
    """The launcher of the real servers (``tests/oracle``); fails without them unless
    CLOUDVAC_SKIP_ORACLE=1 (as the contract tests do)."""
    from tests.contract.conftest import launch

    if launch.oracle_available():
        return launch
    if os.environ.get("CLOUDVAC_SKIP_ORACLE") == "1":
        pytest.skip(f"CLOUDVAC_SKIP_ORACLE=1: no oracle at {launch.ORACLE_VENV}")
    pytest.fail(f"real-OpenStack oracle not installed: {launch.SETUP_HINT}", pytrace=False)


@pytest.mark.contract
@pytest.mark.slow
@pytest.mark.timeout(900)  # starting a real Keystone takes about a minute on a loaded box
def test_no_canary_from_real_idp_keystone_and_nova_reaches_any_output(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The real servers' own refusals (a wrong password, an unknown refresh token, a wrong
    client secret, a create Nova refuses): nothing of the secrets anywhere, while the
    cloud's message reaches the operator intact."""
    launch, canaries = oracles_or_skip(), Canaries()
    with launch.oidc_oracle() as op, launch.keystone_oracle(oidc=op) as ks, \
            launch.nova_oracle(keystone=ks) as nova, captured(tmp_path, caplog) as logs:
        cdir = real_config(tmp_path, (op, ks, nova), canaries)
        state_dir, shown = run_service(cdir, REAL_SPACES)
        answered = op.stats()["token_responses"]
    assert answered.get("refresh_token:400") and answered.get("client_credentials:401"), answered
    errors = {row["space"]: row["last_error"] for row in json.loads(shown.status)}
    assert all(errors.values()) and "Invalid key_name provided" in errors["real-nova.example"]
    wanted = {**canaries.named(), **encoded("proxy_line", canaries.proxy_line),
              **encoded("pilot_token", f"DIRAC_PILOT_TOKEN={canaries.pilot_token}\n")}
    found = leaks(wanted, everywhere(logs, cdir, state_dir, shown))
    assert not found, "leaked: " + "; ".join(found)
    assert logs.long_lines() == []
