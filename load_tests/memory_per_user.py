"""Redis memory per active user, field by field: the engine core in this process on an embedded Redis.

    python -m load_tests.memory_per_user [--events 150000] [--users 20000] [--json PATH]

The same event mix as ``make bench-e2e`` (load_tests/yardsticks/load.py, seed 1) goes through
``Engine.process`` and ``Engine.learn`` in batches of 200, with no broker: what the user hashes hold then,
without Kafka or Faust around (bench-e2e's figure is ~45 B per user higher: the server's own growth in
a run with a broker and paced phases). Prints used_memory growth per active user, MEMORY USAGE of every
user key, and the mean bytes (name + value) per user of each field group (``pd:*``: pending decisions,
engine/pending.py; ``pol``: policy state, policy/state.py; the rest: features/apply_batch.lua).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis

from cadence.metrics import Metrics
from cadence.runtime import Runtime
from cadence.settings import DEFAULT_CATALOGUE, Settings
from engine.processor import RawMessage
from load_tests.yardsticks.load import EventMix
from load_tests.yardsticks.measure import field_bytes
from load_tests.yardsticks.redis_stats import redis_memory
from policy.catalogue import load_catalogue
from streams.app import build_engine, redis_client, start_erasures

APP_ID = "memory"


def every_user(client: redis.Redis, users: list[str]) -> dict[str, Any]:
    """MEMORY USAGE and field bytes over all the users' keys (redis_memory samples 1,000)."""
    pipe = client.pipeline(transaction=False)
    for u in users:
        pipe.memory_usage(f"{APP_ID}:u:{u}", samples=0)
        pipe.hgetall(f"{APP_ID}:u:{u}")
    replies = pipe.execute()
    hashes = replies[1::2]
    present: Counter[str] = Counter()
    for h in hashes:
        present.update(k.decode().split(":", 1)[0] + (":*" if b":" in k else "") for k in h)
    return {"memory_usage_mean_bytes": round(sum(r or 0 for r in replies[0::2]) / len(users), 1),
            "field_bytes_mean": field_bytes(hashes),
            "fields_per_user": {k: round(v / len(users), 2) for k, v in present.most_common()}}


def run(events: int, users: int, seed: int) -> dict[str, Any]:
    backlog = EventMix(load_catalogue(DEFAULT_CATALOGUE), users, seed).take(events)
    raw = [RawMessage(e.out.topic, 0, i, e.out.value, 0.0) for i, e in enumerate(backlog)]
    active = {e.user_id for e in backlog}
    with Runtime(Path(tempfile.mkdtemp(prefix="cadence-memory-")), "none:0", None) as rt:
        client = redis.Redis.from_url(rt.redis_url or "")
        before = int(client.info("memory")["used_memory"])
        settings = Settings(REDIS_URL=rt.redis_url, app_id=APP_ID)

        async def drain() -> float:
            engine = build_engine(settings, Metrics(), redis_client(settings))
            await start_erasures(engine, settings)
            started = time.perf_counter()
            for i in range(0, len(raw), 200):
                out = await engine.process(raw[i : i + 200])
                engine.learn(out.learning)
            return time.perf_counter() - started

        seconds = asyncio.run(drain())
        report = redis_memory(client, APP_ID, active, before)
        report["all_users"] = every_user(client, sorted(active))
    return {"events": events, "users": users, "active_users": len(active), "seed": seed,
            "drain_s": round(seconds, 1), "memory": report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=150_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the report here too")
    args = parser.parse_args()
    report = run(args.events, args.users, args.seed)
    memory, every = report["memory"], report["memory"]["all_users"]
    print(f"{report['events']:,} events, {report['active_users']:,} active users: "
          f"{memory['bytes_per_active_user']:,.0f} B of Redis per active user "
          f"(MEMORY USAGE {every['memory_usage_mean_bytes']:,.0f} B per key, {memory['encodings']})")
    for name, size in every["field_bytes_mean"].items():
        print(f"  {name:6} {size:7.1f} B per user   ({every['fields_per_user'].get(name, 0):.2f} fields)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
