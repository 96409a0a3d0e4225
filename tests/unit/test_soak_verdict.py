"""The soak's verdict: warm-up then a plateau is flat; steady growth is not, whatever the window."""

import os

from load_tests.soak import CpuShare, Sample, cpu_seconds, verdict


def _run(rss_at: list[float], step_s: float = 15.0) -> list[Sample]:
    return [Sample(i * step_s, rss, 0.0, 0.0, 0.0, 0, 0, 0, 0, 0) for i, rss in enumerate(rss_at)]


def test_a_long_warm_up_then_a_plateau_is_flat_on_the_last_half_but_not_on_two_thirds() -> None:
    # the 2026-12-03 soak's shape: 240 -> 390 MB over the first ~6 minutes, then level (49 samples, 12 min)
    rss = [240.0 + 150.0 * min(1.0, i / 24) for i in range(49)]
    v = verdict(_run(rss), flat_mb_per_min=1.0)
    assert v["flat"] is True
    assert abs(v["worker_rss_slope_mb_per_min"]) < 0.01
    assert v["worker_rss_slope_last_two_thirds_mb_per_min"] > 1.0  # the old window still saw the warm-up
    assert v["worker_rss_first_mb"] == v["worker_rss_last_mb"] == 390.0


def test_steady_growth_is_growing_on_any_window() -> None:
    rss = [300.0 + 0.5 * i for i in range(49)]  # 2 MB/min at one sample per 15 s
    for share in (1.0, 0.5, 0.2):
        v = verdict(_run(rss), flat_mb_per_min=1.0, judge_share=share)
        assert v["flat"] is False
        assert abs(v["worker_rss_slope_mb_per_min"] - 2.0) < 1e-9


def test_too_few_samples_is_not_called_flat() -> None:
    assert verdict(_run([300.0]), flat_mb_per_min=1.0)["flat"] is False


def test_cpu_seconds_count_this_process_and_the_share_starts_at_zero():
    share = CpuShare({"me": [os.getpid()]})
    assert share() == {"me": 0.0}  # the first call only sets the baseline
    before = cpu_seconds(os.getpid())
    total = 0
    while cpu_seconds(os.getpid()) - before < 0.05:  # burn a little CPU (no timing assertion)
        total += sum(range(10_000))
    assert cpu_seconds(os.getpid()) > before > 0.0
    assert share()["me"] > 0.0
    assert cpu_seconds(2**22 + 12345) == 0.0  # a process that does not exist
