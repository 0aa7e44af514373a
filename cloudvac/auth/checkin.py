"""EGI Check-in access tokens for a daemon: refresh-token or client-credentials grant.

Contract of a token source: ``access_token()`` returns a token valid for at least
MIN_LIFETIME seconds, calling the provider only when the cached one is too old (one
provider call per access-token lifetime at most); ``force=True`` asks anew (after Keystone
refused the token).  Failures are classified:

* ``CredentialDead`` (an ``AuthFailed``): the provider said ``invalid_grant`` or
  ``invalid_client``.  Not retried: every later call fails at once with the same message
  until the operator replaces the credential file (its modification time changes).
* ``ProviderUnavailable`` (a ``Retryable``): connection errors, timeouts, 5xx.  Later calls
  fail at once during an exponential, jittered back-off, so a provider outage costs one
  request per back-off period, not one per cycle.

Rotated refresh tokens are written (atomically, mode 0600) before the new access token is
handed out, into the state directory (``STATE_DIR/checkin/``), never over the configured
file: the configuration directory is read-only to the daemon (``ProtectSystem=strict``) and
belongs to the operator.  The copy records which configured token it descends from (a
SHA-256 prefix), and is used only while the configured file still holds that token: an
operator who puts a new token in the configured file is obeyed, whatever the files' times.
Spaces configured with the same file share one copy, as they shared the file.  Tokens
are never logged: log lines carry the issuer, client, grant, HTTP status,
``expires_in`` and a short SHA-256 prefix at most.  What the provider says in a refusal
(``error``, ``error_description``) is redacted before it enters a message: a provider may
echo the request, refresh token and ``Authorization: Basic`` header included.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cloudvac.config.secrets import read_secret
from cloudvac.model.errors import AuthFailed, Retryable
from cloudvac.model.redact import redact

log = logging.getLogger("cloudvac.auth.checkin")
MIN_LIFETIME = 60.0
BACKOFF_START, BACKOFF_MAX = 5.0, 300.0
ERROR_CHARS, DESCRIPTION_CHARS = 100, 200  # the provider's words in a message, redacted


class CredentialDead(AuthFailed):
    """The Check-in credential was refused; an operator must replace it."""


class ProviderUnavailable(Retryable):
    """Check-in cannot be reached now."""


@dataclass(frozen=True, slots=True)
class AccessToken:
    value: str
    expires_at: float

    def __repr__(self) -> str:  # never show the token itself
        return f"AccessToken(sha256:{fingerprint(self.value)}, expires_at={self.expires_at:.0f})"


def fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:10]


@dataclass(frozen=True, slots=True)
class CheckinClient:
    """cloudvac as one OIDC client at one Check-in issuer, and where its secrets are."""

    issuer: str
    client_id: str
    grant: str
    """``refresh_token`` or ``client_credentials``."""
    scope: str
    client_secret: Callable[[], str | None]
    """Reads the client secret when it is needed (None: a public client)."""
    refresh_token_file: Path | None = None
    refresh_token_env: str | None = None
    timeout: float = 20.0
    rotated_dir: Path | None = None
    """Where rotated refresh tokens are kept (``STATE_DIR/checkin``); None: in memory."""


def rotated_path(configured: Path, directory: Path) -> Path:
    """The rotated copy of the refresh token configured in ``configured``: one per
    configured file (its name, and a digest of its absolute path)."""
    digest = hashlib.sha256(str(configured.absolute()).encode()).hexdigest()[:12]
    return directory / f"{configured.name}.{digest}.rotated"


class CheckinTokenSource:
    """One OIDC client at one issuer using one grant (``refresh_token`` or
    ``client_credentials``).  Thread-safe: keystoneauth calls it from worker threads."""

    def __init__(self, client: CheckinClient, clock: Callable[[], float] = time.time,
                 on_call: Callable[[str], None] | None = None) -> None:
        """``on_call(outcome)`` is told of every request to the token endpoint."""
        self.issuer, self.client_id = client.issuer.rstrip("/"), client.client_id
        self.grant, self.scope = client.grant, client.scope
        self._secret, self._rt_file, self._rt_env = client.client_secret, \
            client.refresh_token_file, client.refresh_token_env
        self._rt_copy = rotated_path(self._rt_file, client.rotated_dir) \
            if self._rt_file is not None and client.rotated_dir is not None else None
        timeout = client.timeout
        self._rt_memory: str | None = None
        self.clock, self.on_call = clock, on_call or (lambda outcome: None)
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=5.0),
                                  follow_redirects=False, trust_env=False)
        self._lock = threading.Lock()
        self._token: AccessToken | None = None
        self._endpoints: dict[str, str] = {}
        self._dead: tuple[str, float | None] | None = None  # (message, file mtime then)
        self._down_until = 0.0
        self._backoff = BACKOFF_START

    # -- public ------------------------------------------------------------------------
    @property
    def expires_at(self) -> float | None:
        return self._token.expires_at if self._token else None

    def access_token(self, force: bool = False) -> AccessToken:
        with self._lock:
            now = self.clock()
            if not force and self._token and self._token.expires_at - now > MIN_LIFETIME:
                return self._token
            self._check_dead()
            if now < self._down_until:
                raise ProviderUnavailable(f"Check-in {self.issuer} unreachable; next try in "
                                          f"{self._down_until - now:.0f}s")
            self._token = self._request_token(now)
            return self._token

    def refresh_token_expires_at(self) -> float | None:
        """The refresh token's own expiry when it is a JWT (Keycloak's are), else None."""
        if self.grant != "refresh_token":
            return None
        try:
            parts = self._refresh_token().split(".")
            if len(parts) != 3:
                return None
            payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
            return float(payload["exp"]) if "exp" in payload else None
        except (ValueError, KeyError, TypeError, AuthFailed):
            return None

    def userinfo(self, token: AccessToken) -> dict[str, Any]:
        """Claims of ``token`` (for diagnosing a refusal); empty if unavailable."""
        try:
            url = self._discover().get("userinfo_endpoint")
            if not url:
                return {}
            response = self._http.get(url, headers={"Authorization": f"Bearer {token.value}"})
            return dict(response.json()) if response.status_code == 200 else {}
        except (httpx.HTTPError, ValueError, ProviderUnavailable):
            return {}

    def close(self) -> None:
        self._http.close()

    # -- internals ---------------------------------------------------------------------
    def _check_dead(self) -> None:
        if self._dead is None:
            return
        message, mtime = self._dead
        if self._rt_file is not None and _mtime(self._rt_file) != mtime:
            log.info("space=- machinetype=- machine=- %s changed: trying the new refresh "
                     "token", self._rt_file)
            self._dead = None
            return
        raise CredentialDead(message)

    def _discover(self) -> dict[str, str]:
        if not self._endpoints:
            url = f"{self.issuer}/.well-known/openid-configuration"
            try:
                response = self._http.get(url)
            except httpx.HTTPError as exc:
                raise ProviderUnavailable(f"Check-in discovery {url}: "
                                          f"{type(exc).__name__}") from None
            if response.status_code != 200:
                raise ProviderUnavailable(f"Check-in discovery {url}: HTTP "
                                          f"{response.status_code}")
            doc = response.json()
            self._endpoints = {k: str(doc[k]) for k in ("token_endpoint", "userinfo_endpoint")
                               if k in doc}
        return self._endpoints

    def _refresh_token(self) -> str:
        """The refresh token to use: the one rotated last (memory, else the state
        directory's copy while it descends from the configured token), else the configured."""
        if self._rt_memory is not None:
            return self._rt_memory
        configured = read_secret(self._rt_file, self._rt_env, "egi_checkin_refresh_token")
        if self._rt_copy is None or not self._rt_copy.exists():
            return configured
        rotated, origin = _read_copy(self._rt_copy)
        return rotated if origin == fingerprint(configured) else configured

    def _request_token(self, now: float) -> AccessToken:
        try:
            endpoint = self._discover()["token_endpoint"]
        except (KeyError, ProviderUnavailable) as exc:
            self._fail_later()
            raise ProviderUnavailable(str(exc)) from None
        form = {"grant_type": self.grant, "scope": self.scope}
        if self.grant == "refresh_token":
            form["refresh_token"] = self._refresh_token()
        secret = self._secret()
        if not secret:
            form["client_id"] = self.client_id  # a public client: no secret to send
        try:
            if secret:
                response = self._http.post(endpoint, data=form,
                                           auth=httpx.BasicAuth(self.client_id, secret))
            else:
                response = self._http.post(endpoint, data=form)
        except httpx.HTTPError as exc:
            self.on_call("unreachable")
            self._fail_later()
            raise ProviderUnavailable(f"Check-in token endpoint: {type(exc).__name__}") from None
        self.on_call(str(response.status_code))
        if response.status_code >= 500:
            self._fail_later()
            raise ProviderUnavailable(f"Check-in token endpoint: HTTP {response.status_code}")
        body: dict[str, Any] = {}
        with contextlib.suppress(ValueError):
            body = dict(response.json())
        if response.status_code != 200 or "access_token" not in body:
            return self._refused(response.status_code, body)
        self._down_until, self._backoff = 0.0, BACKOFF_START
        if self.grant == "refresh_token" and body.get("refresh_token") not in (
                None, form.get("refresh_token")):
            self._store_rotated(str(body["refresh_token"]))
        lifetime = float(body.get("expires_in") or 300)
        token = AccessToken(str(body["access_token"]), now + lifetime)
        log.info("space=- machinetype=- machine=- Check-in %s grant for client %s: access "
                 "token sha256:%s, expires_in %.0fs", self.grant, self.client_id,
                 fingerprint(token.value), lifetime)
        return token

    def _refused(self, status: int, body: dict[str, Any]) -> AccessToken:
        code = str(body.get("error") or f"HTTP {status}")
        error = redact(code, ERROR_CHARS)
        description = redact(str(body.get("error_description") or ""), DESCRIPTION_CHARS)
        if code in ("invalid_grant", "invalid_client", "unauthorized_client"):
            what = ("refresh token expired or revoked: obtain a new one (Check-in token "
                    "portal or oidc-agent) and replace egi_checkin_refresh_token_file"
                    if code == "invalid_grant" and self.grant == "refresh_token"
                    else "client id/secret refused: check egi_checkin_client_id and the secret")
            message = f"Check-in {self.issuer} refused the {self.grant} grant ({error}" + \
                (f": {description}" if description else "") + f"); {what}"
            mtime = _mtime(self._rt_file) if self._rt_file else None
            self._dead = (message, mtime)
            log.error("space=- machinetype=- machine=- %s", message)
            raise CredentialDead(message)
        raise AuthFailed(f"Check-in {self.issuer} refused the {self.grant} grant ({error}"
                         + (f": {description}" if description else "") + ")")

    def _store_rotated(self, new: str) -> None:
        """Persist a rotated refresh token before using anything it bought."""
        if self._rt_file is None or self._rt_copy is None:
            self._rt_memory = new  # nowhere to keep it: it lives in memory
            log.warning("space=- machinetype=- machine=- Check-in rotated the refresh token, "
                        "which came from %s: it is kept in memory only",
                        self._rt_env or f"{self._rt_file} (no state directory)")
            return
        origin = fingerprint(read_secret(self._rt_file, None, "egi_checkin_refresh_token"))
        tmp = self._rt_copy.with_name(f".{self._rt_copy.name}.{os.getpid()}")
        try:
            self._rt_copy.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{new}\n{ORIGIN}{origin} in {self._rt_file}\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._rt_copy)
        except OSError as exc:  # the old token is spent: keep the new one for this run
            self._rt_memory = new
            log.error("space=- machinetype=- machine=- Check-in rotated the refresh token from "
                      "%s, but it cannot be saved to %s (%s): it is kept in memory only and "
                      "lost at the next restart", self._rt_file, self._rt_copy,
                      exc.strerror or type(exc).__name__)
            return
        log.info("space=- machinetype=- machine=- Check-in rotated the refresh token from %s; "
                 "new one saved to %s", self._rt_file, self._rt_copy)

    def _fail_later(self) -> None:
        self._down_until = self.clock() + self._backoff * (0.5 + random.random())
        self._backoff = min(BACKOFF_MAX, self._backoff * 2)


ORIGIN = "# rotated from sha256:"
"""The second line of a rotated copy: the fingerprint of the configured token it descends
from, and the configured file."""


def _read_copy(path: Path) -> tuple[str, str | None]:
    """A rotated copy's token and the fingerprint of the configured token it descends from
    (None if the copy does not say)."""
    rotated = read_secret(path, None, "rotated egi_checkin_refresh_token")
    lines = path.read_text(encoding="utf-8").splitlines()
    said = lines[1] if len(lines) > 1 and lines[1].startswith(ORIGIN) else ""
    return rotated, said[len(ORIGIN):].split(" ", 1)[0] or None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
