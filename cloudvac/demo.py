"""``cloudvac demo``: the daemon on the shipped example configuration, with a live table.

The example configuration is copied into the state directory (``STATE/cloudvac.d``), so an
operator can edit it while the demo runs and watch the daemon re-read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from cloudvac.config import Space, load_config_dir
from cloudvac.engine.daemon import ConfigSource
from cloudvac.engine.planner import TypeStatus
from cloudvac.service import Service, build, run_service
from cloudvac.status import StatusRow, read_view, status_rows, status_table
from cloudvac.store import Store


def example_dir() -> Path:
    return Path(str(resources.files("cloudvac") / "examples" / "demo"))


def prepare(state_dir: Path) -> Path:
    config_dir = state_dir / "cloudvac.d"
    if not config_dir.is_dir():
        config_dir.mkdir(parents=True)
        for conf in sorted(example_dir().glob("*.conf")):
            shutil.copy(conf, config_dir / conf.name)
    return config_dir


def run_demo(cycles: int | None, state_dir: Path | None, live: bool) -> dict[str, Any]:
    state = state_dir or Path(tempfile.mkdtemp(prefix="cloudvac-demo-"))
    config_dir = prepare(state)
    loaded = load_config_dir(config_dir)
    if loaded.settings is None or loaded.issues:
        return {"ok": False, "errors": [str(i) for i in loaded.issues]}
    overrides = {"state_dir": state, "database": None, "web_listen": "127.0.0.1:0",
                 "web_url": None, "web_tls_cert": None, "web_tls_key": None,
                 "operator_listen": "127.0.0.1:0", "operator_token_file": None,
                 "operator_tls_cert": None, "operator_tls_key": None,
                 "operator_tls_client_ca": None}
    settings = loaded.settings.model_copy(update=overrides)
    store = Store(settings.database_url)
    try:
        service = build(ConfigSource(config_dir, overrides), settings, store,
                        keep_reports=cycles or 100)
        asyncio.run(_drive(service, store, cycles, live))
        return summarize(service, store, state)
    finally:
        store.close()


async def _drive(service: Service, store: Store, cycles: int | None, live: bool) -> None:
    runner = asyncio.create_task(run_service(service, cycles))
    if not live:
        await runner
        return
    console = Console()
    with Live(console=console, refresh_per_second=2) as view:
        while not runner.done():
            daemon = service.daemon
            if daemon is not None:
                rows = await asyncio.to_thread(_rows, daemon.current_spaces(), store)
                title = f"cloudvac demo on http://127.0.0.1:{service.port} (Ctrl-C to stop)"
                view.update(status_table(rows, title))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(runner), 1.0)
    await runner


def _rows(spaces: dict[str, Space], store: Store) -> list[StatusRow]:
    return status_rows(spaces, read_view(store, events=200), time.time())


def _distance(status: Mapping[str, TypeStatus]) -> float:
    """Total variation distance between actual and target shares (0 = on target)."""
    return round(sum(abs(s.actual_share - s.target_share) for s in status.values()) / 2, 3)


def _uploads(service: Service) -> dict[str, int]:
    """Uploads the web service accepted, by kind (what arrived over HTTP)."""
    counts: dict[str, int] = {}
    for metric in service.registry.collect():
        if metric.name != "cloudvac_uploads":
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("status") == "204":
                kind = sample.labels["kind"]
                counts[kind] = counts.get(kind, 0) + int(sample.value)
    return counts


def summarize(service: Service, store: Store, state: Path) -> dict[str, Any]:
    daemon = service.daemon
    assert daemon is not None
    spaces: dict[str, Any] = {}
    ok = True
    for name, st in daemon.spaces.items():
        space = st.config
        quota = space.sim.quota_processors if space.sim else None
        limit = min((x for x in (space.processors_limit, quota) if x is not None), default=None)
        used = [sum(s.processors for s in r.status.values()) for r in st.reports if r.ok]
        within = limit is None or all(u <= limit for u in used)
        ok = ok and within
        rows = status_rows({name: space}, read_view(store, name, events=200), time.time())
        spaces[name] = {
            "processors_limit": space.processors_limit, "quota_processors": quota,
            "max_processors_used": max(used, default=0), "within_limits": within,
            "share_distance_by_cycle": [_distance(r.status) for r in st.reports if r.status],
            "machinetypes": {r.machinetype: {k: v for k, v in r.as_dict().items()
                                             if k not in ("space", "machinetype")}
                             for r in rows},
            "cycles": [{"ok": r.ok, "created": r.created, "deleted": r.deleted,
                        "error": r.error,
                        "processors": sum(s.processors for s in r.status.values()),
                        "running": {mt: s.machines.get("running", 0)
                                    for mt, s in r.status.items()}} for r in st.reports],
        }
    records = store.machines(include_gone=True)
    codes = Counter(str(m.shutdown.code) for m in records if m.shutdown is not None)
    return {
        "ok": ok, "state_dir": str(state), "spaces": spaces,
        "machines_total": len(records),
        "machines_with_heartbeat": sum(m.heartbeat_at is not None for m in records),
        "shutdown_codes": dict(sorted(codes.items())),
        "uploads_over_http": _uploads(service),
        "backoffs": sum(1 for e in store.events(limit=10000) if e.kind == "abort"),
    }
