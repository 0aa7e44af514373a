"""Machinetypes and spaces removed from the configuration, and orphans, on the embedded sim
cloud with the real daemon and store: removed machinetypes are drained at the drain rate,
a removal of more than removal_confirm_fraction waits for `cloudvac confirm-removal` (or
confirm_removals), a machinetype coming back cancels its removal, an orphan of an unknown
machinetype is deleted after orphan_seconds and one of a known machinetype adopted within
two cycles; a space removed from the configuration is drained on its last configuration,
after confirmation, and then dropped."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloudvac.cli import app
from cloudvac.clouds.sim import SimProject
from cloudvac.engine.daemon import Daemon
from cloudvac.engine.planner import DRAIN_MIN_PER_CYCLE
from cloudvac.model.records import MachineRecord
from cloudvac.status import read_view, status_notes, status_rows
from cloudvac.store import Store
from tests.integration.test_daemon import make_daemon

SPACE = "a.example"
DEADLINE_S = 180.0  # generous: a loaded 2-core machine


def db_of(cdir: Path) -> Path:
    """The SQLite file of the configuration in ``cdir``."""
    return cdir.parent / f"{cdir.name}.sqlite"


def write_config(cdir: Path, shares: dict[str, float], limit: int = 30, extra: str = "",
                 name: str = SPACE) -> Path:
    """One sim space with a machinetype per ``shares`` entry (pilots that run long)."""
    cdir.mkdir(exist_ok=True)
    db = db_of(cdir)
    (cdir / "00-settings.conf").write_text(
        f"[settings]\ncycle_seconds = 0.3\nspace_timeout_seconds = 20\n"
        f"database = sqlite:///{db}\nstate_dir = {cdir.parent / 'state'}\n")
    machinetypes = "".join(f"[machinetype {name} {mt}]\ntarget_share = {share}\n"
                           f"sim_job_seconds = 100000\n\n" for mt, share in shares.items())
    (cdir / f"10-{name}.conf").write_text(
        f"[space {name}]\napi = sim\nprocessors_limit = {limit}\n"
        f"creation_burst_processors = {limit}\nflavor_names = m1.small\n"
        f"sim_boot_seconds = 0.1\nremoval_grace_seconds = 0\n{extra}\n{machinetypes}")
    return cdir


def run(cdir: Path, store: Store, cycles: int, project: SimProject | None = None,
        space: str = SPACE) -> tuple[Daemon, SimProject]:
    daemon = make_daemon(cdir, store)
    if project is not None:
        daemon.clouds.use_project(space, project)
    asyncio.run(daemon.run(cycles=cycles))
    found = daemon.clouds.project(space)
    assert found is not None
    return daemon, found


def live(store: Store, machinetype: str | None = None) -> list[MachineRecord]:
    return [m for m in store.machines(SPACE)
            if machinetype is None or m.machinetype == machinetype]


def deleted(store: Store, machinetype: str) -> list[MachineRecord]:
    return [m for m in store.machines(SPACE, include_gone=True)
            if m.machinetype == machinetype and m.delete_requested_at is not None]


def filled(tmp_path: Path, shares: dict[str, float],
           limit: int = 30) -> tuple[Path, Store, SimProject]:
    """A space filled to ``limit`` machines of ``shares``."""
    cdir = write_config(tmp_path / "conf", shares, limit)
    store = Store(f"sqlite:///{db_of(cdir)}")
    _, project = run(cdir, store, 4)
    assert len(project.servers) == limit and len(live(store)) == limit
    return cdir, store, project


def test_removed_machinetype_is_drained_at_the_drain_rate(tmp_path: Path) -> None:
    cdir, store, project = filled(tmp_path, {"belle": 1, "gone": 1})
    gone = len(live(store, "gone"))
    assert DRAIN_MIN_PER_CYCLE < gone <= 15  # half the space: within the 0.5 guard
    write_config(cdir, {"belle": 1})
    run(cdir, store, 1, project)
    assert len(deleted(store, "gone")) == DRAIN_MIN_PER_CYCLE  # one cycle's share
    assert {m.delete_reason for m in deleted(store, "gone")} == {"removed"}
    run(cdir, store, 1, project)
    assert len(deleted(store, "gone")) == gone
    removal = store.removals(SPACE)[SPACE]["gone"]
    assert removal.machines == gone and removal.confirmed_at is not None
    store.close()


def test_removal_over_the_fraction_waits_for_confirm_removal(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cdir, store, project = filled(tmp_path, {"belle": 1, "gone": 3}, limit=20)
    gone = len(live(store, "gone"))
    write_config(cdir, {"belle": 1}, limit=20)
    with caplog.at_level(logging.WARNING, logger="cloudvac"):
        daemon, _ = run(cdir, store, 3, project)
    assert deleted(store, "gone") == [] and len(live(store, "gone")) == gone
    waits = [r for r in caplog.records if "removal waits for confirmation" in r.message]
    assert len(waits) == 3 and all(r.levelno == logging.WARNING for r in waits)
    assert "machinetype=gone" in waits[0].message
    assert daemon.tools.metrics.space_waits.labels(SPACE, "removals")._value.get() == 1
    assert store.removals(SPACE)[SPACE]["gone"].confirmed_at is None
    loaded_spaces = make_daemon(cdir, store).config.load().spaces
    notes = status_notes(status_rows(loaded_spaces, read_view(store), time.time()),
                         time.time())
    assert any("gone" in n and "confirm-removal a.example gone" in n for n in notes)

    result = CliRunner().invoke(app, ["confirm-removal", SPACE, "gone", "-c", str(cdir)])
    assert result.exit_code == 0, result.output
    assert "confirmed" in result.output
    run(cdir, store, 3, project)
    assert len(deleted(store, "gone")) == gone
    assert store.removals(SPACE)[SPACE]["gone"].confirmed_at is not None
    store.close()


def test_confirm_removal_of_nothing_recorded_fails(tmp_path: Path) -> None:
    cdir = write_config(tmp_path / "conf", {"belle": 1})
    Store(f"sqlite:///{db_of(cdir)}").close()
    result = CliRunner().invoke(app, ["confirm-removal", SPACE, "gone", "-c", str(cdir)])
    assert result.exit_code == 1 and "no removal of a.example/gone" in result.output


def test_confirm_removals_flag_lets_a_large_removal_go_ahead(tmp_path: Path) -> None:
    cdir, store, project = filled(tmp_path, {"belle": 1, "gone": 3}, limit=20)
    gone = len(live(store, "gone"))
    write_config(cdir, {"belle": 1}, limit=20,
                 extra="confirm_removals = true")
    run(cdir, store, 3, project)
    assert len(deleted(store, "gone")) == gone


def test_a_machinetype_coming_back_cancels_its_removal(tmp_path: Path) -> None:
    cdir, store, project = filled(tmp_path, {"belle": 1, "gone": 3}, limit=20)
    gone = len(live(store, "gone"))
    write_config(cdir, {"belle": 1}, limit=20)
    run(cdir, store, 2, project)
    assert "gone" in store.removals(SPACE).get(SPACE, {})
    write_config(cdir, {"belle": 1, "gone": 3}, limit=20)
    run(cdir, store, 2, project)
    assert store.removals(SPACE).get(SPACE, {}) == {}
    assert deleted(store, "gone") == [] and len(live(store, "gone")) == gone
    events = [e for e in store.events(SPACE, 500) if e.kind == "removal"]
    assert any("back in the configuration" in e.message for e in events)


def test_orphans_unknown_deleted_after_orphan_seconds_known_adopted_in_two_cycles(
        tmp_path: Path) -> None:
    """Another instance (its own store) created machines of a machinetype this
    configuration has (belle) and of one it has not (other), then crashed."""
    other_cdir = write_config(tmp_path / "other-conf", {"belle": 1, "other": 1}, limit=6)
    other = Store(f"sqlite:///{db_of(other_cdir)}")
    _, project = run(other_cdir, other, 3)
    other.close()
    names = {s.name: s.machinetype for s in project.servers.values()}
    assert set(names.values()) == {"belle", "other"} and len(names) == 6

    cdir = write_config(tmp_path / "conf", {"belle": 1}, limit=6, extra="orphan_seconds = 3")
    store = Store(f"sqlite:///{db_of(cdir)}")
    run(cdir, store, 2, project)  # two cycles: every server known, none deleted yet
    known = {m.name: m for m in store.machines(SPACE)}
    assert set(names) <= set(known)
    assert all(known[n].adopted_at is not None for n in names)
    assert all(m.delete_requested_at is None for m in known.values())
    deadline = time.monotonic() + DEADLINE_S
    while not all(m.delete_requested_at is not None for m in live(store, "other")):
        assert time.monotonic() < deadline, "orphans not deleted"
        time.sleep(1.0)
        run(cdir, store, 1, project)
    orphans = deleted(store, "other")
    assert {m.delete_reason for m in orphans} == {"orphan"}
    assert all(m.delete_requested_at is not None and m.created_at is not None
               and m.delete_requested_at - m.created_at >= 3 for m in orphans)
    assert deleted(store, "belle") == []  # adopted, kept
    assert store.removals(SPACE).get(SPACE, {}) == {}  # orphans are no removal
    store.close()


def test_a_space_removed_from_the_configuration_is_drained_then_dropped(
        tmp_path: Path) -> None:
    cdir = write_config(tmp_path / "conf", {"belle": 1}, limit=4)
    write_config(cdir, {"belle": 1}, limit=4, name="b.example")
    store = Store(f"sqlite:///{db_of(cdir)}")

    async def scenario() -> None:
        daemon = make_daemon(cdir, store)
        runner = asyncio.create_task(daemon.run())
        try:
            await until(lambda: len(store.machines("b.example")) == 4, "b filled")
            (cdir / "10-b.example.conf").unlink()
            daemon.reread()
            await until(lambda: "*" in store.removals("b.example").get("b.example", {}),
                        "removal noticed")
            cycles = daemon.spaces["b.example"].cycles
            await until(lambda: daemon.spaces["b.example"].cycles >= cycles + 3, "cycles")
            assert len(store.machines("b.example")) == 4  # waiting: nothing deleted
            assert all(m.delete_requested_at is None for m in store.machines("b.example"))
            store.confirm_removal("b.example", "*", time.time())
            await until(lambda: "b.example" not in daemon.spaces, "b dropped")
            assert store.machines("b.example") == []
            assert store.removals("b.example") == {}
            assert len(store.machines(SPACE)) == 4  # the other space carries on
        finally:
            daemon.stop()
            await runner

    asyncio.run(scenario())
    gone = [m for m in store.machines("b.example", include_gone=True)]
    assert gone and {m.delete_reason for m in gone} == {"removed"}
    store.close()


async def until(check: object, what: str) -> None:
    assert callable(check)
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        assert time.monotonic() < deadline, f"not within {DEADLINE_S:.0f}s: {what}"
        await asyncio.sleep(0.1)


def test_removal_rows_on_both_backends(store_url: str) -> None:
    """What the engine, the daemon and the command write, on SQLite and PostgreSQL: a
    confirmation is never undone by a later write, and rows go when cancelled."""
    from cloudvac.model.records import Removal

    store = Store(store_url)
    try:
        store.apply_removals(SPACE, [Removal("gone", 10.0, 6)], [])
        assert store.confirm_removal(SPACE, "gone", 20.0) == Removal("gone", 10.0, 6, 20.0)
        assert store.confirm_removal(SPACE, "gone", 30.0) == Removal("gone", 10.0, 6, 20.0)
        store.apply_removals(SPACE, [Removal("gone", 10.0, 6, 40.0)], [])
        assert store.history(SPACE).removals == {"gone": Removal("gone", 10.0, 6, 20.0)}
        assert store.confirm_removal(SPACE, "other", 1.0) is None
        assert store.notice_space_removal(SPACE, 50.0, 3)
        assert not store.notice_space_removal(SPACE, 60.0, 2)
        assert store.cancel_space_removals(["b.example", SPACE]) == [SPACE]
        store.apply_removals(SPACE, [], ["gone"])
        assert store.removals() == {} and store.history(SPACE).removals == {}
    finally:
        store.close()
