"""Progress reports: time per phase, steps/s, ETA, throughput, MFU; the
console of a run.

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
MFU is model FLOPs per second per chip over the chip's peak FLOP/s. The
model FLOPs come from ``kiwi_jax.flops`` (matmuls, no remat recompute):
per batch, as ``step_done(..., flops=n)`` (``KiwiTask.batch_counts``
gives them, so batches of different sizes count what they cost), or a
fixed ``flops_per_step``. The peak defaults to the device's entry in
``kiwi_jax.flops.PEAK_BF16_FLOPS`` (no MFU on CPUs or unknown chips).

What a person watching the run sees (process 0 only): ``note()`` lines
before long phases, and ``ConsoleProgress``: one compact line per log step
on stdout (``step 25/900 | loss 0.0123 | 3.21 steps/s | ETA 4m36s``), or a
tqdm bar when stderr is a terminal. ``label("stage 2/3")`` names the
lines and bars of the runs started inside it (the demo's stages).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

import jax
import numpy as np

logger = logging.getLogger("kiwi_jax")

_label = ""  # set by label(); names the progress lines and bars
_bars: list[Any] = []  # open tqdm bars: console lines are written above them


def _console(line: str) -> None:
  """Prints a line to stdout, above any progress bar being drawn."""
  if _bars:
    _bars[-1].write(line, file=sys.stdout)
    sys.stdout.flush()
  else:
    print(line, flush=True)


_compile_seconds = 0.0
_compile_listener_installed = False


def _on_event_duration(event: str, duration: float, **kwargs) -> None:
  del kwargs
  global _compile_seconds
  if event.startswith("/jax/core/compile/"):
    _compile_seconds += duration


def compile_seconds() -> float:
  """Seconds this process has spent tracing, lowering and compiling since
  the first :class:`ReportProgress` (from ``jax.monitoring`` events)."""
  return _compile_seconds


def _install_compile_listener() -> None:
  global _compile_listener_installed
  if not _compile_listener_installed:
    jax.monitoring.register_event_duration_secs_listener(_on_event_duration)
    _compile_listener_installed = True


def note(message: str) -> None:
  """A one-line ``NOTE:`` before a long phase (process 0 only).

  Printed once on stdout, and logged at INFO (which ``train.py`` sends to
  the run's log file, not to the console).
  """
  if jax.process_index() == 0:
    logger.info("NOTE: %s", message)
    _console(f"NOTE: {message}")


@contextlib.contextmanager
def label(text: str) -> Iterator[None]:
  """Prefixes the progress lines of the runs inside with ``text``."""
  global _label
  previous, _label = _label, text
  try:
    yield
  finally:
    _label = previous


class ReportProgress:
  """Accumulates timings and throughput between reports.

  Time the host spends compiling (``jax.monitoring`` compile events) is
  reported as ``compile_seconds`` and left out of the rates, the ETA and
  the MFU; ``core_hours`` counts it.

  Args:
    total_steps: the run's last step (for the ETA).
    num_chips: devices sharing the work (for per-chip figures).
    flops_per_step: model FLOPs of one step, for steps whose
      ``step_done`` gives no ``flops``.
    peak_flops_per_chip: the chips' peak FLOP/s (None: the device's
      ``kiwi_jax.flops.peak_flops_per_chip``; no MFU when that is None).
    first_step: the step training (re)starts from.
  """

  def __init__(
    self,
    total_steps: int,
    *,
    num_chips: int = 1,
    flops_per_step: float | None = None,
    peak_flops_per_chip: float | None = None,
    first_step: int = 0,
  ):
    self.total_steps = total_steps
    self.num_chips = max(1, num_chips)
    self.flops_per_step = flops_per_step
    if peak_flops_per_chip is None:
      from kiwi_jax.flops.peak import peak_flops_per_chip as device_peak

      peak_flops_per_chip = device_peak()
    self.peak_flops_per_chip = peak_flops_per_chip
    self._phase_seconds: dict[str, float] = collections.defaultdict(float)
    _install_compile_listener()
    self._window_start = time.perf_counter()
    self._window_compile = compile_seconds()
    self._window_first_step = first_step
    self._window_examples = 0
    self._window_frames = 0
    self._window_flops = 0.0
    self._run_start = self._window_start
    self._run_first_step = first_step
    self.examples_seen = 0
    self.chip_seconds = 0.0
    self.last_report: dict[str, float] = {}

  @contextlib.contextmanager
  def timed(self, phase: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
      yield
    finally:
      self._phase_seconds[phase] += time.perf_counter() - start

  def step_done(
    self,
    step: int,
    *,
    examples: int = 0,
    frames: int = 0,
    flops: float | None = None,
  ) -> None:
    """Counts one finished step; ``flops``: its model FLOPs (default
    ``flops_per_step``)."""
    del step
    self._window_examples += examples
    self._window_frames += frames
    self._window_flops += float(
      flops if flops is not None else self.flops_per_step or 0.0
    )
    self.examples_seen += examples

  def report(self, step: int) -> dict[str, float]:
    """Measurements since the last report; resets the window."""
    now = time.perf_counter()
    seconds = max(now - self._window_start, 1e-9)
    # A compile blocks the host while it runs: rates count the rest, so the
    # first step's compile does not read as a 3-hour ETA.
    compiling = min(compile_seconds() - self._window_compile, seconds)
    computing = max(seconds - compiling, 1e-9)
    steps = step - self._window_first_step
    out: dict[str, float] = {"compile_seconds": compiling}
    if steps > 0:
      steps_per_sec = steps / computing
      out["steps_per_sec"] = steps_per_sec
      out["eta_seconds"] = (self.total_steps - step) / steps_per_sec
      chip_s = computing * self.num_chips
      out["examples_per_sec_per_chip"] = self._window_examples / chip_s
      out["frames_per_sec_per_chip"] = self._window_frames / chip_s
      flops = self._window_flops or (self.flops_per_step or 0.0) * steps
      if flops and self.peak_flops_per_chip:
        achieved = flops / computing / self.num_chips
        out["model_flops_per_sec_per_chip"] = achieved
        out["mfu"] = achieved / self.peak_flops_per_chip
    for phase, phase_seconds in self._phase_seconds.items():
      out[f"time_fraction/{phase}"] = phase_seconds / seconds
    self.chip_seconds += seconds * self.num_chips
    out["core_hours"] = self.chip_seconds / 3600.0
    out["examples_seen"] = float(self.examples_seen)
    self._phase_seconds.clear()
    self._window_start = now
    self._window_compile = compile_seconds()
    self._window_first_step = step
    self._window_examples = self._window_frames = 0
    self._window_flops = 0.0
    self.last_report = out
    return out


def format_eta(seconds: float) -> str:
  """``3725.0`` -> ``"1h02m"``; ``245.0`` -> ``"4m05s"``; ``7.2`` -> ``"7s"``."""
  if not np.isfinite(seconds):
    return "?"
  seconds = max(0, int(round(seconds)))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  minutes = seconds // 60
  return f"{minutes // 60}h{minutes % 60:02d}m"


def progress_line(
  step: int,
  total_steps: int,
  loss: float,
  report: dict[str, float],
  prefix: str = "",
) -> str:
  """``[stage 1/3] step 25/900 | loss 0.0123 | 3.21 steps/s | ETA 4m36s``."""
  parts = [
    f"{prefix + ' ' if prefix else ''}step {step}/{total_steps}",
    f"loss {loss:.4g}",
  ]
  if "steps_per_sec" in report:
    parts.append(f"{report['steps_per_sec']:.3g} steps/s")
    parts.append(f"ETA {format_eta(report['eta_seconds'])}")
  return " | ".join(parts)


def _terminal_size(stream: TextIO) -> tuple[int, int]:
  try:
    return tuple(os.get_terminal_size(stream.fileno()))
  except (AttributeError, OSError, ValueError):
    return (0, 0)


class ConsoleProgress:
  """What the terminal shows of a training loop (process 0 only).

  ``step_done()`` after every step (host-side only: no device sync);
  ``log_step(step, loss, report)`` at each log step, with the loss already
  fetched and ``ReportProgress``'s report. Without a bar that prints one
  ``progress_line``; with one it updates the bar's loss.

  Args:
    total_steps: the run's last step.
    first_step: the step the run (re)starts from.
    bar: draw a tqdm bar (default: when ``stream`` is a terminal).
    stream: where the bar goes (default stderr); lines go to stdout.
  """

  def __init__(
    self,
    total_steps: int,
    first_step: int = 0,
    *,
    bar: bool | None = None,
    stream: TextIO | None = None,
  ):
    self.total_steps = total_steps
    self.prefix = f"[{_label}]" if _label else ""
    self.enabled = jax.process_index() == 0
    stream = stream or sys.stderr
    if bar is None:
      bar = bool(getattr(stream, "isatty", lambda: False)())
    self._bar = None
    if self.enabled and bar and first_step < total_steps:
      import tqdm  # pylint: disable=g-import-not-at-top

      # A pseudo-terminal may report a size of 0 x 0, which hides the bar.
      sized = min(_terminal_size(stream)) > 0
      self._bar = tqdm.tqdm(
        total=total_steps,
        initial=first_step,
        desc=_label or "train",
        unit="step",
        file=stream,
        dynamic_ncols=sized,
        ncols=None if sized else 80,
        nrows=None if sized else 24,
        mininterval=0.5,
      )
      _bars.append(self._bar)

  def step_done(self) -> None:
    if self._bar is not None:
      self._bar.update(1)

  def log_step(self, step: int, loss: Any, report: dict[str, float]) -> None:
    if not self.enabled:
      return
    loss = float(np.asarray(loss))
    if self._bar is not None:
      self._bar.set_postfix_str(f"loss {loss:.4g}")
    else:
      _console(progress_line(step, self.total_steps, loss, report, self.prefix))

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      _bars.remove(self._bar)
      self._bar = None
