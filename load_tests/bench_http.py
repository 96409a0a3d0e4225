"""Benchmark of GET /decide: latency at a paced rate (default 1,000 requests/s) on the embedded stack.

    .venv/bin/python -m load_tests.bench_http [--rate 1000] [--seconds 20] [--users 5000] [--client light|aiohttp]
                                              [--json PATH]

One worker (embedded Tansu + Valkey), a client in this process sending requests on a fixed schedule
(open loop: a slow answer does not slow the sender down, so queueing shows in the numbers). Latency is
measured from the scheduled send time to the response, the sender's own lag included (printed too).
The default client (load_tests/http_client.py, keep-alive connections, ~no parsing) costs far less CPU
per request than aiohttp's (``--client aiohttp``), which shares the worker's two cores. The worker's own
histogram ``cadence_http_decide_seconds`` is printed next to it. Target: p99 <= 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cadence.runtime import Runtime, create_topics  # noqa: E402
from cadence.workers import WorkerProcess, worker_env  # noqa: E402
from load_tests.http_client import LightClient  # noqa: E402
from streams.topics import ALL_TOPICS, COMPACTED  # noqa: E402

TOKEN = "bench-token"
T0 = 1_767_600_000.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def drive(url: str, rate: float, seconds: float, users: int, warmup_s: float, client: str = "light") -> dict:
    """Send ``rate`` requests/s on a fixed schedule (open loop) for ``seconds``; latency from each request's
    scheduled time to its response, and the sender's own lag behind the schedule (its timer wakes up to
    1 ms late: epoll's timeout is in whole milliseconds), so a late sender is visible, never hidden."""
    latencies: list[float] = []
    lags: list[float] = []
    statuses: dict[int, int] = {}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    light = LightClient(host, int(port), headers) if client == "light" else None
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256), headers=headers) \
        if client == "aiohttp" else None
    try:
        start = time.perf_counter() + 0.2
        n = int(rate * seconds)
        tasks: set[asyncio.Task] = set()

        async def one(i: int, due: float) -> None:
            params = {"user_id": f"h{i % users}", "placement": "home_hero", "device": "mobile",
                      "segment": "loyal", "ts": str(T0 + i / rate), "request_id": f"b{i}"}
            sent = time.perf_counter()
            if light is not None:
                status, _ = await light.get("/decide", params)
            else:
                assert session is not None
                async with session.get(url + "/decide", params=params) as resp:
                    await resp.read()
                    status = resp.status
            statuses[status] = statuses.get(status, 0) + 1
            if due - start >= warmup_s:
                latencies.append((time.perf_counter() - due) * 1000)
                lags.append((sent - due) * 1000)

        for i in range(n):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(one(i, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    finally:
        if light is not None:
            light.close()
        if session is not None:
            await session.close()
    quantiles = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
    return {"sent": n, "sent_rate": round(n / elapsed, 1), "statuses": statuses, "client": client,
            "latency_ms": {q: round(pct(latencies, p), 3) for q, p in quantiles},
            "sender_lag_ms": {q: round(pct(lags, p), 3) for q, p in quantiles}}


def worker_histogram(text: str, metric: str = "cadence_http_decide_seconds", match: str = 'status="200"') \
        -> dict[str, float]:
    """p50/p99 upper bucket bounds (ms) of a histogram on the worker's /metrics."""
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith(f"{metric}_bucket{{") and match in line:
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1] if buckets else 0
    out = {}
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        bound = next((le for le, count in buckets if count >= q * total), float("nan"))
        out[f"{name}_le_ms"] = bound * 1000
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--users", type=int, default=5000)
    p.add_argument("--warmup", type=float, default=3.0, help="seconds not measured at the start")
    p.add_argument("--client", choices=("light", "aiohttp"), default="light",
                   help="light: load_tests/http_client.py (little CPU per request); aiohttp: its client")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    data = Path(tempfile.mkdtemp(prefix="bench-http-"))
    with Runtime(data, None, None) as rt:
        create_topics(rt.kafka_bootstrap or "", list(ALL_TOPICS), 4, compacted=list(COMPACTED))
        env = worker_env(rt.env(), api_token=TOKEN, http_max_rps=str(args.rate * 4), log_level="error")
        worker = WorkerProcess(env, data, "worker-1").start()
        try:
            worker.wait_ready()
            # The client's own pauses would count as the worker's latency (open loop): no cyclic GC in it
            # while it sends (a gen-2 pass over the sender's objects took ~100 ms on this machine).
            gc.collect()
            gc.disable()
            try:
                result = asyncio.run(drive(worker.url, args.rate, args.seconds, args.users, args.warmup,
                                            args.client))
            finally:
                gc.enable()
            text = worker.metrics_text()
            result["worker_histogram"] = worker_histogram(text)
            result["event_loop_lag"] = worker_histogram(text, "cadence_event_loop_lag_seconds", "")
        finally:
            worker.stop()
    result.update({"target_rate": args.rate, "seconds": args.seconds, "load_average": os.getloadavg(),
                   "target_p99_ms": 5.0, "p99_ok": result["latency_ms"]["p99"] <= 5.0})
    lat = result["latency_ms"]
    print(f"GET /decide at {result['sent_rate']:.0f}/s (target {args.rate:.0f}/s), statuses {result['statuses']}")
    lag = result["sender_lag_ms"]
    print(f"  client latency ms ({result['client']} client, from the scheduled send): p50 {lat['p50']}  "
          f"p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}")
    print(f"  sender lag behind schedule ms (included above): p50 {lag['p50']}  p99 {lag['p99']}")
    print(f"  worker histogram: p50 <= {result['worker_histogram']['p50_le_ms']} ms, "
          f"p99 <= {result['worker_histogram']['p99_le_ms']} ms; load average {os.getloadavg()[0]:.1f}")
    print(f"  worker event loop lag: p50 <= {result['event_loop_lag']['p50_le_ms']} ms, "
          f"p99 <= {result['event_loop_lag']['p99_le_ms']} ms")
    print(f"  target p99 <= 5 ms: {'ok' if result['p99_ok'] else 'MISS'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        options = orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
        args.json.write_bytes(orjson.dumps(result, option=options))


if __name__ == "__main__":
    main()
