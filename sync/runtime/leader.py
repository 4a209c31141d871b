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
    from sync.store.engines import POOL_OPTIONS, normalise_url

    parsed: URL = normalise_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise StoreError(f"leader election needs a Postgres URL, not {redact_url(url)!r}")
    schema = parsed.query.get("search_path")
    schema_name = str(schema) if schema else None
    dsn_url = parsed.set(drivername="postgresql").difference_update_query(
        ["search_path", *POOL_OPTIONS]
    )
    return dsn_url.render_as_string(hide_password=False), schema_name


class ElectionSession:
    """The dedicated connection the advisory locks live on. Each elector has its own,
    unless a replica of several pairs gives all its pairs' electors one (the locks of
    many keys on one session: one connection per replica, not one per pair). Queries
    on it run one at a time (an asyncpg connection runs one operation at a time)."""

    def __init__(self, dsn: str, application_name: str) -> None:
        self._dsn = dsn
        self.application_name = application_name[:63]
        self._conn: Any = None  # asyncpg.Connection (untyped package)
        self.busy = asyncio.Lock()
        self.users = 0
        """electors that use this session (the last to release closes it)"""

    @property
    def alive(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def connection(self) -> Any:
        if self.alive:
            return self._conn
        self._conn = await asyncpg.connect(
            self._dsn,
            timeout=ELECTION_TIMEOUT_S,
            server_settings={"application_name": self.application_name},
        )
        return self._conn

    async def drop(self) -> None:
        """Close the session (every lock on it goes with it)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await asyncio.wait_for(conn.close(), timeout=ELECTION_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - a dead connection: make sure it is gone
            conn.terminate()

    def backend_pid(self) -> int | None:
        return int(self._conn.get_server_pid()) if self.alive else None


def application_name(holder: str, group: str = "") -> str:
    """The name of a replica's election sessions: ``bpsync leader [GROUP ]HOLDER``."""
    return f"bpsync leader {group + ' ' if group else ''}{holder}"[:63]


def shared_session(url: str, holder: str, group: str) -> ElectionSession:
    """One election session for all the pairs of a replica (their schemas differ, the
    server and database do not)."""
    dsn, _ = _asyncpg_target(url)
    return ElectionSession(dsn, application_name(holder, group))


class PostgresLeaderElector:
    """Leader election by advisory lock on a dedicated session (module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        holder: str,
        clock: Clock | None = None,
        group: str = "",
        session: ElectionSession | None = None,
    ) -> None:
        self.url = url
        self.holder = holder
        self.group = group
        """the deployment's pairs (a fingerprint): replicas of one deployment share it,
        so :meth:`replicas` counts them apart from other deployments in the database"""
        self.clock = clock or SystemClock()
        dsn, self.schema = _asyncpg_target(url)
        self.key = advisory_key(self.schema)
        self._session = session or ElectionSession(dsn, application_name(holder, group))
        self._session.users += 1
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    def _error(self, doing: str, exc: BaseException) -> StoreError:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return StoreError(f"leader election ({doing}) on {redact_url(self.url)}: {detail}")

    async def _fetchval(self, doing: str, query: str, *args: Any) -> Any:
        """One query on the session; a failure drops it (its locks are gone) and raises."""
        async with self._session.busy:
            try:
                conn = await self._session.connection()
                return await conn.fetchval(query, *args, timeout=ELECTION_TIMEOUT_S)
            except _CONNECTION_ERRORS as exc:
                self._held = False
                await self._session.drop()
                raise self._error(doing, exc) from None

    async def replicas(self) -> int:
        """Replicas of this deployment alive now: the distinct holders among the election
        sessions of this ``group`` (``pg_stat_activity``), this one included."""
        prefix = f"bpsync leader {self.group} " if self.group else "bpsync leader "
        count = await self._fetchval(
            "count replicas",
            "SELECT count(DISTINCT application_name) FROM pg_stat_activity"
            " WHERE datname = current_database() AND starts_with(application_name, $1)",
            prefix,
        )
        return max(1, int(count or 0))

    async def lock_free(self) -> bool:
        """Whether no session holds this lock now (``pg_locks``): a replica counting its
        share asks before it reserves a place for the attempt."""
        held = await self._fetchval(
            "look at the lock",
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 1",
            self.key >> 32,
            self.key & 0xFFFFFFFF,
        )
        return not held

    async def try_acquire(self) -> bool:
        """Take the lock if it is free; True when this replica now leads."""
        if self._held and await self.still_leader():
            return True
        got = await self._fetchval(
            "pg_try_advisory_lock", "SELECT pg_try_advisory_lock($1::bigint)", self.key
        )
        self._held = bool(got)
        if self._held:
            log.info("leader lock taken", extra={"key": self.key, "holder": self.holder})
        return self._held

    async def still_leader(self) -> bool:
        """The session is alive and ``pg_locks`` shows it holding the lock."""
        if not self._held or not self._session.alive:
            self._held = False
            return False
        try:
            count = await self._fetchval(
                "check",
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND pid = pg_backend_pid() AND classid = $1::bigint::oid"
                " AND objid = $2::bigint::oid AND objsubid = 1",
                self.key >> 32,
                self.key & 0xFFFFFFFF,
            )
        except StoreError as exc:
            log.warning("leader connection lost: %s", exc)
            return False
        if not count:
            self._held = False
        return self._held

    async def release(self) -> None:
        """Give the lock back (safe to call twice); the session closes with its last user
        (a replica's shared session stays open for its other pairs)."""
        held, self._held = self._held, False
        if held and self._session.alive:
            with contextlib.suppress(StoreError):
                await self._fetchval(
                    "pg_advisory_unlock", "SELECT pg_advisory_unlock($1::bigint)", self.key
                )
        if self._session.users <= 1:
            await self._session.drop()

    async def close(self) -> None:
        """Release, and stop using the session (closed when nobody else does)."""
        await self.release()
        self._session.users = max(0, self._session.users - 1)
        if self._session.users == 0:
            await self._session.drop()

    async def backend_pid(self) -> int | None:
        """The server pid of the dedicated session (tests, diagnostics)."""
        return self._session.backend_pid()


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
    "ElectionSession",
    "PostgresLeaderElector",
    "SqliteSingleInstanceLock",
    "advisory_key",
    "application_name",
    "shared_session",
]
