"""The command line as an operator uses it: real processes, real files, real signals."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

CLOUDVAC = [sys.executable, "-m", "cloudvac"]

GOOD = """\
[settings]
state_dir = {state}
cycle_seconds = 0.5

[space good.example]
api = sim
processors_limit = 6
creation_burst_processors = 6
flavor_names = m1.small m1.medium
sim_boot_seconds = 0.2

[machinetype good.example belle]
target_share = 1
"""
BROKEN = """\
[space broken.example]
api = sim
flavor_names = m1.small
processors_limit = 10

[machinetype broken.example t2k]
target_share = 1
max_wallclock_seconds = a day
"""


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLOUDVAC, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.fixture
def confdir(tmp_path: Path) -> Path:
    cdir = tmp_path / "cloudvac.d"
    cdir.mkdir()
    (cdir / "10-good.conf").write_text(GOOD.format(state=tmp_path / "state"))
    (cdir / "20-broken.conf").write_text(BROKEN)
    return cdir


def test_validate_names_file_line_and_option(confdir: Path) -> None:
    result = cli("validate", "--config-dir", str(confdir))
    assert result.returncode == 1
    assert f"{confdir / '20-broken.conf'}:8: [machinetype broken.example t2k] " \
           "max_wallclock_seconds:" in result.stderr.replace("\n", "")
    assert "1 valid space " in result.stdout and "1 invalid" in result.stdout
    (confdir / "20-broken.conf").unlink()
    assert cli("validate", "--config-dir", str(confdir)).returncode == 0


def test_run_skips_broken_space_and_status_reports(confdir: Path, tmp_path: Path) -> None:
    result = cli("run", "--config-dir", str(confdir), "--cycles", "3")
    assert result.returncode == 0, result.stderr
    assert "20-broken.conf:8" in result.stderr
    assert "space=good.example machinetype=belle" in result.stderr
    status = cli("status", "--config-dir", str(confdir), "--json")
    rows = json.loads(status.stdout)
    assert [(r["space"], r["machinetype"]) for r in rows] == [("good.example", "belle")]
    assert rows[0]["processors"] == 6 and rows[0]["starting"] + rows[0]["running"] == 6
    table = cli("status", "--config-dir", str(confdir))
    assert "good.example" in table.stdout and "belle" in table.stdout


def test_sigterm_stops_gracefully(confdir: Path) -> None:
    (confdir / "20-broken.conf").unlink()
    proc = subprocess.Popen([*CLOUDVAC, "run", "--config-dir", str(confdir)],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        seen = ""
        while "created with flavor" not in seen and time.monotonic() < deadline:
            line = proc.stderr.readline() if proc.stderr else ""
            seen += line
        assert "created with flavor" in seen
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_run_starts_without_a_valid_space_and_says_so(tmp_path: Path) -> None:
    """One broken file must not keep the daemon (and the VMs' door) down."""
    (tmp_path / "00.conf").write_text(
        f"[settings]\nstate_dir = {tmp_path / 'state'}\nweb_listen = 127.0.0.1:0\n"
        "operator_listen = 127.0.0.1:0\n")
    (tmp_path / "10.conf").write_text(BROKEN)
    result = cli("run", "--config-dir", str(tmp_path), "--cycles", "1")
    assert result.returncode == 0, result.stderr
    assert "no valid space in the configuration yet: serving the VMs' door" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_demo_json_reports_all_vos_in_both_spaces_within_limits(tmp_path: Path) -> None:
    result = cli("demo", "--cycles", "10", "--json", "--state-dir", str(tmp_path), timeout=180)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] is True
    assert set(summary["spaces"]) == {"sim-a.example", "sim-b.example"}
    for space in summary["spaces"].values():
        assert space["within_limits"] is True
        # the cloud never held more than its quota; the engine's count (which holds a
        # deleted machine until a listing shows it gone) never passed processors_limit
        for cap, used in ((space["quota_processors"], space["cloud_peak_processors"]),
                          (space["processors_limit"], space["max_processors_used"])):
            assert used > 0 and (cap is None or used <= cap), space
        for mt in ("belle", "t2k", "hyperk"):
            assert space["machinetypes"][mt]["running"] > 0, (mt, space["machinetypes"])
        assert len(space["cycles"]) == 10
    assert summary["machines_with_heartbeat"] > 0
    assert summary["shutdown_codes"], "pilots reported shutdown codes"


DEMO = Path(__file__).parents[2] / "cloudvac" / "examples" / "demo"


def test_render_each_vo_masked_and_valid() -> None:
    for space, mt in (("sim-a.example", "belle"), ("sim-a.example", "t2k"),
                      ("sim-b.example", "hyperk")):
        result = cli("render", space, mt, "--config-dir", str(DEMO))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("#cloud-config")
        files = {f["path"]: f for f in yaml.safe_load(result.stdout)["write_files"]}
        agent = json.loads(base64.b64decode(files["/etc/cloudvac/agent.json"]["content"]))
        assert agent["token"] == "***MASKED***"  # no --show-secrets
        assert "cloudvac/pilot.sh" in result.stdout and "--wnVO=" in result.stdout
    missing = cli("render", "sim-a.example", "atlas", "--config-dir", str(DEMO))
    assert missing.returncode == 2 and "no machinetype atlas" in missing.stderr


def test_render_masks_operator_files_and_secret_options_unless_asked(tmp_path: Path) -> None:
    key, template = tmp_path / "hostkey.pem", tmp_path / "user_data"
    key.write_text("-----BEGIN PRIVATE KEY-----\nMIIclisecret\n-----END PRIVATE KEY-----\n")
    template.write_text("#!/bin/sh\ncat > /etc/key <<'EOF'\n##user_data_file_hostkey##\nEOF\n"
                        "echo ##user_data_option_db_password## ##user_data_joboutputs_token## "
                        "##user_data_option_colour##\n")
    (tmp_path / "10.conf").write_text(
        f"[settings]\nstate_dir = {tmp_path / 'state'}\n\n[space op.example]\napi = sim\n"
        "flavor_names = m1.small\n\n[machinetype op.example custom]\ntarget_share = 1\n"
        f"user_data = {template}\nuser_data_file_hostkey = {key}\n"
        "user_data_option_db_password = hunter2\nuser_data_option_colour = blue\n")
    render = ("render", "op.example", "custom", "--config-dir", str(tmp_path))
    masked, shown = cli(*render), cli(*render, "--show-secrets")
    assert masked.returncode == 0 and shown.returncode == 0, masked.stderr + shown.stderr
    assert "MIIclisecret" not in masked.stdout and "hunter2" not in masked.stdout
    assert masked.stdout.count("***MASKED***") == 3 and "blue" in masked.stdout  # key, pw, token
    assert "MIIclisecret" in shown.stdout and "hunter2" in shown.stdout
    assert "***MASKED***" not in shown.stdout


def _cfg_section(cfg: Any, *path: str) -> Any:
    from diraccfg import CFG

    for key in path:
        child = cfg[key]
        assert isinstance(child, CFG), f"{key} is not a section"
        cfg = child
    return cfg


def _dirac_cs_sites(args: tuple[str, ...]) -> tuple[dict[str, dict[str, str]], Any]:
    """Run dirac-cs; load its whole stdout with diraccfg: site -> queue -> "processors tag",
    and the CFG."""
    return _dirac_cs_parsed(cli("dirac-cs", *args))


def _dirac_cs_parsed(result: subprocess.CompletedProcess[str]
                     ) -> tuple[dict[str, dict[str, str]], Any]:
    """What ``_dirac_cs_sites`` says of a dirac-cs run."""
    from diraccfg import CFG

    assert result.returncode == 0, result.stderr
    cfg = CFG().loadFromBuffer(result.stdout)  # as printed: one loadable CFG
    sites: dict[str, dict[str, str]] = {}
    all_sites = _cfg_section(cfg, "Resources", "Sites")
    for domain in all_sites.listSections():
        for site in _cfg_section(all_sites, domain).listSections():
            ces = _cfg_section(all_sites, domain, site, "CEs")
            queues = _cfg_section(ces, *ces.listSections(), "Queues")
            sites[site] = {q: f"{queues[q]['NumberOfProcessors']} "
                              f"{queues[q].getOption('Tag')}" for q in queues.listSections()}
    return sites, cfg


def test_dirac_cs_one_loadable_cfg_per_instance() -> None:
    base = ("sim-a.example", "--config-dir", str(DEMO))
    assert _dirac_cs_sites((*base, "--dirac", "belle2"))[0] == {
        "VCYCLE.SIM-A.eu": {"belle": "4 MultiProcessor"}}  # m1.large: 4 vCPUs
    assert _dirac_cs_sites((*base, "--dirac", "gridpp"))[0] == {
        "CLOUD.SIM-A.eu": {"t2k": "2 MultiProcessor", "hyperk": "2 MultiProcessor"}}
    ambiguous = cli("dirac-cs", *base)
    assert ambiguous.returncode == 2 and ambiguous.stdout == ""
    assert "reports to 2 DIRAC instances (belle2, gridpp)" in ambiguous.stderr
    assert "--dirac NAME" in ambiguous.stderr
    unknown = cli("dirac-cs", *base, "--dirac", "lhcb")
    assert unknown.returncode == 2 and "does not report to DIRAC instance lhcb" in unknown.stderr


def test_dirac_cs_never_guesses_one_processor(tmp_path: Path) -> None:
    """A cloud that does not answer: max_processors if set, else no CFG at all."""
    conf = tmp_path / "conf"
    shutil.copytree(DEMO, conf)
    path = conf / "10-sim-a.conf"
    path.write_text(path.read_text().replace("sim_seed = 1\n",
                                             "sim_seed = 1\nsim_fail_api = true\n"))
    result = cli("dirac-cs", "sim-a.example", "--dirac", "belle2", "--config-dir", str(conf))
    assert result.returncode == 1 and result.stdout == ""
    assert "the cloud of space sim-a.example did not answer" in result.stderr
    assert "machinetype belle: cannot tell its processors (set max_processors" in result.stderr
    path.write_text(path.read_text().replace("flavor_names = m1.large\n",
                                             "flavor_names = m1.large\nmax_processors = 4\n"))
    found, _ = _dirac_cs_sites(("sim-a.example", "--dirac", "belle2", "--config-dir",
                                str(conf)))
    assert found == {"VCYCLE.SIM-A.eu": {"belle": "4 MultiProcessor"}}


def test_dirac_cs_on_the_shipped_config_gives_the_papers_sites(tmp_path: Path) -> None:
    from tests.unit.test_dirac import HOST_DN, PAPER_BELLE2, PAPER_GRIDPP, shipped_config

    conf = shipped_config(tmp_path)
    for path in conf.glob("*.conf"):  # no cloud to ask here: a refused connection, at once
        text = re.sub(r"auth_url = \S+", "auth_url = http://127.0.0.1:9/v3", path.read_text())
        text = text.replace("auth = egi_checkin\n", "auth = egi_checkin\n"
                            "egi_checkin_url = http://127.0.0.1:9/auth\n"
                            "egi_is_url = http://127.0.0.1:9\negi_gocdb_url = http://127.0.0.1:9\n")
        path.write_text(text.replace("networks = auto\n", "networks = auto\napi_retries = 0\n"))
    spaces = {"napoli.infn.it": ("belle2", "gridpp"), "lal.in2p3.fr": ("belle2",),
              "lpnhe.in2p3.fr": ("belle2", "gridpp"), "ires.fedcloud.egi.eu": ("belle2",)}
    sites: dict[str, set[str]] = {"belle2": set(), "gridpp": set()}
    runs = [(space, "--dirac", instance, "--config-dir", str(conf))
            for space, instances in spaces.items() for instance in instances]
    with ThreadPoolExecutor(3) as pool:  # six processes: a few side by side
        done = list(pool.map(lambda args: cli("dirac-cs", *args), runs))
    for args, result in zip(runs, done, strict=True):
        found, cfg = _dirac_cs_parsed(result)
        sites[args[2]] |= set(found)
        # m1.xlarge's 8 vCPUs (max_processors) when the cloud does not answer, never 1
        assert all(q == "8 MultiProcessor" for qs in found.values() for q in qs.values())
        assert cfg.getOption("/Registry/Hosts/vm-pilot.na.infn.it/DN") == HOST_DN
    assert sites == {"belle2": PAPER_BELLE2, "gridpp": PAPER_GRIDPP}


# --- one daemon per store; stores and secrets that cannot be used (issue 13) ---

ANY_PORT = GOOD.replace("cycle_seconds = 0.5\n", "cycle_seconds = 0.5\nweb_listen = 127.0.0.1:0\n"
                                                  "operator_listen = 127.0.0.1:0\n")
"""GOOD with the web side on a free port: other test runs on this host may hold 8080."""
STEADY = ANY_PORT.replace("target_share = 1\n", "target_share = 1\nsim_job_seconds = 3600\n")
"""With pilots that run at least half an hour: its machines stay as they are."""


def store_rows(db: Path) -> set[tuple[str, str, str | None]]:
    """(name, state, cloud id) of every machine in the store at ``db``, read by this test."""
    from cloudvac.store import Store

    store = Store(f"sqlite:///{db}")
    try:
        return {(m.name, m.state.value, m.cloud_id) for m in store.machines(include_gone=True)}
    finally:
        store.close()


def wait_until_all_running(db: Path, first: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and first.poll() is None:
        rows = store_rows(db) if db.exists() else set()
        if rows and all(state == "running" for _, state, _ in rows):
            return
        time.sleep(0.2)
    raise AssertionError(f"the first daemon's machines never all ran (exit {first.poll()})")


def test_second_run_on_the_same_store_is_refused_naming_the_holder(tmp_path: Path) -> None:
    import socket

    cdir, db = tmp_path / "cloudvac.d", tmp_path / "state" / "cloudvac.db"
    cdir.mkdir()
    (cdir / "10-good.conf").write_text(STEADY.format(state=tmp_path / "state"))
    with open(tmp_path / "first.log", "wb") as log:
        first = subprocess.Popen([*CLOUDVAC, "run", "--config-dir", str(cdir)], stderr=log)
    try:
        wait_until_all_running(db, first, seconds=90)
        before = store_rows(db)
        second = cli("run", "--config-dir", str(cdir), "--cycles", "2")
        assert second.returncode == 2, second.stderr
        one_line = second.stderr.replace("\n", "")
        assert (f"cannot start: the store {db} is in use by cloudvac run (pid {first.pid} on "
                f"{socket.gethostname()} since ") in one_line
        assert "one daemon per store" in one_line and "Traceback" not in second.stderr
        assert store_rows(db) == before, "the second daemon touched nothing"
        assert first.poll() is None, "the first one runs on"
        # readers never take the lock
        status = cli("status", "--config-dir", str(cdir), "--json")
        assert status.returncode == 0, status.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        try:
            assert first.wait(timeout=60) == 0
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
    after = cli("run", "--config-dir", str(cdir), "--cycles", "1")
    assert after.returncode == 0, after.stderr


@pytest.mark.parametrize("command", ["run", "status"])
def test_store_that_cannot_be_created_is_named_without_a_traceback(tmp_path: Path,
                                                                   command: str) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    (tmp_path / "10.conf").write_text(GOOD.format(state=blocker / "state"))
    result = cli(command, "--config-dir", str(tmp_path), *(["--cycles", "1"]
                                                            if command == "run" else []))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert str(blocker / "state") in result.stderr.replace("\n", "")
    assert "Not a directory" in result.stderr


def test_store_that_cannot_be_opened_is_named_for_every_command(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    shutil.copytree(DEMO, conf)
    state = tmp_path / "state"
    (state / "cloudvac.db").mkdir(parents=True)  # where the database file should be
    (conf / "00-settings.conf").write_text(f"[settings]\nstate_dir = {state}\n")
    for args in (("run", "--cycles", "1"), ("status",)):
        result = cli(*args, "--config-dir", str(conf))
        one_line = result.stderr.replace("\n", "")
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr, args
        assert f"cannot open the store {state / 'cloudvac.db'}: unable to open database " \
               f"file ({state / 'cloudvac.db'} is a directory)" in one_line, args


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Callable[[Path], None]]:
    """Make a file read-only for this process: its mode, or (as root, whom modes do not
    stop) the immutable attribute; skips where neither works.  Undone at the end."""
    made: list[Path] = []

    def make(path: Path) -> None:
        if os.geteuid() != 0:
            path.chmod(0o444)
            return
        if shutil.which("chattr") is None or subprocess.run(
                ["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("root, and no immutable attribute on this file system")
        made.append(path)

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_read_only_store_refuses_the_daemon_clearly(confdir: Path, tmp_path: Path,
                                                    read_only: Callable[[Path], None]) -> None:
    (confdir / "20-broken.conf").unlink()
    (confdir / "10-good.conf").write_text(ANY_PORT.format(state=tmp_path / "state"))
    assert cli("run", "--config-dir", str(confdir), "--cycles", "1").returncode == 0
    db = tmp_path / "state" / "cloudvac.db"
    read_only(db)
    result = cli("run", "--config-dir", str(confdir), "--cycles", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"cannot open the store {db}: attempt to write a readonly database" in \
        result.stderr.replace("\n", "")
    status = cli("status", "--config-dir", str(confdir), "--json")
    assert status.returncode == 0, "status only reads: " + status.stderr


KEYED = """\
[space keyed.example]
api = sim
flavor_names = m1.small
processors_limit = 4

[machinetype keyed.example t2k]
target_share = 1
host_cert_file = {cert}
host_key_file = {key}
"""


def test_secret_file_with_a_bad_mode_is_located_everywhere(confdir: Path,
                                                           tmp_path: Path) -> None:
    (confdir / "20-broken.conf").unlink()
    (confdir / "10-good.conf").write_text(ANY_PORT.format(state=tmp_path / "state"))
    cert, key = tmp_path / "hostcert.pem", tmp_path / "hostkey.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nMIIcert\n-----END CERTIFICATE-----\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\nMIIkeysecret\n-----END PRIVATE KEY-----\n")
    key.chmod(0o644)
    keyed = confdir / "30-keyed.conf"
    keyed.write_text(KEYED.format(cert=cert, key=key))
    located = (f"error {keyed}:9: [machinetype keyed.example t2k] host_key_file: "
               f"host_key_file file {key} is accessible by group or others (mode 0644); "
               f"run chmod 600 {key}")

    validate = cli("validate", "--config-dir", str(confdir))
    assert validate.returncode == 1 and "Traceback" not in validate.stderr
    assert located in validate.stderr.splitlines(), validate.stderr
    render = cli("render", "keyed.example", "t2k", "--config-dir", str(confdir))
    assert render.returncode == 2 and "Traceback" not in render.stderr
    assert located in render.stderr.splitlines(), render.stderr
    assert "MIIkeysecret" not in validate.stderr + render.stderr + render.stdout

    run = cli("run", "--config-dir", str(confdir), "--cycles", "3")
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert f"{keyed}:9: [machinetype keyed.example t2k] host_key_file:" in run.stderr
    rows = json.loads(cli("status", "--config-dir", str(confdir), "--json").stdout)
    assert [(r["space"], r["processors"]) for r in rows] == [("good.example", 6)]


def test_render_error_is_one_line_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "10.conf").write_text(
        f"[settings]\nstate_dir = {tmp_path / 'state'}\n\n[space op.example]\napi = sim\n"
        "flavor_names = m1.small\n\n[machinetype op.example custom]\ntarget_share = 1\n"
        f"user_data = {tmp_path / 'no-such-template'}\n")
    result = cli("render", "op.example", "custom", "--config-dir", str(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("invalid user_data:")]
    assert "op.example/custom" in line and "no-such-template" in line
