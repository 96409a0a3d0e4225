"""GET /decide builds the request event that the engine validates like any event: what the stream refuses, the
HTTP path refuses too (it used to drop an unknown parameter or a consent spelling silently, and serve offers);
a parameter /decide does not take is refused before (named like an event field, it would change the event)."""

from __future__ import annotations

import pytest

from contracts.events import Event, Reason, Rejection, parse_event
from streams.web import BadParameters, decide_request

NOW = 1_780_000_000.0


def parsed(**params: str) -> Event | Rejection:
    _, topic, raw = decide_request({"user_id": "u1", "placement": "home_hero", **params}, "web", NOW)
    return parse_event(raw, topic)


def test_a_well_formed_request_becomes_its_event() -> None:
    event = parsed(consent="false", device="mobile", request_id="r-1", ts="1780000001.5")
    assert isinstance(event, Event)
    assert (event.event_id, event.consent, event.device, event.ts) == ("r-1", False, "mobile", 1780000001.5)
    assert isinstance(parsed(), Event) and parsed().ts == NOW and parsed().consent is None


@pytest.mark.parametrize("spelling", ["False", "0", "no", "FALSE"])
def test_consent_in_another_spelling_is_refused_not_dropped(spelling: str) -> None:
    refused = parsed(consent=spelling)
    assert isinstance(refused, Rejection) and refused.reason is Reason.WRONG_TYPE and "consent" in refused.detail


@pytest.mark.parametrize("name", ["email", "reqest_id", "type", "decision_id", "event_id", "offer_id"])
def test_a_parameter_decide_does_not_take_is_refused(name: str) -> None:
    # copied into the event, "type=click&decision_id=…" made the request a click credited to any decision
    with pytest.raises(BadParameters, match=rf"unknown parameter\(s\) \['{name}'\]; /decide takes"):
        parsed(**{name: "click"})


def test_an_empty_consent_is_refused_not_taken_as_unknown() -> None:
    refused = parsed(consent="")
    assert isinstance(refused, Rejection) and refused.reason is Reason.WRONG_TYPE


@pytest.mark.parametrize("ts", ["nan", "inf", "1e999", "soon"])
def test_a_ts_that_is_not_a_finite_number_is_refused(ts: str) -> None:
    with pytest.raises(BadParameters, match="is not a number of epoch seconds"):
        decide_request({"user_id": "u1", "placement": "home_hero", "ts": ts}, "web", NOW)
