"""The EC2 adapter: boto3, one client per space, reused across cycles.

What each call costs per cycle: the listing is one ``DescribeInstances`` per page of
``list_page_size`` (1,000) instances, filtered by our tags (``tag:cloudvac:space``,
``tag:cloudvac:manager``) and followed with boto3's paginator; limits cost nothing unless
a vCPU limit is configured (then one listing of the region's pending and running
instances, to count foreign usage, plus ``GetServiceQuota`` when asked for); instance types
are described once and cached (``FLAVOR_CACHE_SECONDS``); deletes issued together in a
cycle are sent as one ``TerminateInstances`` (at most 1,000 ids); a create is one
``RunInstances`` with a ``ClientToken`` derived from the machine's name.

Throttling, 5xx and connection errors are retried by botocore itself
(``Config(retries={"mode": retry_mode, "max_attempts": ...})``); a create is safe to retry
because of its ``ClientToken``.  Blocking boto3 calls run in daemon threads
(``auth/cancel.py``), as the OpenStack adapter's do.  Errors from AWS come out translated
(``ec2list.translate``) and redacted.
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions as bexc

from cloudvac.auth.cancel import run_cancellable
from cloudvac.clouds import ec2list
from cloudvac.config.ec2 import Ec2Space
from cloudvac.config.models import Space
from cloudvac.config.secrets import SecretError, check_secret_file, read_secret
from cloudvac.config.settings import Settings
from cloudvac.model.cloud import (
    FLAVOR_CACHE_SECONDS,
    TAG_MANAGER,
    TAG_SPACE,
    Flavor,
    Limits,
    MachineSpec,
    ObservedMachine,
)
from cloudvac.model.errors import CloudError, Gone, Misconfigured, NotSent, Retryable
from cloudvac.model.observer import Observer
from cloudvac.model.redact import redact

log = logging.getLogger("cloudvac.clouds.ec2")
T = TypeVar("T")
MAX_TERMINATE = 1000
VCPU_QUOTA = ("ec2", "L-1216C47A")  # Running On-Demand Standard instances, in vCPUs
LIVE_STATES = ["pending", "running"]


def credentials(options: Ec2Space) -> dict[str, str]:
    """boto3 Session keywords from the configured source (``{}``: the default chain)."""
    if options.credentials == "default-chain":
        return {}
    if options.credentials == "env":
        return {"aws_access_key_id": read_secret(None, options.access_key_id_env,
                                                 "access key id"),
                "aws_secret_access_key": read_secret(None, options.secret_access_key_env,
                                                     "secret access key")}
    path = options.credentials_file
    assert path is not None  # the model requires it with credentials = file
    check_secret_file(path, "credentials_file")
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        raise SecretError(f"credentials_file {path}: not an AWS credentials file "
                          f"({type(exc).__name__})") from None
    profile = options.credentials_profile
    if not parser.has_section(profile) or not all(
            parser.get(profile, key, fallback="").strip()
            for key in ("aws_access_key_id", "aws_secret_access_key")):
        raise SecretError(f"credentials_file {path}: no [{profile}] with aws_access_key_id "
                          "and aws_secret_access_key")
    found = {key: parser.get(profile, key).strip() for key in
             ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
             if parser.get(profile, key, fallback="").strip()}
    return found


@dataclass(slots=True)
class _Batch:
    ids: list[str] = field(default_factory=list)
    done: asyncio.Future[None] | None = None


class Ec2Cloud:
    def __init__(self, space: Space, settings: Settings, observer: Observer) -> None:
        if space.ec2 is None:
            raise Misconfigured(f"space {space.name} has no EC2 options")
        self.space, self.options, self.settings = space.name, space.ec2, settings
        self.observer = observer
        try:  # read the secret now: a bad credentials file is a clear error at once
            self._keys = credentials(self.options)
        except SecretError as exc:
            raise Misconfigured(str(exc)) from None
        self._sem = asyncio.Semaphore(settings.api_concurrency)
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}
        self._types: dict[str, Flavor] = {}
        self._types_at = 0.0
        self._images: dict[str, str] = {}
        self._batch: _Batch | None = None
        self._our_processors = 0
        self._quota_warned = False
        self.hooks: list[Callable[..., None]] = []
        """Called for every HTTP request sent (``before-send``): the benchmark counts."""

    def client(self, service: str = "ec2") -> Any:
        """The boto3 client, built on first use inside a worker thread."""
        with self._lock:
            if service not in self._clients:
                options = self.options
                config = botocore.config.Config(
                    retries={"mode": options.retry_mode,
                             "total_max_attempts": options.max_attempts},
                    connect_timeout=options.api_timeout_seconds,
                    read_timeout=options.api_timeout_seconds,
                    max_pool_connections=max(10, self.settings.api_concurrency))
                session = boto3.session.Session(region_name=options.region, **self._keys)
                client = session.client(
                    service, endpoint_url=options.endpoint_url, config=config,
                    verify=str(options.ca_file) if options.ca_file else None)
                client.meta.events.register("before-send", self._sent)
                self._clients[service] = client
            return self._clients[service]

    def _sent(self, **kwargs: Any) -> None:
        for hook in self.hooks:
            hook(**kwargs)

    def reconfigure(self, options: Ec2Space) -> bool:
        return options == self.options

    async def _call(self, kind: str, fn: Callable[[], T]) -> T:
        """``fn`` in a thread of its own within the API timeout; boto3's errors come out
        translated, anything else unchanged (a bug)."""
        async with self._sem:
            began = time.monotonic()
            limit = self.options.api_timeout_seconds * (self.options.max_attempts + 1)
            try:
                result = await run_cancellable(fn, limit, f"ec2-{self.space}-{kind}")
            except TimeoutError:
                error: CloudError = Retryable(f"{kind}: no answer within {limit:g}s")
            except CloudError as exc:
                error = exc
            except (bexc.BotoCoreError, bexc.ClientError) as exc:
                error = ec2list.translate_exception(exc, kind)
                log.debug("space=%s machinetype=- machine=- %s failed: %s", self.space, kind,
                          type(exc).__name__)
            else:
                self.observer.cloud_request(self.space, kind, "ok", time.monotonic() - began)
                return result
            self.observer.cloud_request(self.space, kind, type(error).__name__,
                                        time.monotonic() - began)
            raise error from None

    def _filters(self) -> list[dict[str, Any]]:
        return [{"Name": f"tag:{TAG_SPACE}", "Values": [self.space]},
                {"Name": f"tag:{TAG_MANAGER}", "Values": [self.settings.manager_id]}]

    def _pages(self, filters: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        paginator = self.client().get_paginator("describe_instances")
        return iter(paginator.paginate(Filters=filters, PaginationConfig={
            "PageSize": self.options.list_page_size}))

    async def _instances(self, kind: str, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every instance matching ``filters`` through boto3's paginator, one call (and
        one request) per page; complete or raises."""
        pages: list[Iterator[dict[str, Any]]] = []

        def page() -> dict[str, Any]:
            if not pages:
                pages.append(self._pages(filters))
            return next(pages[0], {})

        found: list[dict[str, Any]] = []
        for _ in range(100_000):
            answer = await self._call(kind, page)
            found += [i for r in answer.get("Reservations", ()) for i in r.get("Instances", ())]
            if not answer.get("NextToken"):
                break
        return found

    async def list_machines(self) -> Sequence[ObservedMachine]:
        instances = await self._instances("list", self._filters())
        vcpus = await self._vcpus(instances)
        machines = [m for i in instances
                    if ec2list.ours(i, self.space, self.settings.manager_id)
                    and (m := ec2list.observe(i, vcpus)) is not None]
        self._our_processors = sum(m.processors for m in machines
                                   if m.state.value in ("starting", "running"))
        log.debug("space=%s machinetype=- machine=- listing: %d instances, %d ours",
                  self.space, len(instances), len(machines))
        return machines

    async def _vcpus(self, instances: Sequence[dict[str, Any]]) -> dict[str, int]:
        """vCPUs by instance type, describing (once, then cached) the types of ``instances``
        not known yet: a machine's processors must never be guessed."""
        unknown = sorted({str(i.get("InstanceType", "")) for i in instances} - set(self._types)
                         - {""})
        if unknown:
            for found in await self._call("flavors", lambda: self._describe_types(unknown)):
                self._types[found.name] = found
        return {name: f.processors for name, f in self._types.items()}

    async def limits(self) -> Limits:
        limit = self.options.vcpu_limit
        if self.options.vcpu_limit_from_service_quotas:
            limit = await self._quota(limit)
        if limit is None:
            return Limits()
        everyone = await self._instances(
            "limits", [{"Name": "instance-state-name", "Values": LIVE_STATES}])
        vcpus = await self._vcpus(everyone)
        used = sum(m.processors for i in everyone
                   if (m := ec2list.observe(i, vcpus) or ec2list.anonymous(i, vcpus)) is not None)
        return Limits(free_processors=limit - used,
                      foreign_processors=max(0, used - self._our_processors))

    async def _quota(self, fallback: int | None) -> int | None:
        service, code = VCPU_QUOTA
        try:
            answer = await self._call("quota", lambda: self.client(
                "service-quotas").get_service_quota(ServiceCode=service, QuotaCode=code))
        except CloudError as exc:  # no Service Quotas there, or no permission for it
            if not self._quota_warned:
                log.warning("space=%s machinetype=- machine=- vCPU quota %s unreadable (%s); "
                            "using vcpu_limit %s", self.space, code, exc, fallback)
                self._quota_warned = True
            return fallback
        return int(answer["Quota"]["Value"])

    async def flavor(self, names: Sequence[str], min_processors: int,
                     max_processors: int | None) -> Flavor:
        stale = time.monotonic() - self._types_at > FLAVOR_CACHE_SECONDS
        wanted = [n for n in names if stale or n not in self._types]
        if wanted:
            for found in await self._call("flavors", lambda: self._describe_types(wanted)):
                self._types[found.name] = found
            self._types_at = time.monotonic() if stale else self._types_at or time.monotonic()
        for name in names:
            kind = self._types.get(name)
            if kind is not None and kind.processors >= min_processors and (
                    max_processors is None or kind.processors <= max_processors):
                return kind
        raise Misconfigured(f"no instance type among {list(names)} has {min_processors}-"
                            f"{max_processors or 'any'} vCPUs; known: {sorted(self._types)}")

    def _describe_types(self, names: list[str]) -> list[Flavor]:
        try:
            answer = self.client().describe_instance_types(InstanceTypes=names)
        except bexc.ClientError as exc:
            if ec2list.error_code(exc) != "InvalidInstanceType" or len(names) == 1:
                if ec2list.error_code(exc) == "InvalidInstanceType":
                    return []
                raise
            return [f for name in names for f in self._describe_types([name])]
        return [Flavor(t["InstanceType"], int(t["VCpuInfo"]["DefaultVCpus"]),
                       int(t.get("MemoryInfo", {}).get("SizeInMiB", 0)), t["InstanceType"])
                for t in answer.get("InstanceTypes", ())]

    async def _image_id(self, image: str) -> str:
        if not image:
            raise Misconfigured("machinetype has no root_image")
        if image.startswith("ami-"):
            return image
        if image not in self._images:
            answer = await self._call("images", lambda: self.client().describe_images(
                Owners=list(self.options.image_owners),
                Filters=[{"Name": "name", "Values": [image]}]))
            found = sorted(answer.get("Images", ()), key=lambda i: i.get("CreationDate", ""))
            if not found:
                raise Misconfigured(f"no image named {image!r} owned by "
                                    f"{' '.join(self.options.image_owners)}")
            self._images[image] = str(found[-1]["ImageId"])
        return self._images[image]

    async def create_machine(self, spec: MachineSpec) -> str:
        try:
            image_id = await self._image_id(spec.image)
        except Retryable as exc:  # the RunInstances was never made
            raise NotSent(redact(f"image {spec.image!r} lookup failed: {exc}")) from None
        args = self._run_args(spec, image_id)
        answer = await self._call("create", lambda: self.client().run_instances(**args))
        return str(answer["Instances"][0]["InstanceId"])

    def _run_args(self, spec: MachineSpec, image_id: str) -> dict[str, Any]:
        options = self.options
        args: dict[str, Any] = {
            "ImageId": image_id, "InstanceType": spec.flavor.cloud_id or spec.flavor.name,
            "MinCount": 1, "MaxCount": 1, "UserData": ec2list.user_data(spec.user_data),
            "ClientToken": ec2list.client_token(spec.name),
            "TagSpecifications": ec2list.tag_specifications(spec.name, spec.metadata),
            "InstanceInitiatedShutdownBehavior": "terminate" if options.spot else "stop"}
        if options.subnet_id:
            args["SubnetId"] = options.subnet_id
        if options.security_group_ids:
            args["SecurityGroupIds"] = list(options.security_group_ids)
        if options.key_name:
            args["KeyName"] = options.key_name
        if options.spot:
            spot: dict[str, Any] = {"SpotInstanceType": "one-time",
                                    "InstanceInterruptionBehavior": "terminate"}
            if options.spot_max_price:
                spot["MaxPrice"] = options.spot_max_price
            args["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": spot}
        return args

    async def find_machine(self, name: str) -> ObservedMachine | None:
        filters = [*self._filters(), {"Name": "tag:Name", "Values": [name]}]
        vcpus = {n: f.processors for n, f in self._types.items()}
        for instance in await self._instances("lookup", filters):
            machine = ec2list.observe(instance, vcpus)
            if machine is not None and machine.name == name \
                    and machine.state.value != "gone":
                return machine
        return None

    async def delete_machine(self, cloud_id: str) -> None:
        """Terminate ``cloud_id``, together with the deletes issued in the same moment (one
        request for up to ``MAX_TERMINATE``); an instance already gone is success."""
        batch = self._batch
        if batch is not None and len(batch.ids) < MAX_TERMINATE:
            batch.ids.append(cloud_id)
        else:
            batch = self._batch = _Batch([cloud_id], asyncio.get_running_loop().create_future())
            await self._send(batch)
        assert batch.done is not None
        await asyncio.shield(batch.done)

    async def _send(self, batch: _Batch) -> None:
        """Collect this moment's deletes into ``batch``, terminate them, and settle its
        future whatever happens: a cancelled sender must leave no delete waiting on it."""
        assert batch.done is not None
        try:
            await asyncio.sleep(0)  # every delete of this moment joins the batch
            await asyncio.sleep(0)
            self._batch = None
            await self._terminate(batch.ids)
        except CloudError as exc:
            batch.done.set_exception(exc)
        except BaseException:
            if not batch.done.done():
                batch.done.set_exception(Retryable("delete not sent: its cycle ended"))
                batch.done.exception()  # its joiners read it, if any: no "never retrieved"
            raise
        else:
            batch.done.set_result(None)
        finally:
            if self._batch is batch:
                self._batch = None

    async def _terminate(self, ids: list[str]) -> None:
        try:
            await self._call("delete", lambda: self.client().terminate_instances(
                InstanceIds=list(ids)))
        except Gone:
            if len(ids) > 1:  # one of them is gone: the others one by one
                for cloud_id in ids:
                    await self._terminate([cloud_id])

    async def close(self) -> None:
        for client in list(self._clients.values()):
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()
