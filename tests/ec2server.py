"""The EC2 API on 127.0.0.1 for the tests: moto in server mode, one per test run.

``moto_ec2`` (session scope) starts ``python -m moto.server -H 127.0.0.1 -p PORT`` as a
subprocess (AMI ids and instance types validated, as AWS does; no default AMIs, which take
seconds to load), and stops it at the end.  ``ec2`` (function scope) resets moto's state
through ``/moto-api/reset`` and registers one AMI, so each test starts from an empty
account.

``FaultProxy`` is a TEST FAKE: a loopback HTTP proxy in front of moto that answers chosen
EC2 actions with an AWS error document (moto has no error injection for EC2), so the
adapter's translation of quota, auth and throttling errors is tested over real HTTP with
botocore's real parsing and retries.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

REGION = "eu-west-1"
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzz9secretCanary42"
"""The secret access key every test writes to its 0600 file: a canary no output may show."""
IMAGE_NAME = "cloudvac-test-el9"
START_SECONDS = 120.0  # a loaded 2-core machine; moto starts in about 1 s on a quiet one


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MotoServer:
    url: str
    process: subprocess.Popen[bytes]
    image_id: str = ""

    def client(self, service: str = "ec2", url: str | None = None) -> Any:
        import boto3

        return boto3.client(service, region_name=REGION, endpoint_url=url or self.url,
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)

    def reset(self) -> None:
        httpx.post(f"{self.url}/moto-api/reset", timeout=60).raise_for_status()
        self.image_id = self.client().register_image(
            Name=IMAGE_NAME, RootDeviceName="/dev/sda1",
            BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 10}}]
        )["ImageId"]


def credentials_file(directory: Path, secret: str = SECRET_KEY) -> Path:
    """An AWS credentials file of mode 0600 holding the test keys."""
    path = directory / "aws-credentials"
    path.write_text(f"[default]\naws_access_key_id = {ACCESS_KEY}\n"
                    f"aws_secret_access_key = {secret}\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def moto_ec2() -> Iterator[MotoServer]:
    port = free_port()
    env = {**os.environ, "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
           "MOTO_ENABLE_AMI_VALIDATION": "true",
           "MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION": "true"}
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                "-p", str(port)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    server = MotoServer(f"http://127.0.0.1:{port}", process)
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            assert process.poll() is None, "moto.server exited at start"
            try:
                httpx.get(f"{server.url}/moto-api/", timeout=5)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "moto.server did not answer in time"
                time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def ec2(moto_ec2: MotoServer) -> MotoServer:
    """The moto server, reset to an empty account with one registered AMI."""
    moto_ec2.reset()
    return moto_ec2


@dataclass
class Fault:
    """An answer instead of moto's: an AWS error document, or (``status`` 200) ``body``."""

    status: int
    code: str
    message: str
    times: int = 1_000_000
    body: bytes = b""


#: DescribeInstances' answer when EC2 has not caught up with a create yet (eventual
#: consistency): no reservation at all.
EMPTY_LISTING = Fault(200, "", "", body=(
    b'<?xml version="1.0" encoding="UTF-8"?>\n<DescribeInstancesResponse '
    b'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>0</requestId>'
    b"<reservationSet/></DescribeInstancesResponse>"))


@dataclass
class FaultProxy:
    """TEST FAKE (see the module docstring): forwards to moto, except the actions in
    ``faults``, answered with ``Fault``'s AWS error document ``times`` times."""

    upstream: str
    faults: dict[str, Fault] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)
    url: str = ""
    _server: ThreadingHTTPServer | None = None
    _client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=60))

    def __enter__(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                action = parse_qs(body.decode()).get("Action", [""])[0]
                proxy.seen.append(action)
                fault = proxy.faults.get(action)
                if fault is not None and fault.times > 0:
                    fault.times -= 1
                    self._answer(fault.status, fault.body or _error_xml(fault.code,
                                                                         fault.message))
                    return
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "content-length")}
                answer = proxy._client.post(proxy.upstream, content=body, headers=headers)
                self._answer(answer.status_code, answer.content)

            def _answer(self, status: int, content: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
        self._client.close()


def _error_xml(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}'
            f"</Code><Message>{message}</Message></Error></Errors>"
            "<RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>").encode()
