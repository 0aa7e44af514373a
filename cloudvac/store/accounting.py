"""Accounting records in the store: one row per finished machine, written exactly once.

The ``accounting`` table (migration 0008) holds ``model.accounting.AccountingRecord``s.  The
engine writes a machine's record once it is gone (``engine/accounting.py``); the insert
does nothing when the row exists, so a retry after a restart never duplicates or changes
it.  ``unaccounted`` finds the gone machines that ran and have no record yet (a manager
killed between marking a machine gone and writing its record catches up later).

``AccountingStore`` is a base of ``Store``: its methods use the Store's sessions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Boolean, Connection, Index, Integer, String, Text, and_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from cloudvac.model.accounting import AccountingRecord, JobCounts
from cloudvac.model.records import MachineRecord
from cloudvac.model.states import MachineState
from cloudvac.store.tables import MACHINES, RECORD_COLUMNS, Base, record_from_values, storable

#: How many unaccounted machines one ``unaccounted`` call returns at most.
UNACCOUNTED_LIMIT = 500


class AccountingRow(Base):
    """One finished machine's accounting record (``model.accounting.AccountingRecord``)."""

    __tablename__ = "accounting"
    __table_args__ = (Index("ix_accounting_stopped_at", "stopped_at"),)

    space: Mapped[str] = mapped_column(primary_key=True)
    machine: Mapped[str] = mapped_column(primary_key=True)
    vm_uuid: Mapped[str]
    machinetype: Mapped[str]
    vo: Mapped[str]
    dirac_site: Mapped[str]
    site: Mapped[str]
    processors: Mapped[int] = mapped_column(Integer)
    benchmark_per_processor: Mapped[float | None]
    benchmark_source: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[float]
    stopped_at: Mapped[float]
    cpu_seconds: Mapped[float | None]
    idle_seconds: Mapped[float | None]
    shutdown_code: Mapped[int | None] = mapped_column(Integer)
    shutdown_text: Mapped[str] = mapped_column(Text)
    jobs_production: Mapped[int] = mapped_column(Integer)
    jobs_user: Mapped[int] = mapped_column(Integer)
    jobs_known: Mapped[bool] = mapped_column(Boolean)
    fizzled: Mapped[bool] = mapped_column(Boolean)
    recorded_at: Mapped[float]


_PLAIN = ("space", "machine", "vm_uuid", "machinetype", "vo", "dirac_site", "site",
          "processors", "benchmark_per_processor", "benchmark_source", "started_at",
          "stopped_at", "cpu_seconds", "idle_seconds", "shutdown_code", "shutdown_text",
          "fizzled")


def _values(record: AccountingRecord, at: float) -> dict[str, Any]:
    values: dict[str, Any] = {name: getattr(record, name) for name in _PLAIN}
    values["shutdown_text"] = storable(record.shutdown_text)
    values.update(jobs_production=record.jobs.production, jobs_user=record.jobs.user,
                  jobs_known=record.jobs.known, recorded_at=at)
    return values


def _record(row: AccountingRow) -> AccountingRecord:
    plain = {name: getattr(row, name) for name in _PLAIN}
    plain["fizzled"] = bool(plain["fizzled"])
    return AccountingRecord(**plain, jobs=JobCounts(row.jobs_production, row.jobs_user,
                                                    bool(row.jobs_known)))


def insert_once(connection: Connection, records: Sequence[AccountingRecord], at: float) -> int:
    """Insert the records whose machine has none yet; how many were new."""
    if not records:
        return 0
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    # RETURNING, not rowcount: drivers do not all count an insert that did nothing alike.
    stmt = insert(AccountingRow).on_conflict_do_nothing(
        index_elements=["space", "machine"]).returning(AccountingRow.machine)
    return sum(connection.execute(stmt, _values(r, at)).first() is not None for r in records)


class AccountingStore(ABC):
    """The Store's accounting methods (``Store`` supplies the sessions)."""

    @abstractmethod
    def _write(self) -> AbstractContextManager[Session]:
        """A session that commits on success (``Store._write``)."""

    @abstractmethod
    def _read(self) -> AbstractContextManager[Session]:
        """A read-only session (``Store._read``)."""

    def record_accounting(self, records: Sequence[AccountingRecord], at: float) -> int:
        """Store each record unless its machine has one already (that one stays); how many
        were new.  One transaction."""
        if not records:
            return 0
        with self._write() as session:
            return insert_once(session.connection(), records, at)

    def unaccounted(self, space: str, limit: int = UNACCOUNTED_LIMIT) -> list[MachineRecord]:
        """Gone machines of ``space`` that ran (a start time) and have no accounting record,
        at most ``limit``."""
        query = (
            select(*(MACHINES.c[name] for name in RECORD_COLUMNS))
            .outerjoin(AccountingRow.__table__, and_(
                AccountingRow.space == MACHINES.c.space,
                AccountingRow.machine == MACHINES.c.name))
            .where(MACHINES.c.space == space, MACHINES.c.state == MachineState.GONE.value,
                   MACHINES.c.started_at.is_not(None), AccountingRow.machine.is_(None))
            .order_by(MACHINES.c.name).limit(limit)
        )
        with self._read() as session:
            return [record_from_values(space, row) for row in session.execute(query)]

    def accounting(self, since: float | None = None,
                   until: float | None = None) -> list[AccountingRecord]:
        """The records of machines that ran at some time in [since, until) (either bound
        open when None), ordered by space then machine."""
        query = select(AccountingRow).order_by(AccountingRow.space, AccountingRow.machine)
        if since is not None:
            query = query.where(AccountingRow.stopped_at > since)
        if until is not None:
            query = query.where(AccountingRow.started_at < until)
        with self._read() as session:
            return [_record(row) for row in session.scalars(query)]
