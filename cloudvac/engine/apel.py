"""Write APEL job messages (and, for spaces with ``apel_cloud_records``, cloud messages) into
the outgoing directory ``ssmsend`` reads, each record once.

The outgoing directory is a dirq ``QueueSimple`` (what the APEL client's unloader writes and
``ssmsend`` reads): intermediate directories named by the time in 8 hex digits (rounded to
``GRANULARITY`` seconds), each holding elements named by 14 hex digits (seconds,
microseconds, a random digit).  A file with another name is ignored by dirq.

Restart-safe, exactly once, with no store of its own:

1. a message is written to ``OUTGOING/.cloudvac-staging/NAME.part``, flushed, and renamed
   ``NAME.msg``: from then on it counts as written (the commit);
2. its records' keys go into the state file ``OUTGOING/../.NAME-of-OUTGOING.apel-written``
   (JSON, replaced atomically), which says which records were written;
3. the message is renamed into the queue (one atomic rename on the same file system).

A job record's key is its LocalJobId, a cloud record's ``cloud:VMUUID``: the two records
of one VM are each written once.  A message holds one record type.

At every call the staging directory is finished first: a ``.msg`` left by a crash is added
to the state and published, a ``.part`` deleted.  The state forgets records that ended more
than ``KEEP_SECONDS`` ago, and records that old are not written (a late record is no record
at all for the grid's monthly summaries).  One writer per outgoing directory at a time
(``flock`` on the state's lock file).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cloudvac import __version__
from cloudvac.config.models import Space
from cloudvac.config.settings import Settings
from cloudvac.model.accounting import AccountingRecord
from cloudvac.model.apel import (
    ApelOptions,
    CloudSpace,
    NotAccountable,
    chunks,
    cloud_key,
    cloud_message,
    cloud_record,
    cpu_seconds,
    job_message,
    job_record,
    written_ids,
)

log = logging.getLogger("cloudvac.engine.apel")

GRANULARITY = 60
"""Seconds per intermediate directory (dirq's default)."""
KEEP_SECONDS = 62 * 86400.0
"""Written LocalJobIds are remembered this long after their EndTime."""
STAGING = ".cloudvac-staging"


@dataclass(frozen=True, slots=True)
class RecordKind:
    """One APEL record type: its written-state key of a VM UUID, its formatter, its
    message."""

    name: str
    key: Callable[[str], str]
    record: Callable[[AccountingRecord, ApelOptions], str]
    message: Callable[[Iterable[str]], str]


JOB = RecordKind("job", str, job_record, job_message)
CLOUD = RecordKind("cloud", cloud_key, cloud_record, cloud_message)


def state_path(outgoing: Path) -> Path:
    return outgoing.parent / f".{outgoing.name}.apel-written"


@contextlib.contextmanager
def _locked(outgoing: Path) -> Iterator[None]:
    lock = state_path(outgoing).with_suffix(".lock")
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load(path: Path) -> dict[str, int]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    written = data.get("written", {}) if isinstance(data, dict) else {}
    return {str(k): int(v) for k, v in written.items()} if isinstance(written, dict) else {}


def _replace(path: Path, data: bytes) -> None:
    """Write ``path`` atomically: a flushed temporary file renamed over it."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _save(path: Path, written: dict[str, int], now: float) -> None:
    keep = {k: v for k, v in written.items() if v >= now - KEEP_SECONDS}
    _replace(path, json.dumps({"written": keep}, sort_keys=True).encode())


def _publish(staged: Path, outgoing: Path, now: float) -> str:
    """Rename a staged message into the queue under a fresh element name."""
    secs = int(now)
    directory = outgoing / f"{secs - secs % GRANULARITY:08x}"
    directory.mkdir(exist_ok=True)
    while True:
        micros = int((now - secs) * 1_000_000) % 0x100000
        name = f"{secs:08x}{micros:05x}{secrets.randbelow(16):x}"
        target = directory / name
        if not target.exists():
            os.rename(staged, target)
            return f"{directory.name}/{name}"
        now += 1e-6


def _recover(outgoing: Path, written: dict[str, int], now: float) -> None:
    """Finish what a crash left in the staging directory."""
    staging = outgoing / STAGING
    for part in sorted(staging.glob("*.part")):
        part.unlink(missing_ok=True)
    staged = sorted(staging.glob("*.msg"))
    for message in staged:
        written.update(written_ids(message.read_text(encoding="utf-8")))
    if staged:
        _save(state_path(outgoing), written, now)
    for message in staged:
        element = _publish(message, outgoing, now)
        log.info("space=- machinetype=- machine=- APEL: published %s left staged by an "
                 "interrupted run as %s", message.name, element)


def _stage(outgoing: Path, text: str) -> Path:
    staging = outgoing / STAGING
    name = secrets.token_hex(8)
    part = staging / f"{name}.part"
    with part.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    final = staging / f"{name}.msg"
    os.rename(part, final)
    return final


def _formatted(records: Iterable[AccountingRecord], kind: RecordKind, options: ApelOptions,
               written: dict[str, int], now: float) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for record in records:
        where = f"space={record.space} machinetype={record.machinetype} " \
                f"machine={record.machine}"
        key = kind.key(record.vm_uuid)
        if key in written or key in seen:
            continue
        if record.stopped_at < now - KEEP_SECONDS:
            log.debug("%s APEL: %s record not written, ended over %d days ago", where,
                      kind.name, KEEP_SECONDS // 86400)
            continue
        try:
            text = kind.record(record, options)
        except NotAccountable as exc:
            log.warning("%s APEL: %s record not written: %s", where, kind.name, exc)
            continue
        if kind is JOB and not cpu_seconds(record)[1]:
            log.info("%s APEL: the VM reported no CPU time: CpuDuration = WallDuration", where)
        seen.add(key)
        out.append(text)
    return out


def _write_batches(batches: list[list[str]], kind: RecordKind, outgoing: Path,
                   written: dict[str, int], now: float) -> int:
    """Stage, commit and publish one ``kind`` message per batch of records."""
    count = 0
    for batch in batches:
        staged = _stage(outgoing, kind.message(batch))
        ids = written_ids(staged.read_text(encoding="utf-8"))
        written.update(ids)
        _save(state_path(outgoing), written, now)
        element = _publish(staged, outgoing, now)
        count += len(ids)
        log.info("space=- machinetype=- machine=- APEL: %d %s record(s) written to %s/%s",
                 len(ids), kind.name, outgoing, element)
    return count


def write_apel(records: Iterable[AccountingRecord], outgoing: Path, options: ApelOptions,
               clock: Callable[[], float]) -> int:
    """Write the records not yet written as v0.4 job messages into ``outgoing`` (created if
    missing), and as cloud messages those of the spaces in ``options.clouds``; returns how
    many records (of both types) were written now."""
    outgoing.mkdir(parents=True, exist_ok=True)
    (outgoing / STAGING).mkdir(exist_ok=True)
    jobs = list(records)
    clouds = [r for r in jobs if r.space in options.clouds]
    count = 0
    with _locked(outgoing):
        now = clock()
        written = _load(state_path(outgoing))
        _recover(outgoing, written, now)
        for kind, mine in ((JOB, jobs), (CLOUD, clouds)):
            todo = _formatted(mine, kind, options, written, now)
            count += _write_batches(chunks(todo, options.records_per_message), kind,
                                    outgoing, written, now)
    return count


def cloud_space(space: Space) -> CloudSpace:
    """What a space's cloud records say of it: the space's name as CloudComputeService, its
    OpenStack project as LocalGroupId, each machinetype's root_image as ImageId."""
    project = ""
    if space.openstack is not None:
        stack = space.openstack
        project = stack.project_id or stack.egi_project_id or stack.project_name or ""
    kind = "OpenStack" if space.api == "openstack" else "simulated"
    return CloudSpace(service=space.name, local_group=project,
                      cloud_type=f"cloudvac/{__version__} ({kind})",
                      images={mt.name: mt.root_image for mt in space.machinetypes.values()
                              if mt.root_image})


def apel_options(settings: Settings, spaces: Iterable[Space]) -> ApelOptions:
    """The writer's options from ``[settings]``, each machinetype's ``accounting_fqan`` and
    each space's ``apel_cloud_records``."""
    spaces = list(spaces)
    return ApelOptions(
        submit_host=settings.apel_submit_host or "",
        infrastructure_description=settings.apel_infrastructure,
        records_per_message=settings.apel_records_per_message,
        fqans={f"{space.name}/{mt.name}": mt.accounting_fqan for space in spaces
               for mt in space.machinetypes.values() if mt.accounting_fqan},
        clouds={space.name: cloud_space(space) for space in spaces
                if space.apel_cloud_records})


def export_apel(settings: Settings, space: Space, records: Iterable[AccountingRecord],
                clock: Callable[[], float]) -> int:
    """Write ``space``'s records when ``apel_outgoing_dir`` is set (else nothing); errors are
    logged, never raised: accounting must not stop the cycle, and the records are written
    at a later call."""
    if settings.apel_outgoing_dir is None:
        return 0
    mine = [r for r in records if r.space == space.name]
    try:
        return write_apel(mine, settings.apel_outgoing_dir, apel_options(settings, [space]),
                          clock)
    except OSError as exc:
        log.warning("space=%s machinetype=- machine=- APEL: cannot write to %s: %s",
                    space.name, settings.apel_outgoing_dir, exc)
        return 0
