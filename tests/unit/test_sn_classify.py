"""The classification table of ServiceNow outcomes (sync.clients.servicenow.classify)."""

from __future__ import annotations

import errno
import json
import socket
import ssl
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from sync.clients.servicenow import HttpAnswer, Parsed, classify, media_type, parse_retry_after
from sync.errors import (
    ApiError,
    FatalError,
    NotFoundError,
    PermanentError,
    TransientError,
)

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
URL = "http://sn.example/api/now/table/incident"
KEY = SimpleNamespace(host="sn.example", port=443, ssl=True)


def answer(
    status: int,
    body: Any = None,
    *,
    ctype: str = "application/json",
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> HttpAnswer:
    data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    return HttpAnswer(
        status=status, content_type=ctype, headers=CIMultiDict(headers or {}), body=data
    )


def sn_error(message: str, detail: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "detail": detail}, "status": "failure"}


def run(outcome: HttpAnswer | BaseException, method: str = "GET", **kw: Any) -> Parsed | ApiError:
    return classify(outcome, method=method, url=URL, now=NOW, **kw)


# ---------------------------------------------------------------- successes


def test_200_result_object() -> None:
    result = run(answer(200, {"result": {"sys_id": "x"}}, headers={"X-Total-Count": "1"}))
    assert isinstance(result, Parsed)
    assert result.body == {"sys_id": "x"}
    assert result.headers["X-Total-Count"] == "1"


def test_201_result_and_json_with_charset() -> None:
    result = run(answer(201, {"result": {"a": "1"}}, ctype="application/json"), "POST")
    assert isinstance(result, Parsed)
    assert result.body == {"a": "1"}


def test_204_delete_no_body() -> None:
    result = run(answer(204, ctype=""), "DELETE")
    assert isinstance(result, Parsed)
    assert result.body is None


def test_token_answer_without_result_wrapper() -> None:
    result = run(answer(200, {"access_token": "t"}), "POST", expect_result=False)
    assert isinstance(result, Parsed)
    assert result.body == {"access_token": "t"}


# ---------------------------------------------------------------- the table

TRANSIENT, PERMANENT, NOT_FOUND, FATAL = "transient", "permanent", "not_found", "fatal"
KIND = {
    TRANSIENT: TransientError,
    PERMANENT: PermanentError,
    NOT_FOUND: NotFoundError,
    FATAL: FatalError,
}

HTML = b"<html><body class='instance-hibernating-page'>Your instance is hibernating</body></html>"

ROWS: list[tuple[str, HttpAnswer | BaseException, str, str, str]] = [
    # (id, outcome, method, kind, text expected in str(error))
    (
        "econnrefused",
        aiohttp.ClientConnectorError(KEY, ConnectionRefusedError(errno.ECONNREFUSED, "refused")),  # type: ignore[arg-type]
        "GET",
        TRANSIENT,
        "instance unreachable: cannot connect to sn.example:443 (Connection refused)",
    ),
    (
        "enetunreach",
        aiohttp.ClientConnectorError(KEY, OSError(errno.ENETUNREACH, "Network is unreachable")),  # type: ignore[arg-type]
        "POST",
        TRANSIENT,
        "Network is unreachable",
    ),
    (
        "enotfound",
        aiohttp.ClientConnectorDNSError(KEY, socket.gaierror(socket.EAI_NONAME, "Name unknown")),  # type: ignore[arg-type]
        "GET",
        TRANSIENT,
        "cannot resolve host sn.example",
    ),
    (
        "eai_again",
        aiohttp.ClientConnectorError(KEY, socket.gaierror(socket.EAI_AGAIN, "Try again")),  # type: ignore[arg-type]
        "GET",
        TRANSIENT,
        "cannot resolve host sn.example",
    ),
    (
        "econnreset",
        aiohttp.ClientOSError(errno.ECONNRESET, "Connection reset by peer"),
        "PATCH",
        TRANSIENT,
        "connection error: Connection reset by peer",
    ),
    (
        "epipe",
        aiohttp.ClientOSError(errno.EPIPE, "Broken pipe"),
        "POST",
        TRANSIENT,
        "Broken pipe",
    ),
    (
        "bare_connection_reset",
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        "GET",
        TRANSIENT,
        "Connection reset by peer",
    ),
    (
        "server_disconnected",
        aiohttp.ServerDisconnectedError(),
        "GET",
        TRANSIENT,
        "server disconnected",
    ),
    ("asyncio_timeout", TimeoutError(), "GET", TRANSIENT, "timed out"),
    (
        "connect_timeout",
        aiohttp.ConnectionTimeoutError("connect"),
        "GET",
        TRANSIENT,
        "timed out",
    ),
    ("read_timeout", aiohttp.SocketTimeoutError("read"), "PATCH", TRANSIENT, "timed out"),
    ("payload_cut", aiohttp.ClientPayloadError("cut"), "GET", TRANSIENT, "answer cut short"),
    (
        "tls_untrusted",
        aiohttp.ClientConnectorCertificateError(KEY, ssl.SSLCertVerificationError("self-signed")),  # type: ignore[arg-type]
        "GET",
        FATAL,
        "TLS certificate of sn.example not trusted",
    ),
    (
        "429_retry_after_seconds",
        answer(
            429,
            sn_error("Rate limit exceeded", "Rate limit of 100 requests per hour exceeded"),
            headers={"Retry-After": "30"},
        ),
        "GET",
        TRANSIENT,
        "HTTP 429: Rate limit exceeded (Rate limit of 100 requests per hour exceeded)",
    ),
    ("429_no_header", answer(429, sn_error("Too Many Requests")), "GET", TRANSIENT, "HTTP 429"),
    ("501", answer(501, sn_error("Not Implemented")), "GET", TRANSIENT, "HTTP 501"),
    (
        "502_html",
        answer(502, raw=b"<html>Bad gateway</html>", ctype="text/html"),
        "GET",
        TRANSIENT,
        "non-JSON body (text/html)",
    ),
    ("503", answer(503, sn_error("Service Unavailable")), "POST", TRANSIENT, "HTTP 503"),
    ("504_empty", answer(504, ctype=""), "GET", TRANSIENT, "HTTP 504"),
    (
        "500_json_is_permanent",
        answer(500, sn_error("Script error", "TypeError in business rule")),
        "POST",
        PERMANENT,
        "HTTP 500: Script error (TypeError in business rule)",
    ),
    (
        "500_html_is_transient",
        answer(500, raw=b"<html>Internal error</html>", ctype="text/html"),
        "GET",
        TRANSIENT,
        "HTTP 500",
    ),
    (
        "200_html_hibernating",
        answer(200, raw=HTML, ctype="text/html"),
        "GET",
        TRANSIENT,
        "expected JSON, got text/html (instance hibernating or a proxy page?)",
    ),
    (
        "200_no_content_type",
        answer(200, raw=b"hello", ctype=""),
        "GET",
        TRANSIENT,
        "expected JSON, got no content type",
    ),
    (
        "200_malformed_json",
        answer(200, raw=b'{"result": [', ctype="application/json"),
        "GET",
        TRANSIENT,
        "malformed JSON",
    ),
    ("200_empty_body", answer(200, ctype="application/json"), "GET", TRANSIENT, "empty body"),
    ("202_get", answer(202, ctype=""), "GET", TRANSIENT, "HTTP 202"),
    (
        "200_no_result",
        answer(200, {"records": []}),
        "GET",
        PERMANENT,
        "no 'result' member (got an object with keys ['records'])",
    ),
    ("200_json_list", answer(200, [1, 2]), "GET", PERMANENT, "got a JSON list"),
    (
        "400_invalid_table",
        answer(400, sn_error("Invalid table nope")),
        "GET",
        PERMANENT,
        "HTTP 400: Invalid table nope",
    ),
    (
        "400_plain_text",
        answer(400, raw=b"Request header is too large", ctype="text/plain"),
        "GET",
        PERMANENT,
        "Request header is too large",
    ),
    (
        "404_record",
        answer(
            404,
            sn_error(
                "No Record found", "Record doesn't exist or ACL restricts the record retrieval"
            ),
        ),
        "GET",
        NOT_FOUND,
        "No Record found (Record doesn't exist",
    ),
    (
        "404_delete",
        answer(404, sn_error("No Record found")),
        "DELETE",
        NOT_FOUND,
        "No Record found",
    ),
    ("405", answer(405, sn_error("Method not Supported")), "PUT", PERMANENT, "HTTP 405"),
    (
        "409",
        answer(409, sn_error("Conflict", "duplicate")),
        "POST",
        PERMANENT,
        "Conflict (duplicate)",
    ),
    ("415", answer(415, sn_error("Unsupported Media Type")), "POST", PERMANENT, "HTTP 415"),
    ("422", answer(422, sn_error("Unprocessable")), "PATCH", PERMANENT, "HTTP 422"),
    (
        "401",
        answer(401, sn_error("User Not Authenticated", "Required to provide Auth information")),
        "GET",
        FATAL,
        "authentication refused: User Not Authenticated (Required to provide Auth information)",
    ),
    (
        "401_oauth",
        answer(401, {"error_description": "access_denied", "error": "server_error"}),
        "POST",
        FATAL,
        "authentication refused: access_denied (server_error)",
    ),
    (
        "403_query_rights",
        answer(
            403,
            sn_error(
                "Insufficient rights to query records",
                "Field(s) present in the query do not have permission to be read",
            ),
        ),
        "GET",
        FATAL,
        "permission refused: Insufficient rights to query records",
    ),
    (
        "403_data_policy_write_is_permanent",
        answer(
            403,
            sn_error(
                "Operation Failed",
                "Data Policy Exception: \n\tThe following fields are mandatory: Resolution code",
            ),
        ),
        "PATCH",
        PERMANENT,
        "Data Policy Exception",
    ),
    (
        "403_acl_write_is_permanent",
        answer(
            403,
            sn_error("Operation Failed", "ACL Exception Update Failed due to security constraints"),
        ),
        "PATCH",
        PERMANENT,
        "ACL Exception Update Failed",
    ),
    (
        "403_read_is_fatal",
        answer(403, sn_error("Operation Failed", "ACL restricts")),
        "GET",
        FATAL,
        "permission refused",
    ),
]


@pytest.mark.parametrize(
    ("outcome", "method", "kind", "text"),
    [pytest.param(o, m, k, t, id=i) for i, o, m, k, t in ROWS],
)
def test_classification_table(
    outcome: HttpAnswer | BaseException, method: str, kind: str, text: str
) -> None:
    result = run(outcome, method)
    assert type(result) is KIND[kind], f"{result!r}"
    assert isinstance(result, ApiError)
    assert text in str(result)
    assert result.side == "servicenow"
    assert result.method == method
    assert result.url == URL
    assert "\n" not in str(result)  # one line, even ServiceNow's multi-line data-policy detail


def test_429_retry_after_seconds_is_carried() -> None:
    result = run(answer(429, sn_error("Rate limit exceeded"), headers={"Retry-After": "30"}))
    assert isinstance(result, TransientError)
    assert result.retry_after_s == 30.0
    assert result.status == 429
    assert result.detail is None


def test_503_retry_after_http_date() -> None:
    result = run(
        answer(503, sn_error("down"), headers={"Retry-After": "Thu, 01 Jan 2026 12:01:30 GMT"})
    )
    assert isinstance(result, TransientError)
    assert result.retry_after_s == 90.0


def test_status_and_detail_kept() -> None:
    result = run(answer(404, sn_error("No Record found", "gone")))
    assert isinstance(result, NotFoundError)
    assert (result.status, result.message, result.detail) == (404, "No Record found", "gone")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "12"}, 12.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"Retry-After": "-4"}, 0.0),
        ({"Retry-After": "Thu, 01 Jan 2026 12:00:10 GMT"}, 10.0),
        ({"Retry-After": "Thu, 01 Jan 2026 11:00:00 GMT"}, 0.0),
        ({"X-RateLimit-Reset": str(int(NOW.timestamp()) + 45)}, 45.0),
        ({"Retry-After": "soon", "X-RateLimit-Reset": str(int(NOW.timestamp()) + 5)}, 5.0),
        ({"Retry-After": "soon"}, None),
        ({"X-RateLimit-Reset": "never"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(CIMultiDict(headers), NOW) == expected


def test_media_type() -> None:
    assert media_type("Application/JSON; charset=UTF-8") == "application/json"
    assert media_type(None) == ""
    vendor = run(answer(200, {"result": []}, ctype="application/vnd.sn+json"))
    assert isinstance(vendor, Parsed)
