"""Uploads in the store (issue 18): any instance takes a VM's upload and any instance
reads it; the per-machine quota is exact across instances; a refused write keeps the
previous version; heartbeat bodies go in the heartbeat batch's transaction; files of
ended machines go after the retention; uploads from before the table are imported once.
On both backends."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from cloudvac.auth.vmtokens import SECRET_FILE
from cloudvac.model.records import MachineRecord, Recorded
from cloudvac.model.states import MachineState, ShutdownMessage
from cloudvac.store import Store
from cloudvac.store.joboutputs import Beat, MachineFull, NoSuchMachine, Upload
from cloudvac.web.files import import_directory
from tests.integration.webserver import SPACE, Running, web_server

A = "cloudvac-aaaaaa-belle-aaaaaaaaaa"
B = "cloudvac-aaaaaa-belle-bbbbbbbbbb"
ROOM = 10_000


def machine(name: str, state: MachineState = MachineState.RUNNING) -> MachineRecord:
    return MachineRecord(space=SPACE, name=name, machinetype="belle", state=state,
                         cloud_id=f"id-{name}", processors=1, started_at=1000.0)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = Store(store_url)
    try:
        opened.apply(SPACE, [machine(A), machine(B)], {}, 1000.0)
        yield opened
    finally:
        opened.close()


def put(web: Running, name: str, file: str, body: bytes) -> int:
    return httpx.put(f"{web.url}/machines/{SPACE}/{name}/joboutputs/{file}", content=body,
                     headers={"Authorization": f"Bearer {web.token(name)}"},
                     timeout=60).status_code


def test_two_instances_share_uploads_and_the_quota_holds_exactly_across_them(
        tmp_path: Path, store_url: str) -> None:
    """Two web instances on one store (the same secret, as ``test_shared_secret`` makes
    sure): uploads of one machine spread over both, concurrently, fill its quota exactly;
    what one instance took, the other reads."""
    piece, room = 32 * 1024, 1024 * 1024
    first_state = tmp_path / "one"
    with web_server(first_state, database=store_url, upload_max_file_bytes=piece,
                    upload_max_machine_bytes=room) as one:
        (tmp_path / "two").mkdir()
        shutil.copy2(first_state / SECRET_FILE, tmp_path / "two" / SECRET_FILE)
        with web_server(tmp_path / "two", database=store_url, upload_max_file_bytes=piece,
                        upload_max_machine_bytes=room) as two:
            one.add_machine(A)
            with ThreadPoolExecutor(16) as pool:
                answers = list(pool.map(
                    lambda i: put((one, two)[i % 2], A, f"log{i}", bytes(piece)), range(64)))
            assert put(one, A, "pilot.log", b"taken by one\n") in (204, 413)
            stored = sum(f.size for f in two.store.joboutput_files(SPACE, A))
            assert put(two, A, "log0", bytes(piece)) in (204, 413)  # a replacement
    assert answers.count(204) == room // piece and set(answers) == {204, 413}
    assert stored == room


def test_a_refused_write_keeps_the_previous_version(store: Store) -> None:
    store.put_joboutput(SPACE, A, Upload("job.log", b"first", ROOM), 1.0)
    store.put_joboutput(SPACE, A, Upload("other.log", bytes(ROOM - 100), ROOM), 2.0)
    with pytest.raises(MachineFull):
        store.put_joboutput(SPACE, A, Upload("job.log", bytes(200), ROOM), 3.0)
    assert store.joboutput(SPACE, A, "job.log") == b"first"
    sizes = store.put_joboutput(SPACE, A, Upload("job.log", bytes(100), ROOM), 4.0)
    assert sizes == {"job.log": 100, "other.log": ROOM - 100}  # replacing counts once
    with pytest.raises(NoSuchMachine):
        store.put_joboutput(SPACE, "cloudvac-aaaaaa-belle-gggggggggg",
                            Upload("job.log", b"x", ROOM), 5.0)


def test_a_shutdown_message_and_its_file_are_one_transaction(store: Store) -> None:
    store.put_joboutput(SPACE, A, Upload("big.log", bytes(ROOM - 5), ROOM), 1.0)
    message = ShutdownMessage(200, "Success")
    with pytest.raises(MachineFull):
        store.record_shutdown_upload(SPACE, A, message, Upload("shutdown_message",
                                                               b"200 Success", ROOM), 2.0)
    record = store.machine(SPACE, A)
    assert record is not None and record.shutdown is None, "the file failed: not recorded"
    body = Upload("shutdown_message", b"200 Success", ROOM)
    assert store.record_shutdown_upload(SPACE, B, message, body, 3.0) is Recorded.RECORDED
    assert store.joboutput(SPACE, B, "shutdown_message") == b"200 Success"
    other = Upload("shutdown_message", b"300 Nothing to do", ROOM)
    assert store.record_shutdown_upload(SPACE, B, ShutdownMessage(300, "Nothing to do"),
                                        other, 4.0) is Recorded.CONFLICT
    assert store.joboutput(SPACE, B, "shutdown_message") == b"200 Success", "first one kept"


def test_heartbeat_bodies_ride_the_batch_and_the_newest_body_wins(store: Store) -> None:
    written = store.record_heartbeat_bodies(
        {(SPACE, A): Beat(20.0, "heartbeat", b"new"), (SPACE, B): Beat(20.0, "heartbeat",
                                                                       bytes(ROOM + 1))}, ROOM)
    assert written.refused == [(SPACE, B)]
    assert written.sizes[(SPACE, A)] == {"heartbeat": 3}
    # another instance's batch, older, lands later: the newer body stays
    store.record_heartbeat_bodies({(SPACE, A): Beat(10.0, "heartbeat", b"old")}, ROOM)
    assert store.joboutput(SPACE, A, "heartbeat") == b"new"
    record_a, record_b = store.machine(SPACE, A), store.machine(SPACE, B)
    assert record_a is not None and record_a.heartbeat_at == 20.0
    assert record_b is not None and record_b.heartbeat_at == 20.0, "time noted, body not"
    assert store.joboutput(SPACE, B, "heartbeat") is None


def test_a_heartbeat_batch_counts_each_machines_other_files(store: Store) -> None:
    """The quota of a batch's bodies counts every file of the machine: those it updated
    (read by the revision it stamped them with) and a GONE one's (read by name)."""
    gone = "cloudvac-aaaaaa-belle-gggggggggg"
    store.apply(SPACE, [machine(gone, MachineState.GONE)], {}, 1000.0)
    for name in (A, gone):
        store.put_joboutput(SPACE, name, Upload("pilot.log", bytes(ROOM - 10), ROOM), 1.0)
    written = store.record_heartbeat_bodies({
        (SPACE, A): Beat(5.0, "heartbeat", bytes(11)),
        (SPACE, B): Beat(5.0, "heartbeat", bytes(11)),
        (SPACE, gone): Beat(5.0, "heartbeat", bytes(11))}, ROOM)
    assert written.refused == [(SPACE, A), (SPACE, gone)]
    assert written.sizes[(SPACE, A)] == written.sizes[(SPACE, gone)] == {
        "pilot.log": ROOM - 10}
    assert written.sizes[(SPACE, B)] == {"heartbeat": 11}
    written = store.record_heartbeat_bodies({(SPACE, A): Beat(6.0, "heartbeat", bytes(10))},
                                            ROOM)
    assert written.refused == [] and written.sizes[(SPACE, A)] == {
        "pilot.log": ROOM - 10, "heartbeat": 10}
    assert store.joboutput(SPACE, A, "heartbeat") == bytes(10)
    assert store.joboutput(SPACE, gone, "heartbeat") is None


def test_prune_keeps_the_living_and_the_recent(store: Store) -> None:
    gone, pruned = "cloudvac-aaaaaa-belle-cccccccccc", "cloudvac-aaaaaa-belle-dddddddddd"
    store.apply(SPACE, [machine(gone), machine(pruned)], {}, 1000.0)
    for name in (A, gone, pruned):
        store.put_joboutput(SPACE, name, Upload("job.log", b"x", ROOM), 100.0)
    store.put_joboutput(SPACE, B, Upload("job.log", b"x", ROOM), 100.0)
    store.put_joboutput(SPACE, B, Upload("late.log", b"x", ROOM), 900.0)
    store.apply(SPACE, [machine(pruned, MachineState.GONE)], {}, 1000.0)
    assert store.prune(2000.0) == 1  # its row leaves the store; its uploads are still there
    assert store.machine(SPACE, pruned) is None and store.joboutput_files(SPACE, pruned)
    store.apply(SPACE, [machine(n, MachineState.GONE) for n in (B, gone)], {}, 3000.0)
    assert store.prune_joboutputs(500.0) == 2  # gone's and pruned's job.log
    assert store.joboutput(SPACE, A, "job.log") == b"x"  # alive: kept however old
    assert [f.file for f in store.joboutput_files(SPACE, B)] == ["job.log", "late.log"]
    assert store.joboutput_files(SPACE, gone) == [] == store.joboutput_files(SPACE, pruned)


def test_the_directory_of_an_older_version_is_imported_once(tmp_path: Path,
                                                            store: Store) -> None:
    root = tmp_path / "joboutputs"
    files = {(A, "pilot.log"): b"pilot", (A, "heartbeat"): b"1 0.5", (B, "heartbeat"): b"old"}
    for (name, file), body in files.items():
        (root / SPACE / name).mkdir(parents=True, exist_ok=True)
        (root / SPACE / name / file).write_bytes(body)
    (root / SPACE / A / ".heartbeat.1.2").write_bytes(b"a temporary file")
    (root / "not a space").mkdir()
    store.put_joboutput(SPACE, B, Upload("heartbeat", b"newer", ROOM), 5.0)
    assert import_directory(store, root) == 2
    assert store.joboutput(SPACE, A, "pilot.log") == b"pilot"
    assert store.joboutput(SPACE, B, "heartbeat") == b"newer", "the table's row is kept"
    assert [f.file for f in store.joboutput_files(SPACE, A)] == ["heartbeat", "pilot.log"]
    assert not root.exists() and (tmp_path / "joboutputs.imported" / SPACE / A).is_dir()
    assert import_directory(store, root) == 0  # done once
