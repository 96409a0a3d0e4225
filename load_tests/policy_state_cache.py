"""How often the decoded-policy-state cache finds a returning user's state, on the bench's event stream.

    python -m load_tests.policy_state_cache [--events 300000] [--users 20000] [--json PATH]

A model of ``engine.decide.PolicyStates``, not the class itself: every decision request stores one new text
for its user (the cache remembers it), and the user's next request looks up their latest text. Counted over
requests of users seen before (a first visit has no state to decode). Two designs at their capacities:
``clear`` (one dict, emptied when full: the design before 2026-12-03) and ``two_gen`` (two generations of
capacity / 2: the current one). Pure Python, no servers, a few seconds.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import orjson

from cadence.settings import DEFAULT_CATALOGUE
from load_tests.yardsticks.load import EventMix
from policy.catalogue import load_catalogue


class Cache(Protocol):
    """What the replay needs of a design: is text ``i`` remembered, remember it, how many are held."""

    def __contains__(self, i: int) -> bool: ...
    def add(self, i: int) -> None: ...
    def __len__(self) -> int: ...


def requesting_users(events: int, users: int, seed: int) -> list[str]:
    mix = EventMix(load_catalogue(DEFAULT_CATALOGUE), users, seed)
    out = []
    for e in mix.take(events):
        doc = orjson.loads(e.out.value)
        if doc.get("placement"):
            out.append(doc["user_id"])
    return out


class Cleared:
    """One set, emptied when it holds ``capacity`` texts (the design before 2026-12-03)."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.held = capacity, set[int]()

    def __contains__(self, i: int) -> bool:
        return i in self.held

    def add(self, i: int) -> None:
        if len(self.held) >= self.capacity:
            self.held.clear()
        self.held.add(i)

    def __len__(self) -> int:
        return len(self.held)


class TwoGenerations:
    """Two sets of ``capacity / 2``: when the newer is full the older is dropped (``PolicyStates``)."""

    def __init__(self, capacity: int) -> None:
        self.half, self.newer, self.older = capacity // 2, set[int](), set[int]()

    def __contains__(self, i: int) -> bool:
        return i in self.newer or i in self.older

    def add(self, i: int) -> None:
        if len(self.newer) >= self.half:
            self.older, self.newer = self.newer, set()
        self.newer.add(i)

    def __len__(self) -> int:
        return len(self.newer) + len(self.older)


def replay(requests: Sequence[str], cache: Cache, capacity: int) -> dict[str, float]:
    """Each request looks up its user's latest text, then stores a new one."""
    latest: dict[str, int] = {}
    hits = returning = held = 0
    for i, user in enumerate(requests):
        last = latest.get(user)
        if last is not None:
            returning += 1
            hits += last in cache
        latest[user] = i
        cache.add(i)
        held += len(cache)
    return {"hit_rate": hits / max(returning, 1), "mean_held": held / len(requests), "peak_held": capacity}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    requests = requesting_users(args.events, args.users, args.seed)
    designs: list[tuple[str, Callable[[int], Cache], int]] = [
        ("clear", Cleared, 50_000), ("two_gen", TwoGenerations, 33_000), ("two_gen", TwoGenerations, 50_000)]
    print(f"{len(requests):,} decision requests of {len(set(requests)):,} users")
    rows = []
    for name, design, capacity in designs:
        row = {"design": name, "capacity": capacity, **replay(requests, design(capacity), capacity)}
        rows.append(row)
        print(f"  {name:8} capacity {capacity:>6,}: found {row['hit_rate']:.1%} of returning users' states, "
              f"{row['mean_held']:,.0f} held on average, {row['peak_held']:,} at most")
    if args.json:
        args.json.write_text(json.dumps({"requests": len(requests), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
