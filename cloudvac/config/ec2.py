"""Options of a space with ``api = ec2`` (written in the ``[space]`` section itself, as the
OpenStack options are).

Instance types are the space's and machinetypes' ``flavor_names`` (vCPUs and memory come
from ``DescribeInstanceTypes``) and the AMI is the machinetype's ``root_image`` (an
``ami-...`` id, or a name looked up among the images of ``image_owners``).

Credentials: ``credentials = file`` (the default) reads ``credentials_file``, mode 0600, in
the AWS shared-credentials format (``[PROFILE]`` with ``aws_access_key_id``,
``aws_secret_access_key`` and optionally ``aws_session_token``); ``env`` reads two
environment variables; ``default-chain`` lets boto3 find them (instance role, SSO,
``~/.aws``) and is used only when written.  A secret key written inline is refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
EC2_SECRETS = ("credentials_file",)
"""Secret files the loader checks (mode 0600) from the option's text."""
INLINE_SECRETS = {"secret_access_key": "credentials_file or secret_access_key_env",
                  "aws_secret_access_key": "credentials_file or secret_access_key_env"}
MAX_PAGE = 1000
"""``DescribeInstances`` returns at most this many instances per page."""


class Ec2Space(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    region: str | None = Field(None, pattern=r"^[a-z0-9-]{1,64}$", description="AWS region "
                               "(or the region name an EC2-compatible endpoint expects), e.g. "
                               "eu-west-1. Required.")
    endpoint_url: str | None = Field(None, pattern=r"^https?://\S+$", description="EC2 "
                                     "endpoint of a non-AWS cloud (OpenStack/OpenNebula EC2 "
                                     "API); unset: AWS's endpoint of the region.")
    credentials: Literal["file", "env", "default-chain"] = Field(
        "file", description="Where the access key comes from: file (credentials_file), env "
        "(access_key_id_env and secret_access_key_env) or default-chain (boto3's standard "
        "chain: instance role, SSO, ~/.aws; only when written).")
    credentials_file: Path | None = Field(None, description="File (mode 0600) in the AWS "
                                          "shared-credentials format: [PROFILE] with "
                                          "aws_access_key_id, aws_secret_access_key and "
                                          "optionally aws_session_token.")
    credentials_profile: str = Field("default", description="Section of credentials_file "
                                     "to read.")
    access_key_id_env: str = Field("AWS_ACCESS_KEY_ID", pattern=ENV_NAME, description=""
                                   "Environment variable holding the access key id "
                                   "(credentials = env).")
    secret_access_key_env: str = Field("AWS_SECRET_ACCESS_KEY", pattern=ENV_NAME,
                                       description="Environment variable holding the "
                                       "secret access key (credentials = env).")
    image_owners: list[str] = Field(default_factory=lambda: ["self"], description="Owners "
                                    "(account ids, self, amazon, aws-marketplace) whose "
                                    "images a root_image given by name is looked up among; "
                                    "the newest image of that name wins.")
    subnet_id: str | None = Field(None, description="Subnet of every new instance; unset: "
                                  "the default VPC's default subnet.")
    security_group_ids: list[str] = Field(default_factory=list, description="Security group "
                                          "ids (sg-...) of every new instance; none given: "
                                          "the VPC's default group.")
    key_name: str | None = Field(None, description="EC2 key pair given to every new "
                                 "instance.")
    spot: bool = Field(False, description="Create spot instances (InstanceMarketOptions). An "
                       "interruption by the provider ends the machine with '100 Reclaimed by "
                       "the cloud: spot interruption', never a backoff.")
    spot_max_price: str | None = Field(None, pattern=r"^\d+(\.\d+)?$", description="Highest "
                                       "hourly price (USD) for a spot instance; unset: the "
                                       "on-demand price.")
    vcpu_limit: int | None = Field(None, ge=0, description="vCPUs the account may run in "
                                   "this region (the Running On-Demand Standard instances "
                                   "quota); unset: no limit but processors_limit and the "
                                   "cloud's refusals.")
    vcpu_limit_from_service_quotas: bool = Field(
        False, description="Read the vCPU limit from Service Quotas (L-1216C47A) every "
        "quota_reread_seconds instead, falling back to vcpu_limit when it cannot be read.")
    retry_mode: Literal["standard", "adaptive"] = Field(
        "standard", description="botocore's retry mode for throttling, 5xx and connection "
        "errors (creates carry a ClientToken, so a retried create never makes two).")
    max_attempts: int = Field(3, ge=1, le=10, description="Attempts per call, the first "
                              "included (botocore's max_attempts).")
    api_timeout_seconds: float = Field(60.0, gt=0, description="Timeout of one API call.")
    list_page_size: int = Field(MAX_PAGE, ge=5, le=MAX_PAGE, description="Instances per "
                                "DescribeInstances page (MaxResults).")
    ca_file: Path | None = Field(None, description="CA bundle for the endpoint's TLS.")
    secret_access_key: str | None = Field(None, exclude=True, repr=False)
    aws_secret_access_key: str | None = Field(None, exclude=True, repr=False)

    @field_validator("secret_access_key", "aws_secret_access_key")
    @classmethod
    def _no_inline(cls, value: str | None) -> None:
        if value is not None:
            raise ValueError("inline secrets are refused; use credentials_file or "
                             "secret_access_key_env")
        return None

    @field_validator("security_group_ids")
    @classmethod
    def _groups(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not re.match(r"^sg-[0-9a-f]{8,17}$", v)]
        if bad:
            raise ValueError(f"security group ids look like sg-0123abcd, got {bad[0]!r}")
        return value

    @model_validator(mode="after")
    def _complete(self) -> Ec2Space:
        missing = [] if self.region else ["region"]
        if self.credentials == "file" and self.credentials_file is None:
            missing.append("credentials_file (or credentials = env / default-chain)")
        if missing:
            raise ValueError(f"api = ec2 needs {', '.join(missing)}")
        return self
