"""ServiceNow's error answers: ``{"error": {"message", "detail"}, "status": "failure"}``."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web


class SNError(Exception):
    """An HTTP error answer with ServiceNow's body."""

    def __init__(
        self,
        status: int,
        message: str,
        detail: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return error_response(self.status, self.message, self.detail, self.headers)


def error_response(
    status: int,
    message: str,
    detail: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = {"error": {"message": message, "detail": detail}, "status": "failure"}
    return web.json_response(body, status=status, headers=headers)


def not_found() -> SNError:
    return SNError(
        404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval"
    )


def bad_request(detail: str) -> SNError:
    return SNError(400, "Exception while reading request", detail)
