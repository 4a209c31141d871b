"""One aioresponses set-up for the clients' unit tests: the mock transport, a request
recorder and JSON answers (shared by tests/unit/test_*_client_unit.py)."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses
from aioresponses import core as aioresponses_core
from yarl import URL


class _CompatResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 builds responses without ``stream_writer``, which aiohttp 3.14
    requires; a stand-in reporting zero bytes sent is all the response needs."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


@pytest.fixture
def mocked(monkeypatch: pytest.MonkeyPatch) -> Iterator[aioresponses]:
    """aioresponses, working on this aiohttp (the shim applies only where needed)."""
    if "stream_writer" in inspect.signature(aiohttp.ClientResponse.__init__).parameters:
        monkeypatch.setattr(aioresponses_core, "ClientResponse", _CompatResponse)
    with aioresponses() as m:
        yield m


class Recorder:
    """An aioresponses callback that records each request and answers from a script."""

    def __init__(self, *answers: CallbackResult | Callable[[URL, dict[str, Any]], CallbackResult]):
        self.answers = list(answers)
        self.calls: list[tuple[URL, dict[str, Any]]] = []

    def __call__(self, url: URL, **kwargs: Any) -> CallbackResult:
        self.calls.append((url, kwargs))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return answer(url, kwargs) if callable(answer) else answer

    def body(self, n: int = 0) -> Any:
        return json.loads(self.calls[n][1]["data"])


def json_answer(data: Any, status: int = 200) -> CallbackResult:
    """A JSON answer of any shape (aioresponses types ``payload`` as a dict only)."""
    return CallbackResult(
        status=status, body=json.dumps(data).encode(), content_type="application/json"
    )
