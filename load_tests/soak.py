"""Soak: engine workers (one by default, one consumer group) under a steady load for minutes; is memory flat?

    python -m load_tests.soak [--minutes 10] [--rate 5000] [--users 50000] [--workers 1] [--sample-s 10] [--json PATH]

The load is the realistic seeded mix of load_tests/yardsticks/load.py (requests, clicks, conversions,
email opens, ad clicks for ``--users`` users), sent at ``--rate`` events/s, with event time advancing as
fast as the wall clock. Every ``--sample-s`` seconds it records the worker's RSS (psutil if installed,
else /proc/PID/status VmRSS), the broker's and Redis' RSS, Redis ``used_memory`` and key count, and how
far the worker has got (events consumed, decisions), and the share of a core the worker(s), the broker and
Redis used over the interval (/proc; 100 = one core busy). It prints one table row per sample and a verdict:
memory is "flat" when the least-squares slope of the worker's RSS over the last ``--judge-share`` of the run
(default: the last half) is below ``--flat-mb-per-min``; what comes before is warm-up: caches, the user
population, Python's allocator. Bounded structures fill in a time set by their capacity over the rate (at
1,500 events/s the 200,000 remembered sample keys and 100,000 waiting exposures take about 3 minutes), so a
short run needs a long warm-up; the slope over the last 2/3 is printed too.
The embedded broker (Tansu, memory storage) keeps every message, so its RSS grows by design; Redis grows
until every user has been seen. A worker that cannot keep up shows a growing lag: then its memory figure
includes what it buffers, so pick a --rate it sustains to judge leaks. Not part of CI: it takes minutes.
Exit code 0 whatever the verdict; read the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

from cadence.runtime import Runtime, create_topics
from cadence.settings import DEFAULT_CATALOGUE
from cadence.workers import WorkerProcess, worker_env
from load_tests.yardsticks.load import EventMix
from policy.catalogue import load_catalogue
from streams.outputs import OutputSender, OutRecord
from streams.topics import ALL_TOPICS

MB = 1024 * 1024
CHUNK_S = 0.05  # the sender hands events to the producer every 50 ms
TABLE = ("{elapsed_s:>7.0f} {worker_rss_mb:>10.1f} {redis_used_mb:>10.1f} {redis_rss_mb:>9.1f} {broker_rss_mb:>10.1f} "
         "{redis_keys:>9d} {sent:>10d} {consumed:>10d} {lag:>8d} {decisions:>10d} "
         "{worker_cpu_pct:>7.0f} {broker_cpu_pct:>7.0f} {redis_cpu_pct:>7.0f}")
HEADER = (f"{'t (s)':>7} {'worker MB':>10} {'redis used':>10} {'redis RSS':>9} {'broker MB':>10} {'keys':>9} "
          f"{'sent':>10} {'consumed':>10} {'lag':>8} {'decisions':>10} {'wrk CPU':>7} {'brk CPU':>7} {'rds CPU':>7}")


def rss_bytes(pid: int) -> int:
    """Resident set size of a process: psutil when installed, else /proc (Linux)."""
    try:
        import psutil  # type: ignore[import-untyped]

        return int(psutil.Process(pid).memory_info().rss)
    except ImportError:
        pass
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, flags=re.M)
    if found is None:
        raise RuntimeError(f"no VmRSS in /proc/{pid}/status: is process {pid} still running?")
    return int(found.group(1)) * 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc; 0.0 where it cannot be read)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


@dataclass
class CpuShare:
    """Share of one core each process used since the previous call (100 = one core busy)."""

    pids: dict[str, list[int]]
    _last: dict[str, float] = field(default_factory=dict)
    _at: float = 0.0

    def __call__(self) -> dict[str, float]:
        now = time.monotonic()
        used = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in self.pids.items()}
        span = now - self._at
        out = {name: round(100.0 * (used[name] - self._last.get(name, 0.0)) / span, 1) if self._at and span > 0
               else 0.0 for name in used}
        self._last, self._at = used, now
        return out


def metric_total(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, flags=re.M))


@dataclass
class Sample:
    elapsed_s: float
    worker_rss_mb: float  # the largest worker's RSS (with --workers N, each is judged by the largest)
    broker_rss_mb: float
    redis_rss_mb: float
    redis_used_mb: float
    redis_keys: int
    sent: int
    consumed: int
    lag: int
    decisions: int
    worker_cpu_pct: float = 0.0  # of one core, over the last sample interval (all workers together)
    broker_cpu_pct: float = 0.0
    redis_cpu_pct: float = 0.0


@dataclass
class Sender:
    """Sends the event mix at ``rate`` per second in a thread; ``sent`` counts what was handed over."""

    bootstrap: str
    prefix: str
    mix: EventMix
    rate: float
    sent: int = 0
    behind_s: float = 0.0  # how far the sender itself fell behind its schedule (its own limit)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        """Each chunk's due events go out as one record batch per partition (the worker's own sender):
        about 1 µs a record, where kafka-python's ``send`` costs tens, CPU the worker would not get."""
        sender = OutputSender(self.bootstrap, linger_ms=5)
        await sender.start()
        deliveries: list[asyncio.Future] = []
        started = time.perf_counter()
        try:
            while not self._stop.is_set():
                elapsed = time.perf_counter() - started
                due = int(self.rate * elapsed) - self.sent
                if due > 0:
                    records = [OutRecord(self.prefix + e.out.topic, e.out.key, e.out.value) for e in self.mix.take(due)]
                    deliveries = [d for d in deliveries if not d.done()]
                    deliveries.append(await sender.submit(records))
                    self.sent += due
                self.behind_s = max(0.0, elapsed - self.sent / self.rate)
                await asyncio.sleep(CHUNK_S)
            await asyncio.wait_for(asyncio.gather(*deliveries), 30)
        finally:
            await sender.stop()

    def stop(self) -> None:
        self._stop.set()


def slope_per_min(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (seconds), per minute; 0 with fewer than two points."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return 0.0 if var == 0 else 60.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def verdict(samples: list[Sample], flat_mb_per_min: float, judge_share: float = 0.5) -> dict[str, float | bool | int]:
    """Slopes over the last ``judge_share`` of the run (by time); flat when the worker's RSS slope is below
    ``flat_mb_per_min``. The worker's slope over the last 2/3 is reported next to it."""
    end = samples[-1].elapsed_s if samples else 0.0
    tail = [s for s in samples if s.elapsed_s >= end * (1.0 - judge_share)]
    two_thirds = [s for s in samples if s.elapsed_s >= end / 3]
    xs = [s.elapsed_s for s in tail]
    worker = slope_per_min(xs, [s.worker_rss_mb for s in tail])
    return {
        "judged_share": judge_share,
        "samples_in_window": len(tail),
        "worker_rss_slope_last_two_thirds_mb_per_min": round(
            slope_per_min([s.elapsed_s for s in two_thirds], [s.worker_rss_mb for s in two_thirds]), 3),
        "worker_rss_slope_mb_per_min": round(worker, 3),
        "redis_used_slope_mb_per_min": round(slope_per_min(xs, [s.redis_used_mb for s in tail]), 3),
        "broker_rss_slope_mb_per_min": round(slope_per_min(xs, [s.broker_rss_mb for s in tail]), 3),
        "lag_slope_events_per_min": round(slope_per_min(xs, [float(s.lag) for s in tail]), 1),
        "worker_rss_first_mb": tail[0].worker_rss_mb if tail else 0.0,
        "worker_rss_last_mb": tail[-1].worker_rss_mb if tail else 0.0,
        "flat": len(tail) >= 2 and worker < flat_mb_per_min,
    }


def soak(args: argparse.Namespace) -> dict:
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="cadence-soak-"))
    rt = Runtime(data_dir / "stack", None, None).start()
    workers: list[WorkerProcess] = []
    sender = None
    try:
        assert rt.broker and rt.broker.proc and rt.redis and rt.redis.proc
        prefix = "soak."
        create_topics(rt.kafka_bootstrap or "", [prefix + t for t in ALL_TOPICS], partitions=4)
        env = worker_env(rt.env(), app_id="soak", topic_prefix=prefix, log_level="warn")
        # one consumer group: the workers share the input partitions, each learns from all (learning topic)
        workers = [WorkerProcess(env, data_dir, f"worker-{i + 1}").start() for i in range(args.workers)]
        for worker in workers:
            worker.wait_ready(timeout_s=120)
        mix = EventMix(load_catalogue(DEFAULT_CATALOGUE), users=args.users, seed=args.seed,
                       requests_per_sim_s=args.rate)  # event time runs with the wall clock
        sender = Sender(rt.kafka_bootstrap or "", prefix, mix, args.rate)
        thread = threading.Thread(target=sender.run, name="soak-sender", daemon=True)
        client = redis.Redis.from_url(rt.redis_url or "")
        samples: list[Sample] = []
        print(f"soak: {args.minutes:g} min at {args.rate:g} events/s, {args.users} users, {args.workers} worker(s); "
              f"data in {data_dir}")
        print(HEADER, flush=True)
        cpu = CpuShare({"worker": [w.proc.pid for w in workers if w.proc], "broker": [rt.broker.proc.pid],
                        "redis": [rt.redis.proc.pid]})
        cpu()
        started = time.monotonic()
        thread.start()
        end = started + args.minutes * 60
        next_at = started + args.sample_s
        while True:
            time.sleep(max(0.0, min(next_at, end) - time.monotonic()))
            exited = [w for w in workers if w.proc is None or w.proc.poll() is not None]
            if exited:
                print(f"a worker exited; see {exited[0].log_path}", file=sys.stderr)
                break
            texts = []
            for worker in workers:
                with urllib.request.urlopen(worker.url + "/metrics", timeout=5) as resp:
                    texts.append(resp.read().decode())
            consumed = sum(int(metric_total(text, "cadence_events_consumed_total")
                               + metric_total(text, "cadence_dead_letters_total")) for text in texts)
            info = client.info("memory")
            shares = cpu()
            sample = Sample(
                elapsed_s=round(time.monotonic() - started, 1),
                worker_rss_mb=round(max(rss_bytes(w.proc.pid) for w in workers if w.proc) / MB, 1),
                broker_rss_mb=round(rss_bytes(rt.broker.proc.pid) / MB, 1),
                redis_rss_mb=round(rss_bytes(rt.redis.proc.pid) / MB, 1),
                redis_used_mb=round(int(info["used_memory"]) / MB, 1),
                redis_keys=int(client.dbsize()),
                sent=sender.sent,
                consumed=consumed,
                lag=max(0, sender.sent - consumed),
                decisions=sum(int(metric_total(text, "cadence_decisions_total")) for text in texts),
                worker_cpu_pct=shares["worker"],
                broker_cpu_pct=shares["broker"],
                redis_cpu_pct=shares["redis"],
            )
            samples.append(sample)
            print(TABLE.format(**asdict(sample)), flush=True)
            if time.monotonic() >= end - 0.5:
                break
            next_at += args.sample_s
        sender.stop()
        thread.join(30)
        elapsed = samples[-1].elapsed_s if samples else 0.0
        result = {
            "config": {"minutes": args.minutes, "rate": args.rate, "users": args.users, "workers": args.workers,
                       "seed": args.seed,
                       "sample_s": args.sample_s, "flat_mb_per_min": args.flat_mb_per_min,
                       "judge_share": args.judge_share},
            "samples": [asdict(s) for s in samples],
            "summary": {
                **verdict(samples, args.flat_mb_per_min, args.judge_share),
                "sent": sender.sent,
                "sent_rate_per_s": round(sender.sent / elapsed, 1) if elapsed else 0.0,
                "consumed_rate_per_s": round(samples[-1].consumed / elapsed, 1) if elapsed else 0.0,
                "sender_behind_s": round(sender.behind_s, 2),
                "worker_alive": all(w.proc is not None and w.proc.poll() is None for w in workers),
            },
        }
        return result
    finally:
        if sender is not None:
            sender.stop()
        for worker in workers:
            worker.stop()
        rt.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    parser.add_argument("--rate", type=float, default=5000.0, help="events per second sent (default 5000)")
    parser.add_argument("--users", type=int, default=50_000, help="user population (default 50000)")
    parser.add_argument("--sample-s", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--flat-mb-per-min", type=float, default=1.0,
                        help="worker RSS slope under which memory counts as flat (default 1.0 MB/min)")
    parser.add_argument("--judge-share", type=float, default=0.5,
                        help="the last share of the run whose slopes are judged (default 0.5: the rest is warm-up)")
    parser.add_argument("--workers", type=int, default=1, help="workers in one consumer group (default 1)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--data-dir", help="where the embedded servers and the worker log go (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="write config, samples and summary here")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.sample_s <= 0 or args.workers < 1:
        parser.error("--minutes, --rate, --sample-s and --workers must be positive")
    if not 0.0 < args.judge_share <= 1.0:
        parser.error(f"--judge-share must be in (0, 1], got {args.judge_share}")
    result = soak(args)
    s = result["summary"]
    print(f"\nsent {s['sent']} events ({s['sent_rate_per_s']}/s), worker consumed {s['consumed_rate_per_s']}/s; "
          f"worker alive: {s['worker_alive']}")
    print(f"worker RSS over the last {args.judge_share:.0%}: "
          f"{s['worker_rss_first_mb']} -> {s['worker_rss_last_mb']} MB, "
          f"slope {s['worker_rss_slope_mb_per_min']} MB/min -> {'FLAT' if s['flat'] else 'GROWING'} "
          f"(threshold {args.flat_mb_per_min} MB/min; over the last 2/3: "
          f"{s['worker_rss_slope_last_two_thirds_mb_per_min']} MB/min)")
    print(f"Redis used_memory slope {s['redis_used_slope_mb_per_min']} MB/min, broker RSS slope "
          f"{s['broker_rss_slope_mb_per_min']} MB/min, lag slope {s['lag_slope_events_per_min']} events/min")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
