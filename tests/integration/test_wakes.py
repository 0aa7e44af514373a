"""Wakes across processes (issue 19): a shutdown message recorded by a process that does
not run its space's cycles (``cloudvac web`` on its own, an instance that does not hold the
space's lease) still brings the owner's next cycle forward, through the store's wake board
(``store/wakes.py``, ``engine/wakes.py``)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cloudvac.auth.vmtokens import TokenSigner, load_or_create_secret
from cloudvac.engine.daemon import Daemon
from cloudvac.engine.wakes import ShutdownWaker, WakeWatcher
from cloudvac.store import Store
from tests.integration.test_daemon import SPACE as SIM_SPACE
from tests.integration.test_daemon import make_daemon
from tests.integration.webserver import SPACE, web_server
from tests.postgres import free_port

START_SECONDS = 300.0  # imports and migrations of a process on a loaded 2-core machine


def test_the_board_keeps_each_spaces_last_message(store_url: str) -> None:
    """Any process posts, any other reads: one row per space (upserted), long names too."""
    long = "s" * 200 + ".example"
    door, owner = Store(store_url), Store(store_url)
    try:
        assert owner.wakes() == {}
        door.post_wake("a.example", 100.5)
        door.post_wake(long, 7.25)
        owner.post_wake("a.example", 101.0)  # a later message of the same space
        assert owner.wakes() == {"a.example": 101.0, long: 7.25}
    finally:
        door.close()
        owner.close()


def test_the_watcher_wakes_the_owned_spaces_whose_row_changed(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    woken: list[tuple[str, float]] = []
    watcher = WakeWatcher(store, lambda space, at: woken.append((space, at)),
                          lambda: frozenset({"a.example", "b.example"}))
    try:
        store.post_wake("a.example", 1.0)
        assert watcher.poll(store.wakes()) == []  # the first read only learns the board
        store.post_wake("a.example", 2.0)
        store.post_wake("c.example", 2.0)  # not ours
        assert watcher.poll(store.wakes()) == [("a.example", 2.0)]
        assert watcher.poll(store.wakes()) == []  # seen
        store.post_wake("b.example", 3.0)

        async def one_round() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(watcher.watch(stop))
            deadline = time.monotonic() + 60
            while not woken and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.wait_for(task, 60)

        asyncio.run(one_round())
        assert woken == [("b.example", 3.0)]
    finally:
        store.close()


def test_the_door_posts_only_for_spaces_this_instance_does_not_run(tmp_path: Path) -> None:
    """The owner's door wakes its own daemon (no write); any other door posts."""
    with web_server(tmp_path) as web:
        local: list[str] = []
        owned: set[str] = set()
        web.context.wake = ShutdownWaker(web.store, time.time, local.append,
                                         lambda: frozenset(owned))

        def ends(name: str) -> int:
            web.add_machine(name)
            return httpx.put(f"{web.url}/machines/{SPACE}/{name}/joboutputs/shutdown_message",
                             content=b"200 Success\n",
                             headers={"Authorization": f"Bearer {web.token(name)}"}).status_code

        assert ends("cloudvac-x-belle-elsewhere") == 204
        deadline = time.monotonic() + 60  # posted from a worker thread after the answer
        while SPACE not in web.store.wakes():
            assert time.monotonic() < deadline, "no wake posted"
            time.sleep(0.05)
        posted = web.store.wakes()[SPACE]
        assert abs(posted - time.time()) < 60 and local == []
        owned.add(SPACE)
        assert ends("cloudvac-x-belle-mine") == 204
        assert local == [SPACE] and web.store.wakes()[SPACE] == posted


def one_space_daemon(tmp_path: Path, cycle_seconds: int) -> tuple[Daemon, Store]:
    """A daemon of one sim space ``a.example`` (limit 1) on a SQLite store of its own,
    ``wake_seconds`` 0.2."""
    cdir = tmp_path / "conf"
    cdir.mkdir()
    (cdir / "00.conf").write_text(f"[settings]\ncycle_seconds = {cycle_seconds}\n"
                                  "wake_seconds = 0.2\n")
    (cdir / "10.conf").write_text(SIM_SPACE.format(name="a.example", limit=1, intent=600,
                                                    latency=0, extra=""))
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    return make_daemon(cdir, store), store


def test_a_wake_for_a_message_older_than_a_period_is_past(tmp_path: Path) -> None:
    daemon, store = one_space_daemon(tmp_path, 30)

    async def cycles_after(at: float) -> int:
        daemon.wake("a.example", at)
        await asyncio.sleep(2.0)  # far longer than wake_seconds, far shorter than 30 s
        return daemon.spaces["a.example"].cycles

    async def scenario() -> tuple[int, int]:
        runner = asyncio.create_task(daemon.run())
        deadline = time.monotonic() + 60
        while daemon.spaces.get("a.example") is None or daemon.spaces["a.example"].cycles < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        past = await cycles_after(time.time() - 31)
        recent = await cycles_after(time.time() - 1)  # due at once: 0.2 s after the message
        daemon.stop()
        await asyncio.wait_for(runner, 30)
        return past, recent

    try:
        assert asyncio.run(scenario()) == (1, 2)
    finally:
        store.close()


def test_a_wake_too_soon_for_its_slot_waits_only_until_the_slot_may_be_taken(
        tmp_path: Path) -> None:
    """cycle_seconds is 10: two wakes take the next two slots (10 and 20 s after the first
    cycle); a third, at ~5 s, may take the slot of 30 s only from 10 s on, two periods
    early, and runs then, not at 30 s."""
    daemon, store = one_space_daemon(tmp_path, 10)

    async def scenario() -> tuple[list[int], float]:
        runner = asyncio.create_task(daemon.run())
        deadline = time.monotonic() + 60
        while daemon.spaces.get("a.example") is None or daemon.spaces["a.example"].cycles < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        first, counts = time.monotonic(), []
        for _ in range(3):
            daemon.wake("a.example")
            await asyncio.sleep(1.5)
            counts.append(daemon.spaces["a.example"].cycles)
        while daemon.spaces["a.example"].cycles < 4 and time.monotonic() < first + 25:
            await asyncio.sleep(0.05)  # the old rule ran it at 30 s, its slot's own time
        took = time.monotonic() - first
        daemon.stop()
        await asyncio.wait_for(runner, 30)
        return counts, took

    try:
        counts, took = asyncio.run(scenario())
    finally:
        store.close()
    assert counts == [2, 3, 3]
    assert 5 < took < 25  # not at once: two periods early at most


# -- the production layout: `cloudvac web` and `cloudvac run`, two processes ----------------

SHARED = """\
[settings]
state_dir = {state}
cycle_seconds = 600
wake_seconds = 0.5

[space w.example]
api = sim
processors_limit = 2
creation_burst_processors = 2
flavor_names = m1.small
sim_boot_seconds = 0.2

[machinetype w.example belle]
target_share = 1
sim_job_seconds = 86400
"""
DOORS = re.compile(r"web service on (\S+), operator door on (\S+)")


def _serving(process: subprocess.Popen[bytes], log: Path) -> tuple[str, str]:
    deadline = time.monotonic() + START_SECONDS
    while not (found := DOORS.search(log.read_text(errors="replace"))):
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, "not serving in time"
        time.sleep(0.2)
    return found.group(1), found.group(2)


def _cycles(operator_url: str) -> float:
    text = httpx.get(f"{operator_url}/metrics", timeout=60, trust_env=False).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("cloudvac_cycles_total{"))


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[dict[str, object]]:
    """`cloudvac web` (the VMs' door) and `cloudvac run`, sharing one SQLite store."""
    procs: list[subprocess.Popen[bytes]] = []
    doors: dict[str, tuple[str, str]] = {}
    try:
        for role, port in (("web", free_port()), ("run", 0)):
            cdir = tmp_path / f"conf-{role}"
            cdir.mkdir()
            (cdir / "10-shared.conf").write_text(SHARED.format(state=tmp_path / "state"))
            (cdir / "90-listen.conf").write_text(
                f"[settings]\nweb_listen = 127.0.0.1:{port}\noperator_listen = 127.0.0.1:0\n")
            log = tmp_path / f"{role}.log"
            with log.open("ab") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "cloudvac", role, "--config-dir", str(cdir)],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"}))
            doors[role] = _serving(procs[-1], log)
        yield {"state": tmp_path / "state", "web": doors["web"][0], "run": doors["run"][1]}
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(60)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_shutdown_message_at_cloudvac_web_wakes_cloudvac_run(
        layout: dict[str, object]) -> None:
    """cycle_seconds is 600: after its first cycle, `cloudvac run` cycles again within
    the test's deadline only if the shutdown message PUT to `cloudvac web` woke it."""
    state, web, run = Path(str(layout["state"])), str(layout["web"]), str(layout["run"])
    database = state / "cloudvac.db"
    deadline = time.monotonic() + START_SECONDS
    names: list[str] = []
    while len(names) < 2 or _cycles(run) < 1:
        assert time.monotonic() < deadline, "the first cycle did not create the machines"
        time.sleep(0.2)
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
            names = [n for (n,) in db.execute("SELECT name FROM machines")]
    before = _cycles(run)
    token = TokenSigner(load_or_create_secret(state)).token("w.example", names[0],
                                                            time.time() + 3600)
    answer = httpx.put(f"{web}/machines/w.example/{names[0]}/joboutputs/shutdown_message",
                       content=b"200 Success\n", headers={"Authorization": f"Bearer {token}"},
                       timeout=60, trust_env=False)
    assert answer.status_code == 204
    deadline = time.monotonic() + 240  # well under the 600 s period
    while _cycles(run) <= before:
        assert time.monotonic() < deadline, "cloudvac run was not woken"
        time.sleep(0.2)
