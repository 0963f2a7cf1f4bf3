"""The windowed denoising loop: every window, every step, blended.

One Euler step over a :class:`~kiwi_jax.pipeline.windows.WindowPlan`:

1. each window's latents ``z_i`` (``[w, h, w, c]`` of the clip's latent
   frames) get the DiT's velocity, with the window's slice of the source
   latents, the shared reference latents and the whole clip's MLLM
   conditions, and take the Euler step ``z_i + v_i (sigma' - sigma)``;
2. with ``blend="linear"`` the stepped windows are merged into the clip's
   latents, frame by frame ``sum_i weight_i * z_i`` in float32 (weights
   summing to 1, ``WindowPlan.weights``), and every window takes its
   frames back from the merge, so windows sharing a frame see the same
   latent at the next step. With ``blend="none"`` they stay apart.

After the last step the windows are merged once more
(``WindowPlan.final_weights``). Two ways to run it, equal within float32
rounding:

* :func:`denoise_batched`: one jitted program, the whole loop
  (``lax.fori_loop``) over a batch of all windows, as ``programs.denoise``
  runs a batch of seeds;
* :func:`StreamedLoop`: one jitted program for one window's step, run on
  the host window after window, step after step, plus a jitted merge: the
  DiT's activations are one window's.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from kiwi_jax.diffusion import sampler
from kiwi_jax.pipeline import programs as stages
from kiwi_jax.pipeline import windows as windows_lib

_TABLES = ("model_timesteps", "model_sigmas", "sigmas", "next_sigmas")


def gather(latents: jax.Array, plan: windows_lib.WindowPlan) -> list:
  """[1, t, ...] -> each window's [1, w, ...] slice (static slices)."""
  return [latents[:, s:e] for s, e in plan.spans()]


def merge(windows, weights, plan: windows_lib.WindowPlan) -> jax.Array:
  """The windows' latents ([1, w, ...] each) -> the clip's [1, t, ...]:
  ``sum_i weights[i] * windows[i]`` per frame, accumulated in float32
  window after window, cast to the windows' dtype."""
  first = windows[0]
  canvas = jnp.zeros((1, plan.num_frames) + first.shape[2:], jnp.float32)
  for (s, e), z, w in zip(plan.spans(), windows, weights):
    part = z.astype(jnp.float32) * jnp.asarray(w)[None, :, None, None, None]
    canvas = canvas.at[:, s:e].add(part)
  return canvas.astype(first.dtype)


def _step(graphdef, report, z, tables, step, state, conditions, source, ref):
  """One Euler step of a batch of windows ``z`` [N, w, ...]."""
  velocity = stages._velocity(  # pylint: disable=protected-access
    graphdef,
    report,
    z,
    tables["model_timesteps"][step],
    tables["model_sigmas"][step],
    step,
    state,
    conditions,
    source,
    ref,
  )
  return sampler.euler_step(
    z, velocity, tables["sigmas"][step], tables["next_sigmas"][step]
  )


def _start(latents, plan, clean_latents):
  return sampler.start_latents(latents, plan, clean_latents)


@functools.partial(jax.jit, static_argnames=("graphdef", "windows", "report"))
def denoise_batched(
  graphdef: nnx.GraphDef,
  state: Any,
  latents: jax.Array,
  plan: sampler.SamplingPlan,
  conditions: Any,
  source_latents: jax.Array | None,
  ref_latents: jax.Array | None,
  *,
  windows: windows_lib.WindowPlan,
  report: bool = True,
  clean_latents: jax.Array | None = None,
) -> jax.Array:
  """Every step of a windowed edit as one program, the windows a batch.

  Args:
    graphdef, state: the split model.
    latents: [1, t, h, w, c] the clip's initial noise.
    plan: the step tables.
    conditions: batch-1 conditions (the whole clip's), shared by every
      window.
    source_latents: [1, t, h, w, c] or None.
    ref_latents: [1, 1, h, w, c] or None.
    windows: the window plan (static).
    report: emit a progress callback after each step.
    clean_latents: below strength 1, the clip's latents to start from.

  Returns:
    The clip's denoised latents [1, t, h, w, c].
  """
  n = windows.num_windows
  weights = windows.weights()
  stack = lambda parts: jnp.concatenate(parts, axis=0)  # noqa: E731
  unstack = lambda z: [z[i : i + 1] for i in range(n)]  # noqa: E731
  z = stack(gather(_start(latents, plan, clean_latents), windows))
  source = (
    None if source_latents is None else stack(gather(source_latents, windows))
  )
  conditions, ref_latents = stages._to_batch(  # pylint: disable=protected-access
    n, (conditions, ref_latents)
  )
  tables = {name: jnp.asarray(getattr(plan, name)) for name in _TABLES}

  def body(step, z):
    z = _step(
      graphdef, report, z, tables, step, state, conditions, source, ref_latents
    )
    if windows.blend == "linear":
      z = stack(gather(merge(unstack(z), weights, windows), windows))
    return z

  z = jax.lax.fori_loop(0, len(plan), body, z)
  return merge(unstack(z), windows.final_weights(), windows)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def window_step(
  graphdef, state, z, plan, step, conditions, source, ref_latents
) -> jax.Array:
  """One window's Euler step ``step`` (traced int32): [1, w, ...]."""
  tables = {name: jnp.asarray(getattr(plan, name)) for name in _TABLES}
  return _step(
    graphdef, False, z, tables, step, state, conditions, source, ref_latents
  )


@functools.partial(jax.jit, static_argnames=("windows", "final"))
def merge_windows(parts, *, windows, final: bool = False):
  """:func:`merge` of the windows (the final weights if ``final``), and,
  when not final, each window's frames back from the merge."""
  weights = windows.final_weights() if final else windows.weights()
  merged = merge(parts, weights, windows)
  return merged if final else gather(merged, windows)


@jax.jit
def start_windows(latents, plan, clean_latents=None):
  return _start(latents, plan, clean_latents)


class StreamedLoop:
  """The windowed loop with one window on the DiT at a time.

  ``loop(state, latents, plan, conditions, source_latents, ref_latents,
  clean_latents=None, on_step=None)`` runs every step on the host (one
  :func:`window_step` per window, then :func:`merge_windows`), calling
  ``on_step(step)`` after each, and returns the clip's latents.
  """

  def __init__(self, graphdef, windows: windows_lib.WindowPlan):
    self.graphdef, self.windows = graphdef, windows

  def __call__(
    self,
    state,
    latents,
    plan,
    conditions,
    source_latents,
    ref_latents,
    *,
    clean_latents=None,
    on_step=None,
  ) -> jax.Array:
    windows = self.windows
    parts = gather(start_windows(latents, plan, clean_latents), windows)
    sources = (
      [None] * windows.num_windows
      if source_latents is None
      else gather(source_latents, windows)
    )
    for step in range(len(plan)):
      parts = [
        window_step(
          self.graphdef,
          state,
          z,
          plan,
          jnp.int32(step),
          conditions,
          source,
          ref_latents,
        )
        for z, source in zip(parts, sources)
      ]
      if windows.blend == "linear":
        parts = merge_windows(parts, windows=windows)
      if on_step is not None:
        jax.block_until_ready(parts)
        on_step(step)
    return merge_windows(parts, windows=windows, final=True)


__all__ = [
  "StreamedLoop",
  "denoise_batched",
  "gather",
  "merge",
  "merge_windows",
  "window_step",
]
