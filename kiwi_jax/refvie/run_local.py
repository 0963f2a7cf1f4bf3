"""The single-machine driver: a process pool and a resumable output directory.

Rows are cut into chunks of `chunk_size` in input order; each finished chunk
is committed as one file, `work/chunk-NNNNNN.jsonl` (written under a
temporary name, then renamed), after its pairs' media. A run that stops
(crash, pre-emption, Ctrl-C) is resumed by running the same command again:
committed chunks are skipped, the rest is processed, and the whole-set
steps (de-duplication, the CSV and the report) are redone from all chunks,
which is cheap. `work/manifest.json` records the input and the pipeline; a
resume with a different one is refused instead of mixing two runs.
"""

import concurrent.futures
import hashlib
import json
import multiprocessing
import shutil
from collections.abc import Sequence
from typing import Any

import tqdm
from etils import epath

from kiwi_jax.data.metadata import Row
from kiwi_jax.refvie import dedup, records
from kiwi_jax.refvie.process import Pipeline
from kiwi_jax.refvie.records import Outcome
from kiwi_jax.utils import atomic

_WORKER: dict[str, Any] = {}


def check_unique_keys(rows: Sequence[Row]) -> None:
  """Raises ValueError naming the first key that two rows share."""
  seen: dict[str, str] = {}
  for row in rows:
    if row.key in seen:
      raise ValueError(
        f"key {row.key!r} appears twice: {seen[row.key]} and "
        f"{row.origin}; keys name the output files"
      )
    seen[row.key] = row.origin


def manifest(rows: Sequence[Row], base_dir, pipeline: Pipeline) -> dict:
  """What identifies a run: its input rows, base directory and pipeline."""
  digest = hashlib.sha256()
  for row in rows:
    digest.update(
      json.dumps([row.key, row.src_video, row.tgt_video, row.prompt]).encode()
    )
    # Inline media (ArrayRecord input) is identified by content, not by its
    # record locator, so rewritten shards are not mistaken for the same run.
    for data in (row.src_bytes, row.tgt_bytes):
      if data is not None:
        digest.update(hashlib.sha256(data).digest())
  return {
    "base_dir": str(base_dir),
    "num_rows": len(rows),
    "rows_sha256": digest.hexdigest(),
    "pipeline": pipeline.fingerprint(),
  }


def prepare_out_dir(
  out_dir: epath.Path, expected: dict, overwrite: bool
) -> None:
  """Creates `out_dir/work`, checking an existing run matches `expected`."""
  work = out_dir / "work"
  path = work / "manifest.json"
  if overwrite and out_dir.exists():
    for name in ("work", "media"):
      if (out_dir / name).exists():
        shutil.rmtree(out_dir / name)
    for name in ("refvie.csv", "provenance.jsonl", "report.json"):
      (out_dir / name).unlink(missing_ok=True)
  if path.exists():
    found = json.loads(path.read_text())
    if found != expected:
      changed = sorted(k for k in expected if found.get(k) != expected[k])
      raise ValueError(
        f"{out_dir} holds a run with different {', '.join(changed)}; "
        "resume with the same input and settings, use another --out_dir, "
        "or pass --overwrite"
      )
    return
  work.mkdir(parents=True, exist_ok=True)
  atomic.write_bytes(path, json.dumps(expected, indent=1).encode())


def _init_worker(pipeline: Pipeline, base_dir: str, out_dir: str) -> None:
  _WORKER.update(pipeline=pipeline, base_dir=base_dir, out_dir=out_dir)


def _process(row: Row) -> str:
  outcome = _WORKER["pipeline"].process(
    row, _WORKER["base_dir"], _WORKER["out_dir"]
  )
  return outcome.to_json()


def deduplicate(
  outcomes: Sequence[Outcome], config: dedup.DedupConfig
) -> list[Outcome]:
  """Marks near-duplicates among the accepted outcomes (dedup module)."""
  candidates = [
    dedup.Candidate(o.key, o.priority, tuple(o.signature))
    for o in outcomes
    if o.status == "accepted"
  ]
  return records.mark_duplicates(
    outcomes, dedup.find_duplicates(candidates, config)
  )


def run_local(
  rows: Sequence[Row],
  base_dir: str | epath.Path,
  out_dir: str | epath.Path,
  pipeline: Pipeline = Pipeline(),
  *,
  num_workers: int = 0,
  chunk_size: int = 64,
  overwrite: bool = False,
  progress: bool = True,
) -> dict[str, Any]:
  """Runs the whole pipeline on one machine; returns the report.

  Args:
    rows: instruction-edit pairs (`kiwi_jax.data.metadata` rows, with media
      paths or inline media); any reference image they carry is ignored, a
      scaffold is synthesised.
    base_dir: the directory media paths are relative to.
    out_dir: output directory (layout in `records`), resumable.
    pipeline: the stages and options.
    num_workers: worker processes; 0 processes in this process.
    chunk_size: pairs per committed chunk (the unit of resumption).
    overwrite: discard an existing run in `out_dir` first.
    progress: show a progress bar on stderr.
  """
  rows = list(rows)
  check_unique_keys(rows)
  base_dir, out_dir = epath.Path(base_dir), epath.Path(out_dir)
  prepare_out_dir(out_dir, manifest(rows, base_dir, pipeline), overwrite)
  chunks = [rows[i : i + chunk_size] for i in range(0, len(rows), chunk_size)]
  paths = [
    out_dir / "work" / f"chunk-{i:06d}.jsonl" for i in range(len(chunks))
  ]
  todo = [i for i, p in enumerate(paths) if not p.exists()]
  done_rows = len(rows) - sum(len(chunks[i]) for i in todo)
  bar = tqdm.tqdm(
    total=len(rows),
    initial=done_rows,
    unit="pair",
    desc="refvie",
    disable=not progress,
  )
  pool = None
  if num_workers > 0 and todo:
    pool = concurrent.futures.ProcessPoolExecutor(
      num_workers,
      mp_context=multiprocessing.get_context("spawn"),
      initializer=_init_worker,
      initargs=(pipeline, str(base_dir), str(out_dir)),
    )
  else:
    _init_worker(pipeline, str(base_dir), str(out_dir))
  try:
    for i in todo:
      mapper = pool.map if pool else map
      lines = []
      for line in mapper(_process, chunks[i]):
        lines.append(line)
        bar.update(1)
      atomic.write_bytes(paths[i], "".join(ln + "\n" for ln in lines).encode())
  finally:
    bar.close()
    if pool:
      pool.shutdown(cancel_futures=True)
  outcomes = [
    Outcome.from_json(line)
    for p in paths
    for line in p.read_text().splitlines()
  ]
  return records.finalize(out_dir, deduplicate(outcomes, pipeline.dedup))
