"""Benchmark evaluation: edit, judge, aggregate, and offline metrics.

  python eval.py run --bench refvie --save_dir out/refvie \
      --checkpoint_dir ckpt [--prompt_only] \
      [--process_index 0 --process_count 8]
  GEMINI_API_KEY=... python eval.py judge --bench refvie --save_dir out/refvie
  python eval.py judge --bench openve --save_dir out/openve \
      --judge replay --replies replies.jsonl       # offline, no network
  python eval.py aggregate --bench openve \
      --scores out/openve/openve_gemini-2.5-pro_score.jsonl
  python eval.py metrics --bench refvie --dataset_file mini.yaml \
      --save_dir out/refvie

`--save_dir` is the benchmark's own output directory (the reference appends
`openve/` or `refvie/` to its `--save_dir`). The API key is read from the
environment only (never from a flag, never logged). See
`kiwi_jax/evaluators/` for what each step does and how it follows the
reference.
"""

import argparse
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence

from kiwi_jax.evaluators import benchmarks
from kiwi_jax.evaluators import commands
from kiwi_jax.evaluators import gemini
from kiwi_jax.evaluators import judges
from kiwi_jax.evaluators import runner

PIPELINE_MODULE = 'kiwi_jax.pipeline'


def load_editor(checkpoint_dir: str, *, max_frames: int = 81,
                max_pixels: int = 720 * 1280,
                seed: int = 0) -> runner.EditFn:
  """The Kiwi-Edit model as a benchmark editor (`runner.EditFn`).

  Written against the pipeline API that the sampling issue specifies
  (`EditPipeline.from_pretrained(dir)`, then `pipe(video, prompt,
  ref_image=...)`); the module is imported only here, so everything else in
  this file works without it. The defaults are `test_benchmark.py`'s
  (81 frames, 720x1280 pixels, seed 0).
  """
  if importlib.util.find_spec(PIPELINE_MODULE) is None:
    raise RuntimeError(
        f'`eval.py run` needs the edit pipeline ({PIPELINE_MODULE}), which '
        'this install does not have. judge, aggregate and metrics work '
        'without it; to run another editor, pass --editor module:factory.')
  pipeline = importlib.import_module(PIPELINE_MODULE)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  pipe = pipeline.EditPipeline.from_pretrained(checkpoint_dir)

  def edit(item: benchmarks.BenchmarkItem):
    ref = (Image.open(item.reference_image).convert('RGB')
           if item.reference_image else None)
    return pipe(item.source_video, item.instruction, ref_image=ref,
                max_frames=max_frames, max_pixels=max_pixels, seed=seed)

  return edit


def _editor_from_spec(spec: str, checkpoint_dir: str | None) -> runner.EditFn:
  """`module:factory` -> `factory(checkpoint_dir)`, an `EditFn`."""
  module_name, _, attr = spec.partition(':')
  if not attr:
    raise ValueError(f'--editor {spec!r}: expected module:factory')
  factory = getattr(importlib.import_module(module_name), attr)
  return factory(checkpoint_dir)


def _read_items(args, prompt_only: bool = False):
  default_file, default_root = commands.DEFAULT_DATASETS[args.bench]
  if args.dataset_file is None:
    args.dataset_file = default_file
    if args.data_root is None:
      args.data_root = default_root
  return benchmarks.read_benchmark(args.bench, args.dataset_file,
                                   args.data_root or '', prompt_only)


def _run(args) -> None:
  items = _read_items(args, prompt_only=args.prompt_only)
  if args.editor:
    edit_fn = _editor_from_spec(args.editor, args.checkpoint_dir)
  else:
    if not args.checkpoint_dir:
      raise ValueError('--checkpoint_dir is required without --editor')
    edit_fn = load_editor(args.checkpoint_dir, max_frames=args.max_frames,
                          max_pixels=args.max_pixels, seed=args.seed)
  summary = runner.run_benchmark(
      items, edit_fn, args.save_dir, process_index=args.process_index,
      process_count=args.process_count,
      write_side_by_side=not args.no_side_by_side,
      show_progress=not args.no_progress)
  print(f'{len(summary.edited)} edited, {len(summary.skipped)} already done '
        f'-> {args.save_dir}')


def _judge(args) -> None:
  items = _read_items(args)
  model = args.model or (gemini.OPENVE_MODEL if args.bench == 'openve'
                         else gemini.REFVIE_MODEL)
  if args.judge == 'replay':
    if not args.replies:
      raise ValueError('--judge replay needs --replies FILE.jsonl')
    judge = judges.ReplayJudge.from_jsonl(args.replies, args.save_dir)
  else:
    api_key = os.environ.get(args.api_key_env, '')
    if not api_key:
      raise ValueError(f'--judge gemini needs an API key in ${args.api_key_env}'
                       ' (or use --judge replay); no judge call was made')
    judge = gemini.GeminiJudge(api_key, model)
  print(commands.judge_outputs(args.bench, items, args.save_dir, judge, model,
                               workers=args.workers,
                               show_progress=not args.no_progress))


def _aggregate(args) -> None:
  print(commands.aggregate_scores(args.bench, args.scores))


def _metrics(args) -> None:
  print(commands.compute_metrics(_read_items(args), args.save_dir))


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)

  def add(name, fn, help_text, dataset=True):
    p = sub.add_parser(name, help=help_text)
    p.set_defaults(fn=fn)
    p.add_argument('--bench', choices=('openve', 'refvie'), required=True)
    if dataset:
      p.add_argument('--dataset_file', default=None)
      p.add_argument('--data_root', default=None)
      p.add_argument('--save_dir', required=True)
      p.add_argument('--no_progress', action='store_true')
    return p

  run = add('run', _run, 'edit the benchmark videos')
  run.add_argument('--checkpoint_dir', default=None)
  run.add_argument('--editor', default=None,
                   help='module:factory returning an editor (instead of '
                   'the Kiwi-Edit model)')
  run.add_argument('--prompt_only', action='store_true')
  run.add_argument('--max_frames', type=int, default=81)
  run.add_argument('--max_pixels', type=int, default=720 * 1280)
  run.add_argument('--seed', type=int, default=0)
  run.add_argument('--process_index', type=int, default=0)
  run.add_argument('--process_count', type=int, default=1)
  run.add_argument('--no_side_by_side', action='store_true')

  judge = add('judge', _judge, 'score outputs with a judge')
  judge.add_argument('--judge', choices=('gemini', 'replay'),
                     default='gemini')
  judge.add_argument('--model', default=None)
  judge.add_argument('--api_key_env', default=gemini.API_KEY_ENV,
                     help='environment variable holding the API key')
  judge.add_argument('--replies', default=None,
                     help='replay mode: jsonl of {"output", "result"}')
  judge.add_argument('--workers', type=int, default=None)

  agg = add('aggregate', _aggregate, 'tables from a score jsonl',
            dataset=False)
  agg.add_argument('--scores', required=True)

  add('metrics', _metrics, 'PSNR/SSIM/temporal against tgt_video')
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
  args = _parser().parse_args(argv)
  try:
    args.fn(args)
  except (ValueError, RuntimeError, OSError) as e:
    print(f'eval.py {args.command}: error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
