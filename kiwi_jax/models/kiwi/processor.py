"""Kiwi-Edit's MLLM inputs: one processor owns tokenisation, bucketing and
the pad id, for training (the Grain hook) and editing (``EditPipeline``).

Per example (host numpy), :meth:`KiwiProcessor.example` runs the torch-free
Qwen2.5-VL processing (``kiwi_jax.models.mllm.processing``, reference §2.1 to 2.3)
for the mode the inputs call for (``reference`` with a reference image,
``video`` for more than one source frame, else ``image``) and pads it to a
shape bucket (or to fixed ``seq_len`` / ``num_patches``): tokens at the end
with ``segment_ids`` 0, patches in their own attention segment, so clips of
similar size share one compiled program. Stacked examples (what Grain's
batching gives) become the model's inputs with :meth:`model_inputs`, which
is exactly what ``KiwiEdit.encode_conditions`` reads::

  input_ids int[B, S], position_ids int[3, B, S], segment_ids int[B, S],
  pixel_values float[B, P, 1176], vision_meta {name: int[B, ...]}

The object pickles without its tokenizer (Grain workers pickle the hook)
and loads it on first use.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from kiwi_jax.models.kiwi.config import KiwiEditConfig
from kiwi_jax.models.mllm import bucketing, processing

# Grain's prefetch threads call the hook concurrently; transformers' lazy
# imports fail when two threads import the tokenizer at once.
_LOAD_LOCK = threading.Lock()


class KiwiProcessor:
  """(instruction, source frames, reference) -> Kiwi-Edit MLLM inputs.

  Args:
    tokenizer: a loaded Qwen tokenizer or its local directory.
    cfg: the model's :class:`KiwiEditConfig`.
    seq_len, num_patches: fixed token / patch-slot counts per example
      (0: the smallest ``bucketing`` ladder entry that fits).
  """

  def __init__(
    self,
    tokenizer: Any,
    cfg: KiwiEditConfig,
    *,
    seq_len: int = 0,
    num_patches: int = 0,
  ):
    self.tokenizer = (
      os.fspath(tokenizer)
      if isinstance(tokenizer, (str, os.PathLike))
      else tokenizer
    )
    self.cfg = cfg
    self.seq_len = int(seq_len)
    self.num_patches = int(num_patches)
    self._qwen = None

  def __getstate__(self):
    return {**self.__dict__, "_qwen": None}

  @property
  def qwen(self) -> processing.QwenProcessor:
    """The Qwen2.5-VL processor (unpadded examples), loaded once."""
    with _LOAD_LOCK:
      if self._qwen is None:
        cfg = self.cfg
        self._qwen = processing.QwenProcessor(
          self.tokenizer,
          cfg.mllm,
          processing.ProcessorConfig(
            num_image_queries=cfg.num_image_queries,
            num_video_queries=cfg.num_video_queries,
            num_ref_queries=cfg.num_ref_queries,
            max_pixels_per_frame=cfg.mllm_max_pixels_per_frame,
            max_object_token=cfg.max_ref_tokens,
            max_frames=cfg.mllm_max_frames,
            video_min_pixels=cfg.mllm_video_min_pixels,
          ),
        )
      return self._qwen

  @property
  def pad_token_id(self) -> int:
    tok = self.qwen.tokenizer
    return (
      tok.pad_token_id
      if tok.pad_token_id is not None
      else tok.convert_tokens_to_ids("<|endoftext|>")
    )

  @staticmethod
  def mode(num_frames: int, has_reference: bool) -> str:
    """The edit mode of a source with ``num_frames`` frames (reference §2.1; a
    one-frame source with a reference takes the video path, as the
    diffusers pipeline does)."""
    return processing.select_mode(num_frames, has_reference)

  def example(
    self,
    frames: np.ndarray,
    instruction: str,
    ref_image: np.ndarray | None = None,
  ) -> dict[str, np.ndarray]:
    """One padded example (the data pipeline's MLLM hook).

    Args:
      frames: uint8[T, H, W, 3] source frames (T = 1: image mode).
      instruction: the edit instruction.
      ref_image: uint8[h, w, 3] un-padded reference image, or None.

    Returns:
      ``input_ids`` int32[S], ``position_ids`` int32[3, S], ``segment_ids``
      int32[S], ``pixel_values``, the vision metadata and ``ref_span``.
    """
    mode = self.mode(len(frames), ref_image is not None)
    example = self.qwen(
      instruction, frames=frames, ref_image=ref_image, mode=mode
    )
    out = bucketing.pad_example(
      example,
      self.cfg.mllm.vision,
      pad_token_id=self.pad_token_id,
      seq_len=self.seq_len or None,
      num_patches=self.num_patches or None,
    )
    del out["grid_thw"]  # per-example length; the metadata encodes it
    return out

  @staticmethod
  def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """Stacked examples (numpy or jax, leading batch axis) ->
    ``KiwiEdit.encode_conditions`` inputs (``position_ids`` to [3, B, S])."""
    return bucketing.model_inputs(
      {**batch, "position_ids": batch["position_ids"].transpose(1, 0, 2)}
    )

  def edit_inputs(
    self,
    instruction: str,
    *,
    frames: np.ndarray,
    ref_image: np.ndarray | None = None,
  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model inputs of one edit, batch 1, and the static options of
    ``encode_conditions`` (``mode``, and ``ref_tokens`` in reference mode:
    the reference's exact token count)."""
    example = self.example(frames, instruction, ref_image)
    arrays = self.model_inputs(
      {k: np.asarray(v)[None] for k, v in example.items()}
    )
    mode = self.mode(len(frames), ref_image is not None)
    options = {"mode": mode}
    if mode == "reference":
      start, end = (int(v) for v in example["ref_span"])
      options["ref_tokens"] = end - start
    return arrays, options

  __call__ = edit_inputs


__all__ = ["KiwiProcessor"]
