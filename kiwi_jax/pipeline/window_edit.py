"""``EditPipeline.edit(..., window=F, overlap=K)``: the windowed denoise.

``EditPipeline._edit`` prepares a windowed edit as any other (the whole
clip's MLLM conditions, the clip's source latents encoded chunk by chunk
from the host, the seeded noise of the whole clip) and hands the loop to
:func:`denoise`; the latents come back for a streamed decode. A clip that
fits one window never comes here: it is today's edit, bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax

from kiwi_jax.pipeline import inputs as inputs_lib
from kiwi_jax.pipeline import loops as loops_lib
from kiwi_jax.pipeline import progress as progress_lib
from kiwi_jax.pipeline import window_programs
from kiwi_jax.pipeline import windows as windows_lib


def choose_mode(windows: windows_lib.WindowPlan, mode: str) -> str:
  """``"batched"`` or ``"streamed"``: ``mode`` itself, or for ``"auto"``
  batched when every window together holds at most
  ``MAX_BATCHED_LATENT_FRAMES`` latent frames."""
  if mode != "auto":
    return mode
  total = windows.num_windows * windows.length
  fits = total <= windows_lib.MAX_BATCHED_LATENT_FRAMES
  return "batched" if fits else "streamed"


def denoise(
  pipe,
  windows: windows_lib.WindowPlan,
  mode: str,
  args: tuple,
  *,
  phase: Callable[[str], None],
  on_step: Callable[[int, int], None] | None,
  seconds: dict[str, float],
) -> jax.Array:
  """The windowed Euler loop of ``pipe``.

  Args:
    pipe: the ``EditPipeline``.
    windows: the plan (more than one window).
    mode: ``"auto"``, ``"batched"`` or ``"streamed"`` (:func:`choose_mode`).
    args: ``(noise, plan, conditions, source_latents, ref_latents,
      clean_latents)``, each latent of batch 1 over the whole clip.
    phase: announces ``compile`` (when a program is compiled) and
      ``denoise``.
    on_step: ``on_step(done, total)`` after each step.
    seconds: the edit's phase times; ``compile`` and ``denoise`` are set.

  Returns:
    The clip's latents [1, t, h, w, c].
  """
  *loop_args, clean = args
  steps = len(loop_args[1])
  counter = progress_lib.StepCounter(steps, on_step)
  t0 = time.perf_counter()
  if choose_mode(windows, mode) == "batched":
    key = ("windows", windows, tuple(loops_lib.signature(args)))
    program = pipe._loops.get(key)  # pylint: disable=protected-access
    if program is None:
      phase("compile")
      program = window_programs.denoise_batched.lower(
        pipe.graphdef,
        pipe.state,
        *loop_args,
        windows=windows,
        report=True,
        clean_latents=clean,
      ).compile()
      loops_lib.keep(pipe._loops, key, program)  # pylint: disable=protected-access
    seconds["compile"] = time.perf_counter() - t0
    phase("denoise")
    t0 = time.perf_counter()
    with progress_lib.reporting_to(counter):
      out = jax.block_until_ready(
        program(pipe.state, *loop_args, clean_latents=clean)
      )
  else:
    # The per-window step compiles on its first call (once for every
    # window and step): it counts as the first step's time.
    seconds["compile"] = 0.0
    phase("denoise")
    t0 = time.perf_counter()
    loop = window_programs.StreamedLoop(pipe.graphdef, windows)
    out = jax.block_until_ready(
      loop(pipe.state, *loop_args, clean_latents=clean, on_step=counter)
    )
  seconds["denoise"] = seconds.get("denoise", 0.0) + time.perf_counter() - t0
  return out


def check_combination(*, seeds: int, guided: bool, cached: bool) -> None:
  """Windows combine with one seed, no guidance and no step cache.

  Raises:
    EditInputError: naming what does not combine.
  """
  for bad, what in (
    (seeds > 1, "several seeds"),
    (guided, "guidance"),
    (cached, "the step cache"),
  ):
    if bad:
      raise inputs_lib.EditInputError(
        f"window does not combine with {what} (not implemented)."
      )


__all__ = ["check_combination", "choose_mode", "denoise"]
