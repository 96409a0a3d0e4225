"""A real Prometheus server scrapes a real worker: counts arrive, and every rule and dashboard query runs.

Needs the ``prometheus`` binary (Debian package, ``ops/install_prometheus.sh``): skipped without it on a
workstation, failed under CI (CI=true).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaProducer

from cadence.runtime import Runtime, ServerProcess, create_topics, free_port
from cadence.workers import WorkerProcess, worker_env
from simulator import traffic
from simulator.world import User
from streams.topics import ALL_TOPICS

pytestmark = pytest.mark.integration

OPS = Path(__file__).resolve().parents[2] / "ops"
RULES = OPS / "prometheus" / "rules.yml"
DASHBOARD = OPS / "grafana" / "dashboards" / "cadence.json"
T0 = 1_767_571_200.0  # 2026-01-05 00:00 UTC
# Grafana's variables, as Grafana would expand them for "all workers".
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$instance": ".*"}


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path:
        return path
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("prometheus is not installed: CI must run `ops/install_prometheus.sh` before the tests")
    pytest.skip("prometheus is not installed: run `sudo ops/install_prometheus.sh` (Debian)")


def api(base: str, path: str, **params: str) -> dict[str, Any]:
    """GET a Prometheus API path; errors (HTTP 400/422 for bad queries) come back as their JSON body."""
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def ready(base: str) -> bool:
    """Prometheus listens before it is ready (its API answers 503 while the TSDB opens)."""
    try:
        with urllib.request.urlopen(base + "/-/ready", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError):
        return False


def wait_for(probe: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.5)


def by_label(base: str, expr: str, label: str) -> dict[str, float]:
    result = api(base, "/api/v1/query", query=expr)["data"]["result"]
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in result}


# Module-scoped: both tests read the same worker and Prometheus (starting them is most of the time).
@pytest.fixture(scope="module")
def scrape_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prometheus-scrape")


@pytest.fixture(scope="module")
def topic_prefix(runtime: Runtime) -> str:
    prefix = f"prom{uuid.uuid4().hex[:8]}."
    create_topics(runtime.kafka_bootstrap or "", [prefix + t for t in ALL_TOPICS], partitions=4)
    return prefix


@pytest.fixture(scope="module")
def worker(runtime: Runtime, topic_prefix: str, scrape_dir: Path) -> Iterator[WorkerProcess]:
    app_id = topic_prefix.rstrip(".")
    env = worker_env(runtime.env(), log_level="warn", app_id=app_id, topic_prefix=topic_prefix)
    w = WorkerProcess(env, scrape_dir, "worker-1").start()
    try:
        w.wait_ready(timeout_s=90)
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def prometheus(worker: WorkerProcess, scrape_dir: Path) -> Iterator[str]:
    """A Prometheus server scraping the worker every second with the repo's alert rules; yields its URL."""
    binary = prometheus_binary()
    port = free_port()
    config = {  # JSON is YAML
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "cadence", "static_configs": [{"targets": [f"127.0.0.1:{worker.web_port}"]}]},
        ],
    }
    config_path = scrape_dir / "prometheus.yml"
    config_path.write_text(json.dumps(config))
    server = ServerProcess(
        "prometheus",
        [binary, f"--config.file={config_path}", f"--storage.tsdb.path={scrape_dir / 'prometheus-data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        port, scrape_dir / "prometheus.log",
    )
    server.start(timeout_s=30)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: ready(base), 30, f"Prometheus to be ready (log: {server.log_path})")
        yield base
    finally:
        server.stop()


def send_events(bootstrap: str, prefix: str, n_users: int, seed: int) -> tuple[Counter, Counter]:
    """Valid requests (as the simulator sends them) and a few bad events; returns what should be counted."""
    rng = np.random.default_rng(seed)
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    valid: Counter = Counter()
    rejected: Counter = Counter()
    for i in range(n_users):
        user = User(f"user-{i}", "casual", "mobile", consent=True, activity=1.0)
        for j, (_, topic, etype, placement) in enumerate(traffic.REQUEST_MIX):
            out = traffic.request_event(f"ev-{i}-{j}", user, T0 + i, topic, etype, placement)
            producer.send(prefix + out.topic, key=out.key, value=out.value)
            valid[(out.topic, etype)] += 1
    for i in range(3):
        out, reason = traffic.bad_event(rng, f"bad-{i}", f"user-{i}", T0 + i)
        producer.send(prefix + out.topic, key=out.key, value=out.value)
        rejected[reason] += 1
    producer.flush()
    producer.close()
    return valid, rejected


def test_prometheus_scrapes_worker_counts(runtime: Runtime, topic_prefix: str, prometheus: str) -> None:
    wait_for(lambda: by_label(prometheus, 'up{job="cadence"}', "job").get("cadence") == 1.0, 30,
             "Prometheus to scrape the worker")
    valid, rejected = send_events(runtime.kafka_bootstrap or "", topic_prefix, n_users=5, seed=3)

    total = "sum(cadence_events_consumed_total)"
    consumed = wait_for(
        lambda: (v := by_label(prometheus, total, "")) and v[""] >= sum(valid.values()) and v,
        60, "cadence_events_consumed_total to reach the events sent",
    )
    assert consumed[""] == sum(valid.values())
    by_topic_type = "sum by (topic, type) (cadence_events_consumed_total)"
    scraped = {(r["metric"]["topic"], r["metric"]["type"]): float(r["value"][1])
               for r in api(prometheus, "/api/v1/query", query=by_topic_type)["data"]["result"]}
    assert scraped == {k: float(v) for k, v in valid.items()}

    dead = wait_for(
        lambda: (v := by_label(prometheus, "sum by (reason) (cadence_dead_letters_total)", "reason"))
        and sum(v.values()) >= sum(rejected.values()) and v,
        30, "dead letters to be counted",
    )
    assert dead == {k: float(v) for k, v in rejected.items()}


def test_every_rule_and_dashboard_query_runs(prometheus: str) -> None:
    wait_for(lambda: by_label(prometheus, 'up{job="cadence"}', "job").get("cadence") == 1.0, 30,
             "Prometheus to scrape the worker")

    alerts = set(re.findall(r"^\s*- alert:\s*(\w+)", RULES.read_text(), re.M))

    def evaluated_rules() -> list[dict]:
        groups = api(prometheus, "/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(not r["lastEvaluation"].startswith("0001") for r in rules) else []

    rules = wait_for(evaluated_rules, 30, "every rule to be evaluated once")
    assert {r["name"] for r in rules if r["type"] == "alerting"} == alerts
    broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not broken, f"rules that fail on a real server: {broken}"

    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert queries
    for query in queries:
        for variable, value in GRAFANA_VARIABLES.items():
            query = query.replace(variable, value)
        answer = api(prometheus, "/api/v1/query", query=query)
        assert answer["status"] == "success", f"dashboard query fails: {query}: {answer.get('error')}"
