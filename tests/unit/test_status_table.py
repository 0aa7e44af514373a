"""The status table (``cloudvac status``, the demo) fits 80 columns, one line per row."""

from __future__ import annotations

from dataclasses import replace

import pytest
from rich.cells import cell_len
from rich.console import Console

from cloudvac.status import StatusRow, status_table

ROW = StatusRow(space="sim-a.example", machinetype="belle", starting=2, running=12, stopping=1,
                processors=48, actual_share=0.5634, target_share=0.5,
                backoff_seconds_left=0.0, last_error="")
ERROR = ("create refused (QuotaExceeded): Quota exceeded for cores: Requested 4, but "
         "already used 20 of 24 cores")


def rendered(rows: list[StatusRow], width: int = 80) -> list[str]:
    console = Console(width=width, record=True, file=None, force_terminal=False)
    with console.capture() as capture:
        console.print(status_table(rows, width=width))
    return capture.get().splitlines()


@pytest.mark.parametrize("tokens", [False, True])
def test_long_names_and_errors_are_cut_to_one_line_of_80(tokens: bool) -> None:
    rows = [ROW,
            replace(ROW, machinetype="hyperk", last_error=ERROR, backoff_seconds_left=7.4),
            replace(ROW, space="a-very-long-space-name.napoli.infn.it",
                    machinetype="a-long-machinetype-name")]
    if tokens:
        rows[0] = replace(rows[0], credential_expires_in=3000.0)
    lines = rendered(rows)
    assert max(cell_len(line) for line in lines) <= 80
    body = [line for line in lines if line.startswith(("sim-a", "a-very"))]
    assert len(body) == 3  # nothing wrapped
    assert ("token" in lines[1]) is tokens
    assert "56%/50%" in body[0]
    assert " 7s " in body[1] and "create" in body[1] and body[1].rstrip().endswith("…")
    assert body[2].startswith("a-very-long") and "a-long-machi" in body[2]
    assert body[2].count("…") == 2  # both names cut, neither dropped


def test_a_wide_terminal_shows_more_of_the_error() -> None:
    row = replace(ROW, last_error=ERROR)
    assert rendered([row], 80)[3].count("…") == 1
    wide = rendered([row], 160)
    assert ERROR in wide[3] and max(cell_len(line) for line in wide) <= 160
