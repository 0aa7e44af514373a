"""Redaction: secret-shaped values out of texts that leave the process, and a length bound.

Texts from clouds and identity providers (error bodies, ``error_description``, exception
messages) may quote the request that failed: a refresh token, a client secret, a Keystone
token, a whole user_data with the VM's token and a pilot proxy.  ``redact`` is applied
where such text enters cloudvac's own texts (adapters, auth), again where events are
stored (``Store.add_events``) and on every log line (``cloudvac.logs``).

What is replaced by ``[REDACTED]``:

* PEM blocks, ``-----BEGIN ...-----`` to ``-----END ...-----`` (or to the end of the text
  when the end was cut off): private keys, proxies, certificates;
* ``Authorization`` / ``Proxy-Authorization`` values (``Basic``, ``Bearer``, ``Digest``,
  ... or none), in header (``k: v``), ``k=v``, JSON and Python-repr forms; the scheme
  word is kept;
* a ``Bearer`` or ``Basic`` credential anywhere: 16+ token characters, or 8+ with a
  digit, one of ``+/=._~-``, or mixed case ("Basic authentication" stays);
* JWTs (``eyJ...`` header, three base64url parts);
* URL user info (``https://user:pass@host``) and everything after ``?`` or ``#`` in a URL;
* runs of 32 or more characters of the base64 / base64url / hex alphabet
  (``A-Za-z0-9+/_-`` and ``=`` padding) that do not read as words: opaque tokens, hex
  secrets, base64 blobs such as an encoded user_data.  A run is kept when every part
  between ``-_/+=`` is a plain word (lower case, upper case or Capitalised, letters and
  digits, at most 24 characters, or a longer all-letter word with trailing digits): UUIDs,
  machine names, file paths and long identifiers stay readable;
* the value of any key naming a secret, in ``k=v``, ``k: v``, ``"k": "v"`` and
  ``'k': 'v'`` forms, with keys containing ``password``/``passwd``/``passphrase``/
  ``secret``/``token``/``api_key``/``credential``/``private_key``/``user_data``/
  ``cookie``/``session_id`` (``refresh_token=``, ``client_secret=``, ``access_token=``,
  ``X-Auth-Token:``, ``"user_data":`` ...), except keys that name something else about the
  secret (ending in ``_file``, ``_env``, ``_path``, ``_url``, ``_uri``, ``_endpoint``,
  ``_type``, ``_id``, ``_name``, ``_hint``, or mentioning ``expire``/``lifetime``) and
  exception names before their message (``CredentialDead: ...``, ``TokenError: ...``).

Deliberately left alone: ordinary operator text (Nova's "Quota exceeded for cores:
Requested 8, but already used 40 of 48 cores", "No valid host was found", space, flavor,
image and machine names, UUIDs, HTTP statuses, paths), URLs without user info or query,
and a short secret quoted in prose with no key before it (no shape tells it from a word).

Then the text is cut to ``limit`` characters (default ``LIMIT``), ending in ``CUT``.  Input
longer than ``SCAN_FACTOR * limit`` (at least ``SCAN_MIN``) is cut before it is scanned,
dropping the token that straddles that cut, so the cost is bounded whatever arrives.

Contract: never raises for any ``str``; idempotent (``redact(redact(t)) == redact(t)``
for the same limit); the result is at most ``limit`` characters.  Patterns are compiled
once and each is tried only when a literal it needs is in the text: a typical log line
costs about 10 µs, a 4 KB error body quoting user_data about 0.2 ms
(``tests/unit/test_redact.py`` holds the bounds).
"""

from __future__ import annotations

import re
import string

MARK = "[REDACTED]"
CUT = " …[cut]"
LIMIT = 1000
MIN_LIMIT = 32
SCAN_FACTOR, SCAN_MIN = 4, 4096
_PASSES = 4
_WINDOW = 80  # a cut looks this far back for whitespace, to keep whole words

# A value that is already a marker (possibly after blanks) is not redacted again: this
# keeps redact idempotent when a key or a scheme word survives next to a marker.
_NOT_MARK = r"(?![ \t]*(?:\[REDACTED\]|…\[cut\]))"
_B64 = r"A-Za-z0-9+/_\-"  # base64 and base64url letters (hex is a subset)

_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]{1,64}-----.*?(?:-----END [A-Z0-9 ]{1,64}-----|\Z)",
                  re.DOTALL)
_AUTHORIZATION = re.compile(
    r"(?i)(\b(?:proxy-)?authorization\\?[\"']?[ \t]*[:=][ \t]*\\?[\"']?)"
    r"((?>(?:(?:basic|bearer|digest|negotiate|token|hoba|mutual|aws4-hmac-sha256)[ \t]+)?))"
    + _NOT_MARK + r"[^\s\"',;}\]\\]++")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")
_URL = re.compile(
    r"(?i)\b(?P<scheme>(?:https?|wss?|ftp)://)(?:(?P<user>[^\s/?#@\"'<>\\]++)@)?"
    r"(?P<rest>[^\s?#\"'<>\\]*+)(?P<query>[?#]" + _NOT_MARK + r"[^\s\"'<>\\]++)?")
_RUN = re.compile(rf"(?<![{_B64}=])[{_B64}]{{32,}}+=*")
_SPLIT = re.compile(r"[-_/+=]+")
_WORD = re.compile(r"[a-z0-9]{1,24}|[A-Z0-9]{1,24}|[A-Z][a-z0-9]{1,23}|[a-zA-Z][a-z]{24,}[0-9]*")
#: ``key=`` / ``key:`` with optional quotes and blanks; only keys ``_SECRET_KEY`` finds
#: in (and ``_NOT_SECRET_KEY`` does not) have their value (``_VALUE``) replaced.
_KEY = re.compile(r"(?<![A-Za-z0-9_.-])(?P<key>[A-Za-z0-9_.-]++)\\?[\"']?[ \t]*[:=][ \t]*")
_VALUE = re.compile(r"(?P<open>\\?[\"'])?" + _NOT_MARK
                    + r"(?P<value>(?(open)[^\"'\\\r\n]+|[^\s\"',;&{}()\[\]\\][^\s\"',;&})\]\\]*))")
_SECRET_KEY = re.compile(r"(?i)pass(?:word|wd|phrase)|secret|token|api[_-]?key|credential"
                         r"|private[_-]?key|user[_-]?data|cookie|session[_-]?id")
#: Literals one of which every secret key contains (lower case): a cheap first test.
_STEMS = ("pass", "secret", "token", "apikey", "api_key", "api-key", "private", "credential",
          "userdata", "user_data", "user-data", "cookie", "session")
_NOT_SECRET_KEY = re.compile(
    r"(?i)(?:[_.-](?:file|env|path|url|uri|endpoints?|type|id|name|hint)$|expire|lifetime"
    # an exception's name before its message: "CredentialDead: Check-in refused ..."
    r"|(?:dead|error|exception|failed|failure|refused|invalid|missing|denied|required)$)")
_SCHEME = re.compile(r"(?i)\b(bearer|basic)([ \t]+)" + _NOT_MARK + r"([A-Za-z0-9._~+/-]{8,}+=*)")
_RANDOM = re.compile(r"[0-9+/=._~-]|[a-z][A-Z]|[A-Z]{2}")
_RUN_LETTERS = string.ascii_letters + string.digits + "+/_-="


def redact(text: str, limit: int = LIMIT) -> str:
    """``text`` with secret-shaped values replaced by ``MARK`` (the shapes are listed in the
    module docstring), cut to at most ``limit`` characters (at least ``MIN_LIMIT``); a NUL
    becomes U+FFFD, as the store keeps it (so a redacted text compares equal to its stored
    copy).  Idempotent, never raises."""
    limit = max(limit, MIN_LIMIT)
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    scan = max(SCAN_FACTOR * limit, SCAN_MIN)
    if len(text) > scan:  # drop the run the cut went through: part of a blob is no word
        text = text[:scan].rstrip(_RUN_LETTERS)
    cleaned = _settle(text)
    if len(cleaned) <= limit:
        return cleaned
    return _cut(cleaned, limit)


def _settle(text: str) -> str:
    """Apply every rule until nothing changes (a replacement can make a new key or run
    visible); a text that does not settle is dropped whole."""
    for _ in range(_PASSES):
        cleaned = _once(text)
        if cleaned == text:
            return text
        text = cleaned
    return MARK


def _once(text: str) -> str:
    # Each rule is tried only when a literal it needs is present: most log lines hold none,
    # and a substring test costs far less than a regex scan.
    lower = text.lower()
    if "-----begin " in lower:
        text = _PEM.sub(MARK, text)
    if "authorization" in lower:
        text = _AUTHORIZATION.sub(lambda m: f"{m.group(1)}{m.group(2)}{MARK}", text)
    if "eyJ" in text:
        text = _JWT.sub(MARK, text)
    if "://" in text:
        text = _URL.sub(_url, text)
    if any(len(chunk) >= 32 for chunk in text.split()):
        text = _RUN.sub(_run, text)
    if any(stem in lower for stem in _STEMS):
        text = _key_values(text)
    if "bearer" in lower or "basic" in lower:
        text = _SCHEME.sub(_scheme, text)
    return text


def _url(match: re.Match[str]) -> str:
    user, query = match.group("user"), match.group("query")
    if user is None and query is None:
        return match.group(0)  # nothing to hide: no user info, no query, no fragment
    return (match.group("scheme") + ("" if user is None else MARK + "@") + match.group("rest")
            + ("" if query is None else "?" + MARK))


def _run(match: re.Match[str]) -> str:
    run = match.group(0)
    parts = [part for part in _SPLIT.split(run) if part]
    if parts and all(_WORD.fullmatch(part) for part in parts):
        return run  # words joined by separators: an identifier, a name, a path
    return MARK


def _key_values(text: str) -> str:
    """Replace the value after every secret key.  Keys are found one after the other (a
    value may hold further pairs, e.g. an echoed form in ``error_description: ...``)."""
    out: list[str] = []
    done = 0
    for key in _KEY.finditer(text):
        name = key.group("key")
        if key.start() < done or not _SECRET_KEY.search(name) or _NOT_SECRET_KEY.search(name):
            continue
        value = _VALUE.match(text, key.end())
        if value is None:
            continue
        out += (text[done:value.start("value")], MARK)
        done = value.end()
    return "".join(out) + text[done:] if out else text


def _scheme(match: re.Match[str]) -> str:
    credential = match.group(3)
    if _RANDOM.search(credential) or len(credential) >= 16:
        return f"{match.group(1)}{match.group(2)}{MARK}"
    return match.group(0)  # "Basic authentication", "Bearer tokens": words


def _cut(text: str, limit: int) -> str:
    """``text`` (settled) cut to ``limit`` with ``CUT`` at the end: at a blank when one is
    near, never inside a marker, and only where the result is settled too."""
    end = limit - len(CUT)
    for _ in range(_PASSES):
        end = _boundary(text, end)
        result = text[:end] + CUT
        if _once(result) == result:
            return result
        end -= _WINDOW  # the cut split a key or a scheme from its value: cut before it
    return MARK + CUT


def _boundary(text: str, end: int) -> int:
    """A cut position at or before ``end``: before a marker it would split, else at the
    last blank within ``_WINDOW`` characters, else ``end``."""
    end = max(end, 0)
    start = text.rfind("[", max(0, end - len(MARK)), end)
    if start != -1 and text.startswith(MARK, start) and start + len(MARK) > end:
        end = start
    blank = max(text.rfind(" ", max(0, end - _WINDOW), end + 1),
                text.rfind("\n", max(0, end - _WINDOW), end + 1))
    if blank > 0:
        end = blank
    return end
