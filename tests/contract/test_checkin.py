"""cloudvac's EGI Check-in authentication against REAL Keystone federation, a local OIDC
provider and REAL Nova (all on 127.0.0.1; fixtures in conftest.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from cloudvac.auth.checkin import (
    CheckinClient,
    CheckinTokenSource,
    fingerprint,
    rotated_path,
)
from cloudvac.auth.keystone import checkin_source
from cloudvac.clouds.openstack import OpenStackCloud
from cloudvac.config import Machinetype, Settings, Space
from cloudvac.config.openstack import OpenStackSpace
from cloudvac.engine.metrics import EngineMetrics
from cloudvac.model.cloud import TAG_MACHINETYPE, TAG_MANAGER, TAG_SPACE, MachineSpec
from cloudvac.model.errors import AuthFailed, Retryable
from cloudvac.model.naming import name_prefix

pytestmark = pytest.mark.contract
SPACE = "egi.example"
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")


def secret_file(tmp_path: Path, name: str, value: str) -> Path:
    path = tmp_path / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def user(op: Any, ks: Any, entitled: bool = True) -> tuple[str, str]:
    """A new Check-in user with (or without) the VO's vm_operator entitlement: (sub, RT)."""
    sub = f"user-{uuid.uuid4().hex[:12]}@example.org"
    entitlement = ks["federation"]["entitlement"]
    if not entitled:
        entitlement = entitlement.replace("vm_operator", "member")
    tokens = op.mint_tokens(sub, {"email": sub, "eduperson_entitlement": [entitlement]})
    return sub, tokens["refresh_token"]


def space(nova: Any, ks: Any, **options: Any) -> Space:
    os_options = OpenStackSpace(auth="egi_checkin", auth_url=ks.auth_url,
                                egi_checkin_url=ks["federation"]["issuers"][0],
                                egi_project_id=ks["vo_project_id"], egi_vo=ks["vo"],
                                region_name="RegionOne", networks=["none"], **options)
    mt = Machinetype(name="belle", space=SPACE, target_share=1, root_image=nova["image_id"])
    return Space(name=SPACE, api="openstack", openstack=os_options,
                 flavor_names=["m1.small"], machinetypes={"belle": mt})


def refresh_space(nova: Any, ks: Any, op: Any, tmp_path: Path, rt: str, **extra: Any) -> Space:
    return space(nova, ks, egi_checkin_client_id="cloudvac-rp",
                 egi_checkin_client_secret_file=secret_file(tmp_path, "rp", "cloudvac-rp-secret"),
                 egi_checkin_refresh_token_file=secret_file(tmp_path, "rt", rt), **extra)


def grants(op: Any, grant: str) -> int:
    return int(op.stats()["token_requests_by_grant"].get(grant, 0))


def test_refresh_grant_end_to_end_and_transparent_reauth(oidc_provider: Any, keystone_federation:
                                                        Any, nova_federation: Any,
                                                        tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    caplog.set_level(logging.DEBUG)
    op, ks, nova = oidc_provider, keystone_federation, nova_federation
    _, rt = user(op, ks)
    cloud = OpenStackCloud(refresh_space(nova, ks, op, tmp_path, rt), Settings(),
                           EngineMetrics())
    before = grants(op, "refresh_token")

    async def flow() -> tuple[list[str], str, str]:
        small = await cloud.flavor(["m1.small"], 1, None)
        cloud_id = await cloud.create_machine(MachineSpec(
            name=name_prefix(SPACE) + "egi", space=SPACE, machinetype="belle", flavor=small,
            image=nova["image_id"], user_data="#cloud-config\n",
            metadata={TAG_SPACE: SPACE, TAG_MACHINETYPE: "belle", TAG_MANAGER: "cloudvac"}))
        listed = [m.cloud_id for m in await cloud.list_machines()]
        first = await asyncio.to_thread(cloud.session.get_token)  # type: ignore[union-attr]
        admin = requests.post(f"{ks.auth_url}/auth/tokens", timeout=30, json={"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": ks["admin_username"], "domain": {"id": "default"},
                "password": ks["admin_password"]}}},
            "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}})
        revoked = requests.delete(f"{ks.auth_url}/auth/tokens", timeout=30, headers={
            "X-Auth-Token": admin.headers["X-Subject-Token"], "X-Subject-Token": first})
        assert revoked.status_code == 204
        # Nova (like keystonemiddleware) caches validated tokens, so the revocation shows at
        # Keystone first: the next identity call gets 401, the session re-authenticates once
        # (a new Check-in access token, a new federated token) and the call succeeds.
        projects = await asyncio.to_thread(
            cloud.session.get, "/auth/projects",  # type: ignore[union-attr]
            endpoint_filter={"service_type": "identity", "interface": "public"})
        assert projects.status_code == 200
        listed_again = [m.cloud_id for m in await cloud.list_machines()]
        second = await asyncio.to_thread(cloud.session.get_token)  # type: ignore[union-attr]
        await cloud.delete_machine(cloud_id)
        await cloud.close()
        assert cloud_id in listed and cloud_id in listed_again
        return listed, first, second

    _, first, second = asyncio.run(flow())
    assert first != second
    # two federated logins, one Check-in call: the access token was still valid
    assert grants(op, "refresh_token") - before == 1
    text = caplog.text
    for secret in (rt, first, second, "cloudvac-rp-secret"):
        assert secret not in text
    assert not JWT.search(text)


def test_client_credentials_service_account(oidc_provider: Any, keystone_federation: Any,
                                            nova_federation: Any, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    op, ks, nova = oidc_provider, keystone_federation, nova_federation
    the_space = space(nova, ks, egi_checkin_client_id=op["client_id"],
                      egi_checkin_client_secret_file=secret_file(tmp_path, "sa",
                                                                 op["client_secret"]))
    assert the_space.openstack is not None
    assert the_space.openstack.checkin_grant == "client_credentials"
    metrics = EngineMetrics()
    cloud = OpenStackCloud(the_space, Settings(), metrics)
    before = grants(op, "client_credentials")
    for _ in range(3):
        asyncio.run(cloud.list_machines())
    expiry = {c.kind: c.expires_at for c in cloud.credentials()}
    asyncio.run(cloud.close())
    assert grants(op, "client_credentials") - before == 1
    assert expiry["keystone"] > time.time() + 60 and expiry["checkin_access"] > time.time()
    assert op["client_secret"] not in caplog.text and not JWT.search(caplog.text)
    gauge = metrics.token_expiry_seconds.labels(SPACE, "keystone")._value.get()
    assert gauge > 60


def test_revoked_refresh_token_marks_credential_dead_without_retry_storm(
        oidc_provider: Any, keystone_federation: Any, nova_federation: Any,
        tmp_path: Path) -> None:
    op, ks, nova = oidc_provider, keystone_federation, nova_federation
    sub, rt = user(op, ks)
    op.revoke_user_tokens(sub)
    cloud = OpenStackCloud(refresh_space(nova, ks, op, tmp_path, rt), Settings(),
                           EngineMetrics())
    before = grants(op, "refresh_token")
    for _ in range(3):
        with pytest.raises(AuthFailed, match="refresh token expired or revoked"):
            asyncio.run(cloud.list_machines())
    assert grants(op, "refresh_token") - before == 1, "asked once, then marked dead"
    _, fresh = user(op, ks)
    secret_file(tmp_path, "rt", fresh)  # the operator replaces the file
    time.sleep(0.01)
    asyncio.run(cloud.list_machines())  # works again, no restart needed
    assert grants(op, "refresh_token") - before == 2
    asyncio.run(cloud.close())


def test_wrong_entitlement_gets_a_diagnosis(oidc_provider: Any, keystone_federation: Any,
                                           nova_federation: Any, tmp_path: Path) -> None:
    op, ks, nova = oidc_provider, keystone_federation, nova_federation
    _, rt = user(op, ks, entitled=False)
    cloud = OpenStackCloud(refresh_space(nova, ks, op, tmp_path, rt), Settings(),
                           EngineMetrics())
    with pytest.raises(AuthFailed) as caught:
        asyncio.run(cloud.list_machines())
    asyncio.run(cloud.close())
    message = str(caught.value)
    assert "refused the Check-in access token (401)" in message
    assert f"urn:mace:egi.eu:group:{ks['vo']}:role=vm_operator#aai.egi.eu" in message


def test_oidc_protocol(oidc_provider: Any, keystone_federation: Any, nova_federation: Any,
                       tmp_path: Path) -> None:
    op, ks, nova = oidc_provider, keystone_federation, nova_federation
    _, rt = user(op, ks)
    metrics = EngineMetrics()
    cloud = OpenStackCloud(refresh_space(nova, ks, op, tmp_path, rt, egi_protocol="oidc"),
                           Settings(), metrics)
    asyncio.run(cloud.list_machines())
    assert cloud.session is not None
    assert "/protocols/oidc/auth" in cloud.session.auth.federated_token_url  # type: ignore
    assert metrics.auth_calls.labels(SPACE)._value.get() == 1
    asyncio.run(cloud.close())


def test_provider_down_keeps_the_keystone_token_then_fails_clearly(
        oidc_provider: Any, keystone_federation: Any, nova_federation: Any,
        tmp_path: Path) -> None:
    op, ks, nova = oidc_provider, keystone_federation, nova_federation
    _, rt = user(op, ks)
    cloud = OpenStackCloud(refresh_space(nova, ks, op, tmp_path, rt), Settings(),
                           EngineMetrics())
    asyncio.run(cloud.list_machines())
    op.stop()
    try:
        asyncio.run(cloud.list_machines())  # the Keystone token is still valid: no OP needed
        assert cloud.session is not None and cloud.session.auth is not None
        cloud.session.auth.invalidate()  # as when the Keystone token nears its expiry
        assert cloud.checkin is not None
        cloud.checkin._token = None  # and the access token has expired too
        for _ in range(2):
            with pytest.raises(Retryable, match="Check-in"):
                asyncio.run(cloud.list_machines())
    finally:
        op.start()
    asyncio.run(cloud.close())


def rp_source(ks: Any, file: Path, state: Path) -> CheckinTokenSource:
    """A token source as a daemon builds it: the relying party's refresh grant, rotated
    tokens kept under the state directory."""
    options = OpenStackSpace(auth="egi_checkin", auth_url=ks.auth_url,
                             egi_checkin_url=ks["federation"]["issuers"][0],
                             egi_project_id=ks["vo_project_id"],
                             egi_checkin_client_id="cloudvac-rp",
                             egi_checkin_client_secret_file=secret_file(
                                 state.parent, "rp", "cloudvac-rp-secret"),
                             egi_checkin_refresh_token_file=file)
    return checkin_source(options, state_dir=state)


def test_rotated_refresh_token_is_kept_in_the_state_directory(
        oidc_provider: Any, keystone_federation: Any, tmp_path: Path) -> None:
    """The configured file (under /etc/cloudvac.d, read-only to the daemon) is never
    written; a restart uses the rotated copy; an operator's new token wins over it."""
    op, ks = oidc_provider, keystone_federation
    sub, rt = user(op, ks)
    conf, state = tmp_path / "conf", tmp_path / "state"
    conf.mkdir()
    op.configure(rotate_refresh_tokens=True)
    try:
        file = secret_file(conf, "egi.refresh", rt)
        source = rp_source(ks, file, state)
        token = source.access_token()
        source.close()
        assert file.read_text() == rt + "\n" and sorted(conf.iterdir()) == [file]
        copy = rotated_path(file, state / "checkin")
        assert sorted((state / "checkin").iterdir()) == [copy]
        assert copy.stat().st_mode & 0o777 == 0o600
        assert (state / "checkin").stat().st_mode & 0o777 == 0o700
        rotated = copy.read_text().splitlines()[0]
        assert rotated not in (rt, token.value)
        assert rt not in copy.read_text()
        assert op.refresh(rt, client_id="cloudvac-rp")[0] == 400  # the old one is gone

        restarted = rp_source(ks, file, state)  # a restart: the copy is used
        assert restarted.access_token().value
        restarted.close()

        # The operator puts a new token in place, even one with an older time than the
        # copy (cp -p, a restore): the configured token wins, its rotation replaces the copy.
        op.revoke_user_tokens(sub)  # had the copy been used, the grant would fail
        _, fresh = user(op, ks)
        secret_file(conf, "egi.refresh", fresh)
        os.utime(file, (1_000_000_000, 1_000_000_000))
        replaced = rp_source(ks, file, state)
        assert replaced.access_token().value
        replaced.close()
        text = copy.read_text()
        assert text.splitlines()[0] not in (rotated, fresh)
        assert f"sha256:{fingerprint(fresh)} in {file}" in text
    finally:
        op.configure(rotate_refresh_tokens=False)


def test_rotation_without_a_state_directory_stays_in_memory(
        oidc_provider: Any, keystone_federation: Any, tmp_path: Path) -> None:
    op, ks = oidc_provider, keystone_federation
    _, rt = user(op, ks)
    op.configure(rotate_refresh_tokens=True)
    try:
        file = secret_file(tmp_path, "rt", rt)
        source = CheckinTokenSource(CheckinClient(
            ks["federation"]["issuers"][0], "cloudvac-rp", "refresh_token",
            "openid profile eduperson_entitlement", lambda: "cloudvac-rp-secret", file))
        token = source.access_token()
        assert file.read_text() == rt + "\n" and sorted(tmp_path.iterdir()) == [file]
        assert op.refresh(rt, client_id="cloudvac-rp")[0] == 400  # the old one is gone
        assert source.access_token(force=True).value != token.value  # the new one works
        source.close()
    finally:
        op.configure(rotate_refresh_tokens=False)


def test_a_rotated_token_that_cannot_be_saved_is_kept_in_memory(
        oidc_provider: Any, keystone_federation: Any, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    op, ks = oidc_provider, keystone_federation
    _, rt = user(op, ks)
    state = tmp_path / "state"
    state.write_text("a file where the state directory should be\n")
    op.configure(rotate_refresh_tokens=True)
    try:
        source = rp_source(ks, secret_file(tmp_path, "rt", rt), state)
        with caplog.at_level(logging.ERROR, logger="cloudvac.auth.checkin"):
            token = source.access_token()  # no crash: the new token is used
        assert "cannot be saved to" in caplog.text and "kept in memory only" in caplog.text
        assert op.refresh(rt, client_id="cloudvac-rp")[0] == 400  # the old one is gone
        assert source.access_token(force=True).value != token.value  # memory's works
        source.close()
    finally:
        op.configure(rotate_refresh_tokens=False)


def test_expiry_with_a_controllable_clock(oidc_provider: Any, keystone_federation: Any,
                                          tmp_path: Path) -> None:
    op, ks = oidc_provider, keystone_federation
    _, rt = user(op, ks)
    now = [1_000_000.0]
    source = CheckinTokenSource(CheckinClient(
        ks["federation"]["issuers"][0], "cloudvac-rp", "refresh_token",
        "openid profile eduperson_entitlement", lambda: "cloudvac-rp-secret",
        secret_file(tmp_path, "rt", rt)), clock=lambda: now[0])
    before = grants(op, "refresh_token")
    first = source.access_token()
    lifetime = first.expires_at - now[0]
    now[0] += lifetime - 61  # still more than a minute left: reused
    assert source.access_token() is first
    now[0] += 2  # under a minute left: renewed
    assert source.access_token() is not first
    assert grants(op, "refresh_token") - before == 2
    source.close()

