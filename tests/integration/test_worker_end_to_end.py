"""A real worker process on the embedded broker and Redis: decisions out, bad input to dead-letters."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from cadence.runtime import Runtime
from tests.helpers import T0, TopicReader, event, produce, start_worker

pytestmark = pytest.mark.integration

BAD = [
    (b"{not json", "malformed_json"),
    (b'{"event_id": "\xff\xfe"}', "malformed_json"),
    (b"[1, 2, 3]", "not_an_object"),
    (orjson.dumps({"event_id": "b1", "ts": T0, "type": "page_view", "placement": "home_hero"}), "missing_field"),
    (orjson.dumps(event("b2", ts="soon")), "wrong_type"),
    (orjson.dumps(event("b3", etype="page_veiw")), "unknown_type"),
    (orjson.dumps(event("b4", page="x" * 70_000)), "too_large"),
    (orjson.dumps(event("b5", email="someone@example.com")), "unexpected_field"),
]


@pytest.mark.parametrize("intake", ["direct", "faust"])  # record batches (default) or the Faust agent
def test_worker_decides_routes_bad_input_and_ignores_duplicates(
    runtime: Runtime, isolated: dict[str, str], data_dir: Path, intake: str
) -> None:
    prefix = isolated["topic_prefix"]
    worker = start_worker(runtime, data_dir, intake=intake, **isolated)
    try:
        evening = T0 + 21.5 * 3600  # near the email quiet hours (22:00-06:00 UTC) of the default catalogue
        before = [event(f"g{i}", user_id=f"u{i}", ts=evening + i, device="desktop", segment="loyal") for i in range(20)]
        after = [event(f"h{i}", user_id=f"u{i}", ts=evening + 100 + i) for i in range(20)]
        produce(runtime, prefix + "web-events", before)
        produce(runtime, prefix + "web-events", [raw for raw, _ in BAD])
        produce(runtime, prefix + "web-events", before[:5])  # replayed duplicates
        produce(runtime, prefix + "web-events", after)
        produce(runtime, prefix + "email-events", [
            event("m1", user_id="m1", etype="email_request", placement="newsletter", ts=T0 + 21.9 * 3600),
            event("m2", user_id="m2", etype="email_request", placement="newsletter", ts=T0 + 22.5 * 3600),
        ])

        dead = TopicReader(runtime, prefix + "dead-letters").read_until(lambda r: len(r) >= len(BAD))

        decisions = TopicReader(runtime, prefix + "decisions").read_until(lambda r: len(r) >= 47)
        ids_of: dict[str, set[str]] = {}
        for d in decisions:
            ids_of.setdefault(d["request_event_id"], set()).add(d["decision_id"])
        assert sorted(ids_of) == sorted([e["event_id"] for e in before + after] + ["m1", "m2"])
        assert all(len(ids) == 1 for ids in ids_of.values())  # one decision per request, whatever the replays
        replays = [d for d in decisions if d["trace"].get("replayed")]
        assert sorted(d["request_event_id"] for d in replays) == [f"g{i}" for i in range(5)]
        by_id = {d["request_event_id"]: d for d in decisions if not d["trace"].get("replayed")}
        web = by_id["g3"]
        assert web["placement"] == "home_hero" and web["channel"] == "web" and web["user_id"] == "u3"
        assert web["action"].startswith("offer_") and 0 < web["probability"] <= 1
        assert web["mode"] in ("exploit", "explore") and web["policy"] == "linucb"
        assert len(web["trace"]["eligible"]) == 5 and len(web["trace"]["top"]) == 3
        assert {"action", "score", "ev"} <= set(web["trace"]["top"][0])
        assert by_id["m1"]["action"].startswith("email_")
        quiet = by_id["m2"]  # 22:30 UTC is inside the catalogue's email quiet hours
        assert (quiet["action"], quiet["mode"], quiet["trace"]["caps"]) == ("none", "suppressed", ["quiet_hours"])

        assert sorted(d["reason_code"] for d in dead) == sorted(reason for _, reason in BAD)
        assert all(d["source_topic"] == "web-events" and d["reason"] for d in dead)
        import base64

        assert {base64.b64decode(d["raw_b64"]) for d in dead} == {raw for raw, _ in BAD}

        metrics = worker.metrics_text()
        assert "cadence_duplicate_events_total 5.0" in metrics
        assert 'cadence_dead_letters_total{reason="malformed_json"} 2.0' in metrics
        inputs = len(before) + len(BAD) + 5 + len(after) + 2  # every message read, bad ones and duplicates too
        assert f"cadence_intake_wait_seconds_count {float(inputs)}" in metrics
    finally:
        worker.stop()
