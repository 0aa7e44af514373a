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
                                                   "application_credential_secret_env",
                  "egi_checkin_client_secret": "egi_checkin_client_secret_file or "
                                               "egi_checkin_client_secret_env",
                  "egi_checkin_refresh_token": "egi_checkin_refresh_token_file or "
                                               "egi_checkin_refresh_token_env"}


class OpenStackSpace(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    auth: Literal["password", "application_credential", "egi_checkin"] = Field(
        "password", description="Keystone v3 method; egi_checkin: EGI Check-in tokens through "
        "Keystone OS-FEDERATION (EGI Federated Cloud).")
    auth_url: str | None = Field(None, pattern=r"^https?://\S+$", description="Keystone v3 "
                                 "URL, e.g. https://keystone.example:5000/v3 (egi_checkin: "
                                 "discovered from egi_site if unset).")
    egi_checkin_url: str = Field("https://aai.egi.eu/auth/realms/egi", pattern=r"^https?://\S+$",
                                 description="Check-in issuer (OIDC discovery is read from it).")
    egi_checkin_client_id: str | None = Field(None, description="cloudvac's OIDC client id at "
                                              "Check-in (the service account, or the client "
                                              "that obtained the refresh token).")
    egi_checkin_client_secret_file: Path | None = Field(None, description="File (mode 0600) "
                                                        "holding the client secret; needed "
                                                        "by client_credentials, optional "
                                                        "for a public client with a "
                                                        "refresh token.")
    egi_checkin_client_secret_env: str | None = Field(None, pattern=ENV_NAME, description=""
                                                      "Environment variable holding the "
                                                      "client secret.")
    egi_checkin_refresh_token_file: Path | None = Field(None, description="Refresh token file "
                                                        "(0600), never written: a token the "
                                                        "provider rotates is kept in "
                                                        "state_dir/checkin/ and used while "
                                                        "this file holds the one it replaced.")
    egi_checkin_refresh_token_env: str | None = Field(None, pattern=ENV_NAME, description=""
                                                      "Environment variable holding the "
                                                      "refresh token (a rotated one is then "
                                                      "kept in memory only).")
    egi_checkin_grant: Literal["refresh_token", "client_credentials"] | None = Field(
        None, description="Default: refresh_token if a refresh token is configured, else "
        "client_credentials (a Check-in service account, recommended for daemons).")
    egi_checkin_scope: str = Field("openid profile eduperson_entitlement", description="Scopes "
                                   "asked of Check-in; the site maps the token's "
                                   "eduperson_entitlement to its project.")
    egi_project_id: str | None = Field(None, description="Keystone project of the VO at the "
                                       "site (discovered from the EGI IS if unset).")
    egi_site: str | None = Field(None, description="GOCDB site name, for discovery.")
    egi_vo: str | None = Field(None, description="VO whose project at egi_site is discovered, "
                               "and whose vm_operator entitlement a refused token is checked "
                               "for.")
    egi_identity_provider: str = Field("egi.eu", description="Keystone identity provider id "
                                       "of Check-in at the site.")
    egi_protocol: str = Field("openid", description="Keystone federation protocol ('oidc' at "
                              "some sites).")
    egi_is_url: str = Field("https://is.cloud.egi.eu", description="EGI information system.")
    egi_gocdb_url: str = Field("https://goc.egi.eu/gocdbpi/public/", description="GOCDB PI.")
    egi_checkin_client_secret: str | None = Field(None, exclude=True, repr=False)
    egi_checkin_refresh_token: str | None = Field(None, exclude=True, repr=False)
    region_name: str | None = Field(None, description="Region of the service catalog to use "
                                    "(when the cloud has several).")
    interface: Literal["public", "internal", "admin"] = Field(
        "public", description="Endpoint interface of the service catalog to use.")
    username: str | None = Field(None, description="Keystone user (auth = password, or with "
                                 "application_credential_name).")
    user_domain_name: str = Field("Default", description="Domain of username.")
    password_file: Path | None = Field(None, description="File (mode 0600) holding the "
                                       "password.")
    password_env: str | None = Field(None, pattern=ENV_NAME, description="Environment "
                                     "variable holding the password.")
    project_name: str | None = Field(None, description="Project to scope to (auth = "
                                     "password); or project_id.")
    project_id: str | None = Field(None, description="Project id to scope to (auth = "
                                   "password), instead of project_name.")
    project_domain_name: str = Field("Default", description="Domain of project_name.")
    application_credential_id: str | None = Field(None, description="Application credential "
                                                  "id (auth = application_credential).")
    application_credential_name: str | None = Field(None, description="Application "
                                                    "credential name, with username, "
                                                    "instead of its id.")
    application_credential_secret_file: Path | None = Field(None, description="File (mode "
                                                            "0600) holding the application "
                                                            "credential's secret.")
    application_credential_secret_env: str | None = Field(None, pattern=ENV_NAME,
                                                          description="Environment variable "
                                                          "holding the application "
                                                          "credential's secret.")
    networks: list[str] = Field(default_factory=lambda: ["auto"], description="'auto', "
                                "'none' or network ids.")
    security_groups: list[str] = Field(default_factory=list, description="Security groups "
                                       "(names) of every new server; none given: Nova's "
                                       "default.")
    key_name: str | None = Field(None, description="Nova key pair given to every new server.")
    availability_zone: str | None = Field(None, description="Availability zone of every new "
                                          "server; unset: Nova chooses.")
    boot_volume_gb: int = Field(0, ge=0, description="Boot from a new volume of this size "
                                "(deleted with the server); 0 boots from the image.")
    ca_file: Path | None = Field(None, description="CA bundle for the cloud's TLS.")
    api_timeout_seconds: float = Field(60.0, gt=0, description="Timeout of one API call.")
    api_retries: int = Field(3, ge=0, le=10, description="Retries of idempotent calls on "
                             "connection errors and 5xx (creates are never retried).")
    full_listing_seconds: float = Field(600.0, ge=0, description="List every server at "
                                        "least this often; in between, list only the "
                                        "servers Nova shows changed (changes-since). 0 "
                                        "lists everything every cycle, as VCycle did.")
    password: str | None = Field(None, exclude=True, repr=False)
    application_credential_secret: str | None = Field(None, exclude=True, repr=False)

    @field_validator("password", "application_credential_secret", "egi_checkin_client_secret",
                     "egi_checkin_refresh_token")
    @classmethod
    def _no_inline(cls, value: str | None, info: ValidationInfo) -> None:
        name = info.field_name or "password"
        if value is not None:
            raise ValueError(f"inline secrets are refused; use {INLINE_SECRETS[name]}")
        return None

    @field_validator("auth_url")
    @classmethod
    def _keystone_v3(cls, value: str | None) -> str | None:
        if value is not None and re.search(r"/v2(\.\d+)?/?$", value):
            raise ValueError("a Keystone v2 URL (ending in /v2.0, as VCycle's url often did): "
                             "cloudvac speaks Keystone v3 only; end it in /v3 instead")
        return value

    @field_validator("networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        if len(value) > 1 and ({"auto", "none"} & set(value)):
            raise ValueError("'auto' and 'none' cannot be combined with network ids")
        return value

    @property
    def checkin_grant(self) -> str:
        if self.egi_checkin_grant is not None:
            return self.egi_checkin_grant
        has_refresh = self.egi_checkin_refresh_token_file or self.egi_checkin_refresh_token_env
        return "refresh_token" if has_refresh else "client_credentials"

    @model_validator(mode="after")
    def _credentials(self) -> OpenStackSpace:
        missing = [what for present, what in self._requirements() if not present]
        if self.auth != "egi_checkin" and self.auth_url is None:
            missing.insert(0, "auth_url")  # with the rest: all in one message
        if missing:
            raise ValueError(f"auth = {self.auth} needs {', '.join(missing)}")
        return self

    def _requirements(self) -> tuple[tuple[bool, str], ...]:
        """What the chosen auth method needs: (whether it is configured, what to set)."""
        if self.auth == "egi_checkin":
            grant, discover = self.checkin_grant, bool(self.egi_site and self.egi_vo)
            return (
                (bool(self.egi_checkin_client_id), "egi_checkin_client_id"),
                (grant != "refresh_token" or bool(self.egi_checkin_refresh_token_file
                                                  or self.egi_checkin_refresh_token_env),
                 "egi_checkin_refresh_token_file or _env"),
                (grant != "client_credentials" or bool(self.egi_checkin_client_secret_file
                                                       or self.egi_checkin_client_secret_env),
                 "egi_checkin_client_secret_file or _env"),
                (self.auth_url is not None or discover,
                 "auth_url, or egi_site and egi_vo for discovery"),
                (self.egi_project_id is not None or discover,
                 "egi_project_id, or egi_site and egi_vo for discovery"),
            )
        if self.auth == "password":
            return (
                (self.username is not None, "username"),
                (self.project_name is not None or self.project_id is not None,
                 "project_name or project_id"),
                (self.password_file is not None or self.password_env is not None,
                 "password_file or password_env"),
            )
        return (
            (self.application_credential_id is not None or (
                self.application_credential_name is not None and self.username is not None),
             "application_credential_id (or _name with username)"),
            (self.application_credential_secret_file is not None
             or self.application_credential_secret_env is not None,
             "application_credential_secret_file or _secret_env"),
        )
        if self.auth_url is None:
            raise ValueError(f"auth = {self.auth} needs auth_url")
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
