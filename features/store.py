"""The online feature store on Redis: one round trip per batch of events, one per user read."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Mapping, Sequence
from importlib import resources

import orjson
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError

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
        self._ahead: AbstractConnection | None = None  # the connection of calls sent ahead (``apply_ahead``)
        self._ahead_busy = False
        self._ahead_timeout_s = float(client.connection_pool.connection_kwargs.get("socket_timeout") or 2.0)

    def key(self, user_id: str) -> str:
        return f"{self.namespace}:u:{user_id}"

    async def apply(self, updates: Sequence[FeatureUpdate]) -> list[tuple[bool, UserState | None]]:
        """Apply updates in order; per update: (applied, state after it) — applied is False for a duplicate."""
        if not updates:
            return []
        started = time.perf_counter()
        try:
            reply = await self._script(args=[self._payload(updates)])
        except Exception as exc:  # redis raises many types; the engine treats all as "store unavailable"
            raise FeatureStoreError(f"feature store batch failed: {exc}") from exc
        finally:
            self.last_round_trip_s = time.perf_counter() - started
        return self._results(updates, reply)

    async def apply_ahead(
        self, updates: Sequence[FeatureUpdate]
    ) -> Awaitable[list[tuple[bool, UserState | None]]]:
        """``apply``'s call, sent now; the returned awaitable reads its reply. Redis works on the call while
        the caller computes (the engine decides one chunk while the next is applied).

        The call goes out on the store's own connection before this returns: a pooled client call would
        only be sent once the caller next yields to the event loop. One call at a time goes ahead; while one
        is out, the awaitable is a plain ``apply``. A script Redis does not know (NOSCRIPT, e.g. after a
        Redis restart) is run again through ``apply``, which loads it: NOSCRIPT means nothing ran."""
        if not updates or self._ahead_busy:
            return self.apply(updates)
        payload = self._payload(updates)
        self._ahead_busy = True
        try:
            conn = await self._ahead_connection()
            await conn.send_packed_command(conn.pack_command("EVALSHA", self._script.sha, 0, payload),
                                           check_health=False)
        except Exception as exc:
            self._ahead_busy = False
            await self._drop_ahead()
            raise FeatureStoreError(f"feature store batch failed: {exc}") from exc
        return self._read_ahead(conn, updates)

    async def _read_ahead(
        self, conn: AbstractConnection, updates: Sequence[FeatureUpdate]
    ) -> list[tuple[bool, UserState | None]]:
        try:
            reply = await conn.read_response(timeout=self._ahead_timeout_s)
        except NoScriptError:
            return await self.apply(updates)
        except Exception as exc:
            await self._drop_ahead()
            raise FeatureStoreError(f"feature store batch failed: {exc}") from exc
        finally:
            self._ahead_busy = False
        return self._results(updates, reply)

    async def _ahead_connection(self) -> AbstractConnection:
        conn = self._ahead
        if conn is None:
            pool = self.client.connection_pool
            # No socket timeout on this connection: with one, redis-py sends through asyncio.wait_for, which
            # yields before the bytes go out. Reads get the client's timeout explicitly (_read_ahead).
            conn = self._ahead = pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": None})
        if not conn.is_connected:
            await asyncio.wait_for(conn.connect(), self._ahead_timeout_s)
        return conn

    async def _drop_ahead(self) -> None:
        """Forget a connection in an unknown state (a reply may be half read): the next call reconnects."""
        if self._ahead is not None:
            with contextlib.suppress(Exception):
                await self._ahead.disconnect()

    async def close(self) -> None:
        """Close the store's own connection (the client's pool is its owner's to close)."""
        await self._drop_ahead()
        self._ahead = None

    def _payload(self, updates: Sequence[FeatureUpdate]) -> bytes:
        return orjson.dumps({
            "ttl": self.ttl_s,
            "ring": self.dedup_ring,
            "windows": self._windows,
            "events": [
                [self.key(u.user_id), u.digest.hex(), u.ts, 1 if u.want_state else 0, u.counters, u.sets]
                for u in updates
            ],
        })

    @staticmethod
    def _results(updates: Sequence[FeatureUpdate], reply: bytes | str) -> list[tuple[bool, UserState | None]]:
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
