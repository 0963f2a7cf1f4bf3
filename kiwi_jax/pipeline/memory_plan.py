"""Memory plan of one edit: compile the edit path's real programs over a
shape-only model and add up what must sit in device memory.

No weights are read: the model is built with ``nnx.eval_shape``
(``kiwi_jax.sharding.abstract_model``, as ``kiwi_jax.plan`` does), the MLLM
inputs are the plan's shape-only example (``plan.batches.mllm_example``),
and each program is ``.lower(...).compile()``-d on the default backend;
its ``compiled.memory_analysis()`` gives argument, output, alias and
temporary bytes (``plan.measure.memory_stats``).

Two modes:

* ``default``: weights in the variant's dtype (float32), all of them
  resident for the whole edit, the VAE run on the whole clip
  (``stages.encode_video`` / ``stages.decode_latents``). Peak = all weights
  + the largest program's non-weight memory.
* ``low_memory``: bfloat16 weights and compute, the conditioning weights
  (Qwen2.5-VL, queries, connectors) freed once the conditions are encoded,
  the VAE run by ``tiling.VAERunner`` in spatial tiles, chunk by chunk.
  Peak = max over phases of (the phase's resident weights + its largest
  program's non-weight memory + what the host loop holds between calls:
  the full video and its latents in float32).

A program's non-weight memory is ``argument + output - alias + temp``
minus the bytes of the model state among its arguments.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kiwi_jax import sharding
from kiwi_jax.diffusion import sampler
from kiwi_jax.models.kiwi.config import KiwiEditConfig
from kiwi_jax.models.kiwi.model import KiwiEdit
from kiwi_jax.models.kiwi.processor import KiwiProcessor
from kiwi_jax.models.vae import tiling
from kiwi_jax.models.vae.config import ENCODER_CHUNK_FRAMES
from kiwi_jax.pipeline import programs as stages
from kiwi_jax.plan import batches as batches_lib
from kiwi_jax.plan import measure

GIB = 1 << 30
PHASES = ("mllm_encode", "vae_encode", "denoise", "vae_decode")
# Top-level model parts used only by ``encode_conditions``.
KEPT_AFTER_ENCODE = ("dit", "vae")
_UNITS = {
  "": 1,
  "b": 1,
  "kb": 10**3,
  "mb": 10**6,
  "gb": 10**9,
  "tb": 10**12,
  "kib": 1 << 10,
  "mib": 1 << 20,
  "gib": 1 << 30,
  "tib": 1 << 40,
}


def parse_budget(text: str) -> int:
  """``24GB`` (10**9), ``24GiB`` (2**30), ``24000MB``, ... -> bytes.

  Raises:
    ValueError: not a positive number with one of the units B, KB, MB,
      GB, TB, KiB, MiB, GiB, TiB.
  """
  m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
  unit = m.group(2).lower() if m else None
  if m is None or unit not in _UNITS or float(m.group(1)) <= 0:
    raise ValueError(
      f"--memory_budget {text!r}: expected a positive size such as 24GB, "
      "24GiB or 24000MB."
    )
  return int(float(m.group(1)) * _UNITS[unit])


def _with_dtype(cfg: KiwiEditConfig, dtype) -> KiwiEditConfig:
  parts = {
    name: dataclasses.replace(
      getattr(cfg, name), dtype=dtype, param_dtype=dtype
    )
    for name in ("dit", "mllm", "vae")
  }
  return cfg.replace(**parts)


def model_config(variant: str, low_memory: bool) -> KiwiEditConfig:
  """The variant's config; bfloat16 weights and compute in low memory."""
  cfg = KiwiEditConfig.from_variant(variant)
  return _with_dtype(cfg, jnp.bfloat16) if low_memory else cfg


def check_shape(cfg: KiwiEditConfig, frames: int, height: int, width: int):
  """Raises ValueError naming the flag when the clip cannot be edited."""
  t, f = cfg.vae.temporal_factor, cfg.vae.spatial_factor
  unit = f * cfg.dit.patch_size[1]
  if frames < 1 or (frames - 1) % t:
    raise ValueError(f"--frames {frames}: must be {t}k+1 (1, {t + 1}, ...).")
  for flag, n in (("--height", height), ("--width", width)):
    if n < unit or n % unit:
      raise ValueError(f"{flag} {n}: must be a positive multiple of {unit}.")


def _nbytes(tree) -> int:
  return sum(
    int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize
    for x in jax.tree.leaves(tree)
  )


@dataclasses.dataclass(frozen=True)
class ProgramRow:
  """One compiled program's memory (bytes, as the compiler reports)."""

  name: str
  phase: str
  argument: int
  output: int
  alias: int
  temp: int
  inputs: int  # the arguments that are not model state
  seconds: float = 0.0  # lower + compile

  @property
  def peak(self) -> int:
    return self.argument + self.output - self.alias + self.temp

  @property
  def weights(self) -> int:
    """Model-state bytes the program reads (jit drops unused ones)."""
    return self.argument - self.inputs

  @property
  def non_weight(self) -> int:
    return self.peak - self.weights


@dataclasses.dataclass(frozen=True)
class PhaseRow:
  phase: str
  weights: int  # resident during the phase
  program: int  # the phase's largest program non-weight bytes
  held: int  # kept on device by the host loop between program calls

  @property
  def peak(self) -> int:
    return self.weights + self.program + self.held


@dataclasses.dataclass(frozen=True)
class ModePlan:
  mode: str
  programs: list[ProgramRow]
  phases: list[PhaseRow]
  weight_bytes: dict[str, int]  # "all", "kept" (dit + vae)

  @property
  def peak(self) -> int:
    return max(p.peak for p in self.phases)


def _compile(name, phase, inputs, lower: Callable[[], Any]) -> ProgramRow:
  """``inputs``: the non-state arguments (their bytes are counted)."""
  start = time.perf_counter()
  m = measure.memory_stats(lower().compile())
  return ProgramRow(
    name,
    phase,
    m["argument"],
    m["output"],
    m["alias"],
    m["temp"],
    _nbytes(inputs),
    round(time.perf_counter() - start, 1),
  )


def _programs(cfg, frames, height, width, steps, tiled):
  """Compiles the edit path's programs; yields ``ProgramRow``s."""
  graphdef, state = nnx.split(
    sharding.abstract_model(lambda: KiwiEdit(cfg, rngs=nnx.Rngs(0)))
  )
  clip = batches_lib.ClipShape("video", frames, height, width)
  mllm = {k: v[None] for k, v in batches_lib.mllm_example(cfg, clip).items()}
  inputs = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
    KiwiProcessor.model_inputs(mllm),
  )
  options = (("mode", "video"),)
  yield _compile(
    "encode_conditions",
    "mllm_encode",
    inputs,
    lambda: stages.encode_conditions.lower(graphdef, state, inputs, options),
  )
  conditions = jax.eval_shape(
    functools.partial(stages.encode_conditions, graphdef, options=options),
    state,
    inputs,
  )
  vae = cfg.vae
  grid = (
    1 + (frames - 1) // vae.temporal_factor,
    height // vae.spatial_factor,
    width // vae.spatial_factor,
  )
  latent = jax.ShapeDtypeStruct((1, *grid, vae.z_dim), cfg.latent_dtype)
  video = jax.ShapeDtypeStruct((1, frames, height, width, 3), jnp.float32)
  if tiled:
    yield from _runner_programs(cfg, graphdef, state, latent)
  else:
    yield _compile(
      "encode_video",
      "vae_encode",
      video,
      lambda: stages.encode_video.lower(graphdef, state, video),
    )
  plan = sampler.SamplingPlan.build(
    steps, "diffsynth", 1.0, timestep_dtype=cfg.timestep_dtype
  )
  yield _compile(
    f"denoise ({steps} steps)",
    "denoise",
    (latent, plan, conditions, latent),
    lambda: stages.denoise.lower(
      graphdef, state, latent, plan, conditions, latent, None, report=True
    ),
  )
  if not tiled:
    yield _compile(
      "decode_latents",
      "vae_decode",
      latent,
      lambda: stages.decode_latents.lower(graphdef, state, latent),
    )


def largest_tile(h: int, w: int) -> tuple[int, int]:
  """The largest (latent) tile ``VAERunner`` cuts an h x w latent into."""
  # pylint: disable-next=protected-access
  tiles = tiling._tiles(
    h, w, tiling.DEFAULT_TILE_SIZE, tiling.DEFAULT_TILE_STRIDE
  )
  return max(((h1 - h0, w1 - w0) for h0, h1, w0, w1, _ in tiles), key=np.prod)


def _runner_programs(cfg, graphdef, state, latent):
  """The runner's four chunk programs at its largest tile, as it calls
  them (first chunk without a cache, then one chunk with the cache)."""
  vae_model = nnx.merge(graphdef, state).vae
  runner = tiling.VAERunner(vae_model)
  s = runner.state
  f = cfg.vae.spatial_factor
  th, tw = largest_tile(*latent.shape[2:4])
  b = latent.shape[0]
  x1 = jax.ShapeDtypeStruct((b, 1, th * f, tw * f, 3), jnp.float32)
  xk = jax.ShapeDtypeStruct(
    (b, ENCODER_CHUNK_FRAMES, th * f, tw * f, 3), jnp.float32
  )
  z = jax.ShapeDtypeStruct((b, 1, th, tw, latent.shape[-1]), latent.dtype)
  # pylint: disable=protected-access
  _, enc_cache = jax.eval_shape(runner._enc_first, s, x1)
  _, dec_cache = jax.eval_shape(runner._dec_first, s, z)
  tile = f"tile {th}x{tw}"
  yield _compile(
    f"vae encode first chunk ({tile})",
    "vae_encode",
    x1,
    lambda: runner._enc_first.lower(s, x1),
  )
  yield _compile(
    f"vae encode chunk ({tile})",
    "vae_encode",
    (enc_cache, xk),
    lambda: runner._enc_step.lower(s, enc_cache, xk),
  )
  yield _compile(
    f"vae decode first chunk ({tile})",
    "vae_decode",
    z,
    lambda: runner._dec_first.lower(s, z),
  )
  yield _compile(
    f"vae decode chunk ({tile})",
    "vae_decode",
    (dec_cache, z),
    lambda: runner._dec_step.lower(s, dec_cache, z),
  )


def _weight_bytes(cfg) -> dict[str, int]:
  model = sharding.abstract_model(lambda: KiwiEdit(cfg, rngs=nnx.Rngs(0)))
  state = nnx.state(model)
  kept = sum(_nbytes(state[k]) for k in KEPT_AFTER_ENCODE if k in state)
  return {"all": _nbytes(state), "kept": kept}


def plan_mode(
  variant: str,
  *,
  frames: int,
  height: int,
  width: int,
  steps: int = 50,
  low_memory: bool = False,
  on_row: Callable[[ProgramRow], None] | None = None,
) -> ModePlan:
  """Compiles one mode's programs and returns its rows and phases
  (``on_row`` sees each row as its program is compiled)."""
  cfg = model_config(variant, low_memory)
  check_shape(cfg, frames, height, width)
  rows = list(_programs(cfg, frames, height, width, steps, tiled=low_memory))
  weights = _weight_bytes(cfg)
  video = frames * height * width * 3 * 4
  t_lat = 1 + (frames - 1) // cfg.vae.temporal_factor
  f = cfg.vae.spatial_factor
  lat = t_lat * (height // f) * (width // f) * cfg.vae.z_dim * 4
  phases = []
  for phase in PHASES:
    mine = [r.non_weight for r in rows if r.phase == phase]
    if low_memory:
      resident = weights["all" if phase == "mllm_encode" else "kept"]
      held = video + lat if phase.startswith("vae") else 0
    else:
      resident, held = weights["all"], 0
    phases.append(PhaseRow(phase, resident, max(mine), held))
  return ModePlan(
    "low_memory" if low_memory else "default", rows, phases, weights
  )


__all__ = [
  "GIB",
  "ModePlan",
  "PhaseRow",
  "ProgramRow",
  "check_shape",
  "largest_tile",
  "model_config",
  "parse_budget",
  "plan_mode",
]
