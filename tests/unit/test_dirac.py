"""DIRAC context pieces: pilot.json (both formats), its schema, the pilot command line, the
pilot identity and the CS snippet (research-dirac §1.3-§1.10, §4, §6)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from diraccfg import CFG

from cloudvac.config.dirac import DiracInstance
from cloudvac.config.models import Machinetype, Space
from cloudvac.context import dirac

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
# CS snippet


def _parse(text: str) -> CFG:
    return CFG().loadFromBuffer(text)


def test_cs_snippets_parse_and_have_the_queues() -> None:
    space = make_space()
    blocks = dirac.cs_snippets(space, {"hyperk": 4})
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
    assert kek.getOption(f"{queue}/NumberOfProcessors") == "8"  # max_processors
    assert kek.getOption(f"{queue}/MaxRAM") == "16000"
    assert kek.getOption(f"{queue}/maxCPUTime") == str(172800 * 8 // 60)
    assert kek.getOption(f"{queue}/SI00") == "3125"  # 12.5 HS06 x 250
    assert kek.getOption(f"{queue}/VO", []) == ["belle"]
    assert kek.getOption(f"{queue}/Tag") == "MultiProcessor"

    gpp = _parse(blocks["gridpp"])
    ce = f"/Resources/Sites/CLOUD/CLOUD.RECAS-NAPOLI.it/CEs/{SPACE}"
    assert sorted(gpp.getOption(f"{ce}/VO", [])) == ["hyperk.org", "t2k.org"]
    t2k, hyperk = f"{ce}/Queues/t2k", f"{ce}/Queues/hyperk"
    assert gpp.getOption(f"{t2k}/NumberOfProcessors") == "2"  # min_processors
    assert gpp.getOption(f"{t2k}/maxCPUTime") == "121"  # ceil(3601 * 2 / 60)
    assert gpp.getOption(f"{t2k}/SI00") is None  # HS06 unknown
    assert gpp.getOption(f"{hyperk}/NumberOfProcessors") == "4"  # from the mapping
    assert gpp.getOption(f"{hyperk}/MaxRAM") == str(4 * 2048)
    assert gpp.getOption(f"{hyperk}/VO") == "hyperk.org"
    assert gpp.getOption(f"{hyperk}/Tag") == "MultiProcessor"
    assert not gpp.isSection("/Resources/Sites/VCYCLE")


def test_cs_snippet_queue_paths_follow_the_site_name() -> None:
    """The path the pilot's CheckCECapabilities queries: /Resources/Sites/<Domain>/<Site>/
    CEs/<CE>/Queues/<queue>, Domain = first part of the Site."""
    space = make_space()
    for name, block in dirac.cs_snippets(space).items():
        cfg = _parse(block)
        instance = space.dirac_instances[name]
        site = dirac.site_of(instance, space)
        for mt in space.machinetypes.values():
            path = f"/Resources/Sites/{site.split('.')[0]}/{site}/CEs/{SPACE}/Queues/{mt.name}"
            assert cfg.isSection(path) == (mt.dirac == name)
            if mt.dirac == name:
                assert cfg.getOption(f"{path}/VO") == mt.vo


def test_cs_snippet_single_processor_has_no_multiprocessor_tag() -> None:
    space = make_space()
    cfg = _parse(dirac.cs_snippets(space, {"hyperk": 1, "t2k": 1})["gridpp"])
    ce = f"/Resources/Sites/CLOUD/CLOUD.RECAS-NAPOLI.it/CEs/{SPACE}"
    assert cfg.getOption(f"{ce}/Queues/t2k/NumberOfProcessors") == "1"
    assert cfg.getOption(f"{ce}/Queues/t2k/Tag") is None
    assert cfg.getOption(f"{ce}/Queues/hyperk/Tag") is None


def test_cs_snippet_joined_form() -> None:
    space = make_space()
    text = dirac.cs_snippet(space)
    blocks = dirac.cs_snippets(space)
    assert text == "\n".join(blocks.values())
    headers = [line for line in text.splitlines() if line.startswith("#")]
    assert len(headers) == 2
    assert headers[0].startswith("# DIRAC instance belle2")
    assert headers[1].startswith("# DIRAC instance gridpp")
    for block in blocks.values():  # each block starts with its comment and parses alone
        assert block.startswith("# DIRAC instance ")
        assert _parse(block).isSection("/Resources/Sites")
    # a single-instance space's joined text is one loadable CFG, comment line included
    single = make_space([gridpp()], mts={k: v for k, v in machinetypes().items()
                                         if v.dirac == "gridpp"})
    assert _parse(dirac.cs_snippet(single)).isSection("/Resources/Sites/CLOUD")
    assert dirac.cs_snippet(make_space([], mts={"x": Machinetype(name="x", space=SPACE)})) == ""


def test_cs_snippet_rejects_values_that_break_the_format() -> None:
    instance = gridpp(os="EL9 }")
    with pytest.raises(ValueError, match="OS"):
        dirac.cs_snippets(make_space([instance]))
    mts = {"t2k": Machinetype(name="t2k", space=SPACE, vo="t2k.org,x", dirac="gridpp")}
    with pytest.raises(ValueError, match="VO"):
        dirac.cs_snippets(make_space([gridpp()], mts=mts))
