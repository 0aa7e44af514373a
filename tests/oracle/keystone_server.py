"""Serve REAL Keystone (v3, SQLite, fernet tokens) on 127.0.0.1 for cloudvac's contract tests.

Runs inside .venv-oracle (see setup.sh). Everything lives in a temporary directory that is
removed on exit. Bootstraps with keystone-manage (db_sync, fernet/credential keys, bootstrap),
serves Keystone's public WSGI app with a threaded wsgiref server, then creates through the
real API: a project, a user with the member role on it, optionally an application credential
of that user, and optionally a compute service + endpoints (``--compute-url``) so clients
find Nova in the catalog.

Prints one line ``CLOUDVAC_ORACLE_READY {json}`` on stdout, then serves until SIGTERM/SIGINT
and exits 0. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

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
    return p.parse_args(argv)


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        logging.getLogger("oracle.keystone.http").debug(format, *args)


def write_config(workdir: str) -> str:
    conf = os.path.join(workdir, "keystone.conf")
    with open(conf, "w") as f:
        f.write(f"""[DEFAULT]
use_stderr = true
debug = false
[database]
connection = sqlite:///{workdir}/keystone.db
[token]
provider = fernet
expiration = 3600
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
""")
    return conf


def keystone_manage(conf: str, *args: str) -> None:
    exe = os.path.join(os.path.dirname(sys.executable), "keystone-manage")
    cmd = [exe, "--config-file", conf, *args]
    r = subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120
    )
    if r.returncode != 0:
        raise SystemExit(f"keystone-manage {args[0]} failed ({r.returncode}):\n{r.stdout[-4000:]}")


def api(
    base: str,
    method: str,
    path: str,
    token: str | None = None,
    body: dict | None = None,
    expect: tuple[int, ...] = (200, 201, 204),
):
    import requests

    headers = {"X-Auth-Token": token} if token else {}
    r = requests.request(method, base + path, json=body, headers=headers, timeout=60)
    if r.status_code not in expect:
        raise RuntimeError(f"{method} {path} -> {r.status_code} {r.text[:500]}")
    return r


def password_token(
    base: str, user: str, password: str, project: str | None = None, system: bool = False
) -> tuple[str, dict]:
    auth: dict = {
        "identity": {
            "methods": ["password"],
            "password": {"user": {"name": user, "password": password, "domain": {"id": "default"}}},
        }
    }
    if system:
        auth["scope"] = {"system": {"all": True}}
    elif project:
        auth["scope"] = {"project": {"name": project, "domain": {"id": "default"}}}
    r = api(base, "POST", "/v3/auth/tokens", body={"auth": auth}, expect=(201,))
    return r.headers["X-Subject-Token"], r.json()["token"]


def provision(base: str, args: argparse.Namespace) -> dict:
    """Create project, user, role assignment, catalog entry, app credential via the API."""
    admin_tok, _ = password_token(base, "admin", args.admin_password, system=True)
    project = api(
        base,
        "POST",
        "/v3/projects",
        admin_tok,
        {"project": {"name": args.project_name, "domain_id": "default", "enabled": True}},
    ).json()["project"]
    user = api(
        base,
        "POST",
        "/v3/users",
        admin_tok,
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
    roles = api(base, "GET", "/v3/roles?name=member", admin_tok).json()["roles"]
    api(
        base,
        "PUT",
        "/v3/projects/{}/users/{}/roles/{}".format(project["id"], user["id"], roles[0]["id"]),
        admin_tok,
    )
    if args.compute_url:
        svc = api(
            base,
            "POST",
            "/v3/services",
            admin_tok,
            {"service": {"type": "compute", "name": "nova", "enabled": True}},
        ).json()["service"]
        for iface in ("public", "internal", "admin"):
            api(
                base,
                "POST",
                "/v3/endpoints",
                admin_tok,
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
        cred = api(
            base,
            "POST",
            "/v3/users/{}/application_credentials".format(user["id"]),
            user_tok,
            {"application_credential": {"name": "cloudvac-contract"}},
        ).json()
        out["app_credential_id"] = cred["application_credential"]["id"]
        out["app_credential_secret"] = cred["application_credential"]["secret"]
    return out


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
        conf = write_config(workdir)
        keystone_manage(conf, "db_sync")
        for what in ("fernet_setup", "credential_setup"):
            keystone_manage(conf, what, "--keystone-user", "root", "--keystone-group", "root")
        keystone_manage(
            conf,
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

        app = ks_wsgi.initialize_public_application()
        logging.getLogger().setLevel(logging.WARNING)
        server = make_server(
            "127.0.0.1", port, app, server_class=ThreadingWSGIServer, handler_class=QuietHandler
        )
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        ).start()
        extra = provision(base, args)
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
