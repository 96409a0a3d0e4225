"""The load every contender gets: a realistic, seeded mix of web, email and ad events for many users.

Requests (page views, email requests, ad requests) follow ``simulator.traffic.REQUEST_MIX`` and the
simulator's users (``simulator.world.World``: segments, devices, consent, skewed activity). Responses
refer to the request they answer by its deterministic decision id (``contracts.decisions.decision_id_for``),
so clicks and conversions are credited by the engine as they would be live: clicks after a few minutes of
event time, conversions after a click, email opens after an email. Event time advances
``requests_per_sim_s`` requests per simulated second, as in the simulator, whatever the wall clock does.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass

import numpy as np
import orjson

from contracts.decisions import decision_id_for
from policy.catalogue import Catalogue
from simulator import traffic
from simulator.loop import START_TS
from simulator.world import World

CHANNEL_OF_TOPIC = {"web-events": "web", "email-events": "email", "ad-events": "ad"}
CLICK_SHARE = {"web": 0.06, "email": 0.08, "ad": 0.02}  # share of requests answered by a click
EMAIL_OPEN_SHARE = 0.35  # share of email requests answered by an open
CONVERSION_SHARE = 0.25  # share of clicks followed by a conversion
MEAN_OPEN_DELAY_S = 300.0
USER_BLOCK = 4096  # users drawn per call to the generator (drawing one at a time is slow)
REQUEST_TYPES = frozenset(etype for _, _, etype, _ in traffic.REQUEST_MIX)


@dataclass(frozen=True, slots=True)
class LoadEvent:
    out: traffic.Outgoing  # topic (logical), key, value, ts
    event_id: str
    user_id: str
    requests_decision: bool


class EventMix:
    """Deterministic event stream; ``take(n)`` continues where the last call stopped."""

    def __init__(self, catalogue: Catalogue, users: int, seed: int, requests_per_sim_s: float = 5.0) -> None:
        self.catalogue = catalogue
        self.users = users
        self.seed = seed
        self.requests_per_sim_s = requests_per_sim_s
        self._world = World(catalogue, n_users=users, seed=seed)
        self._rng = np.random.default_rng(seed + 1)
        self._due: list[tuple[float, int, traffic.Outgoing]] = []
        self._requests = 0
        self._seq = 0
        self._user_block: list[int] = []
        self._eligible = {p: sorted(catalogue.eligible(p)) or ["none"] for p in catalogue.placements}
        self.types: Counter[str] = Counter()

    def _next_id(self) -> str:
        self._seq += 1
        return f"b{self.seed}-{self._seq}"

    def _user(self) -> int:
        if not self._user_block:
            w = self._world
            self._user_block = list(self._rng.choice(len(w.users), size=USER_BLOCK, p=w.user_weights)[::-1])
        return int(self._user_block.pop())

    def _schedule(self, out: traffic.Outgoing) -> None:
        self._seq += 1
        heapq.heappush(self._due, (out.ts, self._seq, out))

    def _answer(self, event_id: str, user_id: str, ts: float, channel: str, placement: str) -> None:
        """Schedule the responses to one request (if any), in event time."""
        rng = self._rng
        decision_id = decision_id_for(event_id, placement)
        if channel == "email" and rng.random() < EMAIL_OPEN_SHARE:
            open_ts = round(ts + rng.exponential(MEAN_OPEN_DELAY_S), 3)
            doc = {"event_id": self._next_id(), "user_id": user_id, "ts": open_ts, "type": "email_open",
                   "decision_id": decision_id, "placement": placement}
            self._schedule(traffic.Outgoing("email-events", user_id.encode(), orjson.dumps(doc), doc["ts"]))
        if rng.random() >= CLICK_SHARE[channel]:
            return
        eligible = self._eligible[placement]
        action = eligible[int(rng.integers(len(eligible)))]
        click_ts = ts + float(rng.exponential(traffic.MEAN_CLICK_DELAY_S))
        self._schedule(
            traffic.click_event(self._next_id(), user_id, click_ts, channel, decision_id, action, placement)
        )
        if channel == "web" and rng.random() < CONVERSION_SHARE:
            conv_ts = click_ts + float(rng.exponential(traffic.MEAN_CONVERSION_DELAY_S))
            value = self.catalogue.actions[action].value if action in self.catalogue.actions else 10.0
            self._schedule(
                traffic.conversion_event(self._next_id(), user_id, conv_ts, decision_id, action, value)
            )

    def _request(self) -> traffic.Outgoing:
        self._requests += 1
        ts = START_TS + self._requests / self.requests_per_sim_s
        user = self._world.users[self._user()]
        pick, acc, row = self._rng.random(), 0.0, traffic.REQUEST_MIX[-1]
        for candidate in traffic.REQUEST_MIX:
            acc += candidate[0]
            if pick <= acc:
                row = candidate
                break
        _, topic, etype, placement = row
        event_id = self._next_id()
        self._answer(event_id, user.user_id, ts, CHANNEL_OF_TOPIC[topic], placement)
        return traffic.request_event(event_id, user, ts, topic, etype, placement)

    def _next(self) -> traffic.Outgoing:
        next_request_ts = START_TS + (self._requests + 1) / self.requests_per_sim_s
        if self._due and self._due[0][0] <= next_request_ts:
            return heapq.heappop(self._due)[2]
        return self._request()

    def take(self, n: int) -> list[LoadEvent]:
        """The next ``n`` events, in event-time order."""
        out = []
        for _ in range(n):
            o = self._next()
            doc = orjson.loads(o.value)
            self.types[f"{o.topic}/{doc['type']}"] += 1
            out.append(LoadEvent(o, doc["event_id"], doc["user_id"], doc["type"] in REQUEST_TYPES))
        return out
