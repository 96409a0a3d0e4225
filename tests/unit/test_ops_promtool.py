"""The alert rules load in Prometheus and behave as their unit tests say (``promtool``).

promtool comes from Debian's ``prometheus`` package (``ops/install_prometheus.sh``). Without it these tests
skip on a workstation, but fail under CI (CI=true), where a missing promtool means a broken setup.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

try:
    import yaml
except ImportError:  # PyYAML is a dev dependency; CI must have it
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise
    pytest.skip("PyYAML is not installed: pip install pyyaml (dev dependency)", allow_module_level=True)

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "ops" / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yml"
RULES_TEST = PROMETHEUS_DIR / "rules_test.yml"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"


def promtool() -> str:
    path = shutil.which("promtool")
    if path:
        return path
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("promtool is not installed: CI must run `ops/install_prometheus.sh` before the tests")
    pytest.skip("promtool is not installed: run `sudo ops/install_prometheus.sh` (Debian) to test the rules")


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True, timeout=60, cwd=cwd)


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]


def all_rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_rules_pass_promtool_check() -> None:
    result = run("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(all_rules())} rules found" in result.stdout


def test_rule_unit_tests_pass() -> None:
    result = run("test", "rules", RULES_TEST)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_prometheus_config_is_valid(tmp_path: Path) -> None:
    # The config names the rules by their path inside the container; point it at the repo's copy.
    config = yaml.safe_load(CONFIG.read_text())
    config["rule_files"] = [str(RULES)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = run("check", "config", tmp_path / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases: dict[str, list[list]] = {}
    for test in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(case["exp_alerts"])
    for rule in alert_rules():
        name = rule["alert"]
        assert any(expected for expected in cases.get(name, [])), f"no test case where {name} fires"
        assert any(not expected for expected in cases.get(name, [])), f"no test case where {name} stays quiet"


MUTATIONS = {"never fires": "vector(0) > 1", "always fires": "vector(1)"}


@pytest.mark.parametrize("alert", [r["alert"] for r in alert_rules()])
@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_rule_tests_catch_a_broken_rule(tmp_path: Path, alert: str, mutation: str) -> None:
    """Replacing one alert's expression must make its unit tests fail, so they really test it."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"] = MUTATIONS[mutation]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    # Only the test groups about this alert, so each run stays short.
    tests = yaml.safe_load(RULES_TEST.read_text())
    tests["tests"] = [t for t in tests["tests"] if any(c["alertname"] == alert for c in t["alert_rule_test"])]
    (tmp_path / "rules_test.yml").write_text(yaml.safe_dump(tests))
    result = run("test", "rules", "rules_test.yml", cwd=tmp_path)
    assert result.returncode != 0, f"rules_test.yml still passes when {alert} {mutation}"
    assert f"alertname: {alert}" in result.stdout + result.stderr


# -- dashboard queries, run by promtool on made-up series ------------------------------------------------
DASHBOARD = PROMETHEUS_DIR.parent / "grafana" / "dashboards" / "cadence.json"


def dashboard_expr(title: str, ref_id: str = "A") -> str:
    """The panel's query as Prometheus gets it with every worker selected."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    (panel,) = [p for p in panels if p["title"] == title]
    (target,) = [t for t in panel["targets"] if t["refId"] == ref_id]
    return target["expr"].replace("$instance", ".*").replace("$__rate_interval", "1m")


def run_expr_tests(tmp_path: Path, input_series: list[dict], cases: list[dict]) -> None:
    tests = {"rule_files": [], "evaluation_interval": "15s",
             "tests": [{"interval": "15s", "input_series": input_series, "promql_expr_test": cases}]}
    (tmp_path / "dashboard_test.yml").write_text(yaml.safe_dump(tests))
    result = run("test", "rules", "dashboard_test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dead_letter_ratio_panel_shows_zero_before_the_first_dead_letter(tmp_path: Path) -> None:
    consumed = ('cadence_events_consumed_total'
                '{job="cadence", instance="worker-1:6066", topic="web-events", type="page_view"}')
    dead = 'cadence_dead_letters_total{job="cadence", instance="worker-1:6066", reason="malformed_json"}'
    expr = dashboard_expr("Dead-letter ratio")
    run_expr_tests(tmp_path, [{"series": consumed, "values": "0+100x80"}],
                   [{"expr": expr, "eval_time": "10m", "exp_samples": [{"labels": "{}", "value": 0}]}])
    run_expr_tests(tmp_path, [{"series": consumed, "values": "0+75x80"}, {"series": dead, "values": "0+25x80"}],
                   [{"expr": expr, "eval_time": "10m", "exp_samples": [{"labels": "{}", "value": 0.25}]}])


def test_watermark_panels_are_empty_before_the_first_event(tmp_path: Path) -> None:
    labels = '{job="cadence", instance="worker-1:6066"}'
    lag = dashboard_expr("Watermark lag")
    advance = dashboard_expr("Event time advance")
    windows = dashboard_expr("Label windows behind the event clock (s) and workers holding them")
    unset = [{"series": f"cadence_event_time_watermark_seconds{labels}", "values": "0x80"},
             {"series": f"cadence_label_watermark_seconds{labels}", "values": "0x80"}]
    run_expr_tests(tmp_path, unset, [{"expr": e, "eval_time": "10m", "exp_samples": []}
                                     for e in (lag, advance, windows)])
    # Set from the first event on (at 5m15s: event time 200, then one second per second of wall clock).
    seen = [{"series": f"cadence_event_time_watermark_seconds{labels}", "values": "0x20 200+15x60"},
            {"series": f"cadence_label_watermark_seconds{labels}", "values": "0x20 150+15x60"}]
    at_10m = "{instance=\"worker-1:6066\", job=\"cadence\"}"
    run_expr_tests(tmp_path, seen, [
        {"expr": lag, "eval_time": "10m", "exp_samples": [{"labels": at_10m, "value": 600 - (200 + 15 * 19)}]},
        {"expr": advance, "eval_time": "15m", "exp_samples": [{"labels": at_10m, "value": 1}]},
        {"expr": windows, "eval_time": "10m", "exp_samples": [{"labels": at_10m, "value": 50}]},
    ])
