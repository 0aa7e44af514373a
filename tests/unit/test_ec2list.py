"""The EC2 adapter's pure parts (``clouds/ec2list.py``) and what the engine makes of an
instance EC2 shows ended: states, faults, a spot interruption's own shutdown reason, tags,
user_data, error codes."""

from __future__ import annotations

import datetime
import gzip
import random
from typing import Any

import pytest

from cloudvac.clouds import ec2list
from cloudvac.config import Machinetype, Space
from cloudvac.engine.reconcile import reconcile
from cloudvac.model.cloud import RECLAIMED, TAG_MACHINETYPE, TAG_MANAGER, TAG_SPACE
from cloudvac.model.errors import AuthFailed, Misconfigured, QuotaExceeded, Retryable
from cloudvac.model.records import MachineRecord, SpaceHistory
from cloudvac.model.states import MachineState

S = MachineState
LAUNCHED = datetime.datetime(2026, 11, 30, 4, 0, tzinfo=datetime.UTC)
NOW = LAUNCHED.timestamp() + 120  # two minutes: a spot interruption this early is no fizzle


def instance(state: str, code: str = "", lifecycle: str | None = None,
             name: str = "cloudvac-abc123-belle-x1") -> dict[str, Any]:
    found: dict[str, Any] = {
        "InstanceId": "i-0123456789abcdef0", "InstanceType": "m5.large",
        "State": {"Name": state}, "LaunchTime": LAUNCHED,
        "StateReason": {"Code": code, "Message": f"{code}: text"} if code else {},
        "PrivateIpAddress": "10.0.0.5",
        "Tags": [{"Key": "Name", "Value": name}, {"Key": TAG_SPACE, "Value": "e.example"},
                 {"Key": TAG_MACHINETYPE, "Value": "belle"},
                 {"Key": TAG_MANAGER, "Value": "cloudvac"}]}
    if lifecycle:
        found["InstanceLifecycle"] = lifecycle
    return found


@pytest.mark.parametrize(("status", "state"), [
    ("pending", S.STARTING), ("running", S.RUNNING), ("stopping", S.STOPPED),
    ("stopped", S.STOPPED), ("shutting-down", S.DELETING), ("terminated", S.GONE),
    ("weird", S.UNKNOWN)])
def test_states(status: str, state: MachineState) -> None:
    seen = ec2list.observe(instance(status), {"m5.large": 2})
    assert seen is not None and seen.state is state and seen.processors == 2
    assert seen.machinetype == "belle" and seen.address == "10.0.0.5"
    assert seen.created_at == LAUNCHED.timestamp()
    assert (seen.started_at is None) == (status == "pending")


def test_faults_and_unnamed() -> None:
    spot = ec2list.observe(instance("terminated", "Server.SpotInstanceTermination", "spot"), {})
    assert spot is not None and spot.fault.startswith(RECLAIMED) and "spot" in spot.fault
    ours = ec2list.observe(instance("terminated", "Client.UserInitiatedShutdown"), {})
    assert ours is not None and ours.fault == ""
    failed = ec2list.observe(instance("terminated", "Server.InternalError"), {})
    assert failed is not None and failed.fault.startswith("Server.InternalError")
    assert failed.started_at is None, "a launch failure never ran"
    assert ec2list.observe(instance("running", name=""), {}) is None


def space() -> Space:
    mt = Machinetype(name="belle", space="e.example", target_share=1, fizzle_seconds=600)
    return Space(name="e.example", api="sim", flavor_names=["m5.large"],
                 machinetypes={"belle": mt})


def live(state: MachineState = S.RUNNING) -> MachineRecord:
    return MachineRecord(space="e.example", name="cloudvac-abc123-belle-x1",
                         machinetype="belle", state=state, cloud_id="i-0123456789abcdef0",
                         processors=2, created_at=LAUNCHED.timestamp(),
                         started_at=LAUNCHED.timestamp())


@pytest.mark.parametrize("status", ["terminated", "shutting-down", "stopped"])
def test_spot_interruption_is_its_own_reason_and_never_a_backoff(status: str) -> None:
    seen = ec2list.observe(instance(status, "Server.SpotInstanceTermination", "spot"), {})
    assert seen is not None
    record = live()
    result = reconcile(space(), [seen], SpaceHistory(machines={record.name: record}), NOW)
    ended = result.changed[record.name]
    assert ended.stopped_at == NOW and ended.shutdown is not None
    assert ended.shutdown.code == 100
    assert str(ended.shutdown).startswith("100 Reclaimed by the cloud (spot interruption")
    assert not result.aborts, "a spot interruption after 2 minutes is no fizzle"
    if status == "terminated":
        assert ended.state is S.GONE and record.name not in {r.name for r in result.records}


def test_terminated_without_reason_fizzles_like_any_short_machine() -> None:
    seen = ec2list.observe(instance("terminated", "Client.InstanceInitiatedShutdown"), {})
    assert seen is not None
    record = live()
    result = reconcile(space(), [seen], SpaceHistory(machines={record.name: record}), NOW)
    assert result.changed[record.name].state is S.GONE and result.aborts
    assert not result.records, "an ended instance holds no capacity"


def test_terminated_instance_unknown_to_the_store_is_ignored() -> None:
    seen = ec2list.observe(instance("terminated"), {})
    assert seen is not None
    result = reconcile(space(), [seen], SpaceHistory(), NOW)
    assert not result.records and not result.changed and not result.events


def test_tags_and_user_data() -> None:
    specs = ec2list.tag_specifications("n", {TAG_SPACE: "e.example"})
    assert specs[0]["Tags"] == [{"Key": "Name", "Value": "n"},
                                {"Key": TAG_SPACE, "Value": "e.example"}]
    assert {s["ResourceType"] for s in specs} == {"instance", "volume"}
    for bad in ({"aws:x": "v"}, {"k" * 129: "v"}, {"k": "v" * 257}):
        with pytest.raises(Misconfigured):
            ec2list.tag_specifications("n", bad)
    small = "#cloud-config\n"
    assert ec2list.user_data(small) == small.encode()
    large = "#cloud-config\n" + "".join(f"# line {i}\n" for i in range(3000))
    packed = ec2list.user_data(large)
    assert len(packed) <= ec2list.USER_DATA_BYTES and gzip.decompress(packed) == large.encode()
    with pytest.raises(Misconfigured, match="16384"):
        ec2list.user_data(random.Random(1).randbytes(20000).hex())  # incompressible
    assert ec2list.client_token("n") == ec2list.client_token("n") != ec2list.client_token("m")


@pytest.mark.parametrize(("code", "status", "error"), [
    ("InsufficientInstanceCapacity", 500, QuotaExceeded),
    ("VcpuLimitExceeded", 400, QuotaExceeded), ("InstanceLimitExceeded", 400, QuotaExceeded),
    ("InvalidAMIID.NotFound", 400, Misconfigured),
    ("InvalidParameterValue", 400, Misconfigured), ("AuthFailure", 401, AuthFailed),
    ("UnauthorizedOperation", 403, AuthFailed), ("InvalidClientTokenId", 403, AuthFailed),
    ("SignatureDoesNotMatch", 403, AuthFailed), ("RequestLimitExceeded", 503, Retryable),
    ("InternalError", 500, Retryable)])
def test_error_codes(code: str, status: int, error: type[Exception]) -> None:
    found = ec2list.translate(code, "aws_secret_access_key=wJalrXUtnFEMIK7MDENGbPxRfiCY",
                              status, "create")
    assert type(found) is error and code in str(found)
    assert "wJalrXUtnFEMIK7MDENGbPxRfiCY" not in str(found)
