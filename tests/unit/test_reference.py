"""The option reference and the man pages: generated from the models and the commands, up to
date in docs/, complete, true to the loader, and well-formed roff."""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from cloudvac.cli import app
from cloudvac.cli.docs import documents
from cloudvac.config import LoadedConfig, load_config_dir, loader
from cloudvac.config.diracsites import SITE_NAME_KEY
from cloudvac.config.ec2 import Ec2Space
from cloudvac.config.loader import PLACEHOLDER_KEYS
from cloudvac.config.models import Machinetype, SimMachinetype, SimSpace, Space
from cloudvac.config.openstack import OpenStackSpace
from cloudvac.config.reference import (
    HEADER_FIELDS,
    REGENERATE,
    Group,
    _md,
    groups,
    markdown,
    roff,
    section_models,
)
from cloudvac.config.settings import Settings

DOCS = Path(__file__).resolve().parents[2] / "docs"
PREFIXED = {target: prefix for prefix, target in (*PLACEHOLDER_KEYS, SITE_NAME_KEY)}


def stale(docs: Path) -> list[str]:
    """What is out of date under ``docs``, each naming the command that regenerates it."""
    found = []
    for relative, text in documents().items():
        path = docs / relative
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            found.append(f"docs/{relative} is out of date with the models and commands: run "
                         f"`{REGENERATE}` in the repository")
    return found


def test_generated_docs_are_up_to_date() -> None:
    assert stale(DOCS) == []


def test_a_stale_document_is_named_with_the_command(tmp_path: Path) -> None:
    """The check above can fail, and says what to run."""
    for relative, text in documents().items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text, encoding="utf-8")
    assert stale(tmp_path) == []
    page = tmp_path / "man" / "cloudvac.conf.5"
    page.write_text(page.read_text().replace("state_dir", "state_directory"))
    assert stale(tmp_path) == ["docs/man/cloudvac.conf.5 is out of date with the models and "
                               "commands: run `cloudvac options --write docs` in the "
                               "repository"]


def test_the_command_writes_and_prints_the_documents(tmp_path: Path) -> None:
    runner = CliRunner()
    written = runner.invoke(app, ["options", "--write", str(tmp_path)])
    assert written.exit_code == 0, written.output
    assert stale(tmp_path) == []
    printed = runner.invoke(app, ["options"])
    assert printed.exit_code == 0 and printed.output == markdown()


def _section_models() -> set[type[BaseModel]]:
    """The models the loader validates configuration sections with, and the models nested
    in them (whatever other documents cloudvac/config/ reads, such as vacuum pipes)."""
    found: set[type[BaseModel]] = set()
    todo = [v for v in vars(loader).values()
            if inspect.isclass(v) and issubclass(v, BaseModel) and v is not BaseModel]
    while todo:
        model = todo.pop()
        if model not in found:
            found.add(model)
            todo += [m for info in model.model_fields.values() for m in _models(info.annotation)]
    return found


def _models(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in getattr(annotation, "__args__", ()) for m in _models(a)]


def test_every_section_model_of_the_configuration_is_walked() -> None:
    missing = _section_models() - section_models()
    assert not missing, f"add {sorted(m.__name__ for m in missing)} to reference.GROUPS"


def test_every_model_field_is_in_the_reference() -> None:
    text = (DOCS / "options.md").read_text(encoding="utf-8")
    prefixes = {OpenStackSpace: "", Ec2Space: "", SimSpace: "sim_", SimMachinetype: "sim_"}
    for model in section_models():
        for name, info in model.model_fields.items():
            if name in HEADER_FIELDS or _models(info.annotation):
                continue
            if info.exclude:  # an inline secret: named as refused
                assert f"{name} (use " in text.replace("\n", " ")
                continue
            option = PREFIXED.get(name, prefixes.get(model, "") + name)
            assert f"| `{option}" in text, f"{model.__name__}.{name} is not in docs/options.md"


def test_every_option_has_a_meaning() -> None:
    bare = [f"[{g.title}] {o.name}" for g in groups() for o in g.options if not o.meaning]
    assert bare == [], "give these fields a Field(description=...)"


BASE_SPACE = "[space s.example]\napi = sim\nflavor_names = m1.small\n"
BASES: dict[type[BaseModel], tuple[str, Callable[[LoadedConfig], object]]] = {
    Settings: ("[settings]\n{options}\n", lambda c: c.settings),
    Space: (BASE_SPACE + "{options}\n[machinetype s.example a]\n",
            lambda c: c.spaces["s.example"]),
    SimSpace: (BASE_SPACE + "{options}\n[machinetype s.example a]\n",
               lambda c: c.spaces["s.example"].sim),
    Machinetype: (BASE_SPACE + "[machinetype s.example a]\n{options}\n",
                  lambda c: c.spaces["s.example"].machinetypes["a"]),
    SimMachinetype: (BASE_SPACE + "[machinetype s.example a]\n{options}\n",
                     lambda c: c.spaces["s.example"].machinetypes["a"].sim or SimMachinetype()),
    OpenStackSpace: ("[space o.example]\napi = openstack\nauth_url = https://k.example:5000/v3"
                     "\nusername = u\nproject_name = p\npassword_env = CLOUDVAC_TEST_PASSWORD"
                     "\nflavor_names = m1.small\n{options}\n[machinetype o.example a]\n",
                     lambda c: c.spaces["o.example"].openstack),
    Ec2Space: ("[space e.example]\napi = ec2\nregion = eu-west-1\ncredentials = env"
               "\nflavor_names = t3.micro\n{options}\n[machinetype e.example a]\n",
               lambda c: c.spaces["e.example"].ec2),
}
for _model in section_models() - set(BASES):  # [dirac NAME]: its required options given
    BASES[_model] = ("[dirac d]\nformat = setups\nsite_prefix = VCYCLE\nsetup = S\n"
                     "configuration_servers = dips://cs.example:9135/Configuration/Server\n"
                     "{options}\n", lambda c: c.dirac["d"])


def _load(tmp_path: Path, text: str) -> LoadedConfig:
    (tmp_path / "10-test.conf").write_text(text)
    return load_config_dir(tmp_path)


@pytest.mark.parametrize("group", groups(), ids=lambda g: g.title)
def test_defaults_as_shown_are_the_models_defaults(group: Group, tmp_path: Path) -> None:
    """Writing every default the reference shows gives the model its own defaults."""
    template, extract = BASES[group.model]
    base = _load(tmp_path, template.format(options=""))
    assert base.issues == []
    given = [o for o in group.options if o.default not in ("required", "unset")
             and f"\n{o.name} =" not in f"\n{template}"]
    assert given, "nothing to check"
    written = "\n".join(f"{o.name} = {'' if o.default == 'empty' else o.default}"
                        for o in given)
    loaded = _load(tmp_path, template.format(options=written))
    assert loaded.issues == [], written
    assert extract(loaded) == extract(base)


@pytest.mark.parametrize("group", groups(), ids=lambda g: g.title)
def test_every_option_shown_is_one_the_loader_takes(group: Group, tmp_path: Path) -> None:
    template, _ = BASES[group.model]
    names = [o.name.replace("<dirac>", "d").replace("_X", "_x") for o in group.options
             if f"\n{o.name} =" not in f"\n{template}"]
    loaded = _load(tmp_path, template.format(options="\n".join(f"{n} = 1" for n in names)))
    unknown = [str(i) for i in loaded.issues if i.message.startswith("unknown option")]
    assert unknown == []


def test_vcycle_names_and_limits_are_shown() -> None:
    rows = {line.split("|")[1].strip(): line for line in markdown().splitlines()
            if line.startswith("| `")}
    assert rows["`auth_url`"].endswith("| `url` |")  # VCycle's url
    assert "integer, \\>= 1, \\<= 64 | `4` |" in rows["`api_concurrency`"]
    assert "| one of el9, el8, cernvm4 | `el9` |" in rows["`image_family`"]
    assert "| required |" in rows["`api`"]


def test_text_is_escaped_for_markdown_and_roff() -> None:
    assert _md("a|b <c> *d* _e_ f_g") == "a\\|b \\<c\\> \\*d\\* \\_e\\_ f_g"
    assert roff(".start\\ -x é") == "\\&.start\\e \\-x \\[u00E9]"
    assert roff("line\n'quoted") == "line\n\\&'quoted"


def lint(page: Path) -> list[str]:
    """Warnings of groff and man about ``page`` (roff that renders wrong says so here)."""
    env = {**os.environ, "LC_ALL": "C.UTF-8", "MANWIDTH": "80", "MANPAGER": "cat"}
    runs = [["groff", "-man", "-ww", "-z", str(page)],
            ["man", "--warnings", "-E", "UTF-8", "-l", str(page)]]
    problems = []
    for command in runs:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        problems += [f"{command[0]}: {line}" for line in done.stderr.splitlines()]
        if done.returncode != 0:
            problems.append(f"{command[0]} exited with {done.returncode}")
    return problems


@pytest.mark.parametrize("page", ["cloudvac.1", "cloudvac.conf.5"])
def test_man_pages_render_without_warnings(page: str) -> None:
    for tool in ("groff", "man"):
        assert shutil.which(tool), f"{tool} is installed by scripts/system-deps.sh"
    assert lint(DOCS / "man" / page) == []


def test_the_man_page_check_can_fail(tmp_path: Path) -> None:
    page = tmp_path / "bad.1"
    page.write_text('.TH "BAD" "1"\n.SH NAME\nbad \\- page\n.BOGUS x\nsee \\[nosuchchar]\n')
    problems = lint(page)
    assert any("BOGUS" in p for p in problems) and any("nosuchchar" in p for p in problems)
