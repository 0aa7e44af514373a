"""Credential expiry: recorded for ``cloudvac status``, and warned about ahead of time when
an operator must renew the credential (a Check-in refresh token), never for tokens the
adapter renews itself."""

from __future__ import annotations

import asyncio

from cloudvac.config.models import Space
from cloudvac.model.cloud import Cloud, CredentialSource
from cloudvac.model.records import Event
from cloudvac.store import Store

WARN_AHEAD_SECONDS = 14 * 86400.0
WARN_EVERY_SECONDS = 6 * 3600.0


class CredentialWatch:
    """One space's credentials, checked after each cycle."""

    def __init__(self, cloud: Cloud, store: Store) -> None:
        self.source = cloud if isinstance(cloud, CredentialSource) else None
        self.store = store
        self._warned_at = -WARN_EVERY_SECONDS

    async def check(self, space: Space, now: float) -> tuple[Event, ...]:
        """Record when the space's credentials expire; warning events (kind ``error``) at
        most every WARN_EVERY_SECONDS while one to be renewed by hand expires within
        WARN_AHEAD_SECONDS."""
        if self.source is None:
            return ()
        found = self.source.credentials()
        await asyncio.to_thread(self.store.set_credentials, space.name,
                                {c.kind: c.expires_at for c in found}, now)
        if now - self._warned_at < WARN_EVERY_SECONDS:
            return ()
        for credential in found:
            left = credential.expires_at - now
            if credential.renewed_by_operator and left < WARN_AHEAD_SECONDS:
                self._warned_at = now
                return (Event(now, space.name, "", "", "error",
                              f"{credential.renewed_by_operator} expires in "
                              f"{left / 86400:.1f} days: renew it before then"),)
        return ()
