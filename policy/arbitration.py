"""Arbitration: rank the eligible actions by expected value, keeping the bandit's exploration.

For each eligible action a::

    propensity(a) = max(bandit score(a), 0)             # a negative estimate means no value expected
    gross(a)      = propensity(a) × value_scale          reward_unit "value" (engine default: the bandit
                                                         learns reward = revenue / value_scale, so its
                                                         score already carries the action's value)
                  = propensity(a) × value(a)             reward_unit "response" (the bandit learns 0/1
                                                         responses: its score is a response probability)
    ev(a)         = gross(a) × lever boost(a) − cost(a)

The bandit draws in two branches: with probability ε (``Choice.uniform``) a uniform pick over the eligible
actions, otherwise its greedy branch (LinUCB, ε-greedy: the best score; LinTS: a Thompson draw). A uniform
pick is shown as drawn, never overridden. In the greedy branch a pick at the bandit's top score is replaced
by the action with the highest ev (on a tie the pick itself if it is among the tied, which keeps the
bandit's own random tie-breaking; else the higher bandit score, then eligible order); a pick below the top
score (a LinTS draw that is not the posterior-mean best) is shown as drawn. With no costs and no boosts,
value mode gives exactly the bandit's choice.

Logged probability. The greedy-branch mass of an action is its bandit probability minus the uniform share
``Choice.floor`` = ε/K. Then

    P(shown = a) = ε/K + mass(a)·[a keeps it] + [a is the ev winner]·(mass arbitration moved)

where an action keeps its mass unless its score is the top one and its ev is not (that mass moves to the
ev winner). This is exact for every pick the bandit can make, score ties included; the probabilities sum to
1, and every eligible action keeps at least ε/K, so off-policy estimates stay possible for all of them
(``shown_probabilities`` gives them all). For LinUCB without a tie on the top score and an override it is
ε/K + (1−ε)·[a = ev winner]. For LinTS it is exact given the draws, as its own probabilities are. A policy
that does not report ``floor`` (0) is read as having no uniform branch.

Where a decision lasts (placements with stickiness) the pipeline does not use the bandit's draw but
``settled`` on ``rank``'s ranking (``arbitrate`` is ``rank`` plus the candidate for the draw): the best action
on ev (UCB-optimistic) or on ``mean_ev`` (the same formula on the bandit's mean estimate ``Choice.means``, no
exploration bonus), ties to the higher score, then by a stable hash of the user and the action, then eligible
order. It is deterministic given the statistics, so it is logged with probability 1. ``lower_ev(k)`` is the ev
at the mean minus k bonus widths (a lower bound of the kind UCB's upper one is), for rules that must be sure an
action is better before acting on it.

When arbitration overrides the bandit's greedy action (a cost or boost made another action better), that
action is shown only through the uniform draw (probability ε/K, ≥ ε_min/K for LinUCB): the business rule
wins on the greedy branch, and off-policy evaluation keeps evidence on every eligible action.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from math import floor
from operator import attrgetter

from bandits.base import Choice
from policy.catalogue import Catalogue

REWARD_UNITS = ("value", "response")


@dataclass(frozen=True, slots=True)
class ArbitrationConfig:
    reward_unit: str = "value"
    top_k: int = 3  # how many ranked actions the trace shows

    def __post_init__(self) -> None:
        if self.reward_unit not in REWARD_UNITS:
            raise ValueError(f"reward_unit must be one of {REWARD_UNITS}, got {self.reward_unit!r}")
        if self.top_k < 1:
            raise ValueError("top_k must be >= 1")


def round4(x: float) -> float:
    """``round(x, 4)``, the very same value for every x, in about half the time (the trace rounds three
    numbers of three actions per request, and ``round`` with digits goes through a decimal conversion).

    With scaled = x·10⁴ below 10¹¹ in size its error is under 2⁻¹⁶ (< 10¹¹·2⁻⁵³); so when an integer n ≠ 0
    lies within 0.499 of it, n is what the exact x·10⁴ rounds to, with no tie, and n / 10⁴ (n exact in a
    double, one correctly rounded division) is the double nearest n·10⁻⁴: what ``round`` returns. Otherwise
    (a near tie, 0 or -0, huge, NaN or infinite) ``round`` itself answers, as it does for a value that is not a
    float (an int stays an int, as ``round`` keeps it). tests/unit/test_round4.py checks millions of values,
    ties included."""
    if type(x) is not float:
        return round(x, 4)
    scaled = x * 10000.0
    if -1e11 < scaled < 1e11:
        nearest = floor(scaled + 0.5)
        if nearest and -0.499 < scaled - nearest < 0.499:
            return nearest / 10000.0
    return round(x, 4)


class Terms:
    """One action's arbitration terms (shown in the trace). A plain slotted class, built with every field
    computed (one is built per eligible action per request, so no dataclass machinery and no ``max()``
    calls); nothing changes them after ``rank``."""

    __slots__ = ("action", "score", "value", "boost", "cost", "ev", "mean", "scale", "mean_ev", "probability")

    def __init__(self, action: str, score: float, value: float, boost: float, cost: float, ev: float,
                 mean: float | None = None, scale: float = 1.0, probability: float = 0.0) -> None:
        self.action = action
        self.score = score  # bandit score
        self.value = value
        self.boost = boost
        self.cost = cost
        self.ev = ev
        self.mean = m = score if mean is None else mean  # the bandit's mean estimate (its score when none)
        self.scale = scale  # what a unit of estimate is worth here: value unit × boost
        self.mean_ev = (m if m > 0.0 else 0.0) * scale - cost  # ev_of(mean), inlined: one per action per request
        self.probability = probability  # the bandit's probability of selecting this action

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Terms) and all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __repr__(self) -> str:
        return "Terms(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__) + ")"

    def ev_of(self, estimate: float) -> float:
        """The ev this action would have with ``estimate`` in place of the bandit's score."""
        return (estimate if estimate > 0.0 else 0.0) * self.scale - self.cost

    def lower_ev(self, k: float) -> float:
        """The ev at the mean minus ``k`` widths of the bandit's exploration bonus (score − mean)."""
        width = self.score - self.mean
        return self.ev_of(self.mean - k * width if width > 0.0 else self.mean)

    def to_trace(self, with_mean: bool = False) -> dict:
        out = {
            "action": self.action,
            "score": round4(self.score),
            "value": self.value,
            "boost": self.boost,
            "cost": self.cost,
            "ev": round4(self.ev),
        }
        if with_mean:
            out["mean_ev"] = round4(self.mean_ev)
        return out


@dataclass(slots=True)  # not frozen: made per request, and a frozen __init__ costs 3-4x; never changed
class Ranking:
    """The eligible actions' terms ranked (``rank``): all a placement with stickiness reads, which settles on
    them (``settled``) instead of the bandit's draw."""

    ranked: tuple[Terms, ...]  # every eligible action, best ev first
    eligible: tuple[str, ...]  # the eligible actions in the order given (settles ties)

    @property
    def ev(self) -> dict[str, float]:
        return {t.action: t.ev for t in self.ranked}

    @property
    def mean_ev(self) -> dict[str, float]:
        return {t.action: t.mean_ev for t in self.ranked}

    def lower_ev(self, k: float) -> dict[str, float]:
        return {t.action: t.lower_ev(k) for t in self.ranked}

    def ev_on_lookup(self, on_mean: bool = False) -> TermsLookup:
        """``ev`` (``mean_ev`` when ``on_mean``) read per action when looked up."""
        return TermsLookup(self.ranked, _MEAN_EV if on_mean else _EV)

    def lower_ev_on_lookup(self, k: float) -> TermsLookup:
        """``lower_ev(k)`` computed per action when looked up."""
        return TermsLookup(self.ranked, lambda t: t.lower_ev(k))

    def settled(self, on_mean: bool, salt: str = "") -> str:
        """The best action without the bandit's draw: highest ev (``mean_ev`` when ``on_mean``), ties to
        the higher score, then by a stable hash of ``salt`` and the action (a user id spreads a cold
        start's ties over the actions, yet the same user and statistics always give the same action),
        then to the earlier action in the eligible list."""
        ranked = self.ranked
        if not on_mean and (len(ranked) == 1 or ranked[1].ev != ranked[0].ev or ranked[1].score != ranked[0].score):
            return ranked[0].action  # ranked on ev, then score: the first, as the second does not tie it (finite
            # evs and scores, as the bandits and levers give: a NaN would leave the ranking unordered)
        tied: list[Terms] = []
        top_v = top_s = 0.0
        for t in ranked:  # one pass, no tuples: on the mean (a placement with an incumbent) or an ev and score tie
            v = t.mean_ev if on_mean else t.ev
            if not tied or v > top_v or (v == top_v and t.score > top_s):
                tied, top_v, top_s = [t], v, t.score
            elif v == top_v and t.score == top_s:
                tied.append(t)
        if len(tied) == 1:  # the usual case: no hash needed
            return tied[0].action
        order = {a: i for i, a in enumerate(self.eligible)}
        return min(tied, key=lambda t: (_stable_hash(salt, t.action), order.get(t.action, 0))).action


@dataclass(slots=True)  # not frozen: made per request, and a frozen __init__ costs 3-4x; never changed
class Arbitrated(Ranking):
    """The ranking and what arbitration makes of the bandit's draw (``arbitrate``)."""

    action: str  # the candidate (stickiness may still keep the incumbent)
    probability: float  # P(action is shown) under bandit + arbitration, exact (module docstring)
    explored: bool  # the action shown is not what arbitration makes of the bandit's greedy action (mode explore)


_EV: Callable[[Terms], float] = attrgetter("ev")
_MEAN_EV: Callable[[Terms], float] = attrgetter("mean_ev")
_EV_SCORE: Callable[[Terms], tuple[float, float]] = attrgetter("ev", "score")


class TermsLookup(Mapping[str, float]):
    """Action -> ``value(its Terms)``, computed when looked up (stickiness reads one or two actions' values per
    request, often none: no dict of every action's)."""

    __slots__ = ("_ranked", "_value")

    def __init__(self, ranked: tuple[Terms, ...], value: Callable[[Terms], float]) -> None:
        self._ranked = ranked
        self._value = value

    def __getitem__(self, action: str) -> float:
        for t in self._ranked:
            if t.action == action:
                return self._value(t)
        raise KeyError(action)

    def __iter__(self) -> Iterator[str]:
        return (t.action for t in self._ranked)

    def __len__(self) -> int:
        return len(self._ranked)


def _stable_hash(salt: str, action: str) -> bytes:
    """Same on every worker and run (never Python's hash()); blake2b, as CRCs order actions alike for
    every salt."""
    h = _EMPTY_BLAKE2B.copy()  # the same digest as a new blake2b(data, digest_size=8), ~100 ns faster
    h.update(f"{salt}\x00{action}".encode())
    return h.digest()


_EMPTY_BLAKE2B = hashlib.blake2b(digest_size=8)


def rank(
    choice: Choice,
    eligible: Sequence[str],
    catalogue: Catalogue,
    boosts: Mapping[str, float] | None = None,
    config: ArbitrationConfig = ArbitrationConfig(),
) -> Ranking:
    """The terms of ``eligible`` (the set the bandit chose from), best ev first, without the candidate: what
    a placement with stickiness needs (``arbitrate`` adds the candidate and its probability)."""
    if not eligible:
        raise ValueError("arbitration needs at least one eligible action")
    scale = catalogue.value_scale
    by_value = config.reward_unit == "value"
    actions = catalogue.actions
    order = tuple(eligible)
    # per position of ``eligible``: the choice's own lists when it was made over this very order (always, from
    # the pipeline), so no dict by action is built per request
    scores, means, probs = choice.aligned(order)
    terms: list[Terms] = []
    for i, a in enumerate(order):
        action = actions[a]
        score = scores[i]
        boost = boosts.get(a, 1.0) if boosts else 1.0
        unit = (scale if by_value else action.value) * boost
        terms.append(Terms(a, score, action.value, boost, action.cost,
                           (score if score > 0.0 else 0.0) * unit - action.cost, means[i], unit, probs[i]))
    # best ev, then higher score, then eligible order: a reverse sort keeps equal keys in their order (stable)
    terms.sort(key=_EV_SCORE, reverse=True)
    return Ranking(tuple(terms), order)


def arbitrate(
    choice: Choice,
    eligible: Sequence[str],
    catalogue: Catalogue,
    boosts: Mapping[str, float] | None = None,
    config: ArbitrationConfig = ArbitrationConfig(),
) -> Arbitrated:
    """Rank ``eligible`` (the set the bandit chose from) and pick the candidate."""
    ranking = rank(choice, eligible, catalogue, boosts, config)
    ranked = ranking.ranked
    pick, greedy = choice.action, choice.greedy
    pick_t = greedy_t = None
    top_score = -math.inf
    for t in ranked:
        score = t.score
        if score > top_score:
            top_score = score
        if t.action == pick:
            pick_t = t
        if t.action == greedy:
            greedy_t = t
    first = ranked[0]
    top_ev = first.ev
    # The greedy branch (a pick at the bandit's top score, not from the uniform draw) shows the ev winner;
    # on an ev tie the pick itself wins, which keeps the bandit's own random tie-breaking.
    if pick_t is None or choice.uniform or pick_t.score != top_score:
        candidate, cand_t = pick, pick_t  # shown as drawn
    elif pick_t.ev == top_ev:
        candidate, cand_t = pick, pick_t
    else:
        candidate, cand_t = first.action, first
    best = greedy if greedy_t is not None and greedy_t.ev == top_ev else first.action
    p = _shown(cand_t, first, ranked, top_score, choice.floor) if cand_t is not None else 0.0
    if p <= 0.0:  # a bandit that gives no probabilities: fall back to its own number
        p = choice.probability
    return Arbitrated(ranked, ranking.eligible, candidate, min(p, 1.0), candidate != best)


def _shown(t: Terms, first: Terms, ranked: tuple[Terms, ...], top_score: float, floor: float) -> float:
    """P(action ``t`` is shown): its share of the uniform draw (``floor``), plus its own greedy-branch mass
    (bandit probability − floor) unless arbitration moves that away (its score is the top one, its ev is
    not), plus, for the ev winner ``first``, the greedy-branch mass arbitration moved."""
    top_ev = first.ev
    p = floor if t.score == top_score and t.ev != top_ev else t.probability
    if t is first:
        for o in ranked:
            if o.score == top_score and o.ev != top_ev:
                p += o.probability - floor
    return p


def shown_probabilities(
    choice: Choice,
    eligible: Sequence[str],
    catalogue: Catalogue,
    boosts: Mapping[str, float] | None = None,
    config: ArbitrationConfig = ArbitrationConfig(),
) -> dict[str, float]:
    """P(a is shown) for every eligible action under bandit + arbitration: what ``arbitrate`` logs for ``a``
    whichever draw leads to it. They sum to 1 for a policy whose probabilities do."""
    arb = arbitrate(choice, eligible, catalogue, boosts, config)
    top_score = max(t.score for t in arb.ranked)
    first, floor = arb.ranked[0], choice.floor
    return {t.action: _shown(t, first, arb.ranked, top_score, floor) for t in arb.ranked}
