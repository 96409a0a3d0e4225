"""``cadence``: run the engine live, run a timed demo, run a worker, read topics."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NoReturn

import orjson
from pydantic import ValidationError

from cadence.runtime import Runtime, RuntimeStartError, create_topics
from cadence.settings import SettingError, Settings, redact_url
from cadence.workers import WorkerProcess, worker_env
from streams.topics import ALL_TOPICS, COMPACTED

if TYPE_CHECKING:  # imported where used: the CLI starts without Redis' client
    from learning.snapshots import SnapshotInfo, SnapshotStore


def create_engine_topics(bootstrap: str, settings: Settings) -> None:
    create_topics(bootstrap, [settings.topic(t) for t in ALL_TOPICS], settings.partitions,
                  compacted=[settings.topic(t) for t in COMPACTED], replication_factor=settings.replication_factor)


def _invalid(*problems: str) -> NoReturn:
    """Exit 2 with one line per problem, each ``SETTING: what is wrong and what it must be``."""
    print("\n".join(f"cadence: invalid configuration: {p}" for p in problems), file=sys.stderr)
    sys.exit(2)


def _env_name(loc: tuple[int | str, ...]) -> str | None:
    """The environment variable a validation error's location is about (None: the settings as a whole)."""
    if not loc:
        return None
    name = str(loc[0])
    return f"CADENCE_{name.upper()}" if name in Settings.model_fields else name  # else an alias: REDIS_URL


def _settings() -> Settings:
    unknown = Settings.unknown_environment(dict(os.environ))
    if unknown:
        _invalid(*(f"{u}: no such setting; see the README's configuration table" for u in unknown))
    try:
        return Settings()
    except ValidationError as exc:  # one line per problem, never the values given (tokens, passwords)
        problems = []
        for e in exc.errors(include_url=False, include_input=False):
            name, message = _env_name(e["loc"]), e["msg"].removeprefix("Value error, ")
            problems.append(f"{name}: {message}" if name else message)
        _invalid(*problems)


def _check_catalogue(settings: Settings) -> None:
    """Read the catalogue and the settings that name what is in it (CADENCE_HOLDOUT_PLACEMENTS) as a worker
    will, before any server or worker starts: a mistake is one line and exit 2, not a traceback."""
    from policy.catalogue import CatalogueError
    from streams.app import build_policy_context

    try:
        build_policy_context(settings)
    except SettingError as exc:
        _invalid(str(exc))
    except CatalogueError as exc:  # the message names the file, line and field
        _invalid(f"CADENCE_CATALOGUE: {exc}")
    except OSError as exc:  # a directory, no permission
        _invalid(f"CADENCE_CATALOGUE: cannot read {settings.catalogue} ({exc.strerror or exc}): set it to the "
                 "path of a catalogue TOML file")


def cmd_worker(args: argparse.Namespace) -> None:
    import faust

    from policy.catalogue import CatalogueError
    from streams.app import create_app

    settings = _settings()
    _check_catalogue(settings)
    try:
        runtime = Runtime(settings.data_dir, settings.kafka_bootstrap, settings.redis_url).start()
    except RuntimeStartError as exc:  # an embedded server that did not come up: say which, no traceback
        sys.exit(f"cadence: {exc}")
    try:
        resolved = {"kafka_bootstrap": runtime.kafka_bootstrap, "redis_url": runtime.redis_url}
        settings = settings.model_copy(update=resolved)
        try:
            create_engine_topics(settings.kafka_bootstrap or "", settings)
        except RuntimeStartError as exc:  # a configured broker that does not answer: one line, no traceback
            configured = "KAFKA_BOOTSTRAP" in os.environ  # not the embedded broker, which start() checked
            hint = ("; check KAFKA_BOOTSTRAP (host:port of a broker this machine reaches), or unset it for the "
                    "embedded broker" if configured else "")
            sys.exit(f"cadence: {exc}{hint}")
        try:
            app = create_app(settings)
        except (SettingError, CatalogueError) as exc:  # the catalogue changed since _check_catalogue read it
            _invalid(str(exc) if isinstance(exc, SettingError) else f"CADENCE_CATALOGUE: {exc}")
        worker = faust.Worker(app, loglevel=settings.log_level, redirect_stdouts=False, quiet=True)
        # Faust's terminal spinner sets the root logger to DEBUG so that it can spin on every record:
        # every debug line of Faust and aiokafka would then be formatted on the hot path.
        worker.spinner = None
        worker.execute_from_commandline()
    finally:
        runtime.stop()


@contextlib.contextmanager
def _stack(settings: Settings, n_workers: int, quiet: bool) -> Iterator[tuple[Runtime, list[WorkerProcess]]]:
    """Embedded (or configured) Kafka and Redis, the topics, and ``n_workers`` ready workers."""
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    started = time.monotonic()
    with Runtime(settings.data_dir, settings.kafka_bootstrap, settings.redis_url) as rt:
        say(f"cadence: Kafka at {rt.kafka_bootstrap}, Redis at {redact_url(rt.redis_url)}")
        create_engine_topics(rt.kafka_bootstrap or "", settings)
        env = worker_env(rt.env(), log_level=settings.log_level)
        workers = [WorkerProcess(env, settings.data_dir, f"worker-{i + 1}").start() for i in range(n_workers)]
        try:
            for w in workers:
                w.wait_ready()
            say(f"cadence: {n_workers} worker(s) ready in {time.monotonic() - started:.1f}s "
                f"(metrics: {workers[0].url}/metrics; logs in {settings.data_dir}/)")
            yield rt, workers
        finally:
            for w in workers:
                w.stop()


def _loop(args: argparse.Namespace, settings: Settings, rt: Runtime) -> Any:
    from policy.catalogue import load_catalogue
    from simulator.loop import ClosedLoop
    from simulator.world import World

    world = World(load_catalogue(settings.catalogue), n_users=args.users, seed=args.seed,
                  click_reward=settings.click_reward)
    return ClosedLoop(world, rt.kafka_bootstrap or "", settings.topic, rate=args.rate, seed=args.seed)


def _render(loop: Any, workers: list[WorkerProcess]) -> str:
    s = loop.summary()
    r, a = s["reward_per_decision"], s["all_decisions_reward"]
    ratio = s["last_window_engine_vs_oracle"] or s["engine_vs_oracle"] or 0.0
    ratio_available = s["last_window_engine_vs_available_oracle"] or s["engine_vs_available_oracle"] or 0.0
    health = workers[0].health() or {}
    lines = [
        "cadence — live (Ctrl-C to stop)",
        "",
        f"  wall {s['wall_s']:>7.0f} s    simulated {s['sim_hours']:>6.2f} h    "
        f"policy version {health.get('policy_version', '?')}",
        f"  events sent   {s['requests_sent'] + s['responses_sent']:>9,}   "
        f"({s['requests_sent'] / max(s['wall_s'], 1):,.0f} requests/s)",
        f"  decisions     {s['decisions']:>9,}   ({s['decisions_per_s']:,.0f}/s, "
        f"p50 {s['decision_latency_ms']['p50']} ms, p99 {s['decision_latency_ms']['p99']} ms)",
        f"  modes         {s['modes']}",
        f"  dead letters  {s['dead_letters']:>9,}   of {s['bad_events_sent']} bad events sent; "
        f"duplicates sent {s['duplicates_sent']}",
        "",
        "  expected reward per decision          engine    random    oracle    oracle within caps",
        f"    policy's own choices               {r['engine']:.4f}    {r['random']:.4f}    {r['oracle']:.4f}"
        f"    {r['available_oracle']:.4f}",
        f"    all decisions (with the rules)     {a['engine']:.4f}    {a['random']:.4f}    {a['oracle']:.4f}"
        f"    {a['available_oracle']:.4f}",
        f"  policy / oracle, last window: {ratio:.1%}  (within caps: {ratio_available:.1%})    "
        f"policy / random: {s['engine_vs_random'] or 0:.2f}x",
    ]
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> None:
    settings = _settings()
    _check_catalogue(settings)
    stop = {"flag": False}
    signal.signal(signal.SIGINT, lambda *a: stop.update(flag=True))
    signal.signal(signal.SIGTERM, lambda *a: stop.update(flag=True))
    tty = sys.stdout.isatty()
    try:
        with _stack(settings, args.workers, quiet=False) as (rt, workers):
            loop = _loop(args, settings, rt)
            last_print = [0.0]

            def tick(lp: Any) -> None:
                if tty:
                    print("\x1b[H\x1b[2J" + _render(lp, workers), flush=True)
                elif time.monotonic() - last_print[0] >= 5:
                    last_print[0] = time.monotonic()
                    print(_render(lp, workers) + "\n", flush=True)

            loop.run(args.duration or float("inf"), on_tick=tick, should_stop=lambda: stop["flag"])
            loop.close()
            print("\n" + orjson.dumps(loop.summary(), option=orjson.OPT_SERIALIZE_NUMPY).decode())
    except RuntimeStartError as exc:
        sys.exit(f"cadence: {exc}")


def cmd_demo(args: argparse.Namespace) -> None:
    settings = _settings()
    _check_catalogue(settings)
    try:
        with _stack(settings, args.workers, quiet=args.json) as (rt, workers):
            loop = _loop(args, settings, rt)
            started = time.monotonic()
            loop.run(args.duration)
            loop.drain()
            summary = loop.summary()
            summary["workers"] = args.workers
            summary["policy"] = settings.policy
            summary["seed"] = args.seed
            summary["run_s"] = round(time.monotonic() - started, 1)
            loop.close()
    except RuntimeStartError as exc:
        sys.exit(f"cadence: {exc}")
    if args.json:
        print(orjson.dumps(summary, option=orjson.OPT_SERIALIZE_NUMPY).decode())
    else:
        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())


def cmd_topics(args: argparse.Namespace) -> None:
    from kafka import KafkaConsumer, TopicPartition

    settings = _settings()
    if not settings.kafka_bootstrap:
        sys.exit("cadence: set KAFKA_BOOTSTRAP to the broker to read (cadence up prints it for the embedded one)")
    name = settings.topic(args.topic)
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    parts = [TopicPartition(name, p) for p in sorted(consumer.partitions_for_topic(name) or [])]
    if not parts:
        sys.exit(f"cadence: topic {name!r} does not exist on {settings.kafka_bootstrap}")
    consumer.assign(parts)
    consumer.seek_to_beginning()
    shown = 0
    deadline = time.monotonic() + args.timeout
    while shown < args.n and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            for rec in records:
                if shown < args.n:  # a tombstone (erasures; null value) shows as its key and null
                    key = (rec.key or b"").decode("utf-8", errors="replace")
                    print(rec.value.decode("utf-8", errors="replace") if rec.value is not None else
                          orjson.dumps({"key": key, "value": None}).decode())
                    shown += 1
    consumer.close()


def _redis_and_kafka(settings: Settings, need_kafka: bool) -> None:
    if not settings.redis_url or (need_kafka and not settings.kafka_bootstrap):
        sys.exit("cadence: set REDIS_URL" + (" and KAFKA_BOOTSTRAP" if need_kafka else "")
                 + " to the servers the workers use (cadence up prints them for the embedded ones)")


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


async def retention_summary(store: SnapshotStore, rows: list[SnapshotInfo]) -> str:
    """How far back the versions kept reach, and the rule the workers trim them with."""
    recorded = await store.recorded_retention()
    rule = recorded or store.retention
    oldest = min(rows, key=lambda i: i.created_at)
    source = ("the workers'" if recorded is not None else
              "this shell's settings (no leader has trimmed with this cadence yet)")
    return (f"{len(rows)} versions kept, reaching back {_ago(time.time() - oldest.created_at)} (version "
            f"{oldest.version}, {time.strftime('%Y-%m-%d %H:%M', time.gmtime(oldest.created_at))} UTC). Retention "
            f"({source}): {rule.describe()}, and a pending rollback's version: up to {rule.most} versions "
            "(CADENCE_SNAPSHOTS_KEPT, CADENCE_SNAPSHOTS_HOURLY, CADENCE_SNAPSHOTS_DAILY)")


def cmd_snapshots(args: argparse.Namespace) -> None:
    import asyncio

    from learning.retention import kept
    from learning.snapshots import SnapshotError, SnapshotStore
    from streams.app import redis_client
    from streams.learning_feed import end_offsets
    from streams.topics import LEARNING

    settings = _settings()
    _redis_and_kafka(settings, need_kafka=args.action == "rollback")

    async def go() -> None:
        store = SnapshotStore(redis_client(settings), settings.app_id, keep=settings.snapshots_kept,
                              hourly=settings.snapshots_hourly, daily=settings.snapshots_daily)
        if args.action == "list":
            rows = await store.list()
            if not rows:
                print("no snapshots yet (the leading worker saves one every CADENCE_SNAPSHOT_INTERVAL_S)")
                return
            print(await retention_summary(store, rows))
            _, pending = await store.rollback_point()
            rule = await store.recorded_retention() or store.retention
            why = kept([(i.version, i.created_at) for i in rows], time.time(), rule,
                       () if pending is None else (pending,))
            for i in rows:
                created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(i.created_at))
                print(f"{i.version:>5}  {created} UTC  {i.policy:<8} policy_version={i.policy_version:<8} "
                      f"{i.size_bytes:>8} B  {why.get(i.version, 'trimmed at the next save'):<8}  {i.note}")
            return
        try:
            offsets = end_offsets(settings.kafka_bootstrap or "", settings.topic(LEARNING))
            info = await store.rollback(args.version, offsets)
        except (SnapshotError, TimeoutError) as exc:
            sys.exit(f"cadence: {exc}")
        print(f"rolled back to version {args.version}: live as version {info.version}; "
              "every worker switches within a second")

    asyncio.run(go())


def cmd_levers(args: argparse.Namespace) -> None:
    import asyncio
    import uuid

    from policy.catalogue import CatalogueError, load_catalogue
    from policy.lever_store import LeverStore
    from policy.levers import Lever, LeverError, LeverKind
    from streams.app import redis_client

    settings = _settings()
    _redis_and_kafka(settings, need_kafka=False)
    try:  # the catalogue the workers use (CADENCE_CATALOGUE): a lever naming what it lacks would match nothing
        catalogue = load_catalogue(settings.catalogue) if args.action not in ("list", "revoke") else None
    except (CatalogueError, OSError) as exc:
        _invalid(f"CADENCE_CATALOGUE: {exc}")

    async def go() -> None:
        store = LeverStore(redis_client(settings), settings.app_id, settings.lever_audit_keep)
        if args.action == "list":
            book = await store.load()
            for lever in book.levers:
                print(orjson.dumps(lever.to_dict()).decode())
            if not book.levers:
                print("no levers set", file=sys.stderr)  # stderr: stdout stays one lever per line (none)
            last = args.audit_last if args.audit_last is not None else 100 if args.audit else 0
            if last:
                for a in await store.audit(last):
                    print(f"audit {a.ts:.0f} {a.who}: {a.change} {a.lever_id} — {a.why}")
                kept = await store.audit_length()
                if kept > last:
                    print(f"audit: the newest {last} of {kept} entries kept; --audit-last N for more")
            return
        now = time.time()  # wall clock: when the change is made (audit)
        if args.action == "revoke":
            await store.update(lambda b: b.revoke(args.lever_id, args.who, args.why, now))
            print(f"revoked {args.lever_id}")
            return
        kind = LeverKind(args.action)
        lever = Lever(
            lever_id=args.lever_id or f"{kind.value}-{uuid.uuid4().hex[:8]}", kind=kind, who=args.who, why=args.why,
            # no --ts: every event processed from now on, whatever its event time (a backlog too)
            ts=args.ts, action=getattr(args, "action_id", None), user_id=args.user, segment=args.segment,
            placement=args.placement, factor=getattr(args, "factor", 1.0), set_at=now,
            # event time, counted from --ts or else from now (--hours 0 or nan: refused)
            expires=(args.ts if args.ts is not None else now) + args.hours * 3600 if args.hours is not None else None,
        )
        assert catalogue is not None
        lever.check_targets(catalogue)
        await store.update(lambda b: b.apply(lever))
        print(f"applied {lever.lever_id}: every worker follows within a second")

    try:
        asyncio.run(go())
    except LeverError as exc:  # a refused lever, like a bad argument: exit 2
        print(f"cadence: {exc}", file=sys.stderr)
        sys.exit(2)


def cmd_erase_user(args: argparse.Namespace) -> None:
    import asyncio

    from kafka import KafkaProducer

    from contracts.events import MAX_ID_LEN
    from features.erasure import ErasureKeyError, ErasureRegistry
    from policy.lever_store import LeverStore
    from streams.app import redis_client
    from streams.topics import ERASURES

    if not 0 < len(args.user_id) <= MAX_ID_LEN or not args.who.strip():
        sys.exit(f"cadence: erase-user needs the user's id (1..{MAX_ID_LEN} characters, as in their events) and "
                 "--who (the person asking, for the audit); nothing was erased")
    settings = _settings()
    _redis_and_kafka(settings, need_kafka=True)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)  # first: no erasure without its tombstone
    async def erase() -> int:
        client = redis_client(settings)
        # the workers' key (CADENCE_ERASURE_KEY, or the one kept in Redis): with another, refused
        registry = await ErasureRegistry.open(client, settings.app_id, settings.erasure_key)
        deleted = await registry.erase(args.user_id)
        # levers aimed at the user: gone, their audit entries (book and list) redacted
        await LeverStore(client, settings.app_id, settings.lever_audit_keep).update(
            lambda b: b.forget_user(args.user_id, registry.label(args.user_id)))
        return deleted

    try:
        deleted = asyncio.run(erase())
    except ErasureKeyError as exc:
        producer.close()
        sys.exit(f"cadence: {exc}; nothing was erased")
    producer.send(settings.topic(ERASURES), key=args.user_id.encode(), value=None,
                  headers=[("requested_by", args.who.encode())])
    producer.flush()
    producer.close()
    print(f"erased: {deleted} key(s) deleted, excluded from learning, tombstone written to {settings.topic(ERASURES)}")


def cmd_up(args: argparse.Namespace) -> None:
    settings = _settings()
    with Runtime(settings.data_dir, settings.kafka_bootstrap, settings.redis_url) as rt:
        create_engine_topics(rt.kafka_bootstrap or "", settings)
        print(f"export KAFKA_BOOTSTRAP={rt.kafka_bootstrap} REDIS_URL={rt.redis_url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


def _count(text: str) -> int:
    """A whole number >= 0 (argparse type)."""
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cadence", description="Real-time next-best-action engine.")
    sub = p.add_subparsers(dest="command", required=True)

    def loop_args(sp: argparse.ArgumentParser, duration: float | None) -> None:
        sp.add_argument("--duration", type=float, default=duration, help="seconds to run (default: until Ctrl-C)")
        sp.add_argument("--rate", type=float, default=1000.0, help="decision requests per second the simulator sends")
        sp.add_argument("--users", type=int, default=3000, help="simulated users")
        sp.add_argument("--seed", type=int, default=1, help="simulator seed")
        sp.add_argument("--workers", type=int, default=1, help="engine worker processes")

    sp = sub.add_parser("run", help="engine + simulator live, with a terminal view")
    loop_args(sp, None)
    sp.set_defaults(func=cmd_run)
    sp = sub.add_parser("demo", help="engine + simulator for a fixed time, then a summary")
    loop_args(sp, 120.0)
    sp.add_argument("--json", action="store_true", help="print one JSON line at the end")
    sp.set_defaults(func=cmd_demo)
    sp = sub.add_parser("worker", help="one engine worker (Faust)")
    sp.set_defaults(func=cmd_worker)
    sp = sub.add_parser("topics", help="print messages of a topic (needs KAFKA_BOOTSTRAP)")
    sp.add_argument("topic", help="logical topic name, e.g. decisions or dead-letters")
    sp.add_argument("-n", type=int, default=10, help="how many messages")
    sp.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for messages")
    sp.set_defaults(func=cmd_topics)
    sp = sub.add_parser("snapshots", help="list learned-state snapshots, or roll back to one")
    snap = sp.add_subparsers(dest="action", required=True)
    snap.add_parser("list", help="versions kept in Redis")
    rb = snap.add_parser("rollback", help="make an earlier version live on every worker")
    rb.add_argument("version", type=int)
    sp.set_defaults(func=cmd_snapshots)
    sp = sub.add_parser("levers", help="pin, boost, ban or kill; list and revoke (audited)")
    lv = sp.add_subparsers(dest="action", required=True)
    ls = lv.add_parser("list", help="active levers")
    ls.add_argument("--audit", action="store_true",
                    help="also print who changed what, when and why (the newest 100 changes)")
    ls.add_argument("--audit-last", type=_count, metavar="N",
                    help="the newest N changes instead of 100 (implies --audit)")
    for kind in ("pin", "boost", "ban", "kill", "revoke"):
        k = lv.add_parser(kind, help=f"{kind} a lever" if kind != "revoke" else "remove a lever")
        k.add_argument("--who", required=True, help="who makes the change (audited)")
        k.add_argument("--why", required=True, help="why (audited)")
        if kind == "revoke":
            k.add_argument("lever_id")
            continue
        k.add_argument("--ts", type=float, default=None,
                       help="event time it applies from (default: every event processed from now on, whatever its "
                            "event time)")
        if kind != "kill":
            k.add_argument("action_id", help="the action to pin, boost or ban")
        if kind == "boost":
            k.add_argument("--factor", type=float, required=True, help="multiplier of the expected value")
        k.add_argument("--user", help="only this user")
        k.add_argument("--segment", help="only this segment")
        k.add_argument("--placement", help="only this placement")
        k.add_argument("--hours", type=float,
                       help="expires this many hours (event time) after --ts, or after now without --ts")
        k.add_argument("--lever-id", help="id to give it (default: generated)")
    sp.set_defaults(func=cmd_levers)
    sp = sub.add_parser("erase-user", help="GDPR erasure: delete a user's data, stop learning from them")
    sp.add_argument("user_id")
    sp.add_argument("--who", required=True, help="who asked (audited in the tombstone's header)")
    sp.set_defaults(func=cmd_erase_user)
    from ope.cli import add_ope_parser

    add_ope_parser(sub)
    sp = sub.add_parser("up", help="start the embedded broker and Redis and print their addresses")
    sp.set_defaults(func=cmd_up)
    return p


def main(argv: list[str] | None = None) -> None:
    from kafka.errors import KafkaError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (RedisConnectionError, RedisTimeoutError) as exc:  # a message, not a 70-line traceback
        sys.exit(f"cadence: cannot reach Redis ({exc}). Is it running, and do REDIS_URL and REDIS_PASSWORD "
                 "point at the server the workers use?")
    except KafkaError as exc:
        sys.exit(f"cadence: cannot reach Kafka ({type(exc).__name__}: {exc}). Is the broker running, and does "
                 "KAFKA_BOOTSTRAP point at it?")


if __name__ == "__main__":
    main()
