"""The decision log OPE works on, and readers for the engine's ``learning`` topic.

The engine writes two kinds of ``LearningSample`` (contracts/decisions.py) to the ``learning`` topic:
an *exposure* when a learned decision is made (context ``x``, action, selection probability, placement)
and a *reward* each time a click or conversion is credited to it. A logged decision is one exposure plus
the sum of its rewards (0 when none arrived). A message holds one sample or a batch ``{"samples": [...]}``.
The topic is delivered at least once, so exact repeats are dropped: exposures by ``decision_id``,
rewards by (decision_id, action, reward, ts).

Only decisions the bandit drew (mode explore or exploit) are evaluated; the rest are counted. Among them,
a placement with stickiness rules logs "exploit" with probability 1 (its action is settled from the bandit's
statistics and the user's incumbent, not drawn): those are left out and counted too. Elsewhere probability
1 among several actions comes from a bandit without a uniform draw (ε = 0), where an arbitration override
(policy/arbitration.py) or the bandit itself gives the other actions probability 0, or from an engine before
the uniform draw was kept from overrides: a real property of the logging policy, so those decisions are
kept (and ``support_warning`` flags a candidate choosing the actions they could not show; it also sees,
from the importance weights, actions such logs gave probability 0 behind a shown action logged with p < 1).
A sample does not carry the eligible set of its request, so it is taken from the catalogue: where levers
or per-action caps narrowed it, a candidate may be credited with actions that were not available then.

Samples are read as plain JSON objects rather than through ``LearningSample.from_json`` because that
dataclass defaults a missing ``probability`` to 1.0, which would hide a log that cannot be weighted.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from contracts.decisions import sample_dicts
from policy.catalogue import NO_ACTION, Catalogue

MAX_PROBLEMS_LISTED = 5
# Modes in which the bandit (with arbitration) drew the action with the logged probability. Holdout,
# pinned, fallback, suppressed and sticky decisions log probability 1.0 and were not the bandit's choice
# (policy/pipeline.py), so a candidate meant to replace the bandit is not scored on them.
RANDOMISED_MODES = ("explore", "exploit")


@dataclass(frozen=True, slots=True)
class LoggedDecision:
    """One learned decision as the log saw it: what was shown, how likely it was, what it earned."""

    decision_id: str
    x: np.ndarray
    action: str
    probability: float | None  # selection probability of ``action``; None when the log did not carry one
    reward: float
    placement: str
    eligible: tuple[str, ...]  # actions the policy could choose from for this placement
    ts: float


@dataclass(slots=True)
class JoinReport:
    """What joining exposures and rewards found, so a person can judge the log before trusting it."""

    exposures: int = 0
    rewards: int = 0
    duplicate_exposures: int = 0
    duplicate_rewards: int = 0
    orphan_rewards: int = 0  # rewards whose exposure is not in the log
    lift_only_rewards: int = 0  # rewards the lift alone counts (action "none"): no decision's, left out
    excluded_modes: dict[str, int] = field(default_factory=dict)  # decisions left out, by mode
    unknown_placements: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # unreadable or invalid records, with their place
    static_eligible: int = 0  # decisions without their logged eligible set (older logs): the catalogue's static set
    # left out: exploit logged with probability 1 among several eligible actions on a placement with stickiness
    # rules (chosen without the bandit's draw)
    deterministic: int = 0
    # left out: the same on a placement the catalogue does not know (stickiness or override cannot be told)
    undetermined: int = 0
    # kept: logged with probability 1 among several eligible actions on a placement without stickiness rules
    # (the bandit has no uniform draw, or an older engine's arbitration overrode it)
    overrides: int = 0
    deterministic_placements: dict[str, int] = field(default_factory=dict)  # ``deterministic`` by placement
    modes: list[str] = field(default_factory=list)  # the modes evaluated (``join_samples``'s ``modes``)
    # the catalogue's placements without stickiness rules: where the bandit draws every decision at random
    drawn_placements: list[str] = field(default_factory=list)

    def notes(self) -> list[str]:
        out = []
        if self.duplicate_exposures or self.duplicate_rewards:
            out.append(
                f"dropped {self.duplicate_exposures} repeated exposures and {self.duplicate_rewards} "
                "repeated rewards (the topic is delivered at least once)"
            )
        if self.orphan_rewards:
            out.append(
                f"{self.orphan_rewards} rewards have no exposure in the log and were ignored; "
                "export the topic from its beginning to keep them"
            )
        if self.lift_only_rewards and not self.rewards:
            # beside decisions' rewards they need no word (the lift's own, as the engine means them); alone
            # they explain why no decision earned anything
            out.append(
                f"all {self.lift_only_rewards} rewards read are lift-only (action 'none': the holdout lift's "
                "count of a user's conversions, credited to no decision), so no decision earned a reward in this "
                "log (a decision's clicks and conversions come as rewards with its own action)"
            )
        if self.excluded_modes:
            counts = ", ".join(f"{m}: {k}" for m, k in sorted(self.excluded_modes.items()))
            out.append(
                f"left out {sum(self.excluded_modes.values())} decisions the bandit did not draw ({counts}); "
                "OPE scores a candidate in the bandit's place, on the decisions the bandit made"
            )
        if self.deterministic:
            out.append(
                f"left out {self.deterministic} exploit decisions of placements with stickiness rules (logged with "
                "probability 1 among several eligible actions: the engine settles them from the user's incumbent "
                "without the bandit's draw): OPE can only reweigh random draws"
            )
        if self.undetermined:
            out.append(
                f"left out {self.undetermined} decisions logged with probability 1 among several eligible actions "
                "on placements the catalogue does not know: whether stickiness or an arbitration override chose "
                "them cannot be told; pass the catalogue the engine ran with"
            )
        if self.overrides:
            out.append(
                f"kept {self.overrides} decisions logged with probability 1 among several eligible actions on "
                "placements without stickiness rules (the bandit has no uniform exploration draw, or an older engine "
                "let arbitration override it): the other actions had probability 0 in them, so a "
                "candidate choosing those is not covered there (support warning)"
            )
        if self.static_eligible:
            out.append(
                f"{self.static_eligible} decisions carry no eligible set (logged by an older engine): they use the "
                "catalogue's actions of the placement without dates, segments or score gates, which can bias "
                "the estimates; a log from this version avoids it"
            )
        if self.unknown_placements:
            out.append(
                f"placements {sorted(self.unknown_placements)} are not in the catalogue: their eligible "
                "actions were taken from the log itself; pass the catalogue the engine ran with"
            )
        if self.problems:
            shown = "; ".join(self.problems[:MAX_PROBLEMS_LISTED])
            more = (
                f" (and {len(self.problems) - MAX_PROBLEMS_LISTED} more)"
                if len(self.problems) > MAX_PROBLEMS_LISTED
                else ""
            )
            out.append(f"skipped {len(self.problems)} unusable records: {shown}{more}")
        return out

    def why_empty(self) -> str:
        """Why no decision is left to evaluate, and what to do: every exposure read was left out (by mode,
        as a sticky placement's settled exploit, …), or none was read at all."""
        if not self.exposures:
            read = (
                f"; {len(self.problems)} records could not be used (first: {self.problems[0]})" if self.problems else ""
            )
            return (
                "the decision log is empty: it holds no exposure records, so there is nothing to evaluate"
                f"{read}; check that the file or topic is the engine's learning topic and that the engine made "
                "learned decisions (fallbacks are not logged)"
            )
        why, todo = [], []
        if self.excluded_modes:
            counts = ", ".join(f"{m}: {k:,}" for m, k in sorted(self.excluded_modes.items()))
            why.append(
                f"{sum(self.excluded_modes.values()):,} in modes not evaluated ({counts}; --modes keeps "
                f"{', '.join(self.modes) or 'none'})"
            )
            drawn_left_out = sorted(set(self.excluded_modes) & set(RANDOMISED_MODES))
            if drawn_left_out:
                todo.append(
                    f"--modes leaves out the bandit's own draws ({', '.join(drawn_left_out)}): keep "
                    f"{','.join(RANDOMISED_MODES)} (the default)"
                )
            elif not (self.deterministic or self.undetermined):
                todo.append(
                    "only the bandit's own draws (modes explore, exploit) can be reweighed: holdout, pinned, "
                    "fallback, suppressed and sticky decisions log probability 1 and were not its choice, so "
                    "export a period in which the engine decided (no kill switch or pin covering everything)"
                )
        if self.deterministic:
            where = ", ".join(f"{p}: {k:,}" for p, k in sorted(self.deterministic_placements.items()))
            why.append(
                f"{self.deterministic:,} exploit decisions of placements with stickiness rules ({where}), settled "
                "from the user's incumbent with probability 1: no random draw to reweigh"
            )
            drawn = ", ".join(self.drawn_placements) or "none in this catalogue"
            todo.append(
                f"evaluate on placements without stickiness rules, where the bandit draws ({drawn}), with a log "
                "that holds their decisions; or, for random draws on "
                f"{', '.join(sorted(self.deterministic_placements))}, run the engine with a catalogue without "
                "their [placement.stickiness] table (the limits on changes then no longer apply)"
            )
        if self.undetermined:
            why.append(
                f"{self.undetermined:,} logged with probability 1 among several actions on placements the catalogue "
                "does not know"
            )
            todo.append("pass the catalogue the engine ran with (--catalogue)")
        lost = self.exposures - sum(self.excluded_modes.values()) - self.deterministic - self.undetermined
        if lost > 0 and self.problems:
            why.append(f"{lost:,} unusable (first: {self.problems[0]})")
            todo.append("fix or re-export the records listed")
        return (
            f"no decision is left to evaluate: {self.exposures:,} exposures were read and all were left out: "
            + "; ".join(why)
            + ". What to do: "
            + "; ".join(todo)
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DecisionLog:
    """An ordered (by event time) sequence of logged decisions with column views for the estimators."""

    def __init__(self, decisions: Sequence[LoggedDecision], report: JoinReport | None = None) -> None:
        self.decisions = tuple(sorted(decisions, key=lambda d: (d.ts, d.decision_id)))
        self.report = report if report is not None else JoinReport(exposures=len(self.decisions))

    def __len__(self) -> int:
        return len(self.decisions)

    def __iter__(self) -> Iterator[LoggedDecision]:
        return iter(self.decisions)

    @property
    def x(self) -> np.ndarray:
        if not self.decisions:
            return np.empty((0, 0))
        return np.stack([d.x for d in self.decisions])

    @property
    def actions(self) -> list[str]:
        return [d.action for d in self.decisions]

    @property
    def probabilities(self) -> np.ndarray:
        """Logged probabilities; NaN where the log carried none."""
        return np.array(
            [np.nan if d.probability is None else d.probability for d in self.decisions], dtype=float
        )

    @property
    def rewards(self) -> np.ndarray:
        return np.array([d.reward for d in self.decisions], dtype=float)

    @property
    def last_ts(self) -> float:
        return self.decisions[-1].ts if self.decisions else 0.0

    def actions_taken(self) -> dict[str, set[str]]:
        """Per placement, the actions the log holds at least one decision for."""
        taken: dict[str, set[str]] = defaultdict(set)
        for d in self.decisions:
            taken[d.placement].add(d.action)
        return dict(taken)

    def split(self, fraction: float = 0.5) -> tuple[DecisionLog, DecisionLog]:
        """The earliest ``fraction`` of decisions (by event time) and the rest."""
        if not 0 < fraction < 1:
            raise ValueError(f"split fraction must be strictly between 0 and 1, got {fraction}")
        cut = int(round(len(self.decisions) * fraction))
        return DecisionLog(self.decisions[:cut], self.report), DecisionLog(self.decisions[cut:], self.report)


# -- readers --------------------------------------------------------------------------------------------
def read_jsonl(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Learning samples from a JSON-lines export (one object per line) and what could not be read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such decision log; export the learning topic to a JSON-lines file "
            "(e.g. `cadence topics learning -n 1000000 > log.jsonl`) or pass --bootstrap"
        )
    samples: list[dict[str, Any]] = []
    problems: list[str] = []
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                problems.append(f"{path.name}:{lineno}: not JSON ({exc})")
                continue
            if not isinstance(doc, dict):
                problems.append(f"{path.name}:{lineno}: not a JSON object")
                continue
            samples.extend(_expand(doc, f"{path.name}:{lineno}", problems))
    return samples, problems


def _expand(doc: dict[str, Any], where: str, problems: list[str]) -> list[dict[str, Any]]:
    """A learning-topic message holds one sample, a batch ``{"samples": [...]}`` or a batch in columns."""
    try:
        docs = sample_dicts(doc)
    except (KeyError, TypeError, ValueError) as exc:
        problems.append(f"{where}: a learning batch in columns (format 2) that cannot be read: {exc!r}")
        return []
    out = []
    for i, d in enumerate(docs):
        if isinstance(d, dict):
            d.setdefault("_where", where if len(docs) == 1 else f"{where}#{i}")
            out.append(d)
    return out


def read_topic(bootstrap: str, topic: str, timeout_s: float = 30.0) -> tuple[list[dict[str, Any]], list[str]]:
    """Every sample on ``topic`` from the beginning up to its current end (manual assignment, no group)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        if not parts:
            raise ValueError(
                f"topic {topic!r} does not exist on {bootstrap}; check --topic (and the topic prefix)"
            )
        consumer.assign(parts)
        consumer.seek_to_beginning()
        end = consumer.end_offsets(parts)
        samples: list[dict[str, Any]] = []
        problems: list[str] = []
        deadline = time.monotonic() + timeout_s  # I/O guard only; no event logic uses the wall clock
        while any(consumer.position(tp) < end[tp] for tp in parts):
            if time.monotonic() > deadline:
                problems.append(f"stopped reading {topic!r} after {timeout_s:.0f}s before its end")
                break
            for tp, records in consumer.poll(timeout_ms=500).items():
                for rec in records:
                    try:
                        doc = orjson.loads(rec.value)
                    except orjson.JSONDecodeError as exc:
                        problems.append(f"{tp.topic}[{tp.partition}]@{rec.offset}: not JSON ({exc})")
                        continue
                    if isinstance(doc, dict):
                        samples.extend(_expand(doc, f"{tp.topic}[{tp.partition}]@{rec.offset}", problems))
                    else:
                        problems.append(f"{tp.topic}[{tp.partition}]@{rec.offset}: not a JSON object")
        return samples, problems
    finally:
        consumer.close()


# -- join -----------------------------------------------------------------------------------------------
def _as_doc(sample: dict[str, Any] | Any) -> dict[str, Any]:
    if isinstance(sample, dict):
        return sample
    return {f.name: getattr(sample, f.name) for f in fields(sample)}  # a LearningSample; asdict() deep-copies


def _probability(doc: dict[str, Any]) -> float | None:
    p = doc.get("probability")
    if p is None or isinstance(p, bool) or not isinstance(p, int | float) or not np.isfinite(p):
        return None
    return float(p)


def _invalid(doc: dict[str, Any]) -> str | None:
    if doc.get("kind") not in ("exposure", "reward"):
        return f"field 'kind' must be 'exposure' or 'reward', got {doc.get('kind')!r}"
    for name in ("decision_id", "action"):
        if not isinstance(doc.get(name), str) or not doc[name]:
            return f"field {name!r} must be a non-empty string"
    x = doc.get("x")
    if not isinstance(x, list) or not x or not all(isinstance(v, int | float) for v in x):
        return "field 'x' must be a non-empty list of numbers"
    if doc["kind"] == "reward" and not isinstance(doc.get("reward", 0.0), int | float):
        return "field 'reward' must be a number"
    return None


def join_samples(
    samples: Iterable[dict[str, Any] | Any],
    catalogue: Catalogue | None = None,
    problems: Sequence[str] = (),
    modes: Collection[str] = RANDOMISED_MODES,
) -> DecisionLog:
    """Join exposures and rewards by ``decision_id`` into logged decisions.

    ``samples`` are JSON objects (as read above) or ``LearningSample`` instances. Only decisions whose
    ``mode`` is in ``modes`` are kept (samples without a mode, from older logs, count as kept); the others
    are counted in the report. Eligible actions of a placement come from ``catalogue``; without one (or for
    a placement it does not know) they are the actions the log took for that placement, as noted.
    """
    report = JoinReport(problems=list(problems), modes=list(modes))
    if catalogue is not None:
        report.drawn_placements = sorted(p for p, rules in catalogue.placements.items() if not rules.stickiness.limited)
    excluded: dict[str, str] = {}
    exposures: dict[str, dict[str, Any]] = {}
    rewards: dict[str, float] = defaultdict(float)
    seen_rewards: set[tuple] = set()
    dim: int | None = None
    for raw in samples:
        doc = _as_doc(raw)
        where = doc.get("_where", f"decision {doc.get('decision_id')!r}")
        reason = _invalid(doc)
        if reason is None and dim is not None and len(doc["x"]) != dim:
            reason = f"field 'x' has {len(doc['x'])} values, earlier records have {dim}"
        if reason is not None:
            report.problems.append(f"{where}: {reason}")
            continue
        dim = len(doc["x"])
        if doc["kind"] == "exposure":
            if doc["decision_id"] in exposures or doc["decision_id"] in excluded:
                report.duplicate_exposures += 1
                continue
            report.exposures += 1
            mode = doc.get("mode")
            if mode is not None and mode not in modes:
                excluded[doc["decision_id"]] = mode
                report.excluded_modes[mode] = report.excluded_modes.get(mode, 0) + 1
                continue
            exposures[doc["decision_id"]] = doc
        else:
            if doc["action"] == NO_ACTION:  # a lift-only reward (engine.attribution.lift_only_reward): no decision's
                report.lift_only_rewards += 1
                continue
            key = (
                doc["decision_id"],
                doc["action"],
                float(doc.get("reward", 0.0)),
                float(doc.get("ts", 0.0)),
            )
            if key in seen_rewards:
                report.duplicate_rewards += 1
                continue
            seen_rewards.add(key)
            report.rewards += 1
            rewards[doc["decision_id"]] += float(doc.get("reward", 0.0))
    report.orphan_rewards = sum(1 for k in seen_rewards if k[0] not in exposures and k[0] not in excluded)

    taken: dict[str, set[str]] = defaultdict(set)
    for doc in exposures.values():
        taken[doc.get("placement", "")].add(doc["action"])
    eligible: dict[str, tuple[str, ...]] = {}
    for placement, seen in taken.items():
        known = catalogue.eligible(placement) if catalogue is not None else []
        if known:
            eligible[placement] = tuple(known)
        else:
            eligible[placement] = tuple(sorted(seen))
            report.unknown_placements.append(placement)
    decisions = []
    for decision_id, doc in exposures.items():
        placement = doc.get("placement", "")
        logged = doc.get("eligible")  # the set the bandit chose among (engines since it was logged)
        if isinstance(logged, list) and logged and all(isinstance(a, str) and a for a in logged):
            choices = tuple(logged)
        else:  # an older log: the catalogue's static set (no dates, segments or score gates known)
            choices = eligible[placement]
            report.static_eligible += 1
        if doc["action"] not in choices:
            report.problems.append(
                f"{doc.get('_where', decision_id)}: action {doc['action']!r} is not eligible "
                f"for placement {placement!r} in the catalogue"
            )
            continue
        if doc.get("mode") in (None, *RANDOMISED_MODES) and _probability(doc) == 1.0 and len(choices) > 1:
            # For sure among several. On a placement with stickiness rules the engine logs every decision
            # "exploit" with p = 1: settled from the bandit's statistics and the user's incumbent, no draw to
            # reweigh, not the policy a candidate replaces; left out. Elsewhere it is a bandit without a uniform
            # draw (alone or overridden by arbitration), or an older engine's override: the logging policy's
            # real probability, kept.
            # (Modes asked for explicitly, such as "sticky", are kept as they are.)
            rules = catalogue.placements.get(placement) if catalogue is not None else None
            if rules is None:
                report.undetermined += 1
                continue
            if rules.stickiness.limited and doc.get("mode") != "explore":  # stickiness never explores
                report.deterministic += 1
                report.deterministic_placements[placement] = report.deterministic_placements.get(placement, 0) + 1
                continue
            report.overrides += 1
        decisions.append(
            LoggedDecision(
                decision_id=decision_id,
                x=np.asarray(doc["x"], dtype=float),
                action=doc["action"],
                probability=_probability(doc),
                reward=rewards.get(decision_id, 0.0),
                placement=placement,
                eligible=choices,
                ts=float(doc.get("ts", 0.0)),
            )
        )
    return DecisionLog(decisions, report)
