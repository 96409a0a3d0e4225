"""The input contract: every kind of bad input is rejected with its reason, valid events parse."""

from __future__ import annotations

import orjson
import pytest

from contracts.events import Event, Reason, Rejection, check_watermark, parse_event

GOOD = {"event_id": "e1", "user_id": "u1", "ts": 1_767_571_200, "type": "page_view", "placement": "home_hero"}


def doc(**changes: object) -> bytes:
    d = {**GOOD, **changes}
    return orjson.dumps({k: v for k, v in d.items() if v is not ...})


BAD_INPUTS = [
    (b'{"event_id": "e1", "ts": ', "web-events", Reason.MALFORMED_JSON, "not valid UTF-8 JSON"),
    (b'{"event_id": "\xff\xfe"}', "web-events", Reason.MALFORMED_JSON, "not valid UTF-8 JSON"),
    (b'{"ts": NaN}', "web-events", Reason.MALFORMED_JSON, "not valid UTF-8 JSON"),
    (b"", "web-events", Reason.MALFORMED_JSON, "not valid"),
    (b"[1, 2]", "web-events", Reason.NOT_AN_OBJECT, "expected a JSON object, got list"),
    (b'"text"', "web-events", Reason.NOT_AN_OBJECT, "got str"),
    (doc(user_id=...), "web-events", Reason.MISSING_FIELD, "missing required field 'user_id'"),
    (doc(ts=...), "web-events", Reason.MISSING_FIELD, "missing required field 'ts'"),
    (doc(placement=...), "web-events", Reason.MISSING_FIELD, "needs a 'placement'"),
    (doc(ts="yesterday"), "web-events", Reason.WRONG_TYPE, "'ts' must be a number, got str"),
    (doc(ts=True), "web-events", Reason.WRONG_TYPE, "'ts' must be a number, got bool"),
    (doc(user_id=42), "web-events", Reason.WRONG_TYPE, "'user_id' must be a string, got int"),
    (doc(consent="yes"), "web-events", Reason.WRONG_TYPE, "'consent' must be a boolean"),
    (doc(revenue=[1]), "web-events", Reason.WRONG_TYPE, "'revenue' must be a number"),
    (doc(user_id=""), "web-events", Reason.INVALID_VALUE, "'user_id' must be 1..128 characters"),
    (doc(user_id="u" * 129), "web-events", Reason.INVALID_VALUE, "1..128"),
    (doc(page="p" * 300), "web-events", Reason.INVALID_VALUE, "'page' must be 1..256"),
    (doc(revenue=-5), "web-events", Reason.INVALID_VALUE, "'revenue' must be between 0"),
    (b'{"event_id":"e1","user_id":"u1","ts":1e999,"type":"page_view","placement":"x"}', "web-events",
     Reason.MALFORMED_JSON, "infinity"),
    (doc(device="fridge"), "web-events", Reason.INVALID_VALUE, "device must be one of"),
    (doc(type="page_veiw"), "web-events", Reason.UNKNOWN_TYPE, "'page_veiw' is not one of"),
    (doc(type="email_open"), "web-events", Reason.UNKNOWN_TYPE, "on web-events"),
    (doc(email="a@b.c"), "web-events", Reason.UNEXPECTED_FIELD, "unexpected field 'email'"),
    (doc(ts=12), "web-events", Reason.TS_OUT_OF_RANGE, "outside"),
    (doc(ts=9e9), "web-events", Reason.TS_OUT_OF_RANGE, "outside"),
    (doc(page="x" * 70_000), "web-events", Reason.TOO_LARGE, "the limit is 65536"),
    (doc(), "orders", Reason.UNKNOWN_TOPIC, "topic 'orders'"),
]


@pytest.mark.parametrize(("raw", "topic", "reason", "message"), BAD_INPUTS)
def test_bad_input_is_rejected_with_its_reason(raw: bytes, topic: str, reason: Reason, message: str) -> None:
    result = parse_event(raw, topic)
    assert isinstance(result, Rejection), result
    assert result.reason is reason
    assert message in result.detail


def test_valid_page_view_parses_with_channel_and_defaults() -> None:
    result = parse_event(doc(device="mobile", segment="vip", consent=True), "web-events")
    assert isinstance(result, Event)
    assert (result.user_id, result.ts, result.channel, result.placement) == ("u1", 1_767_571_200.0, "web", "home_hero")
    assert result.kind.requests_decision and result.kind.counter == "pv"
    assert (result.device, result.segment, result.consent, result.revenue) == ("mobile", "vip", True, 0.0)


@pytest.mark.parametrize(
    ("topic", "etype", "id_field"),
    [("web-events", "click", "offer_id"), ("email-events", "email_click", "template_id"),
     ("ad-events", "ad_click", "creative_id")],
)
def test_channel_action_ids_normalise_to_action_id(topic: str, etype: str, id_field: str) -> None:
    raw = orjson.dumps({**{k: v for k, v in GOOD.items() if k != "placement"}, "type": etype, id_field: "a7",
                        "decision_id": "d1"})
    result = parse_event(raw, topic)
    assert isinstance(result, Event)
    assert (result.action_id, result.decision_id, result.kind.reward) == ("a7", "d1", "click")


def test_optional_null_fields_are_accepted_as_absent() -> None:
    result = parse_event(doc(segment=None, device=None), "web-events")
    assert isinstance(result, Event) and result.segment is None


def test_size_limit_is_configurable() -> None:
    assert isinstance(parse_event(doc(page="x" * 200), "web-events", max_bytes=256), Rejection)
    assert isinstance(parse_event(doc(page="x" * 200), "web-events", max_bytes=1024), Event)


@pytest.mark.parametrize(
    ("ts", "watermark", "rejected", "message"),
    [
        (1000.0 + 1_767_571_200, 1_767_571_200, False, ""),
        (7200.0 + 1_767_571_200, 1_767_571_200, True, "ahead of the stream's event time"),
        (1_767_571_200 - 40 * 86400, 1_767_571_200, True, "behind the stream's event time"),
        (1_767_571_200 - 40 * 86400, 0.0, False, ""),  # no watermark yet: static bounds only
    ],
)
def test_watermark_bounds(ts: float, watermark: float, rejected: bool, message: str) -> None:
    event = parse_event(doc(ts=ts), "web-events")
    assert isinstance(event, Event)
    result = check_watermark(event, watermark, max_future_s=3600, max_late_s=30 * 86400)
    assert (result is not None) == rejected
    if result is not None:
        assert result.reason is Reason.TS_OUT_OF_RANGE and message in result.detail


def test_rejection_details_never_echo_huge_values() -> None:
    result = parse_event(doc(**{"x" * 5000: 1}), "web-events")
    assert isinstance(result, Rejection) and len(result.detail) < 400


@pytest.mark.parametrize(
    ("ts", "shown"),
    [
        # %g printed these as "4.10244e+09" and "1e+09": a value just outside looked inside the bounds
        (4_102_444_801, "ts 4102444801 is outside 1000000000..4102444800 (epoch seconds"),
        (999_999_999.5, "ts 999999999.5 is outside 1000000000..4102444800 (epoch seconds"),
    ],
)
def test_a_ts_out_of_range_is_printed_exactly(ts: float, shown: str) -> None:
    result = parse_event(doc(ts=ts), "web-events")
    assert isinstance(result, Rejection) and result.reason is Reason.TS_OUT_OF_RANGE
    assert shown in result.detail and "milliseconds" not in result.detail


def test_a_ts_in_milliseconds_is_named_as_such() -> None:
    result = parse_event(doc(ts=1_767_571_260_500), "web-events")
    assert isinstance(result, Rejection) and result.reason is Reason.TS_OUT_OF_RANGE
    assert "ts 1767571260500 is outside" in result.detail
    assert "looks like milliseconds: divide by 1000" in result.detail
