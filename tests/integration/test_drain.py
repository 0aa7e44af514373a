"""Operator commands against a running daemon: ``drain``/``undrain`` (with a grace), ``kill``,
``logs`` and ``status --json``; the store's side of them on SQLite and PostgreSQL.

The must-show: a ``cloudvac run`` process keeps two simulated spaces full; ``cloudvac drain``
(another process) drains one of them with a grace; its pilots are told (MJF shutdowntime)
when the grace ends, the space empties, and no machine of it is deleted before drain time +
grace unless it ended by itself; the other space runs on.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from typer.testing import CliRunner

from cloudvac.auth.vmtokens import TokenSigner, load_or_create_secret
from cloudvac.cli import app
from cloudvac.model.records import Drain, MachineRecord, ProjectRoom
from cloudvac.model.states import MachineState
from cloudvac.store import Store
from cloudvac.store.engine import StoreUnavailable, alembic_config
from tests.integration.test_daemon import config, make_daemon

CLOUDVAC = [sys.executable, "-m", "cloudvac"]
DEADLINE_S = 180.0  # generous: a loaded 2-core machine
GRACE_S = 15.0

RUNNING = """\
[settings]
state_dir = {state}
cycle_seconds = 0.5
space_timeout_seconds = 10
wake_seconds = 0.2
web_listen = 127.0.0.1:0
operator_listen = 127.0.0.1:0

[space a.example]
api = sim
processors_limit = 6
creation_burst_processors = 6
flavor_names = m1.small
sim_boot_seconds = 0.2

[machinetype a.example belle]
target_share = 1
sim_job_seconds = 1000

[machinetype a.example t2k]
target_share = 1
sim_job_seconds = 8

[space b.example]
api = sim
processors_limit = 3
creation_burst_processors = 3
flavor_names = m1.small
sim_boot_seconds = 0.2

[machinetype b.example belle]
target_share = 1
sim_job_seconds = 1000
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLOUDVAC, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})


def wait_for(what: str, check: Callable[[], Any], seconds: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"not within {seconds:.0f}s: {what}")


def live(store: Store, space: str) -> list[MachineRecord]:
    return [m for m in store.machines(space) if m.state is not MachineState.GONE]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Path, Path, subprocess.Popen[str]]]:
    """A ``cloudvac run`` process on RUNNING; yields config dir, its log file, process."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "10.conf").write_text(RUNNING.format(state=tmp_path / "state"))
    log = tmp_path / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen([*CLOUDVAC, "run", "-c", str(conf)], stdout=out, stderr=out,
                                text=True)
    try:
        yield conf, log, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def reader(url: str) -> Store | None:
    """The store read-only, once the daemon has created and migrated it."""
    try:
        return Store(url, read_only=True)
    except StoreUnavailable:
        return None


def web_url(log: Path) -> str:
    def found() -> str | None:
        match = re.search(r"web service on (http://127\.0\.0\.1:\d+)", log.read_text())
        return match.group(1) if match else None
    return str(wait_for("the web service's start line", found))


def features(url: str, signer: TokenSigner, m: MachineRecord, kind: str, key: str) -> str:
    token = signer.token(m.space, m.name, time.time() + 600)
    response = httpx.get(f"{url}/machines/{m.space}/{m.name}/{kind}/{key}", timeout=30,
                         headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return response.text.strip()


def test_drain_of_a_running_space_empties_it_and_kills_no_pilot_before_its_grace(
        tmp_path: Path, daemon: tuple[Path, Path, subprocess.Popen[str]]) -> None:
    conf, log, proc = daemon
    url = f"sqlite:///{tmp_path / 'state' / 'cloudvac.db'}"
    store: Store = wait_for("the daemon's store, migrated", lambda: reader(url))
    try:
        wait_for("both spaces full", lambda: sum(
            m.state is MachineState.RUNNING for m in live(store, "a.example")) == 6
            and len(live(store, "b.example")) == 3)
        web = web_url(log)
        drained = cli("drain", "a.example", "--grace", f"{GRACE_S:g}", "-c", str(conf))
        assert drained.returncode == 0, drained.stderr
        assert "drained a.example" in drained.stdout
        drain = store.drains("a.example")["a.example"]["*"]
        assert drain.grace_seconds == GRACE_S
        print(f"drained at {drain.at:.1f}, deadline {drain.deadline:.1f}")

        # pilots are told to take no job that cannot end by the deadline; others are not
        signer = TokenSigner(load_or_create_secret(tmp_path / "state"))
        belle = next(m for m in live(store, "a.example") if m.machinetype == "belle")
        assert features(web, signer, belle, "machinefeatures", "shutdowntime") == \
            str(int(drain.deadline))
        assert features(web, signer, belle, "jobfeatures", "shutdowntime_job") == \
            str(int(drain.deadline))
        other = live(store, "b.example")[0]
        assert int(features(web, signer, other, "machinefeatures", "shutdowntime")) > \
            drain.deadline + 3600  # its wallclock end

        status = json.loads(cli("status", "--json", "-c", str(conf)).stdout)
        by_type = {(r["space"], r["machinetype"]): r for r in status}
        assert by_type["a.example", "belle"]["drained"] is True
        assert by_type["a.example", "belle"]["drain_deadline"] == pytest.approx(drain.deadline)
        assert by_type["b.example", "belle"]["drained"] is False

        wait_for("a.example empty", lambda: not live(store, "a.example"))
        assert proc.poll() is None, log.read_text()[-3000:]
        machines = [m for m in store.machines("a.example", include_gone=True)]
        check_no_pilot_killed_early(machines, drain, store)
        assert live(store, "b.example"), "the other space runs on"
    finally:
        store.close()
    show_logs(conf, machines)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def check_no_pilot_killed_early(machines: list[MachineRecord], drain: Drain,
                                store: Store) -> None:
    """Every machine of the drained space was deleted after drain time + grace, or ended
    by itself (cleaned as usual); none was created after the drain (a cycle in flight at
    the drain may still act: space_timeout_seconds bounds it)."""
    reasons = {m.name: m.delete_reason for m in machines}
    lines = [f"{m.name} {m.machinetype} created {m.created_at:.1f} reason {m.delete_reason} "
             f"at {m.delete_requested_at}" for m in machines]
    print("\n".join(lines))
    assert all(m.created_at is not None and m.created_at <= drain.at + 10 for m in machines)
    drained = [m for m in machines if m.delete_reason == "drained"]
    assert drained and {m.machinetype for m in drained} == {"belle"}
    for m in drained:
        assert m.delete_requested_at is not None and m.delete_requested_at >= drain.deadline
    for m in machines:
        assert m.delete_reason in ("drained", "stopped"), (m.name, m.delete_reason)
        if m.delete_reason == "stopped":  # ended by itself, its own message recorded
            assert m.shutdown is not None and m.shutdown.code == 200, m
    deletions = [e for e in store.events("a.example", 10_000) if e.kind == "delete"]
    assert {e.machine for e in deletions} == {m.name for m in machines if reasons[m.name]}
    for event in deletions:
        if "(drained)" in event.message:
            assert event.at >= drain.deadline, event


def show_logs(conf: Path, machines: list[MachineRecord]) -> None:
    m = next(m for m in machines if m.delete_reason == "drained")
    result = cli("logs", m.name, "-c", str(conf))
    print(result.stdout)
    assert result.returncode == 0, result.stderr
    assert f"machine {m.name}: space a.example, machinetype belle" in result.stdout
    assert "deletion requested" in result.stdout and "(drained)" in result.stdout
    assert re.search(r"heartbeat +\d+ bytes", result.stdout)
    assert "deleted: drained" in result.stdout and "operator: drained by an operator" in \
        result.stdout
    beat = cli("logs", m.name, "--file", "heartbeat", "-c", str(conf))
    assert beat.returncode == 0 and re.fullmatch(r"\d+ \S+\n?", beat.stdout), beat.stdout


# --- kill, through the store, acted on by the daemon ------------------------------------


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_kill_deletes_one_machine_at_the_next_cycle_with_its_reason(tmp_path: Path) -> None:
    """The daemon runs (in-process, sim cloud); ``cloudvac kill`` writes the store; the next
    cycle deletes that machine alone, with the reason in its events."""
    cdir = config(tmp_path, {"a.example": {}})
    (cdir / "00-settings.conf").write_text(
        f"[settings]\nstate_dir = {tmp_path / 'state'}\ncycle_seconds = 0.3\n")
    store = Store(f"sqlite:///{tmp_path / 'state' / 'cloudvac.db'}")
    try:
        victim, others, said = asyncio.run(_kill_while_running(make_daemon(cdir, store),
                                                               store, cdir))
        assert f"{victim.name} (a.example/belle, running) will be deleted" in said
        gone = store.machine("a.example", victim.name)
        assert gone is not None and gone.delete_reason == "killed"
        assert str(gone.shutdown) == "100 Killed by operator: suspected bad node"
        for m in others:
            kept = store.machine("a.example", m.name)
            assert kept is not None and kept.delete_reason == "", kept
        texts = [e.message for e in store.events("a.example", 100, machine=victim.name)]
        assert "kill requested by an operator: suspected bad node" in texts
        assert any("(killed)" in t and "suspected bad node" in t for t in texts)
    finally:
        store.close()


async def _kill_while_running(daemon: Any, store: Store,
                              cdir: Path) -> tuple[MachineRecord, list[MachineRecord], str]:
    runner = asyncio.create_task(daemon.run())
    try:
        async def until(what: str, check: Callable[[], Any]) -> Any:
            deadline = time.monotonic() + DEADLINE_S
            while not (found := check()):
                assert time.monotonic() < deadline, what
                await asyncio.sleep(0.1)
            return found

        await until("4 running", lambda: sum(
            m.state is MachineState.RUNNING for m in live(store, "a.example")) == 4)
        victim, *others = live(store, "a.example")
        result = await asyncio.to_thread(invoke, "kill", victim.name, "--reason",
                                         "suspected bad node", "-c", str(cdir))
        assert result.exit_code == 0, result.output
        await until("the kill acted on", lambda: (m := store.machine(
            "a.example", victim.name)) is not None and m.delete_requested_at is not None)
        return victim, others, str(result.output)
    finally:
        daemon.stop()
        await asyncio.wait_for(runner, 60)


def test_unknown_space_machinetype_or_machine_is_one_line_and_status_2(tmp_path: Path) -> None:
    cdir = config(tmp_path, {"a.example": {}})
    (cdir / "00-settings.conf").write_text(f"[settings]\nstate_dir = {tmp_path / 'state'}\n")
    cases = [("drain", "nope.example"), ("drain", "a.example", "t2k"),
             ("undrain", "nope.example"), ("kill", "cloudvac-nope"),
             ("logs", "cloudvac-nope"), ("kill", "cloudvac-nope", "--space", "a.example")]
    for args in cases:
        result = invoke(*args, "-c", str(cdir))
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output and "error:" in result.output, result.output
    assert "no machinetype t2k in space a.example (machinetypes: belle)" in invoke(
        "drain", "a.example", "t2k", "-c", str(cdir)).output
    undrained = invoke("undrain", "a.example", "-c", str(cdir))
    assert undrained.exit_code == 0 and "was not drained" in undrained.output
    bad = invoke("drain", "a.example", "--grace", "-5", "-c", str(cdir))
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def test_drain_and_undrain_through_the_cli(tmp_path: Path) -> None:
    cdir = config(tmp_path, {"a.example": {}})
    (cdir / "00-settings.conf").write_text(f"[settings]\nstate_dir = {tmp_path / 'state'}\n")
    before = time.time()
    assert invoke("drain", "a.example", "belle", "--grace", "120", "-c", str(cdir)).exit_code \
        == 0
    assert invoke("drain", "a.example", "-c", str(cdir)).exit_code == 0  # default grace
    store = Store(f"sqlite:///{tmp_path / 'state' / 'cloudvac.db'}")
    try:
        drains = store.drains()["a.example"]
        assert set(drains) == {"*", "belle"} and drains["belle"].grace_seconds == 120
        assert drains["*"].grace_seconds == 3600 and drains["belle"].at >= before
        assert store.drain_deadline("a.example", "belle") == drains["belle"].deadline
        result = invoke("undrain", "a.example", "belle", "-c", str(cdir))
        assert result.exit_code == 0 and "whole space a.example is still drained" in \
            result.output
        assert set(store.drains()["a.example"]) == {"*"}
        assert invoke("undrain", "a.example", "-c", str(cdir)).exit_code == 0
        assert store.drains() == {} and store.drain_deadline("a.example", "belle") is None
        kinds = [e.message for e in store.events("a.example") if e.kind == "operator"]
        assert len(kinds) == 4 and kinds[0] == "drain cancelled by an operator"
    finally:
        store.close()


# --- the store's side, on both backends -------------------------------------------------


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = Store(store_url)
    yield opened
    opened.close()


def test_drains_keep_time_and_grace_and_the_latest_command_wins(store: Store) -> None:
    assert store.set_drain("a", "belle", True, 100.0, 50.0) is False
    assert store.set_drain("a", "belle", True, 200.0, 10.0) is True  # replaced
    store.set_drain("a", "*", True, 150.0, 1000.0)
    store.set_drain("b", "t2k", True, 1.0, 0.0)
    assert store.history("a").drains == {"belle": Drain("belle", 200.0, 10.0),
                                         "*": Drain("*", 150.0, 1000.0)}
    assert store.drain_deadline("a", "belle") == 210.0
    assert store.drain_deadline("a", "t2k") == 1150.0
    assert store.drain_deadline("c", "belle") is None
    assert store.drained("a") == frozenset({"belle", "*"})
    assert store.set_drain("a", "belle", False) is True
    assert store.set_drain("a", "belle", False) is False
    assert store.drains() == {"a": {"*": Drain("*", 150.0, 1000.0)},
                              "b": {"t2k": Drain("t2k", 1.0, 0.0)}}


def test_a_kill_request_reaches_the_next_history_read_and_survives_engine_writes(
        store: Store) -> None:
    alive = MachineRecord("a", "vm-1", "belle", MachineState.RUNNING, cloud_id="i1",
                          created_at=10.0)
    store.apply("a", [alive, MachineRecord("a", "vm-2", "belle", MachineState.GONE)], {}, 20.0)
    assert store.history("a").machines["vm-1"].kill_requested_at is None
    assert store.request_kill("a", "vm-1", "bad node", 30.0) is True
    assert store.request_kill("a", "vm-2", "gone", 30.0) is False
    assert store.request_kill("a", "vm-3", "unknown", 30.0) is False
    seen = store.history("a").machines["vm-1"]  # an incremental read
    assert (seen.kill_requested_at, seen.kill_reason) == (30.0, "bad node")
    store.apply("a", [alive], {}, 40.0)  # the engine's record knows nothing of the kill
    kept = store.machine("a", "vm-1")
    assert kept is not None and kept.kill_reason == "bad node"
    assert [m.space for m in store.named("vm-1")] == ["a"]


def test_the_project_room_is_upserted_per_space(store: Store) -> None:
    first = ProjectRoom(1.0, 8, 2, 3, 4)
    store.set_room("a", first)
    store.set_room("b", ProjectRoom(1.0, 0, None, None, 1))
    store.set_room("a", ProjectRoom(2.0, 0, 10, 5, 4))
    rooms = store.rooms()
    assert rooms["a"] == ProjectRoom(2.0, 0, 10, 5, 4) and rooms["b"].room_processors is None
    assert first.blocked and not rooms["a"].blocked


def test_a_read_only_store_reads_and_refuses_every_write(store: Store, store_url: str) -> None:
    store.set_drain("a", "*", True, 5.0, 1.0)
    reader = Store(store_url, read_only=True)
    try:
        assert reader.history("a").drained == frozenset({"*"})
        with pytest.raises(sa.exc.DBAPIError):
            reader.set_drain("a", "*", False)
        with pytest.raises(sa.exc.DBAPIError):
            reader.apply("a", [MachineRecord("a", "x", "belle", MachineState.INTENT)], {}, 1.0)
    finally:
        reader.close()
    assert store.drained("a") == frozenset({"*"})


def test_a_read_only_store_is_never_created(tmp_path: Path) -> None:
    path = tmp_path / "none" / "cloudvac.db"
    with pytest.raises(StoreUnavailable, match="no store at"):
        Store(f"sqlite:///{path}", read_only=True)
    assert not path.parent.exists()


def test_drains_from_before_0007_still_drain_at_once(store_url: str) -> None:
    Store(store_url).close()
    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), "0006")
            connection.execute(sa.text("INSERT INTO drains (space, machinetype) "
                                       "VALUES ('a', 'belle')"))
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "head")
    finally:
        engine.dispose()
    upgraded = Store(store_url)
    try:
        assert upgraded.drains() == {"a": {"belle": Drain("belle", 0.0, 0.0)}}
    finally:
        upgraded.close()
