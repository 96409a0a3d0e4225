"""Settings refuse what would open an endpoint, crash a worker later or be silently ignored; secrets stay hidden."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from cadence.settings import Settings, redact_url
from streams.web import _authorized


class _Request:
    def __init__(self, authorization: str | None) -> None:
        self.headers = {} if authorization is None else {"Authorization": authorization}


@pytest.mark.parametrize("name", ["api_token", "admin_token", "redis_password", "erasure_key"])
@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_secret_is_refused_not_taken_as_a_token(name: str, value: str) -> None:
    # CADENCE_ADMIN_TOKEN= (an unset ${VAR} in a compose file) used to open the admin endpoints to "Bearer "
    with pytest.raises(ValidationError, match="is set but empty"):
        Settings(**{name: value})


def test_authorization_needs_a_real_token_and_survives_any_header() -> None:
    token = SecretStr("s3cret-token")
    assert _authorized(_Request("Bearer s3cret-token"), token)
    assert _authorized(_Request("bearer s3cret-token"), token)
    assert not _authorized(_Request("Bearer wrong"), token)
    assert not _authorized(_Request(None), token)
    assert not _authorized(_Request("Bearer \udcff\udcfe"), token)  # not UTF-8 (aiohttp's escapes): no error
    for empty in (None, SecretStr("")):
        assert not _authorized(_Request("Bearer "), empty)
        assert not _authorized(_Request("Bearer"), empty)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"api_token": "same-token", "admin_token": "same-token"}, "must differ"),
        ({"bid_multiplier_low": 3.0, "bid_multiplier_high": 2.0}, "swap them"),
        ({"web_port": 70000}, "less than or equal to 65535"),
        ({"log_level": "loud"}, "unknown log level"),
        ({"policy": "linucbb"}, "'linucb', 'lints' or 'egreedy'"),
        ({"shadow_policy": "ts"}, "'linucb', 'lints' or 'egreedy'"),
        # inf used to pass and hang the worker's start ("cannot convert float infinity to integer" every second)
        ({"snapshot_interval_s": float("inf")}, "finite number"),
        ({"policy_alpha": float("nan")}, "finite number"),
        ({"click_window_s": float("inf")}, "finite number"),
        ({"snapshot_interval_s": 1e300}, "less than or equal to 86400"),
        ({"feature_ttl_s": 10**30}, "less than or equal to 3155760000"),
        # a day of retention silently lost every conversion 1-7 days after its decision, the week's counters and caps
        ({"feature_ttl_s": 86400}, "CADENCE_FEATURE_TTL_S \\(86400 s\\) is shorter than .*at least 604800"),
        ({"feature_ttl_s": 10 * 86400, "conversion_window_s": 14 * 86400.0}, "at least 1209600, or shorten"),
        ({"seed": -1}, "greater than or equal to 0"),  # numpy's "expected non-negative integer", 18 frames deep
        ({"redis_url": "redis://localhost:notaport/0"}, "not a usable Redis URL .*PORT a number 1..65535"),
        ({"redis_url": "redis://localhost:70000/0"}, "not a usable Redis URL"),
        ({"kafka_bootstrap": "localhost:notaport"}, "'localhost:notaport' is not host:port"),
        ({"kafka_bootstrap": "k1:9092,k2:0"}, "'k2:0' is not host:port"),
        ({"kafka_bootstrap": "k1:9092,"}, "'' is not host:port"),
        ({"erasure_key": "hunter2"}, "shorter than 32 characters, too easy to guess: give it at least 32 random"),
    ],
)
def test_settings_that_would_fail_later_are_refused_now(kwargs: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**kwargs)


def test_log_level_names_are_the_ones_faust_takes() -> None:
    from mode.utils.logging import level_number

    for given, expected in (("crit", "critical"), ("CRITICAL", "critical"), ("warning", "warn"), ("debug", "debug")):
        level = Settings(log_level=given).log_level
        assert level == expected
        assert isinstance(level_number(level), int)  # "crit" itself made the worker exit at start


def test_validation_errors_and_repr_never_show_secrets() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(api_token="tok-visible-1", admin_token="tok-visible-1", web_port=-1)
    assert "tok-visible-1" not in str(caught.value)
    with pytest.raises(ValidationError) as caught:
        Settings(erasure_key="erasure-visible-3", web_port=-1)
    assert "erasure-visible-3" not in str(caught.value) and "shorter than 32" in str(caught.value)
    erasure_key = "erasure-key-4-" + "z" * 30
    settings = Settings(redis_url="rediss://default:hunter2@redis.example:6380/0", api_token="tok-2",
                        erasure_key=erasure_key)
    shown = repr(settings) + str(settings)
    assert "hunter2" not in shown and "tok-2" not in shown and "redis.example:6380" in shown
    assert erasure_key not in shown + repr(settings.model_dump()) and settings.erasure_key is not None
    assert settings.erasure_key.get_secret_value() == erasure_key
    assert redact_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"


def test_a_misspelled_setting_is_named_with_the_closest_one() -> None:
    found = Settings.unknown_environment({"CADENCE_API_TOKNE": "x", "CADENCE_API_TOKEN": "y", "PATH": "/bin"})
    assert found == ["CADENCE_API_TOKNE (did you mean CADENCE_API_TOKEN?)"]


def test_the_holdout_can_be_narrowed_to_placements_the_catalogue_has() -> None:
    from streams.app import build_policy_context

    holdout = build_policy_context(Settings(holdout_share=1.0, holdout_placements="home_hero, newsletter")).holdout
    assert holdout is not None and holdout.placements == ("home_hero", "newsletter")
    assert holdout.in_control("u1", "home_hero") and not holdout.in_control("u1", "product_sidebar")
    assert build_policy_context(Settings(holdout_share=1.0)).holdout.in_control("u1", "product_sidebar")
    with pytest.raises(ValueError, match=r"does not have: \['home-hero'\]; use ids of"):
        build_policy_context(Settings(holdout_placements="home-hero"))


def test_a_redis_url_without_its_scheme_and_a_rate_below_one_are_refused_at_start() -> None:
    # REDIS_URL=localhost:6379 used to pass and then crash the worker and the CLI with a traceback;
    # CADENCE_HTTP_MAX_RPS=0.5 gave a token bucket that never holds a whole token: every request a 429
    with pytest.raises(ValidationError, match="is not a Redis URL: write redis://HOST:PORT/0"):
        Settings(redis_url="localhost:6379")
    assert Settings(redis_url="rediss://cache:6380/0").redis_url == "rediss://cache:6380/0"
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        Settings(http_max_rps=0.5)


def test_well_formed_addresses_are_taken() -> None:
    for bootstrap in ("localhost:9092", "k1:9092, k2:9093", "[::1]:9092", "kafka"):
        assert Settings(kafka_bootstrap=bootstrap).kafka_bootstrap == bootstrap
    for url in ("redis://h:6379/0", "rediss://:pw@h:6380/1", "redis://h", "unix:///tmp/redis.sock"):
        assert Settings(redis_url=url).redis_url == url


def test_every_float_setting_refuses_infinity_and_nan() -> None:
    floats = [name for name, f in Settings.model_fields.items() if f.annotation is float]
    assert "snapshot_interval_s" in floats and len(floats) > 20
    for name in floats:
        for bad in (float("inf"), float("nan")):
            with pytest.raises(ValidationError, match="finite number"):
                Settings(**{name: bad})


def test_the_engine_creates_its_topics_with_the_configured_partitions_and_replicas(monkeypatch) -> None:  # noqa: ANN001
    # every topic was created with one replica whatever the cluster: a broker's loss lost decisions and learning
    import cadence.cli

    seen: dict[str, object] = {}
    monkeypatch.setattr(cadence.cli, "create_topics", lambda bootstrap, names, partitions, **kw: seen.update(
        names=names, partitions=partitions, **kw))
    cadence.cli.create_engine_topics("kafka:9092", Settings(replication_factor=3, partitions=12, topic_prefix="p."))
    assert (seen["partitions"], seen["replication_factor"]) == (12, 3)
    assert "p.decisions" in seen["names"] and seen["compacted"] == ["p.erasures"]
    with pytest.raises(ValidationError):
        Settings(replication_factor=0)


def test_a_retention_shorter_than_the_catalogues_contact_rules_is_refused() -> None:
    # the shipped catalogue pauses email 14 days after ignored ones (suppress_days): with 10 days of retention
    # a user quiet for 10 days lost that history and got the emails the pause holds back
    from streams.app import SettingError, build_policy_context

    with pytest.raises(SettingError, match=r"CADENCE_FEATURE_TTL_S.*longest contact rule \(14 days.*at least 1209600"):
        build_policy_context(Settings(feature_ttl_s=10 * 86400))
    assert build_policy_context(Settings(feature_ttl_s=14 * 86400)).catalogue.contact


def test_a_floor_min_above_the_floor_is_refused_with_what_to_set() -> None:
    with pytest.raises(ValidationError, match=r"CADENCE_POLICY_FLOOR_MIN \(0.03\) is above CADENCE_POLICY_FLOOR"):
        Settings(policy_floor_min=0.03)


@pytest.mark.parametrize("name", ["linucb", "lints"])
def test_the_exploration_floor_settings_reach_the_policy(name: str) -> None:
    import numpy as np

    from bandits import make_policy
    from features.context import CONTEXT_DIM
    from streams.app import policy_params

    x = np.linspace(0.1, 1.0, CONTEXT_DIM)
    actions = ["a", "b", "c", "d"]

    def lowest_probability(settings: Settings) -> float:
        policy = make_policy(name, CONTEXT_DIM, seed=3, **policy_params(settings)[name])
        for _ in range(400):  # every action well known, "a" the best: LinUCB's floor has decayed to its lowest
            for action in actions:
                policy.update(x, action, 1.0 if action == "a" else 0.0)
        return min(policy.select(x, actions).probabilities.values())

    # the defaults are the policies' own: ε 0.02 (LinUCB decays to 0.005), so every action keeps ε/K
    assert lowest_probability(Settings()) == pytest.approx((0.005 if name == "linucb" else 0.02) / len(actions))
    assert lowest_probability(Settings(policy_floor=0.1, policy_floor_min=0.04)) == pytest.approx(
        (0.04 if name == "linucb" else 0.1) / len(actions)
    )
    assert lowest_probability(Settings(policy_floor=0.0)) == 0.0  # the draw is off (the unset floor_min follows)
    assert lowest_probability(Settings(policy_floor=0.002)) == pytest.approx(0.002 / len(actions))


@pytest.mark.parametrize("policy", ["linucb", "lints", "egreedy"])
def test_a_floor_below_the_default_floor_min_starts_for_every_policy(policy: str) -> None:
    from bandits import make_policy
    from features.context import CONTEXT_DIM
    from streams.app import policy_params

    settings = Settings(policy=policy, policy_floor=0.0)  # CADENCE_POLICY_FLOOR=0 alone: no refusal
    assert make_policy("linucb", CONTEXT_DIM, **policy_params(settings)["linucb"]).epsilon_min == 0.0
