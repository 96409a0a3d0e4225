"""Garbage collection between batches (streams/gc_pacing.py) against Python's own timing, side by side.

    python -m load_tests.gc_pacing [--events 100000] [--batch 500] [--rounds 3] [--json PATH]

Each variant runs in its own process, one after the other and interleaved ``--rounds`` times, on its own
embedded Redis and the same seeded event mix: ``Engine.process`` + ``learn`` batch after batch (no Kafka,
no Faust), with the worker's GC thresholds (20,000, 20, 20) and ``gc.freeze()`` after setup, as in the
worker. ``auto`` lets the collector run when it will; ``paced`` turns it off and calls
``GcPacer.between_batches`` after each batch, as the worker's intake does. Printed per run: CPU µs per
event, the collections (count, total and longest pause by generation), the batch time p50 / p99 / max
(the stall an event or HTTP answer waiting behind a batch feels), peak RSS, and what a full collection of
everything finds and costs at the end (paced: the cyclic garbage the periodic full collection is there for,
and its pause).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

VARIANTS = ("auto", "paced")


def run_variant(variant: str, events: int, batch: int, users: int, seed: int) -> dict[str, Any]:
    """One variant in this process (called in a child: the collector's state is per process)."""
    from cadence.metrics import Metrics
    from cadence.runtime import Runtime
    from cadence.settings import DEFAULT_CATALOGUE, Settings
    from engine.processor import RawMessage
    from load_tests.yardsticks.load import EventMix
    from load_tests.yardsticks.measure import percentiles
    from policy.catalogue import load_catalogue
    from streams.app import build_engine, redis_client, start_erasures
    from streams.gc_pacing import GC_GEN0_THRESHOLD, GcPacer

    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)  # the worker's (streams/app.py)
    backlog = EventMix(load_catalogue(DEFAULT_CATALOGUE), users, seed).take(events)
    raw = [RawMessage(e.out.topic, 0, i, e.out.value, 0.0) for i, e in enumerate(backlog)]
    del backlog
    pauses: dict[int, list[float]] = defaultdict(list)
    started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:  # every collection, however it was started
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses[info["generation"]].append(time.perf_counter() - started[0])

    pacer = GcPacer() if variant == "paced" else None
    with Runtime(Path(tempfile.mkdtemp(prefix=f"cadence-gc-{variant}-")), "127.0.0.1:1", None) as rt:
        settings = Settings(REDIS_URL=rt.redis_url, app_id=f"gc-{variant}")

        async def go() -> tuple[float, list[float]]:
            engine = build_engine(settings, Metrics(), redis_client(settings))
            await start_erasures(engine, settings)
            gc.collect()
            gc.freeze()  # as the worker does once it is set up
            gc.callbacks.append(on_gc)
            if pacer is not None:
                pacer.start()
            batch_s: list[float] = []
            cpu = time.process_time()
            for i in range(0, len(raw), batch):
                t = time.perf_counter()
                out = await engine.process(raw[i : i + batch])
                engine.learn(out.learning)
                del out
                if pacer is not None:
                    pacer.between_batches()
                batch_s.append(time.perf_counter() - t)
            return time.process_time() - cpu, batch_s

        cpu_s, batch_s = asyncio.run(go())
        gc.callbacks.remove(on_gc)
        # What a full collection of everything finds and costs now: cyclic garbage left behind (paced:
        # cycles that died after being frozen wait for this) and the pause of the worker's periodic full one.
        gc.unfreeze()
        t = time.perf_counter()
        garbage = gc.collect()
        full_ms = (time.perf_counter() - t) * 1e3
    return {
        "variant": variant,
        "cpu_us_per_event": round(cpu_s / events * 1e6, 1),
        "collections": {
            str(g): {"count": len(p), "total_ms": round(sum(p) * 1e3), "max_ms": round(max(p) * 1e3, 1)}
            for g, p in sorted(pauses.items())
        },
        "gc_us_per_event": round(sum(sum(p) for p in pauses.values()) / events * 1e6, 1),
        "batch_ms": percentiles([s * 1e3 for s in batch_s], (0.5, 0.99, 1.0)),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "full_collection": {"ms": round(full_ms, 1), "garbage_objects": garbage},
    }


def line(r: dict[str, Any]) -> str:
    gcs = ", ".join(f"gen{g} {c['count']}× max {c['max_ms']} ms" for g, c in r["collections"].items())
    b = r["batch_ms"]
    return (f"{r['variant']:>5}: {r['cpu_us_per_event']:6.1f} CPU µs/event, GC {r['gc_us_per_event']:5.1f} µs/event "
            f"({gcs}); batch p50 {b['p50']} p99 {b['p99']} max {b['max']} ms; peak RSS {r['peak_rss_mb']} MB; "
            f"a full collection at the end: {r['full_collection']['ms']} ms, "
            f"{r['full_collection']['garbage_objects']:,} garbage objects")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # a child's one run
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.events < args.batch or args.batch < 1 or args.rounds < 1:
        ap.error("need --events >= --batch >= 1 and --rounds >= 1")
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.events, args.batch, args.users, args.seed)))
        return {}
    runs: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        for variant in VARIANTS:
            cmd = [sys.executable, "-m", "load_tests.gc_pacing", "--variant", variant, "--events", str(args.events),
                   "--batch", str(args.batch), "--users", str(args.users), "--seed", str(args.seed)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"gc_pacing: the {variant} run failed:\n{done.stderr[-2000:]}")
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(line(runs[-1]), flush=True)
    summary = {}
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        summary[variant] = {
            "cpu_us_per_event_median": statistics.median(r["cpu_us_per_event"] for r in mine),
            "gc_us_per_event_median": statistics.median(r["gc_us_per_event"] for r in mine),
            "batch_p99_ms_median": statistics.median(r["batch_ms"]["p99"] for r in mine),
            "batch_max_ms_median": statistics.median(r["batch_ms"]["max"] for r in mine),
        }
        print(f"{variant:>5} median of {len(mine)}: {summary[variant]}")
    result = {"plan": {k: getattr(args, k) for k in ("events", "batch", "users", "seed", "rounds")},
              "runs": runs, "summary": summary}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
