"""Off-policy evaluation: estimate what a candidate policy would have earned, from the engine's decision log.

``log`` reads the ``learning`` topic (or a JSON-lines export of it) and joins exposures with rewards;
``estimators`` gives IPS, SNIPS and doubly robust estimates with intervals and warnings; ``candidates``
turns a small JSON config into a fixed policy to evaluate; ``gate`` decides promotions; ``shadow`` builds
the record a challenger running next to the live policy leaves behind.
"""

from ope.estimators import ESTIMATORS, Estimate, OPEError, OPEWarning, evaluate
from ope.log import DecisionLog, LoggedDecision, join_samples, read_jsonl

__all__ = [
    "ESTIMATORS",
    "DecisionLog",
    "Estimate",
    "LoggedDecision",
    "OPEError",
    "OPEWarning",
    "evaluate",
    "join_samples",
    "read_jsonl",
]
