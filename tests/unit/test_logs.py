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


async def test_every_line_of_a_pairs_work_names_the_pair() -> None:
    import asyncio

    from sync.logs import pair_context

    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    log = logging.getLogger("sync.test")

    async def work(name: str) -> None:
        with pair_context(name):
            # a task created inside the block keeps the pair (it copies the context)
            await asyncio.create_task(asyncio.sleep(0))
            await asyncio.create_task(_say(log, f"from {name}"))

    try:
        setup_logging("INFO", "json", stream=stream)
        await asyncio.gather(work("prod"), work("staging"))
        log.info("the process itself")
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert {(line["msg"], line.get("pair")) for line in lines} == {
        ("from prod", "prod"),
        ("from staging", "staging"),
        ("the process itself", None),
    }


async def _say(log: logging.Logger, msg: str) -> None:
    log.info(msg)
