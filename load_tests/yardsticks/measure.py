"""How the end-to-end benchmark measures every contender: drain rates, Prometheus text, quantiles, profiles.

Pure functions and small records, no Kafka: the benchmark polls counters and hands the samples here.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POLL_S = 0.25
STALL_S = 30.0  # a drain that made no progress for this long is given up (the report says so)
LOW, HIGH = 0.10, 0.90  # the rate is measured between these shares of the backlog: no start-up, no tail

_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)')


def _samples(text: str) -> Iterable[tuple[str, str, float]]:
    for line in text.splitlines():
        if line and not line.startswith("#"):
            m = _SAMPLE.match(line)
            if m:
                yield m["name"], m["labels"] or "", float(m["value"])


def metric_sum(text: str, name: str, labels: str = "") -> float:
    """Sum of the samples of ``name`` whose labels contain ``labels`` (default: all), from Prometheus text."""
    return sum(v for n, lab, v in _samples(text) if n == name and labels in lab)


def metric_mean(text: str, name: str, labels: str = "") -> float | None:
    """Mean of a histogram or summary: ``_sum`` / ``_count``."""
    count = metric_sum(text, f"{name}_count", labels)
    return metric_sum(text, f"{name}_sum", labels) / count if count else None


@dataclass
class Histogram:
    """Cumulative bucket counts by upper bound (seconds), summed over label sets."""

    buckets: dict[float, float] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> Histogram:
        return cls()

    @property
    def count(self) -> int:
        return int(self.buckets.get(math.inf, 0.0))

    def minus(self, earlier: Histogram) -> Histogram:
        return Histogram({le: c - earlier.buckets.get(le, 0.0) for le, c in self.buckets.items()})

    def quantile_ms(self, q: float) -> float | None:
        """Like PromQL ``histogram_quantile``: linear within the bucket; above the last bound, that bound."""
        total = self.count
        if total <= 0:
            return None
        rank, lower, below = q * total, 0.0, 0.0
        bounds = sorted(self.buckets)
        for le in bounds:
            cum = self.buckets[le]
            if cum >= rank:
                if math.isinf(le):
                    return round(lower * 1000, 2)
                inside = cum - below
                share = (rank - below) / inside if inside else 1.0
                return round((lower + (le - lower) * share) * 1000, 2)
            lower, below = le, cum
        return round(lower * 1000, 2)


def histogram(text: str, name: str) -> Histogram:
    h = Histogram()
    for n, labels, v in _samples(text):
        if n == f"{name}_bucket":
            le = re.search(r'le="([^"]+)"', labels)
            if le:
                bound = math.inf if le[1] == "+Inf" else float(le[1])
                h.buckets[bound] = h.buckets.get(bound, 0.0) + v
    return h


def _crossing(samples: Sequence[tuple[float, float, float]], level: float, at: int = 0) -> float | None:
    """Time (``at=0``) or CPU time (``at=2``) when the count reached ``level``, interpolated between polls."""
    for s0, s1 in zip(samples, samples[1:], strict=False):
        if s0[1] < level <= s1[1]:
            return s0[at] + (level - s0[1]) / (s1[1] - s0[1]) * (s1[at] - s0[at])
    return None


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc (0.0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def machine_cpu_s() -> tuple[float, float]:
    """CPU seconds all CPUs of the machine have been busy (user, nice, system, irq, softirq: guest time is within
    user), and stolen (a VM's vCPU ready to run while its host ran something else), from /proc/stat."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    hz = os.sysconf("SC_CLK_TCK")
    return (ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]) / hz, (ticks[7] if len(ticks) > 7 else 0) / hz


def drain_rate(count: Callable[[], float], total: int, timeout_s: float,
               on_sample: Callable[[float], None] | None = None,
               cpu: Callable[[], float] = lambda: 0.0) -> dict[str, Any]:
    """Poll ``count()`` until it reaches ``total``; the rate between 10 % and 90 % of ``total``, and the CPU
    time ``cpu()`` went up by per event over the same stretch (robust to other work on the machine)."""
    samples: list[tuple[float, float, float]] = []
    started = last_progress = time.monotonic()
    while True:
        try:
            done = count()
        except OSError:  # a busy process answered too late: no sample this time
            if time.monotonic() - last_progress > STALL_S:
                break
            continue
        now, used = time.monotonic(), cpu()
        if samples and done > samples[-1][1]:
            last_progress = now
        samples.append((now, done, used))
        if on_sample:
            on_sample(done)
        if done >= total or now - started > timeout_s or now - last_progress > STALL_S:
            break
        time.sleep(POLL_S)
    if not samples:  # never answered
        samples.append((time.monotonic(), 0.0, cpu()))
    low, high = LOW * total, HIGH * total
    t_low, t_high = _crossing(samples, low), _crossing(samples, high)
    c_low, c_high = _crossing(samples, low, at=2), _crossing(samples, high, at=2)
    first = next((t for t, c, _ in samples if c > 0), None)
    end = _crossing(samples, total)
    complete = samples[-1][1] >= total
    if t_low is not None and t_high is not None and t_high > t_low:
        rate = (HIGH - LOW) * total / (t_high - t_low)
    else:  # did not get far enough: the average since the first message, flagged as incomplete
        rate = samples[-1][1] / (samples[-1][0] - first) if first and samples[-1][0] > first else 0.0
    cpu_us = (c_high - c_low) / (high - low) * 1e6 if c_low is not None and c_high is not None else None
    crossings = [_crossing(samples, k / 10 * total) for k in range(1, 11)]
    by_decile = [round(0.1 * total / (b - a)) if a is not None and b is not None and b > a else None
                 for a, b in zip(crossings, crossings[1:], strict=False)]
    return {"events_per_s": round(rate, 1), "consumed": samples[-1][1], "complete": complete,
            "cpu_us_per_event": round(cpu_us, 1) if cpu_us else None,
            "first_to_last_s": round(end - first, 2) if end and first else None,
            "rate_by_decile": by_decile}  # 10-20 %, 20-30 % … of the backlog: shows a slowdown over time


def percentiles(values: Sequence[float], qs: Sequence[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    out: dict[str, float | None] = {}
    for q in qs:
        key = "max" if q == 1.0 else f"p{q * 100:g}".replace(".", "_")
        out[key] = round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2) if ordered else None
    return out


def _field_group(name: str) -> str:
    return name.split(":", 1)[0] + ":*" if ":" in name else name


def field_bytes(hashes: Sequence[dict[bytes, bytes]]) -> dict[str, float]:
    """Mean bytes (name + value) per user hash by field, largest first (``pd:x`` counts as ``pd:*``)."""
    totals: Counter[str] = Counter()
    for h in hashes:
        for k, v in h.items():
            totals[_field_group(k.decode(errors="replace"))] += len(k) + len(v)
    n = max(len(hashes), 1)
    return {k: round(v / n, 1) for k, v in totals.most_common()}


def top_self_frames(path: Path, n: int) -> dict[str, list[tuple[str, float]]]:
    """From a py-spy ``raw`` (folded) profile: the frames most often on top (self) and anywhere (total)."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, num = line.rpartition(" ")
        if not stack or not num.isdigit():
            continue
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        count = int(num)
        total += count
        own[frames[-1]] += count
        for f in set(frames):
            anywhere[f] += count
    pct = (lambda c: round(100.0 * c / total, 1)) if total else (lambda c: 0.0)
    return {"self_pct": [(f, pct(c)) for f, c in own.most_common(n)],
            "total_pct": [(f, pct(c)) for f, c in anywhere.most_common(n)], "samples": total}
