"""One URL and file layout (``model/layout.py``) for the web routes, the user_data VMs get,
the simulated pilots and the in-VM agent."""

from __future__ import annotations

import ast
import asyncio
import json
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from cloudvac.auth.vmtokens import TokenSigner
from cloudvac.clouds.simpilots import HttpPilots
from cloudvac.config import Machinetype, Settings, Space
from cloudvac.context import agent, vmfeatures, vmupload
from cloudvac.context.userdata import AGENT_FILES, FEATURES_DIR, ContextRenderer
from cloudvac.model import layout
from cloudvac.model.records import MachineRecord
from cloudvac.model.states import MachineState, ShutdownMessage
from cloudvac.web.app import create_app
from cloudvac.web.context import WebContext
from cloudvac.web.mjf import job_features, machine_features
from cloudvac.web.operator import create_operator_app, operator_access

SIGNER = TokenSigner(b"k" * 32)
SETTINGS = Settings(web_url="https://vac.example:8443")
MT = Machinetype(name="belle", space="s.example", target_share=1)
SPACE = Space(name="s.example", api="sim", flavor_names=["m1.small"], machinetypes={"belle": MT})
NAME = "cloudvac-abcdef-belle-0123456789"


def test_every_layout_path_is_a_route_of_the_app(tmp_path: object) -> None:
    ctx = WebContext(SETTINGS, None, SIGNER, None, dict, CollectorRegistry())  # type: ignore
    routes = set(create_app(ctx).openapi()["paths"])
    templates = {layout.JOBOUTPUT, layout.MACHINEFEATURE, layout.JOBFEATURE, layout.USER_DATA,
                 layout.HEARTBEATLIST}
    assert routes == templates, "the VMs' door serves what VMs need, nothing more"
    access = operator_access(SETTINGS.model_copy(update={"operator_listen": "127.0.0.1:0"}))
    operator = create_operator_app(create_app(ctx), access)
    paths = set(operator.openapi()["paths"])
    assert paths == {"/healthz", "/metrics", "/status", "/api/status"}
    assert not templates & paths


def test_vms_are_told_the_layout_urls() -> None:
    renderer = ContextRenderer(SETTINGS, SIGNER)
    urls = renderer.urls(SPACE, MT, NAME)
    assert urls == layout.machine_urls("https://vac.example:8443", "s.example", "belle", NAME)
    assert urls["joboutputs_url"] == \
        f"https://vac.example:8443/machines/s.example/{NAME}/joboutputs"
    assert urls["heartbeat_machines_url"] == \
        "https://vac.example:8443/heartbeatlists/s.example/belle"
    config = renderer.agent_config(SPACE, MT, NAME)
    assert config["joboutputs_url"] == urls["joboutputs_url"]
    assert config["heartbeat_file"] == layout.HEARTBEAT_FILE
    assert config["heartbeat_period_seconds"] == MT.heartbeat_period == 60


def test_the_agent_uses_the_same_file_names() -> None:
    """The agent is shipped alone into VMs (it imports nothing of cloudvac), so its own
    constants are checked against the layout here."""
    assert vmupload.DEFAULTS["heartbeat_file"] == layout.HEARTBEAT_FILE
    assert vmupload.SHUTDOWN_FILE == layout.SHUTDOWN_FILE
    assert set(json.loads(json.dumps(ContextRenderer(SETTINGS, SIGNER).agent_config(
        SPACE, MT, NAME)))) - {"token", "joboutputs_url"} <= set(vmupload.DEFAULTS)


@pytest.mark.parametrize("file", AGENT_FILES)
def test_the_agent_files_are_python36_and_import_the_stdlib_and_each_other(file: str) -> None:
    """What ships into a VM together (test_agent.py runs it from such a copy); checked
    wherever an import is, as a run would miss one inside a function."""
    tree = ast.parse(Path(agent.__file__).with_name(file).read_text(), feature_version=(3, 6))
    siblings = {name.removesuffix(".py") for name in AGENT_FILES}
    allowed = siblings | {f"cloudvac.context.{name}" for name in siblings}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == "cloudvac.context":
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or "." * node.level]
        else:
            continue
        wrong = [n for n in names if n not in allowed
                 and n.split(".")[0] not in sys.stdlib_module_names]
        assert wrong == [], f"{file}:{node.lineno} imports {wrong}"


def test_the_agent_fetches_every_feature_the_web_serves() -> None:
    """The agent asks for its own key lists; a key the web serves but the agent does not
    know would never reach the pilot."""
    mt = MT.model_copy(update={"hs06_per_processor": 10.0})
    record = MachineRecord(space=SPACE.name, name=NAME, machinetype="belle",
                           state=MachineState.RUNNING, processors=8, created_at=1.8e9)
    assert set(machine_features(SPACE, mt, record, 1.9e9)) <= set(vmfeatures.MACHINE_KEYS)
    assert set(job_features(SPACE, mt, record, 1.9e9)) <= set(vmfeatures.JOB_KEYS)
    assert set(vmfeatures.CHANGING_KEYS) <= {*vmfeatures.MACHINE_KEYS, *vmfeatures.JOB_KEYS}
    config = ContextRenderer(SETTINGS, SIGNER).agent_config(SPACE, mt, NAME)
    urls = layout.machine_urls(SETTINGS.web_base_url, SPACE.name, "belle", NAME)
    assert config["machinefeatures_url"] == urls["machinefeatures_url"]
    assert config["jobfeatures_url"] == urls["jobfeatures_url"]
    assert config["features_dir"] == FEATURES_DIR == vmupload.DEFAULTS["features_dir"]
    parsed = vmupload.Config(config)  # every value valid for the shipped agent
    assert (parsed.machinefeatures_url, parsed.features_dir) == (
        urls["machinefeatures_url"], FEATURES_DIR)


def test_simulated_pilots_put_where_vms_put() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(204)

    async def scenario() -> None:
        pilots = HttpPilots("http://127.0.0.1:9", SIGNER,
                            httpx.AsyncClient(transport=httpx.MockTransport(handler)))
        await pilots.heartbeat("s.example", NAME, time.time(), "beat")
        await pilots.shutdown("s.example", NAME, ShutdownMessage(200, "ok"), time.time())
        await pilots.close()

    asyncio.run(scenario())
    base = f"/machines/s.example/{NAME}/joboutputs"
    assert seen == [f"{base}/beat", f"{base}/{layout.SHUTDOWN_FILE}"]


def test_heartbeat_names_say_one_thing_each() -> None:
    """Staleness limit, agent period and list horizon: separate, with derived defaults."""
    plain = Machinetype(name="a", space="s", heartbeat_file="hb", heartbeat_seconds=900)
    assert (plain.heartbeat_period, plain.heartbeat_list_horizon) == (300, 900)
    short = Machinetype(name="a", space="s", heartbeat_file="hb", heartbeat_seconds=12)
    assert short.heartbeat_period == 10  # never more often than every 10 s
    none = Machinetype(name="a", space="s")
    assert (none.heartbeat_period, none.heartbeat_list_horizon, none.heartbeat_check) == \
        (60, 3600, False)
    own = Machinetype(name="a", space="s", heartbeat_file="hb", heartbeat_seconds=900,
                      heartbeat_period_seconds=45, heartbeat_list_seconds=120)
    assert (own.heartbeat_period, own.heartbeat_list_horizon) == (45, 120)
