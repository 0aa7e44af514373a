"""The wake board: a VM's shutdown message that reaches a process not running its space's
cycles (``cloudvac web`` on its own, or an instance that does not hold the space's lease)
still brings that space's next cycle forward, in the instance that does.

One row per space in ``store_facts`` (the table every instance shares; no migration):
key ``wake:`` and a digest of the space name (keys are at most 64 characters), value
``"<time> <space>"``, the time (the database's clock) of the last shutdown message the
space received there.  A sender upserts it, one small write per VM life
(``post_wake``); each ``cloudvac run`` reads the whole board, at most one short row per
space, once a second (``wakes``; ``engine/wakes.py``) and wakes its spaces whose row
changed.

``WakeStore`` is a base of ``Store``: its methods use the Store's sessions.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from cloudvac.store.hatables import StoreFactRow

WAKE_PREFIX = "wake:"


def wake_key(space: str) -> str:
    """The board's key of ``space`` (a digest: space names may be 255 characters long)."""
    return WAKE_PREFIX + hashlib.sha256(space.encode()).hexdigest()[:40]


class WakeStore(ABC):
    """The Store's methods for the wake board (``Store`` supplies the sessions)."""

    @abstractmethod
    def _write(self) -> AbstractContextManager[Session]:
        """A session that commits on success (``Store._write``)."""

    @abstractmethod
    def _read(self) -> AbstractContextManager[Session]:
        """A read-only session (``Store._read``)."""

    def post_wake(self, space: str, at: float) -> None:
        """Tell the instance running ``space`` that a VM of it ended at ``at``."""
        with self._write() as session:
            connection = session.connection()
            insert = (postgresql.insert if connection.dialect.name == "postgresql"
                      else sqlite.insert)(StoreFactRow)
            row = {"key": wake_key(space), "value": f"{at:.6f} {space}"}
            connection.execute(insert.values(**row).on_conflict_do_update(
                index_elements=["key"], set_={"value": insert.excluded.value}))

    def wakes(self) -> dict[str, float]:
        """The board: space -> time of its last posted shutdown message."""
        query = select(StoreFactRow.value).where(StoreFactRow.key.startswith(WAKE_PREFIX))
        board: dict[str, float] = {}
        with self._read() as session:
            for value in session.scalars(query):
                at, _, space = value.partition(" ")
                try:
                    board[space] = float(at)
                except ValueError:
                    continue  # not ours: skipped
        return board
