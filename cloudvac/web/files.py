"""Files VMs upload (``$JOBOUTPUTS``): one directory per machine, atomic writes, limits.

Layout: ``STATE_DIR/joboutputs/<space>/<machine>/<file>``.  A write goes to a temporary
file in the same directory and is renamed into place, so readers never see half a file
and a failed upload leaves the previous version intact.  Names are checked against a
strict pattern before any path is built, so no upload can leave its machine's directory.

A write the file system refuses (full disk, quota, read-only, I/O error) is answered 507
Insufficient Storage, logged, and leaves nothing behind: the temporary file is removed and
the previous version stays.  507 rather than 503: it names the cause (503 says the
service is overloaded or down, and balancers act on that), and the in-VM agent retries
every 5xx alike, so the upload is tried again once there is room.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cloudvac.model.layout import FILE_NAME
from cloudvac.model.naming import MACHINE_NAME, SPACE_NAME

log = logging.getLogger("cloudvac.web.files")
REFUSAL_LOG_SECONDS = 60.0
LOCK_STRIPES = 64
SIZES_KEPT = 100_000
FILE_RE = FILE_NAME


class UploadRejected(Exception):
    """An upload refused before anything was written; ``status`` is the HTTP answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass(frozen=True, slots=True)
class UploadLimits:
    max_file_bytes: int
    max_machine_bytes: int


class JoboutputsDir:
    """The machines' upload directories.  Thread-safe: writes of one machine are
    serialised (``_lock``), so its quota holds exactly under concurrent uploads."""

    def __init__(self, root: Path, limits: UploadLimits) -> None:
        self.root, self.limits = root, limits
        # a full disk refuses every VM's upload: one log line a minute says it
        self._refusals = 0
        self._logged_at = -1e9
        self._locks = tuple(threading.Lock() for _ in range(LOCK_STRIPES))
        # bytes per file of recently written machines, for ``fits`` (bounded LRU); a
        # machine's entry changes under its lock, the mapping under ``_sizes_lock``
        self._sizes: OrderedDict[Path, dict[str, int]] = OrderedDict()
        self._sizes_lock = threading.Lock()

    def machine_dir(self, space: str, name: str) -> Path:
        if not SPACE_NAME.fullmatch(space) or not MACHINE_NAME.fullmatch(name):
            raise UploadRejected(404, "no such machine")
        return self.root / space / name

    def _lock(self, directory: Path) -> threading.Lock:
        return self._locks[hash(directory) % LOCK_STRIPES]

    def write(self, space: str, name: str, file: str, data: bytes, durable: bool) -> None:
        """Write ``data`` as ``file`` atomically; ``durable`` also fsyncs (shutdown messages
        and logs; heartbeats are rewritten every minute and need not survive a crash).
        UploadRejected: 400/404/413 for the request, 507 when the file system refuses
        the write; either way nothing is written."""
        with self.staged(space, name, file, data, durable) as commit:
            commit()

    @contextlib.contextmanager
    def staged(self, space: str, name: str, file: str, data: bytes,
               durable: bool) -> Iterator[Callable[[], None]]:
        """Write ``data`` to a temporary file beside ``file`` and yield the function that
        renames it into place: call it where the upload is final (inside the store's
        transaction, for a shutdown message).  Without the call, or if the block raises,
        nothing changes.  The machine's lock is held for the block, so the quota
        (``max_machine_bytes``, over every file of the machine) holds exactly.  Raises
        UploadRejected as ``write``."""
        if not FILE_RE.fullmatch(file):
            raise UploadRejected(400, "file name must match " + FILE_RE.pattern)
        if len(data) > self.limits.max_file_bytes:
            raise UploadRejected(413, f"file larger than {self.limits.max_file_bytes} bytes")
        directory = self.machine_dir(space, name)
        with self._lock(directory):
            try:
                sizes = self._usage(directory)
                if sum(sizes.values()) - sizes.get(file, 0) + len(data) > \
                        self.limits.max_machine_bytes:
                    raise UploadRejected(413, f"machine's uploads would exceed "
                                         f"{self.limits.max_machine_bytes} bytes")
                tmp = self._temporary(directory, file, data, durable)
            except OSError as exc:
                raise self._refused(space, name, file, exc) from None
            try:
                yield lambda: self._replace(tmp, directory, file, len(data))
            except OSError as exc:
                raise self._refused(space, name, file, exc) from None
            finally:
                with contextlib.suppress(OSError):  # the write's own error is the one to report
                    tmp.unlink(missing_ok=True)

    def fits(self, space: str, name: str, file: str, size: int) -> bool:
        """Whether ``size`` bytes as ``file`` fit the machine's quota, as far as its recent
        writes tell (True for a machine not written recently: the write itself checks).
        Cheap and lock-free, for the event loop."""
        sizes = self._sizes.get(self.root / space / name)
        if sizes is None:
            return True
        return sum(sizes.values()) - sizes.get(file, 0) + size <= self.limits.max_machine_bytes

    def _usage(self, directory: Path) -> dict[str, int]:
        """Bytes per file of the machine (every file: a leftover temporary one counts)."""
        sizes = self._sizes.get(directory)
        if sizes is None:
            directory.mkdir(parents=True, exist_ok=True)
            sizes = {e.name: e.stat().st_size for e in os.scandir(directory) if e.is_file()}
        with self._sizes_lock:
            self._sizes[directory] = sizes
            self._sizes.move_to_end(directory)
            while len(self._sizes) > SIZES_KEPT:
                self._sizes.popitem(last=False)
        return sizes

    def _temporary(self, directory: Path, file: str, data: bytes, durable: bool) -> Path:
        tmp = directory / f".{file}.{os.getpid()}.{time.monotonic_ns()}"
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                if durable:
                    handle.flush()
                    os.fsync(handle.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _replace(self, tmp: Path, directory: Path, file: str, size: int) -> None:
        os.replace(tmp, directory / file)
        self._usage(directory)[file] = size

    def _refused(self, space: str, name: str, file: str, exc: OSError) -> UploadRejected:
        self._refusals += 1
        now = time.monotonic()
        if now - self._logged_at >= REFUSAL_LOG_SECONDS:
            log.error("space=%s machinetype=- machine=%s cannot store upload %s: %s (%d "
                      "uploads refused since the last such line)", space, name, file, exc,
                      self._refusals)
            self._logged_at, self._refusals = now, 0
        # the VM is told the cause, not the server's paths
        return UploadRejected(507, "the server cannot store the upload now: "
                              f"{exc.strerror or type(exc).__name__}")

    def read(self, space: str, name: str, file: str) -> bytes | None:
        if not FILE_RE.fullmatch(file):
            return None
        path = self.machine_dir(space, name) / file
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def cleanup(self, older_than: float, keep: set[tuple[str, str]]) -> int:
        """Remove machine directories not modified since ``older_than`` whose machine is not
        in ``keep`` (machines still alive).  Returns how many were removed."""
        removed = 0
        if not self.root.is_dir():
            return 0
        for space_dir in self.root.iterdir():
            if not space_dir.is_dir():
                continue
            for machine_dir in space_dir.iterdir():
                if (space_dir.name, machine_dir.name) in keep:
                    continue
                try:
                    if machine_dir.stat().st_mtime < older_than:
                        with self._lock(machine_dir):
                            shutil.rmtree(machine_dir)
                            with self._sizes_lock:
                                self._sizes.pop(machine_dir, None)
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed
