"""deploy/prometheus with Debian's promtool: the scrape config and the alert rules are valid, the
rules' unit tests (alerts_test.yml) pass, and the alerts name only metrics the worker declares."""

from __future__ import annotations

import shutil

import pytest

from tests.deploy.support import PROMETHEUS, REPO, declared_metric_names, load_yaml, promql_metric_names, promtool

# What the issue asks the alerts to cover, by alert name.
REQUIRED_ALERTS = {
    "LstmWorkerConsumerLagGrowing",
    "LstmWorkerDeadLetters",
    "LstmWorkerNotReady",
    "LstmWorkerRestoreTakingLong",
    "LstmWorkerCommitFailures",
}


def alert_rules() -> list[dict]:
    return [rule for group in load_yaml(PROMETHEUS / "alerts.yml")["groups"] for rule in group["rules"]]


def test_scrape_config_is_valid():
    result = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_alert_rules_are_valid():
    result = promtool("check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_unit_tests_pass():
    result = promtool("test", "rules", "alerts_test.yml", cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_rule(tmp_path):
    rules = (PROMETHEUS / "alerts.yml").read_text().replace("up{job=", "up{{job=", 1)
    (tmp_path / "alerts.yml").write_text(rules)
    assert promtool("check", "rules", str(tmp_path / "alerts.yml")).returncode != 0


def test_rule_unit_tests_catch_a_changed_threshold(tmp_path):
    shutil.copy(PROMETHEUS / "alerts_test.yml", tmp_path)
    rules = (PROMETHEUS / "alerts.yml").read_text()
    (tmp_path / "alerts.yml").write_text(rules.replace("[5m])) > 0.1", "[5m])) > 1"))
    assert promtool("test", "rules", "alerts_test.yml", cwd=tmp_path).returncode != 0


def test_every_alert_is_covered_by_a_unit_test_and_documented():
    tests = load_yaml(PROMETHEUS / "alerts_test.yml")["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case.get("exp_alerts")}
    names = {rule["alert"] for rule in alert_rules()}
    assert names >= REQUIRED_ALERTS
    assert names == tested, f"alerts without a firing test: {names - tested}"
    operations = (REPO / "docs" / "operations.md").read_text()
    assert not [n for n in names if f"`{n}`" not in operations], "docs/operations.md's Alerts section lists every alert"


def test_alerts_carry_severity_and_summary():
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alerts_name_only_metrics_the_worker_declares(rule):
    names = promql_metric_names(rule["expr"])
    assert names, rule["expr"]
    assert names <= declared_metric_names() | {"up"}, names - declared_metric_names()
