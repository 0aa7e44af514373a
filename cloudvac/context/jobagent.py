"""Derive the HSF-TN-2016-04 ``shutdown_message`` (``NNN text``) from a DIRAC pilot log.

Shipped into the VM next to ``agent.py`` and run after the pilot ends::

    python3 jobagent.py --log PILOT_LOG --out SHUTDOWN_MESSAGE_FILE [--exit-code N]

It must stay ONE file, Python 3.6+ and standard library only (the image's python3).

The method is DIRAC's own (read, not copied): DIRAC rel-v8r0
``src/DIRAC/WorkloadManagementSystem/Utilities/CloudBootstrap/parse-jobagent-log`` and
DIRACGrid/Pilot ``Pilot/pilotCommands.py`` ``MultiLaunchAgent.__parseJobAgentLog`` (removed in
Pilot commit 760d5c7, 2023-10): each log line is compared with an ordered table of
substrings, the first entry found in the line gives that line's message, and the LAST line
that gives a message wins; nothing found gives ``700 Failed, probably JobAgent or Application
problem``.  The JobAgent announces why it stops with ``JobAgent will stop with message
"<reason>", execution complete.`` (``JobAgent._finish`` in DIRAC v8 and v9); the reasons are
the ``_finish(...)`` arguments of ``JobAgent.execute``, ``_checkCPUWorkLeft``,
``_checkMatchingIssues``, ``_checkMatcherInfo`` and ``_rescheduleFailedJob``.

Codes: 100 shutdown requested / no time left, 200 work done, 300 no work, 400 banned (the
JobAgent cannot tell: a banned site just matches nothing, so it shows as 300), 500 problem
with the VM/site environment, 600 grid-wide problem with the job agent or application,
700 other error.  Codes 300-699 make the manager back off.

Refinements of DIRAC's table, each marked "cloudvac" below:

* the v8/v9 wordings next to the old ones ("No more time left", "Job request OK, but no match
  found", "Error during a payload execution", "Pilot version mismatch ...");
* "Node is being drained by an operator" (``/var/lib/dirac_drain``) is 100;
* any other stop reason gives ``700 JobAgent stopped: <reason>`` instead of the bare default;
* "Unauthorized query" (the DIRAC server refused our credential) is 500, and stays the
  answer when the JobAgent afterwards stops with "Nothing to do" (its failed matches were
  refusals, not an empty task queue) unless a real no-match reply came in between;
* progress markers ("Cycle was successful", "no match found") are not stop reasons: if one
  is the last match but the pilot exited non-zero, the answer is 700 with the exit status;
* no match at all and a non-zero exit before the pilot logged "Starting JobAgent" is 500
  (the pilot died installing/configuring DIRAC: CVMFS, CS, credentials, missing CS queue).
"""

# ruff: noqa: UP006, UP035, UP045
# (typing.List/Optional/Tuple instead of list[...] and X | None: those fail at runtime on
# Python 3.6, which this file must run on.)

import argparse
import contextlib
import os
import re
import sys
import tempfile
from typing import Iterable, List, Optional, Tuple

DEFAULT_TEXT = "Failed, probably JobAgent or Application problem"
LOGGING_FAILED = "700 Internal VM logging failed"  # DIRAC's text when the log is unreadable
MAX_LINE = 4 + 200  # "NNN " and the 200 characters of text the cloudvac server keeps
STOP = 'JobAgent will stop with message "'
CERT_TEXT = "500 Certificate/proxy not acceptable"
VERSION_TEXT = "600 Cannot match jobs with this pilot version"

# (substring, message, is_marker).  Order matters: the first entry found in a line decides
# that line, so specific entries precede the generic stop entry handled in _line_message.
# A marker reports progress, not why the JobAgent stopped.
RULES = (
    # 100: parse-jobagent-log; v8/v9 JobAgent._checkCPUWorkLeft says "No more time left"
    (STOP + "No time left for slot", "100 No time left for slot", False),
    (STOP + "No more time left", "100 No more time left", False),  # cloudvac (v8/v9 text)
    # cloudvac: JobAgent.execute stops when /var/lib/dirac_drain exists (operator drain)
    (STOP + "Node is being drained", "100 Node is being drained by an operator", False),
    # 200: parse-jobagent-log (its "Fillling" typo fixed, as the Pilot's copy did)
    (STOP + "Filling Mode is Disabled", "200 Filling Mode is Disabled", False),
    ("NOTICE:  Cycle was successful", "200 Success", True),  # AgentModule, after each cycle
    # 300: parse-jobagent-log; JobAgent._checkMatchingIssues
    (STOP + "Nothing to do for more than", "300 Nothing to do", False),
    ("Job request OK: No match found", "300 Nothing to do", True),  # Pilot __parseJobAgentLog
    ("Job request OK, but no match found", "300 Nothing to do", True),  # cloudvac (v8/v9 text)
    # 500: parse-jobagent-log (legacy GSI handshake refusing an RFC proxy)
    ('Error while handshaking [("Remote certificate hasn', CERT_TEXT, False),
    ("Unauthorized query", CERT_TEXT, False),  # cloudvac: DISET ENOAUTH (Service.py)
    # 600: parse-jobagent-log "ERROR: Pilot version does not match the production version";
    # v8/v9 Matcher PilotVersionError texts, logged as "Pilot version mismatch ..."
    ("Pilot version does not match", VERSION_TEXT, False),
    ("Version check requested", VERSION_TEXT, False),  # cloudvac: Matcher project check
    (STOP + "Job Rescheduled", "600 Problem so job rescheduled", False),
    (STOP + "Matcher Failed", "600 Matcher Failed", False),
    (STOP + "JDL Problem", "600 JDL Problem", False),
    (STOP + "Payload Proxy Not Found", "600 Payload Proxy Not Found", False),
    (STOP + "Problem Rescheduling Job", "600 Problem Rescheduling Job", False),
    (STOP + "Payload execution failed with error code", "600 Payload execution failed with error",
     False),
    # cloudvac: v8/v9 JobAgent.execute wording of the payload failure stop
    (STOP + "Error during a payload execution", "600 Payload execution failed with error",
     False),
)
NO_MATCH_TEXT = "300 Nothing to do"
AGENT_STARTED = "Starting JobAgent"  # Pilot pilotCommands.py LaunchAgent.__startJobAgent
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]+")


def _clean(message: str) -> str:
    message = _UNPRINTABLE.sub(" ", message).strip()
    return message[:MAX_LINE].rstrip()


def _how(exit_code: int) -> str:
    return f"killed by signal {-exit_code}" if exit_code < 0 else \
        f"exit {exit_code}"


def _line_message(line: str) -> Optional[Tuple[str, bool]]:
    """The (message, is_marker) one log line gives, or None."""
    for needle, message, marker in RULES:
        if needle in line:
            return message, marker
    start = line.find(STOP)
    if start >= 0:  # cloudvac: a stop reason the table does not know
        reason = line[start + len(STOP):]
        end = reason.rfind('"')
        reason = reason[:end] if end > 0 else reason
        return _clean("700 JobAgent stopped: " + (reason.strip() or "no reason given")), False
    return None


def shutdown_message(log_lines: Iterable[str], exit_code: Optional[int]) -> str:
    """The ``NNN text`` line (at most 204 characters, no control characters) for a pilot
    whose combined pilot/JobAgent output is ``log_lines`` and whose exit status was
    ``exit_code`` (negative: killed by that signal; None: unknown).  See the module
    docstring for the rules."""
    result = None  # type: Optional[Tuple[str, bool]]
    refused = None  # type: Optional[str]
    started = False
    for raw in log_lines:
        line = _ANSI.sub("", raw)
        if AGENT_STARTED in line:
            started = True
        found = _line_message(line)
        if found is None:
            continue
        started = True
        result = found
        if found[0] == CERT_TEXT:
            refused = found[0]
        elif found[0] == NO_MATCH_TEXT and found[1]:
            refused = None  # the Matcher answered: credentials work
    failed = exit_code is not None and exit_code != 0
    if result is None:
        if failed and not started:
            return _clean(f"500 Pilot failed before starting the JobAgent ({_how(exit_code or 0)})")
        suffix = f" ({_how(exit_code or 0)})" if failed else ""
        return _clean("700 " + DEFAULT_TEXT + suffix)
    message, marker = result
    if message == NO_MATCH_TEXT and refused is not None:
        return refused
    if marker and failed:
        return _clean(f"700 {DEFAULT_TEXT} ({_how(exit_code or 0)})")
    return _clean(message)


def write_atomically(path: str, text: str) -> None:
    """Write ``text`` (UTF-8, no trailing newline) to ``path`` via a temporary file in the
    same directory and a rename, so a reader never sees a partial line."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, tmp = tempfile.mkstemp(prefix=".shutdown_message.", dir=directory)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(text.encode("utf-8"))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def main(argv: Optional[List[str]] = None) -> int:
    """CLI: 0 when the message was written, 1 if it could not be written, 2 for bad
    arguments.  An unreadable log gives DIRAC's ``700 Internal VM logging failed``."""
    parser = argparse.ArgumentParser(prog="jobagent.py",
                                     description="DIRAC pilot log -> shutdown_message")
    parser.add_argument("--log", required=True, help="pilot output (stdout+stderr) file")
    parser.add_argument("--out", required=True, help="shutdown_message file to write")
    parser.add_argument("--exit-code", type=int, default=None, help="the pilot's exit status")
    options = parser.parse_args(argv)
    try:
        with open(options.log, encoding="utf-8", errors="replace") as log:
            message = shutdown_message(log, options.exit_code)
    except OSError as exc:
        sys.stderr.write(f"jobagent.py: cannot read {options.log}: {exc}\n")
        message = LOGGING_FAILED
    try:
        write_atomically(options.out, message)
    except OSError as exc:
        sys.stderr.write(f"jobagent.py: cannot write {options.out}: {exc}\n")
        return 1
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
