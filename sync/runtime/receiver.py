"""The webhook receivers on the daemon's HTTP port (push mode, :mod:`sync.push`).

``POST /webhooks/bigpanda`` and ``POST /webhooks/servicenow``, each on only when its
token (``push.bigpanda_token``, ``push.servicenow_token``) is set. In order:

With several sync pairs, pair ``NAME``'s are ``/webhooks/NAME/bigpanda`` and
``/webhooks/NAME/servicenow`` (:class:`PairReceivers`); the pair ``default`` (and the
one pair of a configuration without ``[[pairs]]``) also answers on the plain paths.

1. More than ``push.max_concurrent`` requests of the receiver at once: 503 with
   ``Retry-After: 1`` (BigPanda sends a delivery again after a 5xx; the poll catches
   what is not).
2. ``Authorization: Bearer <token>``, compared in constant time (digests of both, so
   not even the length leaks): 401 without it, or with another one.
3. A body above ``push.max_body`` bytes: 413, decided from ``Content-Length`` when it is
   sent, else while reading, and never read further.
4. Malformed JSON, or a body without a usable id: 400 with a one-line reason
   (:mod:`sync.push.payloads`).
5. The event is recorded in the store (one row per incident, ``push_events``): 202 once
   it is committed, so a kill right after the 202 loses nothing. A store that cannot be
   written is 503 (sent again later), never 500.
6. The engine is woken (``wake``): it reads the incident and syncs it.

A connection whose body was not read whole is closed after the answer (nothing lingers
reading a body nobody wants). Every answer is counted in
``bpsync_push_requests_total{side,status}``; a refused token is logged once (WARNING)
until a delivery of that side is accepted again.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from pydantic import SecretStr

from sync.clock import Clock
from sync.constants import Side
from sync.errors import StoreError
from sync.logs import pair_context
from sync.pairconfig import DEFAULT_PAIR
from sync.push.payloads import Hint, PayloadError, bigpanda_hint, decode, servicenow_hint
from sync.settings import Settings
from sync.store.base import PushEvents

log = logging.getLogger(__name__)

WEBHOOKS = "/webhooks"
BIGPANDA_PATH = f"{WEBHOOKS}/bigpanda"
SERVICENOW_PATH = f"{WEBHOOKS}/servicenow"
_CHUNK = 64 * 1024

Wake = Callable[[Side], None]


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


class _Refused(Exception):  # noqa: N818 - a control-flow signal, not an error
    def __init__(self, status: int, reason: str, *, read_whole: bool = True) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.read_whole = read_whole


class PushReceiver:
    """Both receivers of one daemon; :meth:`install` adds their routes to its app."""

    def __init__(
        self,
        settings: Settings,
        store: PushEvents,
        clock: Clock,
        wake: Wake,
        *,
        metrics: Any = None,
        pair: str = DEFAULT_PAIR,
    ) -> None:
        push = settings.push
        self.pair = pair
        self._store = store
        self._clock = clock
        self._wake = wake
        self._metrics = metrics
        self._max_body = push.max_body
        self._max_concurrent = push.max_concurrent
        self._table = settings.servicenow.table
        self._tokens: dict[Side, bytes] = {}
        for side, token in (
            (Side.BIGPANDA, push.bigpanda_token),
            (Side.SERVICENOW, push.servicenow_token),
        ):
            if isinstance(token, SecretStr) and token.get_secret_value():
                self._tokens[side] = _digest(token.get_secret_value())
        self._busy: dict[Side, int] = dict.fromkeys(Side, 0)
        self._refusal_logged: set[Side] = set()

    @property
    def sides(self) -> frozenset[Side]:
        """The sides whose receiver is on (a token is set)."""
        return frozenset(self._tokens)

    def install(self, app: web.Application, prefix: str = WEBHOOKS) -> None:
        """Add the receivers' routes: ``{prefix}/bigpanda`` and ``{prefix}/servicenow``."""
        if Side.BIGPANDA in self._tokens:
            app.router.add_post(f"{prefix}/bigpanda", self.bigpanda)
        if Side.SERVICENOW in self._tokens:
            app.router.add_post(f"{prefix}/servicenow", self.servicenow)

    async def bigpanda(self, request: web.Request) -> web.StreamResponse:
        with pair_context(self.pair):
            return await self._receive(request, Side.BIGPANDA)

    async def servicenow(self, request: web.Request) -> web.StreamResponse:
        with pair_context(self.pair):
            return await self._receive(request, Side.SERVICENOW)

    # ------------------------------------------------------------------ the steps

    async def _receive(self, request: web.Request, side: Side) -> web.StreamResponse:
        if self._busy[side] >= self._max_concurrent:
            response = self._answer(side, 503, "too many deliveries at once")
            response.headers["Retry-After"] = "1"
            return await self._closing(request, response)
        self._busy[side] += 1
        try:
            self._authorise(request, side)
            hint = self._parse(side, await self._read(request))
            await self._record(hint)
        except _Refused as refused:
            response = self._answer(side, refused.status, refused.reason)
            if refused.read_whole:
                return response
            return await self._closing(request, response)
        finally:
            self._busy[side] -= 1
        self._refusal_logged.discard(side)
        self._wake(side)
        log.debug(
            "push event recorded",
            extra={"side": side.value, "id": hint.object_id, "version": hint.version},
        )
        return self._answer(side, 202, None)

    def _authorise(self, request: web.Request, side: Side) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        expected = self._tokens[side]
        ok = hmac.compare_digest(_digest(given.strip()), expected)
        if scheme.lower() == "bearer" and ok:
            return
        if side not in self._refusal_logged:
            self._refusal_logged.add(side)
            log.warning(
                "%s webhook refused: %s (logged once until a delivery is accepted)",
                side.value,
                "no bearer token" if not header else "wrong token",
                extra={"side": side.value},
            )
        raise _Refused(401, "a valid Authorization: Bearer <token> is required", read_whole=False)

    async def _read(self, request: web.Request) -> bytes:
        limit = self._max_body
        too_big = f"the body is larger than {limit} bytes"
        if request.content_length is not None and request.content_length > limit:
            raise _Refused(413, too_big, read_whole=False)
        body = bytearray()
        while chunk := await request.content.read(_CHUNK):
            body += chunk
            if len(body) > limit:
                raise _Refused(413, too_big, read_whole=False)
        return bytes(body)

    def _parse(self, side: Side, body: bytes) -> Hint:
        try:
            data = decode(body)
            if side is Side.BIGPANDA:
                return bigpanda_hint(data)
            return servicenow_hint(data, self._table)
        except PayloadError as exc:
            raise _Refused(400, str(exc)) from None

    async def _record(self, hint: Hint) -> None:
        try:
            await self._store.record_push_event(
                hint.side,
                hint.object_id,
                self._clock.now(),
                version=hint.version,
                environment_id=hint.environment_id,
            )
        except StoreError as exc:
            log.warning("push event not recorded (answered 503): %s", exc)
            raise _Refused(503, "the event could not be recorded; send it again") from None

    def _answer(self, side: Side, status: int, reason: str | None) -> web.Response:
        if self._metrics is not None:
            self._metrics.push_request(side.value, status)
        body = {"status": "accepted"} if reason is None else {"error": reason}
        return web.json_response(body, status=status)

    @staticmethod
    async def _closing(request: web.Request, response: web.Response) -> web.Response:
        """Send ``response``, then close the connection: the body left unread is never
        read (aiohttp would otherwise read it, to keep the connection, for seconds)."""
        response.force_close()
        await response.prepare(request)
        await response.write_eof()
        request.protocol.force_close()
        return response


class PairReceivers:
    """The receivers of every pair with push on, installed side by side (module doc)."""

    def __init__(self) -> None:
        self._pairs: list[tuple[PushReceiver, bool]] = []

    def add(self, name: str, receiver: PushReceiver, *, default: bool) -> None:
        """``default``: also on the plain paths (the only pair, or the one named so)."""
        receiver.pair = name
        self._pairs.append((receiver, default or name == DEFAULT_PAIR))

    def __bool__(self) -> bool:
        return bool(self._pairs)

    def install(self, app: web.Application) -> None:
        for receiver, plain in self._pairs:
            receiver.install(app, f"{WEBHOOKS}/{receiver.pair}")
            if plain:
                receiver.install(app)


__all__ = ["BIGPANDA_PATH", "SERVICENOW_PATH", "PairReceivers", "PushReceiver"]
