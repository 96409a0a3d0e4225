"""The context vector a policy sees: request context plus the user's online features (pure)."""

from __future__ import annotations

import math

import numpy as np

from contracts.events import DEVICES, Event
from features.state import UserState

SEGMENTS = ("new", "casual", "loyal", "vip")
CONTEXT_NAMES = (
    ["bias"]
    + [f"device_{d}" for d in DEVICES]
    + [f"segment_{s}" for s in SEGMENTS]
    + ["hour_sin", "hour_cos", "weekend"]
    + ["log_views_1h", "log_views_24h", "log_clicks_7d", "log_conversions_7d", "log_revenue_7d"]
    + ["recency_web", "log_email_opens_7d", "log_ad_clicks_7d", "tenure"]
)
CONTEXT_DIM = len(CONTEXT_NAMES)


def build_context(event: Event, state: UserState | None) -> np.ndarray:
    """20 features in [0, ~3]: one-hots, cyclic hour, log-counts on event time."""
    x = np.zeros(CONTEXT_DIM)
    x[0] = 1.0
    device = event.device or (state.device if state else None)
    if device in DEVICES:
        x[1 + DEVICES.index(device)] = 1.0
    segment = event.segment or (state.segment if state else None)
    if segment in SEGMENTS:
        x[4 + SEGMENTS.index(segment)] = 1.0
    t = event.ts
    hour = (t % 86400) / 3600.0
    x[8] = math.sin(2 * math.pi * hour / 24)
    x[9] = math.cos(2 * math.pi * hour / 24)
    x[10] = 1.0 if ((int(t // 86400) + 3) % 7) >= 5 else 0.0  # 1970-01-01 was a Thursday
    if state is not None and state.exists:
        x[11] = math.log1p(state.count("pv", "h", t))
        x[12] = math.log1p(state.count("pv", "d", t)) / 2
        x[13] = math.log1p(state.count("ck", "w", t))
        x[14] = math.log1p(state.count("cv", "w", t))
        x[15] = math.log1p(state.count("rv", "w", t)) / 4
        age = state.age("pv", t)
        x[16] = math.exp(-age / 3600.0) if age is not None else 0.0
        x[17] = math.log1p(state.count("eo", "w", t))
        x[18] = math.log1p(state.count("ac", "w", t))
        first = state.first_seen
        x[19] = min(1.0, (t - first) / (30 * 86400)) if first is not None else 0.0
    return x
