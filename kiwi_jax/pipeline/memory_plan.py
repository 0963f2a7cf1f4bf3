"""Memory plan of one edit: compile the edit path's real programs over a
shape-only model and add up what must sit in device memory.

No weights are read: the model is built with ``nnx.eval_shape``
(``kiwi_jax.sharding.abstract_state``, as ``kiwi_jax.plan`` does), the MLLM
inputs are the plan's shape-only example (``plan.batches.mllm_example``),
and each program is lowered and compiled for the target
(:func:`plan_targets`: this machine's GPU, one chip of a compile-only TPU,
the host CPU, or the TPU chip for the transformers and the CPU for the
VAE); ``compiled.memory_analysis()`` gives its argument, output, alias and
temporary bytes (``plan.measure.memory_stats``).

The programs are those ``EditPipeline`` runs, called as it calls them:
``stages.encode_conditions``, the whole ``stages.denoise`` loop
(``report=True``) and the four chunk programs of ``tiling.VAERunner`` (the
pipeline's VAE path for the Wan VAE in both modes) at its largest tile:
the first chunk without a cache, then one chunk with the cache the first
returns.

Two modes:

* ``default``: the variant's dtypes (float32) and attention (``xla``),
  every weight resident for the whole edit; the runner's host loop keeps
  the float32 source clip and all decoded float32 frames on the device.
* ``low_memory`` (``kiwi_jax.pipeline.low_memory``): bf16 weights and
  compute, attention per backend, on the device only the weight group of
  the phase (``low_memory.PHASE_GROUPS``), the source and the decoded
  frames on the host.

Per phase: resident weights + the phase's largest program's non-weight
bytes (its arguments other than weights, outputs and temporaries) + what
the host loop holds on the device between calls (:func:`held_buffers`);
a mode's peak is the largest phase.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from kiwi_jax import sharding
from kiwi_jax.diffusion import sampler
from kiwi_jax.models.kiwi.config import KiwiEditConfig
from kiwi_jax.models.kiwi.model import abstract_kiwi
from kiwi_jax.models.kiwi.processor import KiwiProcessor
from kiwi_jax.models.vae import tiling
from kiwi_jax.models.vae.config import ENCODER_CHUNK_FRAMES
from kiwi_jax.pipeline import low_memory as low_memory_lib
from kiwi_jax.pipeline import programs as stages
from kiwi_jax.pipeline.memory_targets import (
  TARGETS,
  Target,
  flash_stand_in,
  plan_targets,
  resolve_target,
  target_mesh,
)
from kiwi_jax.pipeline.memory_targets import (
  placed as _placed,
)
from kiwi_jax.plan import batches as batches_lib
from kiwi_jax.plan import cache as cache_lib
from kiwi_jax.plan import hlo_stats, measure

GIB = 1 << 30
PHASES = ("mllm_encode", "vae_encode", "denoise", "vae_decode")
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


def model_config(variant: str, low_memory: bool) -> KiwiEditConfig:
  """The variant's config; :func:`low_memory.low_memory_config` in low
  memory."""
  cfg = KiwiEditConfig.from_variant(variant)
  return low_memory_lib.low_memory_config(cfg) if low_memory else cfg


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
  """One compiled program's memory (bytes, as the compiler reports).

  ``out_of_memory``: the compile failed for memory on the target; ``temp``
  is then the need its message states and the row a lower bound.
  """

  name: str
  phase: str
  argument: int
  output: int
  alias: int
  temp: int
  inputs: int  # the arguments that are not model state
  group_weights: int  # bytes of the weight group the program reads
  seconds: float = 0.0  # lower + compile
  out_of_memory: bool = False
  target: str = ""  # what it compiled for ("tpu", "cpu", "gpu", ...)

  @property
  def peak(self) -> int:
    return self.argument + self.output - self.alias + self.temp

  @property
  def weights(self) -> int:
    """Model-state bytes among the arguments (jit drops unused ones), at
    most the group's (the rest of the arguments is the inputs' layout
    padding, counted as non-weight)."""
    return max(0, min(self.argument - self.inputs, self.group_weights))

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
  weight_bytes: dict[str, int]  # per group and "all"
  target: str = ""  # the compile target's label

  @property
  def peak(self) -> int:
    return max(p.peak for p in self.phases)

  @property
  def lower_bound(self) -> bool:
    """A program did not compile for memory: the peak is at least this."""
    return any(r.out_of_memory for r in self.programs)


class _Compiler:
  """Compiles (or reads from the row cache) one mode's programs."""

  def __init__(self, weights, rows_cache, key_parts, on_row=None):
    self.weights = weights
    self.rows, self.key_parts = rows_cache, key_parts
    self.on_row = on_row or (lambda row, cached: None)

  def __call__(
    self, target: Target, name, phase, group, inputs, lower
  ) -> ProgramRow:
    key = cache_lib.row_key(program=name, on=target.tag, **self.key_parts)
    cached = self.rows.get(key)
    if cached is not None:
      row = ProgramRow(**cached)
      self.on_row(row, True)
      return row
    start = time.perf_counter()
    oom = False
    try:
      with sharding.use_mesh(target.mesh):
        m = measure.memory_stats(lower().compile())
    except Exception as e:  # pylint: disable=broad-except
      message = f"{type(e).__name__}: {e}"
      need = hlo_stats.memory_need(message)
      if not hlo_stats.is_out_of_memory(message) or not need:
        raise
      m = dict(argument=0, output=0, alias=0, temp=need["need_bytes"])
      oom = True
    row = ProgramRow(
      name,
      phase,
      m["argument"],
      m["output"],
      m["alias"],
      m["temp"],
      _nbytes(inputs),
      self.weights[group],
      round(time.perf_counter() - start, 1),
      oom,
      target.tag,
    )
    self.rows.put(key, dataclasses.asdict(row))
    self.on_row(row, False)
    return row


def _on(mesh, tree):
  """Shape structs of ``tree`` replicated on the one-device ``mesh``."""
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(
      np.shape(x), x.dtype, sharding=NamedSharding(mesh, P())
    ),
    tree,
  )


def _programs(
  compile_, main, vae, cfg, graphdef, abstract, frames, height, width, steps
):
  """Compiles the edit path's programs, the transformers' for ``main``
  and the VAE's for ``vae``; yields ``ProgramRow``s."""
  mesh, state = main.mesh, _placed(abstract, main.mesh)
  compile_main = functools.partial(compile_, main)
  mode = "image" if frames == 1 else "video"
  clip = batches_lib.ClipShape(mode, frames, height, width)
  mllm = {k: v[None] for k, v in batches_lib.mllm_example(cfg, clip).items()}
  inputs = _on(mesh, KiwiProcessor.model_inputs(mllm))
  options = (("mode", mode),)
  yield compile_main(
    "encode_conditions",
    "mllm_encode",
    low_memory_lib.MLLM,
    inputs,
    lambda: stages.encode_conditions.lower(graphdef, state, inputs, options),
  )
  with sharding.use_mesh(mesh):
    conditions = jax.eval_shape(
      functools.partial(stages.encode_conditions, graphdef, options=options),
      state,
      inputs,
    )
  conditions = _on(mesh, conditions)
  latent = jax.ShapeDtypeStruct(
    cfg.latent_shape(frames, height, width), cfg.latent_dtype
  )
  runner = tiling.VAERunner(
    nnx.merge(graphdef, _placed(abstract, vae.mesh)).vae
  )
  compile_vae = functools.partial(compile_, vae)
  yield from _runner_programs(
    compile_vae, vae.mesh, cfg, runner, latent, "encode"
  )
  latent = _on(mesh, latent)
  plan = sampler.SamplingPlan.build(
    steps, "diffsynth", 1.0, timestep_dtype=cfg.timestep_dtype
  )
  yield compile_main(
    f"denoise ({steps} steps)",
    "denoise",
    low_memory_lib.DIT,
    (latent, plan, conditions, latent),
    lambda: stages.denoise.lower(
      graphdef, state, latent, plan, conditions, latent, None, report=True
    ),
  )
  yield from _runner_programs(
    compile_vae, vae.mesh, cfg, runner, latent, "decode"
  )


def tiles(h: int, w: int) -> list[tuple[int, int]]:
  """The (latent) tile sizes ``VAERunner`` cuts an h x w latent into."""
  # pylint: disable-next=protected-access
  found = tiling._tiles(
    h, w, tiling.DEFAULT_TILE_SIZE, tiling.DEFAULT_TILE_STRIDE
  )
  return [(h1 - h0, w1 - w0) for h0, h1, w0, w1, _ in found]


def largest_tile(h: int, w: int) -> tuple[int, int]:
  """The largest (latent) tile ``VAERunner`` cuts an h x w latent into."""
  return max(tiles(h, w), key=np.prod)


def _runner_programs(compile_, mesh, cfg, runner, latent, which):
  """The runner's two chunk programs of ``which`` ("encode" or "decode")
  at its largest tile, as it calls them (the first chunk without a cache,
  then one chunk with the cache the first returns)."""
  s = runner.state
  f = cfg.vae.spatial_factor
  th, tw = largest_tile(*latent.shape[2:4])
  b = latent.shape[0]
  tile = f"tile {th}x{tw}"
  group, phase = low_memory_lib.VAE, f"vae_{which}"
  # pylint: disable=protected-access
  if which == "encode":
    first, step = runner._enc_first, runner._enc_step
    x1 = _on(mesh, jax.ShapeDtypeStruct((b, 1, th * f, tw * f, 3), jnp.float32))
    xk = _on(
      mesh,
      jax.ShapeDtypeStruct(
        (b, ENCODER_CHUNK_FRAMES, th * f, tw * f, 3), jnp.float32
      ),
    )
  else:
    first, step = runner._dec_first, runner._dec_step
    x1 = xk = _on(
      mesh,
      jax.ShapeDtypeStruct((b, 1, th, tw, latent.shape[-1]), latent.dtype),
    )
  with sharding.use_mesh(mesh):
    _, cache = jax.eval_shape(first, s, x1)
  cache = _on(mesh, cache)
  yield compile_(
    f"vae {which} first chunk ({tile})",
    phase,
    group,
    x1,
    lambda: first.lower(s, x1),
  )
  yield compile_(
    f"vae {which} chunk ({tile})",
    phase,
    group,
    (cache, xk),
    lambda: step.lower(s, cache, xk),
  )


def held_buffers(
  cfg: KiwiEditConfig, frames: int, height: int, width: int, low_memory: bool
) -> dict[str, dict[str, int]]:
  """``{phase: {buffer: bytes}}``: what ``EditPipeline._edit`` and the VAE
  runner keep on the device between program calls (the conditions and
  latents carried across phases included; the programs' own arguments
  and outputs are in their rows).

  * ``vae_encode``: the latent canvas and its weights' sum (float32), one
    tile's moments (float32, twice while concatenated); default mode also
    the float32 source clip and, with more than one tile, a tile's slice of
    it; the conditions.
  * ``denoise``: nothing beyond the loop's arguments.
  * ``vae_decode``: the final and the source latents, one latent frame's
    float32 canvas; default mode also every decoded float32 frame (twice
    while concatenated); the conditions.
  """
  f, z = cfg.vae.spatial_factor, cfg.latent_channels
  t, h, w = cfg.latent_shape(frames, height, width)[1:4]
  th, tw = largest_tile(h, w)
  n_tiles = len(tiles(h, w))
  f32 = 4
  latent_item = jnp.dtype(cfg.latent_dtype).itemsize
  context = cfg.num_queries("image" if frames == 1 else "video")
  conditions = context * cfg.dit.dim * jnp.dtype(cfg.dit.dtype).itemsize
  conditions += context  # the bool mask
  video = frames * height * width * 3 * f32
  encode = {
    "conditions": conditions,
    "latent canvas": t * h * w * z * f32,
    "tile moments x2": 2 * t * th * tw * 2 * z * f32,
  }
  decode = {
    "conditions": conditions,
    "latents (final, source)": 2 * t * h * w * z * latent_item,
    "frame canvas": min(frames, cfg.vae.temporal_factor)
    * height
    * width
    * 3
    * f32,
  }
  if not low_memory:
    encode["source clip"] = video
    if n_tiles > 1:
      encode["tile slice"] = frames * th * f * tw * f * 3 * f32
    decode["decoded frames x2"] = 2 * video
  return {
    "mllm_encode": {},
    "vae_encode": encode,
    "denoise": {},
    "vae_decode": decode,
  }


def plan_mode(
  variant: str,
  *,
  frames: int,
  height: int,
  width: int,
  steps: int = 50,
  low_memory: bool = False,
  target: str = "cpu",
  cache_dir=None,
  cfg: KiwiEditConfig | None = None,
  on_row=None,
) -> ModePlan:
  """Compiles one mode's programs for ``target`` and returns its rows and
  phases. ``cfg`` (e.g. a checkpoint's) replaces the variant's;
  ``cache_dir``: the plan's row cache (``plan.cache``; None: none);
  ``on_row(row, cached)`` after each program."""
  if cfg is None:
    cfg = KiwiEditConfig.from_variant(variant)
  if low_memory:
    cfg = low_memory_lib.low_memory_config(cfg)
    if resolve_target(target) == "cpu":
      cfg = flash_stand_in(cfg)
  check_shape(cfg, frames, height, width)
  main, vae, label = plan_targets(target)
  graphdef, abstract = abstract_kiwi(cfg)
  weights = low_memory_lib.group_bytes(abstract)
  weights["all"] = sum(weights.values())
  rows_cache = cache_lib.RowCache(cache_dir)
  if cache_dir is not None and resolve_target(target) == "cpu":
    cache_lib.enable_compilation_cache(cache_dir)
  key_parts = dict(
    kind="edit_memory_plan",
    config=cfg.to_dict(),
    shape=[frames, height, width, steps],
    target=label,
    jax=jax.__version__,
  )
  compile_ = _Compiler(weights, rows_cache, key_parts, on_row)
  rows = list(
    _programs(
      compile_, main, vae, cfg, graphdef, abstract, frames, height, width, steps
    )
  )
  held = held_buffers(cfg, frames, height, width, low_memory)
  phases = []
  for phase in PHASES:
    mine = [r.non_weight for r in rows if r.phase == phase]
    if low_memory:
      resident = sum(weights[g] for g in low_memory_lib.PHASE_GROUPS[phase])
    else:
      resident = weights["all"]
    phases.append(
      PhaseRow(phase, resident, max(mine), sum(held[phase].values()))
    )
  return ModePlan(
    "low_memory" if low_memory else "default", rows, phases, weights, label
  )


__all__ = [
  "GIB",
  "PHASES",
  "TARGETS",
  "ModePlan",
  "PhaseRow",
  "ProgramRow",
  "check_shape",
  "flash_stand_in",
  "held_buffers",
  "largest_tile",
  "model_config",
  "parse_budget",
  "plan_mode",
  "plan_targets",
  "resolve_target",
  "target_mesh",
]
