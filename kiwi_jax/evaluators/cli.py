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
reference.

OpenVE-Bench has two scoring protocols (`--protocol`, docs/
openve_protocols.md): `kiwi`, the default, is Kiwi-Edit's scorer (5 of the
8 categories, Overall = unweighted mean of category means; Kiwi's published
figures); `official` is the benchmark's own (all 8 categories, each with
its prompt, sample-weighted Overall; the OpenVE paper's scale). The
protocol is named in every OpenVE score record, table and results JSON.
"""

import argparse
import csv
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence

import yaml

from kiwi_jax.evaluators import (
  benchmarks,
  commands,
  errors,
  gemini,
  judges,
  protocols,
  runner,
)
from kiwi_jax.utils import paths

PIPELINE_MODULE = "kiwi_jax.pipeline"


def load_editor(
  checkpoint_dir: str,
  *,
  max_frames: int = 81,
  max_pixels: int = 720 * 1280,
  seed: int = 0,
) -> runner.EditFn:
  """The Kiwi-Edit model as a benchmark editor (`runner.EditFn`).

  Written against the pipeline API that the sampling issue specifies
  (`EditPipeline.from_pretrained(dir)`, then `pipe(video, prompt,
  ref_image=...)`); the module is imported only here, so everything else in
  this file works without it. The defaults are `test_benchmark.py`'s
  (81 frames, 720x1280 pixels, seed 0).
  """
  if importlib.util.find_spec(PIPELINE_MODULE) is None:
    raise RuntimeError(
      f"`eval.py run` needs the edit pipeline ({PIPELINE_MODULE}), which "
      "this install does not have. judge, aggregate and metrics work "
      "without it; to run another editor, pass --editor module:factory."
    )
  pipeline = importlib.import_module(PIPELINE_MODULE)
  from PIL import Image  # pylint: disable=g-import-not-at-top

  pipe = pipeline.EditPipeline.from_pretrained(checkpoint_dir)

  def edit(item: benchmarks.BenchmarkItem):
    ref = (
      Image.open(item.reference_image).convert("RGB")
      if item.reference_image
      else None
    )
    return pipe(
      item.source_video,
      item.instruction,
      ref_image=ref,
      max_frames=max_frames,
      max_pixels=max_pixels,
      seed=seed,
    )

  return edit


def _editor_from_spec(spec: str, checkpoint_dir: str | None) -> runner.EditFn:
  """`module:factory` -> `factory(checkpoint_dir)`, an `EditFn`."""
  module_name, _, attr = spec.partition(":")
  try:
    factory = getattr(importlib.import_module(module_name), attr)
  except ImportError as e:
    raise errors.InputError(
      f"--editor {spec}: cannot import {module_name} "
      f"({e}); is it on PYTHONPATH?"
    ) from e
  except AttributeError as e:
    raise errors.InputError(
      f"--editor {spec}: {module_name} has no {attr!r}"
    ) from e
  return factory(checkpoint_dir)


def _read_items(args, prompt_only: bool = False):
  """The benchmark items; any problem with the file is an `InputError`."""
  default_file, default_root = commands.DEFAULT_DATASETS[args.bench]
  hint = ""
  if args.dataset_file is None:
    args.dataset_file = default_file
    hint = " (the default for --bench; pass --dataset_file)"
    if args.data_root is None:
      args.data_root = default_root
  if not os.path.isfile(args.dataset_file):
    raise errors.InputError(
      f"--dataset_file {args.dataset_file}: no such file{hint}"
    )
  try:
    return benchmarks.read_benchmark(
      args.bench,
      args.dataset_file,
      args.data_root or "",
      prompt_only,
      openve_skipped=protocols.get(
        getattr(args, "protocol", None)
      ).skipped_types,
    )
  except UnicodeDecodeError as e:
    raise errors.InputError(
      f"{args.dataset_file}: not UTF-8 text ({e.reason} at byte {e.start})"
    ) from e
  except (yaml.YAMLError, csv.Error) as e:
    error = " ".join(str(e).split())
    raise errors.InputError(
      f"{args.dataset_file}: cannot parse the "
      f"{args.bench} benchmark file: {error}"
    ) from e
  except ValueError as e:
    raise errors.InputError(str(e)) from e


def _require_files(named_paths, what: str) -> None:
  """One line naming how many of the benchmark's files are missing."""
  missing = [
    (flag, path)
    for flag, path in named_paths
    if path and not os.path.exists(path)
  ]
  if missing:
    flag, path = missing[0]
    raise errors.InputError(
      f"{len(missing)} {what} missing, first: {flag} {path}; check "
      "--data_root and --dataset_file"
    )


def _item_inputs(
  items, *, outputs_dir: str | None = None, targets: bool = False
):
  """`(name, path)` of the files the items make a command read."""
  for item in items:
    yield "source video", item.source_video
    yield "reference image", item.reference_image
    if targets:
      yield "target video", item.target_video
    if outputs_dir is not None:
      yield "edited video", os.path.join(outputs_dir, item.output_name)


def _run(args) -> None:
  items = _read_items(args, prompt_only=args.prompt_only)
  mine = benchmarks.shard(items, args.process_index, args.process_count)
  outputs = [("--save_dir", args.save_dir)]
  for item in mine:
    path = os.path.join(args.save_dir, item.output_name)
    outputs.append(("edited video", path))
    if not args.no_side_by_side:
      outputs.append(
        (
          "side-by-side video",
          os.path.join(
            args.save_dir, runner.side_by_side_name(item.output_name)
          ),
        )
      )
  paths.refuse_inputs_as_outputs(
    outputs, [("--dataset_file", args.dataset_file), *_item_inputs(mine)]
  )
  _require_files(_item_inputs(mine), "source videos or reference images")
  if args.editor:
    edit_fn = _editor_from_spec(args.editor, args.checkpoint_dir)
  else:
    edit_fn = load_editor(
      args.checkpoint_dir,
      max_frames=args.max_frames,
      max_pixels=args.max_pixels,
      seed=args.seed,
    )
  summary = runner.run_benchmark(
    items,
    edit_fn,
    args.save_dir,
    process_index=args.process_index,
    process_count=args.process_count,
    write_side_by_side=not args.no_side_by_side,
    show_progress=not args.no_progress,
  )
  print(
    f"{len(summary.edited)} edited, {len(summary.skipped)} already done "
    f"-> {args.save_dir}"
  )


def _judge(args) -> int:
  items = _read_items(args)
  model = args.model or (
    gemini.OPENVE_MODEL if args.bench == "openve" else gemini.REFVIE_MODEL
  )
  out_path = commands.score_path(
    args.save_dir, args.bench, model, args.protocol
  )
  paths.refuse_inputs_as_outputs(
    [
      ("score file", out_path),
      ("partial score file", judges.partial_path(out_path)),
      ("score table", commands.table_path(out_path)),
      ("results JSON", commands.stats_path(out_path)),
    ],
    [
      ("--dataset_file", args.dataset_file),
      ("--replies", args.replies),
      *_item_inputs(items, outputs_dir=args.save_dir),
    ],
  )
  openve = args.bench == "openve"
  if args.judge == "replay":
    judge = judges.ReplayJudge.from_jsonl(
      args.replies, args.save_dir, args.protocol if openve else None
    )
  else:
    api_key = os.environ.get(args.api_key_env, "")
    if not api_key:
      raise RuntimeError(
        f"--judge gemini needs an API key in "
        f"${args.api_key_env} (or use --judge replay); no "
        "judge call was made"
      )
    _require_files(_item_inputs(items), "source videos or reference images")
    config = protocols.get(args.protocol).generation_config if openve else None
    judge = gemini.GeminiJudge(api_key, model, generation_config=config)
  report = commands.judge_outputs(
    args.bench,
    items,
    args.save_dir,
    judge,
    model,
    workers=args.workers,
    show_progress=not args.no_progress,
    allow_partial=args.allow_partial,
    protocol=args.protocol if openve else None,
  )
  if report.table:
    print(report.table)
  print("\n".join(report.summary))
  if report.error:
    print(f"eval.py judge: error: {report.error}", file=sys.stderr)
    return 1
  return 0


def _aggregate(args) -> int:
  table_file = commands.table_path(args.scores)
  paths.refuse_inputs_as_outputs(
    [
      ("score table", table_file),
      ("results JSON", commands.stats_path(args.scores)),
    ],
    [("--scores", args.scores)],
  )
  records = commands.read_scores(args.scores)
  protocol = None
  if args.bench == "openve":
    protocol = protocols.records_protocol(records)
    if args.protocol not in (None, protocol):
      raise errors.InputError(
        f"--protocol {args.protocol}: {args.scores} was scored under the "
        f"{protocol} protocol; pass --protocol {protocol} or leave it out"
      )
  categories = commands.all_categories(args.bench, protocol)
  counts = commands.scored_counts(args.bench, records, categories)
  empty = [c for c in categories if not counts[c]]
  partial = bool(empty) and not args.allow_partial
  print(
    commands.aggregate_scores(
      args.bench,
      args.scores,
      expected=categories,
      write=not partial,
      protocol=protocol,
    )
  )
  print(commands.coverage_line(counts))
  if partial:
    print(
      f"eval.py aggregate: error: {args.scores} has no scored sample in "
      f"{', '.join(empty)}, so the results are incomplete; no table was "
      "written; pass --allow_partial to accept them",
      file=sys.stderr,
    )
    return 1
  return 0


def _metrics(args) -> None:
  items = _read_items(args)
  paths.refuse_inputs_as_outputs(
    [
      (name, os.path.join(args.save_dir, name))
      for name in ("metrics.jsonl", "metrics.md")
    ],
    [
      ("--dataset_file", args.dataset_file),
      *_item_inputs(items, outputs_dir=args.save_dir, targets=True),
    ],
  )
  print(commands.compute_metrics(items, args.save_dir))


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


def _parser() -> argparse.ArgumentParser:
  parser = _OneLineParser(
    prog="eval.py",
    description=__doc__.split("\n")[0],
    epilog="Exit codes: 0 done; 1 the evaluation is incomplete or could "
    "not run; 2 a bad flag or input file.",
  )
  sub = parser.add_subparsers(dest="command", required=True)

  def add(name, fn, help_text, dataset=True):
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.set_defaults(fn=fn, subparser=p)
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

  run = add("run", _run, "edit the benchmark videos")
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

  judge = add("judge", _judge, "score outputs with a judge")
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

  agg = add("aggregate", _aggregate, "tables from a score jsonl", dataset=False)
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
  add("metrics", _metrics, "PSNR/SSIM/temporal against tgt_video")
  return parser


def _check_args(args) -> None:
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


def main(argv: Sequence[str] | None = None) -> int:
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  args = _parser().parse_args(argv)
  _check_args(args)
  try:
    return args.fn(args) or 0
  except (ValueError, paths.OutputIsInputError) as e:
    print(f"eval.py {args.command}: error: {e}", file=sys.stderr)
    return 2
  except (RuntimeError, OSError) as e:
    print(f"eval.py {args.command}: error: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
