"""Delayed labels for the propensity and value models, on the learning stream's event time (pure).

Every exposure (a decision that showed an action, with its context ``x``) waits here until its label is
known; rewards for its ``decision_id`` resolve it:

- a **conversion** within ``window_s`` of the decision: label 1 for propensity at once, and its revenue
  (``reward × value_scale``) for the value model;
- no conversion by the time the learning stream's watermark passes ``ts + window_s + grace_s``: label 0.
  ``grace_s`` waits for rewards from learning partitions that run behind the fastest one.

Propensity therefore reads "P(the customer converts within ``window_s`` of being shown the action)".
Clicks do not resolve anything (they pay the bandit, not this label). A conversion is told from a click
by its reward: a reward equal to the engine's ``click_reward`` is a click, anything else a conversion
(a conversion whose revenue is exactly ``click_reward × value_scale`` would be read as a click: rare,
and it only loses that one positive).

Unbiased by construction: a positive is learned only for an exposure that is followed here, so every
followed exposure yields exactly one propensity label, whatever arrives later. Conversions of exposures
that are not followed (dropped, sampled out, or from before a restart) teach nothing.

Bounds: at most ``capacity`` exposures wait; when full, the oldest is dropped unlearned (counted). The
drop depends on arrival order only, never on the outcome, so it loses data without biasing the labels.
``share`` < 1 follows only that share of exposures, chosen by a stable hash of the decision id (so every
worker follows the same ones): at high decision rates it trades sample size for memory and CPU, and
leaves the label rate unbiased (no weights needed). Memory is about 300 bytes per waiting exposure.
Duplicated samples (the topic is at-least-once) are ignored: an exposure already waiting is not added
twice, and a resolved one is no longer there to be resolved again.
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from contracts.decisions import LearningSample

_HASH_SPACE = float(1 << 64)


@dataclass(frozen=True, slots=True)
class JoinConfig:
    window_s: float = 3600.0  # a conversion within this long after the decision (event time) is a positive
    grace_s: float = 300.0  # extra wait for rewards from learning partitions that lag the watermark
    capacity: int = 100_000  # exposures waiting at most; the oldest is dropped unlearned when full
    share: float = 1.0  # share of exposures followed (stable hash of the decision id)

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.grace_s < 0:
            raise ValueError(f"need window_s > 0 and grace_s >= 0, got {self.window_s}, {self.grace_s}")
        if self.capacity < 1:
            raise ValueError(f"capacity must be at least 1 exposure, got {self.capacity}")
        if not 0.0 < self.share <= 1.0:
            raise ValueError(f"share must be in (0, 1], got {self.share}")


@dataclass(frozen=True, slots=True)
class Label:
    """A resolved label: ``model`` ("propensity", "value" or "churn") learns ``x`` -> ``target``."""

    model: str
    x: Sequence[float]  # the context vector (features.context layout), compact
    target: float  # converted 0/1, revenue, or churned 0/1
    ts: float  # event time at which the label became known
    action: str | None = None  # propensity only


@dataclass(slots=True)
class _Waiting:
    action: str
    ts: float
    x: array
    revenue_learned: bool = False


def followed(decision_id: str, share: float) -> bool:
    """Stable choice of a ``share`` of decision ids (the same on every worker and after a restart)."""
    if share >= 1.0:
        return True
    h = int.from_bytes(hashlib.blake2b(decision_id.encode(), digest_size=8).digest(), "big")
    return h / _HASH_SPACE < share


class LabelJoin:
    """Exposures waiting for their label; ``add`` resolves conversions, ``advance`` closes windows."""

    def __init__(self, config: JoinConfig, click_reward: float, value_scale: float) -> None:
        if value_scale <= 0:
            raise ValueError(f"value_scale must be > 0 (the catalogue's largest value), got {value_scale}")
        self.config = config
        self.click_reward = click_reward
        self.value_scale = value_scale
        self._waiting: OrderedDict[str, _Waiting] = OrderedDict()  # arrival order, about event time
        self._dropped = 0

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def dropped(self) -> int:
        """Exposures dropped unlearned because ``capacity`` was reached."""
        return self._dropped

    def _is_click(self, reward: float) -> bool:
        return abs(reward - self.click_reward) <= 1e-12

    def add(self, samples: Iterable[LearningSample]) -> list[Label]:
        """Take exposures and rewards in stream order; returns the labels they resolve now."""
        out: list[Label] = []
        waiting, config = self._waiting, self.config
        for s in samples:
            if s.kind == "exposure":
                if s.decision_id in waiting or not followed(s.decision_id, config.share):
                    continue
                if len(waiting) >= config.capacity:
                    waiting.popitem(last=False)
                    self._dropped += 1
                waiting[s.decision_id] = _Waiting(sys.intern(s.action), s.ts, array("f", s.x))
            elif s.kind == "reward" and s.reward > 0 and not self._is_click(s.reward):
                w = waiting.get(s.decision_id)
                if w is None or s.ts < w.ts:
                    continue
                if not w.revenue_learned:
                    out.append(Label("value", w.x, s.reward * self.value_scale, s.ts))
                    w.revenue_learned = True
                if s.ts - w.ts <= config.window_s:
                    out.append(Label("propensity", w.x, 1.0, s.ts, w.action))
                    del waiting[s.decision_id]
        return out

    def advance(self, watermark: float) -> list[Label]:
        """Label 0 every exposure whose window (plus grace) closed before ``watermark``."""
        out: list[Label] = []
        waiting = self._waiting
        wait_s = self.config.window_s + self.config.grace_s
        while waiting:
            decision_id, w = next(iter(waiting.items()))
            if w.ts + wait_s > watermark:
                break
            del waiting[decision_id]
            out.append(Label("propensity", w.x, 0.0, w.ts + wait_s, w.action))
        return out
