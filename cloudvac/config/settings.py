"""The ``[settings]`` section (one per installation), and what every config model shares.

Option names follow VCycle's where the meaning is the same.  The models are the truth about
options, defaults and limits; ``docs/options.md`` is generated from them.  Every model forbids
unknown options, so a typo is an error naming the option rather than a silently ignored line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

PositiveSeconds = Annotated[float, Field(gt=0)]
Seconds = Annotated[int, Field(ge=0)]


class ConfigModel(BaseModel):
    """Frozen, whitespace-stripped, and no unknown option."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Settings(ConfigModel):
    """The ``[settings]`` section: one per installation."""

    state_dir: Path = Field(Path("/var/lib/cloudvac"), description="Directory for the database, "
                            "the server secret and uploaded VM files.")
    database: str | None = Field(None, description="SQLAlchemy URL of the store; default "
                                 "sqlite:///STATE_DIR/cloudvac.db. postgresql://... for HA.")
    manager_id: str = Field("cloudvac", pattern=r"^[a-z0-9][a-z0-9.-]{0,62}$",
                            description="Cluster id written to every VM's cloudvac:manager tag; "
                            "only VMs carrying it are ever touched.")
    cycle_seconds: PositiveSeconds = Field(60.0, description="Period of the cycle of each space.")
    space_timeout_seconds: PositiveSeconds = Field(
        300.0, description="Deadline of one space's cycle; a space that overruns is cancelled "
        "and reported, others carry on.")
    api_concurrency: int = Field(4, ge=1, le=64, description="Cloud calls in flight per space.")
    web_listen: str = Field("127.0.0.1:8080", pattern=r"^[^:\s]+:\d{1,5}$",
                            description="HOST:PORT the VM-facing web service binds. Plain HTTP "
                            "is only allowed on loopback; elsewhere set web_tls_cert/_key.")
    web_url: str | None = Field(None, pattern=r"^https?://[^/\s]+$", description="Base URL "
                                "VMs use to reach cloudvac; default from web_listen.")
    web_tls_cert: Path | None = Field(None, description="PEM certificate (chain) for HTTPS.")
    web_tls_key: Path | None = Field(None, description="PEM private key for HTTPS.")
    web_header_timeout_seconds: float = Field(
        10.0, gt=0, le=300, description="A client must send a request's line and headers "
        "within this long of connecting (or of its first byte on a kept-alive connection); "
        "else it gets 408 and the connection is closed (slow-loris).")
    web_body_timeout_seconds: float = Field(
        30.0, gt=0, le=3600, description="A request's whole body must arrive within this long "
        "of its headers (time the application spends not reading is not counted); else 408 "
        "and the connection is closed. upload_max_file_bytes over this is the slowest upload "
        "accepted: 1 MiB in 30 s is 35 kB/s.")
    web_keepalive_seconds: int = Field(5, ge=1, le=300, description="An idle kept-alive "
                                       "connection is closed after this long.")
    web_max_connections: int = Field(
        0, ge=0, le=1_000_000, description="Open connections per listener. At the limit, a "
        "connection that has waited over a second without sending a whole request is closed "
        "to admit the new one, else the new one gets 503 and is closed unread. 0: 75 % of the "
        "open-file limit (raised to the hard limit at start-up), at most 4096.")
    web_rate_per_client: float = Field(
        200.0, ge=0, le=1_000_000, description="Requests per second one client address may "
        "sustain (token bucket); over it, 429 with Retry-After. Generous on purpose: many VMs "
        "may share one NAT address, and 200/s is 12,000 VMs heartbeating once a minute. "
        "0: no limit.")
    web_rate_burst: int = Field(2000, ge=1, le=1_000_000, description="Requests one client "
                                "address may send at once above web_rate_per_client.")
    upload_max_file_bytes: int = Field(1 << 20, ge=1024, description="Largest upload per file.")
    upload_max_machine_bytes: int = Field(16 << 20, ge=1024, description="Largest total of "
                                          "one machine's uploads.")
    log_retention_hours: float = Field(72.0, gt=0, description="Uploaded files of ended "
                                       "machines are removed after this.")
    token_grace_seconds: int = Field(86400, ge=0, description="VM tokens stay valid this long "
                                     "after max_wallclock_seconds.")
    wake_seconds: float = Field(2.0, ge=0, description="A VM's shutdown_message, or a "
                                "deletion, brings its space's next cycle forward to this much "
                                "later (it takes that cycle's slot: no more cycles per hour), "
                                "so a freed slot is refilled in seconds; 0: never early.")
    ended_upload_grace_seconds: float = Field(
        900.0, ge=0, description="Once cloudvac saw a machine end (stopped, failed, or its "
        "deletion asked), the machine's token still uploads its final shutdown_message and "
        "logs for this long, and nothing else; then it is refused (410).")
    operator_listen: str = Field("127.0.0.1:8081", pattern=r"^[^:\s]+:\d{1,5}$",
                                 description="HOST:PORT of the operator's door (status, "
                                 "metrics, health, the OpenAPI document), never the VMs' "
                                 "port. Anything but loopback needs operator_tls_cert/_key and "
                                 "operator_token_file or operator_tls_client_ca.")
    operator_token_file: Path | None = Field(None, description="File (mode 0600) holding the "
                                             "bearer token operators send "
                                             "(Authorization: Bearer); required on every "
                                             "operator request when set.")
    operator_tls_cert: Path | None = Field(None, description="PEM certificate (chain) of the "
                                           "operator's door.")
    operator_tls_key: Path | None = Field(None, description="PEM private key of the operator's "
                                          "door.")
    operator_tls_client_ca: Path | None = Field(None, description="PEM CA bundle: the "
                                                "operator's door then requires a client "
                                                "certificate it signed.")

    apel_outgoing_dir: Path | None = Field(None, description="APEL: write one individual job "
                                           "record (v0.4) per finished machine (and a "
                                           "cloud record in spaces with "
                                           "apel_cloud_records) into this "
                                           "dirq directory, which ssmsend sends (e.g. "
                                           "/var/spool/apel/outgoing/cloudvac); unset: none.")
    apel_submit_host: str | None = Field(None, description="APEL SubmitHost; default "
                                         "SPACE/cloudvac-MACHINETYPE.")
    apel_infrastructure: str = Field("cloudvac-OpenStack", pattern=r"^[A-Za-z0-9._-]{1,64}$",
                                     description="APEL InfrastructureDescription.")
    apel_records_per_message: int = Field(1000, ge=1, le=5000, description="APEL records "
                                          "per message (the APEL client's default and "
                                          "maximum).")

    @property
    def web_base_url(self) -> str:
        if self.web_url:
            return self.web_url
        scheme = "https" if self.web_tls_cert else "http"
        return f"{scheme}://{self.web_listen}"

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.state_dir / 'cloudvac.db'}"
