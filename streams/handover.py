"""An input batch from the intake to the engine and on to Kafka, without waiting for its state write.

The engine calls ``decided`` once a batch's outputs are final, before the batch's decision-state write
goes to Redis (engine/processor.py). :func:`hand_over` gives those outputs to the producer at once and
returns, so the intake fetches and decides the next batch while that write is in flight: the next
batch's reads are patched with it (engine/inflight.py), and writes reach Redis one at a time, in order.

The future it returns is done when the broker has acknowledged the outputs and the state write is done.
The intake commits the batch's offsets only then: a crash in between reads the batch again, and its events
come back as duplicates whose stored outputs are re-sent, or, if the write never landed, are decided again
(engine/replay.py). A failure before the outputs are final raises here, and the intake reads the batch again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from engine.processor import BatchOutput, Decided, RawMessage

Process = Callable[[list[RawMessage], Decided], Awaitable[BatchOutput]]
Submit = Callable[[BatchOutput], Awaitable[asyncio.Future]]


async def hand_over(raw: list[RawMessage], process: Process, submit: Submit) -> asyncio.Future:
    """Process ``raw``, submit its outputs as soon as they are final; done when delivered and stored."""
    final: asyncio.Future[BatchOutput] = asyncio.get_running_loop().create_future()

    def decided(out: BatchOutput) -> None:
        if not final.done():
            final.set_result(out)

    processing = asyncio.ensure_future(process(raw, decided))
    try:
        await asyncio.wait((final, processing), return_when=asyncio.FIRST_COMPLETED)
        out = final.result() if final.done() else processing.result()  # raises what the engine raised
        delivered = await submit(out)
    except BaseException:
        if not processing.done():  # the write may still be running: let it finish, keep its outcome quiet
            processing.add_done_callback(_retrieve)
        raise
    return asyncio.gather(delivered, processing)


def _retrieve(task: asyncio.Future) -> None:
    """Mark a task's exception as seen (its batch is read again anyway)."""
    with contextlib.suppress(BaseException):
        task.exception()
