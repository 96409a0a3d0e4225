"""The yardstick Faust apps, built with the engine's Faust options.

The options below copy ``streams.app.create_app`` (session timeout 6 s, heartbeat 1 s, memory store,
earliest offsets, producer linger 2 ms, no wait for empty streams) and apply the engine's patch of
Faust's hard-coded consumer ``fetch_max_wait_ms=1500`` (``streams.faust_tuning``, 20 ms by default),
so the only difference between a yardstick and the engine is what the agent does with a message.
Each app serves ``/health`` (ready once its partitions are assigned) and ``/count`` (messages handled).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import faust
import orjson

from cadence.settings import Settings
from streams.faust_tuning import set_fetch_max_wait
from streams.topics import INPUT_TOPICS

CEILING_TAKE = 2000
CEILING_WITHIN_S = 0.05
NAIVE_OUTPUT = "naive-out"  # logical topic the naive yardstick sends to (one message per event)


def faust_app(settings: Settings) -> faust.App:
    assert settings.kafka_bootstrap, "KAFKA_BOOTSTRAP must be set for a yardstick"
    set_fetch_max_wait(settings.fetch_max_wait_ms)
    return faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        broker_session_timeout=6,
        broker_heartbeat_interval=1,
        store="memory://",
        topic_partitions=settings.partitions,
        consumer_auto_offset_reset="earliest",
        producer_linger_ms=2,
        web_enabled=True,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_in_thread=False,
        datadir=str(settings.data_dir / "faust"),
        stream_wait_empty=False,
    )


def _inputs(app: faust.App, settings: Settings) -> faust.TopicT:
    names = [settings.topic(t) for t in INPUT_TOPICS]
    return app.topic(*names, key_type=bytes, value_type=bytes, value_serializer="raw", key_serializer="raw")


def add_ceiling(app: faust.App, settings: Settings, progress: dict[str, int]) -> None:
    @app.agent(_inputs(app, settings), name="ceiling")
    async def ceiling(stream: faust.Stream) -> None:
        async for batch in stream.take(CEILING_TAKE, within=CEILING_WITHIN_S):
            progress["count"] += len(batch)


def add_naive(app: faust.App, settings: Settings, progress: dict[str, int]) -> None:
    counts = app.Table("naive-counts", default=int, key_type=str, value_type=int)
    out = app.topic(settings.topic(NAIVE_OUTPUT), key_type=bytes, value_type=bytes, value_serializer="raw",
                    key_serializer="raw")

    @app.agent(_inputs(app, settings), name="naive")
    async def naive(stream: faust.Stream) -> None:
        async for event in stream.events():
            doc = orjson.loads(event.value)
            user_id = doc["user_id"]
            counts[user_id] += 1
            await out.send(key=event.key, value=orjson.dumps({"user_id": user_id, "events": counts[user_id]}))
            progress["count"] += 1


YARDSTICKS: dict[str, Callable[[faust.App, Settings, dict[str, int]], None]] = {
    "ceiling": add_ceiling,
    "naive": add_naive,
}


def create_yardstick(name: str, settings: Settings) -> faust.App:
    if name not in YARDSTICKS:
        raise ValueError(f"unknown yardstick {name!r}; choose one of {sorted(YARDSTICKS)}")
    app = faust_app(settings)
    progress = {"count": 0}
    status: dict[str, Any] = {"ready": False}
    YARDSTICKS[name](app, settings, progress)

    @app.on_rebalance_complete.connect
    async def _rebalanced(app: faust.App, **kwargs: object) -> None:
        status["ready"] = True

    @app.page("/health")
    async def health(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        return web.json({"ready": status["ready"], "yardstick": name})

    @app.page("/count")
    async def count(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        return web.json(progress)

    return app
