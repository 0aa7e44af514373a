"""The cycle's acting step: carry out a plan on one space's cloud.

Crash safety: every create is recorded as a machine row in state ``intent`` (committed)
before the cloud is asked, and its name and tags let the next listing recognise it; a
definite refusal (quota, misconfiguration, credentials) or a create that was never sent
(``NotSent``: an image lookup failed) marks the row gone at once, an unknown outcome
(timeout, 5xx) leaves it for the listing to settle.  Deletions were
recorded by the cycle before this step runs.  At most ``api_concurrency`` calls are in
flight; each call's events are returned with its outcome, never shared.

Several instances (a ``Tenure``): intents and a refused create's end are written under the
lease's fence, and no cloud call that acts (create, delete) starts once the lease is not
trusted by this process's own clock (``Tenure.valid``): those creates are deferred, those
deletes left for whoever owns the space.  A fenced write that finds the lease lost stops
every create still to come; ``act`` then raises ``LeaseLost``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace

from cloudvac.config.models import Space
from cloudvac.config.settings import Settings
from cloudvac.context.errors import RenderError
from cloudvac.engine.leases import Tenure
from cloudvac.engine.lifecycle import Deletion
from cloudvac.engine.planner import Create
from cloudvac.engine.stages import Stopwatch
from cloudvac.engine.tools import CycleTools
from cloudvac.model.cloud import Cloud, MachineSpec, machine_metadata
from cloudvac.model.errors import (
    AuthFailed,
    CloudError,
    Gone,
    Misconfigured,
    NotSent,
    QuotaExceeded,
)
from cloudvac.model.records import Event, MachineRecord
from cloudvac.model.states import MachineState
from cloudvac.store.leases import Fence, LeaseLost


@dataclass(frozen=True, slots=True)
class Acted:
    """What acting on a plan did."""

    created: int = 0
    create_failures: int = 0
    deleted: int = 0
    deferred: int = 0
    """Creates not started because the act step's deadline had passed (planned again)."""
    events: tuple[Event, ...] = ()
    refused: frozenset[str] = frozenset()
    """Flavors the cloud refused for quota or capacity this cycle."""
    accepted: frozenset[str] = frozenset()
    """Flavors the cloud created a machine of this cycle."""
    auth_refused: bool = False


@dataclass(frozen=True, slots=True)
class _Done:
    ok: bool
    events: tuple[Event, ...] = ()
    error: type[CloudError] | None = None
    flavor: str = ""
    deferred: bool = False
    lost: LeaseLost | None = None


class Actor:
    def __init__(self, cloud: Cloud, settings: Settings, tools: CycleTools,
                 watch: Stopwatch | None = None) -> None:
        """``watch``: where the CPU of the store's writes is added (``stages.py``)."""
        self.cloud, self.settings, self.tools = cloud, settings, tools
        self.watch = watch if watch is not None else Stopwatch()

    async def act(self, space: Space, deletes: Sequence[Deletion], creates: Sequence[Create],
                  deadline: float, tenure: Tenure | None = None) -> Acted:
        """Deletes first (they free capacity), then creates; no create starts after
        ``deadline`` (monotonic), so a large burst spreads over cycles instead of
        overrunning the cycle's own deadline.  ``tenure``: see the module doc."""
        sem = asyncio.Semaphore(self.settings.api_concurrency)
        refused: set[str] = set()  # machinetypes (or "*") refused this cycle: stop asking

        def trusted() -> bool:
            return tenure is None or tenure.valid()

        async def delete(d: Deletion) -> _Done:
            async with sem:
                return await self._delete(space, d) if trusted() else _Done(False)

        async def create(c: Create) -> _Done:
            async with sem:
                if "*" in refused or c.machinetype in refused:
                    return _Done(False)
                if self.tools.monotonic() > deadline or not trusted():
                    return _Done(False, deferred=True)
                try:
                    return await self._create(space, c, refused, tenure)
                except LeaseLost as exc:
                    refused.add("*")
                    return _Done(False, lost=exc)

        deleted = await asyncio.gather(*(delete(d) for d in deletes))
        created = await asyncio.gather(*(create(c) for c in creates))
        lost = next((c.lost for c in created if c.lost is not None), None)
        if lost is not None:
            raise lost
        return _acted(deleted, created)

    async def _delete(self, space: Space, d: Deletion) -> _Done:
        count = self.tools.metrics.deletes.labels
        try:
            await self.cloud.delete_machine(d.cloud_id)
        except Gone:
            pass
        except CloudError as exc:
            count(space.name, d.machinetype, d.reason, "error").inc()
            return _Done(False, (Event(self.tools.clock(), space.name, d.machinetype, d.name,
                                       "error", f"delete failed, retried later: {exc}"),))
        count(space.name, d.machinetype, d.reason, "ok").inc()
        return _Done(True)

    async def _create(self, space: Space, create: Create, refused: set[str],
                      tenure: Tenure | None = None) -> _Done:
        tools, mt, watch = self.tools, space.machinetypes[create.machinetype], self.watch
        fence: Fence | None = None if tenure is None else tenure.fence
        now, name = tools.clock(), tools.namer(space.name, mt.name)
        count = tools.metrics.creates.labels

        def error(text: str) -> _Done:
            return _Done(False, (Event(now, space.name, mt.name, name, "error", text),))

        try:
            user_data = tools.render(space, mt, name)
        except RenderError as exc:  # fix the configuration: no create, no intent
            refused.add(mt.name)
            count(space.name, mt.name, "RenderError").inc()
            return error(f"user_data not rendered: {exc}")
        intent = MachineRecord(space.name, name, mt.name, MachineState.INTENT,
                               processors=create.flavor.processors, hs06=create.hs06,
                               created_at=now)
        await asyncio.to_thread(watch.call, "store_write", tools.store.apply, space.name,
                                [intent], {}, now, fence)
        if tenure is not None and not tenure.valid():  # the write took long: ask no cloud
            return _Done(False, deferred=True)  # the intent is settled like a crash's
        try:
            await self.cloud.create_machine(self._spec(space, create, intent, user_data))
        except (QuotaExceeded, Misconfigured, AuthFailed, NotSent) as exc:
            # Definitely nothing created (refused, or never sent): free the intent now.
            gone = replace(intent, state=MachineState.GONE, fault=f"create failed: {exc}")
            await asyncio.to_thread(watch.call, "store_write", tools.store.apply, space.name,
                                    [gone], {}, now, fence)
            refused.add(mt.name if isinstance(exc, Misconfigured | NotSent) else "*")
            count(space.name, mt.name, type(exc).__name__).inc()
            verb = "not sent" if isinstance(exc, NotSent) else "refused"
            return replace(error(f"create {verb} ({type(exc).__name__}): {exc}"),
                           error=type(exc), flavor=create.flavor.name)
        except CloudError as exc:  # outcome unknown (timeout, 5xx): the listing will tell
            count(space.name, mt.name, type(exc).__name__).inc()
            return error(f"create outcome unknown ({type(exc).__name__}): {exc}")
        count(space.name, mt.name, "ok").inc()
        return _Done(True, (Event(now, space.name, mt.name, name, "create",
                                  f"created with flavor {create.flavor.name} "
                                  f"({create.flavor.processors} processors)"),),
                     flavor=create.flavor.name)

    def _spec(self, space: Space, create: Create, intent: MachineRecord,
              user_data: str) -> MachineSpec:
        mt = space.machinetypes[create.machinetype]
        return MachineSpec(
            name=intent.name, space=space.name, machinetype=mt.name, flavor=create.flavor,
            image=mt.root_image or "", user_data=user_data,
            metadata=machine_metadata(
                space=space.name, machinetype=mt.name, manager_id=self.settings.manager_id,
                created_at=intent.created_at, manager_url=self.settings.web_base_url))


def _acted(deleted: Sequence[_Done], created: Sequence[_Done]) -> Acted:
    done = [c for c in created if not c.deferred]
    ok = sum(c.ok for c in done)
    return Acted(
        created=ok, create_failures=len(done) - ok, deleted=sum(d.ok for d in deleted),
        deferred=len(created) - len(done),
        events=tuple(e for d in (*deleted, *created) for e in d.events),
        refused=frozenset(c.flavor for c in done if _is(c.error, QuotaExceeded)),
        accepted=frozenset(c.flavor for c in done if c.ok),
        auth_refused=any(_is(c.error, AuthFailed) for c in done))


def _is(error: type[CloudError] | None, kind: type[CloudError]) -> bool:
    return error is not None and issubclass(error, kind)
