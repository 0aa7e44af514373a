"""Contextualization: VO templates (cloud-init schema), VCycle placeholders, validation,
squids and secret masking.  The golden renders and the shell/systemd checks of every shipped
template are in test_rendered_user_data.py, operators' VCycle templates in
test_vcycle_templates.py."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from cloudvac.config import Settings, Space
from cloudvac.config.models import Machinetype
from cloudvac.context.errors import RenderError
from cloudvac.context.userdata import MASK, check_space
from cloudvac.context.validate import UserDataInvalid, schema_found, validate_user_data
from tests.unit.userdata_support import NAME, napoli, renderer


@pytest.fixture
def space(tmp_path: Path) -> tuple[Space, Settings]:
    return napoli(tmp_path)


def _cloud_init_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["cloud-init", "schema", "-c", str(path)], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("vo", ["belle", "t2k", "hyperk"])
def test_every_vo_template_passes_cloud_init_schema(space: tuple[Space, Settings], vo: str,
                                                    tmp_path: Path) -> None:
    assert shutil.which("cloud-init"), "Debian's cloud-init is installed by make test"
    assert schema_found()
    the_space, settings = space
    text = renderer(settings, ["10.0.0.5"])(the_space, the_space.machinetypes[vo],
                                            NAME.format(mt=vo))
    out = tmp_path / "user-data"
    out.write_text(text)
    result = _cloud_init_schema(out)
    assert result.returncode == 0, result.stdout + result.stderr
    doc = yaml.safe_load(text)
    files = {f["path"]: f for f in doc["write_files"]}
    pilot = json.loads(base64.b64decode(files["/etc/cloudvac/pilot/pilot.json"]["content"]))
    site = "VCYCLE.RECAS-NAPOLI.it" if vo == "belle" else "CLOUD.RECAS-NAPOLI.it"
    assert pilot["CEs"]["napoli.infn.it"]["Site"] == site
    agent = json.loads(base64.b64decode(files["/etc/cloudvac/agent.json"]["content"]))
    assert agent["joboutputs_url"] == ("https://cloudvac.example.org:8443/machines/"
                                       f"napoli.infn.it/{NAME.format(mt=vo)}/joboutputs")
    assert files["/etc/cloudvac/agent.json"]["permissions"] == "0600"
    cvmfs = files["/etc/cvmfs/default.local"]["content"]
    assert ('CVMFS_HTTP_PROXY="http://10.0.0.5:3128;'
            'http://squid1.na.infn.it:3128|http://squid2.na.infn.it:3128"') in cvmfs
    repos = {"belle": "belle.cern.ch,belle.kek.jp", "t2k": "t2k.egi.eu",
             "hyperk": "hyperk.egi.eu"}[vo]
    assert f"CVMFS_REPOSITORIES={repos},grid.cern.ch,dirac.egi.eu," in cvmfs
    script = files["/usr/local/libexec/cloudvac/pilot.sh"]["content"]
    assert f"--wnVO={the_space.machinetypes[vo].vo}" in script and " -N napoli.infn.it" in script
    assert f" -Q {vo} " in script and "--Site" not in script
    prepare = files["/usr/local/libexec/cloudvac/prepare.sh"]["content"]
    assert doc["runcmd"] == [["/usr/local/libexec/cloudvac/prepare.sh"]]
    assert ("ip route replace prohibit 169.254.169.254/32" in prepare) is (vo != "hyperk")
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_secrets_masked_for_display_and_present_for_the_vm(space: tuple[Space, Settings]
                                                          ) -> None:
    the_space, settings = space
    mt = the_space.machinetypes["belle"]
    r = renderer(settings)
    shown = r.render(the_space, mt, NAME.format(mt="belle"), mask=True)
    real = r.render(the_space, mt, NAME.format(mt="belle"))
    secret = base64.b64encode(b"-----BEGIN PRIVATE KEY-----\nMIIsecretkey\n"
                              b"-----END PRIVATE KEY-----\n").decode()
    token = r.token(the_space, mt, NAME.format(mt="belle"))
    assert secret in real and secret not in shown
    agent_b64 = base64.b64encode(json.dumps(r.agent_config(
        the_space, mt, NAME.format(mt="belle")), sort_keys=True).encode()).decode()
    assert agent_b64 in real and token not in shown and agent_b64 not in shown


def test_agent_config_carries_the_vms_own_end(space: tuple[Space, Settings]) -> None:
    the_space, settings = space
    mt, name = the_space.machinetypes["t2k"], NAME.format(mt="t2k")
    config = renderer(settings).agent_config(the_space, mt, name)
    assert config["deadline"] == 1_800_000_000 + mt.max_wallclock_seconds + 3600
    assert config["unreachable_poweroff_seconds"] == 4 * 3600
    changed = mt.model_copy(update={"vm_unreachable_poweroff_seconds": 0,
                                    "vm_deadline_grace_seconds": 60})
    config = renderer(settings).agent_config(the_space, changed, name)
    assert config["deadline"] == 1_800_000_000 + mt.max_wallclock_seconds + 60
    assert config["unreachable_poweroff_seconds"] is None  # 0 disables
    with pytest.raises(ValidationError, match="at least three heartbeat periods"):
        Machinetype(name="t2k", space="s", heartbeat_period_seconds=60,
                    vm_unreachable_poweroff_seconds=120)


def test_check_space_reports_broken_machinetypes(space: tuple[Space, Settings]) -> None:
    the_space, settings = space
    assert check_space(the_space, settings) == []
    bad = the_space.machinetypes["t2k"].model_copy(update={"user_data": "builtin:atlas"})
    broken = the_space.model_copy(update={"machinetypes": {"t2k": bad}})
    (problem,) = check_space(broken, settings)
    assert "napoli.infn.it/t2k" in problem and "builtin:atlas does not exist" in problem


OPERATOR = """\
#cloud-config
# ##HOSTNAME## stays: it is not a cloudvac placeholder
write_files:
  - path: /etc/vm-info
    content: |
      space=##user_data_space## mt=##user_data_vmtype## name=##user_data_machine_hostname##
      joboutputs=##user_data_joboutputs_url## token=##user_data_joboutputs_token##
      heartbeats=##user_data_heartbeat_machines_url##
      proxy=##user_data_option_cvmfs_proxy## site=##user_data_site##
      extra=##user_data_option_colour## motd=##user_data_file_motd##
"""


def test_operator_template_placeholders(space: tuple[Space, Settings], tmp_path: Path) -> None:
    the_space, settings = space
    template, motd = tmp_path / "user_data", tmp_path / "motd"
    template.write_text(OPERATOR)
    motd.write_text("hello")
    mt = the_space.machinetypes["squid"].model_copy(update={
        "user_data": str(template), "user_data_options": {"colour": "blue"},
        "user_data_files": {"motd": motd}})
    text = renderer(settings)(the_space, mt, NAME.format(mt="squid"))
    assert "##HOSTNAME##" in text
    assert "space=napoli.infn.it mt=squid name=cloudvac-abcdef-squid-0123456789" in text
    assert ("heartbeats=https://cloudvac.example.org:8443/heartbeatlists/napoli.infn.it/"
            "squid") in text
    assert "site=RECAS-NAPOLI.it" in text and "extra=blue motd=hello" in text
    assert "token=v1." in text and "##user_data_" not in text
    template.write_text(OPERATOR + "      oops=##user_data_nosuchthing##\n")
    with pytest.raises(RenderError, match=r"##user_data_nosuchthing##"):
        renderer(settings)(the_space, mt, NAME.format(mt="squid"))


def test_operator_template_masks_files_and_secret_options(space: tuple[Space, Settings],
                                                         tmp_path: Path) -> None:
    the_space, settings = space
    template, motd = tmp_path / "user_data", tmp_path / "motd"
    template.write_text("#!/bin/sh\n"
                        "key='##user_data_file_hostkey##' opt='##user_data_option_hostkey##'\n"
                        "motd=##user_data_file_motd## colour=##user_data_option_colour##\n"
                        "pw=##user_data_option_db_password## pem='##user_data_option_blob##'\n"
                        "mirror=##user_data_option_mirror## token=##user_data_joboutputs_token##\n")
    motd.write_text("hello")
    pem = "-----BEGIN EC PRIVATE KEY-----\nMIIoptionkey\n-----END EC PRIVATE KEY-----"
    mt = the_space.machinetypes["squid"].model_copy(update={
        "user_data": str(template),
        "user_data_options": {"colour": "blue", "db_password": "hunter2", "blob": pem,
                              "mirror": "https://user:pw@mirror.example/repo"},
        "user_data_files": {"hostkey": tmp_path / "hostkey.pem", "motd": motd}})
    r, name = renderer(settings), NAME.format(mt="squid")
    shown = r.render(the_space, mt, name, mask=True)
    real = r(the_space, mt, name)
    for secret in ("MIIsecretkey", "hello", "hunter2", "MIIoptionkey", "user:pw@",
                   r.token(the_space, mt, name)):
        assert secret in real and secret not in shown
    assert "colour=blue" in shown and "colour=blue" in real  # nothing secret about it
    assert shown.count(MASK) == 7


@pytest.mark.parametrize(("text", "words"), [
    ("#cloud-config\nwrite_file:\n  - path: /x\n", "unknown cloud-config key(s) write_file"),
    ("#cloud-config\nruncmd: [\n", "not valid YAML"),
    ("#cloud-config\nruncmd: 5\n", "cloud-init schema: runcmd"),
    ("#cloud-config\nruncmd:\n  - echo {{ forgot }}\n", "unresolved template text '{{'"),
    ("#!/bin/sh\necho ##user_data_space##\n", "unresolved template text"),
    ("#cloud-config\nwrite_files:\n  - path: /big\n    content: " + "x" * 50000 + "\n",
     "over Nova's 65535"),
])
def test_validation_catches(text: str, words: str) -> None:
    with pytest.raises(UserDataInvalid, match=words.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        validate_user_data(text, "s/mt")


def test_multipart_parts_are_validated() -> None:
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText

    message = MIMEMultipart()
    message.attach(MIMEText("#cloud-config\npackages: [cvmfs]\n", "cloud-config"))
    message.attach(MIMEText("#!/bin/sh\necho hi\n", "x-shellscript"))
    validate_user_data(message.as_string(), "s/mt")
    bad = MIMEMultipart()
    bad.attach(MIMEText("#cloud-config\npakages: [cvmfs]\n", "cloud-config"))
    with pytest.raises(UserDataInvalid, match=r"MIME part .*pakages"):
        validate_user_data(bad.as_string(), "s/mt")
