"""Decision-state writes that a feature-store read may not show yet (pure bookkeeping, no I/O).

A batch's decision state (pending decisions, policy states) is written to Redis after the batch is
decided. The next batch need not wait for that write: its reads are patched with every write that Redis
may not have applied when the read went out. The rule, with ``tick`` = writes acknowledged so far:

- a write is registered when it is final (before it is sent) and acknowledged when Redis has answered;
- a read notes the tick when it is sent: it shows every write acknowledged up to that tick;
- its states are patched with the writes acknowledged after that tick or still in flight, in the order
  they were registered.

Writes set whole fields computed from patched states, and they reach Redis in registration order (the
engine sends one at a time), so a later write already contains an earlier one's effect and patching in
order gives exactly the fields Redis would have shown had the read come after every write before it.
Patching a write the read did show changes nothing for the same reason. A write that failed stays in
flight: the engine keeps it and stores it with a later write, so later reads are patched with it meanwhile.
Only a write the engine gives up on (its retry buffer full) is dropped: later reads must then not pretend
Redis has it.
Entries are kept only while some outstanding read was sent before their acknowledgement.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

Writes = Mapping[str, Mapping[str, str]]  # user id -> field -> value


class WritesInFlight:
    def __init__(self) -> None:
        self._next_seq = 0
        self._ticks = 0  # writes acknowledged so far
        self._entries: dict[int, tuple[Writes, int | None]] = {}  # seq -> (writes, tick of its ack), in order
        self._reads: Counter[int] = Counter()  # tick -> reads outstanding that were sent at that tick

    def register(self, writes: Writes) -> int:
        """A batch's final writes, before they are sent; returns the handle for ``acknowledge``/``drop``."""
        seq = self._next_seq
        self._next_seq += 1
        self._entries[seq] = (writes, None)
        return seq

    def acknowledge(self, seq: int) -> None:
        """Redis has applied write ``seq``: reads sent from now on show it."""
        entry = self._entries.get(seq)
        if entry is None:
            return
        self._ticks += 1
        self._entries[seq] = (entry[0], self._ticks)
        self._prune()

    def drop(self, seq: int) -> None:
        """Write ``seq`` failed: Redis does not have it."""
        self._entries.pop(seq, None)

    def read_sent(self) -> int:
        """Note a read going out now; the tick it returns goes to ``patches`` and then ``read_done``."""
        self._reads[self._ticks] += 1
        return self._ticks

    def read_done(self, tick: int) -> None:
        left = self._reads[tick] - 1
        if left > 0:
            self._reads[tick] = left
        else:
            del self._reads[tick]
        self._prune()

    def patches(self, tick: int) -> dict[str, dict[str, str]]:
        """Fields to lay over the states of a read sent at ``tick`` (per user, later writes win)."""
        merged: dict[str, dict[str, str]] = {}
        for writes, acked in self._entries.values():  # registration order
            if acked is not None and acked <= tick:
                continue
            for user_id, fields in writes.items():
                if fields:
                    merged.setdefault(user_id, {}).update(fields)
        return merged

    def __len__(self) -> int:
        """Writes still kept (in flight, or acknowledged after an outstanding read went out)."""
        return len(self._entries)

    def _prune(self) -> None:
        oldest_read = min(self._reads) if self._reads else self._ticks
        for seq in [s for s, (_, acked) in self._entries.items() if acked is not None and acked <= oldest_read]:
            del self._entries[seq]
