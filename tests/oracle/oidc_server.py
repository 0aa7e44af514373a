"""A local OpenID Connect provider on 127.0.0.1 standing in for EGI Check-in in contract tests.

Runs inside .venv-oracle (see setup.sh). One issuer, one process, two engines behind a small
WSGI dispatcher:

* PyPI ``oidc-provider-mock`` (Authlib + Flask) serves discovery, the authorization-code and
  refresh-token grants, ``/userinfo`` for its (opaque) access tokens, ``/jwks``, and its test
  API: ``PUT /users/{sub}`` (claims as a JSON object) and ``POST /users/{sub}/revoke-tokens``.
  Patched here: its access-token lifetime (``--access-token-lifetime``, also for the refresh
  grant, which upstream leaves at 3600 s), the accepted scopes (EGI's
  ``eduperson_entitlement``/``voperson_id``/``offline_access``/``entitlements`` are granted,
  so refreshing with Check-in's scope list works) and optional refresh-token rotation.
* Our own code adds what Check-in has and the mock lacks: the ``client_credentials`` grant for
  registered service accounts (JWT access tokens, RS256, signed with the same key the mock
  publishes at ``/jwks``), ``/userinfo`` for those JWTs, and RFC 7662 introspection at
  ``/oauth2/introspect`` for both kinds of token.

Oracle control API (tests only, under ``/_oracle/``): ``GET stats`` (how many requests the
token/userinfo/introspection endpoints served, by grant and status), ``POST stats/reset``,
``POST config`` (``{"access_token_lifetime": s, "rotate_refresh_tokens": bool}``),
``PUT clients/{id}`` (``{"secret": ..., "claims": {...}}``), ``DELETE clients/{id}``,
``POST clients/{id}/revoke-tokens``.

With ``--state-file`` the users, tokens, clients and signing key are saved on exit and loaded
at start, so a provider stopped and restarted on the same port (``OidcOracle.restart()``)
still honours the refresh tokens it issued before.

Prints ``CLOUDVAC_ORACLE_READY {json}`` on stdout, serves until SIGTERM/SIGINT, exits 0.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import logging
import os
import resource
import secrets
import signal
import socket
import sys
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs, unquote_plus
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

T0 = time.monotonic()
READY_PREFIX = "CLOUDVAC_ORACLE_READY "
EXTRA_SCOPES = ("offline_access", "eduperson_entitlement", "voperson_id", "entitlements")
log = logging.getLogger("oracle.oidc")


def entitlement(vo: str, role: str = "vm_operator") -> str:
    return f"urn:mace:egi.eu:group:{vo}:role={role}#aai.egi.eu"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0, help="0 = any free port (default)")
    p.add_argument("--access-token-lifetime", type=int, default=3600, help="seconds")
    p.add_argument("--rotate-refresh-tokens", action="store_true")
    p.add_argument("--vo", default="vo.example.eu", help="VO of the default service account")
    p.add_argument("--client-id", default="cloudvac-sa", help="default service account")
    p.add_argument("--client-secret", default="cloudvac-sa-secret")
    p.add_argument("--state-file", default=None, help="persist state across restarts")
    return p.parse_args(argv)


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        log.debug(format, *args)


def _b64url_uint(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Provider:
    """The dispatcher: our endpoints first, everything else goes to oidc-provider-mock."""

    def __init__(self, args: argparse.Namespace, issuer: str) -> None:
        os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import flask
            import oidc_provider_mock
            import oidc_provider_mock._app as mock_app
            from authlib.common.security import generate_token
            from authlib.oauth2.rfc6750 import BearerTokenGenerator
            from joserfc import jwt
            from joserfc.jwk import RSAKey
        self.jwt = jwt
        self.RSAKey = RSAKey
        self.args = args
        self.issuer = issuer
        self.lock = threading.Lock()
        self.stats: Counter[str] = Counter()
        self.lifetime = int(args.access_token_lifetime)
        self.rotate = bool(args.rotate_refresh_tokens)
        # service accounts: client_id -> {"secret", "claims", "issued" (live JWT ids)}
        self.clients: dict[str, dict[str, Any]] = {}
        self.mock_app_module = mock_app

        # grant EGI's extra scopes (upstream only keeps openid/profile/email/address/phone)
        mock_app.Client.SCOPES_SUPPORTED = (*mock_app.Client.SCOPES_SUPPORTED, *EXTRA_SCOPES)
        provider = self

        class RotatingRefreshGrant(mock_app.RefreshTokenGrant):  # type: ignore[misc]
            def revoke_old_credential(self, refresh_token: Any) -> None:
                super().revoke_old_credential(refresh_token)
                if provider.rotate:
                    mock_app.storage.remove_refresh_token(refresh_token.token)

            @property
            def INCLUDE_NEW_REFRESH_TOKEN(self) -> bool:
                return provider.rotate

        self.app = oidc_provider_mock.app(access_token_max_age=timedelta(seconds=self.lifetime))
        self.app.logger.setLevel(logging.WARNING)
        with self.app.test_request_context():
            self.app.preprocess_request()
            self.storage = flask.g.oidc_provider_mock_storage
            server = flask.g._authlib_authorization_server
        server._token_grants = [
            (RotatingRefreshGrant if g is mock_app.RefreshTokenGrant else g, ext)
            for g, ext in server._token_grants
        ]
        server.register_token_generator(
            "default",
            BearerTokenGenerator(
                lambda *a, **k: generate_token(42),
                lambda *a, **k: generate_token(48),
                lambda client, grant_type: provider.lifetime,
            ),
        )
        self.mock_wsgi = self.app.wsgi_app.app  # skip werkzeug's interactive debugger
        self.app.wsgi_app = self.mock_wsgi
        self._load_state()
        if args.client_id not in self.clients:
            self.set_client(
                args.client_id,
                args.client_secret,
                {"eduperson_entitlement": [entitlement(args.vo)]},
            )
        self.signing_key = self.RSAKey.import_key(self.storage.jwk.as_dict(is_private=True))
        self.kid = self.storage.jwk.as_dict(is_private=False)["kid"]

    # -- state -----------------------------------------------------------------------------
    def set_client(self, client_id: str, secret: str, claims: dict[str, Any]) -> dict[str, Any]:
        sub = hashlib.sha256(client_id.encode()).hexdigest()[:32] + "@egi.eu"
        claims = {"sub": sub, **claims}
        with self.lock:
            self.clients[client_id] = {"secret": secret, "claims": claims, "issued": []}
        return {"client_id": client_id, "sub": claims["sub"]}

    def _load_state(self) -> None:
        path = self.args.state_file
        if not path or not os.path.exists(path):
            return
        from authlib import jose
        from oidc_provider_mock._storage import AccessToken, RefreshToken, User

        with open(path) as f:
            st = json.load(f)
        self.storage.jwk = jose.RSAKey.import_key(st["jwk"])
        for u in st["users"]:
            self.storage.store_user(User(sub=u["sub"], claims=u["claims"]))
        for t in st["access_tokens"]:
            t["expires_at"] = datetime.fromisoformat(t["expires_at"])
            self.storage.store_access_token(AccessToken(**t))
        for t in st["refresh_tokens"]:
            t["expires_at"] = datetime.fromisoformat(t["expires_at"])
            self.storage.store_refresh_token(RefreshToken(**t))
        self.clients = st["clients"]
        self.lifetime = st.get("lifetime", self.lifetime)
        self.rotate = st.get("rotate", self.rotate)
        self.stats.update(st.get("stats", {}))
        log.warning("loaded state from %s", path)

    def save_state(self) -> None:
        path = self.args.state_file
        if not path:
            return
        s = self.storage

        def tok(t: Any) -> dict[str, Any]:
            d = dict(t.__dict__)
            d["expires_at"] = d["expires_at"].isoformat()
            return d

        st = {
            "jwk": s.jwk.as_dict(is_private=True),
            "users": [{"sub": u.sub, "claims": u.claims} for u in s._users.values()],
            "access_tokens": [tok(t) for t in s.access_tokens()],
            "refresh_tokens": [tok(t) for t in s.refresh_tokens()],
            "clients": self.clients,
            "lifetime": self.lifetime,
            "rotate": self.rotate,
            "stats": dict(self.stats),
        }
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(st, f)
        os.replace(tmp, path)

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _json(
        start_response: Any, status: str, body: Any, headers: list[tuple[str, str]] | None = None
    ) -> list[bytes]:
        data = json.dumps(body).encode()
        start_response(
            status,
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(data))),
                ("Cache-Control", "no-store"),
                *(headers or []),
            ],
        )
        return [data]

    @staticmethod
    def _read_body(environ: dict[str, Any]) -> bytes:
        try:
            n = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            n = 0
        body = environ["wsgi.input"].read(n) if n > 0 else b""
        environ["wsgi.input"] = io.BytesIO(body)  # the mock may read it again
        environ["CONTENT_LENGTH"] = str(len(body))
        return body

    @staticmethod
    def _form(body: bytes) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}

    @staticmethod
    def _bearer(environ: dict[str, Any]) -> str | None:
        auth: str = environ.get("HTTP_AUTHORIZATION", "")
        if auth[:7].lower() == "bearer ":
            return auth[7:].strip()
        return None

    def _client_auth(self, environ: dict[str, Any], form: dict[str, str]) -> str | None:
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if auth[:6].lower() == "basic ":
            try:
                raw = base64.b64decode(auth[6:].strip()).decode()
                cid, _, secret = raw.partition(":")
                cid, secret = unquote_plus(cid), unquote_plus(secret)
            except (ValueError, UnicodeDecodeError):
                return None
        else:
            cid, secret = form.get("client_id", ""), form.get("client_secret", "")
        client = self.clients.get(cid)
        if client is None or not secrets.compare_digest(client["secret"], secret):
            return None
        return cid

    def _decode_jwt(self, token: str) -> dict[str, Any] | None:
        """Claims of one of our valid, unexpired, unrevoked JWT access tokens, else None."""
        if token.count(".") != 2:
            return None
        try:
            claims = dict(self.jwt.decode(token, self.signing_key).claims)
        except Exception:
            return None
        now = time.time()
        client = self.clients.get(str(claims.get("client_id")))
        if (
            claims.get("iss") != self.issuer
            or claims.get("exp", 0) <= now
            or client is None
            or claims.get("jti") not in client["issued"]
        ):
            return None
        return claims

    def _opaque(self, token: str) -> tuple[Any, Any] | None:
        at = self.storage.get_access_token(token)
        if at is None or at.is_expired():
            return None
        user = self.storage.get_user(at.user_id)
        return (at, user) if user is not None else None

    # -- our endpoints ---------------------------------------------------------------------
    def client_credentials(
        self, environ: dict[str, Any], form: dict[str, str], start: Any
    ) -> list[bytes]:
        cid = self._client_auth(environ, form)
        if cid is None:
            return self._json(
                start,
                "401 Unauthorized",
                {"error": "invalid_client", "error_description": "Invalid client credentials"},
                [("WWW-Authenticate", 'Basic realm="oidc-oracle"')],
            )
        client = self.clients[cid]
        wanted = form.get("scope", "openid").split()
        allowed = set(self.mock_app_module.Client.SCOPES_SUPPORTED)
        scope = " ".join(
            s for s in wanted if s in allowed or s.startswith("eduperson_entitlement:")
        )
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "iat": now,
            "nbf": now,
            "exp": now + self.lifetime,
            "jti": str(uuid.uuid4()),
            "client_id": cid,
            "azp": cid,
            "scope": scope,
            **client["claims"],
        }
        with self.lock:
            client["issued"] = [*client["issued"][-999:], claims["jti"]]
        token = self.jwt.encode(
            {"alg": "RS256", "kid": self.kid, "typ": "at+jwt"}, claims, self.signing_key
        )
        return self._json(
            start,
            "200 OK",
            {
                "access_token": token,
                "expires_in": self.lifetime,
                "token_type": "Bearer",
                "scope": scope,
            },
        )

    def userinfo_jwt(self, claims: dict[str, Any], start: Any) -> list[bytes]:
        out = {
            k: v
            for k, v in claims.items()
            if k not in ("iat", "nbf", "exp", "jti", "azp", "scope", "iss")
        }
        return self._json(start, "200 OK", out)

    def introspect(self, environ: dict[str, Any], form: dict[str, str], start: Any) -> list[bytes]:
        if self._client_auth(environ, form) is None:
            return self._json(
                start,
                "401 Unauthorized",
                {"error": "invalid_client", "error_description": "introspection needs a client"},
                [("WWW-Authenticate", 'Basic realm="oidc-oracle"')],
            )
        token = form.get("token", "")
        claims = self._decode_jwt(token)
        if claims is not None:
            return self._json(start, "200 OK", {"active": True, "token_type": "Bearer", **claims})
        hit = self._opaque(token)
        if hit is None:
            return self._json(start, "200 OK", {"active": False})
        at, user = hit
        from oidc_provider_mock._app import _user_claims_for_scope

        return self._json(
            start,
            "200 OK",
            {
                "active": True,
                "token_type": "Bearer",
                "iss": self.issuer,
                "scope": at.scope,
                "exp": int(at.expires_at.timestamp()),
                **_user_claims_for_scope(user, at.scope),
            },
        )

    def control(self, environ: dict[str, Any], path: str, start: Any) -> list[bytes]:
        method = environ["REQUEST_METHOD"]
        body = self._read_body(environ)
        data = json.loads(body) if body.strip() else {}
        parts = path.strip("/").split("/")[1:]  # after "_oracle"
        if parts == ["stats"] and method == "GET":
            return self._json(start, "200 OK", self._stats())
        if parts == ["stats", "reset"] and method == "POST":
            with self.lock:
                self.stats.clear()
            return self._json(start, "200 OK", self._stats())
        if parts == ["config"] and method in ("GET", "POST"):
            if "access_token_lifetime" in data:
                self.lifetime = int(data["access_token_lifetime"])
            if "rotate_refresh_tokens" in data:
                self.rotate = bool(data["rotate_refresh_tokens"])
            return self._json(
                start,
                "200 OK",
                {"access_token_lifetime": self.lifetime, "rotate_refresh_tokens": self.rotate},
            )
        if len(parts) == 2 and parts[0] == "clients" and method == "PUT":
            claims = data.get("claims", {})
            return self._json(start, "200 OK", self.set_client(parts[1], data["secret"], claims))
        if len(parts) == 2 and parts[0] == "clients" and method == "DELETE":
            with self.lock:
                gone = self.clients.pop(parts[1], None)
            return self._json(start, "200 OK" if gone else "404 Not Found", {"deleted": bool(gone)})
        if len(parts) == 3 and parts[0] == "clients" and parts[2] == "revoke-tokens":
            client = self.clients.get(parts[1])
            if client is None:
                return self._json(start, "404 Not Found", {"error": "no such client"})
            client["issued"] = []  # tokens issued so far stop validating
            return self._json(start, "200 OK", {"revoked": True})
        return self._json(start, "404 Not Found", {"error": "unknown oracle control path"})

    def _stats(self) -> dict[str, Any]:
        with self.lock:
            by_key = dict(self.stats)
        token = {k[6:]: v for k, v in by_key.items() if k.startswith("token:")}
        grants: Counter[str] = Counter()
        for k, v in token.items():
            grants[k.split(":")[0]] += v
        return {
            "token_requests": sum(grants.values()),
            "token_requests_by_grant": dict(grants),
            "token_responses": token,  # "<grant>:<status>" -> count
            "userinfo_requests": by_key.get("userinfo", 0),
            "introspection_requests": by_key.get("introspect", 0),
        }

    def _count(self, key: str) -> None:
        with self.lock:
            self.stats[key] += 1

    # -- WSGI ------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "") or "/"
        method = environ["REQUEST_METHOD"]
        if path.startswith("/_oracle/"):
            return self.control(environ, path, start_response)
        if path == "/.well-known/openid-configuration":
            return self.discovery(environ, start_response)
        if path == "/oauth2/token" and method == "POST":
            form = self._form(self._read_body(environ))
            grant = form.get("grant_type", "?")

            def counting_start(
                status: str, headers: list[tuple[str, str]], exc_info: Any = None
            ) -> Any:
                self._count(f"token:{grant}:{status.split()[0]}")
                return start_response(status, headers, exc_info)

            if grant == "client_credentials":
                return self.client_credentials(environ, form, counting_start)
            return self.mock_wsgi(environ, counting_start)
        if path == "/oauth2/introspect" and method == "POST":
            self._count("introspect")
            return self.introspect(environ, self._form(self._read_body(environ)), start_response)
        if path == "/userinfo":
            self._count("userinfo")
            token = self._bearer(environ)
            if token and token.count(".") == 2:
                claims = self._decode_jwt(token)
                if claims is None:
                    return self._json(
                        start_response,
                        "401 Unauthorized",
                        {"error": "invalid_token"},
                        [("WWW-Authenticate", 'Bearer error="invalid_token"')],
                    )
                return self.userinfo_jwt(claims, start_response)
        return self.mock_wsgi(environ, start_response)

    def discovery(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        captured: dict[str, Any] = {}

        def cap(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], None]:
            captured["status"] = status
            return lambda _data: None

        body = b"".join(self.mock_wsgi(environ, cap))
        doc = json.loads(body)
        doc["issuer"] = self.issuer
        doc["grant_types_supported"] = [*doc["grant_types_supported"], "client_credentials"]
        doc["scopes_supported"] = list(self.mock_app_module.Client.SCOPES_SUPPORTED)
        doc["introspection_endpoint"] = self.issuer + "/oauth2/introspect"
        doc["token_endpoint_auth_methods_supported"] = ["client_secret_basic", "client_secret_post"]
        doc["claims_supported"] = ["sub", "email", "eduperson_entitlement", "client_id"]
        return self._json(start_response, "200 OK", doc)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    with socket.socket() as s:  # resolve port 0; a restart reuses its port (TIME_WAIT ok)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", args.port))
        port = s.getsockname()[1]
    issuer = f"http://127.0.0.1:{port}"
    provider = Provider(args, issuer)
    server = make_server(
        "127.0.0.1", port, provider, server_class=ThreadingWSGIServer, handler_class=QuietHandler
    )
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
    ).start()
    ready = {
        "ready": True,
        "kind": "oidc",
        "pid": os.getpid(),
        "port": port,
        "base_url": issuer,
        "issuer": issuer,
        "auth_url": issuer,  # (OracleInfo field; an OP has no Keystone auth_url)
        "discovery_url": issuer + "/.well-known/openid-configuration",
        "token_endpoint": issuer + "/oauth2/token",
        "authorization_endpoint": issuer + "/oauth2/authorize",
        "userinfo_endpoint": issuer + "/userinfo",
        "introspection_endpoint": issuer + "/oauth2/introspect",
        "jwks_uri": issuer + "/jwks",
        "username": args.client_id,  # the default service account (client_credentials)
        "password": args.client_secret,
        "project_name": args.vo,
        "client_id": args.client_id,
        "client_secret": args.client_secret,
        "client_sub": provider.clients[args.client_id]["claims"]["sub"],
        "vo": args.vo,
        "entitlement": entitlement(args.vo),
        "access_token_lifetime": provider.lifetime,
        "rotate_refresh_tokens": provider.rotate,
        "state_file": args.state_file,
        "startup_s": round(time.monotonic() - T0, 2),
        "maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    sys.stdout.write(READY_PREFIX + json.dumps(ready) + "\n")
    sys.stdout.flush()
    try:
        while not stop.wait(0.5):
            pass
        print("oidc oracle: stopping", file=sys.stderr, flush=True)
    finally:
        server.shutdown()
        server.server_close()
        provider.save_state()
    return 0


if __name__ == "__main__":
    sys.exit(main())
