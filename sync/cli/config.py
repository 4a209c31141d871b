"""``bpsync config show|check``: the effective settings, and whether they work.

``show`` prints the merged settings (CLI flags > env > .env > TOML > defaults) as JSON
with every secret masked (``**********``, the database password as ``****``).

``check`` runs every check and reports each on one line: ``ok   <what>`` on stdout for
a check that passed, ``FAIL <what>: <problem>`` on stderr for one that did not; exit
code 0 when all passed, 1 otherwise. Checks: the settings are valid; ServiceNow and
BigPanda are reachable and accept the credentials (one authorised call each,
``check_auth``); every mapping row is used as written (``warn`` names a row the engine
narrows, e.g. one writing a read-only field; it does not fail the check); the BigPanda tags
bpsync writes: which are defined, which it would define at start, and a row that
writes a tag of another type (named, with its type); the database is reachable and at
the newest migration. With ``[[pairs]]`` every pair is checked (each line starts
``[NAME]``; ``--pair NAME`` checks one), and two pairs that would give one incident two
tickets (the same ServiceNow instance, the same BigPanda org, overlapping environments)
FAIL the check.
"""

from __future__ import annotations

import importlib
import json
import sys
from dataclasses import dataclass, replace

import click

from sync.cli.common import get_ctx, pair_param, run_async
from sync.clock import SystemClock
from sync.errors import BpsyncError, ConfigError
from sync.mapping import validate_mapping
from sync.redaction import redacted_dump
from sync.settings import Settings, redact_url
from sync.tagdefs import TagPlan, plan_definitions


@click.group("config")
def config() -> None:
    """Show the effective settings, or check that they work."""


@config.command("show")
@click.pass_context
def show(ctx: click.Context) -> None:
    """Print the effective settings as JSON, secrets masked."""
    settings = get_ctx(ctx).settings()
    click.echo(json.dumps(redacted_dump(settings), indent=2, sort_keys=True, ensure_ascii=False))


@dataclass
class CheckResult:
    what: str
    problem: str | None = None
    warning: bool = False
    """a problem that does not stop bpsync (printed ``warn``, exit code unchanged)"""

    @property
    def ok(self) -> bool:
        return self.problem is None or self.warning


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    if not isinstance(exc, BpsyncError):
        text = f"{type(exc).__name__}: {text}"
    return " ".join(text.split())


async def _check_side(settings: Settings, side: str) -> CheckResult:
    """One authorised call to ``side`` (``servicenow`` or ``bigpanda``)."""
    section = getattr(settings, side)
    where = section.base_url if side == "servicenow" else section.url
    what = f"{side} ({where or 'no URL'})"
    try:
        module = importlib.import_module(f"sync.clients.{side}")
    except ImportError as exc:
        return CheckResult(what, f"client unavailable: {exc}")
    client_cls = getattr(module, "ServiceNowClient" if side == "servicenow" else "BigPandaClient")
    session = None
    tags: TagPlan | None = None
    try:
        session = module.make_session(section)
        client = client_cls(session, section, SystemClock())
        await client.check_auth()
        if side == "bigpanda":
            tags = plan_definitions(settings, await client.list_tag_definitions())
    except Exception as exc:  # noqa: BLE001 - every failure is one reported line
        return CheckResult(what, _one_line(exc))
    finally:
        if session is not None:
            await session.close()
    done = f"{what}: reachable, credentials accepted"
    if tags is not None:
        done += f"; tags bpsync writes: defined {', '.join(tags.existing) or '-'}"
        done += f"; to define at start {', '.join(tags.to_create) or '-'}"
        if tags.problems:
            return CheckResult(f"{done}", "; ".join(tags.problems))
    return CheckResult(done)


def _mapping_results(settings: Settings) -> list[CheckResult]:
    """One line per mapping row the engine narrows (it runs, but not as written)."""
    return [
        CheckResult("mapping", f"narrowed: {p}", warning=True) for p in validate_mapping(settings)
    ]


async def _check_database(settings: Settings) -> CheckResult:
    from sync.store import check_schema

    url = settings.effective_database_url
    what = f"database ({redact_url(url)})"
    try:
        await check_schema(url)
    except Exception as exc:  # noqa: BLE001 - every failure is one reported line
        return CheckResult(what, _one_line(exc))
    return CheckResult(f"{what}: reachable, at the newest migration")


async def run_checks(settings: Settings) -> list[CheckResult]:
    results = [CheckResult("settings: valid"), *_mapping_results(settings)]
    for side in ("servicenow", "bigpanda"):
        results.append(await _check_side(settings, side))
    results.append(await _check_database(settings))
    return results


async def _checks_of_pairs(ctx: click.Context, settings: Settings) -> list[CheckResult]:
    """:func:`run_checks` for ``--pair`` or every pair (each line names its pair), and
    two pairs that would give one incident two tickets."""
    from sync.pairconfig import expand_pairs, overlaps

    cli = get_ctx(ctx)
    if not settings.pairs:
        return await run_checks(cli.pair_settings())
    pairs = expand_pairs(settings)
    results = [CheckResult("pairs", problem) for problem in overlaps(pairs)]
    if not results:
        results.append(CheckResult(f"pairs: {len(pairs)}, no two write one incident twice"))
    for pair in pairs:
        if cli.pair is not None and pair.name != cli.pair:
            continue
        for result in await run_checks(pair.settings):
            results.append(replace(result, what=f"[{pair.name}] {result.what}"))
    if cli.pair is not None and cli.pair not in {p.name for p in pairs}:
        cli.pair_settings()  # the one-line error naming the pairs there are
    return results


def _setting_problems(exc: ConfigError) -> list[str]:
    """A settings error names each bad setting, joined with '; ': one line each."""
    text = str(exc)
    parts = text.split("; invalid setting ")
    return [parts[0]] + [f"invalid setting {part}" for part in parts[1:]]


@config.command("check")
@click.pass_context
def check(ctx: click.Context) -> None:
    """Check the settings, both APIs (reachable, authorised) and the database schema.

    One line per check; exit code 0 when every check passed, 1 otherwise.
    """
    try:
        settings = get_ctx(ctx).settings()
    except ConfigError as exc:
        for problem in _setting_problems(exc):
            click.echo(f"FAIL settings: {problem}", err=True)
        sys.exit(1)
    results = run_async(_checks_of_pairs(ctx, settings))
    for result in results:
        if result.warning:
            click.echo(f"warn {result.what}: {result.problem}", err=True)
        elif result.ok:
            click.echo(f"ok   {result.what}")
        else:
            click.echo(f"FAIL {result.what}: {result.problem}", err=True)
    if not all(r.ok for r in results):
        sys.exit(1)


check.params.append(pair_param())

__all__ = ["CheckResult", "config", "run_checks"]
