"""The fleet's daily budgets and hourly change counts in Redis, so that a limit holds for the whole fleet and
a worker that restarts does not spend the day again (the checks stay in memory: ``policy/budgets.py``).

- ``{ns}:budget:d:{day}`` (UTC day = ts // 86400, event time): a hash with ``{action}:n`` (decisions) and
  ``{action}:spend`` (sum of cost) for the whole fleet;
- ``{ns}:budget:h:{hour}`` (ts // 3600): a hash with the changes per placement, ``{placement}``;
- ``{ns}:budget:days`` / ``{ns}:budget:hours``: the day / hour numbers written, newest kept, so a worker
  that starts knows which hashes to read without scanning the keyspace.

Each worker adds what it recorded since its last flush (one MULTI, every second, off the decisions' path);
what Redis does not take is added again next time. A worker that starts, and every worker every second after
its flush (``exchange``), raises its counters to its share of these totals (the whole of them in production:
share 1), so a limit holds for the fleet, not for each worker. Every key expires one bucket after the worker
would stop keeping it (``keep_days`` / ``keep_hours``).
"""

from __future__ import annotations

import redis.asyncio as aioredis

from policy.budgets import DAY_S, HOUR_S, Totals, WorkerBudgets


def _text(raw: object) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


class BudgetStore:
    def __init__(self, client: aioredis.Redis, namespace: str) -> None:
        self.client = client
        self.day_prefix = f"{namespace}:budget:d:"
        self.hour_prefix = f"{namespace}:budget:h:"
        self.days_key = f"{namespace}:budget:days"
        self.hours_key = f"{namespace}:budget:hours"

    async def flush(self, budgets: WorkerBudgets) -> None:
        """Add what ``budgets`` recorded since the last flush to the fleet's totals; on failure it is kept
        for the next flush and the error raised."""
        actions, changes = budgets.take_unflushed()
        if not actions and not changes:
            return
        day_ttl, hour_ttl = (budgets.keep_days + 1) * DAY_S, (budgets.keep_hours + 1) * HOUR_S
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                for (action, day), (count, spend) in actions.items():
                    key = f"{self.day_prefix}{day}"
                    pipe.hincrby(key, f"{action}:n", count)
                    if spend:
                        pipe.hincrbyfloat(key, f"{action}:spend", spend)
                    pipe.expire(key, day_ttl)
                for (placement, hour), (count, _) in changes.items():
                    key = f"{self.hour_prefix}{hour}"
                    pipe.hincrby(key, placement, count)
                    pipe.expire(key, hour_ttl)
                for index, numbers, keep, ttl in ((self.days_key, {d for _, d in actions}, budgets.keep_days, day_ttl),
                                                  (self.hours_key, {h for _, h in changes}, budgets.keep_hours,
                                                   hour_ttl)):
                    if numbers:
                        pipe.zadd(index, {str(n): n for n in numbers})
                        pipe.zremrangebyrank(index, 0, -(keep + 1))  # only the newest ``keep``
                        pipe.expire(index, ttl)
                await pipe.execute()
        except BaseException:
            budgets.give_back(actions, changes)
            raise

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
