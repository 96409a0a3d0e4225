"""Topic names, their roles and how many partitions each gets."""

from __future__ import annotations

INPUT_TOPICS = ("web-events", "email-events", "ad-events")
DECISIONS = "decisions"
DEAD_LETTERS = "dead-letters"
LEARNING = "learning"  # exposure and reward samples; every worker reads all of it
BID_SIGNALS = "bid-signals"
OUTPUT_TOPICS = (DECISIONS, DEAD_LETTERS, LEARNING, BID_SIGNALS)
ALL_TOPICS = INPUT_TOPICS + OUTPUT_TOPICS
