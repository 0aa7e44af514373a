"""Nova's view of a ``SimProject``: what the compute API of the sim cloud process shows.

``SimProject`` keeps servers while they exist; Nova also keeps, per server, the fields of
its API (``updated``, the image, tags, the user who created it) and a soft-deleted row
after the delete, which a ``changes-since`` listing shows as ``DELETED`` with its metadata
gone.  ``NovaView`` adds those around the project without changing it: after every
``advance`` it stamps ``updated`` on the servers whose status moved (``SimServer.move``
drops the server's cached observation; the view takes a fresh one) and turns the servers
the project dropped into tombstones (forgotten after ``tombstone_seconds``).  With
``pilots`` (``simvm``) its servers' agents report over HTTP, and a server whose pilot ended
shows ACTIVE until its agent's final uploads are over.  Times are whole seconds, as Nova's
database stores them.
"""

from __future__ import annotations

import base64
import binascii
import collections
import datetime
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from cloudvac.clouds.sim import SimProject
from cloudvac.clouds.simkeystone import iso
from cloudvac.clouds.simserver import SimServer
from cloudvac.clouds.simvm import VmPilots
from cloudvac.config.models import SimMachinetype
from cloudvac.model.cloud import TAG_MACHINETYPE, TAG_SPACE, Flavor, MachineSpec
from cloudvac.model.errors import Misconfigured, QuotaExceeded
from cloudvac.model.states import MachineState

MAX_MICROVERSION = (2, 79)
MAX_TEXT = f"{MAX_MICROVERSION[0]}.{MAX_MICROVERSION[1]}"
_VM_STATE = {"BUILD": ("building", 0), "ACTIVE": ("active", 1), "SHUTOFF": ("stopped", 4),
             "ERROR": ("error", 0), "DELETED": ("deleted", 0)}


class ApiError(Exception):
    """An error answer of Nova: HTTP status, the body's wrapper key, the message."""

    def __init__(self, status: int, key: str, message: str) -> None:
        super().__init__(message)
        self.status, self.key, self.message = status, key, message

    def doc(self) -> dict[str, Any]:
        return {self.key: {"code": self.status, "message": self.message}}



def microversion_of(request: Request) -> tuple[int, int]:
    """The compute microversion a request asks (ApiError 400/406 as Nova answers)."""
    text = request.headers.get("OpenStack-API-Version", "")
    words = text.split()
    value = words[1] if len(words) == 2 and words[0].lower() == "compute" else \
        request.headers.get("X-OpenStack-Nova-API-Version", "2.1")
    if value == "latest":
        return MAX_MICROVERSION
    try:
        major, minor = (int(p) for p in value.split("."))
    except ValueError:
        raise ApiError(400, "badRequest", f"Invalid API version request: {value}") from None
    if not (2, 1) <= (major, minor) <= MAX_MICROVERSION:
        raise ApiError(406, "computeFault", f"Version {value} is not supported by the API. "
                                            f"Minimum is 2.1 and maximum is {MAX_TEXT}.")
    return major, minor


def versioned(response: Response, microversion: tuple[int, int]) -> Response:
    """``response`` with Nova's microversion headers."""
    text = f"{microversion[0]}.{microversion[1]}"
    response.headers["OpenStack-API-Version"] = f"compute {text}"
    response.headers["X-OpenStack-Nova-API-Version"] = text
    response.headers["Vary"] = "OpenStack-API-Version, X-OpenStack-Nova-API-Version"
    return response


def bad_request(message: str) -> ApiError:
    return ApiError(400, "badRequest", message)


@dataclass(slots=True)
class Row:
    """Nova's own fields of one server (live or soft-deleted)."""

    id: str
    name: str
    created: int
    updated: int
    user_id: str
    image_id: str
    flavor: Flavor
    tags: tuple[str, ...] = ()
    deleted: bool = False

    def order(self) -> tuple[int, str]:
        return self.created, self.id  # Nova's default sort: created_at desc, id desc


@dataclass(frozen=True, slots=True)
class Query:
    """A servers listing request: filters and paging, as parsed from the query string."""

    params: tuple[tuple[str, str], ...]
    limit: int
    marker: str | None = None
    since: int | None = None
    name: re.Pattern[str] | None = None
    status: str | None = None
    tags: tuple[tuple[str, frozenset[str]], ...] = ()


TAG_FILTERS = ("tags", "tags-any", "not-tags", "not-tags-any")


def parse_query(params: list[tuple[str, str]], max_limit: int) -> Query:
    """The query of ``GET /servers[/detail]`` (Nova's 400 answers for bad values)."""
    single = dict(params)
    try:
        limit = min(int(single.get("limit", max_limit)), max_limit)
    except ValueError:
        raise bad_request("limit param must be an integer") from None
    if limit < 0:
        raise bad_request("limit param must be positive")
    since = None
    if "changes-since" in single:
        try:
            stamp = datetime.datetime.fromisoformat(single["changes-since"].replace("Z", "+00:00"))
        except ValueError:
            raise bad_request("Invalid filter field: changes-since.") from None
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=datetime.UTC)
        since = math.floor(stamp.timestamp())
    try:
        name = re.compile(single["name"]) if "name" in single else None
    except re.error:
        raise bad_request("Invalid filter field: name.") from None
    tags = tuple((key, frozenset(t for t in single[key].split(",") if t))
                 for key in TAG_FILTERS if key in single)
    return Query(tuple(params), limit, single.get("marker"), since, name,
                 single.get("status", "").upper() or None, tags)


def _tags_match(tags: tuple[str, ...], query: Query) -> bool:
    have = set(tags)
    for key, want in query.tags:
        found = want <= have if key in ("tags", "not-tags") else bool(want & have)
        if found == key.startswith("not-"):
            return False
    return True


@dataclass(eq=False)
class NovaView:
    """The compute API's state around ``project`` (see the module docstring)."""

    project: SimProject
    image_id: str
    project_id: str
    default_machinetype: SimMachinetype = field(default_factory=SimMachinetype)
    pilots: VmPilots | None = None
    tombstone_seconds: float = 3600.0
    rows: dict[str, Row] = field(default_factory=dict)
    creates: collections.Counter[str] = field(default_factory=collections.Counter)
    _live: int = 0  # rows not deleted
    _pruned_at: float = 0.0

    async def sync(self) -> int:
        """Advance the project to its clock, hand its pilots' reports to ``pilots`` (or
        drop them), stamp what changed, forget tombstones older than
        ``tombstone_seconds``; returns the time (whole seconds)."""
        project = self.project
        now = math.floor(project.clock())
        project.advance()
        await project.deliver()
        servers = project.servers
        for srv in servers.values():
            row = self.rows.get(srv.id)
            if srv.observed is None and row is not None:
                row.updated = now
                srv.observe()
        if self._live > len(servers):  # some were dropped: tombstones
            for row in self.rows.values():
                if not row.deleted and row.id not in servers:
                    row.deleted, row.updated = True, now
                    self._live -= 1
        if len(self.rows) > 2 * self._live + 100 and now - self._pruned_at >= 60:
            self._pruned_at = now
            self._prune(now - self.tombstone_seconds)
        return now

    def _prune(self, before: float) -> None:
        for row in [r for r in self.rows.values() if r.deleted and r.updated < before]:
            del self.rows[row.id]
            if self.pilots is not None:
                self.pilots.forget(row.id)

    def release(self, server_id: str) -> None:
        """The server's final uploads are over: it shows SHUTOFF from now on."""
        row = self.rows.get(server_id)
        if row is not None and not row.deleted:
            row.updated = math.floor(self.project.clock())

    def create(self, body: Any, user_id: str) -> Row:
        """Nova's ``POST /servers``; raises ApiError as Nova answers."""
        server = body.get("server") if isinstance(body, dict) else None
        if not isinstance(server, dict):
            raise bad_request("Invalid input for field/attribute server.")
        name, metadata = server.get("name"), server.get("metadata") or {}
        if not isinstance(name, str) or not 1 <= len(name) <= 255:
            raise bad_request("Invalid input for field/attribute name.")
        if not isinstance(metadata, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise bad_request("Invalid input for field/attribute metadata.")
        if "networks" not in server:
            raise bad_request("Invalid input for field/attribute server. "
                              "'networks' is a required property")
        tags = server.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise bad_request("Invalid input for field/attribute tags.")
        flavor = self._flavor(server.get("flavorRef"))
        image = server.get("imageRef") or self._boot_volume_image(server)
        if not isinstance(image, str) or image.rsplit("/", 1)[-1] != self.image_id:
            raise bad_request("Can not find requested image")
        spec = MachineSpec(name=name, space=metadata.get(TAG_SPACE, "-"),
                           machinetype=metadata.get(TAG_MACHINETYPE, ""), flavor=flavor,
                           image=self.image_id, user_data=_user_data(server.get("user_data")),
                           metadata=metadata)
        self.project.machinetypes.setdefault(spec.machinetype, self.default_machinetype)
        try:
            srv_id = self.project.create(spec)
        except QuotaExceeded as exc:
            raise ApiError(403, "forbidden", str(exc)) from None
        except Misconfigured as exc:
            raise bad_request(str(exc)) from None
        srv = self.project.servers[srv_id]
        srv.observe()
        created = math.floor(srv.created_at)
        row = self.rows[srv_id] = Row(srv_id, name, created, created, user_id, self.image_id,
                                      srv.flavor, tuple(tags))
        self._live += 1
        self.creates[name] += 1
        if self.pilots is not None:
            self.pilots.boot(srv_id, name, spec.space, spec.user_data)
        return row

    def _flavor(self, ref: object) -> Flavor:
        wanted = ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None
        for flavor in self.project.flavors.values():
            if flavor.cloud_id == wanted:
                return flavor
        raise bad_request(f"Flavor {ref} could not be found.")

    @staticmethod
    def _boot_volume_image(server: Mapping[str, Any]) -> object:
        for mapping in server.get("block_device_mapping_v2") or []:
            if isinstance(mapping, dict) and mapping.get("boot_index") in (0, "0"):
                return mapping.get("uuid")
        return None

    def delete(self, server_id: str) -> None:
        if server_id not in self.project.servers:
            raise ApiError(404, "itemNotFound", f"Instance {server_id} could not be found.")
        self.project.delete(server_id)

    def live(self, server_id: str) -> tuple[Row, SimServer]:
        srv = self.project.servers.get(server_id)
        if srv is None:
            raise ApiError(404, "itemNotFound", f"Instance {server_id} could not be found.")
        return self.rows[server_id], srv

    def listing(self, query: Query) -> list[Row]:
        """One page of servers, newest first, after ``query.marker``."""
        rows = sorted(self.rows.values(), key=Row.order, reverse=True)
        if query.marker is not None:
            marker = self.rows.get(query.marker)
            if marker is None:
                raise bad_request(f"marker [{query.marker}] not found")
            rows = [r for r in rows if r.order() < marker.order()]
        page: list[Row] = []
        for row in rows:
            if len(page) >= query.limit:
                break
            if self._matches(row, query):
                page.append(row)
        return page

    def _matches(self, row: Row, query: Query) -> bool:
        if row.deleted and query.since is None:
            return False
        if query.since is not None and row.updated < query.since:
            return False
        if query.name is not None and query.name.search(row.name) is None:
            return False
        if query.status is not None and self.status(row)[0] != query.status:
            return False
        return _tags_match(row.tags, query)

    def status(self, row: Row) -> tuple[str, str | None]:
        """(status, task_state) as Nova shows them."""
        if row.deleted:
            return "DELETED", None
        srv = self.project.servers[row.id]
        status, _, task = srv.status.partition("/")
        if not task and srv.state is MachineState.STARTING:
            task = "spawning"
        if status == "SHUTOFF" and self.pilots is not None and self.pilots.holds(row.id):
            status = "ACTIVE"  # its agent is still uploading: not powered off yet
        return status, task or None

    def usage(self) -> dict[str, int]:
        project = self.project
        return {"cores": project.used_processors, "instances": project.used_instances,
                "ram": project.used_ram_mb}


def _user_data(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad_request("User data needs to be valid base 64.")
    try:
        return base64.b64decode(value, validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        raise bad_request("User data needs to be valid base 64.") from None


def server_view(view: NovaView, row: Row, base: str, microversion: tuple[int, int]
                ) -> dict[str, Any]:
    """One server of ``GET /servers/detail`` or ``GET /servers/{id}``."""
    status, task = view.status(row)
    srv = None if row.deleted else view.project.servers[row.id]
    vm_state, power = _VM_STATE.get(status, ("active", 1))
    flavor = row.flavor
    doc: dict[str, Any] = {
        "id": row.id, "name": row.name, "status": status, "tenant_id": view.project_id,
        "user_id": row.user_id, "metadata": {} if srv is None else dict(srv.metadata),
        "hostId": "", "created": iso(row.created), "updated": iso(row.updated),
        "image": {"id": row.image_id, "links": [
            {"rel": "bookmark", "href": f"{base}/images/{row.image_id}"}]},
        "addresses": {"sim-net": [{"version": 4, "addr": srv.address,
                                   "OS-EXT-IPS:type": "fixed"}]} if srv and srv.address else {},
        "accessIPv4": "", "accessIPv6": "", "key_name": None, "config_drive": "",
        "progress": 0, "OS-DCF:diskConfig": "MANUAL", "OS-EXT-AZ:availability_zone": "nova",
        "OS-EXT-STS:task_state": task, "OS-EXT-STS:vm_state": vm_state,
        "OS-EXT-STS:power_state": power,
        "OS-SRV-USG:launched_at": iso(srv.started_at, fraction=True, zone="")
        if srv is not None and srv.started_at is not None else None,
        "OS-SRV-USG:terminated_at": None, "os-extended-volumes:volumes_attached": [],
        "locked": False, "description": None,
        "links": [{"rel": "self", "href": f"{base}/v2.1/servers/{row.id}"},
                  {"rel": "bookmark", "href": f"{base}/servers/{row.id}"}]}
    if microversion >= (2, 47):
        doc["flavor"] = {"vcpus": flavor.processors, "ram": flavor.ram_mb, "disk": 0,
                         "ephemeral": 0, "swap": 0, "original_name": flavor.name,
                         "extra_specs": extra_specs(flavor)}
    else:
        doc["flavor"] = {"id": flavor.cloud_id, "links": [
            {"rel": "bookmark", "href": f"{base}/flavors/{flavor.cloud_id}"}]}
    if microversion >= (2, 26):
        doc["tags"] = list(row.tags)
    if srv is not None and srv.fault:
        doc["fault"] = {"code": 500, "created": iso(row.updated), "message": srv.fault}
    return doc


def extra_specs(flavor: Flavor) -> dict[str, str]:
    if flavor.benchmark_value is None:
        return {}
    return {"accounting:benchmark_type": flavor.benchmark_type,
            "accounting:benchmark_value": f"{flavor.benchmark_value:g}"}


def flavor_view(flavor: Flavor, base: str, microversion: tuple[int, int]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": flavor.cloud_id, "name": flavor.name, "vcpus": flavor.processors,
        "ram": flavor.ram_mb, "disk": 0, "swap": 0 if microversion >= (2, 75) else "",
        "OS-FLV-EXT-DATA:ephemeral": 0, "OS-FLV-DISABLED:disabled": False,
        "rxtx_factor": 1.0, "os-flavor-access:is_public": True,
        "links": [{"rel": "self", "href": f"{base}/v2.1/flavors/{flavor.cloud_id}"},
                  {"rel": "bookmark", "href": f"{base}/flavors/{flavor.cloud_id}"}]}
    if microversion >= (2, 55):
        doc["description"] = None
    if microversion >= (2, 61):
        doc["extra_specs"] = extra_specs(flavor)
    return doc
