"""Fixtures shared by every test directory: the run's PostgreSQL server and the store URLs
on it (``tests/postgres.py``), the EC2 API of moto (``tests/ec2server.py``)."""

pytest_plugins = ["tests.postgres", "tests.ec2server"]
