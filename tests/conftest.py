"""Fixtures shared by every test directory: the run's PostgreSQL server and the store URLs
on it (``tests/postgres.py``)."""

pytest_plugins = ["tests.postgres"]
