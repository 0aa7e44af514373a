"""Fixtures of the chaos scenarios."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.postgres import PostgresServer, find_bindir


@pytest.fixture(scope="module")
def chaos_pg() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the module's own: restarting it touches no other test."""
    bindir = find_bindir()
    assert bindir is not None, "no PostgreSQL server (initdb): run `make system-deps`"
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
