"""Shared fixtures: one small RefVIE-mini dataset and its records."""

import pytest

from kiwi_jax.data import refvie_mini

# Small and prime-ish counts: 13 videos cover every edit type twice (+1), 5
# images the instruction-only types; 64x64x5 clips encode in milliseconds.
NUM_VIDEOS = 13
NUM_IMAGES = 5
CFG = refvie_mini.MiniConfig(height=64, width=64, num_frames=5, ref_size=32)


@pytest.fixture(scope="session")
def mini_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("refvie_mini")
  refvie_mini.write_dataset(
    out, num_videos=NUM_VIDEOS, num_images=NUM_IMAGES, seed=0, cfg=CFG
  )
  return out


@pytest.fixture(scope="session")
def mini_records(mini_dir, tmp_path_factory):
  """{"image"|"video"|"ref": record directory}, two shards each."""
  csvs = {
    name: mini_dir / f"refvie_mini_{name}.csv"
    for name in ("image", "video", "ref")
  }
  return refvie_mini.build_records(
    mini_dir, tmp_path_factory.mktemp("records"), csvs, cfg=CFG, num_shards=2
  )
