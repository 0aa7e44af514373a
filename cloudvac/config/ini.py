"""An INI reader that remembers where every value came from.

``configparser`` has the right semantics but forgets file and line, and cloudvac's
promise is that every configuration error names both.  This reader keeps configparser's
dialect (``key = value`` or ``key: value``, ``#``/``;`` comment lines, `` ;``/`` #``
inline comments, indented continuation lines, case-insensitive section words and option
names, later files overriding earlier ones) and records a ``Location`` per value.

What configparser would hide is said: a file that cannot be read (or is not UTF-8) is an
issue at that file and listed in ``unreadable``; a file with nothing but blanks is listed
in ``empty`` (the loader decides what that means for the spaces it held); a section
header met again (in another file, or later in the same one) is a warning naming both
places and the options the later one overrides — the sections are merged and the later
value wins, as documented.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_SECTION = re.compile(r"^\[(?P<header>[^\]]*)\]\s*(?:[;#].*)?$")
_OPTION = re.compile(r"^(?P<key>[A-Za-z0-9_.-]+)\s*[=:]\s?(?P<value>.*)$")
_INLINE_COMMENT = re.compile(r"\s[;#].*$")


@dataclass(frozen=True, slots=True)
class Location:
    file: Path
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Issue:
    """One configuration problem, located as precisely as the input allows."""

    location: Location
    section: str | None
    option: str | None
    message: str

    def __str__(self) -> str:
        text = f"{self.location}:"
        if self.section:
            text += f" [{self.section}]"
        if self.option:
            text += f" {self.option}:"
        return f"{text} {self.message}"


@dataclass(slots=True)
class Section:
    """A section merged over all files; ``values`` maps option -> (value, where)."""

    key: tuple[str, ...]
    header: Location
    values: dict[str, tuple[str, Location]] = field(default_factory=dict)
    files: set[Path] = field(default_factory=set)
    headers: list[Location] = field(default_factory=list)
    """Every place the header appears, in reading order (the first is ``header``)."""
    overrides: list[tuple[str, Location]] = field(default_factory=list)
    """(option, where) for every value that replaced one set in another file."""

    @property
    def title(self) -> str:
        return " ".join(self.key)

    def where(self, option: str | None) -> Location:
        if option is not None and option in self.values:
            return self.values[option][1]
        return self.header


@dataclass(slots=True)
class IniDocument:
    sections: dict[tuple[str, ...], Section] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    tainted: dict[tuple[str, ...], list[Issue]] = field(default_factory=dict)
    """Sections that had a syntax problem."""
    tainted_files: dict[Path, list[Issue]] = field(default_factory=dict)
    """Files with a syntax problem outside any section: all their sections are suspect."""
    warnings: list[Issue] = field(default_factory=list)
    """Worth saying, nothing refused: a section defined in more than one place."""
    unreadable: list[Path] = field(default_factory=list)
    """Files that could not be read or decoded: their sections, whatever they were, are
    missing from ``sections``."""
    empty: list[Path] = field(default_factory=list)
    """Files with nothing but blanks."""


def read_files(paths: list[Path]) -> IniDocument:
    """Read ``paths`` in order into one document; unreadable files become issues."""
    doc = IniDocument()
    for path in paths:
        doc.files.append(path)
        text = _text(doc, path)
        if text is None:
            continue
        if not text.strip():
            doc.empty.append(path)
        _read_text(doc, path, text)
    doc.warnings.extend(_repeated_sections(doc))
    return doc


def _text(doc: IniDocument, path: Path) -> str | None:
    """The file's text, or None after recording why it cannot be had."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        issue = Issue(Location(path, 0), None, None,
                      f"cannot read file: {exc.strerror or exc.__class__.__name__}")
    else:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            # where, never what: the bytes may be part of a secret
            line = data.count(b"\n", 0, exc.start) + 1
            issue = Issue(Location(path, line), None, None,
                          "cannot read file: not UTF-8 (the file is ignored as a whole)")
    doc.unreadable.append(path)
    _syntax(doc, issue, None)
    return None


def _repeated_sections(doc: IniDocument) -> list[Issue]:
    """A warning for every header met again, naming the place before it and the options
    this file overrides (values are merged; the later file wins)."""
    found = []
    for section in doc.sections.values():
        for before, again in zip(section.headers, section.headers[1:], strict=False):
            replaced = sorted({o for o, where in section.overrides if where.file == again.file})
            found.append(Issue(again, section.title, None, (
                f"also defined at {before}: the two are merged, later files overriding "
                f"earlier ones" + (f"; this file overrides {', '.join(replaced)}"
                                   if replaced else ""))))
    return found


def _read_text(doc: IniDocument, path: Path, text: str) -> None:
    current: Section | None = None
    seen_here: set[tuple[tuple[str, ...], str]] = set()
    last_key: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        where = Location(path, number)
        stripped = raw.strip()
        if not stripped or stripped[0] in "#;":
            last_key = None if not stripped else last_key
            continue
        if raw[0] in " \t" and current is not None and last_key is not None:
            value, origin = current.values[last_key]
            current.values[last_key] = (f"{value}\n{_strip_comment(stripped)}", origin)
            continue
        last_key = None
        section_match = _SECTION.match(stripped)
        if section_match:
            key = tuple(section_match.group("header").lower().split())
            if not key:
                _syntax(doc, Issue(where, None, None, "empty section header '[]'"), None)
                current = None
                continue
            current = doc.sections.get(key)
            if current is None:
                current = doc.sections[key] = Section(key, where)
            current.files.add(path)
            current.headers.append(where)
            continue
        option_match = _OPTION.match(stripped)
        if option_match is None:
            _syntax(doc, Issue(where, current.title if current else None, None,
                               "cannot parse line: expected 'option = value', a [section] "
                               "header or a comment"), current)
            continue
        if current is None:
            _syntax(doc, Issue(where, None, option_match.group("key").lower(),
                               "option outside any section"), None)
            continue
        name = option_match.group("key").lower()
        if (current.key, name) in seen_here:
            first = current.values[name][1]
            _syntax(doc, Issue(where, current.title, name,
                               f"option given twice in this file (first at line {first.line})"),
                    current)
            continue
        seen_here.add((current.key, name))
        if name in current.values and current.values[name][1].file != path:
            current.overrides.append((name, where))
        current.values[name] = (_strip_comment(option_match.group("value")), where)
        last_key = name


def _strip_comment(value: str) -> str:
    return _INLINE_COMMENT.sub("", value).strip()


def _syntax(doc: IniDocument, issue: Issue, section: Section | None) -> None:
    doc.issues.append(issue)
    if section is not None:
        doc.tainted.setdefault(section.key, []).append(issue)
    else:
        doc.tainted_files.setdefault(issue.location.file, []).append(issue)
