"""``kiwi-edit --plan``: will one edit fit in a memory budget? No weights.

  kiwi-edit --plan --variant kiwi-5b --height 704 --width 1280 \\
      --frames 81 --memory_budget 24GB [--low-memory] [--steps 50] \\
      [--checkpoint DIR] [--plan-target auto|device|hybrid|tpu|cpu] \\
      [--cache-dir DIR|none]

Builds the model shape-only, compiles the edit path's real programs in
both modes (``kiwi_jax.pipeline.memory_plan``) for the target it names in
its second line, and prints one table per mode (each program's arguments,
temporaries, outputs, peak, the weights among its arguments and the rest,
in GiB), each mode's phases and peak, the two modes' peaks side by side
and the verdict against the budget. Exit status: 0 when the edit fits in
one mode (with ``--low-memory``: in the low-memory mode), 1 when it does
not, 2 for a bad flag value (one ``kiwi-edit: error:`` line).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from collections.abc import Sequence

PROG = "kiwi-edit"
_MODES = {"default": "default", "low_memory": "low-memory"}


class _Parser(argparse.ArgumentParser):
  def error(self, message: str):
    self.exit(2, f"{PROG}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
  p = _Parser(prog=f"{PROG} --plan", description=__doc__.split("\n")[0])
  p.add_argument(
    "--plan", action="store_true", help="print the memory plan and exit"
  )
  p.add_argument(
    "--variant",
    default="kiwi-5b",
    help="model variant (KiwiEditConfig VARIANTS: kiwi-5b, kiwi-14b, tiny)",
  )
  p.add_argument(
    "--checkpoint",
    default=None,
    help="plan this checkpoint's model instead (reads kiwi_config.json "
    "only, no weights)",
  )
  p.add_argument("--height", type=int, default=704, help="frame height")
  p.add_argument("--width", type=int, default=1280, help="frame width")
  p.add_argument("--frames", type=int, default=81, help="frames (4k+1)")
  p.add_argument(
    "--steps", type=int, default=50, help="denoising steps of the loop"
  )
  p.add_argument(
    "--memory_budget",
    "--memory-budget",
    dest="memory_budget",
    default="24GB",
    help="device memory, e.g. 24GB (10**9 bytes), 24GiB, 24000MB",
  )
  p.add_argument(
    "--low-memory",
    "--low_memory",
    dest="low_memory",
    action="store_true",
    help="give the verdict for the low-memory mode only (bf16 weights, one "
    "weight group on the device per phase, the VAE's frames on the "
    "host); both modes are printed",
  )
  p.add_argument(
    "--plan-target",
    "--plan_target",
    dest="plan_target",
    default="auto",
    choices=("auto", "device", "hybrid", "tpu", "cpu"),
    help="what to compile for: device (this machine's GPU/TPU); tpu (one "
    "chip of a compile-only v5p, needs libtpu; slow for the VAE at full "
    "size); cpu (the host backend); hybrid (Qwen and the DiT for the "
    "TPU chip, the VAE for the CPU); auto: device on a GPU/TPU machine, "
    "else hybrid where libtpu is installed, else cpu (docs/low_memory.md)",
  )
  p.add_argument(
    "--cache-dir",
    "--cache_dir",
    dest="cache_dir",
    default="",
    help="the plan's row cache (a rerun compiles nothing); default "
    "~/.cache/kiwi_jax/plan, 'none' for no cache",
  )
  return p


def _gib(n: int) -> str:
  from kiwi_jax.pipeline.memory_plan import GIB

  return f"{n / GIB:9.3f}"


def format_mode(plan) -> list[str]:
  """The tables of one ``ModePlan`` (GiB); ``>=`` marks a program that
  ran out of memory on the target (its need, a lower bound)."""
  lines = [
    f"== {plan.mode} ==",
    f"{'program':<40} {'phase':<12} {'on':<4} {'args GiB':>9} "
    f"{'temp GiB':>9} "
    f"{'out GiB':>9} {'alias GiB':>9} {'peak GiB':>9} {'weights':>9} "
    f"{'non-wt':>9}",
  ]
  for r in plan.programs:
    lines.append(
      f"{r.name:<40} {r.phase:<12} {r.target:<4} {_gib(r.argument)} "
      f"{_gib(r.temp)} "
      f"{_gib(r.output)} {_gib(r.alias)} {_gib(r.peak)} {_gib(r.weights)} "
      f"{_gib(r.non_weight)}"
      + (" >= (out of memory)" if r.out_of_memory else "")
    )
  lines.append(
    f"{'phase':<12} {'weights GiB':>11} {'program GiB':>11} "
    f"{'held GiB':>9} {'peak GiB':>9}"
  )
  for p in plan.phases:
    lines.append(
      f"{p.phase:<12} {_gib(p.weights):>11} {_gib(p.program):>11} "
      f"{_gib(p.held)} {_gib(p.peak)}"
    )
  bound = ">= " if plan.lower_bound else ""
  lines.append(f"{plan.mode} peak: {bound}{_gib(plan.peak).strip()} GiB")
  return lines


def check_args(args: argparse.Namespace) -> int:
  """The budget in bytes; ValueError naming the flag for a bad value.
  Sets ``args.cfg`` (the checkpoint's config, or None)."""
  from kiwi_jax.models.kiwi import checkpoint
  from kiwi_jax.models.kiwi.config import VARIANTS
  from kiwi_jax.pipeline import memory_plan

  budget = memory_plan.parse_budget(args.memory_budget)
  if args.variant not in VARIANTS:
    raise ValueError(
      f"--variant {args.variant!r}: known variants {sorted(VARIANTS)}."
    )
  if args.steps < 1:
    raise ValueError(f"--steps {args.steps}: must be >= 1.")
  args.cfg = None
  if args.checkpoint is not None:
    try:
      args.cfg = checkpoint.load_config(args.checkpoint)
    except (OSError, ValueError, TypeError) as e:
      raise ValueError(f"--checkpoint {args.checkpoint}: {e}") from None
  cfg = args.cfg or memory_plan.model_config(args.variant, False)
  memory_plan.check_shape(cfg, args.frames, args.height, args.width)
  if args.plan_target in ("tpu", "hybrid"):
    memory_plan.target_mesh("tpu")  # fails early without libtpu
  return budget


def _cache_dir(text: str):
  from kiwi_jax.plan import cache  # pylint: disable=g-import-not-at-top

  if text.lower() == "none":
    return None
  return pathlib.Path(text).expanduser() if text else cache.default_dir()


def verdict(
  plans: dict, budget: int, low_memory_only: bool
) -> tuple[str, bool]:
  """The verdict line and whether the edit fits."""
  from kiwi_jax.pipeline.memory_plan import GIB

  fits = {m: p.peak <= budget and not p.lower_bound for m, p in plans.items()}
  head = f"budget {budget / GIB:.2f} GiB:"
  if low_memory_only:
    ok = fits["low_memory"]
    return f"{head} {'FITS' if ok else 'DOES NOT FIT'} in low-memory mode", ok
  if fits["default"]:
    return f"{head} FITS in the default mode (and in low-memory mode)", True
  if fits["low_memory"]:
    return (
      f"{head} FITS in low-memory mode only (kiwi-edit --low-memory); "
      "the default mode DOES NOT FIT",
      True,
    )
  return f"{head} DOES NOT FIT in either mode", False


def run(args: argparse.Namespace, budget: int):
  """Returns ``(lines, {mode: ModePlan}, fits)``."""
  from kiwi_jax.pipeline import memory_plan

  name = args.checkpoint or args.variant
  lines = [
    f"memory plan: {name} {args.frames}x{args.height}x{args.width}, "
    f"{args.steps} steps, budget {args.memory_budget} "
    f"({budget / memory_plan.GIB:.2f} GiB)",
  ]
  cache_dir = _cache_dir(args.cache_dir)

  def on_row(row, cached):
    how = "cached" if cached else f"compiled in {row.seconds:.0f} s"
    print(f"{PROG}: {row.name}: {how}", file=sys.stderr, flush=True)

  plans = {}
  for low in (False, True):
    plan = memory_plan.plan_mode(
      args.variant,
      frames=args.frames,
      height=args.height,
      width=args.width,
      steps=args.steps,
      low_memory=low,
      target=args.plan_target,
      cache_dir=cache_dir,
      cfg=args.cfg,
      on_row=on_row,
    )
    if not plans:
      lines.append(f"target: {plan.target}")
    plans[plan.mode] = plan
    lines += format_mode(plan)
  peaks = ", ".join(
    f"{_MODES[m]} {'>= ' if p.lower_bound else ''}"
    f"{p.peak / memory_plan.GIB:.3f} GiB"
    for m, p in plans.items()
  )
  lines.append(f"peak: {peaks}")
  line, fits = verdict(plans, budget, args.low_memory)
  lines.append(line)
  return lines, plans, fits


def main(argv: Sequence[str] | None = None) -> int:
  # Before jax starts a backend: libtpu's compile-only devices stay quiet,
  # and plans may run side by side.
  for name, value in (
    ("TPU_SKIP_MDS_QUERY", "1"),
    ("TPU_WORKER_HOSTNAMES", "localhost"),
    ("TPU_ACCELERATOR_TYPE", "v5p-8"),
    ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"),
  ):
    os.environ.setdefault(name, value)
  try:
    args = build_parser().parse_args(argv)
  except SystemExit as e:  # --help, or a bad flag (its one line printed)
    return int(e.code or 0)
  try:
    budget = check_args(args)
  except ValueError as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2
  lines, _, fits = run(args, budget)
  print("\n".join(lines))
  return 0 if fits else 1


if __name__ == "__main__":
  sys.exit(main())
