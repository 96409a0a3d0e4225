"""The README documents every setting, topic and metric the code has (so it stays true)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cadence.metrics import Metrics
from cadence.settings import Settings
from streams.topics import ALL_TOPICS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def env_name(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    return alias.choices[0] if alias is not None else f"CADENCE_{field.upper()}"  # type: ignore[union-attr]


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_is_in_the_configuration_table(field: str) -> None:
    assert f"`{env_name(field)}`" in README, f"add {env_name(field)} to the README's configuration table"


@pytest.mark.parametrize("topic", ALL_TOPICS)
def test_every_topic_is_documented(topic: str) -> None:
    assert f"`{topic}`" in README


@pytest.mark.parametrize("metric", sorted({m.name for m in Metrics().registry.collect()}))
def test_every_metric_is_documented(metric: str) -> None:
    base = metric.removesuffix("_total")
    assert base in README, f"document {metric} in the README's metrics table"


def test_quick_start_is_two_commands() -> None:
    quick = README.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in quick.strip().splitlines()] == ["make run", "make test"]
