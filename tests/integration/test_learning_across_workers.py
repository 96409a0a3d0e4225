"""Learning is shared: two workers, and a restart that resumes from the latest snapshot."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from kafka.partitioner.default import murmur2

from cadence.runtime import Runtime
from cadence.workers import WorkerProcess
from tests.helpers import T0, TopicReader, event, produce, start_worker

pytestmark = pytest.mark.integration
PARTITIONS = 4
CONTEXT = {"device": "desktop", "segment": "loyal", "consent": True}
BEST = "offer_bundle"


def partition_of(user_id: str) -> int:
    return (murmur2(user_id.encode()) & 0x7FFFFFFF) % PARTITIONS


def users_on(partitions: set[int], n: int, tag: str) -> list[str]:
    out, i = [], 0
    while len(out) < n:
        uid = f"{tag}{i}"
        if partition_of(uid) in partitions:
            out.append(uid)
        i += 1
    return out


def metric(worker: WorkerProcess, name: str) -> float:
    text = worker.metrics_text()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, flags=re.M))


def wait_for(check, timeout_s: float = 60.0, what: str = "condition"):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def split(a: WorkerProcess, b: WorkerProcess) -> tuple[set[int], set[int]] | None:
    """The input partitions of a and b once they share all of them, else None."""
    pa = set((a.health() or {}).get("partitions", {}).get("web-events", []))
    pb = set((b.health() or {}).get("partitions", {}).get("web-events", []))
    return (pa, pb) if pa and pb and not pa & pb and pa | pb == set(range(PARTITIONS)) else None


def settled_version(worker: WorkerProcess, at_least: int) -> int:
    """The worker's policy version once it stops moving (all learning samples applied)."""
    last = -1
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        version = (worker.health() or {}).get("policy_version", 0)
        if version >= at_least and version == last:
            return version
        last = version
        time.sleep(1.5)
    raise AssertionError(f"policy version did not settle (last {last}, expected at least {at_least})")


def train(rt: Runtime, prefix: str, users: list[str], rounds: int, per_round: int, start: int = 0) -> int:
    """Requests for ``users``; every decision that shows BEST converts. Returns the number of requests."""
    reader = TopicReader(rt, prefix + "decisions")
    samples = 0
    seq = start
    for r in range(rounds):
        reqs = [event(f"tr{seq + i}", user_id=users[(seq + i) % len(users)], ts=T0 + seq + i, **CONTEXT)
                for i in range(per_round)]
        seq += per_round
        produce(rt, prefix + "web-events", reqs)
        wanted = {e["event_id"] for e in reqs}
        got = reader.read_until(lambda recs, wanted=wanted: wanted <= {d["request_event_id"] for d in recs})
        decided = [d for d in got if d["request_event_id"] in wanted]
        assert len(decided) == per_round, f"round {r}: {len(decided)} of {per_round} decisions"
        conversions = [event(f"cv{d['request_event_id']}", user_id=d["user_id"], etype="conversion",
                             ts=d["ts"] + 60, decision_id=d["decision_id"], revenue=30.0, placement=None)
                       for d in decided if d["action"] == BEST]
        produce(rt, prefix + "web-events", conversions)
        samples += per_round
    reader.close()
    return samples


def test_what_one_worker_learns_improves_the_other(runtime: Runtime, isolated: dict[str, str],
                                                  data_dir: Path) -> None:
    prefix = isolated["topic_prefix"]
    a = start_worker(runtime, data_dir, "worker-a", **isolated)
    b = start_worker(runtime, data_dir, "worker-b", **isolated)
    try:
        part_a, part_b = wait_for(lambda: split(a, b), 90, "the two workers to share the partitions")
        # First visits of distinct users (the context of b's users below), all within the same hour.
        requests = train(runtime, prefix, users_on(part_a, 1500, "a"), rounds=6, per_round=250)
        assert metric(b, "cadence_events_consumed_total") == 0  # b never saw a training event
        learned = settled_version(a, at_least=int(requests * 0.9))
        wait_for(lambda: (b.health() or {}).get("policy_version") == learned, 30, "b to apply all of a's samples")

        queries = [event(f"q{i}", user_id=u, ts=T0 + requests + i, **CONTEXT)
                   for i, u in enumerate(users_on(part_b, 100, "b"))]
        produce(runtime, prefix + "web-events", queries)
        wanted = {q["event_id"] for q in queries}
        got = TopicReader(runtime, prefix + "decisions").read_until(
            lambda recs: wanted <= {d["request_event_id"] for d in recs})
        answers = [d for d in got if d["request_event_id"] in wanted]
        assert metric(b, "cadence_decisions_total") == len(queries)  # b decided all of them
        share_best = sum(d["action"] == BEST for d in answers) / len(answers)
        # An untrained policy picks among 5 tied offers (~20 % each); b learned from a's users.
        assert share_best >= 0.8, [(d["action"], d["mode"]) for d in answers]

        # Every learning message names its worker and that worker's event-time progress; a worker caught up
        # and quiet for a few seconds says it holds nothing back. Then label windows may close at the last
        # progress reported: b's, at its last query, which a never saw as an event (a's own clock is behind).
        last_query = T0 + requests + len(queries) - 1
        assert metric(a, "cadence_event_time_watermark_seconds") < last_query
        for worker in (a, b):
            wait_for(lambda w=worker: metric(w, "cadence_learning_producers") == 0
                     and metric(w, "cadence_label_watermark_seconds") == last_query, 30, "both workers to go idle")
    finally:
        a.stop()
        b.stop()


def test_a_worker_that_stops_cleanly_stops_holding_the_label_windows(runtime: Runtime, isolated: dict[str, str],
                                                                     data_dir: Path) -> None:
    prefix = isolated["topic_prefix"]
    never_idle = {**isolated, "learning_idle_after_s": "3600"}  # only the stop can release a worker here
    a = start_worker(runtime, data_dir, "worker-a", **never_idle)
    b = start_worker(runtime, data_dir, "worker-b", **never_idle)
    try:
        part_a, _ = wait_for(lambda: split(a, b), 90, "the two workers to share the partitions")
        requests = train(runtime, prefix, users_on(part_a, 40, "s"), rounds=1, per_round=40)

        def held_at_a() -> float | None:  # b's label windows close at a's event-time progress, a holding them
            progress = metric(a, "cadence_event_time_watermark_seconds")
            held = metric(b, "cadence_learning_producers") == 1
            return progress if held and metric(b, "cadence_label_watermark_seconds") == progress else None

        # Longer than the default idle time: a, caught up and quiet, still holds b's windows (b sent nothing:
        # no events on its partitions), at a's last event (a conversion, a minute after its request).
        time.sleep(7)
        progress = wait_for(held_at_a, 30, "b to see a holding its windows at a's last event")
        assert progress >= T0 + requests - 1
        a.stop()  # SIGTERM: a clean stop
        assert a.proc is not None and a.proc.returncode == 0
        wait_for(lambda: metric(b, "cadence_learning_producers") == 0, 15, "b to see a's idle message")
        assert metric(b, "cadence_learning_producers_dropped_total") == 0  # released by a, not dropped for lag
        assert metric(b, "cadence_label_watermark_seconds") == progress
    finally:
        a.stop()
        b.stop()


def test_a_restarted_worker_resumes_from_the_latest_snapshot(runtime: Runtime, isolated: dict[str, str],
                                                             data_dir: Path) -> None:
    prefix = isolated["topic_prefix"]
    settings = {**isolated, "snapshot_interval_s": "1"}
    first = start_worker(runtime, data_dir, "worker-1", **settings)
    try:
        requests = train(runtime, prefix, [f"u{i}" for i in range(50)], rounds=2, per_round=200)
        version = settled_version(first, at_least=int(requests * 0.9))  # holdout decisions teach no action
        time.sleep(2.5)  # a snapshot (every second) that includes everything
    finally:
        first.stop()
    second = start_worker(runtime, data_dir, "worker-2", **settings)
    try:
        health = second.health()
        assert health["snapshot"] is not None
        assert health["policy_version"] == version  # ready means: the snapshot is loaded
        time.sleep(2)
        # Resumed from the snapshot's offsets: nothing (or only what came after it) is applied again.
        assert metric(second, "cadence_learning_samples_applied_total") < requests / 10
        assert second.health()["policy_version"] == version
    finally:
        second.stop()
