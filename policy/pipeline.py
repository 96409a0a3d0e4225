"""The decision policy for one request: eligibility, levers, holdout, bandit, arbitration, caps, stickiness.

``decide_action(request, state, context, select)`` is the one call the engine makes. Steps, in order;
the first that settles the request returns:

1. contact block   quiet hours, channel cap or ignored exposures  -> "none",  mode suppressed
                   (in the lift, by the user's group, like every later step: ``grouped``, ``control``)
2. holdout         the user is in the control group              -> default, mode holdout
3. kill switch     a kill lever                                   -> default, mode fallback
4. eligibility     catalogue filters, lever bans, per-action daily contact cap
5. pin             a pin lever whose action is still eligible     -> pinned,  mode pinned
6. nothing left                                                  -> default, mode fallback
7. bandit + arbitration: ``select(eligible)`` asks the bandit (the caller binds the context vector), then
   ``arbitrate`` ranks the candidates                                   mode explore / exploit
   (``rank`` alone where stickiness settles the candidate: it needs no pick from the bandit's draw)
   - no stickiness on the placement: the candidate is arbitration's pick, the bandit's exploration kept;
   - stickiness (any rule set): what is shown stays, so the candidate is deterministic and never a
     random exploration: the first decision takes the best on the optimistic score (for LinUCB the
     upper confidence bound: the one place where trying an uncertain action costs no change), a later
     decision the best on the bandit's mean estimate. Measured on the closed loop (README, stickiness):
     explorations that spend the day's one change, and changes judged on optimistic scores, cost most
     of the reward the limit took.
8. stickiness      keep the incumbent if a change is not allowed  -> incumbent, mode sticky
                   (hysteresis and the confidence rule compare mean evs); when the incumbent is no
                   longer eligible and no change is allowed       -> default, mode fallback
                                                                     (trace fallback incumbent_unavailable)

Logged probability: explore/exploit carry the probability of the candidate under bandit + arbitration;
on a placement with stickiness the candidate is a function of the bandit's statistics alone, so it logs
1.0 (off-policy estimates for such placements cannot come from their logs; the holdout measures lift).
Every other mode logs 1.0: the action was not drawn at random. Sticky decisions are marked so that
off-policy evaluation can leave them out, or count them honestly as p = 1 (they were deterministic given
the user's history); an estimator must never divide by the bandit's probability for them.

``decide_default(request, state, context, reason)`` is the decision for a request the pipeline does not
decide: a user without marketing consent (the default when it needs no consent, a service message), and
the engine's fallbacks without a readable state (the store away, an erased user). It shows the placement's
default under the same contact rules and records it, as far as a state is there to read and write.

Purity: the inputs are not changed; the new user state comes back in the outcome. The one side effect is
on ``context.budgets`` (the worker's in-memory counters), charged only for what is shown.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from bandits.base import Choice
from contracts.decisions import Mode
from policy.arbitration import ArbitrationConfig, Ranking, arbitrate, rank
from policy.budgets import WorkerBudgets
from policy.catalogue import NO_ACTION, Catalogue, Placement
from policy.contact import ChannelHistory, ContactCap, ContactPolicy, action_capped, channel_block, record_contact
from policy.holdout import HoldoutConfig
from policy.levers import LeverBook
from policy.state import UserPolicyState
from policy.stickiness import commit, judge, pin

Selector = Callable[[Sequence[str]], Choice]

# The modes as module constants: ``Mode.X`` on an enum class costs ~110 ns a lookup (timeit), a global ~10.
EXPLORE, EXPLOIT, STICKY, HOLDOUT = Mode.EXPLORE, Mode.EXPLOIT, Mode.STICKY, Mode.HOLDOUT
PINNED, FALLBACK, SUPPRESSED = Mode.PINNED, Mode.FALLBACK, Mode.SUPPRESSED
NO_EVS: Mapping[str, float] = MappingProxyType({})  # what judge gets when it compares no evs


@dataclass(slots=True)  # not frozen: made per request, and a frozen __init__ costs 3-4x; never changed
class PolicyRequest:
    user_id: str
    placement: str
    ts: float  # event time of the request
    segment: str | None = None
    consent: bool | None = None
    scores: Mapping[str, float] = field(default_factory=dict)  # model scores by name, e.g. propensity


@dataclass(slots=True)
class PolicyContext:
    """What one worker holds for every request: settings, levers, in-memory budgets."""

    catalogue: Catalogue
    levers: LeverBook = field(default_factory=LeverBook)
    holdout: HoldoutConfig | None = None
    budgets: WorkerBudgets = field(default_factory=WorkerBudgets)
    arbitration: ArbitrationConfig = ArbitrationConfig()


@dataclass(slots=True)
class PolicyOutcome:
    action: str
    mode: Mode
    probability: float
    trace: dict[str, Any]
    state: UserPolicyState  # store this back for the user
    choice: Choice | None = None  # the bandit's choice, when it was asked
    # the request is one of the lift's observations (a user past consent, on a placement the holdout covers),
    # whatever it shows, "none" and contact suppression included
    grouped: bool = False
    control: bool = False  # in the lift, the user is in the control group (else treated)


def decide_action(
    request: PolicyRequest, state: UserPolicyState, context: PolicyContext, select: Selector
) -> PolicyOutcome:
    cat, budgets, ts = context.catalogue, context.budgets, request.ts
    placement = cat.placements.get(request.placement)
    if placement is None:
        return PolicyOutcome(NO_ACTION, FALLBACK, 1.0, {"fallback": "unknown_placement"}, state.copy())
    # the default, unless this user may not see it (no consent for it, outside its dates): then "none"
    default, withheld = cat.fallback_action(placement.id, ts, request.consent)
    channel = placement.channel
    contact = cat.contact_policy(channel)
    new = state.copy()
    trace: dict[str, Any] = {}
    # Every outcome from here on is in the control or the treated group of the lift, on the placements the
    # holdout covers (elsewhere a control user gets the treated decisions, so counting those requests as
    # treated would credit the engine with the control users' rewards). A contact block counts too, in the
    # user's group: it stops treated users' requests after the engine's own contacts (ignored exposures, a
    # channel cap), so leaving them out would leave out treated requests the engine made unrewardable.
    holdout = context.holdout
    grouped = holdout is not None and holdout.covers(placement.id)
    # the holdout's scope when the user is in its control group here
    control_scope = holdout.scope if holdout is not None and holdout.in_control(request.user_id, placement.id) else None
    action, mode, p, choice, withheld = _settle(
        request, state, context, select, placement, default, withheld, contact, new, trace, control_scope
    )
    # the outcome; a shown action counts as a contact and against the action's daily budgets
    if withheld is not None and mode in (FALLBACK, HOLDOUT):
        trace["default_withheld"] = withheld
    if action != NO_ACTION:
        new.contacts[channel] = record_contact(contact, new.contacts.get(channel), action, ts)
        if action in cat.actions:
            budgets.record_action(action, ts, cat.actions[action].cost)
    return PolicyOutcome(action, mode, p, trace, new, choice, grouped, control_scope is not None)


def _settle(
    request: PolicyRequest,
    state: UserPolicyState,
    context: PolicyContext,
    select: Selector,
    placement: Placement,
    default: str,
    withheld: str | None,
    contact: ContactPolicy,
    new: UserPolicyState,
    trace: dict[str, Any],
    control_scope: str | None,
) -> tuple[str, Mode, float, Choice | None, str | None]:
    """Steps 1-8 of ``decide_action``: the action, its mode and probability, the bandit's choice (when it was
    asked) and why the default is withheld (``withheld``, or what ``_default_shown`` says); writes ``trace``
    and ``new.sticky``. (A function, not a ``finish`` closure in decide_action: that closure's ten cells
    cost ~0.3 µs a request.)"""
    cat, budgets, ts = context.catalogue, context.budgets, request.ts
    history = state.contacts.get(placement.channel)
    blocked: ContactCap | None = channel_block(contact, history, ts)
    if blocked is not None:
        trace["caps"] = [blocked.value]
        if control_scope is not None:
            trace["holdout"] = control_scope
        return NO_ACTION, SUPPRESSED, 1.0, None, withheld

    # Control users get the default, levers or not (a kill switch would show them the same); for treated
    # users the levers are part of what the engine does, so the lift measures them too.
    # A ban holds the default back from both groups (a broken or withdrawn action is shown to nobody).
    levers = context.levers.active(ts, request.user_id, request.segment, placement.id)
    if control_scope is not None:
        trace["holdout"] = control_scope
        shown, withheld = _default_shown(default, withheld, levers.bans, contact, history, ts)
        return shown, HOLDOUT, 1.0, None, withheld

    if levers.lever_ids:
        trace["levers"] = list(levers.lever_ids)
    if levers.kill is not None:
        trace["fallback"] = "kill_switch"
        shown, withheld = _default_shown(default, withheld, levers.bans, contact, history, ts)
        return shown, FALLBACK, 1.0, None, withheld

    eligible = cat.eligible(placement.id, ts, request.segment, request.consent, request.scores, budgets)
    # the two scans run only where a ban or a per-action cap can drop something (most requests have neither)
    drop = {a: "ban" for a in eligible if a in levers.bans} if levers.bans else {}
    if contact.max_per_action_per_day is not None:
        drop.update(
            {
                a: ContactCap.ACTION_DAILY_CAP.value
                for a in eligible
                if a not in drop and action_capped(contact, history, a, ts)
            }
        )
    if drop:
        eligible = eligible.without(drop)
    eligible_ids = list(eligible)  # the trace's list, and what the bandit chooses from (it only reads it)
    trace["eligible"] = eligible_ids
    if eligible.removed:
        trace["removed"] = eligible.removed

    if levers.pin is not None:
        if levers.pin in eligible:
            new.sticky[placement.id] = pin(state.sticky.get(placement.id), levers.pin, ts)
            trace["pin"] = levers.pin_lever
            return levers.pin, PINNED, 1.0, None, withheld
        trace["pin_ignored"] = eligible.removed.get(levers.pin, "not_in_placement")
    if not eligible:
        trace["fallback"] = "no_eligible_action"
        shown, withheld = _default_shown(default, withheld, levers.bans, contact, history, ts)
        return shown, FALLBACK, 1.0, None, withheld

    settings = placement.stickiness
    incumbent = state.sticky.get(placement.id)
    budget_available = budgets.change_available(placement.id, ts, settings.max_changes_per_hour)
    choice = select(eligible_ids)
    trace["greedy"] = choice.greedy
    ranking: Ranking
    if settings.limited:
        # What is shown here stays: no random exploration and a deterministic candidate (p = 1). The
        # first decision takes the optimistic (UCB) best, the one place where trying an action costs no
        # change; a change goes to the best on the mean, and only when it is surely better (rule 3).
        # So the ranking is all it needs, not arbitration's candidate for the bandit's draw.
        ranking = rank(choice, eligible_ids, cat, levers.boosts, context.arbitration)
        candidate = ranking.settled(on_mean=incumbent is not None, salt=request.user_id)
        probability, explored = 1.0, False
        trace["top"] = [t.to_trace(with_mean=True) for t in ranking.ranked[: context.arbitration.top_k]]
    else:
        ranking = arb = arbitrate(choice, eligible_ids, cat, levers.boosts, context.arbitration)
        candidate, probability, explored = arb.action, arb.probability, arb.explored
        trace["top"] = [t.to_trace() for t in arb.ranked[: context.arbitration.top_k]]
    # judge compares evs (mean evs where stickiness settles) only when the candidate challenges an incumbent:
    # the lookups are made for those requests alone (983 of 6,667 bandit requests in 8,000 bench events)
    ev: Mapping[str, float] = NO_EVS
    lower = None
    if incumbent is not None and candidate != incumbent.action:
        ev = ranking.ev_on_lookup(on_mean=settings.limited)
        if settings.limited and settings.confidence > 0:
            lower = ranking.lower_ev_on_lookup(settings.confidence)

    verdict = judge(
        incumbent,
        candidate,
        ts,
        settings,
        eligible=eligible,
        ev=ev,
        explored=explored,
        budget_available=budget_available,
        lower=lower,
    )
    new.sticky[placement.id] = commit(incumbent, verdict, ts, settings)
    if verdict.changed:
        budgets.take_change(placement.id, ts)
        trace["changed_from"] = incumbent.action if incumbent else None
        if verdict.forced:
            trace["forced"] = True
    if verdict.withdrawn:
        reason = verdict.kept.value if verdict.kept else ""
        trace["fallback"] = "incumbent_unavailable"
        trace["withdrawn"] = {"incumbent": verdict.action, "reason": reason, **(verdict.detail or {})}
        shown, withheld = _default_shown(default, withheld, levers.bans, contact, history, ts)
        return shown, FALLBACK, 1.0, choice, withheld
    if verdict.kept is not None:
        trace["sticky"] = {"reason": verdict.kept.value, "challenger": verdict.challenger, **(verdict.detail or {})}
        return verdict.action, STICKY, 1.0, choice, withheld
    return verdict.action, EXPLORE if explored else EXPLOIT, probability, choice, withheld


def _default_shown(default: str, withheld: str | None, bans: frozenset[str], contact: ContactPolicy,
                   history: ChannelHistory | None, ts: float) -> tuple[str, str | None]:
    """The default a fallback or the holdout shows, and the reason it is withheld for the trace: "none" when a
    ban lever or the action's daily cap for this user holds it back (as they remove it from the eligible set),
    else the default with ``withheld`` as ``fallback_action`` gave it. (A plain function: a closure would be
    made on every request, and few need it.)"""
    if default in bans:
        return NO_ACTION, "ban"
    if default != NO_ACTION and action_capped(contact, history, default, ts):
        return NO_ACTION, ContactCap.ACTION_DAILY_CAP.value
    return default, withheld


def decide_default(
    request: PolicyRequest, state: UserPolicyState | None, context: PolicyContext, reason: str
) -> PolicyOutcome:
    """A request the pipeline does not decide (``reason``: no marketing consent, the store away, an erased
    user): the placement's default, or "none" where ``request.consent``, its dates or a ban lever withhold it,
    mode fallback with ``trace["fallback"] = reason``. No holdout (in neither lift group), other lever, bandit
    or stickiness.

    A default that would be shown is a contact like any other: the channel's contact rules apply as in
    ``decide_action``. A contact block (quiet hours, channel cap, ignored exposures) gives "none", mode
    suppressed, ``trace["caps"]`` naming the rule (``trace["fallback"]`` stays: why the pipeline did not
    decide); the action's daily cap withholds the default (``default_withheld: "action_daily_cap"``). A
    default shown is recorded in the returned state and charged to the budgets.

    ``state`` None: the user's state cannot be read (the store is away, or the user was erased and nothing
    may be stored for them). Only the rules that need no history can apply then: quiet hours and a cap of 0;
    the channel cap, the per-action daily cap and the ignored-exposure pause count past contacts that cannot
    be read, and the contact cannot be recorded (the returned state is a fresh one, not to be stored).
    """
    cat, ts = context.catalogue, request.ts
    new = state.copy() if state is not None else UserPolicyState()
    trace: dict[str, Any] = {"fallback": reason}
    default, withheld = cat.fallback_action(request.placement, ts, request.consent)
    placement = cat.placements.get(request.placement)
    if default != NO_ACTION and placement is not None:
        channel = placement.channel
        contact = cat.contact_policy(channel)
        history = state.contacts.get(channel) if state is not None else None
        blocked = channel_block(contact, history, ts)
        if blocked is not None:
            trace["caps"] = [blocked.value]
            return PolicyOutcome(NO_ACTION, SUPPRESSED, 1.0, trace, new)
        if default in context.levers.active(ts, request.user_id, request.segment, placement.id).bans:
            default, withheld = NO_ACTION, "ban"
        elif action_capped(contact, history, default, ts):
            default, withheld = NO_ACTION, ContactCap.ACTION_DAILY_CAP.value
        else:
            if state is not None:
                new.contacts[channel] = record_contact(contact, history, default, ts)
            if default in cat.actions:
                context.budgets.record_action(default, ts, cat.actions[default].cost)
    if withheld is not None:
        trace["default_withheld"] = withheld
    return PolicyOutcome(default, FALLBACK, 1.0, trace, new)
