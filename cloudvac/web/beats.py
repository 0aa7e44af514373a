"""The heartbeat PUT without the framework: the one request VMs send all the time.

Every running VM PUTs its heartbeat file every minute or so: 60,000 VMs make 1,000
requests a second, the VM door's whole load.  FastAPI spends several times the cost of the
work itself on such a request (routing, dependency solving, parameter validation, the
response object).  ``HeartbeatFastPath`` sits in front of the VM door's application and
takes a request itself only when it can tell, before reading its body, that the answer is
the one ``vm.upload`` would give: a heartbeat PUT to a well-formed path, with the
machine's own valid token, a declared length within ``upload_max_file_bytes``, a machine
the store knows (``MachineCache``: a lookup a few seconds old, or an older one of a machine
alive then whose end would have been seen since: ``MachineCache.alive``) in a configured
space, alive, and the file its machinetype's heartbeat file.  Everything else
(a refusal of any kind, a failing store, a chunked body, any other route) goes to the
application unchanged, its body unread, so every answer but 204 is the application's own
(and the one 413 of a quota exceeded since the lookup, as ``vm.upload`` words it).

What it does with the request is ``vm.upload``'s: the same body reading, quota check and
``note`` into the heartbeat buffer (``vm.note_beat``), the same metrics.  What a 204
means is unchanged (``heartbeats.py``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloudvac.auth.vmtokens import TokenError
from cloudvac.model.naming import MACHINE_NAME, SPACE_NAME
from cloudvac.model.records import MachineRecord
from cloudvac.store.engine import StoreUnavailable
from cloudvac.web.context import WebContext
from cloudvac.web.files import FILE_RE, UploadRejected
from cloudvac.web.vm import kind_of, note_beat

log = logging.getLogger("cloudvac.web.beats")
TOKENS_KEPT = 200_000  # as many as machine lookups (MACHINE_CACHE_SIZE)


@dataclass(frozen=True, slots=True)
class _Beat:
    """A heartbeat PUT the fast path may take."""

    space: str
    name: str
    file: str
    record: MachineRecord


def _headers(scope: Scope) -> tuple[str | None, int | None]:
    """The first Authorization header (latin-1, as Starlette reads it) and the declared
    Content-Length (None: none, several, chunked or unreadable)."""
    authorization: str | None = None
    length: int | None = None
    lengths = 0
    for key, value in scope["headers"]:
        if key == b"authorization":
            if authorization is None:
                authorization = value.decode("latin-1")
        elif key == b"content-length":
            lengths += 1
            length = int(value) if value.isdigit() and len(value) < 20 else None
        elif key == b"transfer-encoding":
            return authorization, None
    return authorization, length if lengths == 1 else None


@dataclass(frozen=True, slots=True)
class _Token:
    """A bearer token this signer verified: whose it is, until when, and the upload path
    prefix of its machine (a token's text fixes all three)."""

    space: str
    name: str
    expires: int
    prefix: str


class HeartbeatFastPath:
    """Pure ASGI middleware in front of the VM door's application (``app.VmDoor``).

    It counts its 204s and their bytes in memory; they reach the metrics
    (``cloudvac_uploads_total``, ``cloudvac_upload_bytes_total``) at every flush of the
    heartbeat buffer and every scrape (``HeartbeatBuffer.counting``)."""

    def __init__(self, app: ASGIApp, ctx: WebContext) -> None:
        self.app, self.ctx = app, ctx
        self._accepted = ctx.metrics.uploads.labels("heartbeat", "204")
        self._tokens: dict[str, _Token] = {}
        """Authorization header values this signer verified (bounded, oldest out)."""
        self._beats = self._bytes = 0
        """Accepted since the metrics were last told (``_publish``)."""
        ctx.heartbeats.counting(self._publish)

    def _publish(self) -> None:
        beats, self._beats = self._beats, 0
        size, self._bytes = self._bytes, 0
        if beats:
            self._accepted.inc(beats)
            self.ctx.metrics.upload_bytes.inc(size)

    def _token(self, authorization: str, now: float) -> _Token | None:
        """The unexpired token of ``authorization`` ("Bearer TOKEN"): one verified before
        costs a dictionary lookup, a new one ``TokenSigner.subject``."""
        known = self._tokens.get(authorization)
        if known is None:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token:
                return None
            try:
                space, name = self.ctx.signer.subject(token, now)
            except TokenError:
                return None
            if len(space) > 63 or len(name) > 63 or not (
                    SPACE_NAME.fullmatch(space) and MACHINE_NAME.fullmatch(name)):
                return None
            if len(self._tokens) >= TOKENS_KEPT:
                del self._tokens[next(iter(self._tokens))]
            known = self._tokens[authorization] = _Token(
                space, name, int(token.split(".")[2]), f"/machines/{space}/{name}/joboutputs/")
        return known if known.expires >= now else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        beat = None
        if scope["type"] == "http" and scope["method"] == "PUT":
            beat = await self._ours(scope)
        if beat is None:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                self.ctx.metrics.disconnects.inc()
                log.debug("space=%s machinetype=- machine=%s client left during its upload",
                          beat.space, beat.name)
                await _answer(send, 400, b"")
                return
            chunks.append(message.get("body", b""))
            more = bool(message.get("more_body", False))
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            note_beat(self.ctx, beat.record, beat.file, data)
        except UploadRejected as exc:  # over the machine's quota (its size changed)
            self.ctx.metrics.uploads.labels("heartbeat", str(exc.status)).inc()
            detail = json.dumps({"detail": exc.detail}, ensure_ascii=False,
                                separators=(",", ":")).encode()
            await _answer(send, exc.status, detail, b"application/json")
            return
        self._beats += 1
        self._bytes += len(data)
        self.ctx.fast_beats += 1
        await send(_NO_CONTENT)
        await send(_EMPTY_BODY)

    async def _ours(self, scope: Scope) -> _Beat | None:
        """The heartbeat this request is, if the fast path can answer it (see above)."""
        asked = self._asked(scope)
        if asked is None:
            return None
        space, name, file = asked
        ctx = self.ctx
        record = ctx.machines.alive(space, name)
        if record is None:
            try:
                record = await ctx.machines.get(space, name)
            except (SQLAlchemyError, StoreUnavailable):  # the application answers it: 503
                return None
        config = ctx.spaces().get(space)
        if record is None or config is None or record.ended_at is not None:
            return None
        mt = config.machinetypes.get(record.machinetype)
        if kind_of(file, mt) != "heartbeat":
            return None
        return _Beat(space, name, file, record)

    def _asked(self, scope: Scope) -> tuple[str, str, str] | None:
        """(space, machine, file) of a PUT to a well-formed upload path with the
        machine's own valid token and a declared length within the per-file limit."""
        if scope.get("root_path"):
            return None
        authorization, length = _headers(scope)
        if length is None or length > self.ctx.settings.upload_max_file_bytes \
                or authorization is None:
            return None
        token = self._token(authorization, self.ctx.clock())
        path: str = scope["path"]
        if token is None or not path.startswith(token.prefix):
            return None
        file = path[len(token.prefix):]
        if len(file) > 64 or not FILE_RE.fullmatch(file):
            return None
        return token.space, token.name, file


# The 204 answer, the same two messages every time (uvicorn only reads them).
_NO_CONTENT: Message = {"type": "http.response.start", "status": 204, "headers": []}
_EMPTY_BODY: Message = {"type": "http.response.body", "body": b""}


async def _answer(send: Send, status: int, body: bytes,
                  content_type: bytes = b"text/plain") -> None:
    headers = [(b"content-length", b"%d" % len(body))]
    if body:
        headers.append((b"content-type", content_type))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
