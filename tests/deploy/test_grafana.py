"""deploy/grafana, statically: the dashboard is well-formed, every query is valid PromQL (promtool
parses them as recording rules), names only metrics the worker declares, and the panels cover
what operators need. tests/integration/test_prometheus.py checks the names against a live worker."""

from __future__ import annotations

import re

import yaml

from tests.deploy.support import (
    dashboard,
    dashboard_exprs,
    dashboard_panels,
    declared_metric_names,
    promql_metric_names,
    promtool,
)

# What the issue asks the dashboard to show, as the metric each needs.
REQUIRED = {
    "throughput": "lstm_worker_events_total",
    "latency percentiles": "lstm_worker_latency_seconds_bucket",
    "round size": "lstm_worker_round_keys_sum",
    "cache hit ratio": "lstm_worker_cache_lookups_total",
    "lag per partition": "lstm_worker_consumer_lag",
    "restore progress": "lstm_worker_restore_records_total",
    "dead letters": "lstm_worker_dead_letters_total",
}


def grafana_to_promql(expr: str) -> str:
    """Grafana's variables replaced by what they expand to, so that promtool can parse it."""
    return expr.replace("$__rate_interval", "1m").replace('=~"$instance"', '=~".*"')


def test_dashboard_is_well_formed():
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area
    for panel in dashboard_panels():
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "instance"}


def test_every_query_is_valid_promql(tmp_path):
    rules = [
        {"record": f"dashboard:query_{i}", "expr": grafana_to_promql(expr)} for i, expr in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [{"record": "x:y", "expr": "sum("}]}]}))
    assert promtool("check", "rules", str(path)).returncode != 0, "promtool must refuse bad PromQL"


def test_queries_name_only_metrics_the_worker_declares():
    for expr in dashboard_exprs():
        names = promql_metric_names(expr)
        assert names, expr
        assert names <= declared_metric_names(), f"{names - declared_metric_names()} in {expr}"


def test_dashboard_shows_what_operators_need():
    used = set().union(*(promql_metric_names(e) for e in dashboard_exprs()))
    missing = {need: metric for need, metric in REQUIRED.items() if metric not in used}
    assert not missing
    latency = [e for e in dashboard_exprs() if "lstm_worker_latency_seconds_bucket" in e]
    assert {re.search(r"histogram_quantile\(([\d.]+)", e).group(1) for e in latency} >= {"0.5", "0.99"}  # type: ignore[union-attr]
    assert any("by (partition)" in e for e in dashboard_exprs() if "lstm_worker_consumer_lag" in e)
