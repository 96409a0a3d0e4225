"""The end-to-end bench reports what the worker did during one paced phase: deltas of its own metrics."""

import pytest

from cadence.metrics import Metrics
from load_tests.bench_e2e import phase_internals


def test_means_and_counts_cover_only_the_phase() -> None:
    m = Metrics()
    m.batch_size.labels("intake").observe(1000)  # before the phase: must not count
    m.batch_latency.labels("intake").observe(2.0)
    m.store_latency.labels("apply").observe(1.0)
    before = m.exposition().decode()
    for size, seconds, apply_s, write_s in ((10, 0.004, 0.001, 0.0005), (30, 0.008, 0.003, 0.0015)):
        m.batch_size.labels("intake").observe(size)
        m.batch_latency.labels("intake").observe(seconds)
        m.store_latency.labels("apply").observe(apply_s)
        m.store_latency.labels("write").observe(write_s)
    for lag in [0.001] * 99 + [0.2]:
        m.loop_lag.observe(lag)
    out = phase_internals(before, m.exposition().decode())
    assert out["batches"] == 2
    assert out["batch_size_mean"] == 20.0
    assert out["batch_processing_ms_mean"] == pytest.approx(6.0)
    assert out["store_apply_ms_mean"] == pytest.approx(2.0)
    assert out["store_write_ms_mean"] == pytest.approx(1.0)
    assert out["loop_lag_ms_mean"] == pytest.approx((99 * 1.0 + 200.0) / 100, abs=0.01)
    assert 0 < out["loop_lag_ms_p99"] <= 5.0  # the 99th of 100 lags is one of the 1 ms ones


def test_a_phase_without_batches_reports_none_not_zero() -> None:
    text = Metrics().exposition().decode()
    out = phase_internals(text, text)
    assert out["batches"] == 0
    assert out["batch_size_mean"] is None and out["batch_processing_ms_mean"] is None
    assert out["loop_lag_ms_p99"] is None


def test_cpu_shares_name_who_used_the_cores() -> None:
    """A process spinning through the phase shows about a core, a sleeping one about none; their sum is the
    total and the machine's other work is reported apart, never negative."""
    import os
    import subprocess
    import sys
    import time

    from load_tests.bench_e2e import cpu_shares
    from load_tests.yardsticks.measure import machine_busy_s, process_cpu_s

    busy = "import time\nend = time.time() + 0.8\nwhile time.time() < end: pass"
    spin = subprocess.Popen([sys.executable, "-c", busy])
    sleep = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.8)"])
    try:
        time.sleep(0.1)  # both interpreters are up
        pids = {"spinner": spin.pid, "sleeper": sleep.pid, "gone": None}
        before = {name: process_cpu_s(pid) for name, pid in pids.items() if pid is not None}
        before["machine"] = machine_busy_s()
        started = time.monotonic()
        time.sleep(0.5)
        out = cpu_shares(before, pids, time.monotonic() - started)
    finally:
        spin.wait()
        sleep.wait()
    assert set(out["cores"]) == {"spinner", "sleeper"}  # a process the bench did not start is left out
    assert out["cores"]["spinner"] > 0.5
    assert out["cores"]["sleeper"] < 0.1
    assert out["total"] == pytest.approx(sum(out["cores"].values()), abs=0.011)
    assert out["rest_of_machine"] >= 0.0 and out["cpus"] == os.cpu_count()
    assert cpu_shares(before, pids, 0.0) == {}
