"""The Faust application: topics, one thin ingest agent, the learning feed and the worker's web pages.

Agents decode nothing themselves: they hand raw messages to ``engine.Engine`` and send what it returns.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bandits import make_policy
from bandits.base import Policy
from cadence.metrics import Metrics, observe_many
from cadence.settings import SettingError, Settings
from contracts.decisions import encode_idle, encode_samples
from engine.attribution import Windows
from engine.bids import BidSignaller
from engine.processor import BatchOutput, Engine, EngineConfig, RawMessage
from features.context import CONTEXT_DIM
from features.erasure import ErasureRegistry
from features.store import FeatureStoreError, RedisFeatureStore
from learning.label_join import JoinConfig
from learning.live_models import LiveModels, ModelConfig
from learning.model_exchange import ModelExchange
from learning.snapshots import SnapshotError, SnapshotInfo, SnapshotStore
from learning.state import LearnedState
from policy.budget_store import BudgetStore
from policy.budgets import WorkerBudgets
from policy.catalogue import Catalogue, load_catalogue
from policy.holdout import HoldoutConfig
from policy.lever_store import LeverStore
from policy.pipeline import PolicyContext
from streams.faust_tuning import set_fetch_max_wait
from streams.gc_pacing import GC_GEN0_THRESHOLD, GcPacer
from streams.handover import hand_over
from streams.intake import DirectIntake
from streams.learning_feed import FeedControl, follow_learning
from streams.outputs import OutputSender, OutRecord
from streams.pacing import rest_after
from streams.rollbacks import RollbackFollower
from streams.snapshotting import PeriodicSnapshots
from streams.topics import BID_SIGNALS, DEAD_LETTERS, DECISIONS, ERASURES, INPUT_TOPICS, LEARNING, SHADOW
from streams.web import register_views

log = logging.getLogger(__name__)
LOOP_PROBE_S = 0.05
TRAIN_CHUNK = 24  # labels per training step (~85 us each): the event loop waits at most ~2 ms for training
LEARNING_BATCH = 500  # samples per learning-topic message (~0.3 MB)
INTAKE_STOP_TIMEOUT_S = 15.0  # at shutdown, how long the intake may take to deliver and commit its last batch


# What a store call raises when Redis is away or refuses (counted as feature-store errors); anything else (a
# damaged lever book, a snapshot that cannot be read, a bug) is logged under its own type, not blamed on Redis.
STORE_FAILURES = (RedisError, FeatureStoreError, OSError, TimeoutError)


async def store_call(metrics: Metrics, op: str, body: Callable[[], Awaitable[Any]], what: str) -> bool:
    """Run ``body``; a failure is logged and, when Redis is what failed, counted in
    cadence_feature_store_errors_total{op}, instead of raised. True when it succeeded."""
    try:
        await body()
        return True
    except STORE_FAILURES as exc:
        metrics.child(metrics.store_errors, op).inc()
        log.error("%s failed (%s: %s); trying again in 1 s", what, type(exc).__name__, exc)
    except Exception as exc:  # no traceback: it comes back every second until fixed
        log.error("%s failed (%s: %s; not a Redis error, not counted as one); trying again in 1 s", what,
                  type(exc).__name__, exc)
    return False


def waits(now: float, stamps: list[float]) -> list[float]:
    """``now - t`` for every stamp set (not 0), at least 0 (a sender's clock ahead of ours gives no negative wait).
    A conditional, not max(0.0, ...): a call per stamp was ~0.08 us per event or decision."""
    return [now - t if now > t else 0.0 for t in stamps if t]


class NoReadableSnapshot(RuntimeError):
    """Snapshots exist but none of them can be read: the worker does not start cold on its own."""


async def newest_readable(snapshots: SnapshotStore, metrics: Metrics) -> tuple[SnapshotInfo, LearnedState] | None:
    """The newest snapshot version that can be read, unpacked; None when there are none. A version whose blob
    cannot be read (damaged, truncated) is logged with its number and counted in
    cadence_snapshot_load_failures_total, and the one before it is tried, but never one older than the version
    the current generation's rollback wrote (``SnapshotStore.rollback_point``): those hold the state rolled back
    from. Redis failures are raised (the caller tries again), and so is ``NoReadableSnapshot`` when no version
    (from the rollback's on) can be read."""
    _, floor = await snapshots.rollback_point()
    unreadable: list[int] = []
    below_floor = False
    for version in reversed(await snapshots.versions()):
        if floor is not None and version < floor:
            below_floor = True
            break
        try:
            info, blob = await snapshots.load(version) or (None, b"")
            if info is None:
                continue
            state = LearnedState.unpack(blob)
        except SnapshotError:  # trimmed since the versions were listed
            continue
        except STORE_FAILURES:
            raise
        except Exception as exc:  # a damaged blob raises whatever unpickling meets (UnpicklingError, EOFError...)
            metrics.snapshot_load_failures.inc()
            unreadable.append(version)
            log.error("snapshot version %s cannot be read (%s: %s); trying the version before it", version,
                      type(exc).__name__, exc)
            continue
        if unreadable:
            log.error("resumed from snapshot version %s, the newest that can be read (not %s): what was learned "
                      "after it is read again from the learning topic as far as it is kept. Make it the latest "
                      "for every worker with `cadence snapshots rollback %s`", version,
                      ", ".join(map(str, unreadable)), version)
        return info, state
    if below_floor:
        raise NoReadableSnapshot(
            f"no snapshot version from {floor} on can be read (tried {', '.join(map(str, unreadable)) or 'none'}), and "
            f"version {floor} is what the last rollback made live: the versions before it hold the state rolled "
            "back from, so the worker does not load them. Roll back again to a version that can be read "
            "(`cadence snapshots rollback V`; it refuses one that cannot; `cadence snapshots list`)")
    if unreadable:
        raise NoReadableSnapshot(
            f"no snapshot version can be read (tried {', '.join(map(str, unreadable))}): the worker does not start "
            "with an empty policy on its own; see the errors above (a snapshot from another cadence version "
            "says what to do), `cadence snapshots list`")
    return None


def redis_client(settings: Settings) -> aioredis.Redis:
    assert settings.redis_url, "redis_url must be resolved before the app is built"
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    return aioredis.Redis.from_url(settings.redis_url, password=password, socket_timeout=2, socket_connect_timeout=0.5)


async def read_erasure_key(erasures: ErasureRegistry, settings: Settings) -> None:
    """The deployment's erasure key (CADENCE_ERASURE_KEY or the one kept in Redis), once per worker, with its
    warning logged; ``ErasureKeyError`` when the key is not the one the recorded erasures were made with."""
    if erasures.user_digest is None:
        key = await erasures.load_key(settings.erasure_key)
        if key.warning:
            log.warning("erasure key: %s", key.warning)


async def start_erasures(engine: Engine, settings: Settings) -> None:
    """What a worker's start does for erasures, for tools that run an engine without the worker (load_tests):
    the key, then the erased users, handed to the engine together (its store writes nothing before)."""
    erasures = ErasureRegistry(engine.store.client, settings.app_id)
    await read_erasure_key(erasures, settings)
    engine.erased = await erasures.erased_users()


def build_policy_context(settings: Settings) -> PolicyContext:
    catalogue = load_catalogue(settings.catalogue)
    placements = tuple(p.strip() for p in settings.holdout_placements.split(",") if p.strip())
    unknown = [p for p in placements if p not in catalogue.placements]
    if unknown:
        raise SettingError("CADENCE_HOLDOUT_PLACEMENTS", f"names placements the catalogue does not have: {unknown}; "
                           f"use ids of {sorted(catalogue.placements)}, or leave it empty for every placement")
    longest = max(((c.window_days, c.suppress_days) for c in catalogue.contact.values()), key=max, default=(0, 0))
    if max(longest) * 86400 > settings.feature_ttl_s:  # the contact history lives in the user's hash
        raise SettingError("CADENCE_FEATURE_TTL_S", f"({settings.feature_ttl_s} s) is shorter than the catalogue's "
                           f"longest contact rule ({max(longest):g} days, window_days or suppress_days): a user quiet "
                           "that long would lose the contact history its caps count. Raise it to at least "
                           f"{max(longest) * 86400:.0f}, or shorten the rule")
    holdout = (HoldoutConfig(settings.holdout_share, settings.holdout_salt, placements=placements)
               if settings.holdout_share > 0 else None)
    # each worker holds the whole of every limit against the fleet's counts (BudgetStore.exchange, every second)
    return PolicyContext(catalogue, holdout=holdout, budgets=WorkerBudgets(share=1.0))


def model_config(settings: Settings) -> ModelConfig:
    """The models' settings; a ``models_*`` field the settings do not define keeps its default."""
    def get(name: str, default: float) -> float:
        return getattr(settings, f"models_{name}", default)

    base, join = ModelConfig(), JoinConfig()
    return ModelConfig(
        enabled=bool(get("enabled", base.enabled)),
        join=JoinConfig(window_s=get("label_window_s", join.window_s), grace_s=get("label_grace_s", join.grace_s),
                        max_source_lag_s=get("label_max_lag_s", join.max_source_lag_s),
                        capacity=int(get("pending_max", join.capacity)), share=get("exposure_share", join.share)),
        churn_horizon_s=get("churn_horizon_s", base.churn_horizon_s),
        churn_sample_every_s=get("churn_sample_every_s", base.churn_sample_every_s),
        churn_capacity=int(get("churn_watch_max", base.churn_capacity)),
        churn_share=get("churn_share", base.churn_share),
        min_samples=int(get("min_samples", base.min_samples)),
    )


def inert_confidence(policy: Policy | None, catalogue: Catalogue) -> str | None:
    """What to tell the operator when stickiness's "surely better" rule (``confidence``) cannot work: the
    policy gives no exploration width (LinTS, ε-greedy), so a challenger's lower bound is its mean, and any
    higher mean wins a change the rule should have held back. None when the rule works or is not used."""
    if policy is None or policy.has_width:
        return None
    placements = [p.id for p in catalogue.placements.values()
                  if p.stickiness.limited and p.stickiness.confidence > 0]
    if not placements:
        return None
    return (f"policy {policy.name!r} gives no exploration width, so stickiness 'confidence' on {placements} "
            "compares means alone: a challenger with a higher mean on thin evidence can win a change. "
            "Use CADENCE_POLICY=linucb, or set confidence = 0 on these placements to say so")


def policy_params(settings: Settings) -> dict[str, dict[str, float | None]]:
    """The configured hyperparameters of each policy type, as ``make_policy`` takes them (an unset floor_min is
    LinUCB's own default: 0.005, or the floor if that is lower)."""
    return {
        "linucb": {"alpha": settings.policy_alpha, "ridge": settings.policy_ridge,
                   "explore_samples": settings.policy_explore_samples, "epsilon": settings.policy_floor,
                   "epsilon_min": settings.policy_floor_min},
        "lints": {"alpha": settings.policy_ts_scale, "epsilon": settings.policy_floor},
        "egreedy": {"epsilon": settings.policy_epsilon},
    }


def build_engine(settings: Settings, metrics: Metrics, client: aioredis.Redis) -> Engine:
    params = policy_params(settings)
    policy = make_policy(settings.policy, CONTEXT_DIM, seed=settings.seed, **params.get(settings.policy, {}))
    shadow = None
    if settings.shadow_policy:
        shadow = make_policy(settings.shadow_policy, CONTEXT_DIM, seed=settings.seed + 1,
                             **params.get(settings.shadow_policy, {}))
    store = RedisFeatureStore(client, settings.app_id, settings.feature_ttl_s, settings.dedup_ring)
    config = EngineConfig(
        max_event_bytes=settings.max_event_bytes,
        max_future_skew_s=settings.max_future_skew_s,
        max_lateness_s=settings.max_lateness_s,
        max_time_jump_s=settings.max_time_jump_s,
        click_reward=settings.click_reward,
        windows=Windows(settings.click_window_s, settings.conversion_window_s),
    )
    bids = BidSignaller(low=settings.bid_multiplier_low, high=settings.bid_multiplier_high)
    ctx = build_policy_context(settings)
    for message in (inert_confidence(policy, ctx.catalogue), inert_confidence(shadow, ctx.catalogue)):
        if message:
            log.warning("%s", message)
    mconfig = model_config(settings)
    models = LiveModels(mconfig, settings.click_reward, ctx.catalogue.value_scale) if mconfig.enabled else None
    return Engine(store, ctx, policy, metrics, config, bids, shadow, models)


def create_app(settings: Settings) -> faust.App:
    assert settings.kafka_bootstrap, "kafka_bootstrap must be resolved before the app is built"
    if settings.intake == "faust":  # otherwise Faust's consumer reads only its own internal topics: no hurry
        set_fetch_max_wait(settings.fetch_max_wait_ms)
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)  # a batch allocates ~100 objects per event: fewer young sweeps
    app = faust.App(
        # with direct intake the consumer group ``app_id`` is the intake's; Faust's own consumer (it reads
        # only its internal topics then) must not join it with another assignor
        settings.app_id if settings.intake == "faust" else f"{settings.app_id}-faust",
        broker=f"kafka://{settings.kafka_bootstrap}",
        broker_session_timeout=6,
        broker_heartbeat_interval=1,
        store="memory://",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,  # Faust's own topics (the assignor's leader topic)
        consumer_auto_offset_reset="earliest",
        producer_linger_ms=2,
        web_enabled=settings.web_port > 0,
        web_port=settings.web_port or 6066,
        web_bind=settings.web_host,
        web_in_thread=False,
        datadir=str(settings.data_dir / "faust"),
        stream_wait_empty=False,
    )
    metrics = Metrics()
    engine = build_engine(settings, metrics, redis_client(settings))
    app.cadence_engine = engine  # type: ignore[attr-defined]  # for tests and admin pages
    gc_pacer = GcPacer(full_interval_s=settings.gc_full_interval_s,
                       on_pause=lambda generation, s: metrics.gc_pause.labels(str(generation)).observe(s))

    logical = {settings.topic(name): name for name in INPUT_TOPICS}
    decisions_name, dead_letters_name, learning_name, bids_name, shadow_name, erasures_name = (
        settings.topic(t) for t in (DECISIONS, DEAD_LETTERS, LEARNING, BID_SIGNALS, SHADOW, ERASURES)
    )

    sender = OutputSender(settings.kafka_bootstrap)
    worker_id = f"{socket.gethostname()}:{os.getpid()}"  # snapshot lease holder; producer of learning samples
    # learning samples this worker sent: when (monotonic), and whether its progress holds others' label windows
    producing: dict[str, Any] = {"last_sent": 0.0, "holding": False}

    async def tombstone(user_id: str, who: str) -> None:
        """A null value for the user's key on the compacted erasures topic (who asked travels in a header)."""
        await sender.send([OutRecord(erasures_name, user_id.encode(), None, (("requested_by", who.encode()),))])

    async def submit(out: BatchOutput) -> asyncio.Future:
        """Hand every output to the producer; the future is done when the broker has them all.

        The batch's input offsets are committed only after that, so a crash can repeat outputs
        (at-least-once; decision ids are deterministic) but never lose them.
        """
        records = [OutRecord(decisions_name, d.user_id.encode(), d.to_json()) for d in out.decisions]
        records += [OutRecord(dead_letters_name, None, dl.to_json()) for dl in out.dead_letters]
        progress = engine.watermark or None  # how far this worker has got: other workers close label windows by it
        for i in range(0, len(out.learning), LEARNING_BATCH):  # one message per slice: every worker reads all
            chunk = out.learning[i : i + LEARNING_BATCH]
            records.append(OutRecord(learning_name, None, encode_samples(chunk, worker_id, progress)))
        if out.learning:
            producing["last_sent"], producing["holding"] = time.monotonic(), True
        records += [OutRecord(shadow_name, None, rec.to_json()) for rec in out.shadow]
        records += [OutRecord(bids_name, b["user_id"].encode(), orjson.dumps(b)) for b in out.bid_signals]
        delivered = await sender.submit(records)
        sent_at = out.request_timestamps  # only these: the batch's outputs are not kept alive until delivered

        def observe_latency(done: asyncio.Future) -> None:
            if done.cancelled() or done.exception() is not None:
                return
            now = time.time()
            observe_many(metrics.decision_latency, waits(now, sent_at))

        delivered.add_done_callback(observe_latency)
        return delivered

    async def emit(out: BatchOutput) -> None:
        """Send every output and wait until the broker has them all."""
        await (await submit(out))

    async def handle(raw: list[RawMessage]) -> asyncio.Future:
        """One batch processed and its outputs handed over; the intake commits once they are delivered."""
        now = time.time()  # wall clock, like the Kafka timestamps it is set against: a latency, not event time
        observe_many(metrics.intake_wait, waits(now, [m.timestamp for m in raw]))
        # outputs go as soon as they are final; the next batch is read while this one's state write is in
        # flight (streams/handover.py); the intake commits once both are done
        delivered = await hand_over(raw, engine.process_isolating, submit)
        gc_pacer.between_batches()  # the batch is decided and handed over: collect now if it is time
        return delivered

    def assigned(partitions: set) -> None:
        status["rebalanced"] = True
        if engine.models is not None:
            engine.models.reset_activity()  # customers watched for churn may now belong to another worker

    intake = DirectIntake(
        settings.kafka_bootstrap, logical, settings.app_id, handle, assigned, batch_size=settings.batch_size,
        fetch_max_wait_ms=settings.fetch_max_wait_ms, commit_interval_s=settings.commit_interval_s,
        on_failure=lambda stage, batches: metrics.child(metrics.intake_batch_failures, stage).inc(batches),
    )
    app.cadence_intake = intake  # type: ignore[attr-defined]

    if settings.intake == "direct":
        @app.task
        async def direct_intake() -> None:
            await policy_ready.wait()  # never decide with an empty policy while a snapshot is loading
            await intake.run(stop_learning)

    handled: dict[tuple[str, int], int] = {}  # Faust intake: (topic, partition) -> next offset to handle

    async def emit_handled(raw: list[RawMessage]) -> None:
        await (await handle(raw))  # Faust acks the events when this returns: after delivery

    async def ingest(stream: faust.Stream) -> None:
        """The Faust agent (CADENCE_INTAKE=faust): the same batches, through Faust's stream."""
        await policy_ready.wait()
        async for batch in stream.take_events(settings.batch_size, within=settings.batch_within_s):
            await emit_handled([
                RawMessage(logical.get(e.message.topic, e.message.topic), e.message.partition, e.message.offset,
                           e.message.value if isinstance(e.message.value, bytes) else b"",
                           (e.message.timestamp or 0.0))
                for e in batch
            ])
            for e in batch:
                handled[(e.message.topic, e.message.partition)] = e.message.offset + 1

    def input_lag() -> dict[tuple[str, int], int]:
        if settings.intake != "faust":
            return {(tp.topic, tp.partition): lag for tp, lag in intake.lag().items()}
        out = {}
        for tp in app.consumer.assignment():
            key = (tp.topic, tp.partition)
            high = app.consumer.highwater(tp) if key in handled else None
            if high is not None:
                out[key] = max(0, high - handled[key])
        return out

    lag_labels: set[tuple[str, str]] = set()

    @app.timer(1.0)
    async def report_lag() -> None:
        """cadence_consumer_lag_messages per assigned input partition (partitions gone are removed)."""
        current = {(logical.get(t, t), str(p)): lag for (t, p), lag in input_lag().items()}
        for labels in lag_labels - current.keys():
            metrics.consumer_lag.remove(*labels)
        for labels, lag in current.items():
            metrics.consumer_lag.labels(*labels).set(lag)
        lag_labels.clear()
        lag_labels.update(current)

    if settings.intake == "faust":
        app.agent(app.topic(*logical, key_type=bytes, value_type=bytes, value_serializer="raw",
                            key_serializer="raw"), name="ingest")(ingest)  # type: ignore[arg-type]  # a Stream (take_events), not StreamT

    stop_learning = asyncio.Event()
    # an HTTP-only replica (intake none) has no partitions to wait for
    status: dict[str, Any] = {"rebalanced": settings.intake == "none", "generation": 0, "snapshot": None}
    policy_ready = asyncio.Event()
    snapshots = SnapshotStore(engine.store.client, settings.app_id, keep=settings.snapshots_kept,
                              hourly=settings.snapshots_hourly, daily=settings.snapshots_daily)
    feed_control = FeedControl()  # a rollback repositions the learning feed
    rollbacks = RollbackFollower(snapshots, engine, status, feed_control)
    periodic = PeriodicSnapshots(snapshots, engine, status, worker_id)

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]  # stubs: (sender, *args, signal, **kw)
    async def _rebalanced(app: faust.App, **kwargs: object) -> None:
        if settings.intake == "faust":
            assigned(set())

    async def load_snapshot() -> dict[int, int] | None:
        found = await newest_readable(snapshots, metrics)  # a damaged newest version: the one before it
        if found is None:
            return None
        info, state = found
        engine.resume_from(state, info.offsets)  # PolicyMismatch: the settings must change (logged, retried)
        status["snapshot"] = info.version
        periodic.loaded()  # the next periodic snapshot only once something was learned
        log.warning("loaded snapshot version %s (policy version %s)", info.version, info.policy_version)
        return dict(info.offsets)

    levers = LeverStore(engine.store.client, settings.app_id, settings.lever_audit_keep)
    erasures = ErasureRegistry(engine.store.client, settings.app_id)
    budget_store = BudgetStore(engine.store.client, settings.app_id)
    followed = {"levers": -1, "erasures": -1}

    async def follow_shared_state() -> None:
        """Levers and erasures changed by an operator reach every worker within a second; the budget counters
        this worker added since the last second go to the fleet's totals (kept for next time if Redis fails),
        and the fleet's totals come back: every worker checks the caps against the whole fleet's use."""
        generation = await levers.generation()
        if generation != followed["levers"]:
            engine.policy_ctx.levers = await levers.load()
            followed["levers"] = generation
        metrics.levers_active.set(engine.prune_levers())
        if erasures.user_digest is None:  # start_learning reads the key first, then the erased users
            return
        generation = await erasures.generation()
        if generation != followed["erasures"]:
            engine.erased = await erasures.erased_users()  # the first also lets the store write (with the key)
            followed["erasures"] = generation
        await budget_store.exchange(engine.policy_ctx.budgets)

    @app.timer(1.0)
    async def follow_operators() -> None:
        # Redis away: keep the last known levers, try again next second
        await store_call(metrics, "shared_state", follow_shared_state, "refreshing levers/erasures, storing budgets")
        metrics.publish_lift(engine.lift.result())

    stopping = asyncio.Event()  # set when shutdown starts: /decide answers 503 (send it to another worker)
    drain_decide_outputs = register_views(app, engine, settings.api_token, settings.admin_token, emit, levers,
                                          erasures, tombstone, settings.http_max_rps, stopping)

    started: dict[str, dict[int, int] | None] = {"offsets": None}

    async def start_learning() -> None:
        await read_erasure_key(erasures, settings)  # ErasureKeyError: logged, tried again in 1 s, never ready
        status["generation"] = await snapshots.generation()
        # the erased users: from then on the store writes; and the fleet's budget counters, so a restarted
        # worker does not spend the day again
        await follow_shared_state()
        started["offsets"] = await load_snapshot()
        if engine.models is not None:  # the snapshot writer trains the models; take the lease now if free
            engine.models.training = await snapshots.try_lead(worker_id, settings.snapshot_interval_s * 3)

    @app.task
    async def learning_feed() -> None:
        # Redis may be away while the worker starts: wait for it rather than crash (not ready meanwhile:
        # cadence_worker_ready 0, each failed try counted as op="startup")
        while not await store_call(metrics, "startup", start_learning,
                                   "reading the erasure key, erased users, budget counters, snapshots and levers"):
            await asyncio.sleep(1.0)
        offsets = started["offsets"]
        policy_ready.set()
        # Everything alive now (modules, catalogue, policy, models) lives as long as the worker: keep the
        # cyclic GC from scanning it again and again (previous measurement: 386 -> 350 CPU us per event).
        gc.freeze()
        if settings.gc_paced:
            gc_pacer.start()  # from now on the collector runs between batches (streams/gc_pacing.py)
        await follow_learning(
            settings.kafka_bootstrap or "", settings.topic(LEARNING), engine.learn_batches, stop_learning,
            start_offsets=offsets, fetch_max_wait_ms=settings.learning_fetch_max_wait_ms, control=feed_control,
        )

    exchange = ModelExchange(engine.store.client, settings.app_id)

    async def take_over_models() -> None:
        """This worker now writes snapshots: continue training from the latest published models."""
        assert engine.models is not None
        found = await newest_readable(snapshots, metrics)
        restored = found[1].models if found is not None else None
        if restored is not None and restored.version > engine.models.models.version:
            engine.models.replace(restored)
        engine.models.training = True

    def survives(what: str) -> Callable[[Callable[[], Awaitable[None]]], Callable[[], Awaitable[None]]]:
        """A timer body that logs a failure (Redis away) instead of letting Faust crash the worker."""
        def wrap(body: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
            @functools.wraps(body)
            async def guarded() -> None:
                try:
                    await body()
                except Exception as exc:
                    log.error("%s failed, will try again: %s", what, exc)
            return guarded
        return wrap

    @app.task
    async def watch_loop_lag() -> None:
        """cadence_event_loop_lag_seconds: how long the loop was blocked (a batch, training, a snapshot)."""
        while not stop_learning.is_set():
            started = time.perf_counter()
            await asyncio.sleep(LOOP_PROBE_S)
            metrics.loop_lag.observe(max(0.0, time.perf_counter() - started - LOOP_PROBE_S))

    @app.timer(1.0)
    @survives("telling the other workers that this one is idle")
    async def release_label_windows() -> None:
        """Caught up with every input partition and nothing sent for a while: this worker's next samples come
        from new events, so it stops holding the other workers' label windows (learning/source_progress.py).
        A quiet period is measured on the wall clock: it is about this process being idle, not event time."""
        quiet = time.monotonic() - producing["last_sent"] >= settings.learning_idle_after_s
        if producing["holding"] and quiet and not any(input_lag().values()):
            producing["holding"] = False
            await sender.send([OutRecord(learning_name, None, encode_idle(worker_id, engine.watermark))])

    @app.timer(1.0)
    @survives("replaying feature updates and decision state kept during a store outage")
    async def replay_kept_updates() -> None:
        await engine.flush_unapplied()
        await engine.flush_unstored()

    @app.timer(settings.snapshot_interval_s)
    @survives("saving a snapshot")
    async def save_snapshot() -> None:
        if not policy_ready.is_set():
            return
        leads = await snapshots.try_lead(worker_id, settings.snapshot_interval_s * 3)
        models = engine.models
        if models is not None and leads != models.training:
            if leads:
                await take_over_models()
            else:
                models.training = False
        if not leads:
            return
        saved = await periodic.save()
        if saved is not None and saved[1] is not None:
            # under the generation the save was checked with: a rollback followed during its round trips must
            # not have the rolled-back models' scorer published as its own
            await exchange.publish(saved[1], saved[2])

    @app.timer(1.0)
    async def exchange_models() -> None:
        """Ship churn labels to the trainer; followers load the scorer the trainer published."""
        models = engine.models
        if models is None or not policy_ready.is_set():
            return
        try:
            batch = models.take_churn_labels()
            if batch is not None:
                await exchange.push_churn(batch)
            if models.training:
                models.add_churn_labels(await exchange.pop_churn())
            else:
                current = models.scorer
                scorer = await exchange.newer_scorer(current.version if current is not None else None,
                                                     status["generation"], models.refused_scorer)
                if scorer is not None:
                    models.use(scorer)
        except Exception as exc:  # Redis away: keep deciding with the scorer we have
            log.error("could not exchange model labels or scorer: %s", exc)
        models.export(metrics)

    @app.task
    async def train_models() -> None:
        """Learn queued labels in small chunks, taking at most a share of the loop (streams/pacing.py)."""
        await policy_ready.wait()
        while not stop_learning.is_set() and engine.models is not None:
            started = time.perf_counter()
            learned = engine.models.train(TRAIN_CHUNK)
            busy = time.perf_counter() - started
            await asyncio.sleep(rest_after(busy, settings.models_train_cpu_share) if learned else 0.05)

    @app.timer(1.0)
    @survives("following rollbacks")
    async def follow_rollbacks() -> None:
        if policy_ready.is_set():
            await rollbacks.poll()

    @app.page("/metrics")
    async def metrics_page(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        return web.bytes(metrics.exposition(), content_type="text/plain")

    def ready() -> bool:
        """Partitions assigned (or none to wait for) and the policy loaded: batches can run."""
        return bool(status["rebalanced"]) and policy_ready.is_set()

    @app.timer(1.0)
    async def report_ready() -> None:
        metrics.worker_ready.set(1 if ready() else 0)

    @app.page("/health")
    async def health_page(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        assignment = app.consumer.assignment() if settings.intake == "faust" else intake.assignment
        return web.json({
            "status": "ok",
            "ready": ready(),
            "policy": engine.policy.name,
            "policy_version": engine.policy.version,
            "snapshot": status["snapshot"],
            "watermark": engine.watermark,
            "partitions": {
                logical[t]: sorted(tp.partition for tp in assignment if tp.topic == t) for t in logical
            },
        })

    @app.timer(1.0)
    async def collect_garbage() -> None:
        """The collector's check outside batches too: an idle worker or an HTTP-only replica collects."""
        gc_pacer.tick()

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # stubs: (sender, *args, signal, **kw)
    async def _stop(app: faust.App, **kwargs: object) -> None:
        stopping.set()
        gc_pacer.stop()
        stop_learning.set()
        if intake.running:  # its last batch is handed over and committed before the producer stops
            try:
                await asyncio.wait_for(intake.finished.wait(), timeout=INTAKE_STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("the intake did not finish within %.0f s; its last batch is read again after a restart",
                            INTAKE_STOP_TIMEOUT_S)
        try:  # /decide requests answered: their outputs reach the broker before the producer stops
            await asyncio.wait_for(drain_decide_outputs(), timeout=INTAKE_STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("/decide outputs were still being sent after %.0f s; the rest are lost (the answers went "
                        "out; their decisions are missing from the decisions topic)", INTAKE_STOP_TIMEOUT_S)
        await engine.flush_unstored()  # decision state Redis did not take: a last try (failures are logged)
        await store_call(metrics, "shared_state", lambda: budget_store.flush(engine.policy_ctx.budgets),
                         "storing the budget counters")  # the last second's decisions count after a restart
        if producing["holding"]:  # this worker sends no more samples: stop holding label windows open for it
            try:
                await sender.send([OutRecord(learning_name, None, encode_idle(worker_id, engine.watermark))])
            except Exception as exc:  # the broker is away: the others drop this worker after the max lag
                log.warning("could not tell the other workers that this one stops: %s", exc)
        await sender.stop()

    return app
