"""ServiceNow OAuth: the password grant at ``POST /oauth_token.do`` (form-encoded), the
access token refreshed before it expires (by the injected clock) with the refresh grant,
falling back to a new password grant when the refresh token is refused, and renewed once
after a 401 on a bearer request. Secrets never reach a log line or an exception message."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from sync.clients.http import HttpAnswer
from sync.clients.servicenow.classification import classify
from sync.clients.servicenow.paths import SIDE, TOKEN_PATH
from sync.clock import Clock
from sync.errors import ApiError, FatalError, PermanentError
from sync.settings import ServiceNowSettings

# the package's name, as before the split: log filters and tests select on it
log = logging.getLogger("sync.clients.servicenow")

#: refresh the OAuth access token this long before it expires (capped at half its life)
TOKEN_REFRESH_MARGIN_S = 60.0


class Sender(Protocol):
    """The client's transport (``ServiceNowClient._send``): the answer or the exception."""

    async def __call__(
        self,
        method: str,
        template: str,
        url: str,
        *,
        params: Mapping[str, str] | None,
        data: bytes | Mapping[str, str] | None,
        headers: Mapping[str, str],
    ) -> HttpAnswer | BaseException: ...


@dataclass(slots=True)
class _Token:
    access: str
    refresh: str | None
    expires_at: float
    """On the clock's monotonic scale."""


class OAuthTokens:
    """The access token of one client, shared by its concurrent requests: obtained on
    first use, refreshed before it expires, renewed once after a 401 (concurrent 401s
    renew once)."""

    def __init__(
        self,
        settings: ServiceNowSettings,
        clock: Clock,
        send: Sender,
        *,
        base: str,
        shown_base: str,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._send = send
        self._base = base
        self._shown_base = shown_base
        self._token: _Token | None = None
        self._token_lock = asyncio.Lock()

    async def bearer(self) -> str:
        token = self._token
        if token is None or self._clock.monotonic() >= token.expires_at:
            async with self._token_lock:
                token = self._token
                if token is None or self._clock.monotonic() >= token.expires_at:
                    token = await self._obtain_token(token)
                    self._token = token
        return token.access

    async def renew_after_401(self, used_access: str) -> None:
        async with self._token_lock:
            current = self._token
            if current is None or current.access == used_access:
                # nobody renewed it meanwhile (concurrent 401s renew once)
                self._token = await self._obtain_token(current)

    async def _obtain_token(self, old: _Token | None) -> _Token:
        if old is not None and old.refresh:
            try:
                return await self._grant("refresh_token", {"refresh_token": old.refresh}, old)
            except (FatalError, PermanentError) as exc:
                log.info("ServiceNow refused the OAuth refresh token; logging in again: %s", exc)
        password = self._settings.password
        assert password is not None  # checked in __init__
        return await self._grant(
            "password",
            {"username": self._settings.username or "", "password": password.get_secret_value()},
            None,
        )

    async def _grant(self, grant_type: str, extra: Mapping[str, str], old: _Token | None) -> _Token:
        secret = self._settings.client_secret
        assert secret is not None  # checked in __init__
        form = {
            "grant_type": grant_type,
            "client_id": self._settings.client_id or "",
            "client_secret": secret.get_secret_value(),
            **extra,
        }
        outcome = await self._send(
            "POST",
            TOKEN_PATH,
            self._base + TOKEN_PATH,
            params=None,
            data=form,
            headers={"Accept": "application/json"},
        )
        shown = self._shown_base + TOKEN_PATH
        result = classify(
            outcome, method="POST", url=shown, now=self._clock.now(), expect_result=False
        )
        if isinstance(result, (FatalError, PermanentError)):
            raise FatalError(
                SIDE,
                f"OAuth {grant_type} grant refused: {result.message}",
                status=result.status,
                detail=result.detail,
                method="POST",
                url=shown,
            )
        if isinstance(result, ApiError):
            raise result
        data = result.body
        access = data.get("access_token") if isinstance(data, Mapping) else None
        if not isinstance(access, str) or not access:
            raise FatalError(
                SIDE, "OAuth token answer lacks access_token", method="POST", url=shown
            )
        try:
            lifetime_s = float(data.get("expires_in", 1800))
        except (TypeError, ValueError):
            lifetime_s = 1800.0
        margin_s = min(TOKEN_REFRESH_MARGIN_S, lifetime_s / 2)
        refresh = data.get("refresh_token")
        return _Token(
            access=access,
            # the refresh grant may answer without a new refresh token (docs 1.7): keep the old
            refresh=refresh
            if isinstance(refresh, str) and refresh
            else (old.refresh if old else None),
            expires_at=self._clock.monotonic() + lifetime_s - margin_s,
        )
