"""River models in the live engine: after learning on a seeded stream, scores appear in decisions and in
/profile, are sensible (higher propensity where conversions happen, higher churn risk for customers who
leave), model metrics and drifts reach /metrics, and snapshots and the published scorer carry the models."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from bandits import make_policy
from cadence.metrics import Metrics
from cadence.runtime import Runtime
from cadence.settings import DEFAULT_CATALOGUE
from contracts.decisions import LearningBatch, LearningSample, decode_batch, encode_samples
from engine.processor import Engine, EngineConfig, RawMessage
from features.context import CONTEXT_DIM, CONTEXT_NAMES
from features.store import RedisFeatureStore
from learning.label_join import JoinConfig
from learning.live_models import (
    CHURN_CHUNK,
    MODEL_NAMES,
    LiveModels,
    LiveScorer,
    ModelConfig,
    churn_chunk_bytes,
    encode_churn_labels,
)
from learning.model_exchange import ModelExchange
from learning.snapshots import SnapshotInfo, SnapshotStore
from learning.source_progress import SourceProgress
from learning.state import LearnedState
from models.churn import ChurnLabel
from models.compiled import CompiledScorer
from policy.catalogue import load_catalogue
from policy.pipeline import PolicyContext
from policy.stickiness import StickinessSettings
from tests.helpers import T0, TopicReader, event, produce, start_worker
from tests.integration.test_engine_on_redis import erasure_digest

pytestmark = pytest.mark.integration
BEST = "offer_bundle"
DAY = 86400.0


def messages(docs: list[dict]) -> list[RawMessage]:
    return [RawMessage("web-events", 0, i, orjson.dumps(d)) for i, d in enumerate(docs)]


def in_process_engine(rt: Runtime, namespace: str) -> Engine:
    """An engine on the real Redis that shows offers uniformly at random (ε = 1) and trains the models."""
    client = aioredis.Redis.from_url(rt.redis_url or "")
    store = RedisFeatureStore(client, namespace, ttl_s=30 * 86400, dedup_ring=16,
                              user_digest=erasure_digest(rt, namespace))
    # Sticky placements decide deterministically (no random draw), so for offers shown uniformly at random
    # this engine's catalogue has no stickiness: the models, not the rate limit, are under test here.
    catalogue = load_catalogue(DEFAULT_CATALOGUE)
    catalogue.placements = {k: replace(p, stickiness=StickinessSettings()) for k, p in catalogue.placements.items()}
    ctx = PolicyContext(catalogue)
    config = ModelConfig(join=JoinConfig(window_s=1800.0, grace_s=60.0), churn_horizon_s=DAY,
                         churn_sample_every_s=6 * 3600.0, min_samples=50)
    models = LiveModels(config, 0.1, ctx.catalogue.value_scale)
    models.training = True
    policy = make_policy("egreedy", CONTEXT_DIM, seed=3, epsilon=1.0)
    return Engine(store, ctx, policy, Metrics(), EngineConfig(), models=models)


async def seeded_stream(engine: Engine, exchange: ModelExchange, rng: np.random.Generator) -> int:
    """Three days: vip customers visit every 30 min; 60 new ones visit once each, spread over the first 30
    hours (at every hour of the day), and never come back. offer_bundle converts for vip customers 60 % of
    the time; every other offer, or a new customer, 3 %."""
    vip = [f"vip{i}" for i in range(12)]
    decisions = 0
    pending: list[dict] = []
    for step in range(3 * 48):
        ts = T0 + step * 1800.0
        users = vip + ([f"new{step}"] if step < 60 else [])
        docs = pending + [event(f"r{step}-{u}", user_id=u, ts=ts + i, device="mobile", consent=True,
                                segment="vip" if u.startswith("vip") else "new") for i, u in enumerate(users)]
        out = await engine.process(messages(docs))
        engine.learn(out.learning)
        pending = []
        for d in out.decisions:
            decisions += 1
            p = 0.6 if (d.action == BEST and d.user_id.startswith("vip")) else 0.03
            if d.action.startswith("offer_") and rng.random() < p:
                pending.append(event(f"c-{d.decision_id}", user_id=d.user_id, etype="conversion", ts=d.ts + 120,
                                     decision_id=d.decision_id, revenue=float(rng.uniform(20, 40))))
        chunks = engine.models.take_churn_labels()
        if chunks is not None:
            await exchange.push_churn(chunks)
        engine.models.add_churn_labels(await exchange.pop_churn())
        while engine.models.train(1000):
            pass
    return decisions


def test_scores_learned_in_the_engine_are_sensible_published_exported_and_snapshotted(runtime: Runtime) -> None:
    namespace = f"models{uuid.uuid4().hex[:8]}"
    engine = in_process_engine(runtime, namespace)
    client = engine.store.client
    exchange = ModelExchange(client, namespace)

    async def go():  # noqa: ANN202
        decided = await seeded_stream(engine, exchange, np.random.default_rng(4))
        scorer = engine.models.publish()  # what the snapshot leader does with every snapshot
        await exchange.publish(scorer)
        follower = LiveModels(engine.models.config, 0.1, engine.catalogue.value_scale)
        follower.use(await exchange.newer_scorer(None))
        assert await exchange.newer_scorer(scorer.version) is None  # nothing new since
        store = SnapshotStore(client, namespace)
        await store.save(LearnedState(engine.policy, engine.models.models).pack(),
                         SnapshotInfo(0, engine.policy.name, engine.policy.version))
        _, blob = await store.load()
        later = T0 + 3 * DAY + 600
        out = await engine.process(messages([event(f"q{i}", user_id=f"vip{i}", ts=later + i, device="mobile",
                                                    consent=True, segment="vip") for i in range(12)]))
        profiles = {u: engine.profile_scores(await engine.store.read(u), later) for u in ("vip0", "new0")}
        return decided, scorer, follower, blob, out, profiles

    decided, scorer, follower, blob, out, profiles = asyncio.run(go())
    counts = engine.models.models.samples()
    assert decided > 1500 and counts["propensity"] > 1500 and counts["value"] > 50 and counts["churn"] >= 60
    assert scorer.ready == {"propensity", "churn", "value"}

    # Decisions carry the scores of the published version, for the action they show.
    for d in out.decisions:
        scores = d.trace["scores"]
        assert scores["model_version"] == scorer.version and set(scores) >= {"propensity", "churn_risk", "value"}
    # /profile's scores: the offer that converts comes first for a vip customer; the one who left is at risk.
    vip, gone = profiles["vip0"], profiles["new0"]
    assert max(vip["propensity"], key=vip["propensity"].get) == BEST
    assert vip["propensity"][BEST] > 0.3 > max(p for a, p in vip["propensity"].items() if a != BEST)
    assert gone["churn_risk"] > 0.5 > vip["churn_risk"]
    assert 20.0 < vip["value"] < 45.0

    # The other workers load the published scorer and score exactly alike; the snapshot keeps the models.
    x = np.asarray(out.learning[0].x)
    actions = list(engine.catalogue.actions)
    assert follower.scorer.score(x, actions) == scorer.score(x, actions)
    restored = LiveModels(engine.models.config, 0.1, engine.catalogue.value_scale)
    restored.replace(LearnedState.unpack(blob).models)
    assert restored.scorer.score(x, actions) == pytest.approx(scorer.score(x, actions), rel=1e-12)

    # Metrics and drift counts, as /metrics shows them.
    engine.models.export(engine.metrics)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(engine.metrics.exposition().decode()) for s in f.samples}
    assert 0.0 < samples[("cadence_model_metric", (("metric", "log_loss"), ("model", "propensity")))] < 1.0
    assert samples[("cadence_model_metric", (("metric", "roc_auc"), ("model", "propensity")))] > 0.6
    assert samples[("cadence_model_drifts_total", (("model", "churn"),))] == engine.models.models.drifts()["churn"]
    assert samples[("cadence_model_samples_learned_total", (("model", "value"),))] == counts["value"]

    # Erasure drops the customer's churn watch.
    watched = engine.models.stats()["watched_customers"]
    assert engine.erased is not None
    engine.erased = engine.erased.with_users(["vip0"])
    assert engine.models.stats()["watched_customers"] == watched - 1


# -- a real worker: Kafka in, HTTP out ---------------------------------------------------------------------
API = "models-token"


def get(worker, path: str, **params: object) -> dict:  # noqa: ANN001
    req = urllib.request.Request(f"{worker.url}{path}?{urllib.parse.urlencode(params)}")
    req.add_header("Authorization", f"Bearer {API}")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return orjson.loads(resp.read())


def wait_for(check, timeout_s: float, what: str):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_worker_shows_scores_in_decide_and_profile_and_exports_model_metrics(
    runtime: Runtime, isolated: dict[str, str], data_dir: Path
) -> None:
    prefix = isolated["topic_prefix"]
    # offers drawn uniformly at random (epsilon 1) on a catalogue without stickiness (sticky placements
    # decide deterministically): the models, not the rate limit, are under test here
    catalogue = data_dir / "catalogue_no_stickiness.toml"
    catalogue.write_text(re.sub(r"\[placement\.stickiness\][^\[]*", "", DEFAULT_CATALOGUE.read_text()))
    worker = start_worker(runtime, data_dir, "models-1", api_token=API, snapshot_interval_s="1", policy="egreedy",
                          policy_epsilon="1", holdout_share="0", catalogue=str(catalogue), **isolated)
    try:
        rng = np.random.default_rng(6)
        reader = TopicReader(runtime, prefix + "decisions")
        requests = [event(f"m{i}", user_id=f"w{i}", ts=T0 + 18.0 * i, device="desktop", segment="loyal",
                          consent=True) for i in range(700)]
        # 3.5 hours of event time: with the default label window (1 h + 5 min grace) the windows of about
        # 500 exposures close during the test, and each of them yields its propensity label, 1 or 0, then.
        for start in range(0, len(requests), 100):
            chunk = requests[start:start + 100]
            produce(runtime, prefix + "web-events", chunk)
            wanted = {e["event_id"] for e in chunk}
            got = reader.read_until(lambda recs, w=wanted: w <= {d["request_event_id"] for d in recs})
            conversions = [event(f"cv-{d['decision_id']}", user_id=d["user_id"], etype="conversion", ts=d["ts"] + 90,
                                 decision_id=d["decision_id"], revenue=float(rng.uniform(20, 40)))
                           for d in got if d["request_event_id"] in wanted
                           and rng.random() < (0.9 if d["action"] == BEST else 0.1)]
            produce(runtime, prefix + "web-events", conversions)
        reader.close()

        def scored() -> dict | None:
            d = get(worker, "/decide", user_id="fresh", placement="home_hero", ts=T0 + 4 * 3600,
                    request_id=f"probe-{time.monotonic_ns()}", device="desktop", segment="loyal")
            return d if "propensity" in d["trace"].get("scores", {}) else None

        decision = wait_for(scored, 60, "decisions with model scores")
        assert decision["trace"]["scores"]["model_version"] > 0
        profile = get(worker, "/profile", user_id="w5", ts=T0 + 4 * 3600)
        assert profile["features"]
        assert profile["scores"]["model_version"] >= decision["trace"]["scores"]["model_version"]

        # Positives and negatives come together, as windows close, but the first scorer with propensities can
        # have learned only min_samples (100) labels, about 20 per offer, while an offer gets a model of its own
        # after a 50-label warm-up (models/propensity.py; before it, every offer has the pooled score). So the
        # ranking may need a few more published scorers (seen: 0 s, the first scorer had ~300 labels).
        def ranked() -> dict | None:
            propensity = get(worker, "/profile", user_id="w5", ts=T0 + 4 * 3600)["scores"]["propensity"]
            return propensity if max(propensity, key=propensity.get) == BEST else None

        propensity = wait_for(ranked, 30, f"{BEST} ranked first in /profile's propensities")
        assert propensity[BEST] > max(v for a, v in propensity.items() if a != BEST)

        exported = (r'^cadence_model_metric\{metric="log_loss",model="propensity"\} 0\.\d+',
                    r'^cadence_model_drifts_total\{model="propensity"\} \d', r"^cadence_model_version [1-9]")
        wait_for(lambda: all(re.search(p, worker.metrics_text(), re.M) for p in exported), 5,  # exported each second
                 "model metrics on /metrics")
        assert (worker.health() or {}).get("snapshot") is not None
    finally:
        worker.stop()

    async def latest_models():  # noqa: ANN202
        client = aioredis.Redis.from_url(runtime.redis_url or "")
        found = await SnapshotStore(client, isolated["app_id"]).load()
        await client.aclose()
        return LearnedState.unpack(found[1]).models

    saved = asyncio.run(latest_models())
    assert saved is not None and saved.version > 0
    restarted = start_worker(runtime, data_dir, "models-2", api_token=API, catalogue=str(catalogue), **isolated)
    try:  # a worker that starts decides with the models of the latest snapshot
        again = get(restarted, "/profile", user_id="w5", ts=T0 + 4 * 3600)
        assert again["scores"]["model_version"] == saved.version
        assert max(again["scores"]["propensity"], key=again["scores"]["propensity"].get) == BEST
    finally:
        restarted.stop()


def labels_of_a_lagging_worker(rt: Runtime, max_lag_s: float) -> tuple[float, int, float]:
    """The trainer reads the learning topic of two workers: "fast" runs 1,000 s of event time ahead of "slow",
    whose 40 decisions all convert 300 s later, within their 600 s window, but reach the topic only after fast
    has passed the windows' close. Returns the propensity the trainer then learned for that offer, how many
    propensity labels it learned, and how many times a worker was dropped for lagging (its metric)."""
    engine = in_process_engine(rt, f"lag{uuid.uuid4().hex[:8]}")
    config = ModelConfig(join=JoinConfig(window_s=600.0, grace_s=30.0, max_source_lag_s=max_lag_s), min_samples=1)
    engine.models = LiveModels(config, 0.1, engine.catalogue.value_scale)
    engine.sources = SourceProgress(max_lag_s)
    engine.models.training = True
    x = np.zeros(CONTEXT_DIM)
    x[0] = 1.0

    def batch(source: str, progress: float, samples: list[LearningSample]) -> LearningBatch:
        return decode_batch(encode_samples(samples, source, progress))  # as the learning feed reads them

    def clicks(worker: str, start: float) -> list[LearningSample]:  # other traffic: clicks teach no label
        return [LearningSample("reward", f"{worker}{start}-{i}", "offer_a", x, 0.1, ts=start + i, reward_type="click")
                for i in range(5)]

    shown = [LearningSample("exposure", f"slow{i}", BEST, x, probability=0.2, ts=T0 + i) for i in range(40)]
    converted = [LearningSample("reward", s.decision_id, BEST, x, 0.5, ts=s.ts + 300.0, reward_type="conversion")
                 for s in shown]
    reads = [  # three reads of the learning topic, as the feed hands them over
        [batch("slow", T0 + 39, shown), batch("fast", T0 + 1000, clicks("fast", T0 + 995))],
        [batch("fast", T0 + 1500, clicks("fast", T0 + 1495)), batch("slow", T0 + 400, converted)],
        [batch("slow", T0 + 700, clicks("slow", T0 + 695))],  # slow has caught up past the windows' close
    ]
    for offset, read in enumerate(reads):
        engine.learn_batches(read, {0: offset + 1})
    while engine.models.train(1000):
        pass
    scores = engine.models.publish().score(x, [BEST])
    dropped = [s.value for f in text_string_to_metric_families(engine.metrics.exposition().decode())
               for s in f.samples if s.name == "cadence_learning_producers_dropped_total"]
    return scores[f"propensity:{BEST}"], engine.models.models.samples()["propensity"], sum(dropped)


def test_conversions_of_a_worker_behind_the_others_are_learned_as_positives(runtime: Runtime) -> None:
    held, held_labels, held_dropped = labels_of_a_lagging_worker(runtime, max_lag_s=1800.0)
    # windows close at the fastest worker's time: slow is dropped for lagging in each of the three reads
    fastest, fastest_labels, fastest_dropped = labels_of_a_lagging_worker(runtime, max_lag_s=0.0)
    assert held_labels == fastest_labels == 40  # each exposure labelled once either way
    assert (held_dropped, fastest_dropped) == (0, 3)
    # held open for the slow worker: 40 positives; closed at the fast worker's time: 40 negatives
    assert held > 0.5 > fastest, (held, fastest)


def scorer_laid_out_as(names: tuple[str, ...], version: int, width: int | None = None) -> LiveScorer:
    coef = np.random.default_rng(0).normal(size=(3, width if width is not None else len(names)))
    return LiveScorer(CompiledScorer(names, version, coef, np.zeros(3), {}, 1.0), frozenset(MODEL_NAMES))


def test_a_scorer_of_another_layout_is_refused_and_a_failing_scorer_dead_letters_nothing(runtime: Runtime) -> None:
    """A scorer published by a worker of another code version (same width in another order, or a feature
    more) is not adopted; a scorer that fails while deciding leaves the requests decided without scores."""
    namespace = f"layout{uuid.uuid4().hex[:8]}"
    engine = in_process_engine(runtime, namespace)
    models = engine.models
    exchange = ModelExchange(engine.store.client, namespace)

    async def go() -> list:  # noqa: ANN202
        outs = []
        for i, scorer in enumerate([scorer_laid_out_as(tuple(reversed(CONTEXT_NAMES)), 7),
                                    scorer_laid_out_as((*CONTEXT_NAMES, "new_feature"), 8),
                                    scorer_laid_out_as(CONTEXT_NAMES, 9, width=CONTEXT_DIM + 1)]):
            if i < 2:
                await exchange.publish(scorer)  # another worker publishes
                current = models.scorer
                loaded = await exchange.newer_scorer(current.version if current is not None else None)
                assert loaded is not None and loaded.version == scorer.version
                models.use(loaded)  # what streams/app.py does with it
                current = models.scorer  # refused: it is not fetched again every second
                assert models.refused_scorer == scorer.version and await exchange.newer_scorer(
                    current.version if current is not None else None, 0, models.refused_scorer) is None
            else:  # names right, coefficients one column too wide (from_json refuses it: it cannot be published)
                models.use(scorer)
            docs = [event(f"s{i}-{j}", user_id=f"l{i}-{j}", ts=T0 + 10 * i + j, device="mobile", consent=True,
                          segment="vip") for j in range(5)]
            outs.append((models.scorer, await engine.process_isolating(messages(docs))))
        return outs

    (first, reordered), (second, wider), (third, failing) = asyncio.run(go())
    assert first is None and second is None and third is not None and third.version == 9  # 7 and 8 refused
    for out in (reordered, wider, failing):
        assert len(out.decisions) == 5 and not out.dead_letters
        assert all("scores" not in d.trace for d in out.decisions)
    assert models.stats()["scorer_errors"] == {"layout": 2, "score": 5}
    models.export(engine.metrics)
    errors = {s.labels["reason"]: s.value for f in text_string_to_metric_families(engine.metrics.exposition().decode())
              for s in f.samples if s.name == "cadence_model_scorer_errors_total"}
    assert errors == {"layout": 2.0, "score": 5.0}


def test_the_churn_label_list_is_bounded_in_bytes_and_read_in_bounded_steps(runtime: Runtime) -> None:
    """Nobody pops (no trainer): the list keeps the newest chunks within its byte budget, whatever a worker
    pushes at once (a whole outbox of 50,000 labels, or an unsplit batch from an older worker)."""
    client = aioredis.Redis.from_url(runtime.redis_url or "")
    x = np.random.default_rng(0).random(CONTEXT_DIM).astype(np.float32).tobytes()
    outbox = [ChurnLabel("d", x, 1, T0 + i, T0 + i) for i in range(ModelConfig().churn_outbox)]
    owner = LiveModels(ModelConfig(churn_horizon_s=DAY), 0.1, 100.0)
    for i in range(len(outbox)):
        owner.observe(f"c{i}", T0 + i, np.frombuffer(x, dtype=np.float32))
    owner.advance_activity(T0 + 10 * DAY)  # all of them churned at once: a full outbox, as a catch-up leaves it
    chunks = owner.take_churn_labels()
    assert chunks is not None and len(chunks) == len(outbox) // CHURN_CHUNK
    budget = 2 * 1024 * 1024
    small = ModelExchange(client, f"churn{uuid.uuid4().hex[:8]}", max_bytes=budget)
    default = ModelExchange(client, "unused")

    async def go() -> tuple[int, int, list[int], int]:
        for _ in range(3):  # a worker pushing its full outbox every second, nobody popping
            await small.push_churn(chunks)
        await small.push_churn(encode_churn_labels(outbox))  # one unsplit batch: split on the way in
        length, used = await client.llen(small.churn_key), await client.memory_usage(small.churn_key, samples=0)
        read = [len(await small.pop_churn()) for _ in range(3)]
        left = await client.llen(small.churn_key)
        await client.delete(small.churn_key)
        return length, used, read, left

    length, used, read, left = asyncio.run(go())
    assert length == small.max_batches == budget // churn_chunk_bytes() and used <= budget, (length, used)
    assert default.max_batches * churn_chunk_bytes() <= 128 * 1024 * 1024  # the default budget
    assert read[0] == small.read_batches and sum(read) + left == length  # the trainer reads a bounded step
    assert small.read_batches * churn_chunk_bytes() <= 2 * 1024 * 1024
