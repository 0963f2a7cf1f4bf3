"""Profiler hooks switched on from config.

``config.profile = dict(start_step=10, num_steps=5)`` traces steps
``[10, 15)`` into ``workdir/profile`` on process 0 (viewable with
TensorBoard's profile plugin or Perfetto/XProf). Every step runs inside
``jax.profiler.StepTraceAnnotation("train", step_num=step)`` so the trace
shows step boundaries.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax


def step_annotation(step: int) -> jax.profiler.StepTraceAnnotation:
  return jax.profiler.StepTraceAnnotation("train", step_num=step)


@dataclasses.dataclass(frozen=True)
class ProfileConfig:
  """``config.profile``.

  Attributes:
    start_step: first traced step (< 0: never trace).
    num_steps: steps to trace.
  """

  start_step: int = -1
  num_steps: int = 5


class Profiler:
  """Starts and stops a trace around configured steps.

  Args:
    start_step: first traced step (None or < 0: never trace).
    num_steps: steps to trace.
    logdir: where traces go.
  """

  def __init__(self, start_step: int | None, num_steps: int, logdir: str):
    self.start_step = start_step
    self.num_steps = num_steps
    self.logdir = logdir
    self.active = False

  @classmethod
  def from_config(cls, profile: Any, workdir: str) -> Profiler:
    """From a :class:`ProfileConfig` (or a mapping of its fields)."""
    if not hasattr(profile, "start_step"):
      profile = ProfileConfig(**dict(profile or {}))
    return cls(
      profile.start_step,
      int(profile.num_steps),
      os.path.join(os.fspath(workdir), "profile"),
    )

  def _enabled(self) -> bool:
    return (
      self.start_step is not None
      and self.start_step >= 0
      and self.num_steps > 0
      and jax.process_index() == 0
    )

  def before_step(self, step: int, state: Any) -> None:
    """Call before running step ``step``."""
    if self._enabled() and not self.active and step == self.start_step:
      jax.block_until_ready(state)  # trace only the profiled steps' work
      jax.profiler.start_trace(self.logdir)
      self.active = True
      logging.info(
        "Profiling steps [%d, %d) into %s",
        step,
        step + self.num_steps,
        self.logdir,
      )

  def after_step(self, step: int, state: Any) -> None:
    """Call after step ``step`` ran; stops after the last traced step."""
    if self.active and step + 1 >= self.start_step + self.num_steps:
      self.stop(state)

  def stop(self, state: Any = None) -> None:
    if self.active:
      if state is not None:
        jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.active = False
