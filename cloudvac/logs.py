"""Logging set-up: one line per event under the ``cloudvac.*`` tree, with secrets redacted
and every line bounded.

Secrets are never passed to loggers on purpose; the redaction filter is a second line of
defence for remote text quoted in cloudvac's own messages and for third-party libraries
that log requests and answers (keystoneauth logs Nova's request and response bodies at
DEBUG: a create's user_data, an error body quoting it).  The shapes it removes are those
of ``model.redact`` (the one implementation).  Every handler ``setup_logging`` installs
carries the filter; ``redacting`` equips any other handler the same way.

Bounds: a message (arguments included) is one line of at most ``MESSAGE_BYTES``, so with
the time, level and logger name a record's line stays within ``LINE_BYTES`` (4 KB); a
traceback or stack keeps its lines, each within ``LINE_BYTES``.  What is cut ends in
``model.redact.CUT``.

Where: standard error by default (under systemd, the journal); ``setup_logging(file=...)``
(``cloudvac run --log-file``) writes to a file instead, through a ``WatchedFileHandler``:
when the file is renamed or removed (logrotate's default ``create`` mode) the next record
reopens the path, so rotation needs no signal and no ``copytruncate`` (which loses the lines
written between the copy and the truncation).
"""

from __future__ import annotations

import logging
from logging.handlers import WatchedFileHandler
from pathlib import Path

from cloudvac.model.redact import CUT, redact

LINE_BYTES = 4096
"""No line a handler writes is longer than this (UTF-8 bytes)."""
PREFIX_BYTES = 160
"""Room kept for what the formatter puts before the message (time, level, logger name)."""
MESSAGE_BYTES = LINE_BYTES - PREFIX_BYTES
TRACEBACK_CHARS = 65_536
"""A traceback is redacted whole (its last lines matter most); its lines are bounded."""
FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def _fit(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes, ending in ``CUT`` if cut."""
    data = text.encode(errors="replace")
    if len(data) <= max_bytes:
        return text
    room = max_bytes - len(CUT.encode())
    return data[:room].decode(errors="ignore") + CUT


def _lines(text: str, max_bytes: int) -> str:
    return "\n".join(_fit(line, max_bytes) for line in text.split("\n"))


#: Control characters (tab aside) are written escaped, so that a message is one line: text
#: quoted from a remote answer cannot start a line that looks like another record, nor
#: send terminal escapes.
_ESCAPES = str.maketrans({**{code: f"\\x{code:02x}" for code in (*range(32), 127)},
                          9: "\t", 10: "\\n", 13: "\\r"})


def clean_message(text: str) -> str:
    """A log message as it may be written: redacted, on one line (control characters
    escaped) and at most ``MESSAGE_BYTES`` long."""
    return _fit(redact(text, limit=MESSAGE_BYTES).translate(_ESCAPES), MESSAGE_BYTES)


class RedactingFilter(logging.Filter):
    """Rewrites a record's final message (arguments included), its traceback and stack
    with secrets masked and lengths bounded.  The record is changed in place, so every
    handler after this one sees the clean text; it never refuses a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not raise out of a logging call
            message = f"{record.msg!s} [arguments not formatted: {record.args!r}]"
        cleaned = clean_message(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = _lines(redact(record.exc_text, TRACEBACK_CHARS), LINE_BYTES)
        if record.stack_info:
            record.stack_info = _lines(redact(record.stack_info, TRACEBACK_CHARS), LINE_BYTES)
        return True


def redacting(handler: logging.Handler) -> logging.Handler:
    """``handler`` with cloudvac's line format and the redaction filter."""
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RedactingFilter())
    return handler


class LogFileError(RuntimeError):
    """The log file cannot be opened; the message names it and the system's reason."""


def setup_logging(level: str = "INFO", file: Path | None = None) -> None:
    """Every record of the process to standard error, or to ``file`` (appended; reopened
    after a rotation).  Raises LogFileError when ``file`` cannot be opened."""
    handler: logging.Handler
    if file is None:
        handler = logging.StreamHandler()
    else:
        try:
            handler = WatchedFileHandler(file, encoding="utf-8")
        except OSError as exc:
            raise LogFileError(f"log file {file}: {exc.strerror or exc}") from None
    root = logging.getLogger()
    root.handlers[:] = [redacting(handler)]
    root.setLevel(level.upper())
