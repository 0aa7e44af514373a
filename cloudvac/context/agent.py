"""cloudvac in-VM agent: run the pilot, heartbeat, report how it ended, power the VM off.

Shipped verbatim in every VM's user_data with a JSON config, and run as::

    python3 agent.py --config /etc/cloudvac/agent.json [-- PILOT_COMMAND ARGS...]

It must stay ONE file, Python 3.6+ and standard library only: it runs on the image's python3
(CernVM/EL), where nothing else can be assumed.

Server contract: ``PUT {joboutputs_url}/{file}`` with ``Authorization: Bearer {token}`` and the
raw bytes as body. 204 means stored. 401/403/404/413/400 (bad token, another machine's path,
unknown machine, too large, bad name or malformed shutdown_message) and any other 4xx except
408/429 are permanent: that request is dropped and logged. 408, 429, 5xx, timeouts and
connection errors are retried with exponential backoff and jitter until a deadline. Files:

- ``heartbeat_file`` (default ``heartbeat``): ``"<unix time> <1-min load>\\n"``, the first at once,
  then every ``heartbeat_period_seconds``; a heartbeat's retries end before the next one is due.
- ``shutdown_message``: one line ``NNN text`` (HSF-TN-2016-04, no trailing newline), uploaded
  first when the pilot is done: a valid line in ``shutdown_message_path`` if the pilot wrote one,
  else ``100 Shutdown as requested`` if the agent got SIGTERM/SIGINT, else ``200 Success`` for
  exit 0, else ``700 Failed, probably JobAgent or Application problem (exit N)``. If the server
  rejects the pilot's line with 400, the agent's own line is sent instead.
- each of ``logs`` under its basename, only its last ``max_log_bytes``; missing files skipped.

Final uploads share ``final_upload_seconds``; then heartbeats stop and ``poweroff_command`` runs.
On SIGTERM/SIGINT the pilot's process group gets SIGTERM, and SIGKILL after
``terminate_grace_seconds`` (30). Without a pilot command the agent only heartbeats until
SIGTERM/SIGINT, then ends the same way. Exit status 0; 2 for a bad command line or config, in
which case nothing runs and nothing is powered off.

So that a dead manager, a revoked token or a deleted project cannot leave a VM running, the agent
also ends it as on SIGTERM once the wall clock reaches ``deadline`` (unix time), sending ``700
Exceeded max_wallclock_seconds``, or once ``unreachable_poweroff_seconds`` passed without an
answer from the manager (counted from the start), sending ``700 Manager unreachable``; null or
absent: no such limit. An answer is a 2xx or a non-retried 4xx other than 401/403/404/410 (those
say the manager no longer knows or accepts this VM: token expired or revoked, machine ended or
unknown); retried failures are no answer. The pilot's own line is then ignored (cut short, it
cannot say why the VM stopped) and the final uploads get at most ``SELF_END_UPLOAD_SECONDS``.

The token is a secret: never logged, never given to a child process (argv or environment;
environment variables containing it are dropped), never written, and replaced by ``***`` in
uploaded logs.
"""

# ruff: noqa: UP006, UP035, UP045
# (typing.List/Optional instead of list[...] and X | None: those fail at runtime on Python 3.6.)

import argparse
import contextlib
import http.client
import json
import os
import random
import re
import shlex
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from types import FrameType
from typing import Any, Callable, Dict, List, Optional, Tuple

FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# The server takes codes 100-799; control characters would break its one-line format.
SHUTDOWN_RE = re.compile(r"[1-7][0-9]{2} [^\x00-\x1f\x7f]+")
MAX_SHUTDOWN_LINE = 4 + 200  # "NNN " and the text the server keeps
TOKEN_RE = re.compile(r"[\x21-\x7e]+")  # no whitespace: it goes verbatim into a header
SHUTDOWN_FILE = "shutdown_message"
FAILED_TEXT = "Failed, probably JobAgent or Application problem"
REQUESTED = "100 Shutdown as requested"
LOST = (401, 403, 404, 410)  # the manager no longer knows or accepts this VM
SELF_END_UPLOAD_SECONDS = 60.0  # the manager is likely gone: don't linger
RETRY_BASE_SECONDS, RETRY_MAX_SECONDS = 0.5, 30.0
DEFAULTS: Dict[str, Any] = {
    "heartbeat_period_seconds": 60.0, "heartbeat_file": "heartbeat", "logs": [],
    "max_log_bytes": 1048576, "shutdown_message_path": None,
    "poweroff_command": ["systemctl", "poweroff"], "final_upload_seconds": 300.0,
    "request_timeout_seconds": 20.0, "ca_file": None, "terminate_grace_seconds": 30.0,
    "unreachable_poweroff_seconds": None, "deadline": None}

_secrets: List[str] = []
_log_lock = threading.Lock()


def log(message: str) -> None:
    for secret in _secrets:
        message = message.replace(secret, "***")
    with _log_lock:
        sys.stderr.write(f"{_utc(time.time())} cloudvac-agent: {message}\n")
        sys.stderr.flush()


def _utc(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


class ConfigError(Exception):
    pass


class Config:
    def __init__(self, raw: Dict[str, Any]) -> None:
        unknown = sorted(set(raw) - set(DEFAULTS) - {"joboutputs_url", "token"})
        if unknown:
            # A newer server may render keys this agent does not know: say so, carry on.
            log("ignoring unknown config keys: " + ", ".join(unknown))
        token = _string(raw, "token", None)
        if not token or not TOKEN_RE.fullmatch(token):
            raise ConfigError("token: required, printable ASCII without spaces")
        _secrets.append(token)
        self.token: str = token
        url = _string(raw, "joboutputs_url", None)
        if not url or not url.startswith(("http://", "https://")):
            raise ConfigError("joboutputs_url: required http:// or https:// URL")
        self.joboutputs_url = url.rstrip("/")
        self.heartbeat_period_seconds = _number(raw, "heartbeat_period_seconds")
        self.heartbeat_file = _string(raw, "heartbeat_file", DEFAULTS["heartbeat_file"]) or ""
        if not FILE_NAME_RE.fullmatch(self.heartbeat_file) or self.heartbeat_file == SHUTDOWN_FILE:
            raise ConfigError("heartbeat_file: not an allowed file name")
        self.logs = _string_list(raw, "logs")
        self.max_log_bytes = int(_number(raw, "max_log_bytes"))
        self.shutdown_message_path = _string(raw, "shutdown_message_path", None)
        self.poweroff_command = _string_list(raw, "poweroff_command")
        if not self.poweroff_command:
            raise ConfigError("poweroff_command: must not be empty")
        self.final_upload_seconds = _number(raw, "final_upload_seconds")
        self.request_timeout_seconds = _number(raw, "request_timeout_seconds")
        self.ca_file = _string(raw, "ca_file", None)
        self.terminate_grace_seconds = _number(raw, "terminate_grace_seconds")
        self.unreachable_poweroff_seconds, self.deadline = (
            None if raw.get(key) is None else _number(raw, key)
            for key in ("unreachable_poweroff_seconds", "deadline"))


def _string(raw: Dict[str, Any], key: str, default: Optional[str]) -> Optional[str]:
    value = raw.get(key, default)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{key}: must be a string")
    return value


def _number(raw: Dict[str, Any], key: str) -> float:
    value = raw.get(key, DEFAULTS[key])
    # bool is an int in Python, but "heartbeat_period_seconds": true is surely a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{key}: must be a positive number")
    return float(value)


def _string_list(raw: Dict[str, Any], key: str) -> List[str]:
    value = raw.get(key, DEFAULTS[key])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{key}: must be a list of strings")
    return list(value)


def load_config(path: str) -> Config:
    try:
        with open(path, "rb") as handle:
            raw = json.loads(handle.read().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must hold a JSON object")
    return Config(raw)


class Uploader:
    def __init__(self, config: Config) -> None:
        self.config = config
        # No environment proxies: http_proxy on a VM usually points at a CVMFS squid, which
        # must not see the token. Redirects are never followed for PUT, so it cannot leak.
        handlers: List[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if self.config.joboutputs_url.startswith("https://"):
            context = ssl.create_default_context(cafile=config.ca_file)
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self.opener = urllib.request.build_opener(*handlers)
        # The manager's last answer (monotonic); starting counts. A float swap is atomic.
        self.answered_at = time.monotonic()

    def put(self, name: str, body: bytes, deadline: float,
            stop: Optional[threading.Event] = None) -> Tuple[Optional[int], str]:
        """Upload until stored, refused for good, past deadline or stopped: (status, problem).
        Only the heartbeat passes ``stop``; it logs state changes itself, so this stays quiet."""
        say: Callable[[str], None] = log if stop is None else (lambda message: None)
        attempt, what = 0, "not tried"
        status: Optional[int] = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0.05 or (stop is not None and stop.is_set()):
                say(f"PUT {name}: gave up after {attempt} tries: {what}")
                return status, what
            status, detail = self._once(name, body, min(self.config.request_timeout_seconds,
                                                        remaining))
            what = f"HTTP {status} {detail}" if status else detail
            if status is not None and 200 <= status < 300:
                self.answered_at = time.monotonic()
                say(f"PUT {name}: stored ({len(body)} bytes)")
                return status, ""
            if status is not None and status < 500 and status not in (408, 429):
                if status >= 400 and status not in LOST:  # see the module docstring
                    self.answered_at = time.monotonic()
                say(f"PUT {name}: refused, not retried: {what}")
                return status, what
            delay = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** attempt)
            delay = min(delay * random.uniform(0.5, 1.5), deadline - time.monotonic())
            attempt += 1
            say(f"PUT {name}: {what}; retry {attempt} in {max(delay, 0):.1f}s")
            if delay > 0:
                (stop or threading.Event()).wait(delay)

    def _once(self, name: str, body: bytes, timeout: float) -> Tuple[Optional[int], str]:
        request = urllib.request.Request(
            self.config.joboutputs_url + "/" + name, data=body, method="PUT",
            headers={"Authorization": "Bearer " + self.config.token,
                     "Content-Type": "application/octet-stream"})
        try:
            with self.opener.open(request, timeout=timeout) as response:
                response.read()
                return int(response.getcode()), ""
        except urllib.error.HTTPError as exc:
            try:
                detail = exc.read(2048).decode("utf-8", "replace")
                detail = str(json.loads(detail).get("detail", detail))
            except (OSError, ValueError, AttributeError, http.client.HTTPException):
                detail = exc.reason if isinstance(exc.reason, str) else ""
            finally:
                exc.close()
            return exc.code, detail[:200]
        except (OSError, http.client.HTTPException) as exc:  # refused, timeout, TLS, reset...
            reason = getattr(exc, "reason", None)  # URLError wraps the interesting one
            cause = reason if isinstance(reason, BaseException) else exc
            return None, f"{type(cause).__name__}: {cause}"


class Agent:
    def __init__(self, config: Config, command: List[str]) -> None:
        self.config = config
        self.command = command
        self.uploader = Uploader(config)
        # (why, shutdown line) once the VM is to end before its pilot does; the first stays.
        self.ending: Optional[Tuple[str, str]] = None
        # Popen[bytes] is not subscriptable on 3.6, but annotations in functions are not evaluated.
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.terminated_at: Optional[float] = None
        token = config.token
        self.child_env = {key: value for key, value in os.environ.items()
                          if token not in key and token not in value}

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        # Only flags and kill here: logging could re-enter a half-done stderr write.
        if self.ending is None:
            self.ending = ("got " + signal.Signals(signum).name, REQUESTED)
        self._terminate()

    def _check_lease(self) -> Optional[Tuple[str, str]]:
        """``ending``, first set if the VM must end on its own (see the module docstring)."""
        end, limit = self.config.deadline, self.config.unreachable_poweroff_seconds
        if self.ending is None and end is not None and time.time() >= end:
            self.ending = (f"deadline {_utc(end)} passed", "700 Exceeded max_wallclock_seconds")
        silent = time.monotonic() - self.uploader.answered_at
        if self.ending is None and limit is not None and silent > limit:
            self.ending = (f"no answer from the manager for {limit:g}s", "700 Manager unreachable")
        return self.ending

    def _terminate(self) -> None:
        if self.proc is not None and self.proc.returncode is None and self.terminated_at is None:
            self.terminated_at = time.monotonic()
            _kill_group(self.proc.pid, signal.SIGTERM)

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        log(f"started; joboutputs {self.config.joboutputs_url}, heartbeat every "
            f"{self.config.heartbeat_period_seconds}s, deadline {self.config.deadline}, "
            f"unreachable_poweroff_seconds {self.config.unreachable_poweroff_seconds}")
        stopped = threading.Event()
        heartbeat = threading.Thread(target=self._heartbeat, args=(stopped,), daemon=True)
        heartbeat.start()
        try:
            fallback = self._run_pilot() if self.command else self._idle()
            self._final_uploads(fallback)
        except Exception as exc:  # whatever went wrong, the VM must still stop
            log(f"internal error: {exc!r}")
        finally:
            stopped.set()
            # The in-flight PUT may hold the thread a while; it is a daemon, so don't wait long.
            heartbeat.join(1.0)
            self._poweroff()
        return 0

    def _heartbeat(self, stopped: threading.Event) -> None:
        period = self.config.heartbeat_period_seconds
        due, last = time.monotonic(), "not tried"
        while not stopped.is_set():
            try:
                load = os.getloadavg()[0]
            except OSError:
                load = 0.0
            body = f"{int(time.time())} {load:.2f}\n".encode("ascii")
            try:
                # Never past the next heartbeat's slot: a stale retry is worth less than it.
                _, what = self.uploader.put(self.config.heartbeat_file, body, due + period,
                                            stopped)
            except Exception as exc:  # a bug here must not end the heartbeats
                what = f"internal error {exc!r}"
            # Once per change, not per try: an outage of hours must not flood the journal.
            if what != last and not stopped.is_set():
                log(f"heartbeat failing: {what}" if what else "heartbeat accepted")
            last = what
            due = max(due + period, time.monotonic())
            stopped.wait(due - time.monotonic())

    def _idle(self) -> str:
        ending = self._check_lease()
        while ending is None:
            time.sleep(0.2)
            ending = self._check_lease()
        log(f"{ending[0]}; no pilot to stop")
        return ending[1]

    def _run_pilot(self) -> str:
        for key in set(os.environ) - set(self.child_env):
            log(f"not passing environment variable {key} to child processes")
        if self._check_lease() is not None:  # a signal or the lease: never start the pilot
            return self._idle()
        log("starting pilot: " + " ".join(shlex.quote(arg) for arg in self.command))
        try:
            # Own process group, so SIGTERM/SIGKILL also reach whatever the pilot spawned.
            self.proc = subprocess.Popen(self.command, env=self.child_env,
                                         start_new_session=True)
        except OSError as exc:
            log(f"cannot start pilot: {exc}")
            # 500 = environment problem: every VM of this image would fail, so back off.
            return f"500 Cannot start pilot: {exc}"[:204]
        proc = self.proc
        announced = killed = False
        while True:
            try:
                code = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
            ending = self._check_lease()
            if ending is not None:
                self._terminate()  # a signal may have come before self.proc was set
                if not announced:
                    log(f"{ending[0]}; sent SIGTERM to pilot {proc.pid}")
                    announced = True
                grace = self.config.terminate_grace_seconds
                if (not killed and self.terminated_at is not None
                        and time.monotonic() - self.terminated_at > grace):
                    log(f"pilot still running {grace}s after SIGTERM: SIGKILL")
                    _kill_group(proc.pid, signal.SIGKILL)
                    killed = True
        how = f"killed by signal {-code}" if code < 0 else f"exit {code}"
        ending = self.ending
        log("pilot ended: " + how + (f" ({ending[0]})" if ending else ""))
        if ending is not None:
            return ending[1]
        return "200 Success" if code == 0 else f"700 {FAILED_TEXT} ({how})"

    def _pilot_message(self) -> Optional[str]:
        path = self.config.shutdown_message_path
        if not path or not os.path.exists(path):
            return None
        try:
            with open(path, "rb") as handle:
                lines = handle.read(4096).decode("utf-8", "replace").strip().splitlines()
        except OSError as exc:
            log(f"cannot read {path}: {exc}")
            return None
        line = lines[0].strip() if lines else ""
        if SHUTDOWN_RE.fullmatch(line):
            return line[:MAX_SHUTDOWN_LINE].rstrip()
        log(f"ignoring {path}: not a 'NNN text' line: {line[:80]!r}")
        return None

    def _final_uploads(self, fallback: str) -> None:
        seconds, messages = self.config.final_upload_seconds, [fallback]
        if self.ending is not None and self.ending[1] != REQUESTED:  # the agent's own decision
            seconds = min(seconds, SELF_END_UPLOAD_SECONDS)
        else:
            own = self._pilot_message() or fallback
            messages = [own, fallback] if own != fallback else messages
        deadline = time.monotonic() + seconds
        for message in messages:
            log("shutdown_message: " + message)
            status, _ = self.uploader.put(SHUTDOWN_FILE, message.encode("utf-8"), deadline)
            if status != 400:
                break
        seen = {SHUTDOWN_FILE, self.config.heartbeat_file}
        for path in self.config.logs:
            name = os.path.basename(path)
            if not FILE_NAME_RE.fullmatch(name) or name in seen:
                log(f"skipping log {path}: name not allowed or already used")
                continue
            try:
                with open(path, "rb") as handle:
                    size = handle.seek(0, os.SEEK_END)
                    handle.seek(max(0, size - self.config.max_log_bytes))
                    data = handle.read(self.config.max_log_bytes)
            except OSError as exc:
                log(f"skipping log {path}: {exc}")
                continue
            seen.add(name)
            if size > len(data):
                log(f"log {path}: {size} bytes, only the last {len(data)} go")
            self.uploader.put(name, data.replace(self.config.token.encode("ascii"), b"***"),
                              deadline)

    def _poweroff(self) -> None:
        command = self.config.poweroff_command
        log("powering off: " + " ".join(shlex.quote(arg) for arg in command))
        try:
            code = subprocess.call(command, env=self.child_env, timeout=120)
            if code != 0:
                log(f"poweroff command exited {code}")
        except (OSError, subprocess.SubprocessError) as exc:
            log(f"poweroff command failed: {exc}")


def _kill_group(pid: int, signum: int) -> None:
    with contextlib.suppress(OSError):  # already gone
        os.killpg(pid, signum)


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # Split by hand: argparse would try to read the pilot's own --options.
    split = args.index("--") if "--" in args else len(args)
    args, command = args[:split], args[split + 1:]
    parser = argparse.ArgumentParser(prog="agent.py", description="cloudvac in-VM agent")
    parser.add_argument("--config", required=True, help="JSON config file")
    options = parser.parse_args(args)
    try:
        agent = Agent(load_config(options.config), command)
    except (ConfigError, OSError) as exc:  # OSError: from ssl, ca_file missing or not PEM
        log(f"bad config: {'' if isinstance(exc, ConfigError) else 'ca_file: '}{exc}")
        return 2
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
