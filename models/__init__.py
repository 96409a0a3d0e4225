"""River models the engine scores with: conversion propensity per offer, churn risk and customer value.

``ModelSet`` (models/registry.py) holds the three, learns :class:`ModelSample` records with progressive
validation and drift counts, scores a customer and snapshots to bytes. ``model_features`` builds the input.
"""

from __future__ import annotations

from models.churn import ChurnLabel, ChurnLabeler, ChurnModel, churn_label
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
    "ModelSample",
    "ModelSet",
    "PropensityModel",
    "ProgressiveMonitor",
    "ValueModel",
    "churn_label",
    "model_features",
    "profile_features",
]
