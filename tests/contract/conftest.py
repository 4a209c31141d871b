"""The two models of each vendor the contract suite compares (issue 12 item 5).

``world`` is parametrized over:

- ``fake``: the in-memory fakes of ``tests/fakes.py`` (what ``tests/engine`` runs on);
- ``emulator``: the real :class:`~sync.clients.servicenow.ServiceNowClient` and
  :class:`~sync.clients.bigpanda.BigPandaClient` over both emulators served on loopback,
  as ``tests/system/conftest.py`` builds them (BigPanda's rate limit off).

Both run on one :class:`~sync.clock.FakeClock` (the emulators read it too), so a scenario
moves time with ``world.clock.advance(s)`` and expects the same timestamps from both.

A world exposes the two APIs typed as the protocols (``world.sn``, ``world.bp``): the
scenarios ask only through them. What a person or a monitoring tool does on the vendor's
side (an alert that opens an incident, a tag set by hand, a field edited in ServiceNow,
a user added) goes through the world's helpers: the fakes' helper methods, or the
emulators' state helpers (the emulators' own rules apply: an undefined tag cannot be set
by hand either).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Protocol

import pytest

from sync.clients.base import BigPandaAPI, ServiceNowAPI
from sync.clients.bigpanda import BigPandaClient
from sync.clients.bigpanda import make_session as make_bp_session
from sync.clients.servicenow import ServiceNowClient
from sync.clients.servicenow import make_session as make_sn_session
from sync.clock import FakeClock
from sync.emulators import bigpanda as bp_emulator
from sync.emulators import servicenow as sn_emulator
from sync.emulators.control import CONTROL_KEY, EmulatorControl, FaultRule, serve_app
from sync.errors import TransientError
from sync.settings import load_settings
from tests.fakes import FakeBigPanda, FakeServiceNow

SN_USER, SN_PASSWORD = "bpsync", "bpsync"
BP_API_KEY, BP_ORG_TOKEN = "BPUbpsync-emulator", "bpsync-org-token"
APP_KEY = "contract"
#: the BigPanda user behind tags set "by hand" in the emulator (not the API key's user)
PERSON_ID = "5e1f0b1a2c3d4e5f607182bb"


class VendorWorld(Protocol):
    """Both vendors as one implementation models them, and a person's hands on them."""

    name: str
    clock: FakeClock
    sn: ServiceNowAPI
    bp: BigPandaAPI
    environment_id: str
    """the BigPanda environment the scenarios' incidents are in"""

    async def bp_incident(self, host: str, check: str = "cpu", status: str = "critical") -> str:
        """A monitoring tool sends one alert (tags ``host``, ``check``) that opens a new
        incident; returns the incident's id."""
        ...

    async def bp_alert_recovers(self, incident_id: str) -> None:
        """The incident's alert goes ``ok``: BigPanda resolves the incident by itself."""
        ...

    async def bp_alert_returns(self, incident_id: str) -> None:
        """The incident's alert fires again within the reopen window: a reopen."""
        ...

    async def bp_tag_by_hand(self, incident_id: str, tag: str, value: str) -> None:
        """A person sets an incident tag in BigPanda (the tag must be defined)."""
        ...

    async def sn_edit_by_hand(self, sys_id: str, **values: str) -> None:
        """A person edits the incident in ServiceNow."""
        ...

    async def sn_add_user(self, user_name: str, name: str, email: str) -> str:
        """An administrator adds a ``sys_user``; returns its sys_id."""
        ...

    async def sn_rate_rule(self, retry_after_s: float) -> None:
        """A ServiceNow rate rule refuses the next update (PATCH): 429 with Retry-After."""
        ...


class FakeWorld:
    """``tests/fakes.py``: what the engine tests run on."""

    name = "fake"

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.fake_sn = FakeServiceNow(clock)
        self.fake_bp = FakeBigPanda(clock)
        self.sn: ServiceNowAPI = self.fake_sn
        self.bp: BigPandaAPI = self.fake_bp
        self.environment_id = "env1"

    async def bp_incident(self, host: str, check: str = "cpu", status: str = "critical") -> str:
        incident = self.fake_bp.add_incident(
            self.environment_id,
            status=status,
            alert_tags={"host": host, "check": check},
            source_system=f"api.{APP_KEY}",
        )
        return incident.id

    async def bp_alert_recovers(self, incident_id: str) -> None:
        self.fake_bp.resolve(incident_id)

    async def bp_alert_returns(self, incident_id: str) -> None:
        self.fake_bp.reopen(incident_id)

    async def bp_tag_by_hand(self, incident_id: str, tag: str, value: str) -> None:
        self.fake_bp.change_tag(incident_id, tag, value)

    async def sn_edit_by_hand(self, sys_id: str, **values: str) -> None:
        self.fake_sn.change(sys_id, **values)

    async def sn_add_user(self, user_name: str, name: str, email: str) -> str:
        return self.fake_sn.add_row("sys_user", user_name=user_name, name=name, email=email)[
            "sys_id"
        ]

    async def sn_rate_rule(self, retry_after_s: float) -> None:
        limited = TransientError(
            "servicenow", "rate limited", status=429, retry_after_s=retry_after_s
        )
        self.fake_sn.fail_next("update_incident", limited)


class EmulatorWorld:
    """The real clients over both emulators (loopback HTTP); a person's hands are the
    emulators' state helpers, which apply the same rules as their routes."""

    name = "emulator"

    def __init__(
        self,
        clock: FakeClock,
        sn_state: sn_emulator.InstanceState,
        bp_state: bp_emulator.State,
        sn: ServiceNowClient,
        bp: BigPandaClient,
        sn_control: EmulatorControl,
    ) -> None:
        self.clock = clock
        self.sn_state = sn_state
        self.sn_control = sn_control
        self.bp_state = bp_state
        self.sn: ServiceNowAPI = sn
        self.bp: BigPandaAPI = bp
        self.environment_id = bp_emulator.DEFAULT_ENVIRONMENT_ID
        self._alerts: dict[str, tuple[str, str]] = {}

    def _event(self, host: str, check: str, status: str) -> bp_emulator.IngestResult:
        """One monitoring event through the emulator's alert ingest and correlation."""
        result = self.bp_state.ingest_alert(
            {"app_key": APP_KEY, "status": status, "host": host, "check": check}
        )
        assert result.incident_id is not None, result
        self._alerts[result.incident_id] = (host, check)
        return result

    async def bp_incident(self, host: str, check: str = "cpu", status: str = "critical") -> str:
        result = self._event(host, check, status)
        assert result.action == "created" and result.incident_id is not None, result
        return result.incident_id

    async def bp_alert_recovers(self, incident_id: str) -> None:
        assert self._event(*self._alerts[incident_id], "ok").action == "resolved"

    async def bp_alert_returns(self, incident_id: str) -> None:
        assert self._event(*self._alerts[incident_id], "critical").action == "reopened"

    async def bp_tag_by_hand(self, incident_id: str, tag: str, value: str) -> None:
        self.bp_state.set_tag(
            incident_id, tag, value, name="Jane Doe", email="jane@example.com", by=PERSON_ID
        )

    async def sn_edit_by_hand(self, sys_id: str, **values: str) -> None:
        self.sn_state.update("incident", sys_id, values, self.sn_state.user("admin"))

    async def sn_add_user(self, user_name: str, name: str, email: str) -> str:
        row = self.sn_state.insert(
            "sys_user",
            {"user_name": user_name, "name": name, "email": email},
            self.sn_state.user("admin"),
        )
        return row["sys_id"]

    async def sn_rate_rule(self, retry_after_s: float) -> None:
        rule = FaultRule(
            status=429, methods=frozenset({"PATCH"}), count=1, retry_after_s=retry_after_s
        )
        self.sn_control.faults.append(rule)


@contextlib.asynccontextmanager
async def open_emulator_world(clock: FakeClock) -> AsyncIterator[EmulatorWorld]:
    sn_app = sn_emulator.create_app(clock=clock, users={SN_USER: SN_PASSWORD})
    bp_app = bp_emulator.create_app(
        clock=clock, api_key=BP_API_KEY, org_token=BP_ORG_TOKEN, rate_limit_per_s=None
    )
    async with serve_app(sn_app) as sn_url, serve_app(bp_app) as bp_url:
        settings = load_settings(
            None,
            {
                "servicenow.url": sn_url,
                "servicenow.username": SN_USER,
                "servicenow.password": SN_PASSWORD,
                "bigpanda.url": bp_url,
                "bigpanda.api_key": BP_API_KEY,
                "bigpanda.bearer_token": BP_ORG_TOKEN,
                # the client's pacing sleeps on the FakeClock: this fast, it never moves it
                "bigpanda.rate_limit_per_s": 1e9,
            },
            env_file=None,
        )
        sn_session = make_sn_session(settings.servicenow)
        bp_session = make_bp_session(settings.bigpanda)
        try:
            pacing = settings.pacing.policy()
            yield EmulatorWorld(
                clock,
                sn_app[sn_emulator.STATE_KEY],
                bp_app[bp_emulator.STATE_KEY],
                ServiceNowClient(sn_session, settings.servicenow, clock, pacing=pacing),
                BigPandaClient(bp_session, settings.bigpanda, clock, pacing=pacing),
                sn_app[CONTROL_KEY],
            )
        finally:
            await sn_session.close()
            await bp_session.close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "fake_diverges(reason): the fakes knowingly answer this scenario otherwise than "
        "the emulator (strict xfail on the fake: fixing the fake makes it fail, so the "
        "marker goes with the divergence)",
    )


@pytest.fixture(params=["fake", "emulator"])
async def world(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[VendorWorld]:
    """Each scenario runs once on the fakes and once on the real clients + emulators."""
    if request.param == "fake":
        marker = request.node.get_closest_marker("fake_diverges")
        if marker is not None:
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
            request.applymarker(pytest.mark.xfail(reason=reason, strict=True))
        yield FakeWorld(clock)
        return
    async with open_emulator_world(clock) as emulated:
        yield emulated
