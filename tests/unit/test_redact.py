"""``model.redact``: each secret shape goes, operator text stays, the length is bounded, and
for any text it never raises and is idempotent.  And the log filter built on it
(``cloudvac.logs``): arguments and tracebacks redacted, one line of at most 4 KB."""

from __future__ import annotations

import base64
import io
import json
import logging
import timeit
from functools import partial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudvac.logs import LINE_BYTES, redacting
from cloudvac.model.redact import CUT, LIMIT, MARK, MIN_LIMIT, redact

SECRET = "s3cr3t-Pa55w0rd"
TOKEN = "gAAAAABmQ2x5bG9yZW1pcHN1bWRvbG9yc2l0YW1ldGNvbnNlY3RldHVy_Zm9vYmFy-YmF6cXV4"
JWT = ("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MTcwMDAwMDAwMH0."
       "c2lnbmF0dXJlLW9mLXRoZS10b2tlbi1oZXJlLXBsZWFzZQ")
BASIC = base64.b64encode(b"cloudvac:" + SECRET.encode()).decode()
USER_DATA = base64.b64encode(
    f"#cloud-config\nwrite_files:\n- path: /etc/token\n  content: {SECRET}\n".encode()
).decode()


@pytest.mark.parametrize("text, gone", [
    (f"Authorization: Basic {BASIC}", BASIC),
    (f"{{'Authorization': 'Bearer {TOKEN}', 'Host': 'x'}}", TOKEN),
    (f'"authorization": "Basic {BASIC}"', BASIC),
    (f"Proxy-Authorization=Digest {SECRET}", SECRET),
    (f"sent Bearer {SECRET} to Keystone", SECRET),
    (f"the client's header was Basic {BASIC}", BASIC),
    (f"bearer token {JWT} refused", JWT),
    (f"X-Auth-Token: {SECRET}", SECRET),
    (f"x-subject-token={SECRET}", SECRET),
    (f"grant_type=refresh_token&refresh_token={SECRET}&scope=openid", SECRET),
    (f'{{"client_secret": "{SECRET}", "error": "invalid_client"}}', SECRET),
    (f"{{'access_token': '{SECRET}'}}", SECRET),
    (f"password: {SECRET}", SECRET),
    (f'{{"password": "two {SECRET} words"}}', "words"),
    (f'"{{\\"password\\": \\"{SECRET}\\"}}"', SECRET),  # JSON inside a JSON string
    (f"application_credential_secret={SECRET}", SECRET),
    (f"api_key={SECRET}; next", SECRET),
    (f"Cookie: session={SECRET}", SECRET),
    (f'"user_data": "{SECRET}"', SECRET),
    (f"https://idp.example/cb?code={SECRET}&state=1", SECRET),
    (f"https://idp.example/cb#access_token={SECRET}", SECRET),
    (f"https://alice:{SECRET}@keystone.example:5000/v3", SECRET),
    (f"Invalid input for field/attribute user_data. Value: {USER_DATA}", USER_DATA[8:40]),
    ("key 4f1c2a9be0d35c7718f2a6b9e04d3c5a1b2c3d4e5f60718293a4b5c6d7e8f90", "4f1c2a9be0d35c77"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7\nQUJD\n-----END RSA PRIVATE KEY-----",
     "QUJD"),
    ("proxy: -----BEGIN CERTIFICATE-----\\nMIIB\\nQUJD\\n-----END CERTIFICATE-----", "QUJD"),
    ("cut off: -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkq\nQUJD", "QUJD"),
])
def test_each_shape_is_redacted(text: str, gone: str) -> None:
    cleaned = redact(text)
    assert gone not in cleaned, cleaned
    assert MARK in cleaned


@pytest.mark.parametrize("text", [
    "Quota exceeded for cores: Requested 8, but already used 40 of 48 cores",
    "No valid host was found. There are not enough hosts available.",
    "Flavor m1.xlarge could not be found.",
    "Instance 3f2a1b4c-1234-4abc-9def-0123456789ab could not be found.",
    "space=nova.example machinetype=belle machine=cloudvac-3f2a1b-belle-x7k2m9q1zz create: "
    "created with flavor m1.small (1 processors)",
    "create refused (QuotaExceeded): create: Quota exceeded for instances: Requested 1, but "
    "already used 10 of 10 instances",
    "The request you have made requires authentication.",
    "Check-in https://aai.egi.eu/auth/realms/egi refused the refresh_token grant "
    "(invalid_grant: Token is not active); refresh token expired or revoked: obtain a new "
    "one (Check-in token portal or oidc-agent) and replace egi_checkin_refresh_token_file",
    "Basic authentication failed; Bearer tokens are refused",
    "egi_checkin_client_secret_file = /etc/cloudvac/checkin.secret",
    '{"token_expires_in": 300, "credential_expires_in": 3600.0, "last_error": ""}',
    "/work/main/.venv/lib/python3.12/site-packages/keystoneauth1/session.py line 1022",
    "image ubuntu-22.04-server-cloudimg-amd64 on network provider-net-vlan-2001-public",
    "Keystone http://127.0.0.1:5000/v3 (identity provider egi.eu, protocol openid) refused",
    "access token sha256:0a1b2c3d4e, expires_in 300s",
    "cycle exceeded space_timeout_seconds=60 and was cancelled",
    "CredentialDead: Check-in https://aai.egi.eu refused the client_credentials grant",
])
def test_operator_text_is_left_intact(text: str) -> None:
    assert redact(text) == text


def test_length_is_bounded_with_a_marker() -> None:
    assert len(redact("word " * 10_000)) <= LIMIT
    assert redact("word " * 10_000).endswith(CUT)
    assert len(redact("x" * 100, limit=50)) <= 50
    assert len(redact("ab " * 100, limit=1)) <= MIN_LIMIT  # a silly limit is raised
    short = "No valid host was found."
    assert redact(short, limit=len(short)) == short


def test_a_cut_never_leaves_part_of_a_secret() -> None:
    """Cut just after a key or inside a blob: what remains is not the secret's head."""
    for pad in range(0, 60):
        text = "x" * pad + f" refresh_token={SECRET} and more text after it " * 3
        cleaned = redact(text, limit=MIN_LIMIT + 20)
        assert SECRET[:6] not in cleaned, (pad, cleaned)
    huge = "prefix " + USER_DATA * 2000  # far beyond the scan bound: the blob is dropped
    cleaned = redact(huge)
    assert USER_DATA[:12] not in cleaned and cleaned.startswith("prefix")


def test_cost_per_log_line() -> None:
    """Fast enough for every log line: a typical line in about 10 µs, a 4 KB Nova error
    body quoting user_data in about 0.2 ms, input of any size in a bounded time (bounds
    here are generous: the CI box is loaded)."""
    line = ("space=nova.example machinetype=belle machine=cloudvac-3f2a1b-belle-x7k2m9q1zz "
            "create refused (Misconfigured): create: Invalid key_name provided.")
    body = json.dumps({"badRequest": {"code": 400, "message": "Invalid input: " + USER_DATA * 20}})
    blob = base64.b64encode(bytes(range(256)) * 60).decode() + " x" * 100_000
    for text, bound in ((line, 200e-6), (body[:4096], 5e-3), (blob, 20e-3)):
        runs = 50
        best = min(timeit.repeat(partial(redact, text, 4096), number=runs, repeat=5))
        assert best / runs < bound, (text[:40], best / runs)


SHAPES = st.sampled_from([
    "Authorization: ", "Basic ", "Bearer ", "password=", "token: ", '"secret": "', "'", '"',
    "https://u:p@h/p?q=1", "#", "?", "-----BEGIN RSA PRIVATE KEY-----", "-----END X-----",
    "eyJ", ".", " ", "\n", "=", "&", "[REDACTED]", CUT, JWT, TOKEN, USER_DATA[:40],
    "abcdefghijklmnopqrstuvwxyz0123456789", "3f2a1b4c-1234-4abc-9def-0123456789ab", "\\",
])
TEXTS = st.one_of(st.text(max_size=300),
                  st.lists(st.one_of(SHAPES, st.text(max_size=8)), max_size=40).map("".join))


@settings(max_examples=400, deadline=None)
@given(text=TEXTS, limit=st.integers(min_value=0, max_value=400))
def test_never_raises_is_bounded_and_idempotent(text: str, limit: int) -> None:
    once = redact(text, limit)
    assert len(once) <= max(limit, MIN_LIMIT)
    assert redact(once, limit) == once


def logged(*args: object, exc: BaseException | None = None) -> str:
    """What cloudvac's handler writes for one record logged with ``args``."""
    stream = io.StringIO()
    handler = redacting(logging.StreamHandler(stream))
    logger = logging.getLogger("cloudvac.test_redact")
    logger.addHandler(handler)
    logger.propagate, previous = False, logger.propagate
    try:
        if exc is None:
            logger.error(*args)
        else:
            try:
                raise exc
            except BaseException:
                logger.exception(*args)
    finally:
        logger.removeHandler(handler)
        logger.propagate = previous
    return stream.getvalue()


def test_the_log_filter_redacts_arguments_and_tracebacks() -> None:
    text = logged("refused: %s (%d)", f"Authorization: Basic {BASIC}", 401)
    assert BASIC not in text and "Authorization: Basic [REDACTED] (401)" in text
    text = logged("create failed", exc=RuntimeError(f"user_data: {USER_DATA}"))
    assert "Traceback" in text and USER_DATA[:20] not in text
    bad = logged("bad format %s %s", f"password={SECRET}")  # must not raise out of log.error
    assert "arguments not formatted" in bad and SECRET not in bad


def test_every_log_line_is_one_line_of_at_most_4_kb() -> None:
    text = logged("echo: %s", "é" * 10_000 + "\nFAKE 2026 ERROR forged line\r")
    lines = text.splitlines()
    assert len(lines) == 1 and len(lines[0].encode()) <= LINE_BYTES and CUT in lines[0]
    text = logged("echo", exc=ValueError("x" * 20_000))
    assert all(len(line.encode()) <= LINE_BYTES for line in text.splitlines())
    assert "\\nFAKE" in logged("%s", "a\nFAKE")
