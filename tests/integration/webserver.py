"""A real cloudvac web server (uvicorn on 127.0.0.1, a free port) in a background thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from cloudvac.auth.vmtokens import TokenSigner, load_or_create_secret
from cloudvac.config import Machinetype, Settings, Space
from cloudvac.context.userdata import ContextRenderer
from cloudvac.model.records import MachineRecord
from cloudvac.model.states import MachineState
from cloudvac.store import Store
from cloudvac.web.app import create_app
from cloudvac.web.context import WebContext
from cloudvac.web.files import Joboutputs, UploadLimits
from cloudvac.web.guard import WebLimits
from cloudvac.web.operator import create_operator_app, operator_access, operator_server
from cloudvac.web.server import bound_port, make_server

SPACE = "web.example"
WAIT = 60.0
"""Bound of a poll for the server on a loaded 2-core machine; polls end as soon as they can."""


def poll(check: Callable[[], object], seconds: float = WAIT) -> bool:
    """True as soon as ``check()`` is, False once ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_space(**mt_options: object) -> Space:
    options: dict[str, object] = {"target_share": 1, "hs06_per_processor": 10.0,
                                  "max_wallclock_seconds": 7200, "heartbeat_file": "heartbeat",
                                  "heartbeat_seconds": 600, "mb_per_processor": 2000,
                                  **mt_options}
    mt = Machinetype(name="belle", space=SPACE, **options)
    return Space(name=SPACE, api="sim", flavor_names=["m1.small"], machinetypes={"belle": mt})


@dataclass
class Running:
    url: str
    settings: Settings
    store: Store
    signer: TokenSigner
    space: Space
    context: WebContext
    operator_url: str

    def token(self, name: str, expires: float | None = None) -> str:
        return self.signer.token(SPACE, name, expires or time.time() + 3600)

    def add_machine(self, name: str, processors: int = 4, state: MachineState =
                    MachineState.RUNNING, started: float = 1_700_000_000.0,
                    **fields: Any) -> None:
        """A machine row (engine fields; ``fields`` override, e.g. ``stopped_at``)."""
        self.store.apply(SPACE, [MachineRecord(space=SPACE, name=name, machinetype="belle",
                                               state=state, cloud_id=f"id-{name}",
                                               processors=processors, hs06=processors * 10.0,
                                               created_at=started - 60, started_at=started,
                                               **fields)],
                         {}, started)

    def joboutput(self, name: str, file: str) -> bytes | None:
        """The machine's uploaded file as the store holds it, or None."""
        return self.store.joboutput(SPACE, name, file)


@contextmanager
def web_server(state_dir: Path, space: Space | None = None, **settings: object
               ) -> Iterator[Running]:
    values: dict[str, object] = {"state_dir": state_dir, "web_listen": "127.0.0.1:0",
                                 "operator_listen": "127.0.0.1:0",
                                 "upload_max_file_bytes": 4096,
                                 "upload_max_machine_bytes": 10240, **settings}
    config = Settings(**values)
    store = Store(config.database_url)
    signer = TokenSigner(load_or_create_secret(config.state_dir))
    the_space = space or test_space()
    files = Joboutputs(store, UploadLimits(config.upload_max_file_bytes,
                                           config.upload_max_machine_bytes))
    renderer = ContextRenderer(config, signer)
    context = WebContext(config, store, signer, files, lambda: {SPACE: the_space},
                         CollectorRegistry(),
                         render=lambda space, mt, name, at: renderer.as_of(at)(space, mt, name))
    vm_app = create_app(context)
    server = make_server(vm_app, config)
    access = operator_access(config)
    operator = operator_server(create_operator_app(vm_app, access), access.door,
                               WebLimits.from_settings(config))
    loop = asyncio.new_event_loop()

    async def serve() -> None:
        await asyncio.gather(server.serve(), operator.serve())

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not (server.started and operator.started):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("web server did not start")
        time.sleep(0.02)
    scheme = "https" if config.web_tls_cert else "http"
    operator_scheme = "https" if config.operator_tls_cert else "http"
    try:
        yield Running(f"{scheme}://127.0.0.1:{bound_port(server)}", config, store, signer,
                      the_space, context,
                      f"{operator_scheme}://127.0.0.1:{bound_port(operator)}")
    finally:
        server.should_exit = operator.should_exit = True
        thread.join(timeout=60)
        loop.close()
        store.close()
