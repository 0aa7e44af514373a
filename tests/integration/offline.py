"""Installing without the network, for the tests of packaging and of the first run
(``test_wheel.py``, ``test_venv_script.py``): pip on the local wheelhouse that ``make test``
fills (``scripts/venv.sh wheelhouse``), and a copy of what the package is built from."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WHEELHOUSE = REPO / ".cache" / "wheelhouse"
TIMEOUT_S = 900  # one pip step on a loaded 2-core machine; they take seconds to a minute


def offline_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without pip's settings and any virtualenv, pip pointed at the
    wheelhouse only."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(WHEELHOUSE),
               PIP_DISABLE_PIP_VERSION_CHECK="1", COLUMNS="200")
    env.update(extra or {})
    return env


def wheelhouse() -> Path:
    """The wheelhouse for this pyproject.toml, or a failure saying how to make it."""
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
    if not (WHEELHOUSE / f".complete-{digest}").is_file():
        pytest.fail(f"no wheelhouse for this pyproject.toml in {WHEELHOUSE}: run "
                    "`make wheelhouse` (scripts/venv.sh wheelhouse)")
    return WHEELHOUSE


def source_copy(dest: Path) -> Path:
    """What the wheel is built from, copied out of the working tree (so the build writes
    nothing into it): pyproject.toml, README.md, the package, scripts/venv.sh."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "cloudvac", dest / "cloudvac",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (dest / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "venv.sh", dest / "scripts" / "venv.sh")
    return dest
