"""``python -m simulator``: the closed-loop simulator against an existing Kafka (docker-compose profile).

Starts neither brokers nor workers: it needs KAFKA_BOOTSTRAP and engine workers already running.
"""

from __future__ import annotations

import argparse
import signal
import sys

import orjson

from cadence.settings import Settings
from policy.catalogue import load_catalogue
from simulator.loop import ClosedLoop
from simulator.world import World


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m simulator", description=__doc__)
    p.add_argument("--rate", type=float, default=200.0, help="decision requests per second")
    p.add_argument("--users", type=int, default=3000, help="simulated users")
    p.add_argument("--seed", type=int, default=1, help="seed of the world and the traffic")
    p.add_argument("--duration", type=float, default=float("inf"), help="seconds to run (default: until stopped)")
    args = p.parse_args(argv)
    settings = Settings()
    if not settings.kafka_bootstrap:
        sys.exit("simulator: set KAFKA_BOOTSTRAP to the broker the engine workers use (e.g. kafka:19092)")
    stop = {"flag": False}
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *a: stop.update(flag=True))
    world = World(load_catalogue(settings.catalogue), n_users=args.users, seed=args.seed,
                  click_reward=settings.click_reward)
    loop = ClosedLoop(world, settings.kafka_bootstrap, settings.topic, rate=args.rate, seed=args.seed)
    try:
        loop.run(args.duration, should_stop=lambda: stop["flag"])
    finally:
        loop.close()
    print(orjson.dumps(loop.summary(), option=orjson.OPT_SERIALIZE_NUMPY).decode(), flush=True)


if __name__ == "__main__":
    main()
