"""Logging: JSON lines (daemon default) or human-readable text, with secrets redacted.

Every record passes a redaction filter that replaces each known secret value with
``****`` in the message, the arguments and the ``extra`` fields, so a secret cannot
reach a log line even when an exception message contains it.

Structured fields go in ``extra={...}``; the JSON formatter emits them as keys. Every
record made while a sync pair's work runs carries ``pair`` (:data:`PAIR`, a context
variable each pair's tasks set: :func:`pair_context`), so one process running several
pairs says whose line it is.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

_PLAIN_RECORD = vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))
_STD_ATTRS = frozenset(_PLAIN_RECORD.keys() | {"message", "asctime", "taskName"})
#: a record's own attributes come first (its ``__init__`` sets them), the extras after
_OWN_ATTRS = len(_PLAIN_RECORD)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    tail = itertools.islice(vars(record).items(), _OWN_ATTRS, None)
    return {k: v for k, v in tail if k not in _STD_ATTRS and not k.startswith("_")}


#: the sync pair whose work the current task does (None: the process's own work)
PAIR: contextvars.ContextVar[str | None] = contextvars.ContextVar("bpsync_pair", default=None)


@contextlib.contextmanager
def pair_context(name: str) -> Iterator[None]:
    """Run a block (and the tasks it creates, which copy the context) as pair ``name``."""
    token = PAIR.set(name)
    try:
        yield
    finally:
        PAIR.reset(token)


class PairFilter(logging.Filter):
    """Adds ``pair`` to a record made inside :func:`pair_context` (unless it has one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        pair = PAIR.get()
        if pair is not None and not hasattr(record, "pair"):
            record.pair = pair
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the extras, and exc if any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_extras(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:  # already formatted (and scrubbed) by RedactingFilter
            out["exc"] = record.exc_text
        try:  # orjson: the line at less cost than the standard library
            return orjson.dumps(out, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except (TypeError, orjson.JSONEncodeError):  # e.g. an int past 64 bits
            return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``HH:MM:SS level logger: message key=value ...`` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S")
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{ts} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extras:
            line = f"{line}  {extras}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        elif record.exc_text:  # already formatted (and scrubbed) by RedactingFilter
            line = f"{line}\n{record.exc_text}"
        return line


class RedactingFilter(logging.Filter):
    """Replaces every known secret with ``****`` in the whole record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        # one pass over a text for all of them, the longest tried first at each place
        self._pattern = re.compile("|".join(map(re.escape, self.secrets))) if self.secrets else None

    def _scrub(self, text: str) -> str:
        return self._pattern.sub("****", text) if self._pattern is not None else text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        record.msg = self._scrub(record.getMessage())
        record.args = None
        for key, value in _extras(record).items():
            if isinstance(value, str):
                setattr(record, key, self._scrub(value))
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self._scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if record.exc_text:
            record.exc_text = self._scrub(record.exc_text)
        return True


def setup_logging(
    level: str = "INFO",
    fmt: str = "json",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Configure the root logger once (idempotent: replaces bpsync's previous handler)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_bpsync", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._bpsync = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(PairFilter())
    handler.addFilter(RedactingFilter(secrets))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # a record's source line, thread and process are in no line bpsync writes: not
    # looked up for each record (the logging module's documented switches)
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # aiohttp's access log and alembic's per-start migration chatter ("Context impl
    # SQLiteImpl") are noisy and not bpsync's; keep them at WARNING unless DEBUG
    quiet = logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING
    for name in ("aiohttp.access", "alembic"):
        logging.getLogger(name).setLevel(quiet)
    # APScheduler logs every run at INFO and a run skipped while a long cycle is still
    # going (max_instances=1, expected) at WARNING: noise every poll interval
    logging.getLogger("apscheduler").setLevel(
        logging.DEBUG if level.upper() == "DEBUG" else logging.ERROR
    )
