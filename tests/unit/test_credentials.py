"""Check-in configuration rules and long-lived credential expiry warnings (no network)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from cloudvac.auth.checkin import CheckinClient, CheckinTokenSource
from cloudvac.config import Machinetype, Settings, Space
from cloudvac.config.openstack import OpenStackSpace
from cloudvac.engine.cycle import SpaceCycle
from cloudvac.engine.metrics import EngineMetrics
from cloudvac.engine.tools import CycleTools
from cloudvac.model.cloud import Credential, Flavor, Limits, MachineSpec, ObservedMachine
from cloudvac.store import Store

NOW = 1_800_000_000.0


def jwt(payload: dict[str, object]) -> str:
    def part(doc: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none'})}.{part(payload)}.c2ln"


def test_refresh_token_expiry_from_a_jwt(tmp_path: Path) -> None:
    file = tmp_path / "rt"
    file.write_text(jwt({"exp": NOW + 86400, "typ": "Refresh"}))
    file.chmod(0o600)
    source = CheckinTokenSource(CheckinClient("https://aai.example/realm", "c",
                                              "refresh_token", "openid", lambda: None, file))
    assert source.refresh_token_expires_at() == NOW + 86400
    file.write_text("opaque-refresh-token")
    assert source.refresh_token_expires_at() is None
    source.close()


@pytest.mark.parametrize(("options", "words"), [
    ({"egi_checkin_refresh_token": "x", "egi_checkin_client_id": "c",
      "auth_url": "https://k/v3", "egi_project_id": "p"},
     "inline secrets are refused; use egi_checkin_refresh_token_file"),
    ({"egi_checkin_client_id": "c", "auth_url": "https://k/v3", "egi_project_id": "p"},
     "needs egi_checkin_client_secret_file or _env"),
    ({"egi_checkin_client_id": "c", "egi_checkin_client_secret_env": "S"},
     "auth_url, or egi_site and egi_vo for discovery"),
])
def test_checkin_options(options: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        OpenStackSpace(auth="egi_checkin", **options)


def test_discovery_alone_is_enough() -> None:
    options = OpenStackSpace(auth="egi_checkin", egi_checkin_client_id="c",
                             egi_checkin_client_secret_env="S", egi_site="IFCA-LCG2",
                             egi_vo="belle")
    assert options.checkin_grant == "client_credentials" and options.auth_url is None


class ExpiringCloud:
    """A cloud with no machines whose refresh token expires in ``days``."""

    def __init__(self, days: float) -> None:
        self.days = days

    async def list_machines(self) -> Sequence[ObservedMachine]:
        return []

    async def limits(self) -> Limits:
        return Limits()

    async def flavor(self, names: Sequence[str], lo: int, hi: int | None) -> Flavor:
        return Flavor("m1.small", 1)

    async def create_machine(self, spec: MachineSpec) -> str:
        raise AssertionError("nothing to create")

    async def delete_machine(self, cloud_id: str) -> None:
        return None

    async def find_machine(self, name: str) -> ObservedMachine | None:
        return None

    async def close(self) -> None:
        return None

    def credentials(self) -> list[Credential]:
        return [Credential("keystone", NOW + 3000),
                Credential("checkin_refresh", NOW + self.days * 86400,
                           "Check-in refresh token")]


@pytest.mark.parametrize(("days", "warned"), [(3, True), (60, False)])
def test_warning_ahead_of_refresh_token_expiry(tmp_path: Path, days: float,
                                               warned: bool) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db'}")
    mt = Machinetype(name="belle", space="s.example", target_share=0)
    space = Space(name="s.example", api="sim", flavor_names=["m1.small"],
                  machinetypes={"belle": mt})
    cycle = SpaceCycle(ExpiringCloud(days), Settings(state_dir=tmp_path),
                       CycleTools(store, EngineMetrics(), clock=lambda: NOW))
    for _ in range(3):  # repeated cycles warn once (then every few hours at most)
        assert asyncio.run(cycle.run(space)).ok
    errors = [e.message for e in store.events("s.example") if e.kind == "error"]
    assert store.credentials()["s.example"]["checkin_refresh"] == NOW + days * 86400
    assert errors == ([f"Check-in refresh token expires in {days:.1f} days: renew it before "
                       "then"] if warned else [])
    store.close()
