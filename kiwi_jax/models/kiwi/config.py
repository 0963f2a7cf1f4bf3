"""Kiwi-Edit hyperparameters: the three sub-model configs plus the Kiwi parts.

Values from ``docs/reference.md`` §1.7 and 2 (``QwenVLMLLMEncoder``
defaults of ``WanVideoPipeline.from_pretrained``; the 14B demo uses 384
reference queries and ``max_object_token`` 384).

A query set with 0 queries, or ``ref_connector=False``, means the module is
absent: stage-1 checkpoints have only image queries and the connector,
stage 2 adds the video queries, stage 3 the reference queries and
``ref_connector`` (reference §4.2, 7.2). The DiT's ``source_condition`` /
``reference_condition`` flags say whether ``vae_condition`` /
``ref_vae_condition`` exist.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import jax.numpy as jnp

from kiwi_jax.diffusion.schedules import check_shift
from kiwi_jax.models.dit.config import WanDiTConfig
from kiwi_jax.models.kiwi.codec import CODECS
from kiwi_jax.models.kiwi.readout import READOUT_MODES
from kiwi_jax.models.mllm.config import Qwen25VLConfig
from kiwi_jax.models.vae.config import WanVAEConfig

MODES = ("image", "video", "reference")


@dataclasses.dataclass(frozen=True)
class KiwiEditConfig:
  """Kiwi-Edit = Qwen2.5-VL encoder + queries/connectors + Wan DiT + VAE.

  Attributes:
    dit: the Wan DiT (with ``vae_condition`` / ``ref_vae_condition`` flags,
      ``ref_pad_first`` and ``lora_rank``, the 14B stage-2 DiT LoRA).
    mllm: Qwen2.5-VL (``text.lora_rank`` > 0 keeps LoRA factors separate).
    vae: the Wan VAE.
    num_image_queries: queries of image-edit mode (0: absent).
    num_video_queries: queries of video-edit mode (0: absent).
    num_ref_queries: queries of reference mode (0: absent).
    ref_connector: whether ``ref_connector`` exists.
    max_ref_tokens: largest number of reference-image MLLM tokens
      (``max_object_token``; the ref image is resized to at most
      ``28 * 28 * max_ref_tokens`` pixels).
    readout: ``"last"`` (the reference's last-N readout, default) or
      ``"queries"`` (the placeholder positions).
    mllm_max_frames: source frames the MLLM sees (16; reference §2.3).
    mllm_max_pixels_per_frame: per-frame pixel cap (262,144 at inference).
    mllm_video_min_pixels: per-frame floor of the MLLM's video resize (None:
      Qwen's 100,352; the CPU demo lowers it so its 32 x 32 clips are not
      upsampled to 336 x 336 for a tiny Qwen).
    codec: the latent codec (``codec.CODECS``): ``"wan_vae"`` (the released
      models) or ``"pixel_unshuffle"`` (the CPU demo's stand-in; ``vae`` is
      then unused and the model holds no VAE weights).
    unshuffle_factor: the stand-in's space-to-depth factor.
    flow_shift: the sigma shift of the flow-matching schedule the model
      trains and samples with (``diffusion.schedules``): 5, Wan's, for the
      released models and the CPU demo (whose edits get worse with a
      smaller one: docs/demo_results.md). Checkpoints carry it, so
      ``EditPipeline`` samples a model with its own shift.
  """

  dit: WanDiTConfig
  mllm: Qwen25VLConfig
  vae: WanVAEConfig
  num_image_queries: int = 256
  num_video_queries: int = 512
  num_ref_queries: int = 768
  ref_connector: bool = True
  max_ref_tokens: int = 768
  readout: str = "last"
  mllm_max_frames: int = 16
  mllm_max_pixels_per_frame: int | None = 262144
  mllm_video_min_pixels: int | None = None
  codec: str = "wan_vae"
  unshuffle_factor: int = 2
  flow_shift: float = 5.0

  def __post_init__(self):
    check_shift(self.flow_shift)
    if self.readout not in READOUT_MODES:
      raise ValueError(
        f"readout must be one of {READOUT_MODES}, got {self.readout!r}."
      )
    for name in ("num_image_queries", "num_video_queries", "num_ref_queries"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
    if self.codec not in CODECS:
      raise ValueError(f"codec must be one of {CODECS}, got {self.codec!r}.")
    if self.latent_channels != self.dit.in_channels:
      raise ValueError(
        f"The {self.codec} codec gives {self.latent_channels} latent "
        f"channels but the DiT takes in_channels={self.dit.in_channels}."
      )
    if self.dit.reference_condition and not self.num_ref_queries:
      raise ValueError(
        "A DiT with ref_vae_condition needs reference queries "
        "(num_ref_queries > 0)."
      )

  # -- Latent geometry of the codec: [B, (T-1)//tf + 1, H/sf, W/sf, c].

  @property
  def latent_channels(self) -> int:
    if self.codec == "pixel_unshuffle":
      return 3 * self.unshuffle_factor**2
    return self.vae.z_dim

  @property
  def temporal_factor(self) -> int:
    return 1 if self.codec == "pixel_unshuffle" else self.vae.temporal_factor

  @property
  def spatial_factor(self) -> int:
    return (
      self.unshuffle_factor
      if self.codec == "pixel_unshuffle"
      else self.vae.spatial_factor
    )

  @property
  def latent_dtype(self) -> Any:
    """The dtype latents are kept in (the DiT's compute dtype)."""
    return self.dit.dtype

  @property
  def timestep_dtype(self) -> Any:
    """The dtype the DiT sees timesteps in (its compute dtype, as the
    reference's ``torch_dtype``: bf16 rounds, float32 is exact)."""
    return self.dit.dtype

  def latent_shape(
    self, num_frames: int, height: int, width: int, batch: int = 1
  ) -> tuple[int, int, int, int, int]:
    """The latents of ``batch`` clips of ``num_frames`` x height x width."""
    return (
      batch,
      (num_frames - 1) // self.temporal_factor + 1,
      height // self.spatial_factor,
      width // self.spatial_factor,
      self.latent_channels,
    )

  @property
  def mllm_hidden(self) -> int:
    return self.mllm.text.hidden_size

  def num_queries(self, mode: str) -> int:
    """Queries of ``mode`` ("image", "video" or "reference")."""
    if mode not in MODES:
      raise ValueError(f"Unknown mode {mode!r}; choose one of {MODES}.")
    return {
      "image": self.num_image_queries,
      "video": self.num_video_queries,
      "reference": self.num_ref_queries,
    }[mode]

  def modes(self) -> tuple[str, ...]:
    """The edit modes this model can run."""
    out = [m for m in ("image", "video") if self.num_queries(m)]
    if (
      self.num_ref_queries
      and self.ref_connector
      and self.dit.reference_condition
    ):
      out.append("reference")
    return tuple(out)

  def replace(self, **changes) -> KiwiEditConfig:
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_variant(cls, name: str, **overrides) -> KiwiEditConfig:
    if name not in VARIANTS:
      raise KeyError(
        f"Unknown Kiwi-Edit variant {name!r}; known: {sorted(VARIANTS)}."
      )
    return dataclasses.replace(VARIANTS[name], **overrides)

  # -- JSON (the converted checkpoint's ``kiwi_config.json``).

  def to_dict(self) -> dict[str, Any]:
    return _to_jsonable(self)

  @classmethod
  def from_dict(cls, data: dict[str, Any]) -> KiwiEditConfig:
    return _from_jsonable(cls, data)


def _to_jsonable(obj):
  if dataclasses.is_dataclass(obj):
    return {
      f.name: _to_jsonable(getattr(obj, f.name))
      for f in dataclasses.fields(obj)
    }
  if isinstance(obj, (tuple, list)):
    return [_to_jsonable(x) for x in obj]
  if obj is None or isinstance(obj, (bool, int, float, str)):
    return obj
  try:
    return jnp.dtype(obj).name  # dtypes: jnp.bfloat16 -> "bfloat16"
  except TypeError as e:
    raise TypeError(f"Cannot write {obj!r} to JSON.") from e


def _from_jsonable(cls, data: dict[str, Any]):
  hints = typing.get_type_hints(cls)
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = set(data) - known
  if unknown:
    raise ValueError(
      f"{cls.__name__}: unknown fields {sorted(unknown)} in the config file."
    )
  kwargs = {}
  for f in dataclasses.fields(cls):
    if f.name not in data:
      continue
    value, hint = data[f.name], hints[f.name]
    if dataclasses.is_dataclass(hint):
      value = _from_jsonable(hint, value)
    elif "dtype" in f.name and isinstance(value, str):
      value = jnp.dtype(value)
    elif isinstance(value, list):
      value = tuple(value)
    kwargs[f.name] = value
  return cls(**kwargs)


def _variants() -> dict[str, KiwiEditConfig]:
  dit5 = WanDiTConfig.from_variant(
    "wan2.2-ti2v-5b", source_condition=True, reference_condition=True
  )
  dit14 = WanDiTConfig.from_variant(
    "wan2.1-t2v-14b", source_condition=True, reference_condition=True
  )
  qwen = Qwen25VLConfig.from_variant("qwen2.5-vl-3b")
  tiny_qwen = Qwen25VLConfig.from_variant("tiny")
  tiny_dit = WanDiTConfig.from_variant(
    "tiny",
    dim=48,
    in_channels=12,
    out_channels=12,
    source_condition=True,
    reference_condition=True,
  )
  return {
    # Stage-3 Wan2.2-TI2V-5B + Qwen2.5-VL-3B (all modes).
    "kiwi-5b": KiwiEditConfig(
      dit=dit5, mllm=qwen, vae=WanVAEConfig.from_variant("wan2.2")
    ),
    # The 14B scripts (no released checkpoint): 384 reference queries.
    "kiwi-14b": KiwiEditConfig(
      dit=dit14,
      mllm=qwen,
      vae=WanVAEConfig.from_variant("wan2.1"),
      num_ref_queries=384,
      max_ref_tokens=384,
      mllm_max_frames=10,
    ),
    # Test-sized: tiny Qwen (hidden 64), tiny DiT over the tiny Wan2.2 VAE
    # latents (12 channels).
    "tiny": KiwiEditConfig(
      dit=tiny_dit,
      mllm=tiny_qwen,
      vae=WanVAEConfig.from_variant("wan2.2-tiny"),
      num_image_queries=5,
      num_video_queries=7,
      num_ref_queries=11,
      max_ref_tokens=16,
    ),
  }


VARIANTS: dict[str, KiwiEditConfig] = _variants()

__all__ = ["KiwiEditConfig", "MODES", "VARIANTS"]
