"""Delayed labels for the propensity and value models, on the learning stream's event time (pure).

Every exposure (a decision that showed an action, with its context ``x``) waits here until its window
closes, when the learning stream's watermark passes ``ts + window_s + grace_s``. That watermark is the
slowest live worker's progress (learning/source_progress.py: a worker catching up on a backlog holds the
windows open); ``grace_s`` waits for rewards read after later ones (another partition of the learning
topic, events within a worker's accepted lateness). Then, and only then, it yields its propensity label,
with ``ts`` = that close:

- label 1 if a **conversion** for its ``decision_id`` came within ``window_s`` of the decision (the
  conversion only marks the waiting exposure as converted; it keeps waiting);
- label 0 otherwise.

Propensity therefore reads "P(the customer converts within ``window_s`` of being shown the action)".
Positives and negatives come at the same delay, in exposure order, so what the model has learned at any
moment is the exposures whose windows have closed, whatever their outcome: no delayed-feedback bias (no
positive-only start for a fresh model, no excess of positives while traffic grows). The price: a fresh
model's first propensity labels come one ``window_s + grace_s`` of event time after its first exposures.

The **value** model learns at once: the first conversion of a followed exposure (within the window or
after it, as long as the exposure still waits) yields its revenue (``reward × value_scale``) as a label,
once per exposure. That model only ever learns from conversions (the revenue of a sale, never a 0 for an
exposure that did not convert), so when its labels come does not bias it.

Clicks do not resolve anything (they pay the bandit, not these labels). A reward says whether it is a click
or a conversion (``reward_type``); only samples from engines that did not send it are told by value (a reward
equal to ``click_reward`` is a click there, so a conversion worth exactly ``click_reward × value_scale`` was
read as one). A conversion more than ``window_s`` after its decision is not a
positive (the exposure's label stays 0), and a conversion before its decision cannot be its effect.

Every followed exposure yields exactly one propensity label, whatever arrives later. A conversion read
before its exposure (they may sit on different partitions of the learning topic) is kept until the exposure
comes, or until the watermark passes the conversion's ts + ``window_s`` + ``grace_s`` (its exposure is
accepted until then; at most ``capacity`` of them).
Conversions of exposures that are not followed (dropped, sampled out, or from before a restart) teach nothing.

Bounds: at most ``capacity`` exposures wait; when full, the oldest is dropped unlearned (counted). The
drop depends on arrival order only, never on the outcome (converted exposures wait like the others), so it
loses data without biasing the labels. ``share`` < 1 follows only that share of exposures, chosen by a
stable hash of the decision id (so every worker follows the same ones): at high decision rates it trades
sample size for memory and CPU, and leaves the label rate unbiased (no weights needed). Memory is about
250 bytes per waiting exposure with a context of 20 (a tuple: action, ts, the context as float32 bytes
and two flags, plus its entry in the dict). Duplicated samples (the topic is at-least-once) are ignored:
an exposure already waiting is not added twice, and a second conversion for it changes nothing (its
revenue was learned, it is marked converted already). An exposure whose window had already closed when it
arrives (the highest watermark ``advance`` reached passed ``ts + window_s + grace_s``) is skipped and
counted (``closed``): it is a redelivered copy of one already labelled (SeenKeys upstream forgets keys
after 200,000 samples), or one from a worker further behind than ``max_source_lag_s``, whose conversions
may have been missed; labelling it would learn it twice or biased towards 0.
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from contracts.decisions import LearningSample

_HASH_SPACE = float(1 << 64)
_F32 = np.dtype(np.float32)  # positional dtype: numpy parses keywords slowly


@dataclass(frozen=True, slots=True)
class JoinConfig:
    window_s: float = 3600.0  # a conversion within this long after the decision (event time) is a positive
    grace_s: float = 300.0  # extra wait for rewards read after later ones (other learning partitions, lateness)
    max_source_lag_s: float = 1800.0  # a producer further behind the fastest stops holding windows open
    capacity: int = 100_000  # exposures waiting at most; the oldest is dropped unlearned when full
    share: float = 1.0  # share of exposures followed (stable hash of the decision id)

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.grace_s < 0 or self.max_source_lag_s < 0:
            raise ValueError(f"need window_s > 0, grace_s >= 0 and max_source_lag_s >= 0, got {self.window_s}, "
                             f"{self.grace_s}, {self.max_source_lag_s}")
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
    ts: float  # event time at which the label became known (propensity: its exposure's window close)
    action: str | None = None  # propensity only


class _Waiting(NamedTuple):
    """An exposure waiting for its label. A tuple of immutable values, so the garbage collector stops tracking
    it (tens of thousands wait at a time; as a slotted record with an array, each was two more objects every
    full collection walked): a change replaces it in the dict, in the same place."""

    action: str
    ts: float
    x: bytes  # the context as float32 (``_float32``); its labels get it as ``array("f")``
    revenue_learned: bool = False
    converted: bool = False  # a conversion came within window_s: label 1 when the window closes


def _float32(x: Sequence[float] | np.ndarray) -> bytes:
    """The float32 bytes of ``x``, converted by numpy in one call instead of element by element (a third of
    the time for a context vector)."""
    return np.asarray(x, _F32).tobytes()


def _float32_rows(vectors: Sequence[Sequence[float] | np.ndarray]) -> list[bytes] | None:
    """``_float32`` of each vector, converted by numpy in one call for all of them (a batch's exposures);
    None when they do not make one matrix (e.g. vectors of different lengths): then one by one."""
    if not vectors:
        return []
    try:
        blob = np.asarray(vectors, _F32).tobytes()
    except (ValueError, TypeError):
        return None
    width = len(blob) // len(vectors)
    if width == 0:
        return None
    return [blob[at:at + width] for at in range(0, len(blob), width)]


def followed(decision_id: str, share: float) -> bool:
    """Stable choice of a ``share`` of decision ids (the same on every worker and after a restart)."""
    if share >= 1.0:
        return True
    h = int.from_bytes(hashlib.blake2b(decision_id.encode(), digest_size=8).digest(), "big")
    return h / _HASH_SPACE < share


class LabelJoin:
    """Exposures waiting for their label; ``add`` records conversions, ``advance`` closes windows."""

    def __init__(self, config: JoinConfig, click_reward: float, value_scale: float) -> None:
        if value_scale <= 0:
            raise ValueError(f"value_scale must be > 0 (the catalogue's largest value), got {value_scale}")
        self.config = config
        self.click_reward = click_reward
        self.value_scale = value_scale
        self._waiting: OrderedDict[str, _Waiting] = OrderedDict()  # arrival order, about event time
        # conversions read before their exposure (decision id -> (ts, reward)), arrival order: the two may
        # be on different partitions of the learning topic, read out of order; kept until the exposure
        # comes or the watermark passes ts + window_s + grace_s. An exposure is accepted until its own
        # ts + window_s + grace_s, and it is at or before its conversion, so until then it may still come
        # (dropping the conversion at ts + grace_s labelled such an exposure 0 though it converted)
        self._early: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._dropped = 0
        self._closed_until = float("-inf")  # highest watermark advance() reached: windows closed up to it
        self._closed = 0

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def dropped(self) -> int:
        """Exposures dropped unlearned because ``capacity`` was reached."""
        return self._dropped

    @property
    def closed(self) -> int:
        """Exposures skipped because their window had closed when they came (redeliveries, late workers)."""
        return self._closed

    def _is_click(self, sample: LearningSample) -> bool:
        """Rewards say what they are (``reward_type``); only samples from before that was sent are told by
        their value, which a conversion worth exactly the click reward shares (a $10 sale at value scale 100)."""
        if sample.reward_type:
            return sample.reward_type == "click"
        return abs(sample.reward - self.click_reward) <= 1e-12

    def add(self, samples: Iterable[LearningSample]) -> list[Label]:
        """Take exposures and rewards in stream order; returns the value labels they resolve now.

        Propensity labels never come from here: a conversion within the window marks its exposure as
        converted, and ``advance`` labels it when the window closes.
        """
        out: list[Label] = []
        waiting, config = self._waiting, self.config
        closed_until, wait_s = self._closed_until, config.window_s + config.grace_s
        samples = samples if isinstance(samples, list) else list(samples)
        vectors = _float32_rows([s.x for s in samples if s.kind == "exposure"])  # by exposure position
        exposure_at = -1
        for s in samples:
            if s.kind == "exposure":
                exposure_at += 1
                if s.decision_id in waiting or not followed(s.decision_id, config.share):
                    continue
                if s.ts + wait_s <= closed_until:  # closed: its label went out already (or would come late)
                    self._closed += 1
                    continue
                if len(waiting) >= config.capacity:
                    waiting.popitem(last=False)
                    self._dropped += 1
                x = vectors[exposure_at] if vectors is not None else _float32(s.x)
                exposed = waiting[s.decision_id] = _Waiting(sys.intern(s.action), s.ts, x)
                early = self._early.pop(s.decision_id, None) if self._early else None
                if early is not None:
                    self._convert(s.decision_id, exposed, *early, out)
            elif s.kind == "reward" and s.reward > 0 and not self._is_click(s):
                w = waiting.get(s.decision_id)
                if w is not None:
                    self._convert(s.decision_id, w, s.ts, s.reward, out)
                elif followed(s.decision_id, config.share) and s.decision_id not in self._early:
                    if len(self._early) >= config.capacity:
                        self._early.popitem(last=False)
                    self._early[s.decision_id] = (s.ts, s.reward)
        return out

    def _convert(self, decision_id: str, w: _Waiting, ts: float, reward: float, out: list[Label]) -> None:
        """A conversion for exposure ``w`` (waiting as ``decision_id``): its revenue (once), and converted if
        within the window."""
        if ts < w.ts:  # before its decision: cannot be its effect
            return
        changed = w
        if not w.revenue_learned:
            out.append(Label("value", array("f", w.x), reward * self.value_scale, ts))
            changed = changed._replace(revenue_learned=True)
        if ts - w.ts <= self.config.window_s:
            changed = changed._replace(converted=True)
        if changed is not w:
            self._waiting[decision_id] = changed  # an existing key keeps its place in the arrival order

    def advance(self, watermark: float, labelled: bool = True) -> list[Label]:
        """Propensity labels (1 converted, 0 not) of the exposures whose window (plus grace) closed before
        ``watermark``, in exposure order, each at the event time of its close. ``labelled=False``: the same
        windows close, no label is made (for a worker that learns none: returns [])."""
        out: list[Label] = []
        self._closed_until = max(self._closed_until, watermark)
        early, wait_s = self._early, self.config.window_s + self.config.grace_s
        while early and next(iter(early.values()))[0] + wait_s <= watermark:
            early.popitem(last=False)  # any exposure it could belong to would now be refused as closed
        waiting = self._waiting
        while waiting:
            decision_id, w = next(iter(waiting.items()))
            if w.ts + wait_s > watermark:
                break
            del waiting[decision_id]
            if labelled:
                out.append(Label("propensity", array("f", w.x), 1.0 if w.converted else 0.0, w.ts + wait_s,
                                 w.action))
        return out
