"""Logging set-up: one line per event under the ``cloudvac.*`` tree, with secrets redacted.

Secrets are never passed to loggers on purpose; the redaction filter is a second line of
defence for third-party libraries that might log request bodies or headers.
"""

from __future__ import annotations

import logging
import re

_PATTERNS = (
    re.compile(r"(?i)(password|secret|token|authorization|x-auth-token|x-subject-token)"
               r"(['\"]?\s*[:=]\s*['\"]?)([^\s'\",}]+)"),
    re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),  # JWT
)


def redact(text: str) -> str:
    text = _PATTERNS[0].sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    return _PATTERNS[1].sub("***JWT***", text)


class RedactingFilter(logging.Filter):
    """Rewrites a record's final message with secrets masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
