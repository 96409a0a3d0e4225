"""The worker's HTTP endpoints: GET /decide for the website, /profile for CRM tools, /admin/* levers.

/decide goes through the same ``Engine.process`` as the stream: the request becomes a decision-request
event (validated like any other, so bad input ends in dead-letters too), then the decision is returned
and emitted to the decisions topic without waiting for the broker's acknowledgement.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from pydantic import SecretStr
from redis.exceptions import RedisError

from contracts.decisions import DeadLetter
from contracts.events import MAX_ID_LEN, Reason
from engine.processor import BatchOutput, Engine, RawMessage
from features.erasure import ErasureRegistry
from features.store import FeatureStoreError
from policy.lever_store import LeverStore
from policy.levers import Lever, LeverBook, LeverError, LeverKind
from streams import handover
from streams.decide_batcher import Answer, BackgroundEmits, DecideBatcher, EngineFailed

log = logging.getLogger(__name__)

REQUEST_TYPES = {"web": ("web-events", "page_view"), "email": ("email-events", "email_request"),
                 "ad": ("ad-events", "ad_request")}
MAX_BODY_BYTES = 16 * 1024
OPTIONAL_PARAMS = ("device", "segment", "page", "campaign_id")
HTTP_SOURCE = "http:/decide"  # source_topic of a /decide request refused before its placement's channel was known
KNOWN_PARAMS = frozenset({"user_id", "placement", "request_id", "ts", "consent", *OPTIONAL_PARAMS})


@dataclass(slots=True)
class TokenBucket:
    """At most ``rate`` requests per second on average, ``burst`` at once (wall clock: it guards I/O)."""

    rate: float
    burst: float
    _tokens: float = 0.0
    _last: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self._tokens = self.burst

    def take(self) -> float:
        """0.0 if allowed, else the seconds to wait before the next request would be."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate


def _authorized(request: Any, token: SecretStr | None) -> bool:
    """A bearer token equal to ``token``; never for an unset or empty token (Settings refuses empty ones too),
    and a header that is not valid UTF-8 is simply not the token (no error)."""
    expected = token.get_secret_value() if token is not None else ""
    if not expected:
        return False
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    try:
        presented = given.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a code point no request bytes decode to: not the token
        return False
    return scheme.lower() == "bearer" and hmac.compare_digest(presented, expected.encode())


class BodyTooLarge(Exception):
    """An admin request body beyond MAX_BODY_BYTES, found while reading it (chunked: no Content-Length)."""


class BadField(ValueError):
    """A field of an admin request body that is missing or of the wrong type; the message names it."""


def _required(doc: dict[str, Any], name: str, what: str) -> str:
    """``doc[name]``, a non-empty string; else :class:`BadField` naming it and ``what`` it must be."""
    value = doc.get(name)
    if value is None:
        raise BadField(f"{name!r} is required: {what}")
    if not isinstance(value, str) or not value:
        raise BadField(f"{name!r} must be {what}, got {value!r:.60}")
    return value


def _optional(doc: dict[str, Any], name: str, what: str) -> str | None:
    """As :func:`_required`, but an absent field (or null) is None."""
    return None if doc.get(name) is None else _required(doc, name, what)


AUDIT_SHOWN = 100  # GET /admin/levers: the newest audit entries shown; ?audit=N for another number
AUDIT_SHOWN_MAX = 10_000
WHO = "the person making the change, a non-empty string (audited)"
WHY = "why the change is made, a non-empty string (audited)"


def _view(fun: Callable[..., Awaitable[faust.web.Response]]) -> type[faust.web.View]:
    """A Faust view answering GET, POST and DELETE with ``fun`` (Faust's function views only do GET)."""
    return type(fun.__name__, (faust.web.View,), {"get": fun, "post": fun, "delete": fun, "__module__": __name__})


def _error(web: faust.web.View, status: int, what: str, todo: str, **extra: Any) -> faust.web.Response:
    return web.json({"error": what, "what_to_do": todo, **extra}, status=status)


def _store_away(web: faust.web.View, exc: Exception) -> faust.web.Response:
    """503 with Retry-After when Redis does not answer (the request changed nothing)."""
    response = _error(web, 503, f"the feature store (Redis) is unreachable ({type(exc).__name__})",
                      "retry in a few seconds; nothing was changed (ops: check Redis, "
                      "cadence_feature_store_errors_total)")
    response.headers["Retry-After"] = "5"
    return response


def _too_many(web: faust.web.View, wait: float) -> faust.web.Response:
    """429 with Retry-After (whole seconds, at least 1) for a request over the rate limit."""
    response = _error(web, 429, "too many requests", f"retry after {wait:.3f}s")
    response.headers["Retry-After"] = str(max(1, round(wait)))
    return response


NOT_UTF8_WHAT_TO_DO = "send every parameter as UTF-8 text, percent-encoded (e.g. 'é' as %C3%A9)"


def not_utf8(raw_query: str) -> str | None:
    """What is wrong with a query string (as received, percent-encoded) whose parameter name or value is not
    UTF-8 once percent-decoded, naming the parameter; None for a query that is UTF-8 throughout.

    aiohttp decodes such bytes to U+FFFD: ``user_id=%FF`` and ``user_id=%FE`` would both read as "\ufffd", two
    users taken for one. Pairs are split as aiohttp's yarl splits them (on ``&``; ``+`` is a space). aiohttp's
    compiled parser refuses raw bytes that are not ASCII before a view runs; its pure-Python one passes them on
    as lone surrogates, which are refused here too."""
    if "%" not in raw_query and raw_query.isascii():  # the usual query: nothing to decode
        return None
    for pair in raw_query.split("&"):
        sent_name, _, value = pair.partition("=")
        name = _decoded(sent_name)
        if name is None:
            return f"the parameter name {sent_name[:40]!r} is not UTF-8 once percent-decoded"
        if _decoded(value) is None:
            return f"{name[:40]!r} is not UTF-8 once percent-decoded (sent as {value[:60]!r})"
    return None


def _decoded(sent: str) -> str | None:
    """``sent`` percent-decoded (``+`` a space), or None when that is not UTF-8 text (lone surrogates too)."""
    try:
        text = urllib.parse.unquote_plus(sent, errors="strict")
    except UnicodeDecodeError:
        return None
    return None if not text.isascii() and any("\ud800" <= c <= "\udfff" for c in text) else text


class BadParameters(ValueError):
    """A /decide query the request event cannot be built from; the message says what is wrong, ``reason`` is
    its dead-letter reason code."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def decide_request(params: dict[str, str], placement_channel: str, now: float) -> tuple[str, str, bytes]:
    """The decision-request event (event id, topic, JSON bytes) for an HTTP call, validated later like any event.

    Raises ``BadParameters`` for a parameter /decide does not take (one named like an event field, ``type``
    or ``decision_id``, would otherwise make the request another event) or a ``ts`` that is not a finite number.
    """
    topic, etype = REQUEST_TYPES[placement_channel]
    unknown = sorted(name for name in params if name not in KNOWN_PARAMS)
    if unknown:
        raise BadParameters(Reason.UNEXPECTED_FIELD, f"unknown parameter(s) {[name[:40] for name in unknown[:5]]}; "
                            f"/decide takes {sorted(KNOWN_PARAMS)}")
    try:
        ts = float(params["ts"]) if params.get("ts") else now
    except ValueError:
        ts = math.nan
    if not math.isfinite(ts):
        raise BadParameters(Reason.WRONG_TYPE,
                            f"ts {params['ts'][:40]!r} is not a number of epoch seconds; omit it to decide for now")
    doc: dict[str, Any] = {
        "event_id": params.get("request_id") or f"http-{uuid.uuid4().hex}",
        "user_id": params.get("user_id", ""),
        "ts": ts,
        "type": etype,
        "placement": params.get("placement", ""),
    }
    for name in OPTIONAL_PARAMS:
        if params.get(name):
            doc[name] = params[name]
    if "consent" in params:  # another spelling than true/false stays a string: refused (wrong_type) as on the stream
        consent = params["consent"]
        doc["consent"] = {"true": True, "false": False}.get(consent, consent)
    return doc["event_id"], topic, orjson.dumps(doc)


def answer_status(answer: Answer | EngineFailed, ts_given: bool = True) -> tuple[int, dict[str, Any] | None]:
    """HTTP status of a /decide answer, and the error document unless it is a decision (200). ``ts_given``:
    the request said its ts (else it was stamped with the worker's clock, which a refusal of ts must say)."""
    def problem(what: str, todo: str, **extra: Any) -> dict[str, Any]:
        return {"error": what, "what_to_do": todo, **extra}

    if isinstance(answer, EngineFailed):
        return 500, problem(f"the engine failed on this request's batch ({answer})",
                            "retry, or show the placement's default action; the worker log has the traceback")
    dl = answer.dead_letter
    if dl is not None and dl.reason_code == Reason.ENGINE_ERROR:
        return 500, problem(f"the engine failed on this request ({dl.reason})",
                            "show the placement's default action; the request is in dead-letters for a bug report")
    if dl is not None and dl.reason_code == Reason.TS_OUT_OF_RANGE:
        stamped = "" if ts_given else ("this request had no ts, so it was stamped with the worker's clock, which is "
                                       "not the stream's event time (e.g. the simulator's); ")
        return 400, problem(dl.reason, f"{stamped}send ts in the stream's event time, epoch seconds (GET /health "
                            "shows its watermark)", reason_code=dl.reason_code)
    if dl is not None:
        return 400, problem(dl.reason, "fix the request parameters", reason_code=dl.reason_code)
    if answer.decision is None:  # a repeated request_id whose decision is no longer kept
        return 409, problem("request_id was already decided", "send a new request_id")
    return 200, None


def register_views(
    app: faust.App, engine: Engine, api_token: SecretStr | None, admin_token: SecretStr | None,
    emit: Callable[[BatchOutput], Awaitable[None]], levers: LeverStore, erasures: ErasureRegistry,
    tombstone: Callable[[str, str], Awaitable[None]], max_rps: float, stopping: asyncio.Event,
) -> Callable[[], Awaitable[None]]:
    """Register the HTTP views; returns what shutdown awaits before the producer stops (/decide outputs).
    ``stopping``: set when the worker starts to stop; /decide answers 503 from then on."""
    bucket = TokenBucket(rate=max_rps, burst=max_rps)
    metrics = engine.metrics

    async def emit_or_count(out: BatchOutput) -> None:
        """Send /decide outputs (answered already): refused ones are sent again like the intake's, then
        counted as lost instead of vanishing with a task nobody awaits."""
        try:
            await handover.with_resends(lambda: emit(out))
        except Exception as exc:
            metrics.http_outputs_lost.inc()
            log.error("outputs of a /decide batch (%d decisions, %d dead letters) were not delivered after %d "
                      "tries (%s: %s); counted in cadence_http_outputs_lost_total", len(out.decisions),
                      len(out.dead_letters), handover.RESENDS + 1, type(exc).__name__, exc)

    def decide_batch(messages: list[RawMessage], decided: Callable[[BatchOutput], None]) -> Awaitable[BatchOutput]:
        return engine.process_isolating(messages, decided, source="http")  # batch metrics apart from the intake's

    # one bad request cannot fail its batch; outputs of batches finishing within 5 ms go out together
    outputs = BackgroundEmits(emit_or_count)
    batcher = DecideBatcher(decide_batch, outputs)

    def refused(request: faust.web.Request, reason: Reason, what: str, topic: str = HTTP_SOURCE,
                raw_query: str | None = None) -> None:
        """A /decide request refused before it became an event still goes to dead-letters (its query string as
        the raw input, or ``raw_query`` when given; the request topic of its placement's channel, or
        ``http:/decide`` when the placement is unknown) and counts in cadence_dead_letters_total, as a refused
        event does."""
        raw = (request.query_string if raw_query is None else raw_query).encode(errors="replace")
        outputs(BatchOutput(dead_letters=[DeadLetter(topic, -1, -1, reason.value, what, raw)]))
        metrics.dead_letters.labels(reason.value).inc()

    async def drain_decide_outputs() -> None:
        """Shutdown (``stopping`` is set: new /decide requests get a 503): the batches in the engine finish, and
        their outputs reach the broker."""
        stopping.set()
        await batcher.settle()
        await outputs.drain()

    def now_event_time() -> float:
        """'Now' for /profile: the stream's event time when there is one, else the clock. Not for levers: the
        watermark is the latest event time accepted, and a lever stamped with it missed every event before."""
        return engine.watermark or time.time()

    @app.page("/decide")
    async def decide_view(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        started = time.perf_counter()
        status = 200
        try:
            if api_token is None:
                status = 404
                return _error(web, status, "GET /decide is disabled", "set CADENCE_API_TOKEN on the workers")
            if not _authorized(request, api_token):
                status = 401
                return _error(web, status, "missing or wrong bearer token",
                              "send 'Authorization: Bearer <CADENCE_API_TOKEN>'")
            if stopping.is_set():
                status = 503
                response = _error(web, status, "this worker is stopping", "send the request to another worker")
                response.headers["Retry-After"] = "1"
                return response
            wait = bucket.take()
            if wait:
                status = 429
                return _too_many(web, wait)
            params = {k: v for k, v in request.query.items()}
            if len(request.query_string) > 2048:
                status = 400
                refused(request, Reason.TOO_LARGE, "query string longer than 2048 bytes")
                return _error(web, status, "query string longer than 2048 bytes", "send only the documented fields")
            raw_query = request.rel_url.raw_query_string
            if (what := not_utf8(raw_query)) is not None:  # the percent-encoded query: decoded, its bytes are lost
                status = 400
                refused(request, Reason.INVALID_VALUE, what, raw_query=raw_query)
                return _error(web, status, what, NOT_UTF8_WHAT_TO_DO, reason_code=Reason.INVALID_VALUE.value)
            placement = engine.catalogue.placements.get(params.get("placement", ""))
            if placement is None:
                status = 400
                what = (f"unknown placement {params['placement'][:64]!r}" if params.get("placement")
                        else "placement is missing")
                refused(request, Reason.INVALID_VALUE, what)
                return _error(web, status, what, "use a placement of the catalogue",
                              placements=sorted(engine.catalogue.placements))
            try:
                event_id, topic, raw = decide_request(params, placement.channel, time.time())
            except BadParameters as exc:
                status = 400
                refused(request, exc.reason, str(exc), REQUEST_TYPES[placement.channel][0])
                todo = ("send ts as epoch seconds, or leave it out" if exc.reason is Reason.WRONG_TYPE
                        else "send only the documented parameters")
                return _error(web, status, str(exc), todo)
            try:
                request_key = (params.get("user_id", ""), event_id, placement.id)
                answer: Answer | EngineFailed = await batcher.decide(request_key, RawMessage(topic, -1, -1, raw,
                                                                                             time.time()))
            except EngineFailed as exc:
                answer = exc
            status, problem = answer_status(answer, ts_given=bool(params.get("ts")))
            if problem is not None:
                return web.json(problem, status=status)
            assert isinstance(answer, Answer) and answer.decision is not None
            return web.bytes(answer.decision.to_json(), content_type="application/json")
        finally:
            metrics.http_latency.labels(str(status)).observe(time.perf_counter() - started)
            metrics.http_requests.labels("decide", str(status)).inc()

    @app.page("/profile")
    async def profile_view(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        if api_token is None:
            return _error(web, 404, "GET /profile is disabled", "set CADENCE_API_TOKEN on the workers")
        if not _authorized(request, api_token):
            return _error(web, 401, "missing or wrong bearer token", "send 'Authorization: Bearer <CADENCE_API_TOKEN>'")
        if len(request.query_string) > 2048:
            return _error(web, 400, "query string longer than 2048 bytes", "pass only user_id and ts")
        if (what := not_utf8(request.rel_url.raw_query_string)) is not None:  # "\ufffd" would stand for them all
            return _error(web, 400, what, NOT_UTF8_WHAT_TO_DO)
        wait = bucket.take()  # the same per-worker budget as /decide: a profile read costs a Redis round trip
        if wait:
            return _too_many(web, wait)
        user_id = request.query.get("user_id", "")
        if not 0 < len(user_id) <= 128:
            return _error(web, 400, "user_id must be 1..128 characters", "pass ?user_id=...")
        try:
            at = float(request.query.get("ts") or now_event_time())
        except ValueError:
            at = math.nan
        if not math.isfinite(at):
            return _error(web, 400, "ts must be a number (epoch seconds)", "omit ts for the stream's current time")
        try:
            state = await engine.store.read(user_id)
        except (RedisError, FeatureStoreError) as exc:
            return _store_away(web, exc)
        # Model scores at ``at`` (churn risk, value, propensity per action), as decisions see them; not for
        # customers who refused marketing (no decision uses scores for them either), nor for one erased or one
        # the engine holds nothing on: scores of an empty profile (the population's) read like this person's.
        scores: dict[str, Any]
        if engine.erased is not None and user_id in engine.erased:
            scores = {"withheld": "erased"}
        elif not state.exists:
            scores = {"withheld": "no_data"}
        elif state.consent is False:
            scores = {"withheld": "no_consent"}
        else:
            scores = engine.profile_scores(state, at)
        return web.json({
            "user_id": user_id, "at": at, "exists": state.exists,
            "profile": {"device": state.device, "segment": state.segment, "consent": state.consent},
            "features": state.features(at),
            "scores": scores,
        })

    def admin(handler: Callable[..., Awaitable[faust.web.Response]]) -> Callable[..., Awaitable[faust.web.Response]]:
        async def guarded(web: faust.web.View, request: faust.web.Request, **kw: Any) -> faust.web.Response:
            if admin_token is None:
                return _error(web, 404, "admin endpoints are disabled", "set CADENCE_ADMIN_TOKEN on the workers")
            if not _authorized(request, admin_token):
                return _error(web, 401, "missing or wrong admin bearer token",
                              "send 'Authorization: Bearer <CADENCE_ADMIN_TOKEN>'")
            length = request.content_length  # type: ignore[attr-defined]  # faust's Request is aiohttp's
            if length and length > MAX_BODY_BYTES:
                return _error(web, 413, f"body larger than {MAX_BODY_BYTES} bytes", "send one change at a time")
            try:
                return await handler(web, request, **kw)
            except BodyTooLarge:  # a chunked body has no Content-Length: counted while read
                return _error(web, 413, f"body larger than {MAX_BODY_BYTES} bytes", "send one change at a time")
            except (LeverError, BadField) as exc:
                return _error(web, 400, str(exc), "fix the field named and send again")
            except (RedisError, FeatureStoreError) as exc:
                return _store_away(web, exc)
            except orjson.JSONDecodeError as exc:
                return _error(web, 400, f"the body is not JSON: {exc}", "send a JSON object with the documented fields")
            except (ValueError, KeyError, TypeError) as exc:  # a field no check above names: still a 400
                return _error(web, 400, f"bad request body: {type(exc).__name__}: {exc}",
                              "send a JSON object with the documented fields")

        guarded.__name__ = handler.__name__
        return guarded

    async def body(request: faust.web.Request) -> dict[str, Any]:
        stream = request.content  # type: ignore[attr-defined]  # aiohttp's StreamReader
        chunks, size = [], 0
        while chunk := await stream.read(MAX_BODY_BYTES + 1):  # b"" at the end of the body
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise BodyTooLarge
            chunks.append(chunk)
        doc = orjson.loads(b"".join(chunks))
        if not isinstance(doc, dict):
            raise BadField(f"the body must be a JSON object with the documented fields, got {type(doc).__name__}")
        return doc

    async def levers_view(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        if request.method == "POST":
            doc = await body(request)
            doc.setdefault("lever_id", f"lv-{uuid.uuid4().hex[:10]}")
            # without "ts" it applies to every event processed from now on, whatever its event time
            doc["set_at"] = time.time()  # for the audit: when it was set, not what the client says
            lever = Lever.from_dict(doc)
            lever.check_targets(engine.catalogue)  # a typo would match nothing: 400 naming the known ids
            book = await levers.update(lambda b: b.apply(lever))
            engine.policy_ctx.levers = book  # here at once; the other workers within a second
            return web.json({"applied": lever.to_dict(), "levers": len(book.levers)}, status=201)
        if request.method == "DELETE":
            doc = await body(request)
            lever_id = _required(doc, "lever_id", "the id of the lever to revoke, a string")
            who, why = _required(doc, "who", WHO), _required(doc, "why", WHY)
            book = await levers.update(lambda b: b.revoke(lever_id, who, why, time.time()))
            engine.policy_ctx.levers = book
            return web.json({"revoked": lever_id, "levers": len(book.levers)})
        last = request.query.get("audit", str(AUDIT_SHOWN))
        if not (last.isascii() and last.isdigit() and int(last) <= AUDIT_SHOWN_MAX):
            raise BadField(f"'audit' must be how many of the newest audit entries to show, 0..{AUDIT_SHOWN_MAX}, "
                           f"got {last!r:.40}")
        book = await levers.load()  # first: a book of the previous release moves its audit to the list
        return web.json({"levers": [lv.to_dict() for lv in book.levers],
                         "audit": [{"ts": a.ts, "who": a.who, "why": a.why, "change": a.change,
                                    "lever_id": a.lever_id, "lever": a.lever} for a in await levers.audit(int(last))]})

    async def kill_view(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        doc = await body(request)
        placement = _optional(doc, "placement", "a placement id (a string), or left out for every placement")
        who, why = _required(doc, "who", WHO), _required(doc, "why", WHY)
        lever_id = "kill-" + (placement or "all")
        on = doc.get("on", True)
        if not isinstance(on, bool):  # "false" (a string) used to switch it on
            raise BadField(f"'on' must be true or false (JSON booleans), got {on!r:.40}")
        if on:
            # no ts: every request processed from now on gets the default, whatever its event time
            lever = Lever(lever_id, LeverKind.KILL, who, why, placement=placement, set_at=time.time())
            lever.check_targets(engine.catalogue)
            engine.policy_ctx.levers = await levers.update(lambda b: b.apply(lever))
            return web.json({"kill_switch": "on", "lever_id": lever_id})
        revoked: list[str] = []  # every kill of this scope, also one the CLI set under another id

        def switch_off(book: LeverBook) -> None:
            revoked[:] = book.revoke_kills(placement, who, why, time.time())

        book = await levers.update(switch_off)
        engine.policy_ctx.levers = book
        # kills of other scopes (another placement, or one on every placement) still hold: say which
        still_on = [{"lever_id": lv.lever_id, "placement": lv.placement, "segment": lv.segment,
                     "one_user": lv.user_id is not None} for lv in book.kills()]
        return web.json({"kill_switch": "off", "revoked": revoked, "still_on": still_on})

    async def erase_view(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        doc = await body(request)
        user_id = doc.get("user_id")
        if not isinstance(user_id, str) or not 0 < len(user_id) <= MAX_ID_LEN:
            raise BadField(f"'user_id' must be the user's id, a string of 1..{MAX_ID_LEN} characters; "
                           f"got {user_id!r:.80}")
        who = _required(doc, "who", "the person asking, a non-empty string (audited)")
        if erasures.user_digest is None:  # the worker is starting (or its key is refused: its log says why)
            response = _error(web, 503, "this worker has not read the erasure key yet",
                              "retry in a few seconds or send it to another worker; nothing was erased (ops: "
                              "the worker's log says why if this lasts)")
            response.headers["Retry-After"] = "5"
            return response
        deleted = await erasures.erase(user_id)  # from here on Redis refuses the user's writes
        engine.erased = await erasures.erased_users()  # and this worker leaves them out before asking Redis
        await levers.update(lambda b: b.forget_user(user_id, erasures.label(user_id)))
        await tombstone(user_id, who)
        return web.json({"erased": True, "keys_deleted": deleted})

    async def lift_view(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        return web.json(engine.lift.result())

    for path, handler in (("/admin/levers", levers_view), ("/admin/kill", kill_view),
                          ("/admin/erase-user", erase_view), ("/admin/lift", lift_view)):
        app.page(path)(_view(admin(handler)))
    return drain_decide_outputs
