"""features.context: the vector's layout, the history block, and the two claims of its weighting."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from bandits import make_policy
from contracts.events import DEVICES, Event, parse_event
from features.context import (
    CONTEXT_DIM,
    CONTEXT_NAMES,
    HISTORY_NAMES,
    HISTORY_SLICE,
    HISTORY_WEIGHT,
    POLICY_DIM,
    POLICY_NAMES,
    SEGMENTS,
    build_context,
    history_features,
)
from features.state import UserState
from features.updates import update_for
from features.windows import WINDOWS, add_to_cell, parse_cell
from models import ModelSample, ModelSet, model_features

MONDAY_6H = 1_767_592_800.0  # 2026-01-05 06:00:00 UTC
IDX = {n: i for i, n in enumerate(CONTEXT_NAMES)}


def event(ts: float = MONDAY_6H, etype: str = "page_view", **fields: object) -> Event:
    doc = {"event_id": f"e{ts}-{etype}", "user_id": "u1", "ts": ts, "type": etype, "placement": "home_hero",
           "page": "/", **fields}
    parsed = parse_event(orjson.dumps(doc), "web-events")
    assert isinstance(parsed, Event), parsed
    return parsed


def with_history(events: list[Event]) -> UserState:
    """A user hash after ``events``, updated as features/apply_batch.lua does."""
    fields: dict[str, str] = {}
    for ev in events:
        upd = update_for(ev)
        for counter, amount in upd.counters:
            for suffix, size in WINDOWS:
                b, cur, prev = add_to_cell(parse_cell(fields.get(counter + suffix)), ev.ts, size, amount)
                fields[counter + suffix] = f"{b}:{cur}:{prev}"
        for mode, name, value in upd.sets:
            old = fields.get(name)
            if mode == "=" or old is None or (mode == ">" and float(value) > float(old)) or (
                    mode == "<" and float(value) < float(old)):
                fields[name] = value
    return UserState("u1", fields)


def test_layout_is_the_policy_block_then_the_history_block():
    assert CONTEXT_NAMES == POLICY_NAMES + HISTORY_NAMES and len(set(CONTEXT_NAMES)) == CONTEXT_DIM
    assert CONTEXT_NAMES[HISTORY_SLICE] == HISTORY_NAMES and len(POLICY_NAMES) == POLICY_DIM
    assert build_context(event(), None).shape == (CONTEXT_DIM,)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("segment", SEGMENTS)
def test_one_hots_come_from_the_event_else_from_the_profile(device: str, segment: str):
    x = build_context(event(device=device, segment=segment), None)
    assert x[IDX[f"device_{device}"]] == x[IDX[f"segment_{segment}"]] == x[IDX["bias"]] == 1.0
    assert x[1:1 + len(DEVICES) + len(SEGMENTS)].sum() == 2.0
    stored = UserState("u1", {"dev": device, "seg": segment})
    assert np.array_equal(build_context(event(), stored)[:POLICY_DIM], x[:POLICY_DIM])


def test_unknown_device_and_segment_leave_their_one_hots_empty():
    stored = UserState("u1", {"dev": "fridge", "seg": "whale"})
    x = build_context(event(), stored)
    assert x[1:1 + len(DEVICES) + len(SEGMENTS)].sum() == 0.0


@pytest.mark.parametrize(
    ("ts", "sin", "cos", "weekend"),
    [
        (MONDAY_6H, 1.0, 0.0, 0.0),
        (MONDAY_6H + 6 * 3600, 0.0, -1.0, 0.0),  # Monday noon
        (MONDAY_6H - 2 * 86400 + 12 * 3600, -1.0, 0.0, 1.0),  # Saturday 18:00
        (MONDAY_6H - 6 * 3600 - 1, math.sin(-2 * math.pi / 86400), math.cos(2 * math.pi / 86400), 1.0),  # Sun 23:59:59
    ],
)
def test_hour_is_a_point_on_the_circle_and_weekend_follows_utc_days(ts, sin, cos, weekend):
    x = build_context(event(ts), None)
    assert x[IDX["hour_sin"]] == pytest.approx(sin, abs=1e-9)
    assert x[IDX["hour_cos"]] == pytest.approx(cos, abs=1e-9)
    assert x[IDX["weekend"]] == weekend


def test_history_block_is_history_features_times_the_weight():
    t = MONDAY_6H
    views = [event(t - 7200 + 60 * i) for i in range(20)]  # 20 page views, the last 61 minutes ago
    clicks = [event(t - 3000, "click", offer_id="offer_10pct"), event(t - 2000, "click", offer_id="offer_10pct")]
    state = with_history([*views, *clicks])
    hist = history_features(event(t), state)
    assert list(hist) == list(HISTORY_NAMES)
    assert hist["log_views_24h"] == pytest.approx(math.log1p(20) / 2, rel=1e-3)
    assert hist["log_clicks_7d"] == pytest.approx(math.log1p(2), rel=1e-3)
    assert hist["recency_web"] == pytest.approx(math.exp(-(7200 - 60 * 19) / 3600))
    assert hist["tenure"] == pytest.approx(7200 / (30 * 86400))
    x = build_context(event(t), state)
    assert np.allclose(x[HISTORY_SLICE], HISTORY_WEIGHT * np.array(list(hist.values())))
    assert x[IDX["log_conversions_7d"]] == 0.0 < x[IDX["log_clicks_7d"]]


def test_an_unknown_user_has_an_empty_history():
    assert history_features(event(), None) == dict.fromkeys(HISTORY_NAMES, 0.0)
    assert history_features(event(), UserState("u1", {})) == dict.fromkeys(HISTORY_NAMES, 0.0)
    assert not build_context(event(), UserState("u1", {}))[HISTORY_SLICE].any()


def _contexts(rng: np.random.Generator, n: int, weight: float) -> np.ndarray:
    """Random policy blocks plus a history block that grows with time (a drift the reward ignores)."""
    x = np.zeros((n, CONTEXT_DIM))
    x[:, 0] = 1.0
    x[np.arange(n), 1 + rng.integers(len(DEVICES), size=n)] = 1.0
    x[np.arange(n), 1 + len(DEVICES) + rng.integers(len(SEGMENTS), size=n)] = 1.0
    hist = np.log1p(rng.poisson(np.linspace(0.5, 20, n)[:, None], size=(n, len(HISTORY_NAMES))))
    x[:, HISTORY_SLICE] = weight * hist
    return x


def test_the_weighted_history_block_barely_moves_the_bandit():
    """LinUCB with the weighted block scores like LinUCB without it; unweighted, the block moves it."""
    rng = np.random.default_rng(5)
    n = 4000
    truth = rng.normal(0.03, 0.02, size=POLICY_DIM)
    scores = {}
    for weight in (HISTORY_WEIGHT, 0.0, 1.0):
        x = _contexts(np.random.default_rng(6), n, weight)
        reward = x[:, :POLICY_DIM] @ truth + np.random.default_rng(7).normal(0, 0.2, n)
        policy = make_policy("linucb", CONTEXT_DIM, alpha=0.05, epsilon=0.0, seed=1)
        policy.expose_many(x, ["a"] * n)
        policy.reward_many(x, ["a"] * n, reward.tolist())
        probe = _contexts(np.random.default_rng(8), 200, weight)
        probe[:, HISTORY_SLICE] *= 3  # customers with more history than any seen in training
        scores[weight] = np.array([policy.select(p, ["a"]).scores["a"] for p in probe])
    assert np.abs(scores[HISTORY_WEIGHT] - scores[0.0]).max() < 0.002
    assert np.abs(scores[1.0] - scores[0.0]).max() > 0.01  # the test can tell


def test_the_models_learn_the_same_with_or_without_the_weight():
    """River standardises its inputs: the history block's weight changes no prediction."""
    rng = np.random.default_rng(3)
    raw = _contexts(rng, 400, 1.0)
    churned = (raw[:, IDX["log_views_24h"]] < 1.5).astype(int)
    predictions = []
    for weight in (HISTORY_WEIGHT, 1.0):
        x = raw.copy()
        x[:, HISTORY_SLICE] *= weight
        models = ModelSet()
        models.learn_many(ModelSample.churn(model_features(row), int(c), float(i))
                          for i, (row, c) in enumerate(zip(x, churned, strict=True)))
        predictions.append([models.score(model_features(row))["churn_risk"] for row in x[::8]])
    assert predictions[0] == pytest.approx(predictions[1], abs=1e-6)
    assert max(predictions[0]) - min(predictions[0]) > 0.1  # it did learn something from the history


def test_remembered_cells_read_as_parsed_ones(monkeypatch):
    """_history_values reads a cell's text once (features.context._CELLS); the values are those of parsing every
    cell, also across users sharing a text, when the remembered cells are emptied, and for a malformed cell."""
    import features.context as fc
    from features.windows import estimate

    monkeypatch.setattr(fc, "_CELLS_MAX", 3)
    monkeypatch.setattr(fc, "_CELLS", {})

    def parsed_every_time(t: float, state: UserState) -> list[float]:  # views 1h, views 24h / 2, clicks 7d
        pvh, pvd, ckw = (math.log1p(estimate(parse_cell(state.fields[n]), t, size)) for n, size in fc._COUNTED[:3])
        return [pvh, pvd / 2, ckw]

    t = MONDAY_6H
    for i in range(12):  # more distinct texts than the bound
        fields = {"pvh": f"{int(t // 3600) - i % 2}:{i % 5}:{i % 3}", "pvd": f"{int(t // 86400)}:{i}.5:0",
                  "ckw": "1:2:3"}
        state = UserState(f"u{i}", fields)
        assert fc._history_values(t, state)[:3] == parsed_every_time(t, state)[:3]
        assert len(fc._CELLS) <= 3
    with pytest.raises(ValueError):
        fc._history_values(t, UserState("u", {"pvh": "1:2"}))
