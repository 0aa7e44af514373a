"""VCycle's configuration converted to cloudvac's (``cloudvac import-vcycle``).

VCycle reads ``/etc/vcycle.d/*.conf`` in name order, then ``/etc/vcycle.conf``, into one
parser: sections of the same name merge and later values win, which is what
``ini.read_files`` does with the files in that order.  ``convert`` turns the result into
cloudvac files (``00-settings.conf``, one ``10-SPACE.conf`` per space, as the
demonstrator kept one file per cloud) and secret files, and says, as ``Note``s located at
VCycle's lines, every option it could not carry over and why, every meaning that changed,
and every rename or conversion.  What becomes of each option is ``vcycle_names``' table;
this module does the conversions that need more than a rename (module ``vcycle_options``).

Nothing here writes (``vcycle_output.write`` does), and no secret value is ever in a note,
a comment or a ``repr``: passwords and application-credential secrets go to ``Secret``s,
written as files of mode 0600 that the configuration names.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cloudvac.config.ini import Location, Section, read_files
from cloudvac.config.vcycle_options import (
    Block,
    Note,
    NoteKind,
    Secret,
    SpaceJob,
    convert_machinetype,
    convert_pipe,
    convert_space_options,
)

SETTINGS_FILE = "00-settings.conf"
VCYCLE_HTTPS_PORT = 443


@dataclass(slots=True)
class Conversion:
    """What ``convert`` made: file name -> text, the secrets, the notes."""

    files: dict[str, str] = field(default_factory=dict)
    secrets: list[Secret] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    read: list[Path] = field(default_factory=list)
    spaces: list[str] = field(default_factory=list)
    """The spaces converted."""


def vcycle_files(conf: Path | None, directory: Path | None) -> list[Path]:
    """VCycle's reading order: ``directory``'s ``*.conf`` by name, then ``conf``."""
    found = sorted(p for p in directory.glob("*.conf") if p.is_file()) \
        if directory is not None and directory.is_dir() else []
    return [*found, *([conf] if conf is not None and conf.is_file() else [])]


def convert(paths: list[Path], secrets_dir: Path, hostname: str | None = None) -> Conversion:
    """Convert VCycle's files ``paths`` (in reading order); secret files are named under
    ``secrets_dir``; ``hostname``: VCycle's default https_host (this host's name)."""
    doc = read_files(paths)
    result = Conversion(read=list(doc.files))
    result.notes += [Note(i.location, i.section or "", i.option, "check", i.message)
                     for i in doc.issues]
    spaces: dict[str, Section] = {}
    children: dict[str, list[Section]] = {}
    for key, section in doc.sections.items():
        if key[0] == "space" and len(key) == 2:
            spaces[key[1]] = section
        elif key[0] in ("machinetype", "vacuum_pipe") and len(key) == 3:
            children.setdefault(key[1], []).append(section)
        else:
            result.notes.append(Note(section.header, section.title, None, "not carried",
                                     "VCycle knows only [space], [machinetype] and "
                                     "[vacuum_pipe] sections (it refused this one)"))
    for name, sections in children.items():
        if name not in spaces:
            result.notes += [Note(s.header, s.title, None, "not carried", f"no [space {name}]"
                                  " section: VCycle refused it too") for s in sections]
    jobs = []
    for name in sorted(spaces):
        job = SpaceJob(name, spaces[name], secrets_dir)
        if _space(job, children.get(name, []), result):
            jobs.append(job)
    if jobs:
        result.files[SETTINGS_FILE] = _settings(jobs, hostname or os.uname().nodename,
                                                result.notes, paths)
    for job in jobs:
        result.files[f"10-{job.name}.conf"] = job.text(paths)
        result.spaces.append(job.name)
        result.secrets += job.secrets
        result.notes += job.notes
    return result


def _space(job: SpaceJob, children: list[Section], result: Conversion) -> bool:
    """Convert one space and its machinetypes and pipes into ``job``; False if the space
    is not converted at all (another API), with notes saying so."""
    api = job.section.values.get("api", ("", job.section.header))[0].strip()
    if api != "openstack":
        why = f"api = {api}" if api else "no api"
        result.notes.append(Note(job.section.header, job.section.title, "api", "not carried",
                                 f"{why}: cloudvac converts OpenStack spaces only (the space "
                                 "and its machinetypes are not carried over)"))
        return False
    if not any(s.key[0] == "machinetype" for s in children):
        job.note(job.section.header, None, "check", "no [machinetype] section: VCycle "
                 "refused such a space, and so does cloudvac")
    convert_space_options(job)
    for section in sorted(children, key=lambda s: s.key):
        if section.key[0] == "machinetype":
            convert_machinetype(job, section)
        else:
            convert_pipe(job, section)
    return True


def _settings(jobs: list[SpaceJob], hostname: str, notes: list[Note],
              sources: list[Path]) -> str:
    """``[settings]``: VCycle set these per space; cloudvac once for every space."""
    block = Block("settings")
    urls = {job.name: _web_url(job, hostname) for job in jobs}
    first = jobs[0]
    block.comment("VMs reached VCycle's Apache at https_host:https_port of their space; "
                  "cloudvac serves them itself, at web_url (one for every space). Set "
                  "web_listen and the TLS files Apache used, or put a proxy in front:")
    block.set("web_url", urls[first.name])
    if first.https_host is None:
        notes.append(Note(first.section.header, first.section.title, "https_host", "check",
                          "not set: VCycle used this host's name, so web_url is "
                          f"{urls[first.name]} (in {SETTINGS_FILE}); change it if VMs "
                          "reach this host by another name"))
    block.comment("web_listen = 0.0.0.0:443")
    block.comment("web_tls_cert = /etc/grid-security/hostcert.pem")
    block.comment("web_tls_key = /etc/grid-security/hostkey.pem")
    for job in jobs[1:]:
        if urls[job.name] != urls[first.name]:
            notes.append(Note(_where(job, ("https_host", "https_port")), job.section.title,
                              "https_host", "changed", f"differs from [space {first.name}]'s:"
                              " cloudvac has one web_url for every space, the first one's"))
    hours = [(int(h), job) for job in jobs if (h := job.cleanup_hours) is not None]
    if hours:
        block.set("log_retention_hours", str(max(h for h, _ in hours)))
        if len({h for h, _ in hours}) > 1:
            notes.append(Note(_where(hours[0][1], ("cleanup_hours",)),
                              hours[0][1].section.title, "cleanup_hours", "changed",
                              "the spaces differ: cloudvac keeps one log_retention_hours "
                              "for every space, the largest"))
    return f"{jobs[0].heading(sources)}\n{block.text()}"


def _web_url(job: SpaceJob, hostname: str) -> str:
    host = job.https_host or hostname
    port = job.https_port or VCYCLE_HTTPS_PORT
    return f"https://{host}" + ("" if port == VCYCLE_HTTPS_PORT else f":{port}")


def _where(job: SpaceJob, options: Iterable[str]) -> Location:
    for option in options:
        if option in job.section.values:
            return job.section.values[option][1]
    return job.section.header


class ImportRefused(RuntimeError):
    """Files that already exist (and ``force`` was not given)."""

    def __init__(self, existing: list[Path]) -> None:
        self.existing = existing
        super().__init__("would overwrite " + ", ".join(map(str, existing)))


def write(conversion: Conversion, out: Path, force: bool = False) -> list[Path]:
    """Write ``conversion`` into ``out`` (secret files with mode 0600, in directories of
    mode 0700 when they are new), secrets first so that no written file names a missing
    one; raise ``ImportRefused`` before writing anything if a file exists and not
    ``force``."""
    confs = [(out / name, text) for name, text in conversion.files.items()]
    targets = [p for p, _ in confs] + [s.path for s in conversion.secrets]
    existing = [p for p in targets if p.exists() or p.is_symlink()]
    if existing and not force:
        raise ImportRefused(existing)
    written = []
    for secret in conversion.secrets:
        secret.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if secret.path.is_symlink():
            secret.path.unlink()  # never write a secret through a link
        fd = os.open(secret.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(secret.value + "\n")
        written.append(secret.path)
    out.mkdir(parents=True, exist_ok=True)
    for path, text in confs:
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


GROUPS: tuple[tuple[NoteKind, str], ...] = (
    ("not carried", "Not carried over"),
    ("changed", "Meaning changed"),
    ("check", "To check"),
    ("converted", "Renamed or converted"),
    ("note", "Carried with the same meaning, worth knowing"),
)


def report(conversion: Conversion) -> list[str]:
    """The notes as text, grouped by kind (see ``GROUPS``), in VCycle's file order."""
    lines: list[str] = []
    for kind, title in GROUPS:
        notes = [n for n in conversion.notes if n.kind == kind]
        if notes:
            lines += ["", f"{title} ({len(notes)}):"]
            lines += [f"  {n}" for n in sorted(notes, key=_order(conversion.read))]
    return lines


def _order(files: list[Path]) -> Callable[[Note], tuple[int, int]]:
    rank = {path: number for number, path in enumerate(files)}
    return lambda n: (rank.get(n.where.file, len(rank)), n.where.line)
