"""Wall-clock timers: named blocks into a dict of seconds, and rate-limited progress lines."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator, Optional

from absl import logging

PROGRESS_SECONDS = 10.0


class Stopwatch:
  """Seconds since it was made."""

  def __init__(self):
    self.start = time.time()

  def seconds(self) -> float:
    return time.time() - self.start


@contextlib.contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
  """Sets timings[name] to the seconds the block took (a block that raises records nothing)."""
  watch = Stopwatch()
  yield
  timings[name] = watch.seconds()


class Progress:
  """Logs `label: done/total unit (rate)` at most every `every` seconds, and at the end."""

  def __init__(self, label: str, total: Optional[int], unit: str = 'images', every: float = PROGRESS_SECONDS):
    self.label, self.total, self.unit, self.every = label, total, unit, every
    self.watch = Stopwatch()
    self.last = self.watch.start

  def __call__(self, done: int) -> None:
    now = time.time()
    if now - self.last >= self.every or (self.total and done >= self.total):
      self.last = now
      logging.info('%s: %d/%s %s (%.1f %s/s)', self.label, done, self.total or '?', self.unit,
                   done / max(now - self.watch.start, 1e-9), self.unit)
