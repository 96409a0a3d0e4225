"""End-to-end benchmark: one cadence worker on the embedded stack, against two Faust yardsticks.

    python -m load_tests.bench_e2e [--quick] [--json PATH] [--profile DIR] [--listpack-value N]

One embedded broker (Tansu) and Redis (Valkey). N events of a realistic mix (load_tests/yardsticks/load.py)
are pre-loaded into the input topics, then drained in turn by the ``ceiling`` yardstick, the ``naive`` yardstick
and ONE engine worker (``python -m cadence worker``), each in its own consumer group. Then the same engine worker
gets paced streams (half its flat-out rate, then ``--rate``) for the latency figures.
See load_tests/README_e2e.md for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis
from kafka import KafkaProducer

from cadence.runtime import Runtime, RuntimeStartError, _die_with_parent, create_topics
from cadence.settings import DEFAULT_CATALOGUE
from cadence.workers import WorkerProcess, worker_env
from load_tests.yardsticks.apps import NAIVE_OUTPUT
from load_tests.yardsticks.load import EventMix, LoadEvent
from load_tests.yardsticks.measure import (
    Histogram,
    drain_rate,
    histogram,
    machine_cpu_s,
    metric_mean,
    metric_sum,
    percentiles,
    process_cpu_s,
    top_self_frames,
)
from load_tests.yardsticks.paced import DecisionWatcher, send_paced
from load_tests.yardsticks.redis_stats import redis_cpu, redis_memory
from load_tests.yardsticks.report import TARGETS, ratios, table, warnings
from policy.catalogue import load_catalogue
from streams.topics import ALL_TOPICS, DECISIONS

PREFIX = "e2e."
APP_ID = "bench-e2e"
LATENCY_METRIC = "cadence_event_to_decision_seconds"
INTAKE_METRIC = "cadence_intake_wait_seconds"  # the part of it before the worker starts on a batch
PY_SPY = Path(sys.executable).with_name("py-spy")
STOP = threading.Event()  # set by Ctrl-C / SIGTERM


@dataclass(frozen=True)
class Plan:
    events: int  # pre-loaded backlog every contender drains
    users: int
    rate: float  # events/s of the target latency phase
    latency_s: float  # length of each paced phase
    warmup_s: float  # the first seconds of a paced phase are not measured
    easy_share: float = 0.5  # the first paced phase runs at this share of the measured flat-out rate
    partitions: int = 4
    seed: int = 1
    drain_timeout_s: float = 300.0
    listpack_value: int | None = None  # CONFIG SET hash-max-listpack-value before the engine runs
    core_events: int = 40_000  # events the in-process engine-core phase replays (its rate settles quickly)
    settle_s: float = 10.0  # after the last paced send: a decision later than this counts as missing


QUICK = Plan(events=25_000, users=5_000, rate=5000.0, latency_s=10.0, warmup_s=2.0, drain_timeout_s=60.0,
             core_events=10_000, settle_s=5.0)
FULL = Plan(events=150_000, users=20_000, rate=5000.0, latency_s=30.0, warmup_s=5.0)


class YardstickProcess(WorkerProcess):
    """``python -m load_tests.yardsticks KIND`` with the worker's environment, /health and stop."""

    def __init__(self, kind: str, env: dict[str, str], data_dir: Path) -> None:
        super().__init__(env, data_dir, f"yardstick-{kind}")
        self.kind = kind

    def start(self) -> YardstickProcess:
        argv = [sys.executable, "-m", "load_tests.yardsticks", self.kind]
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen(argv, env=self.env, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        return self

    def count(self) -> float:
        with urllib.request.urlopen(self.url + "/count", timeout=2) as resp:
            return float(json.loads(resp.read())["count"])


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_now() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def py_spy(pid: int, out: Path, seconds: int = 10) -> subprocess.Popen[bytes]:
    """Sample ``pid`` without stopping it (--nonblocking keeps the latency figures honest)."""
    argv = [str(PY_SPY), "record", "-p", str(pid), "-d", str(seconds), "-f", "raw", "--nonblocking",
            "-o", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def preload(bootstrap: str, events: Sequence[LoadEvent]) -> float:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024, acks=1)
    started = time.perf_counter()
    for e in events:
        producer.send(PREFIX + e.out.topic, key=e.out.key, value=e.out.value)
    producer.flush(timeout=120)
    producer.close(timeout=5)
    return len(events) / (time.perf_counter() - started)


def metrics_of(worker: WorkerProcess, attempts: int = 10) -> str:
    """The worker's /metrics; a busy worker may answer late (its loop runs a whole batch between requests)."""
    for attempt in range(attempts):
        try:
            return worker.metrics_text()
        except OSError:  # URLError and socket timeouts
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def engine_count(worker: WorkerProcess) -> float:
    return metric_sum(metrics_of(worker), "cadence_events_consumed_total")


def drain(name: str, proc: WorkerProcess, count: Callable[[], float], total: int, timeout_s: float,
          profile: Path | None = None) -> dict[str, Any]:
    load, started = load_now(), time.monotonic()
    proc.start()
    proc.wait_ready(timeout_s=90)
    say(f"  {name}: ready in {time.monotonic() - started:.1f}s, draining {total:,} events …")
    spies: list[subprocess.Popen[bytes]] = []

    def at_progress(done: float) -> None:
        if profile is not None and not spies and done >= 0.05 * total and proc.proc is not None:
            spies.append(py_spy(proc.proc.pid, profile))

    pid = proc.proc.pid if proc.proc is not None else 0
    result = drain_rate(count, total, timeout_s, on_sample=at_progress, cpu=lambda: process_cpu_s(pid))
    for spy in spies:
        spy.wait(30)
    result.update(load_before=load, profiled=bool(spies))
    say(f"  {name}: {result['events_per_s']:,.0f} events/s ({result['consumed']:,.0f} consumed)")
    return result


def engine_internals(text: str) -> dict[str, Any]:
    """Means of the worker's own histograms (cumulative since it started)."""
    def ms(name: str, labels: str = "") -> float | None:
        mean = metric_mean(text, name, labels)
        return round(mean * 1000, 2) if mean is not None else None

    store = "cadence_feature_store_round_trip_seconds"
    return {
        "batch_size_mean": round(metric_mean(text, "cadence_batch_size_events") or 0.0, 1),
        "batch_processing_ms_mean": ms("cadence_batch_processing_seconds"),
        "store_apply_ms_mean": ms(store, 'op="apply"'),
        "store_write_ms_mean": ms(store, 'op="write"'),
        "decisions": metric_sum(text, "cadence_decisions_total"),
        "fallback_decisions": metric_sum(text, "cadence_decisions_total", 'mode="fallback"'),
        "store_errors": metric_sum(text, "cadence_feature_store_errors_total"),
        "dead_letters": metric_sum(text, "cadence_dead_letters_total"),
        "model_labels_learned": metric_sum(text, "cadence_model_samples_learned_total"),
        "model_labels_dropped": metric_sum(text, "cadence_model_labels_dropped_total"),
    }


def phase_internals(before: str, after: str) -> dict[str, Any]:
    """What the worker did between two scrapes of its /metrics: batches, their size and time, Redis round
    trips, event-loop lag (means over the phase; the loop lag's p99 from its buckets)."""
    def delta(name: str, labels: str = "") -> float:
        return metric_sum(after, name, labels) - metric_sum(before, name, labels)

    def mean_ms(name: str, labels: str = "") -> float | None:
        n = delta(f"{name}_count", labels)
        return round(delta(f"{name}_sum", labels) / n * 1000, 2) if n else None

    store = "cadence_feature_store_round_trip_seconds"
    batches = delta("cadence_batch_size_events_count")
    lag = histogram(after, "cadence_event_loop_lag_seconds").minus(histogram(before, "cadence_event_loop_lag_seconds"))
    return {
        "batches": int(batches),
        "batch_size_mean": round(delta("cadence_batch_size_events_sum") / batches, 1) if batches else None,
        "batch_processing_ms_mean": mean_ms("cadence_batch_processing_seconds"),
        "store_apply_ms_mean": mean_ms(store, 'op="apply"'),
        "store_write_ms_mean": mean_ms(store, 'op="write"'),
        "loop_lag_ms_mean": mean_ms("cadence_event_loop_lag_seconds"),
        "loop_lag_ms_p99": lag.quantile_ms(0.99),
    }


def cpu_before(pids: dict[str, int | None]) -> dict[str, float]:
    """What ``cpu_shares`` measures from: each process's CPU seconds, the machine's, and the time."""
    busy, stolen = machine_cpu_s()
    before = {name: process_cpu_s(pid) for name, pid in pids.items() if pid is not None}
    before.update({"machine": busy, "stolen": stolen, "at": time.monotonic()})
    return before


def cpu_shares(before: dict[str, float], pids: dict[str, int | None]) -> dict[str, Any]:
    """Cores each process used since ``before`` (CPU seconds per second), their sum, the machine's other
    processes (its busy time less theirs: a little below 0 is tick rounding) and the time a VM's host took
    (stolen). A process gone meanwhile reads None: what it used before it went is not known."""
    seconds = time.monotonic() - before["at"]
    if seconds <= 0:
        return {}
    used: dict[str, float | None] = {}
    for name, pid in pids.items():
        if pid is None:
            continue
        after = process_cpu_s(pid)
        used[name] = round((after - before[name]) / seconds, 2) if after >= before[name] else None
    busy, stolen = machine_cpu_s()
    known = sum(v for v in used.values() if v is not None)
    return {"cores": used, "total": round(known, 2), "cpus": os.cpu_count(),
            "rest_of_machine": round((busy - before["machine"]) / seconds - known, 2),
            "stolen": round((stolen - before["stolen"]) / seconds, 2)}


def latency_phase(bootstrap: str, worker: WorkerProcess, events: Sequence[LoadEvent], rate: float, plan: Plan,
                  profile: Path | None, servers: dict[str, int | None]) -> dict[str, Any]:
    load, consumed_before = load_now(), engine_count(worker)
    state: dict[str, Any] = {"hist": Histogram.empty(), "intake": Histogram.empty(), "text": ""}

    def on_mark(name: str) -> None:
        if name == "warm":  # read in a thread: a busy worker may answer late, the pacer must not wait for it
            def snapshot() -> None:
                state["text"] = metrics_of(worker)
                state["hist"] = histogram(state["text"], LATENCY_METRIC)
                state["intake"] = histogram(state["text"], INTAKE_METRIC)

            state["snapshot"] = threading.Thread(target=snapshot, daemon=True)
            state["snapshot"].start()
        elif name == "profile" and profile is not None and worker.proc is not None:
            state["spy"] = py_spy(worker.proc.pid, profile)

    with DecisionWatcher(bootstrap, PREFIX + DECISIONS) as watcher:
        marks = {"warm": plan.warmup_s, "profile": plan.warmup_s + 1.0}
        pids = {"worker": worker.proc.pid if worker.proc else None, **servers,
                "load generator (this process)": os.getpid(), "decision watcher": watcher.pid}
        started = cpu_before(pids)
        run = send_paced(bootstrap, PREFIX, events, rate, marks, on_mark, should_stop=STOP.is_set)
        cpu = cpu_shares(started, pids)
        lag_at_end = len(events) - (engine_count(worker) - consumed_before)
        wanted = [e.event_id for e in events[run.marks.get("warm", 0):] if e.requests_decision]
        consumed_target = consumed_before + len(events)
        deadline = time.monotonic() + plan.settle_s
        while time.monotonic() < deadline and engine_count(worker) < consumed_target:
            time.sleep(0.2)
        time.sleep(0.5)  # decisions of the last batch are on their way
        arrivals = watcher.collect()
    if "spy" in state:
        state["spy"].wait(30)
    if "snapshot" in state:
        state["snapshot"].join(30)
    text = metrics_of(worker)
    hist = histogram(text, LATENCY_METRIC).minus(state["hist"])
    intake = histogram(text, INTAKE_METRIC).minus(state["intake"])
    e2e = [(arrivals[r] - run.sent_at[r]) * 1000 for r in wanted if r in arrivals]
    missing = len(wanted) - len(e2e)
    consumed = engine_count(worker) - consumed_before
    kept_up = missing <= 0.001 * len(wanted) and lag_at_end <= rate * 1.0  # at most 1 s behind when sending ends
    # a decision that never came counts as slower than any that did (so p99 shows it, not hides it)
    e2e_ms = percentiles(e2e + [float("inf")] * missing, (0.5, 0.9, 0.99, 0.999, 1.0))
    return {
        "target_rate": round(rate), "sent_rate": round(len(events) / run.send_s, 1),
        "seconds": round(run.send_s, 1), "consumed_rate": round(consumed / run.send_s, 1), "kept_up": kept_up,
        "lag_at_end": lag_at_end,
        "requests_measured": len(wanted), "decisions_missing": missing, "settle_s": plan.settle_s,
        "e2e_ms": {k: (v if v != float("inf") else None) for k, v in e2e_ms.items()},
        "worker_histogram_ms": {f"p{round(q * 100)}": hist.quantile_ms(q) for q in (0.5, 0.9, 0.99)},
        "worker_histogram_count": hist.count,
        "worker_intake_wait_ms": {f"p{round(q * 100)}": intake.quantile_ms(q) for q in (0.5, 0.9, 0.99)},
        "load_before": load, "profiled": "spy" in state, "cpu_cores": cpu,
        "worker_internals": phase_internals(state["text"], text) if state["text"] else None,
    }


def engine_phases(rt: Runtime, plan: Plan, data_dir: Path, common: dict[str, str], mix: EventMix,
                  backlog: Sequence[LoadEvent], profile_dir: Path | None, procs: list[WorkerProcess]) -> dict:
    report: dict[str, Any] = {}
    client = redis.Redis.from_url(rt.redis_url or "")
    try:
        if plan.listpack_value:
            client.config_set("hash-max-listpack-value", plan.listpack_value)
        used_before = int(client.info("memory")["used_memory"])
        cpu_before = client.info("cpu")
        worker = WorkerProcess(worker_env(rt.env(), app_id=APP_ID, **common), data_dir, "worker-1")
        procs.append(worker)
        spy = profile_dir / "drain.txt" if profile_dir else None
        report["engine"] = drain("engine", worker, lambda: engine_count(worker), plan.events,
                                 plan.drain_timeout_s, spy)
        time.sleep(1.0)  # the last batch's decision state is written after its events are counted
        report["engine"].update(engine_internals(metrics_of(worker)))
        report["memory"] = redis_memory(client, APP_ID, {e.user_id for e in backlog}, used_before)
        report["redis_cpu"] = redis_cpu(client, cpu_before, plan.events)
        say(f"  engine: {report['memory']['bytes_per_active_user']:,.0f} B of Redis per active user")
        easy = max(100.0, round(plan.easy_share * report["engine"]["events_per_s"], -2))
        servers = {name: server.proc.pid if server and server.proc else None  # None: not started by this bench
                   for name, server in (("broker", rt.broker), ("Redis", rt.redis))}
        for key, rate in (("latency_easy", easy), ("latency", plan.rate)):
            say(f"  engine: paced at {rate:,.0f} events/s for {plan.latency_s:.0f}s …")
            paced = mix.take(int(rate * plan.latency_s))
            prof = profile_dir / f"paced_{rate:.0f}.txt" if profile_dir else None
            report[key] = latency_phase(rt.kafka_bootstrap or "", worker, paced, rate, plan, prof, servers)
            say(f"  engine: p50 {report[key]['e2e_ms']['p50']} ms, p99 {report[key]['e2e_ms']['p99']} ms, "
                f"kept up: {report[key]['kept_up']}")
        worker.stop()
    finally:
        client.close()
    return report


def engine_core(redis_url: str, backlog: Sequence[LoadEvent], batch: int) -> dict[str, Any]:
    """``Engine.process`` (+ ``learn``, as the learning feed does) in this process on the same Redis, no
    Kafka and no Faust: what the engine's own code costs per event, to set against the Faust figures."""
    import asyncio

    from cadence.metrics import Metrics
    from cadence.settings import Settings
    from engine.processor import RawMessage
    from streams.app import build_engine, redis_client, start_erasures
    from streams.gc_pacing import GcPacer

    settings = Settings(REDIS_URL=redis_url, app_id="bench-core")
    metrics = Metrics()
    raw = [RawMessage(e.out.topic, 0, i, e.out.value, 0.0) for i, e in enumerate(backlog)]

    async def go() -> tuple[float, float]:
        engine = build_engine(settings, metrics, redis_client(settings))
        await start_erasures(engine, settings)
        pacer = GcPacer()  # the garbage collector as the worker runs it (streams/gc_pacing.py), between batches
        pacer.start()
        try:
            wall, cpu = time.perf_counter(), time.process_time()
            for i in range(0, len(raw), batch):
                out = await engine.process(raw[i : i + batch])
                engine.learn(out.learning)
                pacer.between_batches()
            return time.perf_counter() - wall, time.process_time() - cpu
        finally:
            pacer.stop()

    wall_s, cpu_s = asyncio.run(go())
    text = metrics.exposition().decode()
    store = "cadence_feature_store_round_trip_seconds"
    redis_s = sum(metric_sum(text, f"{store}_sum", f'op="{op}"') for op in ("apply", "write"))
    return {"batch": batch, "events_per_s": round(len(raw) / wall_s, 1),
            "cpu_us_per_event": round(cpu_s / len(raw) * 1e6, 1),
            "redis_wait_us_per_event": round(redis_s / len(raw) * 1e6, 1),
            **{k: v for k, v in engine_internals(text).items() if k in ("fallback_decisions", "store_errors")}}


def run(plan: Plan, data_dir: Path, profile_dir: Path | None, report: dict[str, Any]) -> None:
    """Every phase in turn, filling ``report`` as it goes (so a failure still leaves the phases done)."""
    report.update(plan=asdict(plan), cpus=os.cpu_count(), load_at_start=load_now())
    mix = EventMix(load_catalogue(DEFAULT_CATALOGUE), plan.users, plan.seed)
    backlog = mix.take(plan.events)
    users = len({e.user_id for e in backlog})
    report["mix"] = {"active_users": users, "types": dict(mix.types.most_common())}
    procs: list[WorkerProcess] = []
    with Runtime(data_dir / "runtime", None, None) as rt:
        bootstrap = rt.kafka_bootstrap or ""
        create_topics(bootstrap, [PREFIX + t for t in (*ALL_TOPICS, NAIVE_OUTPUT)], plan.partitions)
        say(f"bench: Kafka {bootstrap}, Redis {rt.redis_url}; pre-loading {plan.events:,} events …")
        report["preload_events_per_s"] = round(preload(bootstrap, backlog))
        common = {"topic_prefix": PREFIX, "partitions": str(plan.partitions), "log_level": "warn"}
        try:
            env = worker_env(rt.env(), app_id="yardstick-ceiling", **common)
            ceiling = YardstickProcess("ceiling", env, data_dir)
            procs.append(ceiling)
            report["ceiling"] = drain("ceiling", ceiling, ceiling.count, plan.events, plan.drain_timeout_s)
            ceiling.stop()
            # the naive yardstick drains before the engine's paced phases, as the ceiling does: they leave every
            # input partition holding thousands of small record batches, which make each fetch dearer on this
            # broker (load_tests/broker_batches.py), so a yardstick draining after them would run slower
            env = worker_env(rt.env(), app_id="yardstick-naive", **common)
            naive = YardstickProcess("naive", env, data_dir)
            procs.append(naive)
            report["naive"] = drain("naive", naive, naive.count, plan.events, plan.drain_timeout_s)
            naive.stop()
            report.update(engine_phases(rt, plan, data_dir, common, mix, backlog, profile_dir, procs))
            try:
                report["engine_core"] = engine_core(rt.redis_url or "", backlog[: plan.core_events], batch=200)
            except Exception as exc:  # the engine's own code in this process: report it, keep the rest
                report["engine_core"] = {"error": f"{type(exc).__name__}: {exc}"}
            say(f"  engine core (no Kafka, no Faust): {report['engine_core']['events_per_s']:,.0f} events/s")
        finally:
            for p in procs:
                p.stop()
    report["load_at_end"] = load_now()


def _interrupt(*_: object) -> None:
    """Ctrl-C and SIGTERM: stop the run; every child is stopped on the way out (``finally`` blocks)."""
    STOP.set()
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short run (< 2 min): 25k events, 10 s paced phases")
    ap.add_argument("--events", type=int, help="events to pre-load (default 150,000; quick 25,000)")
    ap.add_argument("--rate", type=float, help="events/s of the target latency phase (default 5000)")
    ap.add_argument("--listpack-value", type=int, help="Redis hash-max-listpack-value for the engine's run")
    ap.add_argument("--json", type=Path, help="write the report as JSON here")
    ap.add_argument("--profile", type=Path, help="py-spy the engine worker (10 s, raw) into this directory")
    ap.add_argument("--keep", action="store_true", help="keep the data directory (logs) after a clean run")
    args = ap.parse_args(argv)
    overrides = {"events": args.events, "rate": args.rate, "listpack_value": args.listpack_value}
    plan = Plan(**{**asdict(QUICK if args.quick else FULL), **{k: v for k, v in overrides.items() if v}})
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    data_dir = Path(tempfile.mkdtemp(prefix="cadence-bench-e2e-"))
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    ok, report = False, {}
    try:
        run(plan, data_dir, args.profile, report)
        ok = True
    except KeyboardInterrupt:
        sys.exit("bench: interrupted; every process it started has been stopped")
    except RuntimeStartError as exc:
        sys.exit(f"bench: {exc}")
    finally:
        if ok and not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            say(f"bench: logs in {data_dir}")
            if args.json and report:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps({**report, "incomplete": True}, indent=2))
                say(f"bench: the phases done so far are in {args.json}")
    report["ratios"], report["targets"] = ratios(report), TARGETS
    report["warnings"] = warnings(report)
    if args.profile:
        report["profiles"] = {f.stem: top_self_frames(f, 15) for f in sorted(args.profile.glob("*.txt"))}
    print(table(report), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
