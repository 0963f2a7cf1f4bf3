"""The steps behind `eval.py judge | aggregate | metrics`.

File names follow the reference: `<save_dir>/openve_<model>_score.jsonl`
and `<save_dir>/refvie_<model>_score.jsonl`; the markdown table goes next
to the jsonl with the `.md` extension. Metrics go to
`<save_dir>/metrics.jsonl` and `<save_dir>/metrics.md`.
"""

import dataclasses
import logging
import os
from collections.abc import Sequence

from kiwi_jax.evaluators import aggregate
from kiwi_jax.evaluators import benchmarks
from kiwi_jax.evaluators import judges
from kiwi_jax.evaluators import jsonl
from kiwi_jax.evaluators import metrics
from kiwi_jax.evaluators import video_io

DEFAULT_DATASETS = {
    # bench: (dataset_file, data_root), the defaults of `test_benchmark.py`.
    'openve': ('./benchmark/OpenVE-Bench/benchmark_videos.csv',
               './benchmark/'),
    'refvie': ('./benchmark/RefVIE-Bench/refvie_bench.yaml',
               './benchmark/RefVIE-Bench/'),
}


def score_path(save_dir: str, bench: str, model: str) -> str:
  return os.path.join(save_dir, f'{bench}_{model}_score.jsonl')


def table_path(jsonl_path: str) -> str:
  return os.path.splitext(jsonl_path)[0] + '.md'


def aggregate_scores(bench: str, jsonl_path: str) -> str:
  """Aggregates a score jsonl, writes `<jsonl stem>.md`, returns the table."""
  records = [r for r in jsonl.read(jsonl_path) if isinstance(r, dict)]
  title = f'{bench} · {os.path.basename(jsonl_path)}'
  try:
    if bench == 'openve':
      table = aggregate.openve_table(aggregate.aggregate_openve(records),
                                     title)
    elif bench == 'refvie':
      table = aggregate.refvie_table(aggregate.aggregate_refvie(records),
                                     title)
    else:
      raise ValueError(f'unknown benchmark {bench!r}')
  except ValueError as e:
    raise ValueError(f'{jsonl_path}: {e}') from e
  jsonl.write_text_atomic(table_path(jsonl_path), table)
  return table


def judge_outputs(bench: str, items: Sequence[benchmarks.BenchmarkItem],
                  save_dir: str, judge: judges.Judge, model: str, *,
                  workers: int | None = None,
                  show_progress: bool = True) -> str:
  """Judges the outputs in `save_dir`, writes the jsonl and the table.

  Outputs that do not exist are dropped from the scores, as in the
  reference (whose upload fails on them); a warning lists how many.

  Returns:
    The markdown table.
  """
  if bench == 'openve':
    tasks = judges.openve_tasks(items, save_dir)
    default_workers = judges.OPENVE_WORKERS
  elif bench == 'refvie':
    tasks = judges.refvie_tasks(items, save_dir)
    default_workers = judges.REFVIE_WORKERS
  else:
    raise ValueError(f"unknown benchmark {bench!r}")
  missing = [t.key for t in tasks if not os.path.exists(t.media[-1])]
  if missing:
    logging.warning('%d of %d outputs are missing in %s and will be dropped '
                    '(first: %s)', len(missing), len(tasks), save_dir,
                    missing[0])
  out_path = score_path(save_dir, bench, model)
  judges.judge_benchmark(judge, tasks, out_path,
                         workers=workers or default_workers,
                         show_progress=show_progress)
  return aggregate_scores(bench, out_path)


def compute_metrics(items: Sequence[benchmarks.BenchmarkItem],
                    save_dir: str) -> str:
  """Metrics of every output that has a target; writes jsonl and table.

  Returns:
    The markdown table.

  Raises:
    ValueError: no item has both a target video and an output.
  """
  clips = []
  without_target = without_output = 0
  for item in items:
    output_path = os.path.join(save_dir, item.output_name)
    if item.target_video is None:
      without_target += 1
      continue
    if not os.path.exists(output_path):
      without_output += 1
      continue
    output = video_io.read_video(output_path)
    target = video_io.read_video(item.target_video, max_frames=len(output))
    clips.append(metrics.clip_metrics(item.output_name, item.edit_type,
                                      output, target))
  if not clips:
    raise ValueError(
        f'no output in {save_dir} has a ground truth: {without_target} '
        f'items lack `tgt_video`, {without_output} outputs are missing')
  if without_target or without_output:
    logging.warning('metrics: %d items without tgt_video, %d outputs missing',
                    without_target, without_output)
  jsonl.write_atomic(os.path.join(save_dir, 'metrics.jsonl'),
                     [dataclasses.asdict(c) for c in clips])
  table = metrics.metrics_table(clips, f'metrics · {save_dir}')
  jsonl.write_text_atomic(os.path.join(save_dir, 'metrics.md'), table)
  return table
