"""An ``api = ec2`` space in the configuration: accepted when whole, and every mistake named
with its file, line and option (never the secret's value)."""

from __future__ import annotations

from pathlib import Path

from cloudvac.config import load_config_dir

GOOD = """\
[space e.example]
api = ec2
region = eu-west-1
credentials_file = {credentials}
security_group_ids = sg-0123abcd, sg-0123abce
image_owners = self 123456789012
flavor_names = t3.micro
spot = true

[machinetype e.example belle]
target_share = 1
root_image = alma9
"""


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    credentials = tmp_path / "aws"
    credentials.write_text("[default]\naws_access_key_id = A\naws_secret_access_key = B\n")
    credentials.chmod(mode)
    conf = tmp_path / "conf"
    conf.mkdir(exist_ok=True)
    (conf / "10-e.conf").write_text(text.format(credentials=credentials))
    return conf


def test_a_whole_ec2_space_loads(tmp_path: Path) -> None:
    loaded = load_config_dir(write(tmp_path, GOOD))
    assert loaded.issues == []
    ec2 = loaded.spaces["e.example"].ec2
    assert ec2 is not None and ec2.spot and ec2.region == "eu-west-1"
    assert ec2.security_group_ids == ["sg-0123abcd", "sg-0123abce"]
    assert ec2.image_owners == ["self", "123456789012"]


def test_mistakes_name_file_line_and_option(tmp_path: Path) -> None:
    text = GOOD.replace("region = eu-west-1\n", "").replace("sg-0123abcd, sg-0123abce", "default") \
        .replace("spot = true", "spot = true\nsecret_access_key = wJalrXUtnFEMIcanary\n"
                                "openstack_only = 1")
    conf = write(tmp_path, text, mode=0o644)
    loaded = load_config_dir(conf)
    shown = [str(i) for i in loaded.issues]
    where = f"{conf / '10-e.conf'}"
    assert any(s.startswith(f"{where}:3: [space e.example] credentials_file:")
               and "chmod 600" in s for s in shown), shown
    assert any(f"{where}:8: [space e.example] secret_access_key: " in s
               and "inline secrets are refused" in s for s in shown), shown
    assert any(f"{where}:4: [space e.example] security_group_ids:" in s for s in shown), shown
    assert any(f"{where}:9: [space e.example] openstack_only:" in s for s in shown), shown
    assert any(f"{where}:1: [space e.example] region: api = ec2 needs region" in s
               for s in shown), shown
    assert "e.example" in loaded.broken
    assert not any("wJalrXUtnFEMIcanary" in s for s in shown)
