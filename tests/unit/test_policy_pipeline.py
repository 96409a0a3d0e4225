"""The composed decision policy for one request: every step, its mode, logged probability and trace."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import orjson
import pytest

from bandits.base import Choice
from bandits.linucb import LinUCB
from contracts.decisions import Mode
from policy.budgets import WorkerBudgets
from policy.catalogue import NO_ACTION, Action, Catalogue, Placement
from policy.contact import ContactPolicy
from policy.holdout import HoldoutConfig
from policy.levers import Lever, LeverBook, LeverKind
from policy.pipeline import PolicyContext, PolicyRequest, decide_action, decide_default
from policy.state import UserPolicyState
from policy.stickiness import StickinessSettings, StickyState

NOON = 1_780_012_800.0 + 12 * 3600  # 12:00 UTC
EPS = 0.1


def make_catalogue() -> Catalogue:
    placements = {
        "hero": Placement("hero", "web", NO_ACTION),
        "shero": Placement("shero", "web", NO_ACTION, StickinessSettings(600, 0.1, 2, None)),
        "news": Placement("news", "email", "digest"),
        "slot": Placement("slot", "ad", NO_ACTION),
    }
    actions = {
        "a": Action("a", "web", ("hero", "shero"), 10.0),
        "b": Action("b", "web", ("hero", "shero"), 20.0),
        "c": Action("c", "web", ("hero", "shero"), 30.0, segments=("vip",)),
        "d": Action("d", "web", ("hero", "shero"), 30.0, max_per_day=1),
        "digest": Action("digest", "email", ("news",), 5.0),
        "winback": Action("winback", "email", ("news",), 15.0),
        "cr1": Action("cr1", "ad", ("slot",), 10.0),
        "cr2": Action("cr2", "ad", ("slot",), 10.0),
    }
    contact = {
        "email": ContactPolicy(max_contacts=2, window_days=7, quiet_hours_utc=(22, 6)),
        "ad": ContactPolicy(max_per_action_per_day=2),
    }
    return Catalogue(placements, actions, contact)


class FakeBandit:
    """ε-greedy over fixed scores; ``pick`` forces its draw (an exploration when it is not the best);
    ``means``: mean estimates below the scores (a UCB bandit's θ·x), none by default."""

    def __init__(self, scores: dict[str, float], pick: str | None = None, means: dict | None = None) -> None:
        self.scores = scores
        self.pick = pick
        self.means = means
        self.asked: list[list[str]] = []

    def __call__(self, ids) -> Choice:
        ids = list(ids)
        self.asked.append(ids)
        scores = {a: self.scores.get(a, 0.0) for a in ids}
        greedy = max(ids, key=lambda a: scores[a])
        probs = {a: EPS / len(ids) + (1 - EPS if a == greedy else 0.0) for a in ids}
        pick = self.pick if self.pick in ids else greedy
        means = {a: self.means.get(a, 0.0) for a in ids} if self.means is not None else {}
        return Choice.from_maps(pick, probs[pick], greedy, scores, probs, means)


def context(*levers: Lever, holdout: HoldoutConfig | None = None) -> PolicyContext:
    book = LeverBook()
    for lv in levers:
        book.apply(lv)
    return PolicyContext(make_catalogue(), book, holdout, WorkerBudgets())


def lever(kind: LeverKind, action: str | None = None, **kw) -> Lever:
    return Lever(f"{kind.value}-{action}", kind, "ana", "test", NOON - 60, action, **kw)


SCORES = {"a": 0.2, "b": 0.5, "c": 0.9, "d": 0.1, "digest": 0.1, "winback": 0.3, "cr1": 0.2, "cr2": 0.1}
P_BEST_OF = {n: 1 - EPS + EPS / n for n in range(1, 6)}


@pytest.mark.parametrize(
    ("case", "request_kw", "ctx", "action", "mode", "p", "asked", "trace"),
    [
        (
            "best eligible",
            {},
            context(),
            "b",
            Mode.EXPLOIT,
            P_BEST_OF[3],
            ["a", "b", "d"],
            {"eligible": ["a", "b", "d"], "removed": {"c": "segment"}, "greedy": "b"},
        ),
        (
            "segment opens c",
            {"segment": "vip"},
            context(),
            "c",
            Mode.EXPLOIT,
            P_BEST_OF[4],
            ["a", "b", "c", "d"],
            {"eligible": ["a", "b", "c", "d"]},
        ),
        (
            "unknown placement",
            {"placement": "nowhere"},
            context(),
            NO_ACTION,
            Mode.FALLBACK,
            1.0,
            None,
            {"fallback": "unknown_placement"},
        ),
        (
            "kill switch",
            {},
            context(lever(LeverKind.KILL)),
            NO_ACTION,
            Mode.FALLBACK,
            1.0,
            None,
            {"fallback": "kill_switch", "levers": ["kill-None"]},
        ),
        (
            "kill switch sends the default email",
            {"placement": "news"},
            context(lever(LeverKind.KILL)),
            "digest",
            Mode.FALLBACK,
            1.0,
            None,
            {"fallback": "kill_switch"},
        ),
        (
            "quiet hours beat everything",
            {"placement": "news", "ts": NOON + 11 * 3600},
            context(lever(LeverKind.KILL)),
            NO_ACTION,
            Mode.SUPPRESSED,
            1.0,
            None,
            {"caps": ["quiet_hours"]},
        ),
        (
            "holdout control",
            {"placement": "news"},
            context(holdout=HoldoutConfig(1.0, "s")),
            "digest",
            Mode.HOLDOUT,
            1.0,
            None,
            {"holdout": "global"},
        ),
        (
            "holdout elsewhere",
            {},
            context(holdout=HoldoutConfig(1.0, "s", placements=("news",))),
            "b",
            Mode.EXPLOIT,
            P_BEST_OF[3],
            ["a", "b", "d"],
            {},
        ),
        ("pin", {}, context(lever(LeverKind.PIN, "a")), "a", Mode.PINNED, 1.0, None, {"pin": "pin-a"}),
        (
            "pin on an ineligible action is ignored",
            {},
            context(lever(LeverKind.PIN, "c")),
            "b",
            Mode.EXPLOIT,
            P_BEST_OF[3],
            ["a", "b", "d"],
            {"pin_ignored": "segment"},
        ),
        (
            "a ban beats a pin",
            {},
            context(lever(LeverKind.PIN, "b"), lever(LeverKind.BAN, "b")),
            "a",
            Mode.EXPLOIT,
            P_BEST_OF[2],
            ["a", "d"],
            {"pin_ignored": "ban", "removed": {"b": "ban", "c": "segment"}},
        ),
        (
            "user ban",
            {},
            context(lever(LeverKind.BAN, "b", user_id="u1")),
            "a",
            Mode.EXPLOIT,
            P_BEST_OF[2],
            ["a", "d"],
            {},
        ),
        (
            "another user's ban",
            {"user_id": "u2"},
            context(lever(LeverKind.BAN, "b", user_id="u1")),
            "b",
            Mode.EXPLOIT,
            P_BEST_OF[3],
            ["a", "b", "d"],
            {},
        ),
        (
            "boost changes the winner",
            {},
            context(lever(LeverKind.BOOST, "a", factor=3.0)),
            "a",
            Mode.EXPLOIT,
            EPS / 3 + P_BEST_OF[3],
            ["a", "b", "d"],
            {"greedy": "b"},
        ),
        (
            "nothing eligible",
            {"consent": False},
            context(),
            NO_ACTION,
            Mode.FALLBACK,
            1.0,
            None,
            {"fallback": "no_eligible_action", "eligible": []},
        ),
        (
            "no consent: every action needs it, the default too, so nothing is sent",
            {"placement": "news", "consent": False},
            context(),
            "none",
            Mode.FALLBACK,
            1.0,
            None,
            {"fallback": "no_eligible_action", "default_withheld": "consent"},
        ),
    ],
)
def test_one_request(case, request_kw, ctx, action, mode, p, asked, trace) -> None:
    bandit = FakeBandit(SCORES)
    request = PolicyRequest(**{"user_id": "u1", "placement": "hero", "ts": NOON, **request_kw})
    out = decide_action(request, UserPolicyState(), ctx, bandit)
    assert (out.action, out.mode) == (action, mode)
    assert out.probability == pytest.approx(p, abs=1e-6)
    assert bandit.asked == ([asked] if asked is not None else [])
    for key, value in trace.items():
        assert out.trace[key] == value, key
    assert (out.choice is not None) == (asked is not None)
    orjson.dumps(out.trace)  # the trace goes into the decision's JSON


def run(
    ctx: PolicyContext,
    bandit,
    state: UserPolicyState,
    ts: float,
    placement: str = "hero",
    user: str = "u1",
    **kw,
):
    out = decide_action(PolicyRequest(user, placement, ts, **kw), state, ctx, bandit)
    return out, out.state


def test_exploration_is_logged_with_the_bandits_probability() -> None:
    out, _ = run(context(), FakeBandit(SCORES, pick="a"), UserPolicyState(), NOON)
    assert (out.action, out.mode, out.probability) == ("a", Mode.EXPLORE, pytest.approx(EPS / 3))


def test_stickiness_keeps_the_incumbent_and_logs_it_as_sticky() -> None:
    ctx = context()
    first, state = run(ctx, FakeBandit(SCORES), UserPolicyState(), NOON, "shero")
    assert (first.action, first.mode, first.probability) == ("b", Mode.EXPLOIT, 1.0)
    assert state.sticky["shero"].action == "b"
    better_a = FakeBandit({**SCORES, "a": 0.9})
    kept, state2 = run(ctx, better_a, state, NOON + 60, "shero")
    assert (kept.action, kept.mode, kept.probability) == ("b", Mode.STICKY, 1.0)
    assert kept.trace["sticky"]["reason"] == "dwell" and kept.trace["sticky"]["challenger"] == "a"
    assert kept.choice is not None and kept.choice.action == "a"  # what the bandit wanted, for the record
    changed, state3 = run(ctx, better_a, state2, NOON + 600, "shero")
    assert (changed.action, changed.mode, changed.trace["changed_from"]) == ("a", Mode.EXPLOIT, "b")
    assert changed.probability == 1.0 and "mean_ev" in changed.trace["top"][0]
    assert state3.sticky["shero"].since == NOON + 600
    slightly_better_b = FakeBandit({**SCORES, "a": 0.9, "b": 0.95})
    held, _ = run(ctx, slightly_better_b, state3, NOON + 1200, "shero")
    assert (held.action, held.trace["sticky"]["reason"]) == ("a", "hysteresis")


# The bandit's scores are optimistic (UCB), its means are not. "b" is the incumbent since NOON.
UCB = {"a": 0.9, "b": 0.5, "d": 0.1}


@pytest.mark.parametrize(
    ("case", "incumbent", "bandit", "action", "mode", "reason"),
    [
        (
            "first decision: the best on the optimistic score, not the bandit's exploration",
            None,
            FakeBandit(UCB, pick="d", means={"a": 0.1, "b": 0.4, "d": 0.05}),
            "a",
            Mode.EXPLOIT,
            None,
        ),
        (
            "later: the challenger is the best on the mean, not on the score",
            "b",
            FakeBandit({**UCB, "d": 0.8}, means={"a": 0.6, "b": 0.2, "d": 0.7}),
            "d",
            Mode.EXPLOIT,
            None,
        ),
        (
            "an exploration never spends the change",
            "b",
            FakeBandit(UCB, pick="d", means={"a": 0.1, "b": 0.4, "d": 0.05}),
            "b",
            Mode.EXPLOIT,
            None,
        ),
        (
            "better only on the optimistic score: kept by hysteresis on the means",
            "b",
            FakeBandit(UCB, means={"a": 0.41, "b": 0.4, "d": 0.05}),
            "b",
            Mode.STICKY,
            "hysteresis",
        ),
        (
            "better on the mean but not surely: kept by the confidence rule",
            "b",
            FakeBandit({**UCB, "a": 1.2}, means={"a": 0.6, "b": 0.4, "d": 0.05}),
            "b",
            Mode.STICKY,
            "confidence",
        ),
        (
            "surely better: changes",
            "b",
            FakeBandit({**UCB, "a": 0.65}, means={"a": 0.6, "b": 0.4, "d": 0.05}),  # 0.6 - 3 × 0.05 > 0.4
            "a",
            Mode.EXPLOIT,
            None,
        ),
    ],
)
def test_sticky_placement_decides_on_means_and_never_explores(case, incumbent, bandit, action, mode, reason):
    state = UserPolicyState()
    if incumbent is not None:
        state.sticky["shero"] = StickyState(incumbent, NOON)
    out, after = run(context(), bandit, state, NOON + 3600, "shero")
    assert (out.action, out.mode, out.probability) == (action, mode, 1.0)
    assert (out.trace.get("sticky") or {}).get("reason") == reason
    assert after.sticky["shero"].action == action


def test_unlimited_placement_still_explores_with_the_bandits_probability() -> None:
    out, _ = run(context(), FakeBandit(UCB, pick="d", means={"a": 0.1, "b": 0.4}), UserPolicyState(), NOON)
    assert (out.action, out.mode, out.probability) == ("d", Mode.EXPLORE, pytest.approx(EPS / 3))


def test_forced_changes_count_and_the_default_shows_when_the_cap_is_spent() -> None:
    ctx = context()
    state = UserPolicyState()
    ts = NOON
    for scores in ({"a": 0.9}, {"b": 2.0}, {"a": 5.0}):  # first decision, then two changes: the cap
        _, state = run(ctx, FakeBandit({**SCORES, **scores}), state, ts, "shero")
        ts += 600
    capped, state = run(ctx, FakeBandit({**SCORES, "b": 20.0}), state, ts, "shero")
    assert (capped.action, capped.trace["sticky"]["reason"]) == ("a", "daily_cap")
    ban = Lever("ban-a", LeverKind.BAN, "ana", "broken link", ts, "a", placement="shero", expires=ts + 7200)
    ctx.levers.apply(ban)
    withdrawn, after = run(ctx, FakeBandit({**SCORES, "b": 20.0}), state, ts + 1, "shero")
    assert (withdrawn.action, withdrawn.mode, withdrawn.probability) == (NO_ACTION, Mode.FALLBACK, 1.0)
    assert withdrawn.trace["fallback"] == "incumbent_unavailable"
    assert withdrawn.trace["withdrawn"]["incumbent"] == "a" and withdrawn.trace["withdrawn"]["reason"] == "daily_cap"
    assert after.sticky["shero"] == state.sticky["shero"]  # still the incumbent, no change recorded
    back, _ = run(ctx, FakeBandit({**SCORES, "b": 20.0}), after, ts + 7300, "shero")  # ban over: a again
    assert (back.action, back.trace["sticky"]["reason"]) == ("a", "daily_cap")
    # the day after, the ban again: now a change is allowed, forced, and it is counted
    day = ts + 86400
    ctx.levers.apply(Lever("ban-a2", LeverKind.BAN, "ana", "again", day, "a", placement="shero"))
    forced, later = run(ctx, FakeBandit({**SCORES, "b": 20.0}), after, day, "shero")
    assert (forced.action, forced.mode, forced.trace.get("forced")) == ("b", Mode.EXPLOIT, True)
    assert later.sticky["shero"].changes[-1] == day


def test_placement_budget_is_shared_by_users() -> None:
    ctx = context()
    ctx.catalogue.placements["hero"] = Placement("hero", "web", NO_ACTION, StickinessSettings(0, 0, None, 1))
    states = {}
    for user in ("u1", "u2"):
        _, states[user] = run(ctx, FakeBandit(SCORES), UserPolicyState(), NOON, user=user)
    want_a = FakeBandit({**SCORES, "a": 0.9})
    first, _ = run(ctx, want_a, states["u1"], NOON + 10, user="u1")
    second, _ = run(ctx, want_a, states["u2"], NOON + 20, user="u2")
    assert first.action == "a" and first.mode is Mode.EXPLOIT
    assert (second.action, second.trace["sticky"]["reason"]) == ("b", "placement_budget")
    third, _ = run(ctx, want_a, states["u2"], NOON + 3600, user="u2")  # next event-time hour
    assert third.action == "a"


def test_email_channel_cap_suppresses_and_names_the_cap() -> None:
    ctx = context()
    state = UserPolicyState()
    shown = []
    for day in range(4):
        out, state = run(ctx, FakeBandit(SCORES), state, NOON + day * 86400, placement="news")
        shown.append((out.action, out.mode))
    assert shown[:2] == [("winback", Mode.EXPLOIT)] * 2
    assert shown[2:] == [(NO_ACTION, Mode.SUPPRESSED)] * 2
    assert out.trace == {"caps": ["channel_cap"]}
    out, _ = run(ctx, FakeBandit(SCORES), state, NOON + 7 * 86400, placement="news")
    assert out.action == "winback"  # the first email left the 7-day window


def test_a_late_email_request_does_not_pass_the_channel_cap_the_history_forgot() -> None:
    # 2 emails per 7 days: day 0 and day 6 at noon, then day 20 (the history keeps only day 6 and day 20).
    # A request of day 6, 13:00 read afterwards (within the accepted lateness) used to count only the
    # remembered contacts (day 6's) and became a third email in the 7 days from day 0.
    ctx = context()
    state = UserPolicyState()
    for ts in (NOON, NOON + 6 * 86400, NOON + 20 * 86400):
        out, state = run(ctx, FakeBandit(SCORES), state, ts, placement="news")
        assert out.action == "winback"
        state = UserPolicyState.decode(state.encode()).after_click("email")  # stored and read back
    out, _ = run(ctx, FakeBandit(SCORES), state, NOON + 6 * 86400 + 3600, placement="news")
    assert (out.action, out.mode, out.trace) == (NO_ACTION, Mode.SUPPRESSED, {"caps": ["channel_cap"]})
    # late too, but a full week after day 6's noon: whatever the history forgot is outside its window
    out, _ = run(ctx, FakeBandit(SCORES), state, NOON + 13 * 86400 + 3600, placement="news")
    assert out.action == "winback"


def test_creative_daily_cap_removes_only_that_creative() -> None:
    ctx = context()
    state = UserPolicyState()
    seen = []
    for i in range(5):
        out, state = run(ctx, FakeBandit(SCORES), state, NOON + i * 60, placement="slot")
        seen.append(out.action)
    assert seen == ["cr1", "cr1", "cr2", "cr2", NO_ACTION]
    assert out.mode is Mode.FALLBACK and out.trace["removed"] == {
        "cr1": "action_daily_cap",
        "cr2": "action_daily_cap",
    }
    out, _ = run(ctx, FakeBandit(SCORES), state, NOON + 86400, placement="slot")
    assert out.action == "cr1"


def test_volume_cap_counts_across_users() -> None:
    ctx = context()
    want_d = FakeBandit({**SCORES, "d": 9.0})
    first, _ = run(ctx, want_d, UserPolicyState(), NOON, user="u1")
    second, _ = run(ctx, want_d, UserPolicyState(), NOON + 1, user="u2")
    assert first.action == "d" and second.action == "b"
    assert second.trace["removed"]["d"] == "volume_cap"


def test_inputs_are_not_changed() -> None:
    ctx = context()
    _, state = run(ctx, FakeBandit(SCORES), UserPolicyState(), NOON, placement="news")
    _, state = run(ctx, FakeBandit(SCORES), state, NOON, placement="hero")
    before = state.encode()
    run(ctx, FakeBandit({**SCORES, "a": 9.0}), state, NOON + 700)
    run(ctx, FakeBandit(SCORES), state, NOON + 1, placement="news")
    assert state.encode() == before


def test_with_a_real_bandit_every_outcome_is_well_formed() -> None:
    ctx = PolicyContext(make_catalogue(), holdout=HoldoutConfig(0.1, "s"))
    bandit = LinUCB(6, seed=4)
    rng = np.random.default_rng(4)
    states: dict[str, UserPolicyState] = {}
    modes = set()
    for i in range(800):
        user = f"u{rng.integers(30)}"
        x = rng.random(6)
        placement = ("hero", "news", "slot", "shero")[i % 4]
        out = decide_action(
            PolicyRequest(user, placement, NOON + 97.0 * i, segment="vip" if i % 2 else None),
            states.get(user, UserPolicyState()),
            ctx,
            lambda ids, x=x: bandit.select(x, ids),
        )
        states[user] = UserPolicyState.decode(out.state.encode())
        modes.add(out.mode)
        assert 0 < out.probability <= 1
        if out.mode in (Mode.EXPLORE, Mode.EXPLOIT):
            assert out.action in out.trace["eligible"]
            # a placement with stickiness decides deterministically; elsewhere every action keeps a share
            assert (out.probability == 1.0) == (placement == "shero" or len(out.trace["eligible"]) == 1)
            bandit.update(x, out.action, float(rng.random() < 0.1))
        else:
            assert out.probability == 1.0
    assert {Mode.EXPLOIT, Mode.STICKY, Mode.HOLDOUT, Mode.SUPPRESSED} <= modes


def test_the_lift_groups_hold_every_request_past_the_holdout_split() -> None:
    # The lift compares reward per decision between the groups. Control decisions count even when they show
    # "none"; treated decisions that showed "none" (nothing eligible) used to be left out, so the treated
    # group's mean was over its shown decisions only.
    bandit = FakeBandit(SCORES)

    def outcome(ctx: PolicyContext, **kw):  # noqa: ANN202
        request = PolicyRequest(**{"user_id": "u1", "placement": "hero", "ts": NOON, **kw})
        return decide_action(request, UserPolicyState(), ctx, bandit)

    treated, control = HoldoutConfig(0.0, "s"), HoldoutConfig(1.0, "s")
    assert outcome(context(holdout=treated)).grouped and outcome(context(holdout=control)).grouped
    nothing = outcome(context(holdout=treated), consent=False)
    assert (nothing.action, nothing.mode, nothing.grouped) == (NO_ACTION, Mode.FALLBACK, True)
    assert not outcome(context(), consent=False).grouped  # no holdout: no groups
    # levers act on the treated group only; a control user sees the default, with or without a kill switch
    # (a kill-switch decision of a control user used to count as treated in the lift)
    killed = outcome(context(lever(LeverKind.KILL), holdout=treated))
    assert (killed.mode, killed.grouped, killed.trace["fallback"]) == (Mode.FALLBACK, True, "kill_switch")
    kept_out = outcome(context(lever(LeverKind.KILL), holdout=control))
    assert (kept_out.mode, kept_out.grouped, kept_out.trace.get("fallback")) == (Mode.HOLDOUT, True, None)


def ad_catalogue_with_a_default() -> Catalogue:
    catalogue = make_catalogue()
    catalogue.placements["slot"] = Placement("slot", "ad", "cr1")
    return catalogue


def test_a_default_shown_by_a_fallback_keeps_to_its_daily_cap() -> None:
    # "cr2" banned, "cr1" the default: once cr1 reaches its 2 a day, nothing is eligible and the fallback
    # used to show the default anyway (4 impressions of cr1 in one day)
    ctx = PolicyContext(ad_catalogue_with_a_default(), LeverBook(), None, WorkerBudgets())
    ctx.levers.apply(lever(LeverKind.BAN, "cr2"))
    state, shown = UserPolicyState(), []
    for i in range(4):
        out = decide_action(PolicyRequest("u1", "slot", NOON + 60 * i), state, ctx, FakeBandit(SCORES))
        state = out.state
        shown.append((out.action, out.trace.get("fallback"), out.trace.get("default_withheld")))
    assert [a for a, _, _ in shown] == ["cr1", "cr1", "none", "none"]
    assert shown[2:] == [("none", "no_eligible_action", "action_daily_cap")] * 2


@pytest.mark.parametrize("way", ["kill switch", "nothing eligible", "holdout"])
def test_a_banned_default_is_shown_to_nobody(way: str) -> None:
    levers = [lever(LeverKind.BAN, "digest")]
    if way == "kill switch":
        levers.append(lever(LeverKind.KILL))
    if way == "nothing eligible":
        levers.append(lever(LeverKind.BAN, "winback"))
    holdout = HoldoutConfig(share=1.0, salt="s") if way == "holdout" else None
    out = decide_action(PolicyRequest("u1", "news", NOON), UserPolicyState(), context(*levers, holdout=holdout),
                        FakeBandit(SCORES))
    assert out.action == "none" and out.trace["default_withheld"] == "ban"
    assert out.mode is (Mode.HOLDOUT if way == "holdout" else Mode.FALLBACK)
    assert not out.state.contacts  # nothing shown, no contact counted


def test_requests_outside_the_holdout_placements_are_in_neither_lift_group() -> None:
    # CADENCE_HOLDOUT_PLACEMENTS=news: a control user gets the treated decisions on "hero". Those requests
    # used to count as treated, so control users' rewards elsewhere made a false lift (+0.05 with none).
    bandit = FakeBandit(SCORES)
    for share in (0.0, 1.0):  # treated and control users alike
        ctx = context(holdout=HoldoutConfig(share, "s", placements=("news",)))
        elsewhere = decide_action(PolicyRequest("u1", "hero", NOON), UserPolicyState(), ctx, bandit)
        inside = decide_action(PolicyRequest("u1", "news", NOON - 3 * 3600), UserPolicyState(), ctx, bandit)
        assert elsewhere.mode is not Mode.HOLDOUT and not elsewhere.grouped
        assert inside.grouped and (inside.mode is Mode.HOLDOUT) == (share == 1.0)


def test_contact_blocked_requests_count_in_the_lift_by_the_users_group() -> None:
    # A contact block comes before the holdout split. It stops treated users' requests after the engine's own
    # contacts (here: two ignored exposures), never those of control users whose default is "none"; leaving
    # blocked requests out of the lift dropped unrewarded treated requests only (lift overstated 3.7x).
    placements = {"hero": Placement("hero", "web", NO_ACTION)}
    actions = {"a": Action("a", "web", ("hero",), 10.0)}
    cat = Catalogue(placements, actions, {"web": ContactPolicy(suppress_after_ignored=2, suppress_days=7.0)})
    holdout = HoldoutConfig(0.3, "s")
    ctx = PolicyContext(cat, holdout=holdout, budgets=WorkerBudgets())
    counted: Counter[bool] = Counter()
    requests: Counter[bool] = Counter()
    modes: Counter[Mode] = Counter()
    for u in range(200):
        user, state = f"user-{u}", UserPolicyState()
        for j in range(6):
            out = decide_action(PolicyRequest(user, "hero", NOON + j * 3600), state, ctx, FakeBandit({"a": 1}))
            state = out.state
            requests[holdout.in_control(user)] += 1
            modes[out.mode] += 1
            if out.grouped:
                counted[out.control] += 1
                assert out.control == holdout.in_control(user)
    assert modes[Mode.SUPPRESSED] > 0 and modes[Mode.HOLDOUT] > 0
    assert counted == requests  # every request, of either group, in its group


def test_a_contact_blocked_control_request_is_in_the_control_group() -> None:
    # quiet hours block an email for both groups alike; the control user's request is the control group's
    late = NOON + 11 * 3600  # 23:00 UTC
    for share, control in ((0.0, False), (1.0, True)):
        ctx = context(holdout=HoldoutConfig(share, "s"))
        out = decide_action(PolicyRequest("u1", "news", late), UserPolicyState(), ctx, FakeBandit(SCORES))
        assert (out.action, out.mode, out.grouped, out.control) == (NO_ACTION, Mode.SUPPRESSED, True, control)
        assert ("holdout" in out.trace) == control


def test_a_default_outside_the_pipeline_is_a_contact_under_the_channel_rules() -> None:
    catalogue = make_catalogue()
    catalogue.actions["digest"] = dataclasses.replace(catalogue.actions["digest"], consent_needed=False, max_per_day=1)
    ctx = PolicyContext(catalogue, LeverBook(), HoldoutConfig(1.0, "s"), WorkerBudgets())
    state = UserPolicyState()
    out = decide_default(PolicyRequest("u1", "news", NOON, consent=False), state, ctx, "no_marketing_consent")
    assert (out.action, out.mode, out.trace, out.grouped) == ("digest", Mode.FALLBACK,
                                                              {"fallback": "no_marketing_consent"}, False)
    assert out.state.contacts["email"].contacts == [NOON] and not state.contacts  # recorded; input unchanged
    assert ctx.budgets.action_usage("digest", NOON)[0] == 1  # charged like any default shown
    night = decide_default(PolicyRequest("u1", "news", NOON + 11 * 3600, consent=False), out.state, ctx, "x")
    assert (night.action, night.mode) == (NO_ACTION, Mode.SUPPRESSED)
    assert night.trace == {"fallback": "x", "caps": ["quiet_hours"]}
    # no readable state: no contact to count (the one at noon is in the state not given), nothing recorded
    unread = decide_default(PolicyRequest("u1", "news", NOON + 60, consent=False), None, ctx, "erased_user")
    assert unread.action == "digest" and not unread.state.contacts
    # a default that needs consent: "none", whatever the hour (nothing to hold back)
    ctx = PolicyContext(make_catalogue())
    out = decide_default(PolicyRequest("u1", "news", NOON + 11 * 3600, consent=False), state, ctx, "x")
    assert (out.action, out.mode) == (NO_ACTION, Mode.FALLBACK)
    assert out.trace == {"fallback": "x", "default_withheld": "consent"}
