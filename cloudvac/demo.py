"""``cloudvac demo``: the daemon on the shipped example configuration, with a live table
and the event stream under it (creations, shutdown codes with their meaning, backoffs,
deletions with their reasons); on a pipe or a file, one plain line per event and the table
after every cycle, never wider than 80 columns.

Its APEL records go to ``STATE/apel/outgoing`` (printed with the dashboard's address).

The example configuration is copied into the state directory (``STATE/cloudvac.d``), so an
operator can edit it while the demo runs and watch the daemon re-read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections import Counter, deque
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.rule import Rule
from rich.text import Text

from cloudvac.config import Space, load_config_dir
from cloudvac.engine.configsource import ConfigSource
from cloudvac.engine.planner import TypeStatus
from cloudvac.events import WIDTH, lines, newer, newest
from cloudvac.model.records import Event
from cloudvac.model.states import ShutdownMessage
from cloudvac.service import Service, build, run_service
from cloudvac.status import StatusRow, read_view, status_rows, status_table
from cloudvac.store import Store

EVENT_LINES = 40
"""The most events the live view keeps under the table (fewer on a short terminal)."""


def example_dir() -> Path:
    return Path(str(resources.files("cloudvac") / "examples" / "demo"))


def prepare(state_dir: Path) -> Path:
    config_dir = state_dir / "cloudvac.d"
    if not config_dir.is_dir():
        config_dir.mkdir(parents=True)
        for conf in sorted(example_dir().glob("*.conf")):
            shutil.copy(conf, config_dir / conf.name)
    return config_dir


def apel_dir(state_dir: Path) -> Path:
    """Where the demo writes its APEL individual job records (the dirq layout ssmsend
    reads), ``STATE/apel/outgoing``."""
    return state_dir / "apel" / "outgoing"


def run_demo(cycles: int | None, state_dir: Path | None,
             console: Console | None) -> dict[str, Any]:
    """Run the daemon on the example configuration; show it on ``console`` (None: show
    nothing, for ``--json``) and return the summary."""
    state = state_dir or Path(tempfile.mkdtemp(prefix="cloudvac-demo-"))
    config_dir = prepare(state)
    loaded = load_config_dir(config_dir)
    if loaded.settings is None or loaded.issues:
        return {"ok": False, "errors": [str(i) for i in loaded.issues]}
    overrides = {"state_dir": state, "database": None, "web_listen": "127.0.0.1:0",
                 "web_url": None, "web_tls_cert": None, "web_tls_key": None,
                 "operator_listen": "127.0.0.1:0", "operator_token_file": None,
                 "operator_tls_cert": None, "operator_tls_key": None,
                 "operator_tls_client_ca": None,
                 "apel_outgoing_dir": apel_dir(state)}
    settings = loaded.settings.model_copy(update=overrides)
    store = Store(settings.database_url)
    try:
        service = build(ConfigSource(config_dir, overrides), settings, store,
                        keep_reports=cycles or 100)
        # First thing, on stderr with --json (stdout is the summary then).
        (console or Console(stderr=True)).print(
            f"dashboard: http://127.0.0.1:{service.operator_port}/dashboard\n"
            f"APEL records: {settings.apel_outgoing_dir}", soft_wrap=True)
        asyncio.run(_drive(service, store, cycles, console))
        return summarize(service, store, state)
    finally:
        store.close()


class EventStream:
    """The store's events since the demo started, as lines (``cloudvac.events``)."""

    def __init__(self, store: Store, width: int) -> None:
        self.store, self.width = store, width
        self.cursor = newest(self._read, 0)[1]

    def _read(self, limit: int) -> list[Event]:
        return self.store.events(None, limit)

    def _shutdown_of(self, event: Event) -> ShutdownMessage | None:
        record = self.store.machine(event.space, event.machine) if event.machine else None
        return record.shutdown if record is not None else None

    def lines(self) -> list[str]:
        """The lines of the events recorded since the last call."""
        fresh, self.cursor = newer(self._read, self.cursor)
        return list(lines(fresh, self._shutdown_of, width=self.width))


async def _drive(service: Service, store: Store, cycles: int | None,
                 console: Console | None) -> None:
    runner = asyncio.create_task(run_service(service, cycles))
    if console is None:
        await runner
        return
    stream = EventStream(store, min(console.width, WIDTH))
    if console.is_terminal:
        await _live(service, store, runner, console, stream)
    else:
        await _plain(service, store, runner, console, stream)
    await runner


async def _tick(runner: asyncio.Task[None]) -> bool:
    """Wait up to a second for the service; whether it has ended."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(runner), 1.0)
    return runner.done()


async def _live(service: Service, store: Store, runner: asyncio.Task[None], console: Console,
                stream: EventStream) -> None:
    """The status table with the newest events under it, redrawn in place."""
    recent: deque[str] = deque(maxlen=EVENT_LINES)
    title = f"cloudvac demo on http://127.0.0.1:{service.port} (Ctrl-C to stop)"
    with Live(console=console, refresh_per_second=2) as view:
        ended = False
        while not ended:
            ended = runner.done()
            recent.extend(await asyncio.to_thread(stream.lines))
            daemon = service.daemon
            if daemon is not None:
                rows = await asyncio.to_thread(_rows, daemon.current_spaces(), store)
                table = status_table(rows, title, width=min(console.width, WIDTH))
                room = console.height - len(rows) - 6  # title, heads, rule, caption, events
                shown = list(recent)[-max(3, room):]
                view.update(Group(table, Rule("events", style="dim"),
                                  *(Text(line, no_wrap=True, overflow="ellipsis")
                                    for line in shown)))
            if not ended:  # one more round once it ended: what its last cycle did
                await _tick(runner)


async def _plain(service: Service, store: Store, runner: asyncio.Task[None],
                 console: Console, stream: EventStream) -> None:
    """One line per event as it comes, and the table each time every space has cycled
    once more: for a pipe, a file or a log."""
    shown = 0
    ended = False
    while not ended:
        ended = runner.done()
        for line in await asyncio.to_thread(stream.lines):
            console.print(Text(line), no_wrap=True, crop=False, soft_wrap=True)
        daemon = service.daemon
        cycled = min((s.cycles for s in daemon.spaces.values()), default=0) if daemon else 0
        if daemon is not None and (cycled > shown or (ended and shown == 0)):
            shown = cycled
            rows = await asyncio.to_thread(_rows, daemon.current_spaces(), store)
            console.print(status_table(rows, f"cloudvac demo: cycle {cycled}",
                                       width=min(console.width, WIDTH)))
        if not ended:  # one more round once it ended: what its last cycle did
            await _tick(runner)


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
        used = [sum(s.processors for s in r.status.values()) for r in st.reports if r.ok]
        # The engine's own count holds a deleted machine until a listing shows it gone, so
        # it may pass the quota for a cycle while the cloud already freed it: the quota is
        # checked against what the cloud itself held, processors_limit against the count.
        project = daemon.clouds.project(name)
        peak = project.peak_processors if project is not None else None
        within = (space.processors_limit is None
                  or all(u <= space.processors_limit for u in used)) and (
            quota is None or peak is None or peak <= quota)
        ok = ok and within
        rows = status_rows({name: space}, read_view(store, name, events=200), time.time())
        spaces[name] = {
            "processors_limit": space.processors_limit, "quota_processors": quota,
            "max_processors_used": max(used, default=0), "cloud_peak_processors": peak,
            "within_limits": within,
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
