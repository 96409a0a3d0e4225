"""Output records: decisions, dead letters and learning samples, with their JSON encodings."""

from __future__ import annotations

import base64
import functools
import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import orjson


class Mode(StrEnum):
    """How a decision's action was chosen."""

    EXPLORE = "explore"  # the policy chose an action that is not its current best
    EXPLOIT = "exploit"  # the policy's best action
    STICKY = "sticky"  # the incumbent was kept by the change rate limit
    HOLDOUT = "holdout"  # control group: default action
    PINNED = "pinned"  # a human lever forced the action
    FALLBACK = "fallback"  # default action: kill switch, no consent, store unavailable, nothing eligible
    SUPPRESSED = "suppressed"  # a contact cap stopped any action


@dataclass(slots=True)
class Decision:
    decision_id: str
    request_event_id: str
    user_id: str
    ts: float
    channel: str
    placement: str
    action: str
    probability: float
    mode: Mode
    policy: str
    policy_version: int
    trace: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        # ``mode`` goes in as the StrEnum itself: orjson writes a str subclass as its text, the mode's value,
        # without the ~0.1 us of ``Enum.value`` (a property)
        return orjson.dumps(
            {
                "decision_id": self.decision_id,
                "request_event_id": self.request_event_id,
                "user_id": self.user_id,
                "ts": self.ts,
                "channel": self.channel,
                "placement": self.placement,
                "action": self.action,
                "probability": self.probability,
                "mode": self.mode,
                "policy": self.policy,
                "policy_version": self.policy_version,
                "trace": self.trace,
            }
        )


LIFT_BUCKETS = 1024  # the lift's clusters of users (engine/lift.py)


@functools.lru_cache(maxsize=1 << 16)  # a worker sees the same active users again and again
def user_bucket(user_id: str) -> int:
    """Which of ``LIFT_BUCKETS`` buckets of users the user is in (blake2b: the same on every worker), for the
    lift's clusters. Learning samples carry this, never the user: a bucket holds a thousandth of all users,
    so it identifies no one, where a stable per-user hash would be a pseudonym of the person."""
    return int.from_bytes(hashlib.blake2b(user_id.encode(), digest_size=4).digest(), "big") % LIFT_BUCKETS


# An empty blake2b of the decision id's size: a copy of it, updated, gives the same digest as a new
# blake2b(data, digest_size=12), ~0.1 us sooner (no keyword parsing and parameter block set up per call)
_DECISION_ID_HASH = hashlib.blake2b(digest_size=12)


def decision_id_for(request_event_id: str, placement: str) -> str:
    """Deterministic id: a replayed request yields the same decision id, so consumers can de-duplicate."""
    digest = _DECISION_ID_HASH.copy()
    digest.update(f"{request_event_id}|{placement}".encode())
    return digest.hexdigest()


DEAD_LETTER_RAW_MAX = 131_072  # bytes of the raw input a dead letter keeps (base64: 171 KiB, well under 1 MiB)


@dataclass(slots=True)
class DeadLetter:
    source_topic: str
    partition: int
    offset: int
    reason_code: str
    reason: str
    raw: bytes

    def to_json(self) -> bytes:
        """The dead-letter record. The raw input is kept up to ``DEAD_LETTER_RAW_MAX`` bytes: a larger one (a
        ``too_large`` event near the broker's own limit) would make a record the broker refuses, and the
        batch would then be read again and again, stalling its partitions."""
        preview = self.raw[:512].decode("utf-8", errors="replace")
        doc = {
            "source_topic": self.source_topic,
            "partition": self.partition,
            "offset": self.offset,
            "reason_code": self.reason_code,
            "reason": self.reason,
            "raw_b64": base64.b64encode(self.raw[:DEAD_LETTER_RAW_MAX]).decode("ascii"),
            "raw_preview": preview,
        }
        if len(self.raw) > DEAD_LETTER_RAW_MAX:
            doc["raw_bytes"], doc["raw_truncated"] = len(self.raw), True
        return orjson.dumps(doc)


@dataclass(slots=True)
class LearningSample:
    """One additive update for the policies: an exposure (action shown in context x) or a reward for it.

    Linear statistics are additive, so an exposure adds x xᵀ and a later reward adds r·x: the result is
    the same as one update with the final reward, whenever (and on whichever worker) the reward arrives.
    """

    kind: str  # "exposure" or "reward"
    decision_id: str
    action: str
    x: list[float] | np.ndarray  # the context; a row of the batch's matrix when decoded from format 2
    reward: float = 0.0
    probability: float = 1.0
    placement: str = ""
    ts: float = 0.0
    # the decision's mode; "holdout" samples measure the control group only (a lift-only exposure of a control
    # user says "holdout" whatever its decision's mode, e.g. suppressed: engine.decide.lift_only_exposure)
    mode: str = "exploit"
    reward_type: str = ""  # "click" or "conversion" for rewards
    # exposures the bandit drew (explore/exploit): the actions it chose among, for off-policy evaluation
    eligible: list[str] | None = None
    # ``user_bucket(user_id)``: the holdout randomises users, so the lift's interval clusters by user (None in
    # samples from engines before it was sent)
    user_bucket: int | None = None

    @property
    def key(self) -> str:
        """Identifies the sample: a decision has one exposure and one reward per reward type."""
        return f"{self.decision_id}:{self.kind}:{self.reward_type}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "decision_id": self.decision_id,
            "action": self.action,
            "x": self.x,
            "reward": self.reward,
            "probability": self.probability,
            "placement": self.placement,
            "ts": self.ts,
            "mode": self.mode,
            "reward_type": self.reward_type,
            "eligible": self.eligible,
            **({"user_bucket": self.user_bucket} if self.user_bucket is not None else {}),
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY)

    @classmethod
    def from_json(cls, raw: bytes) -> LearningSample:
        return cls(**orjson.loads(raw))


_COLUMNS = ("kind", "decision_id", "action", "reward", "probability", "placement", "ts", "mode", "reward_type")
_OPTIONAL = ("eligible", "user_bucket")  # columns sent only when a sample of the batch has one (None otherwise)


def encode_samples(samples: list[LearningSample], source: str = "", progress: float | None = None) -> bytes:
    """One learning-topic message for a batch of samples, in columns (format 2)::

        {"v": 2, "n": N, "dim": D, "kind": [...], "decision_id": [...], ... one list per field ...,
         "x": "<base64 of the N x D contexts, float64 little-endian, row by row>",
         "src": "<the producing worker>", "wm": <its event-time watermark when it sent the batch>}

    Columns and one binary matrix cost a fraction of one JSON object per sample with its own list of
    floats (encode and decode), and the learner gets the contexts as one array. Samples whose contexts
    differ in length (an engine with another context size) fall back to format 1: ``{"samples": [...]}``
    (with ``src`` and ``wm`` too). ``src``/``wm`` are left out when ``source`` is empty or ``progress`` is
    None: the reader then takes the batch's largest ``ts`` as an anonymous producer's progress
    (learning.source_progress says what the progress is for). ``eligible`` and ``user_bucket`` are columns only
    when a sample of the batch has one.
    """
    try:
        xs = np.asarray([s.x for s in samples], dtype="<f8")
    except ValueError:
        xs = None
    doc: dict[str, Any]
    if xs is None or xs.ndim != 2:
        doc = {"samples": [s.to_dict() for s in samples]}
    else:
        doc = {"v": 2, "n": len(samples), "dim": xs.shape[1]}
        for name in _COLUMNS:
            doc[name] = [getattr(s, name) for s in samples]
        for name in _OPTIONAL:  # optional columns: older readers ignore them
            if any(getattr(s, name) is not None for s in samples):
                doc[name] = [getattr(s, name) for s in samples]
        doc["x"] = base64.b64encode(xs.tobytes()).decode("ascii")
    if source and progress is not None:
        doc["src"], doc["wm"] = source, float(progress)
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_idle(source: str, progress: float) -> bytes:
    """A worker that holds nothing back says so: no samples, ``"idle": true``. It sends this when it stops
    cleanly, and when it is caught up with its input but has sent no samples for a while (its next samples
    come from new events, at the stream's current time, not from a backlog)."""
    return orjson.dumps({"samples": [], "src": source, "wm": float(progress), "idle": True})


@dataclass(slots=True)
class LearningBatch:
    """One learning-topic message: its samples and who sent them, how far in event time it had got."""

    samples: list[LearningSample]
    source: str = ""  # "" for a message without a producer (older engines, tools): see ``progress``
    progress: float | None = None  # the producer's event-time watermark; None when the message has none
    idle: bool = False  # the producer holds nothing back: it stopped, or it is caught up and quiet

    @property
    def reported(self) -> tuple[str, float] | None:
        """(producer, progress) as the label join should count it; an anonymous batch reports its largest ts."""
        if self.progress is not None:
            return self.source, self.progress
        if self.samples:
            return "", max(s.ts for s in self.samples)
        return None


def sample_dicts(doc: Any) -> list[dict[str, Any]]:
    """The samples of a decoded learning-topic message as dicts (any format; ``x`` as a list of floats)."""
    if isinstance(doc, dict) and doc.get("v") == 2:
        n, dim = int(doc["n"]), int(doc["dim"])
        xs = np.frombuffer(base64.b64decode(doc["x"]), dtype="<f8").reshape(n, dim)
        cols = [doc[name] for name in _COLUMNS]
        eligible, users = (doc.get(name) or [None] * n for name in _OPTIONAL)
        return [{**dict(zip(_COLUMNS, row, strict=True)), "x": x.tolist(), "eligible": e, "user_bucket": u}
                for *row, x, e, u in zip(*cols, xs, eligible, users, strict=True)]
    return doc["samples"] if isinstance(doc, dict) and "samples" in doc else [doc]


def decode_samples(raw: bytes) -> list[LearningSample]:
    """The samples of one learning-topic message (format 2 columns, a format-1 batch, or a single sample)."""
    return decode_batch(raw).samples


def decode_batch(raw: bytes) -> LearningBatch:
    """One learning-topic message: its samples (any format) and its producer's progress, if it has one."""
    doc = orjson.loads(raw)
    if isinstance(doc, dict) and doc.get("v") == 2:
        n, dim = int(doc["n"]), int(doc["dim"])
        xs = np.frombuffer(base64.b64decode(doc["x"]), dtype="<f8").reshape(n, dim)
        kinds, ids, actions, rewards, probs, places, times, modes, types = (doc[name] for name in _COLUMNS)
        eligible, users = (doc.get(name) or [None] * n for name in _OPTIONAL)
        samples = [
            LearningSample(kinds[i], ids[i], actions[i], xs[i], rewards[i], probs[i], places[i], times[i], modes[i],
                           types[i], eligible[i], users[i])
            for i in range(n)
        ]
    else:
        docs = doc["samples"] if isinstance(doc, dict) and "samples" in doc else [doc]
        samples = [LearningSample(**d) for d in docs]
    if isinstance(doc, dict) and isinstance(doc.get("src"), str) and doc["src"] and "wm" in doc:
        return LearningBatch(samples, doc["src"], float(doc["wm"]), doc.get("idle") is True)
    return LearningBatch(samples)
