"""Serve REAL Glance (images API v2, SQLite, file store) on 127.0.0.1 for cloudvac's contract
tests, behind a real Keystone (tests/oracle/keystone_server.py).

Runs inside .venv-oracle (see setup.sh), never in cloudvac's own venv. Everything lives in a
temporary directory that is removed on exit:

* ``glance-manage db_sync`` on ``sqlite:///<workdir>/glance.db`` (run while the Keystone
  provisioning below goes on);
* ``enabled_backends = fs:file`` with the image data under ``<workdir>/images`` (plus the
  reserved staging and tasks file stores Glance requires);
* Glance's own WSGI app (``glance.common.wsgi_app.init_app``: glance 33 has no standalone
  ``glance-api`` any more) served by Werkzeug's threaded server in this process (Werkzeug
  decodes chunked request bodies, which wsgiref cannot: openstacksdk streams uploads from
  iterators chunked);
* paste flavor ``keystone``: the real keystonemiddleware ``auth_token`` validates every
  caller's token at ``--keystone-url``. Through Keystone's API (as its ``admin``, password
  ``--admin-password``) the server first creates project ``service``, user ``glance`` with
  the ``service`` role on it (the credentials auth_token uses) and an ``image`` service with
  public/internal/admin endpoints at this server, so clients find Glance in the catalog;
* ``--user-storage-quota`` sets Glance's per-owner storage quota (``user_storage_quota``,
  e.g. ``2MB``; enforced while the data streams in: 413 "Image exceeds the storage quota");
  ``[image_format] require_image_format_match`` is on (data that is not what
  ``disk_format`` says: 415).

Prints one line ``CLOUDVAC_ORACLE_READY {json}`` on stdout when it serves, then runs until
SIGTERM/SIGINT and exits 0. Logs go to stderr.
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
from dataclasses import dataclass
from typing import Any

T0 = time.monotonic()
READY_PREFIX = "CLOUDVAC_ORACLE_READY "
SERVICE_USER = "glance"
SERVICE_PASSWORD = "glance-service-secret"  # of the oracle's own throw-away Keystone
SERVICE_PROJECT = "service"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0, help="0 = any free port (default)")
    p.add_argument(
        "--keystone-url", required=True, help="the real Keystone, e.g. http://127.0.0.1:5000"
    )
    p.add_argument("--admin-password", default="admin-secret", help="of Keystone's admin")
    p.add_argument(
        "--user-storage-quota", default="0", help="per-owner storage, e.g. 2MB; 0 = unlimited"
    )
    p.add_argument("--workdir", default=None, help="default: a fresh temporary directory")
    p.add_argument("--log-level", default="WARNING")
    return p.parse_args(argv)


def write_config(workdir: str, base: str, args: argparse.Namespace) -> str:
    """glance-api.conf in ``workdir`` (also read by glance-manage via --config-dir)."""
    for d in ("images", "staging", "tasks", "cache"):
        os.makedirs(os.path.join(workdir, d), exist_ok=True)
    ks = args.keystone_url.rstrip("/")
    paste = os.path.join(sys.prefix, "etc", "glance", "glance-api-paste.ini")
    conf = os.path.join(workdir, "glance-api.conf")
    with open(conf, "w") as f:
        f.write(f"""[DEFAULT]
use_stderr = true
debug = false
bind_host = 127.0.0.1
enabled_backends = fs:file
worker_self_reference_url = {base}
user_storage_quota = {args.user_storage_quota}
image_cache_dir = {workdir}/cache
[database]
connection = sqlite:///{workdir}/glance.db
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = {workdir}/images
[os_glance_staging_store]
filesystem_store_datadir = {workdir}/staging
[os_glance_tasks_store]
filesystem_store_datadir = {workdir}/tasks
[image_format]
require_image_format_match = true
[paste_deploy]
flavor = keystone
config_file = {paste}
[oslo_policy]
enforce_scope = true
enforce_new_defaults = true
[keystone_authtoken]
www_authenticate_uri = {ks}/v3
auth_url = {ks}/v3
auth_type = password
username = {SERVICE_USER}
password = {SERVICE_PASSWORD}
project_name = {SERVICE_PROJECT}
user_domain_id = default
project_domain_id = default
""")
    return conf


def start_db_sync(workdir: str) -> subprocess.Popen[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "glance-manage")
    return subprocess.Popen(
        [exe, "--config-dir", workdir, "db_sync"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish_db_sync(proc: subprocess.Popen[str]) -> None:
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"glance-manage db_sync failed ({proc.returncode}):\n{out[-4000:]}")


@dataclass(frozen=True)
class Keystone:
    """Keystone's REST API at ``base`` (``/v3`` paths), as ``token`` if given."""

    base: str
    token: str | None = None

    def __call__(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import requests

        headers = {"X-Auth-Token": self.token} if self.token else {}
        r = requests.request(method, self.base + path, json=body, headers=headers, timeout=60)
        if r.status_code not in (200, 201, 204):
            raise SystemExit(f"keystone {method} {path} -> {r.status_code} {r.text[:300]}")
        return r


def provision(base: str, args: argparse.Namespace) -> str:
    """The service user auth_token logs in with, and the image service in the catalog (as
    devstack does). Returns the image service's id."""
    anonymous = Keystone(args.keystone_url.rstrip("/"))
    user = {"name": "admin", "password": args.admin_password, "domain": {"id": "default"}}
    auth = {"identity": {"methods": ["password"], "password": {"user": user}},
            "scope": {"system": {"all": True}}}
    api = Keystone(anonymous.base, anonymous("POST", "/v3/auth/tokens", {"auth": auth})
                   .headers["X-Subject-Token"])
    project = api("POST", "/v3/projects", {"project": {
        "name": SERVICE_PROJECT, "domain_id": "default"}}).json()["project"]
    service_user = api("POST", "/v3/users", {"user": {
        "name": SERVICE_USER, "password": SERVICE_PASSWORD, "domain_id": "default"}}
    ).json()["user"]
    role = api("GET", "/v3/roles?name=service").json()["roles"][0]
    api("PUT", f"/v3/projects/{project['id']}/users/{service_user['id']}/roles/{role['id']}")
    svc = api("POST", "/v3/services", {"service": {
        "type": "image", "name": "glance", "enabled": True}}).json()["service"]
    for iface in ("public", "internal", "admin"):
        api("POST", "/v3/endpoints", {"endpoint": {
            "service_id": svc["id"], "interface": iface, "region_id": "RegionOne",
            "url": base, "enabled": True}})
    return str(svc["id"])


def serve(workdir: str, port: int, log_level: str) -> Any:
    """Glance's WSGI app on a threaded Werkzeug server (serving in a daemon thread)."""
    os.environ["OS_GLANCE_CONFIG_DIR"] = workdir
    sys.argv = sys.argv[:1]  # oslo.config must never see our flags
    from glance.common import wsgi_app
    from werkzeug.serving import make_server

    app = wsgi_app.init_app()
    logging.getLogger().setLevel(log_level)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True, name="glance-wsgi").start()
    return server


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    own_workdir = args.workdir is None
    workdir = args.workdir or tempfile.mkdtemp(prefix="cloudvac-glance-")
    server = None
    try:
        with socket.socket() as s:  # the port first: the catalog and the config name it
            s.bind(("127.0.0.1", args.port))
            port = s.getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        write_config(workdir, base, args)
        sync = start_db_sync(workdir)
        try:
            service_id = provision(base, args)
        except BaseException:
            sync.kill()
            sync.wait()
            raise
        finish_db_sync(sync)
        t_prepared = time.monotonic() - T0
        server = serve(workdir, port, args.log_level)
        ks = args.keystone_url.rstrip("/")
        ready = {
            "ready": True,
            "kind": "glance",
            "pid": os.getpid(),
            "port": port,
            "base_url": base,
            "image_url": base,
            "auth_url": ks + "/v3",
            "username": None,  # clients log in as a Keystone user (launch.glance_oracle)
            "password": None,
            "project_name": None,
            "service_id": service_id,
            "workdir": workdir,
            "user_storage_quota": args.user_storage_quota,
            "prepare_s": round(t_prepared, 2),
            "startup_s": round(time.monotonic() - T0, 2),
            "maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        sys.stdout.write(READY_PREFIX + json.dumps(ready) + "\n")
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
        print("glance oracle: stopping", file=sys.stderr, flush=True)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.stderr.flush()
    os._exit(0)  # glance's atexit hook drains its task pools; nothing is left to wait for


if __name__ == "__main__":
    sys.exit(main())
