"""streams/handover.py: outputs go when final, the intake moves on during the state write, commits after both."""

from __future__ import annotations

import asyncio
import gc

import pytest

from engine.processor import BatchOutput, Decided, RawMessage
from streams.handover import hand_over

RAW = [RawMessage("web-events", 0, 7, b"{}", 0.0)]


class Engine:
    """Stands in for ``Engine.process_isolating``: decides, calls ``decided``, then 'writes' until released."""

    def __init__(self, fail_before: bool = False, fail_write: bool = False, call_decided: bool = True) -> None:
        self.out = BatchOutput()
        self.write_done = asyncio.Event()
        self.fail_before, self.fail_write, self.call_decided = fail_before, fail_write, call_decided
        self.finished = False

    async def process(self, raw: list[RawMessage], decided: Decided) -> BatchOutput:
        assert raw == RAW
        await asyncio.sleep(0)
        if self.fail_before:
            raise RuntimeError("engine failed")
        if self.call_decided:
            decided(self.out)
        await self.write_done.wait()
        self.finished = True
        if self.fail_write:
            raise RuntimeError("write failed")
        return self.out


class Producer:
    def __init__(self, fail: bool = False) -> None:
        self.submitted: list[BatchOutput] = []
        self.acked: asyncio.Future[None] | None = None
        self.fail = fail

    async def submit(self, out: BatchOutput) -> asyncio.Future:
        if self.fail:
            raise ConnectionError("broker away")
        self.submitted.append(out)
        self.acked = asyncio.get_running_loop().create_future()
        return self.acked


def test_outputs_go_before_the_state_write_and_the_batch_is_done_only_after_both() -> None:
    async def go() -> None:
        engine, producer = Engine(), Producer()
        done = await hand_over(RAW, engine.process, producer.submit)
        assert producer.submitted == [engine.out]  # handed over while the write is still running
        assert not engine.finished and not done.done()
        assert producer.acked is not None
        producer.acked.set_result(None)  # the broker has the outputs ...
        await asyncio.sleep(0.01)
        assert not done.done()  # ... but the state write is not done: not committable yet
        engine.write_done.set()
        await asyncio.wait_for(done, 1.0)
        assert engine.finished

    asyncio.run(go())


def test_a_failure_before_the_outputs_are_final_raises_and_sends_nothing() -> None:
    async def go() -> None:
        engine, producer = Engine(fail_before=True), Producer()
        with pytest.raises(RuntimeError, match="engine failed"):
            await hand_over(RAW, engine.process, producer.submit)
        assert producer.submitted == []

    asyncio.run(go())


def test_a_process_that_ends_without_calling_decided_hands_over_its_result() -> None:
    async def go() -> None:
        engine, producer = Engine(call_decided=False), Producer()
        engine.write_done.set()
        done = await hand_over(RAW, engine.process, producer.submit)
        assert producer.submitted == [engine.out] and engine.finished
        assert producer.acked is not None
        producer.acked.set_result(None)
        await asyncio.wait_for(done, 1.0)

    asyncio.run(go())


def test_a_failed_state_write_fails_the_batch_so_it_is_read_again() -> None:
    async def go() -> None:
        engine, producer = Engine(fail_write=True), Producer()
        done = await hand_over(RAW, engine.process, producer.submit)
        assert producer.acked is not None
        producer.acked.set_result(None)
        engine.write_done.set()
        with pytest.raises(RuntimeError, match="write failed"):
            await asyncio.wait_for(done, 1.0)

    asyncio.run(go())


def test_a_refused_hand_over_raises_and_the_write_still_finishes_quietly() -> None:
    async def go() -> list[dict]:
        loop = asyncio.get_running_loop()
        unhandled: list[dict] = []
        loop.set_exception_handler(lambda _loop, ctx: unhandled.append(ctx))
        engine, producer = Engine(fail_write=True), Producer(fail=True)
        with pytest.raises(ConnectionError):
            await hand_over(RAW, engine.process, producer.submit)
        engine.write_done.set()
        await asyncio.sleep(0.01)
        assert engine.finished
        return unhandled

    unhandled = asyncio.run(go())
    gc.collect()  # an exception never retrieved is reported when its task is collected
    assert unhandled == []


def test_a_delivered_batch_carries_no_outputs() -> None:
    async def go() -> None:
        engine, producer = Engine(), Producer()
        engine.write_done.set()
        done = await hand_over(RAW, engine.process, producer.submit)
        assert producer.acked is not None
        producer.acked.set_result(None)
        assert await asyncio.wait_for(done, 1.0) is None  # nothing of the batch is held by what the intake keeps

    asyncio.run(go())


class FlakyBroker:
    """Refuses the first ``refusals`` deliveries (after taking the records), then acknowledges."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.submitted: list[BatchOutput] = []

    async def submit(self, out: BatchOutput) -> asyncio.Future:
        self.submitted.append(out)
        acked = asyncio.get_running_loop().create_future()
        if len(self.submitted) <= self.refusals:
            acked.set_exception(ConnectionError("NotLeaderForPartition"))
        else:
            acked.set_result(None)
        return acked


def test_outputs_the_broker_refused_are_sent_again_not_recomputed(monkeypatch: pytest.MonkeyPatch) -> None:
    # A refused delivery used to fail the batch, which was then read again: a request whose user had three
    # newer decisions by then could not have its decision rebuilt (three pending kept per placement): lost.
    import streams.handover as handover

    monkeypatch.setattr(handover, "RESEND_AFTER_S", 0.0)

    async def go(refusals: int) -> tuple[FlakyBroker, BaseException | None]:
        engine, broker = Engine(), FlakyBroker(refusals)
        engine.write_done.set()
        done = await hand_over(RAW, engine.process, broker.submit)
        try:
            await asyncio.wait_for(done, 1.0)
        except ConnectionError as exc:
            return broker, exc
        return broker, None

    broker, failed = asyncio.run(go(refusals=2))
    assert failed is None and len(broker.submitted) == 3 and all(o is broker.submitted[0] for o in broker.submitted)
    broker, failed = asyncio.run(go(refusals=handover.RESENDS + 1))  # still refused: the batch is read again
    assert isinstance(failed, ConnectionError) and len(broker.submitted) == handover.RESENDS + 1


def test_with_resends_sends_again_then_gives_up_with_the_last_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    # /decide outputs go this way too: a refused emit used to fail a task nobody awaited (no retry, no metric)
    import streams.handover as handover

    monkeypatch.setattr(handover, "RESEND_AFTER_S", 0.0)
    calls: list[int] = []

    def refusing(times: int):  # noqa: ANN202
        async def send() -> None:
            calls.append(1)
            if len(calls) <= times:
                raise ConnectionError(f"refused {len(calls)}")
        return send

    asyncio.run(handover.with_resends(refusing(2)))
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(ConnectionError, match=f"refused {handover.RESENDS + 1}"):
        asyncio.run(handover.with_resends(refusing(99)))
    assert len(calls) == handover.RESENDS + 1
