"""A wheelhouse for offline installs in tests, made from what the project's virtualenv
already has: each installed distribution that a wheel needs at run time (its
``Requires-Dist`` closure, extras and markers evaluated) is packed back into a wheel from
the files its ``RECORD`` lists.  Tests never reach a package index.

The wheels are the exact versions the test suite runs with; a distribution that is not
installed (an extra the virtualenv lacks) is an error naming it.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from email.parser import Parser
from importlib.metadata import Distribution, distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

INSTALL_ONLY = {"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"}


def _requires(metadata: str) -> list[Requirement]:
    return [Requirement(r) for r in Parser().parsestr(metadata).get_all("Requires-Dist") or []]


def _wanted(req: Requirement, extras: set[str]) -> bool:
    return req.marker is None or any(req.marker.evaluate({"extra": e})
                                     for e in extras | {""})


def closure(wheel: Path, extras: set[str], site: Path) -> list[Distribution]:
    """The installed distributions ``wheel`` needs (with ``extras``), from ``site``."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        todo = [(r, extras) for r in _requires(archive.read(name).decode())]
    installed = {canonicalize_name(d.metadata["Name"]): d
                 for d in distributions(path=[str(site)])}
    found: dict[str, Distribution] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req, wanted_extras = todo.pop()
        key = canonicalize_name(req.name)
        if not _wanted(req, wanted_extras) or (key, frozenset(req.extras)) in seen:
            continue
        seen.add((key, frozenset(req.extras)))
        dist = installed.get(key)
        assert dist is not None, f"{req.name} is not installed in {site}"
        found[key] = dist
        todo += [(r, set(req.extras)) for r in _requires(dist.read_text("METADATA") or "")]
    return sorted(found.values(), key=lambda d: canonicalize_name(d.metadata["Name"]))


def _tags(dist: Distribution) -> str:
    tags = [line.split(":", 1)[1].strip()
            for line in (dist.read_text("WHEEL") or "").splitlines() if line.startswith("Tag:")]
    parts = [sorted({t.split("-")[i] for t in tags}) for i in range(3)]
    return "-".join(".".join(p) for p in parts) if tags else "py3-none-any"


def repack(dist: Distribution, site: Path, out: Path) -> Path:
    """``dist`` (installed in ``site``) as a wheel in ``out``."""
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    wheel = out / f"{name}-{dist.version}-{_tags(dist)}.whl"
    info = next(str(f).split("/")[0] for f in dist.files or [] if ".dist-info/" in str(f))
    record: list[str] = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as archive:
        for file in dist.files or []:
            path = str(file)
            if path.startswith("..") or "__pycache__" in path or (
                    path.startswith(info + "/") and path.split("/", 1)[1] in INSTALL_ONLY):
                continue
            data = (site / path).read_bytes()
            archive.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{path},sha256={digest.decode()},{len(data)}")
        record.append(f"{info}/RECORD,,")
        archive.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel


def build(wheel: Path, extras: set[str], site: Path, out: Path) -> list[Path]:
    """A wheelhouse in ``out`` for installing ``wheel`` offline."""
    out.mkdir(parents=True, exist_ok=True)
    return [repack(d, site, out) for d in closure(wheel, extras, site)]
