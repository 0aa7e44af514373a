"""Alembic environment for cloudvac's store.

``Store`` runs migrations in code and hands its own open connection in
``config.attributes["connection"]``, so migrations share its engine, pragmas and
transaction.  Without one (the ``alembic`` command line), ``sqlalchemy.url`` is used.
Logging is deliberately not configured here: the daemon owns the logging tree.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from cloudvac.store.tables import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    # SQLite cannot ALTER most things; batch mode rebuilds tables for later migrations.
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection in config.attributes and no sqlalchemy.url set")
    return str(url)


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    engine = create_engine(_url())
    try:
        with engine.begin() as own:
            _configure(own)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
