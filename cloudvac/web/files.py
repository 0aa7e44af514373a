"""Files VMs upload (``$JOBOUTPUTS``), kept in the store's ``joboutputs`` table.

Any instance behind a load balancer takes a VM's upload and any instance reads it
(accounting, ``cloudvac logs``), so uploads live in the database every instance shares,
not in a directory (which would make HA hang on a shared file system and its locking and
rename semantics).  One code path for SQLite and PostgreSQL: ``store/joboutputs.py``.

Contracts: a write is one transaction, so readers never see half a file and a refused or
failed write leaves the previous version.  Names are checked against strict patterns
before anything is stored.  The per-file limit is checked here, the per-machine limit
(``max_machine_bytes``, over every file of the machine) inside the write's transaction
under the machine's row lock, so it holds exactly across instances.  A store that fails
(database down, full, read-only) raises the store's error, which the application answers
503 with Retry-After (``web/app.py``; the in-VM agent retries every 5xx): the cause is
the store, and 503 is what a balancer and the agent both understand.

Before this table, uploads were files under ``STATE_DIR/joboutputs/<space>/<machine>/``;
``import_directory`` moves such a tree into the table once, at start.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from cloudvac.model.layout import FILE_NAME, SHUTDOWN_FILE
from cloudvac.model.naming import MACHINE_NAME, SPACE_NAME
from cloudvac.model.records import Recorded
from cloudvac.model.states import ShutdownMessage
from cloudvac.store import Store
from cloudvac.store.joboutputs import IMPORT_BATCH_ROWS, Beat, MachineFull, NoSuchMachine, Upload

log = logging.getLogger("cloudvac.web.files")
SIZES_KEPT = 100_000
FILE_RE = FILE_NAME
IMPORTED_SUFFIX = ".imported"


class UploadRejected(Exception):
    """An upload refused before anything was written; ``status`` is the HTTP answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass(frozen=True, slots=True)
class UploadLimits:
    max_file_bytes: int
    max_machine_bytes: int


class Joboutputs:
    """The machines' uploaded files, in the store.  Thread-safe (the store's writes are
    transactions; the size cache has its own lock)."""

    def __init__(self, store: Store, limits: UploadLimits,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.limits, self._clock = store, limits, clock
        # bytes per file of machines this instance wrote recently, for ``fits`` (bounded
        # LRU; another instance's writes are unknown here: the write itself checks)
        self._sizes: OrderedDict[tuple[str, str], dict[str, int]] = OrderedDict()
        self._sizes_lock = threading.Lock()

    def _check(self, space: str, name: str, file: str, size: int) -> None:
        if not SPACE_NAME.fullmatch(space) or not MACHINE_NAME.fullmatch(name):
            raise UploadRejected(404, "no such machine")
        if not FILE_RE.fullmatch(file):
            raise UploadRejected(400, "file name must match " + FILE_RE.pattern)
        if size > self.limits.max_file_bytes:
            raise UploadRejected(413, f"file larger than {self.limits.max_file_bytes} bytes")

    def _upload(self, file: str, data: bytes) -> Upload:
        return Upload(file, data, self.limits.max_machine_bytes)

    def write(self, space: str, name: str, file: str, data: bytes) -> None:
        """Store ``data`` as ``file``, replacing its previous version, in one transaction.
        UploadRejected 400/404/413 for the request (nothing written); the store's own
        errors propagate (503)."""
        self._check(space, name, file, len(data))
        try:
            sizes = self.store.put_joboutput(space, name, self._upload(file, data),
                                             self._clock())
        except MachineFull as exc:
            raise UploadRejected(413, str(exc)) from None
        except NoSuchMachine:
            raise UploadRejected(404, "no such machine") from None
        self._noted({(space, name): sizes})

    def record_shutdown(self, space: str, name: str, message: ShutdownMessage,
                        data: bytes, at: float) -> Recorded:
        """Record the VM's shutdown message and store its file, together or not at all
        (the file only when the message is recorded now)."""
        self._check(space, name, SHUTDOWN_FILE, len(data))
        try:
            recorded = self.store.record_shutdown_upload(
                space, name, message, self._upload(SHUTDOWN_FILE, data), at)
        except MachineFull as exc:
            raise UploadRejected(413, str(exc)) from None
        except NoSuchMachine:  # the machine's row went between the two statements
            return Recorded.UNKNOWN
        return recorded

    def heartbeats(self, beats: Mapping[tuple[str, str], Beat]) -> int:
        """Record a batch of heartbeats, times and bodies, in one transaction (see
        ``Store.record_heartbeat_bodies``); a body over its machine's quota is logged and
        not stored.  Returns the rows matched (-1 where the driver cannot count)."""
        written = self.store.record_heartbeat_bodies(beats, self.limits.max_machine_bytes)
        for space, name in written.refused:
            log.warning("space=%s machinetype=- machine=%s heartbeat file not stored: the "
                        "machine's uploads would exceed %d bytes", space, name,
                        self.limits.max_machine_bytes)
        self._noted(written.sizes)
        return written.matched

    def fits(self, space: str, name: str, file: str, size: int) -> bool:
        """Whether ``size`` bytes as ``file`` fit the machine's quota, as far as this
        instance's recent writes tell (True for a machine it did not write recently: the
        write itself checks).  Cheap, for the event loop."""
        sizes = self._sizes.get((space, name))
        if sizes is None:
            return True
        return sum(sizes.values()) - sizes.get(file, 0) + size <= self.limits.max_machine_bytes

    def _noted(self, sizes: Mapping[tuple[str, str], dict[str, int]]) -> None:
        """Remember machines' bytes per file as a write of this instance found them."""
        with self._sizes_lock:
            for key, files in sizes.items():
                self._sizes[key] = files
                self._sizes.move_to_end(key)
            while len(self._sizes) > SIZES_KEPT:
                self._sizes.popitem(last=False)

    def read(self, space: str, name: str, file: str) -> bytes | None:
        if not FILE_RE.fullmatch(file):
            return None
        return self.store.joboutput(space, name, file)

    def cleanup(self, older_than: float) -> int:
        """Remove the uploads of ended (or pruned) machines that wrote nothing since
        ``older_than``; a machine alive keeps its files.  Returns how many files went."""
        removed = self.store.prune_joboutputs(older_than)
        with self._sizes_lock:
            self._sizes.clear()
        return removed


def _found(root: Path) -> Iterator[tuple[str, str, str, Path]]:
    """(space, machine, file, path) of every upload under ``root`` (names checked; the
    old writer's temporary files, dot-named, left out)."""
    for space_dir in sorted(root.iterdir()):
        if not space_dir.is_dir() or not SPACE_NAME.fullmatch(space_dir.name):
            continue
        for machine_dir in sorted(space_dir.iterdir()):
            if not machine_dir.is_dir() or not MACHINE_NAME.fullmatch(machine_dir.name):
                continue
            for entry in sorted(os.scandir(machine_dir), key=lambda e: e.name):
                if entry.is_file() and FILE_RE.fullmatch(entry.name):
                    yield space_dir.name, machine_dir.name, entry.name, Path(entry.path)


def import_directory(store: Store, root: Path) -> int:
    """Import the files of ``root`` (``STATE_DIR/joboutputs`` from before the table) into
    the store, keeping rows the table has already, then rename ``root`` to
    ``joboutputs.imported`` so it is done once.  How many files were added; 0 without a
    directory.  A tree that cannot be read or renamed is logged and left: nothing is lost,
    the next start imports it again (rows already there are kept)."""
    if not root.is_dir():
        return 0
    added = found = 0
    try:
        batch: list[tuple[str, str, str, bytes, float]] = []
        for space, machine, file, path in _found(root):
            batch.append((space, machine, file, path.read_bytes(), path.stat().st_mtime))
            found += 1
            if len(batch) >= IMPORT_BATCH_ROWS:
                added += store.import_joboutputs(batch)
                batch = []
        added += store.import_joboutputs(batch)
        target = root.with_name(root.name + IMPORTED_SUFFIX)
        if target.exists():
            target = root.with_name(f"{root.name}{IMPORTED_SUFFIX}-{int(time.time())}")
        root.rename(target)
    except OSError as exc:
        log.error("space=- machinetype=- machine=- cannot import the uploads under %s into "
                  "the store (%d files so far): %s; trying again at the next start", root,
                  added, exc.strerror or exc)
        return added
    log.warning("space=- machinetype=- machine=- imported %d of %d uploaded files from %s "
                "into the store (the others were there already); the directory is now %s "
                "and may be removed", added, found, root, target)
    return added
