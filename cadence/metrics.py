"""The one metrics hook: every part of the engine reports through a ``Metrics`` object.

Names carry the ``cadence_`` prefix and their unit; labels never hold personal data (no user ids).
Each ``Metrics`` owns its registry, so several engines (or tests) in one process do not collide.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

# Buckets chosen around what the engine measures here: Redis batch round trips 0.2–20 ms, decisions
# a few ms after their event arrives, up to tens of ms under load.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Event to decision and intake wait also count the time in the broker: a paced run's p99 passes 2.5 s and a
# backlog means minutes, so these go on to 5 minutes (above the top bound, histogram_quantile says only
# "at least that").
EVENT_AGE_BUCKETS_S = (*LATENCY_BUCKETS_S, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        if registry is None:
            # process_* (CPU, memory, open fds, start time: restarts show as its changes) and python_info, as
            # the default registry has them. A registry passed in is used as it is (it may have them already).
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        self.events = Counter("cadence_events_consumed_total", "Input events consumed", ["topic", "type"], registry=r)
        self.dead_letters = Counter("cadence_dead_letters_total", "Inputs sent to dead-letters", ["reason"], registry=r)
        self.duplicates = Counter("cadence_duplicate_events_total", "Events dropped as duplicates", registry=r)
        self.replayed_requests = Counter(
            "cadence_replayed_requests_total", "Duplicate requests (a batch read again after a crash) by what was "
            "sent again: the kept decision, a new one (none was stored), or nothing (superseded)", ["outcome"],
            registry=r,
        )
        self.decisions = Counter(
            "cadence_decisions_total", "Decisions emitted", ["placement", "action", "mode"], registry=r
        )
        self.intake_batch_failures = Counter(
            "cadence_intake_batch_failures_total", "Input batches sent back to be read again, by stage: process "
            "(the engine raised) or deliver (the broker refused their outputs after the resends). Their events are "
            "consumed again (as duplicates), so a worker stuck on one batch still shows events and decisions",
            ["stage"], registry=r,
        )
        self.rewards = Counter("cadence_rewards_total", "Reward events by attribution outcome", ["outcome"], registry=r)
        self.reward_value = Counter("cadence_reward_value_total", "Sum of rewards learned", registry=r)
        self.lift_only_rewards = Counter(
            "cadence_lift_only_rewards_total",
            "Rewards of grouped users the lift counts though no decision of the lift was credited with them",
            registry=r,
        )
        self.learning_samples = Counter(
            "cadence_learning_samples_applied_total", "Learning samples applied to the policy", ["kind"], registry=r
        )
        self.store_errors = Counter(
            "cadence_feature_store_errors_total", "Feature store failures, by op: apply (a batch's reads and "
            "updates), write (decision state), shared_state (levers/erasures refresh, budget counters), startup "
            "(snapshot, levers and budget counters at start)", ["op"], registry=r,
        )
        self.snapshot_load_failures = Counter(
            "cadence_snapshot_load_failures_total", "Snapshot versions a starting worker (or one taking over the "
            "models) could not read (damaged or unreadable blob); it resumed from the newest older one that loads",
            registry=r,
        )
        self.worker_ready = Gauge(
            "cadence_worker_ready", "1 when the worker is ready (GET /health 'ready': partitions assigned and the "
            "policy loaded), 0 while it starts or waits for Redis", registry=r,
        )
        self.updates_pending = Gauge(
            "cadence_feature_updates_pending", "Feature updates waiting for Redis to come back", registry=r
        )
        self.updates_replayed = Counter(
            "cadence_feature_updates_replayed_total", "Feature updates applied late, after a store outage", registry=r
        )
        self.updates_lost = Counter(
            "cadence_feature_updates_lost_total", "Feature updates dropped because the retry buffer was full",
            registry=r,
        )
        self.decision_state_unstored = Gauge(
            "cadence_decision_state_unstored_users", "Users whose decision state (pending decisions, stickiness, "
            "contact history) Redis has not taken yet: kept in memory and retried every second", registry=r,
        )
        self.decision_state_lost = Counter(
            "cadence_decision_state_lost_total", "Users' decision-state writes dropped because the retry buffer was "
            "full", registry=r,
        )
        self.policy_state_merges = Counter(
            "cadence_policy_state_merges_total", "Users' policy states another process wrote since they were "
            "read: merged with it and stored (merged), or left to it after repeated conflicts (given_up)",
            ["outcome"], registry=r,
        )
        self.erased_events = Counter(
            "cadence_erased_user_events_total", "Events of erased users, not stored nor learned", registry=r
        )
        self.http_latency = Histogram(
            "cadence_http_decide_seconds", "GET /decide handling time", ["status"],
            buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.5), registry=r,
        )
        self.http_requests = Counter("cadence_http_requests_total", "HTTP requests", ["endpoint", "status"], registry=r)
        self.http_outputs_lost = Counter(
            "cadence_http_outputs_lost_total", "Batches of /decide outputs (answered decisions, dead letters of bad "
            "requests) the broker did not take after the resends", registry=r,
        )
        self.lift = Gauge("cadence_holdout_lift", "Live lift over the holdout group", ["stat"], registry=r)
        self.shadow = Counter(
            "cadence_shadow_decisions_total", "Decisions a shadow challenger also made", ["outcome"], registry=r
        )
        self.levers_active = Gauge(
            "cadence_levers_active", "Levers in force or to come on this worker (expired ones are dropped)", registry=r
        )
        self.store_latency = Histogram(
            "cadence_feature_store_round_trip_seconds", "Feature store round trip per batch", ["op"],
            buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.batch_latency = Histogram(
            "cadence_batch_processing_seconds", "Time to process one batch of events, by source: intake (input "
            "topics) or http (GET /decide batches)", ["source"], buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.loop_lag = Histogram(
            "cadence_event_loop_lag_seconds",
            "How late a 50 ms timer wakes up: time the event loop was busy with something else (HTTP answers wait "
            "that long)", buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.gc_pause = Histogram(
            "cadence_gc_pause_seconds", "Garbage collections run between batches (streams/gc_pacing.py), by "
            "generation: 2 is the full one", ["generation"], buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.batch_size = Histogram(
            "cadence_batch_size_events", "Events per batch, by source (intake, http)", ["source"],
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000), registry=r,
        )
        self.decision_latency = Histogram(
            "cadence_event_to_decision_seconds",
            "From the request event's Kafka timestamp to its decision being acknowledged by the broker",
            buckets=EVENT_AGE_BUCKETS_S, registry=r,
        )
        self.intake_wait = Histogram(
            "cadence_intake_wait_seconds",
            "From an input event's Kafka timestamp to the worker starting on its batch: time in the broker, the "
            "consumer's fetch and the queue (event to decision minus this is processing and delivery)",
            buckets=EVENT_AGE_BUCKETS_S, registry=r,
        )
        self.policy_version = Gauge("cadence_policy_version", "Learning steps in the live policy", registry=r)
        self.consumer_lag = Gauge(
            "cadence_consumer_lag_messages", "Messages behind the end of each assigned input partition",
            ["topic", "partition"], registry=r,
        )
        self.watermark = Gauge("cadence_event_time_watermark_seconds", "Largest event time seen", registry=r)
        self.label_watermark = Gauge(
            "cadence_label_watermark_seconds", "Event time up to which label windows may close: the progress of "
            "the slowest worker writing the learning topic (learning/source_progress.py)", registry=r,
        )
        self.learning_producers = Gauge(
            "cadence_learning_producers", "Workers whose progress holds the label windows open", registry=r
        )
        self.learning_producers_dropped = Counter(
            "cadence_learning_producers_dropped_total", "Workers that stopped holding the label windows because "
            "they were more than CADENCE_MODELS_LABEL_MAX_LAG_S behind the fastest (a crash, or a long lag)",
            registry=r,
        )
        # River models (learning/live_models.py). Metrics, samples and drifts come from the training worker.
        self.model_metric = Gauge(
            "cadence_model_metric", "Progressive validation metric per model: log_loss, roc_auc (rolling), "
            "mae (revenue units), error_window_mean (ADWIN's mean error)", ["model", "metric"], registry=r,
        )
        self.model_drifts = Counter(
            "cadence_model_drifts_total", "Error increases detected by ADWIN, per model", ["model"], registry=r
        )
        self.model_samples = Counter(
            "cadence_model_samples_learned_total", "Labelled samples a model learned", ["model"], registry=r
        )
        self.model_version = Gauge(
            "cadence_model_version", "Learning steps of the model scorer this worker decides with", registry=r
        )
        self.model_labels_waiting = Gauge(
            "cadence_model_labels_waiting", "Labels not yet learned: exposures in their window, customers "
            "watched for churn, trainer backlog, churn labels to ship", ["kind"], registry=r,
        )
        self.model_labels_dropped = Counter(
            "cadence_model_labels_dropped_total", "Labels dropped unlearned, by reason (bounds reached, rebalance)",
            ["reason"], registry=r,
        )
        self.model_scorer_errors = Counter(
            "cadence_model_scorer_errors_total", "Model scorer failures, by reason: layout (a published scorer "
            "refused, its input layout is not this worker's context: a rolling deploy), score (requests decided "
            "without model scores because the scorer failed)", ["reason"], registry=r,
        )

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: prometheus-client's lookup costs microseconds per event."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def publish_lift(self, result: Mapping[str, float | int | None]) -> None:
        """``LiftTracker.result()`` on ``cadence_holdout_lift``: a stat that is None (no lift or interval yet,
        e.g. after a snapshot or a rollback reset the lift) is NaN, not the last value it had."""
        for stat, value in result.items():
            self.lift.labels(stat).set(math.nan if value is None else value)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def observe_many(histogram: Histogram, amounts: Iterable[float]) -> None:
    """``histogram.observe(a)`` for every amount, with one increment per bucket touched instead of one per
    amount (prometheus-client takes a lock per increment). The buckets and the count come out the same;
    the sum is added once, so it may differ from one-by-one addition in the last bits."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:  # another client version: the public way
        for amount in amounts:
            histogram.observe(amount)
        return
    tally: Tally[int] = Tally()
    added = 0.0
    for amount in amounts:
        added += amount
        if amount != amount:  # NaN: observe() puts it in no bucket
            continue
        tally[bisect_left(bounds, amount)] += 1  # the first bound >= amount, as observe() finds it
    total.inc(added)  # as observe() does, NaN included
    for i, n in tally.items():  # the last bound is +Inf: every amount but NaN has a bucket
        buckets[i].inc(n)
