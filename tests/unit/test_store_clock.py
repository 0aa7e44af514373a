"""The store's clock (``store/clock.py``): the host's wall clock moved onto the database's."""

from __future__ import annotations

import logging

import pytest

from cloudvac.store.clock import WARN_SECONDS, StoreClock


class Wall:
    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


class Database:
    def __init__(self, wall: Wall, skew: float, trip: float) -> None:
        self.wall, self.skew, self.trip = wall, skew, trip

    def db_time(self) -> float:
        self.wall.at += self.trip / 2  # the request reaches the database halfway
        at = self.wall.at + self.skew
        self.wall.at += self.trip / 2
        return at


def test_now_is_the_wall_clock_until_measured_then_the_databases() -> None:
    wall = Wall(1000.0)
    clock = StoreClock(wall)
    assert clock.now() == 1000.0
    assert clock.measure(Database(wall, skew=-90.0, trip=0.4)) == pytest.approx(-90.0)
    wall.at = 5000.0
    assert clock.now() == pytest.approx(4910.0)


def test_a_skewed_host_is_warned_once_per_change(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "cloudvac.store.clock")
    clock = StoreClock(Wall(0.0))
    clock.observe(100.0, 0.0, 0.0)
    clock.observe(100.5, 0.0, 0.0)  # moved less than WARN_SECONDS: no new line
    assert len(caplog.records) == 1
    assert "-100.0 s off the database's" in caplog.records[0].getMessage()
    clock.observe(100.0 + 3 * WARN_SECONDS, 0.0, 0.0)
    assert len(caplog.records) == 2
    clock.observe(0.5, 0.0, 0.0)  # in sync again: nothing to say
    assert len(caplog.records) == 2


def test_the_midpoint_of_the_round_trip_is_taken() -> None:
    clock = StoreClock(Wall(0.0))
    assert clock.observe(10.0, 0.0, 4.0) == pytest.approx(8.0)
