"""What the engine costs Redis: memory per active user, what the user hashes hold, server CPU per event."""

from __future__ import annotations

from typing import Any

import redis

from load_tests.yardsticks.measure import field_bytes


def redis_memory(client: redis.Redis, namespace: str, users: set[str], used_before: int, sample: int = 1000) -> dict:
    """used_memory growth per active user; MEMORY USAGE, encoding and field sizes of a sample of user keys."""
    used_after = int(client.info("memory")["used_memory"])
    ids = sorted(users)[:: max(1, len(users) // sample)][:sample]
    pipe = client.pipeline(transaction=False)
    for k in (f"{namespace}:u:{u}" for u in ids):
        pipe.memory_usage(k, samples=0)
        pipe.object("encoding", k)
        pipe.hgetall(k)
    replies = pipe.execute()
    usage = [r or 0 for r in replies[0::3]]
    encodings: dict[str, int] = {}
    for enc in replies[1::3]:
        name = enc.decode() if isinstance(enc, bytes) else str(enc)
        encodings[name] = encodings.get(name, 0) + 1
    return {
        "used_memory_before": used_before, "used_memory_after": used_after,
        "user_keys": sum(1 for _ in client.scan_iter(f"{namespace}:u:*", count=1000)),
        "bytes_per_active_user": round((used_after - used_before) / len(users), 1),
        "hash_max_listpack_value": int(next(iter(client.config_get("hash-max-listpack-value").values()))),
        "sampled_keys": len(ids), "memory_usage_mean_bytes": round(sum(usage) / max(len(usage), 1), 1),
        "memory_usage_max_bytes": max(usage, default=0), "encodings": encodings,
        "field_bytes_mean": field_bytes(replies[2::3]),
    }


def redis_cpu(client: redis.Redis, before: dict[str, Any], events: int) -> dict[str, Any]:
    """Redis CPU per event while the engine drained (server-side: the Lua scripts run there)."""
    after = client.info("cpu")
    used = sum(float(after[k]) - float(before[k]) for k in ("used_cpu_user", "used_cpu_sys"))
    stats = client.info("commandstats")
    scripts = {k.removeprefix("cmdstat_"): v for k, v in stats.items() if k.startswith("cmdstat_eval")}
    return {"cpu_us_per_event": round(used / events * 1e6, 1),
            "scripts": {k: {"calls": v["calls"], "usec_per_call": v["usec_per_call"]} for k, v in scripts.items()}}
