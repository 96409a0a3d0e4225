"""Reliability under faults, on real worker processes: a kill -9, a Redis outage, a broker outage.

Each scenario runs once per module (a fixture) and several tests read what it recorded, so one slow
fault serves every property checked on it. Redis and broker faults use a private embedded stack.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import pytest

from cadence.runtime import Runtime
from cadence.settings import DEFAULT_CATALOGUE
from contracts.decisions import LearningSample, decision_id_for
from policy.catalogue import load_catalogue
from tests.fault_helpers import (
    FeatureReader,
    RawReader,
    Traffic,
    isolate,
    metric_sum,
    metrics_or_empty,
    private_stack,
    wait_for,
)
from tests.helpers import T0, event, start_worker

pytestmark = pytest.mark.integration

CLICK_REWARD = 0.1  # the engine's default CADENCE_CLICK_REWARD
VALUE_SCALE = load_catalogue(DEFAULT_CATALOGUE).value_scale
PROFILE = {"device": "desktop", "segment": "loyal", "consent": True}


# -- traffic known in advance ------------------------------------------------------------------------
@dataclass
class Plan:
    """Rounds of events and what they must leave behind: counts per user, one decision per request,
    one reward sample per click and per conversion (decision ids are known in advance)."""

    rounds: list[list[tuple[str, dict]]] = field(default_factory=list)
    counts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # user -> pv/ck/cv/rv
    requests: dict[str, str] = field(default_factory=dict)  # request event id -> placement
    rewards: dict[tuple[str, str], float] = field(default_factory=dict)  # (decision id, reward kind) -> r

    @property
    def events(self) -> list[tuple[str, dict]]:
        return [item for batch in self.rounds for item in batch]


def shop_traffic(users: list[str], rounds: int, seed: int, click_p: float = 0.5, buy_p: float = 0.4,
                 step_s: float = 0.25) -> Plan:
    """Per round and user: a page view asking for a decision, maybe a click on it, maybe a purchase,
    sent one after the other (so one batch holds requests and the rewards for them).

    A user's events of one round come before their next page view (which supersedes the pending
    decision), so every click and conversion has a decision to be credited to.
    """
    rng = np.random.default_rng(seed)
    plan = Plan()
    ts = T0
    for r in range(rounds):
        batch: list[tuple[str, dict]] = []
        for u in users:
            pv = event(f"{u}-r{r}-pv", user_id=u, ts=ts, **PROFILE)
            batch.append(("web-events", pv))
            plan.counts[u]["pv"] += 1
            plan.requests[pv["event_id"]] = pv["placement"]
            did = decision_id_for(pv["event_id"], pv["placement"])
            if rng.random() < click_p:
                batch.append(("web-events", event(f"{u}-r{r}-ck", user_id=u, ts=ts + 30, etype="click",
                                                  decision_id=did, placement=None)))
                plan.counts[u]["ck"] += 1
                plan.rewards[(did, "click")] = CLICK_REWARD
                if rng.random() < buy_p:
                    revenue = float(np.round(rng.uniform(5.0, 60.0), 2))  # reward > CLICK_REWARD
                    buy = event(f"{u}-r{r}-cv", user_id=u, ts=ts + 90, etype="conversion", decision_id=did,
                                revenue=revenue, placement=None)
                    batch.append(("web-events", buy))
                    plan.counts[u]["cv"] += 1
                    plan.counts[u]["rv"] += revenue
                    plan.rewards[(did, "conversion")] = revenue / VALUE_SCALE
            ts += step_s
        plan.rounds.append(batch)
    return plan


def reward_kind(sample: LearningSample) -> str:
    return "click" if sample.reward == pytest.approx(CLICK_REWARD) else "conversion"


# -- 1. kill -9 mid-stream ---------------------------------------------------------------------------
CRASH_USERS = [f"cr{i}" for i in range(300)]
CRASH_ROUNDS = 6
KILL_IN_ROUND = 2
NO_SNAPSHOT = {"snapshot_interval_s": "3600"}  # the new worker learns the whole learning topic itself


@dataclass
class CrashRun:
    plan: Plan
    features: FeatureReader
    decisions: list[dict]
    samples: list[LearningSample]
    dead_letters: int
    rounds_sent_at_kill: int
    new_worker_metrics: str


def learned_counts(worker_metrics: str) -> tuple[float, float]:
    """(exposures, rewards) the worker's policy has applied."""
    return (metric_sum(worker_metrics, "cadence_learning_samples_applied_total", kind="exposure"),
            metric_sum(worker_metrics, "cadence_learning_samples_applied_total", kind="reward"))


@pytest.fixture(scope="module")
def crash_run(runtime: Runtime, tmp_path_factory: pytest.TempPathFactory) -> CrashRun:
    """Shop traffic flows; the worker is killed with SIGKILL right after a batch of round 2 reached
    Redis (before its outputs were acknowledged: the worst moment), then a new worker takes over."""
    data_dir = tmp_path_factory.mktemp("crash")
    settings = isolate(runtime, "crash") | NO_SNAPSHOT
    prefix = settings["topic_prefix"]
    plan = shop_traffic(CRASH_USERS, CRASH_ROUNDS, seed=11)
    features = FeatureReader(runtime, settings["app_id"])
    first = start_worker(runtime, data_dir, "worker-1", **settings)
    second = None
    traffic = Traffic(runtime, prefix, plan.rounds, gap_s=1.0).start()
    try:
        watched = CRASH_USERS[0]  # first in every round: its page view lands in the round's first batch
        wait_for(lambda: features.total(watched, "pv") >= KILL_IN_ROUND + 1, 60, "round 2 to reach Redis",
                 every_s=0)
        first.kill()
        rounds_at_kill = traffic.rounds_sent
        second = start_worker(runtime, data_dir, "worker-2", **settings)
        traffic.join(60)
        assert not traffic.failed, f"the producer gave up on {len(traffic.failed)}: {traffic.failed[:3]}"

        def caught_up() -> bool:
            return all(features.total(u, c) >= n for u, cs in plan.counts.items() for c, n in cs.items()
                       if c != "rv")

        with contextlib.suppress(AssertionError):  # on timeout the tests below say what is missing
            wait_for(caught_up, 60, "the new worker to apply every event", every_s=0.5)
        readers = {t: RawReader(runtime, prefix + t) for t in ("decisions", "learning", "dead-letters")}
        for reader in readers.values():
            reader.read_until_quiet(quiet_s=2.0, timeout_s=30)
        last: list[tuple[float, float]] = []

        def learning_settled() -> bool:  # the new worker has applied the whole learning topic
            last.append(learned_counts(second.metrics_text()))
            return len(last) >= 3 and last[-1] == last[-2] == last[-3]

        wait_for(learning_settled, 30, "the new worker's learning to settle", every_s=0.5)
        run = CrashRun(plan, features, readers["decisions"].json(), readers["learning"].samples(),
                       len(readers["dead-letters"].records), rounds_at_kill, second.metrics_text())
        for reader in readers.values():
            reader.close()
        return run
    finally:
        traffic.stop()
        first.kill()
        if second is not None:
            second.stop()


def test_the_kill_came_mid_stream_and_the_new_worker_replayed(crash_run: CrashRun) -> None:
    assert crash_run.rounds_sent_at_kill < CRASH_ROUNDS, "the stream had ended before the kill"
    # The new worker re-read events the killed one had applied: exactly-once is being tested.
    assert metric_sum(crash_run.new_worker_metrics, "cadence_duplicate_events_total") > 0
    assert crash_run.dead_letters == 0


def test_features_count_every_event_exactly_once_after_a_kill(crash_run: CrashRun) -> None:
    wrong = {}
    for user, counts in crash_run.plan.counts.items():
        got = {c: crash_run.features.total(user, c) for c in ("pv", "ck", "cv", "rv")}
        want = {c: float(counts.get(c, 0)) for c in ("pv", "ck", "cv", "rv")}
        if any(abs(got[c] - want[c]) > 1e-6 * max(1.0, want[c]) for c in want):
            wrong[user] = (got, want)
    assert not wrong, f"{len(wrong)} users' counters differ (got, want), e.g. {list(wrong.items())[:3]}"


def test_every_request_gets_one_decision_after_a_kill(crash_run: CrashRun) -> None:
    by_request: dict[str, list[dict]] = defaultdict(list)
    for d in crash_run.decisions:
        by_request[d["request_event_id"]].append(d)
    missing = sorted(set(crash_run.plan.requests) - set(by_request))
    total = len(crash_run.plan.requests)
    assert not missing, f"{len(missing)} of {total} requests got no decision, e.g. {missing[:5]}"
    assert set(by_request) == set(crash_run.plan.requests)
    for request, decisions in by_request.items():
        expected_id = decision_id_for(request, crash_run.plan.requests[request])
        assert {d["decision_id"] for d in decisions} == {expected_id}
        shown = {(d["action"], d["mode"], d["probability"]) for d in decisions}
        assert len(shown) == 1, f"{request} was decided differently on replay: {decisions}"


def test_rewards_are_credited_once_after_a_kill(crash_run: CrashRun) -> None:
    rewards = [s for s in crash_run.samples if s.kind == "reward"]
    by_key: dict[tuple[str, str], list[LearningSample]] = defaultdict(list)
    for s in rewards:
        by_key[(s.decision_id, reward_kind(s))].append(s)
    lost = sorted(set(crash_run.plan.rewards) - set(by_key))
    total = len(crash_run.plan.rewards)
    outcomes = {o: metric_sum(crash_run.new_worker_metrics, "cadence_rewards_total", outcome=o)
                for o in ("credited", "no_decision", "already_credited", "late", "before_decision")}
    rounds = Counter(r.split("-")[1] for r in crash_run.plan.requests
                     if (decision_id_for(r, crash_run.plan.requests[r]), "click") in lost)
    assert not lost, (f"{len(lost)} of {total} rewards were never credited, e.g. {lost[:5]}; lost clicks by "
                      f"round {dict(rounds)}; the new worker's reward outcomes {outcomes}")
    assert set(by_key) == set(crash_run.plan.rewards)
    for key, samples in by_key.items():
        # A re-delivery (at-least-once) is allowed only as the same sample: learners drop it by its key.
        assert len({(s.action, s.reward, s.placement, tuple(s.x)) for s in samples}) == 1, (key, samples)
        assert samples[0].reward == pytest.approx(crash_run.plan.rewards[key], rel=1e-6)


def test_the_policy_learns_each_sample_once_after_a_kill(crash_run: CrashRun) -> None:
    """Whatever the learning topic repeats, the new worker's policy applies each exposure and reward once."""
    shown = [s for s in crash_run.samples if s.action != "none"]  # "none" (control) is measured, not learned
    exposures = {s.decision_id for s in shown if s.kind == "exposure"}
    rewards = {(s.decision_id, reward_kind(s)) for s in shown if s.kind == "reward"}
    assert exposures and rewards
    assert learned_counts(crash_run.new_worker_metrics) == (len(exposures), len(rewards))


# -- 2 and 3. Redis and broker outages under load ----------------------------------------------------
OUTAGE_USERS = [f"ou{i}" for i in range(300)]
ROUND_S = 0.5  # one round of traffic every half second
PER_ROUND = 75  # events per round: 150 events/s


def steady_traffic(users: list[str], rounds: int, per_round: int) -> Plan:
    """Page views (decision requests) and clicks in a steady stream, users taking turns."""
    plan = Plan()
    seq = 0
    for _ in range(rounds):
        batch: list[tuple[str, dict]] = []
        for _ in range(per_round):
            u = users[seq % len(users)]
            ts = T0 + seq * 0.1
            if seq % 5 == 4:
                batch.append(("web-events", event(f"{u}-{seq}-ck", user_id=u, ts=ts, etype="click", placement=None)))
                plan.counts[u]["ck"] += 1
            else:
                pv = event(f"{u}-{seq}-pv", user_id=u, ts=ts, **PROFILE)
                batch.append(("web-events", pv))
                plan.counts[u]["pv"] += 1
                plan.requests[pv["event_id"]] = pv["placement"]
            seq += 1
        plan.rounds.append(batch)
    return plan


@dataclass
class OutageRun:
    plan: Plan
    acked_requests: set[str]
    rounds_at: dict[str, int]  # "down", "up": rounds sent when the fault began and ended
    pid_before: int
    pid_after: int | None  # None: the worker process had exited
    health_during: list[dict | None]
    health_after: dict | None
    metrics_during: str
    metrics_after: str
    decisions: list[dict]
    totals: dict[str, dict[str, float]]  # user -> counter -> what Redis holds

    def requests_of(self, first_round: int, last_round: int) -> list[str]:
        return [doc["event_id"] for batch in self.plan.rounds[first_round : last_round + 1] for _, doc in batch
                if doc["event_id"] in self.plan.requests]

    def decisions_by_request(self) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = defaultdict(list)
        for d in self.decisions:
            out[d["request_event_id"]].append(d)
        return out


def run_outage(tmp_path_factory: pytest.TempPathFactory, server: str, down_s: float, before_s: float = 6.0,
               after_s: float = 10.0) -> OutageRun:
    """Steady traffic on a private stack; ``server`` ("redis" or "broker") is frozen with SIGSTOP for
    ``down_s`` seconds mid-stream, then resumed; records what the worker did before, during and after."""
    data_dir = tmp_path_factory.mktemp(f"{server}-outage")
    rounds = int((before_s + down_s + after_s) / ROUND_S)
    plan = steady_traffic(OUTAGE_USERS, rounds, PER_ROUND)
    with private_stack(data_dir, server) as (rt, settings):
        worker = start_worker(rt, data_dir, "worker-1", **settings)
        target = {"redis": rt.redis, "broker": rt.broker}[server]
        assert worker.proc is not None and target is not None
        traffic = Traffic(rt, settings["topic_prefix"], plan.rounds, gap_s=ROUND_S).start()

        def alive() -> bool:
            return worker.proc is not None and worker.proc.poll() is None

        try:
            time.sleep(before_s)
            rounds_at = {"down": traffic.rounds_sent}
            target.pause()
            health_during = []
            try:
                deadline = time.monotonic() + down_s
                while time.monotonic() < deadline:
                    health_during.append(worker.health())
                    time.sleep(1.0)
                metrics_during = metrics_or_empty(worker)
            finally:
                target.resume()
            rounds_at["up"] = traffic.rounds_sent
            traffic.join(after_s + 120)
            assert not traffic.failed, f"the producer gave up on {len(traffic.failed)}: {traffic.failed[:3]}"
            acked = {doc["event_id"] for _, doc in traffic.acked if doc["event_id"] in plan.requests}
            reader = RawReader(rt, settings["topic_prefix"] + "decisions")
            features = FeatureReader(rt, settings["app_id"])

            def totals() -> dict[str, dict[str, float]]:
                return {u: {c: features.total(u, c) for c in ("pv", "ck")} for u in plan.counts}

            def done() -> bool:  # every request decided and every event in the features, or the worker died
                reader.poll()
                decided = acked <= {d["request_event_id"] for d in reader.json()}
                counted = all(t[c] >= plan.counts[u][c] for u, t in totals().items() for c in t)
                return not alive() or (decided and counted)

            with contextlib.suppress(AssertionError):  # on timeout the tests below say what is missing
                wait_for(done, 60, "every request decided and every event counted", every_s=0.5)
            reader.read_until_quiet(quiet_s=1.0, timeout_s=10)
            return OutageRun(
                plan, acked, rounds_at, worker.proc.pid, worker.proc.pid if alive() else None, health_during,
                worker.health(), metrics_during, metrics_or_empty(worker), reader.json(), totals(),
            )
        finally:
            traffic.stop()
            worker.stop()


def lost_updates(run: OutageRun) -> dict[str, tuple[dict, dict]]:
    """Users whose counters differ from the events sent: (got, want)."""
    out = {}
    for user, counts in run.plan.counts.items():
        want = {c: float(counts.get(c, 0)) for c in ("pv", "ck")}
        if run.totals[user] != want:
            out[user] = (run.totals[user], want)
    return out


REDIS_DOWN_S = 30.0


@pytest.fixture(scope="module")
def redis_outage(tmp_path_factory: pytest.TempPathFactory) -> OutageRun:
    return run_outage(tmp_path_factory, "redis", REDIS_DOWN_S, before_s=5.0, after_s=9.0)


def test_redis_outage_gets_fallback_decisions_marked_as_such(redis_outage: OutageRun) -> None:
    run = redis_outage
    by_request = run.decisions_by_request()
    assert run.acked_requests == set(run.plan.requests)
    assert not set(run.plan.requests) - set(by_request), "some requests got no decision"
    # Requests sent well inside the outage (after the client's 2 s timeout, before the last 4 s) fall back.
    inside = run.requests_of(run.rounds_at["down"] + int(3 / ROUND_S), run.rounds_at["up"] - int(4 / ROUND_S))
    assert len(inside) > 1000
    for request in inside:
        for d in by_request[request]:
            assert (d["mode"], d["trace"].get("fallback")) == ("fallback", "feature_store_unavailable"), d
            assert d["action"] == "none"  # home_hero's default action
    # Before the outage the engine decided normally.
    before = run.requests_of(0, run.rounds_at["down"] - 2)
    assert before and all(d["mode"] != "fallback" for r in before for d in by_request[r])
    assert metric_sum(run.metrics_during, "cadence_feature_store_errors_total") > 0
    assert metric_sum(run.metrics_during, "cadence_decisions_total", mode="fallback") > 0


def test_worker_survives_a_redis_outage_and_recovers_by_itself(redis_outage: OutageRun) -> None:
    run = redis_outage
    assert run.pid_after == run.pid_before, "the worker process exited"
    assert run.health_during and all(h is not None and h["status"] == "ok" for h in run.health_during)
    assert run.health_after is not None and run.health_after["ready"]
    # Requests sent from 5 s after Redis returned are decided normally again.
    after = run.requests_of(run.rounds_at["up"] + int(5 / ROUND_S), len(run.plan.rounds) - 1)
    by_request = run.decisions_by_request()
    assert after and all(d["mode"] != "fallback" for r in after for d in by_request[r])


def test_no_feature_update_is_silently_lost_in_a_redis_outage(redis_outage: OutageRun) -> None:
    run = redis_outage
    wrong = lost_updates(run)
    reported = metric_sum(run.metrics_after, "cadence_feature_updates_lost_total")
    missing = sum(want[c] - got[c] for got, want in wrong.values() for c in want if got[c] < want[c])
    extra = {u: gw for u, gw in wrong.items() if any(gw[0][c] > gw[1][c] for c in gw[1])}
    assert not extra, f"{len(extra)} users counted events twice (got, want), e.g. {list(extra.items())[:3]}"
    assert missing == reported, f"{missing:.0f} updates missing from features, {reported:.0f} reported lost"
    assert metric_sum(run.metrics_after, "cadence_feature_updates_replayed_total") > 0
    assert metric_sum(run.metrics_after, "cadence_feature_updates_pending") == 0


BROKER_DOWN_S = 20.0


@pytest.fixture(scope="module")
def broker_outage(tmp_path_factory: pytest.TempPathFactory) -> OutageRun:
    return run_outage(tmp_path_factory, "broker", BROKER_DOWN_S, before_s=5.0, after_s=5.0)


def test_worker_survives_a_broker_outage_without_restart(broker_outage: OutageRun) -> None:
    run = broker_outage
    assert run.pid_after == run.pid_before, "the worker process exited"
    assert run.health_during and all(h is not None for h in run.health_during), "/health stopped answering"
    assert run.health_after is not None and run.health_after["ready"]


def test_every_request_sent_through_a_broker_outage_gets_a_decision(broker_outage: OutageRun) -> None:
    run = broker_outage
    assert run.acked_requests == set(run.plan.requests)  # the producer got every event through
    by_request = run.decisions_by_request()
    missing = sorted(run.acked_requests - set(by_request))
    assert not missing, f"{len(missing)} of {len(run.acked_requests)} requests got no decision, e.g. {missing[:5]}"
    for request, decisions in by_request.items():
        assert {d["decision_id"] for d in decisions} == {decision_id_for(request, run.plan.requests[request])}
    assert not lost_updates(run), "features differ from the events sent"
