"""Settings Faust does not expose, applied at the one place they are used.

Faust 0.15 builds its worker consumer with ``fetch_max_wait_ms=1500`` hard-coded. A broker may hold a
fetch up to that long when little data is waiting (Tansu holds it about half of it), which put ~750 ms
between an event and its decision. We wrap the factory and set aiokafka's value before it starts.
"""

from __future__ import annotations

import functools
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

_ORIGINAL = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer
_state = {"fetch_max_wait_ms": 1500}


@functools.wraps(_ORIGINAL)
def _create_worker_consumer(self: Any, transport: Any) -> Any:
    consumer = _ORIGINAL(self, transport)
    consumer._fetch_max_wait_ms = _state["fetch_max_wait_ms"]  # read by AIOKafkaConsumer.start()
    return consumer


def set_fetch_max_wait(ms: int) -> None:
    """Longest time the broker may hold a fetch of the worker's consumer (lower: less latency at low rates)."""
    _state["fetch_max_wait_ms"] = int(ms)
    faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]
