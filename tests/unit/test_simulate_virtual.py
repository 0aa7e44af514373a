"""What makes a simulation repeatable: store calls run in line on the loop's thread, machine
names from a seeded generator, one run seed spread over the spaces."""

from __future__ import annotations

import asyncio
import threading

import pytest

from cloudvac.model.naming import MACHINE_NAME, machinetype_of, name_prefix
from cloudvac.simulate.virtual import Clock, InlineExecutor, seeded_namer, space_seed


def test_to_thread_runs_in_line_and_in_a_fixed_order() -> None:
    order: list[str] = []

    def work(tag: str) -> int:
        order.append(f"{tag}@{threading.get_ident()}")
        return len(tag)

    async def task(tag: str) -> tuple[int, int]:
        first = await asyncio.to_thread(work, tag)
        second = await asyncio.to_thread(work, tag + "!")
        return first, second

    async def main() -> list[tuple[int, int]]:
        asyncio.get_running_loop().set_default_executor(InlineExecutor())
        return list(await asyncio.gather(*(task(t) for t in ("a", "bb", "ccc"))))

    assert asyncio.run(main()) == [(1, 2), (2, 3), (3, 4)]
    me = threading.get_ident()
    # Each task runs to its first hop, then each resumes in turn: the loop's FIFO.
    assert order == [f"{t}@{me}" for t in ("a", "bb", "ccc", "a!", "bb!", "ccc!")]


def test_an_error_reaches_the_awaiting_task() -> None:
    def fail() -> None:
        raise LookupError("no such machine")

    async def main() -> None:
        asyncio.get_running_loop().set_default_executor(InlineExecutor())
        await asyncio.to_thread(fail)

    with pytest.raises(LookupError, match="no such machine"):
        asyncio.run(main())


def test_seeded_names_repeat_per_seed_and_keep_the_machine_name_shape() -> None:
    one, again, other = seeded_namer("1"), seeded_namer("1"), seeded_namer("2")
    names = [one("cloud.example", mt) for mt in ("belle", "t2k", "belle")]
    assert names == [again("cloud.example", mt) for mt in ("belle", "t2k", "belle")]
    assert names != [other("cloud.example", mt) for mt in ("belle", "t2k", "belle")]
    assert len(set(names)) == 3
    for name, mt in zip(names, ("belle", "t2k", "belle"), strict=True):
        assert MACHINE_NAME.match(name) and name.startswith(name_prefix("cloud.example"))
        assert machinetype_of(name) == mt


def test_a_run_seed_gives_each_space_its_own_stream() -> None:
    assert space_seed(1, "a.example") == space_seed(1, "a.example")
    assert len({space_seed(1, "a.example"), space_seed(1, "b.example"),
                space_seed(2, "a.example")}) == 3


def test_the_clock_reads_what_the_runner_set() -> None:
    clock = Clock(100.0)
    clock.now += 60
    assert clock() == 160.0
