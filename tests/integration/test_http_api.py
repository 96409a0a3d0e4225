"""GET /decide, /profile and the admin endpoints of a real worker: auth, levers, kill switch, erasure."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import redis

from cadence.runtime import Runtime
from cadence.workers import WorkerProcess
from features.keys import UserDigest
from tests.helpers import T0, TopicReader, event, produce, start_worker

pytestmark = pytest.mark.integration
API, ADMIN = "api-secret-1", "admin-secret-2"
NOON = T0 + 12 * 3600


def call(worker: WorkerProcess, path: str, token: str | None = API, method: str = "GET",
         body: dict | None = None, **params: object) -> tuple[int, dict]:
    url = f"{worker.url}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def worker(runtime: Runtime, isolated: dict[str, str], data_dir: Path):  # noqa: ANN201
    w = start_worker(runtime, data_dir, api_token=API, admin_token=ADMIN, http_max_rps="200", **isolated)
    yield w
    w.stop()


def decide(worker: WorkerProcess, user: str, i: int, **extra: object) -> dict:
    status, doc = call(worker, "/decide", user_id=user, placement="home_hero", ts=NOON + i, request_id=f"r-{user}-{i}",
                       **extra)
    assert status == 200, doc
    return doc


def test_decide_auth_validation_and_topic(worker: WorkerProcess, runtime: Runtime, isolated: dict[str, str]) -> None:
    assert call(worker, "/decide", token=None, user_id="u1", placement="home_hero")[0] == 401
    assert call(worker, "/decide", token="wrong", user_id="u1", placement="home_hero")[0] == 401
    assert call(worker, "/decide", token=ADMIN, user_id="u1", placement="home_hero")[0] == 401
    status, doc = call(worker, "/decide", user_id="u1", placement="nowhere")
    assert status == 400 and "home_hero" in doc["placements"]
    status, doc = call(worker, "/decide", user_id="u" * 200, placement="home_hero")
    assert (status, doc["reason_code"]) == (400, "invalid_value") and "1..128" in doc["error"]

    d = decide(worker, "u1", 1, device="mobile", segment="vip")
    assert d["user_id"] == "u1" and d["placement"] == "home_hero" and d["mode"] in ("exploit", "explore")
    assert d["action"].startswith("offer_") and 0 < d["probability"] <= 1
    status, again = call(worker, "/decide", user_id="u1", placement="home_hero", ts=NOON + 1, request_id="r-u1-1")
    assert status == 200 and again["trace"] == {"replayed": True}  # the same request_id: the same decision
    assert (again["decision_id"], again["action"]) == (d["decision_id"], d["action"])

    on_topic = TopicReader(runtime, isolated["topic_prefix"] + "decisions").read_until(
        lambda recs: any(r["decision_id"] == d["decision_id"] for r in recs))
    assert any(r["decision_id"] == d["decision_id"] for r in on_topic)
    dead = TopicReader(runtime, isolated["topic_prefix"] + "dead-letters").read_until(lambda recs: len(recs) >= 1)
    assert dead[0]["reason_code"] == "invalid_value"

    status, profile = call(worker, "/profile", user_id="u1", ts=NOON + 2)
    assert status == 200 and profile["profile"]["segment"] == "vip"
    assert profile["features"]["page_views_1h"]["value"] == 1.0 and profile["features"]["page_views_1h"]["age_s"] == 1.0


def test_an_http_only_replica_answers_and_consumes_no_events(runtime: Runtime, isolated: dict[str, str],
                                                            data_dir: Path) -> None:
    produce(runtime, isolated["topic_prefix"] + "web-events", [event(f"stream-{i}", ts=NOON) for i in range(5)])
    replica = start_worker(runtime, data_dir, "replica", api_token=API, intake="none", **isolated)
    try:
        assert replica.health()["partitions"] == {"web-events": [], "email-events": [], "ad-events": []}
        d = decide(replica, "h1", 1)
        assert d["action"].startswith("offer_")
        consumed = [line for line in replica.metrics_text().splitlines()
                    if line.startswith("cadence_events_consumed_total{")]
    finally:
        replica.stop()
    assert consumed == ['cadence_events_consumed_total{topic="web-events",type="page_view"} 1.0']  # its request


def test_requests_over_the_rate_get_429(runtime: Runtime, isolated: dict[str, str], data_dir: Path) -> None:
    slow = start_worker(runtime, data_dir, "slow", api_token=API, http_max_rps="20", **isolated)
    try:
        started = time.monotonic()
        statuses = [call(slow, "/decide", user_id=f"r{i}", placement="home_hero", ts=NOON)[0] for i in range(150)]
        elapsed = time.monotonic() - started
    finally:
        slow.stop()
    assert set(statuses) == {200, 429}
    assert statuses.count(200) <= 20 + 20 * elapsed + 1  # burst + rate x time: the bound holds


def test_levers_pin_ban_expiry_kill_switch_and_audit(worker: WorkerProcess) -> None:
    assert call(worker, "/admin/levers", token=API)[0] == 401
    status, _ = call(worker, "/admin/levers", token=ADMIN, method="POST",
                     body={"kind": "pin", "action": "offer_clearance", "user_id": "p0", "who": "ana", "why": "test",
                           "ts": NOON})
    assert status == 201
    ignored = decide(worker, "p0", 5)  # offer_clearance is not shown on home_hero: the pin cannot apply
    assert ignored["mode"] != "pinned" and "pin_ignored" in ignored["trace"]
    status, doc = call(worker, "/admin/levers", token=ADMIN, method="POST",
                       body={"lever_id": "pin-p1", "kind": "pin", "action": "offer_bundle", "user_id": "p1",
                             "who": "ana", "why": "VIP call", "ts": NOON, "expires": NOON + 100})
    assert status == 201, doc
    pinned = decide(worker, "p1", 10)
    assert (pinned["action"], pinned["mode"], pinned["probability"]) == ("offer_bundle", "pinned", 1.0)
    assert decide(worker, "p1", 200)["mode"] != "pinned"  # expired at NOON + 100 (event time)

    status, _ = call(worker, "/admin/levers", token=ADMIN, method="POST",
                     body={"lever_id": "ban-vip", "kind": "ban", "action": "offer_premium_trial", "segment": "vip",
                           "who": "bo", "why": "out of stock", "ts": NOON})
    assert status == 201
    shown = {decide(worker, f"v{i}", 300 + i, segment="vip")["action"] for i in range(30)}
    assert "offer_premium_trial" not in shown and shown

    status, doc = call(worker, "/admin/levers", token=ADMIN, method="POST", body={"kind": "boost", "who": "x"})
    assert status == 400 and "why" in doc["error"]

    assert call(worker, "/admin/kill", token=ADMIN, method="POST", body={"who": "ops", "why": "incident"})[0] == 200
    killed = decide(worker, "k1", 400)
    assert (killed["action"], killed["mode"], killed["trace"]["fallback"]) == ("none", "fallback", "kill_switch")
    off = {"on": False, "who": "ops", "why": "over"}
    assert call(worker, "/admin/kill", token=ADMIN, method="POST", body=off)[0] == 200
    assert decide(worker, "k1", 401)["mode"] != "fallback"

    status, book = call(worker, "/admin/levers", token=ADMIN)
    changes = [(a["who"], a["change"], a["lever_id"]) for a in book["audit"]]
    assert ("ana", "apply", "pin-p1") in changes and ("ops", "revoke", "kill-all") in changes
    assert all(a["why"] for a in book["audit"])


def test_levers_set_without_ts_apply_to_every_event_processed_after_whatever_its_time(
        worker: WorkerProcess) -> None:
    # the watermark used to stamp them: one client 50 minutes ahead moved it, and the kill switch missed every
    # request before that (out-of-order traffic, everyone else for 50 minutes)
    decide(worker, "fast-clock", 3000)
    assert call(worker, "/admin/kill", token=ADMIN, method="POST", body={"who": "ops", "why": "incident"})[0] == 200
    killed = decide(worker, "k1", 10)
    assert (killed["action"], killed["mode"], killed["trace"]["fallback"]) == ("none", "fallback", "kill_switch")
    off = {"on": False, "who": "ops", "why": "over"}
    assert call(worker, "/admin/kill", token=ADMIN, method="POST", body=off)[0] == 200
    status, doc = call(worker, "/admin/levers", token=ADMIN, method="POST",
                       body={"lever_id": "pin-early", "kind": "pin", "action": "offer_bundle", "user_id": "p1",
                             "who": "ana", "why": "VIP call"})
    assert status == 201 and "ts" not in doc["applied"] and doc["applied"]["set_at"] > NOON + 3000, doc
    assert decide(worker, "p1", 20)["mode"] == "pinned"
    before = time.time()
    audit = call(worker, "/admin/levers", token=ADMIN)[1]["audit"]
    assert [a["change"] for a in audit] == ["apply", "revoke", "apply"]
    assert all(before - 60 < a["ts"] <= before for a in audit)  # when each change was made, wall clock


def test_erase_user_removes_every_key_and_excludes_the_user(worker: WorkerProcess, runtime: Runtime,
                                                           isolated: dict[str, str]) -> None:
    for i in range(3):
        decide(worker, "gdpr-user-7", 500 + i, segment="loyal")
    status, _ = call(worker, "/admin/levers", token=ADMIN, method="POST", body={
        "kind": "pin", "action": "offer_10pct", "user_id": "gdpr-user-7", "who": "sales", "why": "vip deal"})
    assert status == 201  # a lever aimed at the user is personal data too
    client = redis.Redis.from_url(runtime.redis_url or "")
    assert list(client.scan_iter(match="*gdpr-user-7*"))
    status, doc = call(worker, "/admin/erase-user", token=ADMIN, method="POST", body={"user_id": "gdpr-user-7",
                                                                                     "who": "dpo"})
    assert status == 200 and doc["keys_deleted"] >= 1
    after = decide(worker, "gdpr-user-7", 600)
    assert (after["mode"], after["trace"]["fallback"]) == ("fallback", "erased_user")
    time.sleep(0.5)
    assert list(client.scan_iter(match="*gdpr-user-7*")) == []
    assert all(b"gdpr-user-7" not in (client.get(k) or b"") for k in client.scan_iter(match=f"{isolated['app_id']}:*")
               if client.type(k) == b"string")  # the lever book included: the pin is gone, its audit redacted
    levers = call(worker, "/admin/levers", token=ADMIN)[1]
    assert levers["levers"] == [] and levers["audit"][0]["lever"]["user_id"].startswith("erased:")
    # no CADENCE_ERASURE_KEY: the worker generated the key, keeps it in Redis and warned about it once at start
    kept = client.get(f"{isolated['app_id']}:erased:key")
    assert kept and client.smembers(f"{isolated['app_id']}:erased:v2") == {
        UserDigest.from_secret(kept.decode()).of("gdpr-user-7").encode()}
    log = worker.log_path.read_text(errors="replace")
    assert log.count("erasure key: CADENCE_ERASURE_KEY is unset") == 1 and kept.decode() not in log
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=runtime.kafka_bootstrap, enable_auto_commit=False)
    topic = isolated["topic_prefix"] + "erasures"
    consumer.assign([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)])
    consumer.seek_to_beginning()
    records = [r for recs in consumer.poll(timeout_ms=3000).values() for r in recs]
    consumer.close()
    assert [(r.key, r.value) for r in records] == [(b"gdpr-user-7", None)]
    assert "gdpr-user-7" not in worker.metrics_text()


def test_levers_naming_what_the_catalogue_does_not_have_are_refused(worker: WorkerProcess) -> None:
    # a typo used to answer {"kill_switch": "on"} and kill nothing
    status, doc = call(worker, "/admin/kill", token=ADMIN, method="POST",
                       body={"placement": "home-hero", "who": "ops", "why": "broken banner"})
    assert status == 400 and "unknown placement 'home-hero'" in doc["error"] and "home_hero" in doc["error"]
    status, doc = call(worker, "/admin/levers", token=ADMIN, method="POST",
                       body={"kind": "ban", "action": "offer_10pc", "who": "ana", "why": "legal"})
    assert status == 400 and "unknown action 'offer_10pc'" in doc["error"] and "offer_10pct" in doc["error"]
    status, doc = call(worker, "/admin/levers", token=ADMIN, method="POST",
                       body={"kind": "pin", "action": "offer_clearance", "placement": "home_hero", "who": "ana",
                             "why": "promo"})
    assert status == 400 and "'offer_clearance' is not on placement 'home_hero'" in doc["error"]
    assert call(worker, "/admin/levers", token=ADMIN)[1] == {"levers": [], "audit": []}


def _raw(worker: WorkerProcess, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """One HTTP/1.1 exchange written by hand (for what urllib will not send: chunked bodies, raw bytes)."""
    import socket

    with socket.create_connection(("127.0.0.1", worker.web_port), timeout=10) as s:
        s.sendall(head + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data.split(b"\r\n\r\n", 1)[-1]


def test_hostile_requests_get_clear_errors_and_change_nothing(worker: WorkerProcess, runtime: Runtime,
                                                             isolated: dict[str, str]) -> None:
    # a chunked body has no Content-Length: the 16 KiB admin limit is counted while reading it
    doc = {"kind": "ban", "action": "offer_10pct", "who": "a", "why": "b" * 100_000, "ts": NOON,
           "placement": "home_hero"}
    body = json.dumps(doc).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 4096]), body[i:i + 4096]) for i in range(0, len(body), 4096))
    head = (f"POST /admin/levers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: "
            "application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    assert _raw(worker, head, chunks + b"0\r\n\r\n")[0] == 413
    # a lever of the wrong type is refused, not stored for every worker to fail on
    status, out = call(worker, "/admin/levers", token=ADMIN, method="POST", body={
        "kind": "ban", "action": ["offer_10pct"], "who": "ops", "why": "typo", "placement": "home_hero", "ts": NOON})
    assert status == 400 and "'action' must be a string" in out["error"]
    assert call(worker, "/admin/levers", token=ADMIN)[1]["levers"] == []
    assert decide(worker, "hostile-1", 1)["mode"] in ("exploit", "explore")
    # an Authorization header that is not UTF-8 is a wrong token, not a server error
    head = (b"GET /decide?user_id=u1&placement=home_hero HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
            b"Connection: close\r\n\r\n")
    assert _raw(worker, head)[0] == 401
    status, out = call(worker, "/profile", user_id="u1", ts="yesterday")
    assert status == 400 and "ts must be a number" in out["error"]
    # placements a sender makes up are dead-lettered (invalid_value) and do not become metric label values
    def refused_values() -> float:
        found = re.search(r'^cadence_dead_letters_total\{reason="invalid_value"\} (\S+)$', worker.metrics_text(), re.M)
        return float(found.group(1)) if found else 0.0

    before = refused_values()
    produce(runtime, isolated["topic_prefix"] + "web-events",
            [event(f"junk-{i}", user_id=f"ju{i}", ts=NOON + i, placement=f"junk-{i:03d}") for i in range(40)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and refused_values() < before + 40:
        time.sleep(0.5)
    text = worker.metrics_text()
    assert refused_values() == before + 40
    assert "junk-0" not in text and 'placement="unknown"' not in text


def test_every_refused_decide_request_is_dead_lettered_and_counted(worker: WorkerProcess, runtime: Runtime,
                                                                   isolated: dict[str, str]) -> None:
    """The README promises a 400 from /decide is also dead-lettered: the requests refused before they became an
    event (unknown placement or parameter, a ts that is no number, a query too long) used to vanish."""
    bad = [({"placement": "home-hero"}, "invalid_value", "http:/decide"),
           ({"placement": "home_hero", "colour": "red"}, "unexpected_field", "web-events"),
           ({"placement": "newsletter", "ts": "soon"}, "wrong_type", "email-events"),
           ({"placement": "home_hero", "page": "p" * 2100}, "too_large", "http:/decide"),
           ({"placement": "home_hero", "device": "MOBILE"}, "invalid_value", "web-events")]
    for params, _, _ in bad:
        assert call(worker, "/decide", user_id="dl-1", **params)[0] == 400
    dead = TopicReader(runtime, isolated["topic_prefix"] + "dead-letters").read_until(lambda recs: len(recs) >= 5)
    assert sorted((d["reason_code"], d["source_topic"]) for d in dead) == sorted((r, t) for _, r, t in bad)
    assert all("dl-1" in d["raw_preview"] for d in dead)  # the query string, or the event built from it
    text = worker.metrics_text()
    counted = {r: sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                      if line.startswith(f'cadence_dead_letters_total{{reason="{r}"}}')) for _, r, _ in bad}
    assert counted == {"invalid_value": 2.0, "unexpected_field": 1.0, "wrong_type": 1.0, "too_large": 1.0}


def call_raw(worker: WorkerProcess, path: str, query: str, token: str = API) -> tuple[int, dict]:
    """As :func:`call`, with the query string sent as given (percent-encoded bytes that need not be UTF-8)."""
    req = urllib.request.Request(f"{worker.url}{path}?{query}", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_ids_that_are_not_utf8_are_refused_not_taken_for_one_user(worker: WorkerProcess, runtime: Runtime,
                                                                  isolated: dict[str, str]) -> None:
    """aiohttp decodes percent-encoded bytes that are not UTF-8 to U+FFFD: user_id=%FF and user_id=%FE were
    decided as one user "\ufffd" (shared features, caps and stickiness), silently."""
    for i, query in enumerate(("user_id=%FF", "user_id=%FE")):
        status, doc = call_raw(worker, "/decide", f"{query}&placement=home_hero&ts={NOON + i}&request_id=bad-{i}")
        assert (status, doc.get("reason_code")) == (400, "invalid_value"), doc
        assert "'user_id' is not UTF-8" in doc["error"] and "UTF-8 text, percent-encoded" in doc["what_to_do"]
    status, doc = call_raw(worker, "/profile", "user_id=%FF")
    assert status == 400 and "'user_id' is not UTF-8" in doc["error"]
    status, doc = call_raw(worker, "/decide", f"user_id=%C3%A9l%C3%A8ve&placement=home_hero&ts={NOON + 5}")
    assert status == 200 and doc["user_id"] == "élève", doc
    assert call(worker, "/profile", user_id="\ufffd", ts=NOON + 6)[1]["exists"] is False  # nobody became "\ufffd"

    dead = TopicReader(runtime, isolated["topic_prefix"] + "dead-letters").read_until(lambda recs: len(recs) >= 2)
    assert sorted((d["reason_code"], d["source_topic"], d["raw_preview"]) for d in dead) == [
        ("invalid_value", "http:/decide", f"user_id=%FE&placement=home_hero&ts={NOON + 1}&request_id=bad-1"),
        ("invalid_value", "http:/decide", f"user_id=%FF&placement=home_hero&ts={NOON}&request_id=bad-0")]
    assert re.search(r'^cadence_dead_letters_total\{reason="invalid_value"\} 2\.0$', worker.metrics_text(), re.M)
    decided = TopicReader(runtime, isolated["topic_prefix"] + "decisions").read_until(
        lambda recs: any(r["user_id"] == "élève" for r in recs))
    assert [r["user_id"] for r in decided] == ["élève"]


def test_decisions_answered_while_a_worker_stops_are_on_the_topic(runtime: Runtime, isolated: dict[str, str],
                                                                  data_dir: Path) -> None:
    """SIGTERM while /decide requests keep coming: every request answered 200 has its decision on the decisions
    topic (shutdown waits for the engine's batches and their sends); the rest get 503 or no answer."""
    import threading

    w = start_worker(runtime, data_dir, api_token=API, http_max_rps="5000", **isolated)
    answered: list[str] = []
    statuses: list[int] = []
    stop = threading.Event()

    def ask(client: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                status, doc = call(w, "/decide", user_id=f"s{client}-{i % 50}", placement="home_hero",
                                   ts=NOON + i, request_id=f"r{client}-{i}")
            except OSError:  # the server is gone
                return
            statuses.append(status)
            if status == 200:
                answered.append(doc["decision_id"])

    clients = [threading.Thread(target=ask, args=(c,), daemon=True) for c in range(4)]
    for c in clients:
        c.start()
    time.sleep(1.5)
    w.stop()  # SIGTERM with requests in flight
    stop.set()
    for c in clients:
        c.join(10)
    assert len(answered) > 50 and set(statuses) <= {200, 503}
    reader = TopicReader(runtime, isolated["topic_prefix"] + "decisions")
    wanted = set(answered)
    on_topic = {r["decision_id"] for r in reader.read_until(lambda recs: wanted <= {r["decision_id"] for r in recs},
                                                             timeout_s=15)}
    reader.close()
    assert wanted - on_topic == set()


def test_a_worker_hands_its_budget_counters_to_redis_within_seconds(worker: WorkerProcess, runtime: Runtime,
                                                                     isolated: dict[str, str]) -> None:
    # Every action shown counts against its day's budgets; the one-second shared-state timer adds it to the
    # fleet's totals, which a restarted worker reads back (test_a_restarted_worker_does_not_spend_the_days_cap_again).
    shown = decide(worker, "u-budget", 1)["action"]
    client = redis.Redis.from_url(runtime.redis_url or "")
    day = int(NOON // 86400)
    key = f"{isolated['app_id']}:budget:d:{day}"
    deadline = time.monotonic() + 10
    while not client.hget(key, f"{shown}:n") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.hget(key, f"{shown}:n") == b"1"
    assert client.zrange(f"{isolated['app_id']}:budget:days", 0, -1) == [str(day).encode()]
    assert 0 < client.ttl(key) <= 4 * 86400
