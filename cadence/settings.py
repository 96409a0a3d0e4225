"""One settings object for the whole engine, read from the environment.

Every field documents itself; the README's configuration table is generated from these docstrings'
content by hand, so keep both in step. Secrets are ``SecretStr`` and never appear in logs.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_CATALOGUE = Path(__file__).with_name("catalogue.toml")
# Longest span any duration setting may take: event time itself is bounded (2001..2100, contracts/events.py),
# so a longer window or TTL means nothing, and a huge one overflows Redis or the event loop's timers.
CENTURY_S = 3_155_760_000
DAY_S = 86400
FEATURE_WEEK_S = 7 * 86400  # the longest feature window (features.windows) and the contact caps' week
MIN_ERASURE_KEY_CHARS = 32  # CADENCE_ERASURE_KEY: a shorter key could be found by trying keys and ids together
# Accepted log level names -> the name Faust's logging takes ("crit" is an alias the README used to list).
LOG_LEVELS = {"critical": "critical", "crit": "critical", "error": "error", "warn": "warn",
              "warning": "warn", "info": "info", "debug": "debug"}


def redact_url(url: str | None) -> str | None:
    """``url`` with its password (``redis://user:secret@host``) shown as ***, for logs and messages."""
    if not url or "@" not in url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}***@{host}"))


class SettingError(ValueError):
    """A setting only the catalogue (or another file) shows to be wrong; ``str`` is ``SETTING: problem``."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting


def _is_host_port(entry: str) -> bool:
    """``host:port`` (``[::1]:9092`` for IPv6) with a port 1..65535, or a bare host (Kafka's clients add 9092)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        if not rest:
            return bool(host)
        if not rest.startswith(":"):
            return False
        port = rest[1:]
    elif entry.count(":") > 1:  # a bare IPv6 address
        return True
    else:
        host, sep, port = entry.partition(":")
        if not sep:
            return bool(host)
    return bool(host) and port.isascii() and port.isdigit() and 1 <= int(port) <= 65535


class Settings(BaseSettings):
    """Engine configuration. Environment names are ``CADENCE_<FIELD>`` unless noted."""

    # hide_input_in_errors: a validation error must not print the values it was given (tokens, passwords)
    # allow_inf_nan=False: CADENCE_SNAPSHOT_INTERVAL_S=inf used to pass and then hang the worker's start
    model_config = SettingsConfigDict(env_prefix="CADENCE_", extra="forbid", frozen=True, hide_input_in_errors=True,
                                      allow_inf_nan=False)

    kafka_bootstrap: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP", "CADENCE_KAFKA_BOOTSTRAP"),
        description="host:port of the Kafka cluster (env KAFKA_BOOTSTRAP). Unset: an embedded broker is started.",
    )
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_URL", "CADENCE_REDIS_URL"),
        description="redis:// or rediss:// URL (env REDIS_URL). Unset: an embedded Redis server is started.",
    )
    redis_password: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("REDIS_PASSWORD", "CADENCE_REDIS_PASSWORD"),
        description="Redis password (env REDIS_PASSWORD); kept out of URLs and logs.",
    )
    app_id: str = Field("cadence", description="Faust application id; also the consumer group id.")
    topic_prefix: str = Field("", description="Prefix for every topic name (lets several engines share a cluster).")
    partitions: int = Field(4, ge=1, le=10_000, description="Partitions for the topics the engine creates.")
    replication_factor: int = Field(
        1, ge=1, le=32, description="Replicas of each topic the engine creates (the embedded broker has one; give "
        "a cluster of 3 or more brokers 3, or a broker's loss loses decisions and learning)."
    )
    web_port: int = Field(6066, ge=0, le=65535, description="Port of the worker's HTTP server (/metrics, /decide).")
    web_host: str = Field("127.0.0.1", description="Interface the worker's HTTP server binds to.")
    catalogue: Path = Field(DEFAULT_CATALOGUE, description="Path of the action catalogue (TOML).")
    data_dir: Path = Field(Path(".cadence"), description="Where embedded servers and Faust keep their files.")

    intake: Literal["direct", "faust", "none"] = Field(
        "direct",
        description="How the worker reads input topics: direct (record batches, aiokafka), faust (agent), or none "
        "(an HTTP-only replica: answers /decide, follows learning, consumes no events).",
    )
    commit_interval_s: float = Field(
        1.0, gt=0, le=3600,
        description="Direct intake: longest time between offset commits (events after it are re-read)."
    )
    batch_size: int = Field(2000, ge=1, le=1_000_000, description="Most events the worker takes in one batch.")
    batch_within_s: float = Field(0.01, gt=0, le=60, description="Longest wait for a batch to fill, in seconds.")
    fetch_max_wait_ms: int = Field(
        20, ge=1, le=5000, description="Longest a broker may hold a consumer fetch; bounds latency at low rates."
    )
    learning_fetch_max_wait_ms: int = Field(
        100, ge=1, le=5000, description="The same for the learning topic (what other workers learned): it "
        "bounds how late learning arrives, not decisions; fewer empty fetches leave the CPU to the intake."
    )
    learning_idle_after_s: float = Field(
        5.0, gt=0, le=DAY_S,
        description="A worker caught up on its input and without learning samples to send for this "
        "long (wall clock) tells the others it holds no label windows open; it also does so when it stops."
    )
    max_event_bytes: int = Field(
        65536, ge=256, le=64 * 2**20, description="Larger payloads go to dead-letters as too_large."
    )
    max_future_skew_s: float = Field(
        3600.0, ge=0, le=CENTURY_S,
        description="Events whose ts is this far ahead of the worker's watermark are rejected."
    )
    max_lateness_s: float = Field(
        30 * 86400.0, ge=0, le=CENTURY_S, description="Events whose ts is this far behind the watermark are rejected."
    )
    max_time_jump_s: float = Field(
        7 * 86400.0, gt=0, le=CENTURY_S,
        description="Events this far ahead of the watermark are refused (a sender's wrong clock)."
    )
    feature_ttl_s: int = Field(30 * 86400, ge=60, le=CENTURY_S, description=(
        "Retention of a user's features in Redis (refreshed by every event): at least the conversion window and "
        "a week (the longest counters and the contact caps' history), else refused."))
    dedup_ring: int = Field(32, ge=1, le=256, description="Event ids remembered per user to drop duplicates.")

    policy: Literal["linucb", "lints", "egreedy"] = Field(
        "linucb", description="Bandit policy: linucb, lints or egreedy. Changed with a snapshot in Redis, the new "
        "type takes over the snapshot's statistics (Snapshots and rollback)."
    )
    policy_alpha: float = Field(
        0.1, ge=0, description="Exploration width of LinUCB (LinTS's scale is CADENCE_POLICY_TS_SCALE)."
    )
    policy_ridge: float = Field(
        1.0, gt=0, description="Prior λ of LinUCB's statistics (A = λI + Σ x xᵀ). The engine's α was tuned on the "
        "closed loop with λ = 1; the bandit benchmark's best is λ = 10 (LinUCB's own default) at α = 0.5."
    )
    policy_explore_samples: float = Field(
        100.0, gt=0, description="LinUCB's exploration floor stays at its full ε until the greedy arm has about "
        "this many samples like the context, then decays to ε_min (the closed loop's choice; LinUCB's default is 30)."
    )
    policy_floor: float = Field(
        0.02, ge=0, le=1, description="Uniform exploration share of linucb and lints: every eligible action keeps a "
        "logged probability of at least this / K, which off-policy evaluation weighs. LinUCB's decays from it to "
        "CADENCE_POLICY_FLOOR_MIN as its estimate sharpens. 0 turns the draw off: LinUCB's decisions then log p = 1 "
        "(LinTS's its Thompson share), which OPE cannot weigh other candidates against (the promotion gate blocks)."
    )
    policy_floor_min: float | None = Field(
        None, ge=0, le=1, description="LinUCB's lowest exploration share (its floor decays to it); at most "
        "CADENCE_POLICY_FLOOR. Unset: 0.005, or CADENCE_POLICY_FLOOR if that is lower."
    )
    shadow_policy: Literal["", "linucb", "lints", "egreedy"] = Field(
        "", description="A challenger policy (linucb, lints, egreedy) run in shadow: logged to 'shadow', never shown."
    )
    policy_ts_scale: float = Field(0.25, ge=0, description="Posterior scale of LinTS (lints).")
    policy_epsilon: float = Field(0.05, ge=0, le=1, description="Exploration share of egreedy.")
    seed: int = Field(7, ge=0, description=(
        "Seed of the policy's random generator (the shadow policy's is this + 1) when it starts fresh; a policy "
        "resumed from a snapshot carries on with the generator's state the snapshot holds."))
    click_reward: float = Field(0.1, ge=0, description="Reward credited for a click (conversions pay value).")
    click_window_s: float = Field(
        1800.0, gt=0, le=CENTURY_S, description="A click counts for a decision this long after it."
    )
    conversion_window_s: float = Field(
        7 * 86400.0, gt=0, le=CENTURY_S, description="A conversion counts for a decision this long after it."
    )

    holdout_share: float = Field(
        0.05, ge=0, le=1, description="Share of users in the global control group (default action, measures lift)."
    )
    holdout_salt: str = Field("cadence-1", min_length=1, description="Change it to draw a new control group.")
    holdout_placements: str = Field(
        "", description="Comma-separated placement ids the holdout applies to (empty: every placement)."
    )
    bid_multiplier_low: float = Field(0.5, gt=0, description="Lowest bid multiplier sent on bid-signals.")
    bid_multiplier_high: float = Field(2.0, gt=0, description="Highest bid multiplier sent on bid-signals.")
    models_enabled: bool = Field(True, description="Score with and train the River models (propensity, churn, value).")
    models_label_window_s: float = Field(
        3600.0, gt=0, le=CENTURY_S,
        description="A conversion this long after a decision counts as a positive for propensity."
    )
    models_label_grace_s: float = Field(
        300.0, ge=0, le=CENTURY_S,
        description="Extra wait after the window before any exposure's propensity label is learned."
    )
    models_label_max_lag_s: float = Field(
        1800.0, ge=0, le=CENTURY_S,
        description="Label windows close at the slowest worker's event time, but a worker further "
        "behind the fastest than this stops holding them open (a crashed worker delays labels at most this "
        "long); 0 closes them at the fastest worker's time.",
    )
    models_pending_max: int = Field(
        100_000, ge=1, description="Exposures waiting for their label per worker (~300 B each)."
    )
    models_exposure_share: float = Field(1.0, gt=0, le=1, description="Share of exposures the models learn from.")
    models_train_cpu_share: float = Field(
        0.1, gt=0, le=1, description="Most of the event loop's time the model trainer takes while labels wait; "
        "decisions come first (labels beyond the backlog are dropped and counted). At 0.1 the trainer still "
        "learns about 1,400 labels/s (~70 us each).",
    )
    models_churn_horizon_s: float = Field(
        1209600.0, gt=0, le=CENTURY_S, description="Silent this long after an activity = churned."
    )
    models_churn_sample_every_s: float = Field(
        86400.0, ge=0, le=CENTURY_S, description="A busy customer yields about one 'stayed' label per this long."
    )
    models_churn_watch_max: int = Field(200_000, ge=1, description="Customers watched for churn per worker.")
    models_churn_share: float = Field(1.0, gt=0, le=1, description="Share of customers watched for churn.")
    models_min_samples: int = Field(100, ge=0, description="Samples a model needs before its scores are shown.")
    snapshot_interval_s: float = Field(
        30.0, gt=0, le=DAY_S, description="How often the leading worker saves the learned state to Redis (a "
        "new version only if something was learned since the last one)."
    )
    snapshots_kept: int = Field(20, ge=1, le=10_000, description="Newest snapshot versions kept in Redis for "
                                "rollback (older ones thinned: CADENCE_SNAPSHOTS_HOURLY, CADENCE_SNAPSHOTS_DAILY).")
    snapshots_hourly: int = Field(24, ge=0, le=24 * 366, description="Also keep the newest snapshot version of each "
                                  "of the last this many hours (UTC hours; 0: none).")
    snapshots_daily: int = Field(7, ge=0, le=3660, description="Also keep the newest snapshot version of each of the "
                                 "last this many days (UTC days; 0: none).")
    gc_paced: bool = Field(
        True, description="Run the garbage collector between batches (streams/gc_pacing.py); false leaves it to "
        "Python (thresholds 20,000 / 20 / 20)."
    )
    gc_full_interval_s: float = Field(
        600.0, gt=0, le=DAY_S, description="How often the worker runs a full garbage collection (between batches; the "
        "young collections run there too, see streams/gc_pacing.py)."
    )

    api_token: SecretStr | None = Field(
        None, description="Bearer token for GET /decide and /profile. Unset: endpoints off; empty: refused."
    )
    admin_token: SecretStr | None = Field(
        None, description="Bearer token for admin endpoints, not the API token's. Unset: endpoints off; empty: refused."
    )
    erasure_key: SecretStr | None = Field(
        None, description="Key of the digests that stand for erased users in Redis (keyed BLAKE2b): at least 32 "
        "characters, e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`, the same on every worker and "
        "wherever `cadence erase-user` runs. Unset: one is generated and kept in Redis ({app_id}:erased:key), so "
        "a dump of Redis holds both digests and key (a warning at start); set it in production."
    )
    lever_audit_keep: int = Field(
        100_000, ge=1, le=100_000_000, description="Lever audit entries kept in Redis ({app_id}:levers:audit, one "
        "per change, 200-370 B each): the newest ones; older ones are dropped (logged) as changes come."
    )
    http_max_rps: float = Field(
        5000.0, ge=1, le=1_000_000, description="Most GET /decide requests per second per worker."
    )
    log_level: str = Field("warn", description="Worker log level: critical (or crit), error, warn, info or debug.")

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        level = LOG_LEVELS.get(value.strip().lower())
        if level is None:
            raise ValueError(f"unknown log level {value!r}; use one of critical, error, warn, info, debug")
        return level

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"{redact_url(value)!r} is not a Redis URL: write redis://HOST:PORT/0 (rediss:// for "
                             "TLS, unix:///path for a socket), or unset it for the embedded Redis")
        if value is not None:
            from redis.connection import parse_url  # the parser the clients use: what it refuses, refuse now

            try:
                parse_url(value)
            except ValueError as exc:  # redis://localhost:notaport/0 used to crash every command
                raise ValueError(f"{redact_url(value)!r} is not a usable Redis URL ({exc}): write "
                                 "redis://HOST:PORT/0 with PORT a number 1..65535") from None
        return value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _host_ports(cls, value: str | None) -> str | None:
        if value:  # localhost:notaport used to crash the worker and `cadence topics` with a traceback
            for entry in value.split(","):
                if not _is_host_port(entry.strip()):
                    raise ValueError(f"{entry.strip()[:80]!r} is not host:port: write HOST:PORT with PORT a number "
                                     "1..65535, several separated by commas, or unset it for the embedded broker")
        return value

    @field_validator("api_token", "admin_token", "redis_password")
    @classmethod
    def _not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is set but empty: give it a value (a long random string for tokens) or unset it "
                             "(an unset token turns its endpoints off; an empty one must not open them)")
        return value

    @field_validator("erasure_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        # the messages never show the value (nor its length): it is the secret that keeps erasures private
        if value is None:
            return value
        kept_at = f"{info.data.get('app_id', '{app_id}')}:erased:key"
        what = ("give it at least 32 random characters, the same on every worker and wherever `cadence erase-user` "
                "runs (e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`; for a key a deployment "
                f"already kept in Redis, the value of {kept_at}), or unset it to have one generated and kept in "
                "Redis")
        if not value.get_secret_value().strip():
            raise ValueError(f"is set but empty: {what}")
        if len(value.get_secret_value()) < MIN_ERASURE_KEY_CHARS:
            raise ValueError(f"is shorter than {MIN_ERASURE_KEY_CHARS} characters, too easy to guess: {what}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.api_token is not None and self.admin_token is not None and (
            self.api_token.get_secret_value() == self.admin_token.get_secret_value()
        ):
            raise ValueError("CADENCE_API_TOKEN and CADENCE_ADMIN_TOKEN must differ: the website's token must "
                             "not open the admin endpoints")
        if self.bid_multiplier_low > self.bid_multiplier_high:
            raise ValueError(f"CADENCE_BID_MULTIPLIER_LOW ({self.bid_multiplier_low}) is above "
                             f"CADENCE_BID_MULTIPLIER_HIGH ({self.bid_multiplier_high}); swap them")
        if self.policy_floor_min is not None and self.policy_floor_min > self.policy_floor:
            raise ValueError(f"CADENCE_POLICY_FLOOR_MIN ({self.policy_floor_min}) is above CADENCE_POLICY_FLOOR "
                             f"({self.policy_floor}): LinUCB's floor decays from the second to the first; lower "
                             f"CADENCE_POLICY_FLOOR_MIN or raise CADENCE_POLICY_FLOOR")
        # a user's hash holds the pending decisions (conversions are credited within the window), the week's
        # counters and the contact history the caps count (a week): expired sooner, a user quiet for a day loses
        # their conversion, their counts and their caps, silently
        needed = max(self.conversion_window_s, self.click_window_s, FEATURE_WEEK_S)
        if self.feature_ttl_s < needed:
            raise ValueError(
                f"CADENCE_FEATURE_TTL_S ({self.feature_ttl_s} s) is shorter than what a user's Redis hash must "
                f"remember ({needed:.0f} s: the conversion window CADENCE_CONVERSION_WINDOW_S, the click window and "
                f"the week of counters and contact caps): a user quiet that long would lose conversions, counts "
                f"and caps. Set it to at least {needed:.0f}, or shorten CADENCE_CONVERSION_WINDOW_S")
        return self

    def __repr_args__(self):  # noqa: ANN204  # pydantic's own signature
        """As pydantic's, with a password inside REDIS_URL redacted (tokens are SecretStr already)."""
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "redis_url" else value

    @classmethod
    def unknown_environment(cls, environ: dict[str, str]) -> list[str]:
        """``CADENCE_*`` variables that are no setting (a typo is otherwise silently ignored), each with the
        closest setting's name when there is one."""
        known = {f"CADENCE_{name.upper()}" for name in cls.model_fields}
        out = []
        for name in sorted(n for n in environ if n.startswith("CADENCE_") and n not in known):
            close = difflib.get_close_matches(name, known, n=1)
            out.append(f"{name} (did you mean {close[0]}?)" if close else name)
        return out

    def topic(self, name: str) -> str:
        """Full topic name for a logical topic."""
        return f"{self.topic_prefix}{name}"
