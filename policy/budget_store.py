"""The fleet's daily budgets and hourly change counts in Redis, so that a limit holds for the whole fleet and
a worker that restarts does not spend the day again (the checks stay in memory: ``policy/budgets.py``).

- ``{ns}:budget:d:{day}`` (UTC day = ts // 86400, event time): a hash with ``{action}:n`` (decisions) and
  ``{action}:spend`` (sum of cost) for the whole fleet;
- ``{ns}:budget:h:{hour}`` (ts // 3600): a hash with the changes per placement, ``{placement}``;
- ``{ns}:budget:days`` / ``{ns}:budget:hours``: the day / hour numbers written, newest kept, so a worker
  that starts knows which hashes to read without scanning the keyspace.

- ``{ns}:budget:flushed:{process_id}``: the sequence number of the last flush applied from one
  ``BudgetStore`` (one worker process; ``process_id`` is random, made at construction), so that a flush is
  applied at most once.

Each worker adds what it recorded since its last flush (one script call, every second, off the decisions'
path). Each flush is a payload with a sequence number; the script applies it, and sets the marker, only when
the marker holds an older one, in one atomic step. A payload whose call failed is kept as it is (same number,
nothing merged into it) and sent again first by the next flush: if Redis applied it and only the reply was
lost (a timeout) it is not added again; if it never reached Redis it is added then. A late copy of an old
payload (a dead connection's, or one the client re-sent after a timeout) is dropped the same way. The counts
made meanwhile go in the next payload. A worker that starts, and every worker every second after its flush
(``exchange``), raises its counters to its share of these totals (the whole of them in production: share 1),
so a limit holds for the fleet, not for each worker. Every key expires one bucket after the worker would stop
keeping it (``keep_days`` / ``keep_hours``); the marker with the days.
"""

from __future__ import annotations

import asyncio
import uuid

import orjson
import redis.asyncio as aioredis

from policy.budgets import DAY_S, HOUR_S, Totals, WorkerBudgets

# KEYS[1] = the marker; ARGV[1] = JSON {"seq": n, "marker_ttl": s, "hashes": [[key, ttl, [[field, amount,
# float (0/1)]...]]...], "indexes": [[key, keep, ttl, [number...]]...]}. Amounts and numbers are strings, so
# Lua's number formatting (14 digits) never rounds them. Returns 1 when applied, 0 when the marker says this
# payload (or a newer one) was already applied.
_FLUSH_LUA = """
local req = cjson.decode(ARGV[1])
local last = redis.call('GET', KEYS[1])
if last and tonumber(last) >= req.seq then return 0 end
for _, h in ipairs(req.hashes) do
  for _, f in ipairs(h[3]) do
    redis.call(f[3] == 1 and 'HINCRBYFLOAT' or 'HINCRBY', h[1], f[1], f[2])
  end
  redis.call('EXPIRE', h[1], h[2])
end
for _, ix in ipairs(req.indexes) do
  for _, n in ipairs(ix[4]) do redis.call('ZADD', ix[1], n, n) end
  redis.call('ZREMRANGEBYRANK', ix[1], 0, -(ix[2] + 1))  -- only the newest ``keep``
  redis.call('EXPIRE', ix[1], ix[3])
end
redis.call('SET', KEYS[1], tostring(req.seq), 'EX', req.marker_ttl)
return 1
"""


def _text(raw: object) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


class BudgetStore:
    def __init__(self, client: aioredis.Redis, namespace: str) -> None:
        self.client = client
        self.day_prefix = f"{namespace}:budget:d:"
        self.hour_prefix = f"{namespace}:budget:h:"
        self.days_key = f"{namespace}:budget:days"
        self.hours_key = f"{namespace}:budget:hours"
        self.process_id = uuid.uuid4().hex
        self.marker_key = f"{namespace}:budget:flushed:{self.process_id}"
        self._script = client.register_script(_FLUSH_LUA)
        self._seq = 0
        self._unsent: bytes | None = None  # the payload whose call failed: sent again, as it is, first
        self._flushing = asyncio.Lock()  # the timer's flush and the shutdown's never interleave

    async def flush(self, budgets: WorkerBudgets) -> None:
        """Add what ``budgets`` recorded since the last flush to the fleet's totals, at most once. A payload
        whose call failed (the error is raised) is sent again first by the next flush, with the same sequence
        number: applied then if it never reached Redis, skipped if Redis applied it and the reply was lost."""
        async with self._flushing:
            if self._unsent is not None:
                await self._script(keys=[self.marker_key], args=[self._unsent])
                self._unsent = None
            actions, changes = budgets.take_unflushed()
            if not actions and not changes:
                return
            self._seq += 1
            self._unsent = self._payload(self._seq, budgets, actions, changes)
            await self._script(keys=[self.marker_key], args=[self._unsent])
            self._unsent = None

    def _payload(self, seq: int, budgets: WorkerBudgets, actions: Totals, changes: Totals) -> bytes:
        day_ttl, hour_ttl = (budgets.keep_days + 1) * DAY_S, (budgets.keep_hours + 1) * HOUR_S
        days: dict[int, list[list[object]]] = {}
        for (action, day), (count, spend) in actions.items():
            fields = days.setdefault(day, [])
            fields.append([f"{action}:n", str(count), 0])
            if spend:
                fields.append([f"{action}:spend", repr(float(spend)), 1])
        hours: dict[int, list[list[object]]] = {}
        for (placement, hour), (count, _) in changes.items():
            hours.setdefault(hour, []).append([placement, str(count), 0])
        hashes = [[f"{self.day_prefix}{d}", day_ttl, f] for d, f in days.items()]
        hashes += [[f"{self.hour_prefix}{h}", hour_ttl, f] for h, f in hours.items()]
        indexes = [[key, keep, ttl, [str(n) for n in sorted(numbers)]]
                   for key, numbers, keep, ttl in ((self.days_key, days, budgets.keep_days, day_ttl),
                                                   (self.hours_key, hours, budgets.keep_hours, hour_ttl))
                   if numbers]
        return orjson.dumps({"seq": seq, "marker_ttl": day_ttl, "hashes": hashes, "indexes": indexes})

    async def totals(self, keep_days: int, keep_hours: int) -> tuple[Totals, Totals]:
        """The fleet's totals of the newest ``keep_days`` days and ``keep_hours`` hours written."""
        days = [int(float(_text(d))) for d in await self.client.zrange(self.days_key, -keep_days, -1)]
        hours = [int(float(_text(h))) for h in await self.client.zrange(self.hours_key, -keep_hours, -1)]
        async with self.client.pipeline(transaction=False) as pipe:
            for day in days:
                pipe.hgetall(f"{self.day_prefix}{day}")
            for hour in hours:
                pipe.hgetall(f"{self.hour_prefix}{hour}")
            found = await pipe.execute()
        actions: dict[tuple[str, int], tuple[int, float]] = {}
        for day, fields in zip(days, found[: len(days)], strict=True):
            for raw_field, raw_value in fields.items():
                action, _, kind = _text(raw_field).rpartition(":")
                count, spend = actions.get((action, day), (0, 0.0))
                if kind == "n":
                    count = int(_text(raw_value))
                elif kind == "spend":
                    spend = float(_text(raw_value))
                actions[(action, day)] = (count, spend)
        changes = {(_text(placement), hour): (int(_text(value)), 0.0)
                   for hour, fields in zip(hours, found[len(days):], strict=True)
                   for placement, value in fields.items()}
        return actions, changes

    async def seed(self, budgets: WorkerBudgets) -> None:
        """Raise the worker's counters to its share of the fleet's totals (at start, before deciding)."""
        budgets.seed(*await self.totals(budgets.keep_days, budgets.keep_hours))

    async def exchange(self, budgets: WorkerBudgets) -> None:
        """What every worker does every second: add its counts to the fleet's totals, then take the totals
        back, so each worker checks a limit against what the whole fleet has used (as of the last second)
        plus its own decisions since, not against its own decisions alone."""
        await self.flush(budgets)
        await self.seed(budgets)
