"""``cloudvac validate`` as an operator reads it: each problem one located line on stderr,
a last line on stdout whose error count is the exit status (1 iff errors), no traceback for
any configuration or credential-file problem."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from cloudvac.cli import app

SIM = """\
[settings]
state_dir = {state}
{settings}

[space sim.example]
api = sim
flavor_names = m1.small

[machinetype sim.example t2k]
target_share = {share}
{machinetype}
"""


def validate(conf: Path) -> Result:
    return CliRunner().invoke(app, ["validate", "--config-dir", str(conf)])


def config(tmp_path: Path, settings: str = "", machinetype: str = "", share: str = "1") -> Path:
    conf = tmp_path / "conf"
    conf.mkdir(exist_ok=True)
    (conf / "10.conf").write_text(SIM.format(state=tmp_path / "state", settings=settings,
                                             machinetype=machinetype, share=share))
    return conf


def counted(result: Result) -> tuple[int, int]:
    """(errors, warnings) as the summary line says; checked against the lines above it."""
    match = re.match(r"^(\d+) errors?, (\d+) warnings? in ", result.stdout.splitlines()[-1])
    assert match, result.stdout
    errors, warnings = int(match.group(1)), int(match.group(2))
    lines = result.stderr.splitlines()
    assert errors == sum(line.startswith("error ") for line in lines), result.stderr
    assert warnings == sum(line.startswith("warning ") for line in lines), result.stderr
    assert result.exit_code == (1 if errors else 0)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.stdout + result.stderr
    return errors, warnings


def test_clean(tmp_path: Path) -> None:
    result = validate(config(tmp_path))
    assert counted(result) == (0, 0), result.stderr
    assert "1 valid space (1 machinetype), 0 invalid" in result.stdout


def test_a_render_error_counts_as_an_error(tmp_path: Path) -> None:
    """It used to print "0 problems" and exit 1: the trial render's error was not counted."""
    template = tmp_path / "user_data"
    template.write_text("#!/bin/sh\necho ##user_data_no_such_thing##\n")
    result = validate(config(tmp_path, machinetype=f"user_data = {template}"))
    assert counted(result) == (1, 0)
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error {tmp_path / 'conf' / '10.conf'}:11: [machinetype "
                           "sim.example t2k] user_data: unknown placeholder")


def test_warnings_alone_exit_0(tmp_path: Path) -> None:
    result = validate(config(tmp_path, share="0"))
    assert counted(result) == (0, 1)
    assert "nothing will ever be created" in result.stderr


def test_missing_files_a_machinetype_reads_are_located(tmp_path: Path) -> None:
    result = validate(config(tmp_path, machinetype=(
        f"user_data = {tmp_path / 'nope.tmpl'}\n"
        f"user_data_file_motd = {tmp_path / 'motd'}\n")))
    assert counted(result) == (2, 0)
    text = result.stderr
    assert f"[machinetype sim.example t2k] user_data: {tmp_path / 'nope.tmpl'}: No such file" \
        in text
    assert f"] user_data_file_motd: {tmp_path / 'motd'}: No such file" in text


@pytest.mark.parametrize(("option", "mode", "words"), [
    ("web_tls_key", 0o644, "is accessible by others (mode 0644); run chmod o-rwx"),
    ("operator_token_file", 0o640, "is accessible by group or others (mode 0640)"),
])
def test_a_loose_key_or_token_file_is_a_located_error(tmp_path: Path, option: str, mode: int,
                                                      words: str) -> None:
    secret = tmp_path / "secret.pem"
    secret.write_text("-----BEGIN PRIVATE KEY-----\nMIIsecret\n-----END PRIVATE KEY-----\n")
    secret.chmod(mode)
    settings = f"{option} = {secret}"
    if option == "web_tls_key":
        settings += f"\nweb_tls_cert = {secret}"
    result = validate(config(tmp_path, settings=settings))
    assert counted(result)[0] == 1
    line = result.stderr.splitlines()[0]
    assert line.startswith(f"error {tmp_path / 'conf' / '10.conf'}:")
    assert f"[settings] {option}: {option} file {secret} {words}" in line
    assert "MIIsecret" not in result.stdout + result.stderr


def test_web_doors_that_run_would_refuse(tmp_path: Path) -> None:
    result = validate(config(tmp_path, settings="web_listen = 0.0.0.0:8443\n"
                             "operator_listen = 0.0.0.0:8081"))
    assert counted(result)[0] == 3
    assert "[settings] web_listen: not a loopback address: plain HTTP" in result.stderr
    assert "operator_token_file or operator_tls_client_ca" in result.stderr


def test_a_missing_directory(tmp_path: Path) -> None:
    result = validate(tmp_path / "nope")
    assert counted(result) == (1, 0)
    assert "configuration directory not found" in result.stderr
