"""The attack set of issue 14 against the real VM door (uvicorn on 127.0.0.1), on SQLite and
on PostgreSQL: every input gets a 2xx or 4xx, nothing is written on a refusal, tokens end
with their machine, quotas hold under concurrency, a disconnect is quiet."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from cloudvac.auth.vmtokens import TokenSigner
from cloudvac.model.states import MachineState
from cloudvac.store import Store
from cloudvac.store.joboutputs import Beat
from cloudvac.web.files import Joboutputs, UploadLimits
from cloudvac.web.heartbeats import HeartbeatBuffer
from tests.integration.webserver import SPACE, Running, web_server

A = "cloudvac-aaaaaa-belle-aaaaaaaaaa"
B = "cloudvac-aaaaaa-belle-bbbbbbbbbb"
GRACE = 120.0
ARABIC_ZERO = "\u0660"  # a digit to Python's isdigit(), not to the protocol
WAIT = 60.0  # upper bound of a poll on a loaded machine; polls end as soon as they can


@pytest.fixture
def web(tmp_path: Path, store_url: str) -> Iterator[Running]:
    with web_server(tmp_path, database=store_url, ended_upload_grace_seconds=GRACE) as running:
        running.add_machine(A)
        running.add_machine(B)
        yield running


def url(web: Running, name: str, rest: str) -> str:
    return f"{web.url}/machines/{SPACE}/{name}/{rest}"


def put(web: Running, name: str, file: str, body: bytes, token: str | None = None
        ) -> httpx.Response:
    token = web.token(name) if token is None else token
    return httpx.put(url(web, name, f"joboutputs/{file}"), content=body, timeout=30,
                     headers={"Authorization": f"Bearer {token}"})


def get(web: Running, name: str, rest: str) -> httpx.Response:
    return httpx.get(url(web, name, rest), timeout=30,
                     headers={"Authorization": f"Bearer {web.token(name)}"})


def raw_status(base: str, request: bytes) -> int:
    """Send ``request`` as is on a new connection: the status of the answer."""
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=WAIT) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def poll(check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


# -- 1. tokens: one spelling, 401 for anything else, never a 500 --------------------------------

def respellings(signer: TokenSigner) -> dict[str, bytes]:
    good = signer.token(SPACE, A, 2_000_000_000)
    _, subject, expiry, signature = good.split(".")
    padded = subject + "=" * (-len(subject) % 4)
    return {
        "superscript two": f"v1.x.{chr(0xB2)}.y".encode(),
        "5000 nines": f"v1.{subject}.{'9' * 5000}.{signature}".encode(),
        "leading zero": f"v1.{subject}.0{expiry}.{signature}".encode(),
        "padding": f"v1.{padded}.{expiry}.{signature}".encode() if padded != subject else
        f"v1.{subject}==.{expiry}.{signature}".encode(),
        "arabic digits": f"v1.{subject}.{ARABIC_ZERO * 10}.{signature}".encode(),
        "latin-1 bytes": b"v1.\xff\xfe." + expiry.encode() + b"." + signature.encode(),
        "empty parts": b"v1...",
        "long": b"v1." + b"A" * 20_000,
    }


def test_malformed_tokens_are_401_before_anything_and_log_no_traceback(
        web: Running, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    for what, token in respellings(web.signer).items():
        request = (f"PUT /machines/{SPACE}/{A}/joboutputs/heartbeat HTTP/1.1\r\n"
                   f"Host: x\r\nContent-Length: 1\r\nConnection: close\r\n").encode() + \
            b"Authorization: Bearer " + token + b"\r\n\r\nx"
        status = raw_status(web.url, request)
        assert status in (400, 401, 431), (what, status)  # 431: too long for the server
    assert web.joboutput(A, "heartbeat") is None
    assert no_tracebacks(caplog) == []


def test_the_canonical_token_still_works(web: Running) -> None:
    assert put(web, A, "heartbeat", b"1").status_code == 204


# -- 2. uploads: the file and the store change together, or neither -----------------------------

@pytest.mark.parametrize("body", [b"200 a\x00b", f"3{ARABIC_ZERO * 2} Done".encode(), b"\xff\xfe",
                                  b"2OO ok", b""])
def test_a_refused_shutdown_message_writes_nothing(web: Running, body: bytes) -> None:
    assert put(web, A, "shutdown_message", body).status_code == 400
    assert web.joboutput(A, "shutdown_message") is None
    record = web.store.machine(SPACE, A)
    assert record is not None and record.shutdown is None and record.reported_at is None


def test_a_recorded_shutdown_message_is_never_overwritten(web: Running) -> None:
    assert put(web, A, "shutdown_message", b"200 Success").status_code == 204
    assert put(web, A, "shutdown_message", b"200 Success").status_code == 204  # a retry
    refused = put(web, A, "shutdown_message", b"500 Changed my mind")
    assert refused.status_code == 409
    assert web.joboutput(A, "shutdown_message") == b"200 Success"
    record = web.store.machine(SPACE, A)
    assert record is not None and record.shutdown is not None and record.shutdown.code == 200


# -- 5. tokens end with their machine -----------------------------------------------------------

def test_an_ended_machine_may_only_send_its_final_files_for_a_grace(web: Running) -> None:
    now = time.time()
    web.add_machine(A, state=MachineState.STOPPED, stopped_at=now - 5)
    web.add_machine(B, state=MachineState.GONE, stopped_at=now - GRACE - 60)
    web.context.machines._entries.clear()  # the few-seconds cache: see MachineCache
    assert put(web, A, "heartbeat", b"1").status_code == 410
    assert get(web, A, "machinefeatures/total_cpu").status_code == 410
    assert get(web, A, "user_data").status_code == 410
    assert put(web, A, "shutdown_message", b"300 No more work").status_code == 204
    assert put(web, A, "pilot.log", b"the end").status_code == 204
    for file, body in (("shutdown_message", b"200 late"), ("pilot.log", b"x"),
                       ("heartbeat", b"1")):
        assert put(web, B, file, body).status_code == 410, file
    assert web.joboutput(B, "shutdown_message") is None
    assert get(web, B, "user_data").status_code == 410


def agent_token(user_data: str) -> str:
    """The token inside the user_data's agent configuration (a base64 JSON blob)."""
    for blob in re.findall(r"[A-Za-z0-9+/=]{40,}", user_data):
        try:
            config = json.loads(base64.b64decode(blob))
        except (binascii.Error, ValueError):
            continue
        if isinstance(config, dict) and "token" in config:
            return str(config["token"])
    raise AssertionError("no agent configuration in the user_data")


def test_user_data_is_served_once_with_the_token_of_the_machines_creation(
        web: Running) -> None:
    first = get(web, A, "user_data")
    assert first.status_code == 200
    assert get(web, A, "user_data").status_code == 409
    record = web.store.machine(SPACE, A)
    assert record is not None and record.created_at is not None
    expiry = int(agent_token(first.text).split(".")[2])
    mt = web.space.machinetypes["belle"]
    assert expiry == int(record.created_at + mt.max_wallclock_seconds +
                         web.settings.token_grace_seconds)


def test_user_data_again_only_from_the_machines_own_address(web: Running) -> None:
    web.add_machine(B, address="127.0.0.1")  # the address the cloud lists for it
    texts = [get(web, B, "user_data") for _ in range(3)]
    assert [r.status_code for r in texts] == [200, 200, 200]
    assert len({agent_token(r.text) for r in texts}) == 1, "never a fresh token"


# -- 6. quotas hold under concurrency -----------------------------------------------------------

def test_the_machine_quota_holds_under_concurrent_uploads(tmp_path: Path,
                                                          store_url: str) -> None:
    piece, room = 32 * 1024, 1024 * 1024
    with web_server(tmp_path, database=store_url, upload_max_file_bytes=piece,
                    upload_max_machine_bytes=room) as web:
        web.add_machine(A)
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda i: put(web, A, f"log{i}", bytes(piece)).status_code,
                                    range(64)))
        stored = sum(f.size for f in web.store.joboutput_files(SPACE, A))
    assert answers.count(204) == room // piece and set(answers) == {204, 413}
    assert stored == room


def test_a_heartbeat_over_a_full_quota_is_413(tmp_path: Path) -> None:
    with web_server(tmp_path, upload_max_file_bytes=4096,
                    upload_max_machine_bytes=8192) as web:
        web.add_machine(A)
        assert put(web, A, "one.log", bytes(4096)).status_code == 204
        assert put(web, A, "two.log", bytes(4000)).status_code == 204
        assert put(web, A, "heartbeat", bytes(500)).status_code == 413
        assert put(web, A, "heartbeat", b"1").status_code == 204


# -- 7. a client that leaves mid-body -----------------------------------------------------------

def test_a_client_leaving_mid_body_is_counted_and_quiet(
        web: Running, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    parts = urlsplit(web.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=WAIT) as sock:
        sock.sendall(f"PUT /machines/{SPACE}/{A}/joboutputs/pilot.log HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: Bearer {web.token(A)}\r\nContent-Length: 3000\r\n\r\n"
                     .encode() + bytes(100))
        time.sleep(0.2)

    def counted() -> bool:
        text = httpx.get(f"{web.operator_url}/metrics", timeout=30).text
        return "cloudvac_upload_disconnects_total 1.0" in text

    assert poll(counted)
    assert no_tracebacks(caplog) == []
    assert web.joboutput(A, "pilot.log") is None


# -- 9. the OpenAPI document says what the server answers ---------------------------------------

def test_the_openapi_document_lists_the_real_answers(web: Running) -> None:
    document = httpx.get(f"{web.operator_url}/openapi.json", timeout=30).json()
    assert "422" not in json.dumps(document)
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert {"400", "401", "403", "404"} <= set(operation["responses"]), (method, path)
    upload = document["paths"]["/machines/{space}/{name}/joboutputs/{file}"]["put"]
    assert {"204", "409", "410", "413", "503"} <= set(upload["responses"])
    assert "507" not in upload["responses"]  # a failing store is a 503 (retried)


# -- 8. the last flush on stop writes the newest body of every machine ---------------------------

class SlowFiles(Joboutputs):
    """A batch takes a millisecond per heartbeat more, so a stop lands while a flush is
    writing."""

    def heartbeats(self, beats: Mapping[tuple[str, str], Beat]) -> int:
        time.sleep(0.001 * len(beats))
        return super().heartbeats(beats)


def test_stop_during_a_flush_leaves_every_file_with_its_newest_body(tmp_path: Path) -> None:
    names = [f"cloudvac-aaaaaa-belle-{i:010d}" for i in range(300)]
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    files = SlowFiles(store, UploadLimits(4096, 65536))

    async def run() -> None:
        buffer = HeartbeatBuffer(store, files, flush_seconds=0.01)
        buffer.start()
        for name in names:
            buffer.note(SPACE, name, 1.0, "heartbeat", b"old")
        await asyncio.sleep(0.05)  # a flush of the old bodies is writing now
        for name in names:
            buffer.note(SPACE, name, 2.0, "heartbeat", b"new")
        await buffer.stop()

    try:
        asyncio.run(run())
        stale = [n for n in names if store.joboutput(SPACE, n, "heartbeat") != b"new"]
    finally:
        store.close()
    assert stale == []
