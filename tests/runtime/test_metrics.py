"""``sync.metrics.Metrics``: every series the engine, clients and daemon feed."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from sync.metrics import CONTENT_TYPE, Metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            labels = dict(sample.labels)
            assert labels.pop("pair") == metrics.pair  # every series names its pair
            out[(sample.name, tuple(sorted(labels.items())))] = sample.value
    return out


def test_every_feeder_shows_in_the_exposition() -> None:
    m = Metrics()
    m.cycle_done("ok", 0.3)
    m.cycle_done("ok", 0.2)
    m.cycle_done("error", 1.5)
    m.action_done("sn.create", "done", 0.05)
    m.action_done("bp.tags", "retry", 0.01)
    m.observe_request("servicenow", "get", "/api/now/table/{table}", 200, 0.02)
    m.observe_request("bigpanda", "POST", "/resources/v2.0/incidents/{id}", None, 0.5)
    m.notification("dead_letter")
    m.state(
        outbox_depth=3,
        dead_letters=1,
        live_links=42,
        cursor_lag_s={"bigpanda": 2.5, "servicenow": 7.0},
    )
    m.set_leader(True)

    s = samples(m)
    assert s[("bpsync_cycles_total", (("outcome", "ok"),))] == 2
    assert s[("bpsync_cycles_total", (("outcome", "error"),))] == 1
    assert s[("bpsync_cycle_duration_seconds_count", (("outcome", "ok"),))] == 2
    assert s[("bpsync_cycle_duration_seconds_sum", (("outcome", "ok"),))] == 0.5
    assert s[("bpsync_actions_total", (("kind", "sn.create"), ("outcome", "done")))] == 1
    assert s[("bpsync_actions_total", (("kind", "bp.tags"), ("outcome", "retry")))] == 1
    key = (
        ("endpoint", "/api/now/table/{table}"),
        ("method", "GET"),
        ("side", "servicenow"),
        ("status", "200"),
    )
    assert s[("bpsync_http_requests_total", key)] == 1
    key = (
        ("endpoint", "/resources/v2.0/incidents/{id}"),
        ("method", "POST"),
        ("side", "bigpanda"),
        ("status", "error"),
    )
    assert s[("bpsync_http_requests_total", key)] == 1
    assert s[("bpsync_notifications_total", (("kind", "dead_letter"),))] == 1
    assert s[("bpsync_outbox_depth", ())] == 3
    assert s[("bpsync_dead_letters", ())] == 1
    assert s[("bpsync_live_links", ())] == 42
    assert s[("bpsync_cursor_lag_seconds", (("side", "servicenow"),))] == 7.0
    assert s[("bpsync_cursor_lag_seconds", (("side", "bigpanda"),))] == 2.5
    assert s[("bpsync_leader", ())] == 1
    m.set_leader(False)
    assert samples(m)[("bpsync_leader", ())] == 0


def test_two_instances_do_not_share_a_registry() -> None:
    a, b = Metrics(), Metrics()  # the global registry would refuse the second one
    a.cycle_done("ok", 0.1)
    assert samples(a)[("bpsync_cycles_total", (("outcome", "ok"),))] == 1
    assert ("bpsync_cycles_total", (("outcome", "ok"),)) not in samples(b)


def test_content_type_is_prometheus_text() -> None:
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")
    text = Metrics().render().decode()
    assert "# TYPE bpsync_cycles_total counter" in text
    assert "# HELP bpsync_outbox_depth" in text


def test_pairs_share_one_registry_each_series_names_its_pair() -> None:
    base = Metrics()
    prod, staging = base.for_pair("prod"), base.for_pair("staging")
    prod.cycle_done("ok", 0.1)
    staging.cycle_done("error", 0.1)
    staging.set_leader(True)
    prod.set_leader(False)
    r = base.registry
    assert r.get_sample_value("bpsync_cycles_total", {"pair": "prod", "outcome": "ok"}) == 1
    assert r.get_sample_value("bpsync_cycles_total", {"pair": "staging", "outcome": "ok"}) is None
    assert r.get_sample_value("bpsync_cycles_total", {"pair": "staging", "outcome": "error"}) == 1
    assert r.get_sample_value("bpsync_leader", {"pair": "staging"}) == 1
    assert r.get_sample_value("bpsync_leader", {"pair": "prod"}) == 0
    # every pair's changes counters exist from the start (a rate can be taken at once)
    zero = {"pair": "staging", "side": "bigpanda", "via": "push"}
    assert r.get_sample_value("bpsync_changes_total", zero) == 0
    assert base.render() == prod.render() == staging.render()
