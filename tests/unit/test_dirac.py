"""DIRAC context pieces: pilot.json (both formats), its schema, the pilot command line, the
pilot identity, site names per DIRAC instance (the paper's six sites from the shipped
configuration), the CS snippet and the queue sizes it advertises (research-dirac §1.3-§1.10,
§3.6, §4, §6)."""

from __future__ import annotations

import asyncio
import datetime
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from diraccfg import CFG

from cloudvac.clouds.factory import CloudFactory
from cloudvac.config import load_config_dir
from cloudvac.config.dirac import DiracInstance
from cloudvac.config.models import Machinetype, Space
from cloudvac.config.settings import Settings
from cloudvac.context import dirac, diraccs
from cloudvac.context.diraccs import QueueSize
from cloudvac.engine.queuesizes import resolve_sizes
from cloudvac.model.cloud import Flavor
from cloudvac.model.errors import Retryable

SPACE = "napoli.infn.it"
KEK_CS = "dips://dirac.cc.kek.jp:9135/Configuration/Server"
GRIDPP_CS = "dips://dirac01.grid.hep.ph.ic.ac.uk:9135/Configuration/Server"


def belle2(**update: Any) -> DiracInstance:
    values: dict[str, Any] = {
        "name": "belle2", "format": "setups", "site_prefix": "VCYCLE", "setup": "Belle-KEK",
        "configuration_servers": [KEK_CS], "project": "Belle"}
    return DiracInstance(**(values | update))


def gridpp(**update: Any) -> DiracInstance:
    values: dict[str, Any] = {
        "name": "gridpp", "format": "operations", "site_prefix": "CLOUD", "setup": "GridPP",
        "configuration_servers": [GRIDPP_CS, GRIDPP_CS.replace("dirac01", "dirac02")]}
    return DiracInstance(**(values | update))


def machinetypes() -> dict[str, Machinetype]:
    return {
        "belle": Machinetype(name="belle", space=SPACE, vo="belle", dirac="belle2",
                             max_processors=8, hs06_per_processor=12.5, mb_per_processor=2000,
                             max_wallclock_seconds=172800,
                             pilot_options=["/Resources/Computing/CEDefaults/Tag=Cloud",
                                            "/LocalSite/SubmitPool=cloudvac"]),
        "t2k": Machinetype(name="t2k", space=SPACE, vo="t2k.org", dirac="gridpp",
                           min_processors=2, max_wallclock_seconds=3601),
        "hyperk": Machinetype(name="hyperk", space=SPACE, vo="hyperk.org", dirac="gridpp"),
    }


def make_space(instances: list[DiracInstance] | None = None, site_name: str | None =
               "RECAS-NAPOLI.it", mts: dict[str, Machinetype] | None = None) -> Space:
    instances = [belle2(), gridpp()] if instances is None else instances
    return Space(name=SPACE, api="sim", site_name=site_name, flavor_names=["m1.small"],
                 dirac_instances={i.name: i for i in instances},
                 machinetypes=machinetypes() if mts is None else mts)


# ------------------------------------------------------------------------------------------
# site names


@pytest.mark.parametrize(("prefix", "site_name", "site"), [
    ("VCYCLE", "RECAS-NAPOLI.it", "VCYCLE.RECAS-NAPOLI.it"),
    ("CLOUD", "RAL-LCG2.uk", "CLOUD.RAL-LCG2.uk"),
    ("CLOUD", "UKI-NORTHGRID-MAN-HEP.uk", "CLOUD.UKI-NORTHGRID-MAN-HEP.uk"),
])
def test_site_of_good(prefix: str, site_name: str, site: str) -> None:
    instance = belle2(site_prefix=prefix)
    assert dirac.site_of(instance, make_space([instance], site_name=site_name)) == site


@pytest.mark.parametrize(("prefix", "site_name"), [
    ("RECAS", "NAPOLI.INFN.it"),   # RECAS.NAPOLI.INFN.it: four parts
    ("VCYCLE", "RECAS NAPOLI.it"),  # space
    ("VCYCLE", "RECAS-NAPOLI"),     # country code (dot) missing
    ("VCYCLE", "RECAS-NAPOLI.it."),  # empty last part
    ("VCYCLE", "RECAS/NAPOLI.it"),  # character DIRAC does not allow
])
def test_site_of_bad(prefix: str, site_name: str) -> None:
    instance = belle2(site_prefix=prefix)
    with pytest.raises(ValueError, match=re.escape("<Domain>.<Site>.<cc>")):
        dirac.site_of(instance, make_space([instance], site_name=site_name))


def test_site_of_needs_site_name() -> None:
    with pytest.raises(ValueError, match="site_name"):
        dirac.site_of(belle2(), make_space(site_name=None))


# ------------------------------------------------------------------------------------------
# pilot.json


def test_pilot_json_setups_format_keys_and_types() -> None:
    space = make_space()
    doc = dirac.pilot_json(belle2(version="v8.0.45", command_extensions=["Belle", "X"]), space)
    dirac.validate_pilot_json(doc)
    assert json.loads(json.dumps(doc)) == doc
    assert doc["DefaultSetup"] == "Belle-KEK"
    assert doc["ConfigurationServers"] == [KEK_CS]
    assert doc["CEs"] == {SPACE: {"Site": "VCYCLE.RECAS-NAPOLI.it", "GridCEType": "VMCloud",
                                  "LocalCEType": "Pool"}}
    setup = doc["Setups"]["Belle-KEK"]
    assert setup["Version"] == "v8.0.45" and isinstance(setup["Version"], str)
    assert setup["Project"] == "Belle"
    assert setup["CommandExtensions"] == "Belle,X"
    assert setup["Commands"] == {"VMCloud": list(dirac.STANDARD_COMMANDS)}
    assert setup["Commands"]["VMCloud"][0] == "CheckWorkerNode"
    assert setup["Commands"]["VMCloud"][-1] == "LaunchAgent"
    assert set(doc) == {"DefaultSetup", "ConfigurationServers", "GenericPilotDNs", "CEs",
                        "Setups"}  # no Operations sections, so the pilot takes this parser


def test_pilot_json_operations_format_keys_and_types() -> None:
    space = make_space()
    doc = dirac.pilot_json(gridpp(version="v9.0.1", command_extensions=["GridPP", "Y"]), space)
    dirac.validate_pilot_json(doc)
    assert "Setups" not in doc
    assert doc["DefaultSetup"] == "GridPP"
    assert doc["ConfigurationServers"] == [GRIDPP_CS, GRIDPP_CS.replace("dirac01", "dirac02")]
    assert doc["CEs"][SPACE] == {"Site": "CLOUD.RECAS-NAPOLI.it", "GridCEType": "VMCloud",
                                 "LocalCEType": "Pool"}
    pilot = doc["Defaults"]["Pilot"]
    assert pilot["Version"] == "v9.0.1"
    assert pilot["RemoteLogging"] == "False"  # a string: a JSON boolean crashes the pilot
    assert pilot["CommandExtensions"] == "GridPP,Y"
    assert pilot["CVMFS_locations"] == "/cvmfs/grid.cern.ch,/cvmfs/dirac.egi.eu"
    commands = pilot["Commands"]["Defaults"]
    assert isinstance(commands, str)
    assert [c.strip() for c in commands.split(",")] == list(dirac.STANDARD_COMMANDS)
    assert "Project" not in pilot  # vanilla DIRAC
    # one override slot per VO of this instance's machinetypes, none for Belle II's
    assert doc["t2k.org"] == {"Pilot": {}} and doc["hyperk.org"] == {"Pilot": {}}
    assert "belle" not in doc


@pytest.mark.parametrize("make", [belle2, gridpp])
def test_pilot_json_leaves_out_empty_version(make: Any) -> None:
    doc = dirac.pilot_json(make(), make_space())
    dirac.validate_pilot_json(doc)
    text = json.dumps(doc)
    assert '"Version"' not in text and "CHANGEME" not in text
    assert '"CommandExtensions"' not in text


def test_pilot_json_custom_types() -> None:
    instance = gridpp(ce_type="Vcycle", local_ce_type="Pool/Singularity",
                      cvmfs_locations=["/cvmfs/a", "/cvmfs/b", "/cvmfs/c"], project="GridPP")
    doc = dirac.pilot_json(instance, make_space([instance]))
    dirac.validate_pilot_json(doc)
    assert doc["CEs"][SPACE]["GridCEType"] == "Vcycle"
    assert doc["CEs"][SPACE]["LocalCEType"] == "Pool/Singularity"
    assert doc["Defaults"]["Pilot"]["CVMFS_locations"] == "/cvmfs/a,/cvmfs/b,/cvmfs/c"
    assert doc["Defaults"]["Pilot"]["Project"] == "GridPP"


def _ops() -> dict[str, Any]:
    return dirac.pilot_json(gridpp(version="v9.0.1"), make_space())


def _setups() -> dict[str, Any]:
    return dirac.pilot_json(belle2(version="v8.0.45"), make_space())


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, last = path.split("/")
    target = doc
    for part in parents:
        target = target[part]
    target[last] = value
    return doc


@pytest.mark.parametrize(("doc", "key"), [
    (_set(_ops(), "Defaults/Pilot/RemoteLogging", False), "Defaults/Pilot/RemoteLogging"),
    (_set(_ops(), "Defaults/Pilot/Version", ["v9.0.1"]), "Defaults/Pilot/Version"),
    (_set(_setups(), "Setups/Belle-KEK/Version", ["v8.0.45"]), "Setups/Belle-KEK/Version"),
    (_set(_ops(), "Defaults/Pilot/CommandExtensions", ["A"]), "Defaults/Pilot/CommandExtensions"),
    (_set(_ops(), "Defaults/Pilot/CVMFS_locations", ["/cvmfs/a"]),
     "Defaults/Pilot/CVMFS_locations"),
    (_set(_ops(), "t2k.org/Pilot/RemoteLogging", True), "t2k.org/Pilot/RemoteLogging"),
    (_set(_ops(), "Defaults/Pilot/Commands/Defaults", 3), "Defaults/Pilot/Commands/Defaults"),
    (_set(_ops(), f"CEs/{SPACE}/Site", "RECAS.NAPOLI.INFN.it"), f"CEs/{SPACE}/Site"),
    (_set(_ops(), "ConfigurationServers", "dips://h:9135/Configuration/Server"),
     "ConfigurationServers"),
    (_set(_ops(), "ConfigurationServers", []), "ConfigurationServers"),
    (_set(_ops(), "PreferredURLPatterns", "dips://.*"), "PreferredURLPatterns"),
    (_set(_setups(), "DefaultSetup", "Belle-Other"), "DefaultSetup"),
])
def test_schema_rejects_pitfalls(doc: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"pilot.json {key}:")):
        dirac.validate_pilot_json(doc)


@pytest.mark.parametrize("make", [_ops, _setups])
def test_schema_rejects_missing_configuration_servers(make: Any) -> None:
    doc = make()
    del doc["ConfigurationServers"]
    with pytest.raises(ValueError, match=r"pilot\.json ConfigurationServers: .*required"):
        dirac.validate_pilot_json(doc)


def test_schema_accepts_other_valid_shapes() -> None:
    # comma-string commands in the old format, list whitelist and numeric-string sizes
    doc = _setups()
    doc["Setups"]["Belle-KEK"]["Commands"]["VMCloud"] = "CheckWorkerNode, LaunchAgent"
    dirac.validate_pilot_json(doc)
    doc = _ops()
    doc["Defaults"]["Pilot"].update({"RemoteLogging": "True", "RemoteLoggerBufsize": "100",
                                     "RemoteLoggerTimerInterval": 30,
                                     "RemoteLoggerCEsWhiteList": [SPACE]})
    doc["Defaults"]["Shifter"] = {"DataManager": {"User": "x"}}
    dirac.validate_pilot_json(doc)
    with pytest.raises(ValueError, match="RemoteLoggerBufsize"):
        dirac.validate_pilot_json(_set(doc, "Defaults/Pilot/RemoteLoggerBufsize", "many"))
    with pytest.raises(ValueError, match=r"pilot.json \(top level\)"):
        dirac.validate_pilot_json(["not", "an", "object"])


# ------------------------------------------------------------------------------------------
# command line and identity


def _pairs(args: list[str]) -> dict[str, str]:
    return {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i] in
            ("-S", "-l", "-N", "-Q", "-n", "-y", "-r")}


def test_pilot_command_setups_instance() -> None:
    space = make_space()
    instance = belle2(version="v8.0.45")
    stamp = dirac.pilot_stamp("vm-1")
    args = dirac.pilot_command(instance, space, space.machinetypes["belle"], stamp,
                               "/scratch/plt/etc/grid-security")
    assert _pairs(args) == {"-S": "Belle-KEK", "-l": "Belle", "-N": SPACE, "-Q": "belle",
                            "-n": "VCYCLE.RECAS-NAPOLI.it", "-y": "Pool", "-r": "v8.0.45"}
    assert "--wnVO=belle" in args
    assert f"--pilotUUID={stamp}" in args
    assert "--CVMFS_locations=/cvmfs/grid.cern.ch,/cvmfs/dirac.egi.eu" in args
    cert = args.index("--cert")
    assert args[cert + 1] == "--certLocation=/scratch/plt/etc/grid-security"
    options = [args[i + 1] for i, a in enumerate(args) if a == "-o"]
    assert options == ["/Resources/Computing/CEDefaults/Tag=Cloud",
                       "/LocalSite/SubmitPool=cloudvac"]


def test_pilot_command_operations_instance_without_extras() -> None:
    space = make_space()
    args = dirac.pilot_command(gridpp(), space, space.machinetypes["t2k"], "ab" * 16, None)
    assert _pairs(args) == {"-S": "GridPP", "-N": SPACE, "-Q": "t2k",
                            "-n": "CLOUD.RECAS-NAPOLI.it", "-y": "Pool"}
    assert "-l" not in args and "-r" not in args and "-o" not in args  # nothing to pass
    assert "--cert" not in args and not any(a.startswith("--certLocation") for a in args)
    assert "--wnVO=t2k.org" in args


@pytest.mark.parametrize("mt", ["belle", "t2k", "hyperk"])
def test_pilot_command_never_uses_broken_options(mt: str) -> None:
    space = make_space()
    instance = space.dirac_instances[space.machinetypes[mt].dirac or ""]
    args = dirac.pilot_command(instance, space, space.machinetypes[mt], "0" * 32, "/c")
    assert all(isinstance(a, str) and a for a in args)
    # --Site is no option (getopt aborts the pilot); -K is declared but ignored
    assert not any(a.startswith("--Site") or a.startswith("-K") or a == "--site" for a in args)


def test_pilot_command_errors() -> None:
    space = make_space()
    novo = space.machinetypes["t2k"].model_copy(update={"vo": None})
    with pytest.raises(ValueError, match="needs vo"):
        dirac.pilot_command(gridpp(), space, novo, "0" * 32, None)
    with pytest.raises(ValueError, match="reports to 'belle2'"):
        dirac.pilot_command(gridpp(), space, space.machinetypes["belle"], "0" * 32, None)
    with pytest.raises(ValueError, match="stamp"):
        dirac.pilot_command(gridpp(), space, space.machinetypes["t2k"], "0" * 33, None)


def test_pilot_stamp() -> None:
    stamp = dirac.pilot_stamp("cloudvac-abc123-belle-x7k2p9q0zz")
    assert re.fullmatch(r"[0-9a-f]{32}", stamp)
    assert stamp == dirac.pilot_stamp("cloudvac-abc123-belle-x7k2p9q0zz")
    assert stamp != dirac.pilot_stamp("cloudvac-abc123-belle-x7k2p9q0zy")
    assert len(dirac.pilot_stamp("x" * 500)) == 32
    with pytest.raises(ValueError):
        dirac.pilot_stamp("")


def test_pilot_environment() -> None:
    env = dirac.pilot_environment(make_space(), "cloudvac-abc123-t2k-x")
    assert env == {"PILOT_UUID": f"vm://{SPACE}/cloudvac-abc123-t2k-x",
                   "DIRAC_PILOT_STAMP": dirac.pilot_stamp("cloudvac-abc123-t2k-x")}
    room = 255 - len(f"vm://{SPACE}/")
    assert len(dirac.pilot_environment(make_space(), "m" * room)["PILOT_UUID"]) == 255
    with pytest.raises(ValueError, match="255"):
        dirac.pilot_environment(make_space(), "m" * (room + 1))
    with pytest.raises(ValueError, match="ASCII"):
        dirac.pilot_environment(make_space(), "bad name")


# ------------------------------------------------------------------------------------------
# Site names per DIRAC instance

PAPER_BELLE2 = {"VCYCLE.Napoli.it", "VCYCLE.LAL.it", "VCYCLE.LPNHE.fr", "VCYCLE.EGI.eu"}
PAPER_GRIDPP = {"CLOUD.RECAS-NAPOLI.it", "CLOUD.GRIF.fr"}
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "cloudvac.d"


def test_site_name_per_instance_overrides_site_name() -> None:
    space = make_space().model_copy(update={"site_names": {"belle2": "Napoli.it"}})
    assert dirac.site_of(belle2(), space) == "VCYCLE.Napoli.it"
    assert dirac.site_of(gridpp(), space) == "CLOUD.RECAS-NAPOLI.it"
    assert dirac.pilot_json(belle2(), space)["CEs"][SPACE]["Site"] == "VCYCLE.Napoli.it"
    assert dirac.pilot_json(gridpp(), space)["CEs"][SPACE]["Site"] == "CLOUD.RECAS-NAPOLI.it"
    args = dirac.pilot_command(belle2(), space, space.machinetypes["belle"], "0" * 32, None)
    assert args[args.index("-n") + 1] == "VCYCLE.Napoli.it"
    # site_name may be left out when every instance has its own
    alone = make_space(site_name=None).model_copy(
        update={"site_names": {"belle2": "Napoli.it", "gridpp": "RECAS-NAPOLI.it"}})
    assert dirac.site_of(gridpp(), alone) == "CLOUD.RECAS-NAPOLI.it"


def shipped_config(tmp_path: Path) -> Path:
    """deploy/cloudvac.d as shipped, but with its secrets (and state) under ``tmp_path``:
    private stand-ins for the secret files, a real host certificate."""
    secrets, conf = tmp_path / "secrets", tmp_path / "conf"
    secrets.mkdir()
    conf.mkdir()
    for path in sorted(DEPLOY.glob("*.conf")):
        text = path.read_text().replace("/etc/cloudvac.d/secrets", str(secrets))
        (conf / path.name).write_text(text.replace("/var/lib/cloudvac", str(tmp_path / "state")))
    for name in ("napoli.password", "lal.password", "lpnhe.password", "egi.refresh_token",
                 "vm-pilot.key.pem"):
        (secrets / name).write_text("not a real secret\n")
        (secrets / name).chmod(0o600)
    (secrets / "vm-pilot.cert.pem").write_bytes(make_cert(HOST_SUBJECT))
    return conf


def test_shipped_config_has_the_papers_sites(tmp_path: Path) -> None:
    loaded = load_config_dir(shipped_config(tmp_path))
    assert loaded.issues == [] and loaded.broken == set()
    sites: dict[str, set[str]] = {}
    for space in loaded.spaces.values():
        for name, instance in space.dirac_instances.items():
            sites.setdefault(name, set()).add(dirac.site_of(instance, space))
    assert sites == {"belle2": PAPER_BELLE2, "gridpp": PAPER_GRIDPP}
    napoli = loaded.spaces["napoli.infn.it"]  # one project, both names
    assert dirac.site_of(napoli.dirac_instances["belle2"], napoli) == "VCYCLE.Napoli.it"
    assert dirac.site_of(napoli.dirac_instances["gridpp"], napoli) == "CLOUD.RECAS-NAPOLI.it"


SITE_SPACE = """\
[dirac belle2]
format = setups
site_prefix = VCYCLE
setup = Belle-KEK
configuration_servers = dips://dirac.cc.kek.jp:9135/Configuration/Server

[dirac gridpp]
format = operations
site_prefix = CLOUD
setup = GridPP
configuration_servers = dips://dirac01.grid.hep.ph.ic.ac.uk:9135/Configuration/Server

[space s.example]
api = sim
flavor_names = m1.small
{options}

[machinetype s.example belle]
dirac = belle2
vo = belle
"""


@pytest.mark.parametrize(("options", "line", "option", "message"), [
    ("site_name = RECAS-NAPOLI.it\nsite_name_belle2 = Napoli", 17, "site_name_belle2",
     "give site_name_belle2 as <Site>.<cc>"),
    ("site_name = RECAS-NAPOLI.it\nsite_name_gridpp = GRIF.fr", 17, "site_name_gridpp",
     "site name for [dirac gridpp], but no machinetype of this space reports to it"),
    ("site_name = RECAS-NAPOLI.it\nsite_name_belle = Napoli.it", 17, "site_name_belle",
     "no machinetype of this space reports to it and no such section exists"),
    ("site_name_gridpp = GRIF.fr", 13, "site_name",
     "or site_name_belle2 for [dirac belle2] alone"),
])
def test_site_name_errors_are_located(tmp_path: Path, options: str, line: int, option: str,
                                      message: str) -> None:
    (tmp_path / "10.conf").write_text(SITE_SPACE.format(options=options))
    loaded = load_config_dir(tmp_path)
    assert "s.example" in loaded.broken
    found = [(i.location.line, i.option) for i in loaded.issues if message in i.message]
    assert found == [(line, option)], [str(i) for i in loaded.issues]


def test_site_name_per_instance_loads(tmp_path: Path) -> None:
    (tmp_path / "10.conf").write_text(SITE_SPACE.format(
        options="site_name_belle2 = Napoli.it\nsite_name_gridpp = RECAS-NAPOLI.it")
        + "\n[machinetype s.example t2k]\ndirac = gridpp\nvo = t2k.org\n")
    loaded = load_config_dir(tmp_path)
    assert loaded.issues == []
    space = loaded.spaces["s.example"]
    assert space.site_name is None
    assert space.site_names == {"belle2": "Napoli.it", "gridpp": "RECAS-NAPOLI.it"}
    assert {dirac.site_of(i, space) for i in space.dirac_instances.values()} == {
        "VCYCLE.Napoli.it", "CLOUD.RECAS-NAPOLI.it"}


# ------------------------------------------------------------------------------------------
# CS snippet

HOST_SUBJECT = [(NameOID.DOMAIN_COMPONENT, "org"), (NameOID.DOMAIN_COMPONENT, "terena"),
                (NameOID.COUNTRY_NAME, "IT"), (NameOID.ORGANIZATION_NAME, "INFN"),
                (NameOID.COMMON_NAME, "vm-pilot.na.infn.it")]
HOST_DN = "/DC=org/DC=terena/C=IT/O=INFN/CN=vm-pilot.na.infn.it"
SIZES = {"belle": QueueSize(8, 16000, "flavor m1.xlarge (the cloud)"),
         "t2k": QueueSize(2, 0, "max_processors"), "hyperk": QueueSize(4, 7800)}


def make_cert(subject: list[tuple[x509.ObjectIdentifier, str]]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(oid, value) for oid, value in subject])
    now = datetime.datetime.now(datetime.UTC)
    cert = x509.CertificateBuilder().subject_name(name).issuer_name(name) \
        .public_key(key.public_key()).serial_number(1).not_valid_before(now) \
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM)


def _parse(text: str) -> CFG:
    return CFG().loadFromBuffer(text)


def _sections(cfg: CFG, path: str) -> list[str]:
    """The subsection names at ``path`` (``/A/B``) of ``cfg``."""
    for key in path.strip("/").split("/"):
        child = cfg[key]
        assert isinstance(child, CFG), f"{key} is not a section"
        cfg = child
    return list(cfg.listSections())


def test_cs_snippets_parse_and_have_the_queues() -> None:
    space = make_space()
    blocks = diraccs.cs_snippets(space, SIZES)
    assert list(blocks) == ["belle2", "gridpp"]

    kek = _parse(blocks["belle2"])
    site = "/Resources/Sites/VCYCLE/VCYCLE.RECAS-NAPOLI.it"
    ce = f"{site}/CEs/{SPACE}"
    assert kek.getOption(f"{site}/Name") == "RECAS-NAPOLI"
    assert kek.getOption(f"{site}/CE") == SPACE
    assert kek.getOption(f"{ce}/CEType") == "VMCloud"
    assert kek.getOption(f"{ce}/architecture") == "x86_64"
    assert kek.getOption(f"{ce}/OS") == "EL9"
    assert kek.getOption(f"{ce}/LocalCEType") == "Pool"
    assert kek.getOption(f"{ce}/VO", []) == ["belle"]
    assert kek.isSection(f"{ce}/Queues/belle")
    assert not kek.isSection(f"{ce}/Queues/t2k")  # another instance's machinetype
    queue = f"{ce}/Queues/belle"
    assert kek.getOption(f"{queue}/NumberOfProcessors") == "8"
    assert kek.getOption(f"{queue}/MaxRAM") == "16000"  # the flavor's RAM
    assert kek.getOption(f"{queue}/maxCPUTime") == str(172800 * 8 // 60)
    assert kek.getOption(f"{queue}/SI00") == "3125"  # 12.5 HS06 x 250
    assert kek.getOption(f"{queue}/VO", []) == ["belle"]
    assert kek.getOption(f"{queue}/Tag") == "MultiProcessor"
    assert not kek.isSection("/Registry")  # no host certificate given

    gpp = _parse(blocks["gridpp"])
    ce = f"/Resources/Sites/CLOUD/CLOUD.RECAS-NAPOLI.it/CEs/{SPACE}"
    assert sorted(gpp.getOption(f"{ce}/VO", [])) == ["hyperk.org", "t2k.org"]
    t2k, hyperk = f"{ce}/Queues/t2k", f"{ce}/Queues/hyperk"
    assert gpp.getOption(f"{t2k}/NumberOfProcessors") == "2"
    assert gpp.getOption(f"{t2k}/MaxRAM") == str(2 * 2048)  # RAM unknown: mb_per_processor
    assert gpp.getOption(f"{t2k}/maxCPUTime") == "121"  # ceil(3601 * 2 / 60)
    assert gpp.getOption(f"{t2k}/SI00") is None  # HS06 unknown
    assert gpp.getOption(f"{hyperk}/NumberOfProcessors") == "4"
    assert gpp.getOption(f"{hyperk}/MaxRAM") == "7800"
    assert gpp.getOption(f"{hyperk}/VO") == "hyperk.org"
    assert gpp.getOption(f"{hyperk}/Tag") == "MultiProcessor"
    assert not gpp.isSection("/Resources/Sites/VCYCLE")


def test_cs_text_follows_the_per_instance_site_name() -> None:
    """The path the pilot's CheckCECapabilities queries: /Resources/Sites/<Domain>/<Site>/
    CEs/<CE>/Queues/<queue>, Domain = first part of the Site."""
    space = make_space().model_copy(update={"site_names": {"belle2": "Napoli.it"}})
    expected = {"belle2": "VCYCLE.Napoli.it", "gridpp": "CLOUD.RECAS-NAPOLI.it"}
    for name, block in diraccs.cs_snippets(space, SIZES).items():
        cfg = _parse(block)
        site = expected[name]
        assert _sections(cfg, "/Resources/Sites") == [site.split(".")[0]]
        assert _sections(cfg, f"/Resources/Sites/{site.split('.')[0]}") == [site]
        assert block.startswith(f"# DIRAC instance {name}: site {site}, CE {SPACE}")
        for mt in space.machinetypes.values():
            path = f"/Resources/Sites/{site.split('.')[0]}/{site}/CEs/{SPACE}/Queues/{mt.name}"
            assert cfg.isSection(path) == (mt.dirac == name)


def test_cs_text_single_processor_has_no_multiprocessor_tag() -> None:
    sizes = SIZES | {"hyperk": QueueSize(1), "t2k": QueueSize(1)}
    cfg = _parse(diraccs.cs_text(gridpp(), make_space(), sizes))
    ce = f"/Resources/Sites/CLOUD/CLOUD.RECAS-NAPOLI.it/CEs/{SPACE}"
    assert cfg.getOption(f"{ce}/Queues/t2k/NumberOfProcessors") == "1"
    assert cfg.getOption(f"{ce}/Queues/t2k/Tag") is None
    assert cfg.getOption(f"{ce}/Queues/hyperk/Tag") is None


def test_cs_text_needs_every_queue_size() -> None:
    with pytest.raises(ValueError, match=re.escape("no processor count for machinetype(s) hyperk")):
        diraccs.cs_text(gridpp(), make_space(), {"t2k": QueueSize(8)})
    with pytest.raises(ValueError, match="processors must be >= 1"):
        diraccs.cs_text(gridpp(), make_space(), SIZES | {"t2k": QueueSize(0)})


def test_cs_text_registers_the_host_certificate(tmp_path: Path) -> None:
    cert = tmp_path / "hostcert.pem"
    cert.write_bytes(make_cert(HOST_SUBJECT))
    host = diraccs.host_identity(cert)
    assert host == diraccs.HostIdentity("vm-pilot.na.infn.it", HOST_DN)
    cfg = _parse(diraccs.cs_text(gridpp(), make_space(), SIZES, {"t2k": host, "hyperk": host}))
    assert _sections(cfg, "/Registry/Hosts") == ["vm-pilot.na.infn.it"]
    entry = "/Registry/Hosts/vm-pilot.na.infn.it"
    assert cfg.getOption(f"{entry}/DN") == HOST_DN
    assert cfg.getOption(f"{entry}/Properties", []) == ["GenericPilot", "LimitedDelegation"]
    assert cfg.isSection("/Resources/Sites/CLOUD")  # one CFG holding both


def test_host_identity_forms_and_errors(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_bytes(make_cert([(NameOID.COUNTRY_NAME, "UK"), (NameOID.COMMON_NAME,
                                                               "host/vm.example.ac.uk")]))
    assert diraccs.host_identity(cert) == diraccs.HostIdentity("vm.example.ac.uk",
                                                               "/C=UK/CN=host/vm.example.ac.uk")
    with pytest.raises(ValueError, match=re.escape(f"host certificate {tmp_path / 'none'}")):
        diraccs.host_identity(tmp_path / "none")
    cert.write_text("not PEM\n")
    with pytest.raises(ValueError, match=re.escape(f"host certificate {cert}")):
        diraccs.host_identity(cert)
    cert.write_bytes(make_cert([(NameOID.ORGANIZATION_NAME, "Foo, Inc."),
                                (NameOID.COMMON_NAME, "vm.example.org")]))
    with pytest.raises(ValueError, match="cannot be written in the CS format"):
        diraccs.host_identity(cert)


def test_cs_text_rejects_values_that_break_the_format() -> None:
    instance = gridpp(os="EL9 }")
    with pytest.raises(ValueError, match="OS"):
        diraccs.cs_text(instance, make_space([instance]), SIZES)
    mts = {"t2k": Machinetype(name="t2k", space=SPACE, vo="t2k.org,x", dirac="gridpp")}
    with pytest.raises(ValueError, match="VO"):
        diraccs.cs_text(gridpp(), make_space([gridpp()], mts=mts), SIZES)


# ------------------------------------------------------------------------------------------
# Queue sizes: the cloud's flavor, else max_processors, never min_processors


def _settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path)


def test_sizes_from_the_sim_clouds_flavors(tmp_path: Path) -> None:
    mts = {"belle": Machinetype(name="belle", space=SPACE, dirac="belle2", vo="belle",
                                flavor_names=["m1.xlarge"]),
           "t2k": Machinetype(name="t2k", space=SPACE, dirac="gridpp", vo="t2k.org",
                              min_processors=2, max_processors=4,
                              flavor_names=["m1.small", "m1.xlarge", "m1.large"])}
    space = make_space(mts=mts)
    sizes, problems = asyncio.run(resolve_sizes(space, _settings(tmp_path),
                                                list(mts.values())))
    assert problems == []
    assert sizes == {"belle": QueueSize(8, 16384, "flavor m1.xlarge (the cloud)"),
                     "t2k": QueueSize(4, 8192, "flavor m1.large (the cloud)")}


class _Unreachable:
    async def flavor(self, names: Sequence[str], min_processors: int,
                     max_processors: int | None) -> Flavor:
        raise Retryable("flavors: cannot reach the cloud (ConnectFailure)")


def test_sizes_fall_back_to_max_processors(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CloudFactory, "get", lambda self, space, settings: _Unreachable())
    space = make_space()
    sizes, problems = asyncio.run(resolve_sizes(space, _settings(tmp_path),
                                                list(space.machinetypes.values())))
    # belle has max_processors = 8; t2k and hyperk have none: no size rather than 1 or 2
    assert sizes == {"belle": QueueSize(8, 0, "max_processors (the cloud did not answer)")}
    assert problems == [
        f"the cloud of space {SPACE} did not answer: Retryable: flavors: cannot reach the "
        "cloud (ConnectFailure)",
        "machinetype t2k: cannot tell its processors (set max_processors, or run where the "
        "cloud answers)",
        "machinetype hyperk: cannot tell its processors (set max_processors, or run where the "
        "cloud answers)"]


def test_sizes_when_no_flavor_fits(tmp_path: Path) -> None:
    mts = {"belle": Machinetype(name="belle", space=SPACE, dirac="belle2", vo="belle",
                                min_processors=16, max_processors=32,
                                flavor_names=["m1.xlarge"])}
    sizes, problems = asyncio.run(resolve_sizes(make_space(mts=mts), _settings(tmp_path),
                                                list(mts.values())))
    assert sizes == {"belle": QueueSize(32, 0, "max_processors (no flavor of the cloud fits)")}
    assert len(problems) == 1 and problems[0].startswith("machinetype belle: no flavor among")
