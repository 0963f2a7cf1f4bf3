"""Progress reports: time per phase, steps/s, ETA, throughput, MFU.

``ReportProgress`` is fed once per step and returns a dict of measurements
to write with the metric writer every ``log_every`` steps::

  progress = ReportProgress(total_steps, num_chips=jax.device_count())
  with progress.timed("data"):
    batch = next(it)
  with progress.timed("train_step"):
    state, metrics = train_step(state, batch)
  progress.step_done(step, examples=8, frames=8 * 21)
  if step % log_every == 0:
    writer.write_scalars(step, {**metrics, **progress.report(step)})

Timings of asynchronous dispatch measure host time only; the trainer blocks
on the step's loss at every log step, so the windows are honest on average.
MFU needs a model FLOPs count per step from the task (e.g. 6 x params x
tokens for a transformer) and the chips' peak FLOP/s.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import Iterator

import jax

logger = logging.getLogger("kiwi_jax")


def note(message: str) -> None:
  """A one-line ``NOTE:`` before a long phase (process 0 only)."""
  if jax.process_index() == 0:
    logger.info("NOTE: %s", message)
    print(f"NOTE: {message}", flush=True)


class ReportProgress:
  """Accumulates timings and throughput between reports.

  Args:
    total_steps: the run's last step (for the ETA).
    num_chips: devices sharing the work (for per-chip figures).
    flops_per_step: model FLOPs of one step (None: no MFU).
    peak_flops_per_chip: the chips' peak FLOP/s (None: no MFU).
    first_step: the step training (re)starts from.
  """

  def __init__(self, total_steps: int, *, num_chips: int = 1,
               flops_per_step: float | None = None,
               peak_flops_per_chip: float | None = None,
               first_step: int = 0):
    self.total_steps = total_steps
    self.num_chips = max(1, num_chips)
    self.flops_per_step = flops_per_step
    self.peak_flops_per_chip = peak_flops_per_chip
    self._phase_seconds: dict[str, float] = collections.defaultdict(float)
    self._window_start = time.perf_counter()
    self._window_first_step = first_step
    self._window_examples = 0
    self._window_frames = 0
    self._run_start = self._window_start
    self._run_first_step = first_step
    self.examples_seen = 0
    self.chip_seconds = 0.0

  @contextlib.contextmanager
  def timed(self, phase: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
      yield
    finally:
      self._phase_seconds[phase] += time.perf_counter() - start

  def step_done(self, step: int, *, examples: int = 0,
                frames: int = 0) -> None:
    del step
    self._window_examples += examples
    self._window_frames += frames
    self.examples_seen += examples

  def report(self, step: int) -> dict[str, float]:
    """Measurements since the last report; resets the window."""
    now = time.perf_counter()
    seconds = max(now - self._window_start, 1e-9)
    steps = step - self._window_first_step
    out: dict[str, float] = {}
    if steps > 0:
      steps_per_sec = steps / seconds
      out["steps_per_sec"] = steps_per_sec
      out["eta_seconds"] = (self.total_steps - step) / steps_per_sec
      chip_s = seconds * self.num_chips
      out["examples_per_sec_per_chip"] = self._window_examples / chip_s
      out["frames_per_sec_per_chip"] = self._window_frames / chip_s
      if self.flops_per_step and self.peak_flops_per_chip:
        achieved = self.flops_per_step * steps_per_sec / self.num_chips
        out["mfu"] = achieved / self.peak_flops_per_chip
    for phase, phase_seconds in self._phase_seconds.items():
      out[f"time_fraction/{phase}"] = phase_seconds / seconds
    self.chip_seconds += seconds * self.num_chips
    out["core_hours"] = self.chip_seconds / 3600.0
    out["examples_seen"] = float(self.examples_seen)
    self._phase_seconds.clear()
    self._window_start = now
    self._window_first_step = step
    self._window_examples = self._window_frames = 0
    return out


def format_eta(seconds: float) -> str:
  """``3725.0`` -> ``"1h02m"``."""
  minutes = int(seconds // 60)
  return f"{minutes // 60}h{minutes % 60:02d}m"
