"""The listing cache on hand-written Nova pages (the same scenario runs on real Nova in
tests/contract/test_openstack_adapter.py::test_change_listings_match_a_full_listing)."""

from __future__ import annotations

import datetime
from typing import Any

import msgspec

from cloudvac.clouds import nova
from cloudvac.clouds.novalist import ServerListing
from cloudvac.model.states import MachineState

S = MachineState
T0 = datetime.datetime(2026, 11, 25, 12, 0, 0, tzinfo=datetime.UTC).timestamp()
OURS = {"cloudvac:space": "sp", "cloudvac:manager": "m1", "cloudvac:machinetype": "belle"}


def iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def server(sid: str, status: str, updated: float, metadata: dict[str, str] | None = None,
           **extra: Any) -> nova.Server:
    doc = {"id": sid, "name": f"cloudvac-abc-{sid}", "status": status, "updated": iso(updated),
           "created": iso(T0 - 100), "metadata": OURS if metadata is None else metadata,
           "flavor": {"vcpus": 2}, **extra}
    return msgspec.convert(doc, nova.Server)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def states(listing: ServerListing) -> dict[str, MachineState]:
    return {m.cloud_id: m.state for m in listing.current()}


def test_first_listing_is_full_then_changes_since_the_newest_update_minus_overlap() -> None:
    clock = Clock()
    listing = ServerListing("sp", "m1", full_every=600, overlap=120, clock=clock)
    assert listing.query() == {}
    listing.apply({}, [server("a", "ACTIVE", T0), server("b", "BUILD", T0 + 30)])
    assert states(listing) == {"a": S.RUNNING, "b": S.STARTING}
    assert listing.query() == {"changes-since": iso(T0 + 30 - 120)}
    clock.now += 599
    assert listing.query() != {}
    clock.now += 1
    assert listing.query() == {}, "full listing every full_every seconds"


def test_changes_update_add_and_remove_deleted_servers_whose_tags_are_gone() -> None:
    listing = ServerListing("sp", "m1", clock=Clock())
    listing.apply({}, [server("a", "ACTIVE", T0), server("b", "ACTIVE", T0),
                       server("c", "ACTIVE", T0)])
    query = listing.query()
    listing.apply(query, [
        server("a", "SHUTOFF", T0 + 60),
        server("b", "DELETED", T0 + 61, metadata={}),  # Nova drops metadata on delete
        server("d", "BUILD", T0 + 62),  # adopted from its tags
        server("x", "ACTIVE", T0 + 63, metadata={"cloudvac:space": "other"}),
    ])
    assert states(listing) == {"a": S.STOPPED, "c": S.RUNNING, "d": S.STARTING}
    assert listing.mark == T0 + 63


def test_a_full_listing_drops_what_the_changes_missed() -> None:
    listing = ServerListing("sp", "m1", full_every=0, clock=Clock())
    listing.apply({}, [server("a", "ACTIVE", T0), server("b", "ACTIVE", T0)])
    assert listing.query() == {}, "full_every = 0: every listing is full (VCycle)"
    listing.apply({}, [server("a", "ACTIVE", T0)])
    assert states(listing) == {"a": S.RUNNING}


def test_an_empty_project_keeps_listing_in_full_until_a_mark_is_known() -> None:
    listing = ServerListing("sp", "m1", clock=Clock())
    listing.apply({}, [])
    assert listing.mark is None and listing.query() == {}


def test_asking_for_the_query_changes_nothing() -> None:
    """The adapter asks for the query, fetches every page, and only then applies: a
    listing that raised half-way leaves the cache and the mark as they were."""
    listing = ServerListing("sp", "m1", clock=Clock())
    listing.apply({}, [server("a", "ACTIVE", T0)])
    before = (dict(listing.machines), listing.mark, listing.full_at)
    listing.query()
    assert (dict(listing.machines), listing.mark, listing.full_at) == before
