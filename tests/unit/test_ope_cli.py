"""``cadence ope`` end to end on a small exported log: table, JSON, plot, and errors a person can act on."""

from __future__ import annotations

import argparse

import numpy as np
import orjson
import pytest

from cadence.settings import DEFAULT_CATALOGUE
from ope.cli import add_ope_parser
from ope.synthetic import SyntheticLogs
from policy.catalogue import load_catalogue
from simulator.world import World


@pytest.fixture(scope="module")
def log_file(tmp_path_factory):
    synthetic = SyntheticLogs(World(load_catalogue(DEFAULT_CATALOGUE), n_users=200, seed=9), seed=9)
    path = tmp_path_factory.mktemp("ope") / "learning.jsonl"
    path.write_bytes(b"".join(s.to_json() + b"\n" for s in synthetic.sample(3000, seed=9)))
    return path


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cadence")
    add_ope_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["ope", *argv])
    return args.func(args)


def test_compares_candidates_and_writes_json_and_plot(log_file, tmp_path, capsys):
    out, png = tmp_path / "ope.json", tmp_path / "ope.png"
    code = run(
        [
            "--log",
            str(log_file),
            "--candidate",
            '{"kind": "uniform"}',
            "--candidate",
            '{"kind": "greedy_model", "epsilon": 0.1}',
            "--candidate",
            '{"kind": "constant", "action": "offer_bundle"}',
            "--clip",
            "30",
            "--json",
            str(out),
            "--plot",
            str(png),
            "--quiet",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "OPE on 1,500 logged decisions" in text  # the later half: greedy_model learned on the first
    for name in ("uniform", "greedy_model", "constant:offer_bundle", "logged policy"):
        assert name in text
    assert "promotion gate (dr lower bound" in text
    doc = orjson.loads(out.read_bytes())
    assert doc["log"]["decisions"] == 3000 and doc["log"]["evaluated_on"] == 1500
    assert [c["name"] for c in doc["candidates"]] == ["uniform", "greedy_model", "constant:offer_bundle"]
    for c in doc["candidates"]:
        assert set(c["estimates"]) == {"ips", "snips", "dr"}
        dr = c["estimates"]["dr"]
        assert dr["ci_low"] <= dr["value"] <= dr["ci_high"] and dr["clip"] == 30.0 and dr["n"] == 1500
        assert c["gate"]["promote"] == (
            dr["ci_low"] > doc["logged_policy"]["value"] and not c["gate"]["blocking"]
        )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--candidate", '{"kind": "uniform"}'], "either as --log FILE.jsonl or as --bootstrap"),
        (
            ["--log", "/nonexistent/learning.jsonl", "--candidate", '{"kind": "uniform"}'],
            "no such decision log",
        ),
        (["--log", "{log}", "--candidate", '{"kind": "telepathy"}'], "needs field 'kind'"),
        (
            [
                "--log",
                "{log}",
                "--candidate",
                '{"kind": "uniform"}',
                "--gate-estimator",
                "ips",
                "--estimators",
                "dr",
            ],
            "--gate-estimator 'ips' is not among",
        ),
        (["--log", "{empty}", "--candidate", '{"kind": "uniform"}'], "the decision log is empty"),
    ],
)
def test_errors_exit_with_what_to_do(argv, message, log_file, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    argv = [a.replace("{log}", str(log_file)).replace("{empty}", str(empty)) for a in argv]
    with pytest.raises(SystemExit, match=message):
        run(argv)


def test_progress_bar_draws_on_long_runs(log_file, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.setattr("ope.cli.LONG_RUN", 10)
    run(["--log", str(log_file), "--candidate", '{"kind": "uniform"}'])
    err = capsys.readouterr().err
    assert "uniform" in err and "3,000/3,000" in err


def test_a_candidate_equal_to_the_logging_policy_is_not_promoted_over_a_different_population(tmp_path):
    # half of the decisions carry no probability (and earn less): the candidates are weighted on the other
    # half only, so the logging policy's value must come from that half too
    rng = np.random.default_rng(1)
    lines = []
    for i in range(4000):
        a = str(rng.choice(["a", "b"]))
        exp = {"kind": "exposure", "decision_id": f"d{i}", "action": a, "x": [1.0, float(rng.random())],
               "placement": "p", "ts": float(i), "mode": "explore", "eligible": ["a", "b"]}
        if i % 2 == 0:
            exp["probability"] = 0.5
        lines.append(exp)
        if rng.random() < (0.15 if i % 2 == 0 else 0.02):
            lines.append({"kind": "reward", "decision_id": f"d{i}", "action": a, "x": exp["x"],
                          "reward": 1.0, "ts": i + 0.5})
    log, out = tmp_path / "log.jsonl", tmp_path / "ope.json"
    log.write_bytes(b"\n".join(orjson.dumps(doc) for doc in lines))
    assert run(["--log", str(log), "--candidate", '{"kind": "uniform"}', "--json", str(out), "--quiet"]) == 0
    doc = orjson.loads(out.read_bytes())
    estimates, gate = doc["candidates"][0]["estimates"], doc["candidates"][0]["gate"]
    assert doc["logged_policy"]["n"] == estimates["dr"]["n"] == 2000
    # uniform logged uniformly: its weights are all 1, so IPS is the logged mean of those very rows
    assert estimates["ips"]["value"] == pytest.approx(doc["logged_policy"]["value"], abs=1e-12)
    assert gate["current_value"] == doc["logged_policy"]["value"] and not gate["promote"]


def test_a_bandit_candidate_is_run_through_the_catalogues_arbitration(log_file, capsys):
    assert run(["--log", str(log_file), "--candidate", '{"kind": "bandit", "policy": "linucb"}', "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "bandit candidates are run through arbitration as the engine runs it" in text
    assert "bandit:linucb" in text


def test_help_is_for_users_not_developers(capsys):
    from cadence.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["ope", "--help"])
    text = capsys.readouterr().out
    assert "--candidate" in text and "candidate policies would have earned" in text
    for developer_text in ("Wire it", "cadence/cli.py", "add_ope_parser", "ope/candidates.py"):
        assert developer_text not in text


@pytest.mark.parametrize(
    ("candidate", "message"),
    [
        ('{"kind": "telepathy"}', "needs field 'kind'"),
        ('{"kind": "uniform"', "not valid JSON"),
        ('{"kind": "bandit", "policy": "oracle"}', "oracle"),
        ('{"kind": "greedy_model", "train_on": "everything"}', "train_on"),
    ],
)
def test_a_bad_candidate_is_refused_before_the_log_is_read(candidate, message, log_file, monkeypatch):
    def no_reading(*_args, **_kwargs):
        raise AssertionError("the decision log was read before the candidate was checked")

    monkeypatch.setattr("ope.cli.read_jsonl", no_reading)
    monkeypatch.setattr("ope.cli.read_topic", no_reading)
    with pytest.raises(SystemExit, match=message):
        run(["--log", str(log_file), "--candidate", candidate, "--quiet"])
    with pytest.raises(SystemExit, match=message):
        run(["--bootstrap", "localhost:1", "--candidate", candidate, "--quiet"])


def test_a_log_of_sticky_decisions_only_is_explained_not_called_empty(tmp_path):
    lines = [
        {"kind": "exposure", "decision_id": f"d{i}", "action": "offer_10pct", "x": [1.0, 0.5], "placement": "home_hero",
         "ts": float(i), "mode": "exploit", "probability": 1.0, "eligible": ["offer_10pct", "offer_bundle"]}
        for i in range(30)
    ]
    log = tmp_path / "log.jsonl"
    log.write_bytes(b"\n".join(orjson.dumps(doc) for doc in lines))
    for candidate in ('{"kind": "uniform"}', '{"kind": "greedy_model"}'):  # a trained one splits the log first
        with pytest.raises(SystemExit, match="30 exposures were read") as err:
            run(["--log", str(log), "--candidate", candidate, "--quiet"])
        assert "stickiness" in str(err.value) and "empty" not in str(err.value)


@pytest.mark.parametrize(("n", "candidate", "needs"), [(1, "uniform", "at least 2"), (3, "greedy_model", "at least 4")])
def test_a_log_too_short_says_how_many_decisions_it_needs(n, candidate, needs, tmp_path):
    lines = [
        {"kind": "exposure", "decision_id": f"d{i}", "action": "a", "x": [1.0, 0.5], "placement": "p",
         "ts": float(i), "mode": "explore", "probability": 0.5, "eligible": ["a", "b"]}
        for i in range(n)
    ]
    log = tmp_path / "log.jsonl"
    log.write_bytes(b"\n".join(orjson.dumps(doc) for doc in lines))
    with pytest.raises(SystemExit, match=f"too short.*{needs} decisions") as err:
        run(["--log", str(log), "--candidate", f'{{"kind": "{candidate}"}}', "--quiet"])
    assert "cross-fitting with 2 folds needs" not in str(err.value)
