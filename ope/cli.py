"""``cadence ope``: compare candidate policies on a decision log, with intervals, a plot and a promotion gate.

cadence/cli.py adds the subcommand with ``add_ope_parser``; ``DESCRIPTION`` is its ``--help`` text.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import orjson

from ope.candidates import CandidateConfigError, check_config, load_config, needs_training, plan
from ope.estimators import CI_METHOD, DR_FOLDS, ESTIMATORS, Estimate, OPEError, evaluate, on_policy
from ope.gate import decide_promotion
from ope.log import RANDOMISED_MODES, DecisionLog, join_samples, read_jsonl, read_topic
from ope.progress import ProgressBar
from policy.catalogue import Catalogue, CatalogueError, load_catalogue

LONG_RUN = 5000  # decisions × candidates above which a progress bar is drawn (on a terminal)

DESCRIPTION = """\
Estimate what candidate policies would have earned on the engine's decision log (the learning topic,
or a JSON-lines export of it), with 95 % intervals, warnings, a plot and a promotion gate.

  cadence ope --log learning.jsonl --candidate '{"kind": "uniform"}' --candidate greedy.json \\
              [--clip 50] [--json out.json] [--plot out.png]
  cadence ope --bootstrap HOST:PORT --topic learning --candidate '{"kind": "bandit", "policy": "linucb"}'

Candidate configs (JSON, inline or in a file; "name" is optional and labels the candidate):
  {"kind": "uniform"}                              every eligible action equally likely
  {"kind": "constant", "action": "offer_bundle"}   always this action (a list: first eligible one)
  {"kind": "bandit", "policy": "linucb", "params": {"alpha": 0.5}}
                                                   a bandit trained on the log's first half, then run
                                                   through arbitration as the engine runs it
  {"kind": "greedy_model", "epsilon": 0.05}        best action of a ridge reward model trained on the
                                                   first half, with an ε-uniform share
When a candidate is trained, every candidate is evaluated on the later half of the log.

Only decisions the bandit drew at random are evaluated (modes explore and exploit); exploit decisions of
placements with stickiness rules are settled without a draw (probability 1) and are left out and counted.
"""


def add_ope_parser(subparsers: Any) -> argparse.ArgumentParser:
    from cadence.settings import DEFAULT_CATALOGUE

    sp = subparsers.add_parser(
        "ope",
        help="off-policy evaluation of candidate policies on a decision log",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = sp.add_argument_group("decision log (one of)")
    src.add_argument(
        "--log",
        type=Path,
        action="append",
        default=None,
        metavar="FILE.jsonl",
        help="JSON-lines export of the learning topic (repeat for several files)",
    )
    src.add_argument(
        "--bootstrap", default=None, metavar="HOST:PORT", help="read the topic from this Kafka broker"
    )
    src.add_argument(
        "--topic", default="learning", help="full topic name, prefix included (default: learning)"
    )
    sp.add_argument(
        "--candidate",
        action="append",
        required=True,
        metavar="CONFIG.json",
        help='candidate config file or inline JSON, e.g. \'{"kind": "uniform"}\' (repeatable; '
        "kinds: uniform, constant, bandit, greedy_model, described above)",
    )
    sp.add_argument(
        "--catalogue",
        type=Path,
        default=Path(os.environ.get("CADENCE_CATALOGUE") or DEFAULT_CATALOGUE),
        help="catalogue the engine ran with (default: $CADENCE_CATALOGUE, as the engine reads it, else the "
        "bundled one); bandit candidates are run through arbitration with its values and costs",
    )
    sp.add_argument(
        "--modes",
        default=",".join(RANDOMISED_MODES),
        help="decision modes to evaluate on (default: the bandit's own draws; holdout, sticky, pinned and "
        "fallback decisions log probability 1 and were not the bandit's choice)",
    )
    sp.add_argument(
        "--estimators", default="ips,snips,dr", help=f"comma-separated, from {sorted(ESTIMATORS)}"
    )
    sp.add_argument(
        "--clip", type=float, default=None, metavar="W", help="largest importance weight (default: none)"
    )
    sp.add_argument("--gate-estimator", default="dr", help="estimator the promotion gate uses (default: dr)")
    sp.add_argument(
        "--min-lift", type=float, default=0.0, help="lift over the logged policy a promotion needs"
    )
    sp.add_argument("--seed", type=int, default=0, help="seed of the cross-fitting folds (DR)")
    sp.add_argument("--json", type=Path, default=None, metavar="OUT.json", help="write every number here")
    sp.add_argument(
        "--plot", type=Path, default=None, metavar="OUT.png", help="plot estimates with intervals"
    )
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=run_ope)
    return sp


def _read_log(args: argparse.Namespace, catalogue: Catalogue) -> DecisionLog:
    if bool(args.log) == bool(args.bootstrap):
        raise OPEError(
            "give the decision log either as --log FILE.jsonl or as --bootstrap HOST:PORT [--topic], "
            "not both and not neither"
        )
    samples: list[dict[str, Any]] = []
    problems: list[str] = []
    for path in args.log or []:
        s, p = read_jsonl(path)
        samples += s
        problems += p
    if args.bootstrap:
        try:
            samples, problems = read_topic(args.bootstrap, args.topic)
        except ValueError:
            raise
        except Exception as exc:  # kafka-python's errors: no broker, timeouts
            raise OPEError(
                f"cannot read topic {args.topic!r} from {args.bootstrap}: {exc}; check --bootstrap "
                "(cadence up prints the embedded broker's address)"
            ) from None
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    return join_samples(samples, catalogue, problems, modes=modes)


def _fmt(v: float) -> str:
    return f"{v:.5f}" if v == v else "n/a"


def _table(logged: Estimate, results: list[dict[str, Any]]) -> str:
    lines = [
        f"{'candidate':<28} {'estimator':<10} {'value':>9}  {'95% CI (normal)':<22} {'ESS':>9} {'n':>8}"
        "  warn",
        f"{logged.candidate:<28} {'on-policy':<10} {_fmt(logged.value):>9}  "
        f"[{_fmt(logged.ci_low)}, {_fmt(logged.ci_high)}]   {logged.ess:>9,.0f} {logged.n:>8}  -",
    ]
    for r in results:
        for name, e in r["estimates"].items():
            lines.append(
                f"{r['name'][:28]:<28} {name:<10} {_fmt(e.value):>9}  [{_fmt(e.ci_low)}, {_fmt(e.ci_high)}]"
                f"   {e.ess:>9,.0f} {e.n:>8}  {len(e.warnings) or '-'}"
            )
    return "\n".join(lines)


def _warnings_text(results: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in results:
        seen: dict[str, str] = {}
        for e in r["estimates"].values():
            for w in e.warnings:
                seen.setdefault(w.code, w.message)
        out += [f"  {r['name']}: [{code}] {msg}" for code, msg in seen.items()]
    return out


def plot_estimates(path: Path, logged: Estimate, results: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in results]
    estimators = list(results[0]["estimates"]) if results else []
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.6 * len(names) * max(1, len(estimators)) / 2))
    ax.axvspan(logged.ci_low, logged.ci_high, color="0.85", label=f"{logged.candidate} (95% CI)")
    ax.axvline(logged.value, color="0.4", lw=1)
    step = 0.7 / max(1, len(estimators))
    for j, est in enumerate(estimators):
        ys, xs, lo, hi = [], [], [], []
        for i, r in enumerate(results):
            e = r["estimates"][est]
            ys.append(i + (j - (len(estimators) - 1) / 2) * step)
            xs.append(e.value)
            lo.append(e.value - e.ci_low)
            hi.append(e.ci_high - e.value)
        ax.errorbar(xs, ys, xerr=[lo, hi], fmt="o", capsize=3, label=est)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("estimated reward per decision (95% normal CI)")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate_all(
    log: DecisionLog,
    configs: list[dict[str, Any]],
    estimators: list[str],
    clip: float | None,
    seed: int,
    progress: bool,
    catalogue: Catalogue | None = None,
) -> tuple[DecisionLog, str, list[dict[str, Any]]]:
    needed = DR_FOLDS if "dr" in estimators else 1
    if any(needs_training(c) for c in configs) and len(log) - round(len(log) / 2) < needed:
        # the trained candidates' first half would leave too few to evaluate on: say so for the whole log
        raise OPEError(
            f"the log is too short: trained candidates learn from its first half and every candidate is "
            f"evaluated on the later half, which needs at least {needed} decisions"
            + (f" for the dr estimator (cross-fitted on {DR_FOLDS} folds)" if needed > 1 else "")
            + f", so the log needs at least {2 * needed} decisions to evaluate; it has {len(log)}"
        )
    candidates, held_out, note = plan(log, configs, catalogue)
    results: list[dict[str, Any]] = []
    names: set[str] = set()
    for config, candidate in zip(configs, candidates, strict=True):
        name = candidate.name
        while name in names:
            name += "'"
        names.add(name)
        bar = ProgressBar(name, enabled=progress and len(held_out) * len(configs) >= LONG_RUN)
        estimates = evaluate(held_out, candidate, estimators, clip=clip, seed=seed, progress=bar.update)
        bar.close()
        results.append({"name": name, "config": config, "estimates": estimates})
    return held_out, note, results


def run_ope(args: argparse.Namespace) -> int:
    try:
        catalogue = load_catalogue(args.catalogue)
        # everything the command line alone can get wrong is refused before a long log is read
        configs = [load_config(c) for c in args.candidate]
        for config in configs:
            check_config(config, catalogue)
        estimators = [e.strip() for e in args.estimators.split(",") if e.strip()]
        unknown = [e for e in estimators if e not in ESTIMATORS]
        if unknown or not estimators:
            raise OPEError(f"--estimators: unknown {unknown or estimators}; choose from {sorted(ESTIMATORS)}")
        if args.gate_estimator not in estimators:
            raise OPEError(f"--gate-estimator {args.gate_estimator!r} is not among --estimators {estimators}")
        log = _read_log(args, catalogue)
        if len(log) == 0:  # before any candidate is trained on (half of) nothing
            raise OPEError(log.report.why_empty())
        for note in log.report.notes():
            print(f"cadence ope: {note}", file=sys.stderr)
        held_out, note, results = evaluate_all(
            log,
            configs,
            estimators,
            args.clip,
            args.seed,
            progress=not args.quiet and sys.stderr.isatty(),
            catalogue=catalogue,
        )
        logged = on_policy(held_out)
    except (OPEError, CandidateConfigError, CatalogueError, FileNotFoundError, ValueError) as exc:
        sys.exit(f"cadence ope: {exc}")
    for r in results:
        r["gate"] = decide_promotion(
            r["estimates"][args.gate_estimator],
            logged,
            min_lift=args.min_lift,
            evidence_until_ts=held_out.last_ts,
        )
    print(
        f"OPE on {len(held_out):,} logged decisions ({note}); intervals: {CI_METHOD}"
        + (f"; weights clipped at {args.clip:g}" if args.clip else "")
    )
    print(_table(logged, results))
    warnings = _warnings_text(results)
    if warnings:
        print("\nwarnings:")
        print("\n".join(warnings))
    print(f"\npromotion gate ({args.gate_estimator} lower bound vs logged policy {logged.value:.5f}):")
    for r in results:
        print(f"  {r['name']}: {r['gate'].reason}")
    if args.json:
        doc = {
            "log": {
                "decisions": len(log),
                "evaluated_on": len(held_out),
                "split": note,
                "join": log.report.to_dict(),
                "notes": log.report.notes(),
            },
            "settings": {
                "estimators": estimators,
                "clip": args.clip,
                "seed": args.seed,
                "ci_method": CI_METHOD,
                "gate_estimator": args.gate_estimator,
                "min_lift": args.min_lift,
            },
            "logged_policy": logged.to_dict(),
            "candidates": [
                {
                    "name": r["name"],
                    "config": r["config"],
                    "gate": r["gate"].to_dict(),
                    "estimates": {k: e.to_dict() for k, e in r["estimates"].items()},
                }
                for r in results
            ],
        }
        args.json.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
        print(f"wrote {args.json}")
    if args.plot:
        plot_estimates(args.plot, logged, results)
        print(f"wrote {args.plot}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (``python -m ope.cli ...``), the same as ``cadence ope ...``."""
    parser = argparse.ArgumentParser(prog="cadence")
    add_ope_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["ope", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
