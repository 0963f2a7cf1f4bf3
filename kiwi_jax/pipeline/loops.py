"""The pipeline's compiled denoising loops, kept by argument signature.

``EditPipeline`` compiles its Euler loop (``programs.denoise`` or, with
the step cache, ``programs.denoise_cached``) once per clip shape, dtype,
sharding and guidance setting, and keeps at most ``MAX_COMPILED_LOOPS``
of them (the oldest goes first).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kiwi_jax.pipeline import programs as stages
from kiwi_jax.pipeline import progress as progress_lib

# Compiled denoising loops one pipeline keeps (the oldest goes first).
MAX_COMPILED_LOOPS = 8


def signature(tree) -> list[tuple[Any, ...]]:
  """(shape, dtype, sharding) of every leaf: what a compiled program
  was compiled for."""
  return [
    (np.shape(x), jnp.result_type(x), getattr(x, "sharding", None))
    for x in jax.tree.leaves(tree)
  ]


def keep(loops: dict, key, program) -> None:
  """Stores ``program`` under ``key``, dropping the oldest past
  ``MAX_COMPILED_LOOPS``."""
  if len(loops) >= MAX_COMPILED_LOOPS:
    loops.pop(next(iter(loops)))
  loops[key] = program


def denoise_loop(
  pipe,
  args,
  scales,
  branches,
  on_compile: Callable[[], None],
  cached: bool = False,
):
  """The compiled Euler loop of ``pipe`` for these arguments (compiled on
  first use, kept in ``pipe._loops``).

  Args:
    pipe: the ``EditPipeline`` (its ``graphdef``, ``state`` at call time,
      and ``_loops``).
    args: ``(noise, plan, conditions, source_latents, ref_latents,
      clean_latents)``.
    scales, branches: the guidance scales and branch operands.
    on_compile: called before compiling (not when the loop is kept).
    cached: the step-cache loop (its threshold before ``clean_latents``
      in ``args``; no guidance), which returns ``(latents, CacheStats)``.

  Returns:
    ``run(*args) -> latents``.
  """
  leaves, treedef = jax.tree.flatten((args, branches))
  key = (treedef, scales, cached, tuple(signature(leaves)))
  loop = pipe._loops.get(key)
  if loop is None:
    on_compile()
    *loop_args, clean = args
    if cached:
      loop = stages.denoise_cached.lower(
        pipe.graphdef,
        pipe.state,
        *loop_args,
        report=True,
        clean_latents=clean,
      ).compile()
    else:
      loop = stages.denoise.lower(
        pipe.graphdef,
        pipe.state,
        *loop_args,
        report=True,
        clean_latents=clean,
        guidance_scales=scales,
        guidance_branches=branches,
      ).compile()
    keep(pipe._loops, key, loop)

  def run(*a):
    *loop_args, clean = a
    if cached:
      return loop(pipe.state, *loop_args, clean_latents=clean)
    return loop(
      pipe.state, *loop_args, clean_latents=clean, guidance_branches=branches
    )

  return run


def run_batches(
  pipe,
  noises,
  rest: tuple,
  *,
  scales,
  branches,
  cache_threshold: float | None,
  steps: int,
  phase: Callable[[str], None],
  on_step: Callable[[int, int], None] | None,
  timed,
  seconds: dict[str, float],
) -> tuple[list, list[int]]:
  """Denoises each batch of noises with ``pipe``'s compiled loop.

  Args:
    pipe: the ``EditPipeline`` (its ``_denoise_loop``).
    noises: the batches of initial noise, in order.
    rest: ``(plan, conditions, source_latents, ref_latents,
      clean_latents)``.
    scales, branches: guidance.
    cache_threshold: the step cache's, or None (off).
    steps: steps per batch (the progress total is steps x batches).
    phase: announces ``compile`` (once, if anything compiles) and
      ``denoise``.
    on_step: ``on_step(done, total)``.
    timed: ``timed(phase, fn, *args)`` (``EditPipeline._edit``).
    seconds: the phase times; ``compile`` is set here.

  Returns:
    ``(batches, block_evals)``: the denoised batches, and with the cache
    one block count per sample (else empty).
  """
  *head, clean_latents = rest
  cached = cache_threshold is not None
  compiling = []

  def on_compile():
    if not compiling:  # one "compile" phase for every batch size
      compiling.append(True)
      phase("compile")

  t0 = time.perf_counter()
  runs = []
  for batch_noise in noises:
    args = (batch_noise, *head)
    if cached:
      args += (jnp.float32(cache_threshold),)
    args += (clean_latents,)
    runs.append(
      (
        pipe._denoise_loop(  # pylint: disable=protected-access
          args, scales, branches, on_compile=on_compile, cached=cached
        ),
        args,
      )
    )
  seconds["compile"] = time.perf_counter() - t0
  phase("denoise")
  counter = progress_lib.StepCounter(steps * len(runs), on_step)
  batches, batch_evals = [], []
  for i, (loop, args) in enumerate(runs):
    sink = functools.partial(lambda done, step: counter(done + step), i * steps)
    with progress_lib.reporting_to(sink):
      out = timed("denoise", loop, *args)
    if cached:
      out, stats = out
      batch_evals += [int(stats.block_evals)] * out.shape[0]
    batches.append(out)
  return batches, batch_evals
