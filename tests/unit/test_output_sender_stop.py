"""A stopped output sender refuses late records instead of starting a producer nobody stops or flushes."""

from __future__ import annotations

import asyncio

import pytest

from streams.outputs import OutputSender, OutRecord


def test_records_handed_over_after_stop_fail_instead_of_starting_a_second_producer() -> None:
    async def go() -> None:
        sender = OutputSender("127.0.0.1:1")  # never reached: nothing may connect after stop
        await sender.stop()
        with pytest.raises(RuntimeError, match="shutting down"):
            await sender.submit([OutRecord("decisions", b"u1", b"{}")])
        assert sender._producer is None
        await asyncio.wait_for(await sender.submit([]), 1.0)  # nothing to send: still fine

    asyncio.run(go())
