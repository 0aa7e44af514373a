"""Privilege separation inside a pilot VM, read from the rendered user_data of every VO
template on every image family: the agent (root) alone can read the VM's token, the pilot and
its payloads run as ``PILOT_USER`` with their own credentials, and the metadata address is
blocked before the pilot can start.  (``tests/integration/test_vm_boot.py`` runs the same
scripts in order.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, get_args

import pytest

from cloudvac.config.models import ImageFamily
from cloudvac.context.families import FAMILIES
from cloudvac.context.userdata import (
    LIBEXEC,
    PILOT_LOG,
    PILOT_USER,
    SHUTDOWN_MESSAGE_PATH,
    WORK_DIR,
)
from tests.unit.userdata_support import NAME, napoli, renderer
from tests.unit.userdata_tools import cloud_configs, exec_start, file_content, systemd_units

CHOWN = re.compile(r'^\s*required chown -R "\$user:\$user" (\S+)$', re.MULTILINE)
SECRETS_OF_THE_PILOT = ("/etc/cloudvac/pilot/grid-security/hostkey.pem",)


def render(tmp_path: Path, vo: str, family: str, **update: Any) -> dict[str, dict[str, Any]]:
    space, settings = napoli(tmp_path)
    mt = space.machinetypes[vo].model_copy(update={"image_family": family, **update})
    text = renderer(settings, ["10.0.0.5"])(space, mt, NAME.format(mt=vo))
    ((_, document),) = cloud_configs(text)
    files = {entry["path"]: entry for entry in document["write_files"]}
    assert document["runcmd"] == [[f"{LIBEXEC}/prepare.sh"]]
    return files


def readable_by_the_pilot(files: dict[str, dict[str, Any]]) -> set[str]:
    """Files the pilot user can read once ``prepare.sh`` ran: those under a directory it
    hands to the pilot, and those readable by others."""
    given = CHOWN.findall(file_content(files[f"{LIBEXEC}/prepare.sh"]))
    return {path for path, entry in files.items()
            if any(path.startswith(d + "/") for d in given)
            or int(entry["permissions"], 8) & 0o004}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("vo", ["belle", "t2k"])
def test_owners_modes_and_users(tmp_path: Path, vo: str, family: str) -> None:
    files = render(tmp_path, vo, family)
    assert {e["owner"] for e in files.values()} == {"root:root"}
    for path, entry in files.items():  # nothing the pilot could rewrite to run as root
        assert int(entry["permissions"], 8) & 0o022 == 0, path
    assert files["/etc/cloudvac/agent.json"]["permissions"] == "0600"
    readable = readable_by_the_pilot(files)
    assert "/etc/cloudvac/agent.json" not in readable
    secrets = [path for path in SECRETS_OF_THE_PILOT if path in files]
    assert bool(secrets) is (vo == "belle")  # only belle has a host certificate here
    assert {"/etc/cloudvac/pilot/pilot.json", *secrets} <= readable
    assert all(files[path]["permissions"] == "0600" for path in secrets)
    (unit,) = systemd_units("\n".join(["#cloud-config", json.dumps(
        {"write_files": list(files.values())})]))
    assert not re.search(r"^(User|Group|DynamicUser)=", unit.text, re.MULTILINE)  # root
    argv = exec_start(unit)
    assert argv[argv.index("--") + 1:] == ["/usr/sbin/runuser", "-u", PILOT_USER, "--",
                                           f"{LIBEXEC}/pilot.sh"]
    assert "IPAddressDeny=169.254.169.254" in unit.text.splitlines()
    config = json.loads(file_content(files["/etc/cloudvac/agent.json"]))
    # What the pilot writes lies in its own work area; what the agent writes does not.
    assert config["logs"] == [PILOT_LOG] and config["shutdown_message_path"] == \
        SHUTDOWN_MESSAGE_PATH and PILOT_LOG.startswith(WORK_DIR + "/")
    assert not config["features_dir"].startswith(WORK_DIR)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_metadata_block_comes_before_the_agent(tmp_path: Path, family: str) -> None:
    prepare = file_content(render(tmp_path, "belle", family)[f"{LIBEXEC}/prepare.sh"])
    lines = prepare.splitlines()
    block = lines.index("required ip route replace prohibit 169.254.169.254/32")
    start = lines.index("systemctl start --no-block cloudvac-agent.service")
    verdict = next(n for n, line in enumerate(lines) if line.startswith("if [ -z \"$problem\""))
    assert block < verdict < start  # a failed block is part of the verdict the pilot reads
    # The pilot refuses to run without a clean verdict.
    pilot = file_content(render(tmp_path, "belle", family)[f"{LIBEXEC}/pilot.sh"])
    assert 'if [ "$verdict" != ok ]; then' in pilot


def test_without_block_metadata_nothing_is_blocked(tmp_path: Path) -> None:
    files = render(tmp_path, "belle", "el9", block_metadata=False)
    assert "169.254.169.254" not in file_content(files[f"{LIBEXEC}/prepare.sh"])
    assert "IPAddressDeny" not in file_content(files["/etc/systemd/system/cloudvac-agent.service"])


def test_the_readable_set_sees_a_leak(tmp_path: Path) -> None:
    """The check above is not vacuous: an agent config handed to the pilot is caught."""
    files = render(tmp_path, "belle", "el9")
    leaky = dict(files)
    leaky["/etc/cloudvac/agent.json"] = {**files["/etc/cloudvac/agent.json"],
                                         "permissions": "0644"}
    assert "/etc/cloudvac/agent.json" in readable_by_the_pilot(leaky)


def test_every_configurable_family_has_its_cloud_init() -> None:
    assert set(FAMILIES) == set(get_args(ImageFamily))
