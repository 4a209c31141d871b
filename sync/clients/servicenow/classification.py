"""The one place that maps every ServiceNow HTTP outcome to a success or the error to
raise (retry, skip or stop), and the wait a throttled answer asks for (the client's
contract: :mod:`sync.clients.servicenow.client`).

Classification decisions worth knowing:

- HTTP 500 with a JSON error body is **permanent**: SPEC B13 names "501 and above" as
  transient, and a ServiceNow 500 with an error body is a server-side script failure
  that repeats for the same input. A 500 whose body is not JSON (a proxy or Tomcat page)
  is transient.
- 403 is **fatal** (the integration user lacks rights: nothing works until an operator
  acts), except a 403 on a write whose message is ServiceNow's record-level refusal
  ("Operation Failed", e.g. "Data Policy Exception: ... mandatory: Resolution code") or
  which mentions a data policy: that one is **permanent** (this record, this payload).
- 202 on a GET (ServiceNow's session queue overflow, docs 6.8) is transient.
- A 2xx answer that is not JSON (hibernating instance, proxy login page) or is malformed
  JSON is transient; a JSON answer without ``result`` is permanent, naming the problem.
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sync.clients.http import (
    HttpAnswer,
    Parsed,
    classify_exception,
    one_line,
    parse_json_body,
    text_excerpt,
)
from sync.clients.servicenow.paths import SIDE
from sync.errors import (
    ApiError,
    FatalError,
    NotFoundError,
    PermanentError,
    TransientError,
)

_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def parse_retry_after(headers: Mapping[str, str], now: datetime) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP-date), else ``X-RateLimit-Reset``
    (a UNIX timestamp, docs 1.6); None when neither is usable."""
    raw = (headers.get("Retry-After") or "").strip()
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None:
            if when.tzinfo is None:  # an HTTP-date is GMT by definition
                when = when.replace(tzinfo=UTC)
            return max(0.0, (when - now).total_seconds())
    reset = (headers.get("X-RateLimit-Reset") or "").strip()
    if reset:
        try:
            return max(0.0, float(reset) - now.timestamp())
        except ValueError:
            return None
    return None


def _error_fields(data: Any) -> tuple[str | None, str | None]:
    """ServiceNow's ``{"error": {"message", "detail"}}`` (or OAuth's flat error) fields."""
    if not isinstance(data, Mapping):
        return None, None
    error = data.get("error")
    if isinstance(error, Mapping):
        return one_line(error.get("message")), one_line(error.get("detail"))
    if isinstance(error, str):  # /oauth_token.do: {"error": "server_error", "error_description"}
        description = one_line(data.get("error_description"))
        return (description or one_line(error)), (one_line(error) if description else None)
    return None, None


def classify(
    outcome: HttpAnswer | BaseException,
    *,
    method: str,
    url: str,
    now: datetime,
    expect_result: bool = True,
) -> Parsed | ApiError:
    """Decide what one HTTP outcome means: a :class:`Parsed` success or the error to raise.

    ``outcome`` is the answer, or the exception the transport raised (aiohttp's
    ``ClientError``, ``OSError``, ``TimeoutError``). ``expect_result`` is False for
    ``/oauth_token.do``, whose JSON has no ``result`` wrapper. ``url`` must carry no
    secret (it goes into the message).
    """
    if isinstance(outcome, BaseException):
        return classify_exception(
            outcome, side=SIDE, section="servicenow", server="instance", method=method, url=url
        )
    status, ctype, body = outcome.status, outcome.content_type, outcome.body

    data, json_problem = parse_json_body(ctype, body)
    sn_message, sn_detail = _error_fields(data)

    if 200 <= status < 300:
        if status == 202 and method == "GET":
            return TransientError(
                SIDE,
                "HTTP 202 without a result (ServiceNow session queue full?)",
                method=method,
                url=url,
            )
        if not body.strip():
            if status == 204 or method == "DELETE":
                return Parsed(None, outcome.headers)
            return TransientError(
                SIDE,
                f"HTTP {status} with an empty body (expected JSON)",
                status=status,
                method=method,
                url=url,
            )
        if json_problem is not None:
            hint = (
                " (instance hibernating or a proxy page?)"
                if json_problem.startswith("expected JSON")
                else ""
            )
            return TransientError(SIDE, json_problem + hint, status=status, method=method, url=url)
        if not expect_result:
            return Parsed(data, outcome.headers)
        if not isinstance(data, Mapping) or "result" not in data:
            shape = (
                f"an object with keys {sorted(data)[:5]}"
                if isinstance(data, Mapping)
                else f"a JSON {type(data).__name__}"
            )
            return PermanentError(
                SIDE,
                f"unexpected answer shape: no 'result' member (got {shape})",
                status=status,
                method=method,
                url=url,
            )
        return Parsed(data["result"], outcome.headers)

    # --- failures: ServiceNow's own words when it gave some
    if sn_message is None:
        if json_problem is not None:
            excerpt = text_excerpt(body) if ctype.startswith("text/") else ""
            sn_message = f"HTTP {status} with a non-JSON body ({ctype or 'no content type'})"
            if excerpt:
                sn_detail = excerpt
        else:
            sn_message = f"HTTP {status}"
    text = f"{sn_message} {sn_detail or ''}"
    retry_after_s = parse_retry_after(outcome.headers, now)

    if status == 401:
        return FatalError(
            SIDE,
            f"authentication refused: {sn_message}",
            status=status,
            detail=sn_detail,
            method=method,
            url=url,
        )
    if status == 403:
        record_level = "data policy" in text.lower() or (
            method in _WRITE_METHODS and sn_message.strip().lower() == "operation failed"
        )
        if record_level:
            return PermanentError(
                SIDE, sn_message, status=status, detail=sn_detail, method=method, url=url
            )
        return FatalError(
            SIDE,
            f"permission refused: {sn_message}",
            status=status,
            detail=sn_detail,
            method=method,
            url=url,
        )
    if status == 404:
        return NotFoundError(
            SIDE, sn_message, status=status, detail=sn_detail, method=method, url=url
        )
    if status == 429:
        return TransientError(
            SIDE,
            sn_message,
            retry_after_s=retry_after_s,
            status=status,
            detail=sn_detail,
            method=method,
            url=url,
        )
    if status == 500:
        if json_problem is not None:  # not ServiceNow speaking: a proxy or the servlet container
            return TransientError(
                SIDE, sn_message, status=status, detail=sn_detail, method=method, url=url
            )
        return PermanentError(
            SIDE, sn_message, status=status, detail=sn_detail, method=method, url=url
        )
    if status >= 501:
        return TransientError(
            SIDE,
            sn_message,
            retry_after_s=retry_after_s,
            status=status,
            detail=sn_detail,
            method=method,
            url=url,
        )
    return PermanentError(SIDE, sn_message, status=status, detail=sn_detail, method=method, url=url)
