"""The rate limit on decision changes, seen from the decisions topic of a closed-loop run.

Catalogue load_tests/catalogues/sticky_1_per_day.toml: every placement may change at most once per user
in any rolling 24 hours (event time), forced changes included (an ad creative that reached its daily
contact cap gives way only when a change is allowed; otherwise the slot shows its default, "withdrawn").
The simulated clock is slow and the population small, so users come back to each placement many times a
day and the cap binds.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from cadence.runtime import Runtime
from policy.catalogue import load_catalogue
from simulator.loop import ClosedLoop
from simulator.world import World
from tests.helpers import TopicReader, start_worker

pytestmark = pytest.mark.integration

STICKY_1_PER_DAY = Path(__file__).resolve().parents[2] / "load_tests" / "catalogues" / "sticky_1_per_day.toml"
DAY_S = 86400.0
REQUESTS, SIM_DAYS, USERS = 4000, 1.5, 60
# Requests without a decision yet, at most: keeps every engine batch within the worker's future-skew
# limit (3600 s of event time around the batch median) on this slow simulated clock (~32 s a request).
MAX_OUTSTANDING = 80
GOVERNED = {"explore", "exploit", "sticky"}  # modes that went through the stickiness step
# Placements whose actions can never become ineligible in this catalogue (no per-action contact cap,
# no dates, segments or volume caps), so a change there is never forced.
NEVER_FORCED = {"home_hero", "product_sidebar", "newsletter"}


def _eager_catalogue(data_dir: Path) -> Path:
    """sticky_1_per_day with the confidence rule off: the policy asks for changes more often, so the daily
    cap has to refuse some in every run (with it on, a run may want no second change within a day)."""
    path = data_dir / "sticky_1_per_day_eager.toml"
    path.write_text(STICKY_1_PER_DAY.read_text().replace("[placement.stickiness]\n",
                                                          "[placement.stickiness]\nconfidence = 0\n"))
    return path


def _closed_loop_decisions(runtime: Runtime, isolated: dict[str, str], data_dir: Path) -> list[dict]:
    worker = start_worker(runtime, data_dir, catalogue=str(_eager_catalogue(data_dir)), **isolated)
    prefix = isolated["topic_prefix"]
    world = World(load_catalogue(STICKY_1_PER_DAY), n_users=USERS, seed=5)
    loop = ClosedLoop(world, runtime.kafka_bootstrap or "", topic=lambda n: prefix + n, rate=800, seed=5,
                      requests_per_sim_s=REQUESTS / (SIM_DAYS * DAY_S), max_outstanding=MAX_OUTSTANDING)
    try:
        loop.run(duration_s=300, max_requests=REQUESTS)  # a stop for a stuck engine, not a speed test
        loop.drain(timeout_s=20)
        summary = loop.summary()
    finally:
        loop.close()
        worker.stop()
    shown = orjson.dumps(summary, option=orjson.OPT_SERIALIZE_NUMPY)
    assert summary["requests_sent"] == REQUESTS and summary["decisions_pending"] == 0, shown
    assert summary["dead_letters"] == summary["bad_events_sent"], shown  # no valid request was refused
    reader = TopicReader(runtime, prefix + "decisions")
    try:
        docs = reader.read_until(lambda recs: len(recs) >= summary["decisions"], timeout_s=20)
    finally:
        reader.close()
    unique = {d["decision_id"]: d for d in reversed(docs)}  # first copy of a redelivered request wins
    return sorted(unique.values(), key=lambda d: d["ts"])


def test_no_user_changes_a_placement_twice_in_24h_and_kept_decisions_are_sticky(
    runtime: Runtime, isolated: dict[str, str], data_dir: Path
) -> None:
    decisions = _closed_loop_decisions(runtime, isolated, data_dir)
    by_user_placement: dict[tuple[str, str], list[dict]] = defaultdict(list)
    withdrawn: dict[str, int] = defaultdict(int)
    for d in decisions:
        if d["mode"] in GOVERNED:
            by_user_placement[(d["user_id"], d["placement"])].append(d)
            # every placement here has stickiness: no random exploration, every decision deterministic
            assert d["mode"] != "explore" and d["probability"] == 1.0, d
        elif (d.get("trace") or {}).get("fallback") == "incumbent_unavailable":
            # the incumbent may not be shown and no change was allowed: the default, not a change
            assert d["action"] == "none" and d["trace"]["withdrawn"]["incumbent"] in d["trace"]["removed"], d
            withdrawn[d["placement"]] += 1
    changes: dict[str, int] = defaultdict(int)
    forced: dict[str, int] = defaultdict(int)
    kept_by_cap: dict[str, int] = defaultdict(int)
    changed_again_after_a_day = 0
    for (user, placement), seq in by_user_placement.items():
        last_change: float | None = None
        for prev, d in zip(seq, seq[1:], strict=False):
            trace = d.get("trace") or {}
            if d["mode"] == "sticky":
                # kept by the limit: the incumbent again, although the policy wanted another action
                assert d["action"] == prev["action"], (user, prev, d)
                assert trace["sticky"]["challenger"] != d["action"], d
                assert d["probability"] == 1.0, d
                kept_by_cap[placement] += trace["sticky"]["reason"] == "daily_cap"
            else:
                assert "sticky" not in trace, d  # a decision the limit settled is always marked sticky
            if d["action"] == prev["action"]:
                continue
            changes[placement] += 1
            if trace.get("forced"):
                # only when the incumbent may not be shown any more (here: the ad creative's daily cap)
                assert placement not in NEVER_FORCED, d
                assert prev["action"] in trace.get("removed", {}), (prev, d)
                forced[placement] += 1
            # forced or not, no user and placement holds more than one change in any rolling 24 hours
            assert last_change is None or d["ts"] - last_change >= DAY_S, (
                f"{user} on {placement}: changes at {last_change} and {d['ts']}, less than 24 h apart")
            changed_again_after_a_day += last_change is not None
            last_change = d["ts"]

    for placement in NEVER_FORCED - {"newsletter"}:  # emails are too rare (3 per week) to bind the cap
        assert changes[placement] > 0, changes
        assert withdrawn[placement] == 0, withdrawn  # their incumbents never stop being eligible
    # the ad creatives' daily contact cap forced changes, and withdrew creatives once the change was spent
    assert forced["display_slot"] > 0 and withdrawn["display_slot"] > 0, (forced, withdrawn)
    # the cap was reached and held (changes go only to surely better actions, so it binds less often
    # on the web placements than on the ad slot, where the contact cap asks for changes)
    assert sum(kept_by_cap.values()) > 0, kept_by_cap
    assert changed_again_after_a_day > 0  # the window rolls: a day after a change, another one may come
    returning = {u for (u, p), seq in by_user_placement.items() if p == "home_hero" and len(seq) > 10}
    assert len(returning) >= USERS // 2, "too few returning users for the cap to matter"
