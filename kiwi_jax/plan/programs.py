"""The programs a plan compiles: the real jitted train step and editing
stages, over shape-only state and batches on a given mesh.

* ``train/<mode>``: ``train_step.make_train_step`` over
  ``KiwiTask.loss_fn``, with the trainer's abstract state
  (``ModelSplit.build`` + ``abstract_train_state``), one program per batch
  kind of the stage's data mix (``batches.clip_shapes``), at the config's
  global batch ``kiwi.data.batch_size``.
* ``edit/mllm_encode``, ``edit/dit_step``, ``edit/vae_encode``,
  ``edit/vae_decode``: ``kiwi_jax.pipeline.programs`` for one edit (batch 1)
  of the stage's richest mode at the training clip size, with the model
  as the pipeline runs it (``KiwiEdit`` directly). ``dit_step`` is
  ``stages.denoise`` with a one-step plan; the VAE programs run on the
  whole clip (the pipeline's ``vae_tiling=False`` path).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from kiwi_jax import flops as flops_lib
from kiwi_jax import sharding
from kiwi_jax.diffusion import sampler
from kiwi_jax.models.kiwi.model import KiwiConditions, KiwiEdit
from kiwi_jax.models.kiwi.processor import KiwiProcessor
from kiwi_jax.pipeline import edit_pipeline
from kiwi_jax.pipeline import programs as stages
from kiwi_jax.plan import batches as batches_lib
from kiwi_jax.tasks import kiwi_task
from kiwi_jax.train_lib import optimizers, run_config, train_step
from kiwi_jax.train_lib.train_state import ModelSplit, Precision

EDIT_PROGRAMS = (
  "edit/mllm_encode",
  "edit/dit_step",
  "edit/vae_encode",
  "edit/vae_decode",
)


@dataclasses.dataclass
class Program:
  """One program to compile.

  Attributes:
    name: ``train/video``, ``edit/dit_step``, ...
    fn: the traced function of ``args`` (for the scan-corrected count).
    args: its shape-struct arguments (with shardings).
    lower: ``() -> jax.stages.Lowered`` of the real jitted program.
    model_flops: FLOPs by the documented formula (``kiwi_jax.flops``) of
      one call, all chips together; None when no formula covers it.
    flops_formula: which formula gave ``model_flops``.
    batch: samples per call.
    context: ``() -> context manager`` to trace ``fn`` in (mesh, rules).
  """

  name: str
  fn: Callable[..., Any]
  args: tuple
  lower: Callable[[], Any]
  model_flops: float | None
  flops_formula: str
  batch: int
  context: Callable[[], Any] = contextlib.nullcontext


def model_config(config: Any):
  """The ``KiwiEditConfig`` the trainer builds from ``config`` (its
  ``precision.compute_dtype`` included)."""
  run = run_config.TrainerConfig.from_config(config)
  return kiwi_task.kiwi_model_config(config.kiwi, run.precision.compute_dtype)


def _rules(config) -> list | None:
  rules = config.get("sharding_rules", None)
  return None if rules is None else [tuple(r) for r in rules]


def train_programs(
  config: Any, mesh, *, aspect=batches_lib.DEFAULT_ASPECT
) -> dict[str, Callable[[], Program]]:
  """``{name: build}`` of the stage's train steps (built lazily: building
  the model's abstract state takes seconds at full size)."""
  shapes = batches_lib.clip_shapes(config, aspect)
  holder = {}

  def shared():
    if not holder:
      task = kiwi_task.KiwiTask(config)
      rules = _rules(config)
      seed = int(config.get("seed", 0))
      opt_config = optimizers.OptimizerConfig.from_mapping(
        config.get("optimizer", {})
      )
      optimizer = optimizers.make_optimizer(opt_config)
      precision = Precision.from_mapping(config.get("precision", {}))
      split = ModelSplit.build(
        lambda: task.build_model(nnx.Rngs(seed)),
        task.trainable,
        task.frozen,
        mesh=mesh,
        rules=rules,
        precision=precision,
      )
      state = train_step.abstract_train_state(split, optimizer, mesh)
      step = train_step.make_train_step(
        split,
        task.loss_fn,
        optimizer,
        opt_config,
        precision,
        mesh=mesh,
        rules=rules,
      )
      holder.update(task=task, state=state, step=step, rules=rules)
    return holder

  def build(clip):
    h = shared()
    task, state, step = h["task"], h["state"], h["step"]
    size = int(config.kiwi.data.batch_size)
    host = batches_lib.train_batch(task, clip, size)
    batch = batches_lib.with_shardings(
      kiwi_task._numeric(host),  # pylint: disable=protected-access
      lambda x: NamedSharding(mesh, sharding.batch_spec(x, mesh)),
    )
    return Program(
      name=f"train/{clip.mode}",
      fn=step.jitted,
      args=(state, batch),
      lower=lambda: step.lower(state, batch),
      model_flops=task.step_flops(host).train,
      flops_formula="kiwi_flops(...).train (MLLM + connectors + DiT, "
      "forward + backward; VAE encode not counted)",
      batch=size,
      context=lambda: sharding.use_mesh(mesh, h["rules"]),
    )

  return {
    f"train/{clip.mode}": functools.partial(build, clip) for clip in shapes
  }


def _replicated(mesh, tree):
  return batches_lib.with_shardings(tree, lambda x: NamedSharding(mesh, P()))


def _mllm_flops(
  cfg, mode: str, mllm: dict[str, np.ndarray], ref_tokens: int
) -> float:
  b = flops_lib.TermBuilder(flops_lib.nothing_trained)
  segments = mllm["full_segment_ids"][0]
  _, counts = np.unique(segments[segments >= 0], return_counts=True)
  flops_lib.add_qwen_terms(
    b,
    cfg.mllm,
    batch=1,
    text_len=int(mllm["input_ids"].shape[1]),
    vision_patches=int(mllm["pixel_values"].shape[1]),
    vision_full_pairs=float(np.sum(counts.astype(np.int64) ** 2)),
  )
  common = dict(mllm_hidden=cfg.mllm_hidden, dim=cfg.dit.dim, input_grad=False)
  flops_lib.add_connector_terms(
    b, "connector", rows=cfg.num_queries(mode), **common
  )
  if mode == "reference":
    flops_lib.add_connector_terms(b, "ref_connector", rows=ref_tokens, **common)
  return b.count().forward


def edit_programs(
  config: Any, mesh, *, aspect=batches_lib.DEFAULT_ASPECT
) -> dict[str, Callable[[], Program]]:
  """``{name: build}`` of the four editing programs."""
  clip = batches_lib.clip_shapes(config, aspect)[-1]  # the richest mode
  rules = _rules(config)
  cfg = model_config(config)
  holder = {}

  def shared():
    if not holder:
      ctor = lambda: KiwiEdit(cfg, rngs=nnx.Rngs(0))  # noqa: E731
      holder["graphdef"], holder["state"] = sharding.abstract_state(
        ctor, mesh, rules
      )
    return holder["graphdef"], holder["state"]

  mode = clip.mode
  ref_tokens = int(config.kiwi.ref_tokens) if mode == "reference" else 0
  vae = cfg.vae
  grid = (
    1 + (clip.frames - 1) // vae.temporal_factor,
    clip.height // vae.spatial_factor,
    clip.width // vae.spatial_factor,
  )
  latent = jax.ShapeDtypeStruct((1, *grid, vae.z_dim), cfg.dit.dtype)
  mesh_ctx = lambda: sharding.use_mesh(mesh, rules)  # noqa: E731

  def vae_ctx():
    stack = contextlib.ExitStack()
    stack.enter_context(mesh_ctx())
    stack.enter_context(
      sharding.axis_rules(
        tuple(
          (n, None if n in edit_pipeline.VAE_UNSHARDED else a)
          for n, a in (rules or sharding.LOGICAL_AXIS_RULES)
        )
      )
    )
    return stack

  def mllm_encode():
    graphdef, state = shared()
    mllm = batches_lib.mllm_example(
      cfg,
      clip,
      seq_len=int(config.kiwi.seq_len),
      num_patches=int(config.kiwi.num_patches),
    )
    mllm = {k: v[None] for k, v in mllm.items()}
    inputs = KiwiProcessor.model_inputs(mllm)
    options = (("mode", mode),) + (
      (("ref_tokens", ref_tokens),) if ref_tokens else ()
    )
    args = (state, _replicated(mesh, inputs))
    fn = lambda s, i: stages.encode_conditions(graphdef, s, i, options)  # noqa
    return Program(
      "edit/mllm_encode",
      fn,
      args,
      lambda: _under(
        mesh_ctx,
        lambda: stages.encode_conditions.lower(
          graphdef, args[0], args[1], options
        ),
      ),
      _mllm_flops(cfg, mode, mllm, ref_tokens),
      "add_qwen_terms + add_connector_terms, forward",
      1,
      mesh_ctx,
    )

  def dit_step():
    graphdef, state = shared()
    context_len = cfg.num_queries(mode) + ref_tokens
    conditions = KiwiConditions(
      context=jax.ShapeDtypeStruct(
        (1, context_len, cfg.dit.dim), cfg.dit.dtype
      ),
      mask=jax.ShapeDtypeStruct((1, context_len), jnp.bool_),
    )
    ref = (
      jax.ShapeDtypeStruct((1, 1, *grid[1:], vae.z_dim), cfg.dit.dtype)
      if mode == "reference"
      else None
    )
    plan = sampler.SamplingPlan.build(1, timestep_dtype=cfg.dit.dtype)
    source = latent  # the pipeline injects the source (use_source=True)
    args = (state,) + tuple(
      _replicated(mesh, (latent, conditions, source, ref))
    )
    fn = lambda s, x, c, src, r: stages.denoise(  # noqa: E731
      graphdef, s, x, plan, c, src, r, report=False
    )
    flops = flops_lib.dit_flops(
      cfg.dit,
      batch=1,
      latent_grid=grid,
      context_len=context_len,
      ref_frames=cfg.dit.patch_size[0] if ref is not None else 0,
      source=True,
      trained=flops_lib.nothing_trained,
    ).forward
    return Program(
      "edit/dit_step",
      fn,
      args,
      lambda: _under(
        mesh_ctx,
        lambda: stages.denoise.lower(
          graphdef,
          args[0],
          args[1],
          plan,
          args[2],
          args[3],
          args[4],
          report=False,
        ),
      ),
      flops,
      "dit_flops(...).forward, one step",
      1,
      mesh_ctx,
    )

  def vae_program(name, fn_of, arg):
    def build():
      graphdef, state = shared()
      args = (state, _replicated(mesh, arg))
      fn = lambda s, x: fn_of(graphdef, s, x)  # noqa: E731
      with vae_ctx():
        flops = flops_lib.jaxpr_matmul_flops(fn, *args)
      return Program(
        name,
        fn,
        args,
        lambda: _under(vae_ctx, lambda: fn_of.lower(graphdef, *args)),
        flops,
        "jaxpr_matmul_flops (convolutions)",
        1,
        vae_ctx,
      )

    return build

  video = jax.ShapeDtypeStruct(
    (1, clip.frames, clip.height, clip.width, 3), jnp.float32
  )
  return {
    "edit/mllm_encode": mllm_encode,
    "edit/dit_step": dit_step,
    "edit/vae_encode": vae_program(
      "edit/vae_encode", stages.encode_video, video
    ),
    "edit/vae_decode": vae_program(
      "edit/vae_decode", stages.decode_latents, latent
    ),
  }


def _under(ctx, fn):
  with ctx():
    return fn()


def fill_ref_tokens(config: Any, aspect=batches_lib.DEFAULT_ASPECT) -> None:
  """``kiwi.ref_tokens`` 0 (the demo counts them from its data at run
  time) with reference batches: the count of the shape-only reference."""
  clips = [
    c for c in batches_lib.clip_shapes(config, aspect) if c.mode == "reference"
  ]
  if not clips or int(config.kiwi.ref_tokens):
    return
  cfg = model_config(config)
  start, end = batches_lib.mllm_example(cfg, clips[0])["ref_span"]
  with config.unlocked():
    config.kiwi.ref_tokens = int(end - start)


def all_programs(
  config: Any, mesh, *, aspect=batches_lib.DEFAULT_ASPECT
) -> dict[str, Callable[[], Program]]:
  """Every program of the config (``kiwi.ref_tokens`` filled in first,
  see :func:`fill_ref_tokens`)."""
  fill_ref_tokens(config, aspect)
  return {
    **train_programs(config, mesh, aspect=aspect),
    **edit_programs(config, mesh, aspect=aspect),
  }


__all__ = [
  "EDIT_PROGRAMS",
  "Program",
  "all_programs",
  "edit_programs",
  "train_programs",
]
