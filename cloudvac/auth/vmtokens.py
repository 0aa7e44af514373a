"""Per-VM tokens: every VM authenticates as itself.

A token is ``v1.<subject>.<expiry>.<signature>``: the subject is ``space/name`` (base64url)
and the signature is HMAC-SHA256, under a server secret, of subject and expiry.  It is
handed to the VM in its user_data and sent back as ``Authorization: Bearer <token>``.
Knowing one VM's token gives nothing about another's; the server needs no table of
tokens (nothing to leak, nothing to lose), and verification is constant-time.

The secret is generated on first start into ``STATE_DIR/server.secret`` with mode 0600;
a secret file readable by group or others is refused.

Every instance sharing a store must sign with the same secret, or a VM's token is refused
by every instance but the one that rendered its user_data.  The store keeps the secret's
fingerprint (``shared_secret``): HMAC-SHA256 of a fixed label under the secret, which tells
nothing about the secret.  The first instance records it; an instance whose secret file is
missing or different refuses to start, naming what to copy, and never creates its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

SECRET_FILE = "server.secret"
VERSION = "v1"
FINGERPRINT_FACT = "server_secret_fingerprint"
_FINGERPRINT_LABEL = b"cloudvac server secret fingerprint v1"
_COPY_IT = (f"this store is shared: copy STATE_DIR/{SECRET_FILE} from an instance that already "
            "runs, mode 0600")


class SecretFileError(RuntimeError):
    """The server secret file cannot be used (unsafe mode, unreadable, malformed)."""


class TokenError(ValueError):
    """A token that does not authenticate this request; ``status`` is 401 (no valid token)
    or 403 (a valid token of another machine).  ``str()`` is safe to show."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


def load_or_create_secret(state_dir: Path) -> bytes:
    """Read the server secret, creating it (0600, atomically) on first start."""
    path = state_dir / SECRET_FILE
    state_dir.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = state_dir / f".{SECRET_FILE}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)  # never replaces a secret another process just created
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretFileError(f"{path} is accessible by group or others "
                                  f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it")
        text = path.read_text().strip()
    except OSError as exc:
        raise SecretFileError(f"cannot read {path}: {exc.strerror}") from exc
    if len(text) < 32:
        raise SecretFileError(f"{path} holds no usable secret (at least 32 characters)")
    return text.encode()


class Facts(Protocol):
    """The store's facts (``store/facts.py``), as far as the secret needs them."""

    def fact(self, key: str) -> str | None: ...

    def claim_fact(self, key: str, value: str) -> str: ...


def fingerprint(secret: bytes) -> str:
    """What the store keeps to recognise the secret: hex HMAC-SHA256 of a fixed label."""
    return hmac.new(secret, _FINGERPRINT_LABEL, hashlib.sha256).hexdigest()


def shared_secret(state_dir: Path, facts: Facts, record: bool = True) -> bytes:
    """The server secret, checked against the fingerprint the store holds.

    A store that knows a secret and a missing file: SecretFileError, and no file created
    (a new one would sign tokens no other instance accepts).  A file whose fingerprint
    differs: SecretFileError naming the first 8 hex digits of both.  A store with no
    fingerprint yet gets ours (with ``record``; the first instance), the file created if
    needed."""
    path = state_dir / SECRET_FILE
    held = facts.fact(FINGERPRINT_FACT)
    if held is not None and not path.exists():
        raise SecretFileError(f"{path} is missing and the store already serves VMs with the "
                              f"secret of fingerprint {held[:8]}: {_COPY_IT}")
    secret = load_or_create_secret(state_dir)
    ours = fingerprint(secret)
    if held is None and record:
        held = facts.claim_fact(FINGERPRINT_FACT, ours)
    if held is not None and not hmac.compare_digest(held, ours):
        raise SecretFileError(f"{path} (fingerprint {ours[:8]}) is not the secret of the "
                              f"store's other instances (fingerprint {held[:8]}): {_COPY_IT}")
    return secret


@dataclass(frozen=True, slots=True)
class TokenSigner:
    secret: bytes

    def _signature(self, subject: str, expires: int) -> str:
        message = f"{VERSION}|{subject}|{expires}".encode()
        return _b64(hmac.digest(self.secret, message, "sha256"))  # one-shot: OpenSSL's C

    def token(self, space: str, name: str, expires: float) -> str:
        """The token of machine ``name`` in ``space``, valid until ``expires`` (unix time)."""
        subject, exp = f"{space}/{name}", int(expires)
        return f"{VERSION}.{_b64(subject.encode())}.{exp}.{self._signature(subject, exp)}"

    def verify(self, token: str, space: str, name: str, now: float) -> None:
        """Raise TokenError unless ``token`` was issued for this machine and is unexpired:
        401 for a forged, malformed or expired token, 403 for another machine's token."""
        if self.subject(token, now) != (space, name):
            raise TokenError(403, "token belongs to another machine")

    def subject(self, token: str, now: float) -> tuple[str, str]:
        """The (space, machine name) ``token`` was issued for; TokenError 401 unless it is
        genuine and unexpired.

        A token has exactly one spelling, the one ``token`` writes (ASCII only, no
        padding, no leading zero, bounded length); any other is malformed."""
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise TokenError(401, "malformed token")
        encoded, expiry, signature = match.groups()
        try:
            subject = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        except (ValueError, UnicodeDecodeError):
            raise TokenError(401, "malformed token") from None
        if _b64(subject.encode()) != encoded:  # unused trailing bits: another spelling
            raise TokenError(401, "malformed token")
        expires = int(expiry)
        if not hmac.compare_digest(self._signature(subject, expires).encode(),
                                   signature.encode()):
            raise TokenError(401, "token signature invalid")
        if expires < now:
            raise TokenError(401, "token expired")
        space, _, name = subject.partition("/")
        return space, name


#: ``v1.<subject>.<expiry>.<signature>``: subject base64url without padding (a space and a
#: machine name of at most 63 characters each), expiry in whole unix seconds without a
#: leading zero (12 digits reach the year 33658), HMAC-SHA256 in base64url (43 characters).
_TOKEN = re.compile(rf"{VERSION}\.([A-Za-z0-9_-]{{2,172}})\.([1-9][0-9]{{0,11}})"
                    r"\.([A-Za-z0-9_-]{43})", re.ASCII)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
