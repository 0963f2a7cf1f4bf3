"""``kiwi-edit``: edit one video (or image) from the command line.

  kiwi-edit --checkpoint converted/kiwi-5b --video in.mp4 \\
      --prompt "Make it snowy." --out out.mp4 [--ref ref.png] \\
      [--steps 50 --seed 0 --max-pixels 921600 --max-frames 81] \\
      [--side-by-side] [--mesh fsdp=2,tensor=2] [--seeds 0,1,2,3] \
      [--low-memory] [--window 81 --overlap 16]
  kiwi-edit --plan --variant kiwi-5b --height 704 --width 1280 \
      --frames 81 --memory_budget 24GB

``--low-memory`` runs one device with little memory (bf16 weights, one
component's weights on the device at a time; ``pipeline/low_memory.py``);
``--window F --overlap K`` edits a long video in overlapping windows
(``cli/window_flags.py``, docs/long_video.md); ``--plan`` prints what an
edit needs in memory, no weights loaded
(``cli/edit_plan.py``; docs/low_memory.md).

Also ``python -m kiwi_jax.cli.edit``. An image source (``.png``, ``.jpg``,
...) is an image edit: one frame, written as an image (or mp4/gif).

Every flag, the inputs and the output paths are checked before the model
is loaded; a mistake ends with one ``kiwi-edit: error: ...`` line naming
the flag or file and exit status 2. No output may be one of the inputs
(the source, the reference, a file of the checkpoint), whether by the same
name, a symlink or a hard link, nor lie inside the checkpoint. Every file is
written under a temporary name and renamed (with the umask's mode), so a
failed run leaves no partial output.

``--seeds 0,1,2,3`` edits once per seed in one run: the conditions are
encoded once and the denoising loop runs over the batch of noises (seed k's
noise is exactly ``--seed k``'s, so each result is that run's). It writes
``<out stem>_seed<k><ext>`` per seed and ``<out stem>_grid<ext>`` (the
source, then every seed's edit, side by side), not ``--out`` itself.
``--seed-batch N`` denoises at most N seeds at a time when the whole batch
does not fit in memory (default: all at once).

Progress: each phase (decode inputs, load model, mllm encode, vae encode,
compile denoise, denoise, vae decode, write) is announced on stderr as it
begins, with a bar over the denoising steps alone (the loop is compiled
beforehand); the summary line on stdout gives the time of every phase,
which add up to the total. The denoising loop is one compiled program; a
host callback inside it advances the bar after each step
(``kiwi_jax.pipeline.progress``), so the loop is never split into
per-step dispatches.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import pathlib
import sys
import time
from collections.abc import Sequence

from kiwi_jax.cli import window_flags
from kiwi_jax.diffusion import step_cache
from kiwi_jax.pipeline import edit_pipeline
from kiwi_jax.pipeline import inputs as inputs_lib
from kiwi_jax.pipeline import outputs as outputs_lib
from kiwi_jax.pipeline import progress as progress_lib
from kiwi_jax.pipeline import seeds as seeds_lib
from kiwi_jax.utils import paths

PROG = "kiwi-edit"
USER_ERRORS = (
  inputs_lib.EditInputError,
  outputs_lib.EditOutputError,
  edit_pipeline.CheckpointDirError,
  paths.OutputIsInputError,
)
# How the summary and the phase lines name the pipeline's stages.
PHASE_NAMES = {
  "mllm_encode": "mllm encode",
  "vae_encode": "vae encode",
  "compile": "compile denoise",
  "denoise": "denoise",
  "vae_decode": "vae decode",
}


class _OneLineParser(argparse.ArgumentParser):
  """Reports a bad command line in one line (no usage block), with the
  closest flag for a misspelt one."""

  def error(self, message: str):
    unknown = message.partition("unrecognized arguments: ")[2]
    flags = [s for a in self._actions for s in a.option_strings]
    for word in unknown.split():
      close = difflib.get_close_matches(word.split("=")[0], flags, n=1)
      if close:
        message += f" (did you mean {close[0]}?)"
        break
    self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
  parser = _OneLineParser(
    prog=PROG,
    description=__doc__.split("\n")[0].replace("``", ""),
    formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  parser.add_argument(
    "--checkpoint",
    required=True,
    help="converted kiwi_jax checkpoint directory",
  )
  parser.add_argument(
    "--video", required=True, help="source video, or an image for an image edit"
  )
  parser.add_argument(
    "--prompt", required=True, help="edit instruction (UTF-8 text)"
  )
  parser.add_argument("--ref", default=None, help="reference image")
  parser.add_argument(
    "--out",
    required=True,
    help="output .mp4/.gif (or an image in image mode); must not be an input",
  )
  parser.add_argument(
    "--steps",
    type=int,
    default=50,
    help="denoising (Euler) steps, 1 to "
    f"{edit_pipeline.MAX_STEPS}; the reference uses 50, fewer is faster "
    "and coarser",
  )
  parser.add_argument(
    "--denoising-strength",
    "--denoising_strength",
    type=float,
    default=1.0,
    help="in (0, 1]: 1 edits from pure noise (the reference's default); "
    "below 1 the loop starts from the source latents noised to that "
    "level (the reference's input_video + denoising_strength; the CPU "
    "demo edits at 0.9)",
  )
  parser.add_argument(
    "--seed",
    type=int,
    default=None,
    help="seed of the initial noise, 0 to 2**32-1 (0 when not given); "
    "the same seed, inputs and settings give the same edit (JAX's "
    "generator: not the same noise as the PyTorch reference's seed)",
  )
  parser.add_argument(
    "--seeds",
    default=None,
    help="comma-separated distinct seeds, e.g. 0,1,2,3: one edit per "
    "seed in one batched run (conditions encoded once), written as "
    "<out stem>_seed<k><ext> plus <out stem>_grid<ext> (source, then "
    "each edit, side by side); each equals a --seed k run; not with "
    "--seed",
  )
  parser.add_argument(
    "--seed-batch",
    "--seed_batch",
    type=int,
    default=None,
    dest="seed_batch",
    help="with --seeds: denoise at most this many seeds at a time, to "
    "bound memory (the loop's activations grow with the batch); "
    "default all at once",
  )
  parser.add_argument(
    "--max-pixels",
    type=int,
    default=720 * 1280,
    help="pixel budget per frame: a larger source is scaled down keeping "
    "its aspect, then each side is floored to a multiple of 32 (at least "
    f"{inputs_lib.SIZE_MULTIPLE**2})",
  )
  parser.add_argument(
    "--max-frames",
    type=int,
    default=None,
    help="use the first frames of the source, at most this many (1 to "
    f"{inputs_lib.MAX_FRAMES}), cut to a 4k+1 count; default 81, or "
    f"{inputs_lib.MAX_FRAMES} with --window",
  )
  parser.add_argument(
    "--scheduler",
    choices=("diffsynth", "diffusers"),
    default="diffsynth",
    help="sigma schedule: diffsynth (training and the released demo, "
    "sigma_min 0) or diffusers (the diffusers pipeline's sigma_min)",
  )
  parser.add_argument(
    "--shift",
    type=float,
    default=None,
    help="sigma shift of the schedule, above 0; default the one the "
    "checkpoint trained with (5 for the released models and the CPU demo)",
  )
  parser.add_argument(
    "--guidance-scale",
    type=float,
    default=None,
    help="instruction CFG (the reference uses none)",
  )
  parser.add_argument(
    "--ref-guidance-scale",
    type=float,
    default=None,
    help="reference-image CFG (needs --ref)",
  )
  parser.add_argument(
    "--negative-prompt",
    default="",
    help="the unconditional prompt of --guidance-scale/"
    "--ref-guidance-scale (unused without guidance)",
  )
  parser.add_argument(
    "--cache-threshold",
    type=float,
    default=None,
    metavar="T",
    help="DiT step cache (docs/step_cache.md): a step reuses the blocks' "
    "last residual while the first block's modulated input has changed, "
    "in accumulated relative L1, by less than T (a number >= 0; about "
    "0.05 to 0.3 skips steps, faster and coarser; 0 skips none); off "
    "without it, as the reference. Not with guidance",
  )
  window_flags.add_window_flags(parser)
  parser.add_argument(
    "--fps",
    type=float,
    default=None,
    help="output frame rate, above 0 and at most "
    f"{edit_pipeline.MAX_FPS:g}; without it, the source's",
  )
  parser.add_argument(
    "--side-by-side",
    action="store_true",
    help="also write <out>_concat.mp4|png and .gif "
    "(source | reference | edited)",
  )
  parser.add_argument(
    "--source-free",
    action="store_true",
    help="no source-latent injection (ImgEdit ablation)",
  )
  parser.add_argument(
    "--mesh",
    default=None,
    help="device mesh, e.g. fsdp=2,tensor=2 (axes data, "
    "fsdp, tensor, sequence; -1 fills)",
  )
  parser.add_argument(
    "--compile-cache-dir",
    default=None,
    help="JAX's persistent compilation cache: the next edit at the same "
    "sizes loads its compiled programs from here; 'off' for none "
    "(default: $JAX_COMPILATION_CACHE_DIR, else "
    "~/.cache/kiwi_jax/jax_cache)",
  )
  parser.add_argument(
    "--plan",
    action="store_true",
    help="print the memory plan of an edit and exit (no checkpoint; "
    "see kiwi-edit --plan --help and docs/low_memory.md)",
  )
  parser.add_argument(
    "--low-memory",
    "--low_memory",
    dest="low_memory",
    action="store_true",
    help="one device with little memory (the 5B at 720p x 81 frames in "
    "24 GB): bf16 weights, and only the running phase's weights on the "
    "device (the MLLM's, the VAE's or the DiT's; the rest on the host); "
    "not with --mesh (docs/low_memory.md)",
  )
  parser.add_argument(
    "--no-progress",
    action="store_true",
    help="print no phase lines and no denoising bar on stderr (the "
    "summary line is still printed)",
  )
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
        f"--mesh {text!r}: expected axis=size pairs, got {part!r}."
      )
    axes[name.strip()] = int(size)
  try:
    return sharding.make_mesh(axes)
  except ValueError as e:
    raise inputs_lib.EditInputError(f"--mesh {text!r}: {e}") from e


def check_seed_flags(args: argparse.Namespace) -> None:
  """``--seed``/``--seeds``/``--seed-batch``: sets ``args.seed`` (0 by
  default) and ``args.seed_list`` (the parsed ``--seeds`` or None)."""
  args.seed_list = None
  if args.seeds is not None:
    if args.seed is not None:
      raise inputs_lib.EditInputError(
        "--seed and --seeds cannot be used together; give one."
      )
    args.seed_list = seeds_lib.parse_seeds(args.seeds, "--seeds")
    seeds_lib.check_seed_batch(args.seed_batch, "--seed-batch")
  elif args.seed_batch is not None:
    raise inputs_lib.EditInputError("--seed-batch needs --seeds.")
  if args.seed is None:
    args.seed = 0


def check_args(args: argparse.Namespace) -> None:
  """Checks every flag's value; raises a user error naming the flag."""
  window_flags.check_window_flags(args)
  check_seed_flags(args)
  inputs_lib.check_text(args.prompt, "--prompt")
  inputs_lib.check_text(
    args.negative_prompt, "--negative-prompt", allow_empty=True
  )
  edit_pipeline.check_sampling_args(
    steps=args.steps,
    seed=args.seed,
    guidance_scale=args.guidance_scale,
    ref_guidance_scale=args.ref_guidance_scale,
    names={
      "steps": "--steps",
      "seed": "--seed",
      "guidance_scale": "--guidance-scale",
      "ref_guidance_scale": "--ref-guidance-scale",
    },
  )
  if args.ref_guidance_scale is not None and not args.ref:
    raise inputs_lib.EditInputError(
      "--ref-guidance-scale needs a reference image: add --ref."
    )
  if not 0.0 < args.denoising_strength <= 1.0:
    raise inputs_lib.EditInputError(
      f"--denoising-strength must be in (0, 1], got "
      f"{args.denoising_strength:g}."
    )
  if args.shift is not None and not (
    math.isfinite(args.shift) and args.shift > 0
  ):
    raise inputs_lib.EditInputError(
      f"--shift must be a number above 0, got {args.shift:g}."
    )
  if not 1 <= args.max_frames <= inputs_lib.MAX_FRAMES:
    raise inputs_lib.EditInputError(
      f"--max-frames must be in 1..{inputs_lib.MAX_FRAMES}, got "
      f"{args.max_frames}."
    )
  if args.max_pixels < inputs_lib.SIZE_MULTIPLE**2:
    raise inputs_lib.EditInputError(
      f"--max-pixels must be at least {inputs_lib.SIZE_MULTIPLE**2} "
      f"(one {inputs_lib.SIZE_MULTIPLE}x{inputs_lib.SIZE_MULTIPLE} "
      f"block), got {args.max_pixels}."
    )
  if args.low_memory and args.mesh:
    raise inputs_lib.EditInputError(
      "--low-memory runs on one device; it does not combine with --mesh."
    )
  if args.fps is not None:
    edit_pipeline.check_fps(args.fps, "--fps")
  try:
    step_cache.check_threshold(args.cache_threshold, "--cache-threshold")
  except ValueError as e:
    raise inputs_lib.EditInputError(str(e)) from None
  if args.cache_threshold is not None and (
    args.guidance_scale is not None or args.ref_guidance_scale is not None
  ):
    raise inputs_lib.EditInputError(
      "--cache-threshold does not combine with --guidance-scale or "
      "--ref-guidance-scale."
    )


def output_paths(args: argparse.Namespace) -> list[tuple[str, str]]:
  """``(flag, path)`` of every file the edit writes."""
  image_mode = (
    pathlib.Path(args.video).suffix.lower() in inputs_lib.IMAGE_EXTENSIONS
  )
  if getattr(args, "seed_list", None):
    return [
      ("--seeds output", str(p))
      for p in seeds_lib.output_paths(
        args.out,
        args.seed_list,
        side_by_side=args.side_by_side,
        image_mode=image_mode,
      )
    ]
  targets = [("--out", args.out)]
  if args.side_by_side:
    targets += [
      ("--side-by-side output", str(p))
      for p in outputs_lib.side_by_side_paths(args.out, image_mode=image_mode)
    ]
  return targets


def refuse_outputs_over_inputs(args: argparse.Namespace) -> None:
  """No output may be the source, the reference or a checkpoint file (by
  name, symlink or hard link), nor lie inside the checkpoint."""
  targets = output_paths(args)
  checkpoint = edit_pipeline.check_checkpoint_dir(args.checkpoint)
  for flag, out in targets:
    if paths.inside(out, checkpoint):
      raise paths.OutputIsInputError(
        f"{flag} {out} lies inside --checkpoint {checkpoint}; an edit "
        "never writes into the model's folder. Choose another output "
        "path."
      )
  sources = [("--video", args.video), ("--ref", args.ref)]
  sources += [
    ("--checkpoint file", os.path.join(root, name))
    for root, _, names in os.walk(checkpoint)
    for name in names
  ]
  paths.refuse_inputs_as_outputs(targets, sources)


class _Console:
  """Phase lines and the denoising bar on stderr (silent if disabled).

  Checking and decoding the inputs is not announced as it begins, so that
  a bad input still gets a single error line; its result is announced once
  it is done.
  """

  def __init__(self, steps: int, enabled: bool):
    self.steps, self.enabled = steps, enabled
    self.bar = None

  def on_phase(self, name: str) -> None:
    self.close_bar()
    if not self.enabled:
      return
    if name == "decode inputs":
      return
    if name == "denoise":
      import tqdm  # pylint: disable=g-import-not-at-top

      self.bar = tqdm.tqdm(
        total=self.steps, desc=f"{PROG}: denoise", unit="step", file=sys.stderr
      )
    else:
      print(f"{PROG}: {name}...", file=sys.stderr, flush=True)

  def decoded(self, source: inputs_lib.SourceClip, ref) -> None:
    if self.enabled:
      height, width = source.size
      print(
        f"{PROG}: inputs decoded: {width}x{height}, "
        f"{source.num_frames} frame{'s' if source.num_frames > 1 else ''}"
        f"{', with a reference image' if ref is not None else ''}",
        file=sys.stderr,
        flush=True,
      )

  def on_step(self, done: int, total: int) -> None:
    if self.bar is not None:
      if self.bar.total != total:  # --seed-batch: steps x batches
        self.bar.total = total
      self.bar.update(done - self.bar.n)

  def close_bar(self) -> None:
    if self.bar is not None:
      self.bar.close()
      self.bar = None


def run(args: argparse.Namespace) -> str:
  """Runs one edit; returns the summary line."""
  start = time.perf_counter()
  console = _Console(args.steps, not args.no_progress)
  clock = progress_lib.PhaseClock(on_start=console.on_phase)
  try:
    return _run(args, clock, console, start)
  finally:
    clock.stop()
    console.close_bar()


def _run(
  args, clock: progress_lib.PhaseClock, console: _Console, start: float
) -> str:
  # Cheap checks first: the flags, outputs against inputs, the source, the
  # reference, the output path; then the model.
  clock.start("decode inputs")
  check_args(args)
  refuse_outputs_over_inputs(args)
  mesh = parse_mesh(args.mesh)
  source = inputs_lib.load_source(
    args.video, max_frames=args.max_frames, max_pixels=args.max_pixels
  )
  ref = (
    inputs_lib.load_reference(args.ref, name=f"--ref {args.ref}")
    if args.ref
    else None
  )
  out = outputs_lib.check_output_path(args.out, image_mode=source.is_image)
  if source.num_frames > 1 and out.suffix.lower() in (
    outputs_lib.IMAGE_OUTPUT_EXTENSIONS
  ):
    raise outputs_lib.EditOutputError(
      f"output {out}: a {source.num_frames}-frame edit needs .mp4 or .gif."
    )

  console.decoded(source, ref)
  clock.start("load model")
  pipe = edit_pipeline.EditPipeline.from_pretrained(
    args.checkpoint,
    mesh=mesh,
    compile_cache_dir=args.compile_cache_dir,
    low_memory=args.low_memory,
  )
  options = dict(
    steps=args.steps,
    denoising_strength=args.denoising_strength,
    scheduler=args.scheduler,
    shift=args.shift,
    use_source=not args.source_free,
    guidance_scale=args.guidance_scale,
    ref_guidance_scale=args.ref_guidance_scale,
    negative_prompt=args.negative_prompt,
    cache_threshold=args.cache_threshold,
    on_step=console.on_step,
    on_phase=lambda name: clock.start(PHASE_NAMES[name]),
    **window_flags.edit_options(args),
  )
  if args.seed_list:
    result = pipe.edit_seeds(
      source,
      args.prompt,
      ref,
      seeds=args.seed_list,
      seed_batch=args.seed_batch,
      **options,
    )
  else:
    result = pipe.edit(source, args.prompt, ref, seed=args.seed, **options)
  clock.start("write")
  written = result.save(out, side_by_side=args.side_by_side, fps=args.fps)
  clock.stop()
  total = time.perf_counter() - start
  phases = ", ".join(
    f"{name} {seconds:.1f} s" for name, seconds in clock.seconds.items()
  )
  height, width = source.size
  evals = getattr(result, "block_evals", None)
  cached = (
    "" if evals is None else f" ({evals} DiT block evals with the step cache)"
  )
  seeds_note = f"{len(args.seed_list)} seeds, " if args.seed_list else ""
  return (
    f"{PROG}: {width}x{height}, {source.num_frames} frame"
    f"{'s' if source.num_frames > 1 else ''}, {args.steps} steps"
    f"{cached}, {seeds_note}"
    f"{total:.1f} s ({phases}) -> "
    f"{', '.join(str(p) for p in written)}"
  )


def main(argv: Sequence[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if "--plan" in argv:  # the memory plan: no checkpoint, no inputs
    from kiwi_jax.cli import edit_plan

    return edit_plan.main(argv)
  args = build_parser().parse_args(argv)
  try:
    print(run(args))
  except USER_ERRORS as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
