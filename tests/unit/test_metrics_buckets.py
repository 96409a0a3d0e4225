"""Event-age histograms reach minutes: a backlog's p99 must not read as the top bucket (2.5 s)."""

from __future__ import annotations

import re

import pytest

from cadence.metrics import Metrics


def bucket_counts(text: str, name: str) -> dict[float, float]:
    found = re.findall(rf'^{name}_bucket\{{le="([^"]+)"\}} (\S+)$', text, re.M)
    return {float(le): float(n) for le, n in found}


@pytest.mark.parametrize("attr,name", [("decision_latency", "cadence_event_to_decision_seconds"),
                                       ("intake_wait", "cadence_intake_wait_seconds")])
def test_a_minute_old_event_lands_below_the_top_bound(attr: str, name: str) -> None:
    metrics = Metrics()
    getattr(metrics, attr).observe(60.0)
    counts = bucket_counts(metrics.exposition().decode(), name)
    assert {5.0, 10.0, 30.0, 60.0, 120.0, 300.0} <= set(counts)
    assert {0.0005, 0.001, 0.005, 0.25, 2.5} <= set(counts)  # the fine low buckets stay
    assert counts[30.0] == 0 and counts[60.0] == 1  # between 30 s and 60 s, not "above 2.5 s"


def test_the_other_latency_histograms_keep_their_buckets() -> None:
    metrics = Metrics()
    metrics.loop_lag.observe(0.01)
    counts = bucket_counts(metrics.exposition().decode(), "cadence_event_loop_lag_seconds")
    assert max(le for le in counts if le != float("inf")) == 2.5
