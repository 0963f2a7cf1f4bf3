"""Benchmark evaluation: edit, judge, aggregate, and offline metrics.

  python eval.py run --bench refvie --save_dir out/refvie \
      --checkpoint_dir ckpt [--prompt_only] \
      [--process_index 0 --process_count 8]
  GEMINI_API_KEY=... python eval.py judge --bench refvie --save_dir out/refvie
  python eval.py judge --bench openve --save_dir out/openve \
      --judge replay --replies replies.jsonl       # offline, no network
  python eval.py aggregate --bench openve \
      --scores out/openve/openve_gemini-2.5-pro_score.jsonl
  python eval.py run --bench openve --protocol official ...  # all 8 types
  python eval.py judge --bench openve --protocol official --save_dir ...
  python eval.py metrics --bench refvie --dataset_file mini.yaml \
      --save_dir out/refvie

`--save_dir` is the benchmark's own output directory (the reference appends
`openve/` or `refvie/` to its `--save_dir`). `judge` and `aggregate` say how
many items were scored out of how many, name every item not scored and
every recorded reply skipped, and refuse (exit 1, nothing written but the
resumable `.partial`) results in which a category has no scored sample,
unless `--allow_partial`. A bad flag or input file ends in one
`eval.py <command>: error: ...` line and exit 2; no output may resolve to
an input. The API key is read from the
environment only (never from a flag, never logged). See
`kiwi_jax/evaluators/` for what each step does and how it follows the
reference: `cli_flags` declares and checks the flags, `cli_subcommands`
holds what each subcommand does, and this module joins them (`main`).

OpenVE-Bench has two scoring protocols (`--protocol`, docs/
openve_protocols.md): `kiwi`, the default, is Kiwi-Edit's scorer (5 of the
8 categories, Overall = unweighted mean of category means; Kiwi's published
figures); `official` is the benchmark's own (all 8 categories, each with
its prompt, sample-weighted Overall; the OpenVE paper's scale). The
protocol is named in every OpenVE score record, table and results JSON.
"""

import logging
import sys
from collections.abc import Sequence

from kiwi_jax.evaluators import cli_subcommands
from kiwi_jax.evaluators.cli_flags import DESCRIPTION, build_parser, check_args
from kiwi_jax.evaluators.cli_subcommands import PIPELINE_MODULE, load_editor
from kiwi_jax.utils import paths

__all__ = [
  "COMMANDS",
  "DESCRIPTION",
  "PIPELINE_MODULE",
  "build_parser",
  "check_args",
  "load_editor",
  "main",
]

COMMANDS = {
  "run": cli_subcommands.run_command,
  "judge": cli_subcommands.judge_command,
  "aggregate": cli_subcommands.aggregate_command,
  "metrics": cli_subcommands.metrics_command,
}


def main(argv: Sequence[str] | None = None) -> int:
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  args = build_parser().parse_args(argv)
  check_args(args)
  try:
    return COMMANDS[args.command](args) or 0
  except (ValueError, paths.OutputIsInputError) as e:
    print(f"eval.py {args.command}: error: {e}", file=sys.stderr)
    return 2
  except (RuntimeError, OSError) as e:
    print(f"eval.py {args.command}: error: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
