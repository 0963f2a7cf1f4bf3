"""Long-video seams: the seam ratio of blended and of stitched windows.

  python bench/window_seams.py                 # tiny converted model, CPU
  python bench/window_seams.py --steps 16 --perturb 0.5 --frames 81
  python bench/window_seams.py --strength 1.0

A random tiny Kiwi-Edit (``save_tiny_kiwi``, weights perturbed by
``--perturb``, the pixel-unshuffle codec) edits a smooth drifting pattern
of ``--frames`` frames in windows of 9 sharing 4, with
``window_blend="linear"`` (the overlaps cross-faded at every step) and
``"none"`` (windows denoised apart, each overlap cut at its middle). For
each it prints every boundary's seam ratio (``windows.seam_ratios``: the
frame-to-frame difference at the boundary over the median one inside the
windows), their max and mean, and the denoise time; then the batched and
streamed loops' largest latent difference. Two noise settings:

* ``shared``: one noise frame for every latent frame, ``--strength`` 0.6
  (the setting of tests/pipeline/test_windows.py): the random model's output is
  smooth inside a window, so a seam can show;
* ``iid``: the default seeded noise at strength 1: the random model's
  output is frame-wise noise and no seam can show (both near 1).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from kiwi_jax.pipeline import EditPipeline, windows  # noqa: E402
from kiwi_jax.testing import build_tiny_qwen_tokenizer  # noqa: E402
from kiwi_jax.testing import kiwi as tiny_kiwi  # noqa: E402


def moving_clip(frames: int, size: int = 32) -> np.ndarray:
  t = np.arange(frames)[:, None, None]
  y, x = np.arange(size)[None, :, None], np.arange(size)[None, None, :]
  wave = np.sin(2 * np.pi * (x + t) / 16) * np.cos(2 * np.pi * y / 20)
  return np.repeat((127.5 + 100 * wave)[..., None], 3, -1).astype(np.uint8)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--frames", type=int, default=41, help="clip length")
  parser.add_argument("--steps", type=int, default=8, help="Euler steps")
  parser.add_argument(
    "--perturb", type=float, default=0.5, help="weight noise of the model"
  )
  parser.add_argument(
    "--strength",
    type=float,
    default=0.6,
    help="denoising strength of the shared-noise setting",
  )
  args = parser.parse_args()
  root = tempfile.mkdtemp()
  path = tiny_kiwi.save_tiny_kiwi(
    os.path.join(root, "ckpt"),
    tokenizer_dir=build_tiny_qwen_tokenizer(os.path.join(root, "tok")),
    perturb=args.perturb,
  )
  pipe = EditPipeline.from_pretrained(path, compile_cache_dir="off")
  clip = moving_clip(args.frames)
  plan = windows.WindowPlan.build(args.frames, 9, 4, pipe.temporal_factor)
  t, h = plan.num_frames, clip.shape[1] // pipe.spatial_factor
  shared = jnp.broadcast_to(
    jax.random.normal(jax.random.key(0), (1, 1, h, h, 12)), (1, t, h, h, 12)
  )
  print(
    f"{args.frames} frames, windows {plan.starts} of {plan.length} latent "
    f"frames, {args.steps} steps, SEAM_FACTOR {windows.SEAM_FACTOR}"
  )
  settings = {
    "shared": dict(noise=shared, denoising_strength=args.strength),
    "iid": dict(seed=0),
  }
  for name, noise in settings.items():
    for blend in windows.BLENDS:
      result = pipe.edit(
        clip,
        "Make it snowy.",
        steps=args.steps,
        window=9,
        overlap=4,
        window_mode="streamed",
        window_blend=blend,
        **noise,
      )
      ratios = windows.seam_ratios(result.frames, plan, pipe.temporal_factor)
      print(
        f"{name:6s} {blend:6s} max {ratios.max():.3f} mean "
        f"{ratios.mean():.3f} per boundary {np.round(ratios, 3).tolist()} "
        f"denoise {result.seconds['denoise']:.2f} s"
      )
  runs = {
    mode: pipe.edit(
      clip, "x", steps=2, window=9, overlap=4, window_mode=mode, seed=3
    )
    for mode in ("batched", "streamed")
  }
  diff = np.abs(runs["batched"].latents - runs["streamed"].latents).max()
  print(f"batched vs streamed: max |latent diff| {diff:.2e}")


if __name__ == "__main__":
  main()
