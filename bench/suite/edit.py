"""Edit section: one full edit through ``EditPipeline`` with a random
Kiwi-Edit of ``kiwi-5b``'s shapes (Qwen2.5-VL-3B, the 5B DiT, the Wan2.2
VAE), bf16, 81 x 704 x 1280 frames, 50 steps, instruction mode.

The model is built as ``bench/edit_pipeline.py --variant`` builds it (the
tiny local tokenizer stands in for Qwen's, which changes no shape), with
``common.random_module`` weights. The first edit compiles every stage;
``EditPipeline`` keeps the denoising loop's compile apart, so its
``denoise`` is already warm. A second edit runs when the budget allows.
Phases and steps are recorded as they happen, so a section stopped at its
budget still says how far it got.
"""

from __future__ import annotations

import dataclasses
import time

import jax.numpy as jnp
import numpy as np

from bench import edit_pipeline as edit_bench
from bench.suite import common
from kiwi_jax.models.kiwi.config import KiwiEditConfig
from kiwi_jax.pipeline import EditPipeline


def kiwi_config(scale: common.Scale) -> KiwiEditConfig:
  """The variant in bf16 compute and parameters, flash attention where the
  backend has it (``attention=None``)."""
  cfg = KiwiEditConfig.from_variant(scale.kiwi)
  bf16 = dict(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  return cfg.replace(
    dit=cfg.dit.replace(attention=None, **bf16),
    mllm=dataclasses.replace(cfg.mllm, attention=None, **bf16),
    vae=cfg.vae.replace(attention_implementation=None, **bf16),
  )


def run(
  scale: common.Scale, rec: common.Recorder, deadline: common.Deadline
) -> None:
  frames, height, width = scale.video
  rec.set(
    config=scale.kiwi,
    video=[frames, height, width],
    steps=scale.steps,
    mode="video (instruction only)",
    edits=[],
  )
  begin = time.perf_counter()
  model, processor, mesh = edit_bench.random_kiwi(
    scale.kiwi,
    config=kiwi_config(scale),
    make_model=lambda ctor, mesh: common.random_module(ctor, mesh),
  )
  pipe = EditPipeline(model, processor, mesh=mesh)
  rec.set(init_s=time.perf_counter() - begin, **common.memory())
  source = np.random.default_rng(0).integers(
    0, 256, (frames, height, width, 3), dtype=np.uint8
  )
  for _ in range(2):
    progress = {"phases": {}, "steps_done": 0}
    start = time.perf_counter()

    def on_phase(name, progress=progress, start=start):
      progress["phases"][name] = time.perf_counter() - start
      rec.set(progress=progress)

    def on_step(done, total, progress=progress, start=start):
      del total
      progress["steps_done"] = done
      progress["last_step_at_s"] = time.perf_counter() - start
      rec.set(progress=progress)

    result = pipe.edit(
      source,
      "Make it snowy.",
      steps=scale.steps,
      max_pixels=height * width,
      max_frames=frames,
      on_phase=on_phase,
      on_step=on_step,
    )
    rec.set(edits=rec.data["edits"] + [dict(result.seconds)], **common.memory())
    if not deadline.allows(
      1.3 * result.seconds["total"] - result.seconds["compile"]
    ):
      break
  last = rec.data["edits"][-1]
  rec.set(
    denoise_s=last["denoise"],
    step_s=last["denoise"] / scale.steps,
    total_s=last["total"],
    finite=bool(np.isfinite(result.latents).all()),
  )
