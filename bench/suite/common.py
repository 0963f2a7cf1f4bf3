"""Shared pieces of the GPU suite: sizes, timing, memory, random weights and
the per-section result file.

Each section runs in its own process (``bench/gpu_suite.py`` starts it),
so a crash, an out-of-memory error or a compile that outlives its budget
costs that section only, and each section's peak memory is its own.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kiwi_jax import sharding
from kiwi_jax.utils import atomic

GB = 1e9


@dataclasses.dataclass(frozen=True)
class Scale:
  """The sizes one suite run uses.

  Attributes:
    name: "full" (the issue's sizes, a GPU) or "toy" (CPU check).
    dit, vae, kiwi: variant names of the DiT, the VAE and Kiwi-Edit.
    latent_grid: (t, h, w) of the DiT and VAE latents.
    video: (frames, height, width) of the edited clip.
    context_len: cross-attention rows (Kiwi's 512 video queries).
    steps: denoising steps of the edit.
    repeats: timed calls after the warm-up.
  """

  name: str
  dit: str
  vae: str
  kiwi: str
  latent_grid: tuple[int, int, int]
  video: tuple[int, int, int]
  context_len: int
  steps: int
  repeats: int


# 704 x 1280 x 81 frames -> 21 x 44 x 80 latents -> 18,480 DiT tokens.
FULL = Scale(
  "full",
  "wan2.2-ti2v-5b",
  "wan2.2",
  "kiwi-5b",
  (21, 44, 80),
  (81, 704, 1280),
  512,
  50,
  3,
)
TOY = Scale(
  "toy", "tiny", "wan2.2-tiny", "tiny", (3, 4, 6), (5, 32, 48), 8, 2, 1
)


class Recorder:
  """A section's results, rewritten (atomically) after every ``set``, so a
  section stopped at its budget still reports what it had measured."""

  def __init__(self, path):
    self.path = path
    self.data: dict[str, Any] = {}

  def set(self, **values) -> None:
    self.data.update(values)
    atomic.write_text(self.path, json.dumps(self.data, indent=1, default=str))

  def update(self, key: str, **values) -> None:
    self.set(**{key: {**self.data.get(key, {}), **values}})


class Deadline:
  """The section's soft deadline (the parent kills it a little later)."""

  def __init__(self, at: float):
    self.at = at

  def left(self) -> float:
    return self.at - time.time()

  def allows(self, seconds: float) -> bool:
    return self.left() > seconds


def time_calls(
  fn: Callable[[], Any], repeats: int, deadline: Deadline
) -> dict[str, Any]:
  """Runs ``fn`` once to warm up, then up to ``repeats`` timed calls (at
  least one; later ones only while the deadline allows another).

  ``fn`` must wait for its own work (``jax.block_until_ready``,
  ``torch.cuda.synchronize``).
  """
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  times = []
  while len(times) < max(repeats, 1):
    if times and not deadline.allows(2 * times[-1]):
      break
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return {
    "first_call_s": first,
    "times_s": times,
    "median_s": statistics.median(times),
  }


def memory(device=None) -> dict[str, float | None]:
  """Peak and current device memory in GB (None where the backend keeps
  no statistics, e.g. the CPU). The peak is since the process started."""
  stats = (device or jax.devices()[0]).memory_stats() or {}
  get = lambda k: stats[k] / GB if k in stats else None  # noqa: E731
  return {
    "peak_gb": get("peak_bytes_in_use"),
    "in_use_gb": get("bytes_in_use"),
    "limit_gb": get("bytes_limit"),
  }


def device_info() -> dict[str, Any]:
  device = jax.devices()[0]
  return {
    "backend": jax.default_backend(),
    "device_kind": device.device_kind,
    "jax": jax.__version__,
  }


def one_device_mesh(axis: str = "data"):
  return sharding.make_mesh({axis: 1}, devices=[jax.devices()[0]])


# -- Random weights.


GAIN_NAMES = ("weight", "scale", "gamma")


def _init_stats(name: str, shape, axes) -> tuple[float, float]:
  """(mean, std) for a parameter: 1/sqrt(fan_in) for kernels (stacked layer
  axes, which carry no logical name, left out of the fan-in), N(1, 0.02)
  for norm gains and N(0, 0.02) for other vectors (biases)."""
  own = shape[len(shape) - len(axes) :] if axes else shape
  if len(own) <= 1:
    return (1.0 if name in GAIN_NAMES else 0.0), 0.02
  return 0.0, 1.0 / math.sqrt(max(math.prod(own[:-1]), 1))


@functools.cache
def _device_drawer(shape, dtype, out_sharding):
  def draw(seed, mean, std):
    key = jax.random.key(seed, impl="rbg")
    x = jax.random.normal(key, shape, dtype)
    return x * std.astype(dtype) + mean.astype(dtype)

  return jax.jit(draw, out_shardings=out_sharding)


def random_module(
  ctor: Callable[[], nnx.Module],
  mesh,
  seed: int = 0,
  on_host: bool | None = None,
) -> nnx.Module:
  """``ctor()``'s module with random weights, placed by its logical axes.

  Each parameter is drawn straight in its own dtype (bf16 for the suite's
  configs) by a small jitted program with ``out_shardings``, one program
  per (shape, dtype, sharding), with XLA's RngBitGenerator: the modules'
  own initialisers as one ``jit`` (``sharding.create_sharded``) compile for
  minutes on a small host, and the values only need a sane scale for the
  timings. ``on_host`` (default: on the CPU backend) draws with numpy
  instead, which compiles nothing (toy sizes).
  """
  graphdef, abstract = nnx.split(sharding.abstract_model(ctor))
  shardings = dict(nnx.to_flat_state(sharding.state_shardings(abstract, mesh)))
  on_host = jax.default_backend() == "cpu" if on_host is None else on_host
  rng = np.random.default_rng(seed)
  leaves = []
  for index, (path, var) in enumerate(nnx.to_flat_state(abstract)):
    value = var.get_value()
    shape, dtype = tuple(value.shape), np.dtype(value.dtype)
    out_sharding = shardings[path]
    out_sharding = getattr(out_sharding, "get_value", lambda: out_sharding)()
    mean, std = _init_stats(
      str(path[-1]), shape, sharding.variable_logical_axes(var)
    )
    if on_host:
      x = rng.standard_normal(shape, np.float32) * std + mean
      array = jax.device_put(x.astype(dtype), out_sharding)
    else:
      array = _device_drawer(shape, dtype, out_sharding)(
        np.uint32(seed * 7919 + index), np.float32(mean), np.float32(std)
      )
    leaves.append((path, var.replace(array)))
  return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def random_array(shape, dtype=jnp.bfloat16, seed: int = 0) -> jax.Array:
  """Standard normal input data, drawn on the device."""
  key = jax.random.key(seed, impl="rbg")
  return jax.random.normal(key, shape, dtype)


def error_text(error: BaseException) -> str:
  """One line naming the error (XLA messages run to pages)."""
  lines = str(error).strip().splitlines() or [""]
  return f"{type(error).__name__}: {lines[0][:300]}"
