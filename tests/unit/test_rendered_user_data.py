"""Golden renders of every shipped template on every image family, and the checks a VM would
make of them.

Each shipped template (belle, t2k, hyperk: DIRAC pilot VMs; generic: the agent alone, here
for the squid machinetype) is rendered on each image family (el9, el8, cernvm4) for the Napoli
space of ``userdata_support`` (fixed clock, signing key, host certificate and key; squid
discovery finds 10.0.0.5) exactly as it is sent to the cloud, secrets included, and compared
byte for byte with ``tests/unit/golden/<template>-<family>.yaml``.  One exception: the packed
Python modules of the agent (gzip+base64 under ``/usr/local/libexec/cloudvac/``) change with
their own code, tested on its own, so the test checks that each unpacks to the package's source
byte for byte and the golden file holds a marker in its place.

To regenerate after a deliberate change::

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q -p no:cacheprovider \\
        tests/unit/test_rendered_user_data.py

rewrites the golden files that differ and fails naming them: review ``git diff
tests/unit/golden`` (decode the base64 ``agent.json`` and ``pilot.json`` too), then run
again without ``UPDATE_GOLDEN``.

Then every rendered shell part passes ``bash -n``/``dash -n``/shellcheck and every unit
``systemd-analyze verify`` (``userdata_tools``), the agent accepts the command line of every
unit (the check that catches a unit line glued to ``ExecStart=``, which systemd-analyze
accepts), and no template line can lose its newline to ``trim_blocks``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from cloudvac.context import agent
from cloudvac.context.families import FAMILIES
from cloudvac.context.userdata import AGENT_FILES, LIBEXEC, PILOT_USER
from tests.unit.userdata_support import NAME, napoli, renderer
from tests.unit.userdata_tools import (
    Text,
    cloud_configs,
    exec_start,
    file_content,
    shell_findings,
    shell_scripts,
    systemd_units,
    tool,
    unit_findings,
)

GOLDEN = Path(__file__).parent / "golden"
TEMPLATES = {"belle": "belle", "t2k": "t2k", "hyperk": "hyperk", "generic": "squid"}
"""Golden file name -> the machinetype of the Napoli space that uses that template."""
PACKED = {f"{LIBEXEC}/{module}": module for module in (*AGENT_FILES, "jobagent.py")}
AGENT, CONFIG_FILE = f"{LIBEXEC}/agent.py", "/etc/cloudvac/agent.json"
PILOT_SCRIPT, PREPARE_SCRIPT = f"{LIBEXEC}/pilot.sh", f"{LIBEXEC}/prepare.sh"
TEMPLATE_DIR = resources.files("cloudvac.context") / "templates"


@pytest.fixture(params=[f"{t}-{f}" for t in sorted(TEMPLATES) for f in sorted(FAMILIES)])
def rendered(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(template-family, the user_data sent for a VM of it)."""
    template, family = request.param.split("-")
    space, settings = napoli(tmp_path)
    mt = space.machinetypes[TEMPLATES[template]].model_copy(update={"image_family": family})
    text = renderer(settings, ["10.0.0.5"])(space, mt, NAME.format(mt=mt.name))
    assert str(tmp_path) not in text  # nothing of the test's own paths in the golden
    return request.param, text


def without_packed_scripts(text: str) -> str:
    """``text`` with each packed script, checked against its source, replaced by a marker."""
    for _, document in cloud_configs(text):
        for entry in document["write_files"]:
            module = PACKED.get(entry["path"])
            if module is None:
                continue
            source = (resources.files("cloudvac.context") / module).read_text()
            assert file_content(entry) == source, f"{entry['path']} is not {module}"
            assert text.count(entry["content"]) == 1
            text = text.replace(entry["content"], f"<gzip+base64 of cloudvac/context/{module}>")
    return text


def test_golden_render(rendered: tuple[str, str]) -> None:
    template, text = rendered
    text = without_packed_scripts(text)
    golden = GOLDEN / f"{template}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1" and (
            not golden.exists() or golden.read_text() != text):
        golden.write_text(text)
        pytest.fail(f"rewrote {golden}: review git diff, then run without UPDATE_GOLDEN")
    assert golden.exists(), f"no {golden}: see this module's docstring to create it"
    assert text == golden.read_text(), f"{template} differs from {golden} (docstring: how to " \
                                       "regenerate after a deliberate change)"


def test_shell_parts_pass_bash_dash_and_shellcheck(rendered: tuple[str, str]) -> None:
    template, text = rendered
    scripts = shell_scripts(text)
    expected = {"user_data runcmd"} | (set() if template.startswith("generic") else {
        f"user_data write_files {PILOT_SCRIPT}", f"user_data write_files {PREPARE_SCRIPT}"})
    assert {s.name for s in scripts} == expected
    assert [f for s in scripts for f in shell_findings(s)] == []


def test_units_pass_systemd_analyze_verify(rendered: tuple[str, str], tmp_path: Path) -> None:
    _, text = rendered
    units = systemd_units(text)
    assert [u.name for u in units] == ["/etc/systemd/system/cloudvac-agent.service"]
    assert [f for u in units for f in unit_findings(u, tmp_path)] == []


def test_the_agent_accepts_every_units_command_line(rendered: tuple[str, str],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    template, text = rendered
    files = {e["path"]: e for _, doc in cloud_configs(text) for e in doc["write_files"]}
    (unit,) = systemd_units(text)
    argv = exec_start(unit)
    assert argv[:2] == ["/usr/bin/python3", AGENT] and files[AGENT]["permissions"] == "0644"
    options = argv[2:argv.index("--")] if "--" in argv else argv[2:]
    command = argv[len(options) + 3:]
    assert options == ["--config", CONFIG_FILE]
    config = json.loads(file_content(files[CONFIG_FILE]))
    assert config["joboutputs_url"].endswith("/joboutputs") and config["token"].startswith("v1.")
    if template.startswith("generic"):
        assert command == []
    else:
        assert command == ["/usr/sbin/runuser", "-u", PILOT_USER, "--", PILOT_SCRIPT]
        assert files[PILOT_SCRIPT]["permissions"] == "0755"
    # The agent's own parser takes the line (argparse would exit 2 on a stray argument such as
    # 'Restart=no'); it then stops at the config, absent here, before running anything.
    missing = ["--config", "/nonexistent/agent.json"]
    assert agent.main(missing + argv[2 + len(options):]) == 2
    assert "bad config: cannot read /nonexistent/agent.json" in capsys.readouterr().err


def test_every_render_passes_cloud_init_schema(rendered: tuple[str, str],
                                               tmp_path: Path) -> None:
    _, text = rendered
    (tmp_path / "user-data").write_text(text)
    result = subprocess.run([tool("cloud-init"), "schema", "-c", str(tmp_path / "user-data")],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_template_line_loses_its_newline() -> None:
    """With trim_blocks the newline after a ``{% %}`` or ``{# #}`` tag is dropped: a line with
    text before a tag that ends it runs into the next line (the generic unit's
    ``ExecStart=... {% endif %}`` did: ``agent.json      Restart=no``)."""
    offending = []
    for path in sorted(TEMPLATE_DIR.iterdir(), key=lambda p: p.name):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"(%|#)}\s*$", line) and re.sub(r"\{([%#]).*?\1\}", "", line).strip():
                offending.append(f"{path.name}:{number}: {line.strip()}")
    assert offending == []


def test_the_checks_find_what_they_are_for(tmp_path: Path) -> None:
    """Each tool sees a planted fault, so a clean result above means something."""
    unit = Text("/etc/systemd/system/x.service", "[Service]\nTyp=simple\nExecStart=/bin/true\n")
    assert "Unknown key" in " ".join(unit_findings(unit, tmp_path))
    assert "SC2086" in " ".join(shell_findings(Text("s", "#!/bin/bash\nrm $1\n")))
    assert "bash (exit 2)" in " ".join(shell_findings(Text("s", "#!/bin/bash\nif then\n")))
    assert "dash (exit 2)" in " ".join(shell_findings(Text("s", "#!/bin/sh\nx=(1 2\n")))
    assert agent_rejects(["--config", CONFIG_FILE, "Restart=no"])


def agent_rejects(argv: list[str]) -> bool:
    try:
        agent.main(argv)
    except SystemExit as exc:
        return exc.code == 2
    return False


def test_a_missing_tool_fails_naming_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(AssertionError, match=r"Debian package systemd, installed by "
                                             r"scripts/system-deps\.sh"):
        tool("systemd-analyze")
