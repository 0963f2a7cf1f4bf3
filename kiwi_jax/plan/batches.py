"""Batches of the right shapes, built from a config without a tokenizer.

The training data pipeline runs Qwen's processor on every example
(``kiwi_task.KiwiMllmHook``): the tokenizer renders the chat and the
vision preprocessing fixes each visual's patch grid. Compiling needs the
shapes only, and the shapes depend on the visual sizes, not on the words,
so this module builds each example's MLLM inputs from:

* the patch grids the real preprocessing computes from frame sizes alone
  (``vision_preprocess.video_frame_size`` / ``smart_resize``), at the
  frame count it keeps (``sample_frame_indices``);
* a token sequence laid out as the processor lays it out (system prompt
  and instruction as :data:`TEXT_TOKENS` filler tokens, the vision blocks
  with their pad tokens expanded, the query placeholders), with real
  M-RoPE positions and vision metadata;
* ``bucketing.pad_example``, as the hook pads (``kiwi.seq_len`` /
  ``kiwi.num_patches``, or the bucket ladders).

Videos are ``jax.ShapeDtypeStruct`` (uint8 frames, never materialised);
the MLLM arrays are small numpy arrays, so the FLOP formula can read the
vision segments as it does on real batches.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from kiwi_jax.media import transforms
from kiwi_jax.models.mllm import bucketing
from kiwi_jax.models.mllm import vision_preprocess as vp
from kiwi_jax.models.mllm.rope_index import mrope_position_ids

# Tokens of the rendered chat around the visuals: the system prompt and
# template (about 40) and an instruction (about 30). Padding to the
# sequence bucket absorbs the difference to a real prompt.
TEXT_TOKENS = (40, 30)
# The aspect ratio of clips without ``data.fixed_size``: 16:9 landscape,
# the released 720 x 1280 resolution.
DEFAULT_ASPECT = (720, 1280)


@dataclasses.dataclass(frozen=True)
class ClipShape:
  """One kind of batch: its mode, frames and frame size."""

  mode: str  # "image", "video" or "reference"
  frames: int
  height: int
  width: int


def clip_shapes(
  config: Any, aspect: tuple[int, int] = DEFAULT_ASPECT
) -> list[ClipShape]:
  """The batch kinds a training config's data mix produces (one per
  source: ``image`` sources are 1 frame, ``ref`` sources reference mode).

  A config without sources (the CPU demo) gets the modes of its stage at
  ``demo.num_frames`` frames.
  """
  kiwi = config.kiwi
  data = kiwi.data
  fixed = data.get("fixed_size")
  if fixed:
    height, width = (int(n) for n in fixed)
  else:
    height, width = transforms.size_for_pixel_budget(
      aspect[0], aspect[1], int(data.max_pixels), int(data.size_multiple)
    )
  sources = list(data.sources or [])
  if not sources:
    frames = int(config.get("demo", {}).get("num_frames", 5))
    names = ("image", "video", "ref")[: int(kiwi.stage)]
    sources = [
      {"name": n, "max_frames": 1 if n == "image" else frames} for n in names
    ]
  out = []
  for source in sources:
    name = str(source["name"])
    frames = transforms.clip_length(
      int(source["max_frames"]), int(source["max_frames"])
    )
    mode = (
      "reference"
      if name.startswith("ref")
      else "image"
      if frames == 1
      else "video"
    )
    shape = ClipShape(mode, frames, height, width)
    if shape not in out:
      out.append(shape)
  return out


def _image_grid(height: int, width: int, max_pixels: int | None):
  h, w = vp.smart_resize(
    height,
    width,
    vp.IMAGE_FACTOR,
    vp.IMAGE_MIN_PIXELS,
    vp.IMAGE_MAX_PIXELS if max_pixels is None else max_pixels,
  )
  return (1, h // vp.PATCH_SIZE, w // vp.PATCH_SIZE)


def _video_grid(
  frames: int,
  height: int,
  width: int,
  max_pixels: int | None,
  min_pixels: int | None = None,
):
  kept = len(vp.sample_frame_indices(frames))
  h, w = vp.video_frame_size(height, width, kept, max_pixels, min_pixels)
  return (
    -(-kept // vp.TEMPORAL_PATCH_SIZE),
    h // vp.PATCH_SIZE,
    w // vp.PATCH_SIZE,
  )


def mllm_example(
  model_cfg: Any, clip: ClipShape, *, seq_len: int = 0, num_patches: int = 0
) -> dict[str, np.ndarray]:
  """One padded MLLM example of the hook's layout (no ``grid_thw``).

  Args:
    model_cfg: the ``KiwiEditConfig``.
    clip: the clip's mode and size (the reference image is the clip's
      size, as the pipeline pads it).
    seq_len, num_patches: ``kiwi.seq_len`` / ``kiwi.num_patches`` (0:
      the bucket ladders).
  """
  mc = model_cfg.mllm
  unit = mc.vision.merge_unit
  per_frame = model_cfg.mllm_max_pixels_per_frame
  images, videos = [], []
  if clip.mode == "image":
    images.append(_image_grid(clip.height, clip.width, None))
  else:
    videos.append(
      _video_grid(
        clip.frames,
        clip.height,
        clip.width,
        per_frame,
        model_cfg.mllm_video_min_pixels,
      )
    )
  if clip.mode == "reference":
    images.append(
      _image_grid(clip.height, clip.width, 28 * 28 * model_cfg.max_ref_tokens)
    )
  filler = 0
  prefix, instruction = TEXT_TOKENS

  def block(token, grid):
    return (
      [mc.vision_start_token_id]
      + [token] * (int(np.prod(grid)) // unit)
      + [mc.vision_end_token_id]
    )

  ids = [filler] * prefix
  if clip.mode == "image":
    ids += block(mc.image_token_id, images[0])
  else:
    ids += block(mc.video_token_id, videos[0])
  ids += [filler] * instruction
  ref_span = np.zeros(2, np.int32)
  if clip.mode == "reference":
    start = len(ids) + 1
    ids += block(mc.image_token_id, images[-1])
    ref_span = np.asarray([start, len(ids) - 1], np.int32)
  queries = model_cfg.num_queries(clip.mode)
  ids = np.asarray(ids + [mc.query_token_id] * queries + [filler] * 2, np.int64)
  positions = mrope_position_ids(
    ids,
    image_grid_thw=images,
    video_grid_thw=videos,
    image_token_id=mc.image_token_id,
    video_token_id=mc.video_token_id,
    vision_start_token_id=mc.vision_start_token_id,
    spatial_merge_size=mc.vision.spatial_merge_size,
    tokens_per_second=mc.vision.tokens_per_second,
  )
  grids = np.asarray(images + videos, np.int32)  # images first (processor)
  rows = int(sum(np.prod(g) for g in grids))
  example = {
    "input_ids": ids.astype(np.int32),
    "position_ids": positions,
    "pixel_values": np.zeros((rows, mc.vision.patch_dim), np.float32),
    "grid_thw": grids,
    "num_queries": np.int32(queries),
    "ref_span": ref_span,
  }
  out = bucketing.pad_example(
    example,
    mc.vision,
    pad_token_id=filler,
    seq_len=seq_len or None,
    num_patches=num_patches or None,
  )
  del out["grid_thw"]
  return out


def train_batch(task: Any, clip: ClipShape, batch_size: int) -> dict[str, Any]:
  """A host batch of ``batch_size`` examples as ``KiwiTask`` reads it:
  ``source_video`` / ``target_video`` (+ ``ref_image``) as uint8 shape
  structs, ``mllm`` as stacked numpy arrays."""
  kiwi = task.config.kiwi
  one = mllm_example(
    task.model_cfg,
    clip,
    seq_len=int(kiwi.seq_len),
    num_patches=int(kiwi.num_patches),
  )
  video = jax.ShapeDtypeStruct(
    (batch_size, clip.frames, clip.height, clip.width, 3), np.uint8
  )
  batch = {
    "source_video": video,
    "target_video": video,
    "mllm": {k: np.stack([v] * batch_size) for k, v in one.items()},
  }
  if clip.mode == "reference":
    batch["ref_image"] = jax.ShapeDtypeStruct(
      (batch_size, clip.height, clip.width, 3), np.uint8
    )
  return batch


def with_shardings(batch: Any, sharding_of) -> Any:
  """Shape structs of every leaf, with ``sharding_of(leaf)``."""
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(
      np.shape(x), x.dtype, sharding=sharding_of(x)
    ),
    batch,
  )


__all__ = [
  "ClipShape",
  "DEFAULT_ASPECT",
  "TEXT_TOKENS",
  "clip_shapes",
  "mllm_example",
  "train_batch",
  "with_shardings",
]
