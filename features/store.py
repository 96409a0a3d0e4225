"""The online feature store on Redis: one round trip per batch of events, one per user read."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from importlib import resources

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
        self._script = client.register_script(resources.files("features").joinpath("apply_batch.lua").read_text())
        self._window_args: list[str | int] = []
        for suffix, size in WINDOWS:
            self._window_args += [size, suffix]
        self.last_round_trip_s = 0.0

    def key(self, user_id: str) -> str:
        return f"{self.namespace}:u:{user_id}"

    async def apply(self, updates: Sequence[FeatureUpdate]) -> list[tuple[bool, UserState | None]]:
        """Apply updates in order; per update: (applied, state after it) — applied is False for a duplicate."""
        if not updates:
            return []
        args: list[str | int | float | bytes] = [self.ttl_s, self.dedup_ring, len(WINDOWS), *self._window_args]
        for upd in updates:
            args += [self.key(upd.user_id), upd.digest, repr(upd.ts), "1" if upd.want_state else "0", len(upd.counters)]
            for name, amount in upd.counters:
                args += [name, repr(amount)]
            args.append(len(upd.sets))
            for mode, fld, value in upd.sets:
                args += [mode, fld, value]
        started = time.perf_counter()
        try:
            result = await self._script(args=args)
        except Exception as exc:  # redis raises many types; the engine treats all as "store unavailable"
            raise FeatureStoreError(f"feature store batch failed: {exc}") from exc
        finally:
            self.last_round_trip_s = time.perf_counter() - started
        out: list[tuple[bool, UserState | None]] = []
        for upd, (applied, flat) in zip(updates, result, strict=True):
            out.append((bool(applied), UserState.from_flat(upd.user_id, flat) if flat else None))
        return out

    async def write_fields(self, writes: Mapping[str, Mapping[str, bytes | str]]) -> None:
        """Set fields of several users in one pipeline (decision state after a batch)."""
        if not writes:
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for user_id, fields in writes.items():
                    pipe.hset(self.key(user_id), mapping=dict(fields))
                    pipe.expire(self.key(user_id), self.ttl_s)
                await pipe.execute()
        except Exception as exc:
            raise FeatureStoreError(f"feature store write failed: {exc}") from exc

    async def read(self, user_id: str) -> UserState:
        try:
            flat = await self.client.hgetall(self.key(user_id))
        except Exception as exc:
            raise FeatureStoreError(f"feature store read failed: {exc}") from exc
        return UserState(user_id, {k.decode(): v for k, v in flat.items()})

    async def erase(self, user_id: str) -> int:
        return int(await self.client.delete(self.key(user_id)))
