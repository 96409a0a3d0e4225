"""OPE interval coverage and accuracy on simulator worlds (offline, no Kafka).

For each seed a World, a logging policy with known probabilities and a sampled log; each candidate's
true value is computed exactly from World.expected_reward (ope/synthetic.py explains the contexts).
Prints coverage of the 95 % intervals and mean absolute error per estimator and per candidate, and
checks the targets: SNIPS and DR coverage >= 90 %, DR's mean absolute error not above IPS's (paired over
the same logs, beyond 2 standard errors of the difference).

    python load_tests/ope_coverage.py --seeds 50 --n 20000 --json ope_coverage.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cadence.settings import DEFAULT_CATALOGUE  # noqa: E402
from ope.progress import ProgressBar  # noqa: E402
from ope.study import run_study  # noqa: E402
from policy.catalogue import load_catalogue  # noqa: E402

COVERAGE_TARGET = 0.90


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--seeds", type=int, default=30, help="number of seeds (worlds and logs), >= 20 for the targets"
    )
    p.add_argument("--first-seed", type=int, default=1, help="first seed; seeds are consecutive")
    p.add_argument(
        "--n", type=int, default=20000, help="logged decisions per seed (half train, half evaluation)"
    )
    p.add_argument("--users", type=int, default=500, help="users per simulated world")
    p.add_argument(
        "--epsilon", type=float, default=0.1, help="uniform exploration share of the logging policy"
    )
    p.add_argument(
        "--clip", type=float, default=None, help="largest importance weight (default: no clipping)"
    )
    p.add_argument("--json", type=Path, default=None, help="write the full results (every trial) here")
    args = p.parse_args(argv)

    started = time.monotonic()
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    bar = ProgressBar("seeds", enabled=sys.stderr.isatty())
    result = run_study(
        load_catalogue(DEFAULT_CATALOGUE),
        seeds,
        args.n,
        clip=args.clip,
        n_users=args.users,
        epsilon=args.epsilon,
        progress=bar.update,
    )
    bar.close()
    result["run_s"] = round(time.monotonic() - started, 1)

    by_est = result["by_estimator"]
    pairs, oracle = result["dr_vs_ips"], result["oracle_dr_vs_ips"]
    checks = {
        "snips_coverage_ok": by_est["snips"]["coverage"] >= COVERAGE_TARGET,
        "dr_coverage_ok": by_est["dr"]["coverage"] >= COVERAGE_TARGET,
        # paired over the same (seed, candidate): DR's extra absolute error is not above 2 standard errors
        "dr_mae_not_above_ips": pairs["mean_abs_error_difference"] <= 2 * pairs["difference_std_error"],
    }
    result["checks"] = checks
    print(
        f"OPE coverage: {len(seeds)} seeds x {len(result['config']['candidates'])} candidates, "
        f"n={args.n} per log (evaluated on the later half), clip={args.clip}, {result['run_s']} s"
    )
    print(f"{'estimator':<44} {'trials':>6} {'coverage':>9} {'MAE':>9} {'bias':>10} {'CI width':>9}")
    for table in (by_est, result["by_candidate"]):
        for key, s in table.items():
            print(
                f"{key:<44} {s['trials']:>6} {s['coverage']:>8.1%} {s['mean_abs_error']:>9.5f} "
                f"{s['mean_error']:>+10.5f} {s['mean_ci_width']:>9.5f}"
            )
        print()
    for label, p in (("DR", pairs), ("DR with the true reward model", oracle)):
        print(
            f"{label}: paired |err| - |IPS err| = {p['mean_abs_error_difference']:+.6f} "
            f"± {p['difference_std_error']:.6f} (se); closer than IPS in {p['share_closer']:.0%} "
            f"of {p['pairs']} pairs"
        )
    print(f"DR MAE / IPS MAE = {by_est['dr']['mean_abs_error'] / by_est['ips']['mean_abs_error']:.3f}")
    for name, ok in checks.items():
        print(f"  {name}: {'PASS' if ok else 'FAIL'}")
    if args.json:
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
        print(f"wrote {args.json}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
