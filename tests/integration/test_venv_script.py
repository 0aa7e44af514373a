"""``scripts/venv.sh``, the first thing ``make demo`` and ``make test`` run, in a copy of the
project and without the network (pip on the local wheelhouse): it says what it installs, an
install interrupted by Ctrl-C is completed by the next run, a virtualenv whose stamp is
there but a tool is gone is repaired, and a complete one is left alone in silence."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.integration.offline import TIMEOUT_S, offline_env, source_copy, wheelhouse

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3 * TIMEOUT_S)]
TOOLS = ("python", "cloudvac", "ruff", "mypy", "pytest")


def env() -> dict[str, str]:
    """Offline, and without byte-compiling what pip installs (pip's own variable, which
    venv.sh passes on, as a user's would): much of an install's time, and nothing this
    test checks."""
    return offline_env({"PIP_NO_COMPILE": "1"})


def venv_sh(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "scripts/venv.sh"], cwd=project, capture_output=True,
                          text=True, env=env(), timeout=TIMEOUT_S, check=False)


def stamps(project: Path) -> list[Path]:
    return sorted((project / ".venv").glob(".installed-*"))


def installed_packages(project: Path) -> int:
    return len(list((project / ".venv").glob("lib/python3*/site-packages/*.dist-info")))


def interrupt_while_installing(project: Path) -> str:
    """Start venv.sh, and press Ctrl-C (SIGINT to its process group) once pip has put a
    few packages in place; returns what it printed."""
    proc = subprocess.Popen(["bash", "scripts/venv.sh"], cwd=project, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stderr is not None
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.extend(proc.stderr or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while installed_packages(project) < 8 and proc.poll() is None:
            assert time.monotonic() < deadline, "".join(said)
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=TIMEOUT_S) != 0, "".join(said)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(timeout=TIMEOUT_S)
    return "".join(said)


def test_interrupted_and_damaged_installs_are_repaired(tmp_path: Path) -> None:
    wheelhouse()
    project = source_copy(tmp_path / "project")
    venv = project / ".venv"

    said = interrupt_while_installing(project)
    assert "installing cloudvac and its test tools into .venv" in said
    assert "[  1] " in said and "packages (the longest step" in said  # progress
    assert stamps(project) == []  # an interrupted install is never taken for a finished one
    assert installed_packages(project) >= 8

    completed = venv_sh(project)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "never completed (an interrupted install?): completing it" in completed.stderr
    assert ".venv ready in" in completed.stderr
    assert len(stamps(project)) == 1
    assert [t for t in TOOLS if not os.access(venv / "bin" / t, os.X_OK)] == []

    (venv / "bin" / "mypy").unlink()  # the state of issue 16: stamp there, mypy gone
    repaired = venv_sh(project)
    assert repaired.returncode == 0, repaired.stderr[-3000:]
    assert "damaged (.venv/bin/mypy missing): repairing it" in repaired.stderr
    assert "reinstalling mypy" in repaired.stderr
    version = subprocess.run([venv / "bin" / "mypy", "--version"], capture_output=True,
                             text=True, timeout=TIMEOUT_S, check=False)
    assert version.returncode == 0 and version.stdout.startswith("mypy ")

    again = venv_sh(project)
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
