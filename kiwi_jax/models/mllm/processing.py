"""Kiwi-Edit's MLLM inputs without torch: chat, tokens, pixels, positions.

One call of :class:`QwenProcessor` turns one example (source frames or
image, instruction, optional reference image) into numpy arrays, exactly as
``QwenVLMLLMEncoder.forward`` (``diffsynth/models/mllm_encoder.py``) prepares
them (reference §2.1 to 2.3):

* mode: ``reference`` if a reference image is given, else ``video`` for more
  than one source frame, else ``image``;
* the chat (system prompt, visual, instruction, the reference sentence and
  image in reference mode, N ``<|object_ref_start|>`` query placeholders),
  rendered as the Qwen2.5-VL template renders it, with no assistant turn;
* each ``<|image_pad|>`` / ``<|video_pad|>`` expanded to the visual's merged
  token count; M-RoPE position ids (``rope_index``);
* pixel rows packed images first, then videos (transformers' order).

Use it as a per-example transform in a data pipeline; pad and batch with
``bucketing``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from kiwi_jax.models.mllm import vision_preprocess as vp
from kiwi_jax.models.mllm.config import Qwen25VLConfig
from kiwi_jax.models.mllm.rope_index import mrope_position_ids

SYSTEM_PROMPT = (
  "You will be given an image and instruction. Please describe the content "
  "of the image in detail based on instruction in your own words."
)
REFERENCE_SUFFIX = " Use the reference input from last frame."
QUERY_TOKEN = "<|object_ref_start|>"
IMAGE_BLOCK = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_BLOCK = "<|vision_start|><|video_pad|><|vision_end|>"
MODES = ("image", "video", "reference")


@dataclasses.dataclass(frozen=True)
class ProcessorConfig:
  """Knobs of ``QwenVLMLLMEncoder`` (defaults: the released 5B model).

  Attributes:
    max_pixels_per_frame: per-frame cap of the source video; None in the 5B
      training scripts, 512 * 512 at inference (reference §2.3).
    max_object_token: the reference image is capped at 28 * 28 * this.
    max_frames: source frames the MLLM sees (``linspace``-sampled): 16 in
      the released 5B model; the 14B scripts ask for 10. The reference's
      frame-list branch ignores the item's ``max_frames`` (reference §2.3, a
      quirk), so it sees 16 whatever the scripts say; here the config's
      value is honoured.
    video_min_pixels: per-frame floor of the source video's final resize
      (None: Qwen's 100,352, which upsamples small videos to 316 x 316).
  """

  num_image_queries: int = 256
  num_video_queries: int = 512
  num_ref_queries: int = 768
  max_pixels_per_frame: int | None = None
  max_object_token: int = 768
  max_frames: int = vp.VIDEO_MAX_FRAMES
  video_min_pixels: int | None = None


def select_mode(num_source_frames: int, has_reference: bool) -> str:
  """Reference §2.1: reference if a ref image, video if > 1 frame, else image."""
  if has_reference:
    return "reference"
  return "video" if num_source_frames > 1 else "image"


def render_prompt(instruction: str, mode: str, num_queries: int) -> str:
  """The chat text (pads not yet expanded), as the Qwen template renders
  Kiwi's messages with ``add_generation_prompt=False`` (reference §2.2)."""
  if mode not in MODES:
    raise ValueError(f"Unknown mode {mode!r}; use one of {MODES}.")
  if mode == "image":
    content = IMAGE_BLOCK + instruction
  elif mode == "video":
    content = VIDEO_BLOCK + instruction
  else:
    content = VIDEO_BLOCK + instruction + REFERENCE_SUFFIX + IMAGE_BLOCK
  return (
    f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
    f"<|im_start|>user\n{content}{QUERY_TOKEN * num_queries}"
    "<|im_end|>\n"
  )


def chat_messages(instruction: str, mode: str, num_queries: int) -> list:
  """The reference's ``messages`` (visual items without pixels), for
  rendering with a tokenizer's chat template."""
  text = {"type": "text", "text": instruction}
  queries = {"type": "text", "text": QUERY_TOKEN * num_queries}
  if mode == "image":
    content = [{"type": "image"}, text, queries]
  elif mode == "video":
    content = [{"type": "video"}, text, queries]
  else:
    text = {"type": "text", "text": instruction + REFERENCE_SUFFIX}
    content = [{"type": "video"}, text, {"type": "image"}, queries]
  return [
    {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
    {"role": "user", "content": content},
  ]


def load_tokenizer(path: str | os.PathLike):
  """A tokenizer from a local directory (never the hub)."""
  from transformers import AutoTokenizer

  if not os.path.isdir(path):
    raise FileNotFoundError(f"Tokenizer directory {path} does not exist.")
  return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


class QwenProcessor:
  """Per-example transform: raw inputs -> dict of numpy arrays."""

  def __init__(
    self,
    tokenizer: Any,
    model_cfg: Qwen25VLConfig,
    cfg: ProcessorConfig = ProcessorConfig(),
  ):
    """``tokenizer``: a loaded tokenizer or a local directory."""
    if isinstance(tokenizer, (str, os.PathLike)):
      tokenizer = load_tokenizer(tokenizer)
    self.tokenizer = tokenizer
    self.model_cfg = model_cfg
    self.cfg = cfg
    ids = {
      name: tokenizer.convert_tokens_to_ids(tok)
      for name, tok in (
        ("image_token_id", "<|image_pad|>"),
        ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"),
        ("vision_end_token_id", "<|vision_end|>"),
        ("query_token_id", QUERY_TOKEN),
      )
    }
    wrong = {
      k: (v, getattr(model_cfg, k))
      for k, v in ids.items()
      if v != getattr(model_cfg, k)
    }
    if wrong:
      raise ValueError(
        "Tokenizer and model config disagree on special token "
        f"ids (tokenizer, config): {wrong}."
      )

  def num_queries(self, mode: str) -> int:
    return {
      "image": self.cfg.num_image_queries,
      "video": self.cfg.num_video_queries,
      "reference": self.cfg.num_ref_queries,
    }[mode]

  def __call__(
    self,
    instruction: str,
    *,
    frames=None,
    image=None,
    ref_image=None,
    mode: str | None = None,
  ) -> dict[str, Any]:
    """Prepares one example.

    Args:
      instruction: the edit instruction.
      frames: source video, uint8[T, H, W, 3] or a list of frames (PIL or
        uint8 arrays). A single frame means image mode.
      image: source image (PIL or uint8[H, W, 3|4]) for image mode.
      ref_image: reference image (reference mode).
      mode: force ``image``, ``video`` or ``reference`` (default: reference §2.1).

    Returns:
      Dict with ``input_ids`` int32[T], ``position_ids`` int32[3, T],
      ``pixel_values`` float32[N, 1176] (images first, then videos),
      ``grid_thw`` int32[K, 3] (same order), ``num_queries`` int32 and,
      for reference mode, ``ref_span`` int32[2]: the [start, end) token
      range of the reference image's pad tokens (zeros otherwise).
    """
    mc = self.model_cfg
    if frames is not None and image is not None:
      raise ValueError("Pass either frames or image, not both.")
    if frames is None and image is None:
      raise ValueError("An example needs source frames or a source image.")
    n_frames = 1 if image is not None else len(frames)
    mode = mode or select_mode(n_frames, ref_image is not None)
    if mode == "reference" and ref_image is None:
      raise ValueError("Reference mode needs ref_image.")
    if mode != "image" and frames is None:
      raise ValueError(f"{mode} mode needs source frames.")
    images, videos = [], []
    if mode == "image":
      images.append(
        vp.preprocess_image(image if image is not None else frames[0])
      )
    else:
      videos.append(
        vp.preprocess_video(
          frames,
          max_pixels=self.cfg.max_pixels_per_frame,
          max_frames=self.cfg.max_frames,
          min_pixels=self.cfg.video_min_pixels,
        )
      )
    if mode == "reference":
      images.append(
        vp.preprocess_image(
          ref_image, max_pixels=28 * 28 * self.cfg.max_object_token
        )
      )
    n_queries = self.num_queries(mode)
    text = render_prompt(instruction, mode, n_queries)
    ids = self._expand(
      self.tokenizer(text)["input_ids"],
      [g for _, g in images],
      [g for _, g in videos],
    )
    if int(np.sum(ids == mc.query_token_id)) != n_queries:
      raise ValueError(
        f"Instruction {instruction!r} yields "
        f"{int(np.sum(ids == mc.query_token_id))} query placeholders, "
        f"expected {n_queries}."
      )
    positions = mrope_position_ids(
      ids,
      image_grid_thw=[g for _, g in images],
      video_grid_thw=[g for _, g in videos],
      image_token_id=mc.image_token_id,
      video_token_id=mc.video_token_id,
      vision_start_token_id=mc.vision_start_token_id,
      spatial_merge_size=mc.vision.spatial_merge_size,
      tokens_per_second=mc.vision.tokens_per_second,
    )
    return {
      "input_ids": ids.astype(np.int32),
      "position_ids": positions,
      "pixel_values": np.concatenate([p for p, _ in images + videos]),
      "grid_thw": np.asarray([g for _, g in images + videos], np.int32),
      "num_queries": np.int32(n_queries),
      "ref_span": self._ref_span(ids)
      if mode == "reference"
      else np.zeros(2, np.int32),
    }

  def _expand(self, ids, image_grids, video_grids) -> np.ndarray:
    """Repeats each pad token ``t * h * w / merge_unit`` times, in order."""
    mc = self.model_cfg
    unit = mc.vision.merge_unit
    counts = {
      mc.image_token_id: [int(np.prod(g)) // unit for g in image_grids],
      mc.video_token_id: [int(np.prod(g)) // unit for g in video_grids],
    }
    out = []
    for token in ids:
      if token in counts:
        if not counts[token]:
          raise ValueError(f"Prompt has more pad tokens {token} than visuals.")
        out.extend([token] * counts[token].pop(0))
      else:
        out.append(token)
    return np.asarray(out, np.int64)

  def _ref_span(self, ids: np.ndarray) -> np.ndarray:
    """Tokens strictly between the last ``<|vision_start|>`` and the first
    ``<|vision_end|>`` after it (``mllm_encoder.py``)."""
    mc = self.model_cfg
    start = int(np.flatnonzero(ids == mc.vision_start_token_id)[-1])
    end = start + int(np.flatnonzero(ids[start:] == mc.vision_end_token_id)[0])
    return np.asarray([start + 1, end], np.int32)
