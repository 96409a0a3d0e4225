"""One batch of raw input messages in, decisions, dead letters and learning samples out.

No Kafka here: agents hand raw messages in and send what comes out. Redis is touched twice per batch:
one Lua call applies every event (and reads back the states decisions need), one pipeline writes the
decision state (pending decisions) afterwards.

With ``models`` (learning/live_models.py) decisions carry model scores, web and ad visits feed the churn
labeller (this worker owns those customers), and ``learn`` hands the learning stream to the label join.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

from bandits.base import Policy
from cadence.metrics import Metrics
from contracts.decisions import DeadLetter, Decision, LearningSample, Mode, user_bucket
from contracts.events import Event, Reason, Rejection, parse_event
from engine.attribution import Credit, credit, lift_only_decision, lift_only_reward, match_pending
from engine.bids import BidSignaller
from engine.decide import (
    POLICY_STATE_FIELD,
    BatchContexts,
    PolicyStates,
    consent_unread,
    decide,
    fallback,
    lift_only_exposure,
    replayed_without_consent,
)
from engine.event_clock import ClockLimits, EventClock
from engine.inflight import WritesInFlight
from engine.learner import EngineLearning
from engine.lift import LiftTracker
from engine.pending import pending_decisions, slot_with
from engine.records import BatchOutput, EngineConfig, RawMessage
from engine.replay import SeenKeys, decision_never_stored, replayed_decision, replayed_reward
from features.context import build_context
from features.erasure import ErasedUsers
from features.state import UserState
from features.store import FeatureStoreError, RedisFeatureStore
from features.updates import FeatureUpdate, update_for
from learning.label_join import JoinConfig
from learning.live_models import LiveModels
from learning.source_progress import SourceProgress
from ope.shadow import ShadowLog
from policy.catalogue import Catalogue
from policy.merge import merge_states
from policy.pipeline import PolicyContext

_TOPIC_AND_TYPE = operator.attrgetter("topic", "type")  # what the events counter is labelled by
log = logging.getLogger(__name__)
# Decision requests that mean the customer is active (an email request is the email tool asking).
ACTIVITY_TYPES = frozenset({"page_view", "ad_request"})
DRAWN = frozenset({Mode.EXPLORE, Mode.EXPLOIT})  # decisions the bandit drew: their exposures carry the eligible set


STORE_CHUNK = 256  # events per feature-store call at most: the next chunk's call runs in Redis while one is decided
MIN_SPLIT = 64  # a batch of more events than this goes in at least two chunks, so Redis always has one to work on
RESYNC_MIN_USERS = 100  # a jump in event time is believed only when this many users show it
MERGE_ATTEMPTS = 3  # compare-and-set rounds of a policy state another process keeps changing (``_store_writes``)


def chunk_size(events: int) -> int:
    """Events per feature-store call for a batch of ``events``: chunks of ``STORE_CHUNK``, and at least two
    for a batch of more than ``MIN_SPLIT`` (a one-chunk batch waits for its whole Redis call with nothing
    to decide meanwhile: at 1,400 events/s that was a quarter of each batch's time)."""
    if events <= MIN_SPLIT:
        return max(events, 1)
    return min(STORE_CHUNK, -(-events // 2))


class CircuitOpen(FeatureStoreError):
    """The store failed less than a second ago: not tried, so the caller answers at once."""


Decided = Callable[[BatchOutput], None]  # called with a batch's final outputs, before its state write


async def _raising(exc: Exception) -> list[tuple[bool, UserState | None]]:
    raise exc


__all__ = ["BatchOutput", "CircuitOpen", "Engine", "EngineConfig", "RawMessage"]  # records re-exported


class Engine(EngineLearning):
    def __init__(
        self, store: RedisFeatureStore, policy_ctx: PolicyContext, policy: Policy, metrics: Metrics,
        config: EngineConfig, bids: BidSignaller | None = None, shadow_policy: Policy | None = None,
        models: LiveModels | None = None,
    ) -> None:
        self.store = store
        self.policy_ctx = policy_ctx
        self.policy = policy
        self.metrics = metrics
        self.config = config
        self.bids = bids or BidSignaller()
        self.shadow_policy = shadow_policy  # a challenger: learns like the live policy, is never shown
        # the policies the settings built (untrained copies): a restored policy runs under their types and
        # decision hyperparameters
        self.configured_policy, self.configured_shadow = policy, shadow_policy
        self.models = models  # River models: scores in decisions, churn labels, the label join
        self._shadow_log = ShadowLog(shadow_policy.name) if shadow_policy is not None else None
        self.lift = LiftTracker()
        self._clock = EventClock()  # the stream's event time: which timestamps are believed
        self.learned_offsets: dict[int, int] = {}  # learning-topic partition -> next offset applied
        self.lift_offsets: dict[int, int] = {}  # ... counted by the lift (differs while following a rollback)
        self.learned_watermark = 0.0
        join = models.config.join if models is not None else JoinConfig()
        self.sources = SourceProgress(join.max_source_lag_s)  # closes the label join's windows
        self._seen = SeenKeys()  # keys of learning samples applied recently
        self._lift_seen: SeenKeys | None = None  # the lift's, once a rollback reset _seen (follow_rollback)
        self._unapplied: deque[FeatureUpdate] = deque()  # updates to replay once Redis answers again
        self._store_retry_at = 0.0  # monotonic time before which a failed store is not tried again
        self._store_logged_at = 0.0  # monotonic time of the last store-failure log line
        self._replaying = asyncio.Lock()  # HTTP requests and the agent may both find updates to replay
        # the users refused, and the key of their digests (bound on the store with them: ``erased``)
        self._erased = ErasedUsers(store.user_digest) if store.user_digest is not None else None
        self._policy_states = PolicyStates()  # decoded policy states of recent users
        self._in_flight = WritesInFlight()  # decision-state writes a read may not show yet (engine/inflight.py)
        # decision-state writes Redis did not take, oldest first, as (WritesInFlight handle, writes): retried
        # before the next write and by the timer, still patched into reads meanwhile (``_store_writes``)
        self._unstored: deque[tuple[int, dict[str, dict[str, str]]]] = deque()
        # WritesInFlight handle -> per user whose policy state it writes, the policy state its decisions were
        # made from (None: none stored): the value the write expects Redis to hold (compare-and-set)
        self._bases: dict[int, dict[str, str | None]] = {}
        self._write_retry_at = 0.0  # monotonic time before which a failed write is not tried again
        self._write_logged_at = 0.0
        self._writes_kept = False  # a write failed since the last one Redis took
        self._write_turn_future: asyncio.Future[None] | None = None  # done when the last write sent has its answer
        # user id -> done when the batch that last took the user has its writes registered: a batch that
        # overlaps an earlier one still deciding (the intake's and a /decide batch run concurrently) waits
        # for it, so that its reads are patched with that batch's decision state instead of overwriting it
        self._deciding: dict[str, asyncio.Future[None]] = {}

    @property
    def erased(self) -> ErasedUsers | None:
        """Erased users (digests): no features, no learning, default action. None until the worker has read
        the erasure key, and the store writes nothing until then."""
        return self._erased

    @erased.setter
    def erased(self, erased: ErasedUsers) -> None:
        """The erased users as Redis has them (``ErasureRegistry.erased_users``); the first one also binds
        the store to its key, so that the store never writes before the legacy entries are known."""
        bound = self.store.user_digest
        if bound is not None and bound.key_id != erased.digest.key_id:
            raise ValueError(f"erased users digested with key {erased.digest.key_id}, but the store uses key "
                             f"{bound.key_id}: a worker keeps the erasure key it started with")
        new = erased.since(self._erased)
        if self.models is not None and new.keyed:
            self.models.forget(new.keyed)
        if new and self._unapplied:  # updates kept through an outage must not bring an erased user back
            kept = [u for u in self._unapplied if u.user_id not in new]
            self._unapplied = deque(kept)
            self.metrics.updates_pending.set(len(kept))
        if new and self._unstored:  # nor a decision-state write Redis did not take before the erasure
            for _, writes in self._unstored:
                for user_id in [u for u in writes if u in new]:
                    del writes[user_id]
            self.metrics.decision_state_unstored.set(self._unstored_users())
        self._erased = erased
        self.store.user_digest = erased.digest

    def prune_levers(self) -> int:
        """Drop levers that expired before any event time the clock still accepts (they can never apply
        again, and every request checks every lever); returns how many are left."""
        book = self.policy_ctx.levers
        if self._clock.corroborated:  # accepted events are at most max_lateness_s behind it (a skew's margin)
            book.prune(self._clock.corroborated - self.config.max_lateness_s - self.config.max_future_skew_s)
        return len(book.levers)

    @property
    def catalogue(self) -> Catalogue:
        return self.policy_ctx.catalogue

    def profile_scores(self, state: UserState, at: float) -> dict:
        """Model scores of one customer at event time ``at`` (every catalogue action), for /profile."""
        if self.models is None:
            return {}
        probe = Event(event_id="profile", user_id=state.user_id, ts=at, type="page_view", topic="web-events",
                      channel="web")
        return self.models.profile_scores(build_context(probe, state), list(self.catalogue.actions))

    async def process(self, messages: list[RawMessage], decided: Decided | None = None,
                      source: str = "intake") -> BatchOutput:
        """Validate, apply and decide a batch, then store its decision state.

        ``decided`` (optional) is called with the batch's outputs as soon as they are final, before the
        decision-state write goes to Redis: an HTTP caller answers while that write is in flight (its
        outcome only changes metrics and the log, never the outputs). ``source`` labels the batch's time
        and size: ``intake`` (input topics) or ``http`` (GET /decide batches, many and small)."""
        started = time.perf_counter()
        out = BatchOutput()
        bases: dict[str, str | None] = {}
        try:
            events = self._validate(messages, out)
            writes = await self._decide_in_turn(events, out, bases) if events else {}
        finally:  # the decisions emitted, counted even when the engine failed part-way (as when counted one by one)
            self._count_decisions(out.decisions)
        seq = self._in_flight.register(writes) if writes else -1  # later reads are patched with it until stored
        if decided is not None:
            decided(out)
        if writes:
            await self._write(writes, seq, bases)
        metrics = self.metrics
        metrics.child(metrics.batch_latency, source).observe(time.perf_counter() - started)
        metrics.child(metrics.batch_size, source).observe(len(messages))
        return out

    async def process_isolating(self, messages: list[RawMessage], decided: Decided | None = None,
                                source: str = "intake") -> BatchOutput:
        """``process``, and if the engine's code raises, the batch again one event at a time: an event the
        engine fails on goes to dead-letters (``engine_error``) instead of stalling its partition forever.
        Events the failed attempt already applied come back as duplicates (their outputs are re-sent).
        ``decided``: as for ``process``, called once with the outputs (after the retries if there were)."""
        try:
            return await self.process(messages, decided, source)
        except FeatureStoreError:
            raise
        except Exception:
            log.exception("the engine failed on a batch of %d events; processing them one by one", len(messages))
        out = BatchOutput()
        for msg in messages:
            try:
                one = await self.process([msg], source=source)
            except FeatureStoreError:
                raise
            except Exception as exc:
                self._reject(msg, Rejection(Reason.ENGINE_ERROR, f"{type(exc).__name__}: {str(exc)[:200]}; "
                                            "please report it with this dead letter"), out)
                continue
            out.merge(one)
        if decided is not None:
            decided(out)
        return out

    async def _decide_in_turn(self, events: list[Event], out: BatchOutput,
                              bases: dict[str, str | None]) -> dict[str, dict[str, str]]:
        """``_apply``, after every earlier batch still deciding for one of these users has registered its
        writes (so this batch reads them, patched). Batches wait only for batches that started before
        them, so no two wait for each other; batches with no user in common run concurrently as before."""
        users = {e.user_id for e in events}
        deciding = self._deciding
        earlier = {f for u in users if (f := deciding.get(u)) is not None}
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for u in users:
            deciding[u] = turn
        try:
            if earlier:
                await asyncio.wait(earlier)
            return await self._apply(events, out, bases)
        finally:  # registered by the caller before it next awaits, so later batches see these writes
            turn.set_result(None)
            for u in users:
                if deciding.get(u) is turn:
                    del deciding[u]

    # -- steps ------------------------------------------------------------------------------------
    def _reject(self, msg: RawMessage, rejection: Rejection, out: BatchOutput) -> None:
        out.dead_letters.append(
            DeadLetter(msg.topic, msg.partition, msg.offset, rejection.reason.value, rejection.detail, msg.value)
        )
        self.metrics.dead_letters.labels(rejection.reason.value).inc()

    def _validate(self, messages: list[RawMessage], out: BatchOutput) -> list[Event]:
        parsed: list[Event] = []
        parsed_from: list[RawMessage] = []  # the message of each parsed event
        max_bytes = self.config.max_event_bytes
        for msg in messages:
            result = parse_event(msg.value, msg.topic, max_bytes)
            if not isinstance(result, Rejection):
                problem = self._wrong_channel(result)
                if problem is None:
                    parsed.append(result)
                    parsed_from.append(msg)
                    continue
                result = problem
            self._reject(msg, result, out)
        if not parsed:
            return []
        cfg = self.config
        limits = ClockLimits(cfg.max_future_skew_s, cfg.max_lateness_s, cfg.max_time_jump_s,
                             resync_events=cfg.watermark_resync_events, resync_min_users=RESYNC_MIN_USERS)
        verdicts = self._clock.judge(parsed, limits)  # engine/event_clock.py: the rules
        events: list[Event] = []
        timestamps = out.timestamps
        for msg, event, late in zip(parsed_from, parsed, verdicts, strict=True):
            if late is not None:
                self._reject(msg, late, out)
                continue
            events.append(event)
            timestamps[event.event_id] = msg.timestamp
        for (topic, etype), n in Counter(map(_TOPIC_AND_TYPE, events)).items():  # once per kind
            self.metrics.child(self.metrics.events, topic, etype).inc(n)
        self.metrics.watermark.set(self.watermark)
        return events

    def _lift_covers(self) -> Callable[[str], bool] | None:
        holdout = self.policy_ctx.holdout
        return holdout.covers if holdout is not None else None

    def _wrong_channel(self, event: Event) -> Rejection | None:
        """A request for a placement of another channel than its topic's (a page_view for the newsletter) is
        refused: decided, it would show email templates on the web and spend the user's email cap. So is one
        for a placement the catalogue does not know (a typo in the website's integration was answered "none"
        with nothing to tell it from a decision, while GET /decide refused it)."""
        if not event.kind.requests_decision:
            return None
        placement = self.policy_ctx.catalogue.placements.get(event.placement or "")
        if placement is not None and placement.channel == event.channel:
            return None
        fitting = sorted(p.id for p in self.policy_ctx.catalogue.placements.values() if p.channel == event.channel)
        if placement is None:
            return Rejection(Reason.INVALID_VALUE, f"unknown placement {(event.placement or '')[:64]!r}: a "
                             f"{event.type} ({event.topic}) asks for one of the catalogue's {event.channel} "
                             f"placements: {', '.join(fitting) or 'it has none'}")
        return Rejection(Reason.INVALID_VALUE, f"placement {placement.id!r} is on the {placement.channel} channel, "
                         f"but a {event.type} ({event.topic}) asks for a {event.channel} placement: "
                         f"{', '.join(fitting) or 'the catalogue has none'}")

    @property
    def watermark(self) -> float:
        """The largest event time accepted (0.0 before the first event)."""
        return self._clock.watermark

    async def flush_unapplied(self) -> None:
        """Replay kept updates without waiting for new traffic (a timer calls this every second)."""
        if self._unapplied and time.monotonic() >= self._store_retry_at and not await self._replay_unapplied():
            self._store_retry_at = time.monotonic() + 1.0

    async def _replay_unapplied(self) -> bool:
        """Re-apply updates kept during an outage (idempotent: the dedup ring drops what did land)."""
        async with self._replaying:
            return await self._replay_locked()

    async def _replay_locked(self) -> bool:
        while self._unapplied:
            chunk = [self._unapplied[i] for i in range(min(5000, len(self._unapplied)))]
            try:
                await self.store.apply(chunk)
            except FeatureStoreError:
                return False
            self._refused(chunk)
            sent = {id(u) for u in chunk}  # by identity: an erasure may have filtered the deque meanwhile
            while self._unapplied and id(self._unapplied[0]) in sent:
                self._unapplied.popleft()
            self.metrics.updates_replayed.inc(len(chunk))
        self.metrics.updates_pending.set(0)
        return True

    def _keep_for_replay(self, updates: list[FeatureUpdate]) -> None:
        for upd in updates:
            upd.want_state = False
            self._unapplied.append(upd)
        overflow = len(self._unapplied) - self.config.retry_buffer_max
        for _ in range(max(0, overflow)):
            self._unapplied.popleft()
        if overflow > 0:
            self.metrics.updates_lost.inc(overflow)
            log.error("feature store unreachable: retry buffer full, %d oldest updates dropped", overflow)
        self.metrics.updates_pending.set(len(self._unapplied))

    async def _apply(self, events: list[Event], out: BatchOutput,
                     bases: dict[str, str | None] | None = None) -> dict[str, dict[str, str]]:
        """Apply the events to the feature store and decide, chunk by chunk: while one chunk is decided,
        Redis already applies the next (its states lack this chunk's decision writes, which ``writes``
        patches in, as for two events of one user in the same chunk). Returns the decision-state writes;
        ``bases`` gets each user's policy state as first read (``_decide_chunk``)."""
        if self._erased:
            events = self._without_erased(events, self._erased, out)
            if not events:
                return {}
        updates = [update_for(e, store_profile=e.consent is not False) for e in events]
        writes: dict[str, dict[str, str]] = defaultdict(dict)
        loading: Awaitable[list[tuple[bool, UserState | None]]] | None = None  # the next chunk's call, sent
        loading_tick: int | None = None  # when it was sent (WritesInFlight)
        in_flight = self._in_flight
        size = chunk_size(len(events))
        try:
            for start in range(0, len(events), size):
                chunk, chunk_updates = events[start : start + size], updates[start : start + size]
                tick, loading_tick = (loading_tick if loading_tick is not None else in_flight.read_sent()), None
                try:
                    try:
                        results = await (loading if loading is not None else self._load_now(chunk_updates))
                    except FeatureStoreError as exc:
                        loading = None
                        self._store_failed(exc, chunk, chunk_updates, out)
                        continue
                    loading = None
                    if self._refused(chunk_updates):  # users erased since this worker last followed erasures
                        chunk, results = self._without_refused(chunk, chunk_updates, results, out)
                    following = updates[start + size : start + 2 * size]
                    if following:  # sent now: Redis works on it while this chunk is decided
                        loading_tick = in_flight.read_sent()
                        loading = await self._load_ahead(following)
                    self._decide_chunk(chunk, results, writes, out, in_flight.patches(tick), bases)
                finally:
                    in_flight.read_done(tick)
        finally:
            if loading is not None:  # the engine failed mid-batch: the call in flight still finishes
                with contextlib.suppress(Exception):
                    await loading
            if loading_tick is not None:
                in_flight.read_done(loading_tick)
        if self.models is not None:
            self.models.advance_activity(self.watermark)
        return writes

    async def _write(self, writes: dict[str, dict[str, str]], seq: int,
                     bases: dict[str, str | None] | None = None) -> None:
        """Store the batch's decision state (pending decisions, policy states), with any earlier write
        Redis did not take, in one call.

        One write is out at a time, in the order batches were decided (a batch decided while an earlier
        one's write is in flight waits for it), so Redis applies them in the order ``WritesInFlight``
        patches them in."""
        async with self._write_turn():
            self._unstored.append((seq, writes))
            if bases:
                self._bases[seq] = bases
            await self._store_writes()

    async def flush_unstored(self) -> None:
        """Retry decision-state writes Redis did not take, without waiting for the next batch (a timer)."""
        if self._unstored and time.monotonic() >= self._write_retry_at:
            async with self._write_turn():
                await self._store_writes()

    @contextlib.asynccontextmanager
    async def _write_turn(self) -> AsyncIterator[None]:
        previous, turn = self._write_turn_future, asyncio.get_running_loop().create_future()
        self._write_turn_future = turn
        try:
            if previous is not None and not previous.done():
                await asyncio.shield(previous)
            yield
        finally:
            if not turn.done():
                turn.set_result(None)

    async def _store_writes(self) -> None:
        """Write every unstored write as one (in order, later fields win: each write sets whole fields
        computed from states patched with the earlier ones, so the merge is what Redis would hold after
        storing them one by one). On failure they stay: later reads are still patched with them, and the
        next write or the timer tries again (a second later at the earliest). Cancelled in flight, they stay
        too: whether Redis has them is not known, and storing them again is harmless (fields are set).
        Called in the write turn."""
        unstored = self._unstored
        if len(unstored) > 1 and time.monotonic() < self._write_retry_at:
            self._keep_bounded()  # Redis failed a moment ago: keep this one with the others, try later
            return
        expected: dict[str, str | None] = {}  # per user, the policy state the earliest write of it started from
        if len(unstored) == 1:  # the usual case: this batch's write alone
            seq, merged = unstored[0]
            expected = self._bases.get(seq, expected)
        else:
            merged = {}
            for seq, writes in unstored:
                bases = self._bases.get(seq, {})
                for user_id, fields in writes.items():
                    if fields:
                        if POLICY_STATE_FIELD in fields and user_id not in expected:
                            expected[user_id] = bases.get(user_id)
                        merged.setdefault(user_id, {}).update(fields)
        started = time.perf_counter()
        try:
            conflicts = await self.store.write_fields(merged, expected, POLICY_STATE_FIELD)
            if conflicts:  # another process wrote these users' policy states since they were read
                await self._merge_policy_states(conflicts, merged, expected)
        except FeatureStoreError as exc:
            self.metrics.store_errors.labels("write").inc()
            self._write_retry_at = time.monotonic() + 1.0
            self._writes_kept = True
            if time.monotonic() - self._write_logged_at >= 10.0:  # one line per outage and every 10 s
                self._write_logged_at = time.monotonic()
                log.error("%s; decision state of %d users kept, retried every second (counted in "
                          "cadence_decision_state_unstored_users)", exc, len(merged))
            self._keep_bounded()
            return
        self.metrics.store_latency.labels("write").observe(time.perf_counter() - started)
        for seq, _ in unstored:
            self._in_flight.acknowledge(seq)
            self._bases.pop(seq, None)
        unstored.clear()
        if self._writes_kept:  # after an outage: nothing kept any more
            self._writes_kept = False
            self.metrics.decision_state_unstored.set(0)

    async def _merge_policy_states(self, conflicts: dict[str, str | None], merged: dict[str, dict[str, str]],
                                   expected: dict[str, str | None]) -> None:
        """Store the policy states Redis did not take (another process wrote them since they were read) as
        the three-way merge of what this write's decisions started from (``expected``), what it wanted to
        store and what Redis holds now (policy/merge.py), compare-and-set again, ``MERGE_ATTEMPTS`` times at
        most. The users' other fields are already stored. A store failure raises (the whole write is kept
        and retried, and its merge with it).

        A value this engine wrote itself is not merged: a write Redis applied but whose reply was lost is kept
        and retried with the later batches' writes, which expect the earliest one's base; Redis then holds one
        of the engine's own kept policy states, which the one it wants to store was decided from (reads are
        patched with kept writes). That one is stored as it is, expecting the value Redis holds. Merged, the
        engine's own changes were counted twice (contacts) or taken for concurrent ones (a click wiped out
        the ignored exposures after it)."""
        states = self._policy_states
        own = self._kept_policy_states(conflicts)
        for _ in range(MERGE_ATTEMPTS):
            retry: dict[str, dict[str, str]] = {}
            expect: dict[str, str | None] = {}
            merges = 0
            for user_id, current in conflicts.items():
                ours = merged.get(user_id, {}).get(POLICY_STATE_FIELD)
                # None: the user was erased while the write was out (its fields were dropped from it)
                if ours is None or current == ours:  # or Redis has it already (an earlier reply was lost)
                    continue
                if current is not None and current in own.get(user_id, ()):  # an earlier write of ours
                    text = ours
                else:  # another process's
                    text = states.encode(merge_states(states.decoded(expected.get(user_id)), states.decoded(ours),
                                                      states.decoded(current)))
                    merges += 1
                retry[user_id] = {POLICY_STATE_FIELD: text}
                expect[user_id] = current
                self._wrote_merged(user_id, text, current)
            self.metrics.policy_state_merges.labels("merged").inc(merges)
            if not retry:
                return
            conflicts = await self.store.write_fields(retry, expect, POLICY_STATE_FIELD)
            if not conflicts:
                return
            # merge again, from the value just computed: the base is what Redis held, ours the merge
            expected = expect
            merged = retry
        self.metrics.policy_state_merges.labels("given_up").inc(len(conflicts))
        log.warning("policy states of %d users changed by another process %d times while this one merged "
                    "them: merge given up, those users keep the other process's state", len(conflicts),
                    MERGE_ATTEMPTS)

    def _kept_policy_states(self, users: Iterable[str]) -> dict[str, set[str]]:
        """Per user of ``users``, the policy states of this engine's writes Redis has not confirmed
        (``_unstored``: the write out now and those kept after a failure; forgotten with them). Redis may
        hold any of them: a write it applied whose reply was lost."""
        kept: dict[str, set[str]] = {}
        for _, writes in self._unstored:
            for user_id in users:
                text = writes[user_id].get(POLICY_STATE_FIELD) if user_id in writes else None
                if text is not None:
                    kept.setdefault(user_id, set()).add(text)
        return kept

    def _wrote_merged(self, user_id: str, text: str, current: str | None) -> None:
        """Lay the merged policy state into the latest unstored write of the user (reads patched with it,
        WritesInFlight, then see the merge rather than the state before it) and make ``current``, the
        value it was merged with, the base of the earliest: should this write fail and be retried, it
        expects what the merge was computed from, and Redis' state is not counted twice. (``text`` is the
        write's own state when ``current`` is an earlier write of this engine's: only the base moves.)"""
        with_state = [(seq, writes) for seq, writes in self._unstored if POLICY_STATE_FIELD in writes.get(user_id, ())]
        if not with_state:
            return
        with_state[-1][1][user_id][POLICY_STATE_FIELD] = text
        self._bases.setdefault(with_state[0][0], {})[user_id] = current

    def _keep_bounded(self) -> None:
        """At most ``retry_buffer_max`` users' decision state kept: the oldest writes go first (counted)."""
        users = self._unstored_users()
        while users > self.config.retry_buffer_max and len(self._unstored) > 1:
            seq, oldest = self._unstored.popleft()
            self._in_flight.drop(seq)
            self._bases.pop(seq, None)
            self.metrics.decision_state_lost.inc(len(oldest))
            log.error("feature store unreachable: decision state of %d users dropped (buffer full)", len(oldest))
            users = self._unstored_users()
        self.metrics.decision_state_unstored.set(users)

    def _unstored_users(self) -> int:
        return len({user_id for _, writes in self._unstored for user_id in writes})

    async def _load(self, updates: list[FeatureUpdate]) -> list[tuple[bool, UserState | None]]:
        """One feature-store call, after replaying updates kept during an outage (the outage path)."""
        if time.monotonic() < self._store_retry_at:  # circuit open: answer fast, try again soon
            raise CircuitOpen("feature store unreachable a moment ago; retrying within a second")
        if self._unapplied and not await self._replay_unapplied():
            raise FeatureStoreError("feature store still unreachable (replaying earlier updates)")
        return await self.store.apply(updates)

    async def _load_now(self, updates: list[FeatureUpdate]) -> list[tuple[bool, UserState | None]]:
        """A chunk's call and its reply, on the store's own connection when it is free: about 35 us of CPU
        less than a pooled call, a tenth of a one-request /decide batch."""
        started = time.perf_counter()
        results = await (await self._load_ahead(updates))
        self.metrics.store_latency.labels("apply").observe(time.perf_counter() - started)
        return results

    async def _load_ahead(self, updates: list[FeatureUpdate]) -> Awaitable[list[tuple[bool, UserState | None]]]:
        """The next chunk's call, sent now; the awaitable reads its reply (or raises FeatureStoreError)."""
        if time.monotonic() < self._store_retry_at or self._unapplied:
            return self._load(updates)  # the outage path, run when awaited
        try:
            return await self.store.apply_ahead(updates)
        except FeatureStoreError as exc:
            return _raising(exc)

    def _store_failed(self, exc: FeatureStoreError, events: list[Event], updates: list[FeatureUpdate],
                      out: BatchOutput) -> None:
        """The store did not take these events: keep their updates for replay, answer with fallbacks."""
        self.metrics.store_errors.labels("apply").inc()
        if not isinstance(exc, CircuitOpen):  # only a real failure re-arms the breaker
            self._store_retry_at = time.monotonic() + 1.0
        if not isinstance(exc, CircuitOpen) or time.monotonic() - self._store_logged_at >= 10.0:
            self._store_logged_at = time.monotonic()  # one line per outage and every 10 s, not per batch
            log.error("%s; %d events kept for replay, requests got fallback decisions (counted in "
                      "cadence_feature_store_errors_total)", exc, len(events))
        self._keep_for_replay(updates)
        for event in events:
            if event.kind.requests_decision:
                unavailable = fallback(event, self.policy_ctx, self.policy, "feature_store_unavailable",
                                       consent_unread(event))
                self._emit(unavailable.decision, out)
            elif event.kind.reward is not None:
                self.metrics.rewards.labels("store_unavailable").inc()

    def _decide_chunk(self, events: list[Event], results: list[tuple[bool, UserState | None]],
                      writes: dict[str, dict[str, str]], out: BatchOutput,
                      unseen: dict[str, dict[str, str]] | None = None,
                      bases: dict[str, str | None] | None = None) -> None:
        """``unseen``: writes of earlier batches the chunk's read may not show (WritesInFlight.patches).
        ``bases`` gets, per user, the policy state the batch's decisions start from: the stored one as
        first read, patched with the earlier batches' writes but not with this batch's own (the value a
        policy-state write of this batch expects Redis to hold; a user met only without a state is left
        out: decided from an empty state, its write expects none)."""
        kinds = [e.kind for e in events]
        batch = BatchContexts.build(
            self.policy, [(i, e, r[1]) for i, (e, kind, r) in enumerate(zip(events, kinds, results, strict=True))
                          if kind.requests_decision],
            self.models.scorer if self.models is not None else None,
        )
        for position, (event, kind, (applied, state)) in enumerate(zip(events, kinds, results, strict=True)):
            if state is not None:
                user = event.user_id
                if unseen and user in unseen:
                    state.fields.update(unseen[user])  # decisions of earlier batches, not stored yet
                if bases is not None and user not in bases:
                    bases[user] = state.fields.get(POLICY_STATE_FIELD)
                earlier = writes.get(user)
                if earlier:
                    state.fields.update(earlier)  # decisions made earlier in this batch
            if not applied:
                self.metrics.duplicates.inc()
                self._replay_duplicate(event, state, writes, out, batch, position)
                continue
            if kind.requests_decision:
                self._decide(event, state, writes, out, batch, position)
            elif kind.reward is not None:
                self._credit(event, state, writes, out)

    def _replay_duplicate(self, event: Event, state: UserState | None, writes: dict, out: BatchOutput,
                          batch: BatchContexts | None = None, position: int = -1) -> None:
        """A duplicate changes nothing, but its outputs may have been lost by a crash: send them again."""
        if event.kind.requests_decision:
            replay = replayed_decision(event, state, self.policy.name)
            if replay is not None:
                self.metrics.replayed_requests.labels("reemitted").inc()
                self._emit(replay[0], out)
                out.learning.append(replay[1])
            elif (again := replayed_without_consent(event, state, self.policy_ctx, self.policy,
                                                    self._policy_states)) is not None:
                self.metrics.replayed_requests.labels("reemitted").inc()
                self._emit(again.decision, out)  # no pending record, no learning sample: none was made
            elif decision_never_stored(event, state):  # killed before its state was written, or it showed nothing
                self.metrics.replayed_requests.labels("redecided").inc()
                self._decide(event, state, writes, out, batch, position, redecided=True)
            else:  # KEEP newer decisions of its placement are kept instead: the website shows those
                self.metrics.replayed_requests.labels("superseded").inc()
        elif event.kind.reward is not None:
            sample = replayed_reward(event, state, self.config.click_reward, self.catalogue.value_scale,
                                     self.config.windows)
            if sample is not None:
                out.learning.append(sample)
            else:  # the credit itself may not have been stored: credit now (once, as ever)
                self._credit(event, state, writes, out)

    def _without_erased(self, events: list[Event], erased: ErasedUsers, out: BatchOutput) -> list[Event]:
        """Erased users get the default action and leave no trace in features or learning (a user erased
        before digests were keyed is refused here only: the store's scripts check the keyed set)."""
        kept = []
        for event in events:
            if event.user_id not in erased:
                kept.append(event)
                continue
            self._erased_event(event, out)
        return kept

    def _erased_event(self, event: Event, out: BatchOutput) -> None:
        self.metrics.erased_events.inc()
        if event.kind.requests_decision:
            self._emit(fallback(event, self.policy_ctx, self.policy, "erased_user", consent_unread(event)).decision,
                       out)

    def _refused(self, updates: list[FeatureUpdate]) -> bool:
        """Whether Redis refused some of these updates (apply_batch.lua: their users are in the erased set,
        erased after this worker last followed the erasures); their digests join ``erased`` at once, so
        later batches leave them out without asking Redis, and kept writes of them are dropped."""
        refused = [u.user_id for u in updates if u.erased]
        if not refused:
            return False
        assert self._erased is not None  # the store wrote nothing without the erasure key
        self.erased = self._erased.with_users(refused)
        return True

    def _without_refused(self, events: list[Event], updates: list[FeatureUpdate],
                         results: list[tuple[bool, UserState | None]],
                         out: BatchOutput) -> tuple[list[Event], list[tuple[bool, UserState | None]]]:
        """The events whose updates Redis took, with their results; the others are an erased user's
        (``_erased_event``: the default action, nothing learned, nothing stored)."""
        kept: list[Event] = []
        kept_results: list[tuple[bool, UserState | None]] = []
        for event, upd, result in zip(events, updates, results, strict=True):
            if upd.erased:
                self._erased_event(event, out)
            else:
                kept.append(event)
                kept_results.append(result)
        return kept, kept_results

    def _emit(self, decision: Decision, out: BatchOutput) -> None:
        """Add ``decision`` to the batch's outputs (``process`` counts them in ``cadence_decisions_total``)."""
        out.decisions.append(decision)
        out.request_timestamps.append(out.timestamps.get(decision.request_event_id, 0.0))

    def _count_decisions(self, decisions: list[Decision]) -> None:
        """``cadence_decisions_total`` for a batch's decisions: one increment per label set, not per decision
        (a prometheus-client increment takes a lock, about 1 us)."""
        if not decisions:
            return
        counts = Counter((d.placement, d.action, d.mode) for d in decisions)
        placements, metrics = self.policy_ctx.catalogue.placements, self.metrics
        for (placement, action, mode), n in counts.items():
            # a placement the catalogue does not know comes from the sender: one label for all (bounded series)
            label = placement if placement in placements else "unknown"
            metrics.child(metrics.decisions, label, action, mode.value).inc(n)

    def _decide(self, event: Event, state: UserState | None, writes: dict, out: BatchOutput,
                batch: BatchContexts | None = None, position: int = -1, redecided: bool = False) -> None:
        decided = decide(event, state, self.policy_ctx, self.policy, self.models, self._policy_states, batch,
                         position)
        decision = decided.decision
        if redecided:  # same id as the first time, decided again from today's state: it may differ
            decision.trace["replayed"] = "redecided"
        self._emit(decision, out)
        if (self.models is not None and decided.x is not None and event.type in ACTIVITY_TYPES
                and self._erased is not None):  # watched by their keyed digest: erasures drop it by that
            self.models.observe(self._erased.digest.of(event.user_id), event.ts, decided.x)
        if decided.policy_state is not None:
            writes[event.user_id][POLICY_STATE_FIELD] = decided.policy_state
        pending = decided.pending
        if pending is None:
            if decided.lift_only and decided.x is not None:
                out.learning.append(lift_only_exposure(decision, decided.x, decided.lift_control))
            return
        writes[event.user_id][pending.field] = slot_with(state, pending)
        eligible = decision.trace.get("eligible")
        out.learning.append(
            LearningSample(  # positional: a class's __init__ called with keywords gets them in a new dict
                "exposure",  # kind
                pending.decision_id,
                pending.action,
                pending.x,
                0.0,  # reward
                pending.probability,
                pending.placement,
                event.ts,
                pending.mode,
                "",  # reward_type
                eligible if decision.mode in DRAWN else None,
                user_bucket(event.user_id),
            )
        )
        # the challenger's bare choice (no arbitration) next to every learned decision, sticky ones too: for
        # watching it, not for weighting (ope/shadow.py says why)
        if self.shadow_policy is not None and self._shadow_log is not None and eligible and \
                decision.mode.value in ("explore", "exploit", "sticky"):
            choice = self.shadow_policy.select(pending.x, eligible)
            record = self._shadow_log.record(decision, choice, self.shadow_policy.version)
            out.shadow.append(record)
            self.metrics.shadow.labels("agree" if record.agrees else "differ").inc()
        if decision.channel == "ad" and decision.action in self.catalogue.actions:
            signal = self.bids.signal(decision, decided.expected_value)
            if signal is not None:
                out.bid_signals.append(signal)

    def _credit(self, event: Event, state: UserState | None, writes: dict, out: BatchOutput) -> None:
        pending = pending_decisions(state) if state is not None else []
        target = match_pending(event, pending, self.config.windows)
        outcome = credit(event, target, self.config.windows)
        self.metrics.child(self.metrics.rewards, outcome.value).inc()
        reward_type = event.kind.reward
        reward = self.config.click_reward if reward_type == "click" else event.revenue / self.catalogue.value_scale
        holdout = self.policy_ctx.holdout
        if holdout is not None and reward > 0:
            # a reward of a grouped user that no decision of the lift takes: the lift counts it all the same,
            # so that it counts every reward after a user's decisions whatever they showed (``lift_decision``)
            lifted = lift_only_decision(event, pending, target if outcome is Credit.CREDITED else None,
                                        self.config.windows, holdout.covers)
            if lifted is not None:
                out.learning.append(lift_only_reward(event, lifted, reward))
                self.metrics.lift_only_rewards.inc()
        if outcome is not Credit.CREDITED or target is None:
            return
        writes[event.user_id][target.field] = slot_with(state, target)
        if reward_type == "click" and state is not None:
            placement = self.catalogue.placements.get(target.placement)
            channel = placement.channel if placement else event.channel
            states = self._policy_states
            writes[event.user_id][POLICY_STATE_FIELD] = states.encode(states.of(state).after_click(channel))
        if reward > 0:
            out.learning.append(
                LearningSample(
                    kind="reward",
                    decision_id=target.decision_id,
                    action=target.action,
                    x=target.x,
                    reward=reward,
                    probability=target.probability,
                    placement=target.placement,
                    ts=event.ts,
                    mode=target.mode,
                    reward_type=reward_type or "",
                    user_bucket=user_bucket(event.user_id),
                )
            )
