"""Benchmark: cloud API requests per managed machine per hour.

    .venv/bin/python -m benchmarks.api_economy [--sim-machines 1000] [--nova-servers 32]
        [--max-limit 8] [--nova-steady 30] [--skip-nova]

Two measurements, then one extrapolation.  Everything runs on 127.0.0.1, bounded in time.

(a) **Sim, measured at 1,000 machines.**  One sim space filled straight into its
    ``SimProject`` (tagged servers with staggered ages, adopted by the first cycle, as in
    ``benchmarks.scale``), then ``--sim-cycles`` steady cycles of the real ``Daemon``.  The
    sim counts every call it receives in ``project.calls``; the benchmark takes the
    difference over each cycle.  The sim lists in one call (it has no pages).

(b) **Real Nova, measured at --nova-servers**, three runs (``VARIANTS``) of the real
    ``Daemon`` with one ``api = openstack`` space against ``tests/oracle/launch.py
    nova_oracle`` (real Nova API, conductor, scheduler, fake-driver compute, Placement),
    quota = servers, filled ``--nova-burst`` cores per cycle, then ``--nova-steady``
    steady cycles.  Each ``CycleReport`` holds the HTTP requests the adapter made, by kind
    (``list`` = full listing pages, ``changes`` = changes-since pages, ``limits``,
    ``create``, ``delete``); Keystone tokens are counted by ``cloudvac_auth_calls``.

    * ``vcycle_mode``: ``full_listing_seconds = 0`` and ``max_limit = --max-limit``
      (8): every listing is full, which checks ``pages = floor(listed / max_limit) + 1``
      at every size of the ramp (Nova answers a full page with a "next" link, so an
      exact multiple costs one empty page more).
    * ``default``: the shipped defaults on a compressed clock (``--nova-period`` for
      60 s: full listing every 10 cycles, change overlap 2 cycles, limits re-read
      after 10 cycles) with ``max_limit = servers``: n = max_limit is the worst case for
      pages, exactly as 1,000 machines with Nova's default ``max_limit = 1000``.  Its
      steady requests per cycle are therefore those of 1,000 machines, and per
      machine-hour = requests per cycle x 60 / 1,000 (+ hourly flavors and tokens).
    * ``quota_bound``: as ``default`` without ``processors_limit``.

(d) **EC2 on moto**, measured (``benchmarks/_ec2economy.py``): the real ``Daemon`` with one
    ``api = ec2`` space against moto's EC2 API in server mode, each HTTP request counted
    by a botocore ``before-send`` hook; listed once per cycle with ``DescribeInstances``
    pages, so at 1,000 machines (EC2's page of 1,000) about 0.06 requests per
    machine-hour.  ``--skip-ec2`` leaves it out.

(c) **Extrapolated** to 1,000 machines and a 60 s cycle with the formula checked in (b),
    for the defaults (space full at ``processors_limit``; full at the quota; not full),
    for VCycle's every-cycle full listing, and with the actions term (one create and one
    delete per pilot lifetime, 2 x 1000 / pilot hours).

Goal (from the issue): <= 0.12 requests per machine per hour at 1,000 machines.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS_DIR, host_info, run_benchmark
from benchmarks._ec2economy import add_args as add_ec2_args
from benchmarks._ec2economy import ec2_report, ec2_summary

RESULTS = RESULTS_DIR / "api_economy.json"
REPO = Path(__file__).resolve().parent.parent
GOAL = 0.12
CYCLE = 60.0  # the extrapolation's cycle_seconds (the default)
NOVA_TIMEOUT = 300.0  # filling the real Nova, at most


# ----------------------------------------------------------------------------- (a) sim ---


def sim_run(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks import scale
    from cloudvac.clouds.simpilots import NullPilots
    from cloudvac.config import load_config_dir
    from cloudvac.service import build_daemon
    from cloudvac.store import Store

    opts = argparse.Namespace(spaces=1, machines=args.sim_machines, period=args.sim_period,
                              job_hours=args.job_hours, boot_seconds=5.0)
    with tempfile.TemporaryDirectory(prefix="cloudvac-api-sim-") as tmp:
        root = Path(tmp)
        cdir = root / "cloudvac.d"
        scale.write_config(cdir, root / "state", opts)
        loaded = load_config_dir(cdir)
        assert loaded.settings is not None and not loaded.issues, loaded.issues[:3]
        store = Store(loaded.settings.database_url)
        projects, _ = scale.fill(loaded.spaces, args.sim_machines,
                                 loaded.settings.manager_id, args.job_hours * 3600, seed=1)
        (name, project), = projects.items()
        daemon = build_daemon(cdir, loaded.settings, store, keep_reports=1000,
                              pilots=NullPilots())
        daemon.clouds.use_project(name, project)
        per_cycle: list[dict[str, int]] = []

        async def drive() -> None:
            runner = asyncio.create_task(daemon.run())
            seen, last = 0, dict(project.calls)
            try:
                while len(per_cycle) < args.sim_cycles + 1 and not runner.done():
                    await asyncio.sleep(0.005)
                    state = daemon.spaces.get(name)
                    if state is not None and state.cycles > seen:
                        seen = state.cycles
                        now = dict(project.calls)
                        per_cycle.append({k: now.get(k, 0) - last.get(k, 0) for k in now
                                          if now.get(k, 0) != last.get(k, 0)})
                        last = now
            finally:
                daemon.stop()
                await asyncio.wait_for(runner, 60)

        try:
            asyncio.run(drive())
        finally:
            store.close()
    reports = daemon.spaces[name].reports
    steady = per_cycle[1:]  # cycle 1 adopts and resolves the flavor
    n = len(steady)
    mean = {k: sum(c.get(k, 0) for c in steady) / n
            for k in sorted({k for c in steady for k in c})} if n else {}
    polling = mean.get("list", 0) + mean.get("limits", 0)
    machines = args.sim_machines
    actions_per_hour = 2 * machines / args.job_hours
    per_hour_polling = polling * 3600 / CYCLE + 1  # + the hourly flavor re-resolution
    return {
        "what": "measured: sim SimProject.calls per cycle; extrapolated: x 60 cycles/hour",
        "machines": machines,
        "cycles": [{"cycle": i + 1, "calls": c, "listed": r.listed, "created": r.created,
                    "deleted": r.deleted} for i, (c, r) in enumerate(zip(per_cycle, reports,
                                                                           strict=False))],
        "steady_calls_per_cycle_mean": {k: round(v, 3) for k, v in mean.items()},
        "per_hour_at_60s_cycle": {
            "polling (list + limits) + hourly flavor": round(per_hour_polling, 1),
            "actions (create + delete per pilot lifetime)": round(actions_per_hour, 1),
        },
        "per_machine_hour_polling": round(per_hour_polling / machines, 4),
        "per_machine_hour_with_actions": round((per_hour_polling + actions_per_hour)
                                               / machines, 4),
        "pilot_hours_assumed": args.job_hours,
    }


# ------------------------------------------------------------------------- (b) real Nova --


def load_launch() -> Any:
    name = "cloudvac_oracle_launch"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "oracle" / "launch.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


NOVA_CONFIG = """\
[settings]
state_dir = {state}
cycle_seconds = {period}
space_timeout_seconds = 120

[space nova.bench]
{openstack}{limit_line}
full_listing_seconds = {full_listing}
quota_reread_seconds = {quota_reread}
creation_burst_processors = {burst}
max_starting_seconds = 600

[machinetype nova.bench pilot]
target_share = 1
root_image = {image}
"""


@dataclass(frozen=True)
class Variant:
    """One real-Nova run.  ``compress``: production time scaled to ``--nova-period``
    (full listing every 10 cycles as 600 s / 60 s; change overlap 2 cycles as 120 s /
    60 s; limits re-read after 10 cycles as 600 s / 60 s)."""

    name: str
    what: str
    full_listing_cycles: int  # 0: every listing is full (VCycle)
    max_limit_is_servers: bool  # n = max_limit: the worst case for pages (as 1000 / 1000)
    processors_limit: bool  # False: the space is bounded by the project quota only


VARIANTS = (
    Variant("vcycle_mode", "full_listing_seconds = 0: a full listing every cycle, as VCycle; "
            "checks pages = floor(listed / max_limit) + 1 at every listing size", 0, False,
            True),
    Variant("default", "the defaults, time-compressed: full listing every 10 cycles, "
            "changes-since in between; processors_limit = quota", 10, True, True),
    Variant("quota_bound", "as default, but no processors_limit: the space is bounded by "
            "the project quota only (limits re-read when our usage changes or after 10 "
            "cycles)", 10, True, False),
)


def pages_formula(listed: int, max_limit: int) -> int:
    return listed // max_limit + 1


def nova_run(args: argparse.Namespace, variant: Variant) -> dict[str, Any]:
    from cloudvac.config import load_config_dir
    from cloudvac.service import build_daemon
    from cloudvac.store import Store

    launch = load_launch()
    if not launch.oracle_available():
        return {"skipped": f"no oracle venv: {launch.SETUP_HINT}"}
    servers, period = args.nova_servers, args.nova_period
    max_limit = servers if variant.max_limit_is_servers else args.max_limit
    full_listing = variant.full_listing_cycles * period
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cloudvac-api-nova-") as tmp, \
            launch.nova_oracle(launch.NovaOptions(quota_cores=servers, quota_instances=servers,
                                                  max_limit=max_limit)) as nova:
        launched = time.monotonic() - started
        cdir = write_nova_config(Path(tmp), nova, args, variant)
        loaded = load_config_dir(cdir)
        assert loaded.settings is not None and not loaded.issues, loaded.issues[:3]
        store = Store(loaded.settings.database_url)
        daemon = build_daemon(cdir, loaded.settings, store, keep_reports=10_000)
        try:
            steady_from = asyncio.run(drive_nova(daemon, servers, period, args.nova_steady))
        finally:
            store.close()
        auth_calls = int(daemon.tools.metrics.auth_calls.labels("nova.bench")._value.get())
        launch_seconds = nova.get("launch_s", round(launched, 1))

    reports = daemon.spaces["nova.bench"].reports
    cycles = [cycle_row(i, r) for i, r in enumerate(reports)]
    full = [c for c in cycles if c["ok"] and "list" in c["requests"]]
    formula_holds = all(c["requests"]["list"] == pages_formula(c["listed"], max_limit)
                        for c in full)
    # After the first cycle (flavor list, image lookup): at most one limits read, one
    # request per action.
    actions_hold = all(c["requests"].get("limits", 0) <= 1
                       and c["requests"].get("create", 0) == r.created + r.create_failures
                       and c["requests"].get("delete", 0) == r.deleted
                       for c, r in zip(cycles[1:], reports[1:], strict=False) if c["ok"])
    steady = cycles[steady_from[0]:] if steady_from else []
    result: dict[str, Any] = {
        "what": variant.what, "servers": servers, "max_limit": max_limit,
        "cycle_seconds": period, "full_listing_seconds": full_listing,
        "processors_limit": servers if variant.processors_limit else None,
        "nova_launch_seconds": launch_seconds,
        "cycles_total": len(cycles), "requests_total_by_kind": requests_total(cycles),
        "keystone_token_requests": auth_calls,
        "errors": sorted({r.error for r in reports if not r.ok})[:3],
        "last_cycle": cycles[-1] if cycles else None,
        "full_listing_pages_formula_holds": formula_holds,
        "full_listings": len(full),
        "at_most_one_limits_and_one_request_per_action_after_cycle_1": actions_hold,
        "distinct_full_listed_vs_pages": sorted({(c["listed"], c["requests"]["list"])
                                                 for c in full}),
        "steady_cycles": steady,
        "reached_steady_state": bool(steady),
    }
    if steady:
        result.update(steady_rates(steady, variant))
    result["run_seconds"] = round(time.monotonic() - started, 1)
    return result


def write_nova_config(root: Path, nova: Any, args: argparse.Namespace,
                      variant: Variant) -> Path:
    """The config directory of one real-Nova run (its password file beside it)."""
    servers, period = args.nova_servers, args.nova_period
    full_listing = variant.full_listing_cycles * period
    secret = root / "password"
    cdir = root / "cloudvac.d"
    cdir.mkdir()
    (cdir / "10-nova.conf").write_text(NOVA_CONFIG.format(
        state=root / "state", period=period, openstack=nova.space_options(secret),
        limit_line=f"processors_limit = {servers}" if variant.processors_limit else "",
        full_listing=full_listing, burst=args.nova_burst, image=nova["image_id"],
        quota_reread=int(full_listing or 600)))
    return cdir


async def drive_nova(daemon: Any, servers: int, period: float, steady_cycles: int) -> list[int]:
    """Run the daemon until ``steady_cycles`` cycles after the space is full and quiet (or
    NOVA_TIMEOUT).  Returns ``[n]``, n = the number of reports when the steady cycles began,
    or ``[]`` if they never did."""
    from cloudvac.clouds.openstack import OpenStackCloud

    steady_from: list[int] = []
    runner = asyncio.create_task(daemon.run())
    deadline = time.monotonic() + NOVA_TIMEOUT
    try:
        while not runner.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            cloud = daemon.clouds.cloud("nova.bench")
            if isinstance(cloud, OpenStackCloud):
                cloud.listing.overlap = 2 * period
            state = daemon.spaces.get("nova.bench")
            if state is None or not state.reports:
                continue
            reports = state.reports
            if not steady_from:
                if full_and_quiet(reports[-1], servers):
                    steady_from.append(len(reports))  # the next cycles are steady
            elif len(reports) >= steady_from[0] + steady_cycles:
                break
    finally:
        daemon.stop()
        await asyncio.wait_for(runner, 120)
    return steady_from


def full_and_quiet(report: Any, servers: int) -> bool:
    """Whether a cycle saw all ``servers`` running and neither created nor deleted."""
    st = report.status.get("pilot")
    return bool(st is not None and st.machines.get("running", 0) == servers
                and report.created == report.deleted == 0)


def cycle_row(i: int, r: Any) -> dict[str, Any]:
    """One cycle's report as a row of the JSON output."""
    return {"cycle": i + 1, "ok": r.ok, "listed": r.listed, "created": r.created,
            "deleted": r.deleted, "requests": dict(r.api_requests),
            "machines": dict(r.status["pilot"].machines) if "pilot" in r.status else {},
            "blocked": r.status["pilot"].blocked if "pilot" in r.status else "",
            "seconds": round(r.duration, 3)}


def requests_total(cycles: list[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for c in cycles:
        for k, v in c["requests"].items():
            total[k] = total.get(k, 0) + v
    return total


def steady_rates(steady: list[dict[str, Any]], variant: Variant) -> dict[str, Any]:
    """Mean requests per steady cycle, and per machine-hour when n = max_limit."""
    kinds = ("list", "changes", "limits")
    mean = {k: round(sum(c["requests"].get(k, 0) for c in steady) / len(steady), 3)
            for k in kinds}
    per_cycle = round(sum(mean.values()), 3)
    rates: dict[str, Any] = {"steady_requests_per_cycle_by_kind": mean,
                             "steady_requests_per_cycle": per_cycle}
    if variant.max_limit_is_servers:
        # The same requests per cycle serve 1,000 machines with max_limit 1000 (pages
        # depend on n / max_limit only; a change listing fits one page), 60 cycles/h.
        rates["per_machine_hour_at_1000_polling"] = round(per_cycle * 3600 / CYCLE / 1000, 4)
        rates["per_machine_hour_at_1000_with_flavors_and_tokens"] = round(
            (per_cycle * 3600 / CYCLE + 2) / 1000, 4)
    return rates


# --------------------------------------------------------------------- (c) extrapolation --


@dataclass(frozen=True)
class Fleet:
    """What an extrapolation is for: ``machines`` pilots of ``job_hours`` each, listed by
    a Nova with ``[api] max_limit``."""

    machines: int
    max_limit: int
    job_hours: float


def extrapolate(fleet: Fleet, full_listing: float, limits_per_hour: float,
                tokens_per_hour: float = 1.0) -> dict[str, Any]:
    """Requests per hour at a 60 s cycle: full listings every ``full_listing`` seconds
    (0: every cycle), one change page in between, limits as given, flavors hourly."""
    machines, max_limit, job_hours = fleet.machines, fleet.max_limit, fleet.job_hours
    pages = pages_formula(machines, max_limit)
    cycles = 3600 / CYCLE
    full = cycles if full_listing <= 0 else min(cycles, 3600 / full_listing)
    listing = full * pages + (cycles - full)
    flavors_per_hour = 1.0  # flavor list cached 1 h by the adapter and the cycle
    actions_per_hour = 2 * machines / job_hours
    base = listing + limits_per_hour + flavors_per_hour + tokens_per_hour
    return {
        "machines": machines, "max_limit": max_limit, "cycle_seconds": CYCLE,
        "full_listing_seconds": full_listing, "pages_per_full_listing": pages,
        "per_hour": {"full listing pages": round(full * pages, 1),
                     "change listings": round(cycles - full, 1), "limits": limits_per_hour,
                     "flavors": flavors_per_hour, "keystone tokens": tokens_per_hour,
                     f"actions (2 per {job_hours:g} h pilot)": round(actions_per_hour, 1)},
        "per_machine_hour_polling_only": round((listing + limits_per_hour) / machines, 4),
        "per_machine_hour_without_actions": round(base / machines, 4),
        "per_machine_hour_with_actions": round((base + actions_per_hour) / machines, 4),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "benchmark": "api_economy",
        "params": {k: v for k, v in vars(args).items() if k != "out"},
        "host": host_info(),
        "goal": f"<= {GOAL} requests per machine per hour at 1,000 machines",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    report["sim"] = sim_run(args)
    report["nova"] = {v.name: {"skipped": "--skip-nova"} if args.skip_nova
                      else nova_run(args, v) for v in VARIANTS}
    report["ec2"] = ec2_report(args)
    hourly = 3600 / CYCLE
    fleet = Fleet(machines=1000, max_limit=1000, job_hours=args.job_hours)
    report["extrapolated"] = {
        "what": "formula checked on real Nova (pages = floor(n / max_limit) + 1 per full "
                "listing, one page per change listing, limits as described, flavors "
                "hourly, one request per create/delete), applied to n machines and a 60 s "
                "cycle",
        "default_processors_limit_full": extrapolate(fleet, 600, 0),
        "default_quota_bound_full": extrapolate(fleet, 600, 6),
        "default_not_full_limits_every_cycle": extrapolate(fleet, 600, hourly),
        "vcycle_mode_full_listing_every_cycle": extrapolate(fleet, 0, hourly),
        "default_24h_pilots": extrapolate(Fleet(1000, 1000, 24.0), 600, 0),
    }
    e = report["extrapolated"]["default_processors_limit_full"]
    report["meets_goal_polling_only"] = e["per_machine_hour_polling_only"] <= GOAL
    report["meets_goal_without_actions"] = e["per_machine_hour_without_actions"] <= GOAL
    report["meets_goal_with_actions"] = e["per_machine_hour_with_actions"] <= GOAL
    failures = []
    for name, nova in report["nova"].items():
        if "skipped" in nova:
            continue
        if not nova["reached_steady_state"]:
            failures.append(f"{name}: real Nova never reached a steady state")
        if not nova["full_listing_pages_formula_holds"]:
            failures.append(f"{name}: full listing pages differ from floor(n/max_limit)+1")
        if not nova["at_most_one_limits_and_one_request_per_action_after_cycle_1"]:
            failures.append(f"{name}: more requests than one per action / one limits")
        if nova["errors"]:
            failures.append(f"{name}: cycle errors: {nova['errors']}")
        measured = nova.get("per_machine_hour_at_1000_with_flavors_and_tokens")
        if name == "default" and measured is not None and measured > GOAL:
            failures.append(f"default: {measured} per machine-hour measured > {GOAL}")
    if not report["ec2"].get("ok", True):
        failures.append("ec2: no steady state, or pages differ from ceil(n / page size)")
    report["failures"] = failures
    report["ok"] = not failures
    return report


def summary(report: dict[str, Any]) -> str:
    s, ex = report["sim"], report["extrapolated"]
    lines = [
        "cloudvac api_economy: cloud requests per managed machine per hour (60 s cycle)",
        f"  (a) sim, MEASURED at {s['machines']} machines: steady calls per cycle "
        f"{s['steady_calls_per_cycle_mean']} -> {s['per_machine_hour_polling']} per "
        f"machine-hour polling (+ hourly flavor); with actions for "
        f"{s['pilot_hours_assumed']:g} h pilots {s['per_machine_hour_with_actions']}",
    ]
    for name, nova in report["nova"].items():
        if "skipped" in nova:
            lines.append(f"  (b) real Nova {name}: skipped ({nova['skipped']})")
            continue
        lines.append(
            f"  (b) real Nova {name}, MEASURED at {nova['servers']} servers, max_limit "
            f"{nova['max_limit']}, full listing every {nova['full_listing_seconds']:g} s: "
            f"{nova['cycles_total']} cycles, requests {nova['requests_total_by_kind']}, "
            f"{nova['keystone_token_requests']} Keystone token(s)")
        lines.append(
            f"      full listings {nova['full_listings']}, (listed, pages) "
            f"{nova['distinct_full_listed_vs_pages']}, formula holds: "
            f"{nova['full_listing_pages_formula_holds']}")
        if nova["reached_steady_state"]:
            line = (f"      steady: {nova['steady_requests_per_cycle_by_kind']} = "
                    f"{nova['steady_requests_per_cycle']} requests per cycle")
            if "per_machine_hour_at_1000_polling" in nova:
                line += (f" -> at 1,000 machines {nova['per_machine_hour_at_1000_polling']} "
                         f"per machine-hour, "
                         f"{nova['per_machine_hour_at_1000_with_flavors_and_tokens']} with "
                         "flavors and tokens")
            else:
                line += f" (pages floor({nova['servers']}/{nova['max_limit']})+1)"
            lines.append(line)

    lines += ec2_summary(report["ec2"])
    for key, e in ex.items():
        if key == "what":
            continue
        lines.append(
            f"  (c) EXTRAPOLATED {key}: polling {e['per_machine_hour_polling_only']}, "
            f"+ flavors/tokens {e['per_machine_hour_without_actions']}, + actions "
            f"{e['per_machine_hour_with_actions']} per machine-hour")
    lines.append(
        f"  goal <= {GOAL} at 1,000 machines (defaults, processors_limit full): polling "
        f"{'MET' if report['meets_goal_polling_only'] else 'NOT MET'}, with flavors/tokens "
        f"{'MET' if report['meets_goal_without_actions'] else 'NOT MET'}, with actions "
        f"{'MET' if report['meets_goal_with_actions'] else 'NOT MET'}")
    verdict = "OK" if report["ok"] else "FAILED: " + "; ".join(report["failures"])
    lines.append(f"  result       {verdict}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.api_economy",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sim-machines", type=int, default=1000)
    parser.add_argument("--sim-cycles", type=int, default=10, help="steady sim cycles")
    parser.add_argument("--sim-period", type=float, default=1.0,
                        help="cycle_seconds of the sim run (requests are counted per cycle)")
    parser.add_argument("--job-hours", type=float, default=12.0,
                        help="mean pilot lifetime, for the actions term")
    parser.add_argument("--nova-servers", type=int, default=32)
    parser.add_argument("--max-limit", type=int, default=8, help="Nova [api] max_limit")
    parser.add_argument("--nova-burst", type=int, default=4,
                        help="creation_burst_processors of the Nova space (a slow ramp "
                             "shows the page formula at many listing sizes)")
    parser.add_argument("--nova-period", type=float, default=2.0)
    parser.add_argument("--nova-steady", type=int, default=30,
                        help="steady Nova cycles (30 = three full-listing periods)")
    parser.add_argument("--skip-nova", action="store_true")
    add_ec2_args(parser)
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if min(args.sim_machines, args.sim_cycles, args.nova_servers, args.max_limit,
           args.nova_burst, args.nova_steady) < 1:
        parser.error("counts must be >= 1")
    if args.nova_servers > 60:
        parser.error("keep --nova-servers <= 60 (Nova boots about 1 server a second)")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(parse_args, run, summary, argv)


if __name__ == "__main__":
    sys.exit(main())
