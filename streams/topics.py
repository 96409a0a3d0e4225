"""Topic names, their roles and how many partitions each gets."""

from __future__ import annotations

INPUT_TOPICS = ("web-events", "email-events", "ad-events")
DECISIONS = "decisions"
DEAD_LETTERS = "dead-letters"
LEARNING = "learning"  # exposure and reward samples; every worker reads all of it
BID_SIGNALS = "bid-signals"
SHADOW = "shadow"  # what a challenger policy would have done (ope.shadow.ShadowRecord JSON)
ERASURES = "erasures"  # compacted: one tombstone (null value) per erased user, keyed by user_id
OUTPUT_TOPICS = (DECISIONS, DEAD_LETTERS, LEARNING, BID_SIGNALS, SHADOW, ERASURES)
COMPACTED = (ERASURES,)
ALL_TOPICS = INPUT_TOPICS + OUTPUT_TOPICS
