"""Issue 14: the VM door's OpenAPI document matches its answers, so a schema-driven fuzzer
runs without false alarms.

A schemathesis run over the document the operator door serves (``/openapi.json``), against
the real VM door (uvicorn on 127.0.0.1, SQLite): every operation, in positive and negative
generation modes, with no server error, no undocumented status code, content type, header
or body.  Generated path parameters are often replaced by real ones (the space, a running or
an ended machine, its feature keys and files) and requests carry a machine's own token most
of the time, so a fair share of requests reach the routes' real work rather than a 401,
400 or 404: the test asserts that every operation got 2xx answers, over a fifth in all.

Then the schemathesis command line as an operator would run it over the same document (all
phases and checks, a machine's token): it must report no failure.

Bounded and reproducible: a fixed number of examples per operation and mode, derandomized
Hypothesis (deterministic generation for the command line), no deadline, no short timeouts.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis.core
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.vendor.pretty import RepresentationPrinter
from requests.structures import CaseInsensitiveDict
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.generation.hypothesis import setup as schemathesis_setup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cloudvac.model.states import MachineState
from tests.integration.webserver import SPACE, Running, web_server

# schemathesis patches Hypothesis once per process, on first use (``setup``), and replaces
# its printer by one that prints nothing (for speed on large schemas): every other test's
# falsifying example would read ``x=,``.  Patch now and put the printer back.  (Its pytest
# plugin, which would patch at start-up, is off: ``-p no:schemathesis`` in pyproject.toml.)
schemathesis_setup()
hypothesis.core.RepresentationPrinter = RepresentationPrinter  # type: ignore[attr-defined]

A = "cloudvac-aaaaaa-belle-aaaaaaaaaa"
B = "cloudvac-aaaaaa-belle-bbbbbbbbbb"
ENDED = "cloudvac-aaaaaa-belle-cccccccccc"
EXAMPLES = 40  # per operation and generation mode: 5 operations x 2 modes x 40 = 400 requests
TIMEOUT = 60.0
CHECKS: list[CheckFunction] = [not_a_server_error, status_code_conformance,
                               content_type_conformance, response_headers_conformance,
                               response_schema_conformance]
# Feature keys per kind; the last of each is the other kind's (a 404).
KEYS = {"machinefeatures": ["total_cpu", "jobslots", "hs06", "shutdowntime", "grace_secs",
                             "job_id"],
        "jobfeatures": ["allocated_cpu", "job_id", "jobstart_secs", "wall_limit_secs",
                        "cpu_limit_secs", "max_rss_bytes", "hs06_job", "shutdowntime_job",
                        "jobslots"]}
FILES = ["heartbeat", "shutdown_message", "pilot.log", "vm-heartbeat", "x.txt"]
BODIES = [b"", b"1700000000 0.5\n", b"200 Success\n", b"300 Nothing to do\n", b"x" * 5000]


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with web_server(tmp_path_factory.mktemp("schema")) as running:
        running.add_machine(A)
        running.add_machine(B)
        running.add_machine(ENDED, state=MachineState.GONE)
        yield running


# What a request is aimed at: None keeps the generated path parameters (mostly unknown
# machines), a name puts the real space and that machine in the path.
TARGETS = st.sampled_from([A, A, A, B, ENDED, None])
# Whose token the request carries: the path's machine's (or A's), another's, none, junk.
TOKENS = st.sampled_from(["own", "own", "own", "own", "other", "none", "junk"])


def aim(case: Case[Any], web: Running, target: str | None, token: str, data: st.DataObject
        ) -> None:
    """Point ``case`` at ``target`` (see TARGETS) with the token TOKENS says.  A negative
    case keeps each of its (invalid) path parameters or not, at random: one invalid value
    among real ones gets past the routing to the validation."""
    path = case.path_parameters
    negative = case.meta is not None and case.meta.generation.mode.is_negative
    if target is not None and path is not None:
        real = {"space": SPACE, "name": target,
                "key": data.draw(st.sampled_from(KEYS["jobfeatures" if "/jobfeatures/" in
                                                      case.path else "machinefeatures"]),
                                 label="key"),
                "file": data.draw(st.sampled_from(FILES), label="file"),
                "machinetype": data.draw(st.sampled_from(["belle", "atlas"]), label="type")}
        for name in sorted(path):
            if not negative or data.draw(st.booleans(), label=f"real {name}"):
                path[name] = real[name]
        if "file" in path and data.draw(st.booleans(), label="real body"):
            case.body = data.draw(st.sampled_from(BODIES), label="body")
            case.media_type = case.media_type or "application/octet-stream"
    if token != "none":
        owner = target or A
        tokens = {"own": web.token(owner), "other": web.token(A if owner == B else B),
                  "junk": "v1.bm9uZQ.1.xyz"}
        case.headers = CaseInsensitiveDict(case.headers or {})
        case.headers["Authorization"] = f"Bearer {tokens[token]}"


def fuzz(web: Running, session: requests.Session, operation: APIOperation[Any, Any, Any, Any],
         mode: GenerationMode, answers: Counter[tuple[str, int]]) -> None:
    """EXAMPLES requests of ``mode`` to ``operation``, each checked by CHECKS."""

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                     HealthCheck.data_too_large])
    @given(case=operation.as_strategy(generation_mode=mode), target=TARGETS, token=TOKENS,
           data=st.data())
    def run(case: Case[Any], target: str | None, token: str, data: st.DataObject) -> None:
        aim(case, web, target, token, data)
        response = case.call(base_url=web.url, session=session, timeout=TIMEOUT)
        answers[(operation.label, response.status_code)] += 1
        case.validate_response(response, checks=CHECKS)

    run()


def test_a_schemathesis_run_finds_nothing(web: Running) -> None:
    started = time.monotonic()
    schema = schemathesis.openapi.from_url(f"{web.operator_url}/openapi.json", timeout=TIMEOUT)
    # The Authorization header is aim()'s: none made up (nor dropped, in negative mode) here.
    schema.config.generation.update(with_security_parameters=False)
    operations = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    assert len(operations) == 5  # all of them: none failed to load
    answers: Counter[tuple[str, int]] = Counter()
    with requests.Session() as session:
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz(web, session, operation, mode, answers)
    print(f"{sum(answers.values())} requests in {time.monotonic() - started:.1f} s:",
          dict(sorted(answers.items())))
    for operation in operations:
        ok = sum(n for (label, status), n in answers.items()
                 if label == operation.label and 200 <= status < 300)
        assert ok > 0, f"{operation.label}: no 2xx answer in the run"
    total = sum(answers.values())
    assert sum(n for (_, status), n in answers.items() if 200 <= status < 300) > total / 5


def test_the_schemathesis_cli_finds_nothing(web: Running, tmp_path: Path) -> None:
    """What an operator would run: every phase (coverage: boundary values, missing
    parameters, unsupported methods; fuzzing) and every check, with A's token."""
    command = [sys.executable, "-m", "schemathesis.cli", "--no-color", "run",
               f"{web.operator_url}/openapi.json", "--url", web.url,
               "--header", f"Authorization: Bearer {web.token(A)}", "--checks", "all",
               "--max-examples", "25", "--generation-deterministic",
               "--request-timeout", str(TIMEOUT)]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    summary = re.search(r"(\d+) generated, (\d+) passed\n", done.stdout)
    assert summary is not None and summary[1] == summary[2], done.stdout[-6000:]
