"""Does the embedded broker (Tansu, memory storage) ever let go of a topic's records?

A soak's broker keeps every message it was sent unless the topic's retention removes old ones, or a client
deletes them (DeleteRecords, what a retention job or `kafka-delete-records` does). This script writes rounds
of records to a topic created with a short ``retention.ms`` (and small segments), tries DeleteRecords up to the
end after each round, waits, and prints the partition's first offset and the broker's RSS:

    python -m load_tests.broker_retention [--rounds 4] [--records 200000] [--json out.json]

If the first offset stays 0 and the RSS grows by the same step every round, the broker keeps everything, and a
long soak on it measures the broker's growing log as much as the engine (load_tests/soak.py, README soak row).

It also prints the end offset that ListOffsets reports next to the true one (a fetch's high watermark): Tansu
0.6.0 answers ListOffsets(latest) with the first offset of the last record batch + 1, short of the end by the
rest of that batch, so tools that need the end read it from a fetch (streams.learning_feed.end_offsets).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from cadence.runtime import broker_process
from load_tests.soak import rss_bytes
from streams.learning_feed import end_offsets

TOPIC = "retention-probe"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--records", type=int, default=200_000, help="records per round")
    parser.add_argument("--size", type=int, default=500, help="bytes per record")
    parser.add_argument("--retention-ms", type=int, default=3000)
    parser.add_argument("--wait-s", type=float, default=8.0, help="wait after each round (retention's chance)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    broker = broker_process(Path(tempfile.mkdtemp(prefix="cadence-retention-")))
    broker.start()
    assert broker.proc is not None
    rows: list[dict] = []
    try:
        bootstrap = f"127.0.0.1:{broker.port}"
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic(TOPIC, 1, 1, topic_configs={
            "retention.ms": str(args.retention_ms), "segment.ms": "1000", "segment.bytes": "1000000"})])
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        consumer = KafkaConsumer(bootstrap_servers=bootstrap)
        tp = TopicPartition(TOPIC, 0)
        payload = b"x" * args.size
        acked = 0
        for n in range(args.rounds):
            futures = [producer.send(TOPIC, payload) for _ in range(args.records)]
            producer.flush()
            failed = [f.exception for f in futures if f.failed()]
            acked += len(futures) - len(failed)
            listed = consumer.end_offsets([tp])[tp]  # ListOffsets: Tansu 0.6 answers the last batch's first + 1
            end = end_offsets(bootstrap, TOPIC)[0]  # from a fetch's high watermark: the true end
            try:
                admin.delete_records({tp: end})
                deleted = "accepted"
            except Exception as exc:  # Tansu 0.6.0 closes the connection
                deleted = f"refused ({type(exc).__name__}: {exc})"
            time.sleep(args.wait_s)
            row = {"round": n + 1, "acked_so_far": acked, "send_errors": len(failed),
                   "first_send_error": repr(failed[0]) if failed else None, "end_offset": end,
                   "end_offset_listed": listed, "first_offset": consumer.beginning_offsets([tp])[tp],
                   "broker_rss_mb": round(rss_bytes(broker.proc.pid) / 2**20, 1), "delete_records": deleted}
            rows.append(row)
            print(f"round {row['round']}: {acked:,} records acknowledged so far ({len(failed)} sends failed"
                  f"{': ' + row['first_send_error'] if failed else ''}), offsets {row['first_offset']}..{end}"
                  f" (ListOffsets says {listed}), broker RSS {row['broker_rss_mb']} MB, DeleteRecords {deleted}",
                  flush=True)
        consumer.close()
        producer.close()
        admin.close()
    finally:
        broker.stop()
    kept = all(r["first_offset"] == 0 for r in rows)
    print("the broker kept every record" if kept else "the broker removed records")
    if args.json:
        args.json.write_text(json.dumps({"rounds": rows, "kept_everything": kept, "args": {
            k: v for k, v in vars(args).items() if k != "json"}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
