"""``kiwi-edit --window F --overlap K``: long-video editing flags.

  kiwi-edit --checkpoint DIR --video long.mp4 --prompt "..." --out out.mp4 \\
      --window 81 --overlap 16 [--window-mode auto|batched|streamed]

The clip is denoised in windows of F frames (4k+1) sharing K frames (a
multiple of 4, less than F), blended in latent space at every step
(``kiwi_jax.pipeline.windows``, docs/long_video.md). With ``--window``,
``--max-frames`` defaults to the most frames an edit takes
(``inputs.MAX_FRAMES``) instead of 81. Bad values end with one
``kiwi-edit: error:`` line and exit status 2 (``check_window_flags``,
before any model is loaded, with the Wan VAE's temporal factor 4).
"""

from __future__ import annotations

import argparse

from kiwi_jax.pipeline import inputs as inputs_lib
from kiwi_jax.pipeline import windows as windows_lib

# What ``kiwi-edit --max-frames`` is without --window (the reference's).
DEFAULT_MAX_FRAMES = 81


def add_window_flags(parser: argparse.ArgumentParser) -> None:
  """Adds --window, --overlap, --window-mode and --window-blend."""
  parser.add_argument(
    "--window",
    type=int,
    default=None,
    metavar="F",
    help="edit a long video in overlapping windows of F frames (4k+1, at "
    "least 5; 81 is what the released model edits in one pass), with the "
    "same instruction and reference, the overlaps cross-faded in latent "
    "space at every denoising step (docs/long_video.md); a video that fits "
    "one window is the plain edit. Needs --overlap; off without it",
  )
  parser.add_argument(
    "--overlap",
    type=int,
    default=None,
    metavar="K",
    help="with --window: frames successive windows share, a multiple of 4 "
    "from 0 to F-1 (0: no blending; e.g. 16 with --window 81)",
  )
  parser.add_argument(
    "--window-mode",
    "--window_mode",
    dest="window_mode",
    choices=windows_lib.MODES,
    default="auto",
    help="with --window: 'batched' denoises every window as one batch in "
    "one compiled loop; 'streamed' one window at a time per step (the "
    "DiT's memory is one window's); 'auto' batches when all windows hold "
    f"at most {windows_lib.MAX_BATCHED_LATENT_FRAMES} latent frames (one "
    "81-frame pass)",
  )
  parser.add_argument(
    "--window-blend",
    "--window_blend",
    dest="window_blend",
    choices=windows_lib.BLENDS,
    default="linear",
    help="with --window: 'linear' cross-fades the overlaps at every step; "
    "'none' denoises the windows apart and cuts each overlap at its middle "
    "(a baseline that shows seams)",
  )


def check_window_flags(args: argparse.Namespace) -> None:
  """Checks the window flags and sets ``args.max_frames`` when not given.

  Raises:
    EditInputError: one line naming the flag.
  """
  if args.window is None:
    for flag, value, default in (
      ("--overlap", args.overlap, None),
      ("--window-mode", args.window_mode, "auto"),
      ("--window-blend", args.window_blend, "linear"),
    ):
      if value != default:
        raise inputs_lib.EditInputError(f"{flag} needs --window.")
  else:
    windows_lib.check_window_args(
      args.window, args.overlap, names=("--window", "--overlap")
    )
    if args.seeds is not None or args.guidance_scale is not None:
      raise inputs_lib.EditInputError(
        "--window does not combine with --seeds, --guidance-scale or "
        "--ref-guidance-scale."
      )
    if args.ref_guidance_scale is not None or args.cache_threshold is not None:
      raise inputs_lib.EditInputError(
        "--window does not combine with --ref-guidance-scale or "
        "--cache-threshold."
      )
  if args.max_frames is None:
    args.max_frames = (
      DEFAULT_MAX_FRAMES if args.window is None else inputs_lib.MAX_FRAMES
    )


def edit_options(args: argparse.Namespace) -> dict:
  """The ``EditPipeline.edit`` keyword arguments of the window flags."""
  if args.window is None:
    return {}
  return dict(
    window=args.window,
    overlap=args.overlap,
    window_mode=args.window_mode,
    window_blend=args.window_blend,
  )


__all__ = ["add_window_flags", "check_window_flags", "edit_options"]
