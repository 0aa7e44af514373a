"""Rendered user_data taken apart and checked with the tools a VM would meet it with.

* Parts as cloud-init finds them (``validate.user_data_parts``).
* Shell: every ``text/x-shellscript`` part, every ``write_files`` entry whose (decoded) content
  starts with a shell ``#!`` line, and the scripts cloud-init makes of ``bootcmd`` and
  ``runcmd`` (by cloud-init's own ``util.shellify``, run with Debian's python3, so list
  entries are quoted exactly as on the VM).  Each is checked by ``bash -n``, by ``dash -n``
  when it is a ``#!/bin/sh`` script (``/bin/sh`` is dash on Debian/Ubuntu images, bash on
  EL), and by ``shellcheck`` at its default severity (style and up: any finding fails; the
  dialect comes from the ``#!`` line).
* systemd: every unit file written under a ``systemd/system/`` directory, by
  ``systemd-analyze verify --man=no`` on a copy in a temporary directory.  It needs no
  running systemd.  It exits 0 on unknown keys and on values it cannot parse (it only warns),
  so any output at all is a failure.  It checks that each ``Exec*=`` program exists *on the
  test host*: ``/usr/bin/python3`` is there as on the images.  It cannot see a unit's meaning:
  ``ExecStart=... agent.json      Restart=no`` is one valid command line to it, which is why
  the agent's command line is checked on its own (test_rendered_user_data.py).

The tools are Debian packages that ``scripts/system-deps.sh`` installs (``make test`` runs it):
a missing one fails the test, naming the package; nothing is skipped.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cloudvac.context.validate import user_data_parts

PACKAGES = {"bash": "bash", "dash": "dash", "shellcheck": "shellcheck",
            "systemd-analyze": "systemd", "cloud-init": "cloud-init"}
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, the one that has cloud-init's modules
SHELLIFY = ("import json, sys\nfrom cloudinit.util import shellify\n"
            "sys.stdout.write(shellify(json.load(sys.stdin)))\n")
SHELL = re.compile(r"#!\s*(/usr)?/bin/(env\s+)?(ba|da)?sh(\s|$)")
UNIT_PATH = re.compile(r"/systemd/system/[^/]+\.(service|socket|timer|path|mount|target)$")


@dataclass(frozen=True, slots=True)
class Text:
    """A script or unit file from the user_data; ``name`` says where it came from."""

    name: str
    text: str


def tool(name: str) -> str:
    """The path of ``name``, or a failure naming the Debian package that has it."""
    path = shutil.which(name)
    assert path, (f"{name} is not installed: Debian package {PACKAGES[name]}, installed by "
                  "scripts/system-deps.sh (make system-deps; make test runs it)")
    return path


def cloud_configs(user_data: str) -> list[tuple[str, dict[str, Any]]]:
    """Every cloud-config part, parsed."""
    return [(p.name, yaml.safe_load(p.text)) for p in user_data_parts(user_data)
            if p.content_type == "text/cloud-config"]


def file_content(entry: dict[str, Any]) -> str:
    """A ``write_files`` entry's content as written on the VM."""
    content, encoding = entry.get("content", ""), entry.get("encoding", "text/plain")
    if encoding in ("b64", "base64"):
        return base64.b64decode(content).decode()
    if encoding in ("gz+b64", "gzip+b64", "gz+base64", "gzip+base64"):
        return gzip.decompress(base64.b64decode(content)).decode()
    assert encoding == "text/plain", f"{entry['path']}: encoding {encoding} not handled here"
    return str(content)


def shell_scripts(user_data: str) -> list[Text]:
    scripts = [Text(p.name, p.text) for p in user_data_parts(user_data)
               if p.content_type == "text/x-shellscript"]
    for part, document in cloud_configs(user_data):
        for entry in document.get("write_files", []):
            content = file_content(entry)
            if SHELL.match(content):
                scripts.append(Text(f"{part} write_files {entry['path']}", content))
        for key in ("bootcmd", "runcmd"):
            if key in document:
                scripts.append(Text(f"{part} {key}", shellify(document[key])))
    return scripts


def shellify(commands: list[Any]) -> str:
    """The script cloud-init writes for ``runcmd``/``bootcmd``, by cloud-init's own code."""
    tool("cloud-init")
    result = subprocess.run([SYSTEM_PYTHON, "-c", SHELLIFY], input=json.dumps(commands),
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"cloud-init's shellify failed: {result.stderr}"
    return result.stdout


def systemd_units(user_data: str) -> list[Text]:
    return [Text(entry["path"], file_content(entry))
            for _, document in cloud_configs(user_data)
            for entry in document.get("write_files", []) if UNIT_PATH.search(entry["path"])]


def shell_findings(script: Text) -> list[str]:
    """What ``bash -n``, ``dash -n`` (``#!/bin/sh`` only) and shellcheck say; [] if clean."""
    commands = [[tool("bash"), "-n"], [tool("shellcheck"), "--format=gcc", "-"]]
    if re.match(r"#!\s*/bin/sh(\s|$)", script.text):
        commands.append([tool("dash"), "-n"])
    findings = []
    for command in commands:
        result = subprocess.run(command, input=script.text, capture_output=True, text=True,
                                timeout=60, check=False)
        output = (result.stdout + result.stderr).strip()
        if result.returncode != 0 or output:
            findings.append(f"{script.name}: {Path(command[0]).name} (exit "
                            f"{result.returncode}): {output}")
    return findings


def unit_findings(unit: Text, directory: Path) -> list[str]:
    """What ``systemd-analyze verify`` says about ``unit``; [] if it says nothing."""
    path = directory / Path(unit.name).name
    path.write_text(unit.text)
    result = subprocess.run([tool("systemd-analyze"), "verify", "--man=no", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0 or output:
        return [f"{unit.name}: systemd-analyze verify (exit {result.returncode}): {output}"]
    return []


def exec_start(unit: Text) -> list[str]:
    """The unit's one ``ExecStart=`` command line, split as systemd splits it (shell-like
    quoting; no ``$``/``%`` expansion is used in cloudvac's units)."""
    lines = [line for line in unit.text.splitlines() if line.startswith("ExecStart=")]
    assert len(lines) == 1, f"{unit.name}: {len(lines)} ExecStart= lines"
    return shlex.split(lines[0].removeprefix("ExecStart="))
