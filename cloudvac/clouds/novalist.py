"""Our servers as Nova last listed them, kept current with ``changes-since`` listings.

Why: a full ``GET /servers/detail`` of 1,000 servers costs two requests per cycle (Nova
answers a full page of ``max_limit`` with a "next" link, so an exact multiple costs one
empty page more) and makes Nova join every instance row.  Between full listings, a
``changes-since`` listing returns only the servers whose ``updated_at`` moved: usually one
short page.  Nova returns *deleted* servers in such a listing (status ``DELETED``, with
their metadata already gone), which is how a deletion is seen.

Contract (the same as a full listing, see ``clouds.base``):

* ``current()`` is every server of ours that the last full listing plus every later
  change listing showed, minus those shown deleted; a listing that failed changed nothing.
* A full listing replaces everything, at least every ``full_every`` seconds (and whenever
  no change mark is known yet), so a change Nova's filter could miss (a compute host's
  clock far behind, rows purged by ``nova-manage db archive_deleted_rows`` before we
  looked) is corrected within that time.  ``full_every = 0`` lists everything every cycle,
  as VCycle did.
* The change mark is Nova's own ``updated`` time (never our clock), minus ``overlap``
  seconds: Nova stamps rows with whole seconds, and a row committed late can carry a
  stamp older than one already seen.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cloudvac.clouds import nova
from cloudvac.model.cloud import TAG_MACHINETYPE, TAG_MANAGER, TAG_SPACE, ObservedMachine
from cloudvac.model.redact import redact

FULL_LISTING_SECONDS = 600.0
FAULT_LIMIT = 300  # a server's fault message, as stored and shown
OVERLAP_SECONDS = 120.0
_GONE_STATUSES = frozenset({"DELETED"})


def observe(server: nova.Server) -> ObservedMachine:
    """The engine's view of one decoded Nova server."""
    state = nova.state_of(server)
    return ObservedMachine(
        cloud_id=server.id, name=server.name,
        machinetype=server.metadata.get(TAG_MACHINETYPE, ""), state=state,
        processors=server.flavor.vcpus, created_at=nova.timestamp(server.created),
        # Nova keeps launched_at once the server ran: a server first listed after its VM
        # powered off (it started and stopped between two listings) still started, and
        # only a machine with a start is accounted (engine/accounting.py).
        started_at=nova.timestamp(server.launched_at),
        cloud_status=f"{server.status}/{server.task_state or '-'}",
        fault=redact(server.fault.message.strip(), FAULT_LIMIT) if server.fault else "",
        address=nova.first_address(server))


@dataclass(slots=True)
class ServerListing:
    """The listing cache of one space (one instance per ``OpenStackCloud``)."""

    space: str
    manager: str
    full_every: float = FULL_LISTING_SECONDS
    overlap: float = OVERLAP_SECONDS
    clock: Callable[[], float] = time.monotonic
    machines: dict[str, ObservedMachine] = field(default_factory=dict)
    mark: float | None = None
    """Newest ``updated`` time Nova showed us (unix seconds, Nova's clock)."""
    full_at: float | None = None
    """``clock()`` of the last full listing."""
    returned: int = 0
    """Servers Nova returned in the last listing (what the listing cost to decode)."""

    def query(self) -> dict[str, str]:
        """The filter of the next listing: empty for a full one, else ``changes-since``."""
        if self.full_due():
            return {}
        assert self.mark is not None
        since = datetime.datetime.fromtimestamp(self.mark - self.overlap, datetime.UTC)
        return {"changes-since": since.strftime("%Y-%m-%dT%H:%M:%SZ")}

    def full_due(self) -> bool:
        return self.full_every <= 0 or self.mark is None or self.full_at is None or \
            self.clock() - self.full_at >= self.full_every

    def ours(self, server: nova.Server) -> bool:
        return server.metadata.get(TAG_SPACE) == self.space and \
            server.metadata.get(TAG_MANAGER) == self.manager

    def apply(self, query: dict[str, str], servers: Iterable[nova.Server]) -> None:
        """Merge one *complete* listing (every page) made with ``query``."""
        full = not query
        found: dict[str, ObservedMachine] = {} if full else dict(self.machines)
        mark = None if full else self.mark
        returned = 0
        for server in servers:
            returned += 1
            updated = nova.timestamp(server.updated)
            if updated is not None and (mark is None or updated > mark):
                mark = updated
            if server.status.upper() in _GONE_STATUSES:
                found.pop(server.id, None)
            elif self.ours(server) or server.id in found:
                # Nova may repeat a server across pages while states change: keep one.
                found[server.id] = observe(server)
        self.machines, self.mark, self.returned = found, mark, returned
        if full:
            self.full_at = self.clock()

    def current(self) -> list[ObservedMachine]:
        return list(self.machines.values())
