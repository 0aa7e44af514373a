"""The lowest of the in-VM agent's modules: its log, its config and its HTTP to the manager.

Shipped and run beside ``agent.py`` (which documents the config keys and the server contract),
so the same rules hold: Python 3.6+, standard library only, nothing of cloudvac imported. It is
the one owner of what the agent's modules share: ``log`` (which masks the token), the token
list it masks, ``Config`` and ``ConfigError``.
"""

# ruff: noqa: UP006, UP035, UP045
# (typing.List/Optional instead of list[...] and X | None: those fail at runtime on Python 3.6.)

import http.client
import json
import os
import random
import re
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, List, Optional, Tuple

FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
TOKEN_RE = re.compile(r"[\x21-\x7e]+")  # no whitespace: it goes verbatim into a header
SHUTDOWN_FILE = "shutdown_message"
LOST = (401, 403, 404, 410)  # the manager no longer knows or accepts this VM
RETRY_BASE_SECONDS, RETRY_MAX_SECONDS = 0.5, 30.0
DEFAULTS: Dict[str, Any] = {
    "heartbeat_period_seconds": 60.0, "heartbeat_file": "heartbeat", "logs": [],
    "max_log_bytes": 1048576, "shutdown_message_path": None,
    "poweroff_command": ["systemctl", "poweroff"], "final_upload_seconds": 300.0,
    "request_timeout_seconds": 20.0, "ca_file": None, "terminate_grace_seconds": 30.0,
    "unreachable_poweroff_seconds": None, "deadline": None, "machinefeatures_url": None,
    "jobfeatures_url": None, "features_dir": "/var/run/cloudvac"}

_secrets: List[str] = []  # replaced by *** in every log line
_log_lock = threading.Lock()


def log(message: str) -> None:
    for secret in _secrets:
        message = message.replace(secret, "***")
    with _log_lock:
        sys.stderr.write(f"{utc(time.time())} cloudvac-agent: {message}\n")
        sys.stderr.flush()


def utc(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


class ConfigError(Exception):
    pass


class Config:
    def __init__(self, raw: Dict[str, Any]) -> None:
        unknown = sorted(set(raw) - set(DEFAULTS) - {"joboutputs_url", "token"})
        if unknown:
            # A newer server may render keys this agent does not know: say so, carry on.
            log("ignoring unknown config keys: " + ", ".join(unknown))
        token = _string(raw, "token", None)
        if not token or not TOKEN_RE.fullmatch(token):
            raise ConfigError("token: required, printable ASCII without spaces")
        _secrets.append(token)
        self.token: str = token
        url = _string(raw, "joboutputs_url", None)
        if not url or not url.startswith(("http://", "https://")):
            raise ConfigError("joboutputs_url: required http:// or https:// URL")
        self.joboutputs_url = url.rstrip("/")
        self.heartbeat_period_seconds = _number(raw, "heartbeat_period_seconds")
        self.heartbeat_file = _string(raw, "heartbeat_file", DEFAULTS["heartbeat_file"]) or ""
        if not FILE_NAME_RE.fullmatch(self.heartbeat_file) or self.heartbeat_file == SHUTDOWN_FILE:
            raise ConfigError("heartbeat_file: not an allowed file name")
        self.logs = _string_list(raw, "logs")
        self.max_log_bytes = int(_number(raw, "max_log_bytes"))
        self.shutdown_message_path = _string(raw, "shutdown_message_path", None)
        self.poweroff_command = _string_list(raw, "poweroff_command")
        if not self.poweroff_command:
            raise ConfigError("poweroff_command: must not be empty")
        self.final_upload_seconds = _number(raw, "final_upload_seconds")
        self.request_timeout_seconds = _number(raw, "request_timeout_seconds")
        self.ca_file = _string(raw, "ca_file", None)
        self.terminate_grace_seconds = _number(raw, "terminate_grace_seconds")
        self.unreachable_poweroff_seconds, self.deadline = (
            None if raw.get(key) is None else _number(raw, key)
            for key in ("unreachable_poweroff_seconds", "deadline"))
        self.machinefeatures_url, self.jobfeatures_url = (
            _url(raw, key) for key in ("machinefeatures_url", "jobfeatures_url"))
        if (self.machinefeatures_url is None) != (self.jobfeatures_url is None):
            raise ConfigError("machinefeatures_url and jobfeatures_url: both or neither")
        features_dir = _string(raw, "features_dir", DEFAULTS["features_dir"])
        if not features_dir or not os.path.isabs(features_dir):
            raise ConfigError("features_dir: must be an absolute path")
        self.features_dir = features_dir


def _url(raw: Dict[str, Any], key: str) -> Optional[str]:
    value = _string(raw, key, None)
    if value is not None and not value.startswith(("http://", "https://")):
        raise ConfigError(f"{key}: must be an http:// or https:// URL")
    return None if value is None else value.rstrip("/")


def _string(raw: Dict[str, Any], key: str, default: Optional[str]) -> Optional[str]:
    value = raw.get(key, default)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{key}: must be a string")
    return value


def _number(raw: Dict[str, Any], key: str) -> float:
    value = raw.get(key, DEFAULTS[key])
    # bool is an int in Python, but "heartbeat_period_seconds": true is surely a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{key}: must be a positive number")
    return float(value)


def _string_list(raw: Dict[str, Any], key: str) -> List[str]:
    value = raw.get(key, DEFAULTS[key])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{key}: must be a list of strings")
    return list(value)


def load_config(path: str) -> Config:
    try:
        with open(path, "rb") as handle:
            raw = json.loads(handle.read().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must hold a JSON object")
    return Config(raw)


class Uploader:
    def __init__(self, config: Config) -> None:
        self.config = config
        # No environment proxies: http_proxy on a VM usually points at a CVMFS squid, which
        # must not see the token. Redirects are never followed for PUT, so it cannot leak.
        # Nor for GET (urllib would resend the Authorization header to the target).
        handlers: List[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({}),
                                                      _NoRedirect()]
        urls = (config.joboutputs_url, config.machinefeatures_url, config.jobfeatures_url)
        if any(url and url.startswith("https://") for url in urls):
            context = ssl.create_default_context(cafile=config.ca_file)
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self.opener = urllib.request.build_opener(*handlers)
        # The manager's last answer (monotonic); starting counts. A float swap is atomic.
        self.answered_at = time.monotonic()

    def put(self, name: str, body: bytes, deadline: float,
            stop: Optional[threading.Event] = None) -> Tuple[Optional[int], str]:
        """Upload until stored, refused for good, past deadline or stopped: (status, problem).
        Only the heartbeat passes ``stop``; it logs state changes itself, so this stays quiet."""
        say: Callable[[str], None] = log if stop is None else (lambda message: None)
        attempt, what = 0, "not tried"
        status: Optional[int] = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0.05 or (stop is not None and stop.is_set()):
                say(f"PUT {name}: gave up after {attempt} tries: {what}")
                return status, what
            status, detail = self._once(name, body, min(self.config.request_timeout_seconds,
                                                        remaining))
            what = f"HTTP {status} {detail}" if status else detail
            if status is not None and 200 <= status < 300:
                self.answered_at = time.monotonic()
                say(f"PUT {name}: stored ({len(body)} bytes)")
                return status, ""
            if status is not None and status < 500 and status not in (408, 429):
                if status >= 400 and status not in LOST:  # see agent.py's docstring
                    self.answered_at = time.monotonic()
                say(f"PUT {name}: refused, not retried: {what}")
                return status, what
            delay = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** attempt)
            delay = min(delay * random.uniform(0.5, 1.5), deadline - time.monotonic())
            attempt += 1
            say(f"PUT {name}: {what}; retry {attempt} in {max(delay, 0):.1f}s")
            if delay > 0:
                (stop or threading.Event()).wait(delay)

    def get(self, url: str, timeout: float) -> Tuple[Optional[int], bytes, str]:
        """One GET with the token: (status or None, body if 200, problem)."""
        request = urllib.request.Request(url, headers={
            "Authorization": "Bearer " + self.config.token})
        try:
            with self.opener.open(request, timeout=timeout) as response:
                body = response.read(4096)
                self.answered_at = time.monotonic()
                return int(response.getcode()), body, ""
        except urllib.error.HTTPError as exc:
            exc.close()
            if 400 <= exc.code < 500 and exc.code not in (*LOST, 408, 429):
                self.answered_at = time.monotonic()
            return exc.code, b"", f"HTTP {exc.code}"
        except (OSError, http.client.HTTPException) as exc:
            return None, b"", _problem(exc)

    def _once(self, name: str, body: bytes, timeout: float) -> Tuple[Optional[int], str]:
        request = urllib.request.Request(
            self.config.joboutputs_url + "/" + name, data=body, method="PUT",
            headers={"Authorization": "Bearer " + self.config.token,
                     "Content-Type": "application/octet-stream"})
        try:
            with self.opener.open(request, timeout=timeout) as response:
                response.read()
                return int(response.getcode()), ""
        except urllib.error.HTTPError as exc:
            try:
                detail = exc.read(2048).decode("utf-8", "replace")
                detail = str(json.loads(detail).get("detail", detail))
            except (OSError, ValueError, AttributeError, http.client.HTTPException):
                detail = exc.reason if isinstance(exc.reason, str) else ""
            finally:
                exc.close()
            return exc.code, detail[:200]
        except (OSError, http.client.HTTPException) as exc:  # refused, timeout, TLS, reset...
            return None, _problem(exc)


def _problem(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)  # URLError wraps the interesting one
    cause = reason if isinstance(reason, BaseException) else exc
    return f"{type(cause).__name__}: {cause}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx then surfaces as an HTTPError
