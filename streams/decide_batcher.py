"""GET /decide requests that arrive together share one engine batch.

One request alone is one engine batch: a Lua call to apply it, one to store its decision state. Under
load, hundreds of requests in flight each held a Redis connection (the pool ran out: "Too many
connections", and the breaker sent everyone fallbacks) and each paid the batch overheads. Here requests
queue; one drain task at a time hands everything queued (up to ``max_batch``) to the engine, answers
each request with its own decision or dead letter as soon as the batch is decided, and emits the batch's
outputs once. The next batch starts then too, while the engine stores the decided one's decision state
(its reads are patched with that write: engine/inflight.py); at most ``max_storing`` batches are still
storing at once. A request that finds the queue idle is sent on the next turn of the event loop:
batching adds no waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

from contracts.decisions import DeadLetter, Decision
from engine.processor import BatchOutput, RawMessage

log = logging.getLogger(__name__)
Process = Callable[[list[RawMessage], Callable[[BatchOutput], None]], Awaitable[BatchOutput]]


RequestKey = tuple[str, str, str]  # (user_id, event id, placement) of a request: its decision has the same


class EngineFailed(RuntimeError):
    """The engine raised on the batch this request was in (logged once per batch, with the traceback)."""


@dataclass(frozen=True, slots=True)
class Answer:
    decision: Decision | None = None
    dead_letter: DeadLetter | None = None  # the request was refused (bad parameters)


def _release(answered: asyncio.Future[None], _task: asyncio.Task) -> None:
    if not answered.done():  # the engine call ended without deciding (it failed): the next batch may start
        answered.set_result(None)


class DecideBatcher:
    def __init__(self, process: Process, emit_soon: Callable[[BatchOutput], None], max_batch: int = 256,
                 max_storing: int = 2) -> None:
        self.process = process
        self.emit_soon = emit_soon
        self.max_batch = max_batch
        self.max_storing = max_storing
        self._queue: list[tuple[RequestKey, RawMessage, asyncio.Future[Answer]]] = []
        self._drainer: asyncio.Task | None = None
        self._storing: list[asyncio.Task] = []  # batches decided (answered) whose engine call has not returned

    async def decide(self, request: RequestKey, message: RawMessage) -> Answer:
        """The answer to one request (``request``: its user, event id and placement; ``message``: its event)."""
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._queue.append((request, message, future))
        if self._drainer is None:
            self._drainer = asyncio.ensure_future(self._drain())
        return await future

    async def settle(self) -> None:
        """Wait until every queued request is decided and every batch's engine call has returned (shutdown:
        their outputs are handed to ``emit_soon`` and their decision state is stored or kept)."""
        while self._drainer is not None or any(not task.done() for task in self._storing):
            await asyncio.wait([t for t in (self._drainer, *self._storing) if t is not None and not t.done()])

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                self._storing = [task for task in self._storing if not task.done()]
                if len(self._storing) >= self.max_storing:
                    await asyncio.wait(self._storing[:1])
                    continue
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                answered: asyncio.Future[None] = loop.create_future()
                task = asyncio.ensure_future(self._run(batch, answered))
                task.add_done_callback(partial(_release, answered))
                self._storing.append(task)
                await answered  # decided (or failed): the next batch may start
        finally:
            self._drainer = None

    async def _run(self, batch: list[tuple[RequestKey, RawMessage, asyncio.Future[Answer]]],
                   answered: asyncio.Future[None]) -> None:
        def answer(out: BatchOutput) -> None:
            """Called by the engine once the batch is decided, before its state write is stored."""
            self.emit_soon(out)
            # a request_id is unique per user only: two users' requests may share one in a batch
            decisions = {(d.user_id, d.request_event_id, d.placement): d for d in out.decisions}
            refused = {id(dl.raw): dl for dl in out.dead_letters}
            for request, message, future in batch:
                if not future.done():
                    future.set_result(Answer(decisions.get(request), refused.get(id(message.value))))
            if not answered.done():
                answered.set_result(None)

        try:
            await self.process([message for _, message, _ in batch], answer)
        except Exception as exc:  # answer every waiting request, never leave one hanging
            log.exception("the engine failed on a batch of %d /decide requests", len(batch))
            failed = EngineFailed(f"{type(exc).__name__}: {exc}")
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(failed)


class OutputCoalescer:
    """Emits the outputs of /decide batches that finish within ``delay_s`` of each other as one.

    Under load a /decide batch holds a handful of requests, and each emit was its own set of record
    batches and produce request; the broker's and the worker's cost is per batch, not per record. The
    answers do not wait for the emit, so holding outputs a few milliseconds costs the website nothing;
    readers of the decisions topic see them that much later. Order is kept: outputs are merged and
    handed to ``emit`` in the order they came.
    """

    def __init__(self, emit: Callable[[BatchOutput], None], delay_s: float = 0.005) -> None:
        self.emit = emit
        self.delay_s = delay_s
        self._held: BatchOutput | None = None

    def __call__(self, out: BatchOutput) -> None:
        if self._held is None:
            self._held = BatchOutput()
            asyncio.get_running_loop().call_later(self.delay_s, self.flush)
        self._held.merge(out)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            self.emit(held)


class BackgroundEmits:
    """/decide outputs on their way to Kafka: coalesced (:class:`OutputCoalescer`), each send its own task,
    kept until it ends, so that shutdown can wait for them (``drain``) before the producer stops; a request
    answered just before a worker stops still has its decision on the decisions topic."""

    def __init__(self, send: Callable[[BatchOutput], Awaitable[None]], delay_s: float = 0.005) -> None:
        self.send = send
        self.coalescer = OutputCoalescer(self._start, delay_s)
        self._sending: set[asyncio.Task] = set()

    def __call__(self, out: BatchOutput) -> None:
        self.coalescer(out)

    def _start(self, out: BatchOutput) -> None:
        task = asyncio.ensure_future(self.send(out))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def drain(self) -> None:
        """Send what the coalescer holds now and wait until every send has ended."""
        self.coalescer.flush()
        while self._sending:
            await asyncio.wait(set(self._sending))
