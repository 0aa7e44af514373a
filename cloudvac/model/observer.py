"""What adapters report for metrics, without knowing about Prometheus.

Adapters (clouds, Check-in) call an ``Observer``; the engine's metrics implement it.
Every method returns at once and never raises.
"""

from __future__ import annotations

from typing import Protocol


class Observer(Protocol):
    def cloud_request(self, space: str, kind: str, outcome: str,
                      seconds: float | None = None) -> None:
        """One request to a cloud API (``kind``: list, limits, create...), how it ended
        (``ok`` or an error class name) and how long it took (None: not measured)."""

    def keystone_auth(self, space: str) -> None:
        """A token was fetched from Keystone."""

    def checkin_call(self, space: str, outcome: str) -> None:
        """A request to the Check-in token endpoint and how it ended."""

    def token_expiry(self, space: str, kind: str, seconds_left: float) -> None:
        """The space's ``kind`` token now expires in ``seconds_left``."""


class NullObserver:
    """Observes nothing (tests, tools)."""

    def cloud_request(self, space: str, kind: str, outcome: str,
                      seconds: float | None = None) -> None:
        return None

    def keystone_auth(self, space: str) -> None:
        return None

    def checkin_call(self, space: str, outcome: str) -> None:
        return None

    def token_expiry(self, space: str, kind: str, seconds_left: float) -> None:
        return None
