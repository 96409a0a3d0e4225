"""Shared fixtures. Integration tests share one embedded broker and Redis per session; each test gets
its own topic prefix, Redis namespace and consumer group, so tests never see each other's data."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cadence.runtime import Runtime, create_topics
from streams.topics import ALL_TOPICS, COMPACTED

_counter = itertools.count()


@pytest.fixture(scope="session")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    rt = Runtime(tmp_path_factory.mktemp("runtime"), os.environ.get("KAFKA_BOOTSTRAP"), os.environ.get("REDIS_URL"))
    rt.start()
    try:
        yield rt
    finally:
        rt.stop()


@pytest.fixture
def isolated(runtime: Runtime) -> dict[str, str]:
    """A fresh app id and topic prefix, with its topics created; returns the worker's env settings."""
    tag = f"t{next(_counter)}{uuid.uuid4().hex[:6]}"
    prefix = f"{tag}."
    create_topics(runtime.kafka_bootstrap or "", [prefix + t for t in ALL_TOPICS], partitions=4,
                  compacted=[prefix + t for t in COMPACTED])
    return {"app_id": tag, "topic_prefix": prefix}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path
