"""Levers: pin, boost, ban, kill switch, expiry, audit and JSON round trip."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from policy.levers import NO_LEVERS, Lever, LeverBook, LeverError, LeverKind

T0 = 1_780_000_000.0


def lever(lever_id: str, kind: LeverKind, action: str | None = "offer_a", **kw) -> Lever:
    return Lever(
        lever_id,
        kind,
        who=kw.pop("who", "ana"),
        why=kw.pop("why", "test"),
        ts=kw.pop("ts", T0),
        action=action,
        **kw,
    )


def book(*levers: Lever) -> LeverBook:
    b = LeverBook()
    for lv in levers:
        b.apply(lv)
    return b


@pytest.mark.parametrize(
    ("case", "levers", "request_", "expect"),
    [
        ("nothing", [], ("u1", "vip", "hero"), {"pin": None, "kill": None, "boosts": {}, "bans": set()}),
        ("pin for everyone", [lever("p", LeverKind.PIN)], ("u1", None, "hero"), {"pin": "offer_a"}),
        (
            "pin for a segment, other segment",
            [lever("p", LeverKind.PIN, segment="vip")],
            ("u1", "new", "hero"),
            {"pin": None},
        ),
        (
            "user pin beats segment pin",
            [
                lever("s", LeverKind.PIN, "offer_s", segment="vip"),
                lever("u", LeverKind.PIN, "offer_u", user_id="u1", ts=T0 - 10),
            ],
            ("u1", "vip", "hero"),
            {"pin": "offer_u", "pin_lever": "u"},
        ),
        (
            "latest of equal pins",
            [lever("p1", LeverKind.PIN, "x", ts=T0 - 5), lever("p2", LeverKind.PIN, "y")],
            ("u1", None, "hero"),
            {"pin": "y"},
        ),
        (
            "placement scoped",
            [lever("p", LeverKind.PIN, placement="side")],
            ("u1", None, "hero"),
            {"pin": None},
        ),
        (
            "boosts multiply",
            [lever("b1", LeverKind.BOOST, factor=2.0), lever("b2", LeverKind.BOOST, factor=1.5)],
            ("u1", None, "hero"),
            {"boosts": {"offer_a": 3.0}},
        ),
        (
            # each within range, but 103 of 1000x would overflow to inf (and a NaN expected value)
            "boosts multiply within the range",
            [lever(f"b{i}", LeverKind.BOOST, factor=1000.0) for i in range(103)]
            + [lever(f"s{i}", LeverKind.BOOST, "offer_b", factor=0.001) for i in range(2)],
            ("u1", None, "hero"),
            {"boosts": {"offer_a": 1000.0, "offer_b": 0.001}},
        ),
        (
            "bans add up",
            [lever("x", LeverKind.BAN), lever("y", LeverKind.BAN, "offer_b", user_id="u1")],
            ("u1", None, "hero"),
            {"bans": {"offer_a", "offer_b"}},
        ),
        ("kill switch", [lever("k", LeverKind.KILL, None)], ("u9", None, "any"), {"kill": "k"}),
        ("not yet active", [lever("p", LeverKind.PIN, ts=T0 + 1)], ("u1", None, "hero"), {"pin": None}),
        (
            "expired",
            [lever("p", LeverKind.PIN, expires=T0 + 10)],
            ("u1", None, "hero", T0 + 10),
            {"pin": None},
        ),
        (
            "before expiry",
            [lever("p", LeverKind.PIN, expires=T0 + 10)],
            ("u1", None, "hero", T0 + 9.9),
            {"pin": "offer_a"},
        ),
    ],
)
def test_active(case, levers, request_, expect) -> None:
    user, segment, placement, *at = request_
    active = book(*levers).active(at[0] if at else T0, user, segment, placement)
    for key, value in expect.items():
        got = getattr(active, key)
        assert (set(got) if isinstance(got, frozenset) else got) == value, key


def test_no_levers_is_the_shared_empty_answer() -> None:
    assert LeverBook().active(T0, "u", None, "p") is NO_LEVERS


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lever("", LeverKind.PIN), "lever_id must be a non-empty string"),
        (lever("x", LeverKind.PIN, who=""), "'who' and 'why' are required"),
        (lever("x", LeverKind.BAN, why=""), "'who' and 'why' are required"),
        (lever("x", LeverKind.PIN, None), "a pin lever needs an 'action'"),
        (lever("x", LeverKind.PIN, user_id="u", segment="s"), "target a 'user_id' or a 'segment', not both"),
        (lever("x", LeverKind.BOOST, factor=0.0), "boost 'factor' must be a number > 0"),
        (lever("x", LeverKind.BOOST, factor=float("nan")), "boost 'factor' must be a number > 0"),
        (lever("x", LeverKind.PIN, expires=T0), "'expires' .* must be after 'ts'"),
        (lever("x", LeverKind.PIN, ts="yesterday"), "'ts' must be event time in epoch seconds"),
        # NaN compares false with everything, and orjson stores it as null: a lever that never expires
        (lever("x", LeverKind.BOOST, factor=2.0, expires=float("nan")), "'expires' must be a finite"),
        (lever("x", LeverKind.BAN, expires=float("inf")), "'expires' must be a finite"),
        (lever("x", LeverKind.PIN, ts=float("nan")), "'ts' must be event time in epoch seconds"),
        (lever("x", LeverKind.PIN, ts=None, set_at=float("nan")), "'set_at' must be the wall-clock time"),
    ],
)
def test_bad_levers_are_refused(bad: Lever, message: str) -> None:
    with pytest.raises(LeverError, match=message):
        LeverBook().apply(bad)


def test_every_change_is_audited() -> None:
    b = book(lever("p", LeverKind.PIN), lever("p", LeverKind.PIN, "offer_b", who="bo", why="swap", ts=T0 + 5))
    b.revoke("p", "cy", "campaign over", T0 + 9)
    assert [(r.change, r.who, r.why, r.ts) for r in b.pending_audit] == [
        ("apply", "ana", "test", T0),
        ("replace", "bo", "swap", T0 + 5),
        ("revoke", "cy", "campaign over", T0 + 9),
    ]
    assert b.pending_audit[1].lever["action"] == "offer_b"
    assert b.levers == []
    with pytest.raises(LeverError, match="no lever 'p'"):
        b.revoke("p", "cy", "again", T0 + 10)
    with pytest.raises(LeverError, match="revoking needs 'who' and 'why'"):
        b.revoke("p", "", "", T0 + 10)


def test_prune_drops_expired_levers_but_keeps_the_audit() -> None:
    b = book(lever("a", LeverKind.BAN, expires=T0 + 10), lever("b", LeverKind.BAN))
    assert b.prune(T0 + 10) == ["a"]
    assert [lv.lever_id for lv in b.levers] == ["b"] and len(b.pending_audit) == 2


def test_json_round_trip() -> None:
    b = book(
        lever("k", LeverKind.KILL, None, placement="hero"),
        lever("b", LeverKind.BOOST, factor=1.3, segment="vip", expires=T0 + 60),
    )
    b.revoke("k", "ana", "fixed", T0 + 1)
    back = LeverBook.from_json(b.to_json())
    assert back.levers == b.levers and back.pending_audit == []  # the audit is the store's list, not the book's
    assert back.active(T0 + 2, "u", "vip", "hero").boosts == {"offer_a": 1.3}


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b'{"levers": [{"kind": "pin"}], "audit": []}',
        b'{"levers": [{"lever_id": "x", "kind": "zap", "who": "a", "why": "b", "ts": 1}], "audit": []}',
        b'{"audit": []}',
    ],
)
def test_damaged_json_is_refused(raw: bytes) -> None:
    with pytest.raises(LeverError):
        LeverBook.from_json(raw)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lever("k", LeverKind.KILL, None, placement="home-hero"),
         r"unknown placement 'home-hero'; known placements: display_slot, home_hero, newsletter, product_sidebar"),
        (lever("b", LeverKind.BAN, "offer_10pc"), r"unknown action 'offer_10pc'; known actions: .*offer_10pct"),
        (lever("p", LeverKind.PIN, "offer_clearance", placement="home_hero"),
         r"action 'offer_clearance' is not on placement 'home_hero' \(its actions: offer_free_shipping, .*\); "
         r"'offer_clearance' is on: product_sidebar"),
        # stored, then matched nobody
        (lever("p", LeverKind.PIN, "offer_10pct", user_id=""), r"'user_id' is empty and would match nobody"),
        (lever("b", LeverKind.BAN, "offer_10pct", segment=""), r"'segment' is empty and would match nobody"),
        (lever("k", LeverKind.KILL, None, placement=""), r"'placement' is empty and would match nobody"),
        # 1e308 made expected values infinite, and the ad placement's bid reference with them, for good
        (lever("x", LeverKind.BOOST, "offer_10pct", factor=1e308), r"boost 'factor' must be between 0.001 and 1000"),
        (lever("x", LeverKind.BOOST, "offer_10pct", factor=1e-9), r"boost 'factor' must be between 0.001 and 1000"),
    ],
)
def test_levers_naming_what_the_catalogue_does_not_have_are_refused(bad: Lever, message: str) -> None:
    # a typo used to be accepted and then matched nothing (a kill switch that kills nothing)
    from cadence.settings import DEFAULT_CATALOGUE
    from policy.catalogue import load_catalogue

    with pytest.raises(LeverError, match=message):
        bad.check_targets(load_catalogue(DEFAULT_CATALOGUE))


def test_levers_on_the_catalogue_pass_the_target_check() -> None:
    from cadence.settings import DEFAULT_CATALOGUE
    from policy.catalogue import load_catalogue

    catalogue = load_catalogue(DEFAULT_CATALOGUE)
    for ok in (lever("k", LeverKind.KILL, None), lever("k", LeverKind.KILL, None, placement="newsletter"),
               lever("p", LeverKind.PIN, "offer_clearance"), lever("b", LeverKind.BAN, "offer_10pct",
                                                                     placement="home_hero")):
        ok.check_targets(catalogue)


def test_a_lever_set_now_applies_to_every_event_processed_from_then_on_whatever_its_time() -> None:
    # ts None: set by a person "now". Stamping it with the watermark (the latest event time seen) or with the
    # wall clock left out-of-order events and a backlog behind the wall clock without the kill switch.
    set_at = T0 + 3600  # wall clock when it was set: ahead of the events still to process
    kill = lever("k", LeverKind.KILL, None, ts=None, set_at=set_at, expires=set_at + 7200)
    b = book(kill)
    for at in (T0 - 365 * 86400, T0, set_at, set_at + 7199):
        assert b.active(at, "u1", None, "hero").kill == "k", at
    assert b.active(set_at + 7200, "u1", None, "hero").kill is None  # expiry is event time, as for every lever
    assert [(r.change, r.ts) for r in b.pending_audit] == [("apply", set_at)]  # the audit: when it was set (wall clock)
    back = LeverBook.from_json(b.to_json())
    assert back.levers == [kill] and "ts" not in back.levers[0].to_dict()
    assert b.prune(set_at + 7200) == ["k"]


def test_of_equal_pins_the_latest_set_wins_with_or_without_an_event_time() -> None:
    earlier = lever("p1", LeverKind.PIN, "x", ts=T0 - 60)
    now = lever("p2", LeverKind.PIN, "y", ts=None, set_at=T0)
    assert book(earlier, now).active(T0, "u1", None, "hero").pin == "y"
    later = lever("p3", LeverKind.PIN, "z", ts=T0 + 5)
    assert book(earlier, now, later).active(T0 + 5, "u1", None, "hero").pin == "z"


def test_a_pin_set_later_wins_even_with_an_earlier_event_time() -> None:
    # ordered by ts else set_at, a pin set at 11:00 for events from 09:00 lost to one set at 10:00 without ts
    at_ten = lever("p1", LeverKind.PIN, "x", ts=None, set_at=T0 + 3600)
    at_eleven = lever("p2", LeverKind.PIN, "y", ts=T0, set_at=T0 + 7200)
    assert book(at_ten, at_eleven).active(T0 + 7200, "u1", None, "hero").pin == "y"


@pytest.mark.parametrize("hours", [0.0, -5.0])
def test_a_lever_set_now_must_expire_after_it_is_set(hours: float) -> None:
    # it would still kill or ban late and backlog events until then
    with pytest.raises(LeverError, match="must be after the time it is set"):
        lever("k", LeverKind.KILL, None, ts=None, set_at=T0, expires=T0 + hours * 3600).check()


def test_the_book_json_holds_only_the_active_levers_however_many_changes() -> None:
    # the audit used to ride in the book every worker reloads on any change: 1,000 changes made it grow 1,000-fold
    b = book(lever("keep", LeverKind.BAN))
    size = len(b.to_json())
    for i in range(500):
        b.apply(lever(f"p{i}", LeverKind.PIN, user_id=f"u{i}"))
        b.revoke(f"p{i}", "crm", "sync", T0 + i)
    assert len(b.to_json()) == size
    assert orjson.loads(b.to_json()) == {"levers": [lever("keep", LeverKind.BAN).to_dict()], "audit": []}
    records = b.take_audit()  # the changes' records, in order, for the store to append to the audit list
    assert [(r.change, r.lever_id) for r in records[:4]] == [("apply", "keep"), ("apply", "p0"), ("revoke", "p0"),
                                                            ("apply", "p1")]
    assert len(records) == 1001 and b.take_audit() == [] and b.pending_audit == []


def test_a_book_of_the_previous_release_loads_with_its_audit_to_move() -> None:
    old = book(lever("a", LeverKind.BAN), lever("b", LeverKind.PIN, user_id="u1"))
    old.revoke("a", "bo", "done", T0 + 1)
    records = old.pending_audit
    legacy = orjson.dumps({"levers": [lv.to_dict() for lv in old.levers],
                           "audit": [dataclasses.asdict(r) for r in records]})
    back = LeverBook.from_json(legacy)
    assert back.levers == old.levers and back.pending_audit == records  # in order, nothing lost
    back.apply(lever("c", LeverKind.BAN))
    assert [r.lever_id for r in back.take_audit()] == ["a", "b", "a", "c"]  # the old ones first
    assert orjson.loads(back.to_json())["audit"] == []
    assert LeverBook.from_json(b'{"levers": []}').levers == []  # no "audit" at all: a book of a later release


def test_forget_user_asks_the_store_to_rewrite_the_audit_list() -> None:
    b = book(lever("p", LeverKind.PIN, user_id="u1"), lever("q", LeverKind.PIN, user_id="u2"))
    assert b.forget_user("u1", "erased:0123") == 1
    assert b.take_redactions() == [("u1", "erased:0123")] and b.take_redactions() == []
    # records not stored yet are rewritten in the book itself
    assert [r.lever.get("user_id") for r in b.pending_audit] == ["erased:0123", "u2"]


@pytest.mark.parametrize("big_first", [True, False])
def test_a_product_of_boosts_that_overflows_midway_does_not_depend_on_the_levers_order(big_first: bool) -> None:
    big = [lever(f"b{i}", LeverKind.BOOST, factor=1000.0) for i in range(110)]
    small = [lever(f"s{i}", LeverKind.BOOST, factor=0.001) for i in range(110)]
    # multiplied in order, the big ones first overflowed to inf (then 1000), the small ones first underflowed to 0
    active = book(*(big + small if big_first else small + big)).active(T0, "u1", None, "hero")
    assert active.boosts["offer_a"] == pytest.approx(1.0)
