"""Event-time sliding windows stored as two buckets (current and previous) per counter and window.

A window of size W keeps ``bucket:cur:prev`` where ``bucket = floor(ts / W)``. The count over the last W
seconds at time t is estimated as ``prev * (1 - frac) + cur`` with ``frac = (t mod W) / W``: exact at
bucket boundaries, linear in between, and O(1) memory whatever the event rate. Late events land in the
previous bucket when it is still in the window, otherwise only in longer windows. A late read (a time before
the latest bucket) counts only what the kept buckets hold from before it, never later events.
"""

from __future__ import annotations

import math

# (suffix, size in seconds). The suffix is appended to the counter's short name: "pvh" = page views, 1 h.
WINDOWS: tuple[tuple[str, int], ...] = (("h", 3600), ("d", 86400), ("w", 7 * 86400))
WINDOW_NAMES = {"h": "1h", "d": "24h", "w": "7d"}


def parse_cell(raw: str | None) -> tuple[int, float, float] | None:
    """``"123:4:2"`` -> (bucket, cur, prev)."""
    if not raw:
        return None
    bucket, cur, prev = raw.split(":")
    return int(bucket), float(cur), float(prev)


def add_to_cell(cell: tuple[int, float, float] | None, ts: float, size: int, amount: float) -> tuple[int, float, float]:
    """The update the Lua script applies, in Python: used by tests to check the script and by replay."""
    bucket = math.floor(ts / size)
    if cell is None:
        return bucket, amount, 0.0
    b, cur, prev = cell
    if bucket == b:
        return b, cur + amount, prev
    if bucket == b + 1:
        return bucket, amount, cur
    if bucket > b + 1:
        return bucket, amount, 0.0
    if bucket == b - 1:
        return b, cur, prev + amount
    return cell  # older than the previous bucket: outside this window


def estimate(cell: tuple[int, float, float] | None, ts: float, size: int) -> float:
    """Sliding-window estimate of the counter over (ts - size, ts]."""
    if cell is None:
        return 0.0
    b, cur, prev = cell
    now_bucket = math.floor(ts / size)
    frac = (ts - now_bucket * size) / size
    if now_bucket == b:
        return prev * (1.0 - frac) + cur
    if now_bucket == b + 1:
        return cur * (1.0 - frac)
    if now_bucket == b - 1:  # a late read, in the bucket before the latest: the part of it before ts (as if
        return prev * frac   # spread evenly; the bucket before it is no longer kept), never the later buckets
    if now_bucket < b - 1:  # further back: nothing kept is from before ts (cur + prev counted the future:
        return 0.0          # a late request at 01:30 read 51 page views "in the last hour" from 02:00-02:50)
    return 0.0
