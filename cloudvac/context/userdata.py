"""Render a machine's user_data and check it before it is sent.

``user_data`` of a machinetype selects the template:

* unset or ``builtin:generic``: only the in-VM agent (heartbeats until deleted);
* ``builtin:belle``, ``builtin:t2k``, ``builtin:hyperk``: a CernVM/EL VM that mounts CVMFS
  through the space's squids and runs one DIRAC pilot for that VO (the machinetype needs
  ``dirac`` and ``vo``), then reports its shutdown code and powers off;
* an absolute path: an operator's template with VCycle's ``##user_data_*##`` placeholders
  (``vcycle.py``: which ones, how ``##user_data_option_cvmfs_proxy##`` is combined, the
  token uploads need).

Every render is validated (``validate.py``); secrets appear only in the returned text, and
``render(..., mask=True)`` replaces each with ``MASK`` for display: the VM token, host key and
proxy, and in operator templates the contents of every ``user_data_file_*`` and each
``user_data_option_*`` that looks secret (``looks_secret``).
"""

from __future__ import annotations

import base64
import gzip
import json
import math
import re
import shlex
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from cloudvac import __version__
from cloudvac.auth.vmtokens import TokenSigner
from cloudvac.config.models import Machinetype, Space
from cloudvac.config.proxies import SQUID_PORT
from cloudvac.config.secrets import SecretError, check_secret_file
from cloudvac.config.settings import Settings
from cloudvac.context import dirac
from cloudvac.context.errors import RenderError
from cloudvac.context.families import family
from cloudvac.context.validate import validate_user_data
from cloudvac.context.vcycle import check_uploads, substitute
from cloudvac.model.layout import HEARTBEAT_FILE, machine_urls

MASK = "***MASKED***"
# The in-VM agent: these modules of this package ship together, side by side in one directory
# (agent.py is the one run; it imports the others from there).
AGENT_FILES = ("agent.py", "vmupload.py", "vmfeatures.py")
COMMON_REPOSITORIES = ("grid.cern.ch", "dirac.egi.eu")
# On the VM: the agent's files (root), the unprivileged pilot user and its work area (its
# home; the flavor's ephemeral disk when there is one), which holds what the pilot writes.
LIBEXEC = "/usr/local/libexec/cloudvac"
PILOT_USER = "cloudvac-pilot"
WORK_DIR = "/var/lib/cloudvac/pilot"
PILOT_LOG = f"{WORK_DIR}/pilot.log"
SHUTDOWN_MESSAGE_PATH = f"{WORK_DIR}/shutdown_message"
PREPARED_PATH = "/var/lib/cloudvac/prepared"  # "ok", or why the VM cannot run the pilot
# The agent writes the machine's and job's features (MJF) under here for the pilot.
FEATURES_DIR = "/var/run/cloudvac"
# Option names and values that hold secrets: a password, token or key by name; a PEM private
# key (an X.509 proxy holds one too), a JWT, or credentials inside a URL by value.
SECRET_NAME = re.compile(r"pass|secret|token|key|credential|private", re.IGNORECASE)
SECRET_VALUE = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY|eyJ[\w-]+\.eyJ[\w-]+\."
                          r"|://[^/\s:@]+:[^/\s@]+@")


@dataclass(frozen=True, slots=True)
class VoProfile:
    template: str
    repositories: tuple[str, ...]


VO_PROFILES = {
    "belle": VoProfile("belle.yaml.j2", ("belle.cern.ch", "belle.kek.jp")),
    "t2k": VoProfile("t2k.yaml.j2", ("t2k.egi.eu",)),
    "hyperk": VoProfile("hyperk.yaml.j2", ("hyperk.egi.eu",)),
}

SquidSource = Callable[[str, str, float], list[str]]
"""(space, machinetype, since) -> addresses of that machinetype's VMs that heartbeated
since then, newest first."""


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("cloudvac.context", "templates"),
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True,
        trim_blocks=True)
    env.filters["shell_quote"] = shlex.quote
    return env


@cache
def _packed(module: str) -> str:
    source = (resources.files("cloudvac.context") / module).read_bytes()
    return base64.b64encode(gzip.compress(source, mtime=0)).decode()


def _b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


class ContextRenderer:
    """Callable ``(space, machinetype, name) -> user_data``; the token inside expires
    ``max_wallclock_seconds + token_grace_seconds`` after rendering."""

    def __init__(self, settings: Settings, signer: TokenSigner,
                 clock: Callable[[], float] = time.time,
                 squids: SquidSource | None = None) -> None:
        self.settings, self.signer, self.clock = settings, signer, clock
        self.squids = squids

    def as_of(self, issued_at: float) -> ContextRenderer:
        """The same renderer with its clock stopped at ``issued_at`` (a machine's creation):
        the token and deadline it writes are the ones the machine got then."""
        return ContextRenderer(self.settings, self.signer, lambda: issued_at, self.squids)

    def token(self, space: Space, mt: Machinetype, name: str) -> str:
        expires = self.clock() + mt.max_wallclock_seconds + self.settings.token_grace_seconds
        return self.signer.token(space.name, name, expires)

    def urls(self, space: Space, mt: Machinetype, name: str) -> dict[str, str]:
        return machine_urls(self.settings.web_base_url, space.name, mt.name, name)

    def agent_config(self, space: Space, mt: Machinetype, name: str,
                     mask: bool = False) -> dict[str, Any]:
        """The in-VM agent's JSON config (``agent.py`` documents the keys); the VM powers
        itself off at ``deadline`` = now + ``max_wallclock_seconds`` +
        ``vm_deadline_grace_seconds`` at the latest.  A pilot, if the agent runs one, gets the
        machine's and job's features (MJF) as files under ``FEATURES_DIR``, fetched by the
        agent."""
        deadline = self.clock() + mt.max_wallclock_seconds + mt.vm_deadline_grace_seconds
        urls = self.urls(space, mt, name)
        config: dict[str, Any] = {
            "joboutputs_url": urls["joboutputs_url"],
            "machinefeatures_url": urls["machinefeatures_url"],
            "jobfeatures_url": urls["jobfeatures_url"], "features_dir": FEATURES_DIR,
            "token": MASK if mask else self.token(space, mt, name),
            "heartbeat_period_seconds": mt.heartbeat_period,
            "heartbeat_file": mt.heartbeat_file or HEARTBEAT_FILE,
            "deadline": math.ceil(deadline),
            "unreachable_poweroff_seconds": mt.vm_unreachable_poweroff_seconds or None}
        if mt.dirac is not None:
            config.update(logs=[PILOT_LOG], shutdown_message_path=SHUTDOWN_MESSAGE_PATH)
        return config

    def cvmfs_http_proxy(self, space: Space, fallback: str | None = None) -> str:
        """VMs of the squid machinetype first (one load-balanced group), then ``;`` and the
        fallback group: ``fallback`` if given (an operator template's
        ``user_data_option_cvmfs_proxy``, as VCycle combined it), else the space's
        ``squid_proxies``; ``DIRECT`` when there is neither."""
        groups = [self.discovered_squids(space)]
        groups.append("|".join(space.squid_proxies) if fallback is None else fallback)
        return ";".join(g for g in groups if g) or "DIRECT"

    def discovered_squids(self, space: Space) -> str:
        """``http://IP:PORT|...`` for the heartbeating VMs of ``squid_machinetype``."""
        if not space.squid_machinetype or self.squids is None:
            return ""
        mt_name, _, port = space.squid_machinetype.partition(":")
        squid = space.machinetypes.get(mt_name)
        horizon = squid.heartbeat_list_horizon if squid is not None else 3600
        found = self.squids(space.name, mt_name, self.clock() - horizon)
        return "|".join(f"http://{a}:{port or SQUID_PORT}" for a in found)

    def __call__(self, space: Space, mt: Machinetype, name: str) -> str:
        text = self.render(space, mt, name)
        validate_user_data(text, f"{space.name}/{mt.name}")
        return text

    def render(self, space: Space, mt: Machinetype, name: str, mask: bool = False) -> str:
        """The user_data text, unvalidated; ``mask`` hides every secret (for display)."""
        where = f"{space.name}/{mt.name}"
        choice = mt.user_data or "builtin:generic"
        try:
            if choice == "builtin:generic":
                return self._generic(space, mt, name, mask)
            if choice.startswith("builtin:"):
                return self._pilot(space, mt, name, choice[len("builtin:"):], mask)
            return self._operator(space, mt, name, Path(choice), mask)
        except (OSError, ValueError, SecretError, jinja2.TemplateError) as exc:
            raise RenderError(f"{where}: {exc}") from None

    def _common(self, space: Space, mt: Machinetype, name: str, mask: bool,
                pilot: bool = False) -> dict[str, Any]:
        config = json.dumps(self.agent_config(space, mt, name, mask), sort_keys=True)
        shipped = (*AGENT_FILES, "jobagent.py") if pilot else AGENT_FILES
        return {"name": name, "space": space.name, "machinetype": mt.name, "version": __version__,
                "rendered": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock())),
                "agent_config_b64": _b64(config), "libexec": LIBEXEC,
                "agent_files": [(module, _packed(module)) for module in shipped],
                "family": family(mt.image_family), "work_dir": WORK_DIR if pilot else ""}

    def _generic(self, space: Space, mt: Machinetype, name: str, mask: bool) -> str:
        return _environment().get_template("generic.yaml.j2").render(
            **self._common(space, mt, name, mask))

    def _pilot(self, space: Space, mt: Machinetype, name: str, builtin: str,
               mask: bool) -> str:
        profile = VO_PROFILES.get(builtin)
        if profile is None:
            raise ValueError(f"user_data builtin:{builtin} does not exist; choose one of "
                             f"builtin:generic, {', '.join('builtin:' + v for v in VO_PROFILES)}")
        if mt.dirac is None or mt.vo is None:
            raise ValueError(f"builtin:{builtin} runs a DIRAC pilot: set dirac and vo")
        instance = space.dirac_instances[mt.dirac]
        stamp = dirac.pilot_stamp(name)
        cert_dir = "/etc/cloudvac/pilot/grid-security" if mt.host_cert_file else None
        repositories = mt.cvmfs_repositories or [
            *profile.repositories, *COMMON_REPOSITORIES, *family(mt.image_family).repositories]
        values = {
            **self._common(space, mt, name, mask, pilot=True), "vo": mt.vo,
            "site": dirac.site_of(instance, space),
            "cvmfs_repositories": [r.removeprefix("/cvmfs/") for r in repositories],
            "cvmfs_http_proxy": self.cvmfs_http_proxy(space), "cvmfs_quota_mb": 20000,
            "pilot_json_b64": _b64(json.dumps(dirac.pilot_json(instance, space), indent=1)),
            "pilot_files_url": instance.pilot_files_url,
            "pilot_args": dirac.pilot_command(instance, space, mt, stamp, cert_dir),
            "pilot_environment": dirac.pilot_environment(space, name),
            "host_cert_b64": "", "host_key_b64": "", "proxy_b64": "",
            "block_metadata": mt.block_metadata, "pilot_user": PILOT_USER,
            "prepared_path": PREPARED_PATH, "shutdown_message_path": SHUTDOWN_MESSAGE_PATH}
        if mt.host_cert_file:
            if mt.host_key_file is None:
                raise ValueError("host_cert_file needs host_key_file")
            check_secret_file(mt.host_key_file, "host_key_file")
            values["host_cert_b64"] = _b64(mt.host_cert_file.read_bytes())
            values["host_key_b64"] = _b64(MASK if mask else mt.host_key_file.read_bytes())
        if mt.pilot_proxy_file:
            check_secret_file(mt.pilot_proxy_file, "pilot_proxy_file")
            values["proxy_b64"] = _b64(MASK if mask else mt.pilot_proxy_file.read_bytes())
        return _environment().get_template(profile.template).render(**values)

    def _operator(self, space: Space, mt: Machinetype, name: str, path: Path,
                  mask: bool) -> str:
        if not path.is_absolute():
            raise ValueError(f"user_data {path} must be builtin:NAME or an absolute path")
        values = {"space": space.name, "machinetype": mt.name, "machine_hostname": name,
                  "manager_version": f"cloudvac {__version__}",
                  "manager_hostname": socket.gethostname(), "uuid": name,
                  "joboutputs_token": MASK if mask else self.token(space, mt, name),
                  **self.urls(space, mt, name)}
        if space.site_name:
            values["site"] = space.site_name
        if mt.root_image and mt.root_image.startswith(("http://", "https://")):
            values["root_image_url"] = mt.root_image
        for key, value in mt.user_data_options.items():
            values[f"option_{key}"] = MASK if mask and looks_secret(key, value) else value
        for key, file in mt.user_data_files.items():
            content = file.read_text()  # read even when masked: a missing file is an error
            # Files are where operators put keys and passwords: shown masked, every one.
            values[f"option_{key}"] = values[f"file_{key}"] = MASK if mask else content
        configured = values.get("option_cvmfs_proxy")  # already masked if it looks secret
        if configured is not None or space.squid_proxies or space.squid_machinetype:
            values["option_cvmfs_proxy"] = self.cvmfs_http_proxy(space, configured)
        template = path.read_text()
        check_uploads(template)
        return substitute(template, values)


def looks_secret(name: str, value: str) -> bool:
    """Whether a ``user_data_option_NAME`` is masked for display (``SECRET_NAME``/``_VALUE``)."""
    return bool(SECRET_NAME.search(name) or SECRET_VALUE.search(value))


def check_space(space: Space, settings: Settings) -> list[str]:
    """Trial-render every machinetype of ``space`` (masked, throwaway signer) and validate;
    one message per machinetype that would fail at its first create."""
    renderer = ContextRenderer(settings, TokenSigner(b"0" * 32))
    problems = []
    for mt in space.machinetypes.values():
        name = f"cloudvac-000000-{mt.name}-0000000000"
        try:
            validate_user_data(renderer.render(space, mt, name), f"{space.name}/{mt.name}")
        except RenderError as exc:
            problems.append(str(exc))
    return problems
