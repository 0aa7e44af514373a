"""The revision contract (``store/history.py``) across processes: several processes write
one PostgreSQL store at once (engine applies, heartbeats, shutdown messages, each with its
own ``Store``), while this process keeps an incrementally read history; afterwards that
history equals a full read.  The thread version is in ``test_store_history.py``."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from cloudvac.model.states import MachineState, ShutdownMessage
from cloudvac.store import Store
from tests.integration.test_store_history import NOW, fresh, running

SPACES = ("a", "b")
ROUNDS = 60
JOIN_SECONDS = 300.0  # a loaded 2-core machine is slow; a hung writer fails the test


def engine_writer(url: str, space: str) -> None:
    store = Store(url)
    try:
        for r in range(ROUNDS):
            store.apply(space, [running(f"{space}-{r % 20}", space, fault=f"r{r}"),
                                running(f"{space}-new-{r}", space)], {}, NOW)
            if r % 7 == 0:
                store.apply(space, [running(f"{space}-new-{r}", space,
                                            state=MachineState.GONE)], {}, NOW)
    finally:
        store.close()


def web_writer(url: str) -> None:
    store = Store(url)
    try:
        for r in range(ROUNDS):
            store.record_heartbeats({(s, f"{s}-{r % 20}"): 4000.0 + r for s in SPACES})
            store.record_shutdown(SPACES[r % 2], f"{SPACES[r % 2]}-{r % 20}",
                                  ShutdownMessage(200, f"r{r}"), 5000.0 + r)
    finally:
        store.close()


def test_writers_in_several_processes_never_make_a_reader_drift(pg_url: str) -> None:
    reader = Store(pg_url)
    try:
        for space in SPACES:
            reader.apply(space, [running(f"{space}-{i}", space) for i in range(20)], {}, NOW)
            reader.history(space)
        spawn = multiprocessing.get_context("spawn")
        writers = [spawn.Process(target=engine_writer, args=(pg_url, s)) for s in SPACES]
        writers.append(spawn.Process(target=web_writer, args=(pg_url,)))
        for process in writers:
            process.start()
        deadline = time.monotonic() + JOIN_SECONDS
        while any(p.is_alive() for p in writers) and time.monotonic() < deadline:
            for space in SPACES:
                reader.history(space)  # incremental reads while the others write
        for process in writers:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                pytest.fail("a writer process did not finish")
            assert process.exitcode == 0
        for space in SPACES:
            assert reader.history(space) == fresh(pg_url, space)
        assert reader.histories.stats.incremental_reads > 0
    finally:
        reader.close()
