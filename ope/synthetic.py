"""Decision logs generated offline from the simulator's World, with exactly known candidate values (no Kafka).

Contexts. A request comes from a user drawn by activity from ``World.users`` (that fixes segment and
device), at a whole hour 0..23 and a weekday drawn uniformly, for a placement drawn by the simulator's
``REQUEST_MIX`` shares. Its context vector is ``features.context.build_context`` of that request with no
online state, i.e. what the engine computes for a user it has not seen yet: bias, device and segment
one-hots, cyclic hour, weekend flag; the 9 state features are 0. So x takes finitely many values and a
candidate's true value, Σ P(ctx) Σₐ π(a|x) μ(a, ctx) with μ = ``World.expected_reward``, is an exact
finite sum over (segment, device, hour, weekend, placement) cells.

Logging policy. A softmax over a noisy copy of the truth, mixed with ε-uniform exploration:
p(a|x) = (1 − ε)·softmax(q̃/τ) + ε/K, so every eligible action has p ≥ ε/K and logged probabilities are exact.

Rewards. A click (``World.click_probability``) pays ``click_reward``; a conversion after it
(``World.conversion_probability``) pays value / value_scale, the engine's reward scale. Each is its own
reward sample, as the engine logs them, so the log goes through the same join as a real export.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from contracts.decisions import LearningSample
from contracts.events import Event
from features.context import build_context
from ope.estimators import TargetPolicy
from ope.log import DecisionLog
from simulator.traffic import REQUEST_MIX
from simulator.world import Context, World

START_TS = 1_767_571_200.0  # 2026-01-05 00:00:00 UTC, a Monday (as the simulator)
DECISIONS_PER_WEEK = 1000  # event time advances a week per this many decisions
CLICK_DELAY_S = 60.0
CONVERSION_DELAY_S = 600.0
WEEKDAY_OF = {False: 0, True: 5}  # a representative day: Monday, Saturday
# Generators are keyed by (seed, purpose): World(seed=s) draws from default_rng(s), and a log sampled with
# the same integer s must not replay those very draws (users' segments would correlate with sampled cells).
NOISE_STREAM = 1
SAMPLE_STREAM = 2


@dataclass(frozen=True, slots=True)
class Cell:
    """One distinct request context, its probability, and what the world and the logging policy do there."""

    segment: str
    device: str
    hour: int
    weekend: bool
    placement: str
    prob: float
    x: np.ndarray
    eligible: tuple[str, ...]
    truth: np.ndarray  # expected reward of each eligible action
    logging: np.ndarray  # logging policy's probability of each eligible action


class SyntheticLogs:
    def __init__(
        self,
        world: World,
        epsilon: float = 0.1,
        temperature: float = 0.02,
        model_noise: float = 0.02,
        seed: int = 0,
    ) -> None:
        if not 0 < epsilon <= 1 or temperature <= 0 or model_noise < 0:
            raise ValueError("need 0 < epsilon <= 1, temperature > 0 and model_noise >= 0")
        self.world = world
        self.epsilon = epsilon
        self.temperature = temperature
        self.model_noise = model_noise
        self.seed = seed
        rng = np.random.default_rng([seed, NOISE_STREAM])
        # the logging policy's model error: fixed per (action, segment, device)
        self._noise: dict[tuple[str, str, str], float] = {}
        mass: dict[tuple[str, str], float] = {}
        for user, w in zip(world.users, world.user_weights, strict=True):
            mass[(user.segment, user.device)] = mass.get((user.segment, user.device), 0.0) + float(w)
        mix = [(share, pl) for share, _, _, pl in REQUEST_MIX if world.catalogue.eligible(pl)]
        total_share = sum(s for s, _ in mix)
        cells = []
        for (segment, device), p_user in sorted(mass.items()):
            for hour in range(24):
                for weekend in (False, True):
                    x = self._context(segment, device, hour, weekend)
                    p_day = (2 / 7) if weekend else (5 / 7)
                    for share, placement in mix:
                        eligible = tuple(world.catalogue.eligible(placement))
                        ctx = Context(segment, device, float(hour))
                        truth = np.array([world.expected_reward(a, ctx) for a in eligible])
                        noisy = truth + np.array([self._noise_of(rng, a, segment, device) for a in eligible])
                        soft = np.exp((noisy - noisy.max()) / temperature)
                        logging = (1 - epsilon) * soft / soft.sum() + epsilon / len(eligible)
                        cells.append(
                            Cell(
                                segment,
                                device,
                                hour,
                                weekend,
                                placement,
                                p_user * p_day / 24 * share / total_share,
                                x,
                                eligible,
                                truth,
                                logging,
                            )
                        )
        self.cells = cells
        self._probs = np.array([c.prob for c in cells])
        self._probs /= self._probs.sum()

    def _noise_of(self, rng: np.random.Generator, action: str, segment: str, device: str) -> float:
        key = (action, segment, device)
        if key not in self._noise:
            self._noise[key] = float(rng.normal(0.0, self.model_noise))
        return self._noise[key]

    @staticmethod
    def _context(segment: str, device: str, hour: int, weekend: bool) -> np.ndarray:
        ts = START_TS + WEEKDAY_OF[weekend] * 86400 + hour * 3600
        event = Event(
            event_id="synthetic",
            user_id="synthetic",
            ts=ts,
            type="page_view",
            topic="web-events",
            channel="web",
            device=device,
            segment=segment,
        )
        return build_context(event, None)

    # -- the log ------------------------------------------------------------------------------------------
    def sample(self, n: int, seed: int) -> list[LearningSample]:
        """``n`` logged decisions as the engine would write them: exposures and reward samples."""
        rng = np.random.default_rng([seed, SAMPLE_STREAM])
        which = rng.choice(len(self.cells), size=n, p=self._probs)
        scale = self.world.catalogue.value_scale
        out: list[LearningSample] = []
        for i, c in enumerate(which):
            cell = self.cells[c]
            weekday = int(rng.integers(5, 7)) if cell.weekend else int(rng.integers(0, 5))
            ts = START_TS + ((i // DECISIONS_PER_WEEK) * 7 + weekday) * 86400 + cell.hour * 3600
            k = int(rng.choice(len(cell.eligible), p=cell.logging))
            action = cell.eligible[k]
            decision_id = f"syn{seed}-{i}"
            x = cell.x.tolist()
            out.append(
                LearningSample(
                    "exposure",
                    decision_id,
                    action,
                    x,
                    probability=float(cell.logging[k]),
                    placement=cell.placement,
                    ts=ts,
                )
            )
            ctx = Context(cell.segment, cell.device, float(cell.hour))
            if rng.random() < self.world.click_probability(action, ctx):
                out.append(
                    LearningSample(
                        "reward",
                        decision_id,
                        action,
                        x,
                        reward=self.world.click_reward,
                        probability=float(cell.logging[k]),
                        placement=cell.placement,
                        ts=ts + CLICK_DELAY_S,
                    )
                )
                if rng.random() < self.world.conversion_probability(action, ctx):
                    value = self.world.catalogue.actions[action].value / scale
                    out.append(
                        LearningSample(
                            "reward",
                            decision_id,
                            action,
                            x,
                            reward=value,
                            probability=float(cell.logging[k]),
                            placement=cell.placement,
                            ts=ts + CONVERSION_DELAY_S,
                        )
                    )
        return out

    # -- the truth ----------------------------------------------------------------------------------------
    def true_value(self, candidate: TargetPolicy) -> float:
        """Exact expected reward per decision of ``candidate`` under this context distribution."""
        total = 0.0
        for cell, p in zip(self.cells, self._probs, strict=True):
            probs = candidate.target_probs(cell.x, cell.eligible)
            total += p * sum(probs.get(a, 0.0) * mu for a, mu in zip(cell.eligible, cell.truth, strict=True))
        return float(total)

    def truth_matrix(self, log: DecisionLog, actions: Sequence[str]) -> np.ndarray:
        """Expected reward of each of ``actions`` (0 where ineligible) for each decision of a sampled log."""
        cell_of = {(tuple(c.x), c.placement): c for c in self.cells}
        column = {a: j for j, a in enumerate(actions)}
        q = np.zeros((len(log), len(actions)))
        for i, d in enumerate(log):
            cell = cell_of[(tuple(d.x), d.placement)]
            for a, mu in zip(cell.eligible, cell.truth, strict=True):
                q[i, column[a]] = mu
        return q

    def logging_value(self) -> float:
        return float(
            sum(p * float(c.logging @ c.truth) for c, p in zip(self.cells, self._probs, strict=True))
        )
