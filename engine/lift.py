"""Live lift of the engine over the holdout group, from the learning stream (so every worker has it).

Each decision's exposure is one decision of its group (treated, or control for mode "holdout"); its rewards
add to that group's total. The lift is the difference of the groups' reward per decision. The rewards are the
user's: every reward of a grouped user after one of their decisions within its window counts once, in their
group, credited to a decision or sent as a lift-only reward sample (action "none") when no decision of the lift
could take it (engine/attribution.py, ``lift_decision``): what a user was shown never decides whether a reward
counts, so an A/A test reads no lift.

The holdout assigns users, not decisions, and a user's decisions are correlated (some users click, most
never do): an interval that took decisions as independent covered the true lift in 62.5 % of the streams of
tests/unit/test_lift_interval.py instead of about 95 % (this one: 94 %). So each group keeps its sums in
``BUCKETS`` buckets of users (bucket = the sample's user bucket, modulo ``BUCKETS``): decisions k_b and reward
y_b. A user is wholly inside one bucket, so buckets are
independent clusters, and the reward per decision R = Σy_b / Σk_b (a ratio estimator) has the
cluster-robust variance Var(R) ≈ Σ_b (y_b − R·k_b)² / (Σ_b k_b)² · G/(G−1), G the buckets in use: valid with
any number of users (several per bucket only makes it a little conservative) in fixed memory. A click and a
conversion on one decision are one decision's reward in its bucket, so they count as such. Samples from
engines that did not send the user bucket are bucketed by decision id (their exposure and rewards together).

Published as None: everything while a group has fewer than 2 decisions, and the interval while a group's
buckets show no variation (every reward 0 so far, or a single bucket): its variance estimate would be 0,
an interval claiming that group's reward per decision is exactly known.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterable

import numpy as np

from contracts.decisions import LIFT_BUCKETS, LearningSample

Z95 = 1.959963984540054
BUCKETS = LIFT_BUCKETS  # clusters of users per group: the variance has BUCKETS - 1 degrees of freedom at most
STATE_FORMAT = 2  # snapshots' lift state: {"format": 2, "treated": [k..., y...], "control": ...}
log = logging.getLogger(__name__)


def bucket_of(sample: LearningSample) -> int:
    """The sample's user bucket: every sample of one user in the same one (by decision, for older samples)."""
    if sample.user_bucket is not None:
        return int(sample.user_bucket) % BUCKETS
    digest = hashlib.blake2b(sample.decision_id.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % BUCKETS


class _Group:
    """One group's decisions and reward per bucket of users."""

    __slots__ = ("decisions", "reward")

    def __init__(self) -> None:
        self.decisions = np.zeros(BUCKETS, dtype=np.int64)
        self.reward = np.zeros(BUCKETS, dtype=np.float64)

    @property
    def n(self) -> int:
        return int(self.decisions.sum())

    @property
    def mean(self) -> float:
        n = self.n
        return float(self.reward.sum()) / n if n else 0.0

    @property
    def var_of_mean(self) -> float:
        """Cluster-robust variance of the reward per decision, over the buckets in use (inf with fewer than 2)."""
        used = (self.decisions > 0) | (self.reward != 0)
        clusters = int(used.sum())
        if clusters < 2 or self.n == 0:
            return math.inf
        residuals = self.reward[used] - self.mean * self.decisions[used]
        return float(residuals @ residuals) / self.n**2 * clusters / (clusters - 1)

    def to_state(self) -> list[float]:
        return [*(int(k) for k in self.decisions), *(float(y) for y in self.reward)]

    def load(self, values: list[float]) -> None:
        self.decisions = np.array(values[:BUCKETS], dtype=np.int64)
        self.reward = np.array(values[BUCKETS:], dtype=np.float64)


class LiftTracker:
    def __init__(self) -> None:
        self._treated = _Group()
        self._control = _Group()

    def add(self, sample: LearningSample) -> None:
        self.add_many([sample])

    def add_many(self, samples: Iterable[LearningSample], covers: Callable[[str], bool] | None = None) -> None:
        """Count exposures and rewards in their groups' buckets (one numpy step per group and kind).
        ``covers(placement)``, the holdout's: samples of placements it does not cover are left out (there a
        control user gets the treated decisions, so neither group is theirs; counted as treated, they made a
        lift of control users' rewards)."""
        # per group (index 0 treated, 1 control), in the samples' order: exposures' buckets, rewards' buckets and
        # values (lists indexed by the group, not a dict keyed by (group, kind): no key tuple per sample)
        exposed: tuple[list[int], list[int]] = ([], [])
        rewarded: tuple[list[int], list[int]] = ([], [])
        rewards: tuple[list[float], list[float]] = ([], [])
        for s in samples:
            kind = s.kind
            if (kind != "exposure" and kind != "reward") or (covers is not None and not covers(s.placement)):
                continue
            control = s.mode == "holdout"
            user = s.user_bucket
            bucket = int(user) % BUCKETS if user is not None else bucket_of(s)
            if kind == "exposure":
                exposed[control].append(bucket)
            else:
                rewarded[control].append(bucket)
                rewards[control].append(s.reward)
        for index, group in enumerate((self._treated, self._control)):
            if exposed[index]:
                np.add.at(group.decisions, exposed[index], 1)
            if rewarded[index]:
                np.add.at(group.reward, rewarded[index], rewards[index])

    def to_state(self) -> dict[str, object]:
        """The buckets' sums, for snapshots: a worker resuming the learning topic at a snapshot's offsets must
        resume its lift there too (otherwise it counts rewards of decisions it never counted)."""
        return {"format": STATE_FORMAT, "treated": self._treated.to_state(), "control": self._control.to_state()}

    def mark(self) -> bytes:
        """A digest of the sums, which changes whenever they do (cheap: no ``to_state`` lists)."""
        digest = hashlib.blake2b(digest_size=16)
        for group in (self._treated, self._control):
            digest.update(group.decisions.tobytes())
            digest.update(group.reward.tobytes())
        return digest.digest()

    @classmethod
    def from_state(cls, state: object) -> LiftTracker:
        """``to_state``'s sums back. A state from before the buckets (6 numbers: the groups' totals) cannot
        be split into buckets: the lift restarts empty, logged; anything else starts empty too."""
        tracker = cls()
        if not isinstance(state, dict):
            return tracker
        if state.get("format") != STATE_FORMAT:
            log.warning("lift state in the snapshot is from before the lift clustered users: the lift restarts "
                        "from the snapshot's offsets")
            return tracker
        for name, group in (("treated", tracker._treated), ("control", tracker._control)):
            values = state.get(name)
            if isinstance(values, list | tuple) and len(values) == 2 * BUCKETS:
                group.load(list(values))
        return tracker

    def result(self) -> dict[str, float | int | None]:
        t, c = self._treated, self._control
        counted = t.n >= 2 and c.n >= 2
        diff = t.mean - c.mean if counted else None
        # no interval while a group's variance is 0 (its buckets show no variation: no reward yet) or unknown
        # (inf: fewer than 2 buckets in use)
        variances = (t.var_of_mean, c.var_of_mean)
        se = math.sqrt(sum(variances)) if counted and all(0 < v < math.inf for v in variances) else None
        return {
            "treated_decisions": t.n,
            "control_decisions": c.n,
            "treated_reward_per_decision": t.mean,
            "control_reward_per_decision": c.mean,
            "lift": diff,
            "lift_ci95_low": diff - Z95 * se if diff is not None and se is not None else None,
            "lift_ci95_high": diff + Z95 * se if diff is not None and se is not None else None,
            "relative_lift": diff / c.mean if diff is not None and c.mean > 0 else None,
        }
