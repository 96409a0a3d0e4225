"""The ops files agree with each other and with the code.

Prometheus scrapes services that docker-compose runs, on the ports they listen on; mounted files exist;
every metric (and label) the alert rules and the dashboard use is one that ``cadence.metrics.Metrics``
exports. Metric names come from ``Metrics().registry``, so metrics added later are picked up unaided.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tomllib
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from cadence.metrics import Metrics
from cadence.settings import Settings

try:
    import yaml
except ImportError:  # PyYAML is a dev dependency; CI must have it
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise
    pytest.skip("PyYAML is not installed: pip install pyyaml (dev dependency)", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
OPS = REPO / "ops"
COMPOSE = REPO / "docker-compose.yml"
PROMETHEUS_YML = OPS / "prometheus" / "prometheus.yml"
RULES_YML = OPS / "prometheus" / "rules.yml"
DASHBOARD = OPS / "grafana" / "dashboards" / "cadence.json"
DATASOURCES = OPS / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = OPS / "grafana" / "provisioning" / "dashboards" / "cadence.yml"
WORKER_JOB = "cadence"
# Labels Prometheus adds to every series (target labels) or that histogram buckets carry.
SCRAPE_LABELS = {"job", "instance"}

# Sample names each kind of metric family exports (prometheus_client families carry the base name).
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}
# The engine's metrics, and the process ones its registry also has (ProcessCollector, PlatformCollector).
EXPORTED_PREFIX = r"(?:cadence|process|python)_"
METRIC_TOKEN = re.compile(rf"\b{EXPORTED_PREFIX}[a-zA-Z0-9_]+")
SELECTOR = re.compile(rf"\b({EXPORTED_PREFIX}[a-zA-Z0-9_]+)\s*\{{([^}}]*)\}}")
MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def exported_series() -> dict[str, set[str]]:
    """Every sample name ``Metrics`` exports, mapped to the label names it can carry."""
    metrics = Metrics()
    labels_by_family = {
        m.describe()[0].name: set(m._labelnames)  # noqa: SLF001 - the only place prometheus_client keeps them
        for m in vars(metrics).values()
        if isinstance(m, MetricWrapperBase)
    }
    series: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        # Collectors that are not metric objects (python_info) show their labels on their samples only.
        sampled = set().union(*(s.labels for s in family.samples))
        for suffix in SAMPLE_SUFFIXES[family.type]:
            labels = set(labels_by_family.get(family.name, sampled))
            if suffix == "_bucket":
                labels.add("le")
            series[family.name + suffix] = labels
    return series


def rule_expressions() -> dict[str, str]:
    return {
        rule.get("alert") or rule["record"]: rule["expr"]
        for group in load_yaml(RULES_YML)["groups"]
        for rule in group["rules"]
    }


def dashboard_panels() -> list[dict]:
    panels = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # panels inside collapsed rows
    return panels


def dashboard_expressions() -> dict[str, str]:
    """Every PromQL expression of the dashboard (targets and template queries), named for messages."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = {
        f"panel {p['title']!r} target {t['refId']}": t["expr"]
        for p in dashboard_panels()
        for t in p.get("targets", [])
    }
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            exprs[f"variable {var['name']!r}"] = query
    return exprs


def all_expressions() -> dict[str, str]:
    return {**{f"rule {k}": v for k, v in rule_expressions().items()}, **dashboard_expressions()}


def host_port(address: str, default_port: int | None = None) -> tuple[str, int]:
    """``host:port`` of an address, URL or Kafka listener (``NAME://host:port``; an empty host is 0.0.0.0)."""
    netloc = address.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    host, _, port = netloc.rpartition(":") if ":" in netloc else (netloc, "", "")
    assert port or default_port, f"{address!r} names no port"
    return host or "0.0.0.0", int(port or default_port or 0)


def compose_services() -> dict[str, dict]:
    return load_yaml(COMPOSE)["services"]


def bind_mounts(service: dict) -> dict[str, Path]:
    """Container path -> repo path of the service's bind mounts (short syntax ``./src:/dst[:ro]``)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (COMPOSE.parent / source).resolve()
    return mounts


def command_flags(service: dict) -> dict[str, str]:
    flags = [arg.removeprefix("--").partition("=") for arg in service.get("command", [])]
    return {name: value for name, _, value in flags if name}


def worker_services() -> dict[str, dict]:
    return {name: s for name, s in compose_services().items() if s.get("command") == ["cadence", "worker"]}


def scrape_targets(job: str) -> list[str]:
    (config,) = [c for c in load_yaml(PROMETHEUS_YML)["scrape_configs"] if c["job_name"] == job]
    return [t for static in config["static_configs"] for t in static["targets"]]


# -- metrics ---------------------------------------------------------------------------------------
def test_metric_names_come_from_the_registry() -> None:
    series = exported_series()
    assert "cadence_events_consumed_total" in series
    assert "le" in series["cadence_batch_processing_seconds_bucket"]
    assert "cadence_events_consumed_bucket" not in series  # a counter has no buckets
    assert {"topic", "type"} <= series["cadence_events_consumed_total"]
    assert "process_start_time_seconds" in series  # the restart rule needs it


@pytest.mark.parametrize("where", sorted(all_expressions()))
def test_expressions_use_only_exported_metrics_and_labels(where: str) -> None:
    expr = all_expressions()[where]
    series = exported_series()
    used = set(METRIC_TOKEN.findall(expr))
    unknown = sorted(used - set(series))
    assert not unknown, f"{where} uses {unknown}, which cadence.metrics.Metrics does not export: {expr}"

    for metric, matchers in SELECTOR.findall(expr):
        bad = set(MATCHER_LABEL.findall(matchers)) - series[metric] - SCRAPE_LABELS
        assert not bad, f"{where}: {metric} has no label(s) {sorted(bad)}"
    # Labels grouped or matched on must exist on some metric of the expression (or come from the scrape).
    known = SCRAPE_LABELS.union(*(series[m] for m in used)) if used else SCRAPE_LABELS
    grouped = {label.strip() for group in GROUPING.findall(expr) for label in group.split(",")} - {""}
    assert grouped <= known, f"{where} groups by {sorted(grouped - known)}, which no metric of it carries"


def test_dashboard_legends_name_labels_that_exist() -> None:
    series = exported_series()
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            used = set(METRIC_TOKEN.findall(target["expr"]))
            known = SCRAPE_LABELS.union(*(series[m] for m in used if m in series))
            legend = set(LEGEND_LABEL.findall(target.get("legendFormat", "")))
            assert legend <= known, f"panel {panel['title']!r} legend uses {sorted(legend - known)}"


def test_every_exported_metric_is_on_the_dashboard() -> None:
    used = {m for expr in dashboard_expressions().values() for m in METRIC_TOKEN.findall(expr)}
    families = {f.name for f in Metrics().registry.collect()}
    missing = sorted(f for f in families if not any(u.startswith(f) for u in used))
    assert not missing, f"add a panel to {DASHBOARD.relative_to(REPO)} for {missing}"


# -- dashboard and provisioning -----------------------------------------------------------------------
def test_dashboard_is_valid_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, f"panel {panel['title']!r} leaves the grid"
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no query"
    refs = set(re.findall(r"\$\{?(\w+)", json.dumps(dashboard)))
    unknown = refs - {"__rate_interval", "__interval"} - variables
    assert not unknown, f"the dashboard uses undefined variables {sorted(unknown)}"


def test_grafana_provisioning_matches_compose() -> None:
    grafana = compose_services()["grafana"]
    mounts = bind_mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == OPS / "grafana" / "provisioning"

    (provider,) = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    dashboards_dir = mounts[provider["options"]["path"]]
    assert (dashboards_dir / DASHBOARD.name).samefile(DASHBOARD)
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dashboards_dir / Path(home).relative_to(provider["options"]["path"])).samefile(DASHBOARD)

    (source,) = load_yaml(DATASOURCES)["datasources"]
    host, port = host_port(source["url"])
    prometheus = compose_services()[host]
    assert host_port(command_flags(prometheus)["web.listen-address"])[1] == port


# -- compose and Prometheus -----------------------------------------------------------------------------
def test_compose_parses_and_bind_mounts_exist() -> None:
    services = compose_services()
    assert {"kafka", "redis", "prometheus", "grafana"} <= set(services)
    assert len(worker_services()) >= 2
    for name, service in services.items():
        for target, source in bind_mounts(service).items():
            assert source.exists(), f"service {name} mounts {source} on {target}, which is not in the repo"
        build = service.get("build")
        if build:
            assert (COMPOSE.parent / build["context"] / build.get("dockerfile", "Dockerfile")).is_file()


def test_prometheus_scrapes_every_worker_on_its_web_port() -> None:
    workers = worker_services()
    targets = scrape_targets(WORKER_JOB)
    scraped = set()
    for target in targets:
        host, port = host_port(target)
        assert host in workers, f"scrape target {target}: no compose service {host!r} runs `cadence worker`"
        env = workers[host]["environment"]
        assert int(env.get("CADENCE_WEB_PORT", 6066)) == port, f"{host} serves /metrics on another port"
        assert env.get("CADENCE_WEB_HOST") == "0.0.0.0", f"{host} must bind 0.0.0.0 to be reachable"
        scraped.add(host)
    assert scraped == set(workers), f"workers not scraped: {sorted(set(workers) - scraped)}"


def test_prometheus_loads_the_mounted_config_and_rules() -> None:
    prometheus = compose_services()["prometheus"]
    mounts = bind_mounts(prometheus)
    assert mounts[command_flags(prometheus)["config.file"]] == PROMETHEUS_YML
    for rule_file in load_yaml(PROMETHEUS_YML)["rule_files"]:
        assert mounts[rule_file] == RULES_YML, f"rule file {rule_file} is not ops/prometheus/rules.yml"


def test_workers_reach_kafka_and_redis_as_compose_runs_them() -> None:
    services = compose_services()
    for name, worker in worker_services().items():
        env = worker["environment"]
        kafka_host, kafka_port = host_port(env["KAFKA_BOOTSTRAP"])
        kafka_env = services[kafka_host]["environment"]
        advertised = [host_port(a) for a in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")]
        listening = [host_port(a)[1] for a in kafka_env["KAFKA_LISTENERS"].split(",")]
        assert (kafka_host, kafka_port) in advertised, f"{name}: Kafka does not advertise its KAFKA_BOOTSTRAP"
        assert kafka_port in listening
        redis_host, _ = host_port(env["REDIS_URL"], default_port=6379)
        assert redis_host in services, f"{name}: no compose service {redis_host!r} for REDIS_URL"
        assert set(worker["depends_on"]) >= {kafka_host, redis_host}


def test_simulator_profile_runs_a_module_that_exists() -> None:
    simulator = compose_services()["simulator"]
    assert simulator["profiles"] == ["simulator"]
    module = simulator["command"][simulator["command"].index("-m") + 1]
    assert (REPO / module / "__main__.py").is_file(), (
        f"docker-compose runs `python -m {module}`: add {module}/__main__.py (arguments: see ops/README.md)"
    )


# -- image ----------------------------------------------------------------------------------------------
def test_docker_context_keeps_what_pip_install_needs() -> None:
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", pyproject["project"]["readme"]}
    needed |= {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert not needed & ignored, f".dockerignore drops {sorted(needed & ignored)}, needed by `pip install .`"


def test_image_defaults_match_the_compose_workers() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, re.M)
    exposed = {int(p) for p in re.findall(r"^EXPOSE (\d+)", dockerfile, re.M)}
    default_port = int(re.search(r"CADENCE_WEB_PORT=(\d+)", dockerfile).group(1))
    assert default_port in exposed
    for worker in worker_services().values():
        port = int(worker["environment"]["CADENCE_WEB_PORT"])
        assert any(p.endswith(f":{port}") for p in worker.get("ports", [])), "publish the worker's web port"


def test_install_script_is_executable() -> None:
    assert os.access(OPS / "install_prometheus.sh", os.X_OK)


def test_workers_read_the_secrets_file_the_example_describes_and_its_settings_exist(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    example = REPO / "ops" / "cadence.env.example"
    for name, worker in worker_services().items():
        files = [entry["path"] if isinstance(entry, dict) else entry for entry in worker.get("env_file", [])]
        assert files == ["./ops/cadence.env"], f"{name} must read the secrets from ops/cadence.env"
        assert worker["env_file"][0].get("required") is False, f"{name}: the stack must start without the file"
    assert "ops/cadence.env" in (REPO / ".gitignore").read_text().splitlines(), "git must not take the secrets"
    names = re.findall(r"^#\s*([A-Z_]+)=\s*$", example.read_text(), re.M)
    assert names == ["CADENCE_ERASURE_KEY", "CADENCE_API_TOKEN", "CADENCE_ADMIN_TOKEN"]
    filled = {n: secrets.token_hex(32) for n in names}
    assert Settings.unknown_environment(filled) == []
    for name, value in filled.items():  # as the workers get them from the file
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.erasure_key is not None and settings.admin_token is not None and settings.api_token is not None
