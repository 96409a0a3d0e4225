"""What an idle worker costs: its CPU while no event arrives (fetch loops, timers, metrics).

    python -m load_tests.idle_cpu [--seconds 30] [--json PATH]

Starts the embedded broker and Redis, one worker (``CADENCE_*`` settings from the environment apply), waits
until it is ready and 5 s more, then reads its process CPU time (/proc) over ``--seconds`` with no input.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from cadence.runtime import Runtime, create_topics
from cadence.workers import WorkerProcess, worker_env
from load_tests.yardsticks.measure import process_cpu_s
from streams.topics import ALL_TOPICS


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.seconds <= 0:
        ap.error("--seconds must be positive")
    data = Path(tempfile.mkdtemp(prefix="cadence-idle-"))
    with Runtime(data / "stack", None, None) as rt:
        create_topics(rt.kafka_bootstrap or "", ["idle." + t for t in ALL_TOPICS], 4)
        worker = WorkerProcess(worker_env(rt.env(), app_id="idle", topic_prefix="idle.", log_level="warn"), data)
        try:
            worker.start()
            worker.wait_ready(timeout_s=90)
            time.sleep(5.0)
            assert worker.proc is not None
            cpu, started = process_cpu_s(worker.proc.pid), time.monotonic()
            time.sleep(args.seconds)
            share = (process_cpu_s(worker.proc.pid) - cpu) / (time.monotonic() - started)
        finally:
            worker.stop()
    result = {"seconds": args.seconds, "idle_cpu_share_of_a_core": round(share, 4)}
    print(f"idle worker: {share * 100:.1f} % of a core over {args.seconds:g} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
