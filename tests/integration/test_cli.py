"""The command line as an operator uses it: real processes, real files, real signals."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    assert "1 valid spaces" in result.stdout and "1 invalid" in result.stdout
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


def test_run_refuses_to_start_without_a_valid_space(tmp_path: Path) -> None:
    (tmp_path / "10.conf").write_text(BROKEN)
    result = cli("run", "--config-dir", str(tmp_path), "--cycles", "1")
    assert result.returncode == 2 and "no valid space" in result.stderr


@pytest.mark.slow
def test_demo_json_reports_all_vos_in_both_spaces_within_limits(tmp_path: Path) -> None:
    result = cli("demo", "--cycles", "10", "--json", "--state-dir", str(tmp_path), timeout=180)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] is True
    assert set(summary["spaces"]) == {"sim-a.example", "sim-b.example"}
    for space in summary["spaces"].values():
        assert space["within_limits"] is True
        limit = min(x for x in (space["processors_limit"], space["quota_processors"]) if x)
        assert 0 < space["max_processors_used"] <= limit
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
        assert "cloudvac-pilot.sh" in result.stdout and "--wnVO=" in result.stdout
    missing = cli("render", "sim-a.example", "atlas", "--config-dir", str(DEMO))
    assert missing.returncode == 2 and "no machinetype atlas" in missing.stderr


def test_dirac_cs_parses_with_diraccfg() -> None:
    from diraccfg import CFG

    result = cli("dirac-cs", "sim-a.example", "--config-dir", str(DEMO))
    assert result.returncode == 0, result.stderr
    blocks = [b for b in result.stdout.split("\n# DIRAC instance ") if b.strip()]
    assert len(blocks) == 2

    def section(cfg: CFG, *path: str) -> CFG:
        for key in path:
            child = cfg[key]
            assert isinstance(child, CFG), f"{key} is not a section"
            cfg = child
        return cfg

    sites: dict[str, list[str]] = {}
    for block in blocks:
        cfg = CFG().loadFromBuffer("\n".join(block.splitlines()[1:]))
        all_sites = section(cfg, "Resources", "Sites")
        for domain in all_sites.listSections():
            for site in section(all_sites, domain).listSections():
                queues = section(all_sites, domain, site, "CEs", "sim-a.example", "Queues")
                sites[site] = sorted(queues.listSections())
    assert sites == {"VCYCLE.SIM-A.eu": ["belle"], "CLOUD.SIM-A.eu": ["hyperk", "t2k"]}
