"""The HTTP views of streams/web.py called directly (a stand-in app, engine and stores): what a person or a
client gets for a mistake or an outage is a 4xx/503 that says what to do, never a 500 or a wrong action."""

from __future__ import annotations

import asyncio
import types
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from features.keys import UserDigest
from features.store import FeatureStoreError
from policy.levers import AuditRecord, LeverBook
from streams.web import not_utf8
from tests.web_views import API, Request, Response, Web, register_pages


class Levers:
    def __init__(self, fail: bool = False) -> None:
        self.book, self.fail = LeverBook(), fail
        self.records: list[AuditRecord] = []

    async def update(self, change: Any) -> LeverBook:
        if self.fail:
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        change(self.book)
        self.records += self.book.take_audit()
        return self.book

    async def load(self) -> LeverBook:
        return self.book

    async def audit(self, last: int) -> list[AuditRecord]:
        return self.records[-last:] if last else []


class Erasures:
    def __init__(self) -> None:
        self.erased: list[str] = []
        self.user_digest: UserDigest | None = UserDigest(bytes(range(32)))  # None: the key not read yet

    async def erase(self, user_id: str) -> int:
        self.erased.append(user_id)
        return 1

    def label(self, user_id: str) -> str:
        return "erased:0123456789ab"

    async def erased_users(self) -> Any:
        return set()


class Metric:
    def labels(self, *_: Any) -> Metric:
        return self

    def observe(self, *_: Any) -> None:
        pass

    def inc(self, *_: Any) -> None:
        pass


def views(read: Any = None, levers: Levers | None = None, stopping: asyncio.Event | None = None,
          emit: Any = None, **engine_attrs: Any) -> tuple[dict[str, Any], Erasures, list[str]]:
    engine = types.SimpleNamespace(
        metrics=types.SimpleNamespace(http_outputs_lost=Metric(), http_latency=Metric(), http_requests=Metric()),
        process_isolating=None, watermark=1_767_614_400.0,
        catalogue=types.SimpleNamespace(placements={"home_hero": types.SimpleNamespace(id="home_hero", channel="web")},
                                        actions={"offer_10pct": types.SimpleNamespace(placements=("home_hero",))}),
        policy_ctx=types.SimpleNamespace(levers=LeverBook()), store=types.SimpleNamespace(read=read), erased=set(),
    )
    vars(engine).update(engine_attrs)
    erasures, tombstones = Erasures(), []

    async def tombstone(user_id: str, who: str) -> None:
        tombstones.append(user_id)

    pages = register_pages(engine, levers or Levers(), erasures, tombstone, 100.0, stopping,
                           **({"emit": emit} if emit is not None else {}))
    return pages, erasures, tombstones


def post(view: Any, body: Any) -> Response:
    return asyncio.run(view.post(Web(), Request(body)))


def test_an_erasure_needs_a_real_user_id() -> None:
    # {"user_id": null} used to erase a user named "None" and write their tombstone
    pages, erasures, tombstones = views()
    for user_id in (None, "", 7, "x" * 129):
        response = post(pages["/admin/erase-user"], {"user_id": user_id, "who": "dpo"})
        assert response.status == 400 and "1..128 characters" in response.body["error"]
    assert post(pages["/admin/erase-user"], {"user_id": "u1", "who": ""}).status == 400
    assert erasures.erased == [] and tombstones == []
    assert post(pages["/admin/erase-user"], {"user_id": "u1", "who": "dpo"}).body == {"erased": True,
                                                                                     "keys_deleted": 1}


def test_an_erasure_before_the_worker_read_its_key_is_a_503_that_erases_nothing() -> None:
    # the worker reads the erasure key at start (or refuses a wrong one): until then no digest can be recorded
    pages, erasures, tombstones = views()
    erasures.user_digest = None
    response = post(pages["/admin/erase-user"], {"user_id": "u1", "who": "dpo"})
    assert response.status == 503 and response.headers["Retry-After"] == "5"
    assert "erasure key" in response.body["error"] and "nothing was erased" in response.body["what_to_do"]
    assert erasures.erased == [] and tombstones == []


def test_a_profile_shows_no_scores_for_an_erased_user_or_one_the_engine_holds_nothing_on() -> None:
    # an erased user's /profile answered "exists": false with a value and 12 propensities (the population's
    # scores, read as this person's by a CRM); so did any id the engine never saw
    from features.state import UserState

    async def read(user_id: str) -> UserState:
        return UserState(user_id, {"dev": "mobile"} if user_id == "known" else {})

    pages, _, _ = views(read=read, erased={"gone"},
                        profile_scores=lambda state, at: {"model_version": 3, "value": 52.0})

    def scores(user_id: str) -> Any:
        response = asyncio.run(pages["/profile"](Web(), Request(token=API, query={"user_id": user_id},
                                                                  method="GET")))
        assert response.status == 200, response.body
        return response.body["scores"]

    assert scores("gone") == {"withheld": "erased"}
    assert scores("never-seen") == {"withheld": "no_data"}
    assert scores("known") == {"model_version": 3, "value": 52.0}


def test_redis_down_is_a_503_with_retry_after_not_a_500() -> None:
    async def read(user_id: str) -> None:
        raise FeatureStoreError("feature store read failed: Timeout reading from socket")

    pages, _, _ = views(read=read, levers=Levers(fail=True))
    profile = asyncio.run(pages["/profile"](Web(), Request(token=API, query={"user_id": "u1"}, method="GET")))
    lever = post(pages["/admin/levers"], {"kind": "ban", "action": "offer_10pct", "who": "ana", "why": "stock"})
    for response in (profile, lever):
        assert response.status == 503 and response.headers["Retry-After"] == "5"
        assert "unreachable" in response.body["error"] and "retry" in response.body["what_to_do"]


def test_the_kill_switch_takes_only_a_boolean_to_turn_on_or_off() -> None:
    # {"on": "false"} used to turn it on everywhere
    pages, _, _ = views()
    for on in ("false", 0, None):
        response = post(pages["/admin/kill"], {"on": on, "who": "ops", "why": "incident over"})
        assert response.status == 400 and "'on' must be true or false" in response.body["error"]
    assert post(pages["/admin/kill"], {"on": True, "who": "ops", "why": "incident"}).body["kill_switch"] == "on"
    assert post(pages["/admin/kill"], {"on": False, "who": "ops", "why": "over"}).body["kill_switch"] == "off"


def test_switching_the_kill_off_revokes_every_kill_of_its_scope_whoever_set_it() -> None:
    # `cadence levers kill --placement home_hero` sets kill-<random>; POST /admin/kill off for that
    # placement answered 400 "no lever 'kill-home_hero'", and after an HTTP on/off it answered "off"
    # while the CLI's kill still held (a new-user review)
    pages, _, _ = views()
    kill = pages["/admin/kill"]
    assert post(kill, {"on": True, "who": "ops", "why": "x", "placement": "home_hero"}).status == 200
    assert post(kill, {"on": True, "who": "ops", "why": "all"}).status == 200
    response = post(pages["/admin/levers"], {"kind": "kill", "who": "cli", "why": "incident",
                                             "placement": "home_hero", "lever_id": "kill-3f9a1c2e"})
    assert response.status == 201, response.body
    minors = post(pages["/admin/levers"], {"kind": "kill", "who": "legal", "why": "no offers to minors",
                                           "placement": "home_hero", "segment": "minors", "lever_id": "kill-minors"})
    assert minors.status == 201, minors.body
    off = post(kill, {"on": False, "who": "ana", "why": "resolved", "placement": "home_hero"})
    assert off.status == 200 and off.body["revoked"] == ["kill-3f9a1c2e", "kill-home_hero"]
    # another scope, and a narrower kill of this one (a segment's: not the incident switch's), still hold
    assert sorted(off.body["still_on"], key=lambda k: k["lever_id"]) == [
        {"lever_id": "kill-all", "placement": None, "segment": None, "one_user": False},
        {"lever_id": "kill-minors", "placement": "home_hero", "segment": "minors", "one_user": False}]
    again = post(kill, {"on": False, "who": "ana", "why": "resolved", "placement": "home_hero"})
    assert again.status == 200 and again.body["revoked"] == []  # nothing left to switch off: not an error
    last = post(kill, {"on": False, "who": "ana", "why": "over"}).body
    assert (last["revoked"], [k["lever_id"] for k in last["still_on"]]) == (["kill-all"], ["kill-minors"])


def delete(view: Any, body: Any) -> Response:
    return asyncio.run(view.delete(Web(), Request(body, method="DELETE")))


def test_a_wrong_or_missing_admin_field_is_a_400_naming_it_and_what_it_must_be() -> None:
    # these used to answer "bad request body: can only concatenate str (not "int") to str", "'lever_id'" and
    # "unhashable type: 'list'": no field named, nothing said about what to send
    pages, erasures, _ = views()
    kill, levers, erase = pages["/admin/kill"], pages["/admin/levers"], pages["/admin/erase-user"]
    cases = [
        (post(kill, {"placement": 5, "who": "ops", "why": "x"}), "'placement' must be a placement id (a string)"),
        (post(kill, {"placement": ["home_hero"], "who": "ops", "why": "x"}), "'placement' must be"),
        (post(kill, {"who": 5, "why": "x"}), "'who' must be"),
        (post(kill, {"on": False, "why": "x"}), "'who' is required"),
        (delete(levers, {"who": "ops", "why": "x"}), "'lever_id' is required"),
        (delete(levers, {"lever_id": ["a"], "who": "ops", "why": "x"}), "'lever_id' must be"),
        (delete(levers, {"lever_id": "a", "who": "ops", "why": 5}), "'why' must be"),
        (post(levers, {"action": "offer_10pct", "who": "a", "why": "b"}), "'kind' is required: one of pin, boost"),
        (post(levers, {"kind": 5, "action": "offer_10pct", "who": "a", "why": "b"}), "'kind' must be one of pin"),
        (post(levers, {"kind": ["pin"], "action": "offer_10pct", "who": "a", "why": "b"}), "'kind' must be one of"),
        (post(levers, {"kind": "pin", "action": "offer_10pct", "who": "a"}), "'why' is required"),
        (post(levers, {"kind": "pin", "action": "offer_10pct", "who": "a", "why": "b", "user": "u1"}),
         "unknown field 'user'"),
        (post(levers, {"kind": "pin", "action": "offer_10pct", "who": "a", "why": "b", "lever_id": ["x"]}),
         "lever_id must be a non-empty string"),
        (post(erase, {"user_id": "u1", "who": 7}), "'who' must be"),
    ]
    for response, message in cases:
        assert response.status == 400 and message in response.body["error"], (message, response.body)
        assert "bad request body" not in response.body["error"] and response.body["what_to_do"]
    assert erasures.erased == []
    assert asyncio.run(levers.get(Web(), Request(method="GET"))).body["levers"] == []
    assert delete(levers, {"lever_id": "nope", "who": "ops", "why": "x"}).status == 400  # no such lever: named


def test_decide_answers_503_from_the_moment_the_worker_starts_to_stop() -> None:
    # it answered normally while the intake's last batch finished (up to 15 s): the website waited on a worker
    # that was going away instead of asking another one
    stopping = asyncio.Event()
    pages, _, _ = views(stopping=stopping)  # its engine cannot decide (process_isolating is None)
    stopping.set()
    response = asyncio.run(pages["/decide"](Web(), Request(token=API, query={"user_id": "u1", "placement": "home_hero"},
                                                          method="GET")))
    assert (response.status, response.headers["Retry-After"]) == (503, "1")
    assert "another worker" in response.body["what_to_do"]


class AuditedLevers(Levers):
    """A lever store whose audit is a list of its own (as Redis' {ns}:levers:audit), not in the book."""

    def __init__(self, records: list[AuditRecord]) -> None:
        super().__init__()
        self.records, self.asked = records, []

    async def audit(self, last: int) -> list[AuditRecord]:
        self.asked.append(last)
        return await super().audit(last)


def test_get_levers_shows_the_newest_audit_entries_from_the_audit_list() -> None:
    # the audit used to be read from the book every worker reloads (and grew without end inside it)
    records = [AuditRecord(1_780_000_000.0 + i, "crm", "sync", "apply", f"p{i}", {"lever_id": f"p{i}"})
               for i in range(150)]
    levers = AuditedLevers(records)
    pages, _, _ = views(levers=levers)
    view = pages["/admin/levers"]
    body = asyncio.run(view.get(Web(), Request(method="GET"))).body
    assert body["levers"] == [] and [a["lever_id"] for a in body["audit"]] == [f"p{i}" for i in range(50, 150)]
    assert body["audit"][-1] == {"ts": 1_780_000_149.0, "who": "crm", "why": "sync", "change": "apply",
                                 "lever_id": "p149", "lever": {"lever_id": "p149"}}
    some = asyncio.run(view.get(Web(), Request(method="GET", query={"audit": "3"}))).body
    assert [a["lever_id"] for a in some["audit"]] == ["p147", "p148", "p149"] and levers.asked == [100, 3]
    for bad in ("x", "-1", "1e9"):
        response = asyncio.run(view.get(Web(), Request(method="GET", query={"audit": bad})))
        assert response.status == 400 and "'audit'" in response.body["error"]


class Counted(Metric):
    """A labelled counter that keeps its counts by label values."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, ...], float] = {}
        self._labels: tuple[str, ...] = ()

    def labels(self, *values: Any) -> Counted:
        self._labels = tuple(map(str, values))
        return self

    def inc(self, amount: float = 1.0) -> None:
        self.counts[self._labels] = self.counts.get(self._labels, 0.0) + amount


def deciding_views() -> tuple[dict[str, Any], list[str], list[Any], Counted]:
    """/decide views on a stand-in engine that decides every valid request event: the views, the user ids of the
    requests that reached the engine, the dead letters emitted, and cadence_dead_letters_total."""
    from contracts.decisions import Decision, Mode
    from contracts.events import Event, parse_event
    from engine.processor import BatchOutput

    reached: list[str] = []
    emitted: list[Any] = []
    dead_letters = Counted()

    async def process_isolating(messages: list[Any], decided: Any = None, source: str = "intake") -> BatchOutput:
        out = BatchOutput()
        for message in messages:
            event = parse_event(message.value, message.topic)
            assert isinstance(event, Event), event
            reached.append(event.user_id)
            out.decisions.append(Decision(f"d-{event.event_id}", event.event_id, event.user_id, event.ts, "web",
                                          event.placement or "", "offer_10pct", 1.0, Mode.EXPLOIT, "linucb", 0))
        if decided is not None:
            decided(out)
        return out

    async def emit(out: BatchOutput) -> None:
        emitted.extend(out.dead_letters)

    metrics = types.SimpleNamespace(http_outputs_lost=Metric(), http_latency=Metric(), http_requests=Metric(),
                                    dead_letters=dead_letters)
    pages, _, _ = views(emit=emit, metrics=metrics, process_isolating=process_isolating)
    return pages, reached, emitted, dead_letters


def test_query_values_that_are_not_utf8_are_refused_not_merged_into_one_user() -> None:
    # aiohttp decodes bytes that are not UTF-8 to U+FFFD: user_id=%FF and user_id=%FE were both decided as the
    # user "\ufffd", sharing their features, caps and stickiness, without a word to anyone
    pages, reached, emitted, dead_letters = deciding_views()

    async def calls() -> list[Response]:
        responses = [await pages["/decide"](Web(), Request(token=API, method="GET", raw_query=query)) for query in (
            "user_id=%FF&placement=home_hero", "user_id=%FE&placement=home_hero",
            "placement=home_hero&user_id=ok&user_id=%C3", "user_id=u1&placement=%E9",
            "user_id=u1&placement=home_hero&%FF=1")]
        await asyncio.sleep(0.05)  # the dead letters are emitted in the background, coalesced over 5 ms
        return responses

    responses = asyncio.run(calls())
    assert [r.status for r in responses] == [400] * 5 and reached == []
    for response, name in zip(responses, ("user_id", "user_id", "user_id", "placement", "%FF"), strict=True):
        assert f"{name!r}" in response.body["error"] and "not UTF-8" in response.body["error"], response.body
        assert "UTF-8 text, percent-encoded" in response.body["what_to_do"]
    assert responses[0].body["reason_code"] == "invalid_value"
    assert [(d.source_topic, d.reason_code, d.raw) for d in emitted[:2]] == [
        ("http:/decide", "invalid_value", b"user_id=%FF&placement=home_hero"),
        ("http:/decide", "invalid_value", b"user_id=%FE&placement=home_hero")]  # the query as sent
    assert len(emitted) == 5 and dead_letters.counts == {("invalid_value",): 5.0}


def test_a_non_ascii_user_id_in_utf8_is_decided_as_itself() -> None:
    pages, reached, emitted, _ = deciding_views()

    async def calls() -> list[Response]:
        return [await pages["/decide"](Web(), Request(token=API, method="GET", raw_query=query)) for query in (
            "user_id=%C3%A9l%C3%A8ve&placement=home_hero&request_id=r1",
            "user_id=a+b&placement=home_hero&request_id=r2",  # '+' is a space, as before
            "user_id=x&user_id=%EF%BF%BD&placement=home_hero&request_id=r3")]  # U+FFFD sent as UTF-8: valid

    responses = asyncio.run(calls())
    assert [r.status for r in responses] == [200] * 3, [r.body for r in responses]
    assert [r.body["user_id"] for r in responses] == reached == ["élève", "a b", "\ufffd"] and emitted == []


def test_a_profile_asked_with_a_user_id_that_is_not_utf8_is_a_400() -> None:
    asked: list[str] = []

    async def read(user_id: str) -> Any:
        asked.append(user_id)
        raise AssertionError("the store is not read for such a user_id")

    pages, _, _ = views(read=read)
    response = asyncio.run(pages["/profile"](Web(), Request(token=API, method="GET", raw_query="user_id=%FF")))
    assert response.status == 400 and "'user_id'" in response.body["error"] and "not UTF-8" in response.body["error"]
    assert "percent-encoded" in response.body["what_to_do"] and asked == []


def test_not_utf8_names_the_parameter_and_passes_what_aiohttp_reads_alike() -> None:
    assert not_utf8("user_id=u1&placement=home_hero") is None
    assert not_utf8("user_id=%C3%A9l%C3%A8ve&page=a+b&x=%zz&y=%") is None  # UTF-8, a space, and '%' kept as text
    assert not_utf8("user_id=%EF%BF%BD") is None  # U+FFFD itself, sent as UTF-8
    assert "'user_id'" in (not_utf8("placement=home_hero&user_id=%FE") or "")
    assert "parameter name" in (not_utf8("%FF=1") or "")
    # aiohttp's pure-Python parser hands raw bytes that are not UTF-8 over as lone surrogates
    assert "'user_id'" in (not_utf8("user_id=\udcff") or "")
    assert "parameter name" in (not_utf8("\udcff=1") or "")
