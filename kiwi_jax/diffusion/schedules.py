"""Flow-matching noise schedules: sigma/timestep tables and their lookup.

Restates DiffSynth's ``FlowMatchScheduler`` (``diffsynth/schedulers/
flow_match.py`` in showlab/Kiwi-Edit) as it is used by Kiwi-Edit:

* ``sigma_raw = linspace(sigma_start, sigma_min, n + 1)[:-1]`` (the
  ``extra_one_step`` grid: the final sigma_min is dropped and the last Euler
  step goes to sigma = 0),
* ``sigma = shift * s / (1 + (shift - 1) * s)`` with shift 5,
* ``timestep = 1000 * sigma``,
* the training weight, a Gaussian bump in t that is 0 at t = 1000.

Two variants exist (reference §5.1, 5.2, quirk 10): DiffSynth's ``sigma_min=0``
and the diffusers pipeline's ``sigma_min=0.003/1.002`` (last sigma 0.10504
instead of 0.09259).

The tables are host numpy float32 computed the way torch's CPU ``linspace``
kernel does it in float32 (first half ``start + i*step``, second half
``end - (n-1-i)*step``); they match the reference to 1 ulp (torch's
vectorised kernel rounds a few entries differently, depending on the CPU's
vector width).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_F32 = np.float32


def _torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
  """float32 ``torch.linspace(start, end, steps)`` (scalar CPU kernel)."""
  start, end = _F32(start), _F32(end)
  if steps == 1:
    return np.array([start], _F32)
  step = _F32((end - start) / _F32(steps - 1))
  index = np.arange(steps)
  first = start + step * index.astype(_F32)
  second = end - step * (steps - 1 - index).astype(_F32)
  return np.where(index < steps // 2, first, second).astype(_F32)


@dataclasses.dataclass(frozen=True)
class FlowMatchSchedule:
  """A shifted flow-matching schedule (DiffSynth ``FlowMatchScheduler``).

  Attributes:
    shift: sigma shift (5 for Wan in training and inference).
    sigma_min: the (dropped) end of the raw sigma grid.
    sigma_max: the start of the raw sigma grid at full denoising strength.
    num_train_timesteps: timestep = sigma * this.
    extra_one_step: build ``n + 1`` raw sigmas and drop the last one.
  """

  shift: float = 5.0
  sigma_min: float = 0.0
  sigma_max: float = 1.0
  num_train_timesteps: int = 1000
  extra_one_step: bool = True

  def sigmas(
    self, num_steps: int, denoising_strength: float = 1.0
  ) -> np.ndarray:
    """Shifted sigmas, float32[num_steps], decreasing from ~1."""
    if num_steps < 1:
      raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    if not 0.0 < denoising_strength <= 1.0:
      raise ValueError(
        f"denoising_strength must be in (0, 1], got {denoising_strength}."
      )
    # Python-float arithmetic as the reference does before torch.linspace.
    start = self.sigma_min + (self.sigma_max - self.sigma_min) * (
      denoising_strength
    )
    if self.extra_one_step:
      raw = _torch_linspace_f32(start, self.sigma_min, num_steps + 1)[:-1]
    else:
      raw = _torch_linspace_f32(start, self.sigma_min, num_steps)
    shift = _F32(self.shift)
    return (shift * raw / (_F32(1) + (shift - _F32(1)) * raw)).astype(_F32)

  def timesteps(
    self, num_steps: int, denoising_strength: float = 1.0
  ) -> np.ndarray:
    """``sigma * num_train_timesteps``, float32[num_steps]."""
    return (
      self.sigmas(num_steps, denoising_strength)
      * _F32(self.num_train_timesteps)
    ).astype(_F32)

  def training_weights(self) -> np.ndarray:
    """Per-grid-entry loss weight over the training grid, float32[1000].

    ``y = exp(-2 ((t - n/2) / n)^2)``, ``y' = y - min(y)``,
    ``w = y' * n / sum(y')`` with n = num_train_timesteps: mean 1, peak
    ~2.076 near t = 500, 0 at t = 1000 (reference §4.1).
    """
    n = self.num_train_timesteps
    t = self.timesteps(n)
    y = np.exp(_F32(-2) * np.square((t - _F32(n / 2)) / _F32(n)))
    shifted = y - y.min()
    return (shifted * (_F32(n) / shifted.sum(dtype=_F32))).astype(_F32)


DIFFSYNTH = FlowMatchSchedule()
DIFFUSERS = FlowMatchSchedule(sigma_min=0.003 / 1.002)
SCHEDULES = {"diffsynth": DIFFSYNTH, "diffusers": DIFFUSERS}


def get_schedule(
  name: str | FlowMatchSchedule, shift: float | None = None
) -> FlowMatchSchedule:
  """``"diffsynth"`` (training and the released demo) or ``"diffusers"``.

  Args:
    name: a schedule or its name.
    shift: replaces the schedule's sigma shift (None keeps it: 5, Wan's
      shift at 720p; 1 spaces sigmas evenly). With shift 5, ten steps end
      with a jump from sigma 0.33 to 0, and 9% of training draws lie below
      0.33. ``KiwiEditConfig.flow_shift`` carries a model's shift into
      training and sampling.
  """
  if isinstance(name, FlowMatchSchedule):
    schedule = name
  elif name not in SCHEDULES:
    raise ValueError(
      f"Unknown flow-matching schedule {name!r}; choose one of "
      f"{sorted(SCHEDULES)}."
    )
  else:
    schedule = SCHEDULES[name]
  if shift is None:
    return schedule
  check_shift(shift)
  if float(shift) == schedule.shift:
    return schedule
  return dataclasses.replace(schedule, shift=float(shift))


def check_shift(shift: float) -> None:
  """Raises ``ValueError`` unless ``shift`` is a finite number above 0."""
  if not (
    isinstance(shift, numbers.Real)
    and not isinstance(shift, bool)
    and np.isfinite(shift)
    and shift > 0
  ):
    raise ValueError(f"sigma shift must be a number above 0, got {shift!r}.")


def to_bf16(t: jax.Array) -> jax.Array:
  """Rounds timesteps to bf16, as the reference does before the DiT."""
  return jnp.asarray(t).astype(jnp.bfloat16)


def model_timestep(t: jax.Array, dtype: Any = jnp.bfloat16) -> jax.Array:
  """Timesteps as the DiT sees them: cast to the pipeline's compute dtype.

  The reference casts the scheduler's float32 timesteps to its
  ``torch_dtype`` (``WanVideoPipeline.__call__`` and ``training_loss``):
  bf16 rounds them (1000 draws collapse to 294 values), float32 keeps them
  exact.

  Args:
    t: float32 timesteps, any shape.
    dtype: the DiT's compute dtype (bf16 in the released runs).
  """
  return jnp.asarray(t).astype(dtype)


def nearest_index(timesteps: jax.Array, t: jax.Array) -> jax.Array:
  """Index of the table entry nearest to each ``t`` (ties: the first).

  The reference's ``argmin(|timesteps - t|)`` with ``t`` a bf16 tensor and
  the table float32 (torch promotes the difference to float32).

  Args:
    timesteps: float32[N], the schedule's timestep table.
    t: timesteps of any shape and float dtype (typically bf16).

  Returns:
    int32 indices, shape of ``t``.
  """
  table = jnp.asarray(timesteps, jnp.float32)
  t = jnp.asarray(t).astype(jnp.float32)
  distance = jnp.abs(table - t[..., None])
  return jnp.argmin(distance, axis=-1).astype(jnp.int32)


def lookup_sigma(
  sigmas: jax.Array, timesteps: jax.Array, t: jax.Array
) -> jax.Array:
  """``sigmas[nearest_index(timesteps, t)]`` (DiffSynth ``get_sigma``)."""
  return jnp.asarray(sigmas, jnp.float32)[nearest_index(timesteps, t)]
