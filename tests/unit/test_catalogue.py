"""Catalogue: loading, rules, eligibility filters, and errors that name the file, line and field."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from cadence.settings import DEFAULT_CATALOGUE
from policy.budgets import WorkerBudgets
from policy.catalogue import NO_ACTION, CatalogueError, Eligibility, load_catalogue
from policy.contact import ContactPolicy
from policy.stickiness import StickinessSettings
from policy.toml_lines import SourceLines

BASE = """\
[[placement]]
id = "hero"
channel = "web"

[[placement]]
id = "news"
channel = "email"
default_action = "digest"

[[action]]
id = "a1"
channel = "web"
placements = ["hero"]
value = 10.0

[[action]]
id = "digest"
channel = "email"
placements = ["news"]
value = 5.0
"""


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalogue.toml"
    path.write_text(text)
    return path


# -- the default catalogue -------------------------------------------------------------------------
ORIGINAL_VALUES = {  # the action ids and values the engine started with; extensions must keep them
    "offer_free_shipping": 12.0,
    "offer_10pct": 18.0,
    "offer_bundle": 30.0,
    "offer_loyalty_points": 10.0,
    "offer_premium_trial": 40.0,
    "offer_clearance": 8.0,
    "email_digest": 6.0,
    "email_winback": 15.0,
    "email_new_arrivals": 10.0,
    "creative_lifestyle": 14.0,
    "creative_discount": 11.0,
    "creative_product": 16.0,
}


def test_default_catalogue_keeps_its_placements_actions_and_values() -> None:
    cat = load_catalogue(DEFAULT_CATALOGUE)
    assert set(cat.placements) == {"home_hero", "product_sidebar", "newsletter", "display_slot"}
    assert {a: x.value for a, x in cat.actions.items()} == ORIGINAL_VALUES
    assert cat.default_action("newsletter") == "email_digest"
    assert cat.default_action("home_hero") == NO_ACTION
    assert cat.value_scale == 40.0
    # The static view (placement only) still lists every action of the placement, as before.
    assert set(cat.eligible("product_sidebar")) == {
        "offer_free_shipping",
        "offer_10pct",
        "offer_loyalty_points",
        "offer_premium_trial",
        "offer_clearance",
    }
    assert cat.eligible("nowhere") == []


def test_default_catalogue_settings_are_loaded() -> None:
    cat = load_catalogue(DEFAULT_CATALOGUE)
    assert cat.stickiness("home_hero").min_dwell_s > 0
    assert cat.stickiness("home_hero").max_changes_per_day is not None
    assert cat.contact_policy("email").max_contacts is not None
    assert cat.contact_policy("nowhere") == ContactPolicy()


# -- rules and eligibility --------------------------------------------------------------------------
RULES = """\
[[placement]]
id = "hero"
channel = "web"
default_action = "plain"

[placement.stickiness]
min_dwell_s = 600
hysteresis = 0.1
max_changes_per_day = 3
max_changes_per_hour = 100

[contact.email]
max_contacts = 2
window_days = 7
quiet_hours_utc = [21, 7]

[[action]]
id = "always"
channel = "web"
placements = ["hero"]
value = 1.0
consent_needed = false

[[action]]
id = "spring"
channel = "web"
placements = ["hero"]
value = 2.0
start = "2026-03-01"
end = 2026-06-01T00:00:00Z

[[action]]
id = "vip_only"
channel = "web"
placements = ["hero"]
value = 3.0
segments = ["vip", "loyal"]

[[action]]
id = "likely"
channel = "web"
placements = ["hero"]
value = 4.0
min_score = { score = "propensity", min = 0.3 }

[[action]]
id = "plain"
channel = "web"
placements = ["hero"]
value = 5.0
cost = 0.4
max_per_day = 2
budget_per_day = 1.0
"""
SPRING = ts("2026-04-01T12:00:00")
ALL = ["always", "spring", "vip_only", "likely", "plain"]


@pytest.mark.parametrize("text", ["2026-06-01t00:00:00z", "2026-06-01T00:00:00z", "2026-06-01 00:00:00+00:00"])
def test_times_in_every_rfc_3339_spelling_are_read(tmp_path: Path, text: str) -> None:
    # RFC 3339 allows a lowercase 't' and 'z'; the catalogue used to refuse them as "not an ISO 8601 date or time"
    cat = load_catalogue(write(tmp_path, RULES.replace("end = 2026-06-01T00:00:00Z", f'end = "{text}"')))
    assert cat.actions["spring"].end == ts("2026-06-01T00:00:00")


def test_rules_are_parsed(tmp_path: Path) -> None:
    cat = load_catalogue(write(tmp_path, RULES))
    assert cat.stickiness("hero") == StickinessSettings(600.0, 0.1, 3, 100)
    assert cat.contact["email"] == ContactPolicy(max_contacts=2, window_days=7, quiet_hours_utc=(21, 7))
    spring = cat.actions["spring"]
    assert (spring.start, spring.end) == (ts("2026-03-01T00:00:00"), ts("2026-06-01T00:00:00"))
    assert cat.actions["always"].consent_needed is False and cat.actions["plain"].consent_needed is True
    assert cat.actions["likely"].min_score is not None and cat.actions["likely"].min_score.min == 0.3
    assert (cat.actions["plain"].cost, cat.actions["plain"].max_per_day) == (0.4, 2)


@pytest.mark.parametrize(
    ("kwargs", "eligible", "removed"),
    [
        ({}, ["always", "spring", "plain"], {"vip_only": "segment", "likely": "score"}),
        (
            {"ts": SPRING, "segment": "vip", "scores": {"propensity": 0.3}},
            ALL,
            {},
        ),
        (
            {"ts": ts("2026-06-01T00:00:00"), "segment": "loyal", "scores": {"propensity": 0.9}},
            ["always", "vip_only", "likely", "plain"],
            {"spring": "dates"},
        ),
        (
            {"ts": ts("2026-02-28T23:59:59"), "segment": "vip", "scores": {"propensity": 0.9}},
            ["always", "vip_only", "likely", "plain"],
            {"spring": "dates"},
        ),
        (
            {"ts": SPRING, "segment": "casual", "scores": {"propensity": 0.29}},
            ["always", "spring", "plain"],
            {"vip_only": "segment", "likely": "score"},
        ),
        (
            {"ts": SPRING, "segment": "vip", "scores": {"churn": 0.9}},
            ["always", "spring", "vip_only", "plain"],
            {"likely": "score"},
        ),
        (
            {"ts": SPRING, "segment": "vip", "consent": False, "scores": {"propensity": 0.5}},
            ["always"],
            {"spring": "consent", "vip_only": "consent", "likely": "consent", "plain": "consent"},
        ),
        ({"ts": SPRING, "segment": "vip", "consent": True, "scores": {"propensity": 0.5}}, ALL, {}),
    ],
)
def test_eligibility_filters(
    tmp_path: Path, kwargs: dict, eligible: list[str], removed: dict[str, str]
) -> None:
    cat = load_catalogue(write(tmp_path, RULES))
    result = cat.eligible("hero", **kwargs)
    assert list(result) == eligible
    assert result.removed == removed


def test_a_fallback_shows_the_default_only_where_consent_and_its_dates_allow(tmp_path: Path) -> None:
    dated = RULES.replace('default_action = "plain"', 'default_action = "spring"')
    cat = load_catalogue(write(tmp_path, dated))
    assert cat.fallback_action("hero", SPRING, consent=True) == ("spring", None)
    assert cat.fallback_action("hero", SPRING, consent=None) == ("spring", None)  # unknown: like eligibility
    assert cat.fallback_action("hero", SPRING, consent=False) == (NO_ACTION, "consent")
    assert cat.fallback_action("hero", ts("2026-06-01T00:00:00"), consent=True) == (NO_ACTION, "dates")
    assert cat.fallback_action("nowhere", SPRING) == (NO_ACTION, None)
    shipped = load_catalogue(DEFAULT_CATALOGUE)  # the newsletter's default digest needs consent
    assert shipped.fallback_action("newsletter", SPRING, consent=False) == (NO_ACTION, "consent")
    assert shipped.fallback_action("newsletter", SPRING, consent=True) == ("email_digest", None)


def test_volume_cap_and_budget_use_worker_counters(tmp_path: Path) -> None:
    cat = load_catalogue(write(tmp_path, RULES))
    usage = WorkerBudgets()
    ask = {"ts": SPRING, "segment": "vip", "scores": {"propensity": 1.0}, "usage": usage}
    assert "plain" in cat.eligible("hero", **ask)
    usage.record_action("plain", SPRING, 0.4)
    usage.record_action("plain", SPRING, 0.4)
    assert cat.eligible("hero", **ask).removed == {"plain": "volume_cap"}
    assert "plain" in cat.eligible("hero", **{**ask, "ts": SPRING + 86400})  # next UTC day


def test_budget_runs_out_before_the_volume_cap(tmp_path: Path) -> None:
    cat = load_catalogue(write(tmp_path, RULES.replace("max_per_day = 2", "max_per_day = 10")))
    usage = WorkerBudgets()
    for _ in range(2):  # 0.8 spent; one more (0.4) would pass 1.0
        usage.record_action("plain", SPRING, 0.4)
    assert cat.eligible("hero", SPRING, "vip", None, {"propensity": 1}, usage).removed == {"plain": "budget"}


def test_eligibility_is_a_sequence_with_a_trace() -> None:
    e = Eligibility(["a", "b", "c"], {"d": "dates"})
    assert len(e) == 3 and e[1] == "b" and e[1:] == ["b", "c"] and "c" in e and "d" not in e
    assert e == ["a", "b", "c"] and e != ["a", "b"]
    smaller = e.without({"b": "ban", "d": "ban", "zz": "ban"})
    assert list(smaller) == ["a", "c"]
    assert smaller.removed == {"d": "dates", "b": "ban"}  # the first reason stays
    assert list(e) == ["a", "b", "c"]  # unchanged


# -- errors name the file, the line and the field ------------------------------------------------
BAD = [
    (
        "action field below zero",
        BASE + '[[action]]\nid = "x"\nchannel = "web"\nvalue = 1\ncost = -1  # <-\n',
        "cost",
        "must be a number >= 0",
    ),
    (
        "unknown action field",
        BASE + '[[action]]\nid = "x"\nchannel = "web"\nvalue = 1\ncolour = "red"  # <-\n',
        "colour",
        "is not a known field",
    ),
    (
        "missing value points at the entry",
        BASE + '[[action]]  # <-\nid = "x"\nchannel = "web"\n',
        "value",
        "is required",
    ),
    (
        "naive start time",
        BASE + '[[action]]\nid = "x"\nchannel = "web"\nvalue = 1\nstart = "2026-01-01T10:00:00"  # <-\n',
        "start",
        "no UTC offset",
    ),
    (
        "unparseable date",
        BASE + '[[action]]\nid = "x"\nchannel = "web"\nvalue = 1\nend = "next tuesday"  # <-\n',
        "end",
        "not an ISO 8601",
    ),
    (
        "end before start",
        BASE + '[[action]]\nid = "x"\nchannel = "web"\nvalue = 1\nstart = "2026-02-01"\n'
        'end = "2026-01-01"  # <-\n',
        "end",
        "must be after 'start'",
    ),
    (
        "min_score in an inline table",
        BASE + '[[action]]\nid = "x"\nchannel = "web"\nvalue = 1\n'
        'min_score = { score = "propensity", min = "high" }  # <-\n',
        "min_score.min",
        "must be a number",
    ),
    (
        "min_score with a wrong shape",
        BASE + '[[action]]\nid = "x"\nchannel = "web"\nvalue = 1\nmin_score = 0.3  # <-\n',
        "min_score",
        "must be a table",
    ),
    (
        "segments not strings",
        BASE + '[[action]]\nid = "x"\nchannel = "web"\nvalue = 1\nsegments = [1, 2]  # <-\n',
        "segments",
        "list of non-empty strings",
    ),
    (
        "consent_needed not a bool",
        BASE + '[[action]]\nid = "x"\nchannel = "web"\nvalue = 1\nconsent_needed = "yes"  # <-\n',
        "consent_needed",
        "true or false",
    ),
    (
        "volume cap not whole",
        BASE + '[[action]]\nid = "x"\nchannel = "web"\nvalue = 1\nmax_per_day = 1.5  # <-\n',
        "max_per_day",
        "whole number",
    ),
    (
        "unknown placement",
        BASE + '[[action]]\nid = "x"\nchannel = "web"\nvalue = 1\nplacements = ["nope"]  # <-\n',
        "placements",
        "unknown placement 'nope'",
    ),
    (
        "channel mismatch",
        BASE + '[[action]]\nid = "x"\nchannel = "web"\nvalue = 1\nplacements = ["news"]  # <-\n',
        "placements",
        "is a email placement",
    ),
    ("repeated id", BASE + '[[action]]\nid = "a1"  # <-\nchannel = "web"\nvalue = 1\n', "id", "repeats"),
    (
        "reserved id",
        BASE + '[[action]]\nid = "none"  # <-\nchannel = "web"\nvalue = 1\n',
        "id",
        "must not be 'none'",
    ),
    (
        "stickiness subtable",
        BASE.replace(
            'channel = "web"\n',
            'channel = "web"\n\n[placement.stickiness]\nmin_dwell_s = 60\nhysteresis = -0.1  # <-\n',
            1,
        ),
        "stickiness.hysteresis",
        "must be a number >= 0",
    ),
    (
        "stickiness dotted key",
        BASE.replace('channel = "web"\n', 'channel = "web"\nstickiness.max_changes_per_day = "3"  # <-\n', 1),
        "stickiness.max_changes_per_day",
        "whole number",
    ),
    (
        "stickiness unknown key",
        BASE.replace('channel = "web"\n', 'channel = "web"\nstickiness = { min_dwel_s = 5 }  # <-\n', 1),
        "stickiness.min_dwel_s",
        "is not a known field",
    ),
    (
        "placement channel",
        BASE.replace('channel = "email"', 'channel = "fax"  # <-'),
        "channel",
        "must be one of",
    ),
    (
        "default action of another placement",
        BASE.replace('default_action = "digest"', 'default_action = "a1"  # <-'),
        "default_action",
        "not an action of this placement",
    ),
    (
        "quiet hours",
        BASE + "\n[contact.email]\nmax_contacts = 2\nquiet_hours_utc = [7, 7]  # <-\n",
        "quiet_hours_utc",
        "two different whole UTC hours",
    ),
    (
        "confidence without a rule to apply to (it was accepted and did nothing)",
        BASE.replace('channel = "web"\n', 'channel = "web"\n\n[placement.stickiness]\nconfidence = 0.9  # <-\n', 1),
        "stickiness.confidence",
        "none is set here: add min_dwell_s",
    ),
    ("contact window zero", BASE + "\n[contact.email]\nwindow_days = 0  # <-\n", "window_days", "> 0"),
    ("contact channel", BASE + "\n[contact.fax]  # <-\nmax_contacts = 1\n", "fax", "is not a channel"),
    ("unknown top level", BASE + "\n[extras]  # <-\nx = 1\n", None, "unknown top-level entry 'extras'"),
]


@pytest.mark.parametrize(("case", "text", "field", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_catalogue_is_refused_with_file_line_and_field(
    tmp_path: Path, case: str, text: str, field: str | None, message: str
) -> None:
    path = write(tmp_path, text)
    line = next(n for n, s in enumerate(text.splitlines(), start=1) if s.rstrip().endswith("# <-"))
    expected = rf"^{path}, line {line}: .*" + (rf"field '{field}' " if field else "") + rf".*{message}"
    with pytest.raises(CatalogueError, match=expected):
        load_catalogue(path)


def test_error_in_a_later_entry_points_at_that_entry(tmp_path: Path) -> None:
    text = BASE + "".join(f'\n[[action]]\nid = "x{i}"\nchannel = "web"\nvalue = {i}\n' for i in range(3))
    text = text.replace("value = 2\n", "value = true\n")
    path = write(tmp_path, text)
    line = text.splitlines().index("value = true") + 1
    with pytest.raises(CatalogueError, match=rf"line {line}: \[\[action\]\] #5 \(id='x2'\): field 'value'"):
        load_catalogue(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [("[[action]\n", "not valid TOML"), ("", None)],
)
def test_file_level_problems(tmp_path: Path, text: str, message: str | None) -> None:
    path = write(tmp_path, text)
    if message is None:
        assert load_catalogue(path).placements == {}
    else:
        with pytest.raises(CatalogueError, match=rf"{path}: {message}"):
            load_catalogue(path)


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="no such catalogue file; set CADENCE_CATALOGUE"):
        load_catalogue(tmp_path / "missing.toml")


def test_source_lines_follow_tables_and_keys() -> None:
    lines = SourceLines(RULES)
    text = RULES.splitlines()
    assert lines.line_of(("placement", 0)) == text.index("[[placement]]") + 1
    assert lines.line_of(("placement", 0, "stickiness"), "hysteresis") == text.index("hysteresis = 0.1") + 1
    assert (
        lines.line_of(("contact", "email"), "quiet_hours_utc") == text.index("quiet_hours_utc = [21, 7]") + 1
    )
    assert (
        lines.line_of(("action", 3, "min_score"), "min")
        == text.index('min_score = { score = "propensity", min = 0.3 }') + 1
    )
    assert lines.line_of(("action", 4), "cost") == text.index("cost = 0.4") + 1
    assert lines.line_of(("action", 4), "nothing_here") == len(text) - text[::-1].index("[[action]]")
    assert lines.line_of(("unknown",), "x") == 1
