"""Operators' VCycle templates (issue 15, point 5): MIME with or without mail headers, every
cloud-config part schema-checked; uploads without the VM's token refused at validation;
``##user_data_option_cvmfs_proxy##`` combined with the discovered squids as VCycle did; CVMFS
proxies in ``squid_proxies`` checked and written as ``http://HOST:PORT``."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudvac.config import Settings, Space, load_config_dir
from cloudvac.config.proxies import normalize_proxy_list
from cloudvac.context.errors import RenderError
from cloudvac.context.userdata import check_space
from cloudvac.context.validate import user_data_parts
from tests.unit.userdata_support import CONFIG, NAME, napoli, renderer
from tests.unit.userdata_tools import Text, cloud_configs, file_content, shell_findings

MAIL_HEADERS = """\
From nobody Fri Jan 15 08:00:00 2027
Comments:
 #
 # VCycle user_data for ##user_data_space## ##user_data_machinetype##
 #
"""
MIME = """\
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="===============3141592653589793238=="

--===============3141592653589793238==
MIME-Version: 1.0
Content-Type: {config_type}; charset="us-ascii"
Content-Transfer-Encoding: 7bit
Content-Disposition: attachment; filename="cloud-config-file"

#cloud-config
{write_files}:
  - path: /etc/cvmfs/default.local
    content: |
      CVMFS_HTTP_PROXY="##user_data_option_cvmfs_proxy##"

--===============3141592653589793238==
MIME-Version: 1.0
Content-Type: text/x-shellscript; charset="us-ascii"
Content-Transfer-Encoding: 7bit
Content-Disposition: attachment; filename="heartbeat.sh"

#!/bin/bash
while true; do
  date +%s > /tmp/heartbeat
  curl --fail --silent --max-time 60 {credentials} \\
    --upload-file /tmp/heartbeat "##user_data_joboutputs_url##/heartbeat"
  sleep 300
done &
--===============3141592653589793238==--
"""
TOKEN = '-H "Authorization: Bearer ##user_data_joboutputs_token##"'
X509 = "--cert /etc/grid-security/hostcert.pem --key /etc/grid-security/hostkey.pem"


def template(headers: bool = True, config_type: str = "text/cloud-config",
             write_files: str = "write_files", credentials: str = TOKEN) -> str:
    return (MAIL_HEADERS if headers else "") + MIME.format(
        config_type=config_type, write_files=write_files, credentials=credentials)


@pytest.fixture
def space(tmp_path: Path) -> tuple[Space, Settings]:
    return napoli(tmp_path)


def operator_space(space: Space, path: Path, text: str, **options: str) -> Space:
    """``space`` with one machinetype, squid, using the template ``text`` written to ``path``."""
    path.write_text(text)
    mt = space.machinetypes["squid"].model_copy(update={
        "user_data": str(path), "user_data_options": options})
    return space.model_copy(update={"machinetypes": {"squid": mt}})


@pytest.mark.parametrize("headers", [True, False])
def test_mime_templates_with_or_without_mail_headers(space: tuple[Space, Settings],
                                                     tmp_path: Path, headers: bool) -> None:
    the_space, settings = space
    ours = operator_space(the_space, tmp_path / "user_data", template(headers))
    text = renderer(settings)(ours, ours.machinetypes["squid"], NAME.format(mt="squid"))
    parts = user_data_parts(text)
    assert [(p.name, p.content_type) for p in parts] == [
        ("MIME part 1 cloud-config-file", "text/cloud-config"),
        ("MIME part 2 heartbeat.sh", "text/x-shellscript")]
    assert 'Authorization: Bearer v1.' in parts[1].text
    assert shell_findings(Text(parts[1].name, parts[1].text)) == []
    (_, document), = cloud_configs(text)
    assert file_content(document["write_files"][0]) == (
        'CVMFS_HTTP_PROXY="http://squid1.na.infn.it:3128|http://squid2.na.infn.it:3128"\n')
    typo = operator_space(the_space, tmp_path / "typo", template(headers, write_files="write_file"))
    with pytest.raises(RenderError, match=r"squid \(MIME part 1 cloud-config-file\): unknown "
                                          r"cloud-config key\(s\) write_file"):
        renderer(settings)(typo, typo.machinetypes["squid"], NAME.format(mt="squid"))
    (problem,) = check_space(typo, settings)
    assert "write_file" in problem


def test_a_text_plain_part_is_typed_by_its_start_as_cloud_init_does(
        space: tuple[Space, Settings], tmp_path: Path) -> None:
    the_space, settings = space
    typo = operator_space(the_space, tmp_path / "user_data",
                          template(config_type="text/plain", write_files="write_file"))
    with pytest.raises(RenderError, match=r"\(MIME part 1 cloud-config-file\): unknown "
                                          r"cloud-config key\(s\) write_file"):
        renderer(settings)(typo, typo.machinetypes["squid"], NAME.format(mt="squid"))


def test_uploads_without_the_token_are_refused_saying_what_to_add(
        space: tuple[Space, Settings], tmp_path: Path) -> None:
    the_space, settings = space
    x509 = operator_space(the_space, tmp_path / "user_data", template(credentials=X509))
    (problem,) = check_space(x509, settings)  # what `cloudvac validate` and the daemon show
    assert problem.startswith("napoli.infn.it/squid: the template uploads to "
                              "##user_data_joboutputs_url## without the VM's token")
    assert "as VCycle's `curl --cert`, are not accepted" in problem
    assert "every upload would get 401" in problem
    assert "'Authorization: Bearer ##user_data_joboutputs_token##'" in problem
    with pytest.raises(RenderError, match="without the VM's token"):
        renderer(settings).render(x509, x509.machinetypes["squid"], NAME.format(mt="squid"),
                                  mask=True)


@pytest.mark.parametrize(("option", "found", "expected"), [
    # VCycle: the discovered squids (one balanced group), then ';' and the option.
    ("http://backup.na.infn.it:3128", ["10.0.0.5", "10.0.0.6"],
     "http://10.0.0.5:3128|http://10.0.0.6:3128;http://backup.na.infn.it:3128"),
    # none discovered: the option unchanged
    ("http://backup.na.infn.it:3128", [], "http://backup.na.infn.it:3128"),
    # no option: the space's squid_proxies are the fallback group
    (None, ["10.0.0.5"],
     "http://10.0.0.5:3128;http://squid1.na.infn.it:3128|http://squid2.na.infn.it:3128"),
])
def test_cvmfs_proxy_option_combined_as_vcycle_did(
        space: tuple[Space, Settings], tmp_path: Path, option: str | None, found: list[str],
        expected: str) -> None:
    the_space, settings = space
    options = {"cvmfs_proxy": option} if option else {}
    ours = operator_space(the_space, tmp_path / "user_data", template(), **options)
    text = renderer(settings, found)(ours, ours.machinetypes["squid"], NAME.format(mt="squid"))
    (_, document), = cloud_configs(text)
    assert file_content(document["write_files"][0]) == f'CVMFS_HTTP_PROXY="{expected}"\n'


@pytest.mark.parametrize(("value", "written"), [
    ("squid.example.org", "http://squid.example.org:3128"),
    ("squid.example.org:8080", "http://squid.example.org:8080"),
    ("HTTP://Squid.Example.org/", "http://squid.example.org:3128"),
    ("http://10.1.2.3", "http://10.1.2.3:3128"),
    ("http://[2001:db8::1]:3129", "http://[2001:db8::1]:3129"),
    ("a.example:3128|b.example;DIRECT", "http://a.example:3128|http://b.example:3128;DIRECT"),
])
def test_squid_proxies_are_written_with_scheme_and_port(value: str, written: str) -> None:
    assert normalize_proxy_list(value) == written


@pytest.mark.parametrize(("value", "words"), [
    ("https://squid.example.org:3128", "CVMFS speaks only http://"),
    ("socks5://squid.example.org", "CVMFS speaks only http://"),
    ("http://user:pw@squid.example.org:3128", "without credentials or path"),
    ("http://squid.example.org:3128/cvmfs", "without credentials or path"),
    ("squid.example.org:99999", "PORT 1-65535"),
    ("squid.example.org:0", "PORT 1-65535"),
    ("squid_1.example.org", "is not a host name or IP address"),
    ("a.example||b.example", "'' is not a host name"),
])
def test_squid_proxies_that_cvmfs_cannot_use_are_refused(tmp_path: Path, value: str,
                                                         words: str) -> None:
    config = CONFIG.replace(
        "squid_proxies = http://squid1.na.infn.it:3128 http://squid2.na.infn.it:3128",
        f"squid_proxies = {value}")
    napoli(tmp_path)  # the certificate and key it needs
    (tmp_path / "10.conf").write_text(config.format(cert=tmp_path / "hostcert.pem",
                                                    key=tmp_path / "hostkey.pem"))
    loaded = load_config_dir(tmp_path)
    assert "napoli.infn.it" not in loaded.spaces
    (issue,) = loaded.issues
    assert issue.option == "squid_proxies" and words in issue.message, issue


def test_squid_proxies_loaded_normalized(tmp_path: Path) -> None:
    extra = "\n[space napoli.infn.it]\nsquid_proxies = squid.na.infn.it squid2.na.infn.it:8000\n"
    (tmp_path / "20.conf").write_text(extra)  # read after 10.conf, so it overrides
    space, settings = napoli(tmp_path)
    assert space.squid_proxies == ["http://squid.na.infn.it:3128",
                                   "http://squid2.na.infn.it:8000"]
    text = renderer(settings).render(space, space.machinetypes["t2k"], NAME.format(mt="t2k"))
    assert ('CVMFS_HTTP_PROXY="http://squid.na.infn.it:3128|http://squid2.na.infn.it:8000"'
            in text)

