"""Start/stop the real-OpenStack oracles (tests/oracle/*_server.py) from cloudvac's tests.

Runs in cloudvac's own venv and uses the standard library only. The servers themselves run
as subprocesses with ``.venv-oracle/bin/python`` (built by ``tests/oracle/setup.sh``).

    with nova_oracle(NovaOptions(quota_cores=6, max_limit=2)) as nova:
        openstack.connect(auth_url=nova.auth_url, username=nova.username, ...)

    with keystone_oracle() as ks, nova_oracle(keystone=ks) as nova:
        ...   # Nova validates tokens against the real Keystone; its catalog lists Nova

    with (keystone_oracle() as ks, glance_oracle(keystone=ks) as gl,
          nova_oracle(keystone=ks, glance=gl) as nova):
        ...   # + a real Glance in the catalog; Nova boots from the images uploaded there

    with oidc_oracle() as op, keystone_oracle(oidc=op) as ks, nova_oracle(keystone=ks):
        tokens = op.mint_tokens("alice", {"eduperson_entitlement": [op["entitlement"]]})
        ...   # refresh at op.info["token_endpoint"], POST ks["federation"]["auth_urls"]

Every context manager waits for the server's ready line - bounded by the CPU time the server
spends, so a loaded machine stretches the wait instead of failing a slow but healthy start-up
(see :class:`Timeouts`) - and on exit, also when the body raised, sends SIGTERM, waits a
bounded time, SIGKILLs if needed and reaps.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
ORACLE_VENV = Path(os.environ.get("ORACLE_VENV", REPO_ROOT / ".venv-oracle"))
ORACLE_PYTHON = ORACLE_VENV / "bin" / "python"
READY_PREFIX = "CLOUDVAC_ORACLE_READY "
SETUP_HINT = "run `bash tests/oracle/setup.sh` (creates .venv-oracle with real Nova/Keystone)"


class OracleError(RuntimeError):
    """An oracle server could not be started (message includes its log tail)."""


def oracle_available() -> bool:
    """True when .venv-oracle exists and setup.sh finished (its stamp file is present)."""
    return ORACLE_PYTHON.is_file() and (ORACLE_VENV / ".oracle-stamp").is_file()


@dataclass(frozen=True)
class OracleInfo:
    """The ready line of one oracle server, plus process facts."""

    kind: str
    pid: int
    base_url: str
    auth_url: str
    username: str
    password: str
    project_name: str
    data: dict[str, Any] = field(repr=False)
    log_path: str = ""

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def rss_mb(self) -> float | None:
        """Current resident set size of the server process (Linux /proc), in MB."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def space_options(self, password_file: Path) -> str:
        """The lines of a cloudvac ``[space]`` on this Nova with its Keystone password, which
        is written to ``password_file`` (mode 0600): api, credentials, region, no network,
        flavor m1.small."""
        password_file.write_text(self.password)
        password_file.chmod(0o600)
        return (f"api = openstack\nauth_url = {self.auth_url}\nusername = {self.username}\n"
                f"password_file = {password_file}\nproject_name = {self.project_name}\n"
                f"region_name = {self.data.get('region_name', 'RegionOne')}\n"
                "networks = none\nflavor_names = m1.small\n")

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``openstack.connect`` (password auth)."""
        return {
            "auth_url": self.auth_url,
            "username": self.username,
            "password": self.password,
            "project_name": self.project_name,
            "user_domain_name": self.data.get("user_domain_name", "Default"),
            "project_domain_name": self.data.get("project_domain_name", "Default"),
            "region_name": self.data.get("region_name", "RegionOne"),
        }


@dataclass(frozen=True)
class Timeouts:
    """How long to wait for a server's ready line, and for it to exit after SIGTERM.

    A start-up is measured in what it does, not in wall-clock time: ``ready`` is the CPU
    time (seconds) the server's process session - the server and whatever it runs, e.g.
    keystone-manage - may use before its ready line. A loaded machine gives it fewer CPU
    seconds per second, so the wait stretches with the load (on a quiet 2-core machine
    Keystone needs ~12 s of CPU, Nova ~4 s, the OIDC provider < 1 s; wall time is about the
    same there, three times that or more on a loaded one). A start-up that gains less than
    :data:`MIN_PROGRESS_CPU_S` in ``stall`` seconds is hung, not slow, and fails then;
    ``wall`` caps the wait whatever the progress. ``stop``: seconds between SIGTERM and
    SIGKILL. Without /proc, ``ready`` is wall-clock seconds."""

    ready: float
    stop: float
    stall: float = 60.0
    wall: float = 600.0


OPENSTACK_TIMEOUTS = Timeouts(ready=120.0, stop=20.0)  # Nova, Keystone
OIDC_TIMEOUTS = Timeouts(ready=60.0, stop=10.0)
MIN_PROGRESS_CPU_S = 0.5  # per Timeouts.stall: a slow start-up still gets a few percent

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def session_cpu_seconds(sid: int) -> float | None:
    """User + system CPU seconds of the processes in session ``sid`` (each with the children
    it reaped); an oracle server leads its own session. None without Linux's /proc."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return None
    ticks = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:  # after "(comm)": state ppid pgrp session ... utime stime cutime cstime
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[3]) == sid:
            ticks += sum(int(x) for x in fields[11:15])
    return ticks / _CLOCK_TICKS


def _await_ready(proc: subprocess.Popen[str], got_ready: threading.Event, t: Timeouts) -> str:
    """Wait for the ready line (or the end of the process): "" then, else why we gave up."""
    t0 = time.monotonic()
    cpu = 0.0
    progress_at, progress_cpu = t0, 0.0
    while not got_ready.wait(0.5):
        now = time.monotonic()
        measured = session_cpu_seconds(proc.pid)
        cpu = max(cpu, now - t0 if measured is None else measured)
        if cpu >= progress_cpu + MIN_PROGRESS_CPU_S:
            progress_at, progress_cpu = now, cpu
        if cpu > t.ready:
            return f"not ready after {cpu:.1f} s of CPU ({now - t0:.0f} s)"
        if now - progress_at > t.stall:
            return f"hung: under {MIN_PROGRESS_CPU_S} s of CPU in {t.stall:.0f} s (at {cpu:.1f} s)"
        if now - t0 > t.wall:
            return f"not ready after {now - t0:.0f} s ({cpu:.0f} s of CPU)"
    return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _flags(pairs: Sequence[tuple[str, object]]) -> list[str]:
    """``[flag, str(value)]`` for every pair whose value is not None, in order."""
    args: list[str] = []
    for flag, value in pairs:
        if value is not None:
            args += [flag, str(value)]
    return args


@contextlib.contextmanager
def _run_oracle(script: str, args: list[str], timeouts: Timeouts) -> Iterator[OracleInfo]:
    if not oracle_available():
        raise OracleError(f"{ORACLE_VENV} is missing or incomplete: {SETUP_HINT}")
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - handed to the child, closed below
        prefix=f"cloudvac-oracle-{Path(script).stem}-", suffix=".log", delete=False
    )
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # never leak cloudvac's path into the oracle venv
    env["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [str(ORACLE_PYTHON), str(HERE / script), *args]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        cwd=tempfile.gettempdir(),
        start_new_session=True,
    )
    log.close()
    ready: list[str] = []
    got_ready = threading.Event()
    tail: deque[str] = deque(maxlen=50)

    def drain() -> None:  # keep reading stdout so the child never blocks on a full pipe
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(READY_PREFIX) and not ready:
                ready.append(line[len(READY_PREFIX) :])
                got_ready.set()
            else:
                tail.append(line)
        got_ready.set()  # EOF: the process is gone

    reader = threading.Thread(target=drain, daemon=True, name=f"oracle-{script}")
    reader.start()
    keep_log = True
    try:
        gave_up = _await_ready(proc, got_ready, timeouts)
        if not ready:
            if not gave_up:  # its stdout closed: it is exiting
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
            state = gave_up or f"exited with code {proc.poll()}"
            raise OracleError(
                f"{script} {state}; stdout tail: {''.join(tail)[-2000:]!r}\n"
                f"log {log.name} tail:\n{_tail(log.name)}"
            )
        data = json.loads(ready[0])
        data.setdefault("launch_s", round(time.monotonic() - t0, 2))
        data.setdefault("launch_cpu_s", session_cpu_seconds(proc.pid))
        yield OracleInfo(
            kind=data["kind"],
            pid=proc.pid,
            base_url=data["base_url"],
            auth_url=data["auth_url"],
            username=data["username"],
            password=data["password"],
            project_name=data["project_name"],
            data=data,
            log_path=log.name,
        )
    except BaseException:
        keep_log = True  # startup failed or the test body raised: keep the server log
        raise
    else:
        keep_log = os.environ.get("CLOUDVAC_ORACLE_KEEP_LOGS") == "1"
    finally:
        _stop(proc, timeouts.stop)
        reader.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
        if keep_log:
            print(f"oracle {script} log kept: {log.name}", file=sys.stderr)
        else:
            with contextlib.suppress(OSError):
                os.unlink(log.name)


def _tail(path: str, chars: int = 4000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"<no log: {exc}>"


def _stop(proc: subprocess.Popen[str], stop_timeout: float) -> None:
    """SIGTERM, bounded wait, SIGKILL (whole process group), reap."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            print(
                f"oracle pid {proc.pid} ignored SIGTERM for {stop_timeout} s; SIGKILL",
                file=sys.stderr,
            )
    # the server runs in its own session: kill leftovers (e.g. keystone-manage) too
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@dataclass(frozen=True)
class NovaOptions:
    """Settings of a Nova oracle; None leaves the server's default (nova_server.py)."""

    quota_cores: int | None = None
    quota_instances: int | None = None
    max_limit: int | None = None  # [api] max_limit: the page size cap
    username: str | None = None  # of the built-in token shim
    password: str | None = None

    def args(self) -> list[str]:
        return _flags(
            (
                ("--quota-cores", self.quota_cores),
                ("--quota-instances", self.quota_instances),
                ("--max-limit", self.max_limit),
                ("--username", self.username),
                ("--password", self.password),
            )
        )


NOVA_DEFAULTS = NovaOptions()


def _as_keystone_user(info: OracleInfo, keystone: OracleInfo) -> OracleInfo:
    """``info`` of a server behind a real Keystone: clients authenticate there, as the
    Keystone oracle's user."""
    data = dict(
        info.data,
        auth_url=keystone.auth_url,
        username=keystone.username,
        password=keystone.password,
        project_name=keystone.project_name,
    )
    return OracleInfo(
        kind=info.kind,
        pid=info.pid,
        base_url=info.base_url,
        auth_url=keystone.auth_url,
        username=keystone.username,
        password=keystone.password,
        project_name=keystone.project_name,
        data=data,
        log_path=info.log_path,
    )


@contextlib.contextmanager
def nova_oracle(
    options: NovaOptions = NOVA_DEFAULTS,
    *,
    keystone: OracleInfo | None = None,
    glance: OracleInfo | None = None,
    port: int | None = None,
    timeouts: Timeouts = OPENSTACK_TIMEOUTS,
) -> Iterator[OracleInfo]:
    """Real Nova on 127.0.0.1. With ``keystone=`` (from :func:`keystone_oracle`) tokens are
    validated against that Keystone and Nova listens on the port registered in its catalog;
    otherwise the built-in token shim at ``<base>/identity/v3`` is the auth_url. With
    ``glance=`` (from :func:`glance_oracle`, needs ``keystone=``) Nova boots from the images
    of that real Glance (``image_id`` is then None) instead of its fixture's."""
    args: list[str] = []
    if glance is not None:
        if keystone is None:
            raise ValueError("nova_oracle(glance=...) needs keystone= (Glance checks tokens)")
        args += ["--glance-url", glance.base_url]
    if keystone is not None:
        args += ["--keystone-url", keystone.base_url]
        if port is None and keystone.get("compute_port"):
            port = int(keystone["compute_port"])
    if port is not None:
        args += ["--port", str(port)]
    args += options.args()
    with _run_oracle("nova_server.py", args, timeouts) as info:
        yield info if keystone is None else _as_keystone_user(info, keystone)


@dataclass(frozen=True)
class GlanceOptions:
    """Settings of a Glance oracle: ``user_storage_quota`` is Glance's per-owner storage
    quota (``"2MB"``, ``"500KB"``, bytes as ``"2097152"``; None: unlimited)."""

    user_storage_quota: str | None = None

    def args(self) -> list[str]:
        return _flags((("--user-storage-quota", self.user_storage_quota),))


GLANCE_DEFAULTS = GlanceOptions()


@contextlib.contextmanager
def glance_oracle(
    options: GlanceOptions = GLANCE_DEFAULTS,
    *,
    keystone: OracleInfo,
    timeouts: Timeouts = OPENSTACK_TIMEOUTS,
) -> Iterator[OracleInfo]:
    """Real Glance (images v2, SQLite, file store) on 127.0.0.1 behind ``keystone`` (from
    :func:`keystone_oracle`): it registers itself in that Keystone's catalog as the
    ``image`` service, and clients log in as the Keystone oracle's user. One stack where Nova
    boots from Glance's images::

        with (keystone_oracle() as ks, glance_oracle(keystone=ks) as gl,
              nova_oracle(keystone=ks, glance=gl) as nova):
            conn = openstack.connect(**nova.connect_kwargs())  # conn.image, conn.compute
    """
    args = ["--keystone-url", keystone.base_url, "--admin-password", keystone["admin_password"]]
    with _run_oracle("glance_server.py", args + options.args(), timeouts) as info:
        yield _as_keystone_user(info, keystone)


@dataclass(frozen=True)
class KeystoneOptions:
    """Settings of a Keystone oracle.

    ``with_compute``: reserve a free port for a Nova started later with
    ``nova_oracle(keystone=ks)`` and register it in the catalog as
    ``http://127.0.0.1:<compute_port>/compute/v2.1``. ``app_credential``: create an
    application credential for the user. ``token_expiration``: ``[token] expiration``
    (seconds), for expiry tests."""

    with_compute: bool = True
    app_credential: bool = True
    token_expiration: int | None = None


@dataclass(frozen=True)
class FederationOptions:
    """OIDC federation of a Keystone oracle: IdP ``egi.eu`` trusting the issuer(s)
    (``oidc.issuer`` of :func:`keystone_oracle` plus ``oidc_issuers``), VO project ``vo``
    (default ``vo.example.eu``), ``protocols`` (default ``openid`` and ``oidc``), and the
    bearer shim on the federation auth URLs (validation by userinfo, or ``oidc_validation=
    "introspection"`` with ``introspection_client=(id, secret)``)."""

    oidc_issuers: Sequence[str] = ()
    vo: str | None = None
    protocols: Sequence[str] = ()
    authorization_ttl: int | None = None  # [federation] default_authorization_ttl, minutes
    oidc_validation: str | None = None
    introspection_client: tuple[str, str] | None = None

    def args(self, oidc: OidcOracle | None) -> list[str]:
        issuers = ([oidc.issuer] if oidc is not None else []) + list(self.oidc_issuers)
        if not issuers:
            raise ValueError("federation needs oidc= or FederationOptions(oidc_issuers=...)")
        args = ["--federation"]
        for issuer in issuers:
            args += ["--oidc-issuer", issuer]
        for proto in self.protocols:
            args += ["--protocol", proto]
        ttl = self.authorization_ttl
        client = self.introspection_client
        return args + _flags(
            (
                ("--vo", self.vo),
                ("--authorization-ttl", None if ttl is None else int(ttl)),
                ("--oidc-validation", self.oidc_validation),
                ("--introspection-client", None if client is None else ":".join(client)),
            )
        )


KEYSTONE_DEFAULTS = KeystoneOptions()


@contextlib.contextmanager
def keystone_oracle(
    options: KeystoneOptions = KEYSTONE_DEFAULTS,
    *,
    oidc: OidcOracle | None = None,
    federation: FederationOptions | None = None,
    timeouts: Timeouts = OPENSTACK_TIMEOUTS,
) -> Iterator[OracleInfo]:
    """Real Keystone on 127.0.0.1 (see :class:`KeystoneOptions`).

    With ``oidc=`` (a started :class:`OidcOracle`) or ``federation=``: OIDC federation as
    at an EGI FedCloud site (see :class:`FederationOptions`), trusting ``oidc``'s issuer."""
    args: list[str] = []
    compute_port = None
    if options.with_compute:
        compute_port = free_port()
        args += ["--compute-url", f"http://127.0.0.1:{compute_port}/compute/v2.1"]
    if not options.app_credential:
        args.append("--no-app-credential")
    if options.token_expiration is not None:
        args += ["--token-expiration", str(int(options.token_expiration))]
    if oidc is not None or federation is not None:
        args += (federation or FederationOptions()).args(oidc)
    with _run_oracle("keystone_server.py", args, timeouts) as info:
        if compute_port is not None:
            info.data["compute_port"] = compute_port
        yield info


# -- local OpenID Connect provider (tests/oracle/oidc_server.py) ----------------------------


DEFAULT_USER_SCOPE = "openid email profile eduperson_entitlement offline_access"
DEFAULT_REFRESH_SCOPE = "openid email profile eduperson_entitlement"


class OidcHTTPError(OracleError):
    """A non-2xx answer from the OIDC oracle (``status`` and parsed ``body``)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body!r}")
        self.status = status
        self.body = body


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def basic_auth(client_id: str, secret: str) -> str:
    """An ``Authorization`` header value for HTTP Basic client authentication."""
    raw = ":".join(urllib.parse.quote(x, safe="") for x in (client_id, secret)).encode()
    return "Basic " + base64.b64encode(raw).decode()


@dataclass(frozen=True)
class OidcClient:
    """A relying party of the OIDC oracle. Any client id/secret is accepted (the provider
    does not require registration), but a refresh token is bound to ``client_id``."""

    client_id: str = "cloudvac-rp"
    client_secret: str = "cloudvac-rp-secret"
    redirect_uri: str = "http://127.0.0.1/cb"


CLOUDVAC_RP = OidcClient()


@dataclass(frozen=True)
class OidcOptions:
    """Settings of the OIDC oracle; None leaves the server's default (oidc_server.py)."""

    access_token_lifetime: int | None = None  # seconds
    rotate_refresh_tokens: bool = False
    vo: str | None = None  # of the built-in service account
    client_id: str | None = None  # the built-in service account
    client_secret: str | None = None

    def args(self) -> list[str]:
        lifetime = self.access_token_lifetime
        args = _flags((("--access-token-lifetime", None if lifetime is None else int(lifetime)),))
        if self.rotate_refresh_tokens:
            args.append("--rotate-refresh-tokens")
        return args + _flags(
            (
                ("--vo", self.vo),
                ("--client-id", self.client_id),
                ("--client-secret", self.client_secret),
            )
        )


class OidcOracle:
    """Handle on the local OIDC provider started by :func:`oidc_oracle`.

    The provider keeps its port across :meth:`stop`/:meth:`start`/:meth:`restart`, and its
    state (users, refresh tokens, service accounts, signing key) survives a restart.
    :meth:`pause`/:meth:`resume` freeze the process (SIGSTOP) so requests hang instead of
    being refused. Helper methods use only the standard library (and never follow
    redirects).
    """

    http_timeout = 10.0  # seconds, for each request of the HTTP helpers

    def __init__(self, args: list[str], port: int, state_file: str, timeouts: Timeouts) -> None:
        self._args = args
        self.port = port
        self.state_file = state_file
        self._timeouts = timeouts
        self._stack: contextlib.ExitStack | None = None
        self._info: OracleInfo | None = None
        self._paused = False
        self.issuer = f"http://127.0.0.1:{port}"

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def info(self) -> OracleInfo:
        """Ready line of the current (or last) run."""
        if self._info is None:
            raise OracleError("OIDC oracle was never started")
        return self._info

    def __getitem__(self, key: str) -> Any:
        return self.info[key]

    @property
    def running(self) -> bool:
        return self._stack is not None

    def start(self) -> OracleInfo:
        if self._stack is not None:
            return self.info
        stack = contextlib.ExitStack()
        t0 = time.monotonic()
        info = self._launch(stack)
        info.data["launch_s"] = round(time.monotonic() - t0, 2)
        self._info = info
        self._stack = stack
        self._paused = False
        return info

    def _launch(self, stack: contextlib.ExitStack, attempts: int = 20) -> OracleInfo:
        """Start the server within ``stack``; the port may linger briefly after a stop."""
        for _ in range(attempts - 1):
            try:
                return stack.enter_context(
                    _run_oracle("oidc_server.py", self._args, self._timeouts)
                )
            except OracleError as exc:
                if "Address already in use" not in str(exc):
                    raise
                time.sleep(0.25)
        return stack.enter_context(_run_oracle("oidc_server.py", self._args, self._timeouts))

    def stop(self) -> None:
        """Stop the provider (SIGTERM, bounded wait, SIGKILL); connections are then refused."""
        if self._stack is None:
            return
        if self._paused:
            self.resume()
        stack, self._stack = self._stack, None
        stack.close()

    def restart(self) -> OracleInfo:
        self.stop()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP the provider: it accepts TCP connections but never answers."""
        os.kill(self.info.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        os.kill(self.info.pid, signal.SIGCONT)
        self._paused = False

    # -- HTTP helpers ----------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        form: dict[str, str] | None = None,
        authorization: str | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        """(status, headers, parsed JSON or text); never raises on HTTP errors.
        ``authorization``: the header's value (:func:`basic_auth`, ``"Bearer " + token``)."""
        headers: dict[str, str] = {}
        data = None
        if json_body is not None:
            data = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        elif form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif method in ("POST", "PUT"):
            data = b""
        if authorization is not None:
            headers["Authorization"] = authorization
        url = path if path.startswith("http") else self.issuer + path
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(req, timeout=self.http_timeout) as resp:
                status, hdrs, raw_body = resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            status, hdrs, raw_body = exc.code, dict(exc.headers), exc.read()
        text = raw_body.decode(errors="replace")
        try:
            body: Any = json.loads(text) if text.strip() else None
        except ValueError:
            body = text
        return status, hdrs, body

    def _ok(self, method: str, path: str, **kw: Any) -> Any:
        status, _, body = self.request(method, path, **kw)
        if not 200 <= status < 300:
            raise OidcHTTPError(status, body)
        return body

    def _ok_object(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        """As :meth:`_ok`, for the endpoints that answer a JSON object."""
        body = self._ok(method, path, **kw)
        if not isinstance(body, dict):
            raise OracleError(f"{method} {path}: expected a JSON object, got {body!r}")
        return body

    def set_user(self, sub: str, claims: dict[str, Any]) -> None:
        """Create or replace a user (``PUT /users/{sub}``); claims appear in userinfo."""
        self._ok("PUT", "/users/" + urllib.parse.quote(sub, safe=""), json_body=claims)

    def revoke_user_tokens(self, sub: str) -> None:
        """Revoke all access and refresh tokens of ``sub`` (refresh then gives 400
        ``invalid_grant``; userinfo with an old access token gives 401)."""
        self._ok("POST", "/users/" + urllib.parse.quote(sub, safe="") + "/revoke-tokens")

    def mint_tokens(
        self,
        sub: str,
        claims: dict[str, Any] | None = None,
        *,
        client: OidcClient = CLOUDVAC_RP,
        scope: str = DEFAULT_USER_SCOPE,
    ) -> dict[str, Any]:
        """Headless authorization-code flow (what a user does once in a browser): sets the
        user's claims if given, posts the consent form as ``sub``, exchanges the code with
        HTTP Basic client auth. Returns the token response (``access_token``,
        ``refresh_token``, ``id_token``, ``expires_in``, ``scope``, ``token_type``); the
        refresh token is bound to ``client.client_id``."""
        if claims is not None:
            self.set_user(sub, claims)
        query = urllib.parse.urlencode(
            {
                "response_type": "code",
                "client_id": client.client_id,
                "redirect_uri": client.redirect_uri,
                "scope": scope,
                "state": uuid.uuid4().hex,
            }
        )
        status, headers, body = self.request(
            "POST", "/oauth2/authorize?" + query, form={"sub": sub}
        )
        location = headers.get("Location", "")
        code = urllib.parse.parse_qs(urllib.parse.urlparse(location).query).get("code")
        if status != 302 or not code:
            raise OidcHTTPError(status, body)
        return self._ok_object(
            "POST",
            "/oauth2/token",
            form={
                "grant_type": "authorization_code",
                "code": code[0],
                "redirect_uri": client.redirect_uri,
            },
            authorization=basic_auth(client.client_id, client.client_secret),
        )

    def refresh(
        self,
        refresh_token: str,
        *,
        client_id: str = "cloudvac-rp",
        client_secret: str = "cloudvac-rp-secret",
        scope: str | None = DEFAULT_REFRESH_SCOPE,
    ) -> tuple[int, Any]:
        """One refresh-token grant as Check-in documents it: (status, JSON body)."""
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if scope:
            form["scope"] = scope
        status, _, body = self.request(
            "POST", "/oauth2/token", form=form, authorization=basic_auth(client_id, client_secret)
        )
        return status, body

    def client_credentials(
        self,
        client_id: str | None = None,
        client_secret: str | None = None,
        scope: str = DEFAULT_REFRESH_SCOPE,
    ) -> tuple[int, Any]:
        """One client-credentials grant (default: the built-in service account)."""
        cid = client_id or self.info["client_id"]
        secret = client_secret if client_secret is not None else self.info["client_secret"]
        status, _, body = self.request(
            "POST",
            "/oauth2/token",
            form={"grant_type": "client_credentials", "scope": scope},
            authorization=basic_auth(cid, secret),
        )
        return status, body

    def set_client(self, client_id: str, secret: str, claims: dict[str, Any]) -> dict[str, Any]:
        """Register/replace a service account; ``claims`` (e.g. ``eduperson_entitlement``)
        are served by userinfo/introspection; ``sub`` is derived (``<hex>@egi.eu``)."""
        return self._ok_object(
            "PUT",
            "/_oracle/clients/" + urllib.parse.quote(client_id, safe=""),
            json_body={"secret": secret, "claims": claims},
        )

    def delete_client(self, client_id: str) -> None:
        self._ok("DELETE", "/_oracle/clients/" + urllib.parse.quote(client_id, safe=""))

    def revoke_client_tokens(self, client_id: str) -> None:
        """Access tokens already issued to this service account stop validating."""
        self._ok(
            "POST", "/_oracle/clients/" + urllib.parse.quote(client_id, safe="") + "/revoke-tokens"
        )

    def userinfo(self, access_token: str) -> tuple[int, Any]:
        status, _, body = self.request("GET", "/userinfo", authorization="Bearer " + access_token)
        return status, body

    def configure(
        self, *, access_token_lifetime: int | None = None, rotate_refresh_tokens: bool | None = None
    ) -> dict[str, Any]:
        """Change settings at run time (applies to tokens issued afterwards)."""
        body: dict[str, Any] = {}
        if access_token_lifetime is not None:
            body["access_token_lifetime"] = int(access_token_lifetime)
        if rotate_refresh_tokens is not None:
            body["rotate_refresh_tokens"] = bool(rotate_refresh_tokens)
        return self._ok_object("POST", "/_oracle/config", json_body=body)

    def stats(self) -> dict[str, Any]:
        """Counters: ``token_requests``, ``token_requests_by_grant`` ({grant: n}),
        ``token_responses`` ({"<grant>:<status>": n}), ``userinfo_requests``,
        ``introspection_requests`` (kept across restarts)."""
        return self._ok_object("GET", "/_oracle/stats")

    def reset_stats(self) -> dict[str, Any]:
        return self._ok_object("POST", "/_oracle/stats/reset")


OIDC_DEFAULTS = OidcOptions()


@contextlib.contextmanager
def oidc_oracle(
    options: OidcOptions = OIDC_DEFAULTS,
    *,
    port: int | None = None,
    timeouts: Timeouts = OIDC_TIMEOUTS,
) -> Iterator[OidcOracle]:
    """Local OpenID Connect provider (issuer ``http://127.0.0.1:<port>``) with refresh-token
    grants and revocation (oidc-provider-mock) plus a client-credentials service account
    (``client_id``/``client_secret``, default ``cloudvac-sa``/``cloudvac-sa-secret``,
    entitled ``urn:mace:egi.eu:group:<vo>:role=vm_operator#aai.egi.eu``). Yields a started
    :class:`OidcOracle`; always stopped on exit (state file removed)."""
    port = port or free_port()
    state_dir = tempfile.mkdtemp(prefix="cloudvac-oidc-")
    state_file = os.path.join(state_dir, "state.json")
    args = ["--port", str(port), "--state-file", state_file, *options.args()]
    op = OidcOracle(args, port, state_file, timeouts)
    try:
        op.start()
        yield op
    finally:
        op.stop()
        shutil.rmtree(state_dir, ignore_errors=True)
