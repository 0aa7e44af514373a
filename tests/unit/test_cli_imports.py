"""``cloudvac --help`` and ``cloudvac validate`` answer without importing the heavy libraries
(clouds, store, web, plots): their start-up time is what an operator waits for at every
command (measured by benchmarks/cli_startup.py; this test keeps the imports lazy, which
a timed assert could not do reliably on a busy machine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cloudvac.cli.base import DEFAULT_CONFIG_DIR

#: Never imported by --help or validate.
HEAVY = ("openstack", "keystoneauth1", "sqlalchemy", "alembic", "fastapi", "starlette",
         "uvicorn", "matplotlib", "numpy", "httpx", "requests", "msgspec",
         "prometheus_client", "psycopg", "cryptography", "boto3", "botocore", "moto")
#: What validate needs (the configuration models, user_data rendering and its schema) but
#: --help does not.
VALIDATE_ONLY = ("pydantic", "jinja2", "jsonschema", "yaml")
PROBE = """
import sys
from cloudvac.cli import app
try:
    app(sys.argv[1:], prog_name="cloudvac")
except SystemExit as exc:
    code = exc.code
print("\\nEXIT", code, "MODULES", *sorted({m.split(".")[0] for m in sys.modules}))
"""
SMALL = """\
[settings]
state_dir = {state}

[space small.example]
api = sim
processors_limit = 8
flavor_names = m1.small

[machinetype small.example belle]
target_share = 1
"""


def loaded_by(*args: str) -> tuple[int, set[str]]:
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True,
                            text=True, timeout=120, check=False)
    last = result.stdout.strip().splitlines()[-1].split()
    assert last[0] == "EXIT", result.stdout + result.stderr
    return int(last[1] if last[1] != "None" else 0), set(last[3:])


def test_help_imports_no_heavy_library() -> None:
    code, modules = loaded_by("--help")
    assert code == 0
    assert "typer" in modules  # the probe sees imports
    assert sorted(modules & {*HEAVY, *VALIDATE_ONLY}) == []


@pytest.mark.parametrize("command", ["events", "status", "run", "demo", "simulate"])
def test_command_help_imports_no_heavy_library(command: str) -> None:
    code, modules = loaded_by(command, "--help")
    assert code == 0
    assert sorted(modules & set(HEAVY)) == []


def test_validate_imports_only_what_validating_needs(tmp_path: Path) -> None:
    (tmp_path / "10-small.conf").write_text(SMALL.format(state=tmp_path / "state"))
    code, modules = loaded_by("validate", "--config-dir", str(tmp_path))
    assert code == 0
    assert {"pydantic", "jinja2"} <= modules  # it did validate and render
    assert sorted(modules & set(HEAVY)) == []


def test_the_default_config_dir_is_the_loaders() -> None:
    from cloudvac.config import DEFAULT_CONFIG_DIR as LOADERS

    assert DEFAULT_CONFIG_DIR == LOADERS


def test_version_is_a_root_option_and_a_command() -> None:
    from typer.testing import CliRunner

    from cloudvac import __version__
    from cloudvac.cli import app

    for args in (["--version"], ["version"], ["--version", "validate"]):
        result = CliRunner().invoke(app, args)
        assert (result.exit_code, result.stdout) == (0, f"{__version__}\n"), args
