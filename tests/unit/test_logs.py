"""Log lines keep their tracebacks, scrubbed of secrets, in both formats."""

from __future__ import annotations

import io
import json
import logging

import pytest

from sync.logs import setup_logging


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_logged_exception_keeps_its_traceback_without_the_secret(fmt: str) -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        setup_logging("INFO", fmt, secrets=["s3cret-value"], stream=stream)
        try:
            raise RuntimeError("boom with s3cret-value inside")
        except RuntimeError:
            logging.getLogger("sync.test").exception("executing a pair failed")
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    out = stream.getvalue()
    assert "s3cret-value" not in out
    text = json.loads(out.splitlines()[0])["exc"] if fmt == "json" else out
    assert "Traceback (most recent call last)" in text
    assert "RuntimeError: boom with" in text
