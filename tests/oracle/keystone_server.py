"""Serve REAL Keystone (v3, SQLite, fernet tokens) on 127.0.0.1 for cloudvac's contract tests.

Runs inside .venv-oracle (see setup.sh). Everything lives in a temporary directory that is
removed on exit. Bootstraps with keystone-manage (db_sync, fernet/credential keys, bootstrap),
serves Keystone's public WSGI app with a threaded wsgiref server, then creates through the
real API: a project, a user with the member role on it, optionally an application credential
of that user, and optionally a compute service + endpoints (``--compute-url``) so clients
find Nova in the catalog. Provisioning uses tokens of an hour whatever ``--token-expiration``
says; that lifetime applies to every token issued after it (see
``provisioning_token_lifetime``).

``--federation`` adds OIDC federation as at an EGI FedCloud site (see
launch.py ``keystone_oracle(oidc=..., federation=...)``): auth methods
``password,token,openid,oidc,application_credential`` with ``remote_id_attribute =
HTTP_OIDC_ISS``, ``[federation] default_authorization_ttl``, and a WSGI shim in front of
Keystone (same process) standing in for Apache mod_auth_openidc ``AuthType oauth20`` on
``/v3/OS-FEDERATION/identity_providers/<idp>/protocols/<proto>/auth``: it requires a Bearer
token, validates it at the OP (``--oidc-issuer``: userinfo, or RFC 7662 introspection),
scrubs client-sent ``OIDC*``/``REMOTE_USER`` headers and exports the claims (lists joined
with ``;``). Through the admin API it creates the VO project, a group with ``member`` on it,
IdP ``egi.eu`` (remote_ids = the issuers), a mapping on the VO's ``role=vm_operator``
entitlement and protocols ``openid`` and ``oidc``.

Prints one line ``CLOUDVAC_ORACLE_READY {json}`` on stdout, then serves until SIGTERM/SIGINT
and exits 0. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

if TYPE_CHECKING:
    import requests

T0 = time.monotonic()
READY_PREFIX = "CLOUDVAC_ORACLE_READY "


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0, help="0 = any free port (default)")
    p.add_argument(
        "--compute-url",
        default=None,
        help="register a compute service with this endpoint URL in the catalog",
    )
    p.add_argument("--admin-password", default="admin-secret")
    p.add_argument("--username", default="cloudvac")
    p.add_argument("--password", default="cloudvac-secret")
    p.add_argument("--project-name", default="cloudvac")
    p.add_argument("--no-app-credential", action="store_true")
    p.add_argument("--workdir", default=None, help="default: a fresh temporary directory")
    p.add_argument("--token-expiration", type=int, default=3600, help="[token] expiration, s")
    f = p.add_argument_group("federation")
    f.add_argument("--federation", action="store_true", help="enable OIDC federation + shim")
    f.add_argument("--oidc-issuer", action="append", default=[], help="OP issuer (repeatable)")
    f.add_argument("--vo", default="vo.example.eu")
    f.add_argument("--idp", default="egi.eu")
    f.add_argument("--protocol", action="append", default=[], help="default: openid, oidc")
    f.add_argument(
        "--authorization-ttl",
        type=int,
        default=60,
        help="[federation] default_authorization_ttl (minutes)",
    )
    f.add_argument("--oidc-validation", choices=("userinfo", "introspection"), default="userinfo")
    f.add_argument("--introspection-client", default=None, help="CLIENT_ID:SECRET")
    args = p.parse_args(argv)
    if args.federation and not args.oidc_issuer:
        p.error("--federation needs at least one --oidc-issuer")
    args.protocol = args.protocol or ["openid", "oidc"]
    return args


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        logging.getLogger("oracle.keystone.http").debug(format, *args)


def write_config(workdir: str, args: argparse.Namespace, manage: bool = False) -> str:
    """keystone.conf for the server; with ``manage`` a copy without the federation auth
    methods for keystone-manage (it cannot load our in-process ``oidc`` method alias)."""
    conf = os.path.join(workdir, "keystone-manage.conf" if manage else "keystone.conf")
    fed = ""
    if args.federation and not manage:
        methods = ",".join(["password", "token", *args.protocol, "application_credential"])
        fed = f"[auth]\nmethods = {methods}\n"
        for proto in args.protocol:
            fed += f"[{proto}]\nremote_id_attribute = HTTP_OIDC_ISS\n"
        fed += f"[federation]\ndefault_authorization_ttl = {args.authorization_ttl}\n"
    with open(conf, "w") as f:
        f.write(f"""[DEFAULT]
use_stderr = true
debug = false
[database]
connection = sqlite:///{workdir}/keystone.db
[token]
provider = fernet
expiration = {args.token_expiration}
[fernet_tokens]
key_repository = {workdir}/fernet-keys
[fernet_receipts]
key_repository = {workdir}/fernet-receipts
[credential]
key_repository = {workdir}/credential-keys
[identity]
password_hash_rounds = 4
[oslo_policy]
enforce_scope = true
enforce_new_defaults = true
{fed}""")
    return conf


def keystone_manage(conf: str, *args: str) -> None:
    exe = os.path.join(os.path.dirname(sys.executable), "keystone-manage")
    cmd = [exe, "--config-file", conf, *args]
    r = subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120
    )
    if r.returncode != 0:
        raise SystemExit(f"keystone-manage {args[0]} failed ({r.returncode}):\n{r.stdout[-4000:]}")


@dataclass(frozen=True)
class Api:
    """Keystone's REST API at ``base``, called with ``token`` as X-Auth-Token if given."""

    base: str
    token: str | None = None

    def __call__(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        expect: tuple[int, ...] = (200, 201, 204),
    ) -> requests.Response:
        import requests

        headers = {"X-Auth-Token": self.token} if self.token else {}
        r = requests.request(method, self.base + path, json=body, headers=headers, timeout=60)
        if r.status_code not in expect:
            raise RuntimeError(f"{method} {path} -> {r.status_code} {r.text[:500]}")
        return r


# Tokens the oracle issues to itself while provisioning live at least this long (seconds).
PROVISIONING_TOKEN_LIFETIME = 3600


@contextlib.contextmanager
def provisioning_token_lifetime(expiration: int) -> Iterator[Callable[[], int]]:
    """Issue tokens of at least :data:`PROVISIONING_TOKEN_LIFETIME` inside the block, then
    restore ``[token] expiration`` (``--token-expiration``) for every token issued after.

    Provisioning is ~20 admin API calls, each authorised by a token issued at its start; a
    test asking for 4 s tokens (``--token-expiration 4``) must not make the oracle race its
    own token: on a loaded machine those calls take longer than 4 s (seen in CI:
    ``PUT /v3/OS-FEDERATION/.../protocols/oidc -> 401``). Fernet tokens carry their expiry,
    so the admin's token stays valid; it is never handed out. Yields a function that reads
    the lifetime Keystone applies now (for the ready line)."""
    import keystone.conf

    conf = keystone.conf.CONF
    conf.set_override("expiration", max(expiration, PROVISIONING_TOKEN_LIFETIME), group="token")
    try:
        yield lambda: int(conf.token.expiration)
    finally:
        conf.clear_override("expiration", group="token")


def password_token(
    base: str, user: str, password: str, project: str | None = None, system: bool = False
) -> tuple[str, dict[str, Any]]:
    auth: dict[str, Any] = {
        "identity": {
            "methods": ["password"],
            "password": {"user": {"name": user, "password": password, "domain": {"id": "default"}}},
        }
    }
    if system:
        auth["scope"] = {"system": {"all": True}}
    elif project:
        auth["scope"] = {"project": {"name": project, "domain": {"id": "default"}}}
    r = Api(base)("POST", "/v3/auth/tokens", {"auth": auth}, expect=(201,))
    return r.headers["X-Subject-Token"], r.json()["token"]


def provision(base: str, args: argparse.Namespace) -> dict[str, Any]:
    """Create project, user, role assignment, catalog entry, app credential via the API."""
    admin_tok, _ = password_token(base, "admin", args.admin_password, system=True)
    admin = Api(base, admin_tok)
    project = admin(
        "POST",
        "/v3/projects",
        {"project": {"name": args.project_name, "domain_id": "default", "enabled": True}},
    ).json()["project"]
    user = admin(
        "POST",
        "/v3/users",
        {
            "user": {
                "name": args.username,
                "password": args.password,
                "domain_id": "default",
                "default_project_id": project["id"],
                "enabled": True,
            }
        },
    ).json()["user"]
    roles = admin("GET", "/v3/roles?name=member").json()["roles"]
    admin(
        "PUT",
        "/v3/projects/{}/users/{}/roles/{}".format(project["id"], user["id"], roles[0]["id"]),
    )
    if args.compute_url:
        svc = admin(
            "POST",
            "/v3/services",
            {"service": {"type": "compute", "name": "nova", "enabled": True}},
        ).json()["service"]
        for iface in ("public", "internal", "admin"):
            admin(
                "POST",
                "/v3/endpoints",
                {
                    "endpoint": {
                        "service_id": svc["id"],
                        "interface": iface,
                        "region_id": "RegionOne",
                        "url": args.compute_url,
                        "enabled": True,
                    }
                },
            )
    out = {
        "user_id": user["id"],
        "project_id": project["id"],
        "app_credential_id": None,
        "app_credential_secret": None,
    }
    if not args.no_app_credential:
        user_tok, _ = password_token(base, args.username, args.password, args.project_name)
        as_user = Api(base, user_tok)
        cred = as_user(
            "POST",
            "/v3/users/{}/application_credentials".format(user["id"]),
            {"application_credential": {"name": "cloudvac-contract"}},
        ).json()
        out["app_credential_id"] = cred["application_credential"]["id"]
        out["app_credential_secret"] = cred["application_credential"]["secret"]
    return out


FEDERATION_AUTH = re.compile(
    r"^/v3/OS-FEDERATION/identity_providers/([^/]+)/protocols/([^/]+)/auth/?$"
)


class OidcShim:
    """WSGI middleware standing in for Apache mod_auth_openidc (``AuthType oauth20``).

    Every request: drop client-sent ``OIDC*`` / ``REMOTE_USER`` variables (Keystone builds
    the federation assertion from the whole WSGI environ). Federation auth requests: require
    ``Authorization: Bearer``, validate it at the configured OPs (userinfo or introspection;
    the first OP that accepts it wins), then export ``REMOTE_USER`` (= sub), ``OIDC-<claim>``
    and ``HTTP_OIDC_<CLAIM>`` for every claim (lists joined with ``;`` as with
    ``OIDCClaimDelimiter ;``) and the issuer as ``HTTP_OIDC_ISS``. Failures answer 401 with
    ``WWW-Authenticate: Bearer error="invalid_token"`` before Keystone is reached.
    """

    def __init__(self, app: Any, args: argparse.Namespace) -> None:
        self.app = app
        self.issuers = [i.rstrip("/") for i in args.oidc_issuer]
        self.mode = args.oidc_validation
        self.client = (
            tuple(args.introspection_client.split(":", 1)) if (args.introspection_client) else None
        )
        self.discovery: dict[str, dict[str, Any]] = {}
        self.stats = {"validated": 0, "rejected": 0}
        self.log = logging.getLogger("oracle.keystone.shim")

    @staticmethod
    def _scrub(environ: dict[str, Any]) -> None:
        for key in list(environ):
            up = key.upper().replace("-", "_")
            if up.startswith(("OIDC", "HTTP_OIDC")) or up in ("REMOTE_USER", "HTTP_REMOTE_USER"):
                del environ[key]

    def _metadata(self, issuer: str) -> dict[str, Any]:
        import requests

        if issuer not in self.discovery:
            r = requests.get(issuer + "/.well-known/openid-configuration", timeout=10)
            r.raise_for_status()
            self.discovery[issuer] = r.json()
        return self.discovery[issuer]

    def _validate(self, token: str) -> tuple[str, dict[str, Any]] | str:
        """(issuer, claims) of the first OP accepting the token, else a reason string."""
        import requests

        reasons = []
        for issuer in self.issuers:
            try:
                meta = self._metadata(issuer)
                if self.mode == "introspection":
                    r = requests.post(
                        meta["introspection_endpoint"],
                        data={"token": token, "token_type_hint": "access_token"},
                        auth=self.client,
                        timeout=10,
                    )
                    claims = r.json() if r.status_code == 200 else {}
                    if claims.get("active") is True and claims.get("sub"):
                        return issuer, claims
                else:
                    r = requests.get(
                        meta["userinfo_endpoint"],
                        headers={"Authorization": "Bearer " + token},
                        timeout=10,
                    )
                    if r.status_code == 200 and r.json().get("sub"):
                        return issuer, r.json()
                reasons.append(f"{issuer}: {self.mode} HTTP {r.status_code}")
            except (requests.RequestException, ValueError, KeyError) as exc:
                self.discovery.pop(issuer, None)
                reasons.append(f"{issuer}: provider unreachable ({type(exc).__name__})")
        return "; ".join(reasons) or "no issuer configured"

    def _reject(self, start_response: Any, error: str, reason: str) -> list[bytes]:
        self.stats["rejected"] += 1
        self.log.warning("federation auth rejected: %s", reason)
        body = json.dumps(
            {"error": {"code": 401, "title": "Unauthorized", "message": f"oidc shim: {reason}"}}
        ).encode()
        start_response(
            "401 Unauthorized",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("WWW-Authenticate", f'Bearer error="{error}"'),
            ],
        )
        return [body]

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self._scrub(environ)
        if not FEDERATION_AUTH.match(environ.get("PATH_INFO", "")):
            return self.app(environ, start_response)
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if auth[:7].lower() != "bearer " or not auth[7:].strip():
            return self._reject(start_response, "invalid_token", "no bearer token")
        result = self._validate(auth[7:].strip())
        if isinstance(result, str):
            return self._reject(start_response, "invalid_token", result)
        issuer, claims = result
        self.stats["validated"] += 1
        claims = {**claims, "iss": issuer}
        for name, value in claims.items():
            if isinstance(value, list):
                text = ";".join(str(v) for v in value)
            elif isinstance(value, dict):
                text = json.dumps(value)
            else:
                text = str(value)
            environ["OIDC-" + name] = text
            environ["HTTP_OIDC_" + name.upper().replace("-", "_")] = text
        environ["REMOTE_USER"] = str(claims["sub"])
        return self.app(environ, start_response)


def enable_oidc_method_alias(protocols: list[str]) -> None:
    """Let auth methods named like a protocol (e.g. ``oidc``) load the mapped plugin.

    Keystone loads auth method ``X`` from the entry-point namespace ``keystone.auth.X``;
    the package only registers ``openid``/``saml2``/``mapped``. Sites using a protocol named
    ``oidc`` register such an entry point; we alias it in-process instead.
    """
    from keystone.auth import core

    original = core._get_auth_driver_manager
    known = {
        "password",
        "token",
        "openid",
        "saml2",
        "mapped",
        "application_credential",
        "external",
        "oauth1",
        "totp",
        "kerberos",
        "x509",
    }

    def driver_manager(namespace: str, plugin_name: str) -> Any:
        method = namespace.rsplit(".", 1)[-1]
        if method in protocols and method not in known:
            namespace = "keystone.auth.mapped"
        return original(namespace, plugin_name)

    core._get_auth_driver_manager = driver_manager


def provision_federation(base: str, args: argparse.Namespace) -> dict[str, Any]:
    """VO project + group (member), IdP, mapping, protocols, as in EGI's provider guide."""
    admin_tok, _ = password_token(base, "admin", args.admin_password, system=True)
    admin = Api(base, admin_tok)
    vo = args.vo
    project = admin(
        "POST",
        "/v3/projects",
        {
            "project": {
                "name": vo,
                "domain_id": "default",
                "enabled": True,
                "description": f"EGI VO {vo}",
            }
        },
    ).json()["project"]
    group = admin(
        "POST",
        "/v3/groups",
        {"group": {"name": f"{vo}-vm_operator", "domain_id": "default"}},
    ).json()["group"]
    member = admin("GET", "/v3/roles?name=member").json()["roles"][0]
    admin(
        "PUT",
        "/v3/projects/{}/groups/{}/roles/{}".format(project["id"], group["id"], member["id"]),
    )
    idp = admin(
        "PUT",
        f"/v3/OS-FEDERATION/identity_providers/{args.idp}",
        {
            "identity_provider": {
                "remote_ids": [i.rstrip("/") for i in args.oidc_issuer],
                "enabled": True,
                "description": "EGI Check-in (oracle)",
            }
        },
        expect=(201,),
    ).json()["identity_provider"]
    # as in EGI's provider guide: the VO name is not escaped (dots match any character)
    entitlement_re = f"^urn:mace:egi.eu:group:{vo}:role=vm_operator#aai.egi.eu$"
    issuers = {"type": "HTTP_OIDC_ISS", "any_one_of": [i.rstrip("/") for i in args.oidc_issuer]}
    ent = {"type": "OIDC-eduperson_entitlement", "regex": True, "any_one_of": [entitlement_re]}
    rules = [
        {  # accounts without an e-mail claim (e.g. client-credentials service accounts)
            "local": [{"user": {"name": "{0}"}, "group": {"id": group["id"]}}],
            "remote": [{"type": "HTTP_OIDC_SUB"}, issuers, ent],
        },
        {  # EGI provider guide: name = sub, email = email
            "local": [{"user": {"name": "{0}", "email": "{1}"}, "group": {"id": group["id"]}}],
            "remote": [{"type": "HTTP_OIDC_SUB"}, {"type": "HTTP_OIDC_EMAIL"}, issuers, ent],
        },
    ]
    mapping_id = "egi-mapping"
    admin(
        "PUT",
        f"/v3/OS-FEDERATION/mappings/{mapping_id}",
        {"mapping": {"rules": rules}},
        expect=(201,),
    )
    for proto in args.protocol:
        admin(
            "PUT",
            f"/v3/OS-FEDERATION/identity_providers/{args.idp}/protocols/{proto}",
            {"protocol": {"mapping_id": mapping_id}},
            expect=(201,),
        )
    return {
        "vo": vo,
        "vo_project_id": project["id"],
        "vo_project_name": project["name"],
        "federation": {
            "idp": args.idp,
            "idp_domain_id": idp.get("domain_id"),
            "issuers": [i.rstrip("/") for i in args.oidc_issuer],
            "protocols": list(args.protocol),
            "mapping_id": mapping_id,
            "mapping_rules": rules,
            "entitlement_regex": entitlement_re,
            "entitlement": f"urn:mace:egi.eu:group:{vo}:role=vm_operator#aai.egi.eu",
            "group_id": group["id"],
            "project_id": project["id"],
            "project_name": project["name"],
            "validation": args.oidc_validation,
            "auth_urls": {
                proto: f"{base}/v3/OS-FEDERATION/identity_providers/{args.idp}"
                f"/protocols/{proto}/auth"
                for proto in args.protocol
            },
            "default_authorization_ttl": args.authorization_ttl,
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    stop = threading.Event()
    serving = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if not serving.is_set():  # still bootstrapping: abort now (finally cleans up)
            raise SystemExit(128 + signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    own_workdir = args.workdir is None
    workdir = args.workdir or tempfile.mkdtemp(prefix="cloudvac-keystone-")
    server = None
    try:
        # pick the port first: bootstrap writes it into the identity endpoints
        with socket.socket() as s:
            s.bind(("127.0.0.1", args.port))
            port = s.getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        conf = write_config(workdir, args)
        manage_conf = write_config(workdir, args, manage=True)
        keystone_manage(manage_conf, "db_sync")
        for what in ("fernet_setup", "credential_setup"):
            keystone_manage(
                manage_conf, what, "--keystone-user", "root", "--keystone-group", "root"
            )
        keystone_manage(
            manage_conf,
            "bootstrap",
            "--bootstrap-password",
            args.admin_password,
            "--bootstrap-admin-url",
            base + "/v3",
            "--bootstrap-internal-url",
            base + "/v3",
            "--bootstrap-public-url",
            base + "/v3",
            "--bootstrap-region-id",
            "RegionOne",
        )
        t_boot = time.monotonic() - T0

        os.environ["OS_KEYSTONE_CONFIG_FILES"] = conf
        sys.argv = sys.argv[:1]  # keystone's oslo.config parses sys.argv; hide ours
        from keystone.server import wsgi as ks_wsgi

        if args.federation:
            enable_oidc_method_alias(args.protocol)
        app = ks_wsgi.initialize_public_application()
        if args.federation:
            app = OidcShim(app, args)
        logging.getLogger().setLevel(logging.WARNING)
        server = make_server(
            "127.0.0.1", port, app, server_class=ThreadingWSGIServer, handler_class=QuietHandler
        )
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        ).start()
        t_prov = time.monotonic()
        with provisioning_token_lifetime(args.token_expiration) as in_effect:
            extra = provision(base, args)
            if args.federation:
                extra.update(provision_federation(base, args))
        extra["provision_s"] = round(time.monotonic() - t_prov, 2)
        ready = {
            "ready": True,
            "kind": "keystone",
            "pid": os.getpid(),
            "port": port,
            "base_url": base,
            "auth_url": base + "/v3",
            "username": args.username,
            "password": args.password,
            "project_name": args.project_name,
            "user_domain_name": "Default",
            "project_domain_name": "Default",
            "region_name": "RegionOne",
            "admin_username": "admin",
            "admin_password": args.admin_password,
            "compute_url": args.compute_url,
            "token_expiration": in_effect(),
            **extra,
            "bootstrap_s": round(t_boot, 2),
            "startup_s": round(time.monotonic() - T0, 2),
            "maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        serving.set()
        sys.stdout.write(READY_PREFIX + json.dumps(ready) + "\n")
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
        print("keystone oracle: stopping", file=sys.stderr, flush=True)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
