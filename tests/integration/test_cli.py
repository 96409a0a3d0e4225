"""The operator's CLI against the embedded servers: levers, erasure, snapshots, topics."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import redis

from cadence.runtime import Runtime, create_topics
from cadence.workers import worker_env

pytestmark = pytest.mark.integration


def cadence(rt: Runtime, isolated: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = worker_env(rt.env(), **isolated)
    return subprocess.run([sys.executable, "-m", "cadence", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_levers_pin_list_audit_revoke(runtime: Runtime, isolated: dict[str, str]) -> None:
    done = cadence(runtime, isolated, "levers", "pin", "offer_bundle", "--user", "u9", "--hours", "2",
                   "--who", "ana", "--why", "call", "--lever-id", "p9", "--ts", "1767600000")
    assert done.returncode == 0, done.stderr
    listed = cadence(runtime, isolated, "levers", "list", "--audit").stdout
    assert '"lever_id":"p9"' in listed and '"expires":1767607200.0' in listed and "ana: apply p9 — call" in listed
    assert cadence(runtime, isolated, "levers", "revoke", "p9", "--who", "bo", "--why", "done").returncode == 0
    assert '"lever_id":"p9"' not in cadence(runtime, isolated, "levers", "list").stdout
    # the newest N of the audit list, and how many more it keeps
    last = cadence(runtime, isolated, "levers", "list", "--audit-last", "1").stdout.splitlines()
    assert len(last) == 2 and last[0].startswith("audit ") and last[0].endswith("bo: revoke p9 — done")
    assert last[1] == "audit: the newest 1 of 2 entries kept; --audit-last N for more"
    bad = cadence(runtime, isolated, "levers", "boost", "offer_bundle", "--factor", "0", "--who", "a", "--why", "b")
    assert bad.returncode == 2 and "boost 'factor' must be between 0.001 and 1000, got 0" in bad.stderr


def test_levers_set_without_ts_apply_to_a_backlog(runtime: Runtime, isolated: dict[str, str]) -> None:
    # `cadence levers kill` used to stamp the wall clock: a worker behind it (a backlog) ignored the kill switch
    import time

    from policy.levers import LeverBook

    before = time.time()
    done = cadence(runtime, isolated, "levers", "kill", "--hours", "2", "--who", "ops", "--why", "bad offer")
    assert done.returncode == 0, done.stderr
    raw = redis.Redis.from_url(runtime.redis_url or "").get(f"{isolated['app_id']}:levers")
    book = LeverBook.from_json(raw)
    (kill,) = book.levers
    assert kill.ts is None and before <= (kill.set_at or 0) <= time.time()
    assert kill.expires == (kill.set_at or 0) + 7200  # --hours: from when it was set, as event time
    assert book.active(before - 30 * 86400, "u1", None, "home_hero").kill == kill.lever_id  # the backlog too
    assert book.active(kill.expires, "u1", None, "home_hero").kill is None
    (record,) = redis.Redis.from_url(runtime.redis_url or "").lrange(f"{isolated['app_id']}:levers:audit", 0, -1)
    assert orjson.loads(record)["ts"] == kill.set_at  # the audit list, not the book


def test_levers_naming_what_the_catalogue_does_not_have_are_refused(runtime: Runtime,
                                                                    isolated: dict[str, str]) -> None:
    # checked against the catalogue the workers use (CADENCE_CATALOGUE): a typo used to be stored and match nothing
    typo = cadence(runtime, isolated, "levers", "ban", "offer_10pc", "--who", "ana", "--why", "legal")
    assert typo.returncode == 2 and "unknown action 'offer_10pc'" in typo.stderr and "offer_10pct" in typo.stderr
    kill = cadence(runtime, isolated, "levers", "kill", "--placement", "home-hero", "--who", "ops", "--why", "x")
    assert kill.returncode == 2 and "unknown placement 'home-hero'" in kill.stderr and "home_hero" in kill.stderr
    elsewhere = cadence(runtime, isolated, "levers", "pin", "offer_clearance", "--placement", "home_hero",
                        "--who", "ana", "--why", "promo")
    assert elsewhere.returncode == 2 and "is not on placement 'home_hero'" in elsewhere.stderr
    listed = cadence(runtime, isolated, "levers", "list")
    assert listed.stdout == "" and listed.stderr == "no levers set\n"


def test_erase_user_and_empty_snapshot_list(runtime: Runtime, isolated: dict[str, str]) -> None:
    client = redis.Redis.from_url(runtime.redis_url or "")
    client.hset(f"{isolated['app_id']}:u:someone", mapping={"pvh": "1:1:0"})
    done = cadence(runtime, isolated, "erase-user", "someone", "--who", "dpo")
    assert done.returncode == 0, done.stderr
    assert "1 key(s) deleted" in done.stdout and not client.exists(f"{isolated['app_id']}:u:someone")
    assert "no snapshots yet" in cadence(runtime, isolated, "snapshots", "list").stdout
    # the erasure generated the deployment's key; a CLI run with another one would record digests nobody matches
    client.hset(f"{isolated['app_id']}:u:another", mapping={"pvh": "1:1:0"})
    other_key = "a-different-erasure-key-than-the-workers"
    refused = cadence(runtime, {**isolated, "erasure_key": other_key}, "erase-user", "another", "--who", "dpo")
    assert refused.returncode != 0 and "nothing was erased" in refused.stderr
    assert f"set CADENCE_ERASURE_KEY to the key kept in Redis (the value of {isolated['app_id']}:erased:key)" \
        in refused.stderr and other_key not in refused.stderr + refused.stdout
    assert client.exists(f"{isolated['app_id']}:u:another") and client.scard(f"{isolated['app_id']}:erased:v2") == 1
    missing = cadence(runtime, isolated, "snapshots", "rollback", "42")
    assert missing.returncode != 0 and "no snapshot version 42" in missing.stderr


def test_topics_shows_the_erasures_tombstones(runtime: Runtime, isolated: dict[str, str]) -> None:
    # `cadence topics erasures` raised AttributeError on the first tombstone (a null value), the topic's content
    create_topics(runtime.kafka_bootstrap or "", [isolated["topic_prefix"] + "erasures"], 1, compacted=["x"])
    assert cadence(runtime, isolated, "erase-user", "u-tomb", "--who", "dpo").returncode == 0
    shown = cadence(runtime, isolated, "topics", "erasures", "-n", "1", "--timeout", "20")
    assert shown.returncode == 0, shown.stderr
    assert orjson.loads(shown.stdout.splitlines()[0]) == {"key": "u-tomb", "value": None}


def test_a_worker_whose_broker_does_not_answer_says_so_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CADENCE_") and k != "REDIS_URL"}
    env = worker_env({**env, "KAFKA_BOOTSTRAP": "127.0.0.1:9"}, data_dir=str(tmp_path / "data"))  # nobody on port 9
    done = subprocess.run([sys.executable, "-m", "cadence", "worker"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr  # no traceback
    assert done.stderr.startswith("cadence: Kafka at 127.0.0.1:9 did not answer")
    assert "check KAFKA_BOOTSTRAP" in done.stderr


def test_topics_needs_a_broker_and_says_so(runtime: Runtime, isolated: dict[str, str]) -> None:
    env = {k: v for k, v in worker_env(runtime.env(), **isolated).items() if k != "KAFKA_BOOTSTRAP"}
    done = subprocess.run([sys.executable, "-m", "cadence", "topics", "decisions"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0 and "set KAFKA_BOOTSTRAP" in done.stderr


def _worker_refused(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    """``cadence worker`` with ``settings``, no broker or Redis: it must stop at the check, before starting any."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CADENCE_") and k not in ("KAFKA_BOOTSTRAP",
                                                                                               "REDIS_URL")}
    env = worker_env(base, data_dir=str(tmp_path / "data"), **settings)
    return subprocess.run([sys.executable, "-m", "cadence", "worker"], env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize(
    ("settings", "line"),
    [
        # each used to be a traceback (numpy's "expected non-negative integer", 18 frames; a CatalogueError,
        # 15 frames; the holdout's ValueError) or, for inf, a worker that never became ready
        ({"seed": "-1"}, "cadence: invalid configuration: CADENCE_SEED: Input should be greater than or equal to 0"),
        ({"snapshot_interval_s": "inf"}, "cadence: invalid configuration: CADENCE_SNAPSHOT_INTERVAL_S: Input should "
                                         "be a finite number"),
        ({"catalogue": "{bad}"}, "cadence: invalid configuration: CADENCE_CATALOGUE: {bad}, line "),
        ({"holdout_placements": "home-hero"}, "cadence: invalid configuration: CADENCE_HOLDOUT_PLACEMENTS: names "
                                              "placements the catalogue does not have: ['home-hero']"),
    ],
)
def test_a_mistyped_setting_stops_the_worker_with_one_line_and_exit_2(tmp_path: Path, settings: dict[str, str],
                                                                      line: str) -> None:
    if settings.get("catalogue") == "{bad}":  # a negative cost, as a person might write it
        good = (Path(__file__).resolve().parents[2] / "cadence" / "catalogue.toml").read_text()
        bad = tmp_path / "bad.toml"
        bad.write_text(good.replace("cost = 0.001", "cost = -1.0", 1))
        settings = {"catalogue": str(bad)}
        line = line.replace("{bad}", str(bad))
    done = _worker_refused(tmp_path, **settings)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(line) and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "data").exists()  # refused before any embedded server started


def test_snapshots_list_says_how_far_back_the_versions_reach_and_why_each_is_kept(runtime: Runtime,
                                                                                 isolated: dict[str, str]) -> None:
    # The list showed versions and nothing of the retention: that 20 versions every 30 s reach back 10 minutes
    import asyncio
    import time

    import redis.asyncio as aioredis

    from bandits import make_policy
    from learning.snapshots import SnapshotInfo, SnapshotStore
    from learning.state import LearnedState

    blob, now = LearnedState(make_policy("linucb", 4, seed=1)).pack(), time.time()

    async def save() -> None:
        # the workers' rule: the newest 2 and one a day for 3 days (this shell's: the defaults)
        store = SnapshotStore(aioredis.Redis.from_url(runtime.redis_url or ""), isolated["app_id"], keep=2,
                              hourly=0, daily=3)
        two_days_ago = now - now % 86400 - 2 * 86400  # 00:00 UTC
        for created in (two_days_ago + 3600, two_days_ago + 3660, now - 2, now - 1):
            await store.save(blob, SnapshotInfo(0, "linucb", 0, {0: 1}, created_at=created))

    asyncio.run(save())
    listed = cadence(runtime, isolated, "snapshots", "list")
    assert listed.returncode == 0, listed.stderr
    head, *rows = listed.stdout.splitlines()
    assert head.startswith("3 versions kept, reaching back 2.") and " days (version 2, " in head
    assert "Retention (the workers'): the newest 2 and the newest of each of the last 3 days" in head
    assert [(row.split()[0], row.split()[8]) for row in rows] == [("2", "daily"), ("3", "newest"), ("4", "newest")]
