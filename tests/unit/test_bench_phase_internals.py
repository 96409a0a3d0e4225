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
    """A process spinning through the window shows a large share of a core, a sleeping one about none; one that
    exits in the window reads None (not a negative share); the machine's busy time covers theirs."""
    import subprocess
    import sys
    import time

    from load_tests.bench_e2e import cpu_before, cpu_shares

    def child(code: str, first: str = "") -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", f"import time\n{first}\nprint('ready', flush=True)\n{code}"],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        return proc

    spin = child("while True: pass")
    sleep = child("time.sleep(60)")
    # some CPU before the window (at least one clock tick), then it exits within the window
    brief = child("time.sleep(0.1)", first="end = time.process_time() + 0.05\nwhile time.process_time() < end: pass")
    try:
        pids = {"spinner": spin.pid, "sleeper": sleep.pid, "brief": brief.pid, "not started": None}
        before = cpu_before(pids)
        time.sleep(0.3)
        brief.kill()
        brief.wait()
        time.sleep(0.4)
        out = cpu_shares(before, pids)
    finally:
        for proc in (spin, sleep, brief):
            proc.kill()
            proc.wait()
    assert set(out["cores"]) == {"spinner", "sleeper", "brief"}  # a process the bench did not start is left out
    assert out["cores"]["brief"] is None
    assert out["cores"]["spinner"] > 0.3 and out["cores"]["spinner"] > out["cores"]["sleeper"] + 0.25
    assert out["cores"]["sleeper"] < 0.05
    assert out["total"] == pytest.approx(out["cores"]["spinner"] + out["cores"]["sleeper"], abs=0.011)
    assert out["rest_of_machine"] > -0.1  # the machine's busy time includes the spinner's
    assert out["stolen"] >= 0.0 and out["cpus"] >= 1
