"""``python -m load_tests.yardsticks NAME``: one yardstick worker, configured by the CADENCE_* environment."""

from __future__ import annotations

import sys

import faust

from cadence.runtime import create_topics
from cadence.settings import Settings
from load_tests.yardsticks.apps import NAIVE_OUTPUT, YARDSTICKS, create_yardstick
from streams.topics import INPUT_TOPICS


def main(argv: list[str]) -> None:
    if len(argv) != 1 or argv[0] not in YARDSTICKS:
        sys.exit(f"usage: python -m load_tests.yardsticks {{{','.join(sorted(YARDSTICKS))}}}")
    settings = Settings()
    if not settings.kafka_bootstrap:
        sys.exit("yardstick: set KAFKA_BOOTSTRAP to the broker holding the benchmark's input topics")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    names = [settings.topic(t) for t in (*INPUT_TOPICS, NAIVE_OUTPUT)]
    create_topics(settings.kafka_bootstrap, names, settings.partitions)
    worker = faust.Worker(create_yardstick(argv[0], settings), loglevel=settings.log_level,
                          redirect_stdouts=False, quiet=True)
    worker.spinner = None  # as the engine's worker: the spinner turns on DEBUG logging
    worker.execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1:])
