"""Benchmark: heartbeat PUTs per second against the real ``cloudvac web`` service.

    .venv/bin/python -m benchmarks.web_heartbeats [--machines N] [--seconds S]
        [--concurrency C] [--clients P] [--warmup W] [--slow-clients N [N ...]] [--out FILE]

What it does, all on 127.0.0.1 and bounded in time:

1. makes a temporary state dir with a SQLite store holding N running machines of one
   machinetype in one space, and a config dir (``[settings]`` with ``state_dir``,
   ``web_listen`` and ``operator_listen`` on free ports and ``web_rate_per_client = 0``,
   since every client here has the one address 127.0.0.1; one ``[space]``, one
   ``[machinetype]``);
2. starts ``python -m cloudvac web --config-dir DIR`` in its own process, exactly as
   production does, and waits for ``/healthz``;
3. with ``--slow-clients N``, starts one more process holding N hostile connections during
   the whole run: each sends half a request (line, a header, the start of another) and then
   one byte every few seconds, and connects again when the server closes it;
4. starts P load-generator processes, each an asyncio loop with C keep-alive HTTP/1.1
   connections written directly on asyncio streams (a few microseconds of client CPU per
   request, so the generator is not the bottleneck; its CPU use is reported to prove it);
   each connection PUTs ``joboutputs/heartbeat`` for random machines of its own share
   (a machine belongs to one connection, so its PUTs are in order) with that machine's own
   token, signed with the server's secret from the state dir; every body is unique;
5. after a warm-up, counts for S seconds: completions, statuses, latency percentiles,
   server CPU seconds and RSS (from ``/proc``), client CPU, whole-machine CPU;
6. stops the server (SIGTERM, which flushes the heartbeat buffer), then checks that every
   machine that got a 204 has ``heartbeat_at`` in the store and a heartbeat file on disk
   whose body is that of the machine's last 204-acknowledged PUT (``stale``: an older one;
   ``lost``: no file; a later PUT whose answer did not arrive is allowed and counted).

Exit status 1 (and ``"ok": false`` in the JSON) if any honest response was not 204, if any
heartbeat did not land or is stale, or if the server failed; the JSON is written either
way.  Several ``--slow-clients`` values run one after another, each on a fresh server, into
one JSON (default ``results/web_heartbeats_slow.json``).

``--server-module`` runs ``python -m MODULE web ...`` instead of ``cloudvac``: a way to
measure a patched build (e.g. a scratch package on PYTHONPATH that monkeypatches
cloudvac and calls ``cloudvac.cli.main``) with the very same harness.  ``--server-tree
DIR`` runs the server from another source tree (the build before a change, a ``git
worktree``): run both in turn for a before/after figure on a shared machine.

The floor (issue 19): before cloudvac, the same load generator drives the smallest ASGI
app on the same stack (``benchmarks/_asgi_floor.py``: uvicorn, uvloop, httptools, 204 to
every PUT), and the report gives cloudvac's throughput as a fraction of it
(``ratio_to_floor``, goal >= 0.5) and its CPU per request as a multiple of the floor's:
figures that survive the machine's speed changing from day to day.  ``--no-floor`` skips it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import random
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
SPACE = "bench.example"
MACHINETYPE = "beat"
HEARTBEAT_FILE = "heartbeat"
RESULTS = Path(__file__).resolve().parent / "results" / "web_heartbeats.json"
RESULTS_SLOW = RESULTS.with_name("web_heartbeats_slow.json")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
CLIENT_SLACK = 30.0  # beyond warm-up + measurement, before client processes are killed
SLOW_TRICKLE_SECONDS = 3.0  # a hostile connection sends one byte this often
SLOW_SETTLE_SECONDS = 3.0   # the hostile connections are opened over this, before warm-up
GOAL_RATIO = 0.5  # cloudvac's heartbeats per second / the floor's (issue 19)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class BenchmarkError(RuntimeError):
    pass


# ---------------------------------------------------------------- set-up -----------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def machine_names(count: int) -> list[str]:
    return [f"vm-{i:06d}" for i in range(count)]


def write_config(config_dir: Path, state_dir: Path, port: int, operator_port: int) -> None:
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "00-bench.conf").write_text(f"""\
[settings]
state_dir = {state_dir}
web_listen = {HOST}:{port}
operator_listen = {HOST}:{operator_port}
web_rate_per_client = 0

[space {SPACE}]
api = sim
flavor_names = m1.small

[machinetype {SPACE} {MACHINETYPE}]
target_share = 1
heartbeat_file = {HEARTBEAT_FILE}
""")


def populate_store(database_url: str, names: list[str]) -> float:
    """Create the store and N running machines; returns the seconds it took."""
    from cloudvac.model.records import MachineRecord
    from cloudvac.model.states import MachineState
    from cloudvac.store import Store

    started = time.perf_counter()
    now = time.time()
    store = Store(database_url)
    try:
        store.apply(SPACE, [
            MachineRecord(space=SPACE, name=name, machinetype=MACHINETYPE,
                          state=MachineState.RUNNING, cloud_id=f"cloud-{name}", processors=1,
                          created_at=now - 600, started_at=now - 500,
                          address=f"10.0.{i // 250}.{i % 250 + 1}")
            for i, name in enumerate(names)
        ], {}, now)
    finally:
        store.close()
    return time.perf_counter() - started


def wait_healthy(port: int, server: subprocess.Popen[bytes], timeout: float) -> float:
    started = time.monotonic()
    url = f"http://{HOST}:{port}/healthz"
    while time.monotonic() - started < timeout:
        if server.poll() is not None:
            raise BenchmarkError(f"server exited with status {server.returncode} on start-up")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise BenchmarkError(f"server not healthy after {timeout:.0f}s")


def fetch_text(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=10) as response:
        return str(response.read().decode())


def metric_samples(metrics_text: str, prefix: str) -> dict[str, float]:
    """Samples of the metrics named ``prefix...`` in /metrics text, by name{labels}."""
    found: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith(prefix) and "_created" not in line:
            key, _, value = line.rpartition(" ")
            found[key] = float(value)
    return found


def uploads_counted(metrics_text: str) -> dict[str, float]:
    """``cloudvac_uploads_total`` by "kind/status" from the /metrics text."""
    found: dict[str, float] = {}
    for key, value in metric_samples(metrics_text, "cloudvac_uploads_total{").items():
        labels = dict(re.findall(r'(\w+)="([^"]*)"', key))
        found[f"{labels['kind']}/{labels['status']}"] = value
    return found


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int | None, bool]:
    """SIGTERM, wait, SIGKILL on timeout.  Returns (exit status, killed)."""
    if proc.poll() is not None:
        return proc.returncode, False
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout), False
    except subprocess.TimeoutExpired:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        return proc.returncode, True


# ------------------------------------------------------------- /proc ---------------------


def proc_cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, all its threads included."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_status(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
        elif key == "Threads":
            values[key] = int(rest.split()[0])
    return values


def system_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return float(total - idle), float(total)


# ------------------------------------------------------------- load generator ------------


def client_main(spec: dict[str, Any], pipe: Connection) -> None:
    """One load-generator process (multiprocessing target)."""
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            result = runner.run(_client(spec))
    except BaseException as exc:  # report, never hang the parent
        result = {"fatal": f"{type(exc).__name__}: {exc}"}
    pipe.send(result)
    pipe.close()


def _loop_factory() -> Any:
    """uvloop's loop when installed: the generator's cost per request is a third lower, so
    it keeps ahead of the floor server (its CPU is reported either way)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


class _Tally:
    """What one load-generator process saw."""

    def __init__(self, t0: float, t1: float) -> None:
        self.t0, self.t1 = t0, t1               # the measurement window
        self.statuses: Counter[str] = Counter()      # inside the measurement window
        self.all_statuses: Counter[str] = Counter()  # warm-up included
        self.latencies: list[float] = []
        self.acked: dict[int, tuple[int, str]] = {}  # machine: (seq, body) of its last 204
        self.sent: dict[int, int] = {}               # machine: seq of its last PUT sent
        self.problems: list[str] = []

    def problem(self, text: str) -> None:
        if len(self.problems) < 5:
            self.problems.append(text)

    def count(self, machine: int, status: str, sent: float, elapsed: float,
              put: tuple[int, str]) -> None:
        """One answer (``put``: the PUT's sequence number and body)."""
        self.all_statuses[status] += 1
        self.sent[machine] = put[0]
        if status == "204":
            self.acked[machine] = put
        if self.t0 <= sent and time.time() <= self.t1:
            self.statuses[status] += 1
            self.latencies.append(elapsed)


def _response_head(head: bytes) -> tuple[str, int, bool]:
    """(status, Content-Length, Connection: close) of a response head."""
    status = head[9:12].decode()
    length, close = 0, False
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        key = key.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"transfer-encoding":
            raise BenchmarkError("chunked response not expected")
        elif key == b"connection" and value.strip().lower() == b"close":
            close = True
    return status, length, close


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    request: bytes, tally: _Tally) -> tuple[str, bool]:
    """Send one request, read its response; returns (status, connection to close)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status, length, close = _response_head(head)
    if length:
        detail = await reader.readexactly(length)
        if status != "204":
            tally.problem(f"{status} {detail[:200].decode(errors='replace')}")
    return status, close


async def _client(spec: dict[str, Any]) -> dict[str, Any]:
    from cloudvac.auth.vmtokens import TokenSigner

    signer = TokenSigner(bytes.fromhex(spec["secret_hex"]))
    names: list[str] = spec["names"]
    expires = time.time() + 6 * 3600
    port: int = spec["port"]
    prefixes = [
        (f"PUT /machines/{SPACE}/{name}/joboutputs/{HEARTBEAT_FILE} HTTP/1.1\r\n"
         f"Host: {HOST}:{port}\r\n"
         f"Authorization: Bearer {signer.token(SPACE, name, expires)}\r\n"
         f"Content-Type: text/plain\r\n").encode()
        for name in names
    ]
    start_at, t0, t1 = spec["start_at"], spec["t0"], spec["t1"]
    rng = random.Random(spec["seed"])
    ready_at = time.time()
    tally = _Tally(t0, t1)
    cpu: dict[str, float] = {}

    async def sample_cpu() -> None:
        await asyncio.sleep(max(0.0, t0 - time.time()))
        cpu["t0"] = time.process_time()
        await asyncio.sleep(max(0.0, t1 - time.time()))
        cpu["t1"] = time.process_time()

    async def connection(index: int) -> None:
        slot = spec["slot"] + index  # this connection's share: machines i % slots == slot
        mine = range(slot, len(names), spec["slots"])
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        seq = 0
        try:
            while time.time() < t1 and mine:
                if writer is None or reader is None:
                    reader, writer = await asyncio.open_connection(HOST, port)
                i = mine[rng.randrange(len(mine))]
                seq += 1  # what the VM agent sends, made unique per PUT
                text = f"{int(time.time())} 0.42 c{slot}#{seq}\n"
                body = text.encode()
                request = prefixes[i] + b"Content-Length: %d\r\n\r\n" % len(body) + body
                sent = time.time()
                began = time.perf_counter()
                try:
                    status, close = await _exchange(reader, writer, request, tally)
                except (OSError, asyncio.IncompleteReadError, BenchmarkError) as exc:
                    status, close = f"conn:{type(exc).__name__}", True
                    tally.problem(f"connection {index}: {exc!r}")
                tally.count(i, status, sent, time.perf_counter() - began, (seq, text))
                if close:
                    writer.close()
                    reader = writer = None
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    await asyncio.sleep(max(0.0, start_at - time.time()))
    sampler = asyncio.create_task(sample_cpu())
    await asyncio.gather(*(connection(i) for i in range(spec["concurrency"])))
    await sampler
    return {
        "ready_late": ready_at > start_at,
        "statuses": dict(tally.statuses),
        "all_statuses": dict(tally.all_statuses),
        "latencies": tally.latencies,
        "acked": {str(i): list(v) for i, v in tally.acked.items()},
        "sent": {str(i): seq for i, seq in tally.sent.items()},
        "problems": tally.problems,
        "cpu_seconds": cpu.get("t1", 0.0) - cpu.get("t0", 0.0),
    }


# ------------------------------------------------------------- hostile clients -----------


SLOW_HEAD = (f"PUT /machines/{SPACE}/vm-slow/joboutputs/{HEARTBEAT_FILE} HTTP/1.1\r\n"
             f"Host: {HOST}\r\nX-Slow: ").encode()


def raise_file_limit() -> int:
    """This process's soft RLIMIT_NOFILE raised to the hard limit (a thousand connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def slow_main(spec: dict[str, Any], pipe: Connection) -> None:
    """The hostile-connections process (multiprocessing target)."""
    raise_file_limit()
    try:
        result = asyncio.run(_slow(spec))
    except BaseException as exc:  # report, never hang the parent
        result = {"fatal": f"{type(exc).__name__}: {exc}"}
    pipe.send(result)
    pipe.close()


async def _slow_connection(port: int, t1: float, tally: Counter[str]) -> None:
    """One hostile client until ``t1``: half a request, then a byte every few seconds;
    when the server closes the connection, a new one."""
    while time.time() < t1:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            tally["connect_errors"] += 1
            await asyncio.sleep(1.0)
            continue
        tally["opened"] += 1
        tally["open"] += 1
        answer = b""
        try:
            writer.write(SLOW_HEAD)
            while time.time() < t1:
                try:
                    data = await asyncio.wait_for(reader.read(4096), SLOW_TRICKLE_SECONDS)
                except TimeoutError:
                    writer.write(b"x")
                    continue
                if not data:
                    break
                answer += data
        except OSError:
            tally["reset_by_server"] += 1
        finally:
            tally["open"] -= 1
            writer.close()
        if time.time() < t1:
            tally["closed_by_server"] += 1
            tally[f"answered {answer[9:12].decode(errors='replace') or 'nothing'}"] += 1


async def _slow(spec: dict[str, Any]) -> dict[str, Any]:
    tally: Counter[str] = Counter()
    count, t0, t1 = spec["count"], spec["t0"], spec["t1"]
    samples: list[int] = []

    async def sample() -> None:
        await asyncio.sleep(max(0.0, t0 - time.time()))
        while time.time() < t1:
            samples.append(tally["open"])
            await asyncio.sleep(0.5)

    async def staggered(i: int) -> None:
        await asyncio.sleep(SLOW_SETTLE_SECONDS * i / count)
        await _slow_connection(spec["port"], t1, tally)

    await asyncio.gather(sample(), *(staggered(i) for i in range(count)))
    tally.pop("open", None)
    return {"connections": count, **dict(sorted(tally.items())),
            "open_in_window": {"min": min(samples, default=0), "max": max(samples, default=0),
                               "mean": round(sum(samples) / max(1, len(samples)), 1)}}


# ------------------------------------------------------------- the run -------------------


def _start(ctx: Any, target: Any, spec: dict[str, Any], name: str) -> tuple[Any, Connection]:
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(spec, child), name=name)
    proc.start()
    child.close()
    return proc, parent


def _collect(procs: list[tuple[Any, Connection]], deadline: float) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for proc, pipe in procs:
        if pipe.poll(max(0.1, deadline - time.time())):
            results.append(pipe.recv())
        else:
            results.append({"fatal": "no result before the deadline"})
        proc.join(max(0.1, deadline - time.time()))
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    return results


def run_clients(args: argparse.Namespace, port: int, secret: bytes, names: list[str],
                server_pid: int) -> dict[str, Any]:
    ctx, slow = mp.get_context("spawn"), args.slow
    slack = 2.0 + 0.5 * args.clients  # spawning and signing N tokens per client
    if slow:
        slack = max(slack, SLOW_SETTLE_SECONDS + 2.0)  # the hostile ones are all there
    start_at = time.time() + slack
    t0 = start_at + args.warmup
    t1 = t0 + args.seconds
    hostile = [_start(ctx, slow_main, {"port": port, "count": slow, "t0": t0, "t1": t1},
                      "slow")] if slow else []
    procs = [_start(ctx, client_main,
                    {"secret_hex": secret.hex(), "names": names, "port": port,
                     "concurrency": args.concurrency, "seed": args.seed + k,
                     "slot": k * args.concurrency, "slots": args.clients * args.concurrency,
                     "start_at": start_at, "t0": t0, "t1": t1}, f"load-{k}")
             for k in range(args.clients)]

    time.sleep(max(0.0, t0 - time.time()))
    cpu0, mem0, sys0 = proc_cpu_seconds(server_pid), proc_status(server_pid), system_cpu()
    time.sleep(max(0.0, t1 - time.time()))
    cpu1, mem1, sys1 = proc_cpu_seconds(server_pid), proc_status(server_pid), system_cpu()

    results = _collect(procs, t1 + CLIENT_SLACK)
    return {"results": results, "window": args.seconds,
            "slow": _collect(hostile, t1 + CLIENT_SLACK)[0] if hostile else None,
            "server_cpu_seconds": cpu1[0] + cpu1[1] - cpu0[0] - cpu0[1],
            "server_cpu_system_seconds": cpu1[1] - cpu0[1], "server_rss_start": mem0.get("VmRSS"),
            "server_rss_end": mem1.get("VmRSS"), "server_rss_peak": mem1.get("VmHWM"),
            "server_threads": mem1.get("Threads"),
            "system_busy_cores": (sys1[0] - sys0[0]) / max(1.0, sys1[1] - sys0[1])
            * (os.cpu_count() or 1)}


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


# ------------------------------------------------------------- main ----------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.web_heartbeats",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--machines", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=16,
                        help="keep-alive connections per load-generator process")
    parser.add_argument("--clients", type=int, default=1, help="load-generator processes")
    parser.add_argument("--slow-clients", type=int, nargs="+", default=[0], metavar="N",
                        help="hostile slow connections held during the run; several values: "
                        "one run each, into one JSON")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--target", type=float, default=3000.0,
                        help="req/s the issue asks for (reported, not enforced)")
    parser.add_argument("--goal-ratio", type=float, default=GOAL_RATIO,
                        help="cloudvac's throughput as a fraction of the floor's, the goal "
                        "(reported, not enforced)")
    parser.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                        help="also drive the minimal ASGI app (benchmarks/_asgi_floor.py) "
                        "on the same stack, before cloudvac, and report the ratio")
    parser.add_argument("--server-module", default="cloudvac",
                        help="run `python -m MODULE web` (default cloudvac)")
    parser.add_argument("--server-tree", type=Path, default=None, metavar="DIR",
                        help="run the server from the source tree DIR (its `python -m "
                        "cloudvac` imports DIR/cloudvac): a build before a change, e.g. a "
                        "`git worktree`; the harness itself is this tree's")
    parser.add_argument("--out", type=Path, default=None, help="default results/"
                        "web_heartbeats.json (web_heartbeats_slow.json for several runs)")
    args = parser.parse_args(argv)
    if args.machines < 1 or args.concurrency < 1 or args.clients < 1 or args.seconds <= 0 \
            or args.warmup < 0 or min(args.slow_clients) < 0:
        parser.error("machines, concurrency and clients must be >= 1, seconds > 0, warmup >= 0,"
                     " slow clients >= 0")
    if args.seconds + args.warmup > 600:
        parser.error("keep warm-up + seconds under 600")
    if args.out is None:
        args.out = RESULTS if len(args.slow_clients) == 1 else RESULTS_SLOW
    return args


def _serve_and_load(args: argparse.Namespace, root: Path, names: list[str],
                    report: dict[str, Any], failures: list[str]) -> dict[str, Any]:
    """Start the server, run the load (and the hostile clients), stop the server."""
    from cloudvac.auth.vmtokens import load_or_create_secret

    state_dir, config_dir = root / "state", root / "cloudvac.d"
    port, operator_port = free_port(), free_port()
    write_config(config_dir, state_dir, port, operator_port)
    report["setup_seconds"] = round(populate_store(database_url(root), names), 3)
    log_path = root / "server.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", args.server_module, "web", "--config-dir",
             str(config_dir), "--log-level", "WARNING"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            cwd=args.server_tree)
    load: dict[str, Any] = {}
    try:
        report["server_start_seconds"] = round(wait_healthy(port, server, START_TIMEOUT), 3)
        secret = load_or_create_secret(state_dir)
        load = run_clients(args, port, secret, names, server.pid)
        with contextlib.suppress(Exception):
            text = fetch_text(operator_port, "/metrics")
            report["server_metrics"] = uploads_counted(text)
            report["server_guard_metrics"] = metric_samples(text, "cloudvac_web_")
    finally:
        server_exit, killed = stop_process(server, STOP_TIMEOUT)
        server_log = log_path.read_text(errors="replace")
    report["server_exit"] = server_exit
    if killed:
        failures.append(f"server did not stop within {STOP_TIMEOUT:.0f}s; killed")
    elif server_exit != 0:
        failures.append(f"server exited with status {server_exit}")
    if server_log.strip():
        report["server_log_tail"] = server_log[-2000:]
        report["server_log_lines"] = len(server_log.splitlines())
    return load


def run_floor(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """The same load, by the same generator, against ``benchmarks/_asgi_floor.py`` (the
    minimal ASGI app on uvicorn + uvloop + httptools): the most this machine serves
    through that stack now.  No hostile clients (the floor has no guard to meet them)."""
    report: dict[str, Any] = {"target_rps": args.target}
    failures: list[str] = []
    port = free_port()
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._asgi_floor", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            cwd=Path(__file__).resolve().parent.parent)
        try:
            report["server_start_seconds"] = round(wait_healthy(port, server, START_TIMEOUT), 3)
            load = run_clients(argparse.Namespace(**{**vars(args), "slow": 0}), port,
                               os.urandom(32), names, server.pid)
        finally:
            server_exit, killed = stop_process(server, STOP_TIMEOUT)
            log.seek(0)
            tail = log.read()[-2000:].decode(errors="replace")
    load.pop("slow", None)
    _tally(load, report, failures)
    if killed or server_exit not in (0, -signal.SIGTERM):  # uvicorn re-raises SIGTERM
        failures.append(f"floor server exited with status {server_exit}"
                        + (" (killed)" if killed else ""))
    if tail.strip():
        report["server_log_tail"] = tail
    report.pop("target_rps")
    report.pop("meets_target", None)
    report["failures"] = failures
    return report


def database_url(root: Path) -> str:
    return f"sqlite:///{root / 'state' / 'cloudvac.db'}"


def _tally(load: dict[str, Any], report: dict[str, Any], failures: list[str]
           ) -> dict[str, Any]:
    """Aggregate the load processes' counts into ``report``; returns what the landing
    check needs (acknowledged and sent PUTs per machine)."""
    results = load.pop("results")
    failures += [f"load generator failed: {r['fatal']}" for r in results if "fatal" in r]
    good = [r for r in results if "fatal" not in r]
    statuses: Counter[str] = Counter()
    all_statuses: Counter[str] = Counter()
    latencies: list[float] = []
    acked: dict[int, tuple[int, str]] = {}
    sent: dict[int, int] = {}
    problems: list[str] = []
    for r in good:
        statuses.update(r["statuses"])
        all_statuses.update(r["all_statuses"])
        latencies += r["latencies"]
        acked.update({int(i): (v[0], v[1]) for i, v in r["acked"].items()})
        sent.update({int(i): v for i, v in r["sent"].items()})
        problems += r["problems"]
    if any(r.get("ready_late") for r in good):
        report["warning"] = "a load generator started after the warm-up began"
    latencies.sort()
    window = load["window"]
    completed = sum(statuses.values())
    ok = statuses.get("204", 0)
    errors = {s: n for s, n in all_statuses.items() if s != "204"}
    report["requests"] = {
        "completed_in_window": completed,
        "success_204_in_window": ok,
        "total_including_warmup": sum(all_statuses.values()),
        "errors_by_status": errors,
        "error_samples": problems[:5],
    }
    report["throughput_rps"] = round(ok / window, 1)
    report["meets_target"] = ok / window >= float(report["target_rps"])
    report["latency_ms"] = {
        f"p{q}": None if (v := percentile(latencies, q)) is None else round(v * 1000, 2)
        for q in (50, 95, 99)
    } | {"max": round(latencies[-1] * 1000, 2) if latencies else None}
    _resources(load, completed, sum(r["cpu_seconds"] for r in good), len(good), report)
    if errors:
        failures.append(f"non-204 responses: {errors}")
    if not ok:
        failures.append("no successful heartbeat in the measurement window")
    metrics = report.get("server_metrics", {})
    if metrics and metrics.get("heartbeat/204", 0) < all_statuses.get("204", 0):
        failures.append("server counted fewer 204 heartbeats than the clients received")
    return {"acked": acked, "sent": sent}


def _resources(load: dict[str, Any], completed: int, client_cpu: float, processes: int,
               report: dict[str, Any]) -> None:
    window = load["window"]
    report["server"] = {
        "cpu_seconds": round(load["server_cpu_seconds"], 2),
        "cpu_system_seconds": round(load["server_cpu_system_seconds"], 2),
        "cpu_percent_of_one_core": round(100 * load["server_cpu_seconds"] / window, 1),
        "cpu_ms_per_request": round(1000 * load["server_cpu_seconds"] / max(1, completed), 3),
        "rss_mb_start": round(load["server_rss_start"] / 2**20, 1),
        "rss_mb_end": round(load["server_rss_end"] / 2**20, 1),
        "rss_mb_peak": round(load["server_rss_peak"] / 2**20, 1),
        "threads": load["server_threads"],
    }
    report["load_generator"] = {
        "cpu_seconds": round(client_cpu, 2),
        "cpu_percent_of_one_core_per_process": round(100 * client_cpu / window
                                                     / max(1, processes), 1),
        "system_busy_cores": round(load["system_busy_cores"], 2),
    }


def _landed(root: Path, names: list[str], puts: dict[str, Any], report: dict[str, Any],
            failures: list[str]) -> None:
    """Did the heartbeats land, and is each file the last acknowledged one?  (The server
    flushed its buffer on SIGTERM.)"""
    from cloudvac.store import Store

    acked: dict[int, tuple[int, str]] = puts["acked"]
    store = Store(database_url(root))
    try:
        records = store.machines(SPACE)
        bodies = {names[i]: store.joboutput(SPACE, names[i], HEARTBEAT_FILE) for i in acked}
    finally:
        store.close()
    sent: dict[int, int] = puts["sent"]
    with_beat = {r.name for r in records if r.heartbeat_at is not None}
    expected = {names[i] for i in acked}
    stale: list[str] = []
    lost: list[str] = []
    newer = 0
    for i, (seq, body) in acked.items():
        stored = bodies[names[i]]
        if stored is None:
            lost.append(names[i])
            continue
        found = stored.decode("utf-8", "replace")
        if found == body:
            continue
        got = re.search(r"#(\d+)\n?$", found)
        if got and seq < int(got.group(1)) <= sent.get(i, seq):
            newer += 1  # a later PUT the server took, whose answer did not arrive
        else:
            stale.append(f"{names[i]}: {found.strip()!r} instead of {body.strip()!r}")
    report["landed"] = {
        "machines_sent_204": len(expected),
        "machines_with_heartbeat_at": len(with_beat),
        "machines_with_heartbeat_file": len(expected) - len(lost),
        "stale": len(stale), "lost": len(lost), "newer_unacknowledged": newer,
        "stale_samples": stale[:3],
    }
    if missing := expected - with_beat:
        failures.append(f"{len(missing)} machines got a 204 but have no heartbeat_at "
                        f"(e.g. {sorted(missing)[:3]})")
    if lost:
        failures.append(f"{len(lost)} machines got a 204 but have no heartbeat file "
                        f"(e.g. {lost[:3]})")
    if stale:
        failures.append(f"{len(stale)} heartbeat files are not the last acknowledged body "
                        f"(e.g. {stale[0]})")
    if unexpected := with_beat - expected:
        failures.append(f"{len(unexpected)} machines have heartbeat_at without a 204")


def run(args: argparse.Namespace, slow: int = 0) -> dict[str, Any]:
    failures: list[str] = []
    report: dict[str, Any] = {
        "benchmark": "web_heartbeats",
        "params": {"machines": args.machines, "seconds": args.seconds, "warmup": args.warmup,
                   "concurrency": args.concurrency, "clients": args.clients,
                   "slow_clients": slow, "seed": args.seed,
                   "server_module": args.server_module, "goal_ratio": args.goal_ratio},
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                 "platform": platform.platform()},
        "target_rps": args.target,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    names = machine_names(args.machines)
    if args.server_tree is not None:
        report["params"]["server_tree"] = str(args.server_tree)
    busy0 = system_cpu()
    time.sleep(1.0)
    busy1 = system_cpu()
    # Other work on the machine skews the numbers: say how busy it was before we started.
    report["host"]["background_busy_cores"] = round(
        (busy1[0] - busy0[0]) / max(1.0, busy1[1] - busy0[1]) * (os.cpu_count() or 1), 2)
    floor = run_floor(args, names) if args.floor else None
    with tempfile.TemporaryDirectory(prefix="cloudvac-bench-") as tmp:
        root = Path(tmp)
        load = _serve_and_load(argparse.Namespace(**vars(args), slow=slow), root, names,
                               report, failures)
        if slow_report := load.pop("slow", None):
            report["slow_clients"] = slow_report
            if "fatal" in slow_report:
                failures.append(f"slow clients failed: {slow_report['fatal']}")
        puts = _tally(load, report, failures)
        _landed(root, names, puts, report, failures)
    if floor is not None:
        _against_floor(floor, report, failures)
    report["failures"] = failures
    report["ok"] = not failures
    return report


def _against_floor(floor: dict[str, Any], report: dict[str, Any],
                   failures: list[str]) -> None:
    """The floor's run in ``report``, and cloudvac's throughput as a fraction of it."""
    report["floor"] = floor
    failures += [f"floor: {text}" for text in floor["failures"]]
    if floor.get("throughput_rps"):
        ratio = report["throughput_rps"] / floor["throughput_rps"]
        report["ratio_to_floor"] = round(ratio, 3)
        report["goal_ratio"] = report["params"]["goal_ratio"]
        report["meets_goal_ratio"] = ratio >= report["goal_ratio"]
        report["cpu_per_request_vs_floor"] = round(
            report["server"]["cpu_ms_per_request"]
            / max(1e-9, floor["server"]["cpu_ms_per_request"]), 2)


def summary(report: dict[str, Any]) -> str:
    p, r, lat = report["params"], report["requests"], report["latency_ms"]
    s, g, landed = report["server"], report["load_generator"], report["landed"]
    lines = [
        f"cloudvac web heartbeats: {p['machines']} machines, {p['clients']} client process(es) "
        f"x {p['concurrency']} connections, {p['seconds']:.0f}s after {p['warmup']:.0f}s warm-up"
        + (f", {p['slow_clients']} slow clients" if p["slow_clients"] else "")
        + (f", server -m {p['server_module']}" if p["server_module"] != "cloudvac" else ""),
        f"  throughput   {report['throughput_rps']:8.1f} req/s (204)   target "
        f"{report['target_rps']:.0f}: {'MET' if report['meets_target'] else 'NOT MET'}",
        f"  requests     {r['completed_in_window']} in window, "
        f"{r['total_including_warmup']} total, errors {r['errors_by_status'] or 'none'}",
        f"  latency ms   p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}  max {lat['max']}",
        f"  server       {s['cpu_seconds']}s CPU ({s['cpu_system_seconds']}s system) = "
        f"{s['cpu_percent_of_one_core']}% of a core, "
        f"{s['cpu_ms_per_request']} ms CPU/req, RSS {s['rss_mb_end']} MB "
        f"(peak {s['rss_mb_peak']}), {s['threads']} threads",
        f"  load gen     {g['cpu_percent_of_one_core_per_process']}% of a core per process; "
        f"machine busy {g['system_busy_cores']} of {report['host']['cpus']} cores "
        f"(before the run: {report['host']['background_busy_cores']})",
        f"  landed       {landed['machines_sent_204']} machines got 204, "
        f"{landed['machines_with_heartbeat_at']} have heartbeat_at, "
        f"{landed['machines_with_heartbeat_file']} have the file; stale {landed['stale']}, "
        f"lost {landed['lost']}, newer unacknowledged {landed['newer_unacknowledged']}",
    ]
    if floor := report.get("floor"):
        lines.append(_floor_line(report, floor))
    if slow := report.get("slow_clients"):
        held = slow.get("open_in_window", {})
        answers = {k: v for k, v in slow.items() if k.startswith("answered")}
        lines.append(f"  slow         {slow.get('connections')} hostile connections: "
                     f"{slow.get('opened', 0)} opened, held open {held.get('min')}-"
                     f"{held.get('max')} during the window, closed by the server "
                     f"{slow.get('closed_by_server', 0)} ({answers or 'none'})")
    result = "OK" if report["ok"] else "FAILED: " + "; ".join(report["failures"])
    lines.append(f"  result       {result}")
    return "\n".join(lines)


def _floor_line(report: dict[str, Any], floor: dict[str, Any]) -> str:
    if "ratio_to_floor" not in report:
        return f"  floor        failed: {floor['failures']}"
    lat, s = floor["latency_ms"], floor["server"]
    return (f"  floor        {floor['throughput_rps']:8.1f} req/s (minimal ASGI app, same "
            f"stack and load), p99 {lat['p99']} ms, {s['cpu_ms_per_request']} ms CPU/req, "
            f"load gen {floor['load_generator']['cpu_percent_of_one_core_per_process']}% of "
            f"a core\n  ratio        {report['ratio_to_floor']:.3f} of the floor (goal "
            f"{report['goal_ratio']}: {'MET' if report['meets_goal_ratio'] else 'NOT MET'}); "
            f"CPU per request {report['cpu_per_request_vs_floor']}x the floor's")


def combined(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs (one per --slow-clients value) side by side."""
    return {
        "benchmark": "web_heartbeats_slow",
        "comparison": [{"slow_clients": r["params"]["slow_clients"],
                        "throughput_rps": r["throughput_rps"],
                        "ratio_to_floor": r.get("ratio_to_floor"),
                        "p50_ms": r["latency_ms"]["p50"], "p99_ms": r["latency_ms"]["p99"],
                        "errors_by_status": r["requests"]["errors_by_status"],
                        "stale": r["landed"]["stale"], "lost": r["landed"]["lost"],
                        "ok": r["ok"]} for r in reports],
        "runs": reports,
        "ok": all(r["ok"] for r in reports),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_file_limit()  # a thousand hostile connections, and the client processes inherit it
    reports: list[dict[str, Any]] = []
    for slow in args.slow_clients:
        try:
            reports.append(run(args, slow))
        except BenchmarkError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
        print(summary(reports[-1]))
        if not reports[-1]["ok"] and "server_log_tail" in reports[-1]:
            print("server log (tail):\n" + reports[-1]["server_log_tail"], file=sys.stderr)
    result = reports[0] if len(reports) == 1 else combined(reports)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  written to   {args.out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
