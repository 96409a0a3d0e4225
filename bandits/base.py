"""The policy extension point: ``select()`` enforces the shared rules, subclasses fill ``_select()``.

Learning is split in two additive halves so delayed rewards need no timers:
``expose(x, a)`` when action a is shown in context x, ``reward(x, a, r)`` when (and if) its reward
arrives. For linear policies expose adds x xᵀ to A and reward adds r·x to b, so the order and the
worker they happen on do not matter. ``update(x, a, r)`` is both at once; ``expose_many`` and
``reward_many`` take a batch of rows (same result as the single calls, fewer Python round trips).

The public methods validate their inputs (shape, finiteness, action names) and never modify the arrays
they are given; subclasses receive checked float64 arrays and arm indices.

Batches: ``prepare(xs)`` scores the contexts of many requests against every arm in one numpy step and
``select_row(prepared, i, actions)`` then chooses for request i as ``select(xs[i], actions)`` would (the
same draws from the policy's generator, in call order). A prepared batch is only used while the policy's
statistics are the ones it was scored with; after any learning step, a new arm, or for a row that is not
finite, ``select_row`` is ``select`` on that row.
"""

from __future__ import annotations

import io
import pickle
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.linalg import blas

ELIGIBLE_CACHE_SIZE = 4096  # distinct eligible sets remembered (catalogues have a handful per placement)
# Layout of the pickled state; bump when a policy's private attributes change so that an old snapshot is
# refused with a clear message instead of failing later. 2: shared ridge statistics (bandits.ridge).
# 3: the context's history block is weighted by 1e-3 (features.context): statistics of 2 mean something else.
SNAPSHOT_FORMAT = 3
# Bounds on what a policy learns from. Finite values beyond them overflow the ridge statistics (x·xᵀ, r·x)
# to infinity, and the next refresh of A⁻¹ turns an arm's estimates to NaN for good. The engine's contexts
# lie in [-1, ~3] per entry (features/context.py); rewards are clicks and scaled values.
MAX_CONTEXT_NORM = 1e6
MAX_REWARD = 1e9
_TOO_LARGE = ("context is too large (largest entry {big:.3g}; its norm may be at most 1e+06): scale the features "
              "to small values (the engine's lie in [-1, 3]) before deciding or learning")


@dataclass(slots=True)
class Choice:
    """What a policy picked, how likely that pick was, and the scores behind it.

    The per-action numbers are lists by position in ``actions`` (the eligible set, in the order it was
    given), as the policy computed them: a request reads a few of them, so no dict is built per choice.
    ``scores``, ``probabilities`` and ``means`` give them as dicts by action; ``from_maps`` builds a choice
    from such dicts. Nothing changes a choice or its lists once made (they may be shared with the policy)."""

    action: str
    probability: float
    greedy: str  # the action with the best score (action != greedy means exploration)
    actions: Sequence[str]  # the eligible actions chosen from, in the order given
    score_list: list[float]  # per position of ``actions``
    probability_list: list[float]  # selection probability, per position of ``actions``
    # estimated mean reward per position of ``actions``, without any exploration bonus (LinUCB's θₐ·x); None
    # when the policy does not say, then the scores stand in for it (see ``mean_of``)
    mean_list: list[float] | None = None
    # the pick came from the uniform exploration draw (probability ε: every eligible action alike); such a
    # pick is shown as drawn, never overridden by arbitration (policy/arbitration.py)
    uniform: bool = False
    # the probability the uniform draw gives each eligible action, ε/K (included in the probabilities);
    # 0 when the policy has no uniform draw or does not say
    floor: float = 0.0

    @classmethod
    def from_maps(
        cls,
        action: str,
        probability: float,
        greedy: str,
        scores: Mapping[str, float] | None = None,
        probabilities: Mapping[str, float] | None = None,
        means: Mapping[str, float] | None = None,
        uniform: bool = False,
        floor: float = 0.0,
    ) -> Choice:
        """A choice from dicts by action (an action missing from one of them reads 0 there)."""
        scores, probabilities = scores or {}, probabilities or {}
        actions = tuple(dict.fromkeys([*scores, *probabilities, *(means or {})]))
        return cls(
            action, probability, greedy, actions,
            [scores.get(a, 0.0) for a in actions],
            [probabilities.get(a, 0.0) for a in actions],
            [means.get(a, 0.0) for a in actions] if means else None,
            uniform, floor,
        )

    @property
    def scores(self) -> dict[str, float]:
        return dict(zip(self.actions, self.score_list))  # noqa: B905 (one per action by construction)

    @property
    def probabilities(self) -> dict[str, float]:
        return dict(zip(self.actions, self.probability_list))  # noqa: B905

    @property
    def means(self) -> dict[str, float]:
        """The mean estimates by action; empty when the policy gave none (``mean_of`` reads the scores then)."""
        return dict(zip(self.actions, self.mean_list)) if self.mean_list is not None else {}  # noqa: B905

    def aligned(self, actions: Sequence[str]) -> tuple[list[float], list[float], list[float]]:
        """Scores, mean estimates (the scores when there are none) and probabilities per position of
        ``actions`` (0 for an action this choice does not cover)."""
        if tuple(actions) == tuple(self.actions):
            scores = self.score_list
            return scores, self.mean_list if self.mean_list is not None else scores, self.probability_list
        scores_of, probs_of = self.scores, self.probabilities
        means_of = self.means or scores_of
        return ([scores_of.get(a, 0.0) for a in actions], [means_of.get(a, 0.0) for a in actions],
                [probs_of.get(a, 0.0) for a in actions])

    def probability_of(self, action: str) -> float:
        """The selection probability of ``action`` (0 if it was not eligible)."""
        return self.probability_list[self.actions.index(action)] if action in self.actions else 0.0

    def mean_of(self, action: str) -> float:
        """The mean reward estimate of ``action`` (its score when the policy gave no means; 0 if unknown)."""
        if action not in self.actions:
            return 0.0
        values = self.mean_list if self.mean_list is not None else self.score_list
        return values[self.actions.index(action)]

    @property
    def explored(self) -> bool:
        return self.action != self.greedy


@dataclass(frozen=True, slots=True)
class Prepared:
    """Contexts of a batch of requests scored against every arm (``Policy.prepare``)."""

    owner: int  # id() of the policy that scored them
    version: int  # its version then: the statistics the rows hold
    arms: int  # how many arms it had
    xs: np.ndarray  # (n, dim), float64
    finite: np.ndarray  # (n,) bool: rows finite and within MAX_CONTEXT_NORM (others go through ``select``)
    rows: Any  # the subclass's precomputation (``_prepare``)


class Policy(ABC):
    """A contextual bandit over a changing set of string-named actions.

    Actions are registered the first time they are seen (in ``select`` or in learning) and start cold;
    an action that leaves the catalogue is simply not offered any more, its statistics are kept.
    """

    name: str = "policy"
    # whether ``Choice.scores`` carry an exploration bonus over ``Choice.means`` (an uncertainty width the
    # stickiness "surely better" rule subtracts); without one that rule compares the means alone
    has_width: bool = False
    # hyperparameters that shape decisions only, not the statistics learned: a policy restored from a snapshot
    # takes them from the settings (``bandits.restore.carry_over``)
    decision_params: tuple[str, ...] = ()

    def __init__(self, dim: int, seed: int = 0) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._index: dict[str, int] = {}
        self._n_updates = 0
        # eligible set -> (the set itself, arm indices or None when the set is every arm in index order); the
        # tuple is shared by the choices made over that set (Choice.actions)
        self._eligible: dict[tuple[str, ...], tuple[tuple[str, ...], np.ndarray | None]] = {}

    # -- public API ---------------------------------------------------------------------------
    @property
    def actions(self) -> list[str]:
        return list(self._index)

    @property
    def version(self) -> int:
        """Number of learning steps applied; identifies the statistics a decision was made with."""
        return self._n_updates

    def select(self, x: np.ndarray, actions: Sequence[str]) -> Choice:
        """Choose among ``actions`` (the eligible set of this request) for context ``x``."""
        x = self._check_x(x)
        key = tuple(actions)
        resolved = self._eligible.get(key)
        if resolved is None:
            resolved = self._resolve(key)
        names, idx = resolved
        return self._select(x, names, idx)

    def prepare(self, xs: np.ndarray) -> Prepared:
        """Score a batch of contexts (shape (n, dim)) for ``select_row``; the inputs are not modified."""
        xs = np.array(xs, dtype=np.float64)  # a copy: the caller may reuse its array
        if xs.ndim != 2 or xs.shape[1] != self.dim:
            raise ValueError(f"contexts must have shape (n, {self.dim}), got {xs.shape}")
        # rows with NaN, infinity or a norm beyond the bound are False: select_row sends them to select()
        finite = np.einsum("ij,ij->i", xs, xs) <= MAX_CONTEXT_NORM**2 if len(xs) else np.ones(0, dtype=bool)
        clean = np.where(finite[:, None], xs, 0.0) if not finite.all() else xs
        rows = self._prepare(clean) if len(xs) and self._index else None
        return Prepared(id(self), self._n_updates, len(self._index), xs, finite, rows)

    def select_row(self, prepared: Prepared, row: int, actions: Sequence[str]) -> Choice:
        """``select(prepared.xs[row], actions)``, from the batch's scores while they are current."""
        key = tuple(actions)
        resolved = self._eligible.get(key)
        if resolved is None:
            resolved = self._resolve(key)
        names, idx = resolved
        current = (
            prepared.rows is not None and prepared.owner == id(self) and prepared.version == self._n_updates
            and prepared.arms == len(self._index) and bool(prepared.finite[row])
        )
        if not current:
            return self.select(prepared.xs[row], actions)
        return self._select_prepared(prepared.rows, row, names, idx)

    def expose(self, x: np.ndarray, action: str) -> None:
        x = self._check_x(x)
        self._expose(x, self._arm(action))
        self._n_updates += 1

    def reward(self, x: np.ndarray, action: str, reward: float) -> None:
        r = self._check_reward(reward)
        x = self._check_x(x)
        self._reward(x, self._arm(action), r)
        self._n_updates += 1

    def update(self, x: np.ndarray, action: str, reward: float) -> None:
        """Exposure and reward in one step (the same statistics as ``expose`` then ``reward``)."""
        r = self._check_reward(reward)
        x = self._check_x(x)
        self._update(x, self._arm(action), r)
        self._n_updates += 2 if r else 1

    def expose_many(self, xs: np.ndarray, actions: Sequence[str]) -> None:
        """``expose`` for each row of ``xs`` (shape (n, dim)) and the action at the same position."""
        xs = self._check_rows(xs, len(actions))
        arms = self._arms(actions)
        if len(arms):
            self._expose_many(xs, arms)
        self._n_updates += len(arms)

    def reward_many(
        self, xs: np.ndarray, actions: Sequence[str], rewards: Sequence[float] | np.ndarray
    ) -> None:
        """``reward`` for each row of ``xs``, the action and the reward at the same position."""
        rs = np.array(rewards, dtype=np.float64)
        if rs.shape != (len(actions),):
            raise ValueError(f"need one reward per action: {len(actions)} actions, rewards shaped {rs.shape}")
        if not (np.abs(rs) <= MAX_REWARD).all():
            raise ValueError(f"rewards must be finite and at most {MAX_REWARD:g} in size; drop or repair those "
                             "samples before learning (or learn a scaled reward)")
        xs = self._check_rows(xs, len(actions))
        arms = self._arms(actions)
        if len(arms):
            self._reward_many(xs, arms, rs)
        self._n_updates += len(arms)

    def snapshot(self) -> bytes:
        buf = io.BytesIO()
        pickle.dump(self, buf, protocol=pickle.HIGHEST_PROTOCOL)
        return buf.getvalue()

    @staticmethod
    def restore(blob: bytes) -> Policy:
        policy = pickle.loads(blob)
        if not isinstance(policy, Policy):
            raise TypeError(f"snapshot holds a {type(policy).__name__}, not a Policy")
        found = policy.__dict__.get("_snapshot_format")
        if found != SNAPSHOT_FORMAT:
            raise ValueError(
                f"policy snapshot has format {found}, this version reads format {SNAPSHOT_FORMAT}; "
                "start the policy fresh (or replay the learning topic) instead of loading it"
            )
        return policy

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_eligible"] = {}  # a cache: rebuilt on demand, not worth shipping in snapshots
        state["_snapshot_format"] = SNAPSHOT_FORMAT
        return state

    # -- helpers for subclasses ---------------------------------------------------------------
    def _check_x(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (self.dim,):
            raise ValueError(f"context must have shape ({self.dim},), got {x.shape}")
        # x·x is NaN/inf when any entry is, and above the bound when an entry is huge: one BLAS ddot (a
        # Python float, fast) answers both, the element-wise check runs only to say which.
        if not blas.ddot(x, x) <= MAX_CONTEXT_NORM**2:
            if not np.isfinite(x).all():
                raise ValueError("context holds NaN or infinity; repair the feature vector before deciding")
            raise ValueError(_TOO_LARGE.format(big=float(np.abs(x).max())))
        return x

    def _check_rows(self, xs: np.ndarray, n: int) -> np.ndarray:
        xs = np.asarray(xs, dtype=np.float64)
        if xs.shape != (n, self.dim):
            raise ValueError(f"contexts must have shape ({n}, {self.dim}) (a row per action), got {xs.shape}")
        if not np.isfinite(xs).all():
            raise ValueError("contexts hold NaN or infinity; repair the feature vectors before learning")
        if len(xs) and not float(np.einsum("ij,ij->i", xs, xs).max()) <= MAX_CONTEXT_NORM**2:
            raise ValueError(_TOO_LARGE.format(big=float(np.abs(xs).max())))
        return xs

    @staticmethod
    def _check_reward(reward: float) -> float:
        r = float(reward)
        if not abs(r) <= MAX_REWARD:
            raise ValueError(f"reward must be finite and at most {MAX_REWARD:g} in size, got {reward!r}; "
                             "drop or repair the sample first (or learn a scaled reward)")
        return r

    def _arm(self, action: str) -> int:
        i = self._index.get(action)
        if i is None:
            if not isinstance(action, str) or not action:
                raise ValueError(f"action names must be non-empty strings, got {action!r}")
            i = len(self._index)
            self._index[action] = i
            self._grow(i + 1)
            self._eligible.clear()  # "every arm" shortcuts are stale once an arm is added
        return i

    def _arms(self, actions: Sequence[str]) -> np.ndarray:
        bad = [a for a in actions if not isinstance(a, str) or not a]
        if bad:  # checked before any new action is registered, so a bad batch changes nothing
            raise ValueError(f"action names must be non-empty strings, got {bad[0]!r}")
        return np.fromiter((self._arm(a) for a in actions), dtype=np.intp, count=len(actions))

    def _resolve(self, key: tuple[str, ...]) -> tuple[tuple[str, ...], np.ndarray | None]:
        if not key:
            raise ValueError("select() needs at least one eligible action; fall back to a default instead")
        if len(set(key)) != len(key):
            raise ValueError(f"eligible actions must be distinct, got {list(key)}")
        idx = self._arms(key)
        every_arm = len(idx) == len(self._index) and bool((idx == np.arange(len(idx))).all())
        resolved = (key, None if every_arm else idx)
        if len(self._eligible) >= ELIGIBLE_CACHE_SIZE:
            self._eligible.clear()
        self._eligible[key] = resolved
        return resolved

    @staticmethod
    def _choice(
        actions: tuple[str, ...],
        scores: list[float],
        probs: list[float],
        pick: int,
        best: int,
        means: list[float] | None = None,
        uniform: bool = False,
        floor: float = 0.0,
    ) -> Choice:
        """``means``: the mean reward estimates when they differ from ``scores`` (else None);
        ``uniform``: the pick came from the uniform draw, which gives every action ``floor``. The lists are
        the policy's own, one entry per action, and become the choice's (not copied)."""
        return Choice(actions[pick], probs[pick], actions[best], actions, scores, probs, means, uniform, floor)

    # -- to implement -------------------------------------------------------------------------
    @abstractmethod
    def _grow(self, n_arms: int) -> None:
        """Make room for statistics of ``n_arms`` arms (new arms start cold)."""

    @abstractmethod
    def _select(self, x: np.ndarray, actions: tuple[str, ...], idx: np.ndarray | None) -> Choice:
        """Pick one of ``actions``; ``idx`` holds their arm indices, None when they are all arms in order."""

    def _prepare(self, xs: np.ndarray) -> Any:
        """Precompute what ``_select_prepared`` needs for every row of ``xs`` and every arm (default: the
        contexts themselves, so a policy without a batch path selects row by row)."""
        return xs

    def _select_prepared(self, rows: Any, row: int, actions: tuple[str, ...], idx: np.ndarray | None) -> Choice:
        """``_select`` for one row of a prepared batch (same draws from the generator as ``_select``)."""
        return self._select(rows[row], actions, idx)

    @abstractmethod
    def _expose(self, x: np.ndarray, arm: int) -> None: ...

    @abstractmethod
    def _reward(self, x: np.ndarray, arm: int, reward: float) -> None: ...

    def _update(self, x: np.ndarray, arm: int, reward: float) -> None:
        self._expose(x, arm)
        if reward:
            self._reward(x, arm, reward)

    def _expose_many(self, xs: np.ndarray, arms: np.ndarray) -> None:
        for x, arm in zip(xs, arms.tolist(), strict=True):
            self._expose(x, arm)

    def _reward_many(self, xs: np.ndarray, arms: np.ndarray, rewards: np.ndarray) -> None:
        for x, arm, r in zip(xs, arms.tolist(), rewards.tolist(), strict=True):
            self._reward(x, arm, r)
