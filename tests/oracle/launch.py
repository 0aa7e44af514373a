"""Start/stop the real-OpenStack oracles (tests/oracle/*_server.py) from cloudvac's tests.

Runs in cloudvac's own venv and uses the standard library only. The servers themselves run
as subprocesses with ``.venv-oracle/bin/python`` (built by ``tests/oracle/setup.sh``).

    with nova_oracle(quota_cores=6, max_limit=2) as nova:
        openstack.connect(auth_url=nova.auth_url, username=nova.username, ...)

    with keystone_oracle() as ks, nova_oracle(keystone=ks) as nova:
        ...   # Nova validates tokens against the real Keystone; its catalog lists Nova

Every context manager waits for the server's ready line (bounded), and on exit - also when
the body raised - sends SIGTERM, waits a bounded time, SIGKILLs if needed and reaps.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _run_oracle(
    script: str, args: list[str], timeout: float, stop_timeout: float
) -> Iterator[OracleInfo]:
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
        got_ready.wait(timeout)
        if not ready:
            state = (
                (f"exited with code {proc.poll()}")
                if proc.poll() is not None
                else f"not ready after {timeout:.0f} s"
            )
            raise OracleError(
                f"{script} {state}; stdout tail: {''.join(tail)[-2000:]!r}\n"
                f"log {log.name} tail:\n{_tail(log.name)}"
            )
        data = json.loads(ready[0])
        data.setdefault("launch_s", round(time.monotonic() - t0, 2))
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
        _stop(proc, stop_timeout)
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


@contextlib.contextmanager
def nova_oracle(
    *,
    keystone: OracleInfo | None = None,
    port: int | None = None,
    quota_cores: int | None = None,
    quota_instances: int | None = None,
    max_limit: int | None = None,
    username: str | None = None,
    password: str | None = None,
    timeout: float = 120.0,
    stop_timeout: float = 20.0,
) -> Iterator[OracleInfo]:
    """Real Nova on 127.0.0.1. With ``keystone=`` (from :func:`keystone_oracle`) tokens are
    validated against that Keystone and Nova listens on the port registered in its catalog;
    otherwise the built-in token shim at ``<base>/identity/v3`` is the auth_url."""
    args: list[str] = []
    if keystone is not None:
        args += ["--keystone-url", keystone.base_url]
        if port is None and keystone.get("compute_port"):
            port = int(keystone["compute_port"])
    if port is not None:
        args += ["--port", str(port)]
    for flag, value in (
        ("--quota-cores", quota_cores),
        ("--quota-instances", quota_instances),
        ("--max-limit", max_limit),
        ("--username", username),
        ("--password", password),
    ):
        if value is not None:
            args += [flag, str(value)]
    with _run_oracle("nova_server.py", args, timeout, stop_timeout) as info:
        if keystone is None:
            yield info
            return
        # with a real Keystone, clients authenticate there as the Keystone user
        data = dict(
            info.data,
            auth_url=keystone.auth_url,
            username=keystone.username,
            password=keystone.password,
            project_name=keystone.project_name,
        )
        yield OracleInfo(
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
def keystone_oracle(
    *,
    with_compute: bool = True,
    app_credential: bool = True,
    timeout: float = 120.0,
    stop_timeout: float = 20.0,
) -> Iterator[OracleInfo]:
    """Real Keystone on 127.0.0.1. With ``with_compute`` a free port is reserved for a Nova
    started later with ``nova_oracle(keystone=ks)`` and registered in the catalog as
    ``http://127.0.0.1:<compute_port>/compute/v2.1``."""
    args: list[str] = []
    compute_port = None
    if with_compute:
        compute_port = free_port()
        args += ["--compute-url", f"http://127.0.0.1:{compute_port}/compute/v2.1"]
    if not app_credential:
        args.append("--no-app-credential")
    with _run_oracle("keystone_server.py", args, timeout, stop_timeout) as info:
        if compute_port is not None:
            info.data["compute_port"] = compute_port
        yield info
