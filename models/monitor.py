"""Progressive validation and drift detection for one model: every sample is scored before it is learned.

Metrics are River metrics, chosen per task by a registry dict:

- binary: ``log_loss`` (``metrics.LogLoss``, over the whole stream) and ``roc_auc``
  (``metrics.RollingROCAUC``, exact over the last ``auc_window`` samples). River's ``ROCAUC`` places a
  few fixed thresholds across [0, 1]; with conversion rates of a few percent every prediction falls
  below the first threshold and it reads ~0.5 whatever the model, so the rolling, rank-based one is used.
- regression: ``mae`` (``metrics.MAE``) on the model's own scale (revenue).

Drift: River's ``ADWIN`` watches the per-sample error (binary: ``|y - p|``; regression: absolute error in
``log1p`` space). ADWIN flags a change in either direction; only changes where the error went *up* are
counted as drifts, because a model that is learning makes its error go down, and that is no alarm.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from river import drift, metrics

METRICS_BY_TASK: dict[str, dict[str, Callable[[int], metrics.base.Metric]]] = {
    "binary": {
        "log_loss": lambda window: metrics.LogLoss(),
        "roc_auc": lambda window: metrics.RollingROCAUC(window_size=window),
    },
    "regression": {
        "mae": lambda window: metrics.MAE(),
    },
}


class ProgressiveMonitor:
    """Online metrics, sample count and error-drift count of one model."""

    def __init__(
        self, task: str, auc_window: int = 10_000, drift_delta: float = 0.002, drift_clock: int = 32
    ) -> None:
        if task not in METRICS_BY_TASK:
            raise ValueError(f"unknown task {task!r}; choose one of {sorted(METRICS_BY_TASK)}")
        if auc_window < 10:
            raise ValueError(f"auc_window must be >= 10 samples, got {auc_window}")
        self.task = task
        self.auc_window = auc_window
        self.drift_delta = drift_delta
        self.drift_clock = drift_clock
        self._metrics = {name: make(auc_window) for name, make in METRICS_BY_TASK[task].items()}
        self._adwin = drift.ADWIN(delta=drift_delta, clock=drift_clock)
        self._n = 0
        self._n_drifts = 0
        self._last_drift_ts: float | None = None
        self._last_ts: float | None = None
        self._window: deque[bool] = deque(maxlen=auc_window)  # the AUC window's labels: is it defined?
        self._window_positives = 0

    @property
    def n_samples(self) -> int:
        return self._n

    @property
    def n_drifts(self) -> int:
        return self._n_drifts

    @property
    def last_drift_ts(self) -> float | None:
        return self._last_drift_ts

    def update(self, y_true: float, y_pred: float, error: float, ts: float) -> bool:
        """Record one prediction made before learning ``y_true``; True when an error increase was detected."""
        for metric in self._metrics.values():
            metric.update(y_true, y_pred)
        self._n += 1
        self._note_label(y_true > 0)
        self._last_ts = ts
        before = self._adwin.estimation
        self._adwin.update(error)
        if self._adwin.drift_detected and self._adwin.estimation > before:
            self._n_drifts += 1
            self._last_drift_ts = ts
            return True
        return False

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "_window" not in state:  # a monitor from a snapshot before the window's labels were kept: start it empty
            self._window = deque(maxlen=self.auc_window)
            self._window_positives = 0

    def _note_label(self, positive: bool) -> None:
        window = self._window
        if len(window) == window.maxlen:
            self._window_positives -= window[0]
        window.append(positive)
        self._window_positives += positive

    def as_dict(self) -> dict[str, Any]:
        """Plain numbers for logs, the metrics endpoint and Prometheus gauges."""
        out: dict[str, Any] = {name: float(metric.get()) for name, metric in self._metrics.items()}
        if self.task == "binary" and not 0 < self._window_positives < len(self._window):
            # undefined unless both classes are in the AUC's window (River reports 0.0): a stretch without
            # conversions would otherwise read as a model gone bad
            out["roc_auc"] = None
        out["samples"] = self._n
        out["error_window_mean"] = float(self._adwin.estimation)
        out["drifts"] = self._n_drifts
        out["last_drift_ts"] = self._last_drift_ts
        out["last_sample_ts"] = self._last_ts
        return out
