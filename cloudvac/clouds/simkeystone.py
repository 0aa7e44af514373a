"""Keystone v3, and the bit of Glance v2 the OpenStack adapter asks, for the simulated cloud
served as its own process (``simapi``).

Keystone: version discovery (``GET /``, ``GET /v3``), ``POST /v3/auth/tokens`` with the
``password`` or ``application_credential`` method checked against the configured
credentials (anything else: Keystone's 401 body), ``GET /v3/auth/tokens`` to validate.
One user (``other_users``: more with the same password and projects, so that a chaos
test can tell several managers apart), one or many projects: a password token is scoped
to the project asked for (by name or id; unscoped: the first), an application
credential's to its one project; a project that is not served is Keystone's 401.  A
token lives ``token_seconds``; its catalog lists compute (``/compute/v2.1``) and image
(``/image``) on this same server.  Glance: the version list, one image, found by id or by
name, as ``conn.image.find_image`` asks.  Secrets are compared in constant time and never
logged or echoed.
"""

from __future__ import annotations

import datetime
import hmac
import logging
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

log = logging.getLogger("cloudvac.clouds.simkeystone")
NAMESPACE = uuid.UUID("5f0b7c56-2a4e-4d7e-9a53-8c1d2f6b9e10")
UNAUTHORIZED = {"error": {"code": 401, "title": "Unauthorized",
                          "message": "The request you have made requires authentication."}}
IDENTITY_MEDIA = [{"base": "application/json",
                   "type": "application/vnd.openstack.identity-v3+json"}]


def reply(doc: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(doc), status, dict(headers or {}),
                    media_type="application/json")


def iso(at: float, fraction: bool = False, zone: str = "Z") -> str:
    """OpenStack's UTC times: whole seconds with ``Z`` (Nova's created/updated), or with
    microseconds (Keystone's expires_at; ``zone=""``: Nova's naive launched_at)."""
    stamp = datetime.datetime.fromtimestamp(at, datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%f" if fraction else "%Y-%m-%dT%H:%M:%S") + zone


def stable_id(*parts: str) -> str:
    """A stable id (uuid5 hex) for a user, project or image name."""
    return uuid.uuid5(NAMESPACE, "/".join(parts)).hex


def image_id(name: str) -> str:
    """The id of the sim cloud's image called ``name`` (Glance ids are dashed UUIDs)."""
    return str(uuid.uuid5(NAMESPACE, "image/" + name))


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


@dataclass(frozen=True, slots=True)
class Identity:
    """The one user of the sim cloud, its projects (the first is the default: an unscoped
    token's, and the application credential's unless ``app_cred_project`` names another),
    and an optional application credential of that user, bound to one project."""

    username: str
    password: str = field(repr=False)
    projects: tuple[str, ...] = ("sim-project",)
    app_cred_id: str | None = None
    app_cred_secret: str | None = field(default=None, repr=False)
    app_cred_name: str = "cloudvac-sim"
    token_seconds: float = 3600.0
    region: str = "RegionOne"
    app_cred_project: str | None = None
    other_users: tuple[str, ...] = ()
    """More users with the same password and projects (``--user``)."""

    @property
    def user_id(self) -> str:
        return stable_id("user", self.username)

    @property
    def usernames(self) -> tuple[str, ...]:
        return (self.username, *self.other_users)

    @property
    def project_name(self) -> str:
        return self.projects[0]

    @property
    def project_id(self) -> str:
        return project_id(self.project_name)


def project_id(name: str) -> str:
    """The id of the sim cloud's project called ``name``."""
    return stable_id("project", name)


@dataclass(frozen=True, slots=True)
class Issued:
    """A live token: its expiry, how it was obtained and the project it is scoped to."""

    until: float
    method: str
    project: str
    user: str = ""
    """The user's name."""


def _same(given: object, wanted: str | None) -> bool:
    return wanted is not None and isinstance(given, str) and \
        hmac.compare_digest(given.encode(), wanted.encode())


def _domain_ok(thing: Mapping[str, Any]) -> bool:
    domain = thing.get("domain") or {"id": "default"}
    return isinstance(domain, dict) and (domain.get("id") == "default"
                                         or domain.get("name") == "Default")


class Tokens:
    """Issued tokens, their expiry (on ``clock``) and project, and the credential checks."""

    def __init__(self, identity: Identity, clock: Callable[[], float]) -> None:
        self.identity, self.clock = identity, clock
        self._tokens: dict[str, Issued] = {}
        self._by_id = {project_id(name): name for name in identity.projects}
        self.issued = 0

    def method_of(self, body: Any) -> tuple[str, str, str] | None:
        """(auth method, project name, user name) if the credentials in ``body`` are right and may
        have the scope asked, else None (raises KeyError/TypeError/AttributeError on a
        malformed body).  A password token is scoped to the project asked for (unscoped:
        the first); an application credential's to its own project."""
        ident = body["auth"]["identity"]
        methods = ident["methods"]
        me = self.identity
        if "password" in methods:
            user = ident["password"]["user"]
            name = next((n for n in me.usernames if user.get("id") == stable_id("user", n)
                         or (user.get("name") == n and _domain_ok(user))), None)
            project = self._scoped(body["auth"].get("scope"))
            if name and _same(user.get("password"), me.password) and project is not None:
                return "password", project, name
        if "application_credential" in methods and me.app_cred_id is not None:
            cred = ident["application_credential"]
            id_ok = cred.get("id") == me.app_cred_id or (
                cred.get("name") == me.app_cred_name
                and (cred.get("user") or {}).get("name") == me.username)
            if id_ok and _same(cred.get("secret"), me.app_cred_secret):
                return ("application_credential", me.app_cred_project or me.project_name,
                        me.username)
        return None

    def _scoped(self, scope: Any) -> str | None:
        if not scope:
            return self.identity.project_name  # unscoped: the default project's catalog
        project = scope["project"]
        if project.get("id") in self._by_id:
            return self._by_id[project["id"]]
        name = project.get("name")
        return name if name in self.identity.projects and _domain_ok(project) else None

    def issue(self, method: str, project: str, user: str = "") -> tuple[str, Issued]:
        now = self.clock()
        if len(self._tokens) > 64 and self.issued % 64 == 0:  # amortised expiry sweep
            for token in [t for t, found in self._tokens.items() if found.until <= now]:
                del self._tokens[token]
        token = "sim" + secrets.token_hex(24)
        issued = self._tokens[token] = Issued(now + self.identity.token_seconds, method, project,
                                                   user or self.identity.username)
        self.issued += 1
        return token, issued

    def valid(self, token: str | None) -> Issued | None:
        """The live token's facts, else None."""
        found = self._tokens.get(token or "")
        return found if found is not None and found.until > self.clock() else None

    def body(self, base: str, issued: Issued) -> dict[str, Any]:
        me = self.identity
        domain = {"id": "default", "name": "Default"}
        token: dict[str, Any] = {
            "methods": [issued.method], "expires_at": iso(issued.until, fraction=True),
            "issued_at": iso(issued.until - me.token_seconds, fraction=True),
            "audit_ids": [secrets.token_urlsafe(16)[:22]],
            "user": {"id": stable_id("user", issued.user), "name": issued.user,
                     "domain": domain,
                     "password_expires_at": None},
            "project": {"id": project_id(issued.project), "name": issued.project,
                        "domain": domain},
            "roles": [{"id": stable_id("role", "member"), "name": "member"},
                      {"id": stable_id("role", "reader"), "name": "reader"}],
            "is_domain": False, "catalog": catalog(base, me.region)}
        if issued.method == "application_credential":
            token["application_credential"] = {"id": me.app_cred_id, "name": me.app_cred_name,
                                               "restricted": True}
        return {"token": token}


def catalog(base: str, region: str) -> list[dict[str, Any]]:
    def service(kind: str, name: str, url: str) -> dict[str, Any]:
        return {"type": kind, "name": name, "id": stable_id("service", kind), "endpoints": [
            {"id": stable_id("endpoint", kind, i), "interface": i, "region": region,
             "region_id": region, "url": url} for i in ("public", "internal", "admin")]}

    return [service("compute", "nova", f"{base}/compute/v2.1"),
            service("image", "glance", f"{base}/image")]


def unauthorized(base: str) -> Response:
    return reply(UNAUTHORIZED, 401, {"WWW-Authenticate": f'Keystone uri="{base}"'})


def keystone_routes(tokens: Tokens) -> list[Route]:
    def version(base: str) -> dict[str, Any]:
        return {"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
                "links": [{"rel": "self", "href": f"{base}/v3/"}], "media-types": IDENTITY_MEDIA}

    async def root(request: Request) -> Response:
        return reply({"versions": {"values": [version(base_url(request))]}}, 300)

    async def v3(request: Request) -> Response:
        return reply({"version": version(base_url(request))})

    async def post_token(request: Request) -> Response:
        try:
            granted = tokens.method_of(msgspec.json.decode(await request.body()))
        except (msgspec.DecodeError, KeyError, TypeError, AttributeError):
            return reply({"error": {"code": 400, "title": "Bad Request",
                                    "message": "Invalid input for field 'identity'."}}, 400)
        if granted is None:
            log.info("space=- machinetype=- machine=- token refused: wrong credentials or "
                     "scope")
            return unauthorized(base_url(request))
        token, issued = tokens.issue(*granted)
        log.debug("space=- machinetype=- machine=- token issued (%s, project %s, user %s)",
                  *granted)
        return reply(tokens.body(base_url(request), issued), 201, {"X-Subject-Token": token})

    async def get_token(request: Request) -> Response:
        if tokens.valid(request.headers.get("X-Auth-Token")) is None:
            return unauthorized(base_url(request))
        subject = request.headers.get("X-Subject-Token")
        found = tokens.valid(subject)
        if found is None:
            return reply({"error": {"code": 404, "title": "Not Found",
                                    "message": "Could not find token."}}, 404)
        return reply(tokens.body(base_url(request), found), 200,
                     {"X-Subject-Token": subject or ""})

    return [Route("/", root), Route("/v3", v3), Route("/v3/", v3),
            Route("/v3/auth/tokens", post_token, methods=["POST"]),
            Route("/v3/auth/tokens", get_token, methods=["GET", "HEAD"])]


def glance_routes(image_name: str, project_id: str, created: float) -> list[Route]:
    """Glance v2: the version list and one public image."""
    the_id = image_id(image_name)

    def view() -> dict[str, Any]:
        return {"id": the_id, "name": image_name, "status": "active", "visibility": "public",
                "protected": False, "os_hidden": False, "container_format": "bare",
                "disk_format": "qcow2", "min_disk": 0, "min_ram": 0, "size": 1 << 30,
                "virtual_size": None, "checksum": None, "owner": project_id, "tags": [],
                "created_at": iso(created), "updated_at": iso(created),
                "self": f"/v2/images/{the_id}", "file": f"/v2/images/{the_id}/file",
                "schema": "/v2/schemas/image"}

    async def versions(request: Request) -> Response:
        return reply({"versions": [{"id": "v2.16", "status": "CURRENT", "links": [
            {"rel": "self", "href": f"{base_url(request)}/image/v2/"}]}]}, 300)

    async def listing(request: Request) -> Response:
        params = request.query_params
        show = (params.get("name") in (None, image_name)
                and params.get("id") in (None, the_id)
                and params.get("marker") is None)
        return reply({"images": [view()] if show else [], "first": "/v2/images",
                      "schema": "/v2/schemas/images"})

    async def one(request: Request) -> Response:
        if request.path_params["image"] != the_id:
            return Response("404 Not Found\n\nNo image found with that ID\n", 404,
                            media_type="text/plain")
        return reply(view())

    return [Route("/image", versions), Route("/image/", versions),
            Route("/image/v2/images", listing), Route("/image/v2/images/{image}", one)]
