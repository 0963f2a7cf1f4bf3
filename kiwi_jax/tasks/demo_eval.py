"""The CPU demo's evaluation: edit held-out clips, score them two ways.

For each held-out RefVIE-mini clip (its generator knows the edited region
and the true target) the stage-3 ``EditPipeline`` edits the source with
the clip's instruction (and reference). Two measures per edit type:

1. **edit success** (``kiwi_jax.evaluators.edit_success``): inside the
   edited region the output is closer to the target than to the source,
   and outside it the output has not changed by more than the tolerance;
2. **PSNR to the target**, next to the identity baseline (the unchanged
   source).

``evaluate`` writes ``results.json`` (both measures per type, and per
clip), ``results.md`` (both tables), ``edits/<key>_<type>.mp4``
(``source | edit | target``), the held-out inputs
(``edits/<key>_source.mp4``, ``edits/<key>_ref.png``, for ``kiwi-edit``) and ``edits/grid.png`` (the middle frame of
the first clips of each type, ``source | edit | target`` per row, scaled
up 4x for the eye).
"""

from __future__ import annotations

import collections
import json
from typing import Any

import numpy as np
from etils import epath

from kiwi_jax.data import refvie_mini
from kiwi_jax.evaluators import edit_success
from kiwi_jax.media import compare, video_io
from kiwi_jax.tasks.kiwi_config import DemoConfig
from kiwi_jax.utils import atomic

# Rows per edit type in ``edits/grid.png``, and its nearest-neighbour scale.
GRID_ROWS_PER_TYPE = 2
GRID_SCALE = 4


def _grid_row(source, edited, target) -> np.ndarray:
  middle = len(source) // 2
  gap = np.full((source.shape[1], 2, 3), 255, np.uint8)
  row = np.concatenate(
    [source[middle], gap, edited[middle], gap, target[middle]], axis=1
  )
  return row.repeat(GRID_SCALE, 0).repeat(GRID_SCALE, 1)


def grid_png(rows: list[np.ndarray]) -> bytes:
  """The rows stacked with a white gap, as PNG bytes."""
  gap = np.full((2 * GRID_SCALE, rows[0].shape[1], 3), 255, np.uint8)
  parts = []
  for row in rows:
    parts += [row, gap]
  return video_io.encode_png(np.concatenate(parts[:-1], axis=0))


def tables(summary: dict[str, Any]) -> str:
  """The two markdown tables of a ``results.json`` summary."""
  success = [
    "| edit type | clips | success | inside ok | outside ok |",
    "| --- | --- | --- | --- | --- |",
  ]
  psnr = [
    "| edit type | clips | model PSNR (dB) | identity PSNR (dB) |",
    "| --- | --- | --- | --- |",
  ]
  for name, row in summary.items():
    bold = "**" if name == "overall" else ""
    label = "**mean**" if name == "overall" else name
    success.append(
      f"| {label} | {row['clips']} | {bold}{100 * row['success_rate']:.0f}%"
      f"{bold} | {100 * row['in_region_rate']:.0f}% | "
      f"{100 * row['outside_rate']:.0f}% |"
    )
    psnr.append(
      f"| {label} | {row['clips']} | {bold}{row['psnr']:.2f}{bold} | "
      f"{bold}{row['identity_psnr']:.2f}{bold} |"
    )
  return "\n".join(success) + "\n\n" + "\n".join(psnr)


def evaluate(config: Any, pipe, workdir: epath.Path, samples) -> str:
  """Edits ``samples`` with ``pipe``; writes the results; returns the
  markdown tables."""
  demo = DemoConfig.from_config(config.demo)
  scores = []
  psnrs = collections.defaultdict(list)
  clips, grid_rows = [], collections.defaultdict(list)
  edits_dir = workdir / "edits"
  edits_dir.mkdir(parents=True, exist_ok=True)
  for sample in samples:
    # The source is already 4k+1 frames at a multiple of 32: kept as is.
    edited = pipe.edit(
      sample.source,
      sample.prompt,
      sample.ref_image,
      steps=demo.sample_steps,
      seed=0,
      max_frames=demo.num_frames,
      max_pixels=demo.height * demo.width,
      denoising_strength=demo.denoising_strength,
    ).frames
    source, target = sample.source, sample.target
    score = edit_success.score_sample(edited, sample)
    scores.append((sample.edit_type, score))
    pair = (compare.psnr(edited, target), compare.psnr(source, target))
    psnrs[sample.edit_type].append(pair)
    clips.append(
      {
        "key": sample.key,
        "edit_type": sample.edit_type,
        "prompt": sample.prompt,
        "source_video": f"edits/{sample.key}_source.mp4",
        **(
          {"ref_image": f"edits/{sample.key}_ref.png"}
          if sample.ref_image is not None
          else {}
        ),
        "psnr": pair[0],
        "identity_psnr": pair[1],
        **score.to_json(),
      }
    )
    if len(grid_rows[sample.edit_type]) < GRID_ROWS_PER_TYPE:
      grid_rows[sample.edit_type].append(_grid_row(source, edited, target))
    # The held-out inputs as files, for ``kiwi-edit`` (README).
    atomic.write_bytes(
      edits_dir / f"{sample.key}_source.mp4",
      video_io.encode_video(source, fps=4, lossless=True),
    )
    if sample.ref_image is not None:
      atomic.write_bytes(
        edits_dir / f"{sample.key}_ref.png",
        video_io.encode_png(sample.ref_image),
      )
    atomic.write_bytes(
      edits_dir / f"{sample.key}_{sample.edit_type}.mp4",
      video_io.encode_video(
        compare.side_by_side(source, edited, target), fps=4, lossless=True
      ),
    )
  ordered = [t for t in refvie_mini.EDIT_TYPES if t in psnrs]
  rates = edit_success.aggregate(scores)
  summary = {**rates["by_type"], "overall": rates["overall"]}
  for name in ordered + ["overall"]:
    pairs = np.array(
      psnrs[name] if name != "overall" else sum(psnrs.values(), []),
      np.float64,
    )
    summary[name]["psnr"] = float(pairs[:, 0].mean())
    summary[name]["identity_psnr"] = float(pairs[:, 1].mean())
  summary = {name: summary[name] for name in ordered + ["overall"]}
  atomic.write_bytes(
    edits_dir / "grid.png",
    grid_png([row for t in ordered for row in grid_rows[t]]),
  )
  atomic.write_text(
    workdir / "results.json",
    json.dumps(
      {
        "outside_tolerance": edit_success.DEFAULT_RHO,
        "summary": summary,
        "clips": clips,
      },
      indent=2,
    )
    + "\n",
  )
  return tables(summary)
