"""Reading secrets from files or the environment, never from the configuration itself.

A secret file must belong to no group or others (mode 0600 or stricter), as DIRAC's and
site admins' own practice requires; a looser file is refused with the chmod to run.  A TLS
private key may be shared with a group (Debian's ssl-cert), never with others.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class SecretError(RuntimeError):
    """A secret that cannot be read safely.  ``str()`` never contains the secret."""


def check_secret_file(path: Path, what: str, shown: str | None = None,
                      group_ok: bool = False) -> None:
    """Raise SecretError if ``path`` is missing, not a file or readable by others (or by
    its group, unless ``group_ok``: a TLS key shared with a group such as ssl-cert).
    ``shown``: how to name the file in the message (the option's text as written; a
    ``Path`` would turn ``https://x`` into ``https:/x``)."""
    name = str(path) if shown is None else shown
    try:
        info = path.stat()
    except OSError as exc:
        raise SecretError(f"{what} file {name}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise SecretError(f"{what} file {name} is not a regular file")
    if group_ok and info.st_mode & stat.S_IRWXO:
        raise SecretError(f"{what} file {name} is accessible by others "
                          f"(mode {stat.S_IMODE(info.st_mode):04o}); run chmod o-rwx {name}")
    if not group_ok and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(f"{what} file {name} is accessible by group or others "
                          f"(mode {stat.S_IMODE(info.st_mode):04o}); run chmod 600 {name}")


def read_secret(file: Path | None, env: str | None, what: str) -> str:
    """The secret from ``file`` (first line, stripped) or environment variable ``env``."""
    if file is not None:
        check_secret_file(file, what)
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretError(f"{what} file {file}: cannot read "
                              f"({type(exc).__name__})") from None
        value = text.splitlines()[0].strip() if text.strip() else ""
        if not value:
            raise SecretError(f"{what} file {file} is empty")
        return value
    if env is not None:
        value = os.environ.get(env, "").strip()
        if not value:
            raise SecretError(f"{what}: environment variable {env} is not set or empty")
        return value
    raise SecretError(f"{what}: no file or environment variable configured")
