"""Exact ε-greedy selection over a list of scores, shared by LinUCB and ε-greedy."""

from __future__ import annotations


def greedy_pick(scores: list[float], epsilon: float, u: float) -> tuple[int, int, list[float]]:
    """ε-greedy over ``scores`` with one uniform ``u`` in [0, 1): (pick, best, selection probabilities).

    u < ε explores (uniform over all k, index from u/ε), otherwise the best score wins with ties
    split uniformly (index from (u−ε)/(1−ε)). So P(a) = ε/k + (1−ε)/|ties| for a tied-best action and
    ε/k for the others, exactly. ``best`` is the greedy action (the pick itself when it is one of the ties).
    Callers report ``u < epsilon`` as ``Choice.uniform`` and ε/k as ``Choice.floor``: arbitration shows a
    uniform pick as drawn and overrides only the greedy branch (policy/arbitration.py).
    """
    k = len(scores)
    top_score = max(scores)
    n_top = scores.count(top_score)
    # one best score is the usual case: find it in C instead of a Python scan of every score
    top = [scores.index(top_score)] if n_top == 1 else [i for i, s in enumerate(scores) if s == top_score]
    if u < epsilon:
        pick = min(int(u / epsilon * k), k - 1)
        best = pick if pick in top else top[0]
    else:
        best = top[min(int((u - epsilon) / (1.0 - epsilon) * n_top), n_top - 1)] if n_top > 1 else top[0]
        pick = best
    floor = epsilon / k
    probs = [floor] * k
    share = (1.0 - epsilon) / n_top
    for i in top:
        probs[i] += share
    return pick, best, probs
