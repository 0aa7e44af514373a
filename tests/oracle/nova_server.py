"""Serve REAL Nova (OS-API, conductor, scheduler, one fake-driver compute, real Placement)
on 127.0.0.1 for cloudvac's contract tests.

Runs inside .venv-oracle (see setup.sh), never in cloudvac's own venv. The whole stack is
built by Nova's own functional-test base class (SQLite, fake:// RPC, Glance/Neutron/Cinder
client fixtures); this file only configures it and puts a small WSGI front on a real port:

* ``/compute/...``  -> Nova's OS-API (``/compute/v2.1/servers`` ...), after authentication:
  either the built-in token shim (tokens it issued itself) or a real Keystone
  (``--keystone-url``: the caller's token is validated with ``GET /v3/auth/tokens``).
* ``/identity/v3/auth/tokens`` (shim mode only) -> a Keystone-v3-shaped token whose catalog
  points at this server; a wrong user name or password gets Keystone's 401 body.

Images come from Nova's GlanceFixture (a fake image service with a few fixed images), or,
with ``--glance-url`` (needs ``--keystone-url``), from a real Glance (glance_server.py): the
fixture's stubs are undone, ``[glance] api_servers`` points at that URL, and each request's
context keeps the caller's token, which Nova's Glance client sends on (as in a real cloud).

Prints one line ``CLOUDVAC_ORACLE_READY {json}`` on stdout when it serves, then runs until
SIGTERM/SIGINT and exits 0. Logs go to stderr.
"""

from __future__ import annotations

import os

# Eventlet mode is required: Nova's fixtures deadlock in native-threading mode under load
# (see shared/reference/research-openstack-oracle.md). Patch before anything else imports.
os.environ["OS_NOVA_DISABLE_EVENTLET_PATCHING"] = "0"
import eventlet

eventlet.monkey_patch()

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import eventlet.event  # noqa: E402
import eventlet.wsgi  # noqa: E402

T0 = time.monotonic()
READY_PREFIX = "CLOUDVAC_ORACLE_READY "
UNAUTHORIZED_BODY = {  # byte-for-byte what Keystone 30 / keystonemiddleware answer
    "error": {
        "code": 401,
        "message": "The request you have made requires authentication.",
        "title": "Unauthorized",
    }
}
UNSCHEDULABLE_FLAVOR = {"flavorid": "cv-unschedulable", "name": "cv.unschedulable"}
# A flavor carrying the extra specs a site's cASO accounting reads (benchmark per vCPU).
ACCOUNTED_FLAVOR = {"flavorid": "cv-accounted", "name": "cv.accounted",
                    "extra_specs": {"accounting:benchmark_type": "HEPscore23",
                                    "accounting:benchmark_value": "12.5"}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0, help="0 = any free port (default)")
    p.add_argument(
        "--keystone-url",
        default=None,
        help="validate tokens against this real Keystone (e.g. http://127.0.0.1:5000)",
    )
    p.add_argument(
        "--glance-url",
        default=None,
        help="take images from this real Glance instead of the fixture (needs --keystone-url)",
    )
    p.add_argument("--quota-cores", type=int, default=20)
    p.add_argument("--quota-instances", type=int, default=10)
    p.add_argument("--quota-ram", type=int, default=-1, help="MB, -1 = unlimited")
    p.add_argument("--max-limit", type=int, default=1000, help="[api] max_limit (page size cap)")
    p.add_argument("--username", default="cloudvac", help="shim user name")
    p.add_argument("--password", default="cloudvac-secret", help="shim password")
    p.add_argument("--project-name", default="cloudvac", help="shim project name")
    p.add_argument("--roles", default="member,reader", help="shim roles (comma separated)")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    if args.glance_url and not args.keystone_url:
        p.error("--glance-url needs --keystone-url (Glance validates the caller's token)")
    return args


def build_stack(args: argparse.Namespace) -> tuple[Any, Any, list[dict[str, Any]]]:
    """Build Nova's functional-test stack; return (testcase, os-api wsgi app)."""
    from nova import context as nova_context
    from nova import objects
    from nova.tests.functional import integrated_helpers

    class NovaStack(integrated_helpers._IntegratedTestBase):
        ADMIN_API = True
        CAST_AS_CALL = False  # builds really are asynchronous: 202 + BUILD, then ACTIVE
        microversion = "latest"

        def runTest(self) -> None:  # testtools wants a test method
            pass

        def _setup_services(self) -> None:
            # the wheel installs api-paste.ini under <prefix>/etc/nova, not where
            # the test ConfFixture looks for it
            self.flags(
                api_paste_config=os.path.join(sys.prefix, "etc", "nova", "api-paste.ini"),
                group="wsgi",
            )
            # FakeDriver: 1000 vCPU, 800000 MB RAM, 600000 GB disk
            self.flags(compute_driver="fake.FakeDriver")
            self.flags(
                instances=args.quota_instances,
                cores=args.quota_cores,
                ram=args.quota_ram,
                group="quota",
            )
            self.flags(max_limit=args.max_limit, group="api")
            super()._setup_services()

    import nova.image.glance

    real_image_service = nova.image.glance.get_default_image_service
    stack = NovaStack()
    stack.setUp()
    if args.glance_url:
        use_real_glance(stack, args.glance_url, real_image_service)

    # Nova's WarningsFixture turns SQLAlchemy deprecation warnings into errors, which
    # makes GET /servers?marker=... answer 500 with SQLAlchemy 2.1. Undo that.
    from sqlalchemy import exc as sa_exc

    warnings.filterwarnings("ignore", category=sa_exc.SADeprecationWarning)
    warnings.filterwarnings("ignore", category=sa_exc.SAWarning)

    # A flavor that no host can take: root disk larger than FakeDriver's 600000 GB.
    # Disk has no quota in Nova, so create -> 202, then BUILD -> ERROR (NoValidHost).
    ctxt = nova_context.get_admin_context()
    objects.Flavor(
        context=ctxt,
        memory_mb=512,
        vcpus=1,
        root_gb=1_000_000,
        ephemeral_gb=0,
        swap=0,
        rxtx_factor=1.0,
        disabled=False,
        is_public=True,
        **UNSCHEDULABLE_FLAVOR,
    ).create()
    objects.Flavor(context=ctxt, memory_mb=512, vcpus=1, root_gb=1, ephemeral_gb=0, swap=0,
                   rxtx_factor=1.0, disabled=False, is_public=True, **ACCOUNTED_FLAVOR).create()
    flavors = [
        {"id": f.flavorid, "name": f.name, "vcpus": f.vcpus, "ram": f.memory_mb, "disk": f.root_gb}
        for f in objects.FlavorList.get_all(ctxt)
    ]
    return stack, stack.api_fixture.app(), flavors


def use_real_glance(stack: Any, glance_url: str, image_service: Any) -> None:
    """Undo GlanceFixture (its effective stub: ``get_default_image_service``), send Nova's
    image calls to ``glance_url``, and keep the caller's token in the request context (the
    functional fixture's stubbed context middleware drops it)."""
    from nova import context as nova_context

    stack.stub_out("nova.image.glance.get_default_image_service", image_service)
    stack.flags(api_servers=[glance_url], group="glance")

    def context_with_token(env: dict[str, Any], **kwargs: Any) -> Any:
        user_id = env["HTTP_X_AUTH_USER"]
        return nova_context.RequestContext(
            user_id,
            env["HTTP_X_AUTH_PROJECT_ID"],
            is_admin=user_id == "admin",
            roles=env["HTTP_X_ROLES"].split(","),
            auth_token=env.get("HTTP_X_AUTH_TOKEN"),
            **kwargs,
        )

    stack.stub_out(
        "nova.api.auth.NovaKeystoneContext._create_context", staticmethod(context_with_token)
    )


class Front:
    """WSGI front: token shim or real-Keystone token validation, then Nova's OS-API."""

    def __init__(self, nova_app: Any, base: str, args: argparse.Namespace, project_id: str):
        self.nova_app = nova_app
        self.base = base
        self.args = args
        self.project_id = project_id
        self.user_id = args.username + "-id"  # must not be 'admin' (fixture: admin by id)
        self.tokens: set[str] = set()
        self.ks_cache: dict[str, tuple[float, tuple[str, str, str]]] = {}
        self.log = logging.getLogger("oracle.front")

    # -- helpers -----------------------------------------------------------------------
    @staticmethod
    def _json(
        start_response: Any,
        status: str,
        body: dict[str, Any],
        headers: Sequence[tuple[str, str]] = (),
    ) -> list[bytes]:
        data = json.dumps(body).encode()
        start_response(
            status,
            [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers],
        )
        return [data]

    def _unauthorized(self, start_response: Any) -> list[bytes]:
        www = self.args.keystone_url or (self.base + "/identity")
        return self._json(
            start_response,
            "401 Unauthorized",
            UNAUTHORIZED_BODY,
            [("WWW-Authenticate", f'Keystone uri="{www}"')],
        )

    def _token_body(self) -> dict[str, Any]:
        domain = {"id": "default", "name": "Default"}
        roles = [r for r in self.args.roles.split(",") if r]
        return {
            "token": {
                "methods": ["password"],
                "expires_at": "2099-01-01T00:00:00.000000Z",
                "issued_at": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
                "audit_ids": [uuid.uuid4().hex[:22]],
                "user": {
                    "id": self.user_id,
                    "name": self.args.username,
                    "domain": domain,
                    "password_expires_at": None,
                },
                "project": {
                    "id": self.project_id,
                    "name": self.args.project_name,
                    "domain": domain,
                },
                "roles": [{"id": "role-" + r, "name": r} for r in roles],
                "is_domain": False,
                "catalog": [
                    {
                        "type": "compute",
                        "name": "nova",
                        "id": "nova-service",
                        "endpoints": [
                            {
                                "id": "nova-" + i,
                                "interface": i,
                                "region": "RegionOne",
                                "region_id": "RegionOne",
                                "url": self.base + "/compute/v2.1",
                            }
                            for i in ("public", "internal", "admin")
                        ],
                    }
                ],
            }
        }

    def _issue_token(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            req = json.loads(environ["wsgi.input"].read(length) or b"{}")
            ident = req["auth"]["identity"]
            if "password" not in ident.get("methods", []):
                return self._unauthorized(start_response)
            user = ident["password"]["user"]
        except (ValueError, KeyError, TypeError):
            return self._json(
                start_response,
                "400 Bad Request",
                {
                    "error": {
                        "code": 400,
                        "title": "Bad Request",
                        "message": "Invalid input for field 'identity'.",
                    }
                },
            )
        if user.get("name") != self.args.username or user.get("password") != self.args.password:
            return self._unauthorized(start_response)
        token = "shim" + uuid.uuid4().hex
        self.tokens.add(token)
        return self._json(
            start_response, "201 Created", self._token_body(), [("X-Subject-Token", token)]
        )

    def _keystone_identity(self, token: str) -> tuple[str, str, str] | None:
        now = time.monotonic()
        hit = self.ks_cache.get(token)
        if hit and hit[0] > now:
            return hit[1]
        import requests

        r = requests.get(
            self.args.keystone_url.rstrip("/") + "/v3/auth/tokens?nocatalog",
            headers={"X-Auth-Token": token, "X-Subject-Token": token},
            timeout=30,
        )
        if r.status_code != 200:
            self.log.warning("keystone rejected token: %s %s", r.status_code, r.text[:200])
            return None
        t = r.json()["token"]
        if "project" not in t:
            return None  # unscoped / domain-scoped tokens cannot use Nova
        ident = (t["user"]["id"], t["project"]["id"], ",".join(x["name"] for x in t["roles"]))
        ttl = 60.0
        try:  # like keystonemiddleware: never trust a cached token past its expires_at
            expires = datetime.datetime.fromisoformat(t["expires_at"].replace("Z", "+00:00"))
            left = (expires - datetime.datetime.now(datetime.UTC)).total_seconds()
            ttl = max(0.0, min(ttl, left))
        except (KeyError, ValueError):
            pass
        self.ks_cache[token] = (now + ttl, ident)
        return ident

    # -- WSGI ------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        stripped = path.rstrip("/")
        if not self.args.keystone_url:
            if stripped == "/identity/v3/auth/tokens" and environ["REQUEST_METHOD"] == "POST":
                return self._issue_token(environ, start_response)
            if stripped in ("/identity", "/identity/v3"):  # keystoneauth version discovery
                return self._json(
                    start_response,
                    "200 OK",
                    {
                        "version": {
                            "id": "v3.14",
                            "status": "stable",
                            "updated": "2020-04-07T00:00:00Z",
                            "links": [{"rel": "self", "href": self.base + "/identity/v3/"}],
                            "media-types": [
                                {
                                    "base": "application/json",
                                    "type": "application/vnd.openstack.identity-v3+json",
                                }
                            ],
                        }
                    },
                )
        if path == "/compute" or path.startswith("/compute/"):
            environ["PATH_INFO"] = path[len("/compute") :] or "/"
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + "/compute"
            if environ["PATH_INFO"].strip("/") in ("", "v2.1"):
                # version documents need no token (as with real keystonemiddleware setups)
                environ.update(
                    HTTP_X_AUTH_USER="anonymous",
                    HTTP_X_AUTH_PROJECT_ID=self.project_id,
                    HTTP_X_ROLES="",
                )
                return self.nova_app(environ, start_response)
            token = environ.get("HTTP_X_AUTH_TOKEN", "")
            if self.args.keystone_url:
                ident = self._keystone_identity(token) if token else None
                if ident is None:
                    return self._unauthorized(start_response)
                user, project, roles = ident
            else:
                if token not in self.tokens:
                    return self._unauthorized(start_response)
                user, project, roles = self.user_id, self.project_id, self.args.roles
            # read by the functional fixture's stubbed NovaKeystoneContext
            environ["HTTP_X_AUTH_USER"] = user
            environ["HTTP_X_AUTH_PROJECT_ID"] = project
            environ["HTTP_X_ROLES"] = roles
            return self.nova_app(environ, start_response)
        return self._json(
            start_response,
            "404 Not Found",
            {"error": {"code": 404, "title": "Not Found", "message": "no such path: " + path}},
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = eventlet.event.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if not stop.ready():
            stop.send(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    sock = eventlet.listen(("127.0.0.1", args.port))
    port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"

    from nova.tests import fixtures as nova_fixtures

    stack, nova_app, flavors = build_stack(args)
    logging.getLogger().setLevel(args.log_level)
    project_id = nova_fixtures.PROJECT_ID
    front = Front(nova_app, base, args, project_id)

    server = eventlet.spawn(
        eventlet.wsgi.server, sock, front, log_output=False, log=logging.getLogger("oracle.wsgi")
    )
    ready = {
        "ready": True,
        "kind": "nova",
        "mode": "keystone" if args.keystone_url else "shim",
        "pid": os.getpid(),
        "port": port,
        "base_url": base,
        "compute_url": base + "/compute/v2.1",
        "auth_url": (args.keystone_url.rstrip("/") + "/v3")
        if args.keystone_url
        else base + "/identity/v3",
        "username": args.username,
        "password": args.password,
        "project_name": args.project_name,
        "project_id": project_id,
        "user_domain_name": "Default",
        "project_domain_name": "Default",
        "region_name": "RegionOne",
        # with a real Glance there is no image until a client uploads one
        "image_id": None if args.glance_url else nova_fixtures.GlanceFixture.image1["id"],
        "glance_url": args.glance_url,
        "network_id": nova_fixtures.NeutronFixture.network_1["id"],
        "flavors": flavors,
        "unschedulable_flavor_id": UNSCHEDULABLE_FLAVOR["flavorid"],
        "quota": {
            "cores": args.quota_cores,
            "instances": args.quota_instances,
            "ram": args.quota_ram,
        },
        "max_limit": args.max_limit,
        "startup_s": round(time.monotonic() - T0, 2),
        "maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    sys.stdout.write(READY_PREFIX + json.dumps(ready) + "\n")
    sys.stdout.flush()

    signum = stop.wait()
    print(f"nova oracle: signal {signum}, stopping", file=sys.stderr, flush=True)
    server.kill()
    try:
        with eventlet.Timeout(15):
            stack.doCleanups()
    except BaseException as exc:
        print(f"nova oracle: cleanup incomplete: {exc!r}", file=sys.stderr, flush=True)
    sys.stderr.flush()
    # Nova's services leave greenthreads/threads behind; do not wait for them.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
