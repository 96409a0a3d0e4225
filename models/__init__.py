"""River models the engine scores with: conversion propensity per offer, churn risk and customer value.

``ModelSet`` (models/registry.py) holds the three, learns :class:`ModelSample` records with progressive
validation and drift counts, scores a customer, snapshots to bytes and compiles to a numpy scorer for
the hot path (``ModelSet.compile()``). ``model_features`` builds the input.
"""

from __future__ import annotations

from models.churn import ChurnLabel, ChurnLabeler, ChurnModel, churn_label
from models.compiled import CompiledScorer
from models.inputs import model_features, profile_features
from models.monitor import ProgressiveMonitor
from models.propensity import PropensityModel
from models.registry import SNAPSHOT_FORMAT, ModelSample, ModelSet
from models.value import ValueModel

__all__ = [
    "SNAPSHOT_FORMAT",
    "ChurnLabel",
    "ChurnLabeler",
    "ChurnModel",
    "CompiledScorer",
    "ModelSample",
    "ModelSet",
    "PropensityModel",
    "ProgressiveMonitor",
    "ValueModel",
    "churn_label",
    "model_features",
    "profile_features",
]
