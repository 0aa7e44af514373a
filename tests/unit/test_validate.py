"""A validator to trust (issue 16): every problem in one run, suggestions that know
VCycle's names, no value echoed, no URL mangled, warnings for configurations that would do
nothing or harm."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudvac.config import Issue, load_config_dir
from cloudvac.config.checks import unreachable

DATA = Path(__file__).parents[1] / "data" / "vcycle"


def write(tmp_path: Path, text: str, name: str = "10.conf") -> Path:
    (tmp_path / name).write_text(text)
    return tmp_path


def by_option(issues: list[Issue]) -> dict[str | None, list[str]]:
    found: dict[str | None, list[str]] = {}
    for issue in issues:
        found.setdefault(issue.option, []).append(issue.message)
    return found


def test_vcycles_example_gives_every_error_in_one_run(tmp_path: Path) -> None:
    """VCycle's own example.vcycle.conf took nine rounds of validate to migrate by hand:
    now one run names every option to change, each with VCycle's meaning."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "example.conf").write_text((DATA / "example.vcycle.conf").read_text())
    loaded = load_config_dir(conf)
    found = by_option(loaded.issues)
    assert set(found) >= {"url", "tenancy_name", "password_base64", "processors_per_machine",
                          "flavor_name", "x509dn", "root_public_key", "log_joboutputs",
                          "user_data", "auth", "flavor_names"}
    assert "use auth_url" in found["url"][0]
    assert "tenancy_name is VCycle's name: use project_name" in found["tenancy_name"][0]
    assert "did you mean" not in found["tenancy_name"][0]
    assert "use password_file" in found["password_base64"][0]
    assert "own token" in found["x509dn"][0]
    assert "URLs are not fetched" in found["user_data"][0]
    # the credential rule names everything missing at once, beside the unknown options
    assert "needs auth_url, project_name or project_id, password_file" in found["auth"][0]
    assert "UEFTU3dvcmQ" not in " ".join(map(str, loaded.issues))  # the example's password


def test_rule_errors_come_with_the_type_errors_that_used_to_hide_them(tmp_path: Path) -> None:
    loaded = load_config_dir(write(tmp_path, (
        "[space a.example]\napi = sim\nflavor_names = m1.small\n"
        "[machinetype a.example t2k]\ntarget_share = lots\nmin_processors = 4\n"
        "max_processors = 2\nheartbeat_seconds = 60\n")))
    found = by_option(loaded.issues)
    assert "target_share" in found
    assert any("below min_processors" in m for m in found["max_processors"])
    assert loaded.broken == {"a.example"}


def test_a_bad_cloud_section_hides_neither_the_space_nor_its_machinetypes(
        tmp_path: Path) -> None:
    loaded = load_config_dir(write(tmp_path, (
        "[space os.example]\napi = openstack\nauth_url = ftp://nowhere\nusername = u\n"
        "password_env = X\nproject_name = p\nprocessors_limit = many\n"
        "[machinetype os.example belle]\ntarget_share = 1\nflavor_names = m1.small\n"
        "dirac = nosuch\nfizzle_seconds = -1\n")))
    found = by_option(loaded.issues)
    assert {"auth_url", "processors_limit", "fizzle_seconds"} <= set(found)
    # the auth_url rule is not repeated as "needs auth_url" (its own error says it)
    assert not any("needs auth_url" in m for m in found.get("auth", []))


def test_secret_file_is_reported_whatever_else_is_wrong(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cr3t\n")
    secret.chmod(0o644)
    (tmp_path / "conf").mkdir()
    conf = write(tmp_path / "conf", (
        f"[space os.example]\napi = openstack\nauth_url = https://k.example/v3\n"
        f"username = u\nproject_name = p\npassword_file = {secret}\ntenancy_name = p\n"
        "[machinetype os.example belle]\nflavor_names = m1.small\n"))
    loaded = load_config_dir(conf)
    found = by_option(loaded.issues)
    assert "run chmod 600" in found["password_file"][0]
    assert "use project_name" in found["tenancy_name"][0]
    assert "s3cr3t" not in " ".join(map(str, loaded.issues))


@pytest.mark.parametrize(("extra", "option", "url"), [
    ("password_file = https://vault.example/pw", "password_file", "https://vault.example/pw"),
])
def test_urls_are_never_mangled(tmp_path: Path, extra: str, option: str, url: str) -> None:
    loaded = load_config_dir(write(tmp_path, (
        f"[space os.example]\napi = openstack\nauth_url = https://k.example/v3\n"
        f"username = u\nproject_name = p\n{extra}\n"
        "[machinetype os.example belle]\nflavor_names = m1.small\n"
        "user_data = https://repo.example/user_data\n"
        "user_data_file_key = https://repo.example/key\n")))
    text = "\n".join(map(str, loaded.issues))
    assert url in text and "https:/v" not in text and "https:/r" not in text
    found = by_option(loaded.issues)
    assert "absolute path" in found["user_data_file_key"][0]
    assert "URLs are not fetched" in found["user_data"][0]


def test_values_are_never_echoed(tmp_path: Path) -> None:
    loaded = load_config_dir(write(tmp_path, (
        "[space a.example]\napi = sim\nflavor_names = m1.small\nsim_flavors = s3cr3t-a\n"
        "processors_limit = s3cr3t-b\n"
        "[machinetype a.example t2k]\npilot_options = /Ok=1 -o/Password=s3cr3t-c\n"
        "user_data = s3cr3t-d\nmax_wallclock_seconds = s3cr3t-e\n")))
    assert len(loaded.issues) == 5, loaded.issues
    assert all("s3cr3t" not in str(i) for i in loaded.issues)


@pytest.mark.parametrize(("section", "line", "option", "words"), [
    ("[space a.example]\napi = sim\nflavor_names = m1.small\nkey_name = k\n", 4, "key_name",
     "option of spaces with api = openstack"),
    ("[space a.example]\napi = sim\nflavor_names = m1.small\ntarget_share = 1\n", 4,
     "target_share", "option of [machinetype], not of [space]"),
    ("[space a.example]\napi = sim\nflavor_names = m1.small\n[machinetype a.example x]\n"
     "squid_proxies = http://s:3128\n", 5, "squid_proxies", "option of [space]"),
    ("[space a.example]\napi = sim\nflavor_names = m1.small\n[machinetype a.example x]\n"
     "acounting = 1\n", 5, "acounting", "unknown option"),
    ("[space a.example]\napi = openstack\nauth_url = https://k.example/v2.0\n", 3,
     "auth_url", "Keystone v3 only"),
    ("[space a.example]\napi = openstack\nsim_seed = 3\n", 3, "sim_seed",
     "only valid with api = sim"),
])
def test_misplaced_options_say_where_they_belong(tmp_path: Path, section: str, line: int,
                                                 option: str, words: str) -> None:
    loaded = load_config_dir(write(tmp_path, section))
    matching = [i for i in loaded.issues if i.option == option]
    assert matching and words in matching[0].message, loaded.issues
    assert matching[0].location.line == line


OS_SPACE = """\
[settings]
state_dir = {state}
{settings}
[space os.example]
api = openstack
auth = {auth}
auth_url = https://keystone.example/v3
username = u
project_name = p
password_env = X
application_credential_id = abc
application_credential_secret_env = Y
egi_checkin_client_id = c
egi_checkin_client_secret_env = Z
egi_project_id = 123
egi_vo = {egi_vo}
flavor_names = m1.small

[machinetype os.example belle]
vo = belle
target_share = {share}
{image}
"""


def os_config(tmp_path: Path, **values: str) -> Path:
    fields = {"state": str(tmp_path / "state"), "settings": "web_url = https://vac.example",
              "auth": "egi_checkin", "egi_vo": "belle", "share": "1",
              "image": "root_image = AlmaLinux-9", **values}
    return write(tmp_path, OS_SPACE.format(**fields))


def warned(tmp_path: Path, **values: str) -> dict[str | None, list[str]]:
    loaded = load_config_dir(os_config(tmp_path, **values))
    assert loaded.issues == [] and "os.example" in loaded.spaces, loaded.issues
    return by_option(loaded.warnings)


def test_a_sound_openstack_space_warns_only_of_the_other_auth_methods(tmp_path: Path) -> None:
    found = warned(tmp_path)
    assert list(found) == ["password_env"]
    assert "ignored with auth = egi_checkin: password_env, application_credential_id" in \
        found["password_env"][0]


def test_warnings_for_configurations_that_do_nothing_or_harm(tmp_path: Path) -> None:
    found = warned(tmp_path, share="0")
    assert "nothing will ever be created" in found["target_share"][0]
    found = warned(tmp_path, egi_vo="t2k")
    assert "matches the vo of no machinetype" in found["egi_vo"][0]
    found = warned(tmp_path, image="")
    assert "every creation of this machinetype would fail" in found["root_image"][0]
    found = warned(tmp_path, settings="web_url = http://127.0.0.1:8080")
    assert "VMs of os.example run in a cloud" in found["web_url"][0]
    found = warned(tmp_path, settings="web_listen = 0.0.0.0:8443")
    assert "web_url is not set and web_listen is a loopback or unspecified" in \
        found["web_listen"][0]


def test_sim_spaces_may_use_loopback(tmp_path: Path) -> None:
    loaded = load_config_dir(write(tmp_path, (
        "[settings]\nweb_url = http://localhost:8080\n[space a.example]\napi = sim\n"
        "flavor_names = m1.small\n[machinetype a.example t2k]\ntarget_share = 1\n")))
    assert loaded.issues == [] and loaded.warnings == []


@pytest.mark.parametrize(("host", "expected"), [
    ("127.0.0.1", True), ("127.3.2.1", True), ("[::1]", True), ("localhost", True),
    ("LOCALHOST.", True), ("vm.localhost", True), ("0.0.0.0", True), ("::", True),
    ("vac.example", False), ("192.0.2.7", False), ("2001:db8::1", False),
])
def test_unreachable_hosts(host: str, expected: bool) -> None:
    assert unreachable(host) is expected


def test_an_invalid_machinetype_still_counts_for_its_dirac_site(tmp_path: Path) -> None:
    """The space's DIRAC site names are checked against every machinetype, valid or not:
    a loose key must not also make site_name_belle2 look unused."""
    key = tmp_path / "key.pem"
    key.write_text("k\n")
    key.chmod(0o644)
    (tmp_path / "conf").mkdir()
    loaded = load_config_dir(write(tmp_path / "conf", (
        "[dirac belle2]\nformat = setups\nsite_prefix = VCYCLE\nsetup = Belle-KEK\n"
        "configuration_servers = dips://cs.example:9135/Configuration/Server\n"
        "[space a.example]\napi = sim\nflavor_names = m1.small\nsite_name_belle2 = Napoli.it\n"
        f"[machinetype a.example belle]\ntarget_share = 1\ndirac = belle2\nvo = belle\n"
        f"host_cert_file = {key}\nhost_key_file = {key}\n")))
    assert [i.option for i in loaded.issues] == ["host_key_file"], loaded.issues
