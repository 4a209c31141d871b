"""The one place that maps every BigPanda HTTP outcome to a success or the error to raise
(retry, skip or stop), and the wait suggested after a 429 (the client's contract:
:mod:`sync.clients.bigpanda.client`).

Classification decisions worth knowing:

- 500 is **transient**: BigPanda documents it as "server error, retry later" (docs 3.1),
  unlike ServiceNow's script-failure 500. 501 and above are transient (SPEC B13).
- 401 and 403 are **fatal** (bad key, or the key's user lacks a role permission).
- 404 is :class:`NotFoundError`, except BigPanda's ``NotExistTag`` (the tag has no
  definition): a :class:`PermanentError`, so the caller does not think the incident is
  gone.
- 409 on resolve means "already resolved" (docs 0): a success with ``status`` 409.
  Elsewhere 409 is permanent.
- 202 and 204 are successes whatever their body; a 200/201 whose body is not JSON (a
  proxy page) or is malformed JSON is transient; an empty 200 to a GET is transient.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sync.clients.bigpanda.paths import API_KEY_SETTING, SIDE
from sync.clients.http import (
    HttpAnswer,
    Parsed,
    classify_exception,
    one_line,
    parse_json_body,
    text_excerpt,
)
from sync.errors import (
    ApiError,
    FatalError,
    MissingTagError,
    NotFoundError,
    PermanentError,
    TransientError,
)

#: a 429 suggests waiting BASE * 2**(n-1) seconds for the n-th consecutive one, capped
RATE_LIMIT_BACKOFF_BASE_S = 1.0
RATE_LIMIT_BACKOFF_MAX_S = 60.0


def rate_limit_delay_s(consecutive_429s: int) -> float:
    """Suggested wait after the n-th consecutive 429 of a family: 1, 2, 4, ... 60 s."""
    exponent = max(0, consecutive_429s - 1)
    if exponent >= 16:  # 2**16 s is far past the cap; avoid huge floats
        return RATE_LIMIT_BACKOFF_MAX_S
    return min(RATE_LIMIT_BACKOFF_MAX_S, RATE_LIMIT_BACKOFF_BASE_S * float(2**exponent))


def vendor_message(data: Any) -> str | None:
    """BigPanda's words from ``{"status": N, "errors": [...]}`` (strings or objects),
    else a ``message``/``error`` member; None when the body says nothing."""
    if not isinstance(data, Mapping):
        return None
    parts: list[str] = []
    errors = data.get("errors")
    if isinstance(errors, str):
        errors = [errors]
    if isinstance(errors, Sequence):
        for item in errors:
            if isinstance(item, Mapping):
                name = one_line(item.get("name") or item.get("code") or item.get("type"))
                text = one_line(item.get("message") or item.get("description"))
                if name and text:
                    parts.append(f"{name}: {text}")
                elif name or text:
                    parts.append(name or text or "")
                else:
                    parts.append(json.dumps(item, sort_keys=True, default=str))
            elif item is not None:
                text = one_line(item)
                if text:
                    parts.append(text)
    if not parts:
        for key in ("message", "error", "msg"):
            text = one_line(data.get(key)) if isinstance(data.get(key), str) else None
            if text:
                parts.append(text)
                break
    return "; ".join(parts) or None


def classify(
    outcome: HttpAnswer | BaseException,
    *,
    method: str,
    url: str,
    consecutive_429s: int = 1,
    conflict_ok: bool = False,
    credential: str = API_KEY_SETTING,
) -> Parsed | ApiError:
    """Decide what one HTTP outcome means: a :class:`Parsed` success or the error to raise.

    ``consecutive_429s`` counts this answer if it is a 429 (sets the suggested delay);
    ``conflict_ok`` makes a 409 a success (resolve: already resolved); ``credential`` is
    the setting named when the token is refused. ``url`` must carry no secret.
    """
    if isinstance(outcome, BaseException):
        return classify_exception(
            outcome, side=SIDE, section="bigpanda", server="BigPanda", method=method, url=url
        )
    status, ctype, body = outcome.status, outcome.content_type, outcome.body

    data, json_problem = parse_json_body(ctype, body)

    if 200 <= status < 300:
        if status in (202, 204):  # accepted / no content: the status is the answer
            return Parsed(data, outcome.headers, status)
        if not body.strip():
            if method == "GET":
                return TransientError(
                    SIDE,
                    f"HTTP {status} with an empty body (expected JSON)",
                    status=status,
                    method=method,
                    url=url,
                )
            return Parsed(None, outcome.headers, status)
        if json_problem is not None:
            hint = " (a proxy page?)" if json_problem.startswith("expected JSON") else ""
            return TransientError(SIDE, json_problem + hint, status=status, method=method, url=url)
        return Parsed(data, outcome.headers, status)

    # --- failures: BigPanda's own words when it gave some
    message = vendor_message(data)
    detail: str | None = None
    if message is None:
        if json_problem is not None:
            message = f"HTTP {status} with a non-JSON body ({ctype or 'no content type'})"
            excerpt = text_excerpt(body) if ctype.startswith("text/") else ""
            detail = excerpt or None
        else:
            message = f"HTTP {status}"

    if status == 401:
        return FatalError(
            SIDE,
            f"authentication refused (check {credential}): {message}",
            status=status,
            detail=detail,
            method=method,
            url=url,
        )
    if status == 403:
        return FatalError(
            SIDE,
            f"permission refused (the user of {credential} lacks a role permission "
            f"for this environment or action): {message}",
            status=status,
            detail=detail,
            method=method,
            url=url,
        )
    if status == 404:
        if "notexisttag" in message.lower():
            return MissingTagError(
                SIDE,
                f"tag definition does not exist: {message}",
                status=status,
                detail=detail,
                method=method,
                url=url,
            )
        return NotFoundError(SIDE, message, status=status, detail=detail, method=method, url=url)
    if status == 409 and conflict_ok:
        return Parsed(data, outcome.headers, status)
    if status == 410:
        return NotFoundError(SIDE, message, status=status, detail=detail, method=method, url=url)
    if status == 429:
        return TransientError(
            SIDE,
            f"rate limited: {message}",
            retry_after_s=rate_limit_delay_s(consecutive_429s),
            status=status,
            detail=detail,
            method=method,
            url=url,
        )
    if status >= 500:  # 500 "server error, retry later" (docs 3.1); 501+ (SPEC B13)
        return TransientError(SIDE, message, status=status, detail=detail, method=method, url=url)
    return PermanentError(SIDE, message, status=status, detail=detail, method=method, url=url)
