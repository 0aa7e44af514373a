"""shutdown_message derivation from DIRAC pilot/JobAgent logs (cloudvac/context/jobagent.py).

The log lines are shaped like real output: the pilot's own logger writes
``<ISO time>Z <LEVEL> [<Command>] <text>`` (Pilot/pilotTools.py Logger), the JobAgent writes
``<time> UTC WorkloadManagement/JobAgent <LEVEL>: <text>`` (DIRAC BaseFormatter) and stops with
``JobAgent will stop with message "<reason>", execution complete.`` (JobAgent._finish); the
reasons are those of DIRAC's JobAgent (v8/v9) and of the v8 parse-jobagent-log table.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloudvac.context import jobagent
from cloudvac.context.agent import MAX_SHUTDOWN_LINE, SHUTDOWN_RE

SOURCE = Path(jobagent.__file__)
DEFAULT = "700 Failed, probably JobAgent or Application problem"


def pilot(command: str, text: str, level: str = "INFO") -> str:
    return f"2026-06-15T12:00:00.123456Z {level} [{command}] {text}\n"


def agent(level: str, text: str) -> str:
    return f"2026-06-15 12:00:01 UTC WorkloadManagement/JobAgent {level}: {text}\n"


def stop(reason: str) -> list[str]:
    return [agent("INFO", f'JobAgent will stop with message "{reason}", execution complete.'),
            agent("WARN", f" Cycle had an error: {reason}")]


PRELUDE = [
    pilot("Pilot", "Executing commands: ['CheckWorkerNode', 'InstallDIRAC', 'LaunchAgent']"),
    pilot("InstallDIRAC", "Sourcing /cvmfs/dirac.egi.eu/dirac/v9.0.1/Linux-x86_64/diracosrc"),
    pilot("LaunchAgent", "Starting JobAgent"),
    agent("NOTICE", "-" * 40),
    agent("NOTICE", "Starting cycle for module WorkloadManagement/JobAgent"),
]
SUCCESS = agent("NOTICE", " Cycle was successful")
NO_MATCH = agent("NOTICE", "Job request OK, but no match found No match found ( 1510 : no "
                 "job matched)")
JOB = [agent("INFO", "Received JobID=1234, JobType=User, Owner=alice, JobGroup=g"),
       agent("INFO", "Job being submitted (DIRAC JobID: 1234; Task ID: 0)"), SUCCESS]
UNAUTHORIZED = agent("NOTICE", "Failed to get jobs Unauthorized query ( 1111 : Unauthorized "
                     "query)")
VERSION = ("Pilot version does not match ( 1511 : Pilot version does not match the production "
           "version: v8.0.1 not in ( v9.0.1 ))")


def log(*parts: str | list[str]) -> list[str]:
    """The lines of ``parts`` (single lines or lists of lines) in order."""
    return [line for part in parts for line in ([part] if isinstance(part, str) else part)]


NOTHING = stop("Nothing to do for more than 10 cycles")

# One row per code class (and per DIRAC stop reason): (id, log lines, exit code, expected).
CASES = [
    ("100 no more time left (v8/v9)", log(PRELUDE, JOB, stop("No more time left")), 0,
     "100 No more time left"),
    ("100 no time left for slot (legacy)", log(
        PRELUDE, JOB, "2019-01-01 00:00:00 UTC WorkloadManagement/JobAgent  INFO: JobAgent will "
        'stop with message "No time left for slot", execution complete.\n'), 0,
     "100 No time left for slot"),
    ("100 operator drain", log(PRELUDE, JOB, stop("Node is being drained by an operator")), 0,
     "100 Node is being drained by an operator"),
    ("200 filling mode disabled", log(PRELUDE, JOB, stop("Filling Mode is Disabled")), 0,
     "200 Filling Mode is Disabled"),
    ("200 max cycles reached", log(PRELUDE, JOB, JOB), 0, "200 Success"),
    ("300 nothing to do", log(PRELUDE, [NO_MATCH, SUCCESS] * 3, NOTHING), 0,
     "300 Nothing to do"),
    ("300 work then nothing to do", log(PRELUDE, JOB, [NO_MATCH, SUCCESS] * 2, NOTHING), 0,
     "300 Nothing to do"),
    ("300 legacy no match", log(PRELUDE, agent("INFO", "Job request OK: No match found")),
     None, "300 Nothing to do"),
    ("500 credential refused, masked as nothing to do",
     log(PRELUDE, [UNAUTHORIZED, SUCCESS] * 3, NOTHING), 0,
     "500 Certificate/proxy not acceptable"),
    ("500 legacy handshake", log(PRELUDE, agent(
        "ERROR", 'Error while handshaking [("Remote certificate hasn\'t been signed")]')), 1,
     "500 Certificate/proxy not acceptable"),
    ("500 pilot died before the JobAgent", log(
        pilot("Pilot", "Executing commands: ['CheckWorkerNode', 'CheckCECapabilities']"),
        pilot("CheckCECapabilities", "Could not get resource parameters [ERROR 1]", "ERROR")),
     1, "500 Pilot failed before starting the JobAgent (exit 1)"),
    ("600 pilot version", log(PRELUDE, agent("ERROR", "Pilot version mismatch " + VERSION),
                              stop(VERSION)), 0,
     "600 Cannot match jobs with this pilot version"),
    ("600 legacy pilot version", log(PRELUDE, agent(
        "ERROR", "Pilot version does not match the production version v7r0 not in (v8r0)")),
     0, "600 Cannot match jobs with this pilot version"),
    ("600 project check", log(PRELUDE, agent(
        "ERROR", "Pilot version mismatch Version check requested but expected project Belle "
        "!= received LHCb")), 0, "600 Cannot match jobs with this pilot version"),
    ("600 job rescheduled", log(
        PRELUDE, agent("WARN", "Failure ==> rescheduling (during Failed to setup proxy: no)"),
        stop("Job Rescheduled")), 0, "600 Problem so job rescheduled"),
    ("600 matcher failed", log(PRELUDE, stop("Matcher Failed")), 0, "600 Matcher Failed"),
    ("600 JDL problem", log(PRELUDE, stop("JDL Problem")), 0, "600 JDL Problem"),
    ("600 payload proxy", log(PRELUDE, stop("Payload Proxy Not Found")), 0,
     "600 Payload Proxy Not Found"),
    ("600 rescheduling failed", log(PRELUDE, stop("Problem Rescheduling Job")), 0,
     "600 Problem Rescheduling Job"),
    ("600 payload failed (legacy)",
     log(PRELUDE, stop("Payload execution failed with error code 2")), 0,
     "600 Payload execution failed with error"),
    ("600 payload failed (v8/v9)", log(PRELUDE, JOB, stop("Error during a payload execution")),
     0, "600 Payload execution failed with error"),
    ("700 other stop reason", log(PRELUDE, stop("CE Not Available")), 0,
     "700 JobAgent stopped: CE Not Available"),
    ("700 nothing recognisable", log(PRELUDE, agent("INFO", "Requirements: {}")), None,
     DEFAULT),
    ("700 nothing recognisable, exit 3", PRELUDE, 3, DEFAULT + " (exit 3)"),
    ("700 empty log, exit 0", [], 0, DEFAULT),
    ("700 crash after a successful cycle", log(PRELUDE, JOB), -9,
     DEFAULT + " (killed by signal 9)"),
]


@pytest.mark.parametrize(("lines", "exit_code", "expected"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_shutdown_message(lines: list[str], exit_code: int | None, expected: str) -> None:
    message = jobagent.shutdown_message(iter(lines), exit_code)
    assert message == expected
    assert SHUTDOWN_RE.fullmatch(message)  # what the in-VM agent accepts and uploads


def test_every_code_class_is_covered() -> None:
    assert {case[3][0] for case in CASES} == {"1", "2", "3", "5", "6", "7"}  # 400: see module


def test_last_matching_line_wins() -> None:
    """DIRAC's rule: a later recognised line replaces an earlier one."""
    lines = log(PRELUDE, stop("Job Rescheduled"), NO_MATCH, SUCCESS, NOTHING)
    assert jobagent.shutdown_message(lines, 0) == "300 Nothing to do"
    lines = log(PRELUDE, NO_MATCH, SUCCESS, stop("Matcher Failed"))
    assert jobagent.shutdown_message(lines, 0) == "600 Matcher Failed"


def test_real_no_match_clears_a_credential_refusal() -> None:
    lines = log(PRELUDE, UNAUTHORIZED, SUCCESS, NO_MATCH, SUCCESS, NOTHING)
    assert jobagent.shutdown_message(lines, 0) == "300 Nothing to do"


def test_stop_reason_wins_over_exit_status() -> None:
    lines = log(PRELUDE, stop("No more time left"))
    assert jobagent.shutdown_message(lines, 1) == "100 No more time left"


def test_colour_codes_and_awkward_reasons() -> None:
    coloured = ["\x1b[32m" + line.rstrip("\n") + "\x1b[0m\n"
                for line in log(PRELUDE, stop("Filling Mode is Disabled"))]
    assert jobagent.shutdown_message(coloured, 0) == "200 Filling Mode is Disabled"
    long_reason = "Error during the submission process " + "x\ty" * 300
    message = jobagent.shutdown_message(log(PRELUDE, stop(long_reason)), 0)
    assert message.startswith("700 JobAgent stopped: Error during the submission process x y")
    assert len(message) <= MAX_SHUTDOWN_LINE
    assert SHUTDOWN_RE.fullmatch(message)


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_cli_writes_the_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log_file = tmp_path / "pilot.log"
    log_file.write_text("".join(log(PRELUDE, NO_MATCH, SUCCESS, NOTHING)))
    out = tmp_path / "out" / "shutdown_message"
    out.parent.mkdir()
    assert jobagent.main(["--log", str(log_file), "--out", str(out), "--exit-code", "0"]) == 0
    assert out.read_bytes() == b"300 Nothing to do"  # one line, no trailing newline
    assert _files(out.parent) == ["shutdown_message"]  # the temporary file was renamed
    assert oct(out.stat().st_mode & 0o777) == oct(0o644)
    assert capsys.readouterr().out == "300 Nothing to do\n"
    # an existing file is replaced
    log_file.write_text("".join(log(PRELUDE, stop("No more time left"))))
    assert jobagent.main(["--log", str(log_file), "--out", str(out)]) == 0
    assert out.read_text() == "100 No more time left"


def test_cli_unreadable_log_and_unwritable_out(tmp_path: Path) -> None:
    out = tmp_path / "shutdown_message"
    assert jobagent.main(["--log", str(tmp_path / "missing.log"), "--out", str(out)]) == 0
    assert out.read_text() == "700 Internal VM logging failed"
    log_file = tmp_path / "pilot.log"
    log_file.write_text("")
    assert jobagent.main(["--log", str(log_file), "--out", str(tmp_path / "no" / "m")]) == 1
    assert _files(tmp_path) == ["pilot.log", "shutdown_message"]


def test_cli_as_a_script(tmp_path: Path) -> None:
    log_file = tmp_path / "pilot.log"
    log_file.write_bytes(b"".join(line.encode() for line in PRELUDE) + b"\xff\xfe broken bytes\n")
    out = tmp_path / "shutdown_message"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-I", str(SOURCE), "--log", str(log_file),
                           "--out", str(out), "--exit-code", "-15"],
                          capture_output=True, text=True, env=env, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert out.read_text() == DEFAULT + " (killed by signal 15)"
    bad = subprocess.run([sys.executable, "-I", str(SOURCE), "--log", str(log_file)],
                         capture_output=True, text=True, env=env, timeout=30, check=False)
    assert bad.returncode == 2 and "--out" in bad.stderr


def test_source_is_python36_stdlib_only() -> None:
    source = SOURCE.read_text()
    tree = ast.parse(source, feature_version=(3, 6))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module
            assert node.module != "__future__"  # "annotations" needs 3.7
            imported.add(node.module.split(".")[0])
    assert imported
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)
