"""DiT step cache: speed-up against output PSNR, per threshold.

  python bench/step_cache.py                          # tiny Kiwi-Edit, CPU
  python bench/step_cache.py --variant kiwi-5b        # 5B, 720p x 81 (GPU)
  python bench/step_cache.py --thresholds 0.05,0.1,0.2 --steps 50

A Kiwi-Edit of ``--variant`` with random weights (``bench/edit_pipeline.py``
``random_kiwi``) edits one synthetic RefVIE-mini clip with a reference,
first with the cache off (the full ``--steps``-step output), then with the
cache at each threshold, from the same noise. For each it prints the DiT
block evaluations (and the ratio full / cached), the denoising wall time
(best of ``--repeats`` after a compiling run, and the ratio full / cached)
and the PSNR of the decoded frames (uint8, peak 255) and of the final
latents (peak: the full latents' max |value|) against the full output.
Beside each threshold, the baseline of the same budget without the cache:
a plain run with as many steps as the cache evaluated (the same block
evaluations), and its PSNR against the full output; the cache is worth
having where its PSNR beats that baseline's.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench.edit_pipeline import random_kiwi, synthetic_source  # noqa: E402
from kiwi_jax.pipeline import EditPipeline  # noqa: E402


def psnr(a, b, peak):
  mse = float(
    np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
  )
  return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def run(pipe, source, ref, prompt, steps, repeats, threshold=None):
  """(result, best denoise seconds) of ``repeats`` edits after a compile."""
  kwargs = dict(steps=steps, seed=0, cache_threshold=threshold)
  result = pipe.edit(source, prompt, ref, **kwargs)
  best = float("inf")
  for _ in range(repeats):
    result = pipe.edit(source, prompt, ref, **kwargs)
    best = min(best, result.seconds["denoise"])
  return result, best


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--variant",
    default="tiny",
    help="random-weight Kiwi-Edit config (tiny, kiwi-5b)",
  )
  parser.add_argument(
    "--thresholds",
    default="0.02,0.05,0.1,0.2,0.3",
    help="comma-separated cache thresholds",
  )
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--height", type=int, default=None)
  parser.add_argument("--width", type=int, default=None)
  parser.add_argument("--frames", type=int, default=None)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  thresholds = [float(x) for x in args.thresholds.split(",") if x]
  big = args.variant != "tiny"
  height = args.height or (704 if big else 64)
  width = args.width or (1280 if big else 96)
  frames = args.frames or (81 if big else 5)
  model, processor, mesh = random_kiwi(args.variant)
  pipe = EditPipeline(model, processor, mesh=mesh)
  source, ref, prompt = synthetic_source(height, width, frames)
  full, full_s = run(pipe, source, ref, prompt, args.steps, args.repeats, None)
  num_layers = model.kiwi.cfg.dit.num_layers
  full_evals = args.steps * num_layers
  peak = float(np.max(np.abs(full.latents)))
  print(
    f"device {jax.devices()[0].device_kind} ({jax.default_backend()}), "
    f"random {args.variant}, {width}x{height} x {frames} frames, "
    f"{args.steps} steps, {num_layers} blocks, best of {args.repeats}"
  )
  print(f"  full: {full_evals} block evals, denoise {full_s:.3f} s")
  print(
    "  threshold | block evals | fewer evals | denoise s | speed-up | "
    "PSNR frames dB | PSNR latents dB | same evals, no cache: steps, "
    "PSNR frames / latents dB"
  )
  baselines = {}
  for threshold in thresholds:
    result, seconds = run(
      pipe, source, ref, prompt, args.steps, args.repeats, threshold
    )
    steps = result.block_evals // num_layers
    if steps not in baselines:
      baselines[steps] = run(pipe, source, ref, prompt, steps, 1)[0]
    plain = baselines[steps]
    print(
      f"  {threshold:9.3f} | {result.block_evals:11d} | "
      f"{full_evals / result.block_evals:10.2f}x | {seconds:9.3f} | "
      f"{full_s / seconds:7.2f}x | "
      f"{psnr(result.frames, full.frames, 255.0):14.2f} | "
      f"{psnr(result.latents, full.latents, peak):15.2f} | "
      f"{steps:3d}, {psnr(plain.frames, full.frames, 255.0):.2f} / "
      f"{psnr(plain.latents, full.latents, peak):.2f}",
      flush=True,
    )


if __name__ == "__main__":
  main()
