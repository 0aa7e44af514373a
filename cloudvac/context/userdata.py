"""Render a machine's user_data: the in-VM agent and its configuration with the VM's token.

The VO-specific templates (Belle II, T2K, Hyper-K pilots, CVMFS, pilot.json) build on this;
the generic template installs only the agent, which heartbeats until the VM is deleted.
"""

from __future__ import annotations

import base64
import gzip
import json
import time
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

import jinja2

from cloudvac.config.models import Machinetype, Settings, Space
from cloudvac.web.tokens import TokenSigner

NOVA_USER_DATA_LIMIT = 65535  # bytes of base64, Nova's limit


class UserDataTooLarge(ValueError):
    pass


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("cloudvac.context", "templates"),
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)


@cache
def agent_source() -> bytes:
    return (resources.files("cloudvac.context") / "agent.py").read_bytes()


def joboutputs_url(settings: Settings, space: str, name: str) -> str:
    return f"{settings.web_base_url}/machines/{space}/{name}/joboutputs"


class ContextRenderer:
    """Callable ``(space, machinetype, name) -> user_data``; the token inside expires
    ``max_wallclock_seconds + token_grace_seconds`` after rendering."""

    def __init__(self, settings: Settings, signer: TokenSigner,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings, self.signer, self.clock = settings, signer, clock

    def token(self, space: Space, mt: Machinetype, name: str) -> str:
        expires = self.clock() + mt.max_wallclock_seconds + self.settings.token_grace_seconds
        return self.signer.token(space.name, name, expires)

    def agent_config(self, space: Space, mt: Machinetype, name: str) -> dict[str, Any]:
        beat = max(10, min(300, (mt.heartbeat_seconds or 180) // 3))
        return {"joboutputs_url": joboutputs_url(self.settings, space.name, name),
                "token": self.token(space, mt, name), "heartbeat_seconds": beat,
                "heartbeat_file": mt.heartbeat_file or "heartbeat"}

    def __call__(self, space: Space, mt: Machinetype, name: str) -> str:
        config = json.dumps(self.agent_config(space, mt, name), sort_keys=True).encode()
        text = _environment().get_template("generic.yaml.j2").render(
            name=name, space=space.name, machinetype=mt.name, pilot_command="",
            rendered=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock())),
            agent_config_b64=base64.b64encode(config).decode(),
            agent_gz_b64=base64.b64encode(gzip.compress(agent_source(), mtime=0)).decode())
        encoded = len(base64.b64encode(text.encode()))
        if encoded > NOVA_USER_DATA_LIMIT:
            raise UserDataTooLarge(f"user_data for {space.name}/{mt.name} is {encoded} bytes "
                                   f"in base64, over Nova's {NOVA_USER_DATA_LIMIT}")
        return text
