"""The status page as HTML: server-rendered, no script, one form (the search, a GET).

Every value that comes from the store, the settings or the request passes through
:func:`esc` (``html.escape`` with quotes) before it reaches the page: the only markup
is this module's own literals. Times are UTC; each section is one pair
(:class:`sync.runtime.status.PairStatus`).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import datetime
from urllib.parse import quote

from sync.runtime.status import LinkTrail, PairStatus, WriteRow

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
h1{font-size:1.4rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ccc}
h3{font-size:1rem;margin-top:1.2rem}
table{border-collapse:collapse;margin:.4rem 0}
th,td{border:1px solid #ddd;padding:.2rem .5rem;text-align:left;vertical-align:top;
font-size:.9rem}
th{background:#f4f4f4}.bad{color:#a00}.ok{color:#070}.muted{color:#777}
form{margin:1rem 0}input[type=search]{width:22rem;padding:.3rem}
"""


def esc(value: object) -> str:
    """``value`` as text safe inside an element or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def _when(value: datetime | None) -> str:
    return "never" if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172_800:
        return f"{s // 3600} h"
    return f"{s // 86400} d"


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, css: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    if not body:
        body = f'<tr><td colspan="{len(headers)}" class="muted">none</td></tr>'
    cls = f' class="{esc(css)}"' if css else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _incident(bp_id: str | None, sys_id: str | None) -> str:
    return " / ".join(x for x in (bp_id, sys_id) if x)


def _writes(rows: Sequence[WriteRow]) -> str:
    return _table(
        ("id", "at", "kind", "state", "attempts", "link", "incident", "error"),
        (
            (
                r.id,
                _when(r.at),
                r.kind,
                r.state,
                r.attempts,
                r.link_id if r.link_id is not None else "",
                _incident(r.bp_incident_id, r.sn_sys_id),
                r.error or "",
            )
            for r in rows
        ),
        css="actions",
    )


def _overview(pair: PairStatus) -> str:
    leader = pair.leader
    leads = "this replica leads" if leader.leads else "standby (another replica leads)"
    holder = leader.holder or "n/a"
    if leader.epoch is not None:
        holder += f" (epoch {leader.epoch} since {_when(leader.since)})"
    lags = "; ".join(
        f"{c.side}: {_duration(c.lag_s)} (cursor {_when(c.watermark)})" for c in pair.cursors
    )
    throttled = (
        "; ".join(f"{side}: {', '.join(fams)}" for side, fams in sorted(pair.throttled.items()))
        or "none"
    )
    rows: list[tuple[str, object]] = [
        ("this replica", f"{leader.this_replica}: {leads}"),
        ("leader replica", holder),
        ("last good cycle", _when(pair.last_good_cycle)),
        ("last cycle error", pair.last_cycle_error or "none"),
        ("cursor lag", lags),
        ("throttled", throttled),
        ("outbox depth", pair.outbox_depth),
        ("dead letters", pair.dead_letters_total),
    ]
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="overview"><tbody>{body}</tbody></table>'


def _trail(trail: LinkTrail) -> str:
    title = f"Trail of {trail.query}"
    if trail.bp_incident_id is None:
        return (
            f'<section class="trail"><h3>{esc(title)}</h3>'
            f'<p class="bad">no link found for {esc(trail.query)} (a BigPanda incident id, '
            "an INC number or a sys_id)</p></section>"
        )
    links = _table(
        ("link", "BigPanda id", "ServiceNow number", "sys_id", "state", "created", "resolved"),
        (
            (
                x.id,
                x.bp_incident_id,
                x.sn_number or "",
                x.sn_sys_id or "",
                x.state,
                _when(x.created_at),
                "" if x.resolved_at is None else _when(x.resolved_at),
            )
            for x in trail.links
        ),
        css="trail-links",
    )
    events = _table(
        ("at", "what", "link", "summary", "field", "BigPanda value", "ServiceNow value"),
        (
            (
                _when(e.at),
                e.what,
                e.link_id if e.link_id is not None else "",
                e.summary,
                e.field or "",
                e.bp_value or "",
                e.sn_value or "",
            )
            for e in trail.events
        ),
        css="trail-events",
    )
    return (
        f'<section class="trail"><h3>{esc(title)}</h3>'
        f"<p>BigPanda incident {esc(trail.bp_incident_id)}</p>{links}{events}</section>"
    )


def _pair(pair: PairStatus) -> str:
    states = _table(
        tuple(pair.links_by_state),
        [tuple(pair.links_by_state.values())],
        css="links-by-state",
    )
    dead = _table(
        ("id", "age", "incident", "kind", "attempts", "next", "reason"),
        (
            (
                d.id,
                _duration(d.age_s),
                _incident(d.bp_incident_id, d.sn_sys_id),
                d.kind,
                d.attempts,
                "a person" if d.needs_a_person else "bpsync retries",
                d.reason,
            )
            for d in pair.dead_letters
        ),
        css="dead-letters",
    )
    trail = "" if pair.trail is None else _trail(pair.trail)
    return (
        f'<section class="pair" id="pair-{esc(pair.name)}">'
        f"<h2>Pair {esc(pair.name)}</h2>{trail}{_overview(pair)}"
        f"<h3>Links by state</h3>{states}"
        f"<h3>Dead letters ({esc(pair.dead_letters_total)})</h3>{dead}"
        f"<h3>Last actions</h3>{_writes(pair.last_actions)}</section>"
    )


def render_page(pairs: Sequence[PairStatus], query: str | None, *, error: str | None = None) -> str:
    """The whole page: the search form, then one section per pair."""
    generated = _when(pairs[0].generated_at) if pairs else ""
    notice = f'<p class="bad">{esc(error)}</p>' if error else ""
    sections = "".join(_pair(p) for p in pairs)
    as_json = "/status.json" if not query else json_link(query)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>bpsync status</title><style>{_STYLE}</style></head><body>"
        f'<h1>bpsync status</h1><p class="muted">generated {esc(generated)}; '
        f'<a href="{esc(as_json)}">as JSON</a></p>'
        '<form method="get" action="/" role="search">'
        '<label for="q">BigPanda incident id or INC number</label> '
        f'<input type="search" id="q" name="q" value="{esc(query or "")}" maxlength="100">'
        ' <button type="submit">Show trail</button></form>'
        f"{notice}{sections}</body></html>\n"
    )


def json_link(query: str) -> str:
    """The JSON twin of a search (``/status.json?q=...``)."""
    return "/status.json?q=" + quote(query, safe="")


__all__ = ["esc", "json_link", "render_page"]
