"""Static shapes for Qwen2.5-VL: pad to a few buckets, compile once each.

Every distinct (patch count, sequence length) would otherwise be a new XLA
program. :func:`pad_example` pads an example from ``processing`` to the
smallest bucket that fits and adds what keeps padding inert:

* patches: zero rows up to the bucket, which must hold the window-aligned
  slots (``vision.required_patches``); padding has its own attention
  segment (``vision.vision_metadata``), so real patches never see it;
* tokens: ``pad_token_id`` with ``segment_ids`` 0 (real tokens 1); the
  decoder is causal and padding sits at the end, so real tokens never see
  padding either.

:func:`collate` stacks padded examples into a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kiwi_jax.models.mllm.config import QwenVisionConfig
from kiwi_jax.models.mllm.vision import required_patches, vision_metadata

# Ladders with steps of at most 1.5x (multiples of the 64-slot vision
# window). Kiwi's inference input (16 frames at 262,144 px + a 768-token
# reference) needs 15,872 patch slots and ~4,200 tokens; training frames at
# 560 x 1008 need 26,112 slots. Each bucket is one compiled program.
PATCH_BUCKETS = (
  1024,
  2048,
  3072,
  4096,
  6144,
  8192,
  12288,
  16384,
  20480,
  24576,
  28672,
  32768,
)
SEQ_BUCKETS = (
  256,
  512,
  1024,
  1536,
  2048,
  3072,
  4096,
  5120,
  6144,
  8192,
  12288,
  16384,
)


def bucket_for(n: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= n."""
  for b in sorted(buckets):
    if n <= b:
      return b
  raise ValueError(
    f"{n} exceeds the largest bucket {max(buckets)}; add a larger one."
  )


def pad_example(
  example: dict[str, Any],
  vision_cfg: QwenVisionConfig,
  *,
  pad_token_id: int,
  patch_buckets=PATCH_BUCKETS,
  seq_buckets=SEQ_BUCKETS,
  num_patches: int | None = None,
  seq_len: int | None = None,
) -> dict[str, np.ndarray]:
  """Pads one ``QwenProcessor`` example.

  Args:
    example: the processor's dict.
    vision_cfg: vision config (merge unit, window size).
    pad_token_id: token id for padding (``<|endoftext|>``).
    patch_buckets, seq_buckets: allowed sizes.
    num_patches, seq_len: force these sizes instead of the buckets.

  Returns:
    ``input_ids`` int32[S], ``position_ids`` int32[3, S], ``segment_ids``
    int32[S], ``pixel_values`` float32[P, 1176] and the
    ``vision_metadata`` arrays for P patches; other keys pass through.
  """
  ids = np.asarray(example["input_ids"])
  pixels = np.asarray(example["pixel_values"], np.float32)
  slots = required_patches(example["grid_thw"], vision_cfg)
  s = seq_len or bucket_for(ids.size, seq_buckets)
  p = num_patches or bucket_for(slots, patch_buckets)
  if s < ids.size or p < slots:
    raise ValueError(
      f"Example of {ids.size} tokens / {slots} window-aligned "
      f"patch slots does not fit seq_len={s}, num_patches={p}."
    )
  out = dict(example)
  out["input_ids"] = np.pad(
    ids, (0, s - ids.size), constant_values=pad_token_id
  ).astype(np.int32)
  out["position_ids"] = np.pad(
    example["position_ids"], ((0, 0), (0, s - ids.size))
  ).astype(np.int32)
  out["segment_ids"] = (np.arange(s) < ids.size).astype(np.int32)
  out["pixel_values"] = np.pad(pixels, ((0, p - pixels.shape[0]), (0, 0)))
  out.update(vision_metadata(example["grid_thw"], vision_cfg, p))
  return out


def collate(
  examples: Sequence[dict[str, Any]],
  vision_cfg: QwenVisionConfig,
  *,
  pad_token_id: int,
  patch_buckets=PATCH_BUCKETS,
  seq_buckets=SEQ_BUCKETS,
) -> dict[str, np.ndarray]:
  """Pads examples to one shared bucket and stacks them.

  ``position_ids`` come out as int32[3, B, S] (the model's layout); every
  other array gets a leading batch axis. ``grid_thw`` is dropped (it has a
  per-example length; the metadata already encodes it).
  """
  s = bucket_for(max(np.size(e["input_ids"]) for e in examples), seq_buckets)
  p = bucket_for(
    max(required_patches(e["grid_thw"], vision_cfg) for e in examples),
    patch_buckets,
  )
  padded = [
    pad_example(
      e, vision_cfg, pad_token_id=pad_token_id, num_patches=p, seq_len=s
    )
    for e in examples
  ]
  batch = {
    k: np.stack([e[k] for e in padded]) for k in padded[0] if k != "grid_thw"
  }
  batch["position_ids"] = np.transpose(batch["position_ids"], (1, 0, 2))
  return batch


VISION_META_KEYS = (
  "window_index",
  "reverse_index",
  "positions",
  "window_segment_ids",
  "full_segment_ids",
  "merged_mask",
)


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
  """Keyword arguments of ``Qwen25VL.__call__`` from a collated batch."""
  return {
    "input_ids": batch["input_ids"],
    "position_ids": batch["position_ids"],
    "pixel_values": batch["pixel_values"],
    "vision_meta": {k: batch[k] for k in VISION_META_KEYS},
    "segment_ids": batch["segment_ids"],
  }
