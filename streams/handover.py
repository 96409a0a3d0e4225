"""An input batch from the intake to the engine and on to Kafka, without waiting for its state write.

The engine calls ``decided`` once a batch's outputs are final, before the batch's decision-state write
goes to Redis (engine/processor.py). :func:`hand_over` gives those outputs to the producer at once and
returns, so the intake fetches and decides the next batch while that write is in flight: the next
batch's reads are patched with it (engine/inflight.py), and writes reach Redis one at a time, in order.

The future it returns is done when the broker has acknowledged the outputs and the state write is done.
The intake commits the batch's offsets only then: a crash in between reads the batch again, and its events
come back as duplicates whose stored outputs are re-sent, or, if the write never landed, are decided again
(engine/replay.py). A failure before the outputs are final raises here, and the intake reads the batch again.

Outputs the broker did not take are sent again, the same records, up to ``RESENDS`` times a second apart,
before the batch fails and the intake reads it again. Reading it again is the last resort: a request's
decision is rebuilt from the user's stored pending decisions, which keep the last three per placement, so a
request followed by three newer ones of its user by then had its decision lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from engine.processor import BatchOutput, Decided, RawMessage

log = logging.getLogger(__name__)
RESENDS = 3  # a batch's outputs are sent again this many times before the batch fails (read again)
RESEND_AFTER_S = 1.0

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
        delivered = asyncio.ensure_future(with_resends(lambda: _submitted(submit, out), await submit(out)))
    except BaseException:
        if not processing.done():  # the write may still be running: let it finish, keep its outcome quiet
            processing.add_done_callback(_retrieve)
        raise
    return _both(delivered, processing)


async def with_resends(send: Callable[[], Awaitable[object]], first: Awaitable[object] | None = None) -> None:
    """Await ``first`` (or ``send()``); while the broker refuses, ``send()`` again, ``RESENDS`` times a second
    apart. Raises the last failure."""
    delivered = first if first is not None else send()
    for attempt in range(1, RESENDS + 2):
        try:
            await delivered
            return
        except Exception as exc:
            if attempt > RESENDS:
                raise
            log.warning("outputs were not delivered (%s: %s); sending them again in %.0f s (%d of %d)",
                        type(exc).__name__, exc, RESEND_AFTER_S, attempt, RESENDS)
        await asyncio.sleep(RESEND_AFTER_S)
        delivered = send()


async def _submitted(submit: Submit, out: BatchOutput) -> None:
    await (await submit(out))


def _both(delivered: asyncio.Future, processing: asyncio.Future) -> asyncio.Future[None]:
    """Done when both are (the first exception, if any). Unlike ``gather`` it keeps neither result, so the
    batch's outputs are freed once delivered and stored, not when the intake next settles its batches."""
    both: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def check(_: asyncio.Future) -> None:
        if both.done() or not (delivered.done() and processing.done()):
            return
        for part in (delivered, processing):
            if part.cancelled():
                both.cancel()
                return
            if part.exception() is not None:
                both.set_exception(part.exception())  # type: ignore[arg-type]
                _retrieve(delivered if part is processing else processing)
                return
        both.set_result(None)

    delivered.add_done_callback(check)
    processing.add_done_callback(check)
    return both


def _retrieve(task: asyncio.Future) -> None:
    """Mark a task's exception as seen (its batch is read again anyway)."""
    with contextlib.suppress(BaseException):
        task.exception()
