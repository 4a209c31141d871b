"""Push mode's pure parts: what a delivery says, the cursor after a push pass, the
settings, and the emulators' delivery faults."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sync.clock import epoch_s
from sync.constants import Side
from sync.emulators.delivery import DeliveryFaults
from sync.errors import ConfigError
from sync.progress import Change, seen_after_push
from sync.push.payloads import PayloadError, bigpanda_hint, decode, servicenow_hint
from sync.redaction import redacted_dump, secret_values
from sync.settings import load_settings
from sync.store.base import Cursor

BP = "65397b2eede0a80012631b0c"
SYS = "46d44b5ea9fe198201b8cbfed2a38d4d"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


# --------------------------------------------------------------------------- payloads


def test_the_notifications_webhook_wrapped_and_bare() -> None:
    incident = {"id": BP, "updated_at": 1700061365, "environments": ["env-1"], "alerts": []}
    wrapped = bigpanda_hint({"incident": incident, "trigger": "incident#new", "environment": "e2"})
    assert (wrapped.side, wrapped.object_id, wrapped.version) == (Side.BIGPANDA, BP, "1700061365")
    assert wrapped.environment_id == "e2"  # the envelope's environment wins
    bare = bigpanda_hint({**incident, "event_type": "incident#updated"})
    assert (bare.object_id, bare.environment_id) == (BP, "env-1")


def test_webhook_v2_bodies_carry_the_incident_id() -> None:
    hint = bigpanda_hint({"incident_id": BP, "environment_id": "env-1", "trigger": "x"})
    assert (hint.object_id, hint.environment_id, hint.version) == (BP, "env-1", None)
    assert bigpanda_hint({"incident": {"id": BP}}).object_id == BP
    assert bigpanda_hint({"incident": {"incident_id": BP}}).object_id == BP


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "no incident id"),
        ({"incident": {"status": "critical"}}, "no incident id"),
        ({"id": "INC0010001"}, "not a BigPanda id"),
        ({"incident_id": True}, "no incident id"),
        ({"incident_id": BP, "environment_id": "../x"}, "not an environment id"),
    ],
)
def test_bigpanda_bodies_without_a_usable_id(body: dict[str, object], reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        bigpanda_hint(body)


def test_an_odd_updated_at_is_no_reason_to_refuse() -> None:
    assert bigpanda_hint({"id": BP, "updated_at": "soon"}).version is None


def test_the_business_rule_body() -> None:
    body = {"table": "incident", "sys_id": SYS, "sys_mod_count": "7", "sys_updated_on": "x"}
    hint = servicenow_hint(body, "incident")
    assert (hint.side, hint.object_id, hint.version) == (Side.SERVICENOW, SYS, "7")
    assert servicenow_hint({"sys_id": SYS, "sys_mod_count": 8}, "incident").version == "8"
    with pytest.raises(PayloadError, match="u_incident"):
        servicenow_hint(body, "u_incident")
    with pytest.raises(PayloadError, match="no sys_id"):
        servicenow_hint({"table": "incident"}, "incident")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty body"),
        (b"  \n", "empty body"),
        (b"{", "malformed JSON"),
        (b"\xc3\x28", "not UTF-8"),
        (b'"text"', "not str"),
    ],
)
def test_bodies_that_are_not_a_json_object(raw: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason) as caught:
        decode(raw)
    assert "\n" not in str(caught.value)


# --------------------------------------------------------------------------- the cursor


def _change(key_id: str, at: datetime) -> Change:
    return Change(f"{key_id}:1:{epoch_s(at)}", at)


def test_a_push_pass_adds_what_it_finished_to_seen_and_keeps_the_watermark() -> None:
    overlap = timedelta(seconds=30)
    cursor = Cursor(Side.SERVICENOW, T0, frozenset({f"old:1:{epoch_s(T0)}"}))
    done = _change("a", T0 + timedelta(seconds=5))
    open_ = _change("b", T0 + timedelta(seconds=6))
    ancient = _change("c", T0 - timedelta(seconds=31))
    after = seen_after_push(
        cursor, [done, open_, ancient], {done.key, ancient.key}, overlap=overlap
    )
    assert after is not None
    assert after.watermark == T0  # other incidents' changes before these are the poll's
    assert after.seen == {f"old:1:{epoch_s(T0)}", done.key}
    # nothing new: nothing to write; before the first poll: nothing to write
    assert seen_after_push(after, [done], {done.key}, overlap=overlap) is None
    assert (
        seen_after_push(Cursor(Side.SERVICENOW, None), [done], {done.key}, overlap=overlap) is None
    )


def test_a_push_pass_forgets_the_incidents_it_wrote_to() -> None:
    cursor = Cursor(Side.BIGPANDA, T0, frozenset({f"x:1:{epoch_s(T0)}"}))
    done = _change("x", T0 + timedelta(seconds=1))
    after = seen_after_push(cursor, [done], {done.key}, overlap=timedelta(seconds=30), forget={"x"})
    assert after is not None
    assert after.seen == frozenset()


# --------------------------------------------------------------------------- settings


def test_push_is_off_by_default_and_needs_a_token(tmp_path: Path) -> None:
    settings = load_settings(None, {}, env_file=None)
    assert settings.push.enabled is False
    assert settings.push.max_body == 1024 * 1024
    assert settings.push.reconcile_interval is None
    with pytest.raises(ConfigError, match="push"):
        load_settings(None, {"push.enabled": True}, env_file=None)


def test_push_tokens_come_from_files_and_stay_secret(tmp_path: Path) -> None:
    token_file = tmp_path / "bp_token"
    token_file.write_text("s3cret-from-a-file\n")
    settings = load_settings(
        None,
        {
            "push.enabled": True,
            "push.bigpanda_token_file": str(token_file),
            "push.reconcile_interval": "1m",
        },
        env_file=None,
    )
    assert settings.push.bigpanda_token is not None
    assert settings.push.bigpanda_token.get_secret_value() == "s3cret-from-a-file"
    assert settings.push.reconcile_interval == 60.0
    assert "s3cret-from-a-file" in secret_values(settings)
    assert "s3cret-from-a-file" not in str(redacted_dump(settings))


# --------------------------------------------------------------------------- emulators


def test_delivery_faults_are_off_by_default_and_repeatable() -> None:
    assert DeliveryFaults().plan() == [0.0]
    faults = DeliveryFaults()
    faults.update({"drop": 0.2, "duplicate": 0.2, "reorder": 0.3, "delay_s": 0.1, "seed": 5})
    plans = [faults.plan() for _ in range(1000)]
    again = DeliveryFaults()
    again.update({"drop": 0.2, "duplicate": 0.2, "reorder": 0.3, "delay_s": 0.1, "seed": 5})
    assert plans == [again.plan() for _ in range(1000)]
    dropped = sum(1 for p in plans if not p)
    assert 150 < dropped < 250
    assert any(len(p) == 2 for p in plans)
    assert {w for p in plans for w in p} == {0.1, 1.1}


@pytest.mark.parametrize(
    "bad", [{"drop": 2}, {"duplicate": -0.1}, {"delay_s": "1s"}, {"loss": 0.1}, {"seed": 1.5}]
)
def test_bad_delivery_faults_are_refused(bad: dict[str, object]) -> None:
    faults = DeliveryFaults()
    with pytest.raises(ValueError):
        faults.update(bad)
    assert faults.to_json() == DeliveryFaults().to_json()


def test_with_push_on_the_cycle_runs_every_reconcile_interval() -> None:
    from sync.runtime.daemon import Daemon, DaemonOptions

    def interval(**values: object) -> float:
        settings = load_settings(None, {"poll_interval": "15s", **values}, env_file=None)
        return Daemon(settings, DaemonOptions()).cycle_interval

    assert interval() == 15.0
    assert interval(**{"push.reconcile_interval": "60s"}) == 15.0  # push off: ignored
    on = {"push.enabled": True, "push.servicenow_token": "t"}
    assert interval(**on) == 15.0
    assert interval(**on, **{"push.reconcile_interval": "60s"}) == 60.0
