"""A plain progress bar on stderr for long runs (nothing is drawn when disabled)."""

from __future__ import annotations

import sys
from typing import TextIO


class ProgressBar:
    def __init__(
        self, label: str, enabled: bool = True, width: int = 30, stream: TextIO | None = None
    ) -> None:
        self.label = label
        self.enabled = enabled
        self.width = width
        self.stream = stream if stream is not None else sys.stderr
        self._drawn = False

    def update(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        filled = int(self.width * done / total)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r{self.label:<24.24} [{bar}] {done:>9,}/{total:,}")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
