"""Throughput of the RefVIE construction pipeline per pair, by stage.

  python bench/refvie_throughput.py [--pairs=2] [--height=480] [--width=832]
      [--frames=81] [--analysis_max_side=512]

There is no reference implementation to compare with (the original RefVIE
pipeline was not released, reference §6.2), so the ratio printed is the process
pool's speed-up over one process on the same pairs, measured in this run.
Pairs are RefVIE-mini edits rendered at the given size (lossless H.264 on
disk); per-stage seconds come from running the stages in this process.
"""

import argparse
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=g-import-not-at-top,wrong-import-position
from kiwi_jax.data import metadata, refvie_mini
from kiwi_jax.media import video_io
from kiwi_jax.refvie import dedup, process
from kiwi_jax.refvie import run_local as pipeline_local
from kiwi_jax.refvie.types import Pair

EDITS = ("local_recolor", "background_change", "subject_reference", "local_add")


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--pairs", type=int, default=2)
  parser.add_argument("--height", type=int, default=480)
  parser.add_argument("--width", type=int, default=832)
  parser.add_argument("--frames", type=int, default=81)
  parser.add_argument("--analysis_max_side", type=int, default=512)
  args = parser.parse_args()
  cfg = refvie_mini.MiniConfig(
    height=args.height, width=args.width, num_frames=args.frames, ref_size=64
  )
  pipe = process.Pipeline(analysis_max_side=args.analysis_max_side)
  base = pathlib.Path(tempfile.mkdtemp(prefix="refvie_bench_"))
  rows, stage_seconds = [], {}
  print(
    f"rendering {args.pairs} pairs of {args.frames}x{args.height}x"
    f"{args.width} ...",
    flush=True,
  )
  for i in range(args.pairs):
    sample = refvie_mini.make_sample(0, i, cfg, EDITS[i % len(EDITS)])
    for name, frames in (("s", sample.source), ("t", sample.target)):
      (base / f"{i}{name}.mp4").write_bytes(
        video_io.encode_video(frames, lossless=True)
      )
    rows.append(
      metadata.Row(
        key=f"b{i}",
        origin="bench",
        prompt=sample.prompt,
        src_video=f"{i}s.mp4",
        tgt_video=f"{i}t.mp4",
      )
    )
    full = Pair(sample.key, sample.prompt, sample.source, sample.target)
    clock = time.perf_counter()
    pair = process.downscale(full, args.analysis_max_side)
    steps = [("start", clock), ("downscale", time.perf_counter())]
    pipe.quality(pair)
    steps.append(("quality", time.perf_counter()))
    found = pipe.grounder(pair)
    steps.append(("grounding", time.perf_counter()))
    scaffold = pipe.synthesizer(pair, found)
    if pair is not full:
      scaffold = pipe.synthesizer.at_resolution(
        scaffold, found.kind, full.target[scaffold.frame]
      )
    steps.append(("synthesis", time.perf_counter()))
    pipe.verifier(pair, found, scaffold)
    dedup.signature(pair.source, pair.target)
    steps.append(("verification+hash", time.perf_counter()))
    previous = clock
    for stage, stamp in steps[1:]:
      stage_seconds[stage] = stage_seconds.get(stage, 0.0) + stamp - previous
      previous = stamp
  print("seconds per pair, in process (decode excluded):")
  for stage, seconds in stage_seconds.items():
    print(f"  {stage:18s} {seconds / args.pairs:7.2f}")
  walls = {}
  for workers in (0, 2):
    out = base / f"out{workers}"
    start = time.perf_counter()
    pipeline_local.run_local(
      rows,
      base,
      out,
      pipe,
      num_workers=workers,
      chunk_size=args.pairs,
      progress=False,
    )
    walls[workers] = time.perf_counter() - start
    print(
      f"run_local num_workers={workers}: {walls[workers]:.1f} s, "
      f"{args.pairs / walls[workers]:.3f} pairs/s (decode + write "
      "included)"
    )
  print(f"ratio (2 workers / 1 process): {walls[0] / walls[2]:.2f}x")
  return 0


if __name__ == "__main__":
  sys.exit(main())
