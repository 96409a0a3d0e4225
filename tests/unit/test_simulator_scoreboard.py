"""The closed loop's scoreboard: the oracle within caps plays the best action the engine could choose."""

from __future__ import annotations

import pytest

from cadence.settings import DEFAULT_CATALOGUE
from policy.catalogue import load_catalogue
from simulator.loop import Scoreboard
from simulator.world import Context, World


@pytest.fixture(scope="module")
def world() -> World:
    return World(load_catalogue(DEFAULT_CATALOGUE), n_users=50, seed=3)


def test_best_among_all_eligible_is_the_oracle(world: World) -> None:
    for placement in world.catalogue.placements:
        for hour in (0.0, 9.5, 18.0):
            ctx = Context("loyal", "mobile", hour)
            best, reward = world.oracle(placement, ctx)
            eligible = list(world.catalogue.eligible(placement))
            assert world.best_reward_among(eligible, ctx) == pytest.approx(reward)
            others = [a for a in eligible if a != best]
            if others:  # the oracle's favourite capped: the best of the rest, never more than the oracle
                capped = world.best_reward_among(others, ctx)
                assert capped == pytest.approx(max(world.expected_reward(a, ctx) for a in others))
                assert capped <= reward
    assert world.best_reward_among([], Context("new", "desktop", 1.0)) == 0.0


def test_curve_reports_both_oracles_on_free_choices_only() -> None:
    board = Scoreboard(curve_every=2)
    board.add("sticky", engine=0.5, random=0.1, oracle=1.0, available=0.5)  # rules settled it: not in the curve
    board.add("exploit", engine=0.4, random=0.1, oracle=1.0, available=0.5)
    board.add("explore", engine=0.2, random=0.1, oracle=0.6, available=0.3)
    (point,) = board.curve
    assert point["engine_vs_oracle"] == pytest.approx(0.6 / 1.6)
    assert point["engine_vs_available_oracle"] == pytest.approx(0.6 / 0.8)
    assert board.all.rates()["available_oracle"] == pytest.approx(1.3 / 3)
    assert board.chosen.rates()["available_oracle"] == pytest.approx(0.4)
