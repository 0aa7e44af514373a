"""How the Store writes and reads in a transaction.

* The two kinds of transaction the Store opens (``Store._on_file`` runs either on the
  SQLite file now at the path): an ORM session for most calls, a Core connection for the
  per-cycle history read, whose ORM begin and commit would cost more than the whole read
  of an unchanged space (``benchmarks/scale.py``).
* The engine's upserts, built once per dialect: building one per call (its ``excluded``
  columns, its cache key) cost a third of a one-machine ``Store.apply``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, case
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from cloudvac.store.tables import ENGINE_COLUMNS, MACHINES, BackoffRow


@contextmanager
def orm_transaction(bind: Engine) -> Iterator[Session]:
    """A session on ``bind`` in a transaction, its connection checked out before the
    caller gets it (so a file found moved is refused before anything is done)."""
    with Session(bind) as session, session.begin():
        session.connection()
        yield session


@contextmanager
def core_transaction(bind: Engine) -> Iterator[Connection]:
    """A connection of ``bind`` in a transaction."""
    with bind.connect() as connection, connection.begin():
        yield connection


def _insert(dialect: str, entity: Any) -> sqlite.Insert | postgresql.Insert:
    return postgresql.insert(entity) if dialect == "postgresql" else sqlite.insert(entity)


def _machine_upsert(dialect: str) -> sqlite.Insert | postgresql.Insert:
    """The engine's write of a machine row (``Store.apply``)."""
    stmt = _insert(dialect, MACHINES)
    new = stmt.excluded
    # SET expressions read the row as it was before the update, so testing
    # shutdown_code in all three keeps code, text and time together.
    unset = MACHINES.c.shutdown_code.is_(None)
    keep_vm_message = {
        col: case((unset, new[col]), else_=MACHINES.c[col])
        for col in ("shutdown_code", "shutdown_text", "shutdown_at")
    }
    return stmt.on_conflict_do_update(
        index_elements=["space", "name"],
        set_={**{col: new[col] for col in ENGINE_COLUMNS}, **keep_vm_message},
    )


def _abort_upsert(dialect: str) -> sqlite.Insert | postgresql.Insert:
    """The latest abort per machinetype: the later of the stored and the new time."""
    stmt = _insert(dialect, BackoffRow)
    new = stmt.excluded.last_abort_at
    return stmt.on_conflict_do_update(
        index_elements=["space", "machinetype"],
        set_={
            "last_abort_at": case(
                (new > BackoffRow.last_abort_at, new), else_=BackoffRow.last_abort_at
            )
        },
    )


_DIALECTS = ("sqlite", "postgresql")
MACHINE_UPSERT = {dialect: _machine_upsert(dialect) for dialect in _DIALECTS}
ABORT_UPSERT = {dialect: _abort_upsert(dialect) for dialect in _DIALECTS}
