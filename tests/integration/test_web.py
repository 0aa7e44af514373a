"""The VM-facing web service, served for real by uvicorn on 127.0.0.1."""

from __future__ import annotations

import datetime
import logging
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudvac.model.states import MachineState, ShutdownMessage
from cloudvac.web.listen import WebConfigError
from cloudvac.web.server import check_tls
from tests.integration.webserver import SPACE, Running, web_server

A = "cloudvac-aaaaaa-belle-aaaaaaaaaa"
B = "cloudvac-aaaaaa-belle-bbbbbbbbbb"


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Running]:
    with web_server(tmp_path) as running:
        running.add_machine(A)
        running.add_machine(B)
        yield running


def upload_url(web: Running, name: str, file: str) -> str:
    return f"{web.url}/machines/{SPACE}/{name}/joboutputs/{file}"


def put_raw(url: str, body: bytes, authorization: str | None) -> httpx.Response:
    """PUT ``body`` with that Authorization header (none if None)."""
    headers = {} if authorization is None else {"Authorization": authorization}
    return httpx.put(url, content=body, headers=headers, timeout=10)


def put(web: Running, name: str, file: str, body: bytes,
        token: str | None = None) -> httpx.Response:
    """Upload ``body`` as machine ``name``'s ``file``, with ``token`` as bearer if given."""
    return put_raw(upload_url(web, name, file), body,
                   None if token is None else f"Bearer {token}")


def wait_for(check: Callable[[], object], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_heartbeat_lands_in_store_and_file(web: Running) -> None:
    assert put(web, A, "heartbeat", b"123 0.5\n", web.token(A)).status_code == 204

    def heartbeat_stored() -> bool:
        record = web.store.machine(SPACE, A)
        return record is not None and record.heartbeat_at is not None

    # batched: both the store and the file are written by the flusher within a second
    assert wait_for(heartbeat_stored)
    assert wait_for(lambda: web.joboutput(A, "heartbeat") is not None)
    assert web.joboutput(A, "heartbeat") == b"123 0.5\n"


def test_other_machines_token_is_forbidden_and_writes_nothing(web: Running) -> None:
    response = put(web, B, "heartbeat", b"x", web.token(A))
    assert response.status_code == 403
    assert response.json()["detail"] == "token belongs to another machine"
    response = put(web, B, "shutdown_message", b"200 ok", web.token(A))
    assert response.status_code == 403
    assert web.joboutput(B, "heartbeat") is None
    assert web.joboutput(B, "shutdown_message") is None
    time.sleep(1.2)  # a flush period: nothing may reach B's record either
    record = web.store.machine(SPACE, B)
    assert record is not None and record.heartbeat_at is None and record.shutdown is None


@pytest.mark.parametrize(("auth", "status", "detail"), [
    (None, 401, "missing bearer token"),
    ("Basic abc", 401, "missing bearer token"),
    ("Bearer nonsense", 401, "malformed token"),
    ("Bearer v1.d2ViLmV4YW1wbGUvY2xvdWR2YWMtYWFhYWFhLWJlbGxlLWFhYWFhYWFhYWE.9999999999."
     + "f" * 43, 401, "token signature invalid"),
])
def test_bad_tokens(web: Running, auth: str | None, status: int, detail: str) -> None:
    response = put_raw(upload_url(web, A, "heartbeat"), b"x", auth)
    assert (response.status_code, response.json()["detail"]) == (status, detail)
    assert web.joboutput(A, "heartbeat") is None


def test_expired_token(web: Running) -> None:
    response = put(web, A, "heartbeat", b"x", web.token(A, expires=time.time() - 1))
    assert (response.status_code, response.json()["detail"]) == (401, "token expired")


@pytest.mark.parametrize("path", [
    f"/machines/{SPACE}/{A}/joboutputs/..%2F..%2Fescape",
    f"/machines/{SPACE}/{A}/joboutputs/../../escape",
    f"/machines/{SPACE}/{A}/joboutputs/.hidden",
    f"/machines/{SPACE}/{A}/joboutputs/a%2Fb",
    f"/machines/..%2F{SPACE}/{A}/joboutputs/x",
    f"/machines/{SPACE}/..%2F{A}/joboutputs/x",
])
def test_traversal_is_refused_and_writes_nothing(web: Running, path: str) -> None:
    response = httpx.put(web.url + path, content=b"evil",
                         headers={"Authorization": f"Bearer {web.token(A)}"})
    assert 400 <= response.status_code < 500
    written = [p for p in web.settings.state_dir.rglob("*") if p.is_file()
               and p.name not in ("cloudvac.db", "server.secret") and "-wal" not in p.name
               and "-shm" not in p.name]
    assert written == []
    assert web.store.joboutput_files(SPACE, A) == []


def test_size_limits(web: Running) -> None:
    token = web.token(A)
    assert put(web, A, "big.log", b"x" * 5000, token).status_code == 413
    assert web.joboutput(A, "big.log") is None
    for i in range(2):
        assert put(web, A, f"part{i}.log", b"x" * 4000, token).status_code == 204
    response = put(web, A, "part2.log", b"x" * 4000, token)
    assert response.status_code == 413 and "exceed" in response.json()["detail"]
    assert web.joboutput(A, "part2.log") is None
    assert put(web, A, "part1.log", b"y" * 4000, token).status_code == 204  # replace is fine


def test_unknown_machine(web: Running) -> None:
    ghost = "cloudvac-aaaaaa-belle-gggggggggg"
    assert put(web, ghost, "shutdown_message", b"200 ok", web.token(ghost)).status_code == 404


@pytest.mark.parametrize("body", [b"", b"hello", b"99 too short", b"800 no such class",
                                  b"\xff\xfe", b"2000 five digits"])
def test_malformed_shutdown_message(web: Running, body: bytes) -> None:
    response = put(web, A, "shutdown_message", body, web.token(A))
    assert response.status_code == 400 and "malformed shutdown_message" in response.json()[
        "detail"]
    assert web.joboutput(A, "shutdown_message") is None
    record = web.store.machine(SPACE, A)
    assert record is not None and record.shutdown is None


def test_shutdown_message_is_parsed_and_stored(web: Running) -> None:
    assert put(web, A, "shutdown_message", b"300 Nothing to do\n", web.token(A)).status_code \
        == 204
    record = web.store.machine(SPACE, A)
    assert record is not None and record.shutdown == ShutdownMessage(300, "Nothing to do")
    assert web.joboutput(A, "shutdown_message") == b"300 Nothing to do\n"


def test_machine_and_job_features_match_config_and_store(web: Running) -> None:
    def get(kind: str, key: str) -> httpx.Response:
        return httpx.get(f"{web.url}/machines/{SPACE}/{A}/{kind}/{key}",
                         headers={"Authorization": f"Bearer {web.token(A)}"})

    expected = {
        ("machinefeatures", "total_cpu"): "4", ("machinefeatures", "hs06"): "40",
        ("machinefeatures", "jobslots"): "1",
        ("machinefeatures", "shutdowntime"): str(1_700_000_000 + 7200),
        ("jobfeatures", "allocated_cpu"): "4", ("jobfeatures", "hs06_job"): "40",
        ("jobfeatures", "wall_limit_secs"): "7200", ("jobfeatures", "cpu_limit_secs"): "28800",
        ("jobfeatures", "max_rss_bytes"): str(4 * 2000 * 1024 * 1024),
        ("jobfeatures", "jobstart_secs"): "1700000000", ("jobfeatures", "job_id"): A,
    }
    for (kind, key), value in expected.items():
        response = get(kind, key)
        assert (response.status_code, response.text.strip()) == (200, value), (kind, key)
    assert get("machinefeatures", "nonsense").status_code == 404
    web.store.set_drain(SPACE, "belle", True)
    drained = int(get("machinefeatures", "shutdowntime").text)
    assert drained <= time.time() + 1
    other = httpx.get(f"{web.url}/machines/{SPACE}/{B}/jobfeatures/allocated_cpu",
                      headers={"Authorization": f"Bearer {web.token(A)}"})
    assert other.status_code == 403


def test_heartbeat_list_is_for_machines_of_the_space_and_lists_live_machines(
        web: Running) -> None:
    assert put(web, A, "heartbeat", b"1", web.token(A)).status_code == 204
    url = f"{web.url}/heartbeatlists/{SPACE}/belle"
    own = {"Authorization": f"Bearer {web.token(B)}"}
    assert wait_for(lambda: A in httpx.get(url, headers=own).text, seconds=30)
    lines = httpx.get(url, headers=own).text.splitlines()
    assert len(lines) == 1 and lines[0].split()[1] == A
    assert httpx.get(f"{web.url}/heartbeatlists/{SPACE}/nope", headers=own).status_code == 404
    assert httpx.get(url).status_code == 401
    stranger = {"Authorization": f"Bearer {web.signer.token('other.example', A, 2e9)}"}
    assert httpx.get(url, headers=stranger).status_code == 403


def test_user_data_metrics_health_status(web: Running) -> None:
    response = httpx.get(f"{web.url}/machines/{SPACE}/{A}/user_data",
                         headers={"Authorization": f"Bearer {web.token(A)}"})
    assert response.status_code == 200 and response.text.startswith("#cloud-config")
    assert "/usr/local/libexec/cloudvac/agent.py" in response.text
    assert httpx.get(f"{web.url}/machines/{SPACE}/{A}/user_data").status_code == 401
    put(web, A, "heartbeat", b"1", web.token(A))
    metrics = httpx.get(f"{web.operator_url}/metrics").text
    assert 'cloudvac_uploads_total{kind="heartbeat",status="204"} 1.0' in metrics
    assert httpx.get(f"{web.operator_url}/healthz").text.startswith("OK: ")
    rows = httpx.get(f"{web.operator_url}/status").json()
    assert rows[0]["machinetype"] == "belle" and rows[0]["running"] == 2
    for path in ("/metrics", "/status", "/openapi.json", "/docs"):  # not on the VMs' door
        assert httpx.get(web.url + path).status_code == 404, path


def test_gone_machine_refuses_heartbeats(web: Running) -> None:
    web.add_machine(A, state=MachineState.GONE)
    assert put(web, A, "heartbeat", b"1", web.token(A)).status_code == 410


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["GET", "PUT", "POST", "DELETE"]),
       segments=st.lists(st.one_of(st.sampled_from(["machines", SPACE, A, B, "joboutputs",
                                                     "machinefeatures", "jobfeatures",
                                                     "heartbeat", "shutdown_message",
                                                     "heartbeatlists", "belle", "user_data",
                                                     "..", "%2e%2e", ""]),
                                   st.text(min_size=1, max_size=12)), max_size=6),
       body=st.binary(max_size=300), auth=st.sampled_from(["own", "other", "none", "junk"]))
def test_fuzz_never_a_server_error(web: Running, method: str, segments: list[str],
                                   body: bytes, auth: str) -> None:
    token = {"own": web.token(A), "other": web.token(B), "none": "", "junk": "v1.x.1.y"}[auth]
    path = "/" + "/".join(quote(s, safe="%.-_~") for s in segments)
    response = httpx.request(method, web.url + path, content=body,
                             headers={"Authorization": f"Bearer {token}"} if token else {})
    assert response.status_code < 500, (method, path, response.text)


def test_no_token_or_secret_in_debug_logs(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with web_server(tmp_path) as web:
        web.add_machine(A)
        token = web.token(A)
        put(web, A, "heartbeat", b"1", token)
        put(web, A, "shutdown_message", b"200 Success", token)
        put(web, A, "heartbeat", b"1", web.token(B))
        put(web, A, "heartbeat", b"1", token + "x")
        secret = (tmp_path / "server.secret").read_text().strip()
    text = caplog.text
    assert caplog.records, "DEBUG logging was captured"
    assert token not in text and token.split(".")[3] not in text and secret not in text


def test_server_secret_file_is_0600_and_unsafe_mode_refused(tmp_path: Path) -> None:
    from cloudvac.auth.vmtokens import SecretFileError, load_or_create_secret

    first = load_or_create_secret(tmp_path)
    assert (tmp_path / "server.secret").stat().st_mode & 0o777 == 0o600
    assert load_or_create_secret(tmp_path) == first
    (tmp_path / "server.secret").chmod(0o644)
    with pytest.raises(SecretFileError, match="chmod 600"):
        load_or_create_secret(tmp_path)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_serves_with_configured_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    with web_server(tmp_path / "state", web_tls_cert=cert, web_tls_key=key) as web:
        assert web.url.startswith("https://")
        trusted = ssl.create_default_context(cafile=str(cert))
        assert httpx.get(f"{web.url}/healthz", verify=trusted).status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{web.url}/healthz")  # not trusted by default: real TLS


def test_tls_startup_errors_are_clear(tmp_path: Path) -> None:
    from cloudvac.config import Settings

    cert, key = _self_signed(tmp_path)
    cases = [
        ({"web_listen": "0.0.0.0:8443"}, "only allowed on loopback"),
        ({"web_tls_cert": cert}, "set both web_tls_cert and web_tls_key"),
        ({"web_tls_cert": cert, "web_tls_key": tmp_path / "missing.pem"},
         "missing.pem: No such file"),
        ({"web_tls_cert": key, "web_tls_key": cert}, "do not form a usable pair"),
    ]
    for options, words in cases:
        with pytest.raises(WebConfigError, match=words):
            check_tls(Settings(state_dir=tmp_path, **options))  # type: ignore[arg-type]
    key.chmod(0)
    if not Path("/proc/self").exists() or __import__("os").geteuid() != 0:
        with pytest.raises(WebConfigError, match="Permission denied"):
            check_tls(Settings(state_dir=tmp_path, web_tls_cert=cert, web_tls_key=key))


def test_housekeeping_removes_only_old_uploads_of_ended_machines(web: Running) -> None:
    from cloudvac.service import housekeeping

    for name in (A, B):
        assert put(web, name, "job.log", b"log", web.token(name)).status_code == 204
    web.add_machine(B, state=MachineState.GONE)
    later = time.time() + 4 * 86400  # both uploads are older than log_retention_hours then
    housekeeping(web.settings, web.store, web.context.files, time.time())
    assert web.joboutput(B, "job.log") == b"log", "ended, but within log_retention_hours"
    removed = housekeeping(web.settings, web.store, web.context.files, later)
    assert removed >= 1
    assert web.joboutput(A, "job.log") == b"log"  # alive: kept however old
    assert web.store.joboutput_files(SPACE, B) == []


def test_a_failing_store_is_503_with_retry_after_and_keeps_the_old_version(
        web: Running) -> None:
    """The database refuses every write of an upload (a trigger raising SQLite's own
    'database or disk is full'): 503 with Retry-After, which the agent retries; the
    previous version stays and a refused shutdown message is not recorded either."""
    import sqlite3

    token = web.token(A)
    assert put(web, A, "job.log", b"first\n", token).status_code == 204
    database = web.settings.state_dir / "cloudvac.db"
    with sqlite3.connect(database) as connection:
        for event in ("INSERT", "UPDATE"):
            connection.execute(f"CREATE TRIGGER full_{event.lower()} BEFORE {event} ON "
                               "joboutputs BEGIN SELECT RAISE(ABORT, 'database or disk is "
                               "full'); END")
    try:
        response = put(web, A, "job.log", b"y" * 4000, token)
        assert response.status_code == 503, response.text
        assert int(response.headers["Retry-After"]) > 0
        assert web.joboutput(A, "job.log") == b"first\n", "the old version stays"
        response = put(web, A, "shutdown_message", b"200 ok", token)
        assert response.status_code == 503
        record = web.store.machine(SPACE, A)
        assert record is not None and record.shutdown is None, "refused means not recorded"
        assert web.joboutput(A, "shutdown_message") is None
        metrics = httpx.get(f"{web.operator_url}/metrics", timeout=10).text
        assert "cloudvac_web_store_errors_total 2.0" in metrics
    finally:
        with sqlite3.connect(database) as connection:
            connection.execute("DROP TRIGGER full_insert")
            connection.execute("DROP TRIGGER full_update")
    assert put(web, A, "shutdown_message", b"200 ok", token).status_code == 204
    assert web.joboutput(A, "shutdown_message") == b"200 ok"
