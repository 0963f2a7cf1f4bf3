"""Per-example transforms of the Grain pipeline: parse, decode, preprocess.

A record (see `records` / `tfds_builder`) becomes an example:

  source_video: uint8[T, H, W, 3]   first 4k+1 frames, resized/cropped
  target_video: uint8[T, H, W, 3]   same frames and size as the source
  ref_image:    uint8[H, W, 3]      reference for the DiT path (ref records)
  prompt, key:  str
  mllm:         dict of arrays      output of the MLLM preprocessing hook

Frames stay uint8 (4x smaller to move than float32); the model maps them to
[-1, 1] on device (`media.pixels.to_unit_training` is the host-side equivalent).

Cached-latent records (`latent_cache`) skip decoding and give
`source_latents`, `target_latents`, optional `ref_latents` (float arrays) and
the stored `mllm` inputs, with the same `prompt` and `key`.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import grain
import numpy as np

from kiwi_jax.data import records
from kiwi_jax.media import transforms, video_io

# The MLLM preprocessing hook: (source frames uint8[T, H, W, 3], prompt,
# un-padded reference image uint8[h, w, 3] or None) -> dict of numpy arrays.
# Qwen2.5-VL preprocessing lives in kiwi_jax/models/mllm/; any picklable
# callable with this signature plugs in (workers pickle it).
MllmTransform = Callable[
  [np.ndarray, str, np.ndarray | None], Mapping[str, np.ndarray]
]

MLLM_PREFIX = "mllm/"
_TEXT_FIELDS = (
  "key",
  "origin",
  "prompt",
  "src_kind",
  "tgt_kind",
  "record_type",
)


@dataclasses.dataclass(frozen=True)
class ExampleConfig:
  """How records become model inputs.

  Attributes:
    max_frames: frame budget; clips use the first min(available, max) frames
      cut to 4k+1 (81 for the 5B stage-2/3 scripts, 1 for images).
    max_pixels: pixel budget per frame (921,600 = 720x1280; 360,000 for the
      600x600 scripts; 1,048,576 for stage-1 images).
    size_multiple: sides are floored to a multiple of this (32 for the 5B
      model: VAE stride 16 x patch 2).
    fixed_size: (height, width) to resize/crop every clip to, so batches of
      more than one clip stack; None keeps each clip's own size.
    train: training draws the reference shrink in `ref_scale_range`
      (reference §4.5); evaluation pads the reference without shrinking (reference §5.1).
    ref_scale_range: range of the training-time shrink factor.
  """

  max_frames: int = 81
  max_pixels: int = 921_600
  size_multiple: int = 32
  fixed_size: tuple[int, int] | None = None
  train: bool = True
  ref_scale_range: tuple[float, float] = (0.7, 1.0)


def parse_record(raw: Any) -> dict[str, Any]:
  """Raw ArrayRecord bytes or a tfds example -> a record dict (text as str)."""
  record = records.deserialize(raw) if isinstance(raw, bytes) else dict(raw)
  for name in _TEXT_FIELDS:
    if isinstance(record.get(name), bytes):
      record[name] = record[name].decode("utf-8")
  return record


class DecodeExample(grain.transforms.RandomMap):
  """Decodes, crops and augments one record (see the module docstring)."""

  def __init__(
    self, cfg: ExampleConfig, mllm_transform: MllmTransform | None = None
  ):
    self.cfg = cfg
    self.mllm_transform = mllm_transform

  def random_map(self, element: Any, rng: np.random.Generator):
    record = parse_record(element)
    try:
      if record.get("record_type") == "latent":
        return _latent_example(record)
      return self._media_example(record, rng)
    except (video_io.MediaError, ValueError) as e:
      raise ValueError(
        f"record {record.get('key')!r} ({record.get('origin', '?')}): {e}"
      ) from e

  def _media_example(self, record, rng):
    cfg = self.cfg
    frames = transforms.clip_length(int(record["num_frames"]), cfg.max_frames)
    source = video_io.decode_media(record["src"], record["src_kind"], frames)
    target = video_io.decode_media(record["tgt"], record["tgt_kind"], frames)
    frames = min(len(source), len(target))
    source, target = source[:frames], target[:frames]
    # Height/width come from the target clip (reference §4.5).
    if cfg.fixed_size is not None:
      height, width = cfg.fixed_size
    else:
      height, width = transforms.size_for_pixel_budget(
        target.shape[1], target.shape[2], cfg.max_pixels, cfg.size_multiple
      )
    source = transforms.resize_cover_and_center_crop(source, height, width)
    target = transforms.resize_cover_and_center_crop(target, height, width)
    example = {
      "source_video": source,
      "target_video": target,
      "prompt": record["prompt"],
      "key": record["key"],
    }
    ref_for_mllm = None
    if record.get("has_ref"):
      ref = video_io.decode_image(record["ref_image"])
      # The reference goes through the same budget operator (reference §6.3);
      # the MLLM sees it un-padded, the DiT padded to the clip (reference §4.5).
      ref_h, ref_w = transforms.size_for_pixel_budget(
        ref.shape[0], ref.shape[1], cfg.max_pixels, cfg.size_multiple
      )
      ref_for_mllm = transforms.resize_cover_and_center_crop(
        ref[None], ref_h, ref_w
      )[0]
      if cfg.train:
        scale = float(rng.uniform(*cfg.ref_scale_range))
        example["ref_image"] = transforms.shrink_and_pad_centered(
          ref_for_mllm, height, width, scale
        )
      else:
        example["ref_image"] = transforms.pad_to_canvas(
          ref_for_mllm, height, width
        )
    if self.mllm_transform is not None:
      example["mllm"] = dict(
        self.mllm_transform(source, record["prompt"], ref_for_mllm)
      )
    return example


def _latent_example(record):
  example = {
    "source_latents": record["source_latents"],
    "target_latents": record["target_latents"],
    "prompt": record["prompt"],
    "key": record["key"],
  }
  if "ref_latents" in record:
    example["ref_latents"] = record["ref_latents"]
  mllm = {
    k[len(MLLM_PREFIX) :]: v
    for k, v in record.items()
    if k.startswith(MLLM_PREFIX)
  }
  if mllm:
    example["mllm"] = mllm
  return example


def stack_examples(examples, path: str = "") -> Any:
  """Batches examples: arrays stacked, strings into an object array.

  Raises:
    ValueError: a field differs in shape or presence across the batch; the
      message names the field and the shapes.
  """
  first = examples[0]
  if isinstance(first, Mapping):
    keys = set(first)
    for e in examples[1:]:
      if set(e) != keys:
        raise ValueError(
          f"batch field {path or '<root>'}: examples have different fields "
          f"{sorted(keys)} vs {sorted(e)}; mix such sources as separate "
          "datasets"
        )
    return {
      k: stack_examples([e[k] for e in examples], f"{path}{k}/") for k in first
    }
  if isinstance(first, str):
    return np.array(examples, dtype=object)
  arrays = [np.asarray(e) for e in examples]
  shapes = {a.shape for a in arrays}
  if len(shapes) > 1:
    raise ValueError(
      f"batch field {path.rstrip('/')}: shapes differ {sorted(shapes)}; "
      "use batch_size 1 or ExampleConfig.fixed_size"
    )
  return np.stack(arrays)
