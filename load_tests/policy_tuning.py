"""Offline replica of the closed loop (no Kafka, no Redis) to compare policy settings and context vectors.

What it keeps from the live loop, using the project's own code wherever it is pure:
  * the simulator's hidden world, request mix and response delays (simulator.world, simulator.traffic:
    clicks ~60 s, conversions ~10 min after the click), the simulated clock of 5 requests per second;
  * the feature hash of every user, updated exactly as the Lua script does (features.updates.update_for,
    features.windows.add_to_cell) and read through the real ``UserState``, so ``build_context`` sees the same
    history features (page views 1 h/24 h, clicks, conversions, revenue, recency, tenure …) as live;
  * the real decision path ``engine.decide.decide`` (holdout, caps, eligibility, bandit, arbitration,
    stickiness), the real pending-decision record (one per user and placement: a newer decision replaces
    it) and the real reward join (``engine.attribution``), so a reward whose decision was superseded is lost;
  * exposures learned when the decision is made, rewards when they arrive, both after a learning lag
    (``--learn-lag`` requests: the learning topic and the batch a worker applies at a time).

What it leaves out: bad/duplicate input, wall-clock effects, several workers.

Variants (``--variants``, comma separated; see VARIANTS) change α or the context vector. Score: expected
reward of the engine's explore/exploit decisions over the oracle's, per 5,000 decisions, like
simulator.loop.Scoreboard; "40-50k" is the mean of the windows that end at 40k, 45k and 50k decisions.

The variant ``ceiling`` is not a policy: it scores actions with the world's true expected reward (hidden
information no engine has) through the same pipeline, to show the best the scoreboard allows. It falls
as the day goes on (world 1: 0.998 in the first window, 0.974 at 40-50k, 0.967 at 50k): the display
slot's contact cap (6 impressions of a creative per user and day) removes the best creative for busy
users, and the oracle ignores caps.

    .venv/bin/python -m load_tests.policy_tuning --decisions 60000 --seeds 1,2,3 --variants current,legacy_a0.1
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bandits import make_policy
from bandits.base import Choice
from bandits.explore import greedy_pick
from cadence.settings import DEFAULT_CATALOGUE, Settings
from contracts.events import DEVICES, Event, parse_event
from engine.attribution import Credit, Windows, credit, match_pending
from engine.decide import POLICY_STATE_FIELD, decide, policy_state_of
from engine.pending import pending_decisions, slot_with
from features import context as context_module
from features.state import UserState
from features.updates import update_for
from features.windows import WINDOWS, add_to_cell, parse_cell
from policy.budgets import WorkerBudgets
from policy.catalogue import load_catalogue
from policy.holdout import HoldoutConfig
from policy.pipeline import PolicyContext
from simulator import traffic
from simulator.loop import START_TS
from simulator.world import Context, World

CHOSEN = ("explore", "exploit")
CURVE_EVERY = 5000


@dataclass(frozen=True)
class Variant:
    name: str
    alpha: float = field(default_factory=lambda: Settings().policy_alpha)
    epsilon: float = 0.02
    policy: str = "linucb"
    context: Callable[[Event, UserState | None], np.ndarray] | None = None  # None: features.context


def _legacy(event: Event, state: UserState | None) -> np.ndarray:
    """The 20-feature vector used before the tuning: history block unweighted (the baseline)."""
    x = np.zeros(20)
    x[:11] = _history_free(event, state)
    if state is not None and state.exists:
        t = event.ts
        x[11] = math.log1p(state.count("pv", "h", t))
        x[12] = math.log1p(state.count("pv", "d", t)) / 2
        x[13] = math.log1p(state.count("ck", "w", t))
        x[14] = math.log1p(state.count("cv", "w", t))
        x[15] = math.log1p(state.count("rv", "w", t)) / 4
        age = state.age("pv", t)
        x[16] = math.exp(-age / 3600.0) if age is not None else 0.0
        x[17] = math.log1p(state.count("eo", "w", t))
        x[18] = math.log1p(state.count("ac", "w", t))
        first = state.first_seen
        x[19] = min(1.0, (t - first) / (30 * 86400)) if first is not None else 0.0
    return x


def _history_free(event: Event, state: UserState | None) -> np.ndarray:
    """The policy block: bias, device and segment one-hots, hour sin/cos, weekend (no history at all)."""
    return context_module.build_context(event, state)[:context_module.POLICY_DIM]


def _with_interactions(base: Callable) -> Callable:
    def build(event: Event, state: UserState | None) -> np.ndarray:
        x = base(event, state)
        return np.concatenate([x, np.outer(x[4:8], x[1:4]).ravel()])  # segment x device
    return build


def _current(event: Event, state: UserState | None) -> np.ndarray:
    return context_module.build_context(event, state)


def _scaled_history(weight: float) -> Callable:
    """The legacy 20 features with the history block (entries 11..19) multiplied by ``weight``."""
    def build(event: Event, state: UserState | None) -> np.ndarray:
        x = _legacy(event, state)
        x[11:] *= weight
        return x
    return build


LEGACY_INTER = _with_interactions(_legacy)
NOHIST_INTER = _with_interactions(_history_free)
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("current"),  # features.context as it is now, settings' default alpha
    Variant("current_a0.05", alpha=0.05),
    Variant("current_a0.2", alpha=0.2),
    Variant("nohist_a0.05", alpha=0.05, context=_history_free),
    Variant("ceiling", policy="ceiling"),  # not a policy: the world's truth (see the module docstring)
    Variant("legacy_a0.5", alpha=0.5, context=_legacy),
    Variant("legacy_a0.2", alpha=0.2, context=_legacy),
    Variant("legacy_a0.1", alpha=0.1, context=_legacy),
    Variant("nohist_a0.1", alpha=0.1, context=_history_free),
    Variant("legacy_inter_a0.1", alpha=0.1, context=LEGACY_INTER),
    Variant("nohist_inter_a0.1", alpha=0.1, context=NOHIST_INTER),
    Variant("nohist_inter_a0.05", alpha=0.05, context=NOHIST_INTER),
    Variant("nohist_inter_a0.2", alpha=0.2, context=NOHIST_INTER),
    Variant("hist0.1_inter_a0.1", alpha=0.1, context=_with_interactions(_scaled_history(0.1))),
    Variant("hist0.03_inter_a0.1", alpha=0.1, context=_with_interactions(_scaled_history(0.03))),
)}


class _CeilingScores:
    """Not a policy: scores every action with the world's true expected reward in the request's hidden
    context (information no engine has), ε-greedy like LinUCB, so the pipeline's ceiling can be measured."""

    name, version, dim = "ceiling", 0, 0

    def __init__(self, world: World, context_of: Callable[[], Context | None], epsilon: float, seed: int) -> None:
        self.world = world
        self.context_of = context_of
        self.epsilon = epsilon
        self._rng = np.random.default_rng(seed)

    def select(self, x: np.ndarray, eligible: list[str]) -> Choice:
        actions = list(eligible)
        ctx = self.context_of()
        scores = [self.world.expected_reward(a, ctx) if ctx is not None else 0.0 for a in actions]
        pick, best, probs = greedy_pick(scores, self.epsilon, float(self._rng.random()))
        return Choice(actions[pick], probs[pick], actions[best], tuple(actions), scores, probs)

    def expose_many(self, xs: np.ndarray, actions: list[str]) -> None:
        """Learns nothing: it knows the truth."""

    def reward_many(self, xs: np.ndarray, actions: list[str], rewards: list[float]) -> None:
        """Learns nothing: it knows the truth."""


@dataclass
class _Score:
    n: int = 0
    engine: float = 0.0
    oracle: float = 0.0
    curve: list[tuple[int, float]] = field(default_factory=list)
    _we: float = 0.0
    _wo: float = 0.0
    _wn: int = 0

    def add(self, engine: float, oracle: float) -> None:
        self.n += 1
        self.engine += engine
        self.oracle += oracle
        self._we += engine
        self._wo += oracle
        self._wn += 1
        if self._wn >= CURVE_EVERY:
            self.curve.append((self.n, self._we / self._wo))
            self._we = self._wo = 0.0
            self._wn = 0


def _apply_update(fields: dict[str, str], event: Event) -> None:
    """What features/apply_batch.lua does to the user's hash for one event."""
    upd = update_for(event, store_profile=event.consent is not False)
    for counter, amount in upd.counters:
        for suffix, size in WINDOWS:
            key = counter + suffix
            b, cur, prev = add_to_cell(parse_cell(fields.get(key)), event.ts, size, amount)
            fields[key] = f"{b}:{cur}:{prev}"
    for mode, name, value in upd.sets:
        old = fields.get(name)
        if mode == "=" or old is None or (mode == ">" and float(value) > float(old)) or \
                (mode == "<" and float(value) < float(old)):
            fields[name] = value


class Replica:
    def __init__(self, variant: Variant, seed: int, n_users: int = 3000, learn_lag: int = 2000,
                 requests_per_sim_s: float = 5.0) -> None:
        self.variant = variant
        self.seed = seed
        self.learn_lag = learn_lag
        self.requests_per_sim_s = requests_per_sim_s
        settings = Settings()
        catalogue = load_catalogue(DEFAULT_CATALOGUE)
        self.world = World(catalogue, n_users=n_users, seed=seed, click_reward=settings.click_reward)
        self.ctx = PolicyContext(catalogue, holdout=HoldoutConfig(settings.holdout_share, settings.holdout_salt),
                                 budgets=WorkerBudgets(share=1.0))
        self.windows = Windows(settings.click_window_s, settings.conversion_window_s)
        self.click_reward = settings.click_reward
        self.build = variant.context or _current
        probe = self.build(self._probe_event(), None)
        self.now: Context | None = None  # the hidden context of the request being decided
        if variant.policy == "ceiling":
            self.policy = _CeilingScores(self.world, lambda: self.now, variant.epsilon, settings.seed)
        else:
            self.policy = make_policy(variant.policy, len(probe), seed=settings.seed, alpha=variant.alpha,
                                      epsilon=variant.epsilon)
        self.rng = np.random.default_rng(seed)
        self.users = {u.user_id: u for u in self.world.users}
        self.fields: dict[str, dict[str, str]] = {}
        self.due: list[tuple[float, int, traffic.Outgoing, str]] = []
        self.learning: list[tuple[int, str, np.ndarray, str, float]] = []  # (apply at request #, kind, x, a, r)
        self.score = _Score()
        self.seq = 0
        self.rewards: dict[str, int] = {}

    @staticmethod
    def _probe_event() -> Event:
        doc = {"event_id": "p", "user_id": "u", "ts": START_TS, "type": "page_view", "placement": "home_hero",
               "device": DEVICES[0], "segment": "new", "consent": True, "page": "/"}
        return parse_event(json.dumps(doc).encode(), "web-events", 65536)

    def _next_id(self) -> str:
        self.seq += 1
        return f"s{self.seed}-{self.seq}"

    def _state(self, user_id: str) -> UserState:
        return UserState(user_id, self.fields.setdefault(user_id, {}))

    # -- learning --------------------------------------------------------------------------------
    def _learn_due(self, request_no: int) -> None:
        if not self.learning or self.learning[0][0] > request_no:
            return
        ready = [s for s in self.learning if s[0] <= request_no]
        self.learning = [s for s in self.learning if s[0] > request_no]
        exp = [s for s in ready if s[1] == "exposure"]
        rew = [s for s in ready if s[1] == "reward"]
        if exp:
            self.policy.expose_many(np.array([s[2] for s in exp]), [s[3] for s in exp])
        if rew:
            self.policy.reward_many(np.array([s[2] for s in rew]), [s[3] for s in rew], [s[4] for s in rew])

    # -- rewards ---------------------------------------------------------------------------------
    def _on_reward(self, out: traffic.Outgoing, request_no: int) -> None:
        event = parse_event(out.value, out.topic, 65536)
        assert isinstance(event, Event)
        fields = self.fields.setdefault(event.user_id, {})
        _apply_update(fields, event)
        state = UserState(event.user_id, fields)
        target = match_pending(event, pending_decisions(state), self.windows)
        outcome = credit(event, target, self.windows)
        self.rewards[outcome.value] = self.rewards.get(outcome.value, 0) + 1
        if outcome is not Credit.CREDITED or target is None:
            return
        fields[target.field] = slot_with(state, target)
        reward_type = event.kind.reward
        reward = self.click_reward if reward_type == "click" else event.revenue / self.ctx.catalogue.value_scale
        if reward_type == "click":
            fields[POLICY_STATE_FIELD] = policy_state_of(state).after_click(event.channel).encode().decode()
        if reward > 0:
            self.learning.append((request_no + self.learn_lag, "reward", target.x, target.action, reward))

    # -- requests --------------------------------------------------------------------------------
    def _request(self, request_no: int) -> None:
        world, rng = self.world, self.rng
        ts = START_TS + request_no / self.requests_per_sim_s
        user = world.users[int(rng.choice(len(world.users), p=world.user_weights))]
        shares = np.cumsum([mix[0] for mix in traffic.REQUEST_MIX])  # same draw as simulator.loop
        pick = int(np.searchsorted(shares, rng.random()))
        _, topic, etype, placement = traffic.REQUEST_MIX[min(pick, len(shares) - 1)]
        out = traffic.request_event(self._next_id(), user, ts, topic, etype, placement)
        event = parse_event(out.value, out.topic, 65536)
        assert isinstance(event, Event)
        fields = self.fields.setdefault(user.user_id, {})
        _apply_update(fields, event)
        state = UserState(user.user_id, fields)
        x = self.build(event, state)
        policy = self.policy
        wctx = self.now = Context(user.segment, user.device, (ts % 86400) / 3600)

        class _Bound:  # decide() calls policy.select(x_live, eligible): swap in this variant's vector
            name, version = policy.name, policy.version

            @staticmethod
            def select(_x: np.ndarray, eligible: list[str]):
                return policy.select(x, eligible)

        decided = decide(event, state, self.ctx, _Bound)  # type: ignore[arg-type]
        if decided.policy_state is not None:
            fields[POLICY_STATE_FIELD] = decided.policy_state
        d, p = decided.decision, decided.pending
        if p is not None:
            p.x = x
            fields[p.field] = slot_with(state, p)
            self.learning.append((request_no + self.learn_lag, "exposure", x, p.action, 0.0))
        if user.consent and d.mode.value in CHOSEN:
            self.score.add(world.expected_reward(d.action, wctx), world.oracle(placement, wctx)[1])
        channel = event.channel
        p_click = world.click_probability(d.action, wctx)
        if p_click and rng.random() < p_click:
            click_ts = ts + float(rng.exponential(traffic.MEAN_CLICK_DELAY_S))
            self._schedule(traffic.click_event(self._next_id(), user.user_id, click_ts, channel, d.decision_id,
                                               d.action, placement))
            if rng.random() < world.conversion_probability(d.action, wctx):
                conv_ts = click_ts + float(rng.exponential(traffic.MEAN_CONVERSION_DELAY_S))
                self._schedule(traffic.conversion_event(self._next_id(), user.user_id, conv_ts, d.decision_id,
                                                        d.action, world.catalogue.actions[d.action].value))

    def _schedule(self, out: traffic.Outgoing) -> None:
        heapq.heappush(self.due, (out.ts, self.seq, out, ""))

    def run(self, decisions: int) -> _Score:
        request_no = 0
        while self.score.n < decisions:
            request_no += 1
            now = START_TS + request_no / self.requests_per_sim_s
            while self.due and self.due[0][0] <= now:
                self._on_reward(heapq.heappop(self.due)[2], request_no)
            self._learn_due(request_no)
            self._request(request_no)
        return self.score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decisions", type=int, default=60000, help="explore/exploit decisions per run")
    ap.add_argument("--seeds", default="1,2,3", help="world + traffic seeds, comma separated")
    ap.add_argument("--variants", default="base", help=f"comma separated, of: {', '.join(VARIANTS)}")
    ap.add_argument("--learn-lag", type=int, default=2000, help="requests between a sample and its learning")
    ap.add_argument("--json", action="store_true", help="one JSON line per run")
    args = ap.parse_args()
    for name in args.variants.split(","):
        variant = VARIANTS[name]
        lasts = []
        for seed in [int(s) for s in args.seeds.split(",")]:
            started = time.process_time()
            rep = Replica(variant, seed, learn_lag=args.learn_lag)
            score = rep.run(args.decisions)
            curve = [round(float(v), 3) for _, v in score.curve]
            around50 = [v for n, v in score.curve if 40000 <= n <= 50000]
            last = sum(around50) / len(around50) if around50 else math.nan
            lasts.append(last)
            row = {"variant": name, "seed": seed, "dim": rep.policy.dim, "curve": curve, "at_40_50k": round(last, 3),
                   "rewards": rep.rewards, "cpu_s": round(time.process_time() - started, 1)}
            print(json.dumps(row) if args.json else
                  f"{name:28s} seed={seed} dim={rep.policy.dim} 40-50k={last:.3f} curve={curve} {rep.rewards}",
                  flush=True)
        print(f"{name:28s} mean 40-50k over seeds: {np.mean(lasts):.3f} ± {np.std(lasts):.3f}", flush=True)


if __name__ == "__main__":
    main()
