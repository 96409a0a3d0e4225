"""``cadence ope`` end to end on a small exported log: table, JSON, plot, and errors a person can act on."""

from __future__ import annotations

import argparse

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
