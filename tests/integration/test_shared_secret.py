"""One server secret for every instance sharing a store (issue 18): the store keeps its
fingerprint, never the secret; a host whose secret is missing or different refuses to
start, through the real CLI, naming what to copy, and never shows a secret."""

from __future__ import annotations

import logging
import secrets
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloudvac.auth.vmtokens import (
    FINGERPRINT_FACT,
    SECRET_FILE,
    fingerprint,
    shared_secret,
)
from cloudvac.cli import app
from cloudvac.config import load_config_dir
from cloudvac.demo import example_dir
from cloudvac.engine.configsource import ConfigSource
from cloudvac.service import build
from cloudvac.store import Store

COPY_IT = "this store is shared: copy STATE_DIR/server.secret from an instance that already " \
    "runs, mode 0600"


def config_dir(root: Path, state: Path, url: str) -> Path:
    directory = root / f"conf-{state.name}"
    directory.mkdir()
    (directory / "00-settings.conf").write_text(
        f"[settings]\nstate_dir = {state}\ndatabase = {url}\nweb_listen = 127.0.0.1:0\n"
        "operator_listen = 127.0.0.1:0\n")
    return directory


def canary_secret(state: Path) -> str:
    """A secret file of its own, whose text a test can look for in every output."""
    state.mkdir(parents=True, exist_ok=True)
    text = "canary-" + secrets.token_hex(24)
    (state / SECRET_FILE).write_text(text + "\n")
    (state / SECRET_FILE).chmod(0o600)
    return text


def first_instance(tmp_path: Path, url: str) -> str:
    """The first instance's secret, its fingerprint recorded in the store at ``url``."""
    state = tmp_path / "first"
    text = canary_secret(state)
    store = Store(url)
    try:
        assert shared_secret(state, store) == text.encode()
    finally:
        store.close()
    return text


def test_the_first_instance_records_a_fingerprint_never_the_secret(
        tmp_path: Path, store_url: str) -> None:
    text = first_instance(tmp_path, store_url)
    store = Store(store_url)
    try:
        held = store.fact(FINGERPRINT_FACT)
        assert held == fingerprint(text.encode()) and len(held) == 64
        assert text not in held
        again = shared_secret(tmp_path / "first", store)  # a restart: the same, accepted
        assert again == text.encode()
    finally:
        store.close()


def test_a_fresh_store_gets_the_secret_created_on_first_start(tmp_path: Path,
                                                             store_url: str) -> None:
    store = Store(store_url)
    try:
        secret = shared_secret(tmp_path / "state", store)
        assert (tmp_path / "state" / SECRET_FILE).stat().st_mode & 0o777 == 0o600
        assert store.fact(FINGERPRINT_FACT) == fingerprint(secret)
    finally:
        store.close()


def run_web(cdir: Path, caplog: pytest.LogCaptureFixture) -> tuple[int, str]:
    caplog.set_level(logging.DEBUG)
    result = CliRunner().invoke(app, ["web", "--config-dir", str(cdir)])
    return result.exit_code, result.output + caplog.text


def test_a_second_host_without_the_secret_file_refuses_and_creates_none(
        tmp_path: Path, store_url: str, caplog: pytest.LogCaptureFixture) -> None:
    text = first_instance(tmp_path, store_url)
    second = tmp_path / "second"
    code, output = run_web(config_dir(tmp_path, second, store_url), caplog)
    assert code == 2, output
    assert "cannot start" in output and COPY_IT in " ".join(output.split())
    assert fingerprint(text.encode())[:8] in output
    assert not (second / SECRET_FILE).exists(), "no secret of its own"
    assert text not in output


def test_a_second_host_with_another_secret_refuses_naming_both_fingerprints(
        tmp_path: Path, store_url: str, caplog: pytest.LogCaptureFixture) -> None:
    text = first_instance(tmp_path, store_url)
    second = tmp_path / "second"
    other = canary_secret(second)
    code, output = run_web(config_dir(tmp_path, second, store_url), caplog)
    assert code == 2, output
    flat = " ".join(output.split())
    assert COPY_IT in flat
    assert fingerprint(text.encode())[:8] in flat and fingerprint(other.encode())[:8] in flat
    assert text not in output and other not in output
    assert (second / SECRET_FILE).read_text().strip() == other, "left as it was"


def test_render_show_secrets_checks_the_store_and_never_records(
        tmp_path: Path, store_url: str) -> None:
    """``cloudvac render --show-secrets`` prints the token VMs get: it must be the one the
    running instances sign, so another secret is refused there too."""
    text = first_instance(tmp_path, store_url)
    second = tmp_path / "second"
    other = canary_secret(second)
    cdir = tmp_path / "demo-conf"
    shutil.copytree(example_dir(), cdir)
    shutil.copy2(config_dir(tmp_path, second, store_url) / "00-settings.conf",
                 cdir / "99-settings.conf")
    result = CliRunner().invoke(app, ["render", "sim-a.example", "belle", "--config-dir",
                                      str(cdir), "--show-secrets"])
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert "cannot read the server secret" in flat and COPY_IT in flat
    assert text not in result.output and other not in result.output
    store = Store(store_url)
    try:
        assert store.fact(FINGERPRINT_FACT) == fingerprint(text.encode()), "unchanged"
    finally:
        store.close()


def test_a_copied_secret_starts_and_old_uploads_are_imported(tmp_path: Path,
                                                              store_url: str) -> None:
    """The service's own assembly (``service.build``): the copied secret is accepted, and
    uploads left on disk by an older version are moved into the store once."""
    text = first_instance(tmp_path, store_url)
    second = tmp_path / "second"
    second.mkdir()
    shutil.copy2(tmp_path / "first" / SECRET_FILE, second / SECRET_FILE)
    old = second / "joboutputs" / "old.example" / "cloudvac-aaaaaa-belle-aaaaaaaaaa"
    old.mkdir(parents=True)
    (old / "pilot.log").write_bytes(b"Received JobID=1, JobType=User\n")
    (old / ".pilot.log.123.456").write_bytes(b"half a temporary file")
    cdir = config_dir(tmp_path, second, store_url)
    loaded = load_config_dir(cdir)
    assert loaded.settings is not None
    store = Store(store_url)
    try:
        service = build(ConfigSource(cdir), loaded.settings, store, engine=False)
        service.sock.close()
        service.operator_sock.close()
        assert service.web.signer.secret == text.encode()
        assert store.joboutput("old.example", old.name, "pilot.log") == \
            b"Received JobID=1, JobType=User\n"
        assert [f.file for f in store.joboutput_files("old.example", old.name)] == \
            ["pilot.log"]
    finally:
        store.close()
    assert not (second / "joboutputs").exists()
    assert (second / "joboutputs.imported" / "old.example" / old.name / "pilot.log").exists()
