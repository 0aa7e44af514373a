"""The simulated cloud served as its own process: one or many ``SimProject``s behind enough
of Keystone v3, Nova v2.1 and Glance v2 that the real OpenStack adapter (openstacksdk,
keystoneauth1, the raw listings of ``novalist``) drives it unchanged (``cloudvac sim-cloud``).

Projects: each is a ``Tenant`` (its own ``SimProject``, ``NovaView`` and VMs, the same
quota options); a Keystone token is scoped to one of them and Nova serves that one only,
so a call costs what its own project holds, whatever the number of others.  Their VMs
report to the manager over HTTP (``simvm``); a ticker moves every project along its
timeline between calls, so reports go on while no manager calls.

Layout on one server: Keystone at ``/`` (``auth_url = URL/v3``), Nova at
``/compute/v2.1``, Glance at ``/image``, and the admin endpoints ``/_sim/faults`` and
``/_sim/state`` (a bearer token given at start; refused when none was given; the state
lists each server with what its VM sent; ``?audit=1`` adds who asked each create and
delete, and when: the chaos tests check it against the space leases).  Every Nova and
Glance call needs a live ``X-Auth-Token`` (else Keystone's 401), advances the token's
project on the real clock and may suffer an injected fault (``simfaults``).

Nova as the adapter sees it (``simnova``): microversions 2.1-2.79 (flavors carry
``extra_specs`` from 2.61, servers embed their flavor from 2.47), servers listed newest
first with ``limit``/``marker`` pages and Nova's ``servers_links`` next link (present when a
page is full), ``changes-since`` (soft-deleted servers as ``DELETED``), ``name`` regex,
``status`` and tag filters, quota refusals as Nova words them, ``/limits``, server faults.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import msgspec
import pydantic
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cloudvac.clouds.sim import SimProject
from cloudvac.clouds.simfaults import FaultPlan, Faults
from cloudvac.clouds.simkeystone import (
    Identity,
    Tokens,
    base_url,
    glance_routes,
    image_id,
    keystone_routes,
    project_id,
    reply,
    unauthorized,
)
from cloudvac.clouds.simnova import (
    MAX_TEXT,
    ApiError,
    NovaView,
    Row,
    flavor_view,
    microversion_of,
    parse_query,
    server_view,
    versioned,
)
from cloudvac.clouds.simvm import SimVm, VmPilots, VmSender
from cloudvac.config.models import SimMachinetype, SimSpace

log = logging.getLogger("cloudvac.clouds.simapi")
Handler = Callable[[Request, "Call"], Awaitable[Response]]
NOVA = "/compute/v2.1"
AUDIT_KEEP = 100_000
"""Creates and deletes remembered for ``/_sim/state?audit=1`` (the newest)."""


@dataclass(frozen=True)
class SimApiOptions:
    """What ``cloudvac sim-cloud`` serves."""

    identity: Identity
    project: SimSpace = field(default_factory=SimSpace)
    pilots: SimMachinetype = field(default_factory=SimMachinetype)
    page_limit: int = 1000
    image_name: str = "cloudvac-sim-image"
    admin_token: str | None = field(default=None, repr=False)
    delete_seconds: float = 1.0
    heartbeat_seconds: float = 60.0
    vm_doors: tuple[str, ...] = ()
    vm_concurrency: int = 100
    tombstone_seconds: float = 3600.0


@dataclass(eq=False)
class Tenant:
    """One project of the process: its ``SimProject``, Nova's view of it and its VMs."""

    name: str
    id: str
    project: SimProject
    view: NovaView
    pilots: VmPilots


@dataclass(frozen=True, slots=True)
class Call:
    """What a guarded Nova handler gets besides the request."""

    tenant: Tenant
    microversion: tuple[int, int]


class SimApi:
    """The served state: the projects, Nova's view of each, tokens, faults, call counts."""

    def __init__(self, options: SimApiOptions, clock: Callable[[], float] = time.time) -> None:
        self.options = options
        self.tokens = Tokens(options.identity, clock)
        self.sender = VmSender(options.vm_doors, options.vm_concurrency, clock,
                               seed=options.project.seed)
        pilots = options.pilots.model_copy(
            update={"heartbeat_period_seconds": options.heartbeat_seconds})
        self.tenants = {name: self._tenant(name, index, pilots, clock)
                        for index, name in enumerate(options.identity.projects)}
        self.faults = Faults()
        self.calls: collections.Counter[str] = collections.Counter()
        self.audit: collections.deque[dict[str, Any]] = collections.deque(maxlen=AUDIT_KEEP)
        self.started, self.clock = clock(), clock

    def _tenant(self, name: str, index: int, pilots: SimMachinetype,
                clock: Callable[[], float]) -> Tenant:
        seed = self.options.project.seed
        space = self.options.project if seed is None or index == 0 else \
            self.options.project.model_copy(update={"seed": seed + index})
        project = SimProject(options=space, clock=clock,
                             delete_seconds=self.options.delete_seconds)
        view = NovaView(project, image_id(self.options.image_name), project_id(name), pilots,
                        tombstone_seconds=self.options.tombstone_seconds)
        view.pilots = VmPilots(project, self.sender, self.options.heartbeat_seconds,
                               view.release)
        return Tenant(name, project_id(name), project, view, view.pilots)

    async def tick(self) -> None:
        """Move every project along its timeline (its VMs report even when no manager
        calls the API)."""
        for tenant in self.tenants.values():
            await tenant.view.sync()

    def guard(self, kind: str, handler: Handler, *, auth: bool = True,
              create: bool = False) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` behind the faults, the token check and the project's advance."""

        async def run(request: Request) -> Response:
            self.calls[kind] += 1
            self._audit(kind, request)
            wait = self.faults.delay()
            if wait:
                await asyncio.sleep(wait)
            outcome = self.faults.outcome(create)
            base = base_url(request)
            issued = self.tokens.valid(request.headers.get("X-Auth-Token"))
            if outcome == "unauthorized" or (auth and issued is None):
                return unauthorized(base)
            if outcome in ("error_500", "error_503"):
                status = 500 if outcome == "error_500" else 503
                return reply({"computeFault": {"code": status, "message": "Unexpected API "
                              "Error (injected by the sim cloud)."}}, status)
            plain = kind in ("keystone", "image")
            tenant = self.tenants[issued.project if issued else self.options.identity.projects[0]]
            microversion = (2, 1)
            try:
                if not plain:
                    microversion = microversion_of(request)
                    await tenant.view.sync()
                if outcome == "quota":
                    used = tenant.project.used_instances
                    raise ApiError(403, "forbidden", f"Quota exceeded for instances: "
                                   f"Requested 1, but already used {used} of {used} instances")
                response = await handler(request, Call(tenant, microversion))
            except ApiError as exc:
                response = reply(exc.doc(), exc.status)
            if outcome == "lost_create" and response.status_code < 300:
                return Response("<html><body><h1>504 Gateway Time-out</h1></body></html>", 504,
                                media_type="text/html")
            return response if plain else versioned(response, microversion)

        return run

    def _audit(self, kind: str, request: Request) -> None:
        """Remember a create or delete as it arrives: when, whose token, which project."""
        if kind not in ("create", "delete"):
            return
        issued = self.tokens.valid(request.headers.get("X-Auth-Token"))
        if issued is not None:
            self.audit.append({"at": self.clock(), "kind": kind, "user": issued.user,
                               "project": issued.project})

    # -- Nova -------------------------------------------------------------------------------

    async def versions(self, request: Request) -> Response:
        base = base_url(request) + "/compute"
        return reply({"versions": [
            {"id": "v2.0", "status": "SUPPORTED", "version": "", "min_version": "",
             "updated": "2011-01-21T11:33:21Z", "links": [{"rel": "self", "href": f"{base}/v2/"}]},
            self._v21(base)]})

    async def version(self, request: Request) -> Response:
        doc = self._v21(base_url(request) + "/compute")
        doc["media-types"] = [{"base": "application/json",
                               "type": "application/vnd.openstack.compute+json;version=2.1"}]
        return reply({"version": doc})

    @staticmethod
    def _v21(base: str) -> dict[str, Any]:
        return {"id": "v2.1", "status": "CURRENT", "version": MAX_TEXT,
                "min_version": "2.1", "updated": "2013-07-23T11:33:21Z",
                "links": [{"rel": "self", "href": f"{base}/v2.1/"}]}

    async def list_servers(self, request: Request, call: Call) -> Response:
        detail = request.url.path.endswith("/detail")
        query = parse_query(list(request.query_params.multi_items()), self.options.page_limit)
        view = call.tenant.view
        page = view.listing(query)
        base = base_url(request) + "/compute"
        if detail:
            servers = [server_view(view, row, base, call.microversion) for row in page]
        else:
            servers = [{"id": r.id, "name": r.name, "links": [
                {"rel": "self", "href": f"{base}/v2.1/servers/{r.id}"}]} for r in page]
        doc: dict[str, Any] = {"servers": servers}
        if page and len(page) == query.limit:
            doc["servers_links"] = [{"rel": "next", "href": self._next(request, page[-1])}]
        return reply(doc)

    @staticmethod
    def _next(request: Request, last: Row) -> str:
        """Nova's next link: the request's parameters, sorted, with the marker set."""
        params = dict(sorted(request.query_params.items()))
        params["marker"] = last.id
        return f"{base_url(request)}{request.url.path}?{urlencode(params)}"

    async def create_server(self, request: Request, call: Call) -> Response:
        try:
            body = msgspec.json.decode(await request.body())
        except msgspec.DecodeError:
            raise ApiError(400, "badRequest", "Malformed request body") from None
        row = call.tenant.view.create(body, self.options.identity.user_id)
        base = base_url(request) + "/compute"
        return reply({"server": {"id": row.id, "OS-DCF:diskConfig": "MANUAL",
                                 "security_groups": [{"name": "default"}], "links": [
                                     {"rel": "self", "href": f"{base}/v2.1/servers/{row.id}"},
                                     {"rel": "bookmark", "href": f"{base}/servers/{row.id}"}]}},
                     202)

    async def show_server(self, request: Request, call: Call) -> Response:
        row, _ = call.tenant.view.live(request.path_params["server"])
        base = base_url(request) + "/compute"
        return reply({"server": server_view(call.tenant.view, row, base, call.microversion)})

    async def delete_server(self, request: Request, call: Call) -> Response:
        call.tenant.view.delete(request.path_params["server"])
        return Response(status_code=204)

    async def limits(self, request: Request, call: Call) -> Response:
        quota = call.tenant.project.options
        used = call.tenant.view.usage()
        absolute = {
            "maxTotalCores": -1 if quota.quota_processors is None else quota.quota_processors,
            "maxTotalInstances": -1 if quota.quota_instances is None else quota.quota_instances,
            "maxTotalRAMSize": -1, "maxServerMeta": 128, "maxImageMeta": 128,
            "maxTotalKeypairs": 100, "maxServerGroups": 10, "maxServerGroupMembers": 10,
            "totalCoresUsed": used["cores"], "totalInstancesUsed": used["instances"],
            "totalRAMUsed": used["ram"], "totalServerGroupsUsed": 0}
        return reply({"limits": {"rate": [], "absolute": absolute}})

    async def flavors(self, request: Request, call: Call) -> Response:
        base = base_url(request) + "/compute"
        flavors = sorted(call.tenant.project.flavors.values(), key=lambda f: f.cloud_id)
        if request.url.path.endswith("/detail"):
            docs = [flavor_view(f, base, call.microversion) for f in flavors]
        else:
            docs = [{"id": f.cloud_id, "name": f.name, "links": flavor_view(
                f, base, call.microversion)["links"]} for f in flavors]
        return reply({"flavors": docs})

    async def flavor(self, request: Request, call: Call) -> Response:
        wanted = request.path_params["flavor"]
        for flavor in call.tenant.project.flavors.values():
            if flavor.cloud_id == wanted:
                return reply({"flavor": flavor_view(flavor, base_url(request) + "/compute",
                                                    call.microversion)})
        raise ApiError(404, "itemNotFound", f"Flavor {wanted} could not be found.")

    # -- admin ------------------------------------------------------------------------------

    def _admin_refused(self, request: Request) -> Response | None:
        wanted = self.options.admin_token
        given = request.headers.get("Authorization", "")
        if wanted is not None and hmac.compare_digest(given.encode(),
                                                      f"Bearer {wanted}".encode()):
            return None
        return reply({"error": {"code": 403, "message": "admin token required"}}, 403)

    async def set_faults(self, request: Request) -> Response:
        if (refused := self._admin_refused(request)) is not None:
            return refused
        try:
            plan = FaultPlan.model_validate_json(await request.body())
        except pydantic.ValidationError as exc:
            return reply({"error": {"code": 400, "message": str(exc)}}, 400)
        self.faults.replace(plan)
        log.info("space=- machinetype=- machine=- faults now %s", plan.model_dump_json())
        return reply({"faults": plan.model_dump()})

    async def state(self, request: Request) -> Response:
        """Servers (of ``?project=NAME`` only, if given) with what their VMs sent,
        creates, calls, faults, usage (in all, and per project)."""
        if (refused := self._admin_refused(request)) is not None:
            return refused
        wanted = request.query_params.get("project")
        tenants = [t for t in self.tenants.values() if wanted in (None, t.name)]
        servers, creates = [], collections.Counter[str]()
        for tenant in tenants:
            view = tenant.view
            await view.sync()
            creates.update(view.creates)
            servers += [self._server_state(tenant, row) for row in view.rows.values()]
        usage = {t.name: t.view.usage() for t in tenants}
        return reply({"servers": servers, "creates": dict(creates), "calls": dict(self.calls),
                      "injected": dict(self.faults.injected),
                      "tokens_issued": self.tokens.issued, "projects": usage,
                      "usage": {k: sum(u[k] for u in usage.values())
                                for k in ("cores", "instances", "ram")},
                      "vm_uploads_in_flight": self.sender.busy,
                      "image_id": image_id(self.options.image_name),
                      "faults": self.faults.plan.model_dump(),
                      **({"audit": list(self.audit)} if request.query_params.get("audit")
                         else {})})

    @staticmethod
    def _server_state(tenant: Tenant, row: Row) -> dict[str, Any]:
        status, task = tenant.view.status(row)
        live = tenant.project.servers.get(row.id)
        vm = tenant.pilots.by_id.get(row.id)
        return {"id": row.id, "name": row.name, "project": tenant.name, "status": status,
                "task_state": task, "flavor": row.flavor.name,
                "metadata": dict(live.metadata) if live else {},
                "created": row.created, "updated": row.updated,
                **(vm.state() if vm is not None else SimVm("", "", "", None).state())}

    def app(self) -> Starlette:
        identity = self.options.identity
        guarded = [Route(r.path, self.guard("keystone", _plain(r.endpoint), auth=False),
                         methods=sorted(r.methods or ()))
                   for r in keystone_routes(self.tokens)]
        guarded += [Route(r.path, self.guard("image", _plain(r.endpoint),
                                             auth=r.path.startswith("/image/v2")),
                          methods=sorted(r.methods or ()))
                    for r in glance_routes(self.options.image_name, identity.project_id,
                                           self.started)]
        nova: list[tuple[str, str, Handler, list[str]]] = [
            ("/servers", "list", self.list_servers, ["GET"]),
            ("/servers/detail", "list", self.list_servers, ["GET"]),
            ("/servers", "create", self.create_server, ["POST"]),
            ("/servers/{server}", "show", self.show_server, ["GET"]),
            ("/servers/{server}", "delete", self.delete_server, ["DELETE"]),
            ("/limits", "limits", self.limits, ["GET"]),
            ("/flavors", "flavors", self.flavors, ["GET"]),
            ("/flavors/detail", "flavors", self.flavors, ["GET"]),
            ("/flavors/{flavor}", "flavors", self.flavor, ["GET"])]
        routes = [Route("/compute", self.versions), Route("/compute/", self.versions),
                  Route(NOVA, self.version), Route(NOVA + "/", self.version),
                  *[Route(NOVA + path, self.guard(kind, handler, create=kind == "create"),
                          methods=methods) for path, kind, handler, methods in nova],
                  Route("/_sim/faults", self.set_faults, methods=["POST"]),
                  Route("/_sim/state", self.state, methods=["GET"]), *guarded]
        return Starlette(routes=routes)


def _plain(endpoint: Callable[..., Any]) -> Handler:
    async def handler(request: Request, call: Call) -> Response:
        response: Response = await endpoint(request)
        return response

    return handler


async def serve(api: SimApi, sock: socket.socket, ready: Callable[[str], None]) -> None:
    """Serve ``api`` on the bound ``sock`` until SIGTERM/SIGINT; ``ready(url)`` once it
    accepts connections.  Meanwhile its projects move along their timelines every
    ``tick_seconds`` (a quarter of a heartbeat period, 0.05-1 s), so that their VMs report
    even when no manager calls."""
    import uvicorn

    config = uvicorn.Config(api.app(), log_config=None, access_log=False, lifespan="off",
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    ticker = asyncio.create_task(_tick(api, min(1.0, max(0.05, api.options.heartbeat_seconds
                                                         / 4))))
    try:
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started:
            host, port = sock.getsockname()[:2]
            ready(f"http://{host}:{port}")
        await task
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        await api.sender.close()


async def _tick(api: SimApi, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await api.tick()
        except Exception:  # the next tick tries again; the API keeps serving
            log.exception("space=- machinetype=- machine=- tick failed")
