"""``cloudvac run --dry-run`` on the sim cloud: one read-only cycle per space that says what
would be created and deleted and why, and changes nothing in the cloud or the store.  (The
real local Nova: tests/contract/test_dry_run_nova.py.)  Also: ``status`` says when foreign
usage in the project leaves no room for a new machine."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from cloudvac.clouds.factory import CloudFactory
from cloudvac.clouds.sim import SimProject
from cloudvac.config import load_config_dir
from cloudvac.config.models import SimSpace
from cloudvac.engine.dryrun import dry_cycle, summary
from cloudvac.engine.metrics import EngineMetrics
from cloudvac.model.states import MachineState
from cloudvac.store import Store
from tests.integration.test_daemon import config, make_daemon

CLOUDVAC = [sys.executable, "-m", "cloudvac"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLOUDVAC, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})


def dump(db: Path) -> list[str]:
    """The database's whole content, as SQL (what must not change)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as raw:
        return list(raw.iterdump())


def settings_file(cdir: Path, state: Path) -> None:
    (cdir / "00-settings.conf").write_text(
        f"[settings]\nstate_dir = {state}\ncycle_seconds = 0.3\n"
        "web_listen = 127.0.0.1:0\noperator_listen = 127.0.0.1:0\n")  # ports of their own


def test_dry_cycle_on_a_running_sim_space_says_why_and_changes_nothing(tmp_path: Path) -> None:
    cdir = config(tmp_path, {"a.example": {}})
    settings_file(cdir, tmp_path / "state")
    db = tmp_path / "state" / "cloudvac.db"
    store = Store(f"sqlite:///{db}")
    try:
        daemon = make_daemon(cdir, store)
        asyncio.run(daemon.run(cycles=4))
        running = [m for m in store.machines("a.example") if m.state is MachineState.RUNNING]
        assert len(running) == 4
        victim = running[0]
        assert store.request_kill("a.example", victim.name, "bad node", time.time())
        project = daemon.clouds.project("a.example")
        assert project is not None
    finally:
        store.close()
    # the operator raised the limit since: the dry cycle would fill the room
    loaded = load_config_dir(cdir)
    settings = loaded.settings
    assert settings is not None
    space = loaded.spaces["a.example"].model_copy(update={"processors_limit": 6})
    before = (dump(db), dict(project.calls),
              {s.name: s.state for s in project.servers.values()})

    async def dry() -> list[str]:
        clouds = CloudFactory(EngineMetrics())
        clouds.use_project("a.example", project)
        reader = Store(f"sqlite:///{db}", read_only=True)
        try:
            result = await dry_cycle(space, clouds.get(space, settings),
                                     reader.history("a.example"), time.time())
        finally:
            reader.close()
            await clouds.forget("a.example")
        assert not result.error
        return [*result.lines(), summary([result])]

    lines = asyncio.run(dry())
    print("\n".join(lines))
    assert lines[0] == "space a.example: 4 machines listed (4 running)"
    assert f"  would delete {victim.name} (belle, running): killed: 100 Killed by " \
           "operator: bad node" in lines
    assert "  would create 2 x belle (flavor m1.small, 1 processors each)" in lines
    assert "  belle: creates no more: space processors_limit reached" in lines
    assert lines[-1].endswith("would delete 1 and create 2 machines; nothing was changed in "
                              "the clouds or the store")
    calls = dict(project.calls)
    assert (dump(db), calls.get("create"), calls.get("delete"),
            {s.name: s.state for s in project.servers.values()}) == (
        before[0], before[1].get("create"), before[1].get("delete"), before[2])
    assert calls["list"] > before[1]["list"], "it did ask the cloud"


def test_run_dry_run_without_a_store_creates_none(tmp_path: Path) -> None:
    cdir = config(tmp_path, {"a.example": {}, "b.example": {"limit": 2}})
    settings_file(cdir, tmp_path / "state")
    result = cli("run", "--dry-run", "-c", str(cdir))
    print(result.stdout)
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0] == f"no store at {tmp_path / 'state' / 'cloudvac.db'} yet: every listed " \
                     "machine is as if adopted"
    assert "space a.example: 0 machines listed" in out
    assert out.count("  would create 4 x belle (flavor m1.small, 1 processors each)") == 1
    assert out.count("  would create 2 x belle (flavor m1.small, 1 processors each)") == 1
    assert out[-1] == ("dry run: 2 spaces, 0 failed; would delete 0 and create 6 machines; "
                       "nothing was changed in the clouds or the store")
    assert not (tmp_path / "state").exists(), "no store, no secret, no upload directory"


def test_run_dry_run_reads_an_existing_store_and_leaves_it_as_it_was(tmp_path: Path) -> None:
    cdir = config(tmp_path, {"a.example": {}})
    settings_file(cdir, tmp_path / "state")
    ran = cli("run", "--cycles", "3", "-c", str(cdir))
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert cli("drain", "a.example", "--grace", "0", "-c", str(cdir)).returncode == 0
    db = tmp_path / "state" / "cloudvac.db"
    before = dump(db)
    result = cli("run", "--dry-run", "-c", str(cdir))
    print(result.stdout)
    assert result.returncode == 0, result.stderr
    # a new process has a new simulated project: the store's machines are not listed
    assert "space a.example: 0 machines listed" in result.stdout
    assert "  would record: 4 missing" in result.stdout
    assert "  belle: creates no more: space drained" in result.stdout
    assert dump(db) == before


def test_run_dry_run_names_a_space_it_cannot_observe(tmp_path: Path) -> None:
    """A cloud that cannot be reached fails its space (exit 1), not the others."""
    cdir = config(tmp_path, {"a.example": {}})
    settings_file(cdir, tmp_path / "state")
    secret = tmp_path / "password"
    secret.write_text("not-a-real-password")
    secret.chmod(0o600)
    (cdir / "20-bad.conf").write_text(
        "[space bad.example]\napi = openstack\nauth_url = http://127.0.0.1:9/v3\n"
        f"username = u\npassword_file = {secret}\nproject_name = p\nnetworks = none\n"
        "flavor_names = m1.small\n\n[machinetype bad.example belle]\ntarget_share = 1\n"
        "root_image = some-image\n")
    result = cli("run", "--dry-run", "-c", str(cdir))
    print(result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.returncode == 1
    assert "space bad.example: cannot dry-run: " in result.stdout
    assert "not-a-real-password" not in result.stdout + result.stderr
    assert "space a.example: 0 machines listed" in result.stdout
    assert "dry run: 2 spaces, 1 failed" in result.stdout


def test_status_says_when_foreign_usage_leaves_no_room(tmp_path: Path) -> None:
    cdir = config(tmp_path, {"a.example": {"extra": "sim_quota_processors = 4"}})
    settings_file(cdir, tmp_path / "state")
    store = Store(f"sqlite:///{tmp_path / 'state' / 'cloudvac.db'}")
    try:
        loaded = load_config_dir(cdir)
        assert loaded.settings is not None
        daemon = make_daemon(cdir, store)
        project = SimProject(options=loaded.spaces["a.example"].sim or SimSpace())
        project.add_foreign("someone-elses-vm", 4)  # before cloudvac's first cycle
        daemon.clouds.use_project("a.example", project)
        asyncio.run(daemon.run(cycles=2))
        assert store.machines("a.example") == []
        room = store.rooms()["a.example"]
        assert room.blocked and room.foreign_processors == 4
    finally:
        store.close()
    status = cli("status", "-c", str(cdir))
    print(status.stdout)
    assert "note: a.example: usage by servers cloudvac does not own (4 processors) leaves 0 " \
           "of the quota, less than the smallest flavor (1): no room for a new machine" in \
        status.stdout
    rows = json.loads(cli("status", "--json", "-c", str(cdir)).stdout)
    assert rows[0]["foreign_processors"] == 4 and "no room" in rows[0]["no_room"]
