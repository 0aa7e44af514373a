"""docs/admin-guide.md says only what is true: its configuration examples validate, the
messages it explains are cloudvac's own, the commands and options it names exist, and the
behaviour it describes that no other test shows is shown here."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import pytest
import typer.main
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from cloudvac.cli import app
from cloudvac.config import load_config_dir, pipecache, pipes
from cloudvac.config.reference import groups
from cloudvac.config.vcycle_names import VCYCLE_OPTIONS
from tests.unit.test_dirac import HOST_SUBJECT, make_cert
from tests.unit.test_planner import make_space, observed, run

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "admin-guide.md"
LANDING = "(commands land with issue 16)"
"""Sections with this mark describe commands still being written (the lead checks them)."""


def guide() -> str:
    return GUIDE.read_text(encoding="utf-8")


def example_files() -> dict[str, str]:
    """The guide's ``ini`` blocks that are whole files (first line ``# /etc/cloudvac.d/...``)."""
    found = {}
    for block in re.findall(r"```ini\n(.*?)```", guide(), re.S):
        first = block.splitlines()[0]
        if first.startswith("# /etc/cloudvac.d/"):
            found[first[len("# /etc/cloudvac.d/"):]] = block
    return found


def tls_pair() -> dict[str, bytes]:
    """A self-signed certificate and its key, for the web door's web_tls_cert/_key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vcycle.na.infn.it")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return {"web.cert.pem": cert.public_bytes(serialization.Encoding.PEM),
            "web.key.pem": key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption())}


def test_the_configuration_examples_validate(tmp_path: Path) -> None:
    files = example_files()
    assert {"00-settings.conf", "10-napoli.conf", "20-appcred.conf"} <= set(files)
    conf, secrets = tmp_path / "cloudvac.d", tmp_path / "secrets"
    conf.mkdir()
    secrets.mkdir()
    web = tls_pair()
    for name, text in files.items():
        for secret in re.findall(r"/etc/cloudvac\.d/secrets/(\S+)", text):
            path = secrets / secret
            if secret in web:
                path.write_bytes(web[secret])
            elif secret.endswith(".cert.pem"):
                path.write_bytes(make_cert(HOST_SUBJECT))
            else:
                path.write_text("not a real secret\n")
            path.chmod(0o600)
        text = text.replace("/etc/cloudvac.d/secrets", str(secrets))
        (conf / name).write_text(text.replace("/var/lib/cloudvac", str(tmp_path / "state")))
    loaded = load_config_dir(conf)
    assert loaded.issues == [] and loaded.warnings == [] and loaded.broken == set()
    assert len(loaded.spaces) == 4
    result = CliRunner().invoke(app, ["validate", "--config-dir", str(conf)])
    assert result.exit_code == 0, result.output


def _source() -> str:
    """Every string of the package as a message reads: adjacent literals joined, rich markup
    dropped."""
    text = "\n".join(p.read_text(encoding="utf-8")
                     for p in sorted((ROOT / "cloudvac").rglob("*.py")))
    text = re.sub(r"\"\s*\n\s*(?:rf|fr|f|r|b)?\"", "", text)
    return re.sub(r"\[/?(?:red|yellow|green|bold)\]", "", text)


def troubleshooting_fragments() -> list[str]:
    """The backticked fragments in the first column of section 9's tables."""
    section = guide().split("## 9. Troubleshooting", 1)[1]
    found = []
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith(("| message", "| answer", "|---")):
            found += re.findall(r"`([^`]+)`", line.split(" | ")[0])
    return found


def test_every_message_explained_is_one_cloudvac_gives() -> None:
    source = _source()
    fragments = troubleshooting_fragments()
    assert len(fragments) > 50
    missing = [f for f in fragments
               if not all(piece.strip() in source for piece in f.split("…"))]
    assert missing == [], "section 9 explains messages cloudvac no longer gives"


def test_the_fragment_check_can_fail() -> None:
    source = _source()
    assert "refresh token expired or revoked" in source
    assert "refresh token has gone sour" not in source


def _commands() -> set[str]:
    group = typer.main.get_command(app)
    return set(getattr(group, "commands", {}))


def without_landing(text: str) -> str:
    """``text`` without the sections marked ``LANDING``."""
    parts = re.split(r"(?m)^(?=#{2,3} )", text)
    return "".join(p for p in parts if LANDING not in p.split("\n", 1)[0])


def test_every_command_named_exists() -> None:
    text = without_landing(guide().split("## 9. Troubleshooting")[0])  # 9 quotes messages
    code = re.findall(r"```.*?```", text, re.S) + re.findall(r"`[^`\n]+`", text)
    command = re.compile(r"(?<![\w/.-])cloudvac (?!cloudvac)([a-z][a-z-]+)")
    named = {m for c in code for m in command.findall(c)}
    assert len(named) > 5
    assert named - _commands() == set(), "the guide names commands cloudvac does not have"


def _options() -> set[str]:
    """Options of the reference, of ``[vacuum_pipe]`` sections and pipe documents (not a
    model: ``config/pipecache.py``), and VCycle's names (the migration section)."""
    return ({o.name.replace("<dirac>", "").replace("_X", "_") for g in groups()
             for o in g.options}
            | {pipecache.URL, pipecache.REFRESH} | set(pipes.TOP_KEYS)
            | {entry.vcycle for entry in VCYCLE_OPTIONS})


NOT_OPTIONS = frozenset({"cloudvac_token_expiry_seconds", "offline_access", "invalid_grant",
                         "invalid_client", "client_credentials", "vm_operator"})
"""Words the guide puts in backticks that are not options: a metric, OIDC terms."""


def test_every_option_named_exists() -> None:
    words = set(re.findall(r"`([a-z][a-z0-9]*_[a-z0-9_]*)`", guide()))
    assert len(words) > 30
    options = _options()
    unknown = {w for w in words - NOT_OPTIONS
               if w not in options and not any(w.startswith(o) for o in options
                                                if o.endswith("_"))}
    assert unknown == set(), "the guide names options that do not exist"


@pytest.mark.parametrize("stop", [{"target_share": 0}, {"target_share": 1, "processors_limit": 0}])
def test_share_or_limit_zero_stops_creating_and_deletes_nothing(stop: dict[str, int]) -> None:
    """Section 7: the gentle stop, on the real planner."""
    running = [observed(f"m{i}") for i in range(3)]
    assert run(make_space(), running).creates  # the same space creates without it
    result = run(make_space({"belle": stop}), running)
    assert result.creates == [] and result.deletes == []
