"""The model trainer's rests: over a run of steps it holds the loop at most its CPU share of the time."""

from __future__ import annotations

import pytest

from streams.pacing import rest_after


@pytest.mark.parametrize("share", [0.1, 0.25, 0.5, 1.0])
def test_the_trainer_holds_the_loop_its_share_of_the_time(share: float) -> None:
    steps = [0.002, 0.0005, 0.004, 0.0, 0.0021]  # busy seconds of successive training steps
    busy = sum(steps)
    rest = sum(rest_after(t, share) for t in steps)
    assert busy / (busy + rest) == pytest.approx(share)


def test_a_full_share_never_rests_and_a_bad_share_is_refused() -> None:
    assert rest_after(0.003, 1.0) == 0.0
    assert rest_after(-0.001, 0.25) == 0.0  # a clock step backwards is no work
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="share must be in"):
            rest_after(0.001, bad)
