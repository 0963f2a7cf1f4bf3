"""M-RoPE position ids of a Qwen2.5-VL prompt (host side, numpy).

Follows ``Qwen2_5_VLModel.get_rope_index`` of the reference's patched copy of
transformers 4.57 (Kiwi-Edit ``diffsynth/models/modeling_qwen2_5_vl.py``):

* text tokens get ``(p, p, p)`` with ``p`` counting up by one;
* a visual whose ``<|vision_start|>`` is followed by ``<|image_pad|>`` or
  ``<|video_pad|>`` occupies ``t * (h/2) * (w/2)`` pad tokens; its tokens get
  ``(start + time, start + row, start + col)`` where ``time`` is
  ``k * int(second_per_grid_t) * tokens_per_second`` for temporal grid ``k``
  (the reference casts ``second_per_grid_t`` to an integer tensor before the
  product; images use 0);
* the text after a visual continues at ``max(previous positions) + 1``,
  which includes the temporal positions.

transformers 5.x changed the last rule to ``start + max(h, w) / 2`` (ignoring
time) and no longer truncates ``second_per_grid_t``; the two agree whenever
``max(h, w) / 2 > max time index``, which holds for Kiwi's usual videos but
not for small square frames (tests/models/mllm/test_rope_index.py). We copy
the reference the released weights were trained with.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mrope_position_ids(
  input_ids: Sequence[int] | np.ndarray,
  *,
  image_grid_thw: Sequence[Sequence[int]] = (),
  video_grid_thw: Sequence[Sequence[int]] = (),
  second_per_grid_ts: Sequence[float] | None = None,
  image_token_id: int,
  video_token_id: int,
  vision_start_token_id: int,
  spatial_merge_size: int = 2,
  tokens_per_second: int = 2,
) -> np.ndarray:
  """Position ids of one unpadded prompt.

  Args:
    input_ids: int[T] token ids with pad tokens already expanded.
    image_grid_thw: (t, h, w) patch grid of each image, in prompt order.
    video_grid_thw: same for videos.
    second_per_grid_ts: seconds per temporal grid of each video (default
      1.0 each, what Kiwi's processor call produces).
    image_token_id, video_token_id, vision_start_token_id: special ids.
    spatial_merge_size: merge size of the vision tower.
    tokens_per_second: ``vision_config.tokens_per_second``.

  Returns:
    int32[3, T] temporal, height and width positions.
  """
  ids = np.asarray(input_ids).reshape(-1)
  images, videos = list(image_grid_thw), list(video_grid_thw)
  seconds = (
    list(second_per_grid_ts)
    if second_per_grid_ts is not None
    else [1.0] * len(videos)
  )
  if len(seconds) != len(videos):
    raise ValueError(
      f"{len(seconds)} second_per_grid_ts for {len(videos)} videos."
    )
  starts = np.flatnonzero(ids[:-1] == vision_start_token_id)
  kinds = ids[starts + 1]
  n_img = int(np.sum(kinds == image_token_id))
  n_vid = int(np.sum(kinds == video_token_id))
  if n_img != len(images) or n_vid != len(videos):
    raise ValueError(
      f"Prompt has {n_img} images and {n_vid} videos after "
      f"<|vision_start|> but got {len(images)} image and {len(videos)} "
      "video grids."
    )
  parts: list[np.ndarray] = []
  next_pos = 0
  cursor = 0
  image_i = video_i = 0
  for kind in kinds:
    if kind == image_token_id:
      (t, h, w), step = images[image_i], 0
      image_i += 1
      token = image_token_id
    elif kind == video_token_id:
      t, h, w = videos[video_i]
      step = int(seconds[video_i]) * tokens_per_second
      video_i += 1
      token = video_token_id
    else:
      continue
    first = int(np.flatnonzero(ids[cursor:] == token)[0]) + cursor
    text_len = first - cursor
    parts.append(np.broadcast_to(np.arange(text_len) + next_pos, (3, text_len)))
    lh, lw = int(h) // spatial_merge_size, int(w) // spatial_merge_size
    tt, hh, ww = np.meshgrid(
      np.arange(int(t)) * step, np.arange(lh), np.arange(lw), indexing="ij"
    )
    block = np.stack([tt.reshape(-1), hh.reshape(-1), ww.reshape(-1)])
    block = block + next_pos + text_len
    n_tokens = block.shape[1]
    if not np.all(ids[first : first + n_tokens] == token):
      raise ValueError(
        f"Visual at token {first} needs {n_tokens} consecutive pad tokens "
        f"(grid {(t, h, w)}); the prompt has fewer."
      )
    parts.append(block)
    next_pos = int(block.max()) + 1
    cursor = first + n_tokens
  tail = ids.size - cursor
  parts.append(np.broadcast_to(np.arange(tail) + next_pos, (3, tail)))
  return np.concatenate(parts, axis=1).astype(np.int32)


def text_position_ids(length: int) -> np.ndarray:
  """int32[3, length] positions of a text-only prompt."""
  return np.broadcast_to(np.arange(length, dtype=np.int32), (3, length)).copy()
