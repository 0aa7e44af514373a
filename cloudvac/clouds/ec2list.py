"""The EC2 adapter's pure parts: instances as the engine sees them, tags, user_data, errors.

State mapping (``DescribeInstances`` ``State.Name``): ``pending`` -> starting, ``running``
-> running, ``stopping``/``stopped`` -> stopped, ``shutting-down`` -> deleting,
``terminated`` -> gone (EC2 shows a terminated instance for about an hour: the engine ends
a live record with its fault and ignores it otherwise, ``model/cloud.py``).  A spot
instance the provider interrupted (``StateReason`` ``Server.SpotInstanceTermination`` or
``Server.SpotInstanceShutdown``) carries the fault ``reclaimed by the cloud (spot
interruption ...)``, so the machine ends as ``100 Reclaimed by the cloud``, never a
backoff.

botocore's exceptions are translated here too (``translate_exception``); this module is
imported only by the EC2 adapter, so boto3 stays out of every other command.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import botocore.exceptions as bexc

from cloudvac.model.cloud import RECLAIMED, TAG_MACHINETYPE, TAG_MANAGER, TAG_SPACE, ObservedMachine
from cloudvac.model.errors import (
    AuthFailed,
    CloudError,
    Gone,
    Misconfigured,
    NotSent,
    QuotaExceeded,
    Retryable,
)
from cloudvac.model.redact import redact
from cloudvac.model.states import MachineState

S = MachineState
STATES = {"pending": S.STARTING, "running": S.RUNNING, "stopping": S.STOPPED,
          "stopped": S.STOPPED, "shutting-down": S.DELETING, "terminated": S.GONE}
SPOT_REASONS = frozenset({"Server.SpotInstanceTermination", "Server.SpotInstanceShutdown"})
#: Reasons an instance ended that say it never ran (so it never started a pilot).
LAUNCH_FAILURES = frozenset({"Server.InternalError", "Server.InsufficientInstanceCapacity",
                             "Client.VolumeLimitExceeded", "Client.InternalError",
                             "Client.InvalidSnapshot.NotFound"})
#: Nobody's fault worth telling: our own terminations, the VM powering itself off.
PLAIN_REASONS = frozenset({"", "Client.UserInitiatedShutdown",
                           "Client.InstanceInitiatedShutdown"})
NAME_TAG = "Name"
TAG_KEY_CHARS, TAG_VALUE_CHARS, MAX_TAGS = 128, 256, 50
USER_DATA_BYTES = 16384  # EC2's limit on user_data before base64
FAULT_LIMIT = 300
QUOTA_CODES = frozenset({"InsufficientInstanceCapacity", "VcpuLimitExceeded",
                         "InstanceLimitExceeded", "MaxSpotInstanceCountExceeded",
                         "InsufficientFreeAddressesInSubnet", "InsufficientCapacity",
                         "SpotMaxPriceTooLow", "ReservationCapacityExceeded"})
AUTH_CODES = frozenset({"AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId",
                        "SignatureDoesNotMatch", "OptInRequired", "Blocked", "ExpiredToken",
                        "RequestExpired", "AccessDenied", "AccessDeniedException",
                        "UnrecognizedClientException", "PendingVerification"})
MISCONFIGURED_PREFIXES = ("InvalidAMIID.", "InvalidParameter", "InvalidSubnetID.",
                          "InvalidGroup.", "InvalidKeyPair.", "InvalidInstanceType",
                          "InvalidUserData.", "InvalidBlockDeviceMapping", "MissingParameter",
                          "Unsupported", "InvalidSecurityGroupID.", "InvalidVpcID.")
GONE_CODES = frozenset({"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"})


def tags_of(instance: Mapping[str, Any]) -> dict[str, str]:
    return {str(t.get("Key", "")): str(t.get("Value", "")) for t in instance.get("Tags") or ()}


def _time(value: object) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else None


def observe(instance: Mapping[str, Any], vcpus: Mapping[str, int]) -> ObservedMachine | None:
    """The engine's view of one instance (None: it has no ``Name`` tag, so it is not one
    cloudvac made); ``vcpus``: known instance types' vCPU counts."""
    tags = tags_of(instance)
    name = tags.get(NAME_TAG)
    if not name:
        return None
    status = str((instance.get("State") or {}).get("Name", ""))
    reason = instance.get("StateReason") or {}
    code, message = str(reason.get("Code", "") or ""), str(reason.get("Message", "") or "")
    cpu = instance.get("CpuOptions") or {}
    kind = str(instance.get("InstanceType", ""))
    processors = vcpus.get(kind) or int(cpu.get("CoreCount", 1)) * int(
        cpu.get("ThreadsPerCore", 1))
    launched = _time(instance.get("LaunchTime"))
    ran = status != "pending" and code not in LAUNCH_FAILURES
    return ObservedMachine(
        cloud_id=str(instance["InstanceId"]), name=name,
        machinetype=tags.get(TAG_MACHINETYPE, ""), state=STATES.get(status, S.UNKNOWN),
        processors=processors, created_at=launched, started_at=launched if ran else None,
        cloud_status=f"{status}/{code or '-'}", fault=_fault(instance, code, message),
        address=str(instance.get("PrivateIpAddress") or instance.get("PublicIpAddress") or ""))


def _fault(instance: Mapping[str, Any], code: str, message: str) -> str:
    spot = instance.get("InstanceLifecycle") == "spot"
    if code in SPOT_REASONS or (spot and code.startswith("Server.Spot")):
        return redact(f"{RECLAIMED} (spot interruption: {code})", FAULT_LIMIT)
    if code in PLAIN_REASONS:
        return ""
    return redact(f"{code}: {message}" if message and code not in message else message or code,
                  FAULT_LIMIT)


def ours(instance: Mapping[str, Any], space: str, manager: str) -> bool:
    tags = tags_of(instance)
    return tags.get(TAG_SPACE) == space and tags.get(TAG_MANAGER) == manager


def tag_specifications(name: str, metadata: Mapping[str, str]) -> list[dict[str, Any]]:
    """Tags of a new instance and its volumes: ``Name`` and ``metadata`` (EC2's limits: 50
    tags, keys 1-128 and values 0-256 characters, no ``aws:`` prefix)."""
    tags = {NAME_TAG: name, **metadata}
    for key, value in tags.items():
        if not 0 < len(key) <= TAG_KEY_CHARS or len(value) > TAG_VALUE_CHARS \
                or key.lower().startswith("aws:"):
            raise Misconfigured(f"tag {key[:40]!r} breaks EC2's tag rules (key 1-128 "
                                "characters, not aws:*, value at most 256)")
    if len(tags) > MAX_TAGS:
        raise Misconfigured(f"{len(tags)} tags, more than EC2's {MAX_TAGS}")
    listed = [{"Key": k, "Value": v} for k, v in tags.items()]
    return [{"ResourceType": "instance", "Tags": listed},
            {"ResourceType": "volume", "Tags": listed}]


def user_data(text: str) -> bytes:
    """user_data within EC2's 16 KiB: as is, else gzip-compressed (cloud-init reads both)."""
    raw = text.encode()
    if len(raw) > USER_DATA_BYTES:
        raw = gzip.compress(raw, mtime=0)
    if len(raw) > USER_DATA_BYTES:
        raise Misconfigured(f"user_data is {len(raw)} bytes gzipped, over EC2's "
                            f"{USER_DATA_BYTES}")
    return raw


def client_token(name: str) -> str:
    """RunInstances' idempotency token: a retried create never makes a second instance."""
    return hashlib.sha256(name.encode()).hexdigest()


def translate(code: str, message: str, status: int, kind: str) -> CloudError:
    """An EC2 error (its ``Code``, message and HTTP status) in the taxonomy; the text is
    redacted (an error may quote the request)."""
    text = redact(f"{kind}: {code}: {message}")
    if code in QUOTA_CODES:
        return QuotaExceeded(text)
    if code in AUTH_CODES:
        return AuthFailed(text)
    if code in GONE_CODES:
        return Gone(text)
    if code.startswith(MISCONFIGURED_PREFIXES):
        return Misconfigured(text)
    if status >= 500 or code in ("RequestLimitExceeded", "Throttling", "ThrottlingException",
                                 "ServiceUnavailable", "InternalError", "Unavailable"):
        return Retryable(text)
    if kind == "create" and status == 0:
        return NotSent(text)
    return Misconfigured(text) if 400 <= status < 500 else Retryable(text)


def anonymous(instance: Mapping[str, Any], vcpus: Mapping[str, int]) -> ObservedMachine | None:
    """A foreign instance (no ``Name`` tag) seen for its vCPUs."""
    return observe({**instance, "Tags": [{"Key": NAME_TAG, "Value": "-"}]}, vcpus)


def error_code(exc: bexc.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def translate_exception(exc: Exception, kind: str) -> CloudError:
    """botocore's exceptions in the taxonomy (``ClientError`` by its EC2 code)."""
    if isinstance(exc, bexc.ClientError):
        error = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return translate(str(error.get("Code", "")), str(error.get("Message", "")), status,
                         kind)
    if isinstance(exc, bexc.NoCredentialsError | bexc.PartialCredentialsError):
        return Misconfigured(f"{kind}: boto3 found no credentials ({type(exc).__name__})")
    if isinstance(exc, bexc.ParamValidationError):
        return Misconfigured(redact(f"{kind}: {exc}"))
    if kind == "create" and isinstance(exc, bexc.EndpointConnectionError
                                       | bexc.ConnectTimeoutError):
        return NotSent(f"{kind}: cannot connect to EC2 ({type(exc).__name__}); "
                       "the create was not sent")
    return Retryable(redact(f"{kind}: {type(exc).__name__}: {str(exc)[:200]}"))
