"""The tables several managers share one store by (migration 0009).

* ``instances``: one row per running manager, its last sign of life on the database's own
  clock (``seen_at``), so instances with skewed clocks agree on who is alive.
* ``space_leases``: who owns a space.  ``generation`` grows by one at every change of
  owner; ``expires_at`` is on the database's clock.  An engine write carries the
  generation it holds and is refused when the row says otherwise (``store/leases.py``).
* ``store_facts``: small facts about the store itself (the fingerprint of the server
  secret every instance must share, so a host with another secret refuses to start).
* ``joboutputs``: the files VMs upload, kept in the database so any instance may take
  them and any instance may read them (``cloudvac logs``, accounting).
* ``removals``: machinetypes (``"*"``: a whole space) that left the configuration while
  machines of theirs still ran, and the operator's confirmation when draining them would
  remove more than the configured share of a space at once.
"""

from __future__ import annotations

from sqlalchemy import Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from cloudvac.store.tables import Base


class InstanceRow(Base):
    __tablename__ = "instances"

    instance: Mapped[str] = mapped_column(String(64), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    presence_key: Mapped[int] = mapped_column(Integer)
    """The advisory lock (PostgreSQL) the instance holds while its process lives."""
    started_at: Mapped[float]
    seen_at: Mapped[float]
    cycle_seconds: Mapped[float]


class LeaseRow(Base):
    __tablename__ = "space_leases"

    space: Mapped[str] = mapped_column(String(255), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(64))
    generation: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[float]
    renewed_at: Mapped[float]


class StoreFactRow(Base):
    __tablename__ = "store_facts"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class JoboutputRow(Base):
    __tablename__ = "joboutputs"

    space: Mapped[str] = mapped_column(String(255), primary_key=True)
    machine: Mapped[str] = mapped_column(String(255), primary_key=True)
    file: Mapped[str] = mapped_column(String(255), primary_key=True)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer)
    written_at: Mapped[float]


class RemovalRow(Base):
    __tablename__ = "removals"

    space: Mapped[str] = mapped_column(String(255), primary_key=True)
    machinetype: Mapped[str] = mapped_column(String(255), primary_key=True)
    noticed_at: Mapped[float]
    machines: Mapped[int] = mapped_column(Integer)
    confirmed_at: Mapped[float | None]
