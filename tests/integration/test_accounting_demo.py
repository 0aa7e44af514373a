"""Must show (issue 17): after ``cloudvac demo --cycles N``, ``cloudvac accounting --by vo``
prints non-zero kHS06 hours for belle, t2k and hyperk, with CPU time the simulated VMs
reported (``cpu_totals``) and jobs read from their pilot logs."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from tests.integration.test_cli import cli

VOS = ("belle", "t2k.org", "hyperk.org")


@pytest.mark.slow
def test_demo_then_accounting_by_vo_shows_every_vo(tmp_path: Path) -> None:
    demo = cli("demo", "--cycles", "20", "--json", "--state-dir", str(tmp_path), timeout=300)
    assert demo.returncode == 0, demo.stderr
    table = cli("accounting", "--state-dir", str(tmp_path), "--by", "vo")
    assert table.returncode == 0, table.stderr
    print(table.stdout)  # the report, as an operator sees it
    for vo in VOS:
        assert any(line.startswith(vo + " ") for line in table.stdout.splitlines()), vo
    report = cli("accounting", "--state-dir", str(tmp_path), "--by", "vo", "--format", "csv")
    assert report.returncode == 0, report.stderr
    rows = {row["vo"]: row for row in csv.DictReader(io.StringIO(report.stdout))}
    for vo in VOS:
        row = rows[vo]
        assert int(row["machines"]) > 0, row
        assert float(row["khs06_hours"]) > 0, row
        assert float(row["cpu_hours"]) > 0, row
        assert 0.5 < float(row["cpu_efficiency"]) <= 1.0, row
    total = rows["TOTAL"]
    assert int(total["jobs_production"]) + int(total["jobs_user"]) > 0, total
    assert total["shutdown_codes"], total
