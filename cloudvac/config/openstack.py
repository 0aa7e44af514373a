"""Options of a space with ``api = openstack`` (written in the ``[space]`` section itself).

Secrets are never written in the configuration: ``password`` or
``application_credential_secret`` given inline is an error that names the ``*_file`` and
``*_env`` options to use instead.  The model holds where a secret is, never the secret.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
INLINE_SECRETS = {"password": "password_file or password_env",
                  "application_credential_secret": "application_credential_secret_file or "
                                                   "application_credential_secret_env"}


class OpenStackSpace(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    auth: Literal["password", "application_credential"] = Field(
        "password", description="Keystone v3 method.")
    auth_url: str = Field(pattern=r"^https?://\S+$", description="Keystone v3 URL, e.g. "
                          "https://keystone.example:5000/v3.")
    region_name: str | None = None
    interface: Literal["public", "internal", "admin"] = "public"
    username: str | None = None
    user_domain_name: str = "Default"
    password_file: Path | None = Field(None, description="File (mode 0600) holding the "
                                       "password.")
    password_env: str | None = Field(None, pattern=ENV_NAME, description="Environment "
                                     "variable holding the password.")
    project_name: str | None = None
    project_id: str | None = None
    project_domain_name: str = "Default"
    application_credential_id: str | None = None
    application_credential_name: str | None = None
    application_credential_secret_file: Path | None = None
    application_credential_secret_env: str | None = Field(None, pattern=ENV_NAME)
    networks: list[str] = Field(default_factory=lambda: ["auto"], description="'auto', "
                                "'none' or network ids.")
    security_groups: list[str] = Field(default_factory=list)
    key_name: str | None = None
    availability_zone: str | None = None
    boot_volume_gb: int = Field(0, ge=0, description="Boot from a new volume of this size "
                                "(deleted with the server); 0 boots from the image.")
    ca_file: Path | None = Field(None, description="CA bundle for the cloud's TLS.")
    api_timeout_seconds: float = Field(60.0, gt=0, description="Timeout of one API call.")
    api_retries: int = Field(3, ge=0, le=10, description="Retries of idempotent calls on "
                             "connection errors and 5xx (creates are never retried).")
    password: str | None = Field(None, exclude=True, repr=False)
    application_credential_secret: str | None = Field(None, exclude=True, repr=False)

    @field_validator("password", "application_credential_secret")
    @classmethod
    def _no_inline(cls, value: str | None, info: ValidationInfo) -> None:
        name = info.field_name or "password"
        if value is not None:
            raise ValueError(f"inline secrets are refused; use {INLINE_SECRETS[name]}")
        return None

    @field_validator("networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        if len(value) > 1 and ({"auto", "none"} & set(value)):
            raise ValueError("'auto' and 'none' cannot be combined with network ids")
        return value

    @model_validator(mode="after")
    def _credentials(self) -> OpenStackSpace:
        if self.auth == "password":
            missing = [n for n in ("username",) if getattr(self, n) is None]
            if self.project_name is None and self.project_id is None:
                missing.append("project_name or project_id")
            if self.password_file is None and self.password_env is None:
                missing.append("password_file or password_env")
            if missing:
                raise ValueError(f"auth = password needs {', '.join(missing)}")
        else:
            if self.application_credential_id is None and (
                    self.application_credential_name is None or self.username is None):
                raise ValueError("auth = application_credential needs "
                                 "application_credential_id (or _name with username)")
            if self.application_credential_secret_file is None and \
                    self.application_credential_secret_env is None:
                raise ValueError("auth = application_credential needs "
                                 "application_credential_secret_file or _secret_env")
        return self
