"""Versioned snapshots of the learned state in Redis, with rollback.

A snapshot holds the policy (and models) as bytes plus the offsets of the learning topic it includes,
so a worker that starts loads the snapshot and reads the learning topic only from there.

A rollback to version v writes a *new* version with v's blob and the learning topic's current end
offsets, then bumps the generation (it deletes no version: the CLI's store has the CLI shell's ``keep``, not
the workers'; their next save trims): running workers load it and read the learning topic again from its
offsets (streams/rollbacks.py), as a worker that restarts later does, so neither re-learns what was rolled back.

Keys (namespace = app id): ``{ns}:snap:seq`` (last version), ``{ns}:snap:{v}`` (blob),
``{ns}:snap:index`` (hash version -> JSON info), ``{ns}:snap:generation`` (bumped by every rollback;
workers watch it), ``{ns}:snap:rollback`` (JSON: the generation and the version its rollback wrote, which
workers load), ``{ns}:snap:lease`` (which worker writes snapshots), ``{ns}:snap:retention`` (JSON: the retention
rule the leader trims with, for ``cadence snapshots list``).

A save trims the versions to the store's ``retention`` (learning/retention.py: the newest, and the newest of each
recent hour and day); the version a pending rollback wrote is never trimmed.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import cast

import orjson
import redis.asyncio as aioredis
from redis.exceptions import WatchError

from learning.retention import Retention, kept

# KEYS[1] lease, ARGV[1] worker id, ARGV[2] ttl in ms: 1 if this worker holds the lease now (taken or renewed)
_LEAD = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


class SnapshotError(LookupError):
    """A snapshot that was asked for does not exist (the message lists what does), or a rollback's cannot be read
    (the message names versions that can)."""


@dataclass(slots=True)
class SnapshotInfo:
    version: int
    policy: str
    policy_version: int
    offsets: dict[int, int] = field(default_factory=dict)  # learning-topic partition -> next offset
    watermark: float = 0.0  # largest event time learned
    created_at: float = 0.0  # wall clock, for people reading the list
    size_bytes: int = 0
    note: str = ""

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_NON_STR_KEYS)

    @classmethod
    def from_json(cls, raw: bytes | str) -> SnapshotInfo:
        doc = orjson.loads(raw)
        doc["offsets"] = {int(k): int(v) for k, v in doc.get("offsets", {}).items()}
        return cls(**doc)


class SnapshotStore:
    def __init__(self, client: aioredis.Redis, namespace: str, keep: int = 20, hourly: int = 24,
                 daily: int = 7) -> None:
        self.client = client
        self.namespace = namespace
        self.retention = Retention(keep, hourly, daily)

    @property
    def keep(self) -> int:
        return self.retention.newest

    def _key(self, suffix: str) -> str:
        return f"{self.namespace}:snap:{suffix}"

    async def save(self, blob: bytes, info: SnapshotInfo) -> SnapshotInfo:
        saved = await self.save_if_current(blob, info, None)
        assert saved is not None  # no generation to check: always saved
        return saved

    async def save_if_current(self, blob: bytes, info: SnapshotInfo, generation: int | None, *,
                              trim: bool = True) -> SnapshotInfo | None:
        """Save ``blob`` as the newest version, unless a rollback bumped the generation past ``generation``
        (the one the caller's state belongs to): then nothing is written and None comes back. Without this
        a periodic snapshot of the pre-rollback state, written just after a rollback, would become the
        latest version and undo it. ``generation=None`` saves unconditionally. ``trim``: then delete the
        versions ``retention`` does not keep (``_trim``).

        The version number is taken inside the transaction (``seq`` watched with the generation), so no
        rollback can land between numbering and writing: a save that did not see the rollback's bump
        cannot come out as a version newer than the rollback's."""
        gen_key, seq_key = self._key("generation"), self._key("seq")
        info.created_at = info.created_at or time.time()
        info.size_bytes = len(blob)
        while True:
            async with self.client.pipeline(transaction=True) as pipe:
                await pipe.watch(gen_key, seq_key)  # EXEC fails if a rollback or another save came in between
                if generation is not None and int(await pipe.get(gen_key) or 0) != generation:
                    await pipe.unwatch()
                    return None
                info.version = int(await pipe.get(seq_key) or 0) + 1
                pipe.multi()
                pipe.set(seq_key, info.version)
                pipe.set(self._key(str(info.version)), blob)
                pipe.hset(self._key("index"), str(info.version), info.to_json())
                try:
                    await pipe.execute()
                    break
                except WatchError:  # read the generation again: a rollback's version stays the latest
                    continue
        if trim:
            await self._trim()
        return info

    async def _trim(self, now: float | None = None) -> None:
        """Delete the versions ``retention`` does not keep, index entries and blobs in one transaction (a reader
        sees a version whole or not at all). The version the current generation's rollback wrote is kept
        whatever its age, until a later rollback replaces it: a worker that has not followed it yet loads it
        (``load_rollback``). A version a concurrent rollback writes meanwhile is not in the index read here,
        so it cannot be deleted. Also records the rule, for ``cadence snapshots list``."""
        points = [(version, info.created_at) for version, info in (await self._infos()).items()]
        _, pending = await self.rollback_point()
        keep = kept(points, time.time() if now is None else now, self.retention,
                    () if pending is None else (pending,))
        old = [v for v, _ in points if v not in keep]
        async with self.client.pipeline(transaction=True) as pipe:
            if old:
                pipe.hdel(self._key("index"), *[str(v) for v in old])
                pipe.delete(*[self._key(str(v)) for v in old])
            pipe.set(self._key("retention"), orjson.dumps(asdict(self.retention)))
            await pipe.execute()

    async def _infos(self) -> dict[int, SnapshotInfo]:
        """Every version's info; one that cannot be read counts as created at 0 (kept only as one of the newest
        or a rollback's)."""
        out = {}
        for raw_version, raw in (await self.client.hgetall(self._key("index"))).items():
            version = int(raw_version)
            try:
                out[version] = SnapshotInfo.from_json(raw)
            except (ValueError, TypeError, KeyError):
                out[version] = SnapshotInfo(version, "?", 0)
        return out

    async def recorded_retention(self) -> Retention | None:
        """The rule the leading worker last trimmed with (None before its first save with this cadence)."""
        raw = await self.client.get(self._key("retention"))
        try:
            return Retention(**orjson.loads(raw)) if raw is not None else None
        except (ValueError, TypeError):
            return None

    async def list(self) -> list[SnapshotInfo]:
        raw = await self.client.hgetall(self._key("index"))
        return sorted((SnapshotInfo.from_json(v) for v in raw.values()), key=lambda i: i.version)

    async def versions(self) -> tuple[int, ...]:
        """The versions kept, oldest first (read from the index alone: a damaged info does not hide the rest)."""
        return tuple(sorted(int(v) for v in await self.client.hkeys(self._key("index"))))

    async def generation(self) -> int:
        return int(await self.client.get(self._key("generation")) or 0)

    async def load(self, version: int | None = None) -> tuple[SnapshotInfo, bytes] | None:
        """A given version, else the latest; None if there are none."""
        if version is None:
            versions = [int(v) for v in await self.client.hkeys(self._key("index"))]
            if not versions:
                return None
            version = max(versions)
        raw_info, blob = await self.client.hget(self._key("index"), str(version)), await self.client.get(
            self._key(str(version))
        )
        if raw_info is None or blob is None:
            have = [i.version for i in await self.list()]
            raise SnapshotError(f"no snapshot version {version}; versions kept: {have or 'none'}")
        return SnapshotInfo.from_json(raw_info), cast(bytes, blob)  # the client does not decode responses

    async def rollback(self, version: int, current_offsets: dict[int, int]) -> SnapshotInfo:
        """Make ``version``'s state live on every worker again, as a new version; returns its info.

        The new version, the generation's bump and the rollback point (which version that generation is)
        are one transaction, watched like a save: a leader's periodic save either lands before it (and the
        rollback's version is newer) or sees the bumped generation and is refused. No version is deleted:
        this store's ``keep`` is the CLI shell's, not the workers' (their next save trims).

        ``version``'s blob is unpacked first: one that cannot be read (damaged, truncated) is refused with
        ``SnapshotError`` naming versions that can, and nothing is written (every worker would fail to load it,
        and keep refusing the leader's snapshots)."""
        found = await self.load(version)
        assert found is not None
        old, blob = found
        if (damage := self._unreadable(blob)) is not None:  # before anything is written: workers could not load it
            readable = await self.readable_versions(exclude=version)
            raise SnapshotError(
                f"snapshot version {version} cannot be read ({damage}): nothing rolled back, every worker keeps "
                "its state; roll back to a version that can be read: "
                + (", ".join(map(str, readable)) + " (newest first)" if readable else "none of the versions kept can"))
        gen_key, seq_key = self._key("generation"), self._key("seq")
        info = SnapshotInfo(0, old.policy, old.policy_version, dict(current_offsets), old.watermark,
                            created_at=time.time(), size_bytes=len(blob), note=f"rollback to version {version}")
        while True:
            async with self.client.pipeline(transaction=True) as pipe:
                await pipe.watch(gen_key, seq_key)
                generation = int(await pipe.get(gen_key) or 0) + 1
                info.version = int(await pipe.get(seq_key) or 0) + 1
                pipe.multi()
                pipe.set(seq_key, info.version)
                pipe.set(self._key(str(info.version)), blob)
                pipe.hset(self._key("index"), str(info.version), info.to_json())
                pipe.set(gen_key, generation)  # workers load it; older-generation saves are refused
                pipe.set(self._key("rollback"), orjson.dumps({"generation": generation, "version": info.version}))
                try:
                    await pipe.execute()
                    return info
                except WatchError:  # a save took the next version meanwhile: number again
                    continue

    @staticmethod
    def _unreadable(blob: bytes) -> str | None:
        """Why a worker could not load ``blob`` (a damaged or truncated one), or None when it can."""
        from learning.state import LearnedState  # the blob's format (pulls in the models): only when rolling back

        try:
            LearnedState.unpack(blob)
        except Exception as exc:  # a damaged blob raises whatever unpickling meets (UnpicklingError, EOFError...)
            return f"{type(exc).__name__}: {exc}"
        return None

    async def readable_versions(self, exclude: int | None = None, most: int = 5) -> tuple[int, ...]:
        """Up to ``most`` of the newest versions kept whose blobs a worker can load, newest first (each one is
        unpacked: for a refused rollback's message, not for a hot path)."""
        readable: tuple[int, ...] = ()
        for version in reversed(await self.versions()):
            if version == exclude:
                continue
            blob = await self.client.get(self._key(str(version)))
            if blob is not None and self._unreadable(cast(bytes, blob)) is None:
                readable += (version,)
                if len(readable) >= most:
                    break
        return readable

    async def rollback_point(self) -> tuple[int, int | None]:
        """The generation and the version its rollback wrote (None for generation 0, or a generation
        bumped by an older cadence that did not record it), read at once."""
        raw_generation, raw_point = await self.client.mget(self._key("generation"), self._key("rollback"))
        generation = int(raw_generation or 0)
        if raw_point is None:
            return generation, None
        point = orjson.loads(raw_point)
        return generation, int(point["version"]) if int(point["generation"]) == generation else None

    async def load_rollback(self, version: int | None) -> tuple[SnapshotInfo, bytes] | None:
        """What a worker following a rollback loads: the version the rollback wrote, not merely the latest
        (which a save racing an older cadence's rollback could be). If it was trimmed meanwhile, the latest:
        every later version was saved by a worker that had followed the rollback (the generation check)."""
        if version is not None:
            try:
                return await self.load(version)
            except SnapshotError:
                pass
        return await self.load()

    async def try_lead(self, worker_id: str, ttl_s: float) -> bool:
        """One worker writes snapshots at a time: the holder of a short lease. Taking a free lease and
        renewing one's own are one atomic step (a script): a lease that expired between a check and a
        renewal must not be renewed for the worker that took it meanwhile, with both believing they lead."""
        return bool(await self.client.eval(_LEAD, 1, self._key("lease"), worker_id, int(ttl_s * 1000)))
