"""Shared fixtures: RefVIE-mini as an instruction-only pool, plus planted
pairs that the pipeline must reject (or de-duplicate) for a known reason."""

import csv
import json

import numpy as np
import pytest

from kiwi_jax.data import metadata, refvie_mini, video_io
from kiwi_jax.refvie import run_local as pipeline_local
from kiwi_jax.refvie.types import Pair

# 13 videos: every edit type twice, one thrice; 64x64x5 clips (tiny, fast);
# 4 one-frame image pairs (the instruction-only types).
NUM_VIDEOS = 13
NUM_IMAGES = 4
CFG = refvie_mini.MiniConfig(height=64, width=64, num_frames=5, ref_size=32)
POOL_CSV = "pool.csv"

# Planted pairs: key -> (stage, reason) the pipeline must give.
PLANTED = {
  "p_same": ("quality", "no_edit"),
  "p_noise": ("quality", "no_edit"),
  "p_flicker": ("quality", "unstable_target"),
  "p_unrelated": ("quality", "total_change"),
  "p_global_as_local": ("grounding", "global_change"),
  "p_style": ("grounding", "style_edit"),
  "p_missing": ("input", "missing_file"),
  "p_corrupt": ("input", "unreadable_media"),
  "p_no_prompt": ("input", "empty_prompt"),
  "x_dup_exact": ("dedup", "duplicate"),
  "x_dup_brighter": ("dedup", "duplicate"),
}
# What the instruction-only RefVIE-mini pairs must give, by edit type.
EXPECTED_BY_TYPE = {
  "local_recolor": ("accepted", "subject"),
  "local_add": ("accepted", "subject"),
  "subject_reference": ("accepted", "subject"),
  "background_change": ("accepted", "background"),
  "background_reference": ("accepted", "background"),
  "local_remove": ("grounding", "removal_edit"),
}


def grade(frames: np.ndarray, gain=(1.15, 0.9, 0.8), bias=20.0) -> np.ndarray:
  """A global colour grade: every pixel changes, the structure stays."""
  out = frames.astype(np.float32) * np.array(gain, np.float32) + bias
  return np.clip(out, 0, 255).astype(np.uint8)


def _write_video(path, frames):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(video_io.encode_video(frames, fps=CFG.fps, lossless=True))


def planted_pairs(mini_dir):
  """Writes the planted pairs' media; returns their CSV rows."""
  recolor = refvie_mini.make_sample(0, 0, CFG, "local_recolor")
  other = refvie_mini.make_sample(5, 1, CFG, "local_add")
  rng = np.random.default_rng(0)
  src = recolor.source
  noisy = np.clip(src + rng.normal(0, 2, src.shape), 0, 255).astype(np.uint8)
  flicker = recolor.target.astype(np.int16)
  flicker[1::2] += 60
  flicker = np.clip(flicker, 0, 255).astype(np.uint8)
  brighter = lambda x: np.clip(x.astype(np.int16) + 2, 0, 255).astype(np.uint8)
  cases = {
    "p_same": (src, src, recolor.prompt),
    "p_noise": (src, noisy, recolor.prompt),
    "p_flicker": (src, flicker, recolor.prompt),
    # Another clip (graded off the palette, so no pixel matches by chance).
    "p_unrelated": (
      src,
      grade(other.target, (0.5, 1.2, 0.7), 7.0),
      recolor.prompt,
    ),
    "p_global_as_local": (src, grade(recolor.target), recolor.prompt),
    "p_style": (src, recolor.target, "Make it look like an oil painting."),
    # Copies of pool pair v000000 (same pair as `recolor`); equal scores,
    # so the smaller key is kept: the copies' keys sort after it.
    "x_dup_exact": (src, recolor.target, recolor.prompt),
    "x_dup_brighter": (brighter(src), brighter(recolor.target), recolor.prompt),
  }
  rows = []
  for key, (source, target, prompt) in cases.items():
    _write_video(mini_dir / "planted" / f"{key}_src.mp4", source)
    _write_video(mini_dir / "planted" / f"{key}_tgt.mp4", target)
    rows.append(
      {
        "iid": key,
        "src_video": f"planted/{key}_src.mp4",
        "tgt_video": f"planted/{key}_tgt.mp4",
        "prompt": prompt,
      }
    )
  rows.append(
    {
      "iid": "p_missing",
      "src_video": "planted/nowhere.mp4",
      "tgt_video": "planted/nowhere_tgt.mp4",
      "prompt": recolor.prompt,
    }
  )
  (mini_dir / "planted" / "corrupt.mp4").write_bytes(b"not a video")
  rows.append(
    {
      "iid": "p_corrupt",
      "src_video": "planted/p_same_src.mp4",
      "tgt_video": "planted/corrupt.mp4",
      "prompt": recolor.prompt,
    }
  )
  rows.append(
    {
      "iid": "p_no_prompt",
      "src_video": "planted/p_same_src.mp4",
      "tgt_video": "planted/x_dup_exact_tgt.mp4",
      "prompt": " ",
    }
  )
  return rows


@pytest.fixture(scope="session")
def mini_pool(tmp_path_factory):
  """(directory, pool CSV path, {key: edit type}) of RefVIE-mini as
  instruction-only pairs (true references withheld) plus planted pairs."""
  out = tmp_path_factory.mktemp("refvie_pool")
  csvs = refvie_mini.write_dataset(
    out, num_videos=NUM_VIDEOS, num_images=NUM_IMAGES, seed=0, cfg=CFG
  )
  rows = []
  for name in ("video", "ref", "image"):
    with open(csvs[name]) as f:
      for row in csv.DictReader(f):
        row.pop("ref_image", None)  # withheld: the pipeline must make one
        rows.append(row)
  rows.extend(planted_pairs(out))
  with open(out / POOL_CSV, "w", newline="") as f:
    writer = csv.DictWriter(
      f, ["iid", "src_video", "tgt_video", "prompt"], lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(rows)
  types = {}
  for line in (out / "metadata.jsonl").read_text().splitlines():
    meta = json.loads(line)
    types[meta["key"]] = meta["edit_type"]
  return out, out / POOL_CSV, types


def as_pair(sample) -> Pair:
  """The instruction-only view of a RefVIE-mini sample."""
  return Pair(sample.key, sample.prompt, sample.source, sample.target)


def pool_rows(pool_csv):
  return metadata.read_csv_rows(pool_csv)


@pytest.fixture(scope="session")
def local_run(mini_pool, tmp_path_factory):
  """(output directory, report) of the single-machine driver on the pool."""
  base, pool_csv, _ = mini_pool
  out = tmp_path_factory.mktemp("refvie_local")
  report = pipeline_local.run_local(
    pool_rows(pool_csv), base, out, chunk_size=7, progress=False
  )
  return out, report
