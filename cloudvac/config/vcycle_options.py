"""The option-by-option part of ``import-vcycle`` (``vcycle_import`` drives it): each
VCycle option of a space, machinetype or vacuum pipe becomes the cloudvac option
``vcycle_names`` says, or a ``Note`` saying why not; the options that need more than a
rename (a base64 password into a secret file, a Keystone v2 URL into v3, a relative path
under VCycle's machinetype directory, a squid machinetype moved into the space) have a
converter here.  Values are copied into the new files, never into notes.
"""

from __future__ import annotations

import base64
import binascii
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cloudvac.config.ini import Location, Section
from cloudvac.config.vcycle_names import VcycleOption, entries

NoteKind = Literal["not carried", "changed", "converted", "check", "note"]
VCYCLE_SPACES = Path("/var/lib/vcycle/spaces")
VCYCLE_SQUID_PORT = 280
IGNORED_WHEN = {("space", "project_name"): "tenancy_name",
                ("space", "processors_limit"): "max_processors",
                ("machinetype", "flavor_names"): "flavor_name",
                ("machinetype", "https_x509dn"): "x509dn"}
"""VCycle option -> the option that wins over it when both are set (VCycle's code)."""
_V2 = re.compile(r"/v2(\.\d+)?/?$")


@dataclass(frozen=True, slots=True)
class Note:
    """One thing the operator must know about a VCycle option (never its value)."""

    where: Location
    section: str
    option: str | None
    kind: NoteKind
    message: str

    def __str__(self) -> str:
        return f"{self.where}: [{self.section}]" + (f" {self.option}:" if self.option
                                                     else "") + f" {self.message}"


@dataclass(frozen=True, slots=True)
class Secret:
    """A secret to write to ``path`` (mode 0600); ``what``: where it came from."""

    path: Path
    what: str
    value: str = field(repr=False)


@dataclass(slots=True)
class Block:
    """One cloudvac section being written: options in order, each with the comment lines
    written above it (``None``: a comment on its own)."""

    header: str
    entries: list[tuple[str | None, list[str]]] = field(default_factory=list)

    @property
    def options(self) -> dict[str, str]:
        """option -> its line."""
        return {o: lines[-1] for o, lines in self.entries if o is not None}

    def set(self, option: str, value: str, comment: str = "") -> None:
        """Set ``option`` (replacing its line if it is set, where it is)."""
        line = f"{option} = " + "\n    ".join(value.splitlines() or [""])
        lines = [*_comment(comment), line]
        for number, (name, _) in enumerate(self.entries):
            if name == option:
                self.entries[number] = (option, lines)
                return
        self.entries.append((option, lines))

    def comment(self, text: str) -> None:
        self.entries.append((None, _comment(text)))

    @property
    def lines(self) -> list[str]:
        return [line for _, lines in self.entries for line in lines]

    def text(self) -> str:
        return "\n".join([f"[{self.header}]", *self.lines]) + "\n"


def _comment(text: str) -> list[str]:
    return [f"# {line}" for line in textwrap.wrap(text, 86, break_on_hyphens=False)]


@dataclass(frozen=True, slots=True)
class Item:
    """One VCycle option being converted."""

    section: Section
    kind: Literal["space", "machinetype"]
    option: str
    value: str
    where: Location


@dataclass(slots=True)
class SpaceJob:
    """One VCycle space being converted, with what its options give ``[settings]``."""

    name: str
    section: Section
    secrets_dir: Path
    space: Block = field(init=False)
    blocks: list[Block] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    secrets: list[Secret] = field(default_factory=list)
    https_host: str | None = None
    https_port: int | None = None
    cleanup_hours: int | None = None
    squid: tuple[str, str] | None = None
    """(cloudvac's squid_machinetype, the machinetype that gave it)."""
    auth: str = "password"

    def __post_init__(self) -> None:
        self.space = Block(f"space {self.name}")

    def note(self, where: Location, option: str | None, kind: NoteKind, message: str,
             section: Section | None = None) -> None:
        title = (section or self.section).title
        self.notes.append(Note(where, title, option, kind, message))

    def heading(self, sources: list[Path]) -> str:
        """The comment at the top of each written file."""
        return "\n".join(_comment(f"Converted from VCycle's configuration "
                                  f"({', '.join(map(str, sources))}) by cloudvac "
                                  "import-vcycle: read its report, then run cloudvac "
                                  "validate.")) + "\n"

    def text(self, sources: list[Path]) -> str:
        return "\n".join([self.heading(sources), self.space.text(),
                          *(b.text() for b in self.blocks)])


Converter = Callable[[SpaceJob, Block, Item], None]


def convert_space_options(job: SpaceJob) -> None:
    """The ``[space]`` options, in VCycle's order, with the auth method they imply."""
    values = {k: v for k, (v, _) in job.section.values.items()}
    job.space.set("api", "openstack")
    creds = "cred_id" in values and "cred_secret" in values
    password = "username" in values and "password_base64" in values
    v3 = values.get("api_version", "").strip().startswith("3")
    job.auth = "application_credential" if creds and (v3 or not password) else "password"
    job.space.set("auth", job.auth)
    for option, (value, where) in job.section.values.items():
        if option == "api":
            continue
        item = Item(job.section, "space", option, value, where)
        _carry(job, job.space, item, SPACE_CONVERTERS.get(option))


def convert_machinetype(job: SpaceJob, section: Section) -> None:
    """A ``[machinetype]`` section; relative paths are taken under VCycle's
    ``machinetype_path``."""
    block = Block(section.title)
    job.blocks.append(block)
    _machinetype_options(job, block, section, ())
    if "user_data" not in block.options:
        _no_template(job, block, section)


def convert_pipe(job: SpaceJob, section: Section) -> None:
    """A ``[vacuum_pipe SPACE PREFIX]`` section: carried as it is (cloudvac reads pipes),
    its machinetype options converted like a machinetype's (relative paths under VCycle's
    PREFIX directory, as VCycle's pipe expansion set ``machinetype_path``)."""
    block = Block(section.title)
    job.blocks.append(block)
    own = ("vacuum_pipe_url", "target_share")
    for option in own:
        if option in section.values:
            value, where = section.values[option]
            block.set(option, value)
            row = entries("vacuum_pipe", option)[0]
            if row.note:
                job.note(where, option, "changed" if row.changed else "note", row.note, section)
    url = section.values.get("vacuum_pipe_url", ("", section.header))[0]
    if not url.startswith("https://"):
        job.note(section.header, "vacuum_pipe_url", "check", "cloudvac fetches pipes over "
                 "https:// only: give the pipe's https URL", section)
    _machinetype_options(job, block, section, own)


def _machinetype_options(job: SpaceJob, block: Block, section: Section,
                         skip: tuple[str, ...]) -> None:
    for option, (value, where) in section.values.items():
        if option in skip:
            continue
        item = Item(section, "machinetype", option, value, where)
        converter = MACHINETYPE_CONVERTERS.get(option)
        if converter is None and option.startswith("user_data_file_"):
            converter = _user_data_file
        _carry(job, block, item, converter)


def _carry(job: SpaceJob, block: Block, item: Item, converter: Converter | None) -> None:
    winner = IGNORED_WHEN.get((item.kind, item.option))
    if winner is not None and winner in item.section.values:
        job.note(item.where, item.option, "not carried", f"{winner} is set too, and wins "
                 "(as in VCycle)", item.section)
        return
    rows = _rows(item.kind, item.option)
    if not rows:
        job.note(item.where, item.option, "not carried", "not a VCycle option of this "
                 "section (VCycle ignored it)", item.section)
        return
    if rows[0].carried is None:
        job.note(item.where, item.option, "changed" if rows[0].changed else "not carried",
                 ("not carried: " if rows[0].changed else "") + rows[0].note, item.section)
        return
    if converter is not None:
        converter(job, block, item)
        return
    targets = [row.carried.replace("*", item.option[len(row.vcycle) - 1:])
               for row in rows if row.carried is not None]
    for target in targets:
        block.set(target, item.value)
    row, now = rows[0], " and ".join(targets)
    if row.changed:
        job.note(item.where, item.option, "changed", f"now {now}: {row.note}", item.section)
    elif targets != [item.option]:
        job.note(item.where, item.option, "converted", f"now {now}" + (
            f": {row.note}" if row.note else ""), item.section)
    elif row.note:
        job.note(item.where, item.option, "note", row.note, item.section)


def _rows(kind: str, option: str) -> tuple[VcycleOption, ...]:
    return entries(kind, option, api="openstack")  # type: ignore[arg-type]


def _url(job: SpaceJob, block: Block, item: Item) -> None:
    url = item.value.strip()
    v3 = _V2.sub("/v3", url)
    block.set("auth_url", v3)
    if v3 != url:
        job.note(item.where, "url", "changed", "now auth_url, a Keystone v2 URL rewritten to "
                 "v3 (/v2.0 replaced by /v3): cloudvac speaks Keystone v3 only; check that "
                 "the v3 URL answers")
    else:
        job.note(item.where, "url", "converted", "now auth_url" + (
            "" if url.rstrip("/").endswith("/v3") else ": it does not end in /v3, check "
            "that it is the Keystone v3 endpoint"))


def _secret(job: SpaceJob, block: Block, item: Item, option: str, value: str) -> None:
    path = job.secrets_dir / f"{job.name}.{option.removesuffix('_file')}"
    job.secrets.append(Secret(path, f"[{item.section.title}] {item.option}", value))
    block.set(option, str(path))
    job.note(item.where, item.option, "converted", f"now {option}: written to {path} "
             "(mode 0600), never into the configuration")


def _password(job: SpaceJob, block: Block, item: Item) -> None:
    if job.auth != "password":
        job.note(item.where, item.option, "not carried", "VCycle authenticated this space "
                 "with cred_id/cred_secret (api_version 3): the password was unused")
        return
    try:
        password = base64.b64decode(item.value.strip(), validate=True).decode().strip()
    except (binascii.Error, UnicodeDecodeError):
        password = ""
    if not password:
        job.note(item.where, item.option, "not carried", "not base64 text, or empty: VCycle "
                 "would have used an empty password; put the password in a file of mode "
                 "0600 and name it with password_file")
        return
    _secret(job, block, item, "password_file", password)


def _credential(job: SpaceJob, block: Block, item: Item) -> None:
    if job.auth != "application_credential":
        job.note(item.where, item.option, "not carried", "VCycle authenticated this space "
                 "with username/password_base64 (api_version 2): the credential was unused")
        return
    if item.option == "cred_id":
        block.set("application_credential_id", item.value)
        job.note(item.where, item.option, "converted", "now application_credential_id, "
                 "with auth = application_credential")
    else:
        _secret(job, block, item, "application_credential_secret_file", item.value.strip())


def _zones(job: SpaceJob, block: Block, item: Item) -> None:
    zones = item.value.split()
    if zones:
        block.set("availability_zone", zones[0])
    others = len(zones) - 1
    more = f"; {others} other{'s' if others > 1 else ''} not carried" if others else ""
    job.note(item.where, item.option, "changed" if more else "converted",
             f"now availability_zone (one zone: VCycle picked one of several at random per "
             f"VM){more}")


def _web(job: SpaceJob, block: Block, item: Item) -> None:
    if item.option == "https_host":
        job.https_host = item.value.strip().lower()
    elif item.option == "https_port" and item.value.strip().isdigit():
        job.https_port = int(item.value.strip())
    elif item.option == "cleanup_hours" and item.value.strip().isdigit():
        job.cleanup_hours = int(item.value.strip())
    else:
        job.note(item.where, item.option, "not carried", "not a whole number (VCycle "
                 "refused it too)")
        return
    row = _rows("space", item.option)[0]
    job.note(item.where, item.option, "changed" if row.changed else "converted",
             f"now {row.carried} in [settings]: {row.note}")


def _no_template(job: SpaceJob, block: Block, section: Section) -> None:
    """Without its template a machinetype would boot VMs that do nothing: not one is
    made until the operator gives one."""
    share = block.options.get("target_share")
    if share is not None and not share.endswith("= 0"):
        block.set("target_share", "0", "set to 0 by import-vcycle until user_data is set "
                  f"(see its report); VCycle had {share.partition('= ')[2]}")
        job.note(section.header, "target_share", "check", "set to 0: this machinetype has "
                 "no user_data cloudvac can use, so its VMs would do nothing; give user_data "
                 "(a local template, or builtin:NAME) and restore the share", section)


def _user_data(job: SpaceJob, block: Block, item: Item) -> None:
    value = item.value.strip()
    if re.match(r"^[a-z]+://", value):
        job.note(item.where, item.option, "not carried", "a URL: VCycle fetched the template "
                 "at every creation, cloudvac reads a local file; download it (and keep it "
                 "up to date), then set user_data to its absolute path", item.section)
        return
    block.set("user_data", str(_local(item.section, value)))
    job.note(item.where, item.option, "changed", "a VCycle template: cloudvac fills its "
             "##user_data_*## placeholders too, but its uploads to "
             "##user_data_joboutputs_url## must send the header 'Authorization: Bearer "
             "##user_data_joboutputs_token##' instead of an X.509 certificate (cloudvac "
             "validate says if one does not)", item.section)


def _user_data_file(job: SpaceJob, block: Block, item: Item) -> None:
    path = _local(item.section, item.value.strip())
    block.set(item.option, str(path))
    if str(path) != item.value.strip():
        job.note(item.where, item.option, "converted", f"relative path made absolute under "
                 f"VCycle's machinetype directory: {path}", item.section)


def _local(section: Section, value: str) -> Path:
    """VCycle's relative paths are under ``<machinetype_path>/files/``."""
    if Path(value).is_absolute():
        return Path(value)
    base = section.values.get("machinetype_path", ("", section.header))[0].strip()
    directory = Path(base) if base else VCYCLE_SPACES / section.key[1] / "machinetypes" / \
        section.key[2]
    return directory / "files" / value


def _root_image(job: SpaceJob, block: Block, item: Item) -> None:
    value = item.value.strip()
    if value.startswith("image:"):
        block.set("root_image", value.removeprefix("image:"))
        job.note(item.where, item.option, "converted", "image:NAME is now NAME",
                 item.section)
        return
    block.set("root_image", value)
    job.note(item.where, item.option, "changed", "a URL or a path: cloudvac never downloads "
             "or uploads images, it boots the Glance image of that name, which VCycle "
             "uploaded under this very name; check that it is in Glance (or upload it and "
             "give its name or id)", item.section)


def _squid(job: SpaceJob, block: Block, item: Item) -> None:
    name, _, port = item.value.strip().partition(":")
    value = f"{name}:{port or VCYCLE_SQUID_PORT}"
    if job.squid is not None and job.squid[0] != value:
        job.note(item.where, item.option, "not carried", f"cloudvac has one "
                 f"squid_machinetype per space: [machinetype {job.name} {job.squid[1]}]'s "
                 "is kept", item.section)
        return
    job.squid = (value, item.section.key[2])
    job.space.set("squid_machinetype", value)
    job.note(item.where, item.option, "changed", "now squid_machinetype in [space] (for "
             "every machinetype of it), with VCycle's port written out: cloudvac's default "
             f"is 3128, VCycle's was {VCYCLE_SQUID_PORT}", item.section)


def _heartbeat_seconds(job: SpaceJob, block: Block, item: Item) -> None:
    if "heartbeat_file" in item.section.values:
        block.set("heartbeat_seconds", item.value)
        return
    job.note(item.where, item.option, "not carried", "no heartbeat_file: VCycle never "
             "checked heartbeats without one (cloudvac refuses the pair half-set)",
             item.section)


SPACE_CONVERTERS: dict[str, Converter] = {
    "url": _url, "password_base64": _password, "cred_id": _credential,
    "cred_secret": _credential, "zones": _zones, "https_host": _web, "https_port": _web,
    "cleanup_hours": _web}
MACHINETYPE_CONVERTERS: dict[str, Converter] = {
    "user_data": _user_data, "root_image": _root_image, "cvmfs_proxy_machinetype": _squid,
    "heartbeat_seconds": _heartbeat_seconds}
