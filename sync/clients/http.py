"""HTTP pieces shared by the API clients (ServiceNow, BigPanda).

- :class:`HttpAnswer` / :class:`Parsed`: what came back, before and after classification;
  each client's ``classify`` turns an :class:`HttpAnswer` (or a transport exception) into
  a :class:`Parsed` or an :mod:`sync.errors` error.
- :func:`classify_exception`: the transport half of that classification, identical for
  both vendors (connection refused, DNS, timeouts, TLS, cut-short answers).
- :func:`send`: one request through an injected session, returning the answer or the
  transport exception (never raising it), and calling the request observer once.
- :func:`new_session`: the session both clients expect (no cookie jar, TLS as set, a
  total timeout), warning once per side when TLS verification is off.
- Small text helpers for vendor messages (:func:`one_line`, :func:`text_excerpt`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from sync.clients.base import RequestObserver
from sync.clock import Clock
from sync.errors import ApiError, FatalError, PermanentError, TransientError

log = logging.getLogger(__name__)

#: longest non-JSON body excerpt put in an error message
EXCERPT_CHARS = 160

#: sides whose "TLS verification is off" warning was logged (once per process)
TLS_WARNED: set[str] = set()


#: what orjson would encode and the standard library refuses stays refused (a datetime
#: or a dataclass in a body is a caller's bug, not a string the vendor should parse)
_STRICT = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def encode_json(value: Any) -> bytes:
    """A request's JSON body in UTF-8 (orjson; the standard library for what orjson
    refuses to encode: an integer beyond 64 bits, a key that is not a string). A value
    neither encodes (a datetime, an object) raises ``TypeError``."""
    try:
        return orjson.dumps(value, option=_STRICT)
    except TypeError:
        return json.dumps(value).encode("utf-8")


def decode_json(body: bytes) -> Any:
    """An answer's JSON (orjson; the standard library for what orjson refuses and it
    takes: an integer beyond 64 bits, NaN): a ``ValueError`` when neither can read it."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def parse_json_body(content_type: str, body: bytes) -> tuple[Any, str | None]:
    """(the decoded JSON or None, the problem with the body or None): an empty body is
    None without a problem; a non-JSON content type or malformed JSON is a problem."""
    if not body.strip():
        return None, None
    if not is_json_type(content_type):
        return None, f"expected JSON, got {content_type or 'no content type'}"
    try:
        return decode_json(body), None
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"malformed JSON in the answer ({exc})"


def new_session(
    *, side: str, vendor: str, verify_tls: bool, timeout_s: float, limit: int = 100
) -> aiohttp.ClientSession:
    """A session without a cookie jar (``DummyCookieJar``), TLS verified unless
    ``verify_tls`` is off (then one WARNING per ``side`` and process), ``timeout_s`` in
    total per request, at most ``limit`` connections. Call from a coroutine; close it."""
    if not verify_tls and side not in TLS_WARNED:
        TLS_WARNED.add(side)
        log.warning(
            "%s.verify_tls is false: TLS certificates of %s are NOT verified "
            "(use only for a lab or an emulator with a self-signed certificate)",
            side,
            vendor,
        )
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=verify_tls, limit=limit),
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    )


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """What came back over HTTP, before classification."""

    status: int
    content_type: str
    """Media type, lower-case, without parameters; ``""`` when the header is missing."""
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Parsed:
    """A successful outcome: ``body`` is the decoded JSON (ServiceNow: its ``result``),
    None for an empty answer; ``status`` the HTTP status it came with."""

    body: Any
    headers: Mapping[str, str]
    status: int = 200


def media_type(header: str | None) -> str:
    """``"text/html; charset=utf-8"`` -> ``"text/html"``."""
    return (header or "").split(";", 1)[0].strip().lower()


def is_json_type(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def text_excerpt(body: bytes) -> str:
    """The start of a non-JSON body on one line (an HTML error page, a proxy message)."""
    text = " ".join(body.decode("utf-8", errors="replace").split())
    if len(text) > EXCERPT_CHARS:
        text = text[:EXCERPT_CHARS] + "..."
    return text


def one_line(value: Any) -> str | None:
    """A vendor's words on one line (ServiceNow's data-policy detail holds ``\\n\\t``)."""
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text or None


def os_reason(exc: OSError) -> str:
    """``Connection refused`` rather than asyncio's ``Connect call failed ('h', 1)``."""
    if exc.errno:
        return os.strerror(exc.errno)
    return exc.strerror or str(exc) or type(exc).__name__


def classify_exception(
    exc: BaseException, *, side: str, section: str, server: str, method: str, url: str
) -> ApiError:
    """The error a transport exception means.

    ``section`` is the settings section (``servicenow``) named in hints, ``server`` how
    messages call the other end (``instance``, ``BigPanda``).
    """
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return FatalError(
            side,
            f"TLS certificate of {exc.host} not trusted ({exc.certificate_error}); "
            f"fix the certificate chain or set {section}.verify_tls = false for a lab instance",
            method=method,
            url=url,
        )
    if isinstance(exc, aiohttp.ClientConnectorError) and (
        isinstance(exc, aiohttp.ClientConnectorDNSError)
        or isinstance(exc.os_error, socket.gaierror)
    ):
        return TransientError(
            side,
            f"{server} unreachable: cannot resolve host {exc.host} (DNS)",
            method=method,
            url=url,
        )
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return TransientError(
            side, f"request timed out ({section}.timeout)", method=method, url=url
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = os_reason(exc.os_error)
        return TransientError(
            side,
            f"{server} unreachable: cannot connect to {exc.host}:{exc.port} ({reason})",
            method=method,
            url=url,
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return TransientError(side, "server disconnected before answering", method=method, url=url)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return TransientError(side, f"answer cut short ({exc})", method=method, url=url)
    if isinstance(exc, aiohttp.InvalidURL):
        return FatalError(
            side, f"invalid URL {exc.url} (check {section}.url)", method=method, url=url
        )
    if isinstance(exc, aiohttp.TooManyRedirects):
        return PermanentError(
            side, f"too many redirects (is {section}.url right?)", method=method, url=url
        )
    if isinstance(exc, OSError):  # ECONNRESET, EPIPE, ENETUNREACH after connect, ...
        reason = os_reason(exc)
        return TransientError(side, f"connection error: {reason}", method=method, url=url)
    return TransientError(
        side, f"network error: {type(exc).__name__}: {exc}", method=method, url=url
    )


async def send(
    session: aiohttp.ClientSession,
    clock: Clock,
    observer: RequestObserver | None,
    *,
    side: str,
    method: str,
    template: str,
    url: str,
    params: Mapping[str, str] | None,
    data: bytes | Mapping[str, str] | None,
    headers: Mapping[str, str],
) -> HttpAnswer | BaseException:
    """One HTTP request: the answer, or the transport exception (returned, not raised).

    Redirects are not followed (a redirect is an answer to classify). The observer is
    called once with the path ``template`` and the status (None for a transport error).
    """
    started = clock.monotonic()
    status: int | None = None
    try:
        async with session.request(
            method, url, params=params, data=data, headers=headers, allow_redirects=False
        ) as response:
            body = await response.read()
            status = response.status
            return HttpAnswer(
                status=status,
                content_type=media_type(response.headers.get("Content-Type")),
                headers=response.headers,
                body=body,
            )
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return exc
    finally:
        if observer is not None:
            observer(side, method, template, status, clock.monotonic() - started)
