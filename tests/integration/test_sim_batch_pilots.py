"""``BatchPilots`` (the simulator's pilots): reports kept until ``flush``, then written to a
real SQLite store, the heartbeats in one transaction."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from cloudvac.clouds.simpilots import BatchPilots
from cloudvac.model.records import MachineRecord, Recorded
from cloudvac.model.states import MachineState, ShutdownMessage
from cloudvac.store import Store

SPACE = "s.example"
NAMES = ("cloudvac-abcdef-belle-a", "cloudvac-abcdef-belle-b")


class CountingStore:
    """The real store, counting the calls that open a transaction."""

    def __init__(self, store: Store) -> None:
        self.store, self.batches, self.shutdowns = store, 0, 0

    def record_heartbeats(self, beats: Mapping[tuple[str, str], float]) -> int:
        self.batches += 1
        return self.store.record_heartbeats(beats)

    def record_shutdown(self, space: str, name: str, message: ShutdownMessage,
                        at: float) -> Recorded:
        self.shutdowns += 1
        return self.store.record_shutdown(space, name, message, at)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(f"sqlite:///{tmp_path}/pilots.db")
    opened.apply(SPACE, [MachineRecord(SPACE, n, "belle", MachineState.RUNNING, created_at=1.0)
                         for n in NAMES], {}, 1.0)
    try:
        yield opened
    finally:
        opened.close()


def test_reports_wait_for_flush_then_land_in_one_heartbeat_transaction(store: Store) -> None:
    sink = CountingStore(store)
    pilots = BatchPilots(sink)

    async def report() -> None:
        await pilots.heartbeat(SPACE, NAMES[0], 20.0, "heartbeat")
        await pilots.heartbeat(SPACE, NAMES[0], 10.0, "heartbeat")  # late: the later one stays
        await pilots.heartbeat(SPACE, NAMES[1], 15.0, "heartbeat")
        await pilots.shutdown(SPACE, NAMES[1], ShutdownMessage(200, "Success"), 30.0)

    asyncio.run(report())
    kept = [store.machine(SPACE, n) for n in NAMES]
    assert all(m is not None and m.heartbeat_at is None and m.shutdown is None for m in kept)
    assert pilots.flush() == 3
    assert (sink.batches, sink.shutdowns) == (1, 1)
    first, second = (store.machine(SPACE, n) for n in NAMES)
    assert first is not None and second is not None
    assert (first.heartbeat_at, second.heartbeat_at) == (20.0, 15.0)
    assert second.shutdown == ShutdownMessage(200, "Success") and second.reported_at == 30.0
    assert pilots.flush() == 0 and (sink.batches, sink.shutdowns) == (1, 1)  # nothing kept


def test_a_shutdown_of_an_unknown_machine_is_logged(store: Store,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    pilots = BatchPilots(store)
    asyncio.run(pilots.shutdown(SPACE, "cloudvac-abcdef-t2k-zz", ShutdownMessage(300, "Nothing"),
                                5.0))
    with caplog.at_level(logging.INFO, logger="cloudvac.clouds.simpilots"):
        assert pilots.flush() == 1
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith(f"space={SPACE} machinetype=t2k machine=cloudvac-abcdef-t2k-zz "
                               "shutdown_message for unknown machine") for line in lines), lines
