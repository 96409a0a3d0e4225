"""GDPR erasure: delete a user's keys, remember (as a keyed digest, never the id) not to learn from them again.

The digest is keyed (``features.keys.UserDigest``): with an unkeyed one, whoever reads Redis or a backup of it
could hash every id of the id space and learn who asked to be erased. The key is ``CADENCE_ERASURE_KEY``, or,
unset, one generated once and kept in Redis (``load_erasure_key``). Erasures recorded before digests were
keyed stay in their own set and are still honoured (``ErasedUsers``)."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from pydantic import SecretStr

from features.keys import (
    UserDigest,
    erased_key,
    erasure_key_id_key,
    legacy_erased_key,
    legacy_user_digest,
    stored_erasure_key,
    user_key,
)

__all__ = ["ErasedUsers", "ErasureKey", "ErasureKeyError", "ErasureRegistry", "load_erasure_key"]

SETTING = "CADENCE_ERASURE_KEY"


class ErasureKeyError(RuntimeError):
    """The erasure key cannot be used: the message says why and what to do."""


class ErasedUsers:
    """The users a worker refuses (no features, no learning, the default action), as digests: ``keyed``, made
    with the deployment's key (``{ns}:erased:v2``), and ``legacy``, the unkeyed digests recorded before keys
    (``{ns}:erased``). ``user_id in erased`` costs one cached keyed digest, and one cached unkeyed digest only
    while there are legacy entries."""

    __slots__ = ("digest", "keyed", "legacy")

    def __init__(self, digest: UserDigest, keyed: Iterable[str] = (), legacy: Iterable[str] = ()) -> None:
        self.digest = digest
        self.keyed = frozenset(keyed)
        self.legacy = frozenset(legacy)

    def __contains__(self, user_id: object) -> bool:
        if not isinstance(user_id, str):
            return False
        return self.digest.of(user_id) in self.keyed or bool(self.legacy) and legacy_user_digest(user_id) in self.legacy

    def __bool__(self) -> bool:
        return bool(self.keyed or self.legacy)

    def __repr__(self) -> str:
        return f"ErasedUsers({self.digest!r}, {len(self.keyed)} keyed, {len(self.legacy)} legacy)"

    def with_users(self, user_ids: Iterable[str]) -> ErasedUsers:
        """These users added (Redis refused their updates: erased since this worker last followed)."""
        return ErasedUsers(self.digest, self.keyed | {self.digest.of(u) for u in user_ids}, self.legacy)

    def since(self, before: ErasedUsers | None) -> ErasedUsers:
        """The entries that ``before`` lacks."""
        if before is None:
            return self
        return ErasedUsers(self.digest, self.keyed - before.keyed, self.legacy - before.legacy)


@dataclass(frozen=True)
class ErasureKey:
    """The key a process digests erased users with, where it came from (``CADENCE_ERASURE_KEY`` or Redis),
    and what the worker should warn about at start (None: nothing)."""

    digest: UserDigest
    source: str  # "setting" or "redis"
    warning: str | None


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


async def load_erasure_key(client: aioredis.Redis, namespace: str, configured: SecretStr | None) -> ErasureKey:
    """The deployment's erasure key: ``configured`` (``CADENCE_ERASURE_KEY``) when set; otherwise the one kept
    in Redis at ``{ns}:erased:key``, generated (32 random bytes) and stored with SET NX by the first process
    that needs it, so every worker and the CLI read the same one.

    The setting wins over a key kept in Redis. Either way the key must be the one the recorded erasures were
    made with (its id is kept at ``{ns}:erased:key-id`` by the first process): digests made with another key
    never match, so a process whose key differs (a worker configured otherwise, the CLI run without the
    workers' setting, a changed setting) raises ``ErasureKeyError`` instead of silently missing them."""
    stored_at, id_at = stored_erasure_key(namespace), erasure_key_id_key(namespace)
    raw_stored, raw_recorded = await client.mget(stored_at, id_at)
    stored, recorded = _text(raw_stored), _text(raw_recorded)
    if configured is not None:
        digest, source = UserDigest.from_secret(configured.get_secret_value()), "setting"
    else:
        if stored is None:
            if recorded is not None:  # erasures made with a key not kept in Redis: the workers' setting
                raise ErasureKeyError(
                    f"{SETTING} is not set here, but the erasures in {erased_key(namespace)} were recorded with a "
                    f"key that is not kept in Redis (the workers' {SETTING}): set {SETTING} here to the workers' "
                    "value")
            await client.set(stored_at, secrets.token_bytes(32).hex(), nx=True)  # another process may be first
            stored = _text(await client.get(stored_at))
            if stored is None:
                raise ErasureKeyError(f"the erasure key at {stored_at} vanished while it was read; start again")
        digest, source = UserDigest.from_secret(stored), "redis"
    if recorded is None:
        await client.set(id_at, digest.key_id, nx=True)
        recorded = _text(await client.get(id_at))
    if recorded != digest.key_id:
        raise ErasureKeyError(await _mismatch(client, namespace, source, stored, recorded))
    return ErasureKey(digest, source, _warning(namespace, source, stored, digest))


async def _mismatch(client: aioredis.Redis, namespace: str, source: str, stored: str | None,
                    recorded: str | None) -> str:
    count = int(await client.scard(erased_key(namespace)))
    stored_at, id_at = stored_erasure_key(namespace), erasure_key_id_key(namespace)
    used = SETTING if source == "setting" else f"The key kept in Redis at {stored_at} ({SETTING} being unset here)"
    what = (f"{used} is not the key the {count} erasure(s) in {erased_key(namespace)} were recorded with "
            "(their digests would never match it, and those users would be learned from again)")
    if stored is not None and UserDigest.from_secret(stored).key_id == recorded:
        todo = (f"set {SETTING} to the key kept in Redis (the value of {stored_at}) on every worker and "
                f"wherever `cadence erase-user` runs, or unset it everywhere")
    else:
        todo = f"set {SETTING} to the value the other workers use, the same everywhere"
    if count == 0:
        todo += (f"; no erasure was recorded with that key yet, so to use this key instead delete {id_at}"
                 f"{' and ' + stored_at if stored is not None else ''} and start again")
    return f"{what}: {todo}"


def _warning(namespace: str, source: str, stored: str | None, digest: UserDigest) -> str | None:
    stored_at = stored_erasure_key(namespace)
    if source == "redis":
        return (f"{SETTING} is unset: the key of the erased users' digests was generated and is kept in Redis at "
                f"{stored_at}, so a dump or backup of Redis holds both the digests and the key, and whoever has "
                f"it can find out which users asked to be erased. In production set {SETTING} on every worker and "
                f"wherever `cadence erase-user` runs to that key's value (`redis-cli GET {stored_at}`), restart "
                f"the workers, then delete {stored_at}")
    if stored is None:
        return None
    if UserDigest.from_secret(stored).key_id == digest.key_id:
        return (f"{SETTING} is set, and Redis still keeps the same key at {stored_at}: a dump of Redis holds both "
                f"the erased users' digests and their key. Delete it (`redis-cli DEL {stored_at}`)")
    return f"Redis keeps a key at {stored_at} that no erasure uses ({SETTING} is set): delete it"


class ErasureRegistry:
    """``{ns}:erased:v2`` holds keyed digests of erased users (``{ns}:erased`` the unkeyed ones recorded before
    keys, still honoured); workers keep a copy and follow the generation, and the store's scripts
    (apply_batch.lua, write_fields.lua) never write the key of a user in the keyed set.

    ``user_digest`` is None until ``load_key`` read the deployment's key (a worker does so at start)."""

    def __init__(self, client: aioredis.Redis, namespace: str, user_digest: UserDigest | None = None) -> None:
        self.client = client
        self.namespace = namespace
        self.user_digest = user_digest
        self.set_key = erased_key(namespace)
        self.legacy_set_key = legacy_erased_key(namespace)
        self.generation_key = f"{namespace}:erased:generation"

    @classmethod
    async def open(cls, client: aioredis.Redis, namespace: str,
                   configured: SecretStr | None = None) -> ErasureRegistry:
        """A registry with the deployment's key (``load_erasure_key``), as the CLI uses it."""
        registry = cls(client, namespace)
        await registry.load_key(configured)
        return registry

    async def load_key(self, configured: SecretStr | None) -> ErasureKey:
        key = await load_erasure_key(self.client, self.namespace, configured)
        self.user_digest = key.digest
        return key

    def _digest(self) -> UserDigest:
        if self.user_digest is None:
            raise ErasureKeyError("the erasure key has not been read from CADENCE_ERASURE_KEY or Redis yet")
        return self.user_digest

    def label(self, user_id: str) -> str:
        """What stands for an erased user where a record must say someone was meant (lever audit): no id."""
        return f"erased:{self._digest().of(user_id)[:12]}"

    async def erase(self, user_id: str) -> int:
        """Delete the user's key (``features.keys.user_key``: everything the engine keeps per user lives in
        it) and remember the keyed digest; returns how many keys were deleted (0 or 1).

        The key is named exactly, never matched by a pattern: a pattern such as ``{ns}:*:{id}`` also
        matches other users' keys (``{ns}:u:alice:3`` for user ``3``) and the shared state in the namespace
        (``{ns}:snap:3``, ``{ns}:snap:index``), and erasing a user must delete nothing else.

        The delete and the digest go in one transaction (MULTI/EXEC): from then on the store's scripts
        refuse the user's writes, so a batch or a decision-state write of the user still under way on any
        worker, or replayed after an outage, cannot create the key again. Workers learn of the erasure from
        such a refusal or from the generation, whichever comes first."""
        digest = self._digest().of(user_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(user_key(self.namespace, user_id))
            pipe.sadd(self.set_key, digest)
            pipe.incr(self.generation_key)
            deleted, _, _ = await pipe.execute()
        return int(deleted)

    async def generation(self) -> int:
        return int(await self.client.get(self.generation_key) or 0)

    async def erased_users(self) -> ErasedUsers:
        """Both sets, read together."""
        digest = self._digest()
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.smembers(self.set_key)
            pipe.smembers(self.legacy_set_key)
            keyed, legacy = await pipe.execute()
        return ErasedUsers(digest, (cast(str, _text(d)) for d in keyed), (cast(str, _text(d)) for d in legacy))
