"""Full edit time, split into MLLM encode, VAE encode, denoising, VAE decode.

  python bench/edit_pipeline.py                       # toy editor on CPU
  python bench/edit_pipeline.py --variant tiny        # tiny Kiwi-Edit, CPU
  python bench/edit_pipeline.py --variant kiwi-5b     # 5B, 720p x 81, 50
                                                      # steps (GPU)
  python bench/edit_pipeline.py --checkpoint DIR      # a converted dir

``--variant`` builds a Kiwi-Edit of that config with random weights
straight into its shardings (no checkpoint needed; the tiny local tokenizer
stands in for Qwen's, with the config's special-token ids set to its ids,
which changes no shape or cost).

Each configuration is edited once to compile, then ``--repeats`` times; the
best time per stage is printed (``EditPipeline.edit`` blocks on every
stage, so the split is exact). The source is a synthetic RefVIE-mini clip
of the requested size, with a reference image.

With the toy editor (no ``--checkpoint``) it also runs the PyTorch
restatement of the reference sampling loop (``tests/pipeline/
torch_reference.py``: the reference's Python loop over steps around the
same toy velocity model) on the same inputs and prints the ratio of the
denoising times, torch / JAX (> 1: the one-program JAX loop is faster). The
5B figure needs a GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from kiwi_jax.data import refvie_mini  # noqa: E402
from kiwi_jax.pipeline import PHASES, EditPipeline  # noqa: E402
from kiwi_jax.pipeline import inputs as inputs_lib  # noqa: E402
from kiwi_jax.pipeline import programs as stages  # noqa: E402
from tests.pipeline import toy_editor  # noqa: E402


def synthetic_source(height, width, frames):
  cfg = refvie_mini.MiniConfig(
    height=height,
    width=width,
    num_frames=frames,
    ref_size=min(height, width) // 2,
  )
  sample = refvie_mini.make_sample(0, 5, cfg, edit_type="subject_reference")
  return sample.source, sample.ref_image, sample.prompt


def time_pipeline(pipe, source, ref, prompt, steps, repeats):
  pipe.edit(source, prompt, ref, steps=steps)  # compile
  best = {}
  for _ in range(repeats):
    seconds = pipe.edit(source, prompt, ref, steps=steps).seconds
    for name, value in seconds.items():
      best[name] = min(best.get(name, float("inf")), value)
  return best


def torch_denoise_seconds(pipe, source, ref, prompt, steps, repeats):
  """The reference loop in torch around the toy velocity, same inputs."""
  # pylint: disable=g-import-not-at-top
  import torch

  from tests.pipeline import torch_reference

  clip = inputs_lib.load_source(source)
  batch, _ = pipe.processor(prompt, frames=clip.frames, ref_image=ref)
  context = stages.encode_conditions(pipe.graphdef, pipe.state, batch).context
  src = stages.encode_video(
    pipe.graphdef, pipe.state, inputs_lib.to_model_range(clip.frames)[None]
  )
  padded = inputs_lib.pad_reference(ref, *clip.size)
  ref_lat = stages.encode_video(
    pipe.graphdef, pipe.state, inputs_lib.to_model_range(padded)[None, None]
  )
  weights = torch_reference.flat_weights(pipe)
  shape = (
    1,
    (clip.num_frames - 1) // 4 + 1,
    clip.size[0] // 16,
    clip.size[1] // 16,
    pipe.latent_channels,
  )
  noise = torch.randn(shape)
  args = [torch.tensor(np.asarray(a)) for a in (context, src, ref_lat)]
  best = float("inf")
  with torch.no_grad():
    for _ in range(repeats + 1):
      start = time.perf_counter()
      torch_reference.reference_loop(weights, noise, *args, steps, 0.0)
      best = min(best, time.perf_counter() - start)
  return best


def random_kiwi(variant: str, config=None, make_model=None):
  """(KiwiEdit, KiwiProcessor, mesh) of a random-weight Kiwi-Edit.

  Args:
    variant: the ``KiwiEditConfig`` variant.
    config: a config to use instead of the variant's own (e.g. bf16).
    make_model: ``make_model(ctor, mesh) -> module``; default
      ``sharding.create_sharded`` (the modules' own initialisers).
  """
  # pylint: disable=g-import-not-at-top
  import dataclasses

  from flax import nnx
  from transformers import AutoTokenizer

  from kiwi_jax import sharding
  from kiwi_jax.models.kiwi.config import KiwiEditConfig
  from kiwi_jax.models.kiwi.model import KiwiEdit
  from kiwi_jax.models.kiwi.processor import KiwiProcessor
  from kiwi_jax.testing import build_tiny_qwen_tokenizer, special_token_ids

  tok_dir = build_tiny_qwen_tokenizer(tempfile.mkdtemp())
  ids = special_token_ids(AutoTokenizer.from_pretrained(str(tok_dir)))
  cfg = config or KiwiEditConfig.from_variant(variant)
  fields = {f.name for f in dataclasses.fields(cfg.mllm)}
  cfg = cfg.replace(
    mllm=dataclasses.replace(
      cfg.mllm, **{k: v for k, v in ids.items() if k in fields}
    )
  )
  mesh = sharding.make_mesh({"fsdp": -1})
  make_model = make_model or sharding.create_sharded
  model = make_model(lambda: KiwiEdit(cfg, rngs=nnx.Rngs(0)), mesh)
  return model, KiwiProcessor(str(tok_dir), cfg), mesh


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", default=None)
  parser.add_argument(
    "--variant",
    default=None,
    help="random-weight Kiwi-Edit config (tiny, kiwi-5b)",
  )
  parser.add_argument("--height", type=int, default=None)
  parser.add_argument("--width", type=int, default=None)
  parser.add_argument("--frames", type=int, default=None)
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args(argv)
  toy = args.checkpoint is None and args.variant is None
  big = args.variant == "kiwi-5b" or (
    jax.default_backend() == "gpu" and args.checkpoint is not None
  )
  height = args.height or (720 if big else 128)
  width = args.width or (1280 if big else 224)
  frames = args.frames or (81 if big else 17)
  steps = args.steps or (50 if big else 20)
  if args.variant:
    model, processor, mesh = random_kiwi(args.variant)
    pipe = EditPipeline(model, processor, mesh=mesh)
    name = f"random {args.variant}"
  else:
    if toy:
      pipe = EditPipeline(*toy_editor.make_toy_editor())
    else:
      pipe = EditPipeline.from_pretrained(args.checkpoint)
    name = "toy editor" if toy else args.checkpoint
  if args.variant == "tiny" and not args.height:
    height, width, frames = 64, 96, 5
  source, ref, prompt = synthetic_source(height, width, frames)
  clip = inputs_lib.load_source(source)
  best = time_pipeline(pipe, source, ref, prompt, steps, args.repeats)
  print(
    f"device {jax.devices()[0].device_kind} ({jax.default_backend()}), "
    f"model {name}, "
    f"{clip.size[1]}x{clip.size[0]} x {clip.num_frames} frames, "
    f"{steps} steps, best of {args.repeats}"
  )
  for name in PHASES:
    print(f"  {name:12s} {best[name]:8.3f} s")
  print(
    f"  {'total':12s} {best['total']:8.3f} s "
    f"(incl. reading/resizing and output conversion)"
  )
  if toy:
    torch_s = torch_denoise_seconds(
      pipe, source, ref, prompt, steps, args.repeats
    )
    print(
      f"  denoise, torch reference loop {torch_s:.3f} s; "
      f"ratio torch / JAX = {torch_s / best['denoise']:.2f}"
    )


if __name__ == "__main__":
  main()
