"""The closed loop: send requests, read the engine's decisions, answer them in event time, keep score.

The simulated clock is driven by the number of requests sent (``requests_per_sim_s``), not by the wall
clock, so the same seed gives the same event times however fast the machine is. Responses are due at
decision time + a random delay and are sent once the simulated clock passes them.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from simulator import traffic
from simulator.world import Context, World

START_TS = 1_767_600_000.0  # 2026-01-05 08:00:00 UTC, a Monday morning
CURVE_EVERY = 5000  # decisions per point of the learning curve


@dataclass(slots=True)
class Request:
    user_id: str
    placement: str
    channel: str
    ctx: Context
    consent: bool
    sent_wall: float


@dataclass
class _Totals:
    n: int = 0
    engine: float = 0.0
    random: float = 0.0
    oracle: float = 0.0
    available: float = 0.0  # the oracle restricted to the actions the engine could choose (trace.eligible)

    def add(self, engine: float, random: float, oracle: float, available: float) -> None:
        self.n += 1
        self.engine += engine
        self.random += random
        self.oracle += oracle
        self.available += available

    def rates(self) -> dict[str, float]:
        n = max(self.n, 1)
        return {"engine": self.engine / n, "random": self.random / n, "oracle": self.oracle / n,
                "available_oracle": self.available / n}


CHOSEN_MODES = ("explore", "exploit")


@dataclass
class Scoreboard:
    """Expected reward per decision of the engine, of a uniform random policy and of two oracles.

    ``oracle`` plays the best action of the placement, ignoring contact caps. ``available_oracle`` plays
    the best of the actions the engine could choose at that moment (the decision's ``trace.eligible``,
    after caps, dates and budgets): the regret of a policy whose action set changes from call to call
    ("sleeping bandits"), which the policy itself is responsible for. The display slot's 6-per-day
    creative cap removes the uncapped oracle's favourite more often as a simulated day goes on.
    ``chosen`` covers the decisions the policy chose freely (explore/exploit): how good the learned
    policy is. ``all`` covers every decision for consenting users, including the ones the business rules
    settled (sticky, holdout, pinned, suppressed, fallback): what the engine earns with its rules.
    """

    decisions: int = 0
    all: _Totals = field(default_factory=_Totals)
    chosen: _Totals = field(default_factory=_Totals)
    realized: float = 0.0
    modes: Counter = field(default_factory=Counter)
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=20000))
    curve: list[dict[str, float]] = field(default_factory=list)
    curve_every: int = CURVE_EVERY
    _window: _Totals = field(default_factory=_Totals)

    def add(self, mode: str, engine: float, random: float, oracle: float, available: float) -> None:
        self.all.add(engine, random, oracle, available)
        if mode not in CHOSEN_MODES:
            return
        self.chosen.add(engine, random, oracle, available)
        w = self._window
        w.add(engine, random, oracle, available)
        if w.n >= self.curve_every:
            self.curve.append({"decisions": self.chosen.n, "engine": w.engine / w.n, "random": w.random / w.n,
                               "oracle": w.oracle / w.n, "available_oracle": w.available / w.n,
                               "engine_vs_oracle": w.engine / w.oracle if w.oracle else 0.0,
                               "engine_vs_available_oracle": w.engine / w.available if w.available else 0.0})
            self._window = _Totals()


@dataclass
class LoopStats:
    started_wall: float = field(default_factory=time.monotonic)
    requests: int = 0
    responses: int = 0
    bad_sent: Counter = field(default_factory=Counter)
    duplicates_sent: int = 0
    dead_letters: Counter = field(default_factory=Counter)
    sim_ts: float = START_TS
    outstanding: int = 0


class ClosedLoop:
    def __init__(
        self,
        world: World,
        bootstrap: str,
        topic: Callable[[str], str] = lambda name: name,
        rate: float = 1000.0,
        requests_per_sim_s: float = 5.0,
        seed: int = 1,
        bad_share: float = 0.002,
        duplicate_share: float = 0.005,
        max_outstanding: int = 5000,
        curve_every: int = CURVE_EVERY,
    ) -> None:
        self.world = world
        self.topic = topic
        self.rate = rate
        self.requests_per_sim_s = requests_per_sim_s
        self.bad_share = bad_share
        self.duplicate_share = duplicate_share
        self.max_outstanding = max_outstanding
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.score = Scoreboard(curve_every=curve_every)
        self.stats = LoopStats()
        self._requests: dict[str, Request] = {}
        self._due: list[tuple[float, int, traffic.Outgoing]] = []
        self._seq = 0
        self._recent: deque[traffic.Outgoing] = deque(maxlen=200)
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1, max_request_size=2_000_000)
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=0)
        parts = []
        for name in ("decisions", "dead-letters"):
            full = topic(name)
            ids = None
            deadline = time.monotonic() + 20
            while not ids and time.monotonic() < deadline:
                ids = self.consumer.partitions_for_topic(full)
                if not ids:
                    time.sleep(0.2)
            if not ids:
                raise RuntimeError(f"topic {full!r} has no partitions; create the topics first")
            parts += [TopicPartition(full, p) for p in ids]
        self.consumer.assign(parts)
        self.consumer.seek_to_end()
        self._decisions_topic = topic("decisions")

    # -- sending ----------------------------------------------------------------------------------
    def _next_id(self) -> str:
        self._seq += 1
        return f"s{self.seed}-{self._seq}"

    def _send(self, out: traffic.Outgoing) -> None:
        self.producer.send(self.topic(out.topic), key=out.key, value=out.value)

    def _send_request(self) -> None:
        world, rng = self.world, self.rng
        self.stats.requests += 1
        ts = START_TS + self.stats.requests / self.requests_per_sim_s
        self.stats.sim_ts = ts
        user = world.users[int(rng.choice(len(world.users), p=world.user_weights))]
        r = rng.random()
        if r < self.bad_share:
            out, reason = traffic.bad_event(rng, self._next_id(), user.user_id, ts)
            self.stats.bad_sent[reason] += 1
            self._send(out)
            return
        if r < self.bad_share + self.duplicate_share and self._recent:
            self._send(self._recent[int(rng.integers(len(self._recent)))])
            self.stats.duplicates_sent += 1
            return
        topic, etype, placement = traffic.pick_request(rng.random())
        event_id = self._next_id()
        out = traffic.request_event(event_id, user, ts, topic, etype, placement)
        channel = {"web-events": "web", "email-events": "email", "ad-events": "ad"}[topic]
        hour = (ts % 86400) / 3600
        self._requests[event_id] = Request(user.user_id, placement, channel, Context(user.segment, user.device, hour),
                                           user.consent, time.monotonic())
        self._recent.append(out)
        self._send(out)

    def _send_due(self) -> None:
        now = self.stats.sim_ts
        while self._due and self._due[0][0] <= now:
            _, _, out = heapq.heappop(self._due)
            self._send(out)
            self.stats.responses += 1

    def _schedule(self, out: traffic.Outgoing) -> None:
        heapq.heappush(self._due, (out.ts, self._seq, out))

    # -- receiving --------------------------------------------------------------------------------
    def _on_decision(self, doc: dict[str, Any]) -> None:
        req = self._requests.pop(doc.get("request_event_id", ""), None)
        if req is None:
            return
        sb = self.score
        sb.decisions += 1
        sb.modes[doc["mode"]] += 1
        sb.latencies_ms.append((time.monotonic() - req.sent_wall) * 1000)
        action, ctx, world = doc["action"], req.ctx, self.world
        if req.consent:
            _, best = world.oracle(req.placement, ctx)
            available = world.best_reward_among(doc.get("trace", {}).get("eligible") or [action], ctx)
            sb.add(doc["mode"], world.expected_reward(action, ctx), world.random_reward(req.placement, ctx), best,
                   available)
        p_click = world.click_probability(action, ctx)
        if p_click and self.rng.random() < p_click:
            click_ts = doc["ts"] + float(self.rng.exponential(traffic.MEAN_CLICK_DELAY_S))
            self._schedule(traffic.click_event(self._next_id(), req.user_id, click_ts, req.channel, doc["decision_id"],
                                               action, req.placement))
            sb.realized += world.click_reward
            if self.rng.random() < world.conversion_probability(action, ctx):
                value = world.catalogue.actions[action].value
                conv_ts = click_ts + float(self.rng.exponential(traffic.MEAN_CONVERSION_DELAY_S))
                self._schedule(traffic.conversion_event(self._next_id(), req.user_id, conv_ts, doc["decision_id"],
                                                        action, value))
                sb.realized += value / world.catalogue.value_scale

    def _poll(self, timeout_ms: int) -> None:
        batches = self.consumer.poll(timeout_ms=timeout_ms, max_records=5000)
        for tp, records in batches.items():
            for rec in records:
                doc = orjson.loads(rec.value)
                if tp.topic == self._decisions_topic:
                    self._on_decision(doc)
                else:
                    self.stats.dead_letters[doc.get("reason_code", "?")] += 1

    # -- driving ----------------------------------------------------------------------------------
    def run(self, duration_s: float, on_tick: Callable[[ClosedLoop], None] | None = None,
            should_stop: Callable[[], bool] = lambda: False, max_requests: int | None = None) -> None:
        start = time.monotonic()
        last_tick = start
        while not should_stop():
            now = time.monotonic()
            elapsed = now - start
            if elapsed >= duration_s or (max_requests is not None and self.stats.requests >= max_requests):
                break
            target = int(self.rate * elapsed)
            if max_requests is not None:
                target = min(target, max_requests)
            burst = 0
            while self.stats.requests < target and len(self._requests) < self.max_outstanding and burst < 500:
                self._send_request()
                self._send_due()
                burst += 1
            self.stats.outstanding = len(self._requests)
            self._poll(timeout_ms=5 if burst else 20)
            if on_tick and now - last_tick >= 1.0:
                last_tick = now
                on_tick(self)
        self.producer.flush()

    def drain(self, timeout_s: float = 10.0) -> None:
        """Wait for decisions still in flight (after the last request was sent)."""
        deadline = time.monotonic() + timeout_s
        while self._requests and time.monotonic() < deadline:
            self._poll(timeout_ms=100)
        self.stats.outstanding = len(self._requests)

    def close(self) -> None:
        self.producer.close(timeout=5)
        self.consumer.close()

    def summary(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.stats.started_wall, 1e-9)
        rates, overall = self.score.chosen.rates(), self.score.all.rates()
        lat = sorted(self.score.latencies_ms)
        pct = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 2)) if lat else (lambda q: None)
        return {
            "wall_s": round(elapsed, 1),
            "sim_hours": round((self.stats.sim_ts - START_TS) / 3600, 2),
            "requests_sent": self.stats.requests,
            "responses_sent": self.stats.responses,
            "decisions": self.score.decisions,
            "decisions_per_s": round(self.score.decisions / elapsed, 1),
            "decisions_pending": len(self._requests),
            "modes": dict(self.score.modes),
            "bad_events_sent": sum(self.stats.bad_sent.values()),
            "dead_letters": sum(self.stats.dead_letters.values()),
            "dead_letters_by_reason": dict(self.stats.dead_letters),
            "duplicates_sent": self.stats.duplicates_sent,
            "reward_per_decision": {k: round(v, 5) for k, v in rates.items()},
            "engine_vs_random": round(rates["engine"] / rates["random"], 3) if rates["random"] else None,
            "engine_vs_oracle": round(rates["engine"] / rates["oracle"], 3) if rates["oracle"] else None,
            "engine_vs_available_oracle": (
                round(rates["engine"] / rates["available_oracle"], 3) if rates["available_oracle"] else None
            ),
            "all_decisions_reward": {k: round(v, 5) for k, v in overall.items()},
            "all_decisions_vs_oracle": round(overall["engine"] / overall["oracle"], 3) if overall["oracle"] else None,
            "last_window_engine_vs_oracle": (
                round(self.score.curve[-1]["engine_vs_oracle"], 3) if self.score.curve else None
            ),
            "last_window_engine_vs_available_oracle": (
                round(self.score.curve[-1]["engine_vs_available_oracle"], 3) if self.score.curve else None
            ),
            "realized_reward_per_decision": round(self.score.realized / max(self.score.decisions, 1), 5),
            "decision_latency_ms": {"p50": pct(0.5), "p99": pct(0.99)},
            "curve": [{k: round(v, 4) for k, v in point.items()} for point in self.score.curve],
        }
