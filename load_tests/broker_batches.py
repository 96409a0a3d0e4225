"""What a partition's number of record batches costs the embedded broker (Tansu, memory storage).

    python -m load_tests.broker_batches [--fill 0:1 100000:2000 100000:5 200000:5] [--rate 1000] [--json PATH]

For each ``records:per_batch`` pair, a fresh 4-partition topic on a fresh embedded broker is filled with that
many 300-byte records in record batches of that size (rotating over the partitions), then a steady stream of
``--rate`` records/s is produced every 5 ms and read at the tail by one consumer (``fetch_max_wait_ms`` 20) for
``--seconds``: the broker's CPU (cores) and produce → consume latency p50/p99.

The same records cost the broker the same whatever the batch size if its requests cost O(1) or O(log n) in the
partition's log (Kafka's offset index); a cost that grows with the number of batches already in the log shows
a broker that walks its batches on every request. A worker's paced stream writes many small batches (a load
generator every 5 ms, a worker's outputs every batch), so on such a broker every request gets dearer as a run
goes on (load_tests/README_e2e.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from cadence.runtime import Runtime, create_topics
from load_tests.yardsticks.measure import percentiles, process_cpu_s
from streams.outputs import OutputSender, OutRecord

VALUE = b"x" * 300
SEND_EVERY_S = 0.005


async def fill(bootstrap: str, topic: str, records: int, per_batch: int) -> None:
    sender = OutputSender(bootstrap, linger_ms=0)
    await sender.start()
    try:
        pending = []
        for start in range(0, records, per_batch):  # unkeyed: one submit is one batch on one partition, rotating
            pending.append(await sender.submit([OutRecord(topic, None, VALUE)] * min(per_batch, records - start)))
            if len(pending) > 200:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await sender.stop()


async def steady(bootstrap: str, topic: str, broker_pid: int, rate: float, seconds: float) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, fetch_max_wait_ms=20, group_id=None,
                                auto_offset_reset="latest")
    await consumer.start()
    sender = OutputSender(bootstrap, linger_ms=0)
    await sender.start()
    latencies: list[float] = []
    try:
        await consumer.getmany(timeout_ms=500)  # reading from the end before anything is sent
        started = time.monotonic()
        end = started + seconds

        async def consume() -> None:
            while time.monotonic() < end + 0.5:
                for records in (await consumer.getmany(timeout_ms=100)).values():
                    now = time.time()
                    latencies.extend((now - r.timestamp / 1000.0) * 1000.0 for r in records)

        reader = asyncio.ensure_future(consume())
        cpu_before, sent = process_cpu_s(broker_pid), 0
        while time.monotonic() < end:
            due = int((time.monotonic() - started) * rate)
            if due > sent:
                await sender.submit([OutRecord(topic, str(i).encode(), VALUE) for i in range(sent, due)])
                sent = due
            await asyncio.sleep(SEND_EVERY_S)
        cores = (process_cpu_s(broker_pid) - cpu_before) / (time.monotonic() - started)
        await reader
    finally:
        await sender.stop()
        await consumer.stop()
    return {"broker_cores": round(cores, 2), "records_read": len(latencies),
            "latency_ms": percentiles(latencies, (0.5, 0.99))}


async def probe(records: int, per_batch: int, rate: float, seconds: float) -> dict[str, Any]:
    with Runtime(Path(tempfile.mkdtemp(prefix="cadence-batches-")), None, None) as rt:
        assert rt.broker is not None and rt.broker.proc is not None and rt.kafka_bootstrap
        topic = f"batches-{uuid.uuid4().hex[:8]}"
        create_topics(rt.kafka_bootstrap, [topic], 4)
        started = time.monotonic()
        if records:
            await fill(rt.kafka_bootstrap, topic, records, per_batch)
        filled_s = time.monotonic() - started
        await asyncio.sleep(1.0)
        out = await steady(rt.kafka_bootstrap, topic, rt.broker.proc.pid, rate, seconds)
    return {"records": records, "per_batch": per_batch, "batches": -(-records // per_batch) if records else 0,
            "fill_s": round(filled_s, 1), **out}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fill", nargs="+", default=["0:1", "100000:2000", "100000:5", "200000:5"],
                        help="records:records_per_batch already in the topic before the steady stream")
    parser.add_argument("--rate", type=float, default=1000.0, help="records/s of the steady stream")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = []
    for spec in args.fill:
        records, _, per_batch = spec.partition(":")
        row = asyncio.run(probe(int(records), int(per_batch or 1), args.rate, args.seconds))
        rows.append(row)
        lat = row["latency_ms"]
        print(f"{row['records']:>8,} records in {row['batches']:>7,} batches, then {args.rate:,.0f}/s: broker "
              f"{row['broker_cores']:.2f} cores, produce -> consume p50 {lat['p50']} ms, p99 {lat['p99']} ms",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps({"rate": args.rate, "seconds": args.seconds, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
