"""Find a site's Keystone URL and a VO's project there: config, then EGI IS, then GOCDB.

* The EGI information system (``GET {is}/site/{site}/`` gives the Keystone ``url``,
  ``GET {is}/site/{site}/{vo}/project`` the project ``id``) is preferred;
* GOCDB (``get_service_endpoint`` for ``org.openstack.nova``) gives only the Keystone URL:
  production endpoints only, the first by URL when a site lists several, parsing only
  ``SERVICE_ENDPOINT`` elements (a paging ``<meta>`` element is ignored).

Answers are cached for ``ttl`` seconds and, when every source fails, the last answer is used
however old (stale-if-error): a site whose information system is down keeps working.
Failures are reported with the libraries' messages redacted (``model.redact``: URL queries,
token-shaped values) and bounded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from defusedxml import ElementTree

from cloudvac.model.errors import Misconfigured, Retryable
from cloudvac.model.redact import redact

log = logging.getLogger("cloudvac.auth.discovery")
PROBLEM_CHARS = 120
"""What one source's failure adds to a message, redacted, at most."""


@dataclass(frozen=True, slots=True)
class SiteEndpoint:
    auth_url: str
    project_id: str | None
    source: str


class SiteDiscovery:
    def __init__(self, is_url: str, gocdb_url: str, ttl: float = 3600.0,
                 timeout: float = 20.0, clock: Callable[[], float] = time.time) -> None:
        self.is_url, self.gocdb_url = is_url.rstrip("/"), gocdb_url
        self.ttl, self.clock = ttl, clock
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=5.0), trust_env=False)
        self._cache: dict[tuple[str, str], tuple[float, SiteEndpoint]] = {}
        self._lock = threading.Lock()

    def find(self, site: str, vo: str) -> SiteEndpoint:
        with self._lock:
            cached = self._cache.get((site, vo))
            if cached is not None and self.clock() - cached[0] < self.ttl:
                return cached[1]
            problems: list[str] = []
            for source in (self._from_is, self._from_gocdb):
                try:
                    found = source(site, vo)
                except (httpx.HTTPError, ValueError, ElementTree.ParseError) as exc:
                    # httpx and parser errors quote URLs (GOCDB's query) and answers
                    problems.append(f"{source.__name__[6:]}: {type(exc).__name__}: "
                                    f"{redact(str(exc), PROBLEM_CHARS)}")
                    continue
                if found is not None:
                    self._cache[(site, vo)] = (self.clock(), found)
                    log.info("space=- machinetype=- machine=- site %s VO %s: Keystone %s, "
                             "project %s (from %s)", site, vo, found.auth_url,
                             found.project_id, found.source)
                    return found
                problems.append(f"{source.__name__[6:]}: site {site} not listed")
            if cached is not None:
                log.warning("space=- machinetype=- machine=- discovery of %s failed (%s); "
                            "using the answer from %.0fs ago", site, "; ".join(problems),
                            self.clock() - cached[0])
                return cached[1]
            unreachable = all("not listed" not in p for p in problems)
            error = Retryable if unreachable else Misconfigured
            raise error(f"cannot discover site {site} for VO {vo}: {'; '.join(problems)}")

    def _from_is(self, site: str, vo: str) -> SiteEndpoint | None:
        response = self._http.get(f"{self.is_url}/site/{site}/")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        url = response.json().get("url")
        if not url:
            return None
        project = self._http.get(f"{self.is_url}/site/{site}/{vo}/project")
        project_id = project.json().get("id") if project.status_code == 200 else None
        return SiteEndpoint(str(url), str(project_id) if project_id else None, "EGI IS")

    def _from_gocdb(self, site: str, vo: str) -> SiteEndpoint | None:
        response = self._http.get(self.gocdb_url, params={
            "method": "get_service_endpoint", "service_type": "org.openstack.nova",
            "sitename": site, "monitored": "Y"})
        response.raise_for_status()
        root = ElementTree.fromstring(response.content)
        urls = sorted(
            (endpoint.findtext("URL") or "").strip()
            for endpoint in root.iter("SERVICE_ENDPOINT")
            if (endpoint.findtext("IN_PRODUCTION") or "").strip().upper() == "Y"
            and (endpoint.findtext("SITENAME") or site).strip() == site
            and (endpoint.findtext("URL") or "").strip())
        return SiteEndpoint(urls[0], None, "GOCDB") if urls else None

    def close(self) -> None:
        self._http.close()
