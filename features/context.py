"""The context vector a policy sees, and the customer-history features the River models read (pure).

``build_context(event, state)`` returns one vector laid out as ``CONTEXT_NAMES``, in two blocks:

- the policy block (``POLICY_NAMES``): bias, device and segment one-hots, the hour of the day as a point
  on the unit circle (sin, cos) and a weekend flag: who the customer is and when the request comes.
- the history block (``HISTORY_NAMES``): what the customer did, as log-counts on event time (page views
  in the last hour and day, clicks, conversions, revenue, email opens and ad clicks in the last week),
  the recency of the last page view and the tenure. ``history_features`` returns them by name.

The history block is multiplied by ``HISTORY_WEIGHT`` (1e-3) in the vector. It is there for the River
models (churn, value, propensity), which read the vector the engine stores with every decision, and it
is kept out of the bandit's way: LinUCB's ridge prior (λ = 1) on a feature scaled by w is a prior of
λ/w² = 10⁶ on its coefficient, so the bandit's estimates and confidence widths practically ignore it.
The bandit is better off without these features: they grow as a customer accumulates history (a
drifting input the reward does not depend on through them), and every feature a disjoint linear bandit
learns per action slows the learning of the ones that matter (load_tests/policy_tuning.py, share of the
oracle's reward at 40-50k decisions, worlds 1-4: 0.953 unweighted -> 0.965 weighted, better on each).
The River models standardise every input (``StandardScaler``), so for them the weight changes nothing.
In the float16 pending record a weighted value keeps 3 significant digits (subnormal only below
natural values of 0.06, where the absolute step is 6e-5). Everything is in [-1, ~3] before weighting.
"""

from __future__ import annotations

import math

import numpy as np

from contracts.events import DEVICES, Event
from features.state import UserState
from features.windows import estimate, parse_cell

SEGMENTS = ("new", "casual", "loyal", "vip")
POLICY_NAMES: tuple[str, ...] = (
    ("bias",)
    + tuple(f"device_{d}" for d in DEVICES)
    + tuple(f"segment_{s}" for s in SEGMENTS)
    + ("hour_sin", "hour_cos", "weekend")
)
HISTORY_NAMES: tuple[str, ...] = (
    "log_views_1h", "log_views_24h", "log_clicks_7d", "log_conversions_7d", "log_revenue_7d",
    "recency_web", "log_email_opens_7d", "log_ad_clicks_7d", "tenure",
)
CONTEXT_NAMES: tuple[str, ...] = POLICY_NAMES + HISTORY_NAMES
CONTEXT_DIM = len(CONTEXT_NAMES)
POLICY_DIM = len(POLICY_NAMES)
HISTORY_WEIGHT = 1e-3  # the history block's scale in the vector (see the module docstring)
HISTORY_SLICE = slice(POLICY_DIM, CONTEXT_DIM)

_DEVICE_AT = {d: 1 + i for i, d in enumerate(DEVICES)}
_SEGMENT_AT = {s: 1 + len(DEVICES) + i for i, s in enumerate(SEGMENTS)}
_HOUR_AT = POLICY_NAMES.index("hour_sin")
_DAY_S = 86400.0
_TENURE_FULL_S = 30 * _DAY_S
_WEEK = 7 * 86400
# the history block's windowed counters (field, window in seconds), in the block's order
_COUNTED = (("pvh", 3600), ("pvd", 86400), ("ckw", _WEEK), ("cvw", _WEEK), ("rvw", _WEEK), ("eow", _WEEK),
            ("acw", _WEEK))


# Counter cells parsed, by their text. A cell's text repeats across customers (their counters are in the same
# time bucket, and counts are small: 28 distinct texts among 12,328 cells read in 8,000 bench events), and
# parse_cell costs ~0.5 us against ~30 ns for a dict hit. Bounded: emptied when full. Tuples, never changed.
_CELLS: dict[str, tuple[int, float, float] | None] = {}
_CELLS_MAX = 4096


def _parsed(raw: str) -> tuple[int, float, float] | None:
    """``parse_cell(raw)``, remembered in ``_CELLS``."""
    if len(_CELLS) >= _CELLS_MAX:
        _CELLS.clear()
    cell = _CELLS[raw] = parse_cell(raw)
    return cell


def _history_values(t: float, state: UserState) -> list[float]:
    """The history block at event time ``t``, unweighted, in ``HISTORY_NAMES`` order (one pass, no dict)."""
    get, cells = state.fields.get, _CELLS
    # the windowed counts, in _COUNTED's order (one comprehension: a helper function per count cost a call each;
    # a cell's text is not empty here, so its parse is a tuple, never None: ``or`` parses only a new text)
    views_1h, views_24h, clicks, conversions, revenue, opens, ad_clicks = [
        math.log1p(estimate(cells.get(raw) or _parsed(raw), t, size)) if (raw := get(name)) else 0.0
        for name, size in _COUNTED
    ]
    last_pv = get("t:pv")
    first = get("fs")
    return [
        views_1h,
        views_24h / 2,
        clicks,
        conversions,
        revenue / 4,
        math.exp(-max(0.0, t - float(last_pv)) / 3600.0) if last_pv is not None else 0.0,
        opens,
        ad_clicks,
        min(1.0, (t - float(first)) / _TENURE_FULL_S) if first is not None else 0.0,
    ]


def history_features(event: Event, state: UserState | None) -> dict[str, float]:
    """The history block by name, unweighted; every name of ``HISTORY_NAMES`` (0 for an unknown user)."""
    if state is None or not state.exists:
        return dict.fromkeys(HISTORY_NAMES, 0.0)
    return dict(zip(HISTORY_NAMES, _history_values(event.ts, state), strict=True))


def build_context(event: Event, state: UserState | None) -> np.ndarray:
    """The ``CONTEXT_DIM`` vector laid out as ``CONTEXT_NAMES`` (history block weighted by HISTORY_WEIGHT)."""
    return np.array(context_values(event, state))


def context_values(event: Event, state: UserState | None) -> list[float]:
    """``build_context`` as a list (a batch's lists become one matrix in one numpy call)."""
    x = [0.0] * CONTEXT_DIM
    x[0] = 1.0
    device = event.device or (state.device if state else None)
    if device in _DEVICE_AT:
        x[_DEVICE_AT[device]] = 1.0
    segment = event.segment or (state.segment if state else None)
    if segment in _SEGMENT_AT:
        x[_SEGMENT_AT[segment]] = 1.0
    t = event.ts
    angle = 2 * math.pi * (t % _DAY_S) / _DAY_S
    x[_HOUR_AT] = math.sin(angle)
    x[_HOUR_AT + 1] = math.cos(angle)
    x[_HOUR_AT + 2] = 1.0 if ((int(t // _DAY_S) + 3) % 7) >= 5 else 0.0  # 1970-01-01 was a Thursday
    if state is not None and state.exists:
        x[POLICY_DIM:] = [HISTORY_WEIGHT * v for v in _history_values(t, state)]
    return x
