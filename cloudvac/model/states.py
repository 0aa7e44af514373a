"""Machine states and HSF-TN-2016-04 shutdown codes.

A machine's state is what the cloud says (``starting``, ``running``, ``stopped``,
``failed``, ``deleting``, ``unknown``) plus what only cloudvac knows (``intent``: a
create was decided and recorded but the cloud has not listed it yet; ``gone``: it
is no longer listed).  Adapters map their cloud's vocabulary onto these values;
nothing downstream ever sees a cloud-specific status string.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class MachineState(enum.StrEnum):
    INTENT = "intent"
    STARTING = "starting"
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"
    DELETING = "deleting"
    UNKNOWN = "unknown"
    GONE = "gone"

    @property
    def finished(self) -> bool:
        """True once the machine's payload can no longer run (stopped, failed, deleting, gone)."""
        return self in FINISHED

    @property
    def starting(self) -> bool:
        """True while the machine has not started its payload yet (intent, starting)."""
        return self in STARTING


#: The states in which a machine's payload can no longer run: the one definition.
FINISHED = frozenset(
    {MachineState.STOPPED, MachineState.FAILED, MachineState.DELETING, MachineState.GONE}
)
#: The states of a machine that holds capacity but has not booted yet.
STARTING = frozenset({MachineState.INTENT, MachineState.STARTING})


class ShutdownClass(enum.IntEnum):
    """The hundreds of HSF-TN-2016-04 shutdown codes."""

    REQUESTED = 100  # shutdown as requested by the host/hypervisor
    SUCCESS = 200  # intended work completed ok
    NO_WORK = 300  # no more work available from the task queue
    BANNED = 400  # site/host/VM banned or disabled from receiving work
    ENVIRONMENT = 500  # problem with the environment/VM/contextualization
    GRID = 600  # grid-wide problem with job agent or application
    AGENT = 700  # error related to job agent or application within VM


#: Codes whose arrival means "the VO cannot use this capacity now": back off.
ABORT_CLASSES = frozenset(
    {ShutdownClass.NO_WORK, ShutdownClass.BANNED, ShutdownClass.ENVIRONMENT, ShutdownClass.GRID}
)

# ASCII digits and blanks (``\d`` and ``\s`` would take any script's digits and spaces);
# the text is any printable characters.
_MESSAGE = re.compile(r"[ \t]*([1-7][0-9][0-9])(?:[ \t]+([^\x00-\x1f\x7f]*))?[ \t]*",
                      re.ASCII)
MAX_MESSAGE_TEXT = 200


class ShutdownMessageError(ValueError):
    """A ``shutdown_message`` that does not follow ``NNN text``."""


@dataclass(frozen=True, slots=True)
class ShutdownMessage:
    """One parsed ``shutdown_message``: a 3-digit code (100-799) and free text."""

    code: int
    text: str

    @property
    def klass(self) -> ShutdownClass:
        return ShutdownClass(self.code // 100 * 100)

    @property
    def is_abort(self) -> bool:
        """Codes 300-699 set the machinetype's backoff."""
        return self.klass in ABORT_CLASSES

    @property
    def is_success(self) -> bool:
        """Codes 100-299: the VM ended as intended, so the fizzle rule does not apply."""
        return self.klass in (ShutdownClass.REQUESTED, ShutdownClass.SUCCESS)

    def __str__(self) -> str:
        return f"{self.code} {self.text}".rstrip()

    @classmethod
    def parse(cls, raw: str | bytes) -> ShutdownMessage:
        """Parse the first line of an uploaded ``shutdown_message``.

        Raises ShutdownMessageError for anything that is not three ASCII digits 100-799
        optionally followed by printable text, or that holds a NUL anywhere (no store keeps
        it as text); the text is truncated to MAX_MESSAGE_TEXT characters.
        """
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ShutdownMessageError("shutdown_message is not UTF-8 text") from exc
        if "\x00" in raw:
            raise ShutdownMessageError("shutdown_message holds a NUL character")
        first = raw.split("\n", 1)[0].removesuffix("\r") if raw.strip() else ""
        match = _MESSAGE.fullmatch(first)
        if match is None:
            raise ShutdownMessageError(
                f"expected 'NNN text' with a code 100-799, got {first[:40]!r}"
            )
        return cls(int(match.group(1)), (match.group(2) or "").strip()[:MAX_MESSAGE_TEXT])


# Messages cloudvac itself records when it ends a machine (VCycle's 700 family).
FAILED_TO_START = ShutdownMessage(700, "Failed to start")
EXCEEDED_WALLCLOCK = ShutdownMessage(700, "Exceeded max_wallclock_seconds")
HEARTBEAT_LOST = ShutdownMessage(700, "Heartbeat file not updated")
DRAINED = ShutdownMessage(100, "Drained by operator")
UNEXPECTED_STATE = ShutdownMessage(700, "Unexpected cloud state")
