"""The bodies of `eval.py run | judge | aggregate | metrics`.

Each `*_command(args)` takes the checked flags of `cli_flags` and does one
subcommand: reads the benchmark file, refuses outputs that resolve to
inputs (`kiwi_jax.utils.paths`), checks that the files it reads exist, then
calls `runner` or `commands`. Bad input raises `errors.InputError` (exit 2
in `cli.main`); an incomplete result returns 1.
"""

import csv
import importlib
import importlib.util
import os
import sys

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


def run_command(args) -> None:
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


def judge_command(args) -> int:
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


def aggregate_command(args) -> int:
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


def metrics_command(args) -> None:
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
