"""The in-VM agent's sibling modules: ``vmfeatures`` (Machine/Job Features for the pilot),
through the agent as a real process against a stdlib fake of the MJF routes, and ``vmupload``
(its HTTP to the manager) beneath it. test_agent.py has the fake joboutputs and the helpers."""

from __future__ import annotations

import http.server
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudvac.context import vmfeatures, vmupload
from tests.unit.test_agent import (
    NAME,
    PYTHON36,
    SPACE,
    TOKEN,
    FakeJoboutputs,
    finish,
    start_agent,
    wait_for,
)


class FakeFeatures:
    """``GET /machines/{space}/{name}/{machinefeatures,jobfeatures}/{key}`` as the web serves
    MJF: the value of ``values`` and a newline (404 for a key it lacks), for the machine's own
    token only. ``inject[key]`` holds statuses to answer instead, one per request; a 3xx points
    to ``/elsewhere``."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, str]] = {"machinefeatures": {}, "jobfeatures": {}}
        self.inject: dict[str, list[int]] = {}
        self.failing: dict[str, Callable[[], bool]] = {}  # key -> 503 while this says so
        self.gets: list[tuple[str, str | None, int]] = []  # (path, Authorization, status)
        self.lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                authorization = self.headers.get("Authorization")
                status, body = fake.answer(self.path, authorization)
                with fake.lock:
                    fake.gets.append((self.path, authorization, status))
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", f"{fake.url}/elsewhere")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def answer(self, path: str, authorization: str | None) -> tuple[int, bytes]:
        parts = path.split("/")
        if len(parts) != 6 or parts[1] != "machines" or parts[4] not in self.values:
            return 404, b"not found"
        with self.lock:
            if self.inject.get(parts[5]):
                return self.inject[parts[5]].pop(0), b"injected"
            if parts[5] in self.failing and self.failing[parts[5]]():
                return 503, b"injected"
            value = self.values[parts[4]].get(parts[5])
        if authorization != f"Bearer {TOKEN}" or (parts[2], parts[3]) != (SPACE, NAME):
            return 401, b"bad token"
        return (404, b"no such key") if value is None else (200, value.encode() + b"\n")

    def fetched(self) -> list[str]:
        with self.lock:
            return [path.rsplit("/", 1)[1] for path, _, _ in self.gets]

    def config(self, tmp_path: Path) -> dict[str, Any]:
        """The agent config keys for this machine's features, written under tmp_path."""
        base = f"{self.url}/machines/{SPACE}/{NAME}"
        return {"machinefeatures_url": base + "/machinefeatures",
                "jobfeatures_url": base + "/jobfeatures", "features_dir": str(tmp_path / "run")}

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FakeJoboutputs]:
    fake = FakeJoboutputs()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def features() -> Iterator[FakeFeatures]:
    fake = FakeFeatures()
    yield fake
    fake.stop()


# A pilot that reports what it sees of MJF: the two variables, each key read as DIRAC's pilot
# reads allocated_cpu (urlopen of os.path.join(JOBFEATURES, key)), and the directories (but
# not the agent's temporary dot files, which come and go).
MJF_PILOT = """
import json, os, stat, sys, time
from urllib.request import urlopen
dump, wait_for = sys.argv[1], {wait}
def seen():
    out = {{"env": {{k: os.environ.get(k) for k in ("MACHINEFEATURES", "JOBFEATURES")}}}}
    for var in ("MACHINEFEATURES", "JOBFEATURES"):
        directory = os.environ[var][len("file://"):]
        out[var + "_mode"] = oct(stat.S_IMODE(os.stat(directory).st_mode))
        for key in sorted(k for k in os.listdir(directory) if not k.startswith(".")):
            path = os.path.join(directory, key)
            out[key] = [urlopen(os.path.join(os.environ[var], key)).read().decode(),
                        oct(stat.S_IMODE(os.stat(path).st_mode))]
    return out
first = seen()
open(dump + ".first", "w").close()
end = time.time() + 120
while wait_for and time.time() < end and (seen().get(wait_for[0]) or [None])[0] != wait_for[1]:
    time.sleep(0.05)
json.dump({{"first": first, "last": seen()}}, open(dump, "w"))
"""


def mjf_pilot(dump: Path, wait_for: tuple[str, str] | None = None) -> str:
    return MJF_PILOT.format(wait=repr(wait_for)).replace("sys.argv[1]", repr(str(dump)))


HSF_MACHINE = {"total_cpu": "8", "jobslots": "1", "grace_secs": "600", "hs06": "80",
               "shutdowntime": "1900000000"}
HSF_JOB = {"allocated_cpu": "8", "job_id": NAME, "jobstart_secs": "1800000000",
           "wall_limit_secs": "172800", "cpu_limit_secs": "1382400",
           "max_rss_bytes": str(8 * 2048 * 1024 * 1024), "shutdowntime_job": "1900000000"}


@pytest.mark.parametrize("python", [
    sys.executable,
    pytest.param(PYTHON36, marks=pytest.mark.skipif(PYTHON36 is None, reason="no Python 3.6"))])
def test_pilot_gets_its_machine_and_job_features(tmp_path: Path, server: FakeJoboutputs,
                                                 features: FakeFeatures,
                                                 python: str | None) -> None:
    features.values = {"machinefeatures": dict(HSF_MACHINE), "jobfeatures": dict(HSF_JOB)}
    dump = tmp_path / "seen.json"
    (tmp_path / "run" / "jobfeatures").mkdir(parents=True)  # a stale key from before
    (tmp_path / "run" / "jobfeatures" / "max_swap_bytes").write_text("1\n")
    err = finish(start_agent(tmp_path, server.joboutputs(), mjf_pilot(dump),
                             python=python or "", **features.config(tmp_path)))
    seen = json.loads(dump.read_text())["first"]
    run = tmp_path / "run"
    assert seen.pop("env") == {"MACHINEFEATURES": f"file://{run}/machinefeatures",
                               "JOBFEATURES": f"file://{run}/jobfeatures"}
    assert seen.pop("MACHINEFEATURES_mode") == seen.pop("JOBFEATURES_mode") == "0o755"
    # Every value as served, one line, 0644; keys the server has not (404) are no files.
    assert seen == {key: [value + "\n", "0o644"] for key, value in
                    {**HSF_MACHINE, **HSF_JOB}.items()}
    assert not list(run.glob("*/.*"))  # no temporary files left
    assert {auth for _, auth, _ in features.gets} == {f"Bearer {TOKEN}"}
    assert set(features.fetched()) == set(vmfeatures.MACHINE_KEYS) | set(vmfeatures.JOB_KEYS)
    assert "machine/job features written to" in err and TOKEN not in err
    assert server.of("shutdown_message")[0].body == b"200 Success"


def test_features_failing_at_start_do_not_hold_the_pilot_and_are_retried(
        tmp_path: Path, server: FakeJoboutputs, features: FakeFeatures) -> None:
    """allocated_cpu fails (503) at start: the pilot starts anyway, with the variables set;
    with the next heartbeats the missing keys come, and a changed shutdowntime follows."""
    features.values = {"machinefeatures": dict(HSF_MACHINE), "jobfeatures": dict(HSF_JOB)}
    dump = tmp_path / "seen.json"
    # Failing until the pilot took its first look: a heartbeat's refresh may come before it.
    features.failing["allocated_cpu"] = lambda: not (tmp_path / "seen.json.first").exists()
    proc = start_agent(tmp_path, server.joboutputs(), mjf_pilot(dump, ("shutdowntime", "123\n")),
                       **features.config(tmp_path))
    # Until a round got to the last key (a round can also run out of its half period).
    wait_for(lambda: (tmp_path / "run" / "jobfeatures" / "allocated_cpu").exists()
             and vmfeatures.JOB_KEYS[-1] in features.fetched(), timeout=120)
    with features.lock:
        features.values["machinefeatures"]["shutdowntime"] = "123"  # drained
    err = finish(proc, timeout=180)
    seen = json.loads(dump.read_text())
    assert "allocated_cpu" not in seen["first"] and "total_cpu" in seen["first"]
    assert seen["first"]["env"]["JOBFEATURES"] == f"file://{tmp_path}/run/jobfeatures"
    assert seen["last"]["allocated_cpu"] == ["8\n", "0o644"]
    assert seen["last"]["shutdowntime"] == ["123\n", "0o644"]
    assert "machine/job features failing: allocated_cpu: HTTP 503" in err
    assert "machine/job features written to" in err
    assert server.of("shutdown_message")[0].body == b"200 Success"
    # Once complete (the last key of the last full round), only what can change is fetched.
    keys = features.fetched()
    last_full = len(keys) - keys[::-1].index(vmfeatures.JOB_KEYS[-1])
    assert keys[last_full:] and set(keys[last_full:]) <= set(vmfeatures.CHANGING_KEYS)


def test_features_unreachable_the_pilot_still_runs(tmp_path: Path, server: FakeJoboutputs,
                                                   features: FakeFeatures) -> None:
    dump = tmp_path / "seen.json"
    mjf = features.config(tmp_path)
    mjf.update(machinefeatures_url="http://127.0.0.1:9/mf", jobfeatures_url="http://127.0.0.1:9/jf")
    err = finish(start_agent(tmp_path, server.joboutputs(), mjf_pilot(dump), **mjf))
    seen = json.loads(dump.read_text())["first"]
    assert set(seen) == {"env", "MACHINEFEATURES_mode", "JOBFEATURES_mode"}
    assert "machine/job features failing: total_cpu:" in err
    assert server.of("shutdown_message")[0].body == b"200 Success"


def test_features_redirect_is_not_followed(tmp_path: Path, server: FakeJoboutputs,
                                           features: FakeFeatures) -> None:
    """urllib would resend the bearer token to wherever a redirect points."""
    features.values = {"machinefeatures": dict(HSF_MACHINE), "jobfeatures": dict(HSF_JOB)}
    features.inject["total_cpu"] = [302]
    dump = tmp_path / "seen.json"
    err = finish(start_agent(tmp_path, server.joboutputs(), mjf_pilot(dump),
                             **features.config(tmp_path)))
    assert [path for path, _, _ in features.gets].count("/elsewhere") == 0
    assert "machine/job features failing: total_cpu: HTTP 302" in err


def test_features_are_not_written_through_a_planted_link(tmp_path: Path, server: FakeJoboutputs,
                                                         features: FakeFeatures) -> None:
    """The agent is root; should the pilot's user be able to write beside the features, a
    link of its own there must not have root write (or chmod) where it points."""
    features.values = {"machinefeatures": dict(HSF_MACHINE), "jobfeatures": dict(HSF_JOB)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "jobfeatures").symlink_to(elsewhere)
    dump = tmp_path / "seen.json"
    pilot = f"import json, os; json.dump(dict(os.environ), open({str(dump)!r}, 'w'))"
    err = finish(start_agent(tmp_path, server.joboutputs(), pilot, **features.config(tmp_path)))
    assert list(elsewhere.iterdir()) == [] and (elsewhere.stat().st_mode & 0o777) == 0o700
    assert json.loads(dump.read_text())["JOBFEATURES"] == f"file://{tmp_path}/run/jobfeatures"
    assert (f"machine/job features failing: {tmp_path}/run/jobfeatures: not a directory of "
            "the agent's own user") in err
    assert server.of("shutdown_message")[0].body == b"200 Success"


def test_no_features_without_urls(tmp_path: Path, server: FakeJoboutputs) -> None:
    dump = tmp_path / "env.json"
    pilot = f"import json, os; json.dump(dict(os.environ), open({str(dump)!r}, 'w'))"
    finish(start_agent(tmp_path, server.joboutputs(), pilot, features_dir=str(tmp_path / "run"),
                       env={"MACHINEFEATURES": "/etc/machinefeatures"}))
    env = json.loads(dump.read_text())
    assert env["MACHINEFEATURES"] == "/etc/machinefeatures" and "JOBFEATURES" not in env
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("bad", "match"), [
    ({"machinefeatures_url": "http://m/mf"}, "both or neither"),
    ({"machinefeatures_url": "file:///x", "jobfeatures_url": "http://m/jf"}, "http"),
    ({"features_dir": "run"}, "absolute"),
    ({"deadline": "soon"}, "deadline"), ({"deadline": True}, "deadline"),
    ({"unreachable_poweroff_seconds": 0}, "unreachable_poweroff_seconds")])
def test_feature_and_end_keys_are_checked(bad: dict[str, object], match: str) -> None:
    with pytest.raises(vmupload.ConfigError, match=match):
        vmupload.Config({"joboutputs_url": "http://manager", "token": TOKEN, **bad})


# vmupload: the agent's HTTP to the manager, the joboutputs PUTs and the features GETs.

def test_transient_statuses_are_retried(tmp_path: Path, server: FakeJoboutputs) -> None:
    server.inject = {"shutdown_message": [503, 429], "job.log": [408]}
    (tmp_path / "job.log").write_text("x")
    finish(start_agent(tmp_path, server.joboutputs(), "pass", logs=[str(tmp_path / "job.log")]))
    assert [p.status for p in server.of("shutdown_message")] == [503, 429, 204]
    assert [p.status for p in server.of("job.log")] == [408, 204]


@pytest.mark.parametrize("case", ["400", "403"])
def test_permanent_refusals_are_not_retried(tmp_path: Path, server: FakeJoboutputs,
                                            case: str) -> None:
    (tmp_path / "job.log").write_text("x")
    if case == "400":  # the server finds the message malformed, then the log too large
        server.inject = {"shutdown_message": [400], "job.log": [413]}
        url = server.joboutputs()
    else:  # our token, another machine's URL: everything is refused
        url = server.joboutputs("vm-2")
    err = finish(start_agent(tmp_path, url, "pass", logs=[str(tmp_path / "job.log")]))
    assert len(server.of("shutdown_message")) == 1
    assert len(server.of("job.log")) == 1
    assert "not retried" in err
    assert (tmp_path / "poweroff").exists()


def test_retries_end_at_the_deadline(server: FakeJoboutputs) -> None:
    server.inject["heartbeat"] = [503] * 100
    config = vmupload.Config({"joboutputs_url": server.joboutputs(), "token": TOKEN})
    started = time.monotonic()
    status, what = vmupload.Uploader(config).put(
        "heartbeat", b"1 0.00\n", started + 1.0, threading.Event())
    assert (status, what) == (503, "HTTP 503 injected")
    assert 0.9 < time.monotonic() - started < 30  # the upper bound only catches a hang
    assert 2 <= len(server.of("heartbeat")) <= 5


@pytest.mark.parametrize(("status", "answered"), [
    (204, True), (400, True), (413, True), (401, False), (403, False), (404, False),
    (410, False), (429, False), (503, False)])
def test_what_counts_as_an_answer_from_the_manager(tmp_path: Path, server: FakeJoboutputs,
                                                   features: FakeFeatures, status: int,
                                                   answered: bool) -> None:
    """The same for a PUT (retried until the deadline) and for a features GET (tried once)."""
    server.inject["heartbeat"] = [status] * 100
    features.inject["total_cpu"] = [status]
    mjf = features.config(tmp_path)
    config = vmupload.Config({"joboutputs_url": server.joboutputs(), "token": TOKEN, **mjf})
    uploader = vmupload.Uploader(config)
    before = uploader.answered_at
    uploader.put("heartbeat", b"1 0.00\n", time.monotonic() + 0.3, threading.Event())
    assert (uploader.answered_at > before) is answered
    before = uploader.answered_at
    got = uploader.get(mjf["machinefeatures_url"] + "/total_cpu", 2.0)
    assert got[0] == status and (uploader.answered_at > before) is answered


def test_features_of_a_refresh_in_progress_are_not_fetched_twice(
        tmp_path: Path, features: FakeFeatures) -> None:
    """The heartbeat's refresh skips while the pilot's start holds the lock (and vice versa
    the start waits); nothing is fetched or logged for the skipped one."""
    config = vmupload.Config({"joboutputs_url": "http://127.0.0.1:9/j", "token": TOKEN,
                              **features.config(tmp_path)})
    mjf = vmfeatures.Features(config, vmupload.Uploader(config))
    with mjf.lock:
        mjf.refresh(5.0)
    assert features.gets == [] and mjf.last == "not tried"
    mjf.refresh(5.0, wait=True)
    assert len(features.gets) == len(vmfeatures.MACHINE_KEYS) + len(vmfeatures.JOB_KEYS)
    assert sorted(os.listdir(tmp_path / "run")) == ["jobfeatures", "machinefeatures"]
