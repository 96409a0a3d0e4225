"""What the rate limit on decision changes costs: the closed loop with and without "1 change per day".

For each seed the engine runs twice on the embedded stack, once per catalogue in load_tests/catalogues/
(``no_limit.toml``: no stickiness; ``sticky_1_per_day.toml``: every placement changes at most once per
user in any rolling 24 h, forced changes included, after an hour of dwell and with 5 % hysteresis; see
policy/stickiness.py for what a change is). Everything else is the same:
world seed, traffic seed, engine seed (CADENCE_SEED), number of requests, simulated clock, contact caps
and quiet hours; each run has a fresh worker, app id, topics and Redis namespace, and the simulator's
World reads the same catalogue file as the worker.

    python load_tests/stickiness_experiment.py --seeds 1 2 3 --json stickiness.json   # ≈ 5 min a seed

What makes the comparison fair and meaningful:
- the simulated clock is slow (``--sim-days`` over ``--requests``) and the population small (``--users``),
  so a user comes back to a placement ~10 times a simulated day and the cap binds; click rates follow
  the hour of day (World: amp·cos(2π(hour − peak)/24)), so changing within a day has some value, which
  ``one_action_per_day_vs_oracle`` measures (an all-knowing engine under the cap keeps at least that);
- reward is the World's expected reward of the action shown over ALL decisions for consenting users
  (``all_decisions_reward``): sticky, suppressed, holdout and fallback decisions count, so the limit's
  cost is in the number. The whole run starts cold; the days after ``--warmup-days`` are reported apart;
- at most ``--max-outstanding`` requests wait for a decision, so the simulated time from a decision to
  its learned reward stays short under any machine load (with thousands in flight the sim clock runs
  hours ahead of the engine: rewards come after the user's next decision on the placement and are lost,
  and batches span more than the worker's future-skew limit, dead-lettering valid requests);
- the cap is checked from the decisions topic alone (``change_report``), forced changes included;
  runs where a valid request got no decision are flagged (``all_requests_decided``).

ClosedLoop draws traffic and clicks from one generator: once the two runs decide differently their
traffic diverges (statistically the same, not identical), so compare over seeds.
"""

from __future__ import annotations

import argparse
import bisect
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cadence.runtime import Runtime, RuntimeStartError, create_topics  # noqa: E402
from cadence.workers import WorkerProcess, worker_env  # noqa: E402
from policy.catalogue import load_catalogue  # noqa: E402
from simulator.loop import START_TS, ClosedLoop  # noqa: E402
from simulator.world import Context, World  # noqa: E402
from streams.topics import ALL_TOPICS  # noqa: E402

CATALOGUES = Path(__file__).resolve().with_name("catalogues")
UNLIMITED, LIMITED = "no_limit", "sticky_1_per_day"
VARIANTS = {UNLIMITED: CATALOGUES / "no_limit.toml", LIMITED: CATALOGUES / "sticky_1_per_day.toml"}
CAP_PER_DAY = 1
TARGET_RATIO = 0.95
DAY_S = 86400.0
# Modes whose action went through the stickiness step: the action the user sees on the placement. The
# others show the placement's default (holdout, fallback) or nothing (suppressed) and do not move the
# incumbent, so they are neither changes nor incumbents.
GOVERNED_MODES = frozenset({"explore", "exploit", "sticky"})


@dataclass(frozen=True)
class RunConfig:
    requests: int
    users: int
    sim_days: float
    warmup_days: int
    rate: float
    max_outstanding: int
    max_wall_s: float

    @property
    def requests_per_sim_s(self) -> float:
        return self.requests / (self.sim_days * DAY_S)


# -- reading and analysing the decisions topic ---------------------------------------------------------
def read_topic(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """Every message of ``topic`` from the beginning up to its end offsets at call time."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(parts)
        consumer.seek_to_beginning()
        # Tansu 0.6 lists the end only up to the last batch's first record: also read up to the high
        # watermark the fetches report (on a topic still written to, that takes in later records too)
        ends = consumer.end_offsets(parts)
        docs: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < max(ends[tp], consumer.highwater(tp) or 0) for tp in parts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: could not read up to the end offsets within {timeout_s:.0f}s")
            for records in consumer.poll(timeout_ms=200, max_records=10000).values():
                docs += [orjson.loads(r.value) for r in records]
        return docs
    finally:
        consumer.close()


def unique_decisions(docs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """First copy of each decision_id (a redelivered request gives the same id again)."""
    first: dict[str, dict[str, Any]] = {}
    for d in docs:
        first.setdefault(d["decision_id"], d)
    return list(first.values())


def _max_in_window(times: list[float]) -> int:
    """Most of the sorted ``times`` in any half-open window [t, t + 24 h)."""
    return max((bisect.bisect_left(times, t + DAY_S) - i for i, t in enumerate(times)), default=0)


def change_report(decisions: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Action changes per user and placement, from decisions alone (event time).

    Per (user, placement), decisions of the governed modes in ``ts`` order; a change is a decision whose
    action differs from the previous one's (the first is not a change). A change marked ``forced`` in its
    trace replaced an incumbent that was no longer eligible (e.g. an ad creative's daily contact cap);
    it counts against the cap too. Per placement and overall: ``max_changes_24h`` (most changes in any
    rolling 24 h, forced included: what a user saw), ``max_changes_24h_at_unforced`` (most changes in the
    24 h up to and including an unforced change), ``by_exploration`` (changes to a bandit exploration).
    ``withdrawn``: defaults shown as the incumbent may not be shown and no change is allowed (not changes).
    """
    seqs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    rows: dict[str, Counter] = defaultdict(Counter)
    for d in decisions:
        if d["mode"] in GOVERNED_MODES:
            seqs[(d["user_id"], d["placement"])].append(d)
        elif (d.get("trace") or {}).get("fallback") == "incumbent_unavailable":
            rows[d["placement"]]["withdrawn"] += 1
    sticky: dict[str, Counter] = defaultdict(Counter)
    for (_, placement), seq in seqs.items():
        seq.sort(key=lambda d: d["ts"])
        changes: list[float] = []
        unforced: list[float] = []
        explored = 0
        for prev, d in zip(seq, seq[1:], strict=False):
            trace = d.get("trace") or {}
            if d["mode"] == "sticky":
                sticky[placement][trace.get("sticky", {}).get("reason", "?")] += 1
            if d["action"] != prev["action"]:
                changes.append(d["ts"])
                explored += d["mode"] == "explore"
                if not trace.get("forced"):
                    unforced.append(d["ts"])
        at_unforced = [bisect.bisect_right(changes, t) - bisect.bisect_right(changes, t - DAY_S)
                       for t in unforced]
        row = rows[placement]
        row.update(user_placements=1, decisions=len(seq), changes=len(changes),
                   forced=len(changes) - len(unforced), by_exploration=explored)
        row["max_changes_24h"] = max(row["max_changes_24h"], _max_in_window(changes))
        row["max_changes_24h_at_unforced"] = max([row["max_changes_24h_at_unforced"], *at_unforced])
    maxima = ("max_changes_24h", "max_changes_24h_at_unforced")
    overall = {k: max((r[k] for r in rows.values()), default=0) for k in maxima}
    totals = ("changes", "forced", "by_exploration", "decisions", "withdrawn")
    overall.update({k: sum(r[k] for r in rows.values()) for k in totals})
    placements = {p: {**row, "sticky": dict(sticky[p])} for p, row in sorted(rows.items())}
    return {"overall": overall, "placements": placements}


def reward_table(decisions: Iterable[dict[str, Any]], world: World) -> dict[str, Any]:
    """Expected reward of every decision for consenting users (as the loop scores it), per simulated day.

    Also ``one_action_per_day_vs_oracle``: what an engine that knows the world earns on the same requests
    showing each user one action per placement and simulated day (the best in hindsight), over what the
    oracle earns. The cap allows that schedule, so an all-knowing engine keeps at least this much under
    "1 change per day"; it says how much changing within the day is worth in this world.
    """
    users = {u.user_id: u for u in world.users}
    days: dict[int, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    placements: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    fixed: dict[tuple[str, str, int], Counter] = defaultdict(Counter)
    for d in decisions:
        user = users.get(d["user_id"])
        if user is None or not user.consent:
            continue
        ctx = Context(user.segment, user.device, (d["ts"] % DAY_S) / 3600)
        day = int((d["ts"] - START_TS) // DAY_S)
        rewards = {a: world.expected_reward(a, ctx) for a in world.catalogue.eligible(d["placement"])}
        engine, best = world.expected_reward(d["action"], ctx), max(rewards.values(), default=0.0)
        for row in (days[day], placements[d["placement"]]):
            row[0], row[1], row[2] = row[0] + 1, row[1] + engine, row[2] + best
        fixed[(d["user_id"], d["placement"], day)].update(rewards)
    oracle = sum(o for _, _, o in days.values())
    hindsight = sum(max(c.values(), default=0.0) for c in fixed.values())
    return {
        "by_day": [{"day": day, "decisions": n, "engine": e / n, "oracle": o / n}
                   for day, (n, e, o) in sorted(days.items()) if n],
        "by_placement": {p: {"decisions": n, "engine": e / n, "oracle": o / n}
                         for p, (n, e, o) in sorted(placements.items()) if n},
        "one_action_per_day_vs_oracle": hindsight / oracle if oracle else None,
    }


def mean_from_day(by_day: list[dict[str, float]], first_day: int) -> float | None:
    """Engine reward per decision over the simulated days from ``first_day`` on."""
    n = sum(d["decisions"] for d in by_day if d["day"] >= first_day)
    return sum(d["engine"] * d["decisions"] for d in by_day if d["day"] >= first_day) / n if n else None


def rewards_by_outcome(metrics_text: str) -> dict[str, float]:
    """cadence_rewards_total per attribution outcome, from a worker's /metrics page."""
    out = {}
    for line in metrics_text.splitlines():
        if line.startswith("cadence_rewards_total{"):
            labels, value = line.rsplit(" ", 1)
            out[labels.split('outcome="', 1)[1].split('"', 1)[0]] = float(value)
    return out


# -- one run -------------------------------------------------------------------------------------------
def run_variant(rt: Runtime, data_dir: Path, variant: str, seed: int, cfg: RunConfig) -> dict[str, Any]:
    """A fresh worker (own app id, topics, Redis namespace) with the variant's catalogue, and the loop."""
    catalogue = VARIANTS[variant]
    tag = f"stk{seed}{variant[:2]}{uuid.uuid4().hex[:6]}"
    prefix = f"{tag}."
    bootstrap = rt.kafka_bootstrap or ""
    create_topics(bootstrap, [prefix + t for t in ALL_TOPICS], partitions=4)
    env = worker_env(rt.env(), app_id=tag, topic_prefix=prefix, catalogue=str(catalogue), seed=str(seed),
                     log_level="warn")
    worker = WorkerProcess(env, data_dir, f"{tag}-worker").start()
    world = World(load_catalogue(catalogue), n_users=cfg.users, seed=seed)
    try:
        worker.wait_ready(timeout_s=120)
        loop = ClosedLoop(world, bootstrap, topic=lambda name: prefix + name, rate=cfg.rate, seed=seed,
                          requests_per_sim_s=cfg.requests_per_sim_s, max_outstanding=cfg.max_outstanding)
        try:
            loop.run(duration_s=cfg.max_wall_s, max_requests=cfg.requests)
            loop.drain(timeout_s=60)
            summary = loop.summary()
            summary["rewards_by_outcome"] = rewards_by_outcome(worker.metrics_text())
        finally:
            loop.close()
    finally:
        worker.stop()
    decisions = unique_decisions(read_topic(bootstrap, prefix + "decisions"))
    rewards = reward_table(decisions, world)
    summary.pop("curve", None)
    governed = [d for d in decisions if d["mode"] in GOVERNED_MODES]
    pairs = {(d["user_id"], d["placement"]) for d in governed}
    return {
        "variant": variant,
        "seed": seed,
        "catalogue": str(catalogue),
        "summary": summary,
        "engine_all": summary["all_decisions_reward"]["engine"],
        "engine_after_warmup": mean_from_day(rewards["by_day"], cfg.warmup_days),
        "rewards": rewards,
        "changes": change_report(decisions),
        "governed_per_user_placement_day": len(governed) / max(len(pairs), 1) / cfg.sim_days,
    }


# -- report --------------------------------------------------------------------------------------------
def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _ratios(limited: dict[Any, dict], unlimited: dict[Any, dict]) -> dict[Any, float]:
    """Engine reward limited ÷ unlimited, for every key both have."""
    return {k: round(float(v["engine"] / unlimited[k]["engine"]), 3)
            for k, v in limited.items() if k in unlimited and unlimited[k]["engine"]}


def _mean_se(xs: list[float]) -> tuple[float | None, float | None]:
    se = float(np.std(xs, ddof=1) / np.sqrt(len(xs))) if len(xs) > 1 else None
    return (float(np.mean(xs)) if xs else None), se


def compare(runs: list[dict[str, Any]], warmup_days: int) -> dict[str, Any]:
    by = {(r["seed"], r["variant"]): r for r in runs}
    rows = []
    for seed in sorted({r["seed"] for r in runs}):
        free, lim = by[(seed, UNLIMITED)], by[(seed, LIMITED)]
        free_days, lim_days = ({d["day"]: d for d in run["rewards"]["by_day"] if d["decisions"] > 100}
                               for run in (free, lim))
        rows.append({
            "seed": seed,
            "no_limit": free["engine_all"],
            "sticky_1_per_day": lim["engine_all"],
            "oracle": free["summary"]["all_decisions_reward"]["oracle"],
            "random": free["summary"]["all_decisions_reward"]["random"],
            "ratio": lim["engine_all"] / free["engine_all"],
            "ratio_after_warmup": _ratio(lim["engine_after_warmup"], free["engine_after_warmup"]),
            "ratio_by_day": list(_ratios(lim_days, free_days).values()),
            "no_limit_vs_oracle_by_day": [round(float(d["engine"] / d["oracle"]), 3)
                                          for d in free["rewards"]["by_day"] if d["decisions"] > 100],
            "ratio_by_placement": _ratios(lim["rewards"]["by_placement"], free["rewards"]["by_placement"]),
            "one_action_per_day_vs_oracle": free["rewards"]["one_action_per_day_vs_oracle"],
            "max_changes_24h": lim["changes"]["overall"]["max_changes_24h"],
            "max_changes_24h_at_unforced": lim["changes"]["overall"]["max_changes_24h_at_unforced"],
            "forced_changes": lim["changes"]["overall"]["forced"],
            "withdrawn": lim["changes"]["overall"]["withdrawn"],
            "changes_by_exploration": lim["changes"]["overall"]["by_exploration"],
            "sticky_share": lim["summary"]["modes"].get("sticky", 0) / max(lim["summary"]["decisions"], 1),
            "same_requests": free["summary"]["requests_sent"] == lim["summary"]["requests_sent"],
            # every valid request got a decision (only the deliberately bad events went to dead-letters)
            "all_requests_decided": all(run["summary"]["dead_letters"] == run["summary"]["bad_events_sent"]
                                        and run["summary"]["decisions_pending"] == 0 for run in (free, lim)),
        })

    (ratio, ratio_se), (later, later_se) = (_mean_se([r[k] for r in rows if r[k] is not None])
                                            for k in ("ratio", "ratio_after_warmup"))
    return {
        "per_seed": rows,
        "mean_ratio": ratio, "ratio_std_error": ratio_se,
        "mean_ratio_after_warmup": later, "ratio_after_warmup_std_error": later_se,
        "warmup_days": warmup_days,
        "checks": {
            "ratio_at_least_target": bool(ratio is not None and ratio >= TARGET_RATIO),
            "ratio_after_warmup_at_least_target": bool(later is not None and later >= TARGET_RATIO),
            "cap_holds_for_unforced_changes": all(r["max_changes_24h_at_unforced"] <= CAP_PER_DAY for r in rows),
            "cap_holds_for_all_changes": all(r["max_changes_24h"] <= CAP_PER_DAY for r in rows),
            "same_number_of_requests": all(r["same_requests"] for r in rows),
            "all_requests_decided": all(r["all_requests_decided"] for r in rows),
        },
    }


def _pm(mean: float | None, se: float | None) -> str:
    return "-" if mean is None else f"{mean:.3f}" + (f" ± {se:.3f} (se)" if se is not None else "")


def print_report(result: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    cmp, cfg = result["comparison"], result["config"]
    w = cfg["warmup_days"]
    print(f"stickiness cost: {cfg['requests']} requests, {cfg['users']} users, {cfg['sim_days']} simulated "
          f"days ({cfg['requests_per_sim_s']:.3f} requests per simulated s), {result['run_s']} s")
    print("engine's expected reward per decision over ALL decisions (consenting users):")
    print(f"{'seed':>4} {'no_limit':>9} {'1/day':>9} {'ratio':>6} {f'day{w}+':>6} {'oracle':>8} {'random':>8} "
          f"{'1act/day':>8} {'sticky':>7} {'max chg/24h':>11} {'unforced':>8} {'forced':>6} withdrawn")
    for r in cmp["per_seed"]:
        later = f"{r['ratio_after_warmup']:.3f}" if r["ratio_after_warmup"] else "-"
        print(f"{r['seed']:>4} {r['no_limit']:>9.5f} {r['sticky_1_per_day']:>9.5f} {r['ratio']:>6.3f} {later:>6} "
              f"{r['oracle']:>8.5f} {r['random']:>8.5f} {r['one_action_per_day_vs_oracle']:>8.3f} "
              f"{r['sticky_share']:>6.1%} {r['max_changes_24h']:>11} {r['max_changes_24h_at_unforced']:>8} "
              f"{r['forced_changes']:>6} {r['withdrawn']:>9}")
        print(f"     ratio by day {r['ratio_by_day']}, by placement {r['ratio_by_placement']}; "
              f"no_limit ÷ oracle by day {r['no_limit_vs_oracle_by_day']}; "
              f"{r['changes_by_exploration']} changes to an exploration")
    print(f"mean ratio 1/day ÷ no_limit: whole run {_pm(cmp['mean_ratio'], cmp['ratio_std_error'])}, "
          f"from day {w} {_pm(cmp['mean_ratio_after_warmup'], cmp['ratio_after_warmup_std_error'])}; "
          f"target ≥ {TARGET_RATIO}")
    for run in runs:
        if run["variant"] == LIMITED:
            print(f"seed {run['seed']} changes per placement (1/day): " + "; ".join(
                f"{p} {row['changes']} ({row['forced']} forced, max {row['max_changes_24h']} in 24 h), "
                f"{row.get('withdrawn', 0)} withdrawn, sticky {row['sticky']}"
                for p, row in run["changes"]["placements"].items()))
    print(f"governed decisions per user and placement per simulated day: "
          f"{np.mean([r['governed_per_user_placement_day'] for r in runs]):.1f}")
    for name, ok in cmp["checks"].items():
        print(f"  {name}: {'PASS' if ok else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1], help="seeds (world, traffic and engine)")
    p.add_argument("--requests", type=int, default=40000, help="decision requests per run")
    p.add_argument("--users", type=int, default=300, help="simulated users (few: each returns often)")
    p.add_argument("--sim-days", type=float, default=3.0, help="simulated days the requests are spread over")
    p.add_argument("--warmup-days", type=int, default=1, help="simulated days left out of the later ratio")
    p.add_argument("--rate", type=float, default=800.0, help="requests per wall-clock second, at most")
    p.add_argument("--max-outstanding", type=int, default=50,
                   help="requests waiting for a decision, at most (bounds the feedback delay in sim time)")
    p.add_argument("--max-wall", type=float, default=1800.0, help="wall-clock seconds at most per run")
    p.add_argument("--json", type=Path, default=None, help="write every run and the comparison here")
    args = p.parse_args(argv)
    cfg = RunConfig(args.requests, args.users, args.sim_days, args.warmup_days, args.rate,
                    args.max_outstanding, args.max_wall)
    started, runs = time.monotonic(), []
    try:
        with tempfile.TemporaryDirectory(prefix="cadence-stk-") as tmp, Runtime(Path(tmp), None, None) as rt:
            for seed, variant in ((seed, variant) for seed in args.seeds for variant in VARIANTS):
                runs.append(run := run_variant(rt, Path(tmp), variant, seed, cfg))
                print(f"seed {seed} {variant}: engine {run['engine_all']:.5f} over all decisions, modes "
                      f"{run['summary']['modes']}, {run['summary']['wall_s']} s", file=sys.stderr, flush=True)
    except RuntimeStartError as exc:
        sys.exit(f"stickiness_experiment: {exc}")
    comparison = compare(runs, cfg.warmup_days)
    result = {"config": {**asdict(cfg), "requests_per_sim_s": cfg.requests_per_sim_s, "seeds": args.seeds},
              "comparison": comparison, "run_s": round(time.monotonic() - started, 1), "runs": runs}
    print_report(result, runs)
    if args.json:
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
        print(f"wrote {args.json}")
    return 0 if all(comparison["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
