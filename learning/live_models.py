"""The River models in the running engine: who learns what, and the scores every worker decides with.

One worker trains, every worker scores with the same published version:

- **Training** (``training = True``) happens only on the worker that holds the snapshot lease (the one that
  writes snapshots). River learns one sample at a time in pure Python (~25-50 µs a sample, see
  load_tests/bench_models.py); having every worker learn every sample would multiply that cost by the
  number of workers and let their models drift apart (SGD depends on order). Training runs in small
  chunks (``train(n)``) from a bounded queue, so a burst of labels never blocks decisions for long.
- **Scoring** uses a :class:`LiveScorer`: the compiled numpy copy of the models (models/compiled.py) plus
  which models have learned enough to be shown. The trainer compiles one each time it writes a snapshot
  and publishes it; the other workers load it within a second. Every worker, the trainer included,
  decides with the published version only, so the same request gets the same scores on any worker.
- **Labels**: propensity and value come from the learning topic through :class:`learning.label_join.LabelJoin`
  (every worker runs the join, which is cheap, so a worker that takes over training has the waiting
  exposures at hand). A propensity label, 1 or 0 alike, comes when its exposure's window closes (the
  learning watermark, the slowest live worker's progress, passes ``ts + window_s + grace_s``), so a fresh
  model shows no propensity before ``min_samples`` exposures' windows have closed, and learns positives and
  negatives at the same delay (no positive-only start); a value label comes with the conversion. Churn needs
  per-customer activity, which only the partition owner sees: it runs a :class:`models.churn.ChurnLabeler`
  keyed by a digest of the user id (never the id), with the compact context vector as features, and hands
  resolved labels (without any id) to the trainer through ``take_churn_labels`` / ``add_churn_labels`` (the
  app ships them through Redis).
- **Layout**: a scorer reads context vectors laid out as ``CompiledScorer.names``. ``use`` refuses a published
  scorer whose names are not this worker's ``features.context.CONTEXT_NAMES`` (a rolling deploy that adds,
  removes or reorders a feature: scored as it is, it would put wrong numbers, or an error, into every
  decision); the worker keeps the scorer it had, logs why once per version and counts it. A scorer that still
  fails while scoring leaves the request decided without model scores (counted, logged once per version),
  as if no model were ready.

Nothing here does I/O; ``streams/app.py`` moves the bytes.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from contracts.decisions import LearningSample
from features.context import CONTEXT_DIM, CONTEXT_NAMES
from learning.label_join import JoinConfig, Label, LabelJoin
from models.churn import ChurnLabel, ChurnLabeler
from models.compiled import CompiledScorer
from models.inputs import model_features
from models.registry import ModelSample, ModelSet

log = logging.getLogger(__name__)
MODEL_NAMES = ("propensity", "churn", "value")
SCORE_DIGITS = 4
_HASH_SPACE = float(1 << 64)
_F32 = np.dtype(np.float32)  # positional dtype: numpy parses keywords slowly
CHURN_CHUNK = 1_000  # churn labels per shipped chunk (one entry of the Redis list) at most


def churn_chunk_bytes(dim: int = CONTEXT_DIM, labels: int = CHURN_CHUNK) -> int:
    """Most bytes an encoded chunk of ``labels`` churn labels takes: per label the base64 of ``dim`` float32
    and at most 40 more (churned, ts, JSON punctuation); 148,002 for 1,000 labels of 20 features."""
    return 2 + labels * (4 * math.ceil(4 * dim / 3) + 40)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """How the engine runs its River models (see the module docstring)."""

    enabled: bool = True
    join: JoinConfig = JoinConfig()
    churn_horizon_s: float = 14 * 86400.0  # silent this long after an activity = churned
    churn_sample_every_s: float = 86400.0  # a busy customer yields about one "stayed" label per this long
    churn_capacity: int = 200_000  # customers watched per worker at most (oldest dropped, counted)
    churn_share: float = 1.0  # share of customers watched for churn (stable hash of the user digest)
    min_samples: int = 100  # a model's score is shown once it learned this many samples
    train_backlog: int = 50_000  # labels waiting for the trainer at most (newest dropped, counted)
    churn_outbox: int = 50_000  # churn labels waiting to be shipped to the trainer at most

    def __post_init__(self) -> None:
        if not 0.0 < self.churn_share <= 1.0:
            raise ValueError(f"churn_share must be in (0, 1], got {self.churn_share}")
        if self.min_samples < 0 or self.train_backlog < 1 or self.churn_outbox < 1:
            raise ValueError("min_samples must be >= 0, train_backlog and churn_outbox >= 1")


@dataclass(frozen=True, slots=True)
class LiveScorer:
    """A published, frozen scorer: the compiled models plus the models whose scores may be shown."""

    compiled: CompiledScorer
    ready: frozenset[str]  # model names with at least ModelConfig.min_samples samples

    @property
    def version(self) -> int:
        return self.compiled.version

    def score(self, x: np.ndarray | Sequence[float], actions: Sequence[str]) -> dict[str, float]:
        """Named scores of the ready models: ``churn_risk``, ``value``, ``propensity:<action>``."""
        if not self.ready:
            return {}
        return self._shown(self.compiled.score(np.asarray(x, dtype=float), self._scored(actions)))

    def score_logits(self, z: Sequence[float], actions: Sequence[str]) -> dict[str, float]:
        """``score`` from the customer's row of ``compiled.logits`` (a batch's contexts, scored at once)."""
        if not self.ready:
            return {}
        return self._shown(self.compiled.from_logits(z, self._scored(actions)))

    def _scored(self, actions: Sequence[str]) -> Sequence[str]:
        return actions if "propensity" in self.ready else ()

    def _shown(self, raw: dict[str, float]) -> dict[str, float]:
        """Only the ready models' scores."""
        if "churn" not in self.ready:
            del raw["churn_risk"]
        if "value" not in self.ready:
            del raw["value"]
        return raw

    def to_json(self) -> bytes:
        return orjson.dumps({"ready": sorted(self.ready), "compiled": orjson.Fragment(self.compiled.to_json())})

    @classmethod
    def from_json(cls, raw: bytes) -> LiveScorer:
        doc = orjson.loads(raw)
        return cls(CompiledScorer.from_json(orjson.dumps(doc["compiled"])), frozenset(doc["ready"]))


def rounded(scores: Mapping[str, float]) -> dict[str, float]:
    return {k: round(v, SCORE_DIGITS) for k, v in scores.items()}


def encode_churn_labels(labels: Iterable[ChurnLabel]) -> bytes:
    """Churn labels for the trainer, without any user id: ``[[x float32 base64, churned, ts], ...]``."""
    return orjson.dumps([[base64.b64encode(lb.features).decode("ascii"), lb.churned, lb.labelled_ts]
                         for lb in labels])


def decode_churn_labels(raw: bytes) -> list[Label]:
    return [Label("churn", np.frombuffer(base64.b64decode(x64), dtype=np.float32).tolist(), float(y), float(ts))
            for x64, y, ts in orjson.loads(raw)]


def layout_difference(names: Sequence[str], ours: Sequence[str]) -> str:
    """How a scorer's input names differ from this worker's, for a log line."""
    if len(names) != len(ours):
        extra, missing = [n for n in names if n not in ours], [n for n in ours if n not in names]
        return f"{len(names)} inputs against {len(ours)} here (it has {extra[:5]}, lacks {missing[:5]})"
    at = next(i for i, (a, b) in enumerate(zip(names, ours, strict=True)) if a != b)
    return f"the same width ({len(ours)}) laid out otherwise (input {at} is {names[at]!r} there, {ours[at]!r} here)"


def _watched(digest: str, share: float) -> bool:
    return share >= 1.0 or int(digest[:16], 16) / _HASH_SPACE < share


class LiveModels:
    def __init__(self, config: ModelConfig, click_reward: float, value_scale: float,
                 models: ModelSet | None = None) -> None:
        self.config = config
        self.click_reward = click_reward
        self.value_scale = value_scale
        self._models = models if models is not None else ModelSet()
        self._join = LabelJoin(config.join, click_reward, value_scale)
        self._churn = ChurnLabeler(config.churn_horizon_s, config.churn_sample_every_s, config.churn_capacity)
        self._churn_outbox: list[ChurnLabel] = []
        self._backlog: deque[Label] = deque()
        self._dropped = {"join_full": 0, "churn_full": 0, "train_backlog": 0, "churn_outbox": 0, "rebalance": 0}
        self._training = False
        self._scorer: LiveScorer | None = None
        self._scorer_errors = {"layout": 0, "score": 0}  # published scorers refused; requests scored without
        self._logged: dict[str, int | None] = {"layout": None, "score": None}  # scorer version last logged
        self._exported: dict[str, int] = {}  # metric key -> total already exported
        self._quality_exported: set[tuple[str, str]] = set()  # (model, metric) children of cadence_model_metric
        self._baseline()

    def _baseline(self) -> None:
        """Samples and drifts of restored models were counted by the process that learned them."""
        for name, n in self._models.samples().items():
            self._exported[f"samples:{name}"] = n
        for name, n in self._models.drifts().items():
            self._exported[f"drifts:{name}"] = n

    # -- state -----------------------------------------------------------------------------------
    @property
    def models(self) -> ModelSet:
        """The River models (learning happens here on the training worker)."""
        return self._models

    @property
    def scorer(self) -> LiveScorer | None:
        """The published scorer decisions use (None until one is published or loaded)."""
        return self._scorer

    @property
    def training(self) -> bool:
        return self._training

    @training.setter
    def training(self, value: bool) -> None:
        if value != self._training:
            log.warning("models: this worker %s training", "starts" if value else "stops")
            if not value:
                self._backlog.clear()
        self._training = value

    def replace(self, models: ModelSet) -> LiveScorer:
        """Models restored from a snapshot (start, takeover, rollback): learn from them and score with them."""
        self._models = models
        self._backlog.clear()
        self._baseline()
        return self.publish()

    def publish(self) -> LiveScorer:
        """Compile the current models into the scorer this worker uses; return it for the other workers."""
        counts = self._models.samples()
        ready = frozenset(name for name in MODEL_NAMES if counts[name] >= max(1, self.config.min_samples))
        self._scorer = LiveScorer(self._models.compile(), ready)
        return self._scorer

    @property
    def refused_scorer(self) -> int | None:
        """The version of the last published scorer ``use`` refused (not fetched again)."""
        return self._logged["layout"]

    def use(self, scorer: LiveScorer) -> None:
        """A scorer another worker published; refused (kept the current one, logged, counted) when its input
        layout is not this worker's context vector."""
        names = scorer.compiled.names
        if names == CONTEXT_NAMES:
            self._scorer = scorer
            return
        if self._logged["layout"] == scorer.version:
            return  # the exchange offers it again every second: refused already
        self._logged["layout"] = scorer.version
        self._scorer_errors["layout"] += 1
        current = self._scorer
        log.error(
            "models: refused the published scorer version %d: its input layout is not this worker's context "
            "(features.context.CONTEXT_NAMES): %s. It was compiled by a worker running other feature code; "
            "this worker keeps %s. Finish the rolling deploy so that every worker, the snapshot leader that "
            "publishes scorers included, runs the same version; the next scorer it publishes is loaded.",
            scorer.version, layout_difference(names, CONTEXT_NAMES),
            f"scorer version {current.version}" if current is not None else "deciding without model scores")

    def scores(self, scorer: LiveScorer, x: np.ndarray | Sequence[float], actions: Sequence[str],
               logits: Sequence[float] | None = None) -> dict[str, float]:
        """``scorer``'s scores of ``x`` (or of its row of a batch's ``logits``); {} when the scorer fails, so
        the request is decided without model scores rather than not at all (counted, logged once per version)."""
        try:
            return scorer.score(x, actions) if logits is None else scorer.score_logits(logits, actions)
        except Exception as exc:
            self._scorer_errors["score"] += 1
            if self._logged["score"] != scorer.version:
                self._logged["score"] = scorer.version
                log.error("models: scorer version %d failed (%s: %s); requests are decided without model scores "
                          "until a scorer that works is published (cadence_model_scorer_errors_total{reason="
                          "\"score\"} counts them)", scorer.version, type(exc).__name__, exc)
            return {}

    def stats(self) -> dict[str, Any]:
        return {"waiting_exposures": len(self._join), "watched_customers": len(self._churn),
                "backlog": len(self._backlog), "churn_outbox": len(self._churn_outbox),
                "dropped": {**self._dropped, "join_full": self._join.dropped, "window_closed": self._join.closed,
                            "churn_full": self._churn.evicted},
                "scorer_errors": dict(self._scorer_errors)}

    # -- labels ----------------------------------------------------------------------------------
    def learn(self, samples: Iterable[LearningSample], watermark: float) -> None:
        """Learning-topic samples in stream order (every worker); labels are queued on the trainer."""
        labels = self._join.add(samples)
        labels += self._join.advance(watermark, labelled=self._training)  # labels only a trainer queues
        if self._training and labels:
            self._queue(labels)

    def observe(self, digest: str, ts: float, x: np.ndarray) -> None:
        """An activity of a customer this worker owns, with the context vector of that moment. The customer
        is named by their keyed digest (``features.keys.UserDigest``, hex), never the id: ``forget`` drops
        an erased customer by the same digest."""
        share = self.config.churn_share
        if share < 1.0 and not _watched(digest, share):
            return
        # astype with a positional dtype: a third of np.asarray(x, dtype=np.float32)'s time, the same bytes
        x32 = x.astype(_F32) if isinstance(x, np.ndarray) else np.asarray(x, _F32)
        labels = self._churn.observe(digest, ts, x32.tobytes())
        if labels:
            self._outbox(labels)

    def advance_activity(self, watermark: float) -> None:
        """Customers silent for longer than the horizon at event time ``watermark`` are labelled churned."""
        if len(self._churn):
            self._outbox(self._churn.advance(watermark))

    def _outbox(self, labels: list[ChurnLabel]) -> None:
        if labels:
            room = self.config.churn_outbox - len(self._churn_outbox)
            self._churn_outbox.extend(labels[:max(room, 0)])
            self._dropped["churn_outbox"] += max(0, len(labels) - max(room, 0))

    def take_churn_labels(self) -> list[bytes] | None:
        """Resolved churn labels to ship to the trainer (encoded, without ids) in chunks of at most
        ``CHURN_CHUNK`` labels (``churn_chunk_bytes()`` each, an entry of the Redis list); None when none."""
        if not self._churn_outbox:
            return None
        labels, self._churn_outbox = self._churn_outbox, []
        return [encode_churn_labels(labels[i:i + CHURN_CHUNK]) for i in range(0, len(labels), CHURN_CHUNK)]

    def add_churn_labels(self, encoded: Iterable[bytes]) -> None:
        """Churn labels shipped by the partition owners (the trainer calls this)."""
        if self._training:
            for raw in encoded:
                self._queue(decode_churn_labels(raw))

    def forget(self, digests: Iterable[str]) -> None:
        """Erased customers: drop their open churn snapshots."""
        for digest in digests:
            self._churn.forget(digest)

    def reset_activity(self) -> None:
        """Partitions moved: customers this worker watched may now be another's; drop their snapshots."""
        self._dropped["rebalance"] += self._churn.clear()

    def _queue(self, labels: list[Label]) -> None:
        room = self.config.train_backlog - len(self._backlog)
        self._backlog.extend(labels[:max(room, 0)])
        self._dropped["train_backlog"] += max(0, len(labels) - max(room, 0))

    # -- training ----------------------------------------------------------------------------------
    def train(self, max_labels: int = 256) -> int:
        """Learn up to ``max_labels`` queued labels (progressive validation first); returns how many."""
        n = 0
        models, backlog = self._models, self._backlog
        drifts_before = models.drifts()
        while backlog and n < max_labels:
            lb = backlog.popleft()
            try:
                features = model_features(lb.x)
                if lb.model == "propensity":
                    sample = ModelSample.conversion(features, lb.action or "", int(lb.target), lb.ts)
                elif lb.model == "value":
                    sample = ModelSample.revenue(features, lb.target, lb.ts)
                else:
                    sample = ModelSample.churn(features, int(lb.target), lb.ts)
                models.learn_one(sample)
            except ValueError as exc:  # e.g. a context of another size from an older engine
                log.error("model label skipped (%s): %s", lb.model, exc)
            n += 1
        if n:
            for name, count in models.drifts().items():
                if count > drifts_before[name]:
                    log.warning("models: %s error went up (drift %d detected by ADWIN)", name, count)
        return n

    # -- scores ------------------------------------------------------------------------------------
    def profile_scores(self, x: np.ndarray, actions: Sequence[str]) -> dict[str, Any]:
        """Scores of one customer for CRM/sales tools: churn_risk, value and propensity per action."""
        scorer = self._scorer
        if scorer is None:
            return {"model_version": None}
        raw = self.scores(scorer, x, actions)
        out: dict[str, Any] = {"model_version": scorer.version}
        for key in ("churn_risk", "value"):
            if key in raw:
                out[key] = round(raw[key], SCORE_DIGITS)
        propensity = {a: round(raw[f"propensity:{a}"], SCORE_DIGITS) for a in actions if f"propensity:{a}" in raw}
        if propensity:
            out["propensity"] = propensity
        return out

    # -- metrics -----------------------------------------------------------------------------------
    def export(self, metrics: Any) -> None:
        """Set the Prometheus metrics (``cadence.metrics.Metrics``); call it about once a second.

        Progressive metrics, samples and drifts come from the trainer only (the others learn nothing);
        counters move by what changed since the last call, so a restored model set never moves them back.
        A worker that stops training removes its model metrics: another worker's models are the live ones.
        """
        scorer = self._scorer
        metrics.model_version.set(scorer.version if scorer is not None else 0)
        stats = self.stats()
        for kind in ("waiting_exposures", "watched_customers", "backlog", "churn_outbox"):
            metrics.model_labels_waiting.labels(kind).set(stats[kind])
        last = self._exported
        for reason, n in stats["dropped"].items():
            self._inc(metrics.model_labels_dropped.labels(reason), last, f"dropped:{reason}", n)
        for reason, n in stats["scorer_errors"].items():
            self._inc(metrics.model_scorer_errors.labels(reason), last, f"scorer_errors:{reason}", n)
        quality: set[tuple[str, str]] = set()
        for name, values in self._models.metrics().items() if self._training else ():
            if not values["samples"]:
                continue  # no metric means "nothing learned yet", not a perfect 0
            for metric in ("log_loss", "roc_auc", "mae", "error_window_mean"):
                value = values.get(metric)
                if value is not None:
                    metrics.model_metric.labels(name, metric).set(value)
                    quality.add((name, metric))
            self._inc(metrics.model_samples.labels(name), last, f"samples:{name}", values["samples"])
            self._inc(metrics.model_drifts.labels(name), last, f"drifts:{name}", values["drifts"])
        for stale in self._quality_exported - quality:  # not training any more, or a metric gone (replaced)
            with contextlib.suppress(KeyError):  # already gone
                metrics.model_metric.remove(*stale)
        self._quality_exported = quality

    @staticmethod
    def _inc(counter: Any, last: dict[str, int], key: str, total: int) -> None:
        delta = total - last.get(key, 0)
        if delta > 0:
            counter.inc(delta)
        last[key] = total
