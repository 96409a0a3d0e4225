"""DecideBatcher: concurrent /decide requests share engine batches, each gets its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from contracts.decisions import DeadLetter, Decision, Mode
from engine.processor import BatchOutput, RawMessage
from streams.decide_batcher import BackgroundEmits, DecideBatcher, EngineFailed, OutputCoalescer


def decision_for(event_id: str) -> Decision:
    return Decision(decision_id=f"d-{event_id}", request_event_id=event_id, user_id="u", ts=1.0, channel="web",
                    placement="home_hero", action=f"a-{event_id}", probability=1.0, mode=Mode.EXPLOIT,
                    policy="linucb", policy_version=0, trace={})


def key(event_id: str) -> tuple[str, str, str]:
    return ("u", event_id, "home_hero")


class FakeEngine:
    """Decides every message whose value is not b"bad"; refuses the bad ones as the engine would."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[int] = []
        self.fail = fail
        self.writing = False  # the batch's decision-state write is in flight

    async def process(self, messages: list[RawMessage], decided: Callable[[BatchOutput], None]) -> BatchOutput:
        self.batches.append(len(messages))
        await asyncio.sleep(0.01)  # a Redis round trip: requests arriving meanwhile form the next batch
        if self.fail:
            raise ConnectionError("store away")
        out = BatchOutput()
        for m in messages:
            if m.value.startswith(b"bad"):
                out.dead_letters.append(DeadLetter(m.topic, -1, -1, "wrong_type", "ts must be a number", m.value))
            else:
                out.decisions.append(decision_for(m.value.decode()))
        decided(out)
        self.writing = True
        await asyncio.sleep(0.01)  # the decision-state write
        self.writing = False
        return out


def run_requests(engine: FakeEngine, values: list[bytes], emitted: list[BatchOutput]) -> list:
    async def go() -> list:
        batcher = DecideBatcher(engine.process, emitted.append, max_batch=20)
        first = asyncio.ensure_future(
            batcher.decide(key(values[0].decode()), RawMessage("web-events", -1, -1, values[0])))
        await asyncio.sleep(0)  # the first request is on its way alone; the rest arrive while it is in flight
        rest = [batcher.decide(key(v.decode()), RawMessage("web-events", -1, -1, v)) for v in values[1:]]
        return await asyncio.gather(first, *rest, return_exceptions=True)

    return asyncio.run(go())


def test_requests_in_flight_together_share_batches_and_get_their_own_answers() -> None:
    engine, emitted = FakeEngine(), []
    values = [b"e0"] + [f"e{i}".encode() for i in range(1, 50)]
    values[7] = b"bad7"
    answers = run_requests(engine, values, emitted)
    assert engine.batches == [1, 20, 20, 9]  # the first alone, then the queue in slices of max_batch
    assert len(emitted) == 4  # outputs of each batch emitted once
    for value, answer in zip(values, answers, strict=True):
        if value.startswith(b"bad"):
            assert answer.decision is None and answer.dead_letter is not None
            assert answer.dead_letter.raw is value
        else:
            assert answer.dead_letter is None and answer.decision.request_event_id == value.decode()


def test_a_failed_batch_fails_every_request_in_it_and_the_batcher_recovers() -> None:
    engine, emitted = FakeEngine(fail=True), []
    answers = run_requests(engine, [f"e{i}".encode() for i in range(5)], emitted)
    assert all(isinstance(a, EngineFailed) and "ConnectionError: store away" in str(a) for a in answers)
    assert emitted == []
    engine.fail = False
    (answer,) = run_requests(engine, [b"e9"], emitted)
    assert answer.decision is not None and answer.decision.request_event_id == "e9"


def test_a_request_is_answered_once_decided_while_the_state_write_is_in_flight() -> None:
    engine = FakeEngine()

    async def go() -> tuple[object, bool]:
        batcher = DecideBatcher(engine.process, lambda out: None)
        answer = await batcher.decide(key("e1"), RawMessage("web-events", -1, -1, b"e1"))
        return answer, engine.writing

    answer, still_writing = asyncio.run(go())
    assert answer.decision is not None and answer.decision.request_event_id == "e1"
    assert still_writing


@pytest.mark.parametrize("n", [1, 3])
def test_a_repeated_request_id_without_a_kept_decision_gets_no_decision(n: int) -> None:
    async def go() -> list:
        async def process(messages: list[RawMessage], decided: Callable[[BatchOutput], None]) -> BatchOutput:
            decided(BatchOutput())  # the engine found the request a duplicate with nothing stored
            return BatchOutput()

        batcher = DecideBatcher(process, lambda out: None)
        return await asyncio.gather(*[batcher.decide(key("same"), RawMessage("web-events", -1, -1, b"x"))
                                      for _ in range(n)])

    assert [a.decision for a in asyncio.run(go())] == [None] * n


def test_outputs_of_batches_finishing_close_together_are_emitted_once_in_order() -> None:
    emitted: list[BatchOutput] = []

    async def go() -> None:
        coalesce = OutputCoalescer(emitted.append, delay_s=0.02)
        for name in ("a", "b", "c"):
            coalesce(BatchOutput(decisions=[decision_for(name)]))
        assert emitted == []  # held until the delay has passed
        await asyncio.sleep(0.05)
        coalesce(BatchOutput(decisions=[decision_for("d")]))
        await asyncio.sleep(0.05)

    asyncio.run(go())
    assert [[d.request_event_id for d in out.decisions] for out in emitted] == [["a", "b", "c"], ["d"]]


@pytest.mark.parametrize("max_storing", [1, 2])
def test_the_next_batch_starts_while_the_last_one_stores_at_most_max_storing_at_once(max_storing: int) -> None:
    """A batch that is decided releases the next one; its state write goes on (the engine patches reads
    with it). No more than ``max_storing`` batches are answered-but-storing at once."""
    storing = 0
    most_storing = 0
    started_while_storing = 0

    async def process(messages: list[RawMessage], decided: Callable[[BatchOutput], None]) -> BatchOutput:
        nonlocal storing, most_storing, started_while_storing
        started_while_storing += storing > 0
        await asyncio.sleep(0.005)  # the feature-store call
        decided(BatchOutput(decisions=[decision_for(m.value.decode()) for m in messages]))
        storing += 1
        most_storing = max(most_storing, storing)
        await asyncio.sleep(0.03)  # a slow decision-state write
        storing -= 1
        return BatchOutput()

    async def go() -> list:
        batcher = DecideBatcher(process, lambda out: None, max_batch=1, max_storing=max_storing)
        return await asyncio.gather(*[batcher.decide(key(f"e{i}"), RawMessage("web-events", -1, -1, f"e{i}".encode()))
                                      for i in range(6)])

    answers = asyncio.run(go())
    assert [a.decision.request_event_id for a in answers] == [f"e{i}" for i in range(6)]
    assert most_storing == max_storing
    assert (started_while_storing > 0) == (max_storing > 1)


def test_two_users_sharing_a_request_id_in_one_batch_each_get_their_own_decision() -> None:
    # a request_id is unique per user only; the answer was looked up by it alone: one user got the other's
    async def go() -> list:
        async def process(messages: list[RawMessage], decided: Callable[[BatchOutput], None]) -> BatchOutput:
            out = BatchOutput()
            for m in messages:
                user, placement = m.value.decode().split("@")
                out.decisions.append(Decision(
                    decision_id=f"d-{user}-{placement}", request_event_id="r-1", user_id=user, ts=1.0, channel="web",
                    placement=placement, action=f"for-{user}-{placement}", probability=1.0, mode=Mode.EXPLOIT,
                    policy="linucb", policy_version=0, trace={}))
            decided(out)
            return out

        batcher = DecideBatcher(process, lambda out: None)
        asks = [("alice", "home_hero"), ("bob", "home_hero"), ("alice", "product_sidebar")]
        return await asyncio.gather(*[batcher.decide((user, "r-1", placement),
                                                     RawMessage("web-events", -1, -1, f"{user}@{placement}".encode()))
                                      for user, placement in asks])

    answers = asyncio.run(go())
    assert [a.decision.action for a in answers] == ["for-alice-home_hero", "for-bob-home_hero",
                                                    "for-alice-product_sidebar"]


def test_shutdown_waits_for_the_batches_in_the_engine_and_their_sends() -> None:
    """A request answered just before a worker stops has its decision on the topic: shutdown waits until the
    engine's batches return (state stored) and every coalesced send has ended, before the producer stops."""
    engine = FakeEngine()
    sent: list[str] = []

    async def send(out: BatchOutput) -> None:
        await asyncio.sleep(0.03)  # the broker acknowledging
        sent.extend(d.request_event_id for d in out.decisions)

    async def go() -> tuple[list[str], bool, list[str]]:
        outputs = BackgroundEmits(send, delay_s=0.02)
        batcher = DecideBatcher(engine.process, outputs, max_batch=2)
        asks = [asyncio.ensure_future(batcher.decide(key(f"e{i}"), RawMessage("web-events", -1, -1, f"e{i}".encode())))
                for i in range(5)]
        first = await asks[0]  # answered; the others are queued or in the engine
        assert first.decision is not None and sent == []
        await batcher.settle()
        settled = (all(a.done() for a in asks), engine.writing)
        await outputs.drain()
        return [a.result().decision.request_event_id for a in asks], settled == (True, False), list(sent)

    answered, settled, sent_at_drain = asyncio.run(go())
    assert settled  # every request decided and no state write left in flight
    assert sorted(sent_at_drain) == sorted(answered) == [f"e{i}" for i in range(5)]
