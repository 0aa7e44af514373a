"""Fetching vacuum pipes into the cache the loader reads (``config/pipecache.py``).

Contract:

* ``PipeFetcher.poll(directory)`` is called where the daemon re-reads its configuration
  (``ConfigSource.load``).  It finds the ``[vacuum_pipe]`` sections and starts a
  background fetch of every pipe that is due, then returns: a slow or dead pipe server
  never holds up a cycle.  Only a pipe never tried before is waited for, at most
  ``first_wait`` seconds, so that the first load after adding it usually has it.
* A pipe is due when its last attempt is older than its refresh period (the section's
  ``vacuum_pipe_refresh_minutes``, else the document's ``cache_seconds``, else an hour;
  at least a minute), or than ``RETRY_SECONDS`` after a failure.  The time of the last
  attempt is kept in the cache, so a restart does not fetch again early.
* A fetch is one conditional GET (``If-None-Match``/``If-Modified-Since`` from the last
  good reply) with httpx, bounded in time (``timeout`` for the whole body, not per read)
  and size, redirects followed but never from https to http.  The document must pass
  ``parse_pipe``, and each of its ``https://`` user_data templates must be fetched (or
  unchanged) too; only then does it replace the cached one.  Anything else — unreachable,
  an HTTP error, a document that does not validate — keeps the last good document and
  records why (the loader turns that into a warning, or an error when there is no good
  document at all).
* One log line per change of a pipe's state: first fetched, changed, failing (and each
  change of the reason), fetched again.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cloudvac import __version__
from cloudvac.config.ini import read_files
from cloudvac.config.loader import config_files
from cloudvac.config.pipecache import (
    PipeSection,
    PipeState,
    pipe_sections,
    read_state,
    state_path_of,
    when,
)
from cloudvac.config.pipes import MAX_PIPE_BYTES, PipeDocument, PipeError, parse_pipe, shown_url
from cloudvac.model.redact import redact

log = logging.getLogger("cloudvac.engine.pipes")
TIMEOUT_SECONDS = 30.0
RETRY_SECONDS = 300.0
FIRST_WAIT_SECONDS = 5.0
MAX_TEMPLATE_BYTES = 256 << 10


class FetchError(Exception):
    """A fetch that did not give a usable reply; the text says why (no secrets)."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    """200, or 304 (the cached copy is current)."""
    body: bytes = b""
    etag: str | None = None
    last_modified: str | None = None


Getter = Callable[[str, PipeState | None, int, float], Reply]


def http_get(url: str, known: PipeState | None, limit: int, timeout: float,
             verify: ssl.SSLContext | bool = True) -> Reply:
    """GET ``url``, conditional on ``known`` (the state of the copy we hold), at most
    ``limit`` bytes within ``timeout`` seconds in all; ``verify``: httpx's (default: the
    certifi CAs, or ``SSL_CERT_FILE``/``SSL_CERT_DIR`` from the environment)."""
    import httpx  # not at start-up: the CLI imports this module

    headers = {"User-Agent": f"cloudvac/{__version__}", "Accept": "application/json, */*"}
    if known is not None and known.etag:
        headers["If-None-Match"] = known.etag
    if known is not None and known.last_modified:
        headers["If-Modified-Since"] = known.last_modified
    deadline = time.monotonic() + timeout
    try:
        with httpx.Client(timeout=timeout, follow_redirects=True, max_redirects=5,
                          verify=verify) as client, \
                client.stream("GET", url, headers=headers) as reply:
            hops = [*(r.url for r in reply.history), reply.url]
            if url.startswith("https:") and any(hop.scheme != "https" for hop in hops):
                raise FetchError("redirected from https to plain http: refused")
            if reply.status_code == 304 and known is not None:
                return Reply(304)
            if reply.status_code != 200:
                raise FetchError(f"HTTP {reply.status_code} {reply.reason_phrase}".strip())
            body = bytearray()
            for chunk in reply.iter_bytes():
                body += chunk
                if len(body) > limit:
                    raise FetchError(f"larger than {limit} bytes: refused")
                if time.monotonic() > deadline:
                    raise FetchError(f"not complete within {timeout:g} s")
            return Reply(200, bytes(body), reply.headers.get("etag"),
                         reply.headers.get("last-modified"))
    except httpx.TimeoutException:
        raise FetchError(f"no answer within {timeout:g} s") from None
    except httpx.HTTPError as exc:
        raise FetchError(f"cannot fetch: {type(exc).__name__}: {exc}") from None


class PipeFetcher:
    """Keeps the pipes of a configuration directory fetched (module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.time,
                 timeout: float = TIMEOUT_SECONDS, first_wait: float = FIRST_WAIT_SECONDS,
                 get: Getter = http_get) -> None:
        self.clock, self.timeout, self.first_wait, self.get = clock, timeout, first_wait, get
        self._running: dict[Path, threading.Thread] = {}
        self._tried: dict[Path, float] = {}
        """The last attempt per pipe, should its state be unwritable (a full disk)."""
        self._lock = threading.Lock()

    def poll(self, directory: Path) -> None:
        """Start fetching every pipe of ``directory`` that is due (module docstring)."""
        if not directory.is_dir():
            return
        pipes = pipe_sections(read_files(config_files(directory)))
        now, first = self.clock(), []
        for pipe in pipes:
            state = _state(pipe)
            with self._lock:
                running = self._running.get(pipe.state_path)
                busy = running is not None and running.is_alive()
                if busy or not self.due(pipe, state, now):
                    continue
                thread = threading.Thread(target=self._run, args=(pipe,), daemon=True,
                                          name=f"pipe {pipe.space} {pipe.prefix}")
                self._running[pipe.state_path] = thread
                self._tried[pipe.state_path] = now
            thread.start()
            if state is None:
                first.append(thread)
        deadline = time.monotonic() + self.first_wait
        for thread in first:
            thread.join(max(0.0, deadline - time.monotonic()))

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the fetches in flight; True if none is left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            threads = list(self._running.values())
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def due(self, pipe: PipeSection, state: PipeState | None, now: float) -> bool:
        wait = pipe.refresh_seconds(state)
        if state is None or state.error is not None:
            wait = min(wait, RETRY_SECONDS)
        recorded = state.checked_at if state is not None and state.checked_at else 0.0
        checked = max(recorded, self._tried.get(pipe.state_path, 0.0))
        if (state is None and pipe.state_path not in self._tried) or now < checked:
            return True  # never tried, or the clock went back
        return now - checked >= wait

    def _run(self, pipe: PipeSection) -> None:
        try:
            self.refresh(pipe)
        except OSError as exc:
            log.error("space=%s machinetype=%s-* machine=- vacuum pipe %s: cannot write its "
                      "cache in %s: %s", pipe.space, pipe.prefix, shown_url(pipe.url),
                      pipe.directory, exc.strerror or exc)
        except Exception:  # a bug: said, and the pipe is tried again when due
            log.exception("space=%s machinetype=%s-* machine=- vacuum pipe %s: fetch crashed",
                          pipe.space, pipe.prefix, shown_url(pipe.url))

    def refresh(self, pipe: PipeSection) -> None:
        """Fetch ``pipe`` now (in the caller's thread) and update its cache."""
        before, now = _state(pipe), self.clock()
        try:
            cached: bytes | None = pipe.body_path.read_bytes()
        except OSError:
            cached = None
        try:
            reply = self.get(pipe.url, before if cached is not None else None, MAX_PIPE_BYTES,
                             self.timeout)
            body = cached if reply.status == 304 and cached is not None else reply.body
            document = parse_pipe(body, pipe.url, pipe.prefix)
            self._templates(pipe, document)
        except FetchError as exc:
            self._failed(pipe, before, now, redact(str(exc)), cached is not None)
            return
        except PipeError as exc:
            problems = "; ".join(exc.problems[:3])
            more = f" (and {len(exc.problems) - 3} more)" if len(exc.problems) > 3 else ""
            self._failed(pipe, before, now, redact(f"invalid: {problems}{more}"),
                         cached is not None)
            return
        if body != cached:
            _write(pipe.body_path, body)
        kept = before if reply.status == 304 else None
        _write(pipe.state_path, PipeState(
            url=pipe.url, etag=reply.etag or (kept.etag if kept else None),
            last_modified=reply.last_modified or (kept.last_modified if kept else None),
            fetched_at=now, checked_at=now, cache_seconds=document.cache_seconds,
        ).model_dump_json().encode())
        self._say_fetched(pipe, before, document, changed=cached is not None and body != cached)

    def _templates(self, pipe: PipeSection, document: PipeDocument) -> None:
        """Fetch the document's https:// user_data templates; FetchError if one cannot be
        had (the document is then not taken)."""
        for url in document.template_urls:
            path = pipe.template_path(url)
            known = read_state(state_path_of(path)) if path.is_file() else None
            try:
                reply = self.get(url, known, MAX_TEMPLATE_BYTES, self.timeout)
                if reply.status == 200:
                    reply.body.decode("utf-8")
            except FetchError as exc:
                raise FetchError(f"user_data template {shown_url(url)}: {exc}") from None
            except UnicodeDecodeError:
                raise FetchError(f"user_data template {shown_url(url)}: not UTF-8") from None
            if reply.status == 200:
                _write(path, reply.body)
                _write(state_path_of(path), PipeState(
                    url=url, etag=reply.etag, last_modified=reply.last_modified,
                    fetched_at=self.clock()).model_dump_json().encode())

    def _failed(self, pipe: PipeSection, before: PipeState | None, now: float, error: str,
                has_good: bool) -> None:
        since = before.failing_since if before is not None and before.error else now
        base = before if before is not None else PipeState(url=pipe.url)
        _write(pipe.state_path, base.model_copy(update={
            "checked_at": now, "failing_since": since, "error": error}).model_dump_json()
            .encode())
        if before is not None and before.error == error:
            return  # nothing new to say
        keeping = (f"keeping the definition fetched at {when(base.fetched_at)}" if has_good
                   else "no good definition yet: its machinetypes are absent")
        log.warning("space=%s machinetype=%s-* machine=- vacuum pipe %s: %s; %s", pipe.space,
                    pipe.prefix, shown_url(pipe.url), error, keeping)

    def _say_fetched(self, pipe: PipeSection, before: PipeState | None,
                     document: PipeDocument, changed: bool) -> None:
        if before is not None and before.error is None and before.fetched_at and not changed:
            return
        if before is not None and before.error is not None:
            what = f"fetched again (failing since {when(before.failing_since)})"
        else:
            what = "definition changed" if changed else "fetched"
        names = ", ".join(f"{pipe.prefix}-{mt.suffix}" for mt in document.machinetypes)
        skipped = f"; skipped, for other managers: {', '.join(document.skipped)}" \
            if document.skipped else ""
        log.info("space=%s machinetype=%s-* machine=- vacuum pipe %s: %s: %d machinetypes "
                 "(%s)%s", pipe.space, pipe.prefix, shown_url(pipe.url), what,
                 len(document.machinetypes), names or "none", skipped)


def _state(pipe: PipeSection) -> PipeState | None:
    state = read_state(pipe.state_path)
    return state if state is not None and state.url == pipe.url else None


def _write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` at once (a reader sees the old or the new file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
