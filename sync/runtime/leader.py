"""One writer at a time (SPEC B18): leader election on Postgres, a lock file on SQLite.

Postgres (:class:`PostgresLeaderElector`)
    Replicas compete for a session-level advisory lock, ``pg_try_advisory_lock(KEY)``,
    held on a dedicated asyncpg connection (never a pooled one: the lock lives exactly
    as long as that session). ``KEY`` is :data:`ADVISORY_LOCK_KEY` (``0x627073796e63``,
    "bpsync" in ASCII); a URL with ``?search_path=SCHEMA`` (several deployments in one
    database) XORs in the CRC-32 of the schema name, so each schema elects its own
    leader. When the leader dies its session ends, Postgres releases the lock, and a
    standby's next ``try_acquire`` (every poll interval) wins it. ``still_leader``
    checks the session is alive and still holds the lock (``pg_locks``), so a leader
    whose connection was killed or lost steps down; the store's epoch fencing
    (``take_epoch``) stops any write a deposed leader still had in flight.

SQLite (:class:`SqliteSingleInstanceLock`)
    SQLite has no sessions to elect with, and two daemons on one file would both
    write: the second one must not start. An exclusive, non-blocking ``flock`` on
    ``<database>.lock`` (holding the holder's pid) does it; the OS releases it when the
    process dies, however it dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import zlib
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import URL

from sync.clock import Clock, SystemClock
from sync.errors import StoreError
from sync.settings import redact_url

log = logging.getLogger(__name__)

#: a session that is gone or in a state it cannot recover from: the lock is not held
#: (asyncpg raises InternalClientError when the server killed the connection while an
#: operation was in progress)
_CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)

#: the advisory lock key: "bpsync" in ASCII (see the module docstring for schemas)
ADVISORY_LOCK_KEY = 0x627073796E63
#: how long one election query (or the connect) may take
ELECTION_TIMEOUT_S = 5.0


def advisory_key(schema: str | None) -> int:
    """The lock key for a deployment; a ``search_path`` schema gets its own key."""
    if not schema:
        return ADVISORY_LOCK_KEY
    return ADVISORY_LOCK_KEY ^ zlib.crc32(schema.encode())


def _asyncpg_target(url: str) -> tuple[str, str | None]:
    """(asyncpg DSN, search_path schema) from a SQLAlchemy Postgres URL."""
    from sync.store.engines import normalise_url

    parsed: URL = normalise_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise StoreError(f"leader election needs a Postgres URL, not {redact_url(url)!r}")
    schema = parsed.query.get("search_path")
    schema_name = str(schema) if schema else None
    dsn_url = parsed.set(drivername="postgresql").difference_update_query(["search_path"])
    return dsn_url.render_as_string(hide_password=False), schema_name


class PostgresLeaderElector:
    """Leader election by advisory lock on a dedicated connection (module docstring)."""

    def __init__(
        self, url: str, *, holder: str, clock: Clock | None = None, group: str = ""
    ) -> None:
        self.url = url
        self.holder = holder
        self.group = group
        """the deployment's pairs (a fingerprint): replicas of one deployment share it,
        so :meth:`replicas` counts them apart from other deployments in the database"""
        self.clock = clock or SystemClock()
        self._dsn, self.schema = _asyncpg_target(url)
        self.key = advisory_key(self.schema)
        self._conn: Any = None  # asyncpg.Connection (untyped package)
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    def _error(self, doing: str, exc: BaseException) -> StoreError:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return StoreError(f"leader election ({doing}) on {redact_url(self.url)}: {detail}")

    async def _connection(self) -> Any:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        self._conn = None
        self._held = False
        try:
            self._conn = await asyncpg.connect(
                self._dsn,
                timeout=ELECTION_TIMEOUT_S,
                server_settings={"application_name": self._application_name},
            )
        except _CONNECTION_ERRORS as exc:
            raise self._error("connect", exc) from None
        return self._conn

    @property
    def _application_name(self) -> str:
        group = f"{self.group} " if self.group else ""
        return f"bpsync leader {group}{self.holder}"[:63]

    async def replicas(self) -> int:
        """Replicas of this deployment alive now: the distinct holders among the election
        sessions of this ``group`` (``pg_stat_activity``), this one included."""
        conn = await self._connection()
        prefix = f"bpsync leader {self.group} " if self.group else "bpsync leader "
        try:
            count = await conn.fetchval(
                "SELECT count(DISTINCT application_name) FROM pg_stat_activity"
                " WHERE datname = current_database() AND starts_with(application_name, $1)",
                prefix,
                timeout=ELECTION_TIMEOUT_S,
            )
        except _CONNECTION_ERRORS as exc:
            await self._drop_connection()
            raise self._error("count replicas", exc) from None
        return max(1, int(count or 0))

    async def try_acquire(self) -> bool:
        """Take the lock if it is free; True when this replica now leads."""
        if self._held and await self.still_leader():
            return True
        conn = await self._connection()
        try:
            got = await conn.fetchval(
                "SELECT pg_try_advisory_lock($1::bigint)", self.key, timeout=ELECTION_TIMEOUT_S
            )
        except _CONNECTION_ERRORS as exc:
            await self._drop_connection()
            raise self._error("pg_try_advisory_lock", exc) from None
        self._held = bool(got)
        if self._held:
            log.info("leader lock taken", extra={"key": self.key, "holder": self.holder})
        return self._held

    async def still_leader(self) -> bool:
        """The session is alive and ``pg_locks`` shows it holding the lock."""
        if not self._held or self._conn is None or self._conn.is_closed():
            self._held = False
            return False
        try:
            count = await self._conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND pid = pg_backend_pid() AND classid = $1::bigint::oid"
                " AND objid = $2::bigint::oid AND objsubid = 1",
                self.key >> 32,
                self.key & 0xFFFFFFFF,
                timeout=ELECTION_TIMEOUT_S,
            )
        except _CONNECTION_ERRORS as exc:
            log.warning("leader connection lost: %s", self._error("check", exc))
            await self._drop_connection()
            return False
        if not count:
            self._held = False
        return self._held

    async def release(self) -> None:
        """Give the lock back and close the dedicated connection (safe to call twice)."""
        conn, held = self._conn, self._held
        self._held = False
        if conn is None:
            return
        if held and not conn.is_closed():
            with contextlib.suppress(Exception):
                await conn.fetchval(
                    "SELECT pg_advisory_unlock($1::bigint)", self.key, timeout=ELECTION_TIMEOUT_S
                )
        await self._drop_connection()

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self._held = False
        if conn is None:
            return
        try:
            await asyncio.wait_for(conn.close(), timeout=ELECTION_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - a dead connection: make sure it is gone
            conn.terminate()

    async def backend_pid(self) -> int | None:
        """The server pid of the dedicated session (tests, diagnostics)."""
        if self._conn is None or self._conn.is_closed():
            return None
        return int(self._conn.get_server_pid())


class SqliteSingleInstanceLock:
    """An exclusive ``flock`` on ``<db_path>.lock``; a second holder gets a StoreError."""

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self.db_path = str(db_path)
        self.path: Path | None = None
        if self.db_path and self.db_path != ":memory:" and not self.db_path.startswith("file:"):
            self.path = Path(self.db_path + ".lock")
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self.path is None or self._fd is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open the lock file {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise StoreError(
                f"another bpsync daemon ({who}) already uses {self.db_path}: "
                f"lock file {self.path} is held; stop it first (SQLite allows one daemon)"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"cannot lock {self.path}: {exc.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        return int(text.split()[0]) if text else None
    except (OSError, ValueError):
        return None


__all__ = [
    "ADVISORY_LOCK_KEY",
    "PostgresLeaderElector",
    "SqliteSingleInstanceLock",
    "advisory_key",
]
