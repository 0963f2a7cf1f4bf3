"""The `eval.py` command line: its flags and the checks argparse cannot do.

`build_parser` declares the four subcommands and their flags (each with
help text); `check_args` refuses flag combinations (exit 2, one line) and
fills in the defaults that depend on other flags (`--protocol`, `--judge`).
What each subcommand does is in `cli_subcommands`; `cli.main` joins them.
"""

import argparse
import os

from kiwi_jax.evaluators import gemini, judges, protocols

DESCRIPTION = (
  "Benchmark evaluation: edit, judge, aggregate, and offline metrics."
)


class _OneLineParser(argparse.ArgumentParser):
  """Usage mistakes end in one `<prog>: error: ...` line and exit 2."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def _count(minimum: int):
  """An argparse type: an integer that is at least `minimum`."""

  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
      raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
    return value

  parse.__name__ = "integer"
  return parse


def _editor_spec(text: str) -> str:
  module, _, attr = text.partition(":")
  if not module or not attr:
    raise argparse.ArgumentTypeError(f"{text!r}: expected module:factory")
  return text


def _model_name(text: str) -> str:
  if not text or "/" in text or os.sep in text or text in (".", ".."):
    raise argparse.ArgumentTypeError(
      f"{text!r}: expected a model name such as {gemini.OPENVE_MODEL} "
      '(it names the score file, so no "/")'
    )
  return text


def build_parser() -> argparse.ArgumentParser:
  """The `eval.py` parser; `args.command` names the subcommand."""
  parser = _OneLineParser(
    prog="eval.py",
    description=DESCRIPTION,
    epilog="Exit codes: 0 done; 1 the evaluation is incomplete or could "
    "not run; 2 a bad flag or input file.",
  )
  sub = parser.add_subparsers(dest="command", required=True)

  def add(name, help_text, dataset=True):
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.set_defaults(subparser=p)
    p.add_argument(
      "--bench",
      choices=("openve", "refvie"),
      required=True,
      help="the benchmark: openve (OpenVE-Bench, a CSV) or "
      "refvie (RefVIE-Bench, a YAML list)",
    )
    if dataset:
      p.add_argument(
        "--dataset_file",
        default=None,
        help="the benchmark file (default: the reference's, "
        "./benchmark/OpenVE-Bench/benchmark_videos.csv or "
        "./benchmark/RefVIE-Bench/refvie_bench.yaml)",
      )
      p.add_argument(
        "--data_root",
        default=None,
        help="folder the paths in the benchmark file are "
        "relative to (default: the reference's, ./benchmark/ "
        "or ./benchmark/RefVIE-Bench/, when --dataset_file is "
        "not given; else none)",
      )
      p.add_argument(
        "--save_dir",
        required=True,
        help="the benchmark's output folder: edited videos, "
        "score files, tables and metrics go here",
      )
      p.add_argument(
        "--no_progress", action="store_true", help="do not show a progress bar"
      )
    return p

  run = add("run", "edit the benchmark videos")
  run.add_argument(
    "--checkpoint_dir",
    default=None,
    help="the converted Kiwi-Edit checkpoint folder (needed "
    "unless --editor is given)",
  )
  run.add_argument(
    "--editor",
    default=None,
    type=_editor_spec,
    help="module:factory returning an editor (instead of "
    "the Kiwi-Edit model); factory(checkpoint_dir) must "
    "return edit(item) -> frames",
  )
  run.add_argument(
    "--prompt_only",
    action="store_true",
    help="RefVIE: edit from the instruction alone, without "
    "the reference image (output names do not change)",
  )
  run.add_argument(
    "--max_frames",
    type=_count(1),
    default=81,
    help="use at most this many leading source frames "
    "(default: %(default)s, as the reference)",
  )
  run.add_argument(
    "--max_pixels",
    type=_count(1),
    default=720 * 1280,
    help="largest height*width to edit at (default: "
    "%(default)s = 720x1280, as the reference)",
  )
  run.add_argument(
    "--seed",
    type=_count(0),
    default=0,
    help="noise seed of every edit (default: %(default)s)",
  )
  run.add_argument(
    "--process_index",
    type=_count(0),
    default=0,
    help="this process's share: items whose row index %% "
    "--process_count equals it (default: %(default)s)",
  )
  run.add_argument(
    "--process_count",
    type=_count(1),
    default=1,
    help="number of processes sharing the benchmark (default: %(default)s)",
  )
  run.add_argument(
    "--no_side_by_side",
    action="store_true",
    help="do not write the concat_<name> [source | edited] videos",
  )

  judge = add("judge", "score outputs with a judge")
  judge.add_argument(
    "--judge",
    choices=("gemini", "replay"),
    default=None,
    help="gemini (calls the Gemini API, needs the key) or "
    "replay (recorded replies from --replies, offline); "
    "default: replay with --replies, else gemini",
  )
  judge.add_argument(
    "--model",
    default=None,
    type=_model_name,
    help="judge model, also part of the score file name "
    f"(default: {gemini.OPENVE_MODEL} for openve, "
    f"{gemini.REFVIE_MODEL} for refvie)",
  )
  judge.add_argument(
    "--api_key_env",
    default=gemini.API_KEY_ENV,
    help="environment variable holding the API key (default: %(default)s)",
  )
  judge.add_argument(
    "--replies",
    default=None,
    help='replay mode: jsonl of {"output", "result"}, the '
    "lines of one output being its attempts (a judge run's "
    ".partial file has this form)",
  )
  judge.add_argument(
    "--workers",
    type=_count(1),
    default=None,
    help="concurrent judge calls (default: "
    f"{judges.OPENVE_WORKERS} for openve, "
    f"{judges.REFVIE_WORKERS} for refvie, as the reference)",
  )
  judge.add_argument(
    "--allow_partial",
    action="store_true",
    help="accept results in which a benchmark category has "
    "no scored sample: write them and exit 0",
  )

  agg = add("aggregate", "tables from a score jsonl", dataset=False)
  agg.add_argument(
    "--scores",
    required=True,
    help="a score jsonl of `eval.py judge` (or of the "
    "reference scorer); the table goes next to it as .md",
  )
  agg.add_argument(
    "--allow_partial",
    action="store_true",
    help="accept a score file in which a category has no "
    "scored sample: write the table and exit 0",
  )

  protocol_help = (
    "OpenVE-Bench scoring protocol: kiwi (Kiwi-Edit's scorer: 5 of the 8 "
    "categories, one set of criteria, Overall = unweighted mean of the "
    "category means; the figures Kiwi publishes) or official (the "
    "benchmark's own: all 8 categories, each with its own prompt, a "
    "sample scores the mean of the numbers in its reply, Overall = mean "
    "over samples; the OpenVE paper's scale). openve only; default: "
  )
  run.add_argument(
    "--protocol",
    choices=protocols.NAMES,
    default=None,
    help=protocol_help + f"{protocols.DEFAULT}. official "
    "also edits the subtitle, camera and creative rows",
  )
  judge.add_argument(
    "--protocol",
    choices=protocols.NAMES,
    default=None,
    help=protocol_help + f"{protocols.DEFAULT}. It picks "
    "the prompts, retries, scoring and file names "
    "(official: openve-official_<model>_score.jsonl)",
  )
  agg.add_argument(
    "--protocol",
    choices=protocols.NAMES,
    default=None,
    help=protocol_help + "the one the score file names; a "
    "different one is an error",
  )
  add("metrics", "PSNR/SSIM/temporal against tgt_video")
  return parser


def check_args(args) -> None:
  """Flag combinations argparse cannot check; exits 2 on a bad one."""
  sub = args.subparser
  if getattr(args, "protocol", None) is not None and args.bench != "openve":
    sub.error(
      "--protocol applies to --bench openve only (RefVIE-Bench has "
      "one scorer, Kiwi-Edit's)"
    )
  if args.command in ("run", "judge") and args.bench == "openve":
    args.protocol = protocols.get(args.protocol).name  # None: the default
  if args.command == "run":
    if not args.editor and not args.checkpoint_dir:
      sub.error("--checkpoint_dir is required without --editor")
    if args.process_index >= args.process_count:
      sub.error(
        f"--process_index {args.process_index} must be below "
        f"--process_count {args.process_count}"
      )
  if args.command == "judge":
    if args.judge is None:
      args.judge = "replay" if args.replies else "gemini"
    if args.judge == "replay" and not args.replies:
      sub.error("--judge replay needs --replies FILE.jsonl")
    if args.judge == "gemini" and args.replies:
      sub.error("--replies applies to --judge replay only; drop one of them")
    if not args.api_key_env:
      sub.error("--api_key_env must name an environment variable")
