"""Stickiness's "surely better" rule needs an exploration width: a policy without one is named at start."""

from __future__ import annotations

import dataclasses

import pytest

from bandits import make_policy
from cadence.settings import DEFAULT_CATALOGUE
from features.context import CONTEXT_DIM
from policy.catalogue import load_catalogue
from streams.app import inert_confidence


@pytest.mark.parametrize("name", ["lints", "egreedy"])
def test_a_policy_without_a_width_is_named_with_the_placements_whose_confidence_rule_it_disables(name) -> None:  # noqa: ANN001
    catalogue = load_catalogue(DEFAULT_CATALOGUE)
    limited = sorted(p.id for p in catalogue.placements.values() if p.stickiness.limited)
    assert limited  # the shipped catalogue rate-limits changes (confidence 3 by default)
    message = inert_confidence(make_policy(name, CONTEXT_DIM), catalogue)
    assert message is not None and name in message and all(p in message for p in limited)
    assert "CADENCE_POLICY=linucb" in message and "confidence = 0" in message  # what to do


def test_linucb_or_a_catalogue_without_the_rule_needs_no_warning() -> None:
    catalogue = load_catalogue(DEFAULT_CATALOGUE)
    assert inert_confidence(make_policy("linucb", CONTEXT_DIM), catalogue) is None
    assert inert_confidence(None, catalogue) is None  # no shadow policy
    off = {pid: dataclasses.replace(p, stickiness=dataclasses.replace(p.stickiness, confidence=0.0))
           for pid, p in catalogue.placements.items()}
    assert inert_confidence(make_policy("lints", CONTEXT_DIM), dataclasses.replace(catalogue, placements=off)) is None
