"""The decision for one request: consent, the policy pipeline around the bandit, the pending record.

Pure apart from the bandit's own random generator and the worker's in-memory budgets (inside
``PolicyContext``). The business rules (eligibility, levers, holdout, arbitration, contact caps and the
rate limit on changes) live in ``policy/``; this module binds them to the engine's records.

Model scores (learning/live_models.py), when a published scorer exists, are computed from the same context
vector as the bandit's: ``churn_risk``, ``value`` and ``propensity:<action>`` for every action of the
placement go to the policy as ``PolicyRequest.scores`` (so catalogue ``min_score`` rules can use them), and
a compact copy lands in the decision's trace as ``trace["scores"]``: the model version, the propensity of
the action shown, the churn risk and the value, rounded to 4 digits. A batch's requests get their scores'
affine maps from one matrix product (``BatchContexts``), the same numbers as scoring each alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bandits.base import Choice, Policy, Prepared
from contracts.decisions import Decision, LearningSample, Mode, decision_id_for, user_bucket
from contracts.events import Event
from engine.pending import PendingDecision
from features.context import build_context, context_values
from features.state import UserState
from learning.live_models import SCORE_DIGITS, LiveModels, LiveScorer
from policy.catalogue import NO_ACTION
from policy.pipeline import PolicyContext, PolicyRequest, decide_action, decide_default
from policy.state import PolicyStateError, UserPolicyState

POLICY_STATE_FIELD = "pol"
_MODE_VALUES = {mode: mode.value for mode in Mode}  # Enum.value is a Python-level property: ~200 ns a read
_F64, _F16 = np.dtype(np.float64), np.dtype(np.float16)


@dataclass(slots=True)
class Decided:
    decision: Decision
    pending: PendingDecision | None  # None: nothing shown outside the lift, or a contact block (nothing to credit)
    policy_state: str | None = None  # the user's new policy state (stickiness, contact history)
    expected_value: float = 0.0  # arbitration's expected value of the action shown (bid signals)
    x: np.ndarray | None = None  # the context vector the decision was made with (None for fallbacks)
    # no pending decision (a contact block), but one of the lift's observations: its exposure sample is read by
    # the lift alone (action "none": no policy or model learns it, no reward is credited to it). Leaving these
    # out would flatter the engine: both groups' requests must all count, whatever they show
    lift_only: bool = False
    lift_control: bool = False  # the user is in the holdout's control group (the lift-only sample's group)


def _decision(event: Event, action: str, probability: float, mode: Mode, policy: Policy,
              trace: dict[str, Any]) -> Decision:
    placement = event.placement or ""
    # positional: a class's __init__ called with keywords gets them in a new dict (about 0.3 us per call)
    return Decision(
        decision_id_for(event.event_id, placement),  # decision_id
        event.event_id,  # request_event_id
        event.user_id,
        event.ts,
        event.channel,
        placement,
        action,
        # a float 1.0 is its own round(x, 6), which costs ~0.5 us (91 % of the bench's decisions have p = 1.0)
        probability if probability == 1.0 and type(probability) is float else round(probability, 6),
        mode,
        policy.name,
        policy.version,
        trace,
    )


def fallback(event: Event, ctx: PolicyContext, policy: Policy, reason: str, consent: bool | None) -> Decided:
    """The decision for a request whose user's state cannot be read: Redis is away
    (``feature_store_unavailable``) or the user was erased (``erased_user``; nothing may be stored for them).
    The placement's default (or "none" where ``consent``, its dates or a ban lever withhold it), marked as a
    fallback with its reason. Quiet hours and a cap of 0 hold it back as for anyone; the channel cap, the
    per-action daily cap and the ignored-exposure pause cannot apply: they count the user's past contacts,
    which are in the unreadable state, and this contact cannot be recorded there either (no state is
    written: the store is away, or the key of an erased user must not come back)."""
    outcome = decide_default(PolicyRequest(event.user_id, event.placement or "", event.ts, event.segment, consent),
                             None, ctx, reason)
    return Decided(_decision(event, outcome.action, 1.0, outcome.mode, policy, outcome.trace), None)


def without_consent(event: Event, state: UserState | None, ctx: PolicyContext, policy: Policy,
                    states: PolicyStates | None = None) -> Decided:
    """The decision for a user who refused marketing consent: the placement's default when it needs no
    consent (a service message), else "none" (``trace.fallback = "no_marketing_consent"``). A default shown
    is a contact: held to the channel's contact rules (quiet hours, channel cap, ignored exposures: mode
    suppressed with ``trace.caps``; the action's daily cap) and recorded in the user's policy state, like
    every contact. It stays out of the lift (in neither group) and of learning (no pending decision, no
    context vector)."""
    placement = event.placement or ""
    segment = event.segment or (state.segment if state is not None else None)
    before = states.of(state) if states is not None else policy_state_of(state)
    outcome = decide_default(PolicyRequest(event.user_id, placement, event.ts, segment, False), before, ctx,
                             "no_marketing_consent")
    decision = _decision(event, outcome.action, 1.0, outcome.mode, policy, outcome.trace)
    if outcome.action == NO_ACTION:  # nothing shown, nothing recorded: the state stays as stored
        return Decided(decision, None)
    text = states.encode(outcome.state) if states is not None else outcome.state.encode_text()
    return Decided(decision, None, text)


def replayed_without_consent(event: Event, state: UserState | None, ctx: PolicyContext, policy: Policy,
                             states: PolicyStates | None = None) -> Decided | None:
    """A redelivered request of a user who refused consent, whose default was shown the first time: that
    decision again (same id and action, ``trace.replayed``), recording nothing. Its contact is in the user's
    channel history at the request's ts (stored rounded up to the second); such decisions keep no pending
    record, so without this the duplicate was decided again and its contact recorded (and charged) once per
    redelivery: three redeliveries filled a 3-emails-a-week cap. None: not such a request, or its contact is
    not recorded (it showed "none", or its state was never written): decide it again."""
    if consent_of(event, state) is not False or state is None:
        return None
    placement = ctx.catalogue.placements.get(event.placement or "")
    if placement is None:
        return None
    history = (states.of(state) if states is not None else policy_state_of(state)).contacts.get(placement.channel)
    if history is None or math.ceil(event.ts) not in history.contacts:  # kept to the second (record_contact)
        return None
    action, _ = ctx.catalogue.fallback_action(placement.id, event.ts, False)
    if action == NO_ACTION:
        return None
    trace = {"fallback": "no_marketing_consent", "replayed": True}
    return Decided(_decision(event, action, 1.0, Mode.FALLBACK, policy, trace), None)


class PolicyStates:
    """Decoded policy states by their stored text, so a returning user's state is not decoded again.

    Safe to share because policy states are never changed in place (``decide_action`` and ``after_click``
    return new ones). Bounded in two generations of ``capacity / 2`` texts: when the newer one is full,
    the older one is dropped and the newer one takes its place. So a state stored in the last
    ``capacity / 2`` decisions is always found, and at most ``capacity`` are held. On the bench's stream
    this finds 78.5 % of returning users' states; one dict of 50,000 emptied when full found 73.1 %, with as
    many held on average and half again as many at the peak (``python -m load_tests.policy_state_cache``).
    """

    def __init__(self, capacity: int = 33_000) -> None:
        if capacity < 2:
            raise ValueError(f"capacity must be at least 2 policy states, got {capacity}")
        self.capacity = capacity
        self._newer: dict[str, UserPolicyState] = {}
        self._older: dict[str, UserPolicyState] = {}

    def __len__(self) -> int:
        return len(self._newer) + len(self._older)

    def of(self, state: UserState | None) -> UserPolicyState:
        return self.decoded(state.fields.get(POLICY_STATE_FIELD) if state else None)

    def decoded(self, raw: str | None) -> UserPolicyState:
        """The state stored as ``raw`` (None: no state yet; a damaged one: a fresh state)."""
        if raw is None:
            return UserPolicyState()
        found = self._newer.get(raw)
        if found is None:
            found = self._older.get(raw)
        return found if found is not None else decode_policy_state(raw)

    def encode(self, policy_state: UserPolicyState) -> str:
        """The text to store for ``policy_state``, remembered with it."""
        text = policy_state.encode_text()
        if len(self._newer) >= self.capacity // 2:
            self._older, self._newer = self._newer, {}
        self._newer[text] = policy_state
        return text


def policy_state_of(state: UserState | None) -> UserPolicyState:
    return decode_policy_state(state.fields.get(POLICY_STATE_FIELD) if state else None)


def decode_policy_state(raw: str | None) -> UserPolicyState:
    try:
        return UserPolicyState.decode(raw.encode() if raw is not None else None)
    except PolicyStateError:
        return UserPolicyState()  # a damaged state must not block decisions: start the user afresh


def trace_scores(scores: dict[str, float], action: str, version: int) -> dict[str, float | int]:
    """The compact copy of the scores a decision's trace carries."""
    out: dict[str, float | int] = {"model_version": version}
    p = scores.get(f"propensity:{action}")
    if p is not None:
        out["propensity"] = round(p, SCORE_DIGITS)
    for key in ("churn_risk", "value"):
        if key in scores:
            out[key] = round(scores[key], SCORE_DIGITS)
    return out


def consent_of(event: Event, state: UserState | None) -> bool | None:
    """The request's consent: the event's own flag, else the user's stored one (None when unknown)."""
    return event.consent if event.consent is not None else (state.consent if state else None)


def consent_unread(event: Event) -> bool:
    """The consent of a request whose user's stored flag cannot be read: Redis is away, or the profile was
    erased (a stored refusal went with it). Only the event's own "true" lets a default that needs consent
    through; otherwise it counts as refused, so a stored refusal holds when it cannot be checked."""
    return event.consent is True


@dataclass(slots=True)
class BatchContexts:
    """The context vectors of a batch's requests, scored by the policy in one step (``Policy.prepare``).

    The policy's statistics do not change while a batch is decided (learning comes from the learning
    topic between batches), so scoring every request against every arm at once gives the choices that
    scoring them one by one would give. ``row_of`` maps a request's position in the batch to its row.
    """

    row_of: dict[int, int]
    prepared: Prepared | None
    scorer: LiveScorer | None = None  # the model scorer ``logits`` come from
    logits: list[list[float]] | None = None  # per row: the scorer's affine maps (``CompiledScorer.logits``)
    # the prepared contexts in float16, row after row, as the pending decisions store them: one conversion
    # per batch instead of one per decision (``PendingDecision.x16``)
    contexts16: bytes = b""

    @classmethod
    def build(cls, policy: Policy, requests: list[tuple[int, Event, UserState | None]],
              scorer: LiveScorer | None = None) -> BatchContexts:
        """Contexts of the requests that will need the bandit (``(position, event, state)``; consent not
        refused); with ``scorer``, their model scores' affine maps too, in one product."""
        row_of: dict[int, int] = {}
        values: list[float] = []  # the rows one after the other: np.fromiter reads them in half np.array's time
        width = -1
        for position, event, state in requests:
            if consent_of(event, state) is not False:
                row_of[position] = len(row_of)
                x = context_values(event, state)
                if len(x) != width:
                    if width >= 0:
                        raise ValueError(f"contexts of {width} and {len(x)} values in one batch")
                    width = len(x)
                values += x
        if not row_of:
            return cls(row_of, None)
        contexts = np.fromiter(values, _F64, len(values)).reshape(len(row_of), width)
        logits = None
        if scorer is not None and scorer.ready:
            try:
                logits = scorer.compiled.logits(contexts)
            except Exception:  # scored one by one in decide(), which decides without scores if it fails again
                logits = None
        prepared = policy.prepare(contexts)
        return cls(row_of, prepared, scorer, logits, prepared.xs.astype(_F16).tobytes())

    def logits_of(self, position: int, scorer: LiveScorer) -> list[float] | None:
        """The request's row of ``logits`` if they come from ``scorer`` (else None: score it alone)."""
        row = self.row_of.get(position)
        if row is None or self.logits is None or scorer is not self.scorer:
            return None
        return self.logits[row]

    def selector(self, policy: Policy, position: int) \
            -> tuple[np.ndarray, bytes, Callable[[Sequence[str]], Choice]] | None:
        """The context of the request at ``position``, its float16 bytes (``contexts16``'s row) and its select
        function (None if not in the batch)."""
        row = self.row_of.get(position)
        prepared = self.prepared
        if row is None or prepared is None:
            return None
        width = 2 * prepared.xs.shape[1]  # float16 bytes per row
        return (prepared.xs[row], self.contexts16[row * width : (row + 1) * width],
                lambda eligible: policy.select_row(prepared, row, eligible))


def decide(event: Event, state: UserState | None, ctx: PolicyContext, policy: Policy,
           models: LiveModels | None = None, states: PolicyStates | None = None,
           batch: BatchContexts | None = None, position: int = -1) -> Decided:
    """The decision for ``event``; with ``batch`` the context and bandit scores come from the batch's
    (``position`` is the event's place in it)."""
    consent = consent_of(event, state)
    if consent is False:
        return without_consent(event, state, ctx, policy, states)
    found = batch.selector(policy, position) if batch is not None else None
    x16: bytes | None = None  # the context in float16 (PendingDecision.x16) when the batch has it
    if found is None:
        x = build_context(event, state)
        select: Callable[[Sequence[str]], Choice] = lambda eligible: policy.select(x, eligible)  # noqa: E731
    else:
        x, x16, select = found
    segment = event.segment or (state.segment if state else None)
    placement = event.placement or ""
    scorer = models.scorer if models is not None else None
    scores: dict[str, float] = {}
    if models is not None and scorer is not None:
        actions = ctx.catalogue.placement_actions(placement)
        z = batch.logits_of(position, scorer) if batch is not None else None
        scores = models.scores(scorer, x, actions, z)  # {} if the scorer fails: decided without scores
    outcome = decide_action(
        PolicyRequest(event.user_id, placement, event.ts, segment, consent, scores),
        states.of(state) if states is not None else policy_state_of(state),
        ctx,
        select,
    )
    if scores and scorer is not None:
        outcome.trace["scores"] = trace_scores(scores, outcome.action, scorer.version)
    decision = _decision(event, outcome.action, outcome.probability, outcome.mode, policy, outcome.trace)
    ev = 0.0
    top = outcome.trace.get("top") or []
    if top and top[0].get("action") == outcome.action:
        ev = float(top[0].get("ev", 0.0))
    pending = None
    if outcome.action in ctx.catalogue.actions or (outcome.grouped and outcome.mode is not Mode.SUPPRESSED):
        # Everything shown is learned (the bandit's reward model does not need the action to have been
        # drawn at random); the mode and probability travel along so evaluation can tell them apart.
        # A lift decision that shows "none" is kept too, in both groups alike, so a conversion that follows
        # it is credited to it (for the lift alone) in the treated group as in the control group: before,
        # only control's "none" decisions were kept, and an A/A test (kill switch: both groups see the same
        # "none") read a lift of -100 % from organic conversions. Contact blocks stay lift-only in both groups.
        pending = PendingDecision(  # positional, as in _decision
            decision.decision_id,
            decision.placement,
            outcome.action,
            outcome.probability,
            event.ts,
            policy.version,
            # x: a batch's row is float64 already (Policy.prepare); positional dtype, numpy parses keywords slowly
            x if found is not None else np.asarray(x, _F64),
            [],  # credited
            _MODE_VALUES[outcome.mode],
            x16,
        )
    text = states.encode(outcome.state) if states is not None else outcome.state.encode_text()
    # positional: lift_only, lift_control
    return Decided(decision, pending, text, ev, x, pending is None and outcome.grouped, outcome.control)


def lift_only_exposure(decision: Decision, x: np.ndarray, control: bool) -> LearningSample:
    """The exposure sample of a lift-only decision: action "none", so the learner gives it to the lift alone
    (no policy, model or off-policy estimate learns from it), and no pending decision, so no reward is ever
    credited to it. Its mode is "holdout" for a control user (the lift's control group, whatever stopped the
    request, e.g. a contact block), else the decision's own."""
    mode = Mode.HOLDOUT.value if control else decision.mode.value
    return LearningSample(kind="exposure", decision_id=decision.decision_id, action=NO_ACTION, x=x,
                          placement=decision.placement, ts=decision.ts, mode=mode,
                          user_bucket=user_bucket(decision.user_id))


def is_learnable(action: str) -> bool:
    return action != NO_ACTION
