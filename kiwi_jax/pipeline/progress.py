"""Step progress out of a compiled denoising loop.

The whole Euler loop is one ``lax.fori_loop`` inside one jitted program
(``kiwi_jax.diffusion.sampler``). To show progress without splitting it
into per-step dispatches, the loop body calls ``jax.debug.callback`` with
the step index after each velocity evaluation. The callback is unordered
(ordered effects would serialise the program with the host), so a sink can
in principle see steps late; :class:`StepCounter` only moves forward. The
cost is one tiny host transfer per step, nothing next to a DiT forward.

The compiled program always calls :func:`report_step`, which forwards to
the sink installed by :func:`reporting_to` (if any); the same executable
therefore serves runs with and without a progress bar.

:class:`PhaseClock` times the phases of a whole command (decode, load,
encode, denoise, decode, write) back to back, so that they add up to the
total.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np

_LOCK = threading.Lock()
_SINK: Callable[[int], None] | None = None


def report_step(step, after=None) -> None:
  """Host side of the callback: forwards the finished step (0-based)."""
  del after  # only orders the callback after the step's result
  sink = _SINK
  if sink is not None:
    sink(int(np.asarray(step)))


def emit(step: jax.Array, after: jax.Array | None = None) -> None:
  """Traced side: call inside the loop body with the int32 step index.

  ``after`` (a scalar of the step's result) makes the callback wait for
  that value, so the step is reported when it is done, not when it starts.
  """
  jax.debug.callback(report_step, step, after)


@contextlib.contextmanager
def reporting_to(sink: Callable[[int], None] | None) -> Iterator[None]:
  """Installs ``sink(step)`` for the programs run inside the block."""
  global _SINK
  with _LOCK:
    previous, _SINK = _SINK, sink
  try:
    yield
  finally:
    # Results are fetched inside the block, so every callback has run.
    with _LOCK:
      _SINK = previous


class StepCounter:
  """Turns step callbacks into monotone ``on_advance(done, total)`` calls."""

  def __init__(
    self, total: int, on_advance: Callable[[int, int], None] | None = None
  ):
    self.total = total
    self.done = 0
    self._on_advance = on_advance

  def __call__(self, step: int) -> None:
    done = min(step + 1, self.total)
    if done > self.done:
      self.done = done
      if self._on_advance is not None:
        self._on_advance(done, self.total)


class PhaseClock:
  """Wall time of contiguous phases: starting one ends the one before.

  Every moment between the first :meth:`start` and :meth:`stop` belongs to
  exactly one phase, so the phases add up to the elapsed time. A phase
  started again (e.g. a second MLLM encode) adds to its earlier time.

  Args:
    on_start: called with the phase's name as it begins (e.g. to print it).
  """

  def __init__(self, on_start: Callable[[str], None] | None = None):
    self.seconds: dict[str, float] = {}
    self._on_start = on_start
    self._current: str | None = None
    self._since = 0.0

  @property
  def current(self) -> str | None:
    """The running phase, or None."""
    return self._current

  def start(self, name: str) -> None:
    """Ends the running phase (if any) and begins ``name``."""
    self.stop()
    self._current, self._since = name, time.perf_counter()
    self.seconds.setdefault(name, 0.0)
    if self._on_start is not None:
      self._on_start(name)

  def stop(self) -> None:
    """Ends the running phase."""
    if self._current is not None:
      self.seconds[self._current] += time.perf_counter() - self._since
      self._current = None

  @property
  def total(self) -> float:
    """Seconds of all finished phases."""
    return sum(self.seconds.values())
