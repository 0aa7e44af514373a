"""The heartbeat fast path (``web/beats.py``) against the real VM door on 127.0.0.1: a warm
machine's heartbeats skip FastAPI and land exactly as before, and every request the fast
path must not answer gets the application's own answer, whether the machine is in the
lookup cache or not."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from cloudvac.model.states import MachineState
from tests.integration.webserver import SPACE, WAIT, Running, poll, web_server

A = "cloudvac-aaaaaa-belle-aaaaaaaaaa"
B = "cloudvac-aaaaaa-belle-bbbbbbbbbb"


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Running]:
    with web_server(tmp_path, upload_max_file_bytes=4096,
                    upload_max_machine_bytes=10240) as running:
        running.add_machine(A)
        running.add_machine(B)
        yield running


def put(web: Running, name: str, file: str, body: bytes,
        authorization: str | None = "own") -> httpx.Response:
    """PUT ``body`` as ``name``'s ``file`` with its own token ("own"), another
    Authorization header value, or none."""
    headers = {} if authorization is None else {
        "Authorization": f"Bearer {web.token(name)}" if authorization == "own"
        else authorization}
    url = f"{web.url}/machines/{SPACE}/{name}/joboutputs/{file}"
    return httpx.put(url, content=body, headers=headers, timeout=WAIT)


def answer(response: httpx.Response) -> tuple[int, str | None]:
    return response.status_code, response.json()["detail"] if response.content else None


def test_a_warm_machines_heartbeats_take_the_fast_path_and_land(web: Running) -> None:
    assert put(web, A, "heartbeat", b"1 first\n").status_code == 204  # looks A up
    taken = web.context.fast_beats
    for i in range(5):
        assert put(web, A, "heartbeat", f"{i} again\n".encode()).status_code == 204
    assert web.context.fast_beats == taken + 5
    assert poll(lambda: web.joboutput(A, "heartbeat") == b"4 again\n")
    record = web.store.machine(SPACE, A)
    assert record is not None and record.heartbeat_at is not None
    metrics = httpx.get(f"{web.operator_url}/metrics", timeout=WAIT).text
    assert 'cloudvac_uploads_total{kind="heartbeat",status="204"} 6.0' in metrics
    assert "cloudvac_upload_bytes_total 48.0" in metrics


@pytest.mark.parametrize(("file", "body", "authorization", "expected"), [
    ("heartbeat", b"x", "Bearer nonsense", (401, "malformed token")),
    ("heartbeat", b"x", None, (401, "missing bearer token")),
    ("heartbeat", b"x", "Basic abc", (401, "missing bearer token")),
    ("heartbeat", b"x", "B's token", (403, "token belongs to another machine")),
    ("heartbeat", bytes(5000), "own", (413, "file larger than 4096 bytes")),
    ("shutdown_message", b"nonsense", "own", (400, "malformed shutdown_message")),
])
def test_what_the_fast_path_must_not_answer_gets_the_applications_answer(
        web: Running, file: str, body: bytes, authorization: str | None,
        expected: tuple[int, str]) -> None:
    if authorization == "B's token":
        authorization = f"Bearer {web.token(B)}"
    cold = answer(put(web, A, file, body, authorization))
    assert put(web, A, "heartbeat", b"warm").status_code == 204  # A in the cache now
    assert put(web, B, "heartbeat", b"warm").status_code == 204
    taken = web.context.fast_beats
    warm = answer(put(web, A, file, body, authorization))
    assert cold[0] == warm[0] == expected[0]
    assert cold[1] == warm[1]
    assert expected[1] in (warm[1] or "")
    assert web.context.fast_beats == taken


def test_a_heartbeat_over_the_machines_quota_is_413_on_the_fast_path(web: Running) -> None:
    """The quota as this instance knows it is checked once the body is in: the fast path
    answers it the way the application does."""
    assert put(web, A, "heartbeat", b"1").status_code == 204
    cold = put(web, B, "one.log", bytes(4096)), put(web, B, "two.log", bytes(4096))
    assert [r.status_code for r in cold] == [204, 204]
    by_application = answer(put(web, B, "heartbeat", bytes(4000)))
    assert put(web, A, "one.log", bytes(4096)).status_code == 204
    assert put(web, A, "two.log", bytes(4096)).status_code == 204
    taken = web.context.fast_beats
    response = put(web, A, "heartbeat", bytes(4000))
    assert answer(response) == by_application == (
        413, "machine's uploads would exceed 10240 bytes")
    assert response.headers["content-type"] == "application/json"
    assert web.context.fast_beats == taken
    assert put(web, A, "heartbeat", b"small").status_code == 204
    assert web.context.fast_beats == taken + 1


def test_a_machine_that_ends_is_refused_once_its_end_is_read(web: Running) -> None:
    """A live machine's lookup is kept for minutes by the fast path; what ends it is
    read every second: from then on its heartbeats get the application's 410."""
    for name in (A, B):
        assert put(web, name, "heartbeat", b"1").status_code == 204
        assert put(web, name, "heartbeat", b"2").status_code == 204
    taken = web.context.fast_beats
    assert taken >= 2
    web.add_machine(A, state=MachineState.STOPPED, stopped_at=time.time())
    web.add_machine(B, state=MachineState.GONE)
    assert poll(lambda: put(web, A, "heartbeat", b"3").status_code == 410)
    assert poll(lambda: put(web, B, "heartbeat", b"3").status_code == 410)
    answers = [put(web, name, "heartbeat", b"4").status_code for name in (A, B)]
    assert answers == [410, 410]
    assert put(web, A, "shutdown_message", b"200 ok").status_code == 204  # final: grace


def test_other_files_and_chunked_bodies_go_to_the_application(web: Running) -> None:
    assert put(web, A, "heartbeat", b"1").status_code == 204
    taken = web.context.fast_beats
    assert put(web, A, "pilot.log", b"log\n").status_code == 204
    chunked = httpx.put(f"{web.url}/machines/{SPACE}/{A}/joboutputs/heartbeat",
                        content=iter([b"chunk", b"ed\n"]),
                        headers={"Authorization": f"Bearer {web.token(A)}"}, timeout=WAIT)
    assert chunked.status_code == 204
    assert web.context.fast_beats == taken
    assert poll(lambda: web.joboutput(A, "heartbeat") == b"chunked\n")
    assert web.joboutput(A, "pilot.log") == b"log\n"


def test_a_client_leaving_mid_heartbeat_is_counted_and_nothing_noted(
        web: Running, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert put(web, A, "heartbeat", b"kept\n").status_code == 204
    parts = urlsplit(web.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=WAIT) as sock:
        sock.sendall(f"PUT /machines/{SPACE}/{A}/joboutputs/heartbeat HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: Bearer {web.token(A)}\r\nContent-Length: 3000\r\n\r\n"
                     .encode() + bytes(100))
        time.sleep(0.2)

    def counted() -> bool:
        text = httpx.get(f"{web.operator_url}/metrics", timeout=WAIT).text
        return "cloudvac_upload_disconnects_total 1.0" in text

    assert poll(counted)
    assert not [r for r in caplog.records if r.exc_info], "no traceback"
    assert poll(lambda: web.joboutput(A, "heartbeat") == b"kept\n")
    time.sleep(1.5)  # a flush period later, still the acknowledged body
    assert web.joboutput(A, "heartbeat") == b"kept\n"


def test_a_token_the_fast_path_verified_before_still_expires(web: Running) -> None:
    token = web.token(A, expires=time.time() + 3)
    assert put(web, A, "heartbeat", b"1", f"Bearer {token}").status_code == 204
    assert put(web, A, "heartbeat", b"2", f"Bearer {token}").status_code == 204
    taken = web.context.fast_beats
    assert taken >= 1
    assert poll(lambda: put(web, A, "heartbeat", b"3", f"Bearer {token}").status_code == 401)
    assert answer(put(web, A, "heartbeat", b"4", f"Bearer {token}")) == (401, "token expired")
    assert put(web, A, "heartbeat", b"5").status_code == 204  # a fresh token of A
