"""The engine's records: a raw input message, what one batch produces, the engine's settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from contracts.decisions import DeadLetter, Decision, LearningSample
from engine.attribution import Windows
from ope.shadow import ShadowRecord


@dataclass(slots=True)
class RawMessage:
    topic: str  # logical topic name, without the deployment's prefix
    partition: int
    offset: int
    value: bytes
    timestamp: float = 0.0  # broker/producer timestamp (wall clock), for latency metrics only


@dataclass(slots=True)
class BatchOutput:
    decisions: list[Decision] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    learning: list[LearningSample] = field(default_factory=list)
    bid_signals: list[dict] = field(default_factory=list)
    shadow: list[ShadowRecord] = field(default_factory=list)  # what a challenger would have done
    request_timestamps: list[float] = field(default_factory=list)  # per decision: its request's timestamp
    timestamps: dict[str, float] = field(default_factory=dict)  # event_id -> Kafka timestamp, this batch

    def merge(self, other: BatchOutput) -> None:
        self.decisions += other.decisions
        self.dead_letters += other.dead_letters
        self.learning += other.learning
        self.bid_signals += other.bid_signals
        self.shadow += other.shadow
        self.request_timestamps += other.request_timestamps
        self.timestamps.update(other.timestamps)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    max_event_bytes: int = 65536
    max_future_skew_s: float = 3600.0
    max_lateness_s: float = 30 * 86400.0
    max_time_jump_s: float = 7 * 86400.0
    click_reward: float = 0.1
    windows: Windows = Windows(click_s=1800.0, conversion_s=7 * 86400.0)
    watermark_resync_events: int = 1000  # this many events in a row ahead of the watermark: time jumped
    retry_buffer_max: int = 200_000  # feature updates kept for replay while Redis is unreachable
