"""The in-VM agent's Machine/Job Features (HSF-TN-2016-02): fetched from the manager with the
VM's token, written as files the pilot reads (``agent.py``'s docstring says when and where).

Shipped and run beside ``agent.py``: Python 3.6+, standard library only.
"""

# ruff: noqa: UP006, UP035
# (typing.Dict instead of dict[...]: that fails at runtime on Python 3.6.)

import contextlib
import os
import re
import stat
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Dict

if TYPE_CHECKING or __package__:  # in the cloudvac package: the manager, the tests
    from cloudvac.context.vmupload import Config, Uploader, log
else:  # on the VM: the agent's files side by side, their directory is sys.path[0]
    from vmupload import Config, Uploader, log

# HSF-TN-2016-02 keys; the server answers 404 for those it has no value for.
MACHINE_KEYS = ("total_cpu", "hs06", "shutdowntime", "grace_secs", "jobslots")
JOB_KEYS = ("allocated_cpu", "hs06_job", "shutdowntime_job", "grace_secs_job", "jobstart_secs",
            "job_id", "wall_limit_secs", "cpu_limit_secs", "max_rss_bytes", "max_swap_bytes",
            "scratch_limit_bytes")
CHANGING_KEYS = ("shutdowntime", "shutdowntime_job")  # a drain moves them
FEATURES_SECONDS = 30.0  # the first fetch, which the pilot waits for
FEATURE_VALUE_RE = re.compile(r"[\x20-\x7e]{1,200}")  # one printable line


class Features:
    """The machine's and job's features, fetched with the token into files the pilot reads."""

    def __init__(self, config: Config, uploader: Uploader) -> None:
        self.uploader, self.timeout = uploader, config.request_timeout_seconds
        self.sources = [  # (url, directory, keys)
            (config.machinefeatures_url or "",
             os.path.join(config.features_dir, "machinefeatures"), MACHINE_KEYS),
            (config.jobfeatures_url or "",
             os.path.join(config.features_dir, "jobfeatures"), JOB_KEYS)]
        self.complete = False  # every key fetched once
        self.last = "not tried"
        self.lock = threading.Lock()

    def environment(self) -> Dict[str, str]:
        return {"MACHINEFEATURES": "file://" + self.sources[0][1],
                "JOBFEATURES": "file://" + self.sources[1][1]}

    def refresh(self, seconds: float, wait: bool = False) -> None:
        """Fetch and write (all keys until once complete, then CHANGING_KEYS) within
        ``seconds``; stop at the first failure, keeping what is written. Never raises.
        Unless ``wait``, skipped while the other thread is at it."""
        if not self.lock.acquire(blocking=wait):
            return
        try:
            what = self._fetch(time.monotonic() + seconds)
        except Exception as exc:  # a bug here must not stop the pilot or the heartbeats
            what = f"internal error {exc!r}"
        finally:
            self.lock.release()
        if what != self.last:
            log(f"machine/job features failing: {what}" if what else
                "machine/job features written to " + ", ".join(d for _, d, _ in self.sources))
        self.last = what

    def _fetch(self, deadline: float) -> str:
        complete = self.complete
        for _, directory, _ in self.sources:  # both exist, even if nothing can be fetched
            os.makedirs(directory, exist_ok=True)
            # The agent is root, the pilot may write beside: never write through its link.
            info = os.lstat(directory)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
                return f"{directory}: not a directory of the agent's own user, not written"
            os.chmod(directory, 0o755)
        for url, directory, keys in self.sources:
            for key in keys:
                if complete and key not in CHANGING_KEYS:
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0.05:
                    return f"{key}: out of time"
                status, body, what = self.uploader.get(url + "/" + key,
                                                       min(self.timeout, remaining))
                path = os.path.join(directory, key)
                value = body.decode("ascii", "replace").strip()
                if status == 200 and FEATURE_VALUE_RE.fullmatch(value):
                    _write_file(directory, key, (value + "\n").encode("ascii"))
                elif status == 404:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                else:
                    return f"{key}: {what or 'not one printable line'}"
        self.complete = True
        return ""


def _write_file(directory: str, name: str, data: bytes) -> None:
    """``directory/name`` replaced atomically by ``data``, mode 0644."""
    fd, temporary = tempfile.mkstemp(prefix="." + name + ".", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, os.path.join(directory, name))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
