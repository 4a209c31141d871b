"""Shared pieces of the end-to-end benchmarks (latency, cost, backfill, scale).

Everything runs over loopback, as separate processes, the way an operator runs bpsync:

- :class:`Emulators`: ``python -m sync emulate both --sn-port P --bp-port Q
  [--rate-limit R]`` (ServiceNow user ``bpsync``/``bpsync``; BigPanda API key
  ``BPUbpsync-emulator``, org token ``bpsync-org-token``);
- :class:`Daemon`: ``python -m sync run`` configured through ``BPSYNC_*`` environment
  variables and a TOML file (``BPSYNC_CONFIG``) holding the tag mapping; its CPU time and
  RSS come from ``/proc/<pid>/stat`` and ``/proc/<pid>/status`` (``VmHWM`` = peak RSS),
  its cycles from ``GET /metrics`` (``bpsync_cycles_total``,
  ``bpsync_cycle_duration_seconds``);
- :class:`Api`: the emulators' real APIs (the changes a benchmark makes) and their
  ``/_emulator/`` control API (request counts; fixtures).

Request counts are taken as the difference of two ``GET /_emulator/stats`` snapshots:
``POST /_emulator/reset`` would also reset the emulators' data.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

SN_USER, SN_PASSWORD = "bpsync", "bpsync"
BP_API_KEY, BP_ORG_TOKEN = "BPUbpsync-emulator", "bpsync-org-token"
CLK_TCK = os.sysconf("SC_CLK_TCK")

#: the mapping every benchmark uses: BigPanda tag impact_level <-> ServiceNow impact
IMPACT_MAP = {"high": "1", "medium": "2", "low": "3"}
IMPACT_MAP_INV = {v: k for k, v in IMPACT_MAP.items()}
MAPPING: list[dict[str, Any]] = [
    {
        "bigpanda_tag": "impact_level",
        "servicenow_field": "impact",
        "direction": "both",
        "value_map": IMPACT_MAP,
    }
]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_mb = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_mb = int(line.split()[1]) / 1024
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_mb": round(mem_mb),
        "python": sys.version.split()[0],
    }


# --------------------------------------------------------------------------- numbers


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (``p`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def rnd(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A plain aligned table (numbers right-aligned)."""
    text_rows = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    print(
        "  ".join(
            h.rjust(w) if i else h.ljust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    )
    print("  ".join("-" * w for w in widths))
    for row in text_rows:
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:,.2f}"
        return f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# --------------------------------------------------------------------------- ports


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_port(
    port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"process exited with {proc.returncode} before port {port} opened"
                ) from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"port {port} not open after {timeout_s}s") from None
            await asyncio.sleep(0.05)
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any BPSYNC_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BPSYNC_")}
    env["PYTHONPATH"] = str(ROOT) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@contextlib.asynccontextmanager
async def postgres_schema(base_url: str, prefix: str = "bpsync_bench") -> AsyncIterator[str]:
    """A fresh, empty schema ``<prefix>_<random>`` in the database at ``base_url``: yields
    the URL whose connections use it (``search_path``), and drops it with what it holds
    afterwards."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(base_url)
    try:
        async with admin.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(base_url).update_query_dict({"search_path": schema})
        yield url.render_as_string(hide_password=False)
    finally:
        async with admin.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await admin.dispose()


def tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def spawn(
    cmd: Sequence[str], cwd: Path, env: Mapping[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with stdout and stderr appended to ``log_path``."""
    with log_path.open("ab") as out:
        return subprocess.Popen(
            list(cmd), cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT
        )


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> int | None:
    """SIGTERM, wait, SIGKILL as a last resort; the exit code (None: had to be killed)."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


# --------------------------------------------------------------------------- /proc


def proc_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (``/proc/<pid>/stat`` fields 14 and 15)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_mem_mb(pid: int) -> dict[str, float]:
    """``VmRSS`` (now) and ``VmHWM`` (peak) of ``pid`` in MB."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            out[key] = int(value.split()[0]) / 1024
    return {"rss_mb": out.get("VmRSS", 0.0), "peak_rss_mb": out.get("VmHWM", 0.0)}


# --------------------------------------------------------------------------- emulators


@dataclass
class Emulators:
    """Both emulators in one subprocess."""

    workdir: Path
    rate_limit: float | None = None
    """BigPanda requests/s per endpoint and token; None or 0: off."""
    rate_limit_shape: str | None = None
    """BigPanda limiter algorithm (``--rate-limit-shape``); None: the emulator's default."""
    rate_limit_scope: str | None = None
    """What one BigPanda counter covers (``--rate-limit-scope``); None: the default."""
    sn_port: int = 0
    bp_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    env_id: str = ""

    @property
    def sn_url(self) -> str:
        return f"http://127.0.0.1:{self.sn_port}"

    @property
    def bp_url(self) -> str:
        return f"http://127.0.0.1:{self.bp_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "emulators.log"

    async def start(self, api: Api | None = None) -> None:
        self.sn_port, self.bp_port = free_port(), free_port()
        cmd = [
            PYTHON, "-m", "sync", "emulate", "both",
            "--sn-port", str(self.sn_port), "--bp-port", str(self.bp_port),
            "--rate-limit", str(self.rate_limit or 0),
        ]  # fmt: skip
        if self.rate_limit_shape:
            cmd += ["--rate-limit-shape", self.rate_limit_shape]
        if self.rate_limit_scope:
            cmd += ["--rate-limit-scope", self.rate_limit_scope]
        self.proc = spawn(cmd, self.workdir, clean_env(), self.log_path)
        try:
            await wait_port(self.sn_port, 30, self.proc)
            await wait_port(self.bp_port, 30, self.proc)
        except Exception:
            log(tail(self.log_path))
            raise
        if api is not None:
            self.env_id = await api.seeded_environment()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 10)
            self.proc = None


# --------------------------------------------------------------------------- daemon


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{toml_value(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
        )
    raise TypeError(f"cannot write {value!r} as TOML")


def write_config(
    path: Path, sections: Mapping[str, Mapping[str, Any]], mapping: Sequence[Mapping[str, Any]]
) -> Path:
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in values.items())
        lines.append("")
    for rule in mapping:
        lines.append("[[tag_mapping]]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in rule.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def daemon_env(
    emus: Emulators,
    state_dir: Path,
    *,
    poll_interval: float,
    http_port: int | None = None,
    config: Path | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The ``BPSYNC_*`` environment of a daemon (or ``bpsync backfill``) on the emulators."""
    values: dict[str, Any] = {
        "BPSYNC_SERVICENOW__URL": emus.sn_url,
        "BPSYNC_SERVICENOW__USERNAME": SN_USER,
        "BPSYNC_SERVICENOW__PASSWORD": SN_PASSWORD,
        "BPSYNC_BIGPANDA__URL": emus.bp_url,
        "BPSYNC_BIGPANDA__API_KEY": BP_API_KEY,
        "BPSYNC_BIGPANDA__BEARER_TOKEN": BP_ORG_TOKEN,
        "BPSYNC_BIGPANDA__ENVIRONMENTS": emus.env_id,
        "BPSYNC_STATE_DIR": str(state_dir),
        "BPSYNC_POLL_INTERVAL": poll_interval,
        "BPSYNC_HTTP_PORT": http_port if http_port is not None else free_port(),
        "BPSYNC_LOG_FORMAT": "json",
    }
    if config is not None:
        values["BPSYNC_CONFIG"] = str(config)
    values.update(extra or {})
    return clean_env({k: str(v) for k, v in values.items()})


@dataclass
class CycleStats:
    count: float = 0.0
    sum_s: float = 0.0
    errors: float = 0.0


class Daemon:
    """``python -m sync run`` in a subprocess."""

    def __init__(
        self, workdir: Path, env: Mapping[str, str], *, profile: Path | None = None
    ) -> None:
        """``profile``: run under ``bench/_profile.py`` writing there (see its docstring)."""
        self.workdir = workdir
        self.env = dict(env)
        self.profile = profile
        self.http_port = int(self.env["BPSYNC_HTTP_PORT"])
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "daemon.log"
        self.exit_code: int | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(
        self, http: aiohttp.ClientSession, *, first_cycle: bool = True, timeout_s: float = 60
    ) -> None:
        cmd = [PYTHON, "-m", "sync", "run"]
        if self.profile is not None:
            cmd[1:1] = [str(ROOT / "bench" / "_profile.py"), str(self.profile)]
        self.proc = spawn(cmd, self.workdir, self.env, self.log_path)
        try:
            await wait_port(self.http_port, timeout_s, self.proc)
            if first_cycle:
                deadline = time.monotonic() + timeout_s
                while (await self.cycles(http)).count < 1:
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"daemon exited with {self.proc.returncode}")
                    if time.monotonic() > deadline:
                        raise TimeoutError("no daemon cycle finished")
                    await asyncio.sleep(0.05)
        except Exception:
            log("---- daemon log ----\n" + tail(self.log_path))
            raise

    def cpu_s(self) -> float:
        return proc_cpu_s(self.pid)

    def mem(self) -> dict[str, float]:
        return proc_mem_mb(self.pid)

    async def metrics(
        self, http: aiohttp.ClientSession
    ) -> dict[str, list[tuple[dict[str, str], float]]]:
        async with http.get(f"http://127.0.0.1:{self.http_port}/metrics") as resp:
            text = await resp.text()
        return parse_prometheus(text)

    async def cycles(self, http: aiohttp.ClientSession) -> CycleStats:
        """Cycles finished so far and their summed duration (every outcome)."""
        m = await self.metrics(http)
        stats = CycleStats()
        for labels, value in m.get("bpsync_cycle_duration_seconds_count", []):
            stats.count += value
            if labels.get("outcome") != "ok":
                stats.errors += value
        for _, value in m.get("bpsync_cycle_duration_seconds_sum", []):
            stats.sum_s += value
        return stats

    async def wait_cycles(
        self, http: aiohttp.ClientSession, n: int, timeout_s: float
    ) -> CycleStats:
        """Wait until ``n`` more cycles have finished."""
        start = await self.cycles(http)
        deadline = time.monotonic() + timeout_s
        while True:
            now = await self.cycles(http)
            if now.count >= start.count + n:
                return now
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"daemon exited with {self.proc.returncode}\n{tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{n} cycles did not finish within {timeout_s}s")
            await asyncio.sleep(0.05)

    def stop(self) -> int | None:
        if self.proc is not None:
            self.exit_code = stop_process(self.proc)
            self.proc = None
        return self.exit_code

    def log_lines(self, pattern: str) -> list[str]:
        rx = re.compile(pattern)
        with contextlib.suppress(OSError):
            return [
                ln for ln in self.log_path.read_text(errors="replace").splitlines() if rx.search(ln)
            ]
        return []


class CycleSampler:
    """Per-cycle durations, from ``bpsync_cycle_duration_seconds`` sum/count read every
    ``every_s`` (cycles are further apart than that, so each increment is one cycle)."""

    def __init__(self, daemon: Daemon, http: aiohttp.ClientSession, every_s: float = 0.25) -> None:
        self.daemon = daemon
        self.http = http
        self.every_s = every_s
        self.durations: list[tuple[float, float]] = []
        """(monotonic time seen, seconds)"""
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = await self.daemon.cycles(self.http)
        while True:
            await asyncio.sleep(self.every_s)
            with contextlib.suppress(aiohttp.ClientError, OSError):
                now = await self.daemon.cycles(self.http)
                if now.count > last.count:
                    n = now.count - last.count
                    each = (now.sum_s - last.sum_s) / n
                    self.durations.extend((time.monotonic(), each) for _ in range(int(n)))
                last = now

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def between(self, start: float, end: float) -> list[float]:
        return [d for t, d in self.durations if start <= t <= end]


_METRIC_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _METRIC_RE.match(line)
        if match is None:
            continue
        labels = dict(_LABEL_RE.findall(match.group(2) or ""))
        with contextlib.suppress(ValueError):
            out.setdefault(match.group(1), []).append((labels, float(match.group(3))))
    return out


# --------------------------------------------------------------------------- the APIs


@dataclass
class Stats:
    """One ``GET /_emulator/stats`` snapshot (or the difference of two)."""

    requests: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    by_method: Counter[str] = field(default_factory=Counter)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Stats:
        return cls(
            Counter(body.get("requests") or {}),
            Counter(body.get("statuses") or {}),
            Counter(body.get("by_method") or {}),
        )

    def __sub__(self, other: Stats) -> Stats:
        def sub(a: Counter[str], b: Counter[str]) -> Counter[str]:
            return Counter(
                {
                    k: a.get(k, 0) - b.get(k, 0)
                    for k in set(a) | set(b)
                    if a.get(k, 0) != b.get(k, 0)
                }
            )

        return Stats(
            sub(self.requests, other.requests),
            sub(self.statuses, other.statuses),
            sub(self.by_method, other.by_method),
        )

    @property
    def total(self) -> int:
        return sum(self.by_method.values())

    @property
    def reads(self) -> int:
        return sum(n for m, n in self.by_method.items() if m in {"GET", "HEAD"})

    @property
    def writes(self) -> int:
        return self.total - self.reads


class Api:
    """The emulators' real APIs and their control API, over one aiohttp session."""

    def __init__(self, http: aiohttp.ClientSession, emus: Emulators) -> None:
        self.http = http
        self.emus = emus
        self.sn_auth = aiohttp.BasicAuth(SN_USER, SN_PASSWORD)
        self.bp_key = {"Authorization": f"Bearer {BP_API_KEY}", "Accept": "application/json"}
        self.bp_org = {"Authorization": f"Bearer {BP_ORG_TOKEN}"}
        #: requests this benchmark sent to the counted (non-control) APIs, per side
        self.own: dict[str, Stats] = {"servicenow": Stats(), "bigpanda": Stats()}

    def _count(self, side: str, method: str) -> None:
        self.own[side].by_method[method] += 1

    async def _request(
        self,
        method: str,
        url: str,
        what: str,
        *,
        count: str | None = None,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[Any, Mapping[str, str]]:
        """One request: its JSON body (None when it has none) and headers; a status of
        300 or more raises, naming ``what``. ``count``: the side whose real API this is
        (counted in :attr:`own`, sent with that side's credentials); None for control."""
        auth = self.sn_auth if count == "servicenow" else None
        sent = dict(
            headers
            if headers is not None
            else (self.bp_key if count == "bigpanda" else {"Accept": "application/json"})
        )
        async with self.http.request(
            method, url, json=json, params=params, auth=auth, headers=sent
        ) as resp:
            if count is not None:
                self._count(count, method)
            if resp.status >= 300:
                raise RuntimeError(f"{what}: {resp.status} {await resp.text()}")
            body = await resp.json() if resp.content_type == "application/json" else None
            return body, resp.headers

    async def _bp(self, method: str, path: str, what: str, **kw: Any) -> Any:
        """A counted request to BigPanda's API (``path`` under the emulator's URL)."""
        body, _ = await self._request(method, self.emus.bp_url + path, what, count="bigpanda", **kw)
        return body

    async def _sn(self, method: str, path: str, what: str, **kw: Any) -> Any:
        """A counted request to ServiceNow's API (``path`` under the emulator's URL)."""
        body, _ = await self._request(
            method, self.emus.sn_url + path, what, count="servicenow", **kw
        )
        return body

    def _bp_incident(self, incident_id: str) -> str:
        return f"/resources/v2.0/environments/{self.emus.env_id}/incidents/{incident_id}"

    # control ------------------------------------------------------------------
    async def stats(self, side: str, *, with_log: bool = False) -> dict[str, Any]:
        base = self.emus.sn_url if side == "servicenow" else self.emus.bp_url
        url = f"{base}/_emulator/stats" + ("?log=1" if with_log else "")
        body, _ = await self._request("GET", url, f"{side} stats")
        return dict(body)

    async def snapshot(self) -> dict[str, Stats]:
        return {
            side: Stats.from_json(await self.stats(side)) for side in ("servicenow", "bigpanda")
        }

    async def writes(self) -> int:
        snap = await self.snapshot()
        return sum(s.writes for s in snap.values())

    async def bp_fixtures(self, items: Sequence[Mapping[str, Any]], chunk: int = 1000) -> list[str]:
        ids: list[str] = []
        url = f"{self.emus.bp_url}/_emulator/incidents"
        for i in range(0, len(items), chunk):
            body, _ = await self._request("POST", url, "fixtures", json=list(items[i : i + chunk]))
            ids.extend(body["incidents"])
        return ids

    async def bp_dump(self) -> list[dict[str, Any]]:
        body, _ = await self._request("GET", f"{self.emus.bp_url}/_emulator/incidents", "dump")
        items = body.get("incidents", body) if isinstance(body, dict) else body
        return list(items)

    async def bp_config(self, **values: Any) -> None:
        url = f"{self.emus.bp_url}/_emulator/config"
        await self._request("POST", url, "bigpanda config", json=values)

    async def sn_config(self, **values: Any) -> dict[str, Any]:
        """``POST /_emulator/config`` of ServiceNow (e.g. ``semaphores``); the new config."""
        url = f"{self.emus.sn_url}/_emulator/config"
        body, _ = await self._request("POST", url, "servicenow config", json=values)
        return dict(body)

    # BigPanda -----------------------------------------------------------------
    async def seeded_environment(self) -> str:
        envs = await self._bp("GET", "/resources/v2.0/environments", "environments")
        for env in envs:
            if env.get("name") != "All Incidents":
                return str(env["id"])
        return str(envs[0]["id"])

    async def bp_set_tag(self, incident_id: str, tag: str, value: str) -> None:
        path = f"{self._bp_incident(incident_id)}/tags/{tag}"
        await self._bp("POST", path, "set tag", json={"tag_value": value})

    async def bp_assign(self, incident_id: str, user_id: str) -> None:
        """A person assigns the incident in BigPanda (``PUT .../assignment``)."""
        path = f"{self._bp_incident(incident_id)}/assignment"
        await self._bp("PUT", path, "assign", json={"assignee": user_id})

    async def bp_comment(self, incident_id: str, text: str) -> None:
        """A person comments on the incident in BigPanda (``POST .../comments``)."""
        path = f"{self._bp_incident(incident_id)}/comments"
        await self._bp("POST", path, "comment", json={"comment": text})

    async def bp_activities(self, incident_id: str) -> list[dict[str, Any]]:
        path = f"/resources/v2.0/incidents/{incident_id}/activities"
        body = await self._bp("GET", path, "activities")
        items = body.get("items", body) if isinstance(body, dict) else body
        return list(items)

    async def sn_journal(self, sys_ids: Sequence[str]) -> list[dict[str, str]]:
        """The ``sys_journal_field`` rows of these incidents."""
        params = {
            "sysparm_query": "name=incident^element_idIN" + ",".join(sys_ids),
            "sysparm_fields": "element_id,element,value",
            "sysparm_limit": "10000",
        }
        body = await self._sn("GET", "/api/now/table/sys_journal_field", "journal", params=params)
        return list(body["result"])

    async def bp_alerts(self, alerts: Sequence[Mapping[str, Any]], app_key: str = "bench") -> None:
        body = {"app_key": app_key, "alerts": list(alerts)}
        await self._bp("POST", "/data/v2/alerts", "alerts", json=body, headers=self.bp_org)

    # ServiceNow -----------------------------------------------------------------
    async def sn_query(self, query: str, fields: str, limit: int = 10000) -> list[dict[str, str]]:
        params = {
            "sysparm_query": query,
            "sysparm_fields": fields,
            "sysparm_limit": str(limit),
            "sysparm_exclude_reference_link": "true",
        }
        body = await self._sn("GET", "/api/now/table/incident", "query", params=params)
        return list(body["result"])

    async def sn_user(self, user_name: str) -> str:
        """The sys_id of the ``sys_user`` with this ``user_name``."""
        params = {"sysparm_query": f"user_name={user_name}", "sysparm_fields": "sys_id"}
        body = await self._sn("GET", "/api/now/table/sys_user", "user", params=params)
        return str(body["result"][0]["sys_id"])

    async def sn_count(self, query: str = "") -> int:
        params = {"sysparm_query": query, "sysparm_fields": "sys_id", "sysparm_limit": "1"}
        _, headers = await self._request(
            "GET",
            f"{self.emus.sn_url}/api/now/table/incident",
            "count",
            count="servicenow",
            params=params,
        )
        return int(headers.get("X-Total-Count", "0"))

    async def sn_patch(self, sys_id: str, body: Mapping[str, str]) -> None:
        await self._sn("PATCH", f"/api/now/table/incident/{sys_id}", "patch", json=dict(body))

    async def sn_create(self, body: Mapping[str, str]) -> dict[str, str]:
        created = await self._sn(
            "POST",
            "/api/now/table/incident",
            "create",
            json=dict(body),
            headers={"Accept": "application/json", "X-no-response-body": "false"},
        )
        return dict(created["result"])


def tag_values(incident: Mapping[str, Any]) -> dict[str, str]:
    """``incident_tags`` of an emulator dump, as ``{tag_id: value}``."""
    tags = incident.get("incident_tags") or []
    if isinstance(tags, dict):
        return {str(k): str(v) for k, v in tags.items()}
    return {str(t.get("tag_id")): str(t.get("tag_value")) for t in tags if isinstance(t, dict)}


async def settle(
    api: Api,
    daemon: Daemon,
    *,
    quiet_cycles: int = 3,
    timeout_s: float = 120,
    done: Any = None,
) -> float:
    """Wait until ``quiet_cycles`` consecutive cycles made no write on either side (and
    ``done()`` when given is true); returns the seconds it took."""
    started = time.monotonic()
    quiet = 0
    before = await api.writes()
    while quiet < quiet_cycles:
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"the daemon did not settle within {timeout_s}s")
        await daemon.wait_cycles(api.http, 1, timeout_s)
        now = await api.writes()
        ok = now == before and (done is None or await done())
        quiet = quiet + 1 if ok else 0
        before = now
    return time.monotonic() - started


def bp_fixture(
    i: int,
    *,
    incident_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    start: int | None = None,
    prefix: str = "bench",
) -> dict[str, Any]:
    """One active BigPanda incident fixture with one critical alert (host ``<prefix>-<i>``)."""
    start = int(time.time()) - 60 if start is None else start
    item: dict[str, Any] = {
        "status": "critical",
        "start": start,
        "alerts": [
            {
                "status": "critical",
                "primary_property": "host",
                "start": start,
                "description": f"{prefix} incident {i}",
                "tags": {"host": f"{prefix}-{i}", "check": "cpu"},
            }
        ],
    }
    if incident_id is not None:
        item["id"] = incident_id
    if tags:
        item["incident_tags"] = dict(tags)
    return item


def bp_id(i: int) -> str:
    return f"{0xB0000000_00000000_00000000 + i:024x}"


def sn_sys_id(i: int) -> str:
    return f"{0x5A000000_00000000_00000000_00000000 + i:032x}"
