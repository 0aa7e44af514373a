"""Issue 16, must show: ``cloudvac import-vcycle`` on VCycle's own example configuration
(``tests/data/vcycle/example.vcycle.conf``, unchanged), then ``cloudvac validate`` on the
result: clean (exit 0, no error).  Real processes, real files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from cloudvac.cli import app

EXAMPLE = Path(__file__).parents[1] / "data" / "vcycle" / "example.vcycle.conf"
PASSWORD = "PASSword"  # what the example's password_base64 decodes to
CLOUDVAC = [sys.executable, "-m", "cloudvac"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLOUDVAC, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})


def test_vcycles_example_imports_and_validates_clean(tmp_path: Path) -> None:
    out, empty = tmp_path / "cloudvac.d", tmp_path / "vcycle.d"
    empty.mkdir()
    args = ["import-vcycle", "--vcycle-conf", str(EXAMPLE), "--vcycle-dir", str(empty),
            "--out", str(out)]
    imported = cli(*args)
    assert imported.returncode == 0, imported.stderr
    said = imported.stdout + imported.stderr
    assert "Traceback" not in said and PASSWORD not in said and "UEFTU3dvcmQ" not in said
    # the report: every option not carried and why, every meaning that changed
    for words in ("x509dn: not carried: VMs upload heartbeats",
                  "log_joboutputs: had no effect in VCycle 3 either",
                  "root_public_key: make a key pair of it",
                  "processors_per_machine: had no effect in VCycle",
                  "user_data: a URL: VCycle fetched the template",
                  "url: now auth_url, a Keystone v2 URL rewritten to v3",
                  "tenancy_name: now project_name", "flavor_name: now flavor_names",
                  "password_base64: now password_file"):
        assert words in imported.stdout, words
    secret = out / "secrets" / "vcycle01.example.com.password"
    assert secret.read_text() == PASSWORD + "\n"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert all(PASSWORD not in p.read_text() for p in out.glob("*.conf"))

    validated = cli("validate", "--config-dir", str(out))
    assert validated.returncode == 0, validated.stderr
    assert validated.stdout.startswith("0 errors, ")
    assert "1 valid space (1 machinetype), 0 invalid" in validated.stdout
    assert not [line for line in validated.stderr.splitlines() if line.startswith("error")]
    # what is left is said: the share is 0 until the operator gives a local template
    assert "nothing will ever be created" in validated.stderr

    again = cli(*args)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    assert cli(*args, "--force").returncode == 0


def test_the_unconverted_example_fails_in_one_run(tmp_path: Path) -> None:
    """The same file given to validate as it is (in-process): one run names every option
    to change (it took nine rounds before), and the exit status agrees with the count."""
    (tmp_path / "example.conf").write_text(EXAMPLE.read_text())
    result = CliRunner().invoke(app, ["validate", "--config-dir", str(tmp_path)])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error ")]
    assert result.exit_code == 1 and result.stdout.startswith(f"{len(errors)} errors, ")
    for option in ("url", "tenancy_name", "password_base64", "flavor_name", "x509dn",
                   "processors_per_machine", "root_public_key", "log_joboutputs",
                   "user_data"):
        assert any(f"] {option}: " in line for line in errors), option
    assert "tenancy_name is VCycle's name: use project_name" in result.stderr
    assert "https:/r" not in result.stderr and "UEFTU3dvcmQ" not in result.stderr
