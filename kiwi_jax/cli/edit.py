"""``kiwi-edit``: edit one video (or image) from the command line.

  kiwi-edit --checkpoint converted/kiwi-5b --video in.mp4 \\
      --prompt "Make it snowy." --out out.mp4 [--ref ref.png] \\
      [--steps 50 --seed 0 --max-pixels 921600 --max-frames 81] \\
      [--side-by-side] [--mesh fsdp=2,tensor=2]

Also ``python -m kiwi_jax.cli.edit``. An image source (``.png``, ``.jpg``,
...) is an image edit: one frame, written as an image (or mp4/gif).

Inputs and the output path are checked before the model is loaded; a bad
input ends with one ``kiwi-edit: error: ...`` line naming the file and exit
status 2. Every file is written under a temporary name and renamed, so a
failed run leaves no partial output.

Progress: the denoising loop is one compiled program; a host callback
inside it advances the bar after each step (``kiwi_jax.pipeline.progress``),
so the loop is never split into per-step dispatches.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from kiwi_jax.pipeline import edit_pipeline
from kiwi_jax.pipeline import inputs as inputs_lib
from kiwi_jax.pipeline import outputs as outputs_lib

USER_ERRORS = (inputs_lib.EditInputError, outputs_lib.EditOutputError,
               edit_pipeline.CheckpointDirError)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="kiwi-edit", description=__doc__.split("\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--checkpoint", required=True,
                      help="converted kiwi_jax checkpoint directory")
  parser.add_argument("--video", required=True,
                      help="source video, or an image for an image edit")
  parser.add_argument("--prompt", required=True, help="edit instruction")
  parser.add_argument("--ref", default=None, help="reference image")
  parser.add_argument("--out", required=True,
                      help="output .mp4/.gif (or an image in image mode)")
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--max-pixels", type=int, default=720 * 1280)
  parser.add_argument("--max-frames", type=int, default=81)
  parser.add_argument("--scheduler", choices=("diffsynth", "diffusers"),
                      default="diffsynth")
  parser.add_argument("--guidance-scale", type=float, default=None,
                      help="instruction CFG (the reference uses none)")
  parser.add_argument("--ref-guidance-scale", type=float, default=None,
                      help="reference-image CFG (needs --ref)")
  parser.add_argument("--negative-prompt", default="")
  parser.add_argument("--fps", type=float, default=None,
                      help="output frame rate (default: the source's)")
  parser.add_argument("--side-by-side", action="store_true",
                      help="also write <out>_concat.mp4|png and .gif "
                      "(source | reference | edited)")
  parser.add_argument("--source-free", action="store_true",
                      help="no source-latent injection (ImgEdit ablation)")
  parser.add_argument("--mesh", default=None,
                      help="device mesh, e.g. fsdp=2,tensor=2 (axes data, "
                      "fsdp, tensor, sequence; -1 fills)")
  parser.add_argument("--no-progress", action="store_true")
  return parser


def parse_mesh(text: str | None):
  """``"fsdp=2,tensor=-1"`` -> a mesh (None for None)."""
  if not text:
    return None
  from kiwi_jax import sharding  # pylint: disable=g-import-not-at-top
  axes = {}
  for part in text.split(","):
    name, sep, size = part.partition("=")
    if not sep or not size.strip().lstrip("-").isdigit():
      raise inputs_lib.EditInputError(
          f"--mesh {text!r}: expected axis=size pairs, got {part!r}.")
    axes[name.strip()] = int(size)
  try:
    return sharding.make_mesh(axes)
  except ValueError as e:
    raise inputs_lib.EditInputError(f"--mesh {text!r}: {e}") from e


def _progress_bar(total: int, enabled: bool):
  import tqdm  # pylint: disable=g-import-not-at-top
  bar = tqdm.tqdm(total=total, desc="denoise", unit="step",
                  disable=not enabled, file=sys.stderr)

  def on_step(done: int, total: int) -> None:
    del total
    bar.update(done - bar.n)

  return bar, on_step


def run(args: argparse.Namespace) -> str:
  """Runs one edit; returns the summary line."""
  start = time.perf_counter()
  if args.steps < 1:
    raise inputs_lib.EditInputError(f"--steps must be >= 1, got "
                                    f"{args.steps}.")
  if not args.prompt.strip():
    raise inputs_lib.EditInputError("--prompt is empty.")
  mesh = parse_mesh(args.mesh)
  # Cheap checks first: the source, the reference, the output path.
  source = inputs_lib.load_source(args.video, max_frames=args.max_frames,
                                  max_pixels=args.max_pixels)
  ref = (inputs_lib.load_reference(args.ref, name=f"--ref {args.ref}")
         if args.ref else None)
  out = outputs_lib.check_output_path(args.out, image_mode=source.is_image)
  if source.num_frames > 1 and out.suffix.lower() in (
      outputs_lib.IMAGE_OUTPUT_EXTENSIONS):
    raise outputs_lib.EditOutputError(
        f"output {out}: a {source.num_frames}-frame edit needs .mp4 or .gif.")

  pipe = edit_pipeline.EditPipeline.from_pretrained(args.checkpoint,
                                                    mesh=mesh)
  bar, on_step = _progress_bar(args.steps, not args.no_progress)
  try:
    result = pipe.edit(source, args.prompt, ref, steps=args.steps,
                       seed=args.seed, scheduler=args.scheduler,
                       use_source=not args.source_free,
                       guidance_scale=args.guidance_scale,
                       ref_guidance_scale=args.ref_guidance_scale,
                       negative_prompt=args.negative_prompt, on_step=on_step)
  finally:
    bar.close()
  written = result.save(out, side_by_side=args.side_by_side, fps=args.fps)
  height, width = source.size
  s = result.seconds
  return (f"kiwi-edit: {width}x{height}, {source.num_frames} frame"
          f"{'s' if source.num_frames > 1 else ''}, {result.steps} steps, "
          f"{time.perf_counter() - start:.1f} s (mllm "
          f"{s['mllm_encode']:.1f} s, vae encode {s['vae_encode']:.1f} s, "
          f"denoise {s['denoise']:.1f} s, vae decode {s['vae_decode']:.1f} s)"
          f" -> {', '.join(str(p) for p in written)}")


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    print(run(args))
  except USER_ERRORS as e:
    print(f"kiwi-edit: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
