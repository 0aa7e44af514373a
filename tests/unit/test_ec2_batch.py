"""Deletes issued together go out as one TerminateInstances (``Ec2Cloud.delete_machine``);
when the delete that sends the batch is cancelled before sending (its cycle's deadline),
the deletes that joined it get a retryable error instead of waiting forever, and the next
delete starts a batch of its own."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from cloudvac.clouds.ec2 import Ec2Cloud
from cloudvac.config import Machinetype, Settings, Space
from cloudvac.config.ec2 import Ec2Space
from cloudvac.engine.metrics import EngineMetrics
from cloudvac.model.errors import Retryable

SPACE = "ec2.example"


def cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ec2Cloud:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    options = Ec2Space(region="eu-west-1", endpoint_url="http://127.0.0.1:9", credentials="env")
    mt = Machinetype(name="belle", space=SPACE, target_share=1, root_image="ami-12345678")
    space = Space(name=SPACE, api="ec2", ec2=options, flavor_names=["t3.small"],
                  machinetypes={"belle": mt})
    return Ec2Cloud(space, Settings(state_dir=tmp_path), EngineMetrics(CollectorRegistry()))


@pytest.fixture
def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
             ) -> tuple[Ec2Cloud, list[list[str]]]:
    """An adapter whose TerminateInstances requests are recorded, not sent: the batching
    is what is under test here (the requests themselves: tests/contract/test_ec2_adapter)."""
    ec2 = cloud(tmp_path, monkeypatch)
    sent: list[list[str]] = []

    async def terminate(ids: list[str]) -> None:
        sent.append(list(ids))

    monkeypatch.setattr(ec2, "_terminate", terminate)
    return ec2, sent


def test_a_cancelled_sender_releases_the_deletes_that_joined_its_batch(
        recorded: tuple[Ec2Cloud, list[list[str]]]) -> None:
    ec2, sent = recorded

    async def scenario() -> tuple[BaseException | None, BaseException | None]:
        first = asyncio.create_task(ec2.delete_machine("i-1"))
        await asyncio.sleep(0)  # the first one is collecting its batch now
        second = asyncio.create_task(ec2.delete_machine("i-2"))
        await asyncio.sleep(0)  # the second joined it
        first.cancel()
        done, _ = await asyncio.wait({first, second}, timeout=30)
        assert done == {first, second}, "a delete still waits on a cancelled batch"
        await ec2.delete_machine("i-3")  # a batch of its own, sent
        return (None if not first.cancelled() else asyncio.CancelledError()), \
            second.exception()

    first, second = asyncio.run(scenario())
    assert isinstance(first, asyncio.CancelledError)
    assert isinstance(second, Retryable)
    assert sent == [["i-3"]]


def test_deletes_of_one_moment_are_sent_as_one_batch(
        recorded: tuple[Ec2Cloud, list[list[str]]]) -> None:
    ec2, sent = recorded

    async def scenario() -> None:
        await asyncio.gather(*(ec2.delete_machine(f"i-{n}") for n in range(5)))

    asyncio.run(scenario())
    assert sent == [[f"i-{n}" for n in range(5)]]
