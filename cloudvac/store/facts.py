"""Small facts about the store itself, in ``store_facts`` (migration 0009).

The first instance to record a fact sets it; later ones read it back (``claim_fact``), so
every instance sharing the store agrees on it.  The server secret's fingerprint lives here
(``auth/vmtokens.py``): never a secret itself.

``FactStore`` is a base of ``Store``: its methods use the Store's sessions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from cloudvac.store.hatables import StoreFactRow


class FactStore(ABC):
    """The Store's methods for store facts (``Store`` supplies the sessions)."""

    @abstractmethod
    def _write(self) -> AbstractContextManager[Session]:
        """A session that commits on success (``Store._write``)."""

    @abstractmethod
    def _read(self) -> AbstractContextManager[Session]:
        """A read-only session (``Store._read``)."""

    def fact(self, key: str) -> str | None:
        """The fact recorded under ``key``, or None."""
        with self._read() as session:
            return session.scalar(select(StoreFactRow.value).where(StoreFactRow.key == key))

    def claim_fact(self, key: str, value: str) -> str:
        """Record ``value`` under ``key`` unless a value is there already; the value the
        store holds afterwards (ours, or the one recorded first)."""
        with self._write() as session:
            connection = session.connection()
            insert = postgresql.insert if connection.dialect.name == "postgresql" \
                else sqlite.insert
            connection.execute(insert(StoreFactRow).values(key=key, value=value)
                               .on_conflict_do_nothing(index_elements=["key"]))
            held = session.scalar(select(StoreFactRow.value).where(StoreFactRow.key == key))
            return value if held is None else held
