"""WritesInFlight: which earlier decision-state writes a read's states are patched with."""

from __future__ import annotations

import random

import pytest

from engine.inflight import WritesInFlight


def test_a_read_sent_while_a_write_is_in_flight_is_patched_with_it() -> None:
    book = WritesInFlight()
    seq = book.register({"u": {"pd:home": "A"}})
    tick = book.read_sent()
    assert book.patches(tick) == {"u": {"pd:home": "A"}}
    book.acknowledge(seq)  # stored after the read went out: the read may not show it, still patched
    assert book.patches(tick) == {"u": {"pd:home": "A"}}
    book.read_done(tick)
    assert len(book) == 0  # no read left that could miss it
    assert book.patches(book.read_sent()) == {}


def test_a_read_sent_after_the_acknowledgement_is_not_patched() -> None:
    book = WritesInFlight()
    book.acknowledge(book.register({"u": {"pd:home": "A"}}))
    assert book.patches(book.read_sent()) == {} and len(book) == 0


def test_later_writes_win_field_by_field_in_registration_order() -> None:
    book = WritesInFlight()
    book.register({"u": {"pd:home": "A", "pol": "p1"}, "v": {"pol": "q1"}})
    book.register({"u": {"pd:home": "AB"}, "w": {}})
    assert book.patches(book.read_sent()) == {"u": {"pd:home": "AB", "pol": "p1"}, "v": {"pol": "q1"}}


def test_a_failed_write_is_not_patched_in() -> None:
    book = WritesInFlight()
    seq = book.register({"u": {"pd:home": "A"}})
    tick = book.read_sent()
    book.drop(seq)
    assert book.patches(tick) == {} and len(book) == 0


@pytest.mark.parametrize("seed", range(20))
def test_patched_reads_equal_a_store_that_applied_every_earlier_write(seed: int) -> None:
    """A simulated store applies writes one at a time in registration order, at random moments, or fails
    some (nothing stored). A read shows what the store held when it was sent; at decide time its states
    plus its patches must equal every write registered and not failed so far, applied in order (what a read
    that waited for all of them would show), whatever the interleaving."""
    rng = random.Random(seed)
    book = WritesInFlight()
    store: dict[str, dict[str, str]] = {}
    registered: list[tuple[int, dict[str, dict[str, str]]]] = []  # in order; failed ones removed
    queue: list[tuple[int, dict[str, dict[str, str]]]] = []  # not yet answered by the store
    reads: list[tuple[int, dict[str, dict[str, str]]]] = []  # (tick, what the store held when sent)
    checked = 0
    for step in range(600):
        roll = rng.random()
        if roll < 0.3:
            writes = {f"u{rng.randrange(4)}": {rng.choice(["pd", "pol"]): f"v{step}"} for _ in range(rng.randint(1, 3))}
            seq = book.register(writes)
            queue.append((seq, writes))
            registered.append((seq, writes))
        elif roll < 0.55 and queue:
            seq, writes = queue.pop(0)
            if rng.random() < 0.85:
                for user, fields in writes.items():
                    store.setdefault(user, {}).update(fields)
                book.acknowledge(seq)
            else:
                book.drop(seq)
                registered = [(s, w) for s, w in registered if s != seq]
        elif roll < 0.75:
            reads.append((book.read_sent(), {u: dict(f) for u, f in store.items()}))
        elif reads:
            tick, seen = reads.pop(rng.randrange(len(reads)))
            expected: dict[str, dict[str, str]] = {}
            for _, writes in registered:
                for user, fields in writes.items():
                    expected.setdefault(user, {}).update(fields)
            for user, fields in book.patches(tick).items():
                seen.setdefault(user, {}).update(fields)
            assert seen == expected, f"step {step}"
            book.read_done(tick)
            checked += 1
    assert checked > 50
    for tick, _ in reads:
        book.read_done(tick)
    while queue:
        book.acknowledge(queue.pop(0)[0])
    assert len(book) == 0  # nothing kept once no read can miss a write
