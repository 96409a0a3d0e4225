"""Bandit benchmark: cadence's policies against river.bandit, MABWiser and Vowpal Wabbit, one process.

Every contender replays the same seeded stream (``bandits.synthetic.LinearWorld``: 10 actions, 20
engine-like context features, Bernoulli clicks from a hidden linear model) with the same delay: the
reward of step t is revealed at step t + delay and only then learned from. Rewards use common random
numbers (click = uniform_t < p(x_t, a)), so two policies that pick the same action get the same reward.

Reported per contender: µs per select+update (select time per step + update time per revealed reward,
adapter cost included, e.g. dict contexts for river and text examples for VW, cold start included for
all), cumulative reward, reward / oracle (the oracle plays argmax_a p(x_t, a) on the same uniforms) and
expected reward / oracle expected (Σ p(x_t, a_t) / Σ max_a p(x_t, a): the same score without click luck).

cadence rows come in two protocols: "update on reveal" (the peers' protocol: update(x, a, r) when the
reward arrives) and "expose now" (the engine's protocol: expose(x, a) at decision time, reward(x, a, r)
on reveal; only possible because its statistics split exposures from rewards). A third, "expose now,
imputed", is an experiment on top of the second: at decision time the in-flight reward is imputed with the
current estimate ŷ = θₐ·x (reward(x, a, ŷ), which leaves θₐ unchanged and narrows the interval), corrected
by reward(x, a, r − ŷ) on reveal, so the final statistics are the same as the other protocols'. The engine
does not do this (it would need a sample when an attribution window closes without a reward).

    python load_tests/bench_bandits.py [--steps 20000] [--delay 50] [--seed 0 [1 2 …]] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

for _threads in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_threads, "1")  # every contender single-threaded (set before numpy loads)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bandits import make_policy  # noqa: E402
from bandits.synthetic import LinearWorld, Stream  # noqa: E402

DEFAULT_STEPS = 20_000  # about 2 minutes for everything on 2 shared cores (MABWiser ≈ 2 ms per step)
ALPHA_UCB = 0.5  # LinUCB width, the same for cadence and MABWiser (same score formula)
RIDGE_UCB = 10.0  # cadence LinUCB's default ridge prior λ (MABWiser's l2_lambda; its default is 1)
ALPHA_TS = 0.25  # LinTS posterior scale, the same for cadence and MABWiser
EPSILON = 0.05  # ε of every ε-greedy contender


@dataclass(frozen=True)
class Config:
    steps: int
    delay: int
    seed: int
    n_actions: int
    dim: int


class Runner(Protocol):
    def select(self, x: np.ndarray) -> tuple[int, float]:
        """The arm to play and its selection probability (NaN when the library does not say)."""

    def learn(self, x: np.ndarray, arm: int, reward: float, probability: float) -> None: ...


# -- cadence -------------------------------------------------------------------------------------
class Cadence:
    def __init__(self, cfg: Config, name: str, expose_now: bool, impute: bool = False, **params: Any) -> None:
        self.policy = make_policy(name, cfg.dim, seed=cfg.seed + 1, **params)
        self.actions = [f"a{i}" for i in range(cfg.n_actions)]
        self.arm_of = {a: i for i, a in enumerate(self.actions)}
        self.expose_now = expose_now or impute
        self.impute = impute
        self.imputed: deque[float] = deque()  # ŷ of the decisions in flight, in decision order (FIFO reveal)

    def select(self, x: np.ndarray) -> tuple[int, float]:
        choice = self.policy.select(x, self.actions)
        if self.expose_now:
            self.policy.expose(x, choice.action)
        if self.impute:
            guess = choice.means[choice.action]
            if guess:
                self.policy.reward(x, choice.action, guess)
            self.imputed.append(guess)
        return self.arm_of[choice.action], choice.probability

    def learn(self, x: np.ndarray, arm: int, reward: float, probability: float) -> None:
        if self.impute:
            correction = reward - self.imputed.popleft()
            if correction:
                self.policy.reward(x, self.actions[arm], correction)
        elif self.expose_now:
            self.policy.reward(x, self.actions[arm], reward)
        else:
            self.policy.update(x, self.actions[arm], reward)


class Uniform:
    def __init__(self, cfg: Config) -> None:
        self.rng = np.random.default_rng(cfg.seed + 1)
        self.k = cfg.n_actions

    def select(self, x: np.ndarray) -> tuple[int, float]:
        return int(self.rng.integers(self.k)), 1.0 / self.k

    def learn(self, x: np.ndarray, arm: int, reward: float, probability: float) -> None:
        pass


# -- river ---------------------------------------------------------------------------------------
class RiverContextual:
    def __init__(self, cfg: Config) -> None:
        from river import bandit

        self.policy = bandit.LinUCBDisjoint(seed=cfg.seed + 1)  # library defaults: alpha=1, beta=1
        self.arms: list[int | str] = list(range(cfg.n_actions))
        self.names = [f"x{j}" for j in range(cfg.dim)]

    def select(self, x: np.ndarray) -> tuple[int, float]:
        context = dict(zip(self.names, x.tolist(), strict=True))
        return int(self.policy.pull(self.arms, context=context)), float("nan")

    def learn(self, x: np.ndarray, arm: int, reward: float, probability: float) -> None:
        self.policy.update(arm, dict(zip(self.names, x.tolist(), strict=True)), reward)


class RiverPlain:
    """A context-free river bandit: it is given the arms only (it ignores the context by design)."""

    def __init__(self, cfg: Config, kind: str) -> None:
        from river import bandit, proba

        self.policy: bandit.base.Policy
        if kind == "egreedy":
            self.policy = bandit.EpsilonGreedy(epsilon=EPSILON, seed=cfg.seed + 1)
        else:
            self.policy = bandit.ThompsonSampling(reward_obj=proba.Beta(), seed=cfg.seed + 1)
        self.arms: list[int | str] = list(range(cfg.n_actions))

    def select(self, x: np.ndarray) -> tuple[int, float]:
        return int(self.policy.pull(self.arms)), float("nan")

    def learn(self, x: np.ndarray, arm: int, reward: float, probability: float) -> None:
        self.policy.update(arm, reward)


# -- MABWiser ------------------------------------------------------------------------------------
class Mabwiser:
    def __init__(self, cfg: Config, kind: str, alpha: float, l2_lambda: float = 1.0) -> None:
        from mabwiser.mab import MAB, LearningPolicy

        learning = (
            LearningPolicy.LinUCB(alpha=alpha, l2_lambda=l2_lambda)
            if kind == "linucb"
            else LearningPolicy.LinTS(alpha=alpha, l2_lambda=l2_lambda)
        )
        self.mab = MAB(arms=list(range(cfg.n_actions)), learning_policy=learning, seed=cfg.seed + 1)
        self.mab.fit(decisions=[], rewards=[], contexts=np.empty((0, cfg.dim)))  # predict() needs a fit

    def select(self, x: np.ndarray) -> tuple[int, float]:
        return int(self.mab.predict(x[None, :])), float("nan")

    def learn(self, x: np.ndarray, arm: int, reward: float, probability: float) -> None:
        self.mab.partial_fit(decisions=[arm], rewards=[reward], contexts=x[None, :])


# -- Vowpal Wabbit -------------------------------------------------------------------------------
class Vowpal:
    """``cb_explore_adf`` with a shared context namespace U crossed with the action namespace A."""

    def __init__(self, cfg: Config, explore: str) -> None:
        import vowpalwabbit

        flags = f"--cb_explore_adf -q UA {explore} --quiet --random_seed {cfg.seed + 1}"
        self.vw = vowpalwabbit.Workspace(flags)
        self.rng = np.random.default_rng(cfg.seed + 1)
        self.k = cfg.n_actions

    def _example(self, x: np.ndarray, label: tuple[int, float, float] | None = None) -> list[str]:
        lines = ["shared |U " + " ".join(f"f{j}:{v:.6g}" for j, v in enumerate(x.tolist()) if v)]
        lines += [f"|A a{a}" for a in range(self.k)]
        if label is not None:
            arm, cost, prob = label
            lines[arm + 1] = f"0:{cost}:{prob} |A a{arm}"
        return lines

    def select(self, x: np.ndarray) -> tuple[int, float]:
        pmf = np.asarray(self.vw.predict(self._example(x)), dtype=np.float64)
        arm = int(self.rng.choice(self.k, p=pmf / pmf.sum()))
        return arm, float(pmf[arm])

    def learn(self, x: np.ndarray, arm: int, reward: float, probability: float) -> None:
        self.vw.learn(self._example(x, (arm, -reward, probability)))  # VW minimises cost = -reward


@dataclass(frozen=True)
class Contender:
    name: str
    library: str
    build: Callable[[Config], Runner]
    note: str = ""


OURS = {"linucb": {"alpha": ALPHA_UCB}, "lints": {"alpha": ALPHA_TS}, "egreedy": {"epsilon": EPSILON}}


def cadence_contender(
    name: str, expose_now: bool, note: str = "", impute: bool = False, **params: Any
) -> Contender:
    protocol = "expose now, imputed" if impute else "expose now" if expose_now else "update on reveal"
    params = {**OURS[name], **params}
    label = f"{name}{''.join(f' {k}={v}' for k, v in params.items() if k not in OURS[name])} ({protocol})"
    return Contender(label, "cadence", lambda c: Cadence(c, name, expose_now, impute, **params), note)


CONTENDERS = [
    *(cadence_contender(name, expose_now=False) for name in OURS),
    *(cadence_contender(name, expose_now=True) for name in OURS),
    cadence_contender("linucb", True, "in-flight rewards imputed with θₐ·x, corrected on reveal", impute=True),
    cadence_contender("linucb", False, "no propensity floor: the cost of the ε floor", epsilon=0.0),
    cadence_contender("linucb", False, "the constant ε = 0.02 floor of earlier versions", epsilon_min=0.02),
    cadence_contender("linucb", False, "the previous default: ridge 1, floor decay n₀ = 100", ridge=1.0,
                      explore_samples=100),
    cadence_contender("linucb", False, "previous default without the floor", ridge=1.0, epsilon=0.0),
    Contender("LinUCBDisjoint", "river", RiverContextual, "library defaults (alpha=1, beta=1)"),
    Contender("EpsilonGreedy", "river", lambda c: RiverPlain(c, "egreedy"), "not contextual: ignores x"),
    Contender("ThompsonSampling(Beta)", "river", lambda c: RiverPlain(c, "ts"), "not contextual: ignores x"),
    Contender("LinUCB", "mabwiser", lambda c: Mabwiser(c, "linucb", ALPHA_UCB), "alpha=0.5, l2_lambda=1"),
    Contender(
        "LinUCB l2_lambda=10", "mabwiser", lambda c: Mabwiser(c, "linucb", ALPHA_UCB, RIDGE_UCB),
        "cadence's defaults (alpha=0.5, ridge 10): the same algorithm as cadence linucb epsilon=0.0",
    ),
    Contender("LinUCB defaults", "mabwiser", lambda c: Mabwiser(c, "linucb", 1.0), "library defaults (alpha=1)"),
    Contender("LinTS", "mabwiser", lambda c: Mabwiser(c, "lints", ALPHA_TS), "alpha=0.25, l2_lambda=1"),
    Contender("LinTS defaults", "mabwiser", lambda c: Mabwiser(c, "lints", 1.0), "library defaults (alpha=1)"),
    Contender("cb_explore_adf epsilon", "vowpalwabbit", lambda c: Vowpal(c, f"--epsilon {EPSILON}")),
    Contender("cb_explore_adf squarecb", "vowpalwabbit", lambda c: Vowpal(c, "--squarecb")),
    Contender("uniform random", "reference", Uniform),
]


def replay(runner: Runner, stream: Stream, delay: int) -> dict[str, float]:
    """Play the stream; rewards are learned ``delay`` steps after their decision.

    Each step's select and learn calls are timed on their own; the mean is what the work costs,
    the median is robust to the process being descheduled on a busy machine.
    """
    steps = len(stream.uniforms)
    pending: deque[tuple[np.ndarray, int, float, float]] = deque()
    select_s = np.zeros(steps)
    learn_s = np.full(steps, np.nan)
    reward = expected = 0.0
    clock = time.perf_counter
    cpu_started = time.process_time()
    for t in range(steps):
        x = stream.contexts[t]
        t0 = clock()
        arm, prob = runner.select(x)
        t1 = clock()
        select_s[t] = t1 - t0
        r = stream.reward(t, arm)
        reward += r
        expected += stream.probabilities[t, arm]
        pending.append((x, arm, r, prob))
        if len(pending) > delay:
            t0 = clock()
            runner.learn(*pending.popleft())
            learn_s[t] = clock() - t0
    cpu_us = (time.process_time() - cpu_started) / steps * 1e6
    learned = ~np.isnan(learn_s)
    select_us = float(select_s.mean() * 1e6)
    update_us = float(learn_s[learned].mean() * 1e6)
    return {
        "select_us": select_us,
        "update_us": update_us,
        "us_per_step": select_us + update_us,
        "cpu_us_per_step": cpu_us,
        "median_us_per_step": float(np.median(select_s[learned] + learn_s[learned]) * 1e6),
        "reward": reward,
        "expected_reward": expected,
    }


def version_of(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def run(cfg: Config, only: set[str] | None) -> dict[str, Any]:
    world = LinearWorld(n_actions=cfg.n_actions, dim=cfg.dim, seed=cfg.seed)
    stream = world.stream(cfg.steps)
    best = stream.probabilities.max(axis=1)
    oracle_reward = float((stream.uniforms < best).sum())
    oracle_expected = float(best.sum())
    results = []
    for contender in CONTENDERS:
        if only and contender.library not in only and contender.name not in only:
            continue
        row: dict[str, Any] = {"name": contender.name, "library": contender.library, "note": contender.note}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # peers' deprecation chatter would drown the table
                runner = contender.build(cfg)
                row.update(replay(runner, stream, cfg.delay))
        except ImportError as exc:
            row["skipped"] = f"import failed: {exc}"
        except Exception as exc:  # a peer that breaks is reported, not allowed to stop the benchmark
            row["skipped"] = f"{type(exc).__name__}: {exc}"
        if "reward" in row:
            row["reward_ratio"] = row["reward"] / oracle_reward
            row["expected_ratio"] = row["expected_reward"] / oracle_expected
        results.append(row)
        print(format_row(row), flush=True)
    return {
        "config": asdict(cfg),
        "oracle_reward": oracle_reward,
        "oracle_expected_reward": oracle_expected,
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
            "python": platform.python_version(),
        },
        "versions": {p: version_of(p) for p in ("numpy", "scipy", "river", "mabwiser", "vowpalwabbit")},
        "results": results,
    }


LABEL = 50  # width of the contender column
TIMING_KEYS = ("cpu_us_per_step", "us_per_step", "median_us_per_step", "select_us", "update_us")
COLUMNS = ("cpu µs", "µs/step", "median", "select", "update", "reward", "/oracle", "E/oracle")
HEADER = f"{'contender':<{LABEL}} " + " ".join(f"{c:>8}" for c in COLUMNS) + "  note"


def format_row(row: dict[str, Any]) -> str:
    label = f"{row['library']}: {row['name']}"
    if "skipped" in row:
        return f"{label:<{LABEL}} skipped - {row['skipped']}"
    timing = [row[k] for k in TIMING_KEYS]
    score = f"{row['reward']:>8.0f} {row['reward_ratio']:>8.3f} {row['expected_ratio']:>8.3f}"
    return f"{label:<{LABEL}} " + " ".join(f"{v:>8.1f}" for v in timing) + f" {score}  {row['note']}"


REFERENCE = "cadence: linucb (update on reveal)"  # the engine's LinUCB, paired against every other row


def paired(reports: list[dict[str, Any]], reference: str = REFERENCE) -> list[dict[str, Any]]:
    """``reference`` minus each other contender, seed by seed (same stream and luck), over the seeds both ran:
    the mean difference of E/oracle and of the reward, their standard errors (sd of the per-seed differences
    / √seeds) and on how many seeds the reference is ahead. Empty without the reference or with one seed.
    Reports of other settings than the first's (steps, delay, actions, features) or a seed given twice are refused:
    their rows would be paired with streams they did not share."""
    settings = [{k: v for k, v in r["config"].items() if k != "seed"} for r in reports]
    if any(other != settings[0] for other in settings[1:]):
        raise ValueError("reports of different settings (steps, delay, actions or dim): pair runs of one setting")
    seeds = [r["config"]["seed"] for r in reports]
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"a seed is given twice in {sorted(seeds)}: pair each seed once")
    by_seed: dict[str, dict[int, tuple[float, float]]] = {}
    for report in reports:
        for row in report["results"]:
            if "skipped" not in row:
                label = f"{row['library']}: {row['name']}"
                by_seed.setdefault(label, {})[report["config"]["seed"]] = (row["expected_ratio"], row["reward"])
    ours = by_seed.get(reference, {})
    out = []
    for label, found in by_seed.items():
        seeds = sorted(set(found) & set(ours))
        if label == reference or len(seeds) < 2:
            continue
        diff = np.array([[a - b for a, b in zip(ours[s], found[s], strict=True)] for s in seeds])
        se = diff.std(axis=0, ddof=1) / np.sqrt(len(seeds))
        out.append({
            "contender": label, "seeds": len(seeds),
            "expected_ratio_diff": float(diff[:, 0].mean()), "expected_ratio_diff_se": float(se[0]),
            "reward_diff": float(diff[:, 1].mean()), "reward_diff_se": float(se[1]),
            "reference_ahead": int((diff[:, 0] > 0).sum()),
        })
    return out


def summarise(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Across seeds: mean and standard deviation of E/oracle and mean cpu µs per contender."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for report in reports:
        for row in report["results"]:
            if "skipped" not in row:
                rows.setdefault(f"{row['library']}: {row['name']}", []).append(row)
    summary = []
    for label, found in rows.items():
        ratios = np.array([r["expected_ratio"] for r in found])
        cpu = float(np.mean([r["cpu_us_per_step"] for r in found]))
        summary.append(
            {
                "contender": label,
                "seeds": len(found),
                "expected_ratio_mean": float(ratios.mean()),
                "expected_ratio_sd": float(ratios.std(ddof=1)) if len(found) > 1 else 0.0,
                "cpu_us": cpu,
            }
        )
        print(
            f"{label:<{LABEL}} E/oracle {ratios.mean():.4f} ± {summary[-1]['expected_ratio_sd']:.4f} "
            f"over {len(found)} seeds, cpu {cpu:.1f} µs/step"
        )
    differences = paired(reports)
    if differences:
        print(f"paired, {REFERENCE} minus each (mean ± standard error over the seeds both ran):")
    for d in differences:
        print(
            f"  − {d['contender']:<{LABEL}} E/oracle {d['expected_ratio_diff']:+.4f} "
            f"± {d['expected_ratio_diff_se']:.4f}, reward {d['reward_diff']:+.1f} ± {d['reward_diff_se']:.1f}, "
            f"ahead on {d['reference_ahead']} of {d['seeds']}"
        )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="requests in the stream")
    parser.add_argument("--delay", type=int, default=50, help="steps until a reward is revealed")
    parser.add_argument(
        "--seed",
        type=int,
        nargs="+",
        default=[0],
        help="seed(s) of the world, the stream and every policy; several give a mean ± sd",
    )
    parser.add_argument("--actions", type=int, default=10, help="number of actions")
    parser.add_argument("--dim", type=int, default=20, help="context features")
    parser.add_argument("--only", default="", help="comma-separated libraries or contender names to run")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    args = parser.parse_args(argv)
    if args.steps <= args.delay:
        parser.error("--steps must exceed --delay")
    only = {s.strip() for s in args.only.split(",") if s.strip()} or None
    started = time.perf_counter()
    reports = []
    for seed in args.seed:
        cfg = Config(args.steps, args.delay, seed, args.actions, args.dim)
        print(
            f"{cfg.steps} steps, {cfg.n_actions} actions, {cfg.dim} features, rewards revealed {cfg.delay} "
            f"steps later, seed {cfg.seed}.\ncpu µs = process CPU time of the whole replay per step (robust "
            "to a busy machine);\nµs/step = mean select + mean update (wall, adapters included); median = "
            "median of select + update over the steps that learned;\nselect/update = means; /oracle = reward "
            "/ oracle reward; E/oracle = expected reward / oracle expected reward"
        )
        print(HEADER)
        report = run(cfg, only)
        reports.append(report)
        print(
            f"oracle reward {report['oracle_reward']:.0f}; river EpsilonGreedy and ThompsonSampling are "
            f"context-free and were given the arms only; load average {report['machine']['load_avg_1m']:.2f} "
            f"on {report['machine']['cpus']} cpus\n"
        )
    summary = summarise(reports) if len(reports) > 1 else []
    wall = time.perf_counter() - started
    print(f"wall {wall:.0f} s")
    if args.json:
        out = {"runs": reports, "summary": summary, "paired": paired(reports), "wall_s": wall}
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
