"""observe_many gives a histogram the buckets and count that one observe() per amount gives."""

import math

from prometheus_client import CollectorRegistry, Histogram

from cadence.metrics import observe_many


def _samples(h: Histogram) -> dict[str, float]:
    return {f"{s.name}{s.labels}": s.value for m in h.collect() for s in m.samples if not s.name.endswith("_created")}


def test_same_buckets_count_and_sum_as_one_by_one() -> None:
    amounts = [0.0, 0.001, 0.005, 0.0050001, 0.02, 0.25, 0.25, 3.0, 1e9, -1.0, 0.1, 0.1, 0.09999]
    bounds = (0.005, 0.01, 0.025, 0.1, 0.25, 1.0, 2.5)
    one = Histogram("one", "x", buckets=bounds, registry=CollectorRegistry())
    many = Histogram("many", "x", buckets=bounds, registry=CollectorRegistry())
    for a in amounts:
        one.observe(a)
    observe_many(many, amounts[:5])
    observe_many(many, [])
    observe_many(many, amounts[5:])
    a, b = _samples(one), _samples(many)
    assert a.keys() == {k.replace("many", "one") for k in b}
    for key, value in a.items():
        other = b[key.replace("one", "many")]
        if key.startswith("one_sum"):
            assert math.isclose(value, other, rel_tol=1e-12)
        else:
            assert value == other, key


def test_nan_counts_in_no_bucket_like_observe() -> None:
    one = Histogram("one", "x", buckets=(1.0,), registry=CollectorRegistry())
    many = Histogram("many", "x", buckets=(1.0,), registry=CollectorRegistry())
    one.observe(float("nan"))
    observe_many(many, [float("nan")])
    count = {s.name: s.value for m in one.collect() for s in m.samples}["one_count"]
    assert count == {s.name: s.value for m in many.collect() for s in m.samples}["many_count"] == 0
