"""The online feature store on Redis: one round trip per batch of events, one per user read."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Mapping, Sequence
from importlib import resources
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError

from features.keys import UserDigest, erased_key, user_key
from features.state import UserState
from features.updates import FeatureUpdate
from features.windows import WINDOWS

__all__ = ["FeatureStoreError", "RedisFeatureStore", "user_key"]


class FeatureStoreError(RuntimeError):
    """Redis could not be reached or answered with an error; the caller falls back and retries later."""


async def _read_reply(conn: AbstractConnection, timeout_s: float) -> Any:
    """The reply to the command sent last on ``conn``. redis-py answers None when an explicit read timeout
    passes; here that is an error (the reply may still come, so the caller drops the connection)."""
    reply = await conn.read_response(timeout=timeout_s)
    if reply is None:
        raise TimeoutError(f"no reply from Redis within {timeout_s:g} s")
    return reply


class RedisFeatureStore:
    """Per-user hashes ``{namespace}:u:{user_id}``. Writes go through ``apply_batch.lua`` and
    ``write_fields.lua``, which never write the key of a user in the erased set (``{namespace}:erased:v2``,
    features/erasure.py): each call carries the users' keyed digests (``user_digest``).

    ``user_digest`` may be bound after construction (a worker reads the erasure key at start, with the
    erased users: ``Engine.erased``); until then every write is refused as ``FeatureStoreError``."""

    def __init__(self, client: aioredis.Redis, namespace: str, ttl_s: int, dedup_ring: int,
                 user_digest: UserDigest | None = None) -> None:
        self.client = client
        self.namespace = namespace
        self.erased_key = erased_key(namespace)
        self.user_digest = user_digest
        self.ttl_s = ttl_s
        self.dedup_ring = dedup_ring
        scripts = resources.files("features")
        self._script = client.register_script(scripts.joinpath("apply_batch.lua").read_text())
        self._write_script = client.register_script(scripts.joinpath("write_fields.lua").read_text())
        self._windows = [[size, suffix] for suffix, size in WINDOWS]
        self.last_round_trip_s = 0.0
        self._ahead: AbstractConnection | None = None  # the connection of calls sent ahead (``apply_ahead``)
        self._ahead_busy = False
        self._writer: AbstractConnection | None = None  # the connection of ``write_fields`` (one write at a time)
        self._writer_busy = False
        self._ahead_timeout_s = float(client.connection_pool.connection_kwargs.get("socket_timeout") or 2.0)

    def key(self, user_id: str) -> str:
        return user_key(self.namespace, user_id)

    def _digests(self) -> UserDigest:
        if self.user_digest is None:  # the scripts could not check the erased set
            raise FeatureStoreError("no write before the erasure key is read (the worker reads it from "
                                    "CADENCE_ERASURE_KEY or Redis at start)")
        return self.user_digest

    async def apply(self, updates: Sequence[FeatureUpdate]) -> list[tuple[bool, UserState | None]]:
        """Apply updates in order; per update: (applied, state after it) — applied is False for a duplicate
        and for a user in the erased set, whose update Redis refused: that one is marked ``erased``."""
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
            reply = await _read_reply(conn, self._ahead_timeout_s)
        except NoScriptError:
            return await self.apply(updates)
        except Exception as exc:
            await self._drop_ahead()
            raise FeatureStoreError(f"feature store batch failed: {exc}") from exc
        finally:
            self._ahead_busy = False
        return self._results(updates, reply)

    async def _ahead_connection(self) -> AbstractConnection:
        if self._ahead is None:
            self._ahead = self._own_connection()
        return await self._connected(self._ahead)

    def _own_connection(self) -> AbstractConnection:
        pool = self.client.connection_pool
        # No socket timeout on the store's own connections: with one, redis-py sends through asyncio.wait_for,
        # which yields before the bytes go out. Reads get the client's timeout explicitly.
        return pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": None})

    async def _connected(self, conn: AbstractConnection) -> AbstractConnection:
        if not conn.is_connected:
            await asyncio.wait_for(conn.connect(), self._ahead_timeout_s)
        return conn

    async def _drop_ahead(self) -> None:
        """Forget a connection in an unknown state (a reply may be half read): the next call reconnects."""
        await self._drop(self._ahead)

    @staticmethod
    async def _drop(conn: AbstractConnection | None) -> None:
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect()

    async def close(self) -> None:
        """Close the store's own connections (the client's pool is its owner's to close)."""
        await self._drop_ahead()
        await self._drop(self._writer)
        self._ahead = self._writer = None

    def _payload(self, updates: Sequence[FeatureUpdate]) -> bytes:
        digest = self._digests().of
        namespace = self.namespace
        return orjson.dumps({
            "ttl": self.ttl_s,
            "ring": self.dedup_ring,
            "windows": self._windows,
            "erased": self.erased_key,
            "events": [
                [user_key(namespace, u.user_id), u.digest.hex(), u.ts, 1 if u.want_state else 0, u.counters, u.sets,
                 digest(u.user_id)]
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
            elif result == -1:  # the user is erased: Redis wrote nothing
                upd.erased = True
                out.append((False, None))
            else:
                out.append((bool(result), None))
        return out

    async def write_fields(
        self, writes: Mapping[str, Mapping[str, str]], expected: Mapping[str, str | None] | None = None,
        cas_field: str | None = None,
    ) -> dict[str, str | None]:
        """Set fields of several users in one call (decision state after a batch).

        Compare-and-set of ``cas_field``: for a user in ``expected`` (the value the caller's write was
        computed from, None: absent) that field is written only if Redis still holds that value; the
        user's other fields are written either way. A user in the erased set gets nothing written (their key
        is not created again). Returns the users whose ``cas_field`` was not written,
        with the value Redis holds (None: absent); empty when every field was written."""
        if not writes:
            return {}
        digest = self._digests().of
        namespace = self.namespace
        keys: dict[str, str] = {}  # Redis key -> user id
        fields_of: dict[str, Any] = {}
        digests: dict[str, str] = {}
        for user_id, fields in writes.items():  # one pass: each key built once, the fields not copied
            if fields:
                key = user_key(namespace, user_id)
                keys[key] = user_id
                fields_of[key] = fields if type(fields) is dict else dict(fields)  # orjson reads plain dicts
                digests[key] = digest(user_id)
        doc: dict[str, Any] = {"ttl": self.ttl_s, "writes": fields_of, "erased": self.erased_key,
                               "digests": digests}
        if cas_field is not None and expected:
            doc["cas"] = cas_field
            doc["expect"] = {user_key(namespace, u): (v if v is not None else False) for u, v in expected.items()
                             if cas_field in writes.get(u, ())}
        payload = orjson.dumps(doc)
        if self._writer_busy:  # another write is out on the store's connection: a pooled one
            try:
                reply = await self._write_script(args=[payload])
            except Exception as exc:
                raise FeatureStoreError(f"feature store write failed: {exc}") from exc
            return self._conflicts(keys, reply)
        # The store's own connection: about 35 us of CPU less per call than a pooled client call (no pool,
        # no asyncio.wait_for), which is a tenth of a one-request /decide batch.
        self._writer_busy = True
        try:
            if self._writer is None:
                self._writer = self._own_connection()
            conn = await self._connected(self._writer)
            await conn.send_packed_command(conn.pack_command("EVALSHA", self._write_script.sha, 0, payload),
                                           check_health=False)
            reply = await _read_reply(conn, self._ahead_timeout_s)
        except NoScriptError:  # Redis forgot the script (restarted): the client's call loads it again
            try:
                reply = await self._write_script(args=[payload])
            except Exception as exc:
                raise FeatureStoreError(f"feature store write failed: {exc}") from exc
        except Exception as exc:
            await self._drop(self._writer)  # a reply may be half read
            raise FeatureStoreError(f"feature store write failed: {exc}") from exc
        finally:
            self._writer_busy = False
        return self._conflicts(keys, reply)

    @staticmethod
    def _conflicts(keys: Mapping[str, str], reply: Any) -> dict[str, str | None]:
        """The script's reply ``[key, current value, ...]`` as user id -> current value."""
        if not reply or not isinstance(reply, list):  # an empty Lua table comes back as an empty list
            return {}
        out: dict[str, str | None] = {}
        for i in range(0, len(reply) - 1, 2):
            key, value = reply[i], reply[i + 1]
            key = key.decode() if isinstance(key, bytes) else str(key)
            out[keys.get(key, key)] = value.decode() if isinstance(value, bytes) else value
        return out

    async def read(self, user_id: str) -> UserState:
        try:
            flat = cast(dict[bytes, bytes], await self.client.hgetall(self.key(user_id)))  # responses not decoded
        except Exception as exc:
            raise FeatureStoreError(f"feature store read failed: {exc}") from exc
        return UserState(user_id, {k.decode(): v.decode(errors="replace") for k, v in flat.items() if k != b"dd"})
