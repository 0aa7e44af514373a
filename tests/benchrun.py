"""Runs one benchmark as its command (``python -m benchmarks.NAME``) for the tests of
``benchmarks/``: they check the JSON it writes, never a timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(name: str, args: list[str], out: Path, timeout: float) -> dict[str, Any]:
    """The JSON that ``benchmarks.NAME ARGS --out OUT`` wrote; its exit status must say the
    same as the JSON's ``ok`` (0 if ok, else 1)."""
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *args, "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    assert out.is_file(), f"no JSON written (exit {done.returncode}):\n{done.stderr[-3000:]}"
    found: dict[str, Any] = json.loads(out.read_text())
    assert done.returncode == (0 if found["ok"] else 1), done.stderr[-3000:]
    return found
