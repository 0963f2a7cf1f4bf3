"""One ``EditPipeline`` edit, from the inputs to the decoded frames.

``EditPipeline.edit`` and ``edit_seeds`` check their arguments and call
:func:`run_edit`: read and shape the source and the reference, encode the
MLLM conditions (and the guidance branches'), VAE-encode the source and
the padded reference, draw each seed's noise, run the compiled Euler loop
per batch of seeds (``loops.run_batches``) or, with windows, the windowed
loop (``window_edit.denoise``), and decode each edit.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from kiwi_jax.diffusion import sampler, schedules
from kiwi_jax.media import pixels as pixels_lib
from kiwi_jax.pipeline import inputs as inputs_lib
from kiwi_jax.pipeline import loops as loops_lib
from kiwi_jax.pipeline import programs as stages
from kiwi_jax.pipeline import seeds as seeds_lib
from kiwi_jax.pipeline import vae_io, window_edit
from kiwi_jax.pipeline import windows as windows_lib
from kiwi_jax.pipeline.edit_checks import check_edit_options
from kiwi_jax.pipeline.edit_result import EditResult


def run_edit(
  pipe,
  video,
  prompt: str,
  ref_image=None,
  *,
  seeds,
  seed_batch: int | None = None,
  noise: jax.Array | None = None,
  steps: int = 50,
  max_pixels: int = 720 * 1280,
  max_frames: int = 81,
  scheduler: str = "diffsynth",
  shift: float | None = None,
  use_source: bool = True,
  guidance_scale: float | None = None,
  ref_guidance_scale: float | None = None,
  negative_prompt: str = "",
  denoising_strength: float = 1.0,
  vae_tiling: bool | None = None,
  cache_threshold: float | None = None,
  windows: tuple[int, int] | None = None,
  window_mode: str = "auto",
  window_blend: str = "linear",
  on_step: Callable[[int, int], None] | None = None,
  on_phase: Callable[[str], None] | None = None,
) -> list[EditResult]:
  """The edits of ``seeds`` (or of ``noise``, one edit) by ``pipe`` (an
  ``EditPipeline``), in order; the arguments are ``EditPipeline.edit``'s,
  ``windows``: ``(window, overlap)`` in pixel frames, or None."""
  single = seeds[0] if len(seeds) == 1 and noise is None else None
  strength = check_edit_options(
    prompt=prompt,
    negative_prompt=negative_prompt,
    steps=steps,
    seed=single,
    guidance_scale=guidance_scale,
    ref_guidance_scale=ref_guidance_scale,
    denoising_strength=denoising_strength,
    has_reference=ref_image is not None,
  )
  cache_threshold = pipe.check_cache_threshold(
    cache_threshold,
    guided=guidance_scale is not None or ref_guidance_scale is not None,
  )
  if windows is not None:
    window_edit.check_combination(
      seeds=len(seeds),
      guided=guidance_scale is not None or ref_guidance_scale is not None,
      cached=cache_threshold is not None,
    )
  start = time.perf_counter()
  source = inputs_lib.load_source(
    video, max_frames=max_frames, max_pixels=max_pixels
  )
  ref = None if ref_image is None else inputs_lib.load_reference(ref_image)
  num_frames, (height, width) = source.num_frames, source.size
  shape = (
    1,
    (num_frames - 1) // pipe.temporal_factor + 1,
    height // pipe.spatial_factor,
    width // pipe.spatial_factor,
    pipe.latent_channels,
  )
  if noise is not None and tuple(noise.shape) != shape:
    raise ValueError(
      f"noise shape {tuple(noise.shape)} != latent shape "
      f"{shape} of a {num_frames}x{height}x{width} clip."
    )
  schedule = schedules.get_schedule(
    scheduler, pipe.cfg.flow_shift if shift is None else shift
  )
  plan = sampler.SamplingPlan.build(
    steps, schedule, strength, timestep_dtype=pipe.timestep_dtype
  )
  seconds = {"vae_encode": 0.0, "compile": 0.0}
  window_plan = None
  if windows is not None:
    window_plan = windows_lib.WindowPlan.build(
      num_frames, windows[0], windows[1], pipe.temporal_factor, window_blend
    )
  # A clip that fits one window is today's edit; a longer one keeps its
  # frames on the host and runs the causal chunked VAE (untiled with
  # vae_tiling=False).
  windowed = window_plan is not None and window_plan.num_windows > 1
  tiled = not (windowed and vae_tiling is False)
  runner = None if vae_tiling is False and not windowed else pipe.vae_runner()
  if vae_tiling and runner is None:
    raise ValueError("vae_tiling=True: this model has no tiled VAE runner.")

  def timed(name, fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
    return out

  def stage(fn):
    return functools.partial(fn, pipe.graphdef, pipe.state)

  def mllm(text, with_ref=True):
    arrays, options = pipe.processor(
      text, frames=source.frames, ref_image=ref if with_ref else None
    )
    mode = options.get("mode")
    if mode is not None and mode not in pipe.cfg.modes():
      raise inputs_lib.EditInputError(
        f"This Kiwi-Edit checkpoint cannot run {mode} edits (it has the "
        f"modes {pipe.cfg.modes()}; reference edits need a stage-3 "
        "model)."
      )
    return timed(
      "mllm_encode",
      stage(stages.encode_conditions),
      jax.tree.map(jnp.asarray, arrays),
      tuple(sorted(options.items())),
    )

  def vae_encode(frames):
    return vae_io.encode_frames(
      pipe, runner, frames, timed, host=windowed, tiled=tiled
    )

  phase = pipe._phase_hook(on_phase)
  with pipe._mesh_context():
    phase("mllm_encode")
    conditions = mllm(prompt)
    scales, branch_conditions = (), ()
    if ref_guidance_scale is not None:
      text_scale = 1.0 if guidance_scale is None else guidance_scale
      scales = (float(text_scale), float(ref_guidance_scale))
      branch_conditions = (
        mllm(negative_prompt, with_ref=False),
        mllm(prompt, with_ref=False),
      )
    elif guidance_scale is not None:
      scales = (float(guidance_scale),)
      branch_conditions = (mllm(negative_prompt),)
    source_latents = ref_latents = clean_latents = None
    if use_source or ref is not None or strength < 1.0:
      phase("vae_encode")
    if use_source or strength < 1.0:
      encoded = vae_encode(source.frames)
      source_latents = encoded if use_source else None
      clean_latents = encoded if strength < 1.0 else None
    if ref is not None:
      ref_latents = vae_encode(
        inputs_lib.pad_reference(ref, height, width)[None]
      )
    # Only plain instruction guidance shows its unconditional branch the
    # reference latents; reference guidance's lower branches see none.
    branch_refs = ref_latents if len(scales) == 1 else None
    branches = tuple((c, branch_refs) for c in branch_conditions)
    if noise is not None:
      noises = [noise]
    else:
      noises = [
        pipe._seed_noise(chunk, shape)
        for chunk in seeds_lib.chunks(seeds, seed_batch)
      ]
    rest = (plan, conditions, source_latents, ref_latents, clean_latents)
    batch_evals = []
    if windowed:
      batches = [
        window_edit.denoise(
          pipe,
          window_plan,
          window_mode,
          (noises[0], *rest),
          phase=phase,
          on_step=on_step,
          seconds=seconds,
        )
      ]
    else:
      batches, batch_evals = loops_lib.run_batches(
        pipe,
        noises,
        rest,
        scales=scales,
        branches=branches,
        cache_threshold=cache_threshold,
        steps=steps,
        phase=phase,
        on_step=on_step,
        timed=timed,
        seconds=seconds,
      )
    phase("vae_decode")
    # One seed at a time: the decode's peak is a single edit's.
    per_seed = [
      b if b.shape[0] == 1 else b[i : i + 1]
      for b in batches
      for i in range(b.shape[0])
    ]
    decoded = [
      vae_io.decode_latents(
        pipe, runner, latents, timed, host=windowed, tiled=tiled
      )
      for latents in per_seed
    ]
  seconds["total"] = time.perf_counter() - start
  evals = batch_evals or [None] * len(per_seed)
  return [
    EditResult(
      frames=pixels_lib.to_uint8_truncate(np.asarray(pixels[0], np.float32)),
      source=source,
      ref_image=ref,
      latents=np.asarray(latents, np.float32),
      steps=steps,
      seconds=dict(seconds),
      block_evals=block_evals,
    )
    for pixels, latents, block_evals in zip(decoded, per_seed, evals)
  ]


__all__ = ["run_edit"]
