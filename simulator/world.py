"""A synthetic population with hidden, context-dependent preferences, and the oracle that knows them.

Each user has a segment and a usual device. Showing action a in context c makes the user click with
probability σ(base_a + seg_a[segment] + dev_a[device] + amp_a·cos(2π(hour − peak_a)/24)), and a click
converts with probability conv_a (higher for loyal and vip users), paying the action's value.
Everything is drawn from one seeded generator, so a seed fixes the world.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from contracts.events import DEVICES
from features.context import SEGMENTS
from policy.catalogue import NO_ACTION, Catalogue

SEGMENT_SHARES = (0.35, 0.35, 0.2, 0.1)
DEVICE_SHARES = (0.55, 0.35, 0.1)
CONVERSION_LIFT = {"new": 0.8, "casual": 1.0, "loyal": 1.3, "vip": 1.6}


@dataclass(frozen=True, slots=True)
class User:
    user_id: str
    segment: str
    device: str
    consent: bool
    activity: float  # relative share of traffic


@dataclass(frozen=True, slots=True)
class Context:
    segment: str
    device: str
    hour: float


class World:
    def __init__(self, catalogue: Catalogue, n_users: int = 3000, seed: int = 1, click_reward: float = 0.1) -> None:
        self.catalogue = catalogue
        self.click_reward = click_reward
        rng = np.random.default_rng(seed)
        seg_idx = rng.choice(len(SEGMENTS), size=n_users, p=SEGMENT_SHARES)
        dev_idx = rng.choice(len(DEVICES), size=n_users, p=DEVICE_SHARES)
        consent = rng.random(n_users) > 0.05
        activity = rng.lognormal(0.0, 0.7, size=n_users)
        self.users = [
            User(f"u{i:06d}", SEGMENTS[s], DEVICES[d], bool(c), float(a))
            for i, (s, d, c, a) in enumerate(zip(seg_idx, dev_idx, consent, activity, strict=True))
        ]
        self.user_weights = activity / activity.sum()
        self.actions = sorted(catalogue.actions)
        k = len(self.actions)
        self._base = rng.normal(-2.6, 0.35, size=k)
        self._seg = rng.normal(0.0, 0.8, size=(k, len(SEGMENTS)))
        self._dev = rng.normal(0.0, 0.5, size=(k, len(DEVICES)))
        self._amp = rng.uniform(0.0, 0.6, size=k)
        self._peak = rng.uniform(0.0, 24.0, size=k)
        self._conv = rng.uniform(0.15, 0.45, size=k)
        self._pos = {a: i for i, a in enumerate(self.actions)}

    # -- the hidden truth -------------------------------------------------------------------------
    def click_probability(self, action: str, ctx: Context) -> float:
        if action == NO_ACTION or action not in self._pos:
            return 0.0
        i = self._pos[action]
        logit = (
            self._base[i]
            + self._seg[i, SEGMENTS.index(ctx.segment)]
            + self._dev[i, DEVICES.index(ctx.device)]
            + self._amp[i] * math.cos(2 * math.pi * (ctx.hour - self._peak[i]) / 24)
        )
        return 1.0 / (1.0 + math.exp(-logit))

    def conversion_probability(self, action: str, ctx: Context) -> float:
        if action == NO_ACTION or action not in self._pos:
            return 0.0
        return min(1.0, self._conv[self._pos[action]] * CONVERSION_LIFT[ctx.segment])

    def expected_reward(self, action: str, ctx: Context) -> float:
        """Expected reward on the engine's scale: click_reward per click + value/value_scale per conversion."""
        p_click = self.click_probability(action, ctx)
        if p_click == 0.0:
            return 0.0
        value = self.catalogue.actions[action].value / self.catalogue.value_scale
        return p_click * (self.click_reward + self.conversion_probability(action, ctx) * value)

    def oracle(self, placement: str, ctx: Context) -> tuple[str, float]:
        """Best eligible action and its expected reward."""
        best = max(self.catalogue.eligible(placement), key=lambda a: self.expected_reward(a, ctx))
        return best, self.expected_reward(best, ctx)

    def best_reward_among(self, actions: list[str], ctx: Context) -> float:
        """Expected reward of the best of ``actions`` (0 for an empty list)."""
        return max((self.expected_reward(a, ctx) for a in actions), default=0.0)

    def random_reward(self, placement: str, ctx: Context) -> float:
        eligible = self.catalogue.eligible(placement)
        return sum(self.expected_reward(a, ctx) for a in eligible) / len(eligible) if eligible else 0.0
