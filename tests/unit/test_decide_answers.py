"""GET /decide: which HTTP status and error document each kind of answer gets."""

from __future__ import annotations

from contracts.decisions import DeadLetter, Decision, Mode
from streams.decide_batcher import Answer, EngineFailed
from streams.web import answer_status


def dead_letter(code: str, reason: str) -> DeadLetter:
    return DeadLetter("web-events", -1, -1, code, reason, b"{}")


def test_a_decision_is_200_without_an_error_document() -> None:
    decision = Decision(decision_id="d1", request_event_id="r1", user_id="u", ts=1.0, channel="web",
                        placement="home_hero", action="offer_a", probability=1.0, mode=Mode.EXPLOIT,
                        policy="linucb", policy_version=0, trace={})
    assert answer_status(Answer(decision=decision)) == (200, None)


def test_engine_failures_are_500_and_say_what_to_show() -> None:
    status, doc = answer_status(EngineFailed("KeyError: 'boom'"))
    assert status == 500 and "KeyError: 'boom'" in doc["error"] and "default action" in doc["what_to_do"]
    status, doc = answer_status(Answer(dead_letter=dead_letter("engine_error", "ValueError: x; please report it")))
    assert status == 500 and "ValueError: x" in doc["error"] and "dead-letters" in doc["what_to_do"]


def test_a_refused_request_is_400_with_its_reason_code() -> None:
    status, doc = answer_status(Answer(dead_letter=dead_letter("wrong_type", "field 'ts' must be a number, got str")))
    assert (status, doc["reason_code"]) == (400, "wrong_type")
    assert doc["error"] == "field 'ts' must be a number, got str" and doc["what_to_do"] == "fix the request parameters"


def test_a_repeated_request_id_without_a_kept_decision_is_409() -> None:
    status, doc = answer_status(Answer())
    assert status == 409 and "request_id" in doc["error"] and "new request_id" in doc["what_to_do"]


def test_a_ts_out_of_range_says_the_worker_stamped_it_when_the_request_had_none() -> None:
    # against the simulator (event time from 2026-01-05) a /decide without ts was told to "fix the request
    # parameters", though it had sent none: the worker's clock was the ts refused
    refused = Answer(dead_letter=dead_letter("ts_out_of_range", "ts is 28820939s ahead of the stream's watermark"))
    status, doc = answer_status(refused, ts_given=False)
    assert (status, doc["reason_code"]) == (400, "ts_out_of_range")
    assert doc["what_to_do"].startswith("this request had no ts, so it was stamped with the worker's clock")
    assert "GET /health shows its watermark" in doc["what_to_do"]
    status, doc = answer_status(refused, ts_given=True)
    assert doc["what_to_do"].startswith("send ts in the stream's event time")
