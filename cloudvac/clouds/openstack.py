"""The OpenStack adapter: openstacksdk over a keystoneauth1 session, one per space.

What each call costs per cycle: the listing is one filtered ``GET /servers/detail`` per
page of up to the cloud's ``max_limit`` (1,000 by default), decoded with msgspec, in full
every ``full_listing_seconds`` and as a ``changes-since`` listing in between (usually one
short page, see ``novalist``); limits are one ``GET /limits``, skipped by the cycle when
the space is already full; flavors are listed once and cached; creates and deletes are
one call each.  Authentication happens when the token nears expiry, not per cycle.

Blocking SDK calls run in daemon threads (``auth/cancel.py``), at most ``api_concurrency``
at a time per space, each bounded by ``api_timeout_seconds``; so one slow cloud never
stalls another space, and a cancelled cycle's calls stop retrying and never delay exit.
Creates are never retried automatically (the engine's intents handle unknown outcomes);
listing, limits and deletes are retried on connection errors and 5xx by keystoneauth.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlparse

import msgspec
import openstack.connection
import openstack.exceptions as sdk_exc
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import session as ks_session

from cloudvac.auth.cancel import run_cancellable
from cloudvac.auth.checkin import CheckinTokenSource
from cloudvac.auth.discovery import SiteDiscovery
from cloudvac.auth.keystone import checkin_source, make_plugin, make_session
from cloudvac.clouds import nova
from cloudvac.clouds.novalist import ServerListing, observe
from cloudvac.config.models import Space
from cloudvac.config.openstack import UUID_RE, OpenStackSpace
from cloudvac.config.secrets import SecretError
from cloudvac.config.settings import Settings
from cloudvac.model.cloud import (
    FLAVOR_CACHE_SECONDS,
    Credential,
    Flavor,
    Limits,
    MachineSpec,
    ObservedMachine,
    flavor_benchmark,
)
from cloudvac.model.errors import AuthFailed, CloudError, Gone, Misconfigured, NotSent, Retryable
from cloudvac.model.naming import name_prefix
from cloudvac.model.observer import Observer
from cloudvac.model.redact import redact

log = logging.getLogger("cloudvac.clouds.openstack")
T = TypeVar("T")
RETRIABLE = [500, 502, 503, 504]
CLOSE_SECONDS = 5.0
#: What the libraries raise for a cloud's or the network's failures.  Anything else raised
#: while talking to the cloud is a bug in cloudvac: it is not translated, the cycle fails
#: visibly with its traceback (``model/errors.py``).
LIBRARY_ERRORS = (ks_exc.ClientException, sdk_exc.SDKException, msgspec.DecodeError)


class OpenStackCloud:
    def __init__(self, space: Space, settings: Settings, observer: Observer) -> None:
        if space.openstack is None:
            raise Misconfigured(f"space {space.name} has no OpenStack options")
        self.space, self.options, self.settings = space.name, space.openstack, settings
        self.observer = observer
        self._sem = asyncio.Semaphore(settings.api_concurrency)
        self._flavors: dict[str, Flavor] = {}
        self._flavors_at = 0.0
        self._images: dict[str, str] = {}
        self._our_processors = 0
        self.listing = ServerListing(space.name, settings.manager_id,
                                      full_every=space.openstack.full_listing_seconds)
        self._connect_lock = threading.Lock()
        self._conn: openstack.connection.Connection | None = None
        self.session: ks_session.Session | None = None
        self.checkin: CheckinTokenSource | None = None
        self.discovery: SiteDiscovery | None = None
        if self.options.auth == "egi_checkin":
            self.checkin = checkin_source(self.options, self._checkin_call,
                                          settings.state_dir)
            if self.options.auth_url is None or self.options.egi_project_id is None:
                self.discovery = SiteDiscovery(self.options.egi_is_url,
                                               self.options.egi_gocdb_url,
                                               timeout=self.options.api_timeout_seconds)
        else:
            try:  # read the secret now: a bad secret file is a clear error at once
                make_plugin(self.options, lambda: None)
            except SecretError as exc:
                raise Misconfigured(str(exc)) from None

    @property
    def conn(self) -> openstack.connection.Connection:
        """The SDK connection, built on first use inside a worker thread (discovery and
        secrets may need I/O; the event loop must never wait for it)."""
        with self._connect_lock:
            if self._conn is None:
                site = None
                if self.discovery is not None:
                    assert self.options.egi_site and self.options.egi_vo
                    site = self.discovery.find(self.options.egi_site, self.options.egi_vo)
                try:
                    self.session = make_session(self.options, self._counted_auth,
                                                self.checkin, site)
                except SecretError as exc:
                    raise Misconfigured(str(exc)) from None
                self._conn = openstack.connection.Connection(
                    session=self.session, region_name=self.options.region_name,
                    interface=self.options.interface, compute_api_version="2")
            return self._conn

    def _checkin_call(self, outcome: str) -> None:
        self.observer.checkin_call(self.space, outcome)

    def credentials(self) -> list[Credential]:
        """The current tokens and when they expire: Keystone's and Check-in's access token
        (renewed here), and a Check-in refresh token (renewed by the operator)."""
        found: list[Credential] = []
        auth = self.session.auth if self.session is not None else None
        ref = getattr(auth, "auth_ref", None)  # keystoneauth plugins without one: no token
        if ref is not None and ref.expires is not None:
            found.append(Credential("keystone", ref.expires.timestamp()))
        if self.checkin is not None and self.checkin.expires_at is not None:
            found.append(Credential("checkin_access", self.checkin.expires_at))
            refresh = self.checkin.refresh_token_expires_at()
            if refresh is not None:
                found.append(Credential("checkin_refresh", refresh, "Check-in refresh token"))
        return found

    def _counted_auth(self) -> None:
        self.observer.keystone_auth(self.space)
        log.info("space=%s machinetype=- machine=- authenticating to Keystone", self.space)

    def reconfigure(self, options: OpenStackSpace) -> bool:
        """True if the new options can be used by this adapter (else rebuild it)."""
        return options == self.options

    async def _call(self, kind: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` in this space's threads within the API timeout; the libraries'
        errors come out translated (``LIBRARY_ERRORS``), anything else unchanged."""
        async with self._sem:
            began = time.monotonic()
            try:
                # A thread of its own per call (auth/cancel.py): a hanging cloud never
                # starves the default pool the store's calls use, and a cancelled cycle's
                # call sends no more requests.
                result = await run_cancellable(fn, self.options.api_timeout_seconds * 2,
                                               f"os-{self.space}-{kind}")
            except TimeoutError:
                self.observer.cloud_request(self.space, kind, "timeout",
                                            time.monotonic() - began)
                raise Retryable(f"{kind}: no answer within "
                                f"{self.options.api_timeout_seconds * 2:g}s") from None
            except CloudError as exc:
                self.observer.cloud_request(self.space, kind, type(exc).__name__,
                                            time.monotonic() - began)
                raise
            except LIBRARY_ERRORS as exc:
                error = _translate(exc, kind)
                log.debug("space=%s machinetype=- machine=- %s failed: %s", self.space, kind,
                          type(exc).__name__)
                self.observer.cloud_request(self.space, kind, type(error).__name__,
                                            time.monotonic() - began)
                raise error from None
        self.observer.cloud_request(self.space, kind, "ok", time.monotonic() - began)
        now = time.time()
        for credential in self.credentials():
            self.observer.token_expiry(self.space, credential.kind, credential.expires_at - now)
        return result

    def _get(self, path: str, params: dict[str, Any]) -> bytes:
        response = self.conn.compute.get(
            path, params=params, microversion=nova.MICROVERSION,
            connect_retries=self.options.api_retries,
            status_code_retries=self.options.api_retries, retriable_status_codes=RETRIABLE)
        if response.status_code >= 400:
            raise nova.translate(response.status_code, nova.error_message(response.content),
                                 f"GET {path}")
        return bytes(response.content)

    def _page(self, params: dict[str, Any]) -> nova.ServerPage:
        return nova.PAGE.decode(self._get("/servers/detail", params))

    async def list_machines(self) -> Sequence[ObservedMachine]:
        listing = self.listing
        query = listing.query()
        kind = "changes" if query else "list"
        params: dict[str, Any] = {"name": f"^{name_prefix(self.space)}", **query}
        servers: list[nova.Server] = []
        for _ in range(10_000):  # bounded: 10 million servers
            page = await self._call(kind, partial(self._page, dict(params)))
            servers += page.servers
            marker = _next_marker(page)
            if marker is None:
                break
            params["marker"] = marker
        listing.apply(query, servers)  # only a complete listing is merged
        log.debug("space=%s machinetype=- machine=- %s listing: %d servers returned, %d ours",
                  self.space, "change" if query else "full", listing.returned,
                  len(listing.machines))
        machines = listing.current()
        # Servers being deleted still hold cores in Nova's usage, so they are ours too.
        self._our_processors = sum(m.processors for m in machines)
        return machines

    async def limits(self) -> Limits:
        doc = nova.LIMITS.decode(await self._call("limits", lambda: self._get("/limits", {})))
        a = doc.limits.absolute
        return Limits(
            free_processors=None if a.maxTotalCores < 0 else a.maxTotalCores - a.totalCoresUsed,
            free_instances=None if a.maxTotalInstances < 0
            else a.maxTotalInstances - a.totalInstancesUsed,
            free_ram_mb=None if a.maxTotalRAMSize < 0 else a.maxTotalRAMSize - a.totalRAMUsed,
            foreign_processors=max(0, a.totalCoresUsed - self._our_processors))

    async def flavor(self, names: Sequence[str], min_processors: int,
                     max_processors: int | None) -> Flavor:
        if not self._flavors or time.monotonic() - self._flavors_at > FLAVOR_CACHE_SECONDS or \
                not any(n in self._flavors for n in names):
            found = await self._call("flavors", lambda: [
                Flavor(f.name, int(f.vcpus), int(f.ram), str(f.id),
                       *flavor_benchmark(getattr(f, "extra_specs", None)))
                for f in self.conn.compute.flavors(details=True)])
            self._flavors = {f.name: f for f in found}
            self._flavors_at = time.monotonic()
        for name in names:
            flavor = self._flavors.get(name)
            if flavor is not None and flavor.processors >= min_processors and (
                    max_processors is None or flavor.processors <= max_processors):
                return flavor
        raise Misconfigured(f"no flavor among {list(names)} has {min_processors}-"
                            f"{max_processors or 'any'} vCPUs; the project offers "
                            f"{sorted(self._flavors)}")

    async def _image_id(self, image: str) -> str:
        if not image:
            raise Misconfigured("machinetype has no root_image")
        if UUID_RE.match(image):
            return image
        if image not in self._images:
            found = await self._call("images", lambda: self.conn.image.find_image(
                image, ignore_missing=False))
            self._images[image] = str(found.id)
        return self._images[image]

    async def create_machine(self, spec: MachineSpec) -> str:
        options = self.options
        try:
            image_id = await self._image_id(spec.image)
        except Gone:
            raise Misconfigured(f"image {spec.image!r} not found") from None
        except Retryable as exc:  # no image service, a timeout: the POST was never made
            raise NotSent(redact(f"image {spec.image!r} lookup failed: {exc}")) from None
        networks: Any = options.networks[0] if options.networks[0] in ("auto", "none") \
            else [{"uuid": n} for n in options.networks]
        attrs: dict[str, Any] = {
            "name": spec.name, "flavor_id": spec.flavor.cloud_id or spec.flavor.name,
            "networks": networks, "metadata": dict(spec.metadata),
            "user_data": base64.b64encode(spec.user_data.encode()).decode()}
        if options.boot_volume_gb:
            attrs["block_device_mapping_v2"] = [{
                "boot_index": 0, "uuid": image_id, "source_type": "image",
                "destination_type": "volume", "volume_size": options.boot_volume_gb,
                "delete_on_termination": True}]
        else:
            attrs["image_id"] = image_id
        if options.security_groups:
            attrs["security_groups"] = [{"name": g} for g in options.security_groups]
        if options.key_name:
            attrs["key_name"] = options.key_name
        if options.availability_zone:
            attrs["availability_zone"] = options.availability_zone
        server = await self._call("create", lambda: self.conn.compute.create_server(**attrs))
        return str(server.id)

    async def find_machine(self, name: str) -> ObservedMachine | None:
        params = {"name": f"^{re.escape(name)}$"}
        page = await self._call("lookup", partial(self._page, params))
        for server in page.servers:
            if server.name == name and self.listing.ours(server) \
                    and server.status.upper() != "DELETED":
                return observe(server)
        return None

    async def delete_machine(self, cloud_id: str) -> None:
        await self._call("delete", lambda: self.conn.compute.delete_server(
            cloud_id, ignore_missing=True))

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # a hung cloud must not hold up a stop
                await run_cancellable(self._conn.close, CLOSE_SECONDS, f"os-{self.space}-close")
        for closable in (self.checkin, self.discovery):
            if closable is not None:
                closable.close()


def _next_marker(page: nova.ServerPage) -> str | None:
    for link in page.servers_links:
        if link.rel == "next":
            markers = parse_qs(urlparse(link.href).query).get("marker")
            if markers:
                return markers[0]
    return None


def _translate(exc: BaseException, kind: str) -> CloudError:
    """openstacksdk / keystoneauth exceptions to the taxonomy; the message is the cloud's,
    redacted (a cloud's error may quote the request: tokens, user_data)."""
    error = _classify(exc, kind)
    return type(error)(redact(str(error)))


def _classify(exc: BaseException, kind: str) -> CloudError:
    if kind == "create" and isinstance(exc, ks_exc.ConnectFailure | ks_exc.ConnectTimeout):
        return NotSent(f"{kind}: cannot connect to the cloud ({type(exc).__name__}); "
                       "the create was not sent")
    if isinstance(exc, ks_exc.Unauthorized):
        return AuthFailed(f"{kind}: Keystone refused the credentials (HTTP 401): check the "
                          "user, project and secret")
    if isinstance(exc, ks_exc.ConnectionError | ks_exc.RetriableConnectionFailure):
        return Retryable(f"{kind}: cannot reach the cloud ({type(exc).__name__})")
    if isinstance(exc, ks_exc.EndpointNotFound | ks_exc.EmptyCatalog):
        return Misconfigured(f"{kind}: no compute endpoint in the catalog "
                             f"(region/interface?): {exc}")
    if isinstance(exc, ks_exc.HttpError):
        return nova.translate(exc.http_status or 500, exc.message or "", kind)
    if isinstance(exc, sdk_exc.HttpException):
        body = exc.response.content if exc.response is not None else None
        message = nova.error_message(body) or str(exc.details or exc.message or "")
        return nova.translate(exc.status_code or 500, message, kind)
    if isinstance(exc, msgspec.DecodeError):
        return Retryable(f"{kind}: the cloud's answer is not what Nova sends: {exc}")
    return Retryable(f"{kind}: {type(exc).__name__}: {str(exc)[:200]}")
