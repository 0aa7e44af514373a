"""Smoke tests of the federation oracle: REAL Keystone 30 OS-FEDERATION behind a bearer shim
(standing in for mod_auth_openidc) + a local OIDC provider + REAL Nova, all on 127.0.0.1,
driven with plain keystoneauth1 and raw HTTP. They prove the oracle before cloudvac's own
EGI Check-in code is written against it.

OBSERVED FACTS (asserted below):
  * OP token endpoint: refresh grant 200 {access_token (opaque), expires_in, scope,
    token_type "Bearer"}, no new refresh_token unless rotation is on; revoked refresh token
    -> 400 {"error": "invalid_grant", "error_description": "invalid refresh token"};
    bad client secret on client_credentials -> 401 {"error": "invalid_client"}.
  * Federation POST .../identity_providers/egi.eu/protocols/{openid,oidc}/auth with
    ``Authorization: Bearer`` -> 201, X-Subject-Token, body token.methods == [protocol],
    user.name == OIDC sub, user.OS-FEDERATION {identity_provider.id "egi.eu", protocol.id,
    groups}. No bearer / bad bearer / OP down -> 401 from the shim with
    ``WWW-Authenticate: Bearer error="invalid_token"``; entitlement not matching the mapping
    -> 401 from Keystone (``WWW-Authenticate: Keystone uri=...``, generic body).
  * The same OIDC user federating through BOTH protocols of one IdP: the second protocol
    answers 409 Conflict "... federated_user - Duplicate entry." (Keystone 30 derives the
    user id from IdP domain + sub only, but looks shadow users up per protocol).
  * Rescope with the token method -> 201, roles member + reader, catalog identity + compute,
    expires_at identical to the unscoped token's.
"""

from __future__ import annotations

import time
import urllib.error
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
import requests
from keystoneauth1 import exceptions as ka_exc
from keystoneauth1 import session as ka_session
from keystoneauth1.identity import v3

from tests.contract.conftest import KEYSTONE_START_S, budget, launch

pytestmark = pytest.mark.contract

HTTP_TIMEOUT = 30


def _fed_url(ks: Any, protocol: str = "openid") -> str:
    url: str = ks["federation"]["auth_urls"][protocol]
    return url


def _new_user(op: Any, ks: Any, *, entitled: bool = True) -> tuple[str, dict[str, Any]]:
    """A fresh OIDC user (unique sub) with or without the VO's vm_operator entitlement, and
    the token response of its (headless) authorization-code login."""
    sub = f"user-{uuid.uuid4().hex[:12]}@example.org"
    ent = ks["federation"]["entitlement"]
    claims = {
        "email": sub,
        "eduperson_entitlement": [ent if entitled else ent.replace("vm_operator", "member")],
    }
    return sub, op.mint_tokens(sub, claims)


def _federate(ks: Any, access_token: str, protocol: str = "openid") -> requests.Response:
    return requests.post(
        _fed_url(ks, protocol),
        headers={"Authorization": "Bearer " + access_token},
        timeout=HTTP_TIMEOUT,
    )


def _before_expiry(lifetime: float, attempt: Callable[[], requests.Response]) -> requests.Response:
    """``attempt()`` gets a new token living ``lifetime`` s and uses it at once: its answer,
    unless that is a 401 which may be the token's expiry (the attempt took longer than the
    lifetime less a second: token times are whole seconds), as on a loaded machine. Then a
    new attempt with a new token, up to five."""
    for _ in range(5):
        t0 = time.monotonic()
        r = attempt()
        if r.status_code != 401 or time.monotonic() - t0 < lifetime - 1:
            return r
    pytest.fail(f"five attempts each took longer than the {lifetime} s token lifetime")


def _access_token_plugin(ks: Any, access_token: str, protocol: str = "openid") -> Any:
    return v3.OidcAccessToken(
        auth_url=ks.auth_url,
        identity_provider=ks["federation"]["idp"],
        protocol=protocol,
        access_token=access_token,
        project_id=ks["vo_project_id"],
    )


def test_refresh_grant_federation_and_rescope(oidc_provider: Any, keystone_federation: Any) -> None:
    op, ks = oidc_provider, keystone_federation
    sub, login = _new_user(op, ks)
    assert login["refresh_token"] and login["token_type"] == "Bearer"

    status, tok = op.refresh(login["refresh_token"])
    assert status == 200, tok
    assert set(tok) >= {"access_token", "expires_in", "scope", "token_type"}
    assert "eduperson_entitlement" in tok["scope"].split()
    assert "refresh_token" not in tok  # no rotation by default (old one stays valid)

    r = _federate(ks, tok["access_token"])
    assert r.status_code == 201, r.text
    unscoped = r.headers["X-Subject-Token"]
    body = r.json()["token"]
    assert body["methods"] == ["openid"]
    assert body["user"]["name"] == sub
    fed = body["user"]["OS-FEDERATION"]
    assert fed["identity_provider"]["id"] == "egi.eu"
    assert fed["protocol"]["id"] == "openid"
    assert fed["groups"] == [{"id": ks["federation"]["group_id"]}]

    r = requests.get(
        ks.auth_url + "/auth/projects", headers={"X-Auth-Token": unscoped}, timeout=HTTP_TIMEOUT
    )
    assert r.status_code == 200
    assert [(p["id"], p["name"]) for p in r.json()["projects"]] == [
        (ks["vo_project_id"], "vo.example.eu")
    ]

    r = requests.post(
        ks.auth_url + "/auth/tokens",
        json={
            "auth": {
                "identity": {"methods": ["token"], "token": {"id": unscoped}},
                "scope": {"project": {"id": ks["vo_project_id"]}},
            }
        },
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code == 201, r.text
    scoped = r.json()["token"]
    assert {x["name"] for x in scoped["roles"]} == {"member", "reader"}
    assert {c["type"] for c in scoped["catalog"]} == {"identity", "compute"}
    assert scoped["expires_at"] == body["expires_at"]  # rescoping does not extend

    # the same through keystoneauth's static access-token plugin
    sess = ka_session.Session(auth=_access_token_plugin(ks, tok["access_token"]))
    assert sess.get_project_id() == ks["vo_project_id"]
    assert sess.get_user_id() == body["user"]["id"]


def test_client_credentials_with_keystoneauth_plugin(
    oidc_provider: Any, keystone_federation: Any
) -> None:
    op, ks = oidc_provider, keystone_federation
    before = op.stats()["token_requests_by_grant"].get("client_credentials", 0)
    auth = v3.OidcClientCredentials(
        auth_url=ks.auth_url,
        identity_provider="egi.eu",
        protocol="openid",
        client_id=op["client_id"],
        client_secret=op["client_secret"],
        discovery_endpoint=op["discovery_url"],
        scope="openid eduperson_entitlement",
        project_id=ks["vo_project_id"],
    )
    sess = ka_session.Session(auth=auth)
    assert sess.get_project_id() == ks["vo_project_id"]
    ref = auth.get_access(sess)  # cached: no second grant
    assert ref.username == op["client_sub"]  # Check-in style "<hex>@egi.eu" subject
    assert ref.role_names is not None
    assert set(ref.role_names) == {"member", "reader"}
    assert ref.project_id == ks["vo_project_id"]
    assert op.stats()["token_requests_by_grant"]["client_credentials"] == before + 1

    status, body = op.client_credentials(client_secret="wrong")
    assert status == 401 and body["error"] == "invalid_client"


def test_wrong_entitlement_is_401(oidc_provider: Any, keystone_federation: Any) -> None:
    op, ks = oidc_provider, keystone_federation
    _, login = _new_user(op, ks, entitled=False)
    r = _federate(ks, login["access_token"])
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Keystone uri=")  # Keystone, not the shim
    assert r.json()["error"]["code"] == 401

    # spoofed claim headers are scrubbed by the shim, as mod_auth_openidc does
    r = requests.post(
        _fed_url(ks),
        headers={
            "Authorization": "Bearer " + login["access_token"],
            "OIDC-eduperson_entitlement": ks["federation"]["entitlement"],
            "OIDC-Eduperson-Entitlement": ks["federation"]["entitlement"],
        },
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code == 401

    with pytest.raises(ka_exc.Unauthorized):
        ka_session.Session(auth=_access_token_plugin(ks, login["access_token"])).get_token()


def test_shim_rejects_missing_or_bad_bearer(keystone_federation: Any) -> None:
    ks = keystone_federation
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic eA=="}):
        r = requests.post(_fed_url(ks), headers=headers, timeout=HTTP_TIMEOUT)
        assert r.status_code == 401, headers
        assert r.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


def test_revoked_refresh_token_is_invalid_grant(
    oidc_provider: Any, keystone_federation: Any
) -> None:
    op, ks = oidc_provider, keystone_federation
    sub, login = _new_user(op, ks)
    status, tok = op.refresh(login["refresh_token"])
    assert status == 200
    op.revoke_user_tokens(sub)
    status, body = op.refresh(login["refresh_token"])
    assert status == 400
    assert body["error"] == "invalid_grant"
    r = _federate(ks, tok["access_token"])  # the access token is revoked too
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


def test_oidc_protocol_and_protocol_switch_conflict(
    oidc_provider: Any, keystone_federation: Any
) -> None:
    op, ks = oidc_provider, keystone_federation
    _, login = _new_user(op, ks)
    r = _federate(ks, login["access_token"], "oidc")
    assert r.status_code == 201, r.text
    assert r.json()["token"]["methods"] == ["oidc"]
    assert r.json()["token"]["user"]["OS-FEDERATION"]["protocol"]["id"] == "oidc"
    sess = ka_session.Session(auth=_access_token_plugin(ks, login["access_token"], "oidc"))
    assert sess.get_project_id() == ks["vo_project_id"]

    # the same user through the other protocol of the same IdP: real Keystone 30 says 409
    r = _federate(ks, login["access_token"], "openid")
    assert r.status_code == 409, r.text
    assert "Duplicate entry" in r.json()["error"]["message"]

    r = requests.post(  # a protocol that is not an enabled auth method
        _fed_url(ks).replace("/protocols/openid/", "/protocols/saml2/"),
        headers={"Authorization": "Bearer " + login["access_token"]},
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code == 401
    assert "unsupported method" in r.json()["error"]["message"]


def test_nova_lists_servers_with_federated_token(oidc_provider: Any, nova_federation: Any) -> None:
    op, nova = oidc_provider, nova_federation
    ks_auth_url = nova.auth_url
    status, tok = op.client_credentials()
    assert status == 200
    # the VO project by name, as a site config might give it
    auth = v3.OidcAccessToken(
        auth_url=ks_auth_url,
        identity_provider="egi.eu",
        protocol="openid",
        access_token=tok["access_token"],
        project_name="vo.example.eu",
        project_domain_id="default",
    )
    sess = ka_session.Session(auth=auth)
    r = sess.get(
        "/servers",
        endpoint_filter={"service_type": "compute", "interface": "public"},
        raise_exc=False,
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"servers": []}
    # without a token Nova refuses
    url = sess.get_endpoint(service_type="compute", interface="public")
    assert url is not None
    assert requests.get(url + "/servers", timeout=HTTP_TIMEOUT).status_code == 401


def test_provider_down_then_restarted_keeps_refresh_tokens(
    oidc_provider: Any, keystone_federation: Any
) -> None:
    op, ks = oidc_provider, keystone_federation
    _, login = _new_user(op, ks)
    status, tok = op.refresh(login["refresh_token"])
    assert status == 200
    op.stop()
    try:
        with pytest.raises(urllib.error.URLError):
            op.refresh(login["refresh_token"])
        r = _federate(ks, tok["access_token"])  # shim cannot reach userinfo
        assert r.status_code == 401
        assert "unreachable" in r.json()["error"]["message"]
    finally:
        t0 = time.monotonic()
        op.start()
        restart_s = time.monotonic() - t0
    assert restart_s < 30
    status, tok2 = op.refresh(login["refresh_token"])  # state survived the restart
    assert status == 200, tok2
    assert _federate(ks, tok2["access_token"]).status_code == 201


def test_short_access_token_lifetime(oidc_provider: Any, keystone_federation: Any) -> None:
    op, ks = oidc_provider, keystone_federation
    previous = op.configure(access_token_lifetime=4)["access_token_lifetime"]
    try:
        issued: dict[str, Any] = {}

        def federate_a_new_service_token() -> requests.Response:
            status, issued["cc"] = op.client_credentials()
            assert status == 200 and issued["cc"]["expires_in"] == 4
            return _federate(ks, issued["cc"]["access_token"])

        assert _before_expiry(4, federate_a_new_service_token).status_code == 201
        _, login = _new_user(op, ks)
        status, rt = op.refresh(login["refresh_token"])
        assert status == 200 and rt["expires_in"] == 4
        time.sleep(5)  # both access tokens expire meanwhile (the refreshed one was issued last)
        for access_token in (issued["cc"]["access_token"], rt["access_token"]):
            assert op.userinfo(access_token)[0] == 401
            r = _federate(ks, access_token)
            assert r.status_code == 401
            assert r.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    finally:
        op.configure(access_token_lifetime=previous)
    assert op.configure()["access_token_lifetime"] == previous


# starts its own Keystone, then waits for a token's expiry
@budget(KEYSTONE_START_S + 10)
def test_keystone_token_expiration_and_introspection_shim(oidc_provider: Any) -> None:
    """A second federated Keystone: tokens live 4 s (for client expiry tests) and the shim
    validates bearer tokens by RFC 7662 introspection instead of userinfo."""
    op = oidc_provider
    op.set_client("keystone-rp", "keystone-rp-secret", {})  # the site's introspection client
    before = op.stats()["introspection_requests"]
    with launch.keystone_oracle(
        launch.KeystoneOptions(with_compute=False, app_credential=False, token_expiration=4),
        oidc=op,
        federation=launch.FederationOptions(
            oidc_validation="introspection",
            introspection_client=("keystone-rp", "keystone-rp-secret"),
        ),
    ) as ks:
        assert ks["token_expiration"] == 4
        assert ks["federation"]["validation"] == "introspection"
        status, cc = op.client_credentials()
        assert status == 200
        _, login = _new_user(op, ks)
        for access_token in (cc["access_token"], login["access_token"]):  # JWT and opaque
            assert _federate(ks, access_token).status_code == 201
        assert op.stats()["introspection_requests"] == before + 2

        federated: list[requests.Response] = []

        def validate_a_new_token() -> requests.Response:  # a token validates itself
            federated.append(_federate(ks, cc["access_token"]))
            assert federated[-1].status_code == 201, federated[-1].text
            subject = federated[-1].headers["X-Subject-Token"]
            check = {"X-Auth-Token": subject, "X-Subject-Token": subject}
            return requests.get(ks.auth_url + "/auth/tokens", headers=check, timeout=30)

        assert _before_expiry(4, validate_a_new_token).ok
        token = federated[-1].json()["token"]
        issued = datetime.fromisoformat(token["issued_at"].replace("Z", "+00:00"))
        expires = datetime.fromisoformat(token["expires_at"].replace("Z", "+00:00"))
        assert (expires - issued).total_seconds() == 4
        subject = federated[-1].headers["X-Subject-Token"]
        check = {"X-Auth-Token": subject, "X-Subject-Token": subject}
        time.sleep(5)  # the token expires meanwhile
        r = requests.get(ks.auth_url + "/auth/tokens", headers=check, timeout=30)
        assert r.status_code == 401, r.text  # an expired token cannot validate itself
        r = requests.post(
            ks.auth_url + "/auth/tokens",
            json={
                "auth": {
                    "identity": {"methods": ["token"], "token": {"id": subject}},
                    "scope": {"project": {"id": ks["vo_project_id"]}},
                }
            },
            timeout=30,
        )
        assert r.status_code == 404, r.text  # rescoping an expired token
        assert r.json()["error"]["message"] == "Failed to validate token"
