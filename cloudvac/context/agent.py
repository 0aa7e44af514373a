"""cloudvac in-VM agent: run the pilot, heartbeat, report how it ended, power the VM off.

Shipped verbatim in every VM's user_data with a JSON config, and run as::

    python3 agent.py --config /etc/cloudvac/agent.json [-- PILOT_COMMAND ARGS...]

It is the files of ``AGENT_FILES`` (``userdata.py``), which ship together into one directory:
this one, ``vmupload.py`` (log, config, HTTP to the manager) and ``vmfeatures.py`` (MJF). Each
is Python 3.6+ and standard library only: they run on the image's python3 (CernVM/EL), where
nothing else can be assumed; the package's copies import each other as ``cloudvac.context.*``.

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
- ``cpu_totals`` (after the pilot ran): ``"<user s> <system s> <idle s>\\n"``, the CPU time of the
  pilot's process tree (``getrusage(RUSAGE_CHILDREN)`` once it was reaped: every descendant
  reaped within the tree counts) and the VM's ``/proc/stat`` idle time over the pilot's run,
  ``-`` where unreadable; for the manager's accounting.
- each of ``logs`` under its basename, only its last ``max_log_bytes``; missing files skipped.

The pilot's user, not root, may own ``shutdown_message_path`` and ``logs``: a symbolic link there
is not followed and anything but a regular file is not read (each skipped with a log line).

Machine/Job Features (HSF-TN-2016-02): if ``machinefeatures_url`` and ``jobfeatures_url`` are
set and there is a pilot, the agent GETs ``{url}/{key}`` (same bearer token, no redirects) for
each key of ``MACHINE_KEYS``/``JOB_KEYS`` before starting the pilot (all of it within
``FEATURES_SECONDS``), and writes each value as one file (0644, atomically) under
``{features_dir}/machinefeatures`` and ``{features_dir}/jobfeatures`` (0755; not through a
symbolic link); a 404 removes that key's file. The pilot gets ``MACHINEFEATURES`` and
``JOBFEATURES`` set to those directories as ``file://`` URLs: DIRAC's pilot (``pilotTools``:
``allocated_cpu``), its ``getMemoryFromMJF`` and its MJF TimeLeft plugin read them with
``urlopen``, which refuses a bare path. After each heartbeat the agent fetches ``CHANGING_KEYS``
again (everything, until a complete fetch once succeeded), within half a heartbeat period. A
failed fetch keeps the files already written, is logged once per change, and never stops the
pilot. (``vmfeatures.py`` holds the key lists.)

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
import errno
import os
import re
import resource
import shlex
import signal
import stat
import subprocess
import sys
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING, BinaryIO, List, Optional, Tuple

if TYPE_CHECKING or __package__:  # in the cloudvac package: the manager, the tests
    from cloudvac.context import vmfeatures, vmupload
else:  # on the VM: the agent's files side by side, their directory is sys.path[0]
    import vmfeatures
    import vmupload

log = vmupload.log  # the one log of the agent's modules: it masks the token

# The server takes codes 100-799; control characters would break its one-line format.
SHUTDOWN_RE = re.compile(r"[1-7][0-9]{2} [^\x00-\x1f\x7f]+")
MAX_SHUTDOWN_LINE = 4 + 200  # "NNN " and the text the server keeps
FAILED_TEXT = "Failed, probably JobAgent or Application problem"
REQUESTED = "100 Shutdown as requested"
SELF_END_UPLOAD_SECONDS = 60.0  # the manager is likely gone: don't linger
CPU_TOTALS_FILE = "cpu_totals"


def proc_stat_idle(path: str = "/proc/stat") -> Optional[float]:
    """Seconds the VM's CPUs have been idle since boot (``/proc/stat``, the ``cpu`` line's
    fourth value, in clock ticks), None if unreadable."""
    try:
        with open(path) as handle:
            fields = handle.readline().split()
        if fields[0] != "cpu":
            return None
        return int(fields[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def cpu_totals(idle_before: Optional[float], idle_after: Optional[float]) -> bytes:
    """The ``cpu_totals`` line once the pilot is reaped: its tree's user and system seconds,
    and the idle seconds between the two readings (``-`` if either is unknown)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    idle = "-" if idle_before is None or idle_after is None else \
        f"{max(idle_after - idle_before, 0.0):.2f}"
    return f"{usage.ru_utime:.2f} {usage.ru_stime:.2f} {idle}\n".encode("ascii")


def open_pilot_file(path: str) -> BinaryIO:
    """``path`` open for reading if it is a regular file, else OSError saying why. The pilot's
    user owns these files, the agent is root: a symbolic link it planted is not followed (the
    agent would read, and upload, what the pilot cannot), and O_NONBLOCK, so that a FIFO does
    not hold the agent at open() until someone writes to it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError("a symbolic link, not followed") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError("not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class Agent:
    def __init__(self, config: vmupload.Config, command: List[str]) -> None:
        self.config = config
        self.command = command
        self.uploader = vmupload.Uploader(config)
        # (why, shutdown line) once the VM is to end before its pilot does; the first stays.
        self.ending: Optional[Tuple[str, str]] = None
        # Popen[bytes] is not subscriptable on 3.6, but annotations in functions are not evaluated.
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.terminated_at: Optional[float] = None
        self.totals: Optional[bytes] = None  # cpu_totals, once a pilot ran and was reaped
        token = config.token
        self.child_env = {key: value for key, value in os.environ.items()
                          if token not in key and token not in value}
        self.features: Optional[vmfeatures.Features] = None
        if command and config.machinefeatures_url and config.jobfeatures_url:
            self.features = vmfeatures.Features(config, self.uploader)

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        # Only flags and kill here: logging could re-enter a half-done stderr write.
        if self.ending is None:
            self.ending = ("got " + signal.Signals(signum).name, REQUESTED)
        self._terminate()

    def _check_lease(self) -> Optional[Tuple[str, str]]:
        """``ending``, first set if the VM must end on its own (see the module docstring)."""
        end, limit = self.config.deadline, self.config.unreachable_poweroff_seconds
        if self.ending is None and end is not None and time.time() >= end:
            self.ending = (f"deadline {vmupload.utc(end)} passed",
                           "700 Exceeded max_wallclock_seconds")
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
            if self.features is not None and not stopped.is_set():
                self.features.refresh(min(period / 2, vmfeatures.FEATURES_SECONDS))
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
        env = dict(self.child_env)
        if self.features is not None:
            self.features.refresh(vmfeatures.FEATURES_SECONDS, wait=True)
            env.update(self.features.environment())
            if self._check_lease() is not None:
                return self._idle()
        log("starting pilot: " + " ".join(shlex.quote(arg) for arg in self.command))
        idle_before = proc_stat_idle()
        try:
            # Own process group, so SIGTERM/SIGKILL also reach whatever the pilot spawned.
            self.proc = subprocess.Popen(self.command, env=env, start_new_session=True)
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
        self.totals = cpu_totals(idle_before, proc_stat_idle())
        how = f"killed by signal {-code}" if code < 0 else f"exit {code}"
        ending = self.ending
        log("pilot ended: " + how + (f" ({ending[0]})" if ending else ""))
        if ending is not None:
            return ending[1]
        return "200 Success" if code == 0 else f"700 {FAILED_TEXT} ({how})"

    def _pilot_message(self) -> Optional[str]:
        path = self.config.shutdown_message_path
        if not path:
            return None
        try:
            with open_pilot_file(path) as handle:
                lines = handle.read(4096).decode("utf-8", "replace").strip().splitlines()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log(f"ignoring {path}: {exc}")
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
            status, _ = self.uploader.put(vmupload.SHUTDOWN_FILE, message.encode("utf-8"),
                                          deadline)
            if status != 400:
                break
        seen = {vmupload.SHUTDOWN_FILE, self.config.heartbeat_file, CPU_TOTALS_FILE}
        if self.totals is not None:
            log("cpu_totals: " + self.totals.decode("ascii").strip())
            self.uploader.put(CPU_TOTALS_FILE, self.totals, deadline)
        for path in self.config.logs:
            name = os.path.basename(path)
            if not vmupload.FILE_NAME_RE.fullmatch(name) or name in seen:
                log(f"skipping log {path}: name not allowed or already used")
                continue
            try:
                with open_pilot_file(path) as handle:
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
        agent = Agent(vmupload.load_config(options.config), command)
    except (vmupload.ConfigError, OSError) as exc:  # OSError: ssl, ca_file missing or not PEM
        log(f"bad config: {'' if isinstance(exc, vmupload.ConfigError) else 'ca_file: '}{exc}")
        return 2
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
