"""Configuration loading: every kind of bad input gives its message with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudvac.config import Location, load_config_dir

GOOD_SPACE = """\
[space a.example]
api = sim
processors_limit = 100   ; inline comment
flavor_names = m1.small,
    m1.medium

[machinetype a.example belle]
target_share = 2
hs06_per_processor = 10
"""


def write(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_good_config_with_defaults_continuation_and_inline_comment(tmp_path: Path) -> None:
    loaded = load_config_dir(write(tmp_path, {"10-a.conf": GOOD_SPACE}))
    assert loaded.issues == []
    space = loaded.spaces["a.example"]
    assert space.processors_limit == 100
    assert space.flavor_names == ["m1.small", "m1.medium"]
    assert space.machinetypes["belle"].target_share == 2
    assert space.machinetypes["belle"].fizzle_seconds == 600
    assert space.burst_processors(1) == 10
    assert loaded.settings is not None and loaded.settings.cycle_seconds == 60


BAD_INPUTS = [
    # id, file text, expected line, expected option, expected words in the message
    ("syntax", "[space b.example]\napi = sim\nthis is not an option\n", 3, None,
     "cannot parse line"),
    ("outside-section", "api = sim\n[space b.example]\n", 1, "api", "outside any section"),
    ("duplicate", "[space b.example]\napi = sim\napi = sim\n", 3, "api", "given twice"),
    ("unknown-option", "[space b.example]\napi = sim\nprocesors_limit = 3\n"
     "[machinetype b.example t2k]\n", 3, "procesors_limit", "did you mean 'processors_limit'"),
    ("bad-int", "[space b.example]\napi = sim\nprocessors_limit = lots\n"
     "[machinetype b.example t2k]\n", 3, "processors_limit", "valid integer"),
    ("negative", "[space b.example]\napi = sim\n[machinetype b.example t2k]\n"
     "target_share = -1\n", 4, "target_share", "greater than or equal to 0"),
    ("missing-api", "[space b.example]\nprocessors_limit = 3\n[machinetype b.example t2k]\n",
     1, "api", "required option is missing"),
    ("bad-api", "[space b.example]\napi = azure\n[machinetype b.example t2k]\n", 2, "api",
     "'sim'"),
    ("unknown-section", "[vacuum_tube b.example x]\nurl = y\n", 1, None, "unknown section"),
    ("orphan-machinetype", "[machinetype nowhere.example t2k]\ntarget_share = 1\n", 1, None,
     "no [space nowhere.example] section"),
    ("no-machinetype", "[space b.example]\napi = sim\n", 1, None, "at least one [machinetype"),
    ("bad-space-name", "[space B_x]\napi = sim\n[machinetype b_x t2k]\n", 1, None,
     "DNS-like"),
    ("min-max", "[space b.example]\napi = sim\n[machinetype b.example t2k]\n"
     "min_processors = 4\nmax_processors = 2\n", 5, "max_processors", "below min_processors"),
    ("heartbeat-no-file", "[space b.example]\napi = sim\n[machinetype b.example t2k]\n"
     "heartbeat_seconds = 60\n", 4, "heartbeat_seconds", "needs heartbeat_file"),
    ("no-flavor", "[space b.example]\napi = sim\n[machinetype b.example t2k]\n", 1,
     "flavor_names",
     "no flavor_names for machinetype(s) t2k"),
    ("sim-flavor", "[space b.example]\napi = sim\nsim_flavors = tiny\n"
     "[machinetype b.example t2k]\n", 3, "sim_flavors", "NAME:VCPUS:RAM_MB"),
    ("sim-unknown", "[space b.example]\napi = sim\n[machinetype b.example t2k]\n"
     "sim_job_secs = 3\n", 4, "sim_job_secs", "did you mean 'sim_job_seconds'"),
    ("settings", "[settings]\ncycle_seconds = 0\n", 2, "cycle_seconds", "greater than 0"),
]


@pytest.mark.parametrize(("text", "line", "option", "words"), [r[1:] for r in BAD_INPUTS],
                         ids=[r[0] for r in BAD_INPUTS])
def test_bad_input_is_located(tmp_path: Path, text: str, line: int, option: str | None,
                              words: str) -> None:
    loaded = load_config_dir(write(tmp_path, {"10-a.conf": GOOD_SPACE, "20-b.conf": text}))
    matching = [i for i in loaded.issues if words in i.message]
    assert matching, [str(i) for i in loaded.issues]
    issue = matching[0]
    assert issue.location.file == tmp_path / "20-b.conf"
    assert issue.location.line == line
    assert issue.option == option
    assert str(issue).startswith(f"{tmp_path / '20-b.conf'}:{line}:")
    # the good space in the other file is unaffected
    assert "a.example" in loaded.spaces


def test_broken_space_is_reported_not_loaded(tmp_path: Path) -> None:
    bad = "[space b.example]\napi = sim\nprocessors_limit = -1\n[machinetype b.example t2k]\n"
    loaded = load_config_dir(write(tmp_path, {"10-a.conf": GOOD_SPACE, "20-b.conf": bad}))
    assert set(loaded.spaces) == {"a.example"}
    assert loaded.broken == {"b.example"}
    # every problem in one run: the bad value, and the rule it kept from being checked
    assert [(i.option, i.message.split(" ")[0]) for i in loaded.issues_for("b.example")] == [
        ("processors_limit", "Input"), ("flavor_names", "no")]


def test_later_file_overrides_and_locations_follow(tmp_path: Path) -> None:
    shares = "[machinetype a.example belle]\ntarget_share = 5\n"
    loaded = load_config_dir(write(tmp_path, {"10-a.conf": GOOD_SPACE, "90-shares.conf": shares}))
    assert loaded.spaces["a.example"].machinetypes["belle"].target_share == 5
    bad = "[machinetype a.example belle]\n\ntarget_share = x\n"
    loaded = load_config_dir(write(tmp_path, {"90-shares.conf": bad}))
    (issue,) = loaded.issues
    assert (issue.location.file.name, issue.location.line) == ("90-shares.conf", 3)


def test_syntax_error_outside_sections_taints_that_file_only(tmp_path: Path) -> None:
    other = "garbage\n[space c.example]\napi = sim\n[machinetype c.example t2k]\n"
    loaded = load_config_dir(write(tmp_path, {"10-a.conf": GOOD_SPACE, "20-c.conf": other}))
    assert set(loaded.spaces) == {"a.example"} and loaded.broken == {"c.example"}


def test_values_are_never_echoed(tmp_path: Path) -> None:
    secretish = "[space b.example]\napi = sim\nprocessors_limit = s3cr3t-value\n" \
                "[machinetype b.example t2k]\n"
    loaded = load_config_dir(write(tmp_path, {"20-b.conf": secretish}))
    assert loaded.issues and all("s3cr3t" not in str(i) for i in loaded.issues)


def test_unreadable_and_missing(tmp_path: Path) -> None:
    (tmp_path / "10-bin.conf").write_bytes(b"\xff\xfe[space]")
    loaded = load_config_dir(tmp_path)
    assert "cannot read file" in loaded.issues[0].message
    assert "not found" in load_config_dir(tmp_path / "nope").issues[0].message
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no *.conf" in load_config_dir(empty).issues[0].message


def test_shipped_demo_config_is_valid() -> None:
    from cloudvac.demo import example_dir

    loaded = load_config_dir(example_dir())
    assert loaded.issues == []
    assert set(loaded.spaces) == {"sim-a.example", "sim-b.example"}
    for space in loaded.spaces.values():
        assert set(space.machinetypes) == {"belle", "t2k", "hyperk"}


OPENSTACK = """\
[space os.example]
api = openstack
auth_url = https://keystone.example:5000/v3
username = cloudvac
project_name = demo
flavor_names = m1.small
{extra}
[machinetype os.example belle]
target_share = 1
"""


def test_openstack_options_and_private_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cr3t\n")
    secret.chmod(0o600)
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "10.conf").write_text(OPENSTACK.format(
        extra=f"password_file = {secret}\nnetworks = net-a, net-b\nsecurity_groups = a b"))
    loaded = load_config_dir(conf)
    assert loaded.issues == []
    options = loaded.spaces["os.example"].openstack
    assert options is not None and options.networks == ["net-a", "net-b"]
    assert options.security_groups == ["a", "b"]
    secret.chmod(0o640)
    (issue,) = load_config_dir(conf).issues
    assert (issue.location.line, issue.option) == (7, "password_file")
    assert "chmod 600" in issue.message and "s3cr3t" not in str(issue)


@pytest.mark.parametrize(("extra", "line", "option", "words"), [
    ("password = hunter2", 7, "password", "inline secrets are refused; use password_file"),
    ("", 1, "auth", "needs password_file or password_env"),
    ("auth = application_credential\npassword_env = X", 7, "auth",
     "needs application_credential_id"),
    ("password_env = X\nnetworks = auto net-a", 8, "networks", "cannot be combined"),
    ("password_env = X\napi_timeout_seconds = 0", 8, "api_timeout_seconds", "greater than 0"),
])
def test_openstack_bad_options(tmp_path: Path, extra: str, line: int, option: str | None,
                               words: str) -> None:
    (tmp_path / "10.conf").write_text(OPENSTACK.format(extra=extra))
    loaded = load_config_dir(tmp_path)
    matching = [i for i in loaded.issues if words in i.message]
    assert matching, [str(i) for i in loaded.issues]
    assert (matching[0].location.line, matching[0].option) == (line, option)
    assert "hunter2" not in " ".join(str(i) for i in loaded.issues)
    assert loaded.broken == {"os.example"}


# --- files that lose their content, sections met twice, machinetype secrets (issue 13) ---

SPACE_B = "[space b.example]\napi = sim\nflavor_names = m1.small\n\n" \
          "[machinetype b.example t2k]\ntarget_share = 1\n"


def spoil(path: Path, how: str) -> None:
    """Make ``path`` unreadable: not UTF-8 (at line 3), or no permission (skips when
    this process reads it anyway: root with its capabilities)."""
    if how == "not-utf-8":
        path.write_bytes(b"[space b.example]\napi = sim\n\xff\xfe\n")
        return
    path.chmod(0)
    try:
        path.read_bytes()
    except PermissionError:
        return
    path.chmod(0o644)
    pytest.skip("this process reads files whatever their mode")


@pytest.mark.parametrize("how", ["not-utf-8", "no-permission"])
def test_unreadable_file_breaks_the_spaces_it_held(tmp_path: Path, how: str) -> None:
    conf = write(tmp_path, {"00-settings.conf": "[settings]\ncycle_seconds = 5\n",
                            "10-a.conf": GOOD_SPACE, "20-b.conf": SPACE_B})
    first = load_config_dir(conf)
    assert set(first.spaces) == {"a.example", "b.example"} and first.issues == []
    assert first.sources["b.example"] == frozenset({conf / "20-b.conf"})

    spoil(conf / "20-b.conf", how)
    second = load_config_dir(conf, previous=first)
    assert second.unreadable == [conf / "20-b.conf"]
    assert set(second.spaces) == {"a.example"} and second.broken == {"b.example"}
    read_issue = next(i for i in second.issues if "cannot read file" in i.message)
    assert read_issue.location == Location(conf / "20-b.conf", 3 if how == "not-utf-8" else 0)
    (held,) = second.issues_for("b.example")
    assert str(held).startswith(f"{conf / '20-b.conf'}:0: [space b.example] this file "
                                "cannot be read and held sections of this space")
    assert second.settings is not None and second.settings.cycle_seconds == 5
    # remembered: the next load still knows, until the file can be read again
    third = load_config_dir(conf, previous=second)
    assert third.broken == {"b.example"}
    (conf / "20-b.conf").chmod(0o644)
    (conf / "20-b.conf").write_text(SPACE_B)
    assert set(load_config_dir(conf, previous=third).spaces) == {"a.example", "b.example"}


def test_unreadable_file_may_hold_the_settings(tmp_path: Path) -> None:
    conf = write(tmp_path, {"00-settings.conf": "[settings]\ncycle_seconds = 5\n",
                            "10-a.conf": GOOD_SPACE})
    first = load_config_dir(conf)
    spoil(conf / "00-settings.conf", "not-utf-8")
    for previous in (first, None):  # known to hold them, or nothing known
        loaded = load_config_dir(conf, previous=previous)
        assert loaded.settings is None, "not the defaults: they may name another database"
        assert any(i.section == "settings" and i.location.file == conf / "00-settings.conf"
                   for i in loaded.issues)
        assert "a.example" in loaded.spaces


def test_emptied_file_keeps_its_space_until_the_file_is_deleted(tmp_path: Path) -> None:
    conf = write(tmp_path, {"10-a.conf": GOOD_SPACE, "20-b.conf": SPACE_B})
    first = load_config_dir(conf)
    (conf / "20-b.conf").write_text("\n  \n")  # a truncated write, a full disk, "> file"

    emptied = load_config_dir(conf, previous=first)
    assert emptied.empty == [conf / "20-b.conf"]
    assert emptied.broken == {"b.example"} and "b.example" not in emptied.spaces
    (issue,) = emptied.issues_for("b.example")
    assert "this file is empty and held sections of this space" in issue.message
    assert emptied.warnings == []

    unknown = load_config_dir(conf)  # nothing to go by: said, not acted on
    assert "b.example" not in set(unknown.spaces) | unknown.broken
    assert unknown.issues == []
    assert [str(w) for w in unknown.warnings] == [f"{conf / '20-b.conf'}:0: the file is empty"]

    (conf / "20-b.conf").unlink()  # the operator's way to stop managing it
    removed = load_config_dir(conf, previous=emptied)
    assert set(removed.spaces) == {"a.example"} and removed.broken == set()
    assert removed.issues == [] and removed.warnings == []


def test_section_removed_from_a_file_with_content_is_a_removal(tmp_path: Path) -> None:
    conf = write(tmp_path, {"10-a.conf": GOOD_SPACE + "\n" + SPACE_B})
    first = load_config_dir(conf)
    (conf / "10-a.conf").write_text(GOOD_SPACE)
    again = load_config_dir(conf, previous=first)
    assert set(again.spaces) == {"a.example"} and again.broken == set() and again.issues == []


def test_repeated_sections_are_merged_and_said(tmp_path: Path) -> None:
    conf = write(tmp_path, {
        "05-dirac.conf": "[dirac gridpp]\nformat = operations\nsite_prefix = CLOUD\n"
                         "setup = GridPP\nconfiguration_servers = "
                         "dips://a.example:9135/Configuration/Server\n",
        "10-a.conf": GOOD_SPACE,
        "90-local.conf": "[space a.example]\nprocessors_limit = 7\n\n"
                         "[machinetype a.example belle]\nmin_processors = 2\n\n"
                         "[dirac gridpp]\nsetup = GridPP-test\n"})
    loaded = load_config_dir(conf)
    assert loaded.issues == []
    assert loaded.spaces["a.example"].processors_limit == 7, "the later file wins"
    assert loaded.spaces["a.example"].machinetypes["belle"].min_processors == 2
    assert loaded.dirac["gridpp"].setup == "GridPP-test"
    local = conf / "90-local.conf"
    assert sorted(str(w) for w in loaded.warnings) == sorted([
        f"{local}:1: [space a.example] also defined at {conf / '10-a.conf'}:1: the two are "
        "merged, later files overriding earlier ones; this file overrides processors_limit",
        f"{local}:4: [machinetype a.example belle] also defined at {conf / '10-a.conf'}:7: "
        "the two are merged, later files overriding earlier ones",
        f"{local}:7: [dirac gridpp] also defined at {conf / '05-dirac.conf'}:1: the two are "
        "merged, later files overriding earlier ones; this file overrides setup",
    ])
    assert loaded.sources["a.example"] == frozenset({conf / "10-a.conf", local})


@pytest.mark.parametrize(("option", "mode", "words"), [
    ("host_key_file", 0o644, "accessible by group or others (mode 0644); run chmod 600"),
    ("pilot_proxy_file", 0o640, "accessible by group or others (mode 0640)"),
    ("pilot_proxy_file", None, "No such file or directory"),
])
def test_machinetype_secret_files_must_be_private(tmp_path: Path, option: str,
                                                  mode: int | None, words: str) -> None:
    secret = tmp_path / "secret.pem"
    if mode is not None:
        secret.write_text("-----BEGIN PRIVATE KEY-----\nMIIsecret\n-----END PRIVATE KEY-----\n")
        secret.chmod(mode)
    conf = tmp_path / "conf"
    conf.mkdir()
    write(conf, {"10-a.conf": GOOD_SPACE, "20-b.conf": SPACE_B + f"{option} = {secret}\n"})
    loaded = load_config_dir(conf)
    (issue,) = loaded.issues
    assert (issue.location.file.name, issue.location.line, issue.option) == (
        "20-b.conf", 7, option)
    assert words in issue.message and "MIIsecret" not in str(issue)
    assert loaded.broken == {"b.example"} and set(loaded.spaces) == {"a.example"}
