"""The learning half of the engine: every worker applies every learning sample (linear statistics are additive).

``EngineLearning`` is mixed into ``engine.processor.Engine``; it uses the engine's policy, shadow policy,
models, lift tracker, metrics and the keys of samples already applied (``_seen``: a sample replayed after
a crash is applied once).
"""

from __future__ import annotations

import copy
import logging
import operator
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from bandits.base import Policy
from bandits.restore import PolicyMismatch, carry_over
from cadence.metrics import Metrics
from contracts.decisions import LearningBatch, LearningSample
from engine.lift import LiftTracker
from engine.replay import SeenKeys
from learning.live_models import LiveModels
from learning.source_progress import SourceProgress
from learning.state import LearnedState
from policy.catalogue import NO_ACTION

log = logging.getLogger(__name__)
_TS, _KIND = operator.attrgetter("ts"), operator.attrgetter("kind")  # of a sample, for max() and Counter()


class EngineLearning:
    policy: Policy
    shadow_policy: Policy | None
    models: LiveModels | None
    metrics: Metrics
    lift: LiftTracker
    learned_offsets: dict[int, int]  # learning-topic partition -> next offset applied to the policy
    lift_offsets: dict[int, int]  # ... counted by the lift: the same but while following a rollback (lift_in_step)
    learned_watermark: float
    sources: SourceProgress  # how far each producer of the learning topic has got: closes label windows
    _seen: SeenKeys
    _lift_seen: SeenKeys | None  # after following a rollback: the keys the lift has counted (see follow_rollback)

    _configured_policy: Policy
    _configured_shadow: Policy | None

    # What the settings built, kept untrained (a copy is taken when set, never the live policy): a restored
    # policy runs under its type and decision hyperparameters, and a challenger starting afresh is a copy of it.
    @property
    def configured_policy(self) -> Policy:
        return self._configured_policy

    @configured_policy.setter
    def configured_policy(self, policy: Policy) -> None:
        self._configured_policy = copy.deepcopy(policy)

    @property
    def configured_shadow(self) -> Policy | None:
        return self._configured_shadow

    @configured_shadow.setter
    def configured_shadow(self, policy: Policy | None) -> None:
        self._configured_shadow = copy.deepcopy(policy)

    def learned_state(self) -> LearnedState:
        """What a snapshot of this worker's learning holds (pair it with ``learned_offsets``, read at once;
        only when ``lift_in_step``)."""
        models = self.models.models if self.models is not None else None
        return LearnedState(self.policy, models, self.lift, self._seen.newest(), self.shadow_policy)

    def learned_mark(self) -> tuple[object, ...]:
        """What a snapshot would hold, cheaply (nothing packed): equal marks, equal policy, shadow, models, lift
        and offsets. Every learning step counts in a version (policy, shadow, models: churn labels reach the
        trainer without a learning sample), the lift by a digest of its sums, and a message read moves the
        offsets. The digests of applied samples change only with a message read, and the policies' random
        generators are not learning (a decision draws from them)."""
        return (self.policy.name, self.policy.version,
                self.shadow_policy.version if self.shadow_policy is not None else None,
                self.models.models.version if self.models is not None else None,
                self.lift.mark(), tuple(sorted(self.learned_offsets.items())), self.learned_watermark)

    def resume_from(self, state: LearnedState, offsets: dict[int, int]) -> None:
        """Start from a snapshot: its policy (under the configured type and decision hyperparameters,
        ``bandits.restore.carry_over``), shadow policy, models and lift, learning on from its ``offsets``; the
        samples it had applied are known, so their copies re-emitted after a crash are not applied twice.
        ``PolicyMismatch`` (nothing changed) when the snapshot's policy cannot become the configured one."""
        self._switch_to(state, offsets, self._carried(state.policy))

    def _switch_to(self, state: LearnedState, offsets: dict[int, int], policy: Policy) -> None:
        """``resume_from`` once the policy was carried over (nothing here refuses the snapshot)."""
        self._use_policy(policy)
        self.replace_shadow(state.shadow)
        if self.models is not None and state.models is not None:
            self.models.replace(state.models)
        self.learned_offsets, self.lift_offsets = dict(offsets), dict(offsets)
        if state.lift is not None:  # the lift up to those offsets: the learning topic is read on from there
            self.lift = state.lift
        self._seen.remember(state.seen)

    def follow_rollback(self, state: LearnedState, offsets: dict[int, int]) -> dict[int, int]:
        """A rollback's snapshot, followed while running: as ``resume_from`` (a worker restarting from it has
        the same policy and models once both read on from ``offsets``), but the lift goes on (it measures
        what was shown). Returns the offsets this worker had applied, up to which its lift counted: the
        learning feed reads again from the lower of the two (``streams.learning_feed.Rewind``).
        ``PolicyMismatch`` before anything changed (the follower tries again: each try changes nothing)."""
        policy = self._carried(state.policy)
        counted, lift = dict(self.lift_offsets), self.lift
        # the samples applied so far are no longer in the policy: read again from the offsets, they are applied
        # (as by a restarted worker, which knows only the snapshot's digests); the lift keeps its own (those of an
        # earlier rollback still being read again with the rest)
        lift_seen = self._seen
        if self._lift_seen is not None:
            lift_seen = self._lift_seen
            lift_seen.remember(self._seen.newest(self._seen.capacity))
        self._lift_seen, self._seen = lift_seen, SeenKeys(self._seen.capacity)
        self._switch_to(state, offsets, policy)
        self.lift, self.lift_offsets = lift, counted
        return counted

    def lift_in_step(self) -> bool:
        """Whether the lift has counted up to the offsets the policy applied, so ``learned_state`` with
        ``learned_offsets`` is what a worker restarting from them should have: not while the feed reads
        again after a rollback (lift-only or policy-only records), nor before it seeks. A snapshot waits."""
        return all(self.learned_offsets.get(p, 0) == self.lift_offsets.get(p, 0)
                   for p in {*self.learned_offsets, *self.lift_offsets})

    def _carried(self, policy: Policy) -> Policy:
        """``policy`` under the settings' type and decision hyperparameters (logged), or ``PolicyMismatch``."""
        policy, changes = carry_over(self.configured_policy, policy)
        if changes:
            log.warning("policy from the snapshot runs with the settings' %s: %s", policy.name, "; ".join(changes))
        return policy

    def _use_policy(self, policy: Policy) -> None:
        self.policy = policy
        self.metrics.policy_version.set(policy.version)

    def replace_shadow(self, shadow: Policy | None) -> None:
        """Swap in a restored shadow (challenger) policy by the same rule as the live one (``_carried``). Without one
        configured it is dropped; without one restored (a snapshot from before shadows were kept, or taken
        without one) or one that cannot become the configured one, the challenger starts afresh (a copy of the
        untrained configured one, logged), as on a worker starting from that snapshot."""
        configured = self.configured_shadow
        if configured is None:
            return
        if shadow is None:
            log.warning("the snapshot holds no shadow policy: the %s challenger starts afresh and learns from the "
                        "snapshot's offsets on, without what came before", configured.name)
            self.shadow_policy = copy.deepcopy(configured)
            return
        try:
            shadow, changes = carry_over(configured, shadow, "CADENCE_SHADOW_POLICY")
        except PolicyMismatch as exc:
            log.warning("shadow policy from the snapshot left out, the challenger starts afresh: %s", exc)
            self.shadow_policy = copy.deepcopy(configured)
            return
        if changes:
            log.warning("shadow policy from the snapshot runs with the settings' %s: %s", shadow.name,
                        "; ".join(changes))
        self.shadow_policy = shadow

    def learn_batches(self, batches: Sequence[LearningBatch], positions: dict[int, int] | None = None,
                      policy_only: Sequence[LearningBatch] = (), lift_only: Sequence[LearningBatch] = (),
                      lifted: dict[int, int] | None = None) -> None:
        """Learning-topic messages as the feed read them: their samples, then their producers' progress.
        After a rollback (``streams.learning_feed.deliver``): ``policy_only`` messages the lift counted
        already, ``lift_only`` ones the rollback keeps out of the policy that the lift has not counted.
        ``positions``: past the messages that went into the policy; ``lifted``: into the lift (None: the same)."""
        if lift_only:
            samples = [s for b in lift_only for s in b.samples]
            seen = self._lift_seen if self._lift_seen is not None else self._seen
            self.lift.add_many([s for s in samples if seen.first_time(s.key)], self._lift_covers())
        if policy_only:
            self.learn([s for b in policy_only for s in b.samples], None, policy_only, count_lift=False)
        self.learn([s for b in batches for s in b.samples], positions, batches, lifted=lifted)

    def learn(
        self, samples: list[LearningSample], positions: dict[int, int] | None = None,
        batches: Sequence[LearningBatch] | None = None, count_lift: bool = True, lifted: dict[int, int] | None = None,
    ) -> None:
        """Apply learning samples (all workers apply all of them); batched, per sample if a batch fails.

        ``batches`` are the messages they came in, for their producers' progress; without them the samples
        count as one anonymous producer's (their largest ts), as do messages without a producer.
        """
        if positions:
            self.learned_offsets.update(positions)
        if lifted is not None:  # how far the lift counted, when the feed says (after a rollback it differs)
            self.lift_offsets.update(lifted)
        elif positions and count_lift:
            self.lift_offsets.update(positions)
        for batch in batches if batches is not None else [LearningBatch(samples)]:
            if batch.idle:
                self.sources.release(batch.source, batch.progress or 0.0)
            elif (reported := batch.reported) is not None:
                self.sources.report(*reported)
        dropped_before = self.sources.dropped
        closing = self.sources.settle()
        if self.sources.dropped > dropped_before:
            self.metrics.learning_producers_dropped.inc(self.sources.dropped - dropped_before)
        self.metrics.label_watermark.set(closing)
        self.metrics.learning_producers.set(len(self.sources))
        first_time = self._seen.first_time
        fresh = [s for s in samples if first_time(s.key)]  # replays after a crash: once only
        if len(fresh) < len(samples):
            self.metrics.learning_samples.labels("duplicate").inc(len(samples) - len(fresh))
        samples = fresh
        if count_lift:
            self.lift.add_many(samples, self._lift_covers())
        usable = [s for s in samples if s.action != NO_ACTION]  # a decision that showed nothing: lift only
        applied = self._learn_into(self.policy, usable)
        if self.shadow_policy is not None:
            self._learn_into(self.shadow_policy, usable)
        if applied:  # counted once per kind, not per sample
            self.learned_watermark = max(self.learned_watermark, max(map(_TS, applied)))
            for kind, n in Counter(map(_KIND, applied)).items():
                self.metrics.learning_samples.labels(kind).inc(n)
            rewards = [s.reward for s in applied if s.kind == "reward"]
            if rewards:
                self.metrics.reward_value.inc(sum(rewards))
        self.metrics.policy_version.set(self.policy.version)
        if self.models is not None:
            self.models.learn(applied, closing)

    def _lift_covers(self) -> Callable[[str], bool] | None:
        """Which placements the lift counts (the holdout's; None: every placement)."""
        return None

    def _learn_into(self, policy: Policy, usable: list[LearningSample]) -> list[LearningSample]:
        exposures = [s for s in usable if s.kind == "exposure"]
        rewards = [s for s in usable if s.kind == "reward"]
        try:
            if exposures:
                policy.expose_many(np.array([s.x for s in exposures]), [s.action for s in exposures])
            if rewards:
                policy.reward_many(np.array([s.x for s in rewards]), [s.action for s in rewards],
                                   [s.reward for s in rewards])
            return usable
        except ValueError:  # a malformed sample refuses the whole batch before anything changed
            return [s for s in usable if self._learn_one(policy, s)]

    def _learn_one(self, policy: Policy, s: LearningSample) -> bool:
        try:
            x = np.asarray(s.x)
            if s.kind == "exposure":
                policy.expose(x, s.action)
            else:
                policy.reward(x, s.action, s.reward)
            return True
        except ValueError as exc:  # e.g. a sample from an engine with another context size
            log.error("learning sample %s skipped: %s", s.decision_id, exc)
            self.metrics.learning_samples.labels("rejected").inc()
            return False
