"""One real PostgreSQL server per test run (a pytest plugin; ``tests/conftest.py`` loads it).

Fixtures:

* ``pg_server`` (session): started the first time a test asks for it, stopped at the end of
  the run.  ``initdb`` into a fresh directory under the system's temporary directory, then
  ``postgres`` listening only on a Unix socket in that directory and on 127.0.0.1 (a free
  port); no durability (``fsync=off``), small buffers.  Root may not run the server, so as
  root it runs as the ``postgres`` system user (the Debian package creates it), otherwise
  as the current user.  The superuser ``cloudvac`` logs in with a password over TCP.
  Debian's own cluster and service are never used.  A run killed before its teardown
  stops the server too (``setpriv --pdeathsig``), but leaves its directory behind.
* ``pg_url`` (function): the SQLAlchemy URL of a new, empty database of its own on that
  server (``postgresql+psycopg://cloudvac:...@127.0.0.1:PORT/t_...``), dropped afterwards.
* ``store_url`` (function, params ``sqlite`` and ``postgresql``): a store URL on either
  backend; the server only starts for the ``postgresql`` one.

Waits are bounded by the server's own progress, never by a short fixed clock: the start
waits for the server to accept a login for up to ``START_BUDGET_S`` and fails at once, with
the tail of its log, if it exits.  A test using the server is timed (pytest-timeout) on its
body only, as the first one to ask starts the server in its set-up.

Binaries: ``initdb`` on PATH, else the newest ``/usr/lib/postgresql/<version>/bin``;
``scripts/system-deps.sh`` (``make system-deps``) installs Debian's ``postgresql``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import URL

START_BUDGET_S = 120.0
"""How long the server may take to accept its first login (wall clock)."""
TOOL_TIMEOUT_S = 300.0
"""Bound of one run of initdb or pg_ctl (they finish in seconds; a loaded machine is slow)."""
STOP_WAIT_S = 60
SUPERUSER = "cloudvac"
BIND_ATTEMPTS = 3  # the free port chosen may be taken before the server binds it
INSTALL_HINT = "run `make system-deps` (scripts/system-deps.sh installs Debian's postgresql)"
_NAMES = itertools.count(1)
_STARTED = pytest.StashKey[float]()


class PostgresError(RuntimeError):
    """The test server could not be set up or started; the message says why."""


def find_bindir() -> Path | None:
    """The directory holding initdb, postgres and pg_ctl, or None."""
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path is not None:
        candidates.append(Path(on_path).resolve().parent)

    def version(path: Path) -> tuple[int, ...]:
        number = path.parent.name
        return tuple(int(part) for part in number.split(".")) if number[:1].isdigit() else ()

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for candidate in candidates:
        if all((candidate / tool).is_file() for tool in ("initdb", "postgres", "pg_ctl")):
            return candidate
    return None


def server_account() -> pwd.struct_passwd | None:
    """Who runs the server: None for the current user; as root (which PostgreSQL refuses)
    the ``postgres`` system user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresError("running as root and there is no 'postgres' user to run the "
                            f"server as: {INSTALL_HINT}") from None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"(no log: {exc})"


class PostgresServer:
    """A private PostgreSQL server in ``base`` (a new temporary directory)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.account = server_account()
        self.base = Path(tempfile.mkdtemp(prefix="cloudvac-pg-", dir=self._parent()))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.password = secrets.token_hex(16)
        self.port = 0
        self.start_seconds = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        if self.account is not None:
            os.chown(self.base, self.account.pw_uid, self.account.pw_gid)

    def _parent(self) -> str:
        """The temporary directory, if the server's user can reach it (root's TMPDIR may
        not be), else /tmp."""
        parent = Path(tempfile.gettempdir()).resolve()
        if self.account is None or all(
                os.stat(p).st_mode & stat.S_IXOTH for p in (parent, *parent.parents)):
            return str(parent)
        return "/tmp"

    # -- running the server's tools as the server's user ----------------------------------

    def _as_server(self) -> dict[str, Any]:
        """Keyword arguments that make a subprocess run as the server's user."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C",
               "HOME": str(self.base), "TZ": "UTC"}
        kwargs: dict[str, Any] = {"cwd": self.base, "env": env, "stdin": subprocess.DEVNULL}
        if self.account is not None:
            kwargs.update(user=self.account.pw_uid, group=self.account.pw_gid,
                          extra_groups=[])
        return kwargs

    def _tool(self, name: str, *args: str) -> None:
        try:
            done = subprocess.run([str(self.bindir / name), *args], capture_output=True,
                                  timeout=TOOL_TIMEOUT_S, check=False, **self._as_server())
        except subprocess.TimeoutExpired:
            raise PostgresError(f"{name} did not finish in {TOOL_TIMEOUT_S:.0f} s") from None
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")[-3000:]
            raise PostgresError(f"{name} failed ({done.returncode}):\n{output}")

    def initdb(self) -> None:
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.account is not None:
            os.chown(pwfile, self.account.pw_uid, self.account.pw_gid)
        try:
            self._tool("initdb", "-D", str(self.data), "-U", SUPERUSER, f"--pwfile={pwfile}",
                       "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                       "--no-locale", "--no-sync", "--no-instructions")
        finally:
            pwfile.unlink(missing_ok=True)

    # -- start and stop -------------------------------------------------------------------

    def start(self) -> None:
        """initdb, then start the server; PostgresError (with the log's tail) if it fails."""
        t0 = time.monotonic()
        self.initdb()
        for attempt in range(1, BIND_ATTEMPTS + 1):
            self.port = free_port()
            with open(self.log, "ab") as log:
                self._proc = self._spawn(log)
            why = self._await_ready()
            if why is None:
                self.start_seconds = time.monotonic() - t0
                return
            self._halt()
            if "could not bind" not in tail(self.log) or attempt == BIND_ATTEMPTS:
                raise PostgresError(f"PostgreSQL ({self.bindir}) {why}; log {self.log}:\n"
                                    f"{tail(self.log)}")

    def _spawn(self, log: IO[bytes]) -> subprocess.Popen[bytes]:
        settings = {
            "listen_addresses": "127.0.0.1", "port": str(self.port),
            "unix_socket_directories": str(self.base), "fsync": "off",
            "synchronous_commit": "off", "full_page_writes": "off",
            "shared_buffers": "16MB", "max_connections": "100", "logging_collector": "off",
        }
        args = [str(self.bindir / "postgres"), "-D", str(self.data)]
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        setpriv = shutil.which("setpriv")  # util-linux, Essential in Debian
        if setpriv is not None:
            # a test run killed before its teardown (SIGKILL, SIGTERM) still stops the
            # server: SIGINT (fast shutdown) when the thread that started it ends
            args = [setpriv, "--pdeathsig", "INT", "--", *args]
        # its own session: a ^C to the test run reaches pytest, whose teardown stops it
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, **self._as_server())

    def _await_ready(self) -> str | None:
        """None once the superuser can log in over TCP; else why not (the server exited,
        or did not accept a login within START_BUDGET_S)."""
        assert self._proc is not None
        deadline = time.monotonic() + START_BUDGET_S
        last = "no attempt"
        for _ in range(int(START_BUDGET_S / 0.05)):  # a bound on the count too
            code = self._proc.poll()
            if code is not None:
                return f"exited with status {code} before accepting connections"
            try:
                with self.connect(host="127.0.0.1", dbname="postgres"):
                    return None
            except psycopg.OperationalError as exc:
                last = str(exc).strip()
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        return f"did not accept a login in {START_BUDGET_S:.0f} s (last error: {last})"

    def stop(self) -> None:
        """Stop the server (``pg_ctl stop -m fast``, then kill) and remove its directory."""
        try:
            self._halt()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def _halt(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(PostgresError):
            self._tool("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w",
                       "-t", str(STOP_WAIT_S))
        try:
            proc.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_WAIT_S)

    # -- databases ------------------------------------------------------------------------

    def connect(self, host: str | None = None, dbname: str = "postgres") -> psycopg.Connection[
            Any]:
        """An autocommit connection as the superuser: over TCP with ``host`` 127.0.0.1,
        else over the Unix socket."""
        return psycopg.connect(host=host or str(self.base), port=self.port, user=SUPERUSER,
                               password=self.password, dbname=dbname, autocommit=True,
                               connect_timeout=30)

    def url(self, database: str, driver: str = "postgresql+psycopg", **changes: Any) -> str:
        """A SQLAlchemy URL of ``database`` over TCP, with the password (``changes`` alter
        any part: ``password=``, ``port=``...)."""
        parts: dict[str, Any] = {"username": SUPERUSER, "password": self.password,
                                 "host": "127.0.0.1", "port": self.port, "database": database}
        parts.update(changes)
        return URL.create(driver, **parts).render_as_string(hide_password=False)

    def create_database(self) -> str:
        """A new empty database; its name."""
        name = f"t_{os.getpid()}_{next(_NAMES)}_{secrets.token_hex(3)}"
        with self.connect() as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name``, closing whatever connections a test left open on it."""
        with self.connect() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


# -- pytest ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server(pytestconfig: pytest.Config) -> Iterator[PostgresServer]:
    """The run's PostgreSQL server (see the module's docstring)."""
    bindir = find_bindir()
    if bindir is None:
        pytest.fail(f"no PostgreSQL server (initdb) found: {INSTALL_HINT}", pytrace=False)
    try:
        server = PostgresServer(bindir)
    except PostgresError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        server.start()
    except PostgresError as exc:
        server.stop()
        pytest.fail(str(exc), pytrace=False)
    pytestconfig.stash[_STARTED] = server.start_seconds
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database of this test's own; dropped afterwards."""
    name = pg_server.create_database()
    try:
        yield pg_server.url(name)
    finally:
        pg_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL on each backend: a SQLite file (whose directory does not exist yet), or
    a fresh PostgreSQL database (``pg_url``)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'cloudvac.db'}"
    return str(request.getfixturevalue("pg_url"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    seconds = config.stash.get(_STARTED, None)
    if seconds is not None:
        terminalreporter.write_line(f"PostgreSQL test server: initdb and start: {seconds:.1f} s")


def uses_postgres(item: pytest.Item) -> bool:
    fixtures = getattr(item, "fixturenames", ())
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    return "pg_server" in fixtures or params.get("store_url") == "postgresql"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the server are timed on their body only (pytest-timeout ``func_only``): the
    first one starts the server in its set-up, which is bounded above.  An explicit
    timeout of a test is kept."""
    for item in items:
        if not uses_postgres(item):
            continue
        marker = item.get_closest_marker("timeout")
        if marker is None:
            item.add_marker(pytest.mark.timeout(func_only=True))
        elif not marker.kwargs.get("func_only"):
            kwargs = {**marker.kwargs, "func_only": True}
            # positional: (timeout, method, func_only)
            item.add_marker(pytest.mark.timeout(*marker.args[:2], **kwargs), append=False)
