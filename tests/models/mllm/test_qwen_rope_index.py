"""M-RoPE position ids and vision metadata (window order, segments)."""

import numpy as np
import pytest

from kiwi_jax.models.mllm import Qwen25VLConfig
from kiwi_jax.models.mllm.rope_index import mrope_position_ids
from kiwi_jax.models.mllm.vision import (
  PAD_SEGMENT,
  required_patches,
  vision_metadata,
)

CFG = Qwen25VLConfig.from_variant("tiny")
IDS = dict(
  image_token_id=CFG.image_token_id,
  video_token_id=CFG.video_token_id,
  vision_start_token_id=CFG.vision_start_token_id,
)
VS, VE = CFG.vision_start_token_id, CFG.vision_end_token_id


def _prompt(*parts):
  ids = []
  for kind, n in parts:
    if kind == "text":
      ids += [50] * n
    else:
      token = CFG.image_token_id if kind == "image" else CFG.video_token_id
      ids += [VS] + [token] * n + [VE]
  return np.asarray(ids)


def test_video_time_stride_and_text_continuation_follow_the_reference():
  # 8 temporal grids, llm grid 2 x 2: time positions 0, 2, ..., 14.
  ids = _prompt(("text", 2), ("video", 8 * 4), ("text", 3))
  pos = mrope_position_ids(ids, video_grid_thw=[(8, 4, 4)], **IDS)
  start = 3  # two text tokens and <|vision_start|>
  vis = pos[:, start : start + 32]
  np.testing.assert_array_equal(np.unique(vis[0]), start + np.arange(0, 16, 2))
  np.testing.assert_array_equal(vis[1, :4], start + np.array([0, 0, 1, 1]))
  np.testing.assert_array_equal(vis[2, :4], start + np.array([0, 1, 0, 1]))
  # Text resumes at max(vision positions) + 1 = start + 15 (the 4.57
  # reference; transformers 5 would resume at start + 2).
  np.testing.assert_array_equal(pos[:, start + 32], [start + 15] * 3)
  np.testing.assert_array_equal(pos[0, -3:], start + 15 + np.arange(1, 4))


def test_second_per_grid_is_truncated_like_the_reference():
  ids = _prompt(("video", 2 * 4))
  pos = mrope_position_ids(
    ids, video_grid_thw=[(2, 4, 4)], second_per_grid_ts=[0.5], **IDS
  )
  assert (pos[0, 1:9] == 1).all()  # int(0.5) == 0: no temporal stride


def test_grid_mismatch_is_reported():
  ids = _prompt(("image", 4))
  with pytest.raises(ValueError, match="1 images and 0 videos"):
    mrope_position_ids(ids, video_grid_thw=[(2, 4, 4)], **IDS)
  with pytest.raises(ValueError, match="consecutive pad tokens"):
    mrope_position_ids(ids, image_grid_thw=[(1, 4, 6)], **IDS)


@pytest.mark.torch
def test_positions_match_transformers_where_versions_agree():
  torch = pytest.importorskip("torch")
  from transformers import Qwen2_5_VLModel

  from kiwi_jax.converters.qwen2_5_vl import to_hf_config

  model = Qwen2_5_VLModel(to_hf_config(CFG))
  ids = _prompt(
    ("text", 4),
    ("video", 2 * 6 * 10 // 4),
    ("text", 5),
    ("image", 12 * 8 // 4),
    ("text", 2),
  )
  types = np.zeros_like(ids)
  types[ids == CFG.image_token_id] = 1
  types[ids == CFG.video_token_id] = 2
  ref, _ = model.get_rope_index(
    torch.from_numpy(ids)[None],
    torch.from_numpy(types)[None],
    image_grid_thw=torch.tensor([(1, 12, 8)]),
    video_grid_thw=torch.tensor([(2, 6, 10)]),
    second_per_grid_ts=torch.ones(1),
  )
  ours = mrope_position_ids(
    ids, image_grid_thw=[(1, 12, 8)], video_grid_thw=[(2, 6, 10)], **IDS
  )
  np.testing.assert_array_equal(ours, ref[:, 0].numpy())


@pytest.mark.torch
def test_vision_metadata_matches_transformers_windows_and_segments():
  torch = pytest.importorskip("torch")
  from transformers import vision_utils as vu

  grids = [(1, 12, 20), (2, 8, 12), (3, 10, 18)]
  n = sum(t * h * w for t, h, w in grids)
  slots = required_patches(grids, CFG.vision)
  meta = vision_metadata(grids, CFG.vision, num_patches=slots + 128)
  g = torch.tensor(grids)
  window_index, cu_windows = vu.get_vision_window_index(
    g, spatial_merge_size=2, window_size=112, patch_size=14
  )
  m, total = n // 4, (slots + 128) // 4
  real_slots = meta["window_segment_ids"][::4] != PAD_SEGMENT
  # Real slots, in order, are the reference's window order.
  np.testing.assert_array_equal(meta["window_index"][real_slots], window_index)
  assert (meta["window_index"][~real_slots] >= m).all()
  np.testing.assert_array_equal(
    meta["reverse_index"][meta["window_index"]], np.arange(total)
  )
  # Each window starts a 64-slot block.
  win = meta["window_segment_ids"].reshape(-1, 64)
  assert all(len(set(row[row != PAD_SEGMENT])) <= 1 for row in win)

  def boundaries(seg):
    seg = seg[seg != PAD_SEGMENT]
    return np.concatenate([[0], np.flatnonzero(np.diff(seg)) + 1, [n]])

  np.testing.assert_array_equal(
    boundaries(meta["window_segment_ids"]), cu_windows
  )
  np.testing.assert_array_equal(
    boundaries(meta["full_segment_ids"]), vu.get_vision_cu_seqlens(g)
  )
  np.testing.assert_array_equal(
    meta["positions"][:n], vu.get_vision_position_ids(g, 2)
  )
  assert meta["merged_mask"].sum() == m
  with pytest.raises(ValueError, match="window-aligned"):
    vision_metadata(grids, CFG.vision, num_patches=slots - 64)
