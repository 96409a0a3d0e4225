"""The online feature store on Redis: one round trip per batch of events, one per user read."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from importlib import resources

import orjson
import redis.asyncio as aioredis

from features.state import UserState
from features.updates import FeatureUpdate
from features.windows import WINDOWS


class FeatureStoreError(RuntimeError):
    """Redis could not be reached or answered with an error; the caller falls back and retries later."""


class RedisFeatureStore:
    """Per-user hashes ``{namespace}:u:{user_id}``. Writes go through ``apply_batch.lua``."""

    def __init__(self, client: aioredis.Redis, namespace: str, ttl_s: int, dedup_ring: int) -> None:
        self.client = client
        self.namespace = namespace
        self.ttl_s = ttl_s
        self.dedup_ring = dedup_ring
        scripts = resources.files("features")
        self._script = client.register_script(scripts.joinpath("apply_batch.lua").read_text())
        self._write_script = client.register_script(scripts.joinpath("write_fields.lua").read_text())
        self._windows = [[size, suffix] for suffix, size in WINDOWS]
        self.last_round_trip_s = 0.0

    def key(self, user_id: str) -> str:
        return f"{self.namespace}:u:{user_id}"

    async def apply(self, updates: Sequence[FeatureUpdate]) -> list[tuple[bool, UserState | None]]:
        """Apply updates in order; per update: (applied, state after it) — applied is False for a duplicate."""
        if not updates:
            return []
        request = {
            "ttl": self.ttl_s,
            "ring": self.dedup_ring,
            "windows": self._windows,
            "events": [
                [self.key(u.user_id), u.digest.hex(), u.ts, 1 if u.want_state else 0, u.counters, u.sets]
                for u in updates
            ],
        }
        started = time.perf_counter()
        try:
            reply = await self._script(args=[orjson.dumps(request)])
        except Exception as exc:  # redis raises many types; the engine treats all as "store unavailable"
            raise FeatureStoreError(f"feature store batch failed: {exc}") from exc
        finally:
            self.last_round_trip_s = time.perf_counter() - started
        out: list[tuple[bool, UserState | None]] = []
        for upd, result in zip(updates, orjson.loads(reply), strict=True):
            if isinstance(result, dict):
                applied = result.pop("__dup", None) is None
                out.append((applied, UserState(upd.user_id, result)))
            else:
                out.append((bool(result), None))
        return out

    async def write_fields(self, writes: Mapping[str, Mapping[str, str]]) -> None:
        """Set fields of several users in one call (decision state after a batch)."""
        if not writes:
            return
        request = {"ttl": self.ttl_s, "writes": {self.key(u): dict(f) for u, f in writes.items() if f}}
        try:
            await self._write_script(args=[orjson.dumps(request)])
        except Exception as exc:
            raise FeatureStoreError(f"feature store write failed: {exc}") from exc

    async def read(self, user_id: str) -> UserState:
        try:
            flat = await self.client.hgetall(self.key(user_id))
        except Exception as exc:
            raise FeatureStoreError(f"feature store read failed: {exc}") from exc
        return UserState(user_id, {k.decode(): v.decode(errors="replace") for k, v in flat.items() if k != b"dd"})

    async def erase(self, user_id: str) -> int:
        return int(await self.client.delete(self.key(user_id)))
