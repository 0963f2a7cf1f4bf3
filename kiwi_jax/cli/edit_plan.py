"""``kiwi-edit --plan``: will one edit fit in a memory budget? No weights.

  kiwi-edit --plan --variant kiwi-5b --height 704 --width 1280 \\
      --frames 81 --memory_budget 24GB [--low-memory]

Builds the model shape-only, compiles the edit path's real programs in
both modes (``kiwi_jax.pipeline.memory_plan``), prints one table per mode
(program, arguments, temporaries, outputs, peak, in GiB), each mode's
phases and peak, and the verdict (FITS / DOES NOT FIT) against the budget
for the mode asked for (``--low-memory``) and the other. Exit status 0
either way; 2 for a bad flag value, with one ``kiwi-edit: error:`` line.

The programs compile for the default JAX backend; on a machine without
the GPU that is the host CPU, whose memory analysis stands in for the
GPU's (the table says which).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

PROG = "kiwi-edit"


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
    help="give the verdict for the low-memory mode (bf16 weights, MLLM "
    "freed before the DiT, tiled VAE); both modes are printed",
  )
  return p


def _gib(n: int) -> str:
  from kiwi_jax.pipeline.memory_plan import GIB

  return f"{n / GIB:9.3f}"


def format_mode(plan) -> list[str]:
  """The tables of one ``ModePlan`` (GiB)."""
  lines = [
    f"== {plan.mode} ==",
    f"{'program':<40} {'phase':<12} {'args GiB':>9} {'temp GiB':>9} "
    f"{'out GiB':>9} {'alias GiB':>9} {'peak GiB':>9} {'weights':>9} "
    f"{'non-wt':>9}",
  ]
  for r in plan.programs:
    lines.append(
      f"{r.name:<40} {r.phase:<12} {_gib(r.argument)} {_gib(r.temp)} "
      f"{_gib(r.output)} {_gib(r.alias)} {_gib(r.peak)} {_gib(r.weights)} "
      f"{_gib(r.non_weight)}"
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
  lines.append(f"{plan.mode} peak: {_gib(plan.peak).strip()} GiB")
  return lines


def check_args(args: argparse.Namespace) -> int:
  """The budget in bytes; ValueError naming the flag for a bad value."""
  from kiwi_jax.models.kiwi.config import VARIANTS
  from kiwi_jax.pipeline import memory_plan

  budget = memory_plan.parse_budget(args.memory_budget)
  if args.variant not in VARIANTS:
    raise ValueError(
      f"--variant {args.variant!r}: known variants {sorted(VARIANTS)}."
    )
  if args.steps < 1:
    raise ValueError(f"--steps {args.steps}: must be >= 1.")
  memory_plan.check_shape(
    memory_plan.model_config(args.variant, False),
    args.frames,
    args.height,
    args.width,
  )
  return budget


def run(args: argparse.Namespace, budget: int):
  """Returns ``(lines, {mode: ModePlan})``."""
  import jax

  from kiwi_jax.pipeline import memory_plan

  backend = jax.default_backend()
  target = backend if backend != "cpu" else "cpu (proxy for the GPU)"
  lines = [
    f"memory plan: {args.variant} {args.frames}x{args.height}x"
    f"{args.width}, {args.steps} steps, budget {args.memory_budget} "
    f"({budget / memory_plan.GIB:.2f} GiB)",
    f"target: {target}",
  ]
  plans = {}
  for low in (False, True):
    plan = memory_plan.plan_mode(
      args.variant,
      frames=args.frames,
      height=args.height,
      width=args.width,
      steps=args.steps,
      low_memory=low,
      on_row=lambda r: print(
        f"compiled {r.name} in {r.seconds:.1f} s", file=sys.stderr, flush=True
      ),
    )
    plans[plan.mode] = plan
    lines += format_mode(plan)
    print("\n".join(format_mode(plan)), file=sys.stderr, flush=True)
  chosen = "low_memory" if args.low_memory else "default"
  for mode, plan in plans.items():
    verdict = "FITS" if plan.peak <= budget else "DOES NOT FIT"
    mark = " (selected)" if mode == chosen else ""
    lines.append(
      f"{mode}{mark}: peak {plan.peak / memory_plan.GIB:.3f} GiB vs "
      f"budget {budget / memory_plan.GIB:.3f} GiB: {verdict}"
    )
  return lines, plans


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    budget = check_args(args)
  except ValueError as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2
  lines, _ = run(args, budget)
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
