"""Events the simulator sends: decision requests, delayed responses, and deliberately bad input."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson

from simulator.world import User

# (share of requests, topic, event type, placement)
REQUEST_MIX = (
    (0.40, "web-events", "page_view", "home_hero"),
    (0.30, "web-events", "page_view", "product_sidebar"),
    (0.10, "email-events", "email_request", "newsletter"),
    (0.20, "ad-events", "ad_request", "display_slot"),
)
def pick_request(u: float) -> tuple[str, str, str]:
    """(topic, event type, placement) of a request, for a uniform draw ``u`` in [0, 1)."""
    acc = 0.0
    for share, topic, etype, placement in REQUEST_MIX:
        acc += share
        if u < acc:
            return topic, etype, placement
    return REQUEST_MIX[-1][1:]


CLICK_TYPES = {"web": ("web-events", "click", "offer_id"), "email": ("email-events", "email_click", "template_id"),
               "ad": ("ad-events", "ad_click", "creative_id")}
MEAN_CLICK_DELAY_S = 60.0
MEAN_CONVERSION_DELAY_S = 600.0


@dataclass(slots=True)
class Outgoing:
    topic: str
    key: bytes
    value: bytes
    ts: float


def request_event(event_id: str, user: User, ts: float, topic: str, etype: str, placement: str) -> Outgoing:
    doc = {"event_id": event_id, "user_id": user.user_id, "ts": round(ts, 3), "type": etype, "placement": placement,
           "device": user.device, "segment": user.segment, "consent": user.consent}
    if topic == "web-events":
        doc["page"] = "/" if placement == "home_hero" else "/product"
    return Outgoing(topic, user.user_id.encode(), orjson.dumps(doc), ts)


def click_event(event_id: str, user_id: str, ts: float, channel: str, decision_id: str, action: str,
                placement: str) -> Outgoing:
    topic, etype, id_field = CLICK_TYPES[channel]
    doc = {"event_id": event_id, "user_id": user_id, "ts": round(ts, 3), "type": etype, "decision_id": decision_id,
           id_field: action, "placement": placement}
    return Outgoing(topic, user_id.encode(), orjson.dumps(doc), ts)


def conversion_event(event_id: str, user_id: str, ts: float, decision_id: str, action: str, revenue: float) -> Outgoing:
    doc = {"event_id": event_id, "user_id": user_id, "ts": round(ts, 3), "type": "conversion",
           "decision_id": decision_id, "offer_id": action, "revenue": revenue}
    return Outgoing("web-events", user_id.encode(), orjson.dumps(doc), ts)


def bad_event(rng: np.random.Generator, event_id: str, user_id: str, ts: float) -> tuple[Outgoing, str]:
    """A malformed event of a random kind, and the reason code the engine should give it."""
    good = {"event_id": event_id, "user_id": user_id, "ts": ts, "type": "page_view", "placement": "home_hero"}
    kinds = (
        ("malformed_json", b'{"event_id": "' + event_id.encode() + b'", "ts": '),
        ("missing_field", orjson.dumps({k: v for k, v in good.items() if k != "user_id"})),
        ("wrong_type", orjson.dumps({**good, "ts": "yesterday"})),
        ("unknown_type", orjson.dumps({**good, "type": "page_veiw"})),
        ("too_large", orjson.dumps({**good, "page": "x" * 70000})),
        ("unexpected_field", orjson.dumps({**good, "email": "someone@example.com"})),
        ("malformed_json", b'{"event_id": "\xff\xfe", "ts": 1}'),
        ("not_an_object", b"[1, 2, 3]"),
    )
    reason, value = kinds[int(rng.integers(len(kinds)))]
    return Outgoing("web-events", user_id.encode(), value, ts), reason
