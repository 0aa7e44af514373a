"""Smoke contract tests: openstacksdk against REAL Nova 34 (+ REAL Keystone 30) on 127.0.0.1.

OBSERVED FACTS (Nova 34.0.0 / Keystone 30.0.0, asserted below; the OpenStack adapter and the
simulated cloud must copy them):
  * Nova errors are wrapped {"<name>": {"code": N, "message": str}}, Content-Type
    "application/json; charset=UTF-8":
      quota 403   {"forbidden": {"code": 403, "message": "Quota exceeded for cores: Requested
                  8, but already used 0 of 6 cores"}}   (POST /servers, m1.xlarge, cores=6;
                  openstacksdk raises ForbiddenException; NOT 413/overLimit)
      flavor 400  {"badRequest": {"code": 400, "message": "Flavor nope could not be found."}}
                  (unknown image: 400 "Can not find requested image"; SDK BadRequestException)
      gone 404    {"itemNotFound": {"code": 404, "message": "Instance <id> could not be
                  found."}}  (GET or DELETE of a deleted/unknown server)
      marker 400  unknown ?marker= -> {"badRequest": ...}
  * 401 (Keystone 30, wrong password on POST /v3/auth/tokens; the shim copies it exactly):
      {"error": {"code": 401, "message": "The request you have made requires
      authentication.", "title": "Unauthorized"}}; keystoneauth raises Unauthorized
      (http_status 401) but Connection.authorize() re-raises a bare SDKException
      "... (HTTP 401)". A bad token on Nova also gives 401 (body from our front, in the
      keystonemiddleware shape, with WWW-Authenticate: Keystone uri="...").
  * Create -> 202 and BUILD (ACTIVE ~0.6-1 s later on an idle oracle); unschedulable flavor
    -> 202, then ERROR, vm_state "error", fault {"code": 500, "message": "No valid host was
    found. ...", "created": ...} (no "details" for non-admins). Delete -> 204, the server
    stays visible (task_state deleting; per the reference note) until the compute
    finishes, then 404 (asserted).
  * Pagination: page size = min(limit, [api] max_limit); a larger limit is silently capped
    (200). Non-last pages carry servers_links [{"rel": "next", "href":
    ".../servers/detail?limit=2&marker=<last id on page>"}]; the last page has none.
    Paging while servers go BUILD -> ACTIVE is unstable (a BUILD server is listed from the
    API DB, an ACTIVE one from its cell, in a different order): openstacksdk returned 5
    rows for 3 servers once. De-duplicate by id; do not rely on list order.

Run: bash tests/oracle/setup.sh && .venv/bin/pytest -m contract tests/contract
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import pytest

from tests.contract.conftest import connect

pytestmark = pytest.mark.contract

MICROVERSION = "2.96"
WAIT_S = 60  # bound for every BUILD -> ACTIVE/ERROR and delete wait


def _server_kwargs(nova: Any, name: str, flavor: str = "1") -> dict[str, Any]:
    return {
        "name": name,
        "image_id": nova["image_id"],
        "flavor_id": flavor,
        "networks": "none",
    }


def _raw(conn: Any, method: str, path: str, **kw: Any) -> Any:
    """Raw compute request through the SDK session; never raises on HTTP errors."""
    return conn.compute.request(path, method, microversion=MICROVERSION, raise_exc=False, **kw)


def _delete_and_wait(conn: Any, servers: list[Any]) -> None:
    for s in servers:
        conn.compute.delete_server(s, ignore_missing=True)
    for s in servers:
        conn.compute.wait_for_delete(s, interval=0.5, wait=WAIT_S)


def _wait_status(conn: Any, server: Any, status: str) -> Any:
    failures = [] if status == "ERROR" else ["ERROR"]
    return conn.compute.wait_for_server(
        server, status=status, failures=failures, interval=0.5, wait=WAIT_S
    )


# -- shim (no Keystone) --------------------------------------------------------------------


def test_create_with_metadata_and_user_data_goes_active_then_delete(
    nova_shim: Any, shim_conn: Any
) -> None:
    user_data = base64.b64encode(b"#cloud-config\nruncmd: [echo cloudvac]\n").decode()
    meta = {"cloudvac:space": "oracle.example", "cloudvac:machinetype": "belle"}
    t0 = time.monotonic()
    created = shim_conn.compute.create_server(
        **_server_kwargs(nova_shim, "cv-smoke-active"), metadata=meta, user_data=user_data
    )
    try:
        post_s = time.monotonic() - t0
        first = _raw(shim_conn, "GET", f"/servers/{created.id}")
        assert first.status_code == 200
        assert first.json()["server"]["status"] in ("BUILD", "ACTIVE")
        server = _wait_status(shim_conn, created, "ACTIVE")
        active_s = time.monotonic() - t0
        assert server.metadata == meta
        assert server.name == "cv-smoke-active"
        print(f"create POST {post_s:.2f}s, ACTIVE after {active_s:.2f}s")
    finally:
        shim_conn.compute.delete_server(created, ignore_missing=True)
    # delete is asynchronous: 204 now, 404 only once the compute finished
    shim_conn.compute.wait_for_delete(created, interval=0.5, wait=WAIT_S)
    gone = _raw(shim_conn, "GET", f"/servers/{created.id}")
    assert gone.status_code == 404
    assert gone.json() == {
        "itemNotFound": {"code": 404, "message": f"Instance {created.id} could not be found."}
    }
    again = _raw(shim_conn, "DELETE", f"/servers/{created.id}")
    assert again.status_code == 404


def test_list_follows_pagination(nova_shim: Any, shim_conn: Any) -> None:
    assert nova_shim["max_limit"] == 2
    made = [
        shim_conn.compute.create_server(**_server_kwargs(nova_shim, f"cv-page-{i}"))
        for i in range(3)
    ]
    try:
        ids = {s.id for s in made}
        # Paging while servers move BUILD -> ACTIVE is not stable: a BUILD server is listed
        # from the API DB's build requests, an ACTIVE one from its cell, with a different
        # order, so a marker walk can return a server twice (seen: 5 rows for 3 servers) or
        # miss one. Clients must de-duplicate by id. Wait for a stable set first.
        for s in made:
            _wait_status(shim_conn, s, "ACTIVE")
        # the SDK follows servers_links (page size capped to max_limit=2 by Nova)
        listed = [s.id for s in shim_conn.compute.servers(details=True, limit=2)]
        assert ids <= set(listed)
        assert len(listed) == len(set(listed))
        # raw pages: 2 + link, then the rest without link
        seen: list[str] = []
        url = "/servers/detail?limit=2"
        pages = 0
        while url and pages < 10:
            r = _raw(shim_conn, "GET", url)
            assert r.status_code == 200
            body = r.json()
            assert len(body["servers"]) <= 2
            seen += [s["id"] for s in body["servers"]]
            nxt = [lk["href"] for lk in body.get("servers_links", []) if lk["rel"] == "next"]
            url = nxt[0].split("/v2.1", 1)[1] if nxt else ""
            if nxt:
                assert f"marker={body['servers'][-1]['id']}" in nxt[0]
            pages += 1
        assert set(seen) == set(listed)
        assert pages == 2  # 3 servers, pages of 2 -> exactly 2 pages
        # a limit above max_limit is silently capped (200, not 400)
        big = _raw(shim_conn, "GET", "/servers?limit=100")
        assert big.status_code == 200
        assert len(big.json()["servers"]) == 2
        assert big.json()["servers_links"][0]["rel"] == "next"
        # an unknown marker is 400
        bad = _raw(shim_conn, "GET", f"/servers?marker={uuid.uuid4()}")
        assert bad.status_code == 400
        assert "badRequest" in bad.json()
    finally:
        _delete_and_wait(shim_conn, made)


def test_quota_exceeded_is_403_forbidden(nova_shim: Any, shim_conn: Any) -> None:
    import openstack.exceptions as osexc

    cores = nova_shim["quota"]["cores"]
    xlarge = next(f for f in nova_shim["flavors"] if f["vcpus"] > cores)
    with pytest.raises(osexc.ForbiddenException) as err:
        shim_conn.compute.create_server(**_server_kwargs(nova_shim, "cv-quota", xlarge["id"]))
    assert err.value.status_code == 403
    r = _raw(
        shim_conn,
        "POST",
        "/servers",
        json={
            "server": {
                "name": "cv-quota",
                "imageRef": nova_shim["image_id"],
                "flavorRef": xlarge["id"],
                "networks": "none",
            }
        },
    )
    assert r.status_code == 403
    body = r.json()
    assert list(body) == ["forbidden"]
    assert body["forbidden"]["code"] == 403
    msg = body["forbidden"]["message"]
    assert msg.startswith(
        f"Quota exceeded for cores: Requested {xlarge['vcpus']}, but already used"
    ), msg
    assert msg.endswith(f"of {cores} cores"), msg
    limits = _raw(shim_conn, "GET", "/limits").json()["limits"]["absolute"]
    assert limits["maxTotalCores"] == cores


def test_bad_flavor_is_400(nova_shim: Any, shim_conn: Any) -> None:
    import openstack.exceptions as osexc

    with pytest.raises(osexc.BadRequestException):
        shim_conn.compute.create_server(**_server_kwargs(nova_shim, "cv-bad", "nope"))
    r = _raw(
        shim_conn,
        "POST",
        "/servers",
        json={
            "server": {
                "name": "cv-bad",
                "imageRef": nova_shim["image_id"],
                "flavorRef": "nope",
                "networks": "none",
            }
        },
    )
    assert r.status_code == 400
    assert r.json() == {"badRequest": {"code": 400, "message": "Flavor nope could not be found."}}


def test_unschedulable_flavor_goes_error_with_fault(nova_shim: Any, shim_conn: Any) -> None:
    server = shim_conn.compute.create_server(
        **_server_kwargs(nova_shim, "cv-novalidhost", nova_shim["unschedulable_flavor_id"])
    )
    try:
        server = _wait_status(shim_conn, server, "ERROR")
        assert server.fault["code"] == 500
        assert server.fault["message"].startswith("No valid host was found."), server.fault
        raw = _raw(shim_conn, "GET", f"/servers/{server.id}").json()["server"]
        assert raw["status"] == "ERROR"
        assert raw["OS-EXT-STS:vm_state"] == "error"
        assert "details" not in raw["fault"]  # traceback only for admins
    finally:
        _delete_and_wait(shim_conn, [server])


def test_wrong_password_is_401(nova_shim: Any) -> None:
    import openstack.exceptions as osexc
    from keystoneauth1 import exceptions as ksa_exc

    conn = connect(nova_shim, password="wrong")
    with pytest.raises(ksa_exc.Unauthorized) as err:
        conn.session.get_token()
    assert err.value.http_status == 401
    # Connection.authorize() re-raises as a bare SDKException: the status survives only
    # in the text, so the adapter should call session.get_token() (or map ksa errors).
    with pytest.raises(osexc.SDKException, match=r"\(HTTP 401\)"):
        conn.authorize()
    conn.close()


def test_unknown_token_is_401(nova_shim: Any) -> None:
    import requests

    r = requests.get(
        nova_shim["compute_url"] + "/servers", headers={"X-Auth-Token": "not-a-token"}, timeout=30
    )
    assert r.status_code == 401
    assert r.json()["error"]["code"] == 401


# -- real Keystone in front of Nova ------------------------------------------------------


def test_keystone_password_auth_drives_nova(keystone: Any, nova_keystone: Any) -> None:
    conn = connect(nova_keystone)
    try:
        assert (
            conn.session.get_endpoint(service_type="compute", interface="public").rstrip("/")
            == nova_keystone["compute_url"]
        )
        server = conn.compute.create_server(
            **_server_kwargs(nova_keystone, "cv-ks-pw"), metadata={"cloudvac:space": "ks"}
        )
        try:
            server = _wait_status(conn, server, "ACTIVE")
            assert server.project_id == keystone["project_id"]
            assert server.user_id == keystone["user_id"]
            assert server.id in {s.id for s in conn.compute.servers()}
        finally:
            _delete_and_wait(conn, [server])
    finally:
        conn.close()


def test_keystone_application_credential(keystone: Any, nova_keystone: Any) -> None:
    conn = connect(
        nova_keystone,
        auth_type="v3applicationcredential",
        application_credential_id=keystone["app_credential_id"],
        application_credential_secret=keystone["app_credential_secret"],
        username=None,
        password=None,
        project_name=None,
        user_domain_name=None,
        project_domain_name=None,
    )
    try:
        listed = list(conn.compute.servers())
        assert isinstance(listed, list)
        limits = _raw(conn, "GET", "/limits")
        assert limits.status_code == 200
    finally:
        conn.close()


def test_keystone_wrong_password_401_matches_shim(keystone: Any, nova_shim: Any) -> None:
    import requests

    def token_post(auth_url: str, user: str) -> Any:
        return requests.post(
            auth_url + "/auth/tokens",
            timeout=30,
            json={
                "auth": {
                    "identity": {
                        "methods": ["password"],
                        "password": {
                            "user": {
                                "name": user,
                                "password": "wrong",
                                "domain": {"name": "Default"},
                            }
                        },
                    }
                }
            },
        )

    real = token_post(keystone.auth_url, keystone.username)
    shim = token_post(nova_shim.auth_url, nova_shim.username)
    assert real.status_code == shim.status_code == 401
    assert (
        real.json()
        == shim.json()
        == {
            "error": {
                "code": 401,
                "message": "The request you have made requires authentication.",
                "title": "Unauthorized",
            }
        }
    )


def test_keystone_bad_token_401_from_nova(nova_keystone: Any) -> None:
    import requests

    r = requests.get(
        nova_keystone["compute_url"] + "/servers",
        headers={"X-Auth-Token": "gAAAAAbogus"},
        timeout=30,
    )
    assert r.status_code == 401


def test_oracle_resource_usage(nova_shim: Any, keystone: Any, nova_keystone: Any) -> None:
    for info in (nova_shim, keystone, nova_keystone):
        rss = info.rss_mb()
        print(
            f"{info.kind}: startup {info['startup_s']}s launch {info['launch_s']}s "
            f"RSS now {rss:.0f} MB"
        )
        assert rss is not None and rss < 1024
