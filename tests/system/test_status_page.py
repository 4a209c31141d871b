"""The status page of a real daemon, fed by a real sync against both emulators, read in
a real headless browser (Debian's chromium driven by Playwright, script off: the page
works without it) and over HTTP.

The daemon runs with distinctive secrets (the ServiceNow password, both BigPanda keys,
both push tokens, the status token): none appears in the HTML or the JSON.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright
from playwright.async_api import Error as PlaywrightError

from sync.clock import SystemClock
from sync.emulators import bigpanda as bp_emulator
from sync.emulators import servicenow as sn_emulator
from sync.emulators.control import serve_app

from .conftest import BP_API_KEY, BP_ORG_TOKEN, SN_PASSWORD, SN_USER, World, world_settings
from .helpers import SYSTEM_MAPPING, SYSTEM_TAGS, Emu

pytestmark = pytest.mark.slow

LINK_TAG = "servicenow_link"
#: Debian's chromium (the test set-up installs it: .ci/run)
CHROMIUM = "/usr/bin/chromium"

STATUS_TOKEN = "status-T0ken-S3cr3t-5e6f7a8b9c"
SN_STATUS_USER = "bpsync-status"
SN_STATUS_PASSWORD = "sn-S3cr3t-status-4711"
PUSH_BP_TOKEN = "push-bp-S3cr3t-0a1b2c3d"
PUSH_SN_TOKEN = "push-sn-S3cr3t-4e5f6a7b"
SECRETS = [STATUS_TOKEN, SN_STATUS_PASSWORD, PUSH_BP_TOKEN, PUSH_SN_TOKEN, BP_API_KEY, BP_ORG_TOKEN]


def leaks(text: str) -> list[str]:
    """Every secret (or a Basic-auth encoding of one) that appears in ``text``."""
    found = [s for s in SECRETS if s in text]
    for user, password in ((SN_STATUS_USER, SN_STATUS_PASSWORD), (SN_USER, SN_PASSWORD)):
        if base64.b64encode(f"{user}:{password}".encode()).decode() in text:
            found.append(f"Basic {user}")
    return found


def chromium() -> str:
    """The browser's path; a clear failure (not a skip) when the set-up did not install it."""
    path = shutil.which("chromium") or CHROMIUM
    if not os.access(path, os.X_OK):
        pytest.fail("chromium is not installed: `apt-get install -y chromium` (.ci/run does it)")
    return path


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    """Both emulators on the real clock; ServiceNow also knows the daemon's own user."""
    clock = SystemClock()
    users = {SN_USER: SN_PASSWORD, SN_STATUS_USER: SN_STATUS_PASSWORD}
    sn_app = sn_emulator.create_app(clock=clock, users=users)
    bp_app = bp_emulator.create_app(
        clock=clock, api_key=BP_API_KEY, org_token=BP_ORG_TOKEN, rate_limit_per_s=None
    )
    async with (
        serve_app(sn_app) as sn_url,
        serve_app(bp_app) as bp_url,
        aiohttp.ClientSession() as http,
    ):
        settings = world_settings(sn_url, bp_url, tmp_path)
        yield World(clock, tmp_path, sn_app, bp_app, sn_url, bp_url, http, settings)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    path = chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=path, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


def daemon_settings() -> dict[str, Any]:
    return {
        "tag_mapping": SYSTEM_MAPPING,
        "status_token": STATUS_TOKEN,
        "servicenow.username": SN_STATUS_USER,
        "servicenow.password": SN_STATUS_PASSWORD,
        "push.enabled": True,
        "push.bigpanda_token": PUSH_BP_TOKEN,
        "push.servicenow_token": PUSH_SN_TOKEN,
    }


async def synced_incident(world: World, emu: Emu) -> tuple[str, dict[str, str]]:
    """An alert synced to ServiceNow, then a ServiceNow change synced back."""
    bp_id = await emu.new_incident("web07", check="latency")

    async def linked() -> bool:
        return LINK_TAG in await emu.tags(bp_id) and len(await emu.sn_for(bp_id)) == 1

    await world.wait_for(linked, timeout_s=15, what="the ServiceNow incident and link tag")
    sn = await emu.sn_one_for(bp_id)
    await emu.sn_patch(sn["sys_id"], {"impact": "1"})

    async def reached_bigpanda() -> bool:
        return (await emu.tags(bp_id)).get("impact_level") == "high"

    await world.wait_for(reached_bigpanda, timeout_s=15, what="the change on BigPanda")
    return bp_id, sn


async def refused_in_browser(page: Page, url: str) -> bool:
    """The browser got the 401 (shown, or the challenge given up on: headless, Chromium
    either shows the 401 or cancels the navigation)."""
    try:
        response = await page.goto(url)
    except PlaywrightError as exc:
        return "ERR_INVALID_AUTH_CREDENTIALS" in str(exc)
    return response is not None and response.status == 401 and "Pair" not in await page.content()


async def test_status_page_in_a_browser_and_over_http(world: World, browser: Browser) -> None:
    emu = Emu(world)
    await emu.define_tags(*SYSTEM_TAGS)
    async with world.daemon(**daemon_settings()) as daemon:
        bp_id, sn = await synced_incident(world, emu)
        base = daemon._server.url
        number = sn["number"]

        # over HTTP: the token is asked for, then the same data as JSON
        async with world.http.get(base + "/status.json") as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith('Basic realm="bpsync"')
        bearer = {"Authorization": f"Bearer {STATUS_TOKEN}"}
        async with world.http.get(base + "/status.json", headers=bearer) as resp:
            assert resp.status == 200
            plain = await resp.text()
        async with world.http.get(
            base + "/status.json", params={"q": number}, headers=bearer
        ) as resp:
            assert resp.status == 200
            searched = await resp.text()
        [pair] = json.loads(plain)["pairs"]
        assert pair["name"] == "default"
        assert pair["leader"]["leads"] is True
        assert pair["last_good_cycle"] is not None
        assert pair["links_by_state"]["linked"] == 1
        assert {a["kind"] for a in pair["last_actions"]} >= {"sn.create", "bp.link_tag", "bp.tags"}
        assert all(c["lag_s"] is not None for c in pair["cursors"])
        trail = json.loads(searched)["pairs"][0]["trail"]
        assert trail["bp_incident_id"] == bp_id
        assert [x["sn_number"] for x in trail["links"]] == [number]
        summaries = [e["summary"] for e in trail["events"]]
        assert any(s.startswith("action created") for s in summaries), summaries
        assert "sn.create done" in summaries
        assert "bp.tags done" in summaries

        # in a browser without script: Basic auth, the page, then the search box
        for credentials in (None, {"username": "ops", "password": "wrong-S3cr3t-token-00"}):
            context = await browser.new_context(
                java_script_enabled=False, http_credentials=credentials
            )
            refused = await context.new_page()
            assert await refused_in_browser(refused, base + "/"), credentials
            await context.close()
        context = await browser.new_context(
            java_script_enabled=False,
            http_credentials={"username": "ops", "password": STATUS_TOKEN},
        )
        page = await context.new_page()
        response = await page.goto(base + "/")
        assert response is not None
        assert response.status == 200
        assert await page.title() == "bpsync status"
        assert await page.locator("#pair-default h2").inner_text() == "Pair default"
        linked_cell = page.locator("table.links-by-state tbody td").nth(1)
        assert await linked_cell.inner_text() == "1"
        html_plain = await page.content()

        await page.fill("#q", bp_id)
        await page.click("button[type=submit]")
        await page.wait_for_selector("table.trail-events")
        assert f"q={bp_id}" in page.url
        events = await page.locator("table.trail-events").inner_text()
        assert "sn.create done" in events
        assert "bp.tags done" in events
        assert number in await page.locator("table.trail-links").inner_text()
        html_bp = await page.content()

        await page.fill("#q", number)
        await page.press("#q", "Enter")
        await page.wait_for_url(f"**q={number}")
        assert bp_id in await page.locator("section.trail").inner_text()
        html_number = await page.content()

        await page.fill("#q", "INC0999999")
        await page.click("button[type=submit]")
        await page.wait_for_url("**q=INC0999999")
        assert "no link found for INC0999999" in await page.locator("section.trail").inner_text()
        await context.close()

    for body in (plain, searched, html_plain, html_bp, html_number):
        assert leaks(body) == []
