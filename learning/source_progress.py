"""How far in event time every producer of the learning topic has got, and so which windows may close (pure).

Every worker writes its learning samples with its name and its progress: the watermark of its own event
clock when it sent them (contracts.decisions.encode_samples). A propensity window may close only when no
producer can still send a conversion for it, so the label join closes windows at the **slowest live
producer's** progress, not at the largest event time learned. A worker replaying a backlog (it lags the
others by L) then holds the windows open until it has caught up, instead of having every conversion it
still has to send in the last L of each window labelled 0.

A producer that stops reporting (it crashed, or it has no traffic) must not hold the windows forever:

- a worker that stops cleanly, or that is caught up with its input and has had nothing to send for a few
  seconds, says so (``release``): it holds nothing until its next samples, which come from new events;
- any producer more than ``max_lag_s`` of event time behind the fastest one is dropped, so a crashed worker
  delays labels by at most ``max_lag_s``, and a worker lagging by more than that has, as before, the
  conversions it sends after their windows closed missed by the models (the exposure's label stays 0; the
  bandit, which learns rewards whenever they come, still learns them);
- ``max_lag_s = 0`` closes at the fastest producer, the behaviour before producers reported progress.

The closing time never moves back: a producer that reports again after being dropped, or a new one that
starts behind, holds later windows, not ones already closed. A released producer holds windows again only
with progress beyond the one it was released at: its older messages, read after the release (they were on
another partition of the learning topic), do not bring it back.
"""

from __future__ import annotations


class SourceProgress:
    """The latest progress of each producer; ``closing`` is the event time up to which windows may close."""

    def __init__(self, max_lag_s: float) -> None:
        if not max_lag_s >= 0:
            raise ValueError(f"max_lag_s must be >= 0, got {max_lag_s}")
        self.max_lag_s = max_lag_s
        self._progress: dict[str, float] = {}
        self._released: dict[str, float] = {}  # producer -> the progress it was released at
        self._closing = 0.0
        self.dropped = 0  # producers dropped for lagging more than max_lag_s (or silent that long)

    def __len__(self) -> int:
        """Producers that currently hold the closing time."""
        return len(self._progress)

    @property
    def closing(self) -> float:
        return self._closing

    def report(self, source: str, progress: float) -> None:
        """``source`` has sent everything up to event time ``progress`` (``settle`` moves the closing time)."""
        known = max(self._progress.get(source, float("-inf")), self._released.get(source, float("-inf")))
        if progress > known:
            self._progress[source] = progress

    def release(self, source: str, progress: float) -> None:
        """``source`` holds nothing back (it stopped, or it is caught up and quiet, at ``progress``) until it
        reports progress beyond that."""
        self._progress.pop(source, None)
        self._released[source] = max(progress, self._released.get(source, progress))

    def settle(self) -> float:
        """Drop the producers too far behind and return the closing time. Call it once per read of the
        learning topic, after every report of that read: a producer whose message came in the same read as
        a faster one's is counted before the windows between them close."""
        if self._progress:
            leader = max(self._progress.values())
            floor = leader - self.max_lag_s
            stale = [s for s, p in self._progress.items() if p < floor]
            for source in stale:
                del self._progress[source]
            self.dropped += len(stale)
            self._closing = max(self._closing, min(self._progress.values()))
            for source in [s for s, p in self._released.items() if p < floor]:
                del self._released[source]  # anything it sends now is that far behind: dropped anyway
        return self._closing
