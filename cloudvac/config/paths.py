"""Path-like options checked as the operator wrote them: a relative path would depend on
the daemon's working directory, a URL is not fetched, and a ``Path`` would print
``https://x`` as ``https:/x``, so neither reaches one."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

_URL = re.compile(r"^[a-z][a-z0-9+.-]*://")


def _absolute(value: object) -> object:
    if isinstance(value, str) and not Path(value).is_absolute():
        raise ValueError("must be an absolute path" + (
            " (a URL is not fetched: download the file)" if _URL.match(value) else ""))
    return value


def _template(value: str | None) -> str | None:
    if value is None or value.startswith("builtin:") or Path(value).is_absolute():
        return value
    if _URL.match(value):
        raise ValueError("URLs are not fetched: download the template and give its "
                         "absolute path, or use builtin:NAME")
    raise ValueError("must be builtin:NAME or an absolute path")


AbsolutePath = Annotated[Path, BeforeValidator(_absolute)]
"""A file named by its absolute path."""
Template = Annotated[str, AfterValidator(_template)]
"""A user_data template: ``builtin:NAME`` or an absolute path."""
