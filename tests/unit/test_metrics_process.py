"""A worker's /metrics has the process metrics, so restarts (process_start_time_seconds) can be alerted on."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, ProcessCollector

from cadence.metrics import Metrics


def test_process_and_platform_metrics_are_exported() -> None:
    text = Metrics().exposition().decode()
    for name in ("process_start_time_seconds", "process_cpu_seconds_total", "process_resident_memory_bytes",
                 "python_info"):
        assert f"\n{name}" in text, f"{name} missing from /metrics"


def test_a_registry_passed_in_is_used_as_it_is() -> None:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)  # as the default registry has it: not registered twice
    text = Metrics(registry).exposition().decode()
    assert text.count("# TYPE process_start_time_seconds") == 1
    Metrics()  # each Metrics its own registry: no collision
