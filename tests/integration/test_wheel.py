"""The package as a site admin gets it: the wheel of the working tree, installed WITHOUT
extras into a fresh virtualenv, runs ``--help``, ``--version``, ``validate`` on the demo
configuration it ships, ``demo --cycles 3``, and ``status`` on a PostgreSQL store.

No network: the wheel is built, and its dependencies installed, from the local wheelhouse
that ``make test`` fills (``scripts/venv.sh wheelhouse``), with pip told to use no index and
no configuration of this machine.  One virtualenv for the whole session.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.cells import cell_len

from cloudvac import __version__
from tests.integration.offline import TIMEOUT_S, offline_env, source_copy, wheelhouse

#: The test tools the [test] extra brings: none may come with a plain install.
TEST_ONLY = ("pytest", "mypy", "ruff", "hypothesis", "schemathesis")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(TIMEOUT_S)]


def run(*args: str | Path, cwd: Path | None = None,
        env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          env=offline_env(env), timeout=TIMEOUT_S, check=False)


def checked(*args: str | Path, cwd: Path | None = None) -> str:
    result = run(*args, cwd=cwd)
    assert result.returncode == 0, f"{args}: {result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@dataclass(frozen=True)
class Installed:
    venv: Path
    wheel: Path

    @property
    def cloudvac(self) -> Path:
        return self.venv / "bin" / "cloudvac"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    wheelhouse()
    base = tmp_path_factory.mktemp("wheel")
    src = source_copy(base / "src")
    dist, venv = base / "dist", base / "venv"
    with ThreadPoolExecutor(1) as pool:  # independent: the build and the virtualenv at once
        made = pool.submit(checked, sys.executable, "-m", "venv", venv)
        checked(sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", dist, src)
        made.result()
    wheels = sorted(dist.glob("cloudvac-*.whl"))
    assert len(wheels) == 1, wheels
    checked(venv / "bin" / "python", "-m", "pip", "install", wheels[0])
    yield Installed(venv, wheels[0])


def test_the_plain_install_has_no_test_tools_and_runs_help_and_version(
        installed: Installed, tmp_path: Path) -> None:
    listed = checked(installed.python, "-m", "pip", "list", "--format=freeze").lower()
    assert "cloudvac==" in listed and "psycopg-binary==" in listed
    assert [t for t in TEST_ONLY if f"\n{t}==" in f"\n{listed}"] == []
    # run from elsewhere: the installed package, not the working tree, answers
    help_text = checked(installed.cloudvac, "--help", cwd=tmp_path)
    for command in ("validate", "run", "status", "demo", "events", "version"):
        assert command in help_text
    assert checked(installed.cloudvac, "--version", cwd=tmp_path).strip() == __version__
    assert checked(installed.cloudvac, "version", cwd=tmp_path).strip() == __version__


def test_the_plain_install_validates_the_demo_configuration_it_ships(
        installed: Installed, tmp_path: Path) -> None:
    shipped = Path(checked(installed.python, "-c", "from cloudvac.demo import example_dir; "
                           "print(example_dir())", cwd=tmp_path).strip())
    assert installed.venv in shipped.parents  # from the wheel, not the working tree
    out = checked(installed.cloudvac, "validate", "--config-dir", shipped, cwd=tmp_path)
    assert "2 valid spaces (6 machinetypes), 0 invalid" in out, out  # and exit status 0


def test_the_plain_install_runs_the_demo(installed: Installed, tmp_path: Path) -> None:
    out = checked(installed.cloudvac, "demo", "--cycles", "3", "--state-dir", tmp_path / "s",
                  cwd=tmp_path)
    assert "created: m1." in out and "cloudvac demo: cycle 3" in out
    # The table and events fit 80 columns; the outgoing directory's path cannot be cut.
    assert [line for line in out.splitlines()
            if cell_len(line) > 80 and not line.startswith("APEL records: /")] == []


def test_the_plain_install_keeps_its_store_in_postgresql(installed: Installed, tmp_path: Path,
                                                        pg_url: str) -> None:
    """psycopg is a runtime dependency: ``database = postgresql://...`` works as shipped."""
    confdir = tmp_path / "cloudvac.d"
    confdir.mkdir()
    url = pg_url.replace("postgresql+psycopg://", "postgresql://", 1)
    (confdir / "00.conf").write_text(
        f"[settings]\nstate_dir = {tmp_path}\ndatabase = {url}\n\n"
        "[space a.example]\napi = sim\nprocessors_limit = 4\nflavor_names = m1.small\n\n"
        "[machinetype a.example belle]\ntarget_share = 1\n")
    result = run(installed.cloudvac, "run", "--cycles", "1", "--config-dir", confdir,
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    status = checked(installed.cloudvac, "status", "--json", "--config-dir", confdir,
                     cwd=tmp_path)
    assert '"space": "a.example"' in status
    events = checked(installed.cloudvac, "events", "--config-dir", confdir, cwd=tmp_path)
    assert "a.example/belle/" in events and "created: m1.small" in events
