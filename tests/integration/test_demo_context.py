"""The demo's VMs get their VO user_data from the real web endpoint, with their own token."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from cloudvac.config import load_config_dir
from cloudvac.demo import prepare
from cloudvac.engine.states import MachineState
from cloudvac.service import Service, run_service
from cloudvac.store import Store
from cloudvac.web.tokens import TokenSigner, load_or_create_secret

MARKERS = {"belle": "VO_BELLE_SW_DIR", "t2k": "VO_T2K_ORG_SW_DIR",
           "hyperk": "VO_HYPERK_ORG_SW_DIR"}


def test_demo_machines_fetch_their_user_data(tmp_path: Path) -> None:
    config_dir = prepare(tmp_path)
    loaded = load_config_dir(config_dir)
    assert loaded.settings is not None
    overrides = {"state_dir": tmp_path, "database": None, "web_listen": "127.0.0.1:0"}
    settings = loaded.settings.model_copy(update=overrides)
    store = Store(settings.database_url)
    service = Service(config_dir, settings, store, overrides)

    async def scenario() -> dict[str, str]:
        runner = asyncio.create_task(run_service(service))
        try:
            deadline = time.monotonic() + 60
            seen: dict[str, str] = {}
            while len(seen) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                for m in await asyncio.to_thread(store.machines, "sim-a.example"):
                    if m.state is not MachineState.GONE:
                        seen.setdefault(m.machinetype, m.name)
            signer = TokenSigner(load_or_create_secret(tmp_path))
            texts = {}
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}") as http:
                for mt, name in seen.items():
                    token = signer.token("sim-a.example", name, time.time() + 600)
                    url = f"/machines/sim-a.example/{name}/user_data"
                    response = await http.get(url, headers={"Authorization": f"Bearer {token}"})
                    assert response.status_code == 200, response.text
                    texts[mt] = response.text
                    assert (await http.get(url)).status_code == 401
            return texts
        finally:
            service.stop()
            await asyncio.wait_for(runner, 30)

    try:
        texts = asyncio.run(scenario())
    finally:
        store.close()
    assert set(texts) == {"belle", "t2k", "hyperk"}
    for mt, text in texts.items():
        assert text.startswith("#cloud-config") and MARKERS[mt] in text
