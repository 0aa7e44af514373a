"""Site discovery against local HTTP servers serving EGI IS JSON and GOCDB XML fixtures."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from cloudvac.auth.discovery import SiteDiscovery
from cloudvac.model.errors import Misconfigured, Retryable

GOCDB = """<?xml version="1.0" encoding="UTF-8"?>
<results>
  <meta><count>3</count><max_page_size>1000</max_page_size></meta>
  <SERVICE_ENDPOINT PRIMARY_KEY="1G0">
    <HOSTNAME>old.ifca.es</HOSTNAME><SERVICE_TYPE>org.openstack.nova</SERVICE_TYPE>
    <IN_PRODUCTION>N</IN_PRODUCTION><SITENAME>IFCA-LCG2</SITENAME>
    <URL>https://old.ifca.es:5000/v3/</URL>
  </SERVICE_ENDPOINT>
  <SERVICE_ENDPOINT PRIMARY_KEY="2G0">
    <HOSTNAME>api2.cloud.ifca.es</HOSTNAME><SERVICE_TYPE>org.openstack.nova</SERVICE_TYPE>
    <IN_PRODUCTION>Y</IN_PRODUCTION><SITENAME>IFCA-LCG2</SITENAME>
    <URL>https://api2.cloud.ifca.es:5000/v3/</URL>
  </SERVICE_ENDPOINT>
  <SERVICE_ENDPOINT PRIMARY_KEY="3G0">
    <HOSTNAME>api.cloud.ifca.es</HOSTNAME><SERVICE_TYPE>org.openstack.nova</SERVICE_TYPE>
    <IN_PRODUCTION>Y</IN_PRODUCTION><SITENAME>IFCA-LCG2</SITENAME>
    <URL>https://api.cloud.ifca.es:5000/v3/</URL>
  </SERVICE_ENDPOINT>
</results>
"""
IS_SITES = {"CESGA": {"id": "x1", "name": "CESGA", "url": "https://fedcloud-osservices.egi.cesga.es:5000",
                      "state": "", "hostname": "fedcloud-osservices.egi.cesga.es"}}
IS_PROJECTS = {("CESGA", "belle"): {"id": "6f1c0bb1", "name": "belle"}}


class Fixtures:
    def __init__(self) -> None:
        self.up = True
        self.requests: list[str] = []


@pytest.fixture
def servers() -> Iterator[tuple[str, str, Fixtures]]:
    state = Fixtures()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            if not state.up:
                self.send_error(503)
                return
            url = urlparse(self.path)
            if url.path.startswith("/is/"):
                parts = [p for p in url.path.split("/") if p][1:]
                body: object = None
                if len(parts) == 2 and parts[0] == "site":
                    body = IS_SITES.get(parts[1])
                elif len(parts) == 4 and parts[3] == "project":
                    body = IS_PROJECTS.get((parts[1], parts[2]))
                if body is None:
                    self.send_error(404)
                    return
                payload = json.dumps(body).encode()
                content = "application/json"
            else:
                query = parse_qs(url.query)
                assert query["method"] == ["get_service_endpoint"]
                assert query["service_type"] == ["org.openstack.nova"]
                payload = GOCDB.encode() if query["sitename"] == ["IFCA-LCG2"] else \
                    b"<results></results>"
                content = "text/xml"
            self.send_response(200)
            self.send_header("Content-Type", content)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield f"{base}/is", f"{base}/gocdb/", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_information_system_first(servers: tuple[str, str, Fixtures]) -> None:
    is_url, gocdb_url, _ = servers
    found = SiteDiscovery(is_url, gocdb_url).find("CESGA", "belle")
    assert (found.auth_url, found.project_id, found.source) == (
        "https://fedcloud-osservices.egi.cesga.es:5000", "6f1c0bb1", "EGI IS")


def test_gocdb_fallback_production_only_first_by_url(servers: tuple[str, str, Fixtures]
                                                     ) -> None:
    is_url, gocdb_url, _ = servers
    found = SiteDiscovery(is_url, gocdb_url).find("IFCA-LCG2", "belle")
    assert (found.auth_url, found.project_id, found.source) == (
        "https://api.cloud.ifca.es:5000/v3/", None, "GOCDB")


def test_cache_ttl_and_stale_if_error(servers: tuple[str, str, Fixtures]) -> None:
    is_url, gocdb_url, state = servers
    now = [0.0]
    discovery = SiteDiscovery(is_url, gocdb_url, ttl=100, clock=lambda: now[0])
    first = discovery.find("CESGA", "belle")
    count = len(state.requests)
    now[0] = 50
    assert discovery.find("CESGA", "belle") == first and len(state.requests) == count
    now[0] = 500
    state.up = False
    assert discovery.find("CESGA", "belle") == first  # stale, but better than nothing
    assert len(state.requests) > count


def test_unknown_site_and_sources_down(servers: tuple[str, str, Fixtures]) -> None:
    is_url, gocdb_url, state = servers
    with pytest.raises(Misconfigured, match="not listed"):
        SiteDiscovery(is_url, gocdb_url).find("NOWHERE", "belle")
    state.up = False
    with pytest.raises(Retryable, match="cannot discover site CESGA"):
        SiteDiscovery(is_url, gocdb_url).find("CESGA", "belle")
